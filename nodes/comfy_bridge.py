"""Everything the nodes take from ComfyUI, behind guarded imports.

The node modules must import (and the unit tests must run) without ComfyUI, so every ``comfy`` /
``folder_paths`` import lives in a function here, each with a plain fallback:

* model folder registration and lookup (``models/inverse_painting/``), the example painting in ``input/``,
* devices and dtypes (``comfy.model_management`` or torch alone),
* moving our networks through ComfyUI's memory manager (a ``ModelPatcher`` per network),
* progress bars with previews and the interruption check,
* driving the core denoiser with a ComfyUI ``SAMPLER`` (KSAMPLER ``sampler_function``), and ComfyUI's
  schedulers on the renderer's own noise schedule.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

log = logging.getLogger("inverse_painting")

MODEL_FOLDER = "inverse_painting"  # ComfyUI's models/inverse_painting/
BUNDLED_MODELS = Path(__file__).resolve().parents[1] / "assets"  # holds starter_model/, listed after the user's
EXAMPLE_PAINTING = BUNDLED_MODELS / "example.png"
EXAMPLE_INPUT_NAME = "inverse_painting_example.png"  # the name the example workflows' Load Image uses


# --------------------------------------------------------------------------------------------------
# availability


def _import(name: str):
    try:
        return __import__(name, fromlist=["_"])
    except Exception:  # noqa: BLE001 - ImportError, or ComfyUI modules failing outside ComfyUI
        return None


def model_management():
    """``comfy.model_management`` when running inside ComfyUI, else None."""
    return _import("comfy.model_management")


def folder_paths():
    return _import("folder_paths")


def in_comfyui() -> bool:
    return model_management() is not None


# --------------------------------------------------------------------------------------------------
# model folders


def register_model_folder() -> bool:
    """Register ``models/inverse_painting`` with ComfyUI (the IPAdapter idiom, comfyui.md §3.4).

    Paths already registered (e.g. from extra_model_paths.yaml, read before custom nodes load) are
    kept; the extension set is the folder-friendly one (we list sub-folders, not files). Returns False
    outside ComfyUI.
    """
    fp = folder_paths()
    if fp is None:
        return False
    default = os.path.join(fp.models_dir, MODEL_FOLDER)
    if MODEL_FOLDER in fp.folder_names_and_paths:
        paths, exts = fp.folder_names_and_paths[MODEL_FOLDER]
        if default not in paths:
            paths = [*paths, default]
        fp.folder_names_and_paths[MODEL_FOLDER] = (paths, set(exts) | set(fp.supported_pt_extensions))
    else:
        fp.folder_names_and_paths[MODEL_FOLDER] = ([default], set(fp.supported_pt_extensions))
    return True


def place_example_painting() -> Path | None:
    """Copy the bundled example painting into ComfyUI's input folder as ``EXAMPLE_INPUT_NAME`` when no file has
    that name, so the example workflows' Load Image finds it on a fresh install. Never overwrites; returns
    the path (None outside ComfyUI or when the folder is not writable, which is logged)."""
    fp = folder_paths()
    if fp is None:
        return None
    try:
        dst = Path(fp.get_input_directory()) / EXAMPLE_INPUT_NAME
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".partial")
            shutil.copyfile(EXAMPLE_PAINTING, tmp)
            os.replace(tmp, dst)
        return dst
    except OSError as exc:
        log.warning("Inverse Painting: could not place the example painting in ComfyUI's input folder (%s); "
                    "the example workflows need an image there", exc)
        return None


def model_roots() -> list[Path]:
    """Every folder that may hold releases: ComfyUI's registered paths, then $INVERSE_PAINTING_MODELS."""
    roots: list[Path] = []
    fp = folder_paths()
    if fp is not None:
        try:
            roots += [Path(p) for p in fp.get_folder_paths(MODEL_FOLDER)]
        except Exception:  # noqa: BLE001 - not registered yet
            roots.append(Path(fp.models_dir) / MODEL_FOLDER)
    env = os.environ.get("INVERSE_PAINTING_MODELS")
    if env:
        roots += [Path(p) for p in env.split(os.pathsep) if p]
    roots.append(BUNDLED_MODELS)  # the starter model shipped in the pack (assets/starter_model)
    seen, out = set(), []
    for r in roots:
        key = str(r.resolve()) if r.exists() else str(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _looks_like_release(d: Path) -> bool:
    markers = ("renderer", "RP", "base", "checkpoints", "base_ckpt", "TP_llava", "text")
    return d.is_dir() and any((d / m).exists() for m in markers)


def list_releases(kind: str = "release") -> list[str]:
    """Names of model folders under the roots. ``kind="text"`` lists LLaVA folders too.

    A release is a sub-folder with renderer/RP/base ... ; a LLaVA text model is either a release
    holding TP_llava/ (listed as "<release>/TP_llava") or a standalone folder with a config.json.
    """
    names: list[str] = []
    for root in model_roots():
        if not root.is_dir():
            continue
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            if kind == "release" and _looks_like_release(d):
                names.append(d.name)
            elif kind == "text":
                for sub in ("TP_llava", "checkpoints/TP_llava", "text"):
                    if (d / sub).is_dir():
                        names.append(f"{d.name}/{sub}")
                if (d / "config.json").is_file():
                    names.append(d.name)
    return sorted(dict.fromkeys(names))


def resolve_model_path(name: str) -> Path:
    """A release name (or a relative sub-path, or an absolute path) -> an existing folder."""
    from ..core.errors import MissingPathError

    name = os.fspath(name) if isinstance(name, os.PathLike) else name
    if not isinstance(name, str) or not name.strip():  # Path('') would be the models folder itself
        raise MissingPathError(f"no model folder chosen (got {name!r}): pick a release from the list")
    p = Path(name)
    if p.is_absolute() and p.is_dir():
        return p
    for root in model_roots():
        cand = root / name
        if cand.is_dir():
            return cand
    searched = ", ".join(str(r) for r in model_roots()) or "(no model folder registered)"
    raise MissingPathError(f"model folder {name!r} not found in {searched}. Put the release under "
                            f"ComfyUI/models/{MODEL_FOLDER}/<name>/ (see the README).")


# --------------------------------------------------------------------------------------------------
# devices and dtypes

DEVICE_CHOICES = ["auto", "cpu", "gpu"]
PRECISION_CHOICES = ["auto", "fp32", "fp16", "bf16"]
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(choice: str = "auto") -> torch.device:
    mm = model_management()
    if choice == "cpu":
        return torch.device("cpu")
    if mm is not None:
        dev = mm.get_torch_device()
        if choice == "gpu" and dev.type == "cpu":
            raise RuntimeError("device 'gpu' requested but ComfyUI runs on the CPU (started with --cpu?)")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if choice == "gpu":
        raise RuntimeError("device 'gpu' requested but no CUDA device is available")
    return torch.device("cpu")


def offload_device() -> torch.device:
    mm = model_management()
    return mm.unet_offload_device() if mm is not None else torch.device("cpu")


def resolve_dtype(choice: str, device: torch.device, half_ok: bool = True) -> torch.dtype:
    """The loaders' precision: a named one, or ``auto`` (fp32 on the CPU and for a model that cannot run in half
    precision, ``half_ok`` False; else what ComfyUI uses on this device)."""
    if choice in _DTYPES:
        return _DTYPES[choice]
    if device.type == "cpu" or not half_ok:
        # half precision convolutions are 50x slower than fp32 on CPUs without AVX-512 BF16
        return torch.float32
    mm = model_management()
    if mm is not None:
        if mm.should_use_fp16(device):
            return torch.float16
        if mm.should_use_bf16(device):
            return torch.bfloat16
        return torch.float32
    return torch.float16


def memory_tier(choice: str, device: torch.device, text_model: bool = True):
    """The core.memory tier for a loader's ``vram`` input; ``auto`` reads the device's free memory (ComfyUI's
    own figure inside ComfyUI)."""
    from ..core.memory import choose_tier, free_device_bytes

    free = None
    if torch.device(device).type != "cpu":
        mm = model_management()
        free = float(mm.get_free_memory(device)) if mm is not None else free_device_bytes(device)
    return choose_tier(choice, free, text_model=text_model)


def intermediate_device() -> torch.device:
    mm = model_management()
    return mm.intermediate_device() if mm is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# memory management


class ModuleBundle(torch.nn.Module):
    """Wraps one network for ComfyUI's ModelPatcher, which reads and sets ``.device`` (a read-only property
    on transformers models)."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        super().__init__()
        self.parts = torch.nn.ModuleDict({k.replace(".", "_"): m for k, m in modules.items()})
        self.device = None  # ModelPatcher sets/reads this


class ManagedModules:
    """Each network registered with ``comfy.model_management`` separately (its own ModelPatcher), so ComfyUI
    pages them one by one; outside ComfyUI a :class:`..core.memory.Residency` moves them by hand.

    The same interface as ``Residency`` (``register``, ``install_hooks``, ``use``, ``release``, ``device``), so
    ``ModelSet.attach_residency`` puts a model set under ComfyUI's memory manager: a network is loaded by a
    forward hook when it runs (``load_models_gpu``, which unloads others when memory is short), and
    ``release`` unloads one (the ReferenceNet once the target's banks exist, in the tiers that say so).
    ``ensure_loaded()`` loads them all (the ``full`` tier; nodes that run them outside the core).
    Patchers are the legacy ``ModelPatcher``: our diffusers/transformers networks are plain nn.Modules, which
    ComfyUI's dynamic-VRAM patcher would only force-load anyway.
    """

    def __init__(self, modules: dict[str, torch.nn.Module], load_device: torch.device):
        from ..core.memory import Residency

        self.load_device = self.device = torch.device(load_device)
        self.bundles: dict[str, ModuleBundle] = {}
        self.patchers: dict = {}
        self.fallback = None if model_management() is not None else Residency(self.load_device, offload_device())
        for name, module in modules.items():
            self.register(name, module)

    def register(self, name: str, module: torch.nn.Module, reload=None, pinned: bool = False, resident: bool = False,
                 size=None, dropped: bool = False) -> None:
        if self.fallback is not None:
            self.fallback.register(name, module, pinned=pinned)  # weights are kept in RAM: no reload
            return
        self.bundles[name] = ModuleBundle({name: module})
        if pinned:  # quantized layers cannot move: not paged
            return
        try:
            import comfy.model_patcher

            self.patchers[name] = comfy.model_patcher.ModelPatcher(self.bundles[name], load_device=self.load_device,
                                                                   offload_device=offload_device())
        except Exception as exc:  # noqa: BLE001 - never fail the node over memory bookkeeping
            log.warning("Inverse Painting: ModelPatcher unavailable for %s (%s); moving it by hand", name, exc)

    def _is_loaded(self, name: str) -> bool:
        bundle = self.bundles.get(name)
        return bundle is not None and bundle.device is not None and torch.device(bundle.device) == self.load_device

    def use(self, *names: str) -> None:
        if self.fallback is not None:
            self.fallback.use(*names)
            return
        # ComfyUI decides: it may have unloaded a network, or part of one, since the last call
        patchers = [self.patchers[n] for n in names if n in self.patchers]
        if patchers:
            model_management().load_models_gpu(patchers, force_full_load=True)
        for n in names:
            if n in self.bundles and n not in self.patchers and not self._is_loaded(n):
                self.bundles[n].to(self.load_device)
                self.bundles[n].device = self.load_device

    def release(self, name: str) -> None:
        """Unload one network to the offload device (ComfyUI's own unload of that model)."""
        if self.fallback is not None:
            self.fallback.release(name)
            return
        patcher = self.patchers.get(name)
        if patcher is None or not self._is_loaded(name):
            return
        mm = model_management()
        try:
            for i, loaded in enumerate(list(mm.current_loaded_models)):
                if loaded.model is patcher:
                    loaded.model_unload()
                    mm.current_loaded_models.pop(i)
                    break
        except Exception as exc:  # noqa: BLE001 - an internal API: leave paging to ComfyUI then
            log.warning("Inverse Painting: could not unload %s (%s); ComfyUI will page it", name, exc)

    def install_hooks(self, name: str) -> None:
        """Load the network (``use``) before its forward or that of a direct child; move tensor inputs along."""
        if self.fallback is not None:
            self.fallback.install_hooks(name)
            return
        module = self.bundles[name].parts[name.replace(".", "_")]

        def pre_hook(mod, args, kwargs):
            self.use(name)
            to = lambda v: v.to(self.load_device) if torch.is_tensor(v) else v  # noqa: E731
            return tuple(to(a) for a in args), {k: to(v) for k, v in kwargs.items()}

        for m in (module, *module.children()):
            m.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def ensure_loaded(self) -> torch.device:
        """Every network on the load device."""
        self.use(*(self.fallback.modules if self.fallback is not None else self.bundles))
        return self.load_device


# --------------------------------------------------------------------------------------------------
# progress, previews, interruption


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel (POST /interrupt)."""
    mm = model_management()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


class Progress:
    """A ComfyUI ProgressBar (websocket progress + preview image), or nothing outside ComfyUI."""

    def __init__(self, total: int, node_id=None):
        self.total = max(1, int(total))
        self.value = 0
        self.bar = None
        utils = _import("comfy.utils")
        if utils is not None:
            try:
                self.bar = utils.ProgressBar(self.total, node_id=node_id)
            except TypeError:  # older signature without node_id
                self.bar = utils.ProgressBar(self.total)

    def set(self, value: int, preview: np.ndarray | None = None, total: int | None = None) -> None:
        if total is not None:
            self.total = max(1, int(total))
        self.value = min(int(value), self.total)
        if self.bar is not None:
            pv = None
            if preview is not None:
                from PIL import Image

                pv = ("JPEG", Image.fromarray(preview), 512)
            self.bar.update_absolute(self.value, self.total, pv)

    def step(self, n: int = 1, preview: np.ndarray | None = None) -> None:
        self.set(self.value + n, preview)


# --------------------------------------------------------------------------------------------------
# ComfyUI SAMPLER / SIGMAS driving the core denoiser

# samplers that need ComfyUI's CFG machinery (post-CFG hooks with the unconditional prediction),
# which a six-branch guided denoiser cannot provide
_UNSUPPORTED_SUFFIXES = ("_cfg_pp",)


def sampler_name(sampler) -> str:
    fn = getattr(sampler, "sampler_function", None)
    name = getattr(fn, "__name__", type(sampler).__name__)
    return name[len("sample_"):] if name.startswith("sample_") else name


def validate_sampler(sampler) -> None:
    """Refuse samplers that cannot drive an external denoiser, naming them."""
    if sampler is None:
        return
    if not callable(getattr(sampler, "sampler_function", None)):
        raise ValueError(
            f"SAMPLER of type {type(sampler).__name__} is not a k-diffusion KSAMPLER (it has no "
            "sampler_function); Inverse Painting can only use KSAMPLER samplers such as those from "
            "KSamplerSelect or the Sampler* nodes. Leave the input empty to use the official "
            "Euler-ancestral sampler.")
    name = sampler_name(sampler)
    if name.endswith(_UNSUPPORTED_SUFFIXES):
        raise ValueError(
            f"sampler '{name}' is not supported: the *_cfg_pp samplers need ComfyUI's own CFG "
            "(unconditional prediction hooks), which the six-branch Inverse Painting guidance does not "
            "expose. Use e.g. euler, euler_ancestral, dpmpp_2m or dpmpp_2m_sde.")


def _model_sampling(schedule_betas: torch.Tensor):
    """A ComfyUI EPS ModelSamplingDiscrete on the renderer's own (linear-beta) schedule.

    Samplers read it to detect EPS vs flow models (ancestral, SDE) or to convert sigmas
    (er_sde, seeds, sa_solver's percent_to_sigma).
    """
    try:
        import comfy.model_sampling as ms
    except ImportError:  # outside ComfyUI (unit tests with a hand-made sampler): the sigma table only
        return _PlainSampling(schedule_betas)

    class InversePaintingSampling(ms.ModelSamplingDiscrete, ms.EPS):
        pass

    obj = InversePaintingSampling()
    obj._register_schedule(given_betas=schedule_betas.double())
    return obj


class _PlainSampling(torch.nn.Module):
    """Stand-in for ComfyUI's model_sampling without ComfyUI: sigmas of the training schedule."""

    def __init__(self, betas: torch.Tensor):
        super().__init__()
        alphas_cumprod = torch.cumprod(1.0 - betas.double(), 0)
        self.register_buffer("sigmas", (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float())

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]


class _PatcherShim:
    def __init__(self, model_sampling):
        self._ms = model_sampling

    def get_model_object(self, name):
        if name == "model_sampling":
            return self._ms
        raise AttributeError(f"Inverse Painting's denoiser has no model object {name!r}")


class _InnerShim:
    def __init__(self, model_sampling):
        self.model_sampling = model_sampling
        self.inner_model = self  # samplers look at model.inner_model.inner_model.model_sampling
        self.model_patcher = _PatcherShim(model_sampling)


class KDenoiserShim:
    """Callable ``model(x, sigma, **extra_args) -> x0`` with the attributes ComfyUI samplers probe."""

    def __init__(self, denoiser: Callable, model_sampling):
        self.denoiser = denoiser
        self.inner_model = _InnerShim(model_sampling)

    def __call__(self, x, sigma, **_extra):
        check_interrupt()  # checked on every denoiser evaluation, inside any sampler
        return self.denoiser(x, sigma)


def schedule_betas(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012):
    """The renderer's training betas (diffusers "linear": linspace in beta, not in sqrt(beta))."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def make_external_sampler(sampler, seed: int) -> Callable:
    """Adapt a ComfyUI KSAMPLER to the core's ``sampler(denoiser, x, sigmas, callback) -> x`` hook."""
    validate_sampler(sampler)
    model_sampling = _model_sampling(schedule_betas())
    extra_options = dict(getattr(sampler, "extra_options", {}) or {})

    def run(denoiser, x, sigmas, callback=None):
        shim = KDenoiserShim(denoiser, model_sampling.to(x.device))
        return sampler.sampler_function(shim, x, sigmas, extra_args={"seed": int(seed)}, callback=callback,
                                        disable=True, **extra_options)

    return run


def scheduler_names() -> list[str]:
    """ComfyUI's scheduler names (``comfy.samplers.SCHEDULER_NAMES``); outside ComfyUI the core's few."""
    samplers = _import("comfy.samplers")
    if samplers is not None:
        return list(samplers.SCHEDULER_NAMES)
    from ..core.schedule import NAMED_SCHEDULES

    return list(NAMED_SCHEDULES)


def scheduler_sigmas(name: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """SIGMAS of ComfyUI's scheduler ``name`` on the renderer's schedule, cut like BasicScheduler's ``denoise``
    (the last ``steps`` steps of a ``steps / denoise`` schedule)."""
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    total = int(steps / denoise) if denoise < 1.0 else int(steps)
    samplers = _import("comfy.samplers")
    if samplers is not None:
        sigmas = samplers.calculate_sigmas(_model_sampling(schedule_betas()), name, total)
    else:
        from ..core.schedule import named_sigmas

        sigmas = named_sigmas(name, total)
    return sigmas.float().cpu()[-(int(steps) + 1):]


def validate_sigmas(sigmas) -> torch.Tensor | None:
    if sigmas is None:
        return None
    s = torch.as_tensor(sigmas).float().flatten().cpu()
    if s.numel() < 2:
        raise ValueError(f"SIGMAS must hold at least 2 values (one step), got {s.numel()}")
    if not bool(torch.all(s[:-1] >= s[1:])):
        raise ValueError("SIGMAS must be non-increasing (from high noise to 0); got "
                         f"{[round(float(v), 4) for v in s[:8]]}...")
    if float(s[0]) <= 0:
        raise ValueError("SIGMAS must start above 0")
    return s
