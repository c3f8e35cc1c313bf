"""Loader nodes and the model objects they return.

``InversePaintingLoader`` returns an INVERSE_PAINTING_MODEL: a light handle that checks the release
folder at once but loads weights only when a downstream node first needs them (lazy). Loaded
weights are shared through a small in-process cache, keyed by folder, file times and settings, so
re-running a workflow or using two loaders with the same settings loads once. The networks are
registered with ComfyUI's memory manager one by one (a ModelPatcher per network), so each is moved to the
compute device when it runs and offloaded when ComfyUI needs the memory or on /free; the ``vram`` input
picks a memory tier (core/memory.py: which networks are released when, the text model's precision).

``InversePaintingTextModelLoader`` does the same for the LLaVA text-instruction model, which is
separate because it is large (7B) and optional (instructions may be written by hand).
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.imaging import WorkingImage, prepare_image
from ..core.loading import WeightFileError, find_release, needs_fp32
from . import comfy_bridge as cb
from . import metrics

log = logging.getLogger("inverse_painting")

CATEGORY = "Inverse Painting"
MODEL_TYPE = "INVERSE_PAINTING_MODEL"
TEXT_MODEL_TYPE = "INVERSE_PAINTING_TEXT_MODEL"
COMPONENTS = ["renderer + mask generator", "renderer only", "mask generator only"]
METRICS = metrics.METRIC_CHOICES
VRAM_CHOICES = ["auto", "full", "12gb", "8gb", "notext"]  # core.memory.TIER_CHOICES
TEXT_VRAM_CHOICES = ["auto", "full", "12gb", "8gb"]
_CACHE_SIZE = 2
_cache: "OrderedDict[tuple, object]" = OrderedDict()
_cache_lock = threading.Lock()


def _folder_signature(path: Path) -> str:
    """Changes when any weight/config file in the folder changes (names, sizes, mtimes)."""
    h = hashlib.sha1()
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.suffix in (".ckpt", ".safetensors", ".pt", ".pth", ".bin", ".json", ".yaml", ".model"):
            st = p.stat()
            h.update(f"{p.relative_to(path)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _cached(key: tuple, build):
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = build()
    with _cache_lock:
        _cache[key] = value
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return value


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


@dataclass
class _LoadedRelease:
    models: object  # core ModelSet
    metric: torch.nn.Module
    painter: object | None  # core Painter (the loop); None without the renderer
    renderer: object | None
    mask_generator: object | None
    managed: cb.ManagedModules
    target_cache: "OrderedDict[str, object]"


class InversePaintingModel:
    """INVERSE_PAINTING_MODEL: one release + how to run it; loads on first use."""

    def __init__(self, path, device: str = "auto", precision: str = "auto", components: str = COMPONENTS[0],
                 metric: str = METRICS[0], short_side: int = 0, vram: str = "auto"):
        from ..core.loop import PaintSettings

        self.path = Path(path)
        paths = find_release(self.path)
        need = ["base", "clip"]
        if components != "mask generator only":
            need.append("renderer")
        if components != "renderer only":
            need.append("mask_generator")
        paths.require(*need)  # fail in the loader, not later, when files are missing
        self.paths = paths
        # auto: the release's LPIPS when its weight files are installed, else the offline ST-LPIPS
        metric, self.lpips_dir = metrics.resolve(metric, paths.lpips, model=True)
        self.device_choice, self.precision, self.components, self.metric_name = device, precision, components, metric
        # 0 = the size the model was trained at (512 for released models, the starter's own size)
        # how this model paints (PaintSettings.for_model: the release's defaults, or a starter's own);
        # the step and time-lapse nodes start from it
        self.painting = PaintSettings.for_model(self.path, short_side=int(short_side) or None)
        self.device = cb.resolve_device(device)
        self.dtype = cb.resolve_dtype(precision, self.device, half_ok=not needs_fp32(self.path))
        self.tier = cb.memory_tier(vram, self.device)
        self.signature = _folder_signature(self.path)

    # ------------------------------------------------------------------ loading
    @property
    def key(self) -> tuple:
        return (str(self.path.resolve()), self.signature, str(self.device), str(self.dtype), self.components,
                self.metric_name, self.tier.name)

    def _build(self) -> _LoadedRelease:
        from ..core.loop import Painter
        from ..core.model_set import ModelSet
        log.info("Inverse Painting: loading %s (%s, %s)", self.path, self.device, self.dtype)
        models = ModelSet.from_release(self.path, device=cb.offload_device(), dtype=self.dtype,
                                       renderer=self.components != "mask generator only",
                                       mask_generator=self.components != "renderer only")
        metric = metrics.load(self.metric_name, self.lpips_dir)
        managed = cb.ManagedModules({}, self.device)
        models.attach_residency(managed, release_referencenet=self.tier.release_referencenet)
        managed.register("perceptual_metric", metric)
        managed.install_hooks("perceptual_metric")
        if models.renderer is not None:
            painter = Painter(models, metric)
            renderer, mask_generator = painter.renderer, painter.mask_generator
        else:  # mask generator only: no painting loop
            from ..core.mask_generator import MaskGenerator

            painter, renderer, mask_generator = None, None, MaskGenerator(models, metric)
        return _LoadedRelease(models, metric, painter, renderer, mask_generator, managed, OrderedDict())

    def load(self) -> _LoadedRelease:
        """The loaded networks, on the compute device (ComfyUI may have offloaded them meanwhile)."""
        loaded = _cached(self.key, self._build)
        # the full tier loads everything now; the others load each network when it runs
        device = loaded.managed.ensure_loaded() if self.tier.name == "full" else loaded.managed.load_device
        if loaded.models.device != device:
            loaded.models.device = device
            loaded.models.text.clear()  # cached encodings live on the old device
        return loaded

    @property
    def has_renderer(self) -> bool:
        return self.components != "mask generator only"

    @property
    def has_mask_generator(self) -> bool:
        return self.components != "renderer only"

    def require(self, renderer: bool = False, mask_generator: bool = False) -> None:
        if renderer and not self.has_renderer:
            raise ValueError("this INVERSE_PAINTING_MODEL was loaded without the renderer "
                             "(Load Inverse Painting: components)")
        if mask_generator and not self.has_mask_generator:
            raise ValueError("this INVERSE_PAINTING_MODEL was loaded without the mask generator "
                             "(Load Inverse Painting: components)")

    # ------------------------------------------------------------------ helpers for the nodes
    @property
    def short_side(self) -> int | None:
        return self.painting.short_side

    def working(self, target_uint8: np.ndarray, name: str = "target") -> WorkingImage:
        return prepare_image(target_uint8, self.short_side, name=name)

    def target_state(self, loaded: _LoadedRelease, working: WorkingImage):
        """Renderer state of a target (latents, CLIP, ReferenceNet banks), cached per target image."""
        key = hashlib.sha1(working.padded.tobytes()).hexdigest() + str(working.padded.shape)
        cache = loaded.target_cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        state = loaded.renderer.prepare_target(working.padded)
        cache[key] = state
        while len(cache) > 2:
            cache.popitem(last=False)
        return state

    def describe(self) -> dict:
        from ..core.loop import MODEL_PAINT_CHOICES

        settings = self.painting.to_dict()  # JSON-able (the guidance scales as a dict)
        chosen = {k: settings[k] for k in MODEL_PAINT_CHOICES}
        return {"release": self.path.name, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "components": self.components, "perceptual_metric": self.metric_name, "vram": self.tier.name,
                **chosen,
                "renderer_checkpoint": self.paths.renderer.name if self.paths.renderer else None,
                "mask_generator_checkpoint": self.paths.mask_generator.name if self.paths.mask_generator else None}

    def __repr__(self) -> str:
        return f"InversePaintingModel({self.path.name}, {self.device}, {self.dtype})"


class InversePaintingTextModel:
    """INVERSE_PAINTING_TEXT_MODEL: a LLaVA text-instruction generator; loads on first use."""

    def __init__(self, path, device: str = "auto", precision: str = "auto", vision_tower_path: str = "",
                 max_new_tokens: int = 512, stop_at_separator: bool = True, vram: str = "auto"):
        from ..core.memory import text_placement

        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            from ..core.errors import MissingPathError

            raise MissingPathError(f"{self.path} has no config.json: not a LLaVA folder (TP_llava or llava-hf)")
        self.device = cb.resolve_device(device)
        self.tier = cb.memory_tier("full" if vram == "notext" else vram, self.device)
        # the tier's place for it: this device (fp16), 8/4-bit on CUDA with bitsandbytes, else the CPU
        where, self.quantization = text_placement(self.tier, self.device)
        self.device = torch.device(where)
        self.dtype = cb.resolve_dtype(precision, self.device, half_ok=not needs_fp32(self.path))
        self.vision_tower_path = vision_tower_path.strip() or None
        if self.vision_tower_path is None and (self.path / "vision_tower").is_dir():
            # the README's place for LLaVA's CLIP-L/336 when TP_llava does not hold its weights
            self.vision_tower_path = str(self.path / "vision_tower")
        self.max_new_tokens = int(max_new_tokens)
        # LLaVA's v0 template separates turns with "###": stop there instead of generating on
        self.stop_strings = ["###"] if stop_at_separator else None
        self.signature = _folder_signature(self.path)

    @property
    def key(self) -> tuple:
        return ("text", str(self.path.resolve()), self.signature, str(self.device), str(self.dtype),
                self.vision_tower_path, self.quantization)

    def _build(self):
        from ..models.text_instruction import TextInstructionGenerator

        log.info("Inverse Painting: loading text model %s (%s, %s)", self.path, self.device, self.dtype)
        gen = TextInstructionGenerator.from_pretrained(
            str(self.path), device=cb.offload_device(), dtype=self.dtype, vision_tower_path=self.vision_tower_path,
            # the official run keeps the CLIP tower in fp32 (spec 2.2); quantized tiers halve it
            vision_dtype=torch.float16 if self.quantization else torch.float32)
        managed = cb.ManagedModules({}, self.device)
        if self.quantization:
            from ..core.memory import quantize_linears
            from ..models.text_instruction import _part

            quantize_linears(_part(gen.model, "language_model"), 8 if self.quantization == "8bit" else 4)
            gen.model.to(self.device)  # bitsandbytes quantizes on the move; it stays there (not paged)
        managed.register("llava", gen.model, pinned=bool(self.quantization))
        return gen, managed

    def _ready(self):
        gen, managed = _cached(self.key, self._build)
        managed.ensure_loaded()
        cb.check_interrupt()
        return gen

    def generate(self, canvas: np.ndarray, target: np.ndarray, keyframe_index: int = 0) -> str:
        return self._ready().generate(canvas, target, max_new_tokens=self.max_new_tokens,
                                      stop_strings=self.stop_strings)

    def alternatives(self, canvas: np.ndarray, target: np.ndarray, count: int) -> list[str]:
        """The model's most likely answers, best first (``PaintSettings.reask``)."""
        return self._ready().alternatives(canvas, target, count, max_new_tokens=self.max_new_tokens,
                                          stop_strings=self.stop_strings)

    def __repr__(self) -> str:
        return f"InversePaintingTextModel({self.path.name}, {self.device}, {self.dtype})"


