"""Synthetic painting-process generator: procedural landscape paintings painted back to front.

Role: training / test data without real painting videos.  `generate_process(seed, ...)` builds a
random landscape (sky, sun or moon, clouds, far and near mountains, mist, lake with reflections,
fields, trees, flowers, fine details) and paints it the way the paper describes human artists:
layer by layer from back to front, one semantic region per step, big regions first roughly blocked
in and then refined, details last.  Every step records the keyframe, a time stamp (irregular
intervals around 20 s, 7..38 s by default), a short ground-truth label ("sky", "mountains",
"trees", ...) and the region it painted.

Writers:
  * `write_raw_layout` - the official raw layout (spec 4.1) that the trainers read, plus our
    `labels.json`;
  * `write_video` - an mp4 time-lapse (PyAV) with each keyframe held for its (scaled) duration,
    optionally staged like a real recording (canvas off-centre and in perspective on a dark
    background, a hand with a brush occluding the canvas on chosen keyframes);
  * `generate_dataset` / `main` - many paintings into `<root>/<split>/rgb/...`.

Pure numpy + Pillow (+ PyAV for the video).  Everything is driven by one numpy Generator, so a seed
gives the same painting on every machine.
"""
from __future__ import annotations

import argparse
import sys
import json
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..core.errors import CommandLineParser
from .raw_layout import INV_JSON, LABELS_JSON, format_frame_name

PALETTES = ("day", "sunset", "night", "misty", "autumn")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
@dataclass
class PaintingProcess:
    """One painting process.

    frames[0] is the white canvas at time 0 and frames[-1] is `final`.  `labels[k]` and `masks[k]`
    describe step k, i.e. the change frames[k] -> frames[k+1] (so there is one fewer label/mask
    than frames; this is the (cur, next) pair convention of the trainers: next_text = labels[k]).
    `times_s` are whole seconds (the raw layout stores m:ss), one per frame, times_s[0] == 0.
    """

    frames: list[np.ndarray]
    times_s: list[float]
    labels: list[str]
    masks: list[np.ndarray]
    final: np.ndarray
    seed: int
    meta: dict = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.frames) - 1

    @property
    def intervals_s(self) -> list[float]:
        return [self.times_s[k + 1] - self.times_s[k] for k in range(self.num_steps)]

    def frame_names(self, windows_safe: bool = False) -> list[str]:
        return [format_frame_name(i, t, windows_safe) for i, t in enumerate(self.times_s)]


@dataclass
class _Layer:
    label: str
    support: np.ndarray                              # bool HxW: where the layer exists
    render: Callable[[np.ndarray], np.ndarray]       # current canvas (float HxWx3) -> layer colours
    blockin: bool = False                            # rough block-in step before the refinement
    occluding: bool = True                           # hides what is behind (back layers stop short)
    kind: str = ""                                   # scene element (sun, mountain, trees, ...)


