"""Loading the released Inverse Painting weights (and ours, which use the same layout).

Accepted folder layouts (``root`` is e.g. ComfyUI's ``models/inverse_painting/<name>/``):

- the model-folder layout:  ``renderer/ckpt/*.ckpt`` + ``renderer/config.yaml``, ``RP/*.ckpt``,
  ``TP_llava/``, ``base/`` (a diffusers SD1.5 folder: unet/config.json, vae/, text_encoder/, tokenizer/),
  ``clip/`` (CLIP ViT-B/32), ``lpips/`` (LPIPS weights);
- the official repository layout: ``checkpoints/{renderer,RP,TP_llava}`` and
  ``base_ckpt/{realisticVisionV51_v51VAE,clip-vit-base-patch32}``.

A ``.safetensors`` file next to a ``.ckpt`` of the same name (written by :func:`convert_checkpoint`) is
preferred: it loads faster and cannot run code. ``.ckpt`` files are read with
``torch.load(weights_only=True)`` only. Missing, unexpected and mis-shaped keys are reported by name,
and a checkpoint of the wrong component is refused.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UserInputError
from .schedule import PREDICTION_TYPES

RENDERER_PARTS = ("unet_state_dict", "referencenet_state_dict", "cur_image_guider_state_dict",
                  "PE_state_dict", "image_adpater_state_dict")
MASK_PARTS = ("RP_state_dict", "PE_state_dict")
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

# the six renderer-config fields inference reads, with the release's values as defaults
CONFIG_DEFAULTS = {"use_PE": True, "PE_type": "abs", "PE_time_interval": 5, "PE_time_max": 100,
                   "use_TP": True, "is_train_text_encoder": False}


# the standard SD1.5 UNet config (the release's base model is assumed to use it; used for manifests/benchmarks)
SD15_UNET_CONFIG = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 32, "out_channels": 4,
    "sample_size": 64, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}


def quiet_loaders(progress_bars: bool = True) -> None:
    """Only errors from diffusers/transformers while loading (no notices about optional backends such as
    torchvision, nor about the CLIP folder's text-tower keys, expected to be unused); ``progress_bars=False``
    also hides their progress bars (the command line; inside ComfyUI they are left alone)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    if not progress_bars:
        transformers_logging.disable_progress_bar()
        diffusers_logging.disable_progress_bar()


class WeightFileError(UserInputError, RuntimeError):
    """A model folder or weight file that is missing, unreadable, of the wrong component or with wrong keys."""


def _refused_pickle(path: Path, exc: Exception) -> WeightFileError:
    """The message for a checkpoint that ``weights_only`` loading refused (it needs Python objects, not only
    tensors). torch's own message suggests ``weights_only=False``, which would run the file's code: never."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    what = f"the Python object {found.group(1)}" if found else "Python objects besides tensors"
    return WeightFileError(
        f"{path}: refused, it is a pickle that needs {what} to load, and loading it could run code (nothing from it "
        "was run). Released checkpoints hold only tensors, numbers and strings. Ask its publisher for a "
        ".safetensors file, or re-save only its state dicts (torch.save of plain tensors) with the code that made it")


# ----------------------------------------------------------------------------------------------
# reading and converting checkpoint files


def read_checkpoint(path, parts=None, mmap: bool = False) -> dict:
    """Read a checkpoint into a (possibly nested) dict of tensors.

    ``.safetensors`` files written by :func:`convert_checkpoint` are un-flattened back into the
    released structure ({"unet_state_dict": {...}, ..., "global_step": N}). ``parts``: only these
    top-level state dicts, their tensors mapped from the file (a ``.ckpt``), so one network of a 7 GB
    renderer checkpoint costs its own size, read when first touched. ``mmap``: every tensor mapped
    (for shapes and small parts without reading the rest).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"weight file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                keys = [k for k in f.keys() if parts is None or k.split("/", 1)[0] in parts]
                flat = {k: f.get_tensor(k) for k in keys}
            return _unflatten(flat, meta)
        if parts is not None:  # mapped: only the pages of these parts are ever read (and counted)
            mapped = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            return {k: v for k, v in mapped.items() if not isinstance(v, dict) or k in parts}
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except WeightFileError:
        raise
    except Exception as exc:  # truncated zip, bad pickle, ...
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise _refused_pickle(path, exc) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightFileError(f"{path}: cannot read it (truncated or not a checkpoint?): {first}") from exc
    if not isinstance(data, dict):
        raise WeightFileError(f"{path} does not hold a dict of weights")
    return data


def _unflatten(flat: dict, meta: dict) -> dict:
    nested = json.loads(meta.get("nested", "false"))
    if not nested:
        return flat
    out: dict = {k: v for k, v in json.loads(meta.get("scalars", "{}")).items()}
    for key, tensor in flat.items():
        part, name = key.split("/", 1)
        out.setdefault(part, {})[name] = tensor
    return out


def convert_checkpoint(src, dst=None) -> Path:
    """Write a ``.ckpt`` as ``.safetensors`` beside it (or at ``dst``); returns the new path.

    Nested state dicts become ``<part>/<param>`` keys; integers (epoch, global_step) go to metadata.
    """
    src = Path(src)
    data = read_checkpoint(src)
    dst = Path(dst) if dst else src.with_suffix(".safetensors")
    flat, scalars = {}, {}
    for key, value in data.items():
        if isinstance(value, dict):
            for name, tensor in value.items():
                flat[f"{key}/{name}"] = tensor.detach().contiguous()
        elif isinstance(value, torch.Tensor):
            flat[f"{key}/"] = value.contiguous()
        else:
            scalars[key] = value
    from safetensors.torch import save_file

    if dst.is_dir() and not dst.is_symlink():
        raise WeightFileError(f"{dst}: a folder is in the way of the converted file; nothing was written")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial")  # hidden, and removed on any failure
    try:
        save_file(flat, str(tmp), metadata={"nested": "true", "scalars": json.dumps(scalars), "source": src.name})
        tmp.replace(dst)  # never leave a half-written file under the final name
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


def require_parts(ckpt: dict, parts, component: str, path) -> None:
    missing = [p for p in parts if p not in ckpt]
    if missing:
        found = ", ".join(k for k in ckpt if isinstance(ckpt[k], dict)) or "none"
        raise WeightFileError(f"{path} is not a {component} checkpoint: missing {', '.join(missing)} "
                              f"(state dicts found: {found})")


def check_finite_weights(state_dict: dict, what: str) -> None:
    """Refuse weights holding NaN/Inf (a corrupt or badly converted file paints black frames otherwise)."""
    bad = [k for k, v in state_dict.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and v.device.type != "meta"
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightFileError(f"{what}: {len(bad)} weight tensor(s) hold NaN/Inf values, e.g. {', '.join(bad[:3])}; "
                              "the file is corrupt or was converted wrongly")


def load_checked(module: torch.nn.Module, state_dict: dict, what: str, assign: bool = False) -> None:
    """``load_state_dict(strict=True)`` with a readable report of wrong keys and shapes; NaN/Inf refused."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or shapes:
        lines = [f"{what}: weights do not match the architecture"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:12]) + (" ..." if len(items) > 12 else ""))
        raise WeightFileError("\n".join(lines))
    check_finite_weights(state_dict, what)
    module.load_state_dict(state_dict, strict=True, assign=assign)


# ----------------------------------------------------------------------------------------------
# finding the files of a release


def _step(path: Path) -> int:
    m = re.search(r"(\d+)(?=\.[a-z]+$)", path.name)
    return int(m.group(1)) if m else -1


def find_weight_file(folder: Path) -> Path | None:
    """Newest checkpoint in a folder (highest step in its name); safetensors preferred per stem."""
    if not folder.is_dir():
        return None
    files = [p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    if not files:
        return None
    by_stem: dict[str, Path] = {}
    for p in files:
        if p.stem not in by_stem or p.suffix == ".safetensors":
            by_stem[p.stem] = p
    return max(by_stem.values(), key=lambda p: (_step(p), p.name))


def _first_dir(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_dir()), None)


@dataclass
class ReleasePaths:
    root: Path
    renderer: Path | None = None
    renderer_config: Path | None = None
    mask_generator: Path | None = None
    base: Path | None = None
    clip: Path | None = None
    text_model: Path | None = None
    lpips: Path | None = None
    notes: list[str] = field(default_factory=list)

    def require(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise WeightFileError(f"{self.root}: cannot find {', '.join(missing)}; expected the layout "
                                  "renderer/ckpt/*.ckpt, renderer/config.yaml, RP/*.ckpt, base/ (diffusers SD1.5 "
                                  "folder), clip/ (CLIP ViT-B/32), optional TP_llava/ and lpips/")


# How a starter model paints (see PaintSettings), each chosen on validation processes (synthetic seeds 3000 and
# 4000, never the benchmark's; training/README.md):
# ``compare_to = reconstruction``: its small VAE cannot reproduce the target within the release's thresholds;
# measured against the target, the loop would never see a finished region.
# ``reask = 16``: its text generator keeps naming a region the mask generator finds finished, or one its renderer
# no longer changes, and the loop stalls with other regions unpainted; re-asking it for its next answers paints
# better; with 16 next answers rather than 4, none of 40 validation paintings stopped with regions unpainted
# (4: 3 of 40; LPIPS and DDC better, training/README.md).
# ``finish_frames = 2``: the time-lapse ends on the painting itself (2 cross-fading keyframes after the stop);
# a presentation choice: the benchmark and the validation runs score the model's own keyframes without them.
STARTER_PAINT_DEFAULTS = {"compare_to": "reconstruction", "reask": 16, "finish_frames": 2,
                          # guidance (image, canvas, time, mask, text) all 1: the full-condition prediction alone
                          "scales": [1.0, 1.0, 1.0, 1.0, 1.0]}
# paint_defaults added after the first starter builds, with what a folder that does not name them painted with
PAINT_DEFAULTS_BEFORE = {"scales": [2.0, 1.0, 5.0, 5.0, 5.0]}
# paint_defaults of earlier starter builds that a later model or loop made unnecessary, with the release value
# that such a folder may still name; any other value is refused (the folder painted differently then)
RETIRED_PAINT_DEFAULTS = {"denoise": 1.0, "start_from": "canvas", "keep_unmasked": False,
                          "difference_fallback": False, "stop_stalled": 0}
# what replaced each, for the refusal
_PURE_NOISE = "the starter recipe's renderer now paints from pure noise"
RETIRED_BECAUSE = {"denoise": _PURE_NOISE, "start_from": _PURE_NOISE, "keep_unmasked": _PURE_NOISE,
                   "difference_fallback": _PURE_NOISE,
                   "stop_stalled": "the loop now re-asks the text generator after a keyframe that changed nothing "
                                   "(reask), and stops when no answer it offers would change the canvas"}


def without_retired(settings: dict) -> tuple[dict, dict]:
    """(``settings`` without the retired choices, those of them not at the release's value): a model folder or
    a run recorded before they were retired painted as now only when the second is empty."""
    kept = {k: v for k, v in settings.items() if k not in RETIRED_PAINT_DEFAULTS}
    return kept, {k: settings[k] for k in RETIRED_PAINT_DEFAULTS if k in settings
                  and settings[k] != RETIRED_PAINT_DEFAULTS[k]}


def read_json(path: Path, what: str = "file") -> dict:
    """A JSON object from ``path``, or :class:`WeightFileError` naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WeightFileError(f"{path}: cannot read this {what} as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise WeightFileError(f"{path}: this {what} must hold a JSON object, not {type(data).__name__}")
    return data


def read_yaml(path: Path, what: str = "file") -> dict:
    """A YAML mapping from ``path`` (empty file: {}), or :class:`WeightFileError` naming the file."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightFileError(f"{path}: cannot read this {what} as YAML ({first})") from None
    if not isinstance(data, dict):
        raise WeightFileError(f"{path}: this {what} must hold a YAML mapping, not {type(data).__name__}")
    return data


def needs_fp32(folder) -> bool:
    """A starter's networks (``starter.json`` in the folder or, for its TP_llava, the one above) were trained from
    scratch in fp32 and overflow fp16 (measured: NaN in the ReferenceNet's features); they are small, so the
    automatic precision keeps them in fp32. Released weights (SD1.5-based) run in fp16 as the release does."""
    folder = Path(folder)
    return (folder / "starter.json").is_file() or (folder.parent / "starter.json").is_file()


def paint_defaults(root) -> dict:
    """Painting settings a model folder asks for; empty for released models (the release's defaults).

    A starter (``starter.json``, see training/starter.py) paints at its training size with
    ``starter.json["paint_defaults"]`` (default :data:`STARTER_PAINT_DEFAULTS`).
    """
    info = Path(root) / "starter.json"
    if not info.is_file():
        return {}
    rec = read_json(info, "starter record")
    try:
        size = int(rec["options"]["size"])
        own = dict(rec.get("paint_defaults", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightFileError(f"{info}: not a starter record (options.size / paint_defaults: {exc!r})") from None
    own, retired = without_retired(own)
    if retired:
        key, value = next(iter(retired.items()))
        raise WeightFileError(f"{info}: paint_defaults {key!r} was retired ({RETIRED_BECAUSE[key]}), but this "
                              f"folder asks for {key} = {value!r}; rebuild it with training/starter.py, or remove "
                              f"{key!r} from paint_defaults to paint it as the recipe does now (an older model may "
                              "paint worse that way)")
    return {"short_side": size, **STARTER_PAINT_DEFAULTS, **PAINT_DEFAULTS_BEFORE, **own}


def find_release(root) -> ReleasePaths:
    root = Path(root)
    if not root.is_dir():
        raise WeightFileError(f"model folder not found: {root}")
    paths = ReleasePaths(root)
    renderer_dir = _first_dir(root / "renderer" / "ckpt", root / "renderer" / "checkpoints",
                              root / "checkpoints" / "renderer" / "ckpt")
    if renderer_dir is not None:
        paths.renderer = find_weight_file(renderer_dir)
        cfg = renderer_dir.parent / "config.yaml"
        paths.renderer_config = cfg if cfg.is_file() else None
    rp_dir = _first_dir(root / "RP" / "ckpt", root / "RP" / "checkpoints", root / "RP",
                        root / "checkpoints" / "RP")
    if rp_dir is not None:
        paths.mask_generator = find_weight_file(rp_dir)
    paths.base = _first_dir(root / "base", root / "base_ckpt" / "realisticVisionV51_v51VAE")
    if paths.base is None and (root / "base_ckpt").is_dir():  # any diffusers folder under base_ckpt/
        paths.base = next((d for d in sorted((root / "base_ckpt").iterdir()) if (d / "unet" / "config.json").is_file()), None)
    paths.clip = _first_dir(root / "clip", root / "base_ckpt" / "clip-vit-base-patch32")
    paths.text_model = _first_dir(root / "TP_llava", root / "checkpoints" / "TP_llava", root / "text")
    paths.lpips = _first_dir(root / "lpips")
    return paths


def _check_weight_header(path: Path) -> None:
    """Cheap readability check of a weight file (header / zip directory only, no tensor is read)."""
    try:
        if path.stat().st_size == 0:
            raise WeightFileError(f"{path}: the file is empty")
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                if not list(f.keys()):
                    raise WeightFileError(f"{path}: holds no tensors")
        elif path.suffix in (".ckpt", ".pt", ".pth"):
            import zipfile

            # torch's format is a zip archive (its directory sits at the end: a truncated file has none); the old
            # format is a bare pickle, which can only be checked by reading it
            with open(path, "rb") as f:
                magic = f.read(2)
            if magic == b"PK":
                if not zipfile.is_zipfile(path):
                    raise WeightFileError(f"{path}: truncated or damaged (its zip directory is missing)")
                with zipfile.ZipFile(path) as z:
                    if not any(n.endswith("data.pkl") for n in z.namelist()):
                        raise WeightFileError(f"{path}: a zip file, but not a torch checkpoint")
            elif magic[:1] != b"\x80":
                raise WeightFileError(f"{path}: not a torch checkpoint (neither a zip archive nor a pickle)")
    except WeightFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated headers, zip errors, permissions
        raise WeightFileError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None


def inspect_release(root, renderer: bool = True, mask_generator: bool = True) -> ReleasePaths:
    """The model folder's layout checked without loading a network: the parts needed are present, configs
    parse, weight files open. Raises :class:`WeightFileError` naming what is missing or broken."""
    paths = find_release(root)
    paths.require("base", "clip", *(["renderer"] if renderer else []), *(["mask_generator"] if mask_generator else []))
    for sub, marker in (("vae", "config.json"), ("text_encoder", "config.json"), ("tokenizer", None),
                        ("unet", "config.json")):
        d = paths.base / sub
        if not d.is_dir() or (marker and not (d / marker).is_file()):
            raise WeightFileError(f"{paths.base}: {sub}/{marker or ''} is missing (a diffusers SD1.5 folder has unet/, "
                                  "vae/, text_encoder/ and tokenizer/)")
    if not (paths.clip / "config.json").is_file():
        raise WeightFileError(f"{paths.clip}: config.json is missing (expected openai/clip-vit-base-patch32)")
    read_unet_config(paths.base)
    read_json(paths.clip / "config.json", "CLIP config")
    for sub in ("vae", "text_encoder"):
        read_json(paths.base / sub / "config.json", f"{sub} config")
    read_renderer_config(paths.renderer_config)
    paint_defaults(paths.root)
    for f in (paths.renderer if renderer else None, paths.mask_generator if mask_generator else None):
        if f is not None:
            _check_weight_header(f)
    return paths


def read_renderer_config(path: Path | None) -> dict:
    """The renderer's training config; only the six fields inference needs are required."""
    cfg = dict(CONFIG_DEFAULTS)
    if path is not None:
        cfg.update(read_yaml(path, "renderer config"))
    # not a key of the release's config (epsilon); the starter model writes v_prediction
    if cfg.setdefault("prediction_type", "epsilon") not in PREDICTION_TYPES:
        raise WeightFileError(f"renderer config: prediction_type {cfg['prediction_type']!r} is not supported "
                              f"({' or '.join(PREDICTION_TYPES)})")
    # nor is this one (the starter's renderer sets it; models/reference_attention.py)
    if not isinstance(cfg.setdefault("reference_position_encoding", False), bool):
        raise WeightFileError("renderer config: reference_position_encoding must be true or false, "
                              f"not {cfg['reference_position_encoding']!r}")
    # nor this one: the target's latents as extra UNet input channels (models/renderer_unet.py); absent = off
    if not isinstance(cfg.setdefault("target_input", False), bool):
        raise WeightFileError(f"renderer config: target_input must be true or false, not {cfg['target_input']!r}")
    if cfg.get("PE_type") != "abs":
        raise WeightFileError(f"renderer config: PE_type {cfg.get('PE_type')!r} is not supported (only 'abs')")
    return cfg


def read_unet_config(base: Path) -> dict:
    path = base / "unet" / "config.json"
    if not path.is_file():
        raise WeightFileError(f"UNet config not found: {path}")
    return read_json(path, "UNet config")


def unet_config_for(state_dict: dict, base_config: dict) -> dict:
    """Base UNet config with channel counts and context width taken from the checkpoint's shapes."""
    cfg = {k: v for k, v in base_config.items() if not k.startswith("_")}
    cfg["in_channels"] = int(state_dict["conv_in.weight"].shape[1])
    if "conv_out.weight" in state_dict:
        cfg["out_channels"] = int(state_dict["conv_out.weight"].shape[0])
    attn2 = next((k for k in state_dict if k.endswith("attn2.to_k.weight")), None)
    if attn2 is not None:
        cfg["cross_attention_dim"] = int(state_dict[attn2].shape[1])
    return cfg
