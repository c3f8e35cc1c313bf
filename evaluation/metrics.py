"""The paper's painting-process metrics: LPIPS, IoU, DDC, DTS (per painting) and FID (over all frames).

Definitions (times in seconds, clocks start at the blank canvas):

* **LPIPS** -- for each real frame, the perceptual distance to the generated keyframe nearest in time
  (ties go to the earlier keyframe; real frames after the last keyframe use the last one); averaged over
  the real frames of a painting, then over paintings.
* **IoU** -- difference masks D(f_k, f_k+1, 0.2) (spatial perceptual distance > 0.2, the mask generator's
  input rule) of consecutive frames of each sequence; for each generated mask the best IoU over all real
  *non-empty* masks (a step that changed nothing visible painted no region: it matches nothing and scores 0);
  averaged. A sequence with one frame has no masks (NaN).
* **DDC** -- the curves "time in minutes vs perceptual distance to the target" (target = the real
  sequence's last frame, for both curves) compared with DTW (symmetric2, normalised by N + M, see
  :mod:`.dtw`) on the distance values; time only orders the samples.
* **DTS** -- |duration real - duration generated| in minutes (duration = time stamp of the last frame).
* **FID** -- Fréchet distance between the features of all real and all generated frames (see :mod:`.fid`).

Perceptual distances and difference masks come from :mod:`..models.lpips_net` and
:mod:`..core.difference_mask`; trunk features are computed once per frame and reused.
Both sequences are brought to one geometry first (:func:`harmonise`): the real target's size, optionally
scaled to ``short_side``; generated frames still carrying the working-size black pad are cropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..core.difference_mask import DIFFERENCE_THRESHOLD, difference_mask
from ..core.imaging import resized_size, uint8_to_tensor
from ..models.lpips_net import STLPIPS_ALEX, load_perceptual_metric
from .dtw import dtw
from .sequences import PaintingSequence

DEFAULT_METRIC = STLPIPS_ALEX  # ships with the stlpips-pytorch wheel: works offline
DEFAULT_INTERVAL_S = 20.0


# ---------------------------------------------------------------------------------------------- features


class FeatureCache:
    """Channel-normalised trunk features per frame, computed once (frames are keyed by ``id``)."""

    def __init__(self, metric):
        self.metric = metric
        self._store: dict = {}

    @torch.no_grad()
    def __call__(self, frame: np.ndarray):
        key = id(frame)
        hit = self._store.get(key)
        if hit is None or hit[0] is not frame:
            dev = next(self.metric.parameters()).device
            hit = (frame, self.metric.features(uint8_to_tensor(np.ascontiguousarray(frame), device=dev)))
            self._store[key] = hit
        return hit[1]


def resolve_metric(metric=None, weights_dir=None, device="cpu"):
    """A PerceptualDistance from an instance, a metric name or None (the offline default)."""
    if metric is None or isinstance(metric, str):
        return load_perceptual_metric(metric or DEFAULT_METRIC, weights_dir=weights_dir, device=device)
    return metric


@torch.no_grad()
def pair_distance(metric, cache: FeatureCache, a: np.ndarray, b: np.ndarray) -> float:
    return float(metric.compare(cache(a), cache(b), spatial=False).reshape(-1)[0])


@torch.no_grad()
def consecutive_difference_masks(metric, frames, threshold: float = DIFFERENCE_THRESHOLD,
                                 cache: FeatureCache | None = None) -> list[np.ndarray]:
    """Bool (H, W) masks D(f_k, f_k+1) > threshold for k = 0 .. N-2 (spatial LPIPS, official order)."""
    cache = cache or FeatureCache(metric)
    out = []
    for a, b in zip(frames, frames[1:]):
        dmap = metric.compare(cache(a), cache(b), spatial=True, size=a.shape[:2])
        out.append(difference_mask(dmap, threshold)[0, 0].cpu().numpy() > 0.5)
    return out


# ---------------------------------------------------------------------------------------------- geometry


def _resize(frame: np.ndarray, hw) -> np.ndarray:
    if frame.shape[:2] == tuple(hw):
        return frame
    return np.array(Image.fromarray(frame).resize((hw[1], hw[0]), Image.LANCZOS))


def _unpad(frame: np.ndarray, real_hw) -> np.ndarray:
    """Crop the bottom/right black pad of a working-size frame (pad_to_16 of the target resized to some
    short side) so that the painted area has the real aspect again; other frames are returned as they are."""
    h, w = frame.shape[:2]
    rh, rw = real_hw
    if abs(h * rw - w * rh) <= max(rh, rw):  # already the real aspect (within a pixel): nothing to crop
        return frame
    best = None
    for d in range(16):
        s = min(h, w) - d
        if s <= 0:
            break
        ph, pw = resized_size(rh, rw, s)
        if ph <= h and pw <= w and (ph + (-ph) % 16, pw + (-pw) % 16) == (h, w):
            err = abs(ph * rw - pw * rh)  # several short sides can pad to the same size: keep the truest aspect
            if best is None or err < best[0]:
                best = (err, ph, pw)
    if best is None:
        return frame
    return np.ascontiguousarray(frame[: best[1], : best[2]])


def eval_size(real_hw, short_side: int | None) -> tuple[int, int]:
    h, w = real_hw
    if short_side is None or min(h, w) <= short_side:
        return int(h), int(w)
    return resized_size(h, w, short_side)


def harmonise(real: PaintingSequence, generated: PaintingSequence, short_side: int | None = None):
    """Both frame lists at one size: the real target's (scaled to ``short_side`` if it is larger)."""
    real_hw = real.target.shape[:2]
    hw = eval_size(real_hw, short_side)
    rf = [_resize(f, hw) for f in real.frames]
    gf = [_resize(_unpad(f, real_hw), hw) for f in generated.frames]
    return rf, gf, hw


