"""The painting loop: from a blank (or given) canvas to the target, one keyframe per time interval.

Each keyframe: text instruction (LLaVA, or a user list) -> difference mask + mask generator (one pass,
threshold ladder) -> renderer -> stop-rule distances. The stop tests run before each keyframe, as in
the release: stop when the last LPIPS(target, keyframe) < 0.1, or when the last two
LPIPS(canvas, keyframe) < 1e-3 once more than three keyframes exist, or at ``max_keyframes``; with ``reask``
also when nothing the text generator offers would change the canvas. After the stop, optional finishing
keyframes (``finish_frames``) cross-fade to the target painting so the time-lapse ends on it.

Everything stays in memory (the release writes and re-reads PNGs several times per keyframe). The loop
is a generator: it yields each :class:`Keyframe` as soon as it is made, so callers can stream previews
and progress. For a given seed and settings it is deterministic.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .difference_mask import (DIFFERENCE_THRESHOLD, compute_difference_mask, difference_map, difference_mask,
                              stop_rule_distance)
from .errors import NumericalFault, OptionError, check_finite, finite_number, whole_number
from .guidance import GuidanceScales
from .imaging import WorkingImage, check_short_side, cross_fade, prepare_image
from .limits import MAX_GUIDANCE, MAX_INTERVAL_S, MAX_KEYFRAMES, MAX_STEPS  # noqa: F401 - re-exported
from .loading import paint_defaults
from .mask_generator import MIN_AREA, LadderResult, MaskGenerator, MaskPrediction
from .model_set import ModelSet
from .renderer import ExternalSampler, Renderer
from .sampling import SAMPLERS, NoiseSource


# the PaintSettings a model folder may choose (core/loading.paint_defaults), the rest being per run
MODEL_PAINT_CHOICES = ("short_side", "compare_to", "reask", "finish_frames", "scales")


REASK_THRESHOLD = 0.5  # the ladder's first threshold: below MIN_AREA there, a region counts as finished
FINISH_INSTRUCTION = "(finish)"  # the instruction of the finishing keyframes (``finish_frames``)


@dataclass
class PaintSettings:
    interval_s: float = 20.0
    max_keyframes: int = 50
    # the default sampling: DPM-Solver++(2M), 12 steps, four guidance branches (48 UNet passes instead of the
    # release's 150; evaluation/speed_report.py). The release: euler_ancestral, 25 steps, six.
    steps: int = 12
    seed: int = 1
    scales: GuidanceScales = field(default_factory=GuidanceScales)
    fast_guidance: bool = True  # skip zero-weight guidance branches (equal to float tolerance)
    sampler: str = "dpmpp_2m"  # core.sampling.SAMPLERS
    # guidance only for sigmas in [lo, hi], one fully conditioned pass elsewhere; the release: None (always)
    guidance_interval: tuple[float, float] | None = None
    difference_threshold: float = DIFFERENCE_THRESHOLD
    threshold_ladder: bool = True
    combine_init: bool = True
    combine_ratio: float = 0.2
    stop_target_distance: float = 0.1
    stop_change: float = 1e-3
    stop_min_keyframes: int = 4  # the change rule needs more than three keyframes
    short_side: int | None = 512
    # what the difference masks and the "close to the target" rule measure against: the target itself
    # (the release), or the target passed through the model's VAE, decode(encode(target)). A small VAE
    # (the starter) cannot get closer to the target than its own reconstruction, which can be further
    # than the 0.2 / 0.1 thresholds: measured against the target, the loop would never see a finished region.
    compare_to: str = "target"  # "target" | "reconstruction"
    # > 0: when the mask generator finds under 5 % of the image at threshold 0.5 for the instruction (the
    # region it names looks finished) for the second time, with no region found for it in between, try up to
    # this many other answers of the text generator, most likely first (beam search), and paint the first one
    # it finds a region for. Release: 0,
    # the answer is kept and the ladder lowers the threshold; a generator that keeps naming a finished region
    # (greedy decoding gives the same answer for the same canvas) then paints slivers until "canvas stopped
    # changing", with other regions unpainted. The first time is kept: real processes often spend one more
    # keyframe on a region, and re-asking at once paints faster than they do (worse LPIPS on validation).
    # Skipped on the first keyframe and for user instructions (no alternatives to ask). Also re-asked at once: an
    # answer whose last keyframe changed no region of the canvas (nowhere a spatial distance above
    # ``difference_threshold``): the renderer found nothing left to paint for it, and naming it again repaints
    # the same canvas (validation seeds 3000/4000 in training/README.md). When such an answer comes back and the
    # text generator offers no other with a region, the loop stops ("nothing_left_to_paint"): the release would
    # repaint it unchanged until max_keyframes (seen on 2 of 20 benchmark paintings).
    reask: int = 0
    # > 0: after the stop, this many more keyframes cross-fade (pixel space, one interval apart) from the last
    # keyframe to the target painting itself, so the time-lapse ends on the painting, as a real one does.
    # Release: 0, the time-lapse ends on the last render (never pixel-exact: the VAE alone loses detail).
    finish_frames: int = 0

    def __post_init__(self):
        """Every field checked, so that no path (command line, node, model folder) paints with a value that
        would fail late or silently (NaN, a negative interval, zero steps)."""
        self.interval_s = finite_number(self.interval_s, "interval (seconds per keyframe)", 0, MAX_INTERVAL_S,
                                        low_open=True)
        self.max_keyframes = whole_number(self.max_keyframes, "max_keyframes", 1, MAX_KEYFRAMES)
        self.steps = whole_number(self.steps, "steps", 1, MAX_STEPS)
        self.seed = whole_number(self.seed, "seed", 0, 2**64 - 1)
        if isinstance(self.scales, (list, tuple)):
            if len(self.scales) != 5:
                raise OptionError(f"guidance needs 5 scales (image, canvas, time, mask, text), got {len(self.scales)}")
            self.scales = GuidanceScales(*self.scales)
        elif not isinstance(self.scales, GuidanceScales):
            raise OptionError(f"guidance needs 5 scales (image, canvas, time, mask, text), got {self.scales!r}")
        for name in ("image", "canvas", "time", "mask", "text"):
            finite_number(getattr(self.scales, name), f"guidance scale '{name}'", -MAX_GUIDANCE, MAX_GUIDANCE)
        if self.sampler not in SAMPLERS:
            raise OptionError(f"sampler must be one of {sorted(SAMPLERS)}, got {self.sampler!r}")
        if self.guidance_interval is not None:
            try:
                lo, hi = (finite_number(v, "guidance_interval", 0) for v in self.guidance_interval)
            except (TypeError, ValueError):
                raise OptionError(f"guidance_interval must be two sigmas (lo, hi), got {self.guidance_interval!r}") \
                    from None
            if lo > hi:
                raise OptionError(f"guidance_interval: lo {lo} is above hi {hi}")
            self.guidance_interval = (lo, hi)
        self.difference_threshold = finite_number(self.difference_threshold, "difference_threshold", 0)
        self.combine_ratio = finite_number(self.combine_ratio, "combine_ratio", 0, 1)
        self.stop_target_distance = finite_number(self.stop_target_distance, "stop_target_distance", 0)
        self.stop_change = finite_number(self.stop_change, "stop_change", 0)
        self.stop_min_keyframes = whole_number(self.stop_min_keyframes, "stop_min_keyframes", 0)
        if self.short_side is not None:
            check_short_side(self.short_side)
        if self.compare_to not in ("target", "reconstruction"):
            raise OptionError(f"compare_to must be 'target' or 'reconstruction', got {self.compare_to!r}")
        for name in ("reask", "finish_frames"):
            setattr(self, name, whole_number(getattr(self, name), name, 0, MAX_KEYFRAMES))

    @classmethod
    def for_model(cls, root, **settings) -> "PaintSettings":
        """Settings for the model folder ``root``: the release defaults, then what the folder asks for
        (:func:`.loading.paint_defaults`, e.g. a starter's size and ``compare_to``), then the
        given ``settings`` that are not None."""
        chosen = paint_defaults(root)
        unknown = sorted(set(chosen) - set(MODEL_PAINT_CHOICES))
        if unknown:
            raise OptionError(f"{root}/starter.json: unknown paint_defaults {unknown}; a model folder may set "
                              f"{', '.join(MODEL_PAINT_CHOICES)}")
        merged = {**chosen, **{k: v for k, v in settings.items() if v is not None}}
        return cls(**merged)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scales"] = asdict(self.scales)
        return d


@dataclass
class Keyframe:
    index: int  # 1-based: keyframe k shows the painting at time k * interval
    time_s: float
    image: np.ndarray  # uint8 (H, W, 3) at working size (padded); `cropped` removes the pad
    instruction: str
    mask: torch.Tensor  # (1, 1, H, W) {0, 1}: region the renderer was told to paint
    mask_latent: torch.Tensor
    difference: torch.Tensor  # (1, 1, h, w) latent LPIPS difference mask (mask-generator input)
    threshold: float | None  # mask threshold the ladder chose (None: user mask)
    ladder: list[dict]
    lpips_to_target: float  # LPIPS(target painting, this keyframe), at the working size
    lpips_change: float  # LPIPS(previous canvas, this keyframe)
    latents: torch.Tensor
    size: tuple[int, int]
    finishing: bool = False  # a cross-fade to the target after the stop (``finish_frames``), not a render
    # LPIPS(decode(encode(target)), this keyframe) when ``compare_to`` is "reconstruction": what the stop rule
    # measured then (None when it measures ``lpips_to_target``)
    lpips_to_reconstruction: float | None = None

    @property
    def cropped(self) -> np.ndarray:
        return self.image[: self.size[0], : self.size[1]]

    @property
    def mask_area(self) -> float:
        h, w = self.size
        return float(self.mask[0, 0, :h, :w].float().mean())

    def record(self) -> dict:
        """JSON-friendly summary (manifest entry)."""
        rec = {"index": self.index, "time_s": self.time_s, "instruction": self.instruction,
               "mask_area": round(self.mask_area, 6), "mask_threshold": self.threshold,
               "lpips_to_target": round(self.lpips_to_target, 6), "lpips_change": round(self.lpips_change, 6),
               "ladder": self.ladder}
        if self.lpips_to_reconstruction is not None:
            rec["lpips_to_reconstruction"] = round(self.lpips_to_reconstruction, 6)
        if self.finishing:
            rec["finishing"] = True
        return rec


# what the distances of a keyframe record measure (``Keyframe.record``), for manifests
DISTANCE_FIELDS = {
    "lpips_to_target": "distance (the run's perceptual metric) from the frame to the target painting, at the "
                       "working size",
    "lpips_to_reconstruction": "distance from the frame to the target passed through the model's VAE, which the "
                               "stop rule and the difference masks compare with (compare_to 'reconstruction'); "
                               "absent when they compare with the target",
    "lpips_change": "distance from the frame to the previous one",
}


class ManualMasks:
    """User masks per keyframe (None entries fall back to the mask generator)."""

    def __init__(self, masks: Sequence[torch.Tensor | np.ndarray | None]):
        self.masks = list(masks)

    def get(self, k: int):
        return self.masks[k] if k < len(self.masks) else None


@dataclass
class LoopState:
    """Where the loop stands after ``painted`` keyframes: all it needs to go on exactly as if never stopped
    (``Painter.paint(resume=...)``; the CLI saves it beside the frames after every keyframe)."""

    painted: int
    canvas: np.ndarray  # uint8 (H, W, 3), padded working size: the next keyframe's canvas
    prev_mask: torch.Tensor | None  # (1, 1, H, W) mask of the last keyframe
    prev_latents: torch.Tensor | None  # its final latents (combine_init)
    changes: list[float]
    to_target: list[float]
    finished: list[str]  # answers found finished (``reask``)
    unchanged: list[str] = field(default_factory=list)  # answers whose last keyframe changed no region (``reask``)

    def to_saved(self) -> tuple[dict, dict]:
        """(tensors, JSON-able info) for a safetensors file."""
        tensors = {"canvas": torch.from_numpy(np.ascontiguousarray(self.canvas))}
        if self.prev_mask is not None:
            tensors["prev_mask"] = (self.prev_mask.detach().float().cpu() > 0.5).to(torch.uint8)
        if self.prev_latents is not None:
            tensors["prev_latents"] = self.prev_latents.detach().float().cpu()
        # JSON writes floats by repr, which reads back to the same float: the stop rules decide as if never stopped
        info = {"painted": self.painted, "changes": [float(c) for c in self.changes],
                "to_target": [float(d) for d in self.to_target], "finished": list(self.finished),
                "unchanged": list(self.unchanged)}
        return tensors, info

    @classmethod
    def from_saved(cls, tensors: dict, info: dict) -> "LoopState":
        mask = tensors.get("prev_mask")
        return cls(int(info["painted"]), tensors["canvas"].numpy().astype(np.uint8),
                   mask.float() if mask is not None else None, tensors.get("prev_latents"),
                   [float(c) for c in info["changes"]], [float(d) for d in info["to_target"]],
                   list(info.get("finished", [])), list(info.get("unchanged", [])))


class Painter:
    """Holds the networks; ``paint`` runs the loop for one target."""

    def __init__(self, models: ModelSet, metric, text_generator=None):
        self.models = models
        self.metric = metric
        self.renderer = Renderer(models)
        self.mask_generator = MaskGenerator(models, metric) if models.mask is not None else None
        self.text_generator = text_generator
        self.state: LoopState | None = None
        self.last_stop_reason: str | None = None

    def prepare(self, target, short_side: int | None = 512) -> WorkingImage:
        return target if isinstance(target, WorkingImage) else prepare_image(target, short_side)

    def _mask_from_user(self, mask, working: WorkingImage) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(mask, dtype=np.float32) if not isinstance(mask, torch.Tensor) else mask).float()
        while t.ndim < 4:
            t = t[None]
        H, W = working.hw
        if tuple(t.shape[-2:]) != (H, W):
            h, w = working.size
            t = torch.nn.functional.interpolate(t, size=(h, w), mode="nearest")
            t = torch.nn.functional.pad(t, (0, W - w, 0, H - h))
        # the renderer was trained with masks of 8x8 latent blocks: snap a free-hand mask to that grid
        lat = torch.nn.functional.max_pool2d((t > 0.5).float(), 8)
        return torch.nn.functional.interpolate(lat, size=(H, W), mode="nearest")

    def _reask(self, text, canvas: np.ndarray, target: np.ndarray, instruction: str, prediction: MaskPrediction,
               settings: PaintSettings, finished: set[str], unchanged: set[str]
               ) -> tuple[str, MaskPrediction, dict | None, bool]:
        """``settings.reask``: keep ``instruction`` unless its region was found finished (``finished``: the
        answers found so before, updated here) and is again, or its last keyframe changed no region
        (``unchanged``); then the first other answer of ``text``, not in ``unchanged``, whose mask covers
        ``MIN_AREA`` at ``REASK_THRESHOLD``. Returns (instruction, prediction, trail entry or None, nothing left):
        the last is True when ``instruction`` changed nothing last time and the text generator offered no other
        answer to use: painting it again would repaint the same canvas."""
        if instruction in unchanged:
            why = "changed nothing last time"
        elif prediction.area(REASK_THRESHOLD) >= MIN_AREA:
            finished.discard(instruction)
            return instruction, prediction, None, False
        elif instruction not in finished:  # first time: one more pass over the region, as the release
            finished.add(instruction)
            return instruction, prediction, None, False
        else:
            why = "found finished"
        ask = getattr(text, "alternatives", None)
        # a user list has no second answer (None, or none offered for a written entry): the user's choice stands
        answers = list(ask(canvas, target, settings.reask + 1)) if ask is not None else []
        if not answers:
            return instruction, prediction, None, False
        tried: list[dict] = []
        # one beam more than the answers to try: the greedy answer is usually among the beams
        for answer in answers:
            if len(tried) == settings.reask:
                break
            if answer == instruction or answer in unchanged:
                continue
            other = self.mask_generator.predict_instruction(prediction, answer, settings.interval_s)
            area = other.area(REASK_THRESHOLD)
            tried.append({"instruction": answer, "area": round(area, 4)})
            if area >= MIN_AREA:
                return answer, other, {"decision": f"re-asked: {instruction!r} {why}, {answer!r} used",
                                       "tried": tried}, False
        return instruction, prediction, {"decision": f"re-asked: no other answer has a region, {instruction!r} kept",
                                         "tried": tried}, instruction in unchanged

    def paint(self, target, settings: PaintSettings = PaintSettings(), instructions=None, masks=None,
              start_canvas=None, sampler: ExternalSampler | None = None, sigmas: torch.Tensor | None = None,
              step_callback: Callable[[int, dict], None] | None = None, noise_draws: torch.Tensor | None = None,
              trace: list | None = None, resume: LoopState | None = None) -> Iterator[Keyframe]:
        """Yield keyframes until a stop rule fires.

        ``instructions``: an object with ``generate(canvas, target, keyframe_index=k) -> str`` (LLaVA or
        a manual list); defaults to the text generator given to the Painter. ``masks``: optional
        per-keyframe user masks (None entries use the mask generator). ``step_callback(k, info)`` is
        called after every denoising step (progress / interruption; raise to stop). ``noise_draws``
        injects noise (tests). Why the loop ended is in ``self.last_stop_reason`` afterwards; ``self.state``
        is the :class:`LoopState` after the last painted keyframe, and ``resume`` continues from such a state
        (same target, settings and instructions: the same keyframes as a run never stopped).
        """
        working = self.prepare(target, settings.short_side)
        text = instructions if instructions is not None else self.text_generator
        if text is None:
            raise ValueError("no instructions: load a text-instruction model or pass a list of instructions")
        user_masks = masks if isinstance(masks, ManualMasks) or masks is None else ManualMasks(masks)
        tstate = self.renderer.prepare_target(working.padded)
        target_img = working.padded
        if settings.compare_to == "reconstruction":
            reference = self.models.round_trip(target_img)
        elif settings.compare_to == "target":
            reference = target_img
        else:
            raise ValueError(f"compare_to must be 'target' or 'reconstruction', not {settings.compare_to!r}")
        if resume is None:
            canvas = working.fit(start_canvas) if start_canvas is not None else working.white_canvas()
            resume = LoopState(0, canvas, None, None, [], [], [])
        elif resume.canvas.shape != target_img.shape:
            raise ValueError(f"the saved state is for a {resume.canvas.shape} canvas, the target is {target_img.shape}")
        canvas, changes, to_target = resume.canvas, list(resume.changes), list(resume.to_target)
        dev = self.models.device
        prev_mask = resume.prev_mask.to(dev) if resume.prev_mask is not None else None
        prev_latents = resume.prev_latents.to(dev, self.models.dtype) if resume.prev_latents is not None else None
        finished: set[str] = set(resume.finished)  # answers whose region the mask generator found finished (reask)
        unchanged: set[str] = set(resume.unchanged)  # answers whose last keyframe changed no region (reask)
        self.state = resume
        self.last_stop_reason = "max_keyframes"
        latent_shape = (1, tstate.latents.shape[1], *working.latent_hw)
        for k in range(resume.painted, settings.max_keyframes):
            if len(changes) >= settings.stop_min_keyframes and all(c < settings.stop_change for c in changes[-2:]):
                self.last_stop_reason = "canvas_stopped_changing"
                break
            if to_target and to_target[-1] < settings.stop_target_distance:
                self.last_stop_reason = "close_to_target"
                break
            instruction = str(text.generate(canvas, target_img, keyframe_index=k)).strip()
            user = user_masks.get(k) if user_masks is not None else None
            if user is not None:
                mask_full = self._mask_from_user(user, working).to(self.models.device)
                mask_lat = torch.nn.functional.interpolate(mask_full, size=working.latent_hw, mode="nearest")
                difference = compute_difference_mask(self.metric, canvas, reference, settings.difference_threshold,
                                                     working.latent_hw).latent
                chosen = LadderResult(mask_lat, mask_full, None, [{"decision": "user mask"}])
            else:
                if self.mask_generator is None:
                    raise ValueError("no mask generator loaded and no mask given for keyframe %d" % k)
                pred = self.mask_generator.predict(canvas, reference, instruction, settings.interval_s,
                                                   settings.difference_threshold, target_latents=tstate.latents)
                reasked = None
                if settings.reask > 0 and k > 0:
                    instruction, pred, reasked, nothing_left = self._reask(text, canvas, target_img, instruction,
                                                                           pred, settings, finished, unchanged)
                    if nothing_left:
                        self.last_stop_reason = "nothing_left_to_paint"
                        break
                chosen = self.mask_generator.choose(pred, prev_mask, first=k == 0, ladder=settings.threshold_ladder)
                if reasked is not None:
                    chosen.trail.insert(0, reasked)
                difference = pred.difference
                check_finite(pred.logits, "mask generator", f"keyframe {k + 1}")
                if trace is not None:
                    trace.append({"keyframe": k, "rp_logits": pred.logits, "difference": pred.difference})
            conds = self.renderer.conditions(tstate, canvas, chosen.mask_full, instruction, settings.interval_s)
            noise = NoiseSource(settings.seed, latent_shape, self.models.device, self.models.dtype,
                                first_keyframe=k == 0, draws=noise_draws)
            cb = None
            if step_callback is not None:
                cb = lambda info, _k=k: step_callback(_k, info)  # noqa: E731
            combine = settings.combine_init and k > 0
            result = self.renderer.render(
                conds, noise, settings.steps, settings.scales, settings.fast_guidance,
                prev_latents if combine else None, settings.combine_ratio,
                sampler=sampler, sigmas=sigmas, callback=cb, sampler_name=settings.sampler,
                guidance_interval=settings.guidance_interval)
            image = result.image
            change = stop_rule_distance(self.metric, canvas, image)
            dist, to_recon = self._distances(target_img, reference, image)
            if not all(math.isfinite(d) for d in (change, dist, dist if to_recon is None else to_recon)):
                raise NumericalFault("perceptual metric", None, f"keyframe {k + 1}")
            changes.append(change)
            to_target.append(dist if to_recon is None else to_recon)
            if settings.reask > 0 and user is None:
                if self._changed_a_region(canvas, image, working, settings.difference_threshold):
                    unchanged.discard(instruction)
                else:
                    unchanged.add(instruction)
            kf = Keyframe(k + 1, (k + 1) * settings.interval_s, image, instruction, chosen.mask_full,
                          chosen.mask_latent, difference, chosen.threshold, chosen.trail, dist, change,
                          result.latents, working.size, lpips_to_reconstruction=to_recon)
            canvas = working.repad(image)  # crop to the painted area, re-blacken the pad
            prev_mask, prev_latents = chosen.mask_full, result.latents
            self.state = LoopState(k + 1, canvas, prev_mask, prev_latents, list(changes), list(to_target),
                                   sorted(finished), sorted(unchanged))
            yield kf
        yield from self._finish(canvas, target_img, reference, working, settings, len(to_target))

    def _changed_a_region(self, canvas: np.ndarray, image: np.ndarray, working: WorkingImage, threshold: float) -> bool:
        """Whether ``image`` differs from ``canvas`` somewhere by more than ``threshold`` (spatial distance, the
        difference mask's rule), inside the painting (the padding is re-blackened after every keyframe)."""
        h, w = working.size
        dmap = difference_map(self.metric, np.ascontiguousarray(canvas[:h, :w]), np.ascontiguousarray(image[:h, :w]))
        return bool((difference_mask(dmap, threshold) > 0).any())

    def _distances(self, target: np.ndarray, reference: np.ndarray, image: np.ndarray) -> tuple[float, float | None]:
        """(LPIPS to the target, LPIPS to the reference when that is not the target, else None)."""
        to_target = stop_rule_distance(self.metric, target, image)
        return to_target, None if reference is target else stop_rule_distance(self.metric, reference, image)

    def _finish(self, canvas: np.ndarray, target: np.ndarray, reference: np.ndarray, working: WorkingImage,
                settings: PaintSettings, painted: int) -> Iterator[Keyframe]:
        """``settings.finish_frames`` keyframes after the last of ``painted``: the last canvas cross-faded to the
        target in equal steps, the last one the target itself. Their mask is where the canvas still differs
        from the target (the difference mask), the region the cross-fade finishes."""
        n = settings.finish_frames
        if n <= 0:
            return
        region = compute_difference_mask(self.metric, canvas, target, settings.difference_threshold,
                                          working.latent_hw)
        previous = canvas
        for i in range(1, n + 1):
            image = cross_fade(canvas, target, i / n)  # both have the black pad: so has the mix
            k = painted + i
            to_target, to_recon = self._distances(target, reference, image)
            yield Keyframe(k, k * settings.interval_s, image, FINISH_INSTRUCTION, region.full, region.latent,
                           region.latent, None, [{"decision": f"finish: cross-fade to the target, {i}/{n}"}],
                           to_target, stop_rule_distance(self.metric, previous, image),
                           self.models.image_latents(image), working.size, finishing=True,
                           lpips_to_reconstruction=to_recon)
            previous = image


def collect_process(painter: Painter, working: WorkingImage, settings: PaintSettings, instructions=None,
                    log=None) -> tuple[list[np.ndarray], list[np.ndarray], list[dict]]:
    """Run :meth:`Painter.paint` and gather what :func:`..core.export.write_process` writes.

    Returns (frames, masks, records), frame 0 being the white canvas at t = 0 (unpadded uint8 HWC; masks
    uint8 0/255 of the region painted to reach each frame). ``log(keyframe, seconds)`` is called per keyframe.
    """
    h, w = working.size
    frames = [working.white_canvas()[:h, :w]]
    masks = [np.zeros((h, w), np.uint8)]
    records = [{"time_s": 0.0, "instruction": "", "mask_area": 0.0, "lpips_to_target": None}]
    start = time.time()
    for kf in painter.paint(working, settings, instructions=instructions):
        frames.append(kf.cropped)
        masks.append((kf.mask[0, 0, :h, :w].cpu().numpy() > 0.5).astype(np.uint8) * 255)
        records.append(kf.record())
        if log is not None:
            log(kf, time.time() - start)
    return frames, masks, records
