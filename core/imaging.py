"""Image geometry and conversions shared by every stage.

The working image is the input resized once so that its short side is ``short_side`` (512 by default)
and then zero-padded (black) at the bottom and right to multiples of 16, like the official ``pad_to_16``.
Resizing first and treating the resized size as the "original" size avoids the official crop bug (B1),
so the canvas is re-cropped to the unpadded area and re-padded after every keyframe without zooming.

Conventions: images are ``np.uint8`` HWC RGB at the boundary; model inputs are float NCHW in [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

MIN_SIDE = 64
MAX_SIDE = 4096


class ImageInputError(ValueError):
    """An input image that cannot be used (wrong shape, too small, ...)."""


def to_rgb_uint8(image) -> np.ndarray:
    """PIL image / array (HW, HWC with 1, 3 or 4 channels, uint8 or float 0..1) -> uint8 HWC RGB.

    RGBA is composited on white (a transparent painting background reads as blank canvas), grey is
    replicated; a batch is refused.
    """
    if isinstance(image, Image.Image):
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            bg = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(bg, image)
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ImageInputError(f"expected one image, got a batch of {arr.shape[0]}")
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageInputError(f"expected an HxWxC image with 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.asarray(arr, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        arr = np.clip(arr[:, :, :3] * alpha + 255.0 * (1 - alpha) + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def cross_fade(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """uint8 a + t (b - a), rounded half up: the pixel mix of the cross-fade baseline and of the loop's
    finishing keyframes (``PaintSettings.finish_frames``)."""
    a = np.asarray(a, dtype=np.float32)
    return np.clip(a + t * (np.asarray(b, dtype=np.float32) - a) + 0.5, 0, 255).astype(np.uint8)


def pad_to_multiple(image: np.ndarray, multiple: int = 16) -> np.ndarray:
    """Zero-pad (black) at the bottom and right up to multiples of ``multiple``."""
    h, w = image.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image
    pad = ((0, ph), (0, pw)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, pad)


def resized_size(h: int, w: int, short_side: int) -> tuple[int, int]:
    """Official size rule: short side -> ``short_side``, long side int()-truncated to keep the aspect."""
    if h < w:
        return short_side, int(short_side * w / h)
    return int(short_side * h / w), short_side


def resize_short_side(image: np.ndarray, short_side: int = 512) -> np.ndarray:
    """Resize once (Lanczos, antialiased) so the short side is ``short_side``; identity if already so."""
    h, w = image.shape[:2]
    nh, nw = resized_size(h, w, short_side)
    if (nh, nw) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.LANCZOS))


@dataclass
class WorkingImage:
    """A target prepared for painting: ``padded`` (H, W multiples of 16) and the unpadded ``size``."""

    padded: np.ndarray  # uint8 (H, W, 3)
    size: tuple[int, int]  # (h, w) of the painted area before padding
    note: str = ""  # what preprocessing did (resizing, conversion), for logs and manifests

    @property
    def hw(self) -> tuple[int, int]:
        return self.padded.shape[0], self.padded.shape[1]

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.padded.shape[0] // 8, self.padded.shape[1] // 8

    def repad(self, image: np.ndarray) -> np.ndarray:
        """Crop an image at working size to the painted area and re-blacken the pad (next canvas)."""
        h, w = self.size
        return pad_to_multiple(np.ascontiguousarray(image[:h, :w]))

    def white_canvas(self) -> np.ndarray:
        return pad_to_multiple(np.full((*self.size, 3), 255, np.uint8))

    def fit(self, image) -> np.ndarray:
        """Bring another image (e.g. a user start canvas) to this working geometry."""
        img = to_rgb_uint8(image)
        h, w = self.size
        if img.shape[:2] == self.hw:
            return self.repad(img)
        if img.shape[:2] != (h, w):
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.LANCZOS))
        return pad_to_multiple(img)


def prepare_image(image, short_side: int | None = 512) -> WorkingImage:
    """Input painting -> WorkingImage. ``short_side=None`` keeps the size (only pads)."""
    img = to_rgb_uint8(image)
    h, w = img.shape[:2]
    notes = []
    if min(h, w) < MIN_SIDE:
        raise ImageInputError(f"image is {w}x{h}: the short side must be at least {MIN_SIDE} px")
    if max(h, w) > MAX_SIDE and short_side is None:
        raise ImageInputError(f"image is {w}x{h}: larger than {MAX_SIDE} px; set a short_side to resize it")
    if short_side is not None:
        if short_side % 8 or short_side < MIN_SIDE:
            raise ImageInputError(f"short_side must be a multiple of 8 and >= {MIN_SIDE}, got {short_side}")
        img = resize_short_side(img, short_side)
        if img.shape[:2] != (h, w):
            notes.append(f"resized {w}x{h} -> {img.shape[1]}x{img.shape[0]}")
    padded = pad_to_multiple(img)
    if padded.shape[:2] != img.shape[:2]:
        notes.append(f"padded to {padded.shape[1]}x{padded.shape[0]}")
    return WorkingImage(padded, img.shape[:2], "; ".join(notes))


def uint8_to_tensor(image: np.ndarray, device=None, dtype=torch.float32, scheme: str = "unit") -> torch.Tensor:
    """uint8 HWC -> (1, 3, H, W) in [-1, 1].

    The release maps to [-1, 1] three ways that differ in the last float bits; ``scheme`` picks one so
    each stage matches its fixture: "unit" x/255*2-1 (mask generator, LPIPS), "half" (x/255-0.5)/0.5
    (feature-encoder canvas), "centered" x/127.5-1 (renderer target for the VAE).
    """
    t = torch.from_numpy(np.array(image, dtype=np.uint8)).to(device=device, dtype=dtype)
    if scheme == "unit":
        t = t / 255.0 * 2 - 1
    elif scheme == "half":
        t = (t / 255.0 - 0.5) / 0.5
    elif scheme == "centered":
        t = t / 127.5 - 1
    else:
        raise ValueError(f"unknown scheme {scheme!r}")
    return t.permute(2, 0, 1)[None]


def tensor_to_uint8(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float in [0, 1] -> uint8 HWC with the official truncation (not rounding)."""
    arr = image[0].permute(1, 2, 0).float().cpu().numpy()
    return np.clip(arr * 255, 0, 255).astype(np.uint8)


def mask_to_uint8(mask: torch.Tensor) -> np.ndarray:
    """(1, 1, H, W) {0,1} -> uint8 (H, W) 0/255 for saving."""
    return (mask[0, 0].float().cpu().numpy() > 0.5).astype(np.uint8) * 255


def upsample_latent_mask(mask_latent: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Latent-level mask -> pixel mask by nearest upsampling (each cell becomes an 8x8 block)."""
    return torch.nn.functional.interpolate(mask_latent.float(), size=hw, mode="nearest")


def downsample_mask(mask_full: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Pixel mask -> latent level by nearest sampling (picks pixel (8i, 8j); not pooling, as officially)."""
    return torch.nn.functional.interpolate(mask_full.float(), size=hw, mode="nearest")
