"""LPIPS difference mask (official spec 2.7 step 3) and the stop-rule distance (spec 2.4 item 8).

* :func:`difference_map` -- spatial LPIPS between the canvas and the target, arguments in the official
  order (canvas, target), shape (1, 1, H, W);
* :func:`difference_mask` -- ``map > threshold`` (strict) as float {0, 1};
* :func:`to_latent` -- nearest resize to latent size, which picks pixel (8i, 8j) (not pooling);
* :func:`stop_rule_distance` -- non-spatial LPIPS of two uint8 frames (full padded frames, fp32).

Images may be uint8 HWC numpy arrays (converted as uint8 / 255 * 2 - 1, like ToTensor then x*2-1) or
float NCHW tensors already in [-1, 1]. The metric is any :class:`~..models.lpips_net.PerceptualDistance`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .imaging import downsample_mask, uint8_to_tensor

DIFFERENCE_THRESHOLD = 0.2


def _model_input(image, device) -> torch.Tensor:
    """uint8 HWC array or [-1, 1] tensor (CHW / NCHW) -> (N, 3, H, W) float32 on ``device``."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
        return uint8_to_tensor(image, device=device)
    if isinstance(image, torch.Tensor):
        t = image[None] if image.ndim == 3 else image
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"expected a (N,3,H,W) tensor in [-1, 1], got {tuple(image.shape)}")
        return t.to(device=device, dtype=torch.float32)
    raise TypeError(f"unsupported image type {type(image).__name__}")


def _device_of(metric) -> torch.device:
    try:
        return next(metric.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@torch.no_grad()
def difference_map(metric, canvas, target) -> torch.Tensor:
    """Spatial perceptual distance LPIPS(canvas, target): (1, 1, H, W) float32 (N, 1, H, W for batches)."""
    dev = _device_of(metric)
    a, b = _model_input(canvas, dev), _model_input(target, dev)
    if a.shape[2:] != b.shape[2:]:
        raise ValueError(f"canvas {tuple(a.shape[2:])} and target {tuple(b.shape[2:])} must have the same size "
                         "(pad both to the working size first)")
    return metric(a, b, spatial=True).float()


def difference_mask(dmap: torch.Tensor, threshold: float = DIFFERENCE_THRESHOLD) -> torch.Tensor:
    """Binary mask ``dmap > threshold`` (strictly greater, as officially) as float {0, 1}."""
    return (dmap > threshold).float()


def to_latent(mask_full: torch.Tensor, hw) -> torch.Tensor:
    """Pixel mask -> latent size with nearest sampling (an 8x factor picks pixel (8i, 8j))."""
    return downsample_mask(mask_full, tuple(hw))


@dataclass
class DifferenceMask:
    map: torch.Tensor  # (1, 1, H, W) spatial LPIPS
    full: torch.Tensor  # (1, 1, H, W) {0, 1}
    latent: torch.Tensor  # (1, 1, h, w) {0, 1}


def compute_difference_mask(metric, canvas, target, threshold: float = DIFFERENCE_THRESHOLD,
                            latent_hw=None) -> DifferenceMask:
    """Map, pixel mask and latent mask in one call (latent size defaults to (H // 8, W // 8))."""
    dmap = difference_map(metric, canvas, target)
    full = difference_mask(dmap, threshold)
    if latent_hw is None:
        latent_hw = (dmap.shape[-2] // 8, dmap.shape[-1] // 8)
    return DifferenceMask(dmap, full, to_latent(full, latent_hw))


@torch.no_grad()
def stop_rule_distance(metric, a, b) -> float:
    """Non-spatial LPIPS between two frames (uint8 HWC, full padded frames), as a Python float.

    The release builds the inputs in fp16; we use fp32 (as the parity fixtures do).
    """
    dev = _device_of(metric)
    x, y = _model_input(a, dev), _model_input(b, dev)
    if x.shape[2:] != y.shape[2:]:
        raise ValueError(f"frames differ in size: {tuple(x.shape[2:])} vs {tuple(y.shape[2:])}")
    return float(metric(x, y, spatial=False).reshape(-1)[0])