# ------------------------------------------------------------------------------------------------
# nodes


def _release_choices() -> list[str]:
    names = cb.list_releases("release")
    return names or ["(no release found in models/inverse_painting)"]


class InversePaintingLoader:
    DESCRIPTION = ("Loads an Inverse Painting release from ComfyUI/models/inverse_painting/<name>/ (the "
                   "released folder layout as is, or with checkpoints converted to .safetensors): renderer, "
                   "mask generator, base SD1.5 VAE and text encoder, CLIP ViT-B/32 and the LPIPS weights. "
                   "Weights load when first used and are cached.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The Inverse Painting networks (renderer, mask generator, base components).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "release": (_release_choices(), {"tooltip": "Folder under ComfyUI/models/inverse_painting/ holding "
                                                       "renderer/, RP/, base/, clip/ (and optionally lpips/)."}),
            "device": (cb.DEVICE_CHOICES, {"default": "auto", "tooltip": "auto: ComfyUI's device (GPU if "
                                           "available); cpu: always the CPU."}),
            "precision": (cb.PRECISION_CHOICES, {"default": "auto", "tooltip": "auto: fp16 on GPUs that support "
                                                 "it, fp32 on CPU (half precision is very slow on CPUs) and for the "
                                                 "bundled starter (its small networks overflow fp16)."}),
            "components": (COMPONENTS, {"default": COMPONENTS[0], "tooltip": "Which networks to load; the "
                                        "time-lapse needs both."}),
            "perceptual_metric": (METRICS, {"default": METRICS[0], "tooltip": "Distance used for the difference "
                                            "mask and the stop rule. lpips_alex is the official one (needs the "
                                            "ImageNet AlexNet file in the model's lpips/ or in "
                                            "models/inverse_painting/lpips/); stlpips_alex ships with the "
                                            "stlpips-pytorch wheel (the starter model uses it); auto picks "
                                            "lpips_alex when the model folder has its weights, else stlpips_alex."}),
            "short_side": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 8, "tooltip": "Working "
                                   "resolution: the target is resized so its short side is this, then padded to "
                                   "multiples of 16. 0 = the model's training size (512 for released models, 128 "
                                   "for the bundled starter). Every node using this model works at this size."}),
        }, "optional": {
            "vram": (VRAM_CHOICES, {"default": "auto", "tooltip": "Memory tier (README: Memory). full: every "
                                    "network stays on the GPU; 12gb / 8gb / notext: the ReferenceNet is released "
                                    "once the target's banks exist and each network is loaded when it runs, so "
                                    "ComfyUI pages them; auto: from the free VRAM."}),
        }}

    @classmethod
    def IS_CHANGED(cls, release, **_):
        try:
            return _folder_signature(cb.resolve_model_path(release))
        except Exception:  # noqa: BLE001 - let the node raise its own error
            return float("nan")

    def load(self, release, device="auto", precision="auto", components=COMPONENTS[0],
             perceptual_metric=METRICS[0], short_side=0, vram="auto"):
        try:
            path = cb.resolve_model_path(release)
            return (InversePaintingModel(path, device, precision, components, perceptual_metric, short_side, vram),)
        except WeightFileError as exc:
            raise RuntimeError(f"Load Inverse Painting: {exc}") from exc