# ---------------------------------------------------------------------------------------------- metrics


def nearest_time_indices(query_times, ref_times) -> list[int]:
    """Index of the reference time nearest to each query time (ties: the earlier reference)."""
    ref = np.asarray(ref_times, dtype=np.float64)
    return [int(np.argmin(np.abs(ref - t))) for t in query_times]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a | b| of two boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


def best_match_iou(generated_masks, real_masks) -> tuple[float, list[dict]]:
    """Mean over generated masks of the best IoU with any non-empty real mask.

    A real transition with an empty mask painted no region, so it is not a match candidate: otherwise a
    generated step that changes nothing visible (e.g. a slow cross-fade) would score a perfect 1 as soon as
    the real process has one imperceptible step. An empty generated mask therefore scores 0. NaN if there
    is no generated mask or no non-empty real mask.
    """
    details = []
    candidates = [(j, r) for j, r in enumerate(real_masks) if np.asarray(r, bool).any()]
    if not generated_masks or not candidates:
        return float("nan"), details
    for k, g in enumerate(generated_masks):
        ious = [mask_iou(g, r) for _, r in candidates]
        best = int(np.argmax(ious))
        details.append({"generated_transition": k + 1, "best_real_transition": candidates[best][0] + 1,
                        "iou": ious[best]})
    return float(np.mean([d["iou"] for d in details])), details


def dts_minutes(real_duration_s: float, generated_duration_s: float) -> float:
    return abs(float(real_duration_s) - float(generated_duration_s)) / 60.0


def ddc(real_curve, generated_curve) -> float:
    """DTW (symmetric2, normalised by N + M) between two distance curves (values only)."""
    return dtw(real_curve, generated_curve).normalized_distance