# --------------------------------------------------------------------------------------------
# small numpy image helpers
# --------------------------------------------------------------------------------------------
def _box1(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Box mean of width 2r+1 along one axis (edge padding), cumulative-sum form."""
    if r <= 0:
        return a
    n = a.shape[axis]
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r + 1, r)
    c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis, dtype=np.float32)
    hi = [slice(None)] * a.ndim
    lo = [slice(None)] * a.ndim
    hi[axis] = slice(2 * r + 1, 2 * r + 1 + n)
    lo[axis] = slice(0, n)
    out = c[tuple(hi)] - c[tuple(lo)]
    out *= 1.0 / (2 * r + 1)
    return out


def _resize_f(a: np.ndarray, hw: tuple[int, int], resample=Image.BILINEAR) -> np.ndarray:
    """Resize a float HxW or HxWxC array with Pillow ('F' mode per channel)."""
    if a.ndim == 2:
        return np.asarray(Image.fromarray(a.astype(np.float32)).resize((hw[1], hw[0]), resample), np.float32)
    return np.stack([_resize_f(a[..., c], hw, resample) for c in range(a.shape[-1])], -1)


def blur(a: np.ndarray, r: int, passes: int = 2) -> np.ndarray:
    """Separable box blur (repeated -> close to Gaussian) on HxW or HxWxC float arrays.

    Large radii are done on a box-downsampled copy (same look, a fraction of the cost).
    """
    a = np.asarray(a, np.float32)
    r = int(r)
    if r <= 0:
        return a
    h, w = a.shape[:2]
    if r >= 8:
        f = r // 4
        small = _resize_f(a, (max(1, -(-h // f)), max(1, -(-w // f))), Image.BOX)
        return _resize_f(blur(small, max(1, int(round(r / f))), passes), (h, w), Image.BILINEAR)
    for _ in range(passes):
        a = _box1(_box1(a, r, 0), r, 1)
    return a


def _noise(rng: np.random.Generator, h: int, w: int, cells: float, octaves: int = 3) -> np.ndarray:
    """Fractal value noise, zero mean, unit std; `cells` = grid cells along the long side."""
    out = np.zeros((h, w), np.float32)
    amp, m = 1.0, max(h, w)
    for o in range(octaves):
        c = cells * (2 ** o)
        gh = max(2, int(round(c * h / m)) + 2)
        gw = max(2, int(round(c * w / m)) + 2)
        g = rng.standard_normal((gh, gw)).astype(np.float32)
        out += amp * np.asarray(Image.fromarray(g).resize((w, h), Image.BICUBIC), np.float32)
        amp *= 0.5
    return (out - out.mean()) / (out.std() + 1e-6)


def _fbm1d(rng: np.random.Generator, n: int, cells: int = 3, octaves: int = 5, rough: float = 0.5) -> np.ndarray:
    """1-D fractal noise in about [-1, 1] (ridge lines, shores)."""
    x = np.linspace(0.0, 1.0, n)
    out = np.zeros(n)
    amp = 1.0
    for o in range(octaves):
        c = cells * 2 ** o
        grid = np.linspace(0.0, 1.0, c + 1)
        out += amp * np.interp(x, grid, rng.uniform(-1, 1, c + 1))
        amp *= rough
    return out * (1.0 - rough) / (1.0 - rough ** octaves)


def _streaks(rng: np.random.Generator, h: int, w: int, direction: str, length: int) -> np.ndarray:
    """Bristle texture: white noise smeared along a direction (h, v, d1, d2), unit std."""
    n = rng.standard_normal((h, w)).astype(np.float32)
    n = blur(n, 1, passes=1)
    step = {"h": (0, 1), "v": (1, 0), "d1": (1, 1), "d2": (1, -1)}[direction]
    k = 1
    while k < max(2, length):  # log-step shift-and-add: a box of `length` along the direction
        n = n + np.roll(n, (step[0] * k, step[1] * k), axis=(0, 1))
        k *= 2
    return (n - n.mean()) / (n.std() + 1e-6)


def _organic(mask_f: np.ndarray, rng: np.random.Generator, r: int, amp: float, cells: float = 24) -> np.ndarray:
    """Soft-threshold a shape with noise so its edge looks hand-painted (bool result)."""
    s = blur(mask_f.astype(np.float32), max(1, r), passes=1)
    band = s > 0.02  # the noise only moves the edge; it must not create specks far from the shape
    s = s + amp * _noise(rng, *mask_f.shape, cells=cells, octaves=2)
    return (s > 0.5) & band


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    if r <= 0:
        return mask.copy()
    return blur(mask.astype(np.float32), r, passes=1) > 0.999


def _cmax(a: np.ndarray) -> np.ndarray:
    """Max over the colour axis (much faster than .max(-1) on HxWx3)."""
    return np.maximum(np.maximum(a[..., 0], a[..., 1]), a[..., 2])


def _csum(a: np.ndarray) -> np.ndarray:
    return a[..., 0] + a[..., 1] + a[..., 2]


def _col(c) -> np.ndarray:
    return np.asarray(c, np.float32) / 255.0


def _lerp(a, b, t):
    return a + (b - a) * t


# --------------------------------------------------------------------------------------------
# palettes
# --------------------------------------------------------------------------------------------
_BASE_PALETTES = {
    "day": dict(sky_top=(62, 118, 196), sky_bot=(196, 220, 238), glow=(250, 248, 230), sun=(255, 250, 222),
                cloud_hi=(252, 252, 250), cloud_lo=(170, 182, 202), far=(118, 138, 172), near=(66, 98, 86),
                haze=(190, 208, 226), snow=(240, 244, 250), water=(58, 112, 152), grass_far=(150, 184, 92),
                grass_near=(62, 116, 48), tree_dark=(28, 66, 38), tree_light=(96, 146, 62), trunk=(84, 62, 42),
                flowers=[(230, 58, 58), (250, 222, 64), (250, 250, 246), (184, 92, 206), (246, 140, 40)],
                detail_dark=(34, 60, 30), detail_light=(236, 240, 200), birds=(40, 40, 48)),
    "sunset": dict(sky_top=(58, 56, 118), sky_bot=(250, 168, 88), glow=(255, 206, 120), sun=(255, 226, 150),
                   cloud_hi=(250, 150, 126), cloud_lo=(112, 76, 112), far=(128, 92, 128), near=(62, 44, 70),
                   haze=(214, 146, 120), snow=(250, 206, 190), water=(92, 70, 104), grass_far=(128, 100, 62),
                   grass_near=(52, 48, 38), tree_dark=(30, 24, 36), tree_light=(82, 58, 62), trunk=(40, 30, 30),
                   flowers=[(250, 120, 60), (250, 210, 80), (220, 70, 90)],
                   detail_dark=(30, 22, 30), detail_light=(255, 214, 140), birds=(30, 24, 34)),
    "night": dict(sky_top=(10, 14, 40), sky_bot=(42, 62, 104), glow=(120, 140, 170), sun=(242, 240, 214),
                  cloud_hi=(92, 104, 134), cloud_lo=(36, 42, 68), far=(40, 52, 84), near=(20, 28, 46),
                  haze=(52, 68, 100), snow=(160, 170, 196), water=(20, 32, 62), grass_far=(32, 48, 54),
                  grass_near=(14, 26, 26), tree_dark=(8, 14, 20), tree_light=(30, 46, 54), trunk=(16, 16, 20),
                  flowers=[(150, 150, 190), (190, 190, 150)],
                  detail_dark=(8, 12, 16), detail_light=(250, 250, 226), birds=(10, 10, 16)),
    "misty": dict(sky_top=(168, 178, 190), sky_bot=(226, 228, 230), glow=(246, 242, 228), sun=(250, 246, 232),
                  cloud_hi=(238, 240, 242), cloud_lo=(190, 196, 202), far=(176, 186, 196), near=(108, 124, 130),
                  haze=(222, 226, 230), snow=(244, 246, 248), water=(150, 166, 176), grass_far=(152, 166, 140),
                  grass_near=(88, 110, 84), tree_dark=(58, 78, 70), tree_light=(112, 132, 116), trunk=(70, 64, 58),
                  flowers=[(220, 200, 210), (230, 230, 200)],
                  detail_dark=(60, 74, 64), detail_light=(246, 246, 240), birds=(70, 74, 80)),
    "autumn": dict(sky_top=(86, 140, 206), sky_bot=(226, 222, 206), glow=(252, 240, 210), sun=(255, 246, 214),
                   cloud_hi=(252, 250, 244), cloud_lo=(178, 176, 184), far=(130, 128, 160), near=(104, 84, 62),
                   haze=(206, 206, 212), snow=(244, 244, 248), water=(62, 104, 132), grass_far=(200, 170, 92),
                   grass_near=(136, 106, 46), tree_dark=(146, 52, 26), tree_light=(236, 150, 40),
                   trunk=(70, 50, 36), flowers=[(220, 60, 40), (250, 200, 50), (240, 240, 230)],
                   detail_dark=(70, 50, 26), detail_light=(250, 226, 160), birds=(40, 36, 40)),
}

_LABELS = {
    "sky": {"day": ["sky", "blue sky"], "sunset": ["sky", "sunset sky"], "night": ["night sky", "sky"],
            "misty": ["sky", "grey sky"], "autumn": ["sky", "blue sky"]},
}


def _make_palette(rng: np.random.Generator, name: str) -> dict:
    """Base palette + a small random colour cast so no two paintings share exact colours."""
    base = _BASE_PALETTES[name]
    cast = 1.0 + rng.normal(0, 0.045, 3)
    bright = 1.0 + rng.normal(0, 0.04)
    out = {}
    for k, v in base.items():
        if k == "flowers":
            out[k] = [np.clip(_col(c) * cast * bright, 0, 1) for c in v]
        else:
            out[k] = np.clip(_col(v) * cast * bright, 0, 1).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------
# the painter's toolkit (strokes, textures)
# --------------------------------------------------------------------------------------------
class _Brush:
    """Renders a colour field as visible brush strokes + bristle texture, resolution independent."""

    def __init__(self, rng: np.random.Generator, h: int, w: int):
        self.rng, self.h, self.w = rng, h, w
        self.s = min(h, w)
        self._streak_cache: dict[str, np.ndarray] = {}

    def streak(self, direction: str) -> np.ndarray:
        if direction not in self._streak_cache:
            self._streak_cache[direction] = _streaks(self.rng, self.h, self.w, direction, max(4, self.s // 40))
        return self._streak_cache[direction]

    def paint(self, field: np.ndarray, support: np.ndarray, *, density: float = 900, width: float = 0.022,
              length: float = 0.06, angle: float | np.ndarray = 0.0, angle_jitter: float = 0.25,
              color_jitter: float = 0.035, bend: float = 0.25, texture: float = 0.045,
              streak_dir: str = "h") -> np.ndarray:
        """Strokes over `support`, colours sampled from `field` (HxWx3 float) + jitter.

        density is the stroke count for a full canvas (scaled by the support's area), so the look
        does not depend on the resolution.
        """
        rng, h, w, s = self.rng, self.h, self.w, self.s
        img = field.copy()
        idx = np.flatnonzero(support)
        n = int(density * idx.size / (h * w))
        if n > 0 and idx.size > 0:
            pick = rng.choice(idx, n)
            y0, x0 = np.divmod(pick, w)
            ang = (np.broadcast_to(angle, (h, w)).ravel()[pick] if isinstance(angle, np.ndarray) else np.full(n, float(angle))) + rng.normal(0, angle_jitter, n)
            L = s * length * rng.uniform(0.5, 1.3, n)
            wd = np.maximum(1, np.round(s * width * rng.uniform(0.55, 1.2, n))).astype(int)
            dx, dy = np.cos(ang) * L, np.sin(ang) * L
            bx, by = -dy * bend * rng.uniform(-1, 1, n), dx * bend * rng.uniform(-1, 1, n)
            # start in the middle of the stroke so strokes stay centred on the sampled pixel
            xs, ys = x0 - dx / 2, y0 - dy / 2
            # mostly multiplicative jitter: dark colours must not turn into confetti
            base = field[y0, x0]
            cols = base * (1 + rng.normal(0, color_jitter, (n, 1)) + rng.normal(0, 0.6 * color_jitter, (n, 3))) \
                + rng.normal(0, 0.35 * color_jitter, (n, 1))
            cols = np.clip(cols * 255.0, 0, 255).astype(np.uint8)
            pim = Image.fromarray(np.clip(field * 255.0 + 0.5, 0, 255).astype(np.uint8))
            drw = ImageDraw.Draw(pim)
            for i in range(n):
                pts = [(xs[i], ys[i]), (xs[i] + dx[i] / 2 + bx[i], ys[i] + dy[i] / 2 + by[i]),
                       (xs[i] + dx[i], ys[i] + dy[i])]
                drw.line(pts, fill=tuple(int(c) for c in cols[i]), width=int(wd[i]), joint="curve")
            img = np.asarray(pim, np.float32) / 255.0
        if texture > 0:
            img = img * (1.0 + texture * self.streak(streak_dir)[..., None])
        return np.clip(img, 0, 1)


def _blockin(final: np.ndarray, support: np.ndarray, brush: _Brush, rng: np.random.Generator) -> np.ndarray:
    """Rough first pass of a layer: the layer's colours heavily smoothed, big flat strokes."""
    s = min(final.shape[:2])
    m = support.astype(np.float32)[..., None]
    mean = (final * m).sum((0, 1)) / max(1.0, float(m.sum()))
    smooth = blur(final, max(2, s // 14), passes=2)
    field = _lerp(smooth, mean[None, None, :], 0.5)
    # dark layers get a lighter underpainting that the refinement glazes down, so the refinement shows
    lum = float(mean.mean())
    field = field * (1.0 + 0.6 * float(np.clip((0.3 - lum) / 0.3, 0.0, 1.0)))
    return brush.paint(field, support, density=160, width=0.05, length=0.12, angle=0.0, angle_jitter=0.6,
                       color_jitter=0.03, texture=0.02, streak_dir="h")


# --------------------------------------------------------------------------------------------
# scene construction
# --------------------------------------------------------------------------------------------
def _scene_layers(rng: np.random.Generator, h: int, w: int, palette_name: str) -> list[_Layer]:
    P = _make_palette(rng, palette_name)
    s = min(h, w)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    brush = _Brush(rng, h, w)
    layers: list[_Layer] = []
    night = palette_name == "night"
    misty = palette_name == "misty"
    sunset = palette_name == "sunset"

    horizon = int(h * rng.uniform(0.46, 0.68))      # where land/water meets the mountains' bases
    has_water = rng.random() < 0.55
    shore = int(_lerp(horizon, h, rng.uniform(0.35, 0.7))) if has_water else horizon

    # ---- sky (everything above the horizon, painted first, full width) ----
    sun_x = rng.uniform(0.15, 0.85) * w
    sun_y = (rng.uniform(0.72, 0.95) if sunset else rng.uniform(0.12, 0.45)) * horizon
    has_sun = night or sunset or rng.random() < (0.7 if misty else 0.5)
    sky_support = yy < horizon + s * 0.06 + 0 * xx

    def render_sky(_canvas):
        t = np.clip(yy / max(1.0, horizon), 0, 1) ** rng.uniform(0.7, 1.3)
        field = _lerp(P["sky_top"], P["sky_bot"], t[..., None]) * np.ones((1, w, 1), np.float32)
        if has_sun:  # a glow around the light source
            d = np.sqrt((xx - sun_x) ** 2 + (yy - sun_y) ** 2) / s
            g = np.exp(-(d / rng.uniform(0.18, 0.4)) ** 2)[..., None] * (0.35 if night else 0.6)
            field = _lerp(field, P["glow"], g)
        field = field * (1 + 0.03 * _noise(rng, h, w, 3)[..., None])
        return brush.paint(field, sky_support, density=700, width=0.03, length=0.09, angle=0.0,
                           angle_jitter=0.12, color_jitter=0.02, texture=0.03, streak_dir="h")

    layers.append(_Layer(str(rng.choice(_LABELS["sky"][palette_name])), sky_support, render_sky, blockin=True))

    # ---- sun / moon ----
    if has_sun:
        r = s * (rng.uniform(0.06, 0.1) if sunset else rng.uniform(0.035, 0.065))
        disk = (xx - sun_x) ** 2 + (yy - sun_y) ** 2 <= r * r
        label = "moon" if night else "sun"

        def render_sun(_canvas, disk=disk, r=r):
            d = np.sqrt((xx - sun_x) ** 2 + (yy - sun_y) ** 2) / r
            col = _lerp(P["sun"], P["glow"], np.clip(d, 0, 1)[..., None] * 0.4)
            if night:  # a few darker "craters"
                col = col * (1 - 0.08 * np.clip(_noise(rng, h, w, s / r * 0.8, 2), 0, None))[..., None]
            return np.clip(col * np.ones((h, w, 1), np.float32), 0, 1)

        layers.append(_Layer(label, disk, render_sun, occluding=False, kind="sun"))

    # ---- clouds ----
    n_clouds = int(rng.integers(0, 2 if night else 6))
    if misty:
        n_clouds = int(rng.integers(0, 3))
    if n_clouds:
        cm = Image.new("L", (w, h), 0)
        d = ImageDraw.Draw(cm)
        for _ in range(n_clouds):
            cx, cy = rng.uniform(0, w), rng.uniform(0.08, 0.6) * horizon
            cw, ch = s * rng.uniform(0.12, 0.3), s * rng.uniform(0.03, 0.07)
            for _ in range(int(rng.integers(3, 8))):
                ex, ey = cx + rng.uniform(-1, 1) * cw, cy - rng.uniform(0, 1) * ch
                rx, ry = cw * rng.uniform(0.25, 0.55), ch * rng.uniform(0.6, 1.3)
                d.ellipse([ex - rx, ey - ry, ex + rx, min(ey + ry, cy + ch * 0.5)], fill=255)  # flat bottoms
        cloud = _organic(np.asarray(cm) > 0, rng, max(1, s // 90), 0.25, cells=s / 8)
        cloud &= yy < horizon

        def render_clouds(_canvas, cloud=cloud):
            # lit top, shaded bottom: the vertical position inside the cloud blob
            frac = blur(cloud.astype(np.float32), max(2, s // 40), passes=2)
            up = np.clip(np.roll(frac, max(1, s // 50), axis=0) - frac + 0.5, 0, 1)
            field = _lerp(P["cloud_lo"], P["cloud_hi"], np.clip(0.35 + 0.9 * (up - 0.5) + 0.25 * frac, 0, 1)[..., None])
            return brush.paint(field, cloud, density=1400, width=0.018, length=0.05, angle=0.0, angle_jitter=0.5,
                               bend=0.5, color_jitter=0.03, texture=0.03)

        layers.append(_Layer("clouds", cloud, render_clouds, occluding=False, kind="clouds"))

    # ---- mountains: far (hazy) and near (darker) ----
    def mountain(kind: str, base: float, height: float, col, label: str, snow: bool):
        ridge = base - height * (0.55 + 0.45 * _fbm1d(rng, w, cells=int(rng.integers(2, 5)), octaves=6,
                                                        rough=rng.uniform(0.45, 0.6)))
        ridge = np.minimum(ridge, horizon - s * 0.01)
        sup = (yy >= ridge[None, :]) & (yy < horizon + s * 0.05)
        slope = np.gradient(blur(ridge[None, :].astype(np.float32), max(1, s // 60), 1)[0])
        light = -1.0 if sun_x < w / 2 else 1.0

        def render(_canvas, ridge=ridge, sup=sup, slope=slope):
            depth = np.clip((yy - ridge[None, :]) / max(1.0, height), 0, 1.5)
            shade = np.tanh(slope * light * 3.0)[None, :] * np.exp(-depth * 1.5)
            field = col * (1.0 + 0.22 * shade)[..., None] * np.ones((h, w, 1), np.float32)
            field = _lerp(field, P["haze"], (np.clip(depth, 0, 1) * (0.45 if kind == "far" else 0.25))[..., None])
            field *= 1 + 0.05 * _noise(rng, h, w, 10)[..., None]
            if snow:
                cap = (yy - ridge[None, :]) < height * 0.16 * (1 + 0.6 * _noise(rng, h, w, 18, 2))
                cap &= (ridge < base - height * 0.55)[None, :]
                field = np.where(cap[..., None], _lerp(field, P["snow"], 0.8), field)
            ang = np.arctan(np.broadcast_to(slope[None, :], (h, w)))
            return brush.paint(field, sup, density=900, width=0.018, length=0.05, angle=ang, angle_jitter=0.4,
                               color_jitter=0.03, texture=0.025, streak_dir="d1" if light > 0 else "d2")

        layers.append(_Layer(label, sup, render, blockin=True, kind="mountain"))
        return sup

    mountain_sup = np.zeros((h, w), bool)
    if rng.random() < 0.85:
        mountain_sup |= mountain("far", horizon - s * 0.02, horizon * rng.uniform(0.35, 0.7), P["far"],
                                 str(rng.choice(["mountains", "mountain", "far mountains"])),
                                 snow=(palette_name in ("day", "misty", "autumn") and rng.random() < 0.6))
    if rng.random() < 0.75:
        mountain_sup |= mountain("near", horizon + s * 0.01, horizon * rng.uniform(0.15, 0.4), P["near"],
                                 str(rng.choice(["hills", "mountains", "mountain"])), snow=False)

    # ---- mist band (canvas-dependent: semi-transparent over what is there) ----
    if misty or (rng.random() < 0.15 and not night):
        band_c, band_w = horizon - s * rng.uniform(0.02, 0.1), s * rng.uniform(0.05, 0.12)
        alpha = np.exp(-((yy - band_c) / band_w) ** 2) * (0.75 + 0.25 * _noise(rng, h, w, 6, 2)) * np.ones((1, w))
        alpha = np.clip(alpha, 0, 0.85)
        mist_sup = alpha > 0.12

        def render_mist(canvas, alpha=alpha):
            return np.clip(_lerp(canvas, P["haze"], alpha[..., None]), 0, 1)

        layers.append(_Layer(str(rng.choice(["fog", "mist"])), mist_sup, render_mist, occluding=False))

    # ---- lake ----
    field_top = None
    if has_water:
        shore_line = shore + s * 0.03 * _fbm1d(rng, w, cells=3, octaves=4)
        water_sup = (yy >= horizon - 1) & (yy < shore_line[None, :] + s * 0.04)

        def render_water(_canvas):
            t = np.clip((yy - horizon) / max(1.0, shore - horizon), 0, 1)
            field = _lerp(_lerp(P["water"], P["sky_bot"], 0.45), P["water"] * 0.8, t[..., None]) * np.ones((1, w, 1), np.float32)
            field *= 1 + 0.04 * _noise(rng, h, w, 6)[..., None]
            return brush.paint(field, water_sup, density=1000, width=0.012, length=0.1, angle=0.0, angle_jitter=0.05,
                               bend=0.05, color_jitter=0.025, texture=0.06, streak_dir="h")

        layers.append(_Layer(str(rng.choice(["water", "lake"])), water_sup, render_water, blockin=True))
        field_top = shore_line
    # ---- fields / grass (foreground) ----
    if field_top is None:
        field_top = horizon + s * 0.025 * _fbm1d(rng, w, cells=2, octaves=4)
    # rolling hills in the foreground: a second curve
    field_sup = yy >= field_top[None, :]
    grass_label = str(rng.choice(["grass", "field", "meadow"] if palette_name != "autumn" else ["field", "grass"]))

    def render_field(_canvas):
        t = np.clip((yy - field_top[None, :]) / max(1.0, h - field_top.min()), 0, 1)
        field = _lerp(P["grass_far"], P["grass_near"], (t ** 0.7)[..., None])
        patches = _noise(rng, h, w, 5)
        field = field * (1 + 0.12 * np.tanh(patches * 1.5))[..., None]
        field = _lerp(field, P["haze"], (0.2 * (1 - t) ** 3)[..., None])
        ang = _lerp(0.0, -np.pi / 2, np.clip(t * 1.6, 0, 1)) * np.ones((1, w))
        return brush.paint(field, field_sup, density=1300, width=0.014, length=0.05, angle=ang, angle_jitter=0.3,
                           color_jitter=0.04, texture=0.05, streak_dir="v")

    layers.append(_Layer(grass_label, field_sup, render_field, blockin=True))

    # ---- trees: a row on the far shore / horizon and a few big foreground trees ----
    n_far = int(rng.integers(0, 14))
    n_near = int(rng.integers(0, 3))
    conifer = rng.random() < (0.3 if palette_name == "autumn" else 0.6)
    if n_far + n_near:
        tm = Image.new("L", (w, h), 0)
        trunk_m = Image.new("L", (w, h), 0)
        td, kd = ImageDraw.Draw(tm), ImageDraw.Draw(trunk_m)
        cluster = rng.uniform(0.1, 0.9) * w
        trees = []
        for i in range(n_far + n_near):
            near = i >= n_far
            if near:
                x = rng.choice([rng.uniform(-0.05, 0.25), rng.uniform(0.75, 1.05)]) * w
                base_y = rng.uniform(0.85, 1.05) * h
                th = s * rng.uniform(0.35, 0.6)
            else:
                x = np.clip(cluster + rng.normal(0, 0.18) * w, 0, w)
                base_y = (horizon if has_water else field_top[int(np.clip(x, 0, w - 1))]) + s * rng.uniform(0.0, 0.02)
                th = s * rng.uniform(0.06, 0.16)
            trees.append((x, base_y, th))
        for x, base_y, th in sorted(trees, key=lambda t: t[1]):
            tw = th * rng.uniform(0.28, 0.42)
            kd.line([(x, base_y), (x, base_y - th * 0.35)], fill=255, width=max(1, int(tw * 0.14)))
            if conifer:
                pts, levels = [], int(rng.integers(5, 9))
                for j in range(levels + 1):
                    f = j / levels
                    yj = base_y - th * (0.15 + 0.85 * f)
                    half = tw * 0.5 * (1 - f) ** 0.9 * rng.uniform(0.8, 1.15)
                    pts.append((x - half, yj))
                    pts.append((x - half * 0.45, yj - th * 0.04))
                right = [(2 * x - px, py) for (px, py) in pts[::-1]]
                td.polygon(pts + [(x, base_y - th)] + right, fill=255)
            else:
                for _ in range(int(rng.integers(4, 8))):
                    ex = x + rng.normal(0, tw * 0.25)
                    ey = base_y - th * rng.uniform(0.45, 0.85)
                    r = tw * rng.uniform(0.3, 0.5)
                    td.ellipse([ex - r, ey - r, ex + r, ey + r], fill=255)
        crown = _organic(np.asarray(tm) > 0, rng, max(1, s // 160), 0.2, cells=s / 5)
        trunk = np.asarray(trunk_m) > 0
        tree_sup = crown | trunk
        light = -1.0 if sun_x < w / 2 else 1.0

        def render_trees(_canvas, crown=crown, trunk=trunk, tree_sup=tree_sup):
            # lit rim on the sun side: crown pixels whose neighbour towards the light is outside the crown
            sh = max(1, s // 80)
            rim = crown & ~np.roll(crown, -int(2 * sh * light), axis=1)
            rim = blur(rim.astype(np.float32), sh, 1)
            t = np.clip(0.3 + 0.18 * _noise(rng, h, w, 16) + 1.2 * rim, 0, 1)
            field = _lerp(P["tree_dark"], P["tree_light"], t[..., None])
            field = np.where(trunk[..., None] & ~crown[..., None], P["trunk"], field)
            return brush.paint(field, tree_sup, density=2200, width=0.009, length=0.02, angle=0.0,
                               angle_jitter=1.5, color_jitter=0.04, texture=0.04, streak_dir="v")

        layers.append(_Layer(str(rng.choice(["trees", "trees", "forest"] if n_far > 6 else ["trees", "tree"])),
                             tree_sup, render_trees, blockin=bool(tree_sup.mean() > 0.06), occluding=False,
                             kind="trees"))

    # ---- reflections in the lake (canvas-dependent: mirror what is above the water line) ----
    if has_water:
        water_vis = water_sup & ~field_sup

        def reflection_support_and_render():
            ripple_len = max(2.0, s * rng.uniform(0.01, 0.03))
            amp = s * rng.uniform(0.003, 0.01)
            depth = shore - horizon
            src_y = np.clip(2 * horizon - yy, 0, h - 1)
            off = amp * np.sin(2 * np.pi * yy / ripple_len + rng.uniform(0, 6.28)) \
                + amp * 0.7 * _noise(rng, h, w, s / 4, 1)
            src_x = np.clip(np.round(xx + off), 0, w - 1).astype(int)
            src_yi = np.broadcast_to(np.round(src_y), (h, w)).astype(int)
            # mirror everything that is not sky
            things = np.zeros((h, w), bool)
            for L in layers:
                if L.kind in ("sun", "mountain", "trees"):
                    things |= L.support
            mirrored = things[src_yi, src_x]
            fade = np.clip(1 - (yy - horizon) / max(1.0, depth * rng.uniform(0.8, 1.6)), 0, 1) * np.ones((1, w))
            in_front = np.zeros((h, w), bool)   # trees standing in the water stay in front of it
            for L in layers:
                if L.kind == "trees":
                    in_front |= L.support
            sup = water_vis & mirrored & (fade > 0.15) & ~in_front

            def render(canvas):
                m = canvas[src_yi, src_x]
                wc = _lerp(P["water"], P["sky_bot"], 0.3)
                out = _lerp(canvas, _lerp(m * 0.82, wc, 0.3), (0.85 * fade)[..., None])
                return np.clip(out * (1 + 0.04 * brush.streak("h"))[..., None], 0, 1)

            return sup, render

        rsup, rrender = reflection_support_and_render()
        if rsup.mean() > 0.004:
            layers.append(_Layer("reflection", rsup, rrender, occluding=False))

    # ---- flowers in the foreground ----
    fg = field_sup & (yy > _lerp(field_top[None, :], h, 0.35))
    if fg.mean() > 0.02 and (not night or rng.random() < 0.3) and rng.random() < 0.75:
        fm = Image.new("RGB", (w, h), (0, 0, 0))
        dens = _noise(rng, h, w, 4) > rng.uniform(-0.3, 0.6)
        cand = np.flatnonzero(fg & dens)
        if cand.size:
            n = int(rng.integers(40, 160))
            pick = rng.choice(cand, n)
            fy, fx = np.divmod(pick, w)
            cols = P["flowers"]
            ci = rng.integers(0, len(cols), n)
            d = ImageDraw.Draw(fm)
            for i in range(n):
                depth = (fy[i] - horizon) / max(1.0, h - horizon)
                r = max(1.0, s * 0.004 * (0.5 + 1.5 * depth) * rng.uniform(0.7, 1.3))
                c = tuple(int(v) for v in np.clip(cols[ci[i]] * 255 * rng.uniform(0.85, 1.1), 0, 255))
                d.ellipse([fx[i] - r, fy[i] - r, fx[i] + r, fy[i] + r], fill=c)
            fl = np.asarray(fm, np.float32) / 255.0
            fsup = _cmax(fl) > 0

            def render_flowers(canvas, fl=fl, fsup=fsup):
                return np.where(fsup[..., None], fl, canvas)

            layers.append(_Layer("flowers", fsup, render_flowers, occluding=False))

    # ---- fine details last: grass blades, birds / stars, sparkles on the water ----
    in_front_all = np.zeros((h, w), bool)
    for L in layers:
        if L.kind == "trees":
            in_front_all |= L.support
    dm = Image.new("RGB", (w, h), (0, 0, 0))
    d = ImageDraw.Draw(dm)
    kinds = []
    lw = max(1, s // 256)
    blades = field_sup & (yy > _lerp(field_top[None, :], h, 0.45))
    bc = np.flatnonzero(blades)
    if bc.size:
        n = int(rng.integers(60, 200))
        by, bx = np.divmod(rng.choice(bc, n), w)
        for i in range(n):
            ln = s * rng.uniform(0.015, 0.05)
            a = -np.pi / 2 + rng.normal(0, 0.25)
            c = P["detail_dark"] if rng.random() < 0.6 else _lerp(P["grass_far"], P["detail_light"], 0.4)
            d.line([(bx[i], by[i]), (bx[i] + ln * math.cos(a), by[i] + ln * math.sin(a))],
                   fill=tuple(int(v) for v in np.clip(c * 255, 1, 255)), width=lw)
        kinds.append("grass")
    if night:
        sky_vis = sky_support & ~mountain_sup & (yy < horizon - s * 0.03)
        sc = np.flatnonzero(sky_vis)
        if sc.size:
            n = int(rng.integers(40, 120))
            sy, sx = np.divmod(rng.choice(sc, n), w)
            for i in range(n):
                r = max(0.6, s * 0.0025 * rng.uniform(0.5, 1.4))
                d.ellipse([sx[i] - r, sy[i] - r, sx[i] + r, sy[i] + r], fill=tuple(int(v) for v in P["detail_light"] * 255))
            kinds.append("stars")
    elif rng.random() < 0.6:
        for _ in range(int(rng.integers(2, 7))):
            bx_, by_ = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.5) * horizon
            bw = s * rng.uniform(0.012, 0.025)
            c = tuple(int(v) for v in P["birds"] * 255)
            d.line([(bx_ - bw, by_ - bw * 0.5), (bx_, by_), (bx_ + bw, by_ - bw * 0.5)], fill=c, width=lw, joint="curve")
        kinds.append("birds")
    if has_water:
        wc = np.flatnonzero(water_vis & ~in_front_all)
        if wc.size:
            n = int(rng.integers(20, 70))
            wy, wx = np.divmod(rng.choice(wc, n), w)
            for i in range(n):
                ln = s * rng.uniform(0.01, 0.04)
                c = tuple(int(v) for v in _lerp(P["detail_light"], P["glow"], 0.5) * 255)
                d.line([(wx[i] - ln / 2, wy[i]), (wx[i] + ln / 2, wy[i])], fill=c, width=lw)
            kinds.append("sparkles")
    det = np.asarray(dm, np.float32) / 255.0
    dsup = _cmax(det) > 0
    if dsup.mean() > 0.001:
        if kinds == ["stars"]:
            dlabel = "stars"
        else:
            dlabel = str(rng.choice(["details", "details", "highlights"]))

        def render_details(canvas, det=det, dsup=dsup):
            return np.where(dsup[..., None], det, canvas)

        layers.append(_Layer(dlabel, dsup, render_details, occluding=False))
    return layers


# --------------------------------------------------------------------------------------------
# painting: layers -> steps -> frames
# --------------------------------------------------------------------------------------------
def _paint_steps(layers: list[_Layer], h: int, w: int, rng: np.random.Generator):
    """Paint the layers back to front; returns (frames float, labels, masks, kinds)."""
    s = min(h, w)
    margin = max(1, int(round(s * 0.015)))
    # A back layer stops a little *inside* the regions of later (front, opaque) layers: artists carry
    # the sky down behind the mountains, and the front layer then covers the overlap.
    front = np.zeros((h, w), bool)
    painted_regions = [None] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        painted_regions[i] = layers[i].support & ~_erode(front, margin)
        if layers[i].occluding:
            front |= layers[i].support
    canvas = np.ones((h, w, 3), np.float32)
    frames, labels, masks, kinds = [canvas.copy()], [], [], []
    brush = _Brush(rng, h, w)
    for L, region in zip(layers, painted_regions):
        if not region.any():
            continue
        final = L.render(canvas)
        if L.blockin:
            rough = _blockin(final, region, brush, rng)
            canvas = np.where(region[..., None], rough, canvas)
            frames.append(canvas.copy())
            labels.append(L.label)
            masks.append(region.copy())
            kinds.append("blockin")
        new = np.where(region[..., None], final, canvas)
        changed = _cmax(np.abs(new - canvas)) > (1.5 / 255)
        if not changed.any():
            continue
        canvas = new
        frames.append(canvas.copy())
        labels.append(L.label)
        masks.append(region.copy())
        kinds.append("refine")
    return frames, labels, masks, kinds


def _to_u8(frames: list[np.ndarray]) -> list[np.ndarray]:
    return [np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8) for f in frames]


def _make_monotone(frames: list[np.ndarray], masks: list[np.ndarray]) -> None:
    """Make every step bring the canvas closer to the final painting (mean abs difference).

    A step can move away from the final where it paints something that a later step covers anyway
    (the sun behind a mountain, sky under a bright cloud).  For such a step only, those covered pixels
    are left out (smoothly first, pixel-exactly if needed); the last writer of every pixel is kept,
    so the final painting does not change.  In place.
    """
    final = frames[-1].astype(np.int16)
    n = len(masks)
    later = [None] * n               # union of the masks of the steps after k
    acc = np.zeros_like(masks[0])
    for k in range(n - 1, -1, -1):
        later[k] = acc.copy()
        acc |= masks[k]
    values = [frames[k + 1].copy() for k in range(n)]
    s = min(final.shape[:2])
    cur = frames[0].copy()
    for k in range(n):
        m = masks[k]
        old_err = _csum(np.abs(cur.astype(np.int16) - final))
        new_err = _csum(np.abs(values[k].astype(np.int16) - final))
        gain = (old_err - new_err).astype(np.float32)
        if (gain * m).sum() <= 0:
            worse = blur(np.where(m, -gain, 0.0).astype(np.float32), max(1, s // 100), passes=1) > 0
            m2 = m & ~(later[k] & worse)
            if (gain * m2).sum() <= 0:
                m2 = m & ~(later[k] & (gain < 0))
            masks[k] = m = m2
        nxt = cur.copy()
        nxt[m] = values[k][m]
        frames[k + 1] = nxt
        cur = nxt


def _merge_invisible(frames, labels, masks, kinds, min_level: float = 16.0, min_mask_frac: float = 0.1,
                     min_canvas_frac: float = 0.003) -> None:
    """Merge steps whose change is barely visible into their neighbour (in place).

    A refinement of a dark region can differ from its block-in by a few grey levels only; such a
    keyframe is useless (the paper's data drops frames with minimal change, and video ingestion would
    drop it too).  Visible = the lightly blurred colour difference exceeds `min_level` on at least
    `min_mask_frac` of the step's region and `min_canvas_frac` of the canvas.
    """
    k = 0
    while k < len(masks) and len(masks) > 1:
        a = blur(frames[k].astype(np.float32), 1, passes=1)
        b = blur(frames[k + 1].astype(np.float32), 1, passes=1)
        vis = _cmax(np.abs(b - a)) > min_level
        nv = float(vis.sum())
        if nv >= min_mask_frac * masks[k].sum() and nv >= min_canvas_frac * vis.size:
            k += 1
            continue
        if k > 0:
            _merge_steps(frames, labels, masks, kinds, k - 1)   # fold into the previous step
            k -= 1
        else:
            _merge_steps(frames, labels, masks, kinds, 0)


def _split_step(frames, labels, masks, kinds, k) -> bool:
    """Split step k (frames[k] -> frames[k+1]) into two spatial halves; False if too small."""
    m = masks[k]
    ys, xs = np.nonzero(m)
    if ys.size < 2:
        return False
    if (xs.max() - xs.min()) >= (ys.max() - ys.min()):
        cut = np.median(xs)
        a = m & (np.arange(m.shape[1])[None, :] <= cut)
    else:
        cut = np.median(ys)
        a = m & (np.arange(m.shape[0])[:, None] <= cut)
    b = m & ~a
    if not a.any() or not b.any():
        return False
    mid = frames[k].copy()
    mid[a] = frames[k + 1][a]
    frames.insert(k + 1, mid)
    masks[k:k + 1] = [a, b]
    labels.insert(k, labels[k])
    kinds.insert(k, kinds[k])
    return True


def _merge_steps(frames, labels, masks, kinds, k) -> None:
    """Merge steps k and k+1 (drops frames[k+1]); the label of the larger region wins."""
    big = labels[k] if masks[k].sum() >= masks[k + 1].sum() else labels[k + 1]
    if kinds[k] == "blockin" and labels[k] == labels[k + 1]:
        big = labels[k + 1]
    del frames[k + 1]
    masks[k:k + 2] = [masks[k] | masks[k + 1]]
    labels[k:k + 2] = [big]
    kinds[k:k + 2] = [kinds[k + 1]]


def _adjust_count(frames, labels, masks, kinds, target: int) -> None:
    while len(masks) > target and len(masks) > 1:
        # first drop block-ins (merge them into their refinement), then merge the smallest neighbours
        bi = [k for k in range(len(masks) - 1) if kinds[k] == "blockin" and labels[k] == labels[k + 1]]
        if bi:
            k = max(bi, key=lambda j: -masks[j].sum())
        else:
            k = min(range(len(masks) - 1), key=lambda j: masks[j].sum() + masks[j + 1].sum())
        _merge_steps(frames, labels, masks, kinds, k)
    while len(masks) < target:
        order = sorted(range(len(masks)), key=lambda j: -masks[j].sum())
        if not any(_split_step(frames, labels, masks, kinds, k) for k in order[:8]):
            break  # nothing left to split (tiny canvas): fewer steps than asked


def _sample_times(rng: np.random.Generator, masks, mean_interval: float, lo: float, hi: float) -> list[float]:
    """Whole-second time stamps; bigger regions take longer, with lognormal jitter."""
    area = np.array([m.mean() for m in masks], np.float64)
    wgt = 0.45 + 1.6 * np.sqrt(area)
    wgt = wgt / wgt.mean() * rng.lognormal(0.0, 0.3, len(masks))
    iv = np.clip(np.round(wgt * mean_interval), lo, hi)
    return [0.0] + [float(v) for v in np.cumsum(iv)]


def generate_process(
    seed: int,
    height: int = 256,
    width: int = 256,
    num_steps: int | None = None,
    palette: str | None = None,
    mean_interval_s: float = 20.0,
    interval_range_s: tuple[float, float] = (7.0, 38.0),
) -> PaintingProcess:
    """Generate one painting process.

    seed: everything is drawn from `np.random.default_rng(seed)`.
    height, width: any size >= 32 (any aspect).
    num_steps: number of painting steps (= keyframes - 1).  None keeps the natural count of the scene
      (about 10-18: big layers get a block-in and a refinement).  Fewer: block-ins are merged into their
      refinements, then the smallest neighbouring steps are merged.  More: the largest steps are split
      into spatial halves (same label), as when a painter covers a big region in several sittings.
    palette: one of PALETTES or None (random).
    """
    h, w = int(height), int(width)
    if h < 32 or w < 32:
        raise ValueError("paintings must be at least 32x32")
    rng = np.random.default_rng(seed)
    pal = str(palette) if palette is not None else str(rng.choice(PALETTES, p=[0.32, 0.24, 0.16, 0.14, 0.14]))
    if pal not in _BASE_PALETTES:
        raise ValueError(f"unknown palette {pal!r}; choose from {PALETTES}")
    layers = _scene_layers(rng, h, w, pal)
    frames_f, labels, masks, kinds = _paint_steps(layers, h, w, rng)
    frames = _to_u8(frames_f)
    # identical consecutive uint8 frames would be "no change" keyframes: merge them away
    k = 0
    while k < len(masks):
        if len(masks) > 1 and np.array_equal(frames[k], frames[k + 1]):
            if k + 1 < len(masks):
                _merge_steps(frames, labels, masks, kinds, k)
            else:
                _merge_steps(frames, labels, masks, kinds, k - 1)
                k -= 1
            continue
        k += 1
    _make_monotone(frames, masks)
    _merge_invisible(frames, labels, masks, kinds)
    if num_steps is not None:
        _adjust_count(frames, labels, masks, kinds, max(1, int(num_steps)))
    times = _sample_times(rng, masks, mean_interval_s, *interval_range_s)
    return PaintingProcess(frames=frames, times_s=times, labels=list(labels), masks=[m.copy() for m in masks],
                           final=frames[-1], seed=int(seed),
                           meta={"palette": pal, "kinds": list(kinds), "layers": [L.label for L in layers]})


# --------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------
def write_raw_layout(process: PaintingProcess, root: str, name: str, quality: int = 95,
                     windows_safe: bool = False) -> str:
    """Write `root/rgb/<name>/` in the official raw layout; returns the folder.

    Files: `{ind}_{m:ss}.jpg` for every keyframe (frame 0 is the white canvas at 0:00; the official
    dataset drops the first listed frame and uses a virtual "white" canvas in its place, so the
    file is never read by the trainers but keeps every listed name backed by a file), the final
    frame is the target; `last_aligned_frame_inv.json` = {target: [all earlier names]};
    `labels.json` (ours) = {frame name: label of the step that produced it} (frame 0 has none).
    `windows_safe=True` writes "m-ss" instead of "m:ss" (the official trainers expect the colon).
    `root` is the split folder, e.g. `<data>/train`.
    """
    out = os.path.join(root, "rgb", name)
    os.makedirs(out, exist_ok=True)
    names = process.frame_names(windows_safe)
    if len(set(names)) != len(names):
        raise ValueError("duplicate frame names")
    for nm, fr in zip(names, process.frames):
        Image.fromarray(fr).save(os.path.join(out, nm + ".jpg"), quality=int(quality), subsampling=0)  # 4:4:4 chroma
    with open(os.path.join(out, INV_JSON), "w", encoding="utf-8") as f:
        json.dump({names[-1]: names[:-1]}, f)
    with open(os.path.join(out, LABELS_JSON), "w", encoding="utf-8") as f:
        json.dump({names[k + 1]: process.labels[k] for k in range(process.num_steps)}, f, indent=1)
    return out


def _even(v: int) -> int:
    return int(v) + (int(v) & 1)


def random_stage(rng: np.random.Generator, canvas_hw: tuple[int, int], frame_hw: tuple[int, int] | None = None,
                 rotate_deg: float = 4.0, perspective: float = 0.04) -> dict:
    """A recording set-up: the canvas quad (TL, TR, BR, BL, in frame pixels) off-centre, slightly rotated and
    in perspective, inside a larger frame.  Use with `write_video(stage=...)`."""
    ch, cw = canvas_hw
    if frame_hw is None:
        frame_hw = (_even(int(ch * 1.45)), _even(int(cw * 1.6)))
    fh, fw = frame_hw
    scale = min(fh / ch, fw / cw) * rng.uniform(0.62, 0.72)
    qh, qw = ch * scale, cw * scale
    corners = np.array([[-qw / 2, -qh / 2], [qw / 2, -qh / 2], [qw / 2, qh / 2], [-qw / 2, qh / 2]])
    corners += rng.uniform(-perspective, perspective, corners.shape) * np.array([qw, qh])
    a = math.radians(rng.uniform(-rotate_deg, rotate_deg))
    R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    corners = corners @ R.T
    lo, hi = corners.min(0), corners.max(0)
    cx = rng.uniform(-lo[0] + 2, fw - hi[0] - 2)   # off-centre, but fully inside the frame
    cy = rng.uniform(-lo[1] + 2, fh - hi[1] - 2)
    return {"frame_hw": (int(fh), int(fw)), "quad": (corners + [cx, cy]).tolist(), "background": (28, 26, 30)}


def _draw_hand(img: Image.Image, pos, angle: float, size: float, rng: np.random.Generator) -> None:
    """A hand holding a brush: skin-coloured palm + fingers, arm to the frame edge, dark brush stick."""
    d = ImageDraw.Draw(img)
    x, y = pos
    skin = tuple(int(v) for v in np.clip(np.array([224, 172, 140]) * rng.uniform(0.85, 1.05), 0, 255))
    skin_dark = tuple(int(v * 0.82) for v in skin)
    ux, uy = math.cos(angle), math.sin(angle)          # from the brush tip towards the arm
    # brush: tip at pos, stick towards the hand
    tip = (x, y)
    ferrule = (x + ux * size * 0.35, y + uy * size * 0.35)
    palm = (x + ux * size * 0.9, y + uy * size * 0.9)
    d.line([tip, ferrule], fill=(40, 30, 26), width=max(2, int(size * 0.07)))
    d.line([ferrule, (x + ux * size * 1.3, y + uy * size * 1.3)], fill=(150, 40, 30), width=max(2, int(size * 0.09)))
    # arm to far away (off the frame)
    far = (palm[0] + ux * size * 8, palm[1] + uy * size * 8)
    d.line([palm, far], fill=skin_dark, width=int(size * 0.75))
    r = size * 0.42
    d.ellipse([palm[0] - r, palm[1] - r * 0.85, palm[0] + r, palm[1] + r * 0.85], fill=skin)
    for k in range(3):  # fingers wrapped around the stick
        fx = palm[0] - ux * r * 0.7 + (k - 1) * r * 0.45 * -uy
        fy = palm[1] - uy * r * 0.7 + (k - 1) * r * 0.45 * ux
        fr = r * 0.3
        d.ellipse([fx - fr, fy - fr, fx + fr, fy + fr], fill=skin_dark if k == 1 else skin)


def write_video(
    process: PaintingProcess,
    path: str,
    fps: float = 8.0,
    seconds_per_keyframe: float | None = 1.0,
    *,
    time_scale: float | None = None,
    hold_final_s: float | None = None,
    stage: dict | None = None,
    hand_keyframes: Iterable[int] = (),
    hand_fraction: tuple[float, float] = (0.3, 0.7),
    noise: float = 0.0,
    codec: str = "auto",
    seed: int = 0,
) -> dict:
    """Write the process as an mp4 time-lapse; returns what was written (times in video seconds).

    Keyframe k is on screen from `times_s[k] * time_scale` until the next keyframe; the final frame is
    held `hold_final_s` (default 2 keyframes' worth) so ingestion can confirm it.  `time_scale` defaults
    to `seconds_per_keyframe / mean interval`; pass `time_scale=1.0` for a real-time video.
    stage: None = the canvas fills the frame; else {"frame_hw", "quad" (TL, TR, BR, BL), "background"}
      (see `random_stage`): the canvas is warped into the quad on a dark, slightly textured background.
    hand_keyframes: keyframes whose hold shows a hand with a brush over the canvas during
      `hand_fraction` of the hold, moving over the region the next step paints.
    noise: std of per-frame sensor noise (0..255 scale).
    codec: "auto" (libx264 if available, else mpeg4), "libx264", "h264" or "mpeg4".
    Returns {"keyframe_times" (video s), "time_scale", "fps", "quad", "frame_hw", "hand_times",
    "hand_canvas_fraction" (share of the canvas each hand frame hides), ...}.  Ingest the video with
    `ingest_video(..., time_scale=1 / info["time_scale"])` to get painting seconds back.
    """
    import av

    from .ingest_video import homography, warp_perspective

    rng = np.random.default_rng(seed)
    times = np.asarray(process.times_s, np.float64)
    iv = np.diff(times)
    if time_scale is None:
        time_scale = (seconds_per_keyframe or 1.0) / max(1e-6, float(iv.mean()) if iv.size else 1.0)
    vt = times * time_scale
    if hold_final_s is None:
        hold_final_s = 2.0 * float(iv.mean() * time_scale if iv.size else 1.0)
    duration = float(vt[-1] + hold_final_s)
    n_frames = int(math.ceil(duration * fps))
    ch, cw = process.final.shape[:2]

    if stage is None:
        fh, fw = _even(ch), _even(cw)
        quad = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], np.float64)
        background = (0, 0, 0)
    else:
        fh, fw = (int(v) for v in stage["frame_hw"])
        fh, fw = _even(fh), _even(fw)
        quad = np.asarray(stage["quad"], np.float64)
        background = tuple(stage.get("background", (28, 26, 30)))
    rect = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], np.float64)
    Hq = homography(quad, rect)        # frame coords -> canvas coords
    bg = np.empty((fh, fw, 3), np.float32)
    bg[:] = np.asarray(background, np.float32)
    if stage is not None:  # a table / wall texture so the background is not perfectly flat
        bg += 10.0 * _noise(rng, fh, fw, 6)[..., None]
    staged_cache: dict[int, np.ndarray] = {}

    def staged(k: int) -> np.ndarray:
        if k not in staged_cache:
            warped, alpha = warp_perspective(process.frames[k], Hq, (fh, fw), return_alpha=True)
            staged_cache.clear()
            staged_cache[k] = warped * alpha[..., None] + bg * (1 - alpha[..., None])
        return staged_cache[k]

    hands = set(int(k) for k in hand_keyframes)
    Hinv = homography(rect, quad)      # canvas coords -> frame coords (where to draw the hand)
    hand_frames: list[int] = []
    hand_cover: list[float] = []
    # coverage of the canvas in the frame, to report how much of it a hand hides
    _, quad_alpha = warp_perspective(np.zeros((ch, cw, 1), np.float32), Hq, (fh, fw), return_alpha=True)
    quad_in = quad_alpha > 0.5
    # a few sensor-noise fields, cycled (drawing fresh noise for every frame is slow)
    noise_bank = [rng.normal(0, noise, (fh, fw, 3)).astype(np.float32) for _ in range(5)] if noise > 0 else []
    if codec == "auto":
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    container = av.open(path, mode="w")

    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
    stream.width, stream.height, stream.pix_fmt = fw, fh, "yuv420p"
    if codec in ("libx264", "h264"):
        stream.options = {"crf": "16", "preset": "veryfast"}
    else:
        stream.bit_rate = int(max(2e6, fw * fh * fps * 1.5))
        stream.options = {"qscale": "2"}
    for i in range(n_frames):
        t = i / fps
        k = int(np.searchsorted(vt, t + 1e-9, side="right") - 1)
        k = max(0, min(k, len(vt) - 1))
        fr = staged(k)
        has_hand = False
        if k in hands and k < process.num_steps:
            t0, t1 = vt[k], vt[k + 1]
            a, b = t0 + hand_fraction[0] * (t1 - t0), t0 + hand_fraction[1] * (t1 - t0)
            if a <= t <= b:
                has_hand = True
                u = (t - a) / max(1e-6, b - a)
                ys, xs = np.nonzero(process.masks[k])
                hrng = np.random.default_rng(seed * 1000 + k)
                if ys.size == 0:
                    ys, xs = np.array([ch // 2]), np.array([cw // 2])
                j0, j1 = hrng.integers(0, ys.size, 2)
                cx = _lerp(xs[j0], xs[j1], u) + 0.5
                cy = _lerp(ys[j0], ys[j1], u) + 0.5
                p = Hinv @ np.array([cx, cy, 1.0])
                tip = np.array([p[0] / p[2], p[1] / p[2]])
                img = Image.fromarray(np.clip(fr + 0.5, 0, 255).astype(np.uint8))
                size = 0.22 * min(fh, fw)
                # the arm comes from below; pick a direction that keeps the palm over the canvas
                angle = math.radians(60.0)
                for deg in hrng.permutation(np.arange(20, 170, 15)):
                    a = math.radians(float(deg))
                    palm = tip + 0.9 * size * np.array([math.cos(a), math.sin(a)])
                    q = Hq @ np.array([palm[0], palm[1], 1.0])
                    if 0.1 * cw < q[0] / q[2] < 0.9 * cw and 0.1 * ch < q[1] / q[2] < 0.9 * ch:
                        angle = a
                        break
                _draw_hand(img, tuple(tip), angle, size, np.random.default_rng(seed))
                fr2 = np.asarray(img, np.float32)
                changed = _cmax(np.abs(fr2 - fr)) > 1.0
                hand_cover.append(float((changed & quad_in).sum() / max(1, quad_in.sum())))
                fr = fr2
        if has_hand:
            hand_frames.append(i)
        out = fr
        if noise_bank:
            out = out + noise_bank[i % len(noise_bank)]
        frame = av.VideoFrame.from_ndarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), format="rgb24")
        for pkt in stream.encode(frame):
            container.mux(pkt)
    for pkt in stream.encode():
        container.mux(pkt)
    container.close()
    return {"path": path, "fps": float(fps), "time_scale": float(time_scale), "codec": codec,
            "keyframe_times": [float(v) for v in vt], "duration": duration, "n_frames": n_frames,
            "frame_hw": (fh, fw), "quad": quad.tolist(), "hand_frames": hand_frames,
            "hand_times": [i / fps for i in hand_frames], "hand_canvas_fraction": hand_cover}


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
_ASPECTS = (1.0, 1.25, 1.333, 1.5, 0.8, 0.75)


def generate_dataset(root: str, count: int, seed: int, size: int | tuple[int, int] = 512,
                     split: str = "train", aspect: float | None = None,
                     num_steps: int | tuple[int, int] | None = None, palette: str | None = None,
                     prefix: str = "synth", quality: int = 95, windows_safe: bool = False,
                     log: Callable[[str], None] | None = None) -> list[dict]:
    """Write `count` synthetic paintings to `<root>/<split>/rgb/<prefix>_<i>/` (official raw layout).

    size: an int is the short side (the official data is at a 512 short side) and the aspect is
      `aspect` or random among common canvas shapes; (h, w) fixes the size.
    num_steps: None (natural), an int, or an inclusive (lo, hi) range drawn per painting.
    Each painting gets its own seed derived from (seed, i); a manifest `<root>/<split>/synthetic.json`
    lists names, seeds, sizes and labels so the set can be regenerated.
    """
    split_root = os.path.join(root, split)
    os.makedirs(split_root, exist_ok=True)
    master = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    out = []
    for i in range(int(count)):
        child = int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
        if isinstance(size, (tuple, list)):
            h, w = int(size[0]), int(size[1])
        else:
            a = float(aspect) if aspect is not None else float(master.choice(_ASPECTS))
            short = int(size)
            h, w = (short, int(round(short * a))) if a >= 1 else (int(round(short / a)), short)
        if isinstance(num_steps, (tuple, list)):
            ns = int(master.integers(num_steps[0], num_steps[1] + 1))
        else:
            ns = num_steps
        proc = generate_process(child, h, w, num_steps=ns, palette=palette)
        name = f"{prefix}_{i:05d}"
        write_raw_layout(proc, split_root, name, quality=quality, windows_safe=windows_safe)
        rec = {"name": name, "seed": child, "height": h, "width": w, "num_steps": ns, "frames": len(proc.frames),
               "palette": proc.meta.get("palette"), "labels": proc.labels, "times_s": proc.times_s}
        out.append(rec)
        if log:
            log(f"[{i + 1}/{count}] {name} {h}x{w} {len(proc.frames)} frames ({rec['palette']})")
    with open(os.path.join(split_root, "synthetic.json"), "w", encoding="utf-8") as f:
        json.dump({"seed": int(seed), "count": int(count), "paintings": out}, f, indent=1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: python -m inverse_painting.training.synthetic ROOT --count N --seed S --size 512 --split train"""
    p = CommandLineParser(description="Generate a synthetic painting-process dataset (official raw layout).")
    p.add_argument("root")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs="+", default=[512], help="short side, or H W")
    p.add_argument("--split", default="train")
    p.add_argument("--aspect", type=float, default=None)
    p.add_argument("--steps", type=int, nargs="+", default=None, help="steps per painting, or LO HI")
    p.add_argument("--palette", default=None, choices=PALETTES)
    p.add_argument("--windows-safe", action="store_true", help="write m-ss instead of m:ss")
    a = p.parse_args(argv)
    size = a.size[0] if len(a.size) == 1 else (a.size[0], a.size[1])
    steps = None if a.steps is None else (a.steps[0] if len(a.steps) == 1 else (a.steps[0], a.steps[1]))
    generate_dataset(a.root, a.count, a.seed, size, a.split, aspect=a.aspect, num_steps=steps,
                     palette=a.palette, windows_safe=a.windows_safe, log=print)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ..core.errors import run_command

    raise SystemExit(run_command(main, "--debug" in sys.argv))
