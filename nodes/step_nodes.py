"""The four stages of one painting step as separate nodes, to inspect or rebuild a single keyframe.

Text instruction (LLaVA) -> difference mask (LPIPS) -> mask generator -> renderer. Each node works
in the model's working geometry (short side resized, padded to multiples of 16) and returns
images and masks cropped to the painted area, so the outputs of one chain line up with each other
and with the time-lapse frames.
"""
from __future__ import annotations

import torch

from ..core.difference_mask import compute_difference_mask
from ..core.guidance import GuidanceScales
from ..core.imaging import prepare_image
from ..core.errors import whole_number
from ..core.loop import MAX_STEPS
from ..core.sampling import NoiseSource
from . import comfy_bridge as cb
from . import metrics
from .convert import (NodeInputError, core_mask_to_comfy, finite_input, gray_to_image, image_batch_size,
                      image_to_uint8, mask_to_batch, mask_to_working, snap_to_latent_grid, uint8_to_image)
from .model_nodes import CATEGORY, MODEL_TYPE, TEXT_MODEL_TYPE

DEFAULT_SHORT_SIDE = 512

# ---- shared input specs (tooltips name the release's own parameter names) ----------------------


def interval_input(default: float = 20.0):
    return ("FLOAT", {"default": default, "min": 0.0, "max": 100.0, "step": 1.0,
                      "tooltip": "Painting time between two keyframes, in seconds (the time encoder rounds it to "
                                 "5 s and saturates at 100 s). The release uses 20."})


def guidance_inputs() -> dict:
    spec = (("guidance_image", 2.0, "guidance_scale: next-CLIP image token + reference (ReferenceNet) features."),
            ("guidance_canvas", 1.0, "cur_guidance_scale: the current canvas."),
            ("guidance_time", 5.0, "PE_guidance_scale: the time-interval token."),
            ("guidance_mask", 5.0, "RP_guidance_scale: the region mask."),
            ("guidance_text", 5.0, "TP_guidance_scale: the text instruction."))
    return {name: ("FLOAT", {"default": d, "min": -10.0, "max": 30.0, "step": 0.1, "round": 0.01,
                             "tooltip": f"{tip} Release default {d}; the bundled starter model paints with every "
                                        "scale at 1 (its example workflows set it)."}) for name, d, tip in spec}


def scales_from(kwargs) -> GuidanceScales:
    names = ("guidance_image", "guidance_canvas", "guidance_time", "guidance_mask", "guidance_text")
    return GuidanceScales(*(finite_input(kwargs[n], n) for n in names))


SEED_INPUT = ("INT", {"default": 1, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                      "tooltip": "Noise seed. The same seed, settings and device give the same result (noise is drawn "
                                 "on the CPU; other devices may differ in the last bits, which later keyframes can "
                                 "grow)."})
STEPS_INPUT = ("INT", {"default": 12, "min": 1, "max": 200, "tooltip": "Denoising steps per keyframe: 12 for the "
                       "default DPM-Solver++(2M) sampling (the release: 25 Euler-ancestral steps, about 3x the cost). "
                       "Ignored when SIGMAS are connected."})
IMAGE_CANVAS = ("IMAGE", {"tooltip": "The current canvas (the painting so far). A blank white image for the first "
                                     "step. Resized to the target's working geometry."})
IMAGE_TARGET = ("IMAGE", {"tooltip": "The finished painting being reconstructed."})
INSTRUCTION_INPUT = ("STRING", {"default": "", "multiline": False, "tooltip": "What to paint in this step, in one or "
                                "two words (e.g. 'sky'), as the text model would answer."})


def _one(image, name: str, node: str, mask: bool = False):
    """``image`` (IMAGE or MASK) when it holds one picture: these nodes work on one keyframe, and taking the first
    of a batch silently would paint from a picture the user did not mean."""
    n = mask_to_batch(image, name).shape[0] if mask else image_batch_size(image, name)
    if n != 1:
        raise NodeInputError(f"{name}: {node} works on one image, got a batch of {n} (pick one with an "
                             "'Image From Batch' node, or paint the whole process with the Time-lapse node)")
    return image


