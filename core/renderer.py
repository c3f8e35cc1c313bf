"""The diffusion renderer: one keyframe from (canvas, target, instruction, mask, interval).

Per painting (``prepare_target``): target latents (VAE posterior mean; with the renderer config's
``target_input`` also an input of every UNet pass), the target's CLIP embedding and
the ReferenceNet banks are computed once -- the release recomputes them every keyframe although the
target never changes. Per keyframe (``conditions``): the 79-token contexts [image | time | text] of the
six guidance branches, the feature-encoder output for [canvas, mask], and the next-CLIP prediction.
Then a k-diffusion denoiser ``D(x, sigma) -> x0`` (``denoiser``) is driven by the official
Euler-ancestral sampler or any other sampler, with ``combine_init`` pinning the area outside the mask
to the previous keyframe during the first steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .errors import check_finite
from .guidance import BRANCHES, CONDITIONAL_BRANCH, GuidanceScales, combine_six, combine_weighted
from .imaging import downsample_mask, tensor_to_uint8, uint8_to_tensor
from .model_set import ModelSet
from .sampling import SAMPLERS, Denoiser, NoiseSource
from .schedule import Schedule, eps_from_output

# batch layout of the six branches: context index (h0..h3) and feature-encoder input index (c0..c2)
CONTEXT_OF_BRANCH = (0, 1, 1, 2, 2, 3)
CANVAS_OF_BRANCH = (0, 0, 1, 1, 2, 2)
# an external sampler: (denoiser, x, sigmas, callback) -> x
ExternalSampler = Callable[[Denoiser, torch.Tensor, torch.Tensor, Callable | None], torch.Tensor]


@dataclass
class TargetState:
    """What depends only on the target painting: computed once per painting."""

    image: np.ndarray  # uint8 (H, W, 3), padded working image
    latents: torch.Tensor  # (1, 4, h, w)
    clip: torch.Tensor  # (1, D) CLIP image embedding
    banks: dict[str, torch.Tensor]  # ReferenceNet banks, (1, N, C) each


@dataclass
class KeyframeConditions:
    contexts: torch.Tensor  # (4, 79, D): h0..h3
    canvas_features: torch.Tensor  # (3, C, h, w): c0..c2
    banks: dict[str, torch.Tensor]
    e_canvas: torch.Tensor
    e_next: torch.Tensor
    time_token: torch.Tensor
    text_tokens: torch.Tensor
    negative_text: torch.Tensor
    mask_latent: torch.Tensor  # (1, 1, h, w) {0,1}
    # (1, 4, h, w): the target's latents, an input of every branch of a renderer with ``target_input``
    target_latents: torch.Tensor | None = None

    def context_batch(self, branches) -> torch.Tensor:
        return self.contexts[[CONTEXT_OF_BRANCH[b] for b in branches]]

    def canvas_batch(self, branches) -> torch.Tensor:
        return self.canvas_features[[CANVAS_OF_BRANCH[b] for b in branches]]


@dataclass
class RenderResult:
    latents: torch.Tensor  # final latents (feed combine_init of the next keyframe)
    image_float: torch.Tensor  # (1, 3, H, W) in [0, 1]
    image: np.ndarray  # uint8 HWC, truncated like the release
    trace: list = field(default_factory=list)


class Renderer:
    def __init__(self, models: ModelSet, schedule: Schedule | None = None):
        if models.renderer is None:
            raise ValueError("the model set was loaded without the renderer")
        self.models = models
        self.nets = models.renderer
        self.schedule = schedule or Schedule.official()
        self.unet_passes = 0  # sample-forwards of the renderer UNet so far (one branch of one step = 1)

    # ------------------------------------------------------------------ conditions
    @torch.no_grad()
    def prepare_target(self, target_image: np.ndarray) -> TargetState:
        m = self.models
        latents = m.image_latents(target_image)
        e_target = check_finite(m.clip(target_image), "CLIP image encoder", "the target")
        banks = self.nets.referencenet.banks(latents, e_target[:, None, :].to(m.dtype))
        for bank in banks.values():
            check_finite(bank, "ReferenceNet", "the target's reference features")
        m.target_done()
        return TargetState(target_image, latents, e_target, banks)

    @torch.no_grad()
    def time_token(self, interval_s: float) -> torch.Tensor:
        return self.nets.time_encoder(interval_s).to(self.models.dtype)

    @torch.no_grad()
    def conditions(self, target: TargetState, canvas: np.ndarray, mask_full: torch.Tensor, instruction: str,
                   interval_s: float, negative: str = "") -> KeyframeConditions:
        m, dtype, device = self.models, self.models.dtype, self.models.device
        e_canvas = m.clip(canvas)
        e_next = self.nets.next_clip(e_canvas.to(dtype), target.clip.to(dtype))  # canvas first
        pe = self.time_token(interval_s)
        text, neg = m.text([instruction, negative]).to(dtype).chunk(2)
        zero_img, zero_pe = torch.zeros_like(e_next), torch.zeros_like(pe)
        contexts = torch.cat([
            torch.cat([zero_img, zero_pe, neg], 1),  # h0: nothing
            torch.cat([e_next, zero_pe, neg], 1),  # h1: image token
            torch.cat([e_next, pe, neg], 1),  # h2: + time
            torch.cat([e_next, pe, text], 1),  # h3: + text
        ])
        c = uint8_to_tensor(canvas, device, dtype, scheme="half")
        mask_full = mask_full.to(device, dtype)
        zeros = torch.zeros_like(mask_full)
        enc_in = torch.cat([
            torch.cat([torch.zeros_like(c), zeros], 1),  # c0: mid-grey canvas, no mask
            torch.cat([c, zeros], 1),  # c1: canvas
            torch.cat([c, mask_full], 1),  # c2: canvas + mask
        ])
        feats = self.nets.feature_encoder(enc_in)
        h, w = feats.shape[-2:]
        mask_latent = (downsample_mask(mask_full, (h, w)) > 0.1).to(dtype)
        return KeyframeConditions(contexts, feats, target.banks, e_canvas, e_next, pe, text, neg, mask_latent,
                                  target.latents)

    # ------------------------------------------------------------------ denoiser
    def denoiser(self, conds: KeyframeConditions, scales: GuidanceScales, fast: bool = True,
                 sigma_to_t: dict[float, float] | None = None, trace: list | None = None,
                 guidance_interval: tuple[float, float] | None = None) -> Denoiser:
        """k-diffusion denoiser D(x, sigma) -> x0 with the six-branch guidance.

        ``fast`` batches only the branches with non-zero weight; otherwise all six run in the release's
        order and are combined left to right. ``sigma_to_t`` maps the schedule's sigmas to its exact
        fractional timesteps; other sigmas are converted by the schedule. ``guidance_interval`` (lo, hi):
        guidance only for sigmas in [lo, hi]; elsewhere one pass of the fully conditioned branch (all
        conditions at scale 1, as Kynkaanniemi et al. 2024 limit guidance to an interval).
        """
        branches = scales.active_branches() if fast else tuple(range(len(BRANCHES)))
        batches = {}
        for key, br in (("guided", branches), ("conditional", (CONDITIONAL_BRANCH,))):
            batches[key] = (br, conds.context_batch(br), conds.canvas_batch(br),
                            torch.tensor([b != 0 for b in br], device=conds.contexts.device))
        unet = self.nets.unet
        prediction = self.models.config["prediction_type"]  # read_renderer_config fills it in
        lookup = {round(float(k), 4): v for k, v in (sigma_to_t or {}).items()}

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            s = float(sigma.reshape(-1)[0])
            t = lookup.get(round(s, 4))
            if t is None:
                t = self.schedule.timestep(s)
            guided = guidance_interval is None or guidance_interval[0] <= s <= guidance_interval[1]
            br, contexts, feats, use_ref = batches["guided" if guided else "conditional"]
            n = len(br)
            self.unet_passes += n
            x_in = (x / (s**2 + 1) ** 0.5).to(contexts.dtype).repeat(n, 1, 1, 1)
            t_in = torch.full((n,), t, device=x.device, dtype=torch.float32)
            # a renderer with target_input gets the target's latents in every branch, the unconditional
            # one (no reference features) included: its trainer never drops them (nor the reference), so
            # zeros there would be an input it never saw; the guidance differences then steer by the
            # reference, the image token, canvas, time, mask and text, as in the release
            eps_all = eps_from_output(unet(x_in, t_in, contexts, feats, conds.banks, use_ref,
                                           target_latents=conds.target_latents), x_in, s, prediction).to(x.dtype)
            if not guided:
                eps = eps_all
            elif fast:
                eps = combine_weighted(eps_all, br, scales)
            else:
                eps = combine_six(eps_all, scales)
            if trace is not None:
                trace.append({"sigma": s, "t": t, "eps_branches": eps_all, "eps": eps})
            return check_finite(x - s * eps, "renderer UNet", f"denoising step at sigma {s:.4g}")

        return denoise

    # ------------------------------------------------------------------ one keyframe
    @torch.no_grad()
    def render(self, conds: KeyframeConditions, noise: NoiseSource, steps: int = 25,
               scales: GuidanceScales = GuidanceScales(), fast: bool = True,
               prev_latents: torch.Tensor | None = None, combine_ratio: float = 0.2,
               sampler: ExternalSampler | None = None, sigmas: torch.Tensor | None = None,
               callback=None, trace: list | None = None, sampler_name: str = "euler_ancestral",
               guidance_interval: tuple[float, float] | None = None) -> RenderResult:
        """Sample one keyframe. Without ``sampler``/``sigmas`` this is the release's Euler-ancestral run;
        ``sampler_name`` picks another built-in sampler (:data:`.sampling.SAMPLERS`), ``guidance_interval``
        limits guidance to a sigma interval (see :meth:`denoiser`).

        combine_init (``prev_latents`` given): after each of the first int(steps * ratio) steps, the
        latents outside the mask are replaced by the previous keyframe's latents noised with the run's
        initial noise at the next sigma. An external sampler gets the equivalent x0-level blend instead
        (it cannot be stopped between steps), like ComfyUI's inpainting wrapper.
        """
        device = self.models.device
        if sigmas is None:
            sigmas, timesteps = self.schedule.sampling(steps)
            sigma_to_t = {float(s): float(t) for s, t in zip(sigmas[:-1], timesteps)}
        else:
            sigmas = sigmas.float().cpu()
            sigma_to_t = None
        steps = len(sigmas) - 1
        sigmas_dev = sigmas.to(device)
        den = self.denoiser(conds, scales, fast, sigma_to_t, trace, guidance_interval)
        init_noise = noise.initial()
        x = init_noise * sigmas_dev[0]
        n_combine = int(steps * combine_ratio) if prev_latents is not None else 0
        m = conds.mask_latent.to(x.dtype)

        if sampler is None:
            post = None
            if n_combine:
                prev = prev_latents.to(device, x.dtype)

                def post(i, x):
                    if i < n_combine:
                        x = m * x + (1 - m) * (prev + init_noise * sigmas_dev[i + 1])
                    return x

            if sampler_name not in SAMPLERS:
                raise ValueError(f"unknown sampler {sampler_name!r} (built in: {', '.join(SAMPLERS)})")
            x = SAMPLERS[sampler_name](den, x, sigmas_dev, noise, callback=callback, post_step=post)
        else:
            if n_combine:
                prev = prev_latents.to(device, x.dtype)
                limit = float(sigmas[n_combine])
                inner = den

                def den(x, sigma):  # noqa: F811 - x0-level combine_init for external samplers
                    if float(sigma.reshape(-1)[0]) > limit:
                        s = sigma.reshape(-1)[0]
                        x = m * x + (1 - m) * (prev + init_noise * s)
                        return m * inner(x, sigma) + (1 - m) * prev
                    return inner(x, sigma)

            x = sampler(den, x, sigmas_dev, callback)
        image_float = self.models.decode_latents(x)
        return RenderResult(x, image_float, tensor_to_uint8(image_float), trace or [])
