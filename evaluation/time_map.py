"""Time map (the paper's Fig. 10): each pixel coloured by the keyframe that last changed it.

Transition k (frame k-1 -> frame k, k = 1 .. N-1) "changes" a pixel when the pixel lies in that
transition's change mask; the map stores, per pixel, the largest such k (0 = never changed, still the
blank canvas). Change masks are, in order of preference:

* given ``masks`` (e.g. the keyframes' painted-region masks; ``masks[k]`` belongs to transition k, an
  entry may be None, and a list of N-1 masks is read as transitions 1 .. N-1);
* the perceptual difference masks D(f_k-1, f_k) > ``threshold`` (spatial LPIPS, default ST-LPIPS which
  works offline) -- the same masks the IoU metric uses;
* ``metric="pixel"``: max over RGB of |f_k - f_k-1| / 255 > ``threshold`` (no network; a cheap preview).

Reused by the ComfyUI "Time Map" node, so it only needs numpy, torch and (for colours) matplotlib.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.difference_mask import DIFFERENCE_THRESHOLD

UNCHANGED_COLOR = (255, 255, 255)


@dataclass
class TimeMap:
    index: np.ndarray  # int32 (H, W): last transition k (1 .. N-1) that changed the pixel; 0 = never
    image: np.ndarray  # uint8 (H, W, 3) coloured map
    palette: np.ndarray  # uint8 (N, 3): colour of index k (row 0 = UNCHANGED_COLOR)
    num_frames: int

    def coverage(self) -> float:
        """Fraction of pixels changed at least once."""
        return float((self.index > 0).mean())


def palette(num_frames: int, cmap: str = "viridis") -> np.ndarray:
    """(N, 3) uint8: row 0 for unchanged pixels, rows 1 .. N-1 from the colormap, early -> late."""
    n = max(num_frames - 1, 1)
    try:
        from matplotlib import colormaps

        cm = colormaps[cmap]
        cols = np.array([cm(i / max(n - 1, 1))[:3] for i in range(n)])
    except Exception:  # noqa: BLE001 - matplotlib missing: a plain blue -> red ramp
        t = np.linspace(0, 1, n)[:, None]
        cols = (1 - t) * np.array([0.2, 0.3, 0.9]) + t * np.array([0.9, 0.2, 0.1])
    rows = np.vstack([np.array(UNCHANGED_COLOR, float)[None] / 255.0, cols])
    return np.round(rows * 255).astype(np.uint8)


def change_masks(frames, threshold: float = DIFFERENCE_THRESHOLD, metric="stlpips_alex") -> list[np.ndarray]:
    """Bool masks of transitions 1 .. N-1 (see the module docstring for ``metric``)."""
    frames = [np.asarray(f) for f in frames]
    if metric == "pixel":
        return [
            (np.abs(b.astype(np.int16) - a.astype(np.int16)).max(axis=2) / 255.0) > threshold
            for a, b in zip(frames, frames[1:])
        ]
    from .metrics import consecutive_difference_masks, resolve_metric

    return consecutive_difference_masks(resolve_metric(metric), frames, threshold)


def time_map(frames, threshold: float = DIFFERENCE_THRESHOLD, metric="stlpips_alex", masks=None,
             cmap: str = "viridis") -> TimeMap:
    """Per-pixel index of the last keyframe that changed it, and its coloured image.

    ``frames``: N uint8 (H, W, 3) frames, frame 0 the blank canvas. ``metric``: a PerceptualDistance, a
    metric name, or "pixel". ``masks``: optional precomputed change masks (then no metric is run).
    """
    n = len(frames)
    if n < 1:
        raise ValueError("time_map needs at least one frame")
    h, w = np.asarray(frames[0]).shape[:2]
    if masks is None:
        masks = change_masks(frames, threshold, metric) if n > 1 else []
        masks = [None] + list(masks)
    else:
        masks = list(masks)
        if len(masks) == n - 1:
            masks = [None] + masks
        if len(masks) != n:
            raise ValueError(f"{len(masks)} masks for {n} frames (expected {n} or {n - 1})")
    index = np.zeros((h, w), np.int32)
    for k in range(1, n):
        m = masks[k]
        if m is None:
            continue
        m = np.asarray(m)
        if m.ndim == 3:
            m = m[..., 0]
        if m.shape != (h, w):
            from PIL import Image

            m = np.asarray(Image.fromarray((m > 0.5).astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
        index[m > 0.5] = k  # later transitions overwrite: the last change wins
    pal = palette(n, cmap)
    return TimeMap(index=index, image=pal[index], palette=pal, num_frames=n)