def _working(model, target, canvas, canvas_index: int = 0, node: str | None = None):
    if node is not None:
        _one(target, "target", node)
        _one(canvas, "canvas", node)
    working = model.working(image_to_uint8(target, 0, "target"))
    return working, working.fit(image_to_uint8(canvas, canvas_index, "canvas"))


# ---- text instruction ----------------------------------------------------------------------------


class InversePaintingTextInstruction:
    DESCRIPTION = ("Asks the text model what should be painted next, given the canvas and the target "
                   "(one answer per canvas frame, one per line).")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("instruction",)
    OUTPUT_TOOLTIPS = ("The instruction (one line per canvas frame).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_model": (TEXT_MODEL_TYPE, {"tooltip": "From Load Inverse Painting Text Model."}),
            "canvas": IMAGE_CANVAS,
            "target": IMAGE_TARGET,
        }}

    def run(self, text_model, canvas, target):
        working = prepare_image(image_to_uint8(target, 0, "target"), DEFAULT_SHORT_SIDE)
        answers = []
        for i in range(image_batch_size(canvas, "canvas")):
            cb.check_interrupt()
            answers.append(text_model.generate(working.fit(image_to_uint8(canvas, i, "canvas")), working.padded, i))
        return ("\n".join(a.replace("\n", " ").strip() for a in answers),)


# ---- difference mask -----------------------------------------------------------------------------

class InversePaintingDifferenceMask:
    DESCRIPTION = ("Where the canvas still differs from the target: spatial perceptual distance (LPIPS) "
                   "thresholded into a mask (the mask generator's 9th input channel).")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("mask", "distance_map")
    OUTPUT_TOOLTIPS = ("1 where distance > threshold, one per canvas frame, at the working size.",
                       "The distance map as a grey image (clamped to 0..1).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "canvas": IMAGE_CANVAS,
            "target": IMAGE_TARGET,
            "threshold": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 2.0, "step": 0.01,
                                    "tooltip": "Pixels with distance strictly above this are marked (release: 0.2)."}),
            "metric": (metrics.METRIC_CHOICES, {"default": metrics.AUTO, "tooltip": "auto: the connected model's "
                       "metric, else lpips_alex when its weights are installed, else stlpips_alex. lpips_alex: the "
                       "release's (needs the ImageNet AlexNet file in models/inverse_painting/lpips/); "
                       "stlpips_alex: shift-tolerant LPIPS, always available."}),
        }, "optional": {
            "model": (MODEL_TYPE, {"tooltip": "Optional: use this release's LPIPS weights, device and working size."}),
        }}

    def run(self, canvas, target, threshold=0.2, metric=metrics.AUTO, model=None):
        threshold = finite_input(threshold, "threshold", 0)
        _one(target, "target", "Difference Mask")  # canvases may be a batch: one mask each
        if model is not None and metric in (metrics.AUTO, model.metric_name):
            loaded = model.load()
            net, short_side = loaded.metric, model.short_side
        else:
            device = model.device if model is not None else cb.resolve_device("auto")
            net = metrics.standalone_metric(metric, device)
            short_side = model.short_side if model is not None else DEFAULT_SHORT_SIDE
        working = prepare_image(image_to_uint8(target, 0, "target"), short_side)
        masks, maps = [], []
        for i in range(image_batch_size(canvas, "canvas")):
            cb.check_interrupt()
            d = compute_difference_mask(net, working.fit(image_to_uint8(canvas, i, "canvas")), working.padded,
                                        float(threshold))
            masks.append(core_mask_to_comfy(d.full, working.size))
            maps.append(gray_to_image(d.map, working.size))
        return (torch.cat(masks), torch.cat(maps))


# ---- mask generator ------------------------------------------------------------------------------


