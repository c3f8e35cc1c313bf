"""Shared trainer machinery: config/CLI, frozen base parts, accelerator, deterministic steps, EMA, export.

* Every random draw of step ``s`` on rank ``r`` (pair choice, drop flags, VAE sample, noise, timestep)
  comes from one ``torch.Generator`` seeded from (seed, s, r), so a run resumed from
  ``accelerator.save_state`` continues exactly as the uninterrupted run (same parameters).
* Checkpoints: ``<out>/state/step-N/`` (accelerate state: model, optimizer, EMA, RNG; for resuming) and
  the official layout for inference (``renderer/ckpt/checkpoint-global_step-N.ckpt``,
  ``RP/checkpoint-global_step-N.ckpt``) plus a ``.safetensors`` beside each (core.loading.convert_checkpoint).
  With ``complete_release`` the missing release parts (base/, clip/, lpips/, the other component) are
  linked from the base release so ``ModelSet.from_release(out)`` works directly.
* Multi-process: launch with ``torchrun --standalone --nproc_per_node N -m ...`` (gloo on CPU);
  ``accelerate launch --cpu`` silently runs a single process (deps.md section 7).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from ...core.errors import CommandLineParser
from ...core.loading import (CONFIG_DEFAULTS, WeightFileError, convert_checkpoint, find_release, read_renderer_config,
                             read_unet_config)


@dataclass
class TrainConfig:
    data: str = ""
    base: str = ""
    out: str = ""
    steps: int = 1000
    split: str = "train"
    lr: float = 1e-5
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    batch_size: int = 1
    seed: int = 42
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    ema_decay: float = 0.0  # 0 = off; > 0: EMA weights are exported
    # keep each frame's VAE posterior in memory after its first encode (renderer and mask generator); the
    # same draws, up to the encoder's last bits (see BaseParts.posterior). Held on the training device:
    # 8 * 4 * (h/8) * (w/8) bytes per frame (~130 KB at 512 px): for the starter's few thousand frames, not
    # for a large video dataset
    cache_latents: bool = False
    save_state_every: int = 0  # accelerate state (resume); 0 = only at the end
    checkpoint_every: int = 0  # official-layout checkpoint; 0 = only at the end
    stop_after: int = 0  # stop (saving the state) after this global step, as if interrupted; 0 = off
    resume: str = ""  # "", "latest" or a state folder
    cpu: bool = False
    log_every: int = 10
    print_every: int = 0  # print the mean loss every N steps (long unattended runs); 0 = off
    metric: str = "stlpips_alex"
    metric_dir: str = ""
    drop_prob: float = 0.1
    complete_release: bool = True
    safetensors: bool = True
    progress: bool = True
    tensorboard: bool = True
    lr_schedule: str = "constant"  # constant | cosine (cosine decays to 0 at `steps`)
    warmup_ratio: float = 0.0  # linear warm-up over this fraction of `steps`


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based): warm-up, then constant or cosine."""
    warm = int(round(cfg.warmup_ratio * cfg.steps))
    if step < warm:
        return (step + 1) / warm
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / span)))
    if cfg.lr_schedule != "constant":
        raise ValueError(f"lr_schedule must be constant or cosine, not {cfg.lr_schedule!r}")
    return 1.0


def build_parser(description: str, cls=TrainConfig) -> argparse.ArgumentParser:
    p = CommandLineParser(description=description)
    for f in fields(cls):
        name = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            p.add_argument(name, type=typ, default=f.default, required=f.name in ("data", "base", "out"))
    return p


def run_cli(cls, train, argv=None, description: str = "") -> int:
    """Shared ``main`` of the trainers: parse the config, train, print the first/last mean loss."""
    losses = train(config_from_args(cls, argv, description))["losses"]
    if losses:
        k = min(10, len(losses))
        print(f"loss first{k} {sum(losses[:k]) / k:.4f} last{k} {sum(losses[-k:]) / k:.4f}")
    return 0


def config_from_args(cls, argv=None, description: str = "") -> TrainConfig:
    args = build_parser(description, cls).parse_args(argv)
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


