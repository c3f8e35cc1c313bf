"""Renderer trainer (spec 4.4) on accelerate.

Trainable: renderer UNet (all parameters), ReferenceNet, feature encoder ("cur_image_guider", training
init: He-normal convs, zero final projection), next-CLIP adapter, time encoder ("PE"). Frozen: VAE, CLIP
vision, SD text encoder. Initialisation of the UNet and the ReferenceNet: ``--init`` =
``base`` (the diffusers UNet weights of the base folder, as the release: Realistic Vision), ``renderer``
(an existing renderer checkpoint of the base release: fine-tuning), ``resume`` (every part of that
checkpoint, the feature encoder, next-CLIP adapter and time encoder too: the run continues that renderer),
``random`` (tiny tests) or ``auto`` (base weights if present, else the renderer checkpoint, else random).

Per step: z0 = VAE(next).sample()*s, z_ref = VAE(target).sample()*s; t ~ U{0..999}; noisy =
DDIM add_noise (linear beta 0.00085-0.012, 1000 steps); canvas zeroed if drop_cur_cond, GT mask (LPIPS
cur->next > 0.2, from lpips/ or computed, full resolution) zeroed if drop_RP; e_next =
adapter(CLIP(cur), CLIP(target)) zeroed if drop_image_embeds; PE zeroed if drop_time_step; text "" if
drop_feature; context [e_next, PE, text] (79 tokens); ReferenceNet banks at t=0 with context e_target;
loss = MSE(eps_hat, eps). No reference dropout in training (as officially).

Four options the release does not have (defaults = the release's recipe), used by the starter model:
``--prediction-type v_prediction`` trains the UNet to predict v = sqrt(a) eps - sqrt(1 - a) z0 (written to
``renderer/config.yaml``; inference converts it back to eps, core/schedule.py). A small renderer trained from
scratch on epsilon learned to ignore the target: its high-noise estimates (where the layout and colours are
decided) are eps/sqrt(a) amplified and it never got them precise enough. ``--target-pair-prob p`` makes a
share p of the pairs end on the finished painting (interval = the time left, GT mask LPIPS(cur, target) >
0.2): every such pair is a dense signal to read the target. ``--reference-position-encoding`` adds a fixed
position code to the reference attention (models/reference_attention.py; written to the config): without
it the ReferenceNet told a small renderer nothing the next-CLIP token did not (the probe's no_reference
column equalled full), since its tokens carry no place to attend to. ``--target-input`` gives the UNet the
target's latents (the ReferenceNet's input, drawn from the same posterior sample) as 4 more ``conv_in`` channels
(models/renderer_unet.py; written to the config as ``target_input: true``); UNet weights loaded from a
checkpoint without them (``--init renderer``/``resume``/``base``) get those channels at zero, so a resumed run
starts exactly as the renderer it resumes. Like the reference, they are never dropped in training.

Output: ``<out>/renderer/ckpt/checkpoint-global_step-N.ckpt`` with unet_state_dict,
referencenet_state_dict, cur_image_guider_state_dict, PE_state_dict, image_adpater_state_dict
(+ .safetensors) and ``<out>/renderer/config.yaml``.

CLI: ``python -m inverse_painting.training.trainers.renderer --data D --base RELEASE --out O --steps N``
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...core.loading import find_release, read_checkpoint
from ...core.schedule import PREDICTION_TYPES
from ...models.feature_encoder import CanvasFeatureEncoder
from ...models.next_clip import NextClipPredictor
from ...models.referencenet import ReferenceNet
from ...models.renderer_unet import RendererUNet, widen_conv_in
from ...models.time_encoder import TimeEncoder
from .common import run_cli, TrainConfig, link_release_parts, load_base, load_metric, make_accelerator, save_official, train_loop
from .data import PairDataset

NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class RendererConfig(TrainConfig):
    init: str = "auto"  # auto | base | renderer | random
    target_pair_prob: float = 0.0  # share of pairs whose next frame is the finished painting (0 = official)
    prediction_type: str = "epsilon"  # epsilon (official) | v_prediction
    # a fixed position code on the reference attention's tokens (not official; models/reference_attention.py)
    reference_position_encoding: bool = False
    # the target's latents as 4 more UNet input channels (not official; models/renderer_unet.py)
    target_input: bool = False


def train_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="linear", prediction_type="epsilon", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


class RendererTrainable(torch.nn.Module):
    def __init__(self, unet_config: dict, clip_dim: int, pe_kwargs: dict, position_encoding: bool = False,
                 target_input: bool = False):
        super().__init__()
        cfg = {k: v for k, v in unet_config.items() if not k.startswith("_")}
        cfg.update(in_channels=4, out_channels=4)
        ctx = int(cfg["cross_attention_dim"])
        self.unet = RendererUNet(dict(cfg, in_channels=8 if target_input else 4), position_encoding, target_input)
        self.referencenet = ReferenceNet(cfg)
        self.guider = CanvasFeatureEncoder(4, int(cfg["block_out_channels"][0]))
        self.guider.init_for_training()
        hidden = (1024, 512) if clip_dim == 768 else (4 * ctx, 2 * ctx)
        self.adapter = NextClipPredictor(2 * clip_dim, hidden, ctx)
        self.pe = TimeEncoder(out_dim=ctx, **pe_kwargs)
        self.copy_unet_to_reference()

    def copy_unet_to_reference(self):
        own = self.referencenet.unet.state_dict()
        src = self.unet.unet.state_dict()
        if self.unet.target_input:  # the ReferenceNet reads the target alone: the conv_in of the latents
            src["conv_in.weight"] = src["conv_in.weight"][:, :4]
        self.referencenet.unet.load_state_dict({k: v for k, v in src.items() if k in own})

    def load_unet(self, state_dict: dict) -> None:
        """Renderer UNet weights, from a checkpoint with or without the target channels (added at zero)."""
        have = int(state_dict["conv_in.weight"].shape[1])
        want = int(self.unet.unet.conv_in.weight.shape[1])
        if have > want:
            raise ValueError("the renderer being loaded takes the target's latents as input (target_input): "
                             "train with --target-input to continue it")
        if have < want:
            state_dict = widen_conv_in(state_dict, want - have)
        self.unet.unet.load_state_dict(state_dict, strict=True)

    def initialise(self, mode: str, base_dir: Path, release_root: Path | None) -> str:
        """Load UNet/ReferenceNet weights; returns what was used."""
        weights = [p for p in (base_dir / "unet").glob("diffusion_pytorch_model*") if p.suffix in (".safetensors", ".bin")]
        renderer_ckpt = find_release(release_root).renderer if release_root is not None else None
        if mode == "auto":
            mode = "base" if weights else ("renderer" if renderer_ckpt is not None else "random")
        if mode == "base":
            from diffusers import UNet2DConditionModel

            src = UNet2DConditionModel.from_pretrained(str(base_dir / "unet"), local_files_only=True).state_dict()
            self.load_unet(src)
            self.copy_unet_to_reference()  # the modules the ReferenceNet lacks are simply not loaded
        elif mode in ("renderer", "resume"):
            if renderer_ckpt is None:
                raise FileNotFoundError(f"--init {mode}: no renderer checkpoint in the base release")
            ck = read_checkpoint(renderer_ckpt)
            self.load_unet({k: v.float() for k, v in ck["unet_state_dict"].items()})
            self.referencenet.unet.load_state_dict(ck["referencenet_state_dict"], strict=True)
            if mode == "resume":
                for module, part in ((self.guider, "cur_image_guider_state_dict"), (self.pe, "PE_state_dict"),
                                     (self.adapter, "image_adpater_state_dict")):
                    module.load_state_dict(ck[part], strict=True)
        elif mode != "random":
            raise ValueError(f"unknown --init {mode!r}")
        return mode

    def forward(self, noisy, t, z_ref, canvas_in, e_cur, e_tgt, pe_x, text, flags, acc):
        """Returns eps_hat. Inputs already dropped where the flag says so, except the learned tokens."""
        b = noisy.shape[0]
        keep = lambda f: (~flags[f]).to(noisy.device, torch.float32).view(b, 1, 1)  # noqa: E731
        e_next = self.adapter(e_cur, e_tgt) * keep("drop_image_embeds")  # fp32 (outside autocast)
        pe = self.pe.forward_x(pe_x) * keep("drop_time_step")
        feats = self.guider(canvas_in)
        context = torch.cat([e_next, pe, text.to(pe)], dim=1)
        with acc.autocast():
            banks = self.referencenet.banks(z_ref, e_tgt[:, None, :].to(z_ref))
            # with gradient checkpointing the blocks re-run during backward and must still see the banks:
            # they stay installed until the next step's forward replaces them
            checkpointing = self.unet.unet.is_gradient_checkpointing
            return self.unet(noisy, t, context, feats, banks, keep_reference=checkpointing,
                             target_latents=z_ref if self.unet.target_input else None).float()


def _sd(m):
    return {k: v.detach().float().cpu().clone() for k, v in m.state_dict().items()}


def export_renderer(out: Path, model: RendererTrainable, step: int, renderer_config: dict, safetensors: bool = True,
                    prediction_type: str = "epsilon") -> Path:
    out = Path(out)
    path = save_official(out / "renderer" / "ckpt" / f"checkpoint-global_step-{step}.ckpt",
                         {"epoch": 0, "global_step": int(step), "unet_state_dict": _sd(model.unet.unet),
                          "referencenet_state_dict": _sd(model.referencenet.unet),
                          "cur_image_guider_state_dict": _sd(model.guider), "PE_state_dict": _sd(model.pe),
                          "image_adpater_state_dict": _sd(model.adapter)}, safetensors)
    import yaml

    keys = ("use_PE", "PE_type", "PE_time_interval", "PE_time_max", "use_TP", "is_train_text_encoder")
    cfg = {k: renderer_config[k] for k in keys}
    if prediction_type != "epsilon":  # the release's config has no such key: absent = epsilon
        cfg["prediction_type"] = prediction_type
    if model.unet.position_encoding:  # nor this one: absent = no position code
        cfg["reference_position_encoding"] = True
    if model.unet.target_input:  # nor this one: absent = no target channels
        cfg["target_input"] = True
    (out / "renderer" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train(cfg: RendererConfig) -> dict:
    if cfg.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {cfg.prediction_type!r}: expected one of {PREDICTION_TYPES}")
    accelerator = make_accelerator(cfg)
    torch.manual_seed(cfg.seed)
    base = load_base(cfg.base, need_clip=True).to(accelerator.device)
    if cfg.init == "resume":  # continuing a renderer: what its outputs and reference codes mean must not change
        have = {"prediction_type": base.renderer_config.get("prediction_type", "epsilon"),
                "reference_position_encoding": base.renderer_config.get("reference_position_encoding", False)}
        want = {"prediction_type": cfg.prediction_type, "reference_position_encoding": cfg.reference_position_encoding}
        if base.renderer_config.get("target_input", False) and not cfg.target_input:
            raise ValueError("--init resume: the renderer being resumed takes the target's latents as input: "
                             "add --target-input")
        if have != want:
            raise ValueError(f"--init resume: the renderer being resumed was trained with {have}, not {want}")
    base.latent_cache = {} if cfg.cache_latents else None
    data = PairDataset(cfg.data, cfg.split, metric=None, drop_prob=cfg.drop_prob, need_target_mask=False,
                       target_pair_prob=cfg.target_pair_prob)
    # no lpips/ folder, or target pairs (their masks are not in it): compute the GT masks on the fly
    if cfg.target_pair_prob > 0 or not any((Path(data.split_root) / "lpips").glob("*/*.jpg")):
        data.metric = load_metric(cfg, base).to(accelerator.device)
    clip_dim = int(base.clip_vision.config.hidden_size)
    model = RendererTrainable(base.unet_config, clip_dim, base.pe_kwargs, cfg.reference_position_encoding,
                              cfg.target_input)
    used = model.initialise(cfg.init, base.base_dir, base.release_root)
    accelerator.print(f"renderer UNet/ReferenceNet init: {used}")
    if cfg.gradient_checkpointing:
        # only the renderer UNet; the ReferenceNet's early stop (an exception) does not mix with recomputation
        model.unet.unet.enable_gradient_checkpointing()
    sched = train_scheduler()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    def loss_fn(m, step, g, acc):
        b = data.sample(g, cfg.batch_size)
        dev = acc.device
        n = b["next"].shape[0]
        z0 = base.encode(b["next"].to(dev), g, b["next_id"])
        z_ref = base.encode(b["target"].to(dev), g, b["target_id"])
        noise = torch.randn(z0.shape, generator=g).to(z0)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (n,), generator=g).to(dev)
        noisy = sched.add_noise(z0, noise, t)
        canvas = b["cur"].to(dev) * (~b["drop_cur_cond"]).to(dev, torch.float32).view(n, 1, 1, 1)
        mask = b["mask_next"].to(dev) * (~b["drop_RP"]).to(dev, torch.float32).view(n, 1, 1, 1)
        e_cur = base.encode_clip(b["cur_u8"])
        e_tgt = base.encode_clip(b["target_u8"])
        texts = ["" if d else s for s, d in zip(b["text"], b["drop_feature"].tolist())]
        text = base.encode_text(texts)
        unwrapped = acc.unwrap_model(m)
        pe_x = unwrapped.pe.interval_to_x(b["interval"], dtype=torch.float32, device=dev)
        pred = m(noisy, t, z_ref, torch.cat([canvas, mask], 1), e_cur, e_tgt, pe_x, text,
                 {k: b[k] for k in ("drop_image_embeds", "drop_time_step")}, acc)
        if cfg.prediction_type == "v_prediction":
            return F.mse_loss(pred, sched.get_velocity(z0, noise, t))
        return F.mse_loss(pred, noise)

    def export_fn(m, step):
        export_renderer(out, m, step, base.renderer_config, cfg.safetensors, cfg.prediction_type)
        if cfg.complete_release:
            link_release_parts(out, base.release_root, ("base", "clip", "lpips", "RP", "TP_llava"))

    return train_loop(cfg, accelerator, model, loss_fn, export_fn, "renderer")


def main(argv=None) -> int:
    return run_cli(RendererConfig, train, argv, "Train the Inverse Painting renderer.")


if __name__ == "__main__":
    import sys

    from ...core.errors import run_command

    raise SystemExit(run_command(main, "--debug" in sys.argv))
