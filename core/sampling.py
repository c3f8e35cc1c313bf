"""k-diffusion style sampling: a denoiser ``D(x, sigma) -> x0`` driven by a sampler over sigmas.

The built-in samplers are Euler-ancestral (the release's) and DPM-Solver++(2M) (deterministic, fewer steps),
written like k-diffusion's so that other samplers -- ComfyUI's KSAMPLER ``sampler_function`` among them --
can drive the very same denoiser.
Noise is injected through a :class:`NoiseSource`, which reproduces the release's draw pattern: its
generator is reset to the same state at every keyframe, and keyframe 0 spends one extra draw first.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NoiseSource:
    """Per-keyframe noise: ``initial()`` then ``step(i)`` for every sampler step.

    Draws are made on a CPU generator (float32) and moved to the device, so a seed gives the same noise on
    every device (the painting itself also depends on the device's arithmetic). ``first_keyframe=True`` skips one draw, as the release's keyframe 0 spends
    it on a discarded VAE sample; later keyframes therefore reuse keyframe 0's step noises shifted by one.
    """

    def __init__(self, seed: int, shape, device="cpu", dtype=torch.float32, first_keyframe: bool = False,
                 draws: torch.Tensor | None = None):
        self.shape, self.device, self.dtype = tuple(shape), device, dtype
        self._offset = 1 if first_keyframe else 0
        self._draws = draws  # injected (tests / fixtures): (n, *shape)
        self._generator = torch.Generator("cpu").manual_seed(int(seed)) if draws is None else None
        self._made: list[torch.Tensor] = []

    def _draw(self, k: int) -> torch.Tensor:
        if self._draws is not None:
            return self._draws[k].reshape(self.shape).to(self.device, self.dtype)
        while len(self._made) <= k:
            self._made.append(torch.randn(self.shape, generator=self._generator, dtype=torch.float32))
        return self._made[k].to(self.device, self.dtype)

    def initial(self) -> torch.Tensor:
        return self._draw(self._offset)

    def step(self, i: int) -> torch.Tensor:
        return self._draw(self._offset + 1 + i)

    def __call__(self, sigma=None, sigma_next=None):  # k-diffusion noise_sampler signature
        i = getattr(self, "_k", 0)
        self._k = i + 1
        return self.step(i)


@torch.no_grad()
def sample_euler_ancestral(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSource,
                           callback=None, post_step=None, eta: float = 1.0) -> torch.Tensor:
    """Euler-ancestral as in diffusers 0.21 / k-diffusion; one noise draw every step (also the last).

    ``post_step(i, x) -> x`` runs after step i (used by combine_init); ``callback(dict)`` receives
    {"i", "x", "sigma", "denoised"} like a k-diffusion callback and may raise to interrupt.
    """
    for i in range(len(sigmas) - 1):
        s0, s1 = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, s0 * x.new_ones(x.shape[0]))
        sigma_up = min(float(s1), eta * float((s1**2 * (s0**2 - s1**2) / s0**2) ** 0.5))
        sigma_down = float((s1**2 - sigma_up**2) ** 0.5)
        d = (x - denoised) / s0
        x = x + d * (sigma_down - float(s0))
        x = x + noise.step(i) * sigma_up
        if post_step is not None:
            x = post_step(i, x)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s0, "sigma_hat": s0, "denoised": denoised})
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise=None, callback=None,
                    post_step=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), deterministic: in log-sigma time, each step extrapolates the
    denoised estimate linearly from the last two; the first step, and a step to sigma 0, are first order.
    ``noise`` is not used (same signature as the ancestral sampler); ``post_step`` / ``callback`` as there.
    """
    previous = None
    for i in range(len(sigmas) - 1):
        s0, s1 = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigmas[i] * x.new_ones(x.shape[0]))
        if s1 == 0.0:
            x = denoised
        else:
            h = math.log(s0 / s1)
            d = denoised
            if previous is not None:
                r = math.log(float(sigmas[i - 1]) / s0) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (s1 / s0) * x - math.expm1(-h) * d
        previous = denoised
        if post_step is not None:
            x = post_step(i, x)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
    return x


# the built-in samplers by name (PaintSettings.sampler); both take (denoiser, x, sigmas, noise, callback, post_step)
SAMPLERS = {"euler_ancestral": sample_euler_ancestral, "dpmpp_2m": sample_dpmpp_2m}
