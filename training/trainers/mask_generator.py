"""Mask-generator ("RP") trainer (spec 4.3) on accelerate.

Model: MaskUNet (9 in = [z_cur, z_target, M_d(cur, target)], 1 out, no time embedding) built from the base
UNet config and **randomly initialised** (as the release), plus a random TimeEncoder ("PE").
Context = [PE(interval) (1 token), CLIP text(GT next_text) (77 tokens)]; no text/time dropout.
Target: GT mask = LPIPS(cur, next) > 0.2, nearest-downsampled to the latent size; loss =
BCE-with-logits (mean). VAE and text encoder frozen; the PE and the text encoder run in fp32 outside
autocast. AdamW (1e-5, wd 1e-2), constant LR, grad clip 1.0.

Output: ``<out>/RP/checkpoint-global_step-N.ckpt`` {RP_state_dict, PE_state_dict, global_step, epoch} + .safetensors.

CLI: ``python -m inverse_painting.training.trainers.mask_generator --data D --base RELEASE --out O --steps N``
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ...core.difference_mask import to_latent
from ...models.mask_unet import MaskUNet
from ...models.time_encoder import TimeEncoder
from .common import run_cli, TrainConfig, link_release_parts, load_base, load_metric, make_accelerator, save_official, train_loop
from .data import PairDataset


class MaskTrainable(torch.nn.Module):
    def __init__(self, unet_config: dict, pe_kwargs: dict):
        super().__init__()
        cfg = {k: v for k, v in unet_config.items() if not k.startswith("_")}
        cfg.update(in_channels=9, out_channels=1)
        self.unet = MaskUNet(cfg)
        self.pe = TimeEncoder(out_dim=int(cfg["cross_attention_dim"]), **pe_kwargs)

    def forward(self, x, intervals, text_emb, autocast_ctx=None):
        pe = self.pe(intervals).float()  # fp32, outside autocast
        context = torch.cat([pe, text_emb.to(pe)], dim=1)
        if autocast_ctx is None:
            return self.unet(x, context)
        with autocast_ctx:
            return self.unet(x, context)


def export_mask(out: Path, model: MaskTrainable, step: int, safetensors: bool = True) -> Path:
    sd = lambda m: {k: v.detach().float().cpu().clone() for k, v in m.state_dict().items()}  # noqa: E731
    return save_official(Path(out) / "RP" / f"checkpoint-global_step-{step}.ckpt",
                         {"epoch": 0, "global_step": int(step), "RP_state_dict": sd(model.unet.unet),
                          "PE_state_dict": sd(model.pe)}, safetensors)


def train(cfg: TrainConfig) -> dict:
    accelerator = make_accelerator(cfg)
    torch.manual_seed(cfg.seed)  # identical random init on every rank (DDP also broadcasts)
    base = load_base(cfg.base).to(accelerator.device)
    base.latent_cache = {} if cfg.cache_latents else None
    metric = load_metric(cfg, base).to(accelerator.device)
    data = PairDataset(cfg.data, cfg.split, metric=metric, drop_prob=cfg.drop_prob, use_lpips_folder=False)
    model = MaskTrainable(base.unet_config, base.pe_kwargs)
    if cfg.gradient_checkpointing:
        model.unet.unet.enable_gradient_checkpointing()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    def loss_fn(m, step, g, acc):
        b = data.sample(g, cfg.batch_size)
        dev = acc.device
        z_cur = base.encode(b["cur"].to(dev), g, b["cur_id"])
        z_tgt = base.encode(b["target"].to(dev), g, b["target_id"])
        hw = z_cur.shape[-2:]
        m_d = to_latent(b["mask_target"], hw).to(dev)
        gt = to_latent(b["mask_next"], hw).to(dev)
        text = base.encode_text(b["text"])
        x = torch.cat([z_cur, z_tgt, m_d], dim=1)
        logits = m(x, b["interval"], text, acc.autocast())
        return F.binary_cross_entropy_with_logits(logits.float(), gt)

    def export_fn(m, step):
        export_mask(out, m, step, cfg.safetensors)
        if cfg.complete_release:
            link_release_parts(out, base.release_root, ("base", "clip", "lpips", "renderer", "TP_llava"))

    return train_loop(cfg, accelerator, model, loss_fn, export_fn, "mask_generator")


def main(argv=None) -> int:
    return run_cli(TrainConfig, train, argv, "Train the Inverse Painting mask generator (RP).")


if __name__ == "__main__":
    import sys

    from ...core.errors import run_command

    raise SystemExit(run_command(main, "--debug" in sys.argv))
