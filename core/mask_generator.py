"""The mask generator ("RP"): where to paint next, from (canvas, target, instruction, interval).

One forward pass per keyframe: input [canvas latents, target latents, difference mask] (9 channels,
canvas first), context [time token, 77 text tokens]; sigmoid gives a probability per latent cell. The
release re-runs the whole network (and two VAE encodes, LPIPS, text encoding, file reads) for each
threshold it tries; the logits do not depend on the threshold, so here the ladder only re-thresholds:

- keyframe 0: tau = 0.5;
- later keyframes, tau in 0.5, 0.4, 0.3, 0.2, 0.1: skip if the mask covers less than 5 % of the image;
  else accept if IoU with the previous keyframe's mask < 0.8; if every tau is rejected keep tau = 0.1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .difference_mask import DIFFERENCE_THRESHOLD, compute_difference_mask
from .imaging import uint8_to_tensor, upsample_latent_mask
from .model_set import ModelSet

THRESHOLD_LADDER = (0.5, 0.4, 0.3, 0.2, 0.1)
MIN_AREA = 0.05
MAX_IOU = 0.8


@dataclass
class MaskPrediction:
    logits: torch.Tensor  # (1, 1, h, w)
    probability: torch.Tensor  # sigmoid(logits)
    difference: torch.Tensor  # (1, 1, h, w) latent difference mask (input channel 8)
    difference_map: torch.Tensor  # (1, 1, H, W) spatial LPIPS
    z_canvas: torch.Tensor
    z_target: torch.Tensor
    context: torch.Tensor  # (1, 78, D)

    def area(self, threshold: float = 0.5) -> float:
        """Fraction of the (padded) image above ``threshold``, as the ladder counts it."""
        return float((self.probability > threshold).float().mean())


@dataclass
class LadderResult:
    mask_latent: torch.Tensor  # (1, 1, h, w) {0, 1}
    mask_full: torch.Tensor  # (1, 1, H, W) {0, 1}, 8x8 blocks
    threshold: float
    trail: list[dict] = field(default_factory=list)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """The release's IoU: sum(a*b) / #(a + b > 0)."""
    union = float(((a + b) > 0).sum())
    return float((a * b).sum()) / union if union else 0.0


def threshold_ladder(probability: torch.Tensor, full_hw, previous: torch.Tensor | None, first: bool,
                     ladder=THRESHOLD_LADDER, min_area: float = MIN_AREA, max_iou: float = MAX_IOU) -> LadderResult:
    """Pick the mask threshold like the release's "dilate" loop (see the module docstring).

    ``previous`` is the previous keyframe's pixel mask (1,1,H,W); areas are counted at pixel level.
    """
    H, W = full_hw
    min_sum = int(H * W * min_area)
    trail = []
    chosen = None
    for tau in ladder:
        latent = (probability > tau).float()
        full = upsample_latent_mask(latent, (H, W))
        total = float(full.sum())
        entry = {"threshold": tau, "mask_sum": total, "min_sum": min_sum}
        trail.append(entry)
        if first:
            entry["decision"] = "accept (first keyframe)"
            chosen = (tau, latent, full)
            break
        if total < min_sum:
            entry["decision"] = "too_small_continue"
            continue
        entry["iou"] = iou(full, previous.to(full)) if previous is not None else 0.0
        if entry["iou"] < max_iou:
            entry["decision"] = "accept"
            chosen = (tau, latent, full)
            break
        entry["decision"] = "iou_too_high_continue"
    if chosen is None:
        chosen = (tau, latent, full)  # every threshold rejected: the last (lowest) one is kept
        trail[-1]["decision"] += " (fallback: kept)"
    return LadderResult(chosen[1], chosen[2], chosen[0], trail)


class MaskGenerator:
    def __init__(self, models: ModelSet, metric):
        if models.mask is None:
            raise ValueError("the model set was loaded without the mask generator")
        self.models = models
        self.nets = models.mask
        self.metric = metric

    @torch.no_grad()
    def predict(self, canvas: np.ndarray, target: np.ndarray, instruction: str, interval_s: float,
                difference_threshold: float = DIFFERENCE_THRESHOLD, target_latents: torch.Tensor | None = None) -> MaskPrediction:
        """One forward pass. ``target_latents`` may be passed in (they are fixed for a painting)."""
        m = self.models
        z_canvas = m.encode_latents(uint8_to_tensor(canvas))
        z_target = target_latents if target_latents is not None else m.encode_latents(uint8_to_tensor(target))
        h, w = z_canvas.shape[-2:]
        diff = compute_difference_mask(self.metric, canvas, target, difference_threshold, (h, w))
        return self._forward(z_canvas, z_target, diff.latent, diff.map, instruction, interval_s)

    @torch.no_grad()
    def predict_instruction(self, prediction: MaskPrediction, instruction: str, interval_s: float) -> MaskPrediction:
        """The same canvas and target with another instruction (re-uses the latents and the difference mask)."""
        return self._forward(prediction.z_canvas, prediction.z_target, prediction.difference,
                             prediction.difference_map, instruction, interval_s)

    def _forward(self, z_canvas, z_target, difference, difference_map, instruction: str, interval_s: float):
        m = self.models
        pe = self.nets.time_encoder(interval_s).to(m.dtype)
        context = torch.cat([pe, m.text([instruction]).to(m.dtype)], dim=1)  # [time, text]
        x = torch.cat([z_canvas, z_target.to(z_canvas), difference.to(z_canvas)], dim=1)  # canvas first
        logits = self.nets.unet(x, context).float()
        return MaskPrediction(logits, torch.sigmoid(logits), difference, difference_map, z_canvas, z_target, context)

    def choose(self, prediction: MaskPrediction, previous_full: torch.Tensor | None, first: bool,
               ladder: bool = True, threshold: float = 0.5) -> LadderResult:
        """Threshold the prediction with the ladder (or one fixed ``threshold`` when ``ladder`` is off)."""
        H, W = prediction.difference_map.shape[-2:]
        return threshold_ladder(prediction.probability, (H, W), previous_full, first,
                                ladder=THRESHOLD_LADDER if ladder else (threshold,))
