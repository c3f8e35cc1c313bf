"""Time encoder ("PE"): turns the painting-time interval into one cross-attention token.

The interval in seconds is rounded to the training grid (5 s, Python banker's rounding), normalised by
100 s into x in [-1, 1], expanded with a NeRF-style embedder (x plus sin/cos at 10 octaves: 21 features)
and mapped by a 3-layer MLP to one token of the context width. Widths come from the state dict.

The official inference runs this module in float16, which changes the high-frequency features a lot
(x*pi is rounded to fp16 before the frequency multiply); training ran it in float32. Both are offered:
pass ``dtype=torch.float16`` to reproduce the released inference, float32 for the training behaviour.
"""
from __future__ import annotations

import math

import torch
from torch import nn

NUM_FREQUENCIES = 10  # 2^0 .. 2^9
NUM_FEATURES = 1 + 2 * NUM_FREQUENCIES  # 21


def normalise_interval(seconds: float, round_to: float = 5.0, max_seconds: float = 100.0) -> float:
    """Interval -> p in [0, 1] with the official rounding (round() ties to even: 12.5 s -> 10 s)."""
    rounded = round(seconds / round_to) * round_to
    return min(max(rounded / max_seconds, 0.0), 1.0)


def embed(x: torch.Tensor) -> torch.Tensor:
    """NeRF embedding of x (..., 1) -> (..., 21): [x, sin(pi f x), cos(pi f x) for f = 1, 2, ..., 512].

    x*pi is formed first and then scaled by the exact power-of-two frequency, in x's dtype, which is how
    the official embedder rounds in float16.
    """
    xpi = x * math.pi
    feats = [x]
    for i in range(NUM_FREQUENCIES):
        arg = xpi * float(2**i)
        feats += [torch.sin(arg), torch.cos(arg)]
    return torch.cat(feats, dim=-1)


class TimeEncoder(nn.Module):
    """MLP fc1 -> ReLU -> fc2 -> ReLU -> fc3 on the 21 time features; output (B, 1, D)."""

    def __init__(self, hidden: tuple[int, int] = (256, 512), out_dim: int = 768,
                 round_to: float = 5.0, max_seconds: float = 100.0):
        super().__init__()
        self.fc1 = nn.Linear(NUM_FEATURES, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], out_dim)
        self.round_to = round_to
        self.max_seconds = max_seconds

    @classmethod
    def from_state_dict(cls, state_dict: dict, **kwargs) -> "TimeEncoder":
        module = cls((state_dict["fc1.weight"].shape[0], state_dict["fc2.weight"].shape[0]),
                     state_dict["fc3.weight"].shape[0], **kwargs)
        module.load_state_dict(state_dict, strict=True)
        return module

    @property
    def out_dim(self) -> int:
        return self.fc3.out_features

    def interval_to_x(self, seconds, dtype=None, device=None) -> torch.Tensor:
        """Seconds (float or list) -> x = 2p - 1 as a (B, 1) tensor built in ``dtype`` like the official code."""
        values = [seconds] if isinstance(seconds, (int, float)) else list(seconds)
        p = [normalise_interval(float(s), self.round_to, self.max_seconds) for s in values]
        dtype = dtype or self.fc1.weight.dtype
        device = device or self.fc1.weight.device
        # built in the module dtype before "*2-1": in fp16 20 s gives -0.60009765625, as officially
        return torch.tensor(p, dtype=dtype, device=device)[:, None] * 2 - 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return embed(x)

    def forward_x(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(embed(x)))
        h = torch.relu(self.fc2(h))
        return self.fc3(h)[:, None, :]

    def forward(self, seconds) -> torch.Tensor:
        """Interval(s) in seconds -> (B, 1, D) time token(s) in the module's dtype."""
        return self.forward_x(self.interval_to_x(seconds))
