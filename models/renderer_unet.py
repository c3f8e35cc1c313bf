"""Renderer UNet: a stock diffusers SD1.5 UNet with two additions made through hooks, not a fork.

1. Reference attention (see reference_attention.py): every attn1 reads the ReferenceNet bank of the
   block with the same name.
2. Optionally (``position_encoding``, not in the release) a fixed position code on the attn1 tokens and
   the banks (see reference_attention.py).
3. The feature encoder's output (canvas + mask features, width = the UNet's first block width) is added
   to the output of ``conv_in`` (the release's "hack" UNet does ``conv_in(z) + latent_cur``).
"""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .reference_attention import ReferenceState, install_reference_processors


class RendererUNet(nn.Module):
    def __init__(self, unet_config: dict, position_encoding: bool = False):
        super().__init__()
        self.unet = UNet2DConditionModel.from_config(unet_config)
        self.position_encoding = position_encoding
        self.state = ReferenceState()
        self.blocks = install_reference_processors(self.unet, self.state)
        self._canvas_features: torch.Tensor | None = None
        self.unet.conv_in.register_forward_hook(self._add_canvas_features)

    def _add_canvas_features(self, module, inputs, output):
        if self._canvas_features is None:
            return output
        return output + self._canvas_features.to(output.dtype)

    @property
    def dtype(self):
        return self.unet.dtype

    def forward(self, x, t, context, canvas_features=None, banks=None, use_reference=None,
                keep_reference: bool = False):
        """x (B,4,h,w), t scalar/(B,), context (B,L,D), canvas_features (B,C,h,w), banks {name: (1|B,N,C)},
        use_reference (B,) bool -> eps (B,4,h,w).

        ``keep_reference=True`` leaves the banks installed after the call, because gradient
        checkpointing re-runs the attention blocks during backward; call ``release_reference()`` after
        the backward pass.
        """
        self._canvas_features = canvas_features
        state = self.state
        state.position_hw = tuple(x.shape[-2:]) if self.position_encoding else None
        if banks is not None:
            state.banks, state.mode, state.use_reference = banks, "read", use_reference
        try:
            return self.unet(x, t, encoder_hidden_states=context).sample
        finally:
            self._canvas_features = None  # conv_in is never recomputed by checkpointing
            if not keep_reference:
                self.release_reference()

    def release_reference(self) -> None:
        self.state.mode, self.state.banks, self.state.use_reference = "off", {}, None
