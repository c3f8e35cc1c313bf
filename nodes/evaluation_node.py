"""ComfyUI node: score a generated keyframe batch against a reference (real) painting-process batch.

Thin classic-API adapter over :func:`..evaluation.metrics.score_batches` (LPIPS, IoU, DDC, DTS, FID) and
the evaluation plots. Imports nothing from ComfyUI, so it loads (and is testable) without it.
IMAGE tensors are [B, H, W, C] float 0..1.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from ..models.lpips_net import PERCEPTUAL_METRICS
from .convert import NodeInputError, finite_input, images_to_uint8

CATEGORY = "Inverse Painting"
_METRIC_CACHE: dict = {}


def parse_times(text: str, name: str = "times") -> list[float] | None:
    """'0, 0:23, 41.5' -> seconds; empty -> None. Accepts seconds or m:ss tokens; others are refused by name."""
    tokens = [t for t in re.split(r"[,\s;]+", (text or "").strip()) if t]
    if not tokens:
        return None
    out = []
    for t in tokens:
        try:
            if ":" in t:
                m, s = t.split(":", 1)
                value = int(m) * 60 + float(s)
            else:
                value = float(t)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value < 0:
            raise NodeInputError(f"{name}: {t!r} is not a time (seconds like 41.5, or m:ss like 0:23)")
        out.append(value)
    return out


def _to_image(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.astype(np.float32) / 255.0)[None]


def _metric(name: str, weights_dir: str):
    """The metric on the CPU: from ``weights_dir`` when given, else found like the other nodes' metrics."""
    from . import metrics

    if not weights_dir:
        return metrics.standalone_metric(name, torch.device("cpu"))
    key = (name, weights_dir)
    if key not in _METRIC_CACHE:
        _METRIC_CACHE.clear()  # keep one metric resident
        _METRIC_CACHE[key] = metrics.load(name, Path(weights_dir))
    return _METRIC_CACHE[key]


def _nan(x):
    return float("nan") if x is None else float(x)