class InversePaintingMaskGenerator:
    DESCRIPTION = ("Predicts the region to paint next (the release's 'RP' network): one forward pass, then the "
                   "threshold ladder (0.5 ... 0.1) that rejects too-small masks and masks too similar to the "
                   "previous one.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("MASK", "MASK")
    RETURN_NAMES = ("mask", "probability")
    OUTPUT_TOOLTIPS = ("The chosen region (8x8-pixel blocks), at the working size.",
                       "The network's per-cell probability (sigmoid of the logits).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL_TYPE, {"tooltip": "From Load Inverse Painting (with the mask generator)."}),
            "canvas": IMAGE_CANVAS,
            "target": IMAGE_TARGET,
            "instruction": INSTRUCTION_INPUT,
            "interval": interval_input(),
            "threshold_ladder": ("BOOLEAN", {"default": True, "tooltip": "On: the release's ladder of thresholds "
                                             "(first keyframe: 0.5). Off: use 'threshold' as is."}),
            "threshold": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "Probability threshold when the ladder is off."}),
            "difference_threshold": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 2.0, "step": 0.01,
                                               "tooltip": "LPIPS threshold of the difference-mask input (release: "
                                                          "0.2)."}),
        }, "optional": {
            "previous_mask": ("MASK", {"tooltip": "The previous keyframe's mask; the ladder rejects masks whose IoU "
                                                  "with it is 0.8 or more. Leave empty for the first keyframe."}),
        }}

    def run(self, model, canvas, target, instruction, interval, threshold_ladder=True, threshold=0.5,
            difference_threshold=0.2, previous_mask=None):
        model.require(mask_generator=True)
        interval = finite_input(interval, "interval", 0)
        threshold = finite_input(threshold, "threshold", 0, 1)
        difference_threshold = finite_input(difference_threshold, "difference_threshold", 0)
        working, canvas_u8 = _working(model, target, canvas, node="Mask Generator")
        if previous_mask is not None:
            _one(previous_mask, "previous_mask", "Mask Generator", mask=True)
        loaded = model.load()
        cb.check_interrupt()
        gen = loaded.mask_generator
        reference = working.padded
        if model.painting.compare_to == "reconstruction":  # a starter (see PaintSettings.compare_to)
            reference = loaded.models.round_trip(working.padded)
        pred = gen.predict(canvas_u8, reference, str(instruction), float(interval), float(difference_threshold))
        prev = None
        if previous_mask is not None:
            prev = mask_to_working(mask_to_batch(previous_mask, "previous_mask")[0], working).to(pred.probability.device)
        chosen = gen.choose(pred, prev, first=prev is None, ladder=bool(threshold_ladder), threshold=float(threshold))
        H, W = working.hw
        prob_full = torch.nn.functional.interpolate(pred.probability.float(), size=(H, W), mode="nearest")
        return (core_mask_to_comfy(chosen.mask_full, working.size), core_mask_to_comfy(prob_full, working.size))


# ---- renderer ------------------------------------------------------------------------------------


def make_sampling(sampler, sigmas, seed: int):
    """(external sampler or None, sigmas or None) from optional ComfyUI SAMPLER / SIGMAS inputs."""
    ext = cb.make_external_sampler(sampler, seed) if sampler is not None else None
    return ext, cb.validate_sigmas(sigmas)


def step_callback(progress: cb.Progress | None):
    def callback(info):
        cb.check_interrupt()  # every denoising step
        if progress is not None:
            progress.step()
    return callback


