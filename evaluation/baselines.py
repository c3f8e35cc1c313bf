"""Naive painting processes to compare a model against: a cross-fade, a random tile reveal and a band reveal.

Both start from the white canvas and end exactly on the target after ``num_keyframes`` steps of
``interval_s`` seconds, like a generated process, and are written in the CLI's output layout
(:func:`..core.export.write_process`), so the evaluation reads them exactly as it reads a model's output.

* **cross-fade**: keyframe k = white + k/n (target - white), every pixel changes a little at every step;
* **random tiles**: the image is cut into ``tile`` x ``tile`` tiles, shuffled once (seeded), and keyframe
  k shows the first round(k/n * tiles) of them, the rest still white: the right amount of paint per step,
  in no meaningful order;
* **bands**: keyframe k shows the top round(k/n * H) rows of the target (hard-edged horizontal bands, top to
  bottom), the rest still white: the right amount of paint per step, in the order a landscape is often
  painted (sky first), with no model at all.
"""
from __future__ import annotations

import numpy as np

from ..core.export import write_process
from ..core.imaging import cross_fade as mix

WHITE = 255.0


def cross_fade(target: np.ndarray, num_keyframes: int) -> list[np.ndarray]:
    """[white, ..., target]: num_keyframes + 1 uint8 frames, linear in k."""
    n = max(1, int(num_keyframes))
    white = np.full(target.shape, WHITE, np.float32)
    return [mix(white, target, k / n) for k in range(n + 1)]


def tile_reveal(target: np.ndarray, num_keyframes: int, tile: int = 8, seed: int = 0) -> tuple[list, list]:
    """[white, ..., target] revealing shuffled tile x tile tiles; also the per-keyframe reveal masks (0/255)."""
    n = max(1, int(num_keyframes))
    h, w = target.shape[:2]
    rows, cols = -(-h // tile), -(-w // tile)
    order = np.random.default_rng(seed).permutation(rows * cols)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)  # rank[tile index] = when it is revealed
    rank_px = np.repeat(np.repeat(rank.reshape(rows, cols), tile, 0), tile, 1)[:h, :w]
    frames, masks = [np.full_like(target, 255)], [np.zeros((h, w), np.uint8)]
    shown = 0
    for k in range(1, n + 1):
        upto = int(round(k / n * order.size))
        step = (rank_px >= shown) & (rank_px < upto)
        frame = frames[-1].copy()
        frame[step] = target[step]
        frames.append(frame)
        masks.append(step.astype(np.uint8) * 255)
        shown = upto
    return frames, masks


def band_reveal(target: np.ndarray, num_keyframes: int) -> tuple[list, list]:
    """[white, ..., target] revealing the rows top to bottom in num_keyframes hard-edged bands; also the
    per-keyframe reveal masks (0/255: the band painted at that keyframe)."""
    n = max(1, int(num_keyframes))
    h, w = target.shape[:2]
    frames, masks = [np.full_like(target, 255)], [np.zeros((h, w), np.uint8)]
    shown = 0
    for k in range(1, n + 1):
        upto = int(round(k / n * h))  # k = n: every row
        frame = frames[-1].copy()
        frame[shown:upto] = target[shown:upto]
        mask = np.zeros((h, w), np.uint8)
        mask[shown:upto] = 255
        frames.append(frame)
        masks.append(mask)
        shown = upto
    return frames, masks


BASELINES = ("crossfade", "tiles", "band")


def write_baseline(kind: str, out_dir, target: np.ndarray, num_keyframes: int, interval_s: float = 20.0,
                   seed: int = 0, tile: int = 8, video: tuple[str, ...] = (), overwrite: bool = False) -> dict:
    """Write one baseline process (frames + manifest) to ``out_dir`` (new or empty unless ``overwrite``); returns
    the manifest."""
    if kind == "crossfade":
        frames, masks = cross_fade(target, num_keyframes), None
    elif kind == "tiles":
        frames, masks = tile_reveal(target, num_keyframes, tile=tile, seed=seed)
    elif kind == "band":
        frames, masks = band_reveal(target, num_keyframes)
    else:
        raise ValueError(f"baseline must be one of {BASELINES}, not {kind!r}")
    records = [{"time_s": k * float(interval_s), "instruction": ""} for k in range(len(frames))]
    settings = {"baseline": kind, "num_keyframes": int(num_keyframes), "interval_s": float(interval_s),
                "tile": int(tile) if kind == "tiles" else None, "seed": int(seed) if kind == "tiles" else None}
    return write_process(out_dir, frames, records, settings, masks=masks, video=video, overwrite=overwrite)
