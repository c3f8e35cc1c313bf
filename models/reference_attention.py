"""Reference attention: the ReferenceNet writes its self-attention inputs, the renderer UNet reads them.

Implemented as diffusers attention processors on ``attn1`` of every transformer block (no UNet fork):
- write mode (ReferenceNet): the processor stores its input ``hidden_states`` -- the block's norm1 output,
  exactly what the release banks -- under the block's name, then attends as usual;
- read mode (renderer UNet): keys/values are ``cat[hidden_states, bank]`` while queries come from the
  block's own tokens only. The release computes queries for all 2N tokens and keeps the first N; the
  result is mathematically identical and this costs about a quarter fewer FLOPs.
Batch elements flagged ``False`` in ``ReferenceState.use_reference`` (the fully unconditional CFG branch)
get plain self-attention, as in the release.

Optional position encoding (not in the release; renderer config ``reference_position_encoding``): a fixed
2-D sin/cos code of each token's grid cell is added to the renderer's attn1 tokens and to the bank it
reads, so a query can find the reference tokens at its own place. Neither network has any other notion
of position; a pretrained SD UNet copes, but a small renderer trained from scratch otherwise only takes
the target's colours, not its layout (see ``evaluation.renderer_probe``'s no_reference column).
"""
from __future__ import annotations

import math

import torch
from diffusers.models.attention_processor import AttnProcessor2_0


class StopReferenceNet(Exception):
    """Raised after the last bank is written: nothing the ReferenceNet computes later is used."""


class ReferenceState:
    """Banks shared between the two networks' processors, plus per-call settings."""

    def __init__(self):
        self.banks: dict[str, torch.Tensor] = {}
        self.mode = "off"  # "write", "read" or "off"
        self.use_reference: torch.Tensor | None = None  # (B,) bool, read mode
        self.stop_after_count: int | None = None  # write mode: stop once this many banks are written
        self.position_hw: tuple[int, int] | None = None  # latent (h, w) while position encoding is on

    def clear(self):
        self.banks.clear()


class ReferenceAttnProcessor:
    """attn1 processor for one transformer block (``name`` = the block's module path)."""

    def __init__(self, name: str, state: ReferenceState):
        self.name = name
        self.state = state
        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        state = self.state
        pos = None
        if state.position_hw is not None and state.mode != "write":
            pos = position_code(hidden_states.shape[1], hidden_states.shape[2], state.position_hw,
                                hidden_states.device, hidden_states.dtype)
            hidden_states = hidden_states + pos
        if state.mode == "write":
            state.banks[self.name] = hidden_states  # kept differentiable for training
            if state.stop_after_count is not None and len(state.banks) >= state.stop_after_count:
                raise StopReferenceNet
        elif state.mode == "read" and self.name in state.banks:
            bank = state.banks[self.name].to(hidden_states.dtype)
            batch = hidden_states.shape[0]
            if bank.shape[0] != batch:
                bank = bank.expand(batch, -1, -1)
            if pos is not None:
                bank = bank + pos
            use = state.use_reference
            if use is None or bool(use.all()):
                context = torch.cat([hidden_states, bank], dim=1)
                return self.inner(attn, hidden_states, context, attention_mask, temb)
            out = torch.empty_like(hidden_states)
            if bool(use.any()):
                idx = use.nonzero().flatten()
                context = torch.cat([hidden_states[idx], bank[idx]], dim=1)
                out[idx] = self.inner(attn, hidden_states[idx], context, None, temb)
            plain = (~use).nonzero().flatten()
            out[plain] = self.inner(attn, hidden_states[plain], None, None, temb)
            return out
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def token_grid(tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a UNet level with ``tokens`` tokens: the latent size halved (rounding up, as the stride-2
    downsamplers do) until it matches."""
    h, w = latent_hw
    while h * w > tokens:
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w != tokens:
        raise ValueError(f"{tokens} tokens is no UNet level of a {latent_hw} latent")
    return h, w


_CODES: dict[tuple, torch.Tensor] = {}


def position_code(tokens: int, dim: int, latent_hw: tuple[int, int], device, dtype) -> torch.Tensor:
    """(1, tokens, dim) fixed 2-D sin/cos code: a quarter of the channels hold sin, a quarter cos of the
    row, the other half the same of the column, at frequencies spaced geometrically from half a turn over
    the whole grid (coarse place) to a quarter turn per cell (neighbours apart). Unused channels are 0."""
    key = (tokens, dim, tuple(latent_hw), str(device), dtype)
    code = _CODES.get(key)
    if code is None:
        h, w = token_grid(tokens, latent_hw)
        n, pairs = max(h, w), dim // 4
        steps = torch.arange(pairs, dtype=torch.float64) / max(pairs - 1, 1)
        freqs = (math.pi / n) * (n / 2.0) ** steps
        ys = torch.arange(h, dtype=torch.float64)[:, None] * freqs
        xs = torch.arange(w, dtype=torch.float64)[:, None] * freqs
        row = torch.cat([ys.sin(), ys.cos()], 1)[:, None, :].expand(h, w, 2 * pairs)
        col = torch.cat([xs.sin(), xs.cos()], 1)[None, :, :].expand(h, w, 2 * pairs)
        code = torch.zeros(h, w, dim, dtype=torch.float64)
        code[..., : 4 * pairs] = torch.cat([row, col], -1)
        code = code.reshape(1, tokens, dim).to(device=device, dtype=dtype)
        _CODES[key] = code
    return code


def self_attention_blocks(unet) -> list[str]:
    """Names of the transformer blocks of a diffusers UNet, in module (DFS) order."""
    from diffusers.models.attention import BasicTransformerBlock

    return [n for n, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]


def install_reference_processors(unet, state: ReferenceState) -> list[str]:
    """Put a ReferenceAttnProcessor on every attn1; keep the default SDPA processor on attn2.

    Blocks are paired between the two networks by identical module name (the release pairs them by
    sorting on width, which gives the same pairing for the SD1.5 layout).
    """
    blocks = self_attention_blocks(unet)
    processors = {}
    for key in unet.attn_processors:
        block = key.rsplit(".attn", 1)[0]
        if key.endswith("attn1.processor") and block in blocks:
            processors[key] = ReferenceAttnProcessor(block, state)
        else:
            processors[key] = AttnProcessor2_0()
    unet.set_attn_processor(processors)
    return blocks
