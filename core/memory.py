"""Memory tiers: which networks sit on the device when, so the full-size models fit 24, 12 and 8 GB GPUs.

All parts resident in fp16 need about 20 GB (LLaVA-7B 13.5 GB + its fp32 CLIP-L tower 1.2 GB, three SD1.5-size
UNets 5.2 GB, VAE / text encoder / CLIP-B 0.6 GB). The tiers (``--vram`` on the CLI, ``vram`` on the loaders):

- ``full``   everything resident;
- ``12gb``   the ReferenceNet released once the target's banks are computed (it runs once per painting); the
             text model 8-bit (bitsandbytes, CUDA) or else on the CPU; networks kept within a 9.5 GB budget,
             the least recently used moved to the CPU when a stage needs room;
- ``8gb``    as 12gb with the text model 4-bit (or on the CPU) and a 5.5 GB budget: the mask generator
             leaves the device while the renderer runs;
- ``notext`` no text model at all (written instructions, or a STRING from any node), ReferenceNet released.

``auto`` picks from the free device memory. :class:`Residency` does the bookkeeping outside ComfyUI (inside,
each network has its own ModelPatcher and ComfyUI pages them: nodes/comfy_bridge.ManagedModules offers the
same ``use`` / ``release``). Networks are brought in by a forward pre-hook, so the core needs no calls of its
own except :meth:`Residency.release` of the ReferenceNet after the banks.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

GB = 1e9
# device memory kept free of weights for activations, the CUDA context and the allocator's slack (GB)
RESERVE_GB = 2.5


@dataclass(frozen=True)
class MemoryTier:
    name: str
    budget_gb: float | None  # weights on the device at once; None = no limit
    release_referencenet: bool  # free it once the target's banks exist
    text: str  # "fp16" (resident), "8bit", "4bit" (CUDA + bitsandbytes, else the CPU), "none"


TIERS = {
    "full": MemoryTier("full", None, False, "fp16"),
    "12gb": MemoryTier("12gb", 12 - RESERVE_GB, True, "8bit"),
    "8gb": MemoryTier("8gb", 8 - RESERVE_GB, True, "4bit"),
    "notext": MemoryTier("notext", None, True, "none"),
}
TIER_CHOICES = ("auto", *TIERS)
# the smallest free memory (GB) each tier is chosen for by ``auto``
AUTO_THRESHOLDS = (("full", 22.0), ("12gb", 11.0), ("8gb", 7.0))


def choose_tier(choice: str, free_bytes: float | None, text_model: bool = True) -> MemoryTier:
    """The tier for a ``--vram`` choice. ``auto``: without a text model ``notext`` when less than the full set
    fits, else the largest tier whose threshold the free memory reaches (``8gb`` below all of them; None =
    no device limit known, e.g. the CPU: ``full``)."""
    if choice != "auto":
        if choice not in TIERS:
            raise ValueError(f"unknown memory tier {choice!r} (choose from {', '.join(TIER_CHOICES)})")
        return TIERS[choice]
    if free_bytes is None:  # nothing to page to: networks read again from disk would only cost time
        return TIERS["full"]
    for name, gb in AUTO_THRESHOLDS:
        if free_bytes >= gb * GB:
            return TIERS[name] if text_model or name == "full" else TIERS["notext"]
    return TIERS["8gb"] if text_model else TIERS["notext"]


def free_device_bytes(device) -> float | None:
    """Free memory of a CUDA device (None for the CPU and others)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return float(free)


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers as they are stored now."""
    tensors = list(module.parameters()) + list(module.buffers())
    return int(sum(t.numel() * t.element_size() for t in tensors))


def bitsandbytes_usable(device) -> bool:
    """bitsandbytes quantization runs on CUDA only; its import is guarded (it is not a dependency)."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or a build without CUDA kernels
        return False
    return True


