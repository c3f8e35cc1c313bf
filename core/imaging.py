"""Image geometry and conversions shared by every stage.

The working image is the input resized once so that its short side is ``short_side`` (512 by default)
and then zero-padded (black) at the bottom and right to multiples of 16, like the official ``pad_to_16``.
Resizing first and treating the resized size as the "original" size avoids the official crop bug (B1),
so the canvas is re-cropped to the unpadded area and re-padded after every keyframe without zooming.

Conventions: images are ``np.uint8`` HWC RGB at the boundary; model inputs are float NCHW in [-1, 1].
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import UserInputError

from .limits import FRAME_SIZES, MAX_ASPECT, MAX_SHORT_SIDE, MAX_SIDE, MIN_SIDE  # noqa: F401 - re-exported
_ALPHA_MODES = ("RGBA", "LA", "P", "PA", "RGBa", "La")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageInputError(UserInputError):
    """An input image that cannot be used (unreadable, wrong shape, too small, NaN, ...)."""


def load_image(path, name: str | None = None) -> tuple[np.ndarray, str]:
    """An image file -> (uint8 HWC RGB, note of what was done to it), or :class:`ImageInputError` naming it.

    EXIF orientation is applied, every Pillow mode is converted by its meaning (16-bit and float images are
    scaled, not clipped; an embedded ICC profile is converted to sRGB), transparency is composited on white.
    """
    p = Path(path)
    name = name or str(p)
    if not p.exists():
        raise ImageInputError(f"{name}: no such file")
    if not p.is_file():
        raise ImageInputError(f"{name}: not a regular file (expected an image: PNG, JPEG, WebP, TIFF, ...)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large scans are fine; bombs raise
            with Image.open(p) as im:
                im.load()
                return pil_to_rgb_uint8(im, name)
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"{name}: too many pixels to open safely ({exc})") from None
    except ImageInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - UnidentifiedImageError, truncated files, decoder errors
        raise ImageInputError(f"{name}: cannot read it as an image ({type(exc).__name__}: {exc})") from None


def _to_srgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """Convert through an embedded ICC profile to sRGB (RGB out); the image unchanged when there is none."""
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in ("RGB", "CMYK", "L"):
        return im
    try:
        import io

        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        out = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        notes.append("ICC profile converted to sRGB")
        return out
    except Exception:  # noqa: BLE001 - a broken profile: read the values as they are, and say so
        notes.append("embedded ICC profile unreadable: colours read as sRGB")
        return im


def pil_to_rgb_uint8(im: Image.Image, name: str = "image") -> tuple[np.ndarray, str]:
    """A Pillow image -> (uint8 HWC RGB, note); see :func:`load_image`."""
    notes: list[str] = []
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        im.seek(0)
        notes.append(f"first of its {frames} frames")
    if im.getexif().get(0x0112, 1) not in (1, None):
        im = ImageOps.exif_transpose(im)
        notes.append("turned upright by its EXIF orientation")
    mode = im.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        a = np.asarray(im).astype(np.int64)
        if mode == "I" and (a.min() < 0 or a.max() > 65535):
            raise ImageInputError(f"{name}: 32-bit integer image with values {a.min()}..{a.max()}; expected "
                                  "0..65535 (save it as an 8- or 16-bit image)")
        grey = np.floor(a / 257.0 + 0.5).astype(np.uint8)  # 16-bit full range -> 8-bit
        notes.append("16-bit values scaled to 8-bit")
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2)), "; ".join(notes)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ImageInputError(f"{name}: the float image holds NaN or Inf values")
        if a.min() < -1e-3 or a.max() > 1 + 1e-3:
            raise ImageInputError(f"{name}: float image with values {a.min():.4g}..{a.max():.4g}; expected 0..1")
        grey = np.clip(np.floor(a * 255.0 + 0.5), 0, 255).astype(np.uint8)
        notes.append("float values scaled to 8-bit")
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2)), "; ".join(notes)
    if mode == "LAB":
        from PIL import ImageCms

        t = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        notes.append("CIELAB converted to sRGB")
        return np.asarray(ImageCms.applyTransform(im, t), dtype=np.uint8).copy(), "; ".join(notes)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        if im.info.get("icc_profile"):  # the colours go through the profile as in an opaque image; alpha as is
            colour = im.convert("LA").getchannel("L") if mode in ("LA", "La") else rgba.convert("RGB")
            colour.info["icc_profile"] = im.info["icc_profile"]
            rgba = _to_srgb(colour, notes).convert("RGB")
            rgba.putalpha(im.convert("RGBA").getchannel("A"))
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"), dtype=np.uint8).copy(), "; ".join(notes)
    im = _to_srgb(im, notes)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy(), "; ".join(notes)


def to_rgb_uint8(image, name: str = "image") -> np.ndarray:
    """PIL image / array (HW, HWC with 1, 3 or 4 channels, uint8 or float 0..1) -> uint8 HWC RGB.

    RGBA is composited on white (a transparent painting background reads as blank canvas), grey is
    replicated; a batch is refused, and so are NaN/Inf values (float values outside 0..1 are clipped).
    """
    if isinstance(image, Image.Image):
        return pil_to_rgb_uint8(image, name)[0]
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ImageInputError(f"{name}: expected one image, got a batch of {arr.shape[0]}")
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageInputError(f"{name}: expected an HxWxC image with 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "fiub":
            raise ImageInputError(f"{name}: expected numbers, got an array of {arr.dtype}")
        arr = np.asarray(arr, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageInputError(f"{name}: holds NaN or Inf values")
        arr = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
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


def frame_to_size(frame: np.ndarray, hw) -> np.ndarray:
    """A uint8 HWC frame at ``hw`` (h, w): Lanczos, unchanged when it already has that size."""
    h, w = int(hw[0]), int(hw[1])
    if frame.shape[:2] == (h, w):
        return frame
    return np.asarray(Image.fromarray(frame).resize((w, h), Image.LANCZOS))


def mask_to_size(mask: np.ndarray, hw) -> np.ndarray:
    """A uint8 HW mask at ``hw`` (h, w), nearest neighbour (a mask stays hard-edged)."""
    h, w = int(hw[0]), int(hw[1])
    if mask.shape[:2] == (h, w):
        return mask
    return np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))


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

    def fit(self, image, name: str = "start canvas") -> np.ndarray:
        """Bring another image (e.g. a user start canvas) to this working geometry."""
        img = to_rgb_uint8(image, name)
        h, w = self.size
        if img.shape[:2] == self.hw:
            return self.repad(img)
        if img.shape[:2] != (h, w):
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.LANCZOS))
        return pad_to_multiple(img)




def check_short_side(short_side: int | None, name: str = "short_side") -> None:
    if short_side is not None and (isinstance(short_side, bool) or not isinstance(short_side, int) or short_side % 8
                                   or not MIN_SIDE <= short_side <= MAX_SHORT_SIDE):
        raise ImageInputError(f"{name} must be a multiple of 8 from {MIN_SIDE} to {MAX_SHORT_SIDE}, got {short_side!r}")


def check_geometry(h: int, w: int, short_side: int | None, name: str = "image") -> None:
    """Refuse (naming ``name``) an image the working geometry cannot hold: too small, too elongated, too big."""
    if min(h, w) < MIN_SIDE:
        raise ImageInputError(f"{name} is {w}x{h}: the short side must be at least {MIN_SIDE} px")
    if max(h, w) / min(h, w) > MAX_ASPECT:
        nh, nw = resized_size(h, w, short_side) if short_side else (h, w)
        raise ImageInputError(f"{name} is {w}x{h}, an aspect ratio of {max(h, w) / min(h, w):.1f}:1 (working image "
                              f"{nw}x{nh}); at most {MAX_ASPECT:g}:1 is supported: crop it or cut it into parts")
    if max(h, w) > MAX_SIDE and short_side is None:
        raise ImageInputError(f"{name} is {w}x{h}: larger than {MAX_SIDE} px; set a short side to resize it")


def prepare_image(image, short_side: int | None = 512, name: str = "image") -> WorkingImage:
    """Input painting -> WorkingImage. ``short_side=None`` keeps the size (only pads)."""
    check_short_side(short_side)
    img = to_rgb_uint8(image, name)
    h, w = img.shape[:2]
    check_geometry(h, w, short_side, name)
    notes = []
    if short_side is not None:
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
