"""The official noise schedule: linear betas 0.00085..0.012 over 1000 steps, Euler-ancestral, linspace.

Note that it is *linear* beta, not SD's scaled_linear: sigma_max is 25.146 (14.61 with scaled_linear).
Sigmas and the fractional timesteps handed to the UNet come from diffusers' own
EulerAncestralDiscreteScheduler, configured as the release configures it. For sigmas from elsewhere
(e.g. a ComfyUI SIGMAS input) :meth:`Schedule.timestep` inverts the schedule's sigma(t) by linear
interpolation, which returns the exact official t for the official sigmas. :func:`named_sigmas` gives three
of ComfyUI's schedules on it (the scheduler node's fallback outside ComfyUI).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

SCHEDULER_KWARGS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                        timestep_spacing="linspace", prediction_type="epsilon", steps_offset=1)


PREDICTION_TYPES = ("epsilon", "v_prediction")


def eps_from_output(out: torch.Tensor, x_in: torch.Tensor, sigma: float, prediction_type: str) -> torch.Tensor:
    """The UNet's output as a noise estimate. ``x_in`` is its (variance-preserving) input x / sqrt(sigma^2 + 1).

    The release predicts epsilon. A v-prediction UNet (v = sqrt(a) eps - sqrt(1 - a) x0, a = 1 / (sigma^2 + 1))
    gives eps = sqrt(a) v + sqrt(1 - a) x_in; the map is affine with weights shared by every guidance
    branch, so guidance on the converted outputs equals guidance in v.
    """
    if prediction_type == "epsilon":
        return out
    if prediction_type != "v_prediction":
        raise ValueError(f"unknown prediction_type {prediction_type!r} (expected one of {PREDICTION_TYPES})")
    c = (sigma**2 + 1) ** -0.5
    return c * out + (sigma * c) * x_in.to(out.dtype)


def make_scheduler(**overrides):
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(**{**SCHEDULER_KWARGS, **overrides})


@lru_cache(maxsize=8)
def _sampling(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = make_scheduler()
    s.set_timesteps(steps)
    return s.sigmas.float(), s.timesteps.float()


@dataclass
class Schedule:
    """Training-time sigma table (sigma(t) for t = 0..999) and the sampling sigmas of one run."""

    train_sigmas: np.ndarray  # (1000,), increasing in t

    @classmethod
    def official(cls) -> "Schedule":
        s = make_scheduler()
        alphas_cumprod = s.alphas_cumprod.numpy().astype(np.float64)
        return cls(np.sqrt((1 - alphas_cumprod) / alphas_cumprod))

    @property
    def sigma_min(self) -> float:
        return float(self.train_sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.train_sigmas[-1])

    def sampling(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas with a final 0, timesteps) exactly as the diffusers scheduler computes them."""
        sigmas, timesteps = _sampling(steps)
        return sigmas.clone(), timesteps.clone()

    def timestep(self, sigma: float) -> float:
        """Fractional t for a sigma (inverse of the linear-in-t interpolation of sigma(t))."""
        t = np.interp(float(sigma), self.train_sigmas, np.arange(len(self.train_sigmas), dtype=np.float64))
        return float(t)


# ComfyUI's scheduler names the pack's scheduler node can compute without ComfyUI (inside ComfyUI it calls
# ComfyUI's own scheduler functions on this schedule)
NAMED_SCHEDULES = ("normal", "karras", "exponential")
KARRAS_RHO = 7.0


def named_sigmas(name: str, steps: int) -> torch.Tensor:
    """``steps`` + 1 sigmas (the last 0) of the schedule ``name`` between this schedule's sigma_max and sigma_min:
    normal = timesteps evenly spaced from 999 to 0 (sigma interpolated in log space), karras = evenly spaced in
    sigma^(1/7), exponential = evenly spaced in log sigma."""
    table = Schedule.official().train_sigmas
    lo, hi = table[0], table[-1]
    if name == "normal":
        t = np.linspace(len(table) - 1, 0, steps)
        sigmas = np.exp(np.interp(t, np.arange(len(table)), np.log(table)))
    elif name == "karras":
        ramp = np.linspace(0.0, 1.0, steps)
        sigmas = (hi ** (1 / KARRAS_RHO) + ramp * (lo ** (1 / KARRAS_RHO) - hi ** (1 / KARRAS_RHO))) ** KARRAS_RHO
    elif name == "exponential":
        sigmas = np.exp(np.linspace(np.log(hi), np.log(lo), steps))
    else:
        raise ValueError(f"unknown schedule {name!r} outside ComfyUI; choose one of {NAMED_SCHEDULES}")
    return torch.from_numpy(np.append(sigmas, 0.0)).float()