def text_placement(tier: MemoryTier, device) -> tuple[str, str | None]:
    """(device, quantization) of the text model in a tier: fp16 on the device, 8/4-bit on CUDA when
    bitsandbytes is usable, else the CPU; ("none", None) without one."""
    if tier.text == "none":
        return "none", None
    if tier.text == "fp16":
        return str(device), None
    if bitsandbytes_usable(device):
        return str(device), tier.text
    return "cpu", None


def quantize_linears(module: torch.nn.Module, bits: int, skip=("lm_head",), factory: Callable | None = None) -> list[str]:
    """Replace every ``nn.Linear`` under ``module`` (not those named in ``skip``) by a bitsandbytes 8-bit
    (LLM.int8) or 4-bit (NF4) layer holding the same weights; they are quantized when moved to CUDA.
    ``factory(linear, bits) -> module`` replaces the bitsandbytes constructor (tests). Returns the names
    replaced."""
    factory = factory or _bnb_linear
    replaced = []
    for name, child in list(module.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, torch.nn.Linear) and attr not in skip:
                setattr(child, attr, factory(sub, bits))
                replaced.append(f"{name}.{attr}" if name else attr)
    return replaced


def _bnb_linear(linear: torch.nn.Linear, bits: int) -> torch.nn.Module:
    import bitsandbytes as bnb

    bias = linear.bias is not None
    if bits == 8:
        q = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False,
                                threshold=6.0)
        q.weight = bnb.nn.Int8Params(linear.weight.data.to(torch.float16), requires_grad=False,
                                     has_fp16_weights=False)
    elif bits == 4:
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias, compute_dtype=torch.float16,
                              quant_type="nf4")
        q.weight = bnb.nn.Params4bit(linear.weight.data.to(torch.float16), requires_grad=False, quant_type="nf4")
    else:
        raise ValueError(f"bits must be 8 or 4, not {bits}")
    if bias:
        q.bias = torch.nn.Parameter(linear.bias.data.to(torch.float16), requires_grad=False)
    return q


