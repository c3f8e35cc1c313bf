"""Perceptual metrics for the nodes: where their weight files are looked for, and the standalone metric.

``stlpips_alex`` always loads (its weights come with the stlpips-pytorch requirement). ``lpips_alex``, the
release's metric, needs two files the pack cannot download: torchvision's ImageNet AlexNet trunk and the
LPIPS v0.1 heads (found in the ``lpips`` package when it is installed). They are looked for in
``models/inverse_painting/lpips/``, then in the ``lpips/`` folder of any model folder. ``auto`` picks
``lpips_alex`` when both are there (for a loaded model: in its own folder), else ``stlpips_alex``, so the
default works on every install.

The standalone metric (Difference Mask without a model, Time Map, Evaluate) goes to its device through
:class:`.comfy_bridge.ManagedModules`, like the loaders' networks.
"""
from __future__ import annotations

import threading
from pathlib import Path

import torch

from ..models.lpips_net import (BACKBONE_FILENAMES, HEADS_FILENAMES, LPIPS_ALEX, LPIPS_HEADS_IN_WHEEL,
                                STLPIPS_ALEX, MissingWeightsError, load_perceptual_metric, package_file)
from . import comfy_bridge as cb

AUTO = "auto"
METRIC_CHOICES = [AUTO, LPIPS_ALEX, STLPIPS_ALEX]
LPIPS_FOLDER = "lpips"  # models/inverse_painting/lpips/ (or <model folder>/lpips/)
MISSING_LPIPS_ALEX = (
    "lpips_alex needs torchvision's ImageNet AlexNet file alexnet-owt-7be5be79.pth (and the LPIPS heads alex.pth "
    f"unless the lpips package is installed) in ComfyUI/models/{cb.MODEL_FOLDER}/{LPIPS_FOLDER}/ or in a model "
    "folder's lpips/; choose 'auto' or 'stlpips_alex' to work without them.")

_cache: dict = {}
_lock = threading.Lock()


def lpips_dirs(first: Path | None = None) -> list[Path]:
    """Folders that may hold LPIPS weights: ``first`` (a loaded release's lpips/), then ``<root>/lpips`` and
    ``<root>/<model folder>/lpips`` of every model root."""
    dirs = [first] if first is not None else []
    for root in cb.model_roots():
        if root.is_dir():
            dirs.append(root / LPIPS_FOLDER)
            dirs += [d / LPIPS_FOLDER for d in sorted(root.iterdir()) if d.is_dir()]
    seen, out = set(), []
    for d in dirs:
        if d.is_dir() and str(d.resolve()) not in seen:
            seen.add(str(d.resolve()))
            out.append(d)
    return out


def _has(folder: Path, names) -> bool:
    return any((folder / n).is_file() for n in names)


def alexnet_dir(dirs: list[Path]) -> Path | None:
    """The first of ``dirs`` from which lpips_alex can load (AlexNet trunk there, heads there or in the lpips
    package), or None."""
    heads_installed = package_file(*LPIPS_HEADS_IN_WHEEL) is not None
    for d in dirs:
        if d is not None and d.is_dir() and _has(d, BACKBONE_FILENAMES) and (heads_installed or
                                                                               _has(d, HEADS_FILENAMES)):
            return d
    return None


def resolve(name: str, release_lpips: Path | None = None, model: bool = False) -> tuple[str, Path | None]:
    """(metric name, weights folder) for a node's choice.

    ``auto`` -> lpips_alex where it can load, else stlpips_alex; for a loaded ``model`` only its own
    ``release_lpips`` counts (a model trained with ST-LPIPS, like the starter, keeps it). ``lpips_alex``
    without its files raises the one-sentence :data:`MISSING_LPIPS_ALEX`.
    """
    if name not in METRIC_CHOICES:
        raise ValueError(f"unknown perceptual metric {name!r}; choose one of {METRIC_CHOICES}")
    if name == STLPIPS_ALEX:
        return name, None
    if name == AUTO:
        found = alexnet_dir([release_lpips] if model else lpips_dirs(release_lpips))
        return (LPIPS_ALEX, found) if found is not None else (STLPIPS_ALEX, None)
    found = alexnet_dir(lpips_dirs(release_lpips))
    if found is None:
        raise MissingWeightsError(MISSING_LPIPS_ALEX)
    return LPIPS_ALEX, found


def load(name: str, weights_dir: Path | None):
    """Build a metric (CPU, eval mode); an lpips_alex that still fails to load gets the one-sentence message."""
    try:
        return load_perceptual_metric(name, weights_dir=weights_dir)
    except MissingWeightsError as exc:
        if name == LPIPS_ALEX:
            raise MissingWeightsError(MISSING_LPIPS_ALEX) from exc
        raise


def standalone_metric(name: str, device: torch.device):
    """A perceptual metric without a loaded model, on ``device`` through ComfyUI's memory manager (cached)."""
    metric_name, weights_dir = resolve(name)
    key = (metric_name, str(weights_dir), str(device))
    with _lock:
        entry = _cache.get(key)
    if entry is None:
        metric = load(metric_name, weights_dir)
        entry = (metric, cb.ManagedModules({"perceptual_metric": metric}, device))
        with _lock:
            _cache[key] = entry
    metric, managed = entry
    managed.ensure_loaded()
    return metric
