"""Renderer UNet: a stock diffusers SD1.5 UNet with two additions made through hooks, not a fork.

1. Reference attention (see reference_attention.py): every attn1 reads the ReferenceNet bank of the
   block with the same name.
2. Optionally (``position_encoding``, not in the release) a fixed position code on the attn1 tokens and
   the banks (see reference_attention.py).
3. The feature encoder's output (canvas + mask features, width = the UNet's first block width) is added
   to the output of ``conv_in`` (the release's "hack" UNet does ``conv_in(z) + latent_cur``).
4. Optionally (``target_input``, not in the release; renderer config ``target_input``) the target's latents
   are concatenated to the noisy latents as 4 more input channels of ``conv_in``: the renderer sees the
   painting it must reach at every position, instead of only through reference attention (a small UNet
   trained from scratch did not find the target through it). :func:`widen_conv_in` turns a checkpoint
   without them into one with them, the new channels' weights zero, so that it computes exactly what it
   did before.
"""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .reference_attention import ReferenceState, install_reference_processors


LATENT_CHANNELS = 4


def widen_conv_in(unet_state_dict: dict, extra: int = LATENT_CHANNELS) -> dict:
    """A UNet state dict whose ``conv_in`` takes ``extra`` more input channels, their weights zero (the other
    tensors shared): the widened UNet's output equals the original's whatever those channels hold."""
    w = unet_state_dict["conv_in.weight"]
    zeros = torch.zeros((w.shape[0], int(extra), *w.shape[2:]), dtype=w.dtype, device=w.device)
    return {**unet_state_dict, "conv_in.weight": torch.cat([w, zeros], 1)}


class RendererUNet(nn.Module):
    def __init__(self, unet_config: dict, position_encoding: bool = False, target_input: bool = False):
        super().__init__()
        want = LATENT_CHANNELS * (2 if target_input else 1)
        if int(unet_config.get("in_channels", LATENT_CHANNELS)) != want:
            raise ValueError(f"renderer UNet: in_channels {unet_config.get('in_channels')} but {want} expected "
                             f"(target_input={target_input})")
        self.unet = UNet2DConditionModel.from_config(unet_config)
        self.position_encoding = position_encoding
        self.target_input = target_input
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
                keep_reference: bool = False, target_latents=None):
        """x (B,4,h,w), t scalar/(B,), context (B,L,D), canvas_features (B,C,h,w), banks {name: (1|B,N,C)},
        use_reference (B,) bool, target_latents (1|B,4,h,w) -> eps (B,4,h,w).

        ``target_latents`` are required with ``target_input`` and not read without it (a release renderer).

        ``keep_reference=True`` leaves the banks installed after the call, because gradient
        checkpointing re-runs the attention blocks during backward; call ``release_reference()`` after
        the backward pass.
        """
        if self.target_input:
            if target_latents is None:
                raise ValueError("this renderer takes the target's latents as input (target_input)")
            x = torch.cat([x, target_latents.to(x).expand(x.shape[0], -1, -1, -1)], 1)
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
