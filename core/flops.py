"""FLOPs of the forward passes actually run, counted by torch's FlopCounterMode.

torch counts the attention kernels of CUDA (flash, efficient, cuDNN) but not the CPU one
(``_scaled_dot_product_flash_attention_for_cpu``), which SDPA uses on the CPU; it is added here with the same
formula, so a count on the CPU equals the count on a GPU.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode (no printout) that also counts CPU attention: ``with flop_counter() as fc: ...;
    fc.get_total_flops()``."""
    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _cpu_sdpa_flop
    return FlopCounterMode(display=False, custom_mapping=mapping)