# ---------------------------------------------------------------------------------------------- base parts
@dataclass
class BaseParts:
    """The frozen parts (VAE, SD text encoder, CLIP vision) and the base configs."""

    vae: torch.nn.Module
    tokenizer: object
    text_encoder: torch.nn.Module
    clip_processor: object | None
    clip_vision: torch.nn.Module | None
    unet_config: dict
    base_dir: Path
    release_root: Path | None
    pe_kwargs: dict = field(default_factory=dict)
    renderer_config: dict = field(default_factory=dict)
    latent_cache: dict | None = None  # frame name -> (posterior mean, std); None = encode every time

    @property
    def vae_scale(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    def to(self, device):
        for m in (self.vae, self.text_encoder, self.clip_vision):
            if m is not None:
                m.to(device)
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, ids=None) -> torch.Tensor:
        """[-1,1] images -> scaled VAE latents, ``.sample()`` as officially (drawn from ``generator``).

        ``ids`` (one name per image) use :attr:`latent_cache` when it is on; the draw is the same either way.
        """
        mean, std = self.posterior(x, ids)
        eps = torch.randn(mean.shape, generator=generator).to(mean)
        return (mean + std * eps) * self.vae_scale

    @torch.no_grad()
    def posterior(self, x: torch.Tensor, ids=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the VAE posterior of each image.

        The VAE is frozen in every trainer that encodes frames and the frames are read unaugmented, so a
        frame's posterior never changes: with ``latent_cache`` (a dict, see ``TrainConfig.cache_latents``)
        each frame named in ``ids`` is encoded once per run. On a 2-core CPU the encoder was ~40 % of a
        starter renderer step. The values equal the uncached ones up to the last bits (CPU convolutions
        differ in the last bits with the batch they run in), so a long cached run follows a different
        trajectory than an uncached one with the same seed: same statistics, not the same weights.
        """
        if self.latent_cache is None or ids is None:
            dist = self.vae.encode(x.to(self.vae.device, self.vae.dtype)).latent_dist
            return dist.mean, dist.std
        cache = self.latent_cache
        first: dict = {}
        for i, k in enumerate(ids):
            if k not in cache:
                first.setdefault(k, i)
        if first:
            rows = list(first.values())
            dist = self.vae.encode(x[rows].to(self.vae.device, self.vae.dtype)).latent_dist
            for j, k in enumerate(first):
                cache[k] = (dist.mean[j].clone(), dist.std[j].clone())
        return torch.stack([cache[k][0] for k in ids]), torch.stack([cache[k][1] for k in ids])

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        from ...core.text_encoding import tokenize

        ids = tokenize(self.tokenizer, prompts).to(self.text_encoder.device)
        return self.text_encoder(ids).last_hidden_state.float()  # no attention mask, fp32, as officially

    @torch.no_grad()
    def encode_clip(self, images_u8) -> torch.Tensor:
        from PIL import Image

        px = self.clip_processor(images=[Image.fromarray(a) for a in images_u8], return_tensors="pt").pixel_values
        return self.clip_vision(pixel_values=px.to(self.clip_vision.device, self.clip_vision.dtype)).pooler_output.float()


def load_base(base, need_clip: bool = False) -> BaseParts:
    """``base`` = a release folder (with base/, clip/) or a diffusers SD folder (unet/config.json, vae/, ...)."""
    from diffusers import AutoencoderKL
    from diffusers.utils import logging as dlog
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPVisionModel
    from transformers.utils import logging as tlog

    from ...core.text_encoding import load_tokenizer

    tlog.set_verbosity_error()
    dlog.set_verbosity_error()
    base = Path(base)
    release_root, clip_dir, cfg = None, None, dict(CONFIG_DEFAULTS)
    if (base / "unet" / "config.json").is_file():
        base_dir = base
        cand = base.parent / "clip"
        clip_dir = cand if cand.is_dir() else None
    else:
        paths = find_release(base)
        if paths.base is None:
            raise WeightFileError(f"{base}: neither a diffusers base folder nor a release with base/")
        release_root, base_dir, clip_dir = base, paths.base, paths.clip
        cfg = read_renderer_config(paths.renderer_config)
    if need_clip and clip_dir is None:
        raise WeightFileError(f"{base}: the renderer trainer needs a CLIP vision folder (clip/)")
    vae = AutoencoderKL.from_pretrained(str(base_dir / "vae"), local_files_only=True)
    tok = load_tokenizer(base_dir / "tokenizer")
    te = CLIPTextModel.from_pretrained(str(base_dir / "text_encoder"), local_files_only=True)
    proc = vision = None
    if need_clip:
        proc = CLIPImageProcessor.from_pretrained(str(clip_dir), local_files_only=True)
        vision = CLIPVisionModel.from_pretrained(str(clip_dir), local_files_only=True)
    for m in (vae, te, vision):
        if m is not None:
            m.eval().requires_grad_(False)
    return BaseParts(vae, tok, te, proc, vision, read_unet_config(base_dir), base_dir, release_root,
                     dict(round_to=float(cfg["PE_time_interval"]), max_seconds=float(cfg["PE_time_max"])), cfg)


def load_metric(cfg: TrainConfig, base: BaseParts):
    from ...models.lpips_net import load_perceptual_metric

    wdir = cfg.metric_dir or None
    if wdir is None and base.release_root is not None and (base.release_root / "lpips").is_dir() and cfg.metric == "lpips_alex":
        wdir = base.release_root / "lpips"
    return load_perceptual_metric(cfg.metric, weights_dir=wdir)


# ---------------------------------------------------------------------------------------------- helpers
def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(step) * 7_919 + int(rank) * 104_729) % (2**63 - 1))
    return g


class EMA:
    """Exponential moving average of a module's float parameters (checkpointable by accelerate)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: p.detach().clone() for k, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: torch.nn.Module):
        for k, p in module.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach(), 1 - self.decay)

    def copy_to(self, module: torch.nn.Module):
        with torch.no_grad():
            for k, p in module.named_parameters():
                if k in self.shadow:
                    p.copy_(self.shadow[k])

    def state_dict(self):
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, sd):
        self.decay = float(sd["decay"])
        for k, v in sd["shadow"].items():
            self.shadow[k].copy_(v)


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    log_with = None
    if cfg.tensorboard:
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            pass
    return Accelerator(cpu=cfg.cpu, mixed_precision=cfg.mixed_precision, log_with=log_with,
                       project_dir=str(Path(cfg.out) / "logs"),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def latest_state(out) -> Path | None:
    d = Path(out) / "state"
    if not d.is_dir():
        return None
    cands = [p for p in d.iterdir() if p.name.startswith("step-") and (p / "trainer_state.json").is_file()]
    return max(cands, key=lambda p: int(p.name.split("-")[1]), default=None)


def link_release_parts(out: Path, release_root: Path | None, parts) -> None:
    """Link (or copy) release parts that ``out`` lacks from the base release, for from_release(out)."""
    if release_root is None:
        return
    for part in parts:
        src, dst = Path(release_root) / part, Path(out) / part
        if not src.exists() or dst.exists() or dst.is_symlink():
            continue
        try:
            dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())
        except OSError:
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