class InversePaintingEvaluate:
    DESCRIPTION = ("Scores a generated painting process against a real one with the paper's metrics: LPIPS to "
                   "the time-nearest keyframe, IoU of difference masks, DDC (DTW of distance-to-target curves), "
                   "DTS (duration difference, minutes) and FID (needs a local Inception file).")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("STRING", "FLOAT", "FLOAT", "FLOAT", "FLOAT", "FLOAT", "IMAGE", "IMAGE")
    RETURN_NAMES = ("report_json", "lpips", "iou", "ddc", "dts_minutes", "fid", "distance_plot", "time_map")
    OUTPUT_TOOLTIPS = (
        "Full report (overall numbers, per-frame details, settings) as JSON.",
        "Mean distance of each reference frame to the generated keyframe nearest in time (lower is better).",
        "Mean best IoU of generated difference masks against reference masks (higher is better).",
        "DTW distance between the distance-to-target curves (lower is better).",
        "Absolute difference of the two durations in minutes.",
        "Fréchet Inception distance (NaN when no Inception weight file is given).",
        "Plot of the distance-to-target curves over time.",
        "Time map of the generated process: each pixel coloured by the keyframe that last changed it.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generated": ("IMAGE", {"tooltip": "Generated keyframes in order, the blank canvas first."}),
                "reference": ("IMAGE", {"tooltip": "Frames of the real painting process in order; the last one is "
                                                   "the finished painting (the target of the distance curves)."}),
                "generated_interval_s": ("FLOAT", {"default": 20.0, "min": 0.1, "max": 3600.0, "step": 1.0,
                                                   "tooltip": "Seconds between generated keyframes (release: 20), "
                                                              "used when generated_times is empty."}),
                "reference_interval_s": ("FLOAT", {"default": 20.0, "min": 0.1, "max": 3600.0, "step": 1.0,
                                                   "tooltip": "Seconds between reference frames, used when "
                                                              "reference_times is empty."}),
                "metric": (PERCEPTUAL_METRICS, {"default": PERCEPTUAL_METRICS[0],
                                                "tooltip": "Perceptual distance. stlpips_alex works offline (weights "
                                                           "ship with stlpips-pytorch); lpips_alex (the paper's) needs "
                                                           "the ImageNet AlexNet file in lpips_weights_dir or "
                                                           "models/inverse_painting/lpips/."}),
                "threshold": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 2.0, "step": 0.01,
                                        "tooltip": "Difference-mask threshold for the IoU and the time map "
                                                   "(spatial distance > threshold; the paper uses 0.2)."}),
            },
            "optional": {
                "generated_times": ("STRING", {"default": "", "tooltip": "Optional time stamps of the generated "
                                               "frames, seconds or m:ss, comma separated (one per frame)."}),
                "reference_times": ("STRING", {"default": "", "tooltip": "Optional time stamps of the reference "
                                               "frames, seconds or m:ss, comma separated (one per frame)."}),
                "lpips_weights_dir": ("STRING", {"default": "", "tooltip": "Folder with alexnet_features.pth or "
                                                 "alexnet-owt-7be5be79.pth (+ optional alex.pth); only for lpips_alex."}),
                "inception_weights": ("STRING", {"default": "", "tooltip": "Path of pt_inception-2015-12-05-"
                                                 "6726825d.pth (pytorch-fid format) for FID; empty skips FID."}),
                "short_side": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8,
                                       "tooltip": "Evaluate at this short side (downscale only); 0 keeps the "
                                                  "reference size."}),
            },
        }

    def run(self, generated, reference, generated_interval_s=20.0, reference_interval_s=20.0,
            metric=PERCEPTUAL_METRICS[0], threshold=0.2, generated_times="", reference_times="",
            lpips_weights_dir="", inception_weights="", short_side=0):
        from ..evaluation.metrics import score_batches
        from ..evaluation.plots import plot_distance_curves, plot_time_map
        from ..evaluation.time_map import time_map

        gen = images_to_uint8(generated, "generated")
        ref = images_to_uint8(reference, "reference")
        gt, rt = parse_times(generated_times, "generated_times"), parse_times(reference_times, "reference_times")
        for what, times, frames in (("generated", gt, gen), ("reference", rt, ref)):
            if times is not None and len(times) != len(frames):
                raise NodeInputError(f"{what}_times has {len(times)} entries for {len(frames)} frames")
        generated_interval_s = finite_input(generated_interval_s, "generated_interval_s", 0.1, 3600)
        reference_interval_s = finite_input(reference_interval_s, "reference_interval_s", 0.1, 3600)
        threshold = finite_input(threshold, "threshold", 0)
        m = _metric(metric, lpips_weights_dir)
        extractor = None
        if inception_weights:
            from ..evaluation.fid import InceptionFeatureExtractor

            extractor = InceptionFeatureExtractor(inception_weights)
        report = score_batches(gen, ref, gt, rt, interval_s=float(generated_interval_s),
                               reference_interval_s=float(reference_interval_s), metric=m,
                               threshold=float(threshold), short_side=int(short_side) or None,
                               fid_extractor=extractor)
        res = report.pop("_results")[0]
        ov = report["overall"]
        curves = plot_distance_curves(res.real_times_s, res.real_curve, res.generated_times_s, res.generated_curve,
                                      metric_name=ov["metric"], ddc=res.ddc)
        tm = time_map(res.generated_frames, threshold=float(threshold), masks=res.generated_masks)
        tm_plot = plot_time_map(tm, painting=res.generated_frames[-1], times_s=res.generated_times_s)
        values = [_nan(ov[k]) for k in ("lpips", "iou", "ddc", "dts_min", "fid")]
        text = json.dumps(report, indent=2, default=lambda o: None)
        return (text, *values, _to_image(curves), _to_image(tm_plot))


NODE_CLASS_MAPPINGS = {"InversePaintingEvaluate": InversePaintingEvaluate}
NODE_DISPLAY_NAME_MAPPINGS = {"InversePaintingEvaluate": "Inverse Painting: Evaluate Process"}

__all__ = ["InversePaintingEvaluate", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "parse_times"]