class InversePaintingRenderKeyframe:
    DESCRIPTION = ("Renders one keyframe: the canvas after painting the masked region for 'interval' seconds "
                   "following the instruction. Without SAMPLER/SIGMAS it uses the model's sampling "
                   "(DPM-Solver++(2M) by default; Euler ancestral in the release); a ComfyUI SAMPLER (KSamplerSelect, ...) and SIGMAS (Karras, ...) can replace it.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("image", "latent")
    OUTPUT_TOOLTIPS = ("The new keyframe, at the working size.",
                       "Its final latents: connect to the next step's previous_latent for combine_init.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL_TYPE, {"tooltip": "From Load Inverse Painting (with the renderer)."}),
            "canvas": IMAGE_CANVAS,
            "target": IMAGE_TARGET,
            "instruction": INSTRUCTION_INPUT,
            "mask": ("MASK", {"tooltip": "Region to paint (from the mask generator, or drawn by hand: it is snapped "
                                         "to 8x8-pixel blocks like the training masks)."}),
            "interval": interval_input(),
            "seed": SEED_INPUT,
            "steps": STEPS_INPUT,
            **guidance_inputs(),
        }, "optional": {
            "previous_latent": ("LATENT", {"tooltip": "The previous keyframe's latent. When given, combine_init keeps "
                                                      "the area outside the mask on the previous keyframe during the "
                                                      "first steps (release: from the second keyframe on)."}),
            "combine_ratio": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.05,
                                        "tooltip": "Fraction of the steps during which combine_init applies "
                                                   "(release: 0.2)."}),
            "sampler": ("SAMPLER", {"tooltip": "Optional ComfyUI sampler (KSAMPLER, e.g. from KSamplerSelect). "
                                               "Default: the model's sampling (DPM-Solver++(2M))."}),
            "sigmas": ("SIGMAS", {"tooltip": "Optional noise schedule (e.g. KarrasScheduler). Default: the release's "
                                             "linear-beta schedule with 'steps' steps."}),
            "fast_guidance": ("BOOLEAN", {"default": True, "tooltip": "Skip guidance branches whose weight is zero "
                                          "(same result to float precision, a third faster with the defaults)."}),
        }}

    def run(self, model, canvas, target, instruction, mask, interval, seed, steps, previous_latent=None,
            combine_ratio=0.2, sampler=None, sigmas=None, fast_guidance=True, **guidance):
        model.require(renderer=True)
        interval = finite_input(interval, "interval", 0)
        combine_ratio = finite_input(combine_ratio, "combine_ratio", 0, 1)
        scales = scales_from(guidance)
        seed = whole_number(seed, "seed", 0, 2**64 - 1)
        steps = whole_number(steps, "steps", 1, MAX_STEPS)
        _one(mask, "mask", "Render Keyframe", mask=True)
        working, canvas_u8 = _working(model, target, canvas, node="Render Keyframe")
        ext, sig = make_sampling(sampler, sigmas, seed)
        prev = None
        if previous_latent is not None:  # checked before any network runs
            prev = previous_latent.get("samples") if isinstance(previous_latent, dict) else previous_latent
            if not isinstance(prev, torch.Tensor) or prev.ndim != 4:
                raise NodeInputError("previous_latent: expected a LATENT from the previous Render Keyframe")
            if not bool(torch.isfinite(prev).all()):
                raise NodeInputError("previous_latent holds NaN or Inf values")
        loaded = model.load()
        mask_full = snap_to_latent_grid(mask_to_working(mask_to_batch(mask)[0], working)).to(loaded.models.device)
        renderer = loaded.renderer
        tstate = model.target_state(loaded, working)
        latent_shape = (1, tstate.latents.shape[1], *working.latent_hw)
        if prev is not None:
            if tuple(prev.shape[-3:]) != latent_shape[1:]:
                raise NodeInputError(f"previous_latent has shape {tuple(prev.shape)}, but this canvas needs "
                                     f"{latent_shape} (same target and working size as the previous step)")
            prev = prev[:1]
        conds = renderer.conditions(tstate, canvas_u8, mask_full, str(instruction), float(interval))
        noise = NoiseSource(int(seed), latent_shape, loaded.models.device, loaded.models.dtype,
                            first_keyframe=prev is None)
        n_steps = (len(sig) - 1) if sig is not None else int(steps)
        painting = model.painting
        progress = cb.Progress(n_steps)
        result = renderer.render(conds, noise, int(steps), scales, bool(fast_guidance), prev,
                                 float(combine_ratio), sampler=ext, sigmas=sig, callback=step_callback(progress),
                                 sampler_name=painting.sampler,
                                 guidance_interval=painting.guidance_interval)
        h, w = working.size
        image = uint8_to_image(result.image[:h, :w])
        return (image, {"samples": result.latents.detach().float().cpu()})