def _clean(x):
    """JSON-friendly float (NaN -> None)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


@dataclass
class PaintingResult:
    name: str
    lpips: float
    iou: float
    ddc: float
    dts_min: float
    size_hw: tuple
    real_times_s: list
    generated_times_s: list
    real_curve: list  # distance of each real frame to the target
    generated_curve: list  # distance of each generated frame to the target
    lpips_details: list = field(default_factory=list)
    iou_details: list = field(default_factory=list)
    ddc_raw: float = float("nan")
    dtw_path: list = field(default_factory=list)
    # kept for plots, not serialised
    generated_frames: list = field(default_factory=list, repr=False)
    generated_masks: list = field(default_factory=list, repr=False)
    real_masks: list = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "lpips": _clean(self.lpips), "iou": _clean(self.iou), "ddc": _clean(self.ddc),
            "dts_min": _clean(self.dts_min),
            "eval_size_hw": list(self.size_hw),
            "real": {"num_frames": len(self.real_times_s), "times_s": self.real_times_s,
                     "duration_s": self.real_times_s[-1], "distance_to_target": self.real_curve},
            "generated": {"num_frames": len(self.generated_times_s), "times_s": self.generated_times_s,
                          "duration_s": self.generated_times_s[-1], "distance_to_target": self.generated_curve},
            "lpips_per_real_frame": self.lpips_details,
            "iou_per_generated_mask": self.iou_details,
            "ddc_unnormalised": _clean(self.ddc_raw),
            "dtw_path": [list(p) for p in self.dtw_path],
        }


@torch.no_grad()
def evaluate_painting(real: PaintingSequence, generated: PaintingSequence, metric,
                      threshold: float = DIFFERENCE_THRESHOLD, short_side: int | None = None,
                      name: str | None = None) -> PaintingResult:
    """LPIPS, IoU, DDC and DTS of one generated process against the real one."""
    rf, gf, hw = harmonise(real, generated, short_side)
    cache = FeatureCache(metric)
    target = rf[-1]

    # LPIPS to the generated keyframe nearest in time
    nearest = nearest_time_indices(real.times_s, generated.times_s)
    lp_details = []
    for i, (t, j) in enumerate(zip(real.times_s, nearest)):
        lp_details.append({"real_index": i, "real_time_s": t, "generated_index": j,
                           "generated_time_s": generated.times_s[j], "lpips": pair_distance(metric, cache, rf[i], gf[j])})
    lp = float(np.mean([d["lpips"] for d in lp_details]))

    # IoU of consecutive-frame difference masks
    real_masks = consecutive_difference_masks(metric, rf, threshold, cache)
    gen_masks = consecutive_difference_masks(metric, gf, threshold, cache)
    iou, iou_details = best_match_iou(gen_masks, real_masks)

    # DDC on the distance-to-target curves
    rc = [pair_distance(metric, cache, f, target) for f in rf]
    gc = [pair_distance(metric, cache, f, target) for f in gf]
    res = dtw(rc, gc)

    return PaintingResult(
        name=name or real.name, lpips=lp, iou=iou, ddc=res.normalized_distance,
        dts_min=dts_minutes(real.duration_s, generated.duration_s), size_hw=hw,
        real_times_s=list(real.times_s), generated_times_s=list(generated.times_s),
        real_curve=rc, generated_curve=gc, lpips_details=lp_details, iou_details=iou_details,
        ddc_raw=res.distance, dtw_path=res.path, generated_frames=gf, generated_masks=gen_masks,
        real_masks=real_masks,
    )


UNMATCHED_IOU = 0.05  # a generated step under this best IoU matches no real step (iou_breakdown)


def iou_breakdown(results) -> dict:
    """What the mean IoU is made of, pooled over all generated steps of ``results``: how many steps match no
    real step (best IoU under ``UNMATCHED_IOU``), how many of those change nothing the metric sees (an empty
    mask, which scores 0), and the mean IoU of the others. A method can lose on IoU by its regions' shapes or
    by spending keyframes on changes too faint to see; these tell which."""
    ious = [d["iou"] for r in results for d in r.iou_details]
    empty = sum(int(not np.asarray(m, bool).any()) for r in results if r.iou_details for m in r.generated_masks)
    matched = [x for x in ious if x >= UNMATCHED_IOU]
    return {"steps": len(ious), "unmatched": len(ious) - len(matched), "unchanged": empty,
            "matched_mean": _clean(float(np.mean(matched))) if matched else None}


def _nanmean(xs) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(xs)) if xs else float("nan")


def evaluate(pairs, metric=None, threshold: float = DIFFERENCE_THRESHOLD, short_side: int | None = None,
             fid_extractor=None, weights_dir=None, device="cpu") -> dict:
    """Evaluate [(real, generated), ...]: per-painting results and the overall means plus FID.

    ``fid_extractor``: None skips FID (recorded as null with a note); otherwise a callable mapping a
    list of uint8 frames to (N, D) features (see :mod:`.fid`).
    """
    from .fid import fid_from_features

    metric = resolve_metric(metric, weights_dir, device)
    results = [evaluate_painting(r, g, metric, threshold, short_side) for r, g in pairs]
    overall = {
        "metric": metric.metric_name,
        "metric_sources": dict(getattr(metric, "sources", {})),
        "threshold": threshold,
        "num_paintings": len(results),
        "lpips": _clean(_nanmean([r.lpips for r in results])),
        "iou": _clean(_nanmean([r.iou for r in results])),
        "ddc": _clean(_nanmean([r.ddc for r in results])),
        "dts_min": _clean(_nanmean([r.dts_min for r in results])),
        "iou_breakdown": iou_breakdown(results),
        "fid": None,
        "fid_features": None,
        "definitions": {
            "lpips": "mean over paintings of the mean over real frames of d(real, generated keyframe nearest in time)",
            "iou": f"mean over generated consecutive-frame masks (d > {threshold}) of the best IoU with any real mask",
            "ddc": "DTW (symmetric2, / (N+M)) between distance-to-real-target curves",
            "dts_min": "|duration real - duration generated| in minutes",
            "iou_breakdown": f"generated steps; those with best IoU < {UNMATCHED_IOU} (unmatched); those with an empty "
                             f"mask (unchanged, among the unmatched); mean IoU of the matched ones, pooled over the "
                             f"steps of all paintings (the iou above is a mean over paintings)",
            "fid": "Frechet distance between features of all real and all generated frames",
        },
    }
    if fid_extractor is not None:
        real_frames = [f for r, _ in pairs for f in r.frames]
        gen_frames = [f for _, g in pairs for f in g.frames]
        if len(real_frames) >= 2 and len(gen_frames) >= 2:
            overall["fid"] = _clean(fid_from_features(fid_extractor(real_frames), fid_extractor(gen_frames)))
        overall["fid_features"] = getattr(fid_extractor, "name", type(fid_extractor).__name__)
        overall["fid_num_real"], overall["fid_num_generated"] = len(real_frames), len(gen_frames)
        if overall["fid_features"] != "inception_v3_pool3":
            overall["fid_note"] = "not Inception features: not comparable with published FIDs"
    else:
        overall["fid_note"] = "skipped: no Inception weight file given"
    return {"overall": overall, "paintings": [r.to_json() for r in results], "_results": results}


def _frames_from_batch(frames) -> list[np.ndarray]:
    """uint8 HWC list, (B, H, W, 3) uint8 array, or float 0..1 tensor/array -> list of uint8 HWC."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)
    out = []
    for f in frames:
        f = np.asarray(f)
        if f.dtype != np.uint8:
            f = np.clip(f.astype(np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if f.ndim == 3 and f.shape[2] == 4:
            f = f[:, :, :3]
        out.append(np.ascontiguousarray(f))
    return out


def score_batches(generated_frames, reference_frames, generated_times_s=None, reference_times_s=None,
                  interval_s: float = DEFAULT_INTERVAL_S, reference_interval_s: float | None = None,
                  metric=None, threshold: float = DIFFERENCE_THRESHOLD, short_side: int | None = None,
                  fid_extractor=None, weights_dir=None, name: str = "batch") -> dict:
    """Score one generated frame batch against a reference (real) batch; frames are uint8 HWC or float
    0..1 (B, H, W, 3). Missing times are evenly spaced from 0 (``interval_s``, and ``reference_interval_s``
    for the reference, defaulting to ``interval_s``). Returns the :func:`evaluate` dictionary."""
    gen = _frames_from_batch(generated_frames)
    ref = _frames_from_batch(reference_frames)
    g = PaintingSequence.from_frames(name, gen, generated_times_s, interval_s)
    r = PaintingSequence.from_frames(name, ref, reference_times_s,
                                     interval_s if reference_interval_s is None else reference_interval_s)
    return evaluate([(r, g)], metric=metric, threshold=threshold, short_side=short_side,
                    fid_extractor=fid_extractor, weights_dir=weights_dir)