def _text_choices() -> list[str]:
    names = cb.list_releases("text")
    return names or ["(no LLaVA folder found in models/inverse_painting)"]


class InversePaintingTextModelLoader:
    DESCRIPTION = ("Loads the LLaVA text-instruction model (the release's TP_llava folder, or a llava-hf "
                   "folder) that names what to paint next. Optional: instructions can also be written by hand.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (TEXT_MODEL_TYPE,)
    RETURN_NAMES = ("text_model",)
    OUTPUT_TOOLTIPS = ("The LLaVA instruction generator.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_model": (_text_choices(), {"tooltip": "A release's TP_llava folder (<release>/TP_llava) or a "
                                                        "llava-hf model folder under models/inverse_painting/."}),
            "device": (cb.DEVICE_CHOICES, {"default": "auto", "tooltip": "auto: ComfyUI's device; cpu: always "
                                           "the CPU (slow for a 7B model)."}),
            "precision": (cb.PRECISION_CHOICES, {"default": "auto", "tooltip": "Precision of the language model "
                                                 "(the vision tower stays fp32, as officially)."}),
            "max_new_tokens": ("INT", {"default": 32, "min": 1, "max": 512, "tooltip": "Longest answer; the "
                                       "model is trained to answer in at most 2 words (official: 512)."}),
            "stop_at_separator": ("BOOLEAN", {"default": True, "tooltip": "Stop decoding at the prompt "
                                              "template's '###' turn separator."}),
        }, "optional": {
            "vision_tower_path": ("STRING", {"default": "", "tooltip": "Local CLIP-L/336 folder, needed when "
                                             "TP_llava has no saved vision tower (it names a hub model)."}),
            "vram": (TEXT_VRAM_CHOICES, {"default": "auto", "tooltip": "Memory tier (README: Memory). full: "
                                         "fp16 on the GPU (about 15 GB for LLaVA-7B); 12gb: 8-bit, 8gb: 4-bit "
                                         "(bitsandbytes on CUDA), else on the CPU; auto: from the free VRAM. "
                                         "Without a text model at all, wire any STRING into the instructions."}),
        }}

    def load(self, text_model, device="auto", precision="auto", max_new_tokens=32, stop_at_separator=True,
             vision_tower_path="", vram="auto"):
        path = cb.resolve_model_path(text_model)
        return (InversePaintingTextModel(path, device, precision, vision_tower_path or "", max_new_tokens,
                                         stop_at_separator, vram),)