def save_official(path: Path, payload: dict, safetensors: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(payload, str(tmp))
    tmp.replace(path)
    if safetensors:
        convert_checkpoint(path)
    return path


# ---------------------------------------------------------------------------------------------- the loop
def train_loop(cfg: TrainConfig, accelerator, model: torch.nn.Module, loss_fn, export_fn, name: str) -> dict:
    """Generic loop. ``loss_fn(model, step, generator) -> loss`` (does its own autocast where needed);
    ``export_fn(unwrapped_model, step)`` writes the official checkpoint (main process only).
    Returns {"losses": [...], "step": final step}."""
    out = Path(cfg.out)
    params = [p for p in model.parameters() if p.requires_grad]
    # a model may ask for per-group LRs (the text generator: LoRA 1e-4, projector 2e-5)
    groups = model.param_groups(cfg) if hasattr(model, "param_groups") else params
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                            weight_decay=cfg.weight_decay)
    model, opt = accelerator.prepare(model, opt)
    sched = None
    if cfg.lr_schedule != "constant" or cfg.warmup_ratio > 0:
        # not accelerator.prepare'd: AcceleratedScheduler would step once per process per step
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s))
        accelerator.register_for_checkpointing(sched)
    ema = None
    if cfg.ema_decay > 0:
        ema = EMA(accelerator.unwrap_model(model), cfg.ema_decay)
        accelerator.register_for_checkpointing(ema)
    start = 0
    if cfg.resume:
        state = latest_state(out) if cfg.resume == "latest" else Path(cfg.resume)
        if state is not None:
            accelerator.load_state(str(state))
            start = int(json.loads((state / "trainer_state.json").read_text())["step"])
            accelerator.print(f"resumed from {state} at step {start}")
        elif cfg.resume != "latest":
            raise FileNotFoundError(cfg.resume)
    if accelerator.is_main_process and accelerator.log_with:
        accelerator.init_trackers(name, config={k: v for k, v in asdict(cfg).items() if isinstance(v, (int, float, str, bool))})

    def save_state(step):
        d = out / "state" / f"step-{step}"
        accelerator.save_state(str(d))
        if accelerator.is_main_process:
            (d / "trainer_state.json").write_text(json.dumps({"step": step, "config": asdict(cfg)}, indent=1))
        accelerator.wait_for_everyone()

    def export(step):
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            m = accelerator.unwrap_model(model)
            if ema is not None:
                m = copy.deepcopy(m)
                ema.copy_to(m)
            export_fn(m, step)
        accelerator.wait_for_everyone()

    losses = []
    end = cfg.steps if not cfg.stop_after else min(cfg.steps, cfg.stop_after)
    bar = None
    if cfg.progress and accelerator.is_local_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=name, dynamic_ncols=True)
    model.train()
    t0 = time.time()
    step = start
    while step < end:
        g = step_generator(cfg.seed, step, accelerator.process_index)
        loss = loss_fn(model, step, g, accelerator)
        accelerator.backward(loss)
        if cfg.grad_clip and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sched is not None:
            sched.step()
        if ema is not None:
            ema.update(accelerator.unwrap_model(model))
        step += 1
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"{name}: loss is {lv} at step {step}")
        losses.append(lv)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{lv:.4f}")
        if cfg.log_every and step % cfg.log_every == 0:
            accelerator.log({"loss": lv, "loss_avg": sum(losses[-cfg.log_every:]) / len(losses[-cfg.log_every:])}, step=step)
        if cfg.print_every and step % cfg.print_every == 0:
            recent = losses[-cfg.print_every:]
            accelerator.print(f"{name}: step {step}/{cfg.steps} loss {sum(recent) / len(recent):.5f} "
                              f"({time.time() - t0:.0f}s)", flush=True)
        if cfg.save_state_every and step % cfg.save_state_every == 0 and step < end:
            save_state(step)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < end:
            export(step)
    if bar is not None:
        bar.close()
    if step > start or cfg.stop_after:
        save_state(step)
    if step >= cfg.steps:
        export(step)
    in_sync = None
    trained = accelerator.unwrap_model(model)
    if accelerator.num_processes > 1:  # parameters must be identical on every rank (DDP sanity check)
        flat = torch.cat([p.detach().float().flatten() for p in trained.parameters()])
        gathered = accelerator.gather(flat[None])
        in_sync = bool(all(torch.equal(gathered[0], g) for g in gathered[1:]))
        # drop the DDP wrapper (its reducer holds the process group) on every rank before the group ends:
        # freed later, when this frame returned, it hung one 2-process CPU run in ~10 (gloo teardown)
        del model, opt
        accelerator.free_memory()
        accelerator.wait_for_everyone()
    accelerator.end_training()  # also ends the process group in recent accelerate
    accelerator.print(f"{name}: steps {start}->{step} in {time.time() - t0:.1f}s")
    return {"losses": losses, "step": step, "model": trained, "ema": ema,
            "ranks_in_sync": in_sync, "world_size": accelerator.num_processes, "rank": accelerator.process_index}