class Residency:
    """Which registered networks are on the compute device, within a byte budget (least recently used out).

    ``use(*names)`` brings networks to ``device`` (evicting others to ``offload_device`` while the budget is
    exceeded); ``release(name)`` sends one back, or frees it when it was registered with a ``reload`` function
    (brought back by it on the next ``use``). ``pinned`` networks (quantized ones, which cannot move) always
    count and are never moved. ``install_hooks()`` makes every forward of a network (or of its direct
    children, e.g. the VAE's encoder and decoder) call ``use`` first and move its tensor inputs along.
    When device and offload device are the same (the CPU), moving is bookkeeping only and the budget applies
    to RAM: networks that can be reloaded are freed instead. ``peak_bytes`` is the most held at once.
    """

    def __init__(self, device, offload_device="cpu", budget_bytes: float | None = None, log=None):
        self.device, self.offload_device = torch.device(device), torch.device(offload_device)
        self.budget = budget_bytes
        self.modules: dict[str, torch.nn.Module] = {}
        self.sizes: dict[str, int] = {}
        self.reloaders: dict[str, Callable[[], torch.nn.Module]] = {}
        self.pinned: set[str] = set()
        self.resident: "OrderedDict[str, None]" = OrderedDict()  # least recently used first
        self.dropped: set[str] = set()
        self.peak_bytes = 0
        self.moves: list[tuple[str, str]] = []  # (name, "in" | "out" | "free" | "reload")
        self.log = log

    # ---------------------------------------------------------------- registration
    def register(self, name: str, module: torch.nn.Module, reload: Callable[[], torch.nn.Module] | None = None,
                 pinned: bool = False, resident: bool = False, size: int | None = None, dropped: bool = False) -> None:
        """``reload``: a function that brings the module's weights back (after ``release`` freed them);
        ``dropped``: registered without its weights, read by ``reload`` on first use."""
        self.modules[name] = module
        self.sizes[name] = weight_bytes(module) if size is None else int(size)
        if reload is not None:
            self.reloaders[name] = reload
        if dropped:
            self.dropped.add(name)
        if pinned:
            self.pinned.add(name)
        if pinned or resident:
            self.resident[name] = None
            self._note_peak()

    def resident_bytes(self) -> int:
        return sum(self.sizes[n] for n in self.resident)

    def _note_peak(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes())

    # ---------------------------------------------------------------- moving
    def _move(self, name: str, device: torch.device) -> None:
        module = self.modules[name]
        if device != self.offload_device or self.device != self.offload_device:
            module.to(device)

    def use(self, *names: str) -> None:
        wanted = [n for n in names if n in self.modules]
        for name in wanted:
            if name in self.resident and name not in self.dropped:
                self.resident.move_to_end(name)
                continue
            self._make_room(self.sizes[name], keep=set(wanted))  # before reading: the evicted are freed first
            if name in self.dropped:
                self.modules[name] = self.reloaders[name]()
                self.dropped.discard(name)
                self.moves.append((name, "reload"))
            self._move(name, self.device)
            self.resident[name] = None
            self.moves.append((name, "in"))
        self._note_peak()

    def _make_room(self, incoming: int, keep: set[str]) -> None:
        if self.budget is None:
            return
        for name in list(self.resident):
            if self.resident_bytes() + incoming <= self.budget:
                return
            if name in keep or name in self.pinned:
                continue
            if self.device == self.offload_device and name in self.reloaders:
                self.release(name)  # on the CPU the budget is RAM: free what can be read again
                continue
            self._move(name, self.offload_device)
            del self.resident[name]
            self.moves.append((name, "out"))
        if self.log is not None and self.resident_bytes() + incoming > self.budget:
            self.log(f"memory: {(self.resident_bytes() + incoming) / GB:.1f} GB of weights needed at once, "
                     f"over the tier's {self.budget / GB:.1f} GB")

    def release(self, name: str) -> None:
        """Take a network off the device: freed when it can be reloaded, else moved to the offload device."""
        if name not in self.modules or name in self.pinned:
            return
        if name in self.reloaders:
            self.modules[name].to("meta")  # frees its memory wherever it was
            self.dropped.add(name)
            self.moves.append((name, "free"))
        elif name in self.resident:
            self._move(name, self.offload_device)
            self.moves.append((name, "out"))
        self.resident.pop(name, None)

    # ---------------------------------------------------------------- hooks
    def install_hooks(self, name: str) -> None:
        """Call ``use(name)`` before the forward of the network or of any of its direct children."""
        module = self.modules[name]

        def pre_hook(mod, args, kwargs):
            if name not in self.resident or name in self.dropped:
                self.use(name)
            else:
                self.resident.move_to_end(name)
            if self.device == self.offload_device:
                return None
            to = lambda v: v.to(self.device) if torch.is_tensor(v) else v  # noqa: E731
            return tuple(to(a) for a in args), {k: to(v) for k, v in kwargs.items()}

        for m in (module, *module.children()):
            m.register_forward_pre_hook(pre_hook, with_kwargs=True)


class StagedText:
    """A text-instruction source loaded when first asked (``load() -> generator``) and, with a ``residency``,
    brought to the device only to answer (the tiers keep it off the device between keyframes)."""

    def __init__(self, load: Callable, residency: Residency | None = None, name: str = "text_model",
                 **generate_kwargs):
        self.load, self.residency, self.name, self.kwargs = load, residency, name, generate_kwargs
        self.generator = None

    def _ready(self):
        if self.generator is None:
            self.generator = self.load()
        if self.residency is not None and self.name in self.residency.modules:
            self.residency.use(self.name)
        return self.generator

    def generate(self, canvas, target, keyframe_index: int = 0) -> str:
        return self._ready().generate(canvas, target, **self.kwargs)

    def alternatives(self, canvas, target, count: int) -> list[str]:
        return self._ready().alternatives(canvas, target, count, **self.kwargs)
