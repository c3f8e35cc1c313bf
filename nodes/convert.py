"""Conversions between ComfyUI's tensors and the core's arrays.

ComfyUI: IMAGE float32 [B, H, W, C] in 0..1, MASK float32 [B, H, W] (or [H, W]) in 0..1,
LATENT {"samples": [B, C, h, w]}. Core: uint8 HWC RGB arrays, masks (1, 1, H, W) {0, 1}.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.errors import UserInputError, finite_number
from ..core.imaging import WorkingImage, to_rgb_uint8


class NodeInputError(UserInputError):
    """A node input that cannot be used; the message names the input."""


def finite_input(value, name: str, low: float | None = None, high: float | None = None) -> float:
    """A FLOAT node input, refused by name when NaN/Inf or out of range (ComfyUI's own range check lets NaN pass)."""
    return finite_number(value, name, low, high)


def image_batch_size(image, name: str = "image") -> int:
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        raise NodeInputError(f"{name}: expected an IMAGE tensor [B,H,W,C], got "
                             f"{type(image).__name__} {tuple(getattr(image, 'shape', ()))}")
    return 1 if image.ndim == 3 else int(image.shape[0])


def image_to_uint8(image, index: int = 0, name: str = "image") -> np.ndarray:
    """One frame of an IMAGE batch -> uint8 HWC RGB (alpha composited on white, grey replicated)."""
    n = image_batch_size(image, name)
    if not 0 <= index < n:
        raise NodeInputError(f"{name}: frame {index} requested from a batch of {n}")
    frame = image if image.ndim == 3 else image[index]
    return to_rgb_uint8(frame.detach().float().cpu().clamp(0, 1).numpy(), name)


def images_to_uint8(image, name: str = "image") -> list[np.ndarray]:
    return [image_to_uint8(image, i, name) for i in range(image_batch_size(image, name))]


def uint8_to_image(frames) -> torch.Tensor:
    """uint8 HWC array or list of equally sized arrays -> IMAGE [B, H, W, 3] float32 0..1 (CPU)."""
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = [frames]
    arr = np.stack([np.asarray(f, dtype=np.uint8) for f in frames])
    return torch.from_numpy(arr).float().div_(255.0)


def mask_to_batch(mask, name: str = "mask") -> torch.Tensor:
    """MASK ([H,W], [B,H,W] or [B,1,H,W]) -> float32 [B, H, W] on CPU."""
    if not isinstance(mask, torch.Tensor):
        raise NodeInputError(f"{name}: expected a MASK tensor, got {type(mask).__name__}")
    t = mask.detach().float().cpu()
    if t.ndim == 2:
        t = t[None]
    elif t.ndim == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 3:
        raise NodeInputError(f"{name}: expected a MASK [B,H,W], got shape {tuple(mask.shape)}")
    return t


def core_mask_to_comfy(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, 1, H, W) working-size mask -> MASK [1, h, w] cropped to the painted area."""
    h, w = size
    return mask[0:1, 0, :h, :w].detach().float().cpu().clamp(0, 1)


def mask_to_working(mask2d: torch.Tensor, working: WorkingImage) -> torch.Tensor:
    """A [H, W] mask in the painted-area (or working) geometry -> (1, 1, Hp, Wp) {0,1} at working size.

    Other sizes are resized (nearest) to the painted area first, then the pad is left unmasked.
    """
    t = mask2d.float()[None, None]
    Hp, Wp = working.hw
    h, w = working.size
    if tuple(t.shape[-2:]) != (Hp, Wp):
        if tuple(t.shape[-2:]) != (h, w):
            t = torch.nn.functional.interpolate(t, size=(h, w), mode="nearest")
        t = torch.nn.functional.pad(t, (0, Wp - w, 0, Hp - h))
    else:
        t = t.clone()
        t[..., h:, :] = 0
        t[..., :, w:] = 0
    return (t > 0.5).float()


def snap_to_latent_grid(mask_full: torch.Tensor) -> torch.Tensor:
    """Pixel mask -> 8x8 blocks (a cell is masked if any pixel in it is): what the renderer was trained on."""
    H, W = mask_full.shape[-2:]
    lat = torch.nn.functional.max_pool2d(mask_full.float(), 8)
    return torch.nn.functional.interpolate(lat, size=(H, W), mode="nearest")


def gray_to_image(values: torch.Tensor, size: tuple[int, int], vmax: float | None = None) -> torch.Tensor:
    """(1, 1, H, W) non-negative map -> IMAGE [1, h, w, 3] grey, scaled by ``vmax`` (default: clamp to 1)."""
    h, w = size
    v = values[0, 0, :h, :w].detach().float().cpu()
    if vmax:
        v = v / vmax
    v = v.clamp(0, 1)
    return v[None, :, :, None].repeat(1, 1, 1, 3)
