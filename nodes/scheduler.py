"""The pack's scheduler node: SIGMAS on the renderer's own noise schedule, under ComfyUI's scheduler names.

ComfyUI's BasicScheduler needs a core MODEL to read its noise schedule, and the pack's renderer is not one.
This node gives the same schedules (normal, karras, exponential, sgm_uniform, simple, beta, ...) computed by
ComfyUI's own scheduler functions on the renderer's training schedule (linear betas 0.00085..0.012,
sigma_max 25.15; SD's is scaled-linear, sigma_max 14.6), for the ``sigmas`` input of Render Keyframe and
Time-lapse.
"""
from __future__ import annotations

from . import comfy_bridge as cb
from .model_nodes import CATEGORY


class InversePaintingScheduler:
    DESCRIPTION = ("Noise schedule (SIGMAS) for Render Keyframe and Time-lapse under ComfyUI's scheduler names, "
                   "computed on the renderer's own schedule (linear betas, sigma_max 25.15). Use it where "
                   "BasicScheduler would need a MODEL.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("SIGMAS",)
    RETURN_NAMES = ("sigmas",)
    OUTPUT_TOOLTIPS = ("steps + 1 noise levels, from high to 0: connect to the 'sigmas' input of Render Keyframe "
                       "or Time-lapse.",)

    @classmethod
    def INPUT_TYPES(cls):
        names = cb.scheduler_names()
        return {"required": {
            "scheduler": (names, {"default": "normal" if "normal" in names else names[0],
                                  "tooltip": "ComfyUI's scheduler of this name (as in KSampler / BasicScheduler), "
                                             "on the renderer's noise schedule. normal is closest to the release's "
                                             "own spacing."}),
            "steps": ("INT", {"default": 25, "min": 1, "max": 1000, "tooltip": "Denoising steps (release: 25)."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                  "tooltip": "Like BasicScheduler: below 1, the last 'steps' steps of a longer "
                                             "schedule (a start from a partly noised image)."}),
        }}

    def run(self, scheduler, steps, denoise=1.0):
        return (cb.scheduler_sigmas(scheduler, int(steps), float(denoise)),)
