"""Next-CLIP generator: predicts the CLIP image embedding of the next keyframe.

An MLP on the concatenation [CLIP(canvas), CLIP(target)] (canvas first, as the released code does):
fc1 -> ReLU -> fc2 -> ReLU -> fc3. Its output is the image token of the renderer's context.
Widths come from the state dict (1536 -> 1024 -> 512 -> 768 in the release).
"""
from __future__ import annotations

import torch
from torch import nn


class NextClipPredictor(nn.Module):
    def __init__(self, in_dim: int = 1536, hidden: tuple[int, int] = (1024, 512), out_dim: int = 768):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], out_dim)

    @classmethod
    def from_state_dict(cls, state_dict: dict) -> "NextClipPredictor":
        module = cls(state_dict["fc1.weight"].shape[1],
                     (state_dict["fc1.weight"].shape[0], state_dict["fc2.weight"].shape[0]),
                     state_dict["fc3.weight"].shape[0])
        module.load_state_dict(state_dict, strict=True)
        return module

    def forward(self, e_canvas: torch.Tensor, e_target: torch.Tensor) -> torch.Tensor:
        """(B, D) or (B, 1, D) embeddings -> (B, 1, D_out) predicted next embedding."""
        e_canvas = e_canvas.reshape(e_canvas.shape[0], 1, -1)
        e_target = e_target.reshape(e_target.shape[0], 1, -1)
        h = torch.relu(self.fc1(torch.cat([e_canvas, e_target], dim=-1)))
        h = torch.relu(self.fc2(h))
        return self.fc3(h)
