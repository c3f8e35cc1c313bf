"""Small latent autoencoder (diffusers ``AutoencoderKL``) trainer on accelerate, for starter models.

The released models use Stable Diffusion's VAE (83 M parameters, 335 MB). A starter model trained on
synthetic paintings needs only a small one: 8x downsampling, 4 latent channels (what every other network
of the pack expects), configurable widths, e.g. ``--widths 32,64,128,128`` (about 5 M parameters, 20 MB
in fp32).

Data: every frame of every painting of ``<data>/<split>/rgb/*/`` (the raw layout written by ``synth`` or
``ingest``), the white canvas included as one extra image. Each step draws ``batch_size`` random frames
and a random ``crop`` x ``crop`` window of each (frames smaller than the crop are padded white), with a
random horizontal flip, from the (seed, step, rank) generator of the shared loop (resume is exact).

Loss = L1(x_hat, x) + ``kl_weight`` * KL(q(z|x) || N(0, I)) (mean over latent elements)
+ ``perceptual_weight`` * LPIPS(x_hat, x) with the core metric (``--metric``, default ``stlpips_alex``,
which ships in a pip wheel: no download). The decoder is run on a *sample* of the posterior (as SD's VAE
was trained); inference uses the posterior mean.

``--part decoder`` (with ``--init base``) trains the decoder alone on the posterior means, the encoder frozen
and the scaling factor kept (as SD's ft-MSE VAE was made): the networks trained on this VAE's latents stay
valid, only the images decoded from them change.

Output: ``<out>/vae/`` = a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)
that drops into a release's ``base/vae``. Its ``scaling_factor`` is set at export to
``1 / std(posterior means)`` over up to ``scale_samples`` whole frames of the data (deterministic: the
first frames of the sorted list), so that the scaled latents the diffusion networks see have unit
standard deviation, as SD's 0.18215 does for its VAE. ``<out>/vae_stats.json`` records it.

CLI: ``python -m inverse_painting.training.trainers.vae --data D --out O --steps N [--base RELEASE]``
(``--base`` is optional: with ``--init base`` the VAE of a release / diffusers folder is fine-tuned;
otherwise the VAE is built from ``--widths`` etc. and randomly initialised).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .common import TrainConfig, build_parser, make_accelerator, train_loop

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass
class VAEConfig(TrainConfig):
    steps: int = 2000
    lr: float = 5e-4  # from-scratch AdamW; 2e-3 was noisier and slower on the synthetic frames
    weight_decay: float = 0.0
    batch_size: int = 4
    widths: str = "32,64,128,128"  # block_out_channels; len(widths) - 1 downsamplings (4 -> 8x)
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_groups: int = 32  # clipped to min(widths)
    crop: int = 128
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.0
    init: str = "random"  # random | base (the VAE of --base)
    scale_samples: int = 32
    flip: bool = True
    sample_posterior: bool = True  # decode z ~ q(z|x) (as SD's VAE); False: decode the mean (plain AE + KL)
    # "decoder": only the decoder (and post_quant_conv) of the --init base VAE learns, on the posterior means, with
    # the encoder frozen: the latent space (and the scaling factor) the other networks were trained on stays
    # exactly as it was, while the images decoded from it get sharper
    part: str = "all"  # all | decoder


# ---------------------------------------------------------------------------------------------- data
def list_frames(data, split: str = "train") -> list[Path]:
    """Every frame image of ``<data>/<split>/rgb/*/`` (or ``<data>/rgb/*/``), sorted."""
    root = Path(data)
    rgb = root / split / "rgb" if (root / split / "rgb").is_dir() else root / "rgb"
    files = sorted(p for p in rgb.glob("*/*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"no frames ({', '.join(IMAGE_EXTS)}) under {rgb}/*/")
    return files


class FrameData:
    """All frames in memory (uint8 HWC) plus one white canvas; random crops from a generator."""

    def __init__(self, data, split: str = "train", crop: int = 128, flip: bool = True):
        from PIL import Image

        self.files = list_frames(data, split)
        self.images = []
        for f in self.files:
            with Image.open(f) as im:
                self.images.append(np.asarray(im.convert("RGB")).copy())
        h, w = self.images[0].shape[:2]
        self.images.append(np.full((h, w, 3), 255, np.uint8))  # the blank canvas every process starts from
        self.crop, self.flip = int(crop), bool(flip)

    def __len__(self) -> int:
        return len(self.images)

    def _crop(self, img: np.ndarray, g: torch.Generator) -> np.ndarray:
        c = self.crop
        h, w = img.shape[:2]
        if h < c or w < c:
            img = np.pad(img, ((0, max(0, c - h)), (0, max(0, c - w)), (0, 0)), constant_values=255)
            h, w = img.shape[:2]
        y = int(torch.randint(h - c + 1, (1,), generator=g))
        x = int(torch.randint(w - c + 1, (1,), generator=g))
        out = img[y:y + c, x:x + c]
        if self.flip and bool(torch.rand(1, generator=g) < 0.5):
            out = out[:, ::-1]
        return out

    def sample(self, g: torch.Generator, batch_size: int) -> torch.Tensor:
        """(B, 3, crop, crop) float32 in [-1, 1]."""
        crops = [self._crop(self.images[int(torch.randint(len(self), (1,), generator=g))], g) for _ in range(batch_size)]
        x = torch.from_numpy(np.stack(crops).copy()).permute(0, 3, 1, 2).float()
        return x / 127.5 - 1


def pad_to(img: np.ndarray, multiple: int) -> np.ndarray:
    h, w = img.shape[:2]
    return np.pad(img, ((0, (-h) % multiple), (0, (-w) % multiple), (0, 0)), mode="edge")


# ---------------------------------------------------------------------------------------------- model
def parse_widths(widths) -> tuple[int, ...]:
    if isinstance(widths, str):
        widths = [w for w in widths.replace(" ", "").split(",") if w]
    return tuple(int(w) for w in widths)


def build_vae(widths=(32, 64, 128, 128), latent_channels: int = 4, layers_per_block: int = 1,
              norm_groups: int = 32, sample_size: int = 128):
    """A randomly initialised diffusers AutoencoderKL (SD layout, 2 ** (len(widths) - 1) downsampling)."""
    from diffusers import AutoencoderKL

    widths = parse_widths(widths)
    groups = min(int(norm_groups), min(widths))
    if any(w % groups for w in widths):
        raise ValueError(f"every width {widths} must be a multiple of the norm groups ({groups})")
    n = len(widths)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=widths,
                         layers_per_block=int(layers_per_block), latent_channels=int(latent_channels),
                         norm_num_groups=groups, sample_size=int(sample_size))


class VAETrainable(torch.nn.Module):
    """Wraps the AutoencoderKL so one ``forward`` (what DDP sees) gives reconstruction and posterior."""

    def __init__(self, vae, frozen_encoder: bool = False):
        super().__init__()
        self.vae = vae
        self.frozen_encoder = frozen_encoder

    def forward(self, x: torch.Tensor, noise: torch.Tensor):
        if self.frozen_encoder:  # decoder only: the means, which is what inference decodes
            with torch.no_grad():
                dist = self.vae.encode(x).latent_dist
            return self.vae.decode(dist.mean).sample, dist.mean, dist.logvar
        dist = self.vae.encode(x).latent_dist
        z = dist.mean + dist.std * noise.to(dist.mean)
        return self.vae.decode(z).sample, dist.mean, dist.logvar


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, var) || N(0, 1)), mean over elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()


@torch.no_grad()
def latent_scaling_factor(vae, images: list[np.ndarray], max_images: int = 32) -> tuple[float, dict]:
    """1 / std of the posterior means of (up to ``max_images``) whole images; also returns the stats."""
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    dev = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    vals = []
    for img in images[:max_images]:
        x = torch.from_numpy(pad_to(img, down).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        vals.append(vae.encode(x.to(dev, dtype)).latent_dist.mean.float().flatten().cpu())
    v = torch.cat(vals)
    std = float(v.std())
    return 1.0 / max(std, 1e-6), {"latent_mean": float(v.mean()), "latent_std": std, "images": len(vals)}


@torch.no_grad()
def reconstruction_error(vae, images: list[np.ndarray], max_images: int = 8) -> float:
    """Mean absolute error (0..255 scale) of decode(mean) on whole images: a quick quality number."""
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    dev = next(vae.parameters()).device
    errs = []
    for img in images[:max_images]:
        h, w = img.shape[:2]
        x = torch.from_numpy(pad_to(img, down).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        x = x.to(dev, next(vae.parameters()).dtype)
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
        errs.append(float((y - x.float()).abs()[..., :h, :w].mean()) * 127.5)
    return float(np.mean(errs))


def export_vae(out, vae, images: list[np.ndarray], max_images: int = 32, step: int = 0,
               scaling_factor: float | None = None) -> Path:
    """``<out>/vae/`` (diffusers, safetensors) with the data's scaling factor (or ``scaling_factor``, that of the
    VAE whose decoder alone was trained: the encoder did not change); returns the folder."""
    out = Path(out)
    was_training = vae.training
    vae.eval()
    scale, stats = latent_scaling_factor(vae, images, max_images)
    if scaling_factor is not None:
        scale = float(scaling_factor)
    stats["reconstruction_mae_255"] = reconstruction_error(vae, images)
    vae.register_to_config(scaling_factor=float(scale))
    dst = out / "vae"
    vae.save_pretrained(str(dst), safe_serialization=True)
    # diffusers records the folder an --init base VAE was read from: a path of the training machine
    cfg_file = dst / "config.json"
    config = json.loads(cfg_file.read_text())
    if config.pop("_name_or_path", None) is not None:
        cfg_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    stats.update(scaling_factor=float(scale), global_step=int(step))
    (out / "vae_stats.json").write_text(json.dumps(stats, indent=1))
    vae.train(was_training)
    return dst


def _base_vae_dir(base) -> Path:
    b = Path(base)
    for cand in (b / "base" / "vae", b / "vae", b):
        if (cand / "config.json").is_file():
            return cand
    raise FileNotFoundError(f"{base}: no VAE folder (base/vae, vae/ or a diffusers VAE folder)")


# ---------------------------------------------------------------------------------------------- train
def train(cfg: VAEConfig) -> dict:
    if cfg.part not in ("all", "decoder"):  # checked before the frames load
        raise ValueError(f"--part must be all or decoder, not {cfg.part!r}")
    if cfg.part == "decoder" and cfg.init != "base":
        raise ValueError("--part decoder fine-tunes the decoder of an existing VAE: give --init base --base VAE")
    accelerator = make_accelerator(cfg)
    torch.manual_seed(cfg.seed)  # identical random init on every rank
    data = FrameData(cfg.data, cfg.split, crop=cfg.crop, flip=cfg.flip)
    if cfg.init == "base":
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(_base_vae_dir(cfg.base)), local_files_only=True)
    elif cfg.init == "random":
        vae = build_vae(cfg.widths, cfg.latent_channels, cfg.layers_per_block, cfg.norm_groups, cfg.crop)
    else:
        raise ValueError(f"--init must be random or base, not {cfg.init!r}")
    keep_scale = None
    if cfg.part == "decoder":
        keep_scale = float(vae.config.scaling_factor)
        vae.requires_grad_(False)
        vae.decoder.requires_grad_(True)
        if vae.post_quant_conv is not None:
            vae.post_quant_conv.requires_grad_(True)
    if cfg.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    model = VAETrainable(vae, frozen_encoder=cfg.part == "decoder")
    metric = None
    if cfg.perceptual_weight > 0:
        from ...models.lpips_net import load_perceptual_metric

        metric = load_perceptual_metric(cfg.metric, weights_dir=cfg.metric_dir or None).to(accelerator.device)
        metric.requires_grad_(False)
    n_params = sum(p.numel() for p in vae.parameters())
    accelerator.print(f"vae: {n_params / 1e6:.2f} M parameters, {len(data)} frames, crop {cfg.crop}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last = {}

    def loss_fn(m, step, g, acc):
        x = data.sample(g, cfg.batch_size).to(acc.device)
        down = 2 ** (len(acc.unwrap_model(m).vae.config.block_out_channels) - 1)
        lc = acc.unwrap_model(m).vae.config.latent_channels
        noise = torch.randn((x.shape[0], lc, x.shape[2] // down, x.shape[3] // down), generator=g)
        with acc.autocast():
            rec, mean, logvar = m(x, noise.to(acc.device) * float(cfg.sample_posterior))
        rec = rec.float()
        rec_l1 = (rec - x).abs().mean()
        kl = kl_loss(mean.float(), logvar.float())
        loss = rec_l1 + (cfg.kl_weight * kl if cfg.part == "all" else 0.0)
        if metric is not None:
            loss = loss + cfg.perceptual_weight * metric(rec, x).float().mean()
        last.update(l1=float(rec_l1.detach()), kl=float(kl.detach()))
        return loss

    def export_fn(m, step):
        export_vae(out, m.vae, [im for im in data.images], cfg.scale_samples, step, scaling_factor=keep_scale)

    res = train_loop(cfg, accelerator, model, loss_fn, export_fn, "vae")
    res["last_terms"] = last
    res["vae_dir"] = out / "vae"
    return res


def config_from_args(argv=None) -> VAEConfig:
    from dataclasses import fields

    p = build_parser("Train a small latent autoencoder (diffusers AutoencoderKL) on painting frames.", VAEConfig)
    for a in p._actions:  # --base is optional here (only for --init base)
        if a.dest == "base":
            a.required = False
    args = p.parse_args(argv)
    return VAEConfig(**{f.name: getattr(args, f.name) for f in fields(VAEConfig)})


def main(argv=None) -> int:
    """CLI (``--base`` optional); prints the first/last mean loss like the other trainers."""
    res = train(config_from_args(argv))
    losses = res["losses"]
    if losses:
        k = min(10, len(losses))
        print(f"loss first{k} {sum(losses[:k]) / k:.4f} last{k} {sum(losses[-k:]) / k:.4f}")
    return 0


if __name__ == "__main__":
    import sys

    from ...core.errors import run_command

    raise SystemExit(run_command(main, "--debug" in sys.argv))
