"""ReferenceNet: a stock diffusers UNet run once on the target latents to produce the 16 banks.

Run at timestep 0 with the target CLIP embedding as its one-token context. Only the norm1 outputs of
its transformer blocks matter, so the forward pass stops right after the last bank is written (the
release computes, and discards, the rest of the network). The modules whose weights the released
``referencenet_state_dict`` lacks (the head and most of the last transformer block: 24 keys) are
removed, so the module's key set equals the release's.
"""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .reference_attention import ReferenceState, StopReferenceNet, install_reference_processors


def _strip_tail(unet: UNet2DConditionModel) -> None:
    unet.conv_norm_out = None
    unet.conv_act = None
    unet.conv_out = None
    last = unet.up_blocks[-1].attentions[-1]
    last.proj_out = nn.Identity()
    block = last.transformer_blocks[-1]
    for name in ("to_q", "to_k", "to_v"):
        setattr(block.attn1, name, nn.Identity())
    block.attn1.to_out = nn.ModuleList([nn.Identity(), nn.Identity()])
    block.norm2, block.attn2, block.norm3, block.ff = nn.Identity(), None, nn.Identity(), nn.Identity()


class ReferenceNet(nn.Module):
    def __init__(self, unet_config: dict):
        super().__init__()
        self.unet = UNet2DConditionModel.from_config(unet_config)
        _strip_tail(self.unet)
        self.state = ReferenceState()
        self.blocks = install_reference_processors(self.unet, self.state)

    def state_dict_keys(self):
        return self.unet.state_dict().keys()

    def load_reference_state_dict(self, state_dict: dict):
        return self.unet.load_state_dict(state_dict, strict=True)

    def banks(self, ref_latents: torch.Tensor, clip_context: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B,4,h,w) target latents and (B,1,D) context -> {block name: (B, N, C) bank}.

        Differentiable (training); wrap in torch.no_grad() for inference."""
        state = self.state
        state.clear()
        state.mode, state.stop_after_count = "write", len(self.blocks)
        t = torch.zeros(ref_latents.shape[0], device=ref_latents.device, dtype=ref_latents.dtype)
        try:
            self.unet(ref_latents, t, encoder_hidden_states=clip_context)
        except StopReferenceNet:
            pass
        finally:
            state.mode = "off"
        banks = dict(state.banks)
        state.clear()
        if len(banks) != len(self.blocks):
            raise RuntimeError(f"ReferenceNet wrote {len(banks)} banks, expected {len(self.blocks)}")
        return banks
