"""Feature encoder ("cur_image_guider"): canvas RGB + region mask -> features added after the UNet's conv_in.

Eight convolutions with SiLU between them reduce the full-resolution input 8x (three stride-2 4x4
convolutions), then a 1x1 ``final_proj`` maps to the UNet's first width, and a learnable scalar ``scale``
multiplies the result. Layer indices 0, 2, ..., 14 of ``conv_layers`` are convolutions (the odd ones are
SiLU), matching the released key names. Widths and strides are read from the state dict (a 4x4 kernel
means stride 2), never assumed.
"""
from __future__ import annotations

import torch
from torch import nn

DEFAULT_WIDTHS = (3, 16, 16, 32, 32, 64, 64, 128)
DEFAULT_KERNELS = (3, 4, 3, 4, 3, 4, 3, 3)


class CanvasFeatureEncoder(nn.Module):
    def __init__(self, in_channels: int = 4, out_channels: int = 320,
                 widths=DEFAULT_WIDTHS, kernels=DEFAULT_KERNELS, init_scale: float = 2.0):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for i, (width, k) in enumerate(zip(widths, kernels)):
            layers.append(nn.Conv2d(prev, width, k, stride=2 if k == 4 else 1, padding=1))
            layers.append(nn.SiLU())
            prev = width
        # the trailing SiLU is applied before final_proj, like the released module
        self.conv_layers = nn.Sequential(*layers)
        self.final_proj = nn.Conv2d(prev, out_channels, 1)
        self.scale = nn.Parameter(torch.tensor([init_scale]))

    @classmethod
    def from_state_dict(cls, state_dict: dict) -> "CanvasFeatureEncoder":
        idx = sorted(int(k.split(".")[1]) for k in state_dict if k.startswith("conv_layers.") and k.endswith(".weight"))
        weights = [state_dict[f"conv_layers.{i}.weight"] for i in idx]
        module = cls(weights[0].shape[1], state_dict["final_proj.weight"].shape[0],
                     tuple(w.shape[0] for w in weights), tuple(w.shape[-1] for w in weights))
        module.load_state_dict(state_dict, strict=True)
        return module

    def init_for_training(self) -> None:
        """Training init of the release: He-normal convolutions, zero biases, zero final projection."""
        for m in self.conv_layers:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.final_proj.weight)
        nn.init.zeros_(self.final_proj.bias)

    def forward(self, canvas_and_mask: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) = [RGB in [-1, 1], mask in {0, 1}] -> (B, C, H/8, W/8)."""
        return self.final_proj(self.conv_layers(canvas_and_mask)) * self.scale
