"""Output nodes: save a painting process to disk, and draw its time map.

``InversePaintingSaveProcess`` writes through :func:`..core.export.write_process` (PNG frames and
masks, animated WebP, H.264 MP4 via PyAV, ``manifest.json``), all marked as AI reconstructions.
``InversePaintingTimeMap`` colours each pixel by the keyframe that last changed it (paper Fig. 10),
through :func:`..evaluation.time_map.time_map`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..core.export import write_process
from . import comfy_bridge as cb
from .convert import NodeInputError, finite_input, images_to_uint8, mask_to_batch, uint8_to_image
from .model_nodes import CATEGORY

VIDEO_FORMATS = ["webp + mp4", "webp", "mp4", "none (PNG frames only)"]
_VIDEO = {"webp + mp4": ("webp", "mp4"), "webp": ("webp",), "mp4": ("mp4",), "none (PNG frames only)": ()}


def output_root() -> Path:
    """ComfyUI's output folder; outside ComfyUI $INVERSE_PAINTING_OUTPUT or ./output."""
    fp = cb.folder_paths()
    if fp is not None:
        return Path(fp.get_output_directory())
    return Path(os.environ.get("INVERSE_PAINTING_OUTPUT", "output"))


def _safe_prefix(prefix: str) -> tuple[str, str]:
    """'a/b/name' -> ('a/b', 'name'), refusing absolute paths and '..' (the folder must stay in output/)."""
    prefix = (prefix or "inverse_painting").replace("\\", "/").strip("/")
    parts = [p for p in prefix.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or os.path.isabs(prefix):
        raise NodeInputError(f"filename_prefix {prefix!r} must be a relative name inside the output folder")
    if any(ord(c) < 32 for c in prefix):
        raise NodeInputError(f"filename_prefix {prefix!r} holds control characters (a file name cannot)")
    # a folder name has at most 255 bytes on common file systems, and the run number (_00001) is added to the last
    long = [p for p in parts[:-1] if len(p.encode("utf-8")) > 255] + \
        [p for p in parts[-1:] if len(p.encode("utf-8")) > 240]
    if long:
        raise NodeInputError(f"filename_prefix: the part {long[0][:40]!r}... is {len(long[0].encode('utf-8'))} bytes "
                             "long; folder names hold at most 240 (255 with the run number)")
    return "/".join(parts[:-1]), parts[-1]


def next_run_dir(root: Path, prefix: str) -> tuple[Path, str]:
    """A new folder <root>/<sub>/<name>_NNNNN (numbered like ComfyUI's own saves); returns (path, subfolder)."""
    sub, name = _safe_prefix(prefix)
    parent = root / sub
    parent.mkdir(parents=True, exist_ok=True)
    pat = re.compile(re.escape(name) + r"_(\d{5})$")
    used = [int(m.group(1)) for p in parent.iterdir() if (m := pat.match(p.name))]
    n = max(used, default=0) + 1
    while True:
        run = parent / f"{name}_{n:05d}"
        try:
            run.mkdir()
            return run, "/".join(x for x in (sub, run.name) if x)
        except FileExistsError:  # another save took the number meanwhile
            n += 1


def _records(n: int, instructions: str, timeline: dict | None, interval_s: float) -> tuple[list[dict], dict]:
    """Per-frame records (time_s, instruction, ...) from the timeline when it matches, else from the inputs."""
    if timeline and isinstance(timeline.get("frames"), list) and len(timeline["frames"]) == n:
        return [dict(r) for r in timeline["frames"]], timeline.get("settings", {})
    lines = (instructions or "").split("\n") if instructions else []
    recs = [{"time_s": float(k * interval_s), "instruction": lines[k].strip() if k < len(lines) else ""}
            for k in range(n)]
    return recs, {"interval_s": interval_s}


class InversePaintingSaveProcess:
    DESCRIPTION = ("Saves a painting process: numbered PNG frames (and masks), an animated WebP and/or an H.264 MP4, "
                   "and manifest.json with every frame's time, instruction and settings. All files are marked as an "
                   "AI reconstruction, not a recording. Frames also work with any video node (e.g. VHS Video "
                   "Combine).")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("folder",)
    OUTPUT_TOOLTIPS = ("The folder the process was written to.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": ("IMAGE", {"tooltip": "Frames in order, the start canvas first (Time-lapse 'frames')."}),
            "filename_prefix": ("STRING", {"default": "inverse_painting/process", "tooltip": "Sub-folder/name "
                                           "inside ComfyUI's output folder; a numbered folder is created per run."}),
            "video_format": (VIDEO_FORMATS, {"default": VIDEO_FORMATS[0], "tooltip": "Videos to write besides the "
                                             "PNG frames (MP4 needs PyAV, which ComfyUI already uses)."}),
            "seconds_per_frame": ("FLOAT", {"default": 0.5, "min": 0.04, "max": 10.0, "step": 0.02,
                                            "tooltip": "How long each keyframe is shown in the videos (the last "
                                                       "one is held 1.5 s longer)."}),
            "save_masks": ("BOOLEAN", {"default": True, "tooltip": "Also write the masks as PNGs (when given)."}),
        }, "optional": {
            "masks": ("MASK", {"tooltip": "Per-frame masks (Time-lapse 'masks')."}),
            "instructions": ("STRING", {"forceInput": True, "tooltip": "One instruction per frame, one per line."}),
            "timeline": ("STRING", {"forceInput": True, "tooltip": "The Time-lapse JSON timeline: its per-frame "
                                    "records and settings go into the manifest."}),
            "interval": ("FLOAT", {"default": 20.0, "min": 0.0, "max": 3600.0, "tooltip": "Seconds between frames, "
                                   "for file names and the manifest when no timeline is connected."}),
        }, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save(self, frames, filename_prefix="inverse_painting/process", video_format=VIDEO_FORMATS[0],
             seconds_per_frame=0.5, save_masks=True, masks=None, instructions="", timeline="", interval=20.0,
             prompt=None, extra_pnginfo=None):
        if video_format not in _VIDEO:
            raise NodeInputError(f"video_format must be one of {VIDEO_FORMATS}, got {video_format!r}")
        seconds_per_frame = finite_input(seconds_per_frame, "seconds_per_frame", 0.04, 10.0)
        interval = finite_input(interval, "interval", 0, 3600)
        imgs = images_to_uint8(frames, "frames")
        n = len(imgs)
        if n == 0:
            raise NodeInputError("frames: the batch is empty, nothing to save")
        tl = None
        if timeline:
            try:
                tl = json.loads(timeline)
            except ValueError as exc:
                raise NodeInputError(f"timeline is not valid JSON: {exc}") from exc
            if not isinstance(tl, dict):
                raise NodeInputError("timeline: expected the Time-lapse node's JSON object")
        records, settings = _records(n, instructions, tl, float(interval))
        mask_list = None
        if masks is not None and save_masks:
            mb = mask_to_batch(masks)
            if mb.shape[0] != n:
                raise NodeInputError(f"{mb.shape[0]} masks for {n} frames")
            mask_list = [((m.numpy() > 0.5).astype(np.uint8) * 255) for m in mb]
        run_dir, subfolder = next_run_dir(output_root(), filename_prefix)
        extra = {"ai_reconstruction": True, "frame_count": n, "size": list(imgs[0].shape[:2])}
        if tl:
            extra["timeline"] = {k: v for k, v in tl.items() if k != "frames"}
        if prompt is not None:  # like ComfyUI's own saves: the graph that made the files
            extra["comfyui_prompt"] = prompt
        if extra_pnginfo and "workflow" in extra_pnginfo:
            extra["comfyui_workflow"] = extra_pnginfo["workflow"]
        manifest = write_process(run_dir, imgs, records, settings, masks=mask_list, video=_VIDEO[video_format],
                                 seconds_per_frame=float(seconds_per_frame), extra=extra)
        if "webp" in manifest:
            ui = {"images": [{"filename": manifest["webp"], "subfolder": subfolder, "type": "output"}],
                  "animated": (True,)}
        else:
            last = manifest["keyframes"][-1]["file"]
            ui = {"images": [{"filename": Path(last).name, "subfolder": f"{subfolder}/frames", "type": "output"}]}
        return {"ui": ui, "result": (str(run_dir),)}


TIME_MAP_METHODS = ["masks", "stlpips_alex", "lpips_alex", "pixel"]
COLORMAPS = ["viridis", "plasma", "inferno", "magma", "turbo", "cividis"]


class InversePaintingTimeMap:
    DESCRIPTION = ("Time map (paper Fig. 10): colours every pixel by the keyframe that last changed it, early to "
                   "late; white where nothing changed. Change = the given masks, or a perceptual (or pixel) "
                   "difference between consecutive frames above the threshold.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("time_map", "last_change")
    OUTPUT_TOOLTIPS = ("The coloured time map.",
                       "Index of the last change per pixel divided by the number of keyframes (0 = never).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": ("IMAGE", {"tooltip": "Frames in order, the start canvas first."}),
            "method": (TIME_MAP_METHODS, {"default": TIME_MAP_METHODS[0], "tooltip": "masks: use the 'masks' input "
                                          "(the painted regions); stlpips_alex / lpips_alex: perceptual difference "
                                          "of consecutive frames (lpips_alex needs the ImageNet AlexNet file in "
                                          "models/inverse_painting/lpips/); pixel: max RGB difference (no network)."}),
            "threshold": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 2.0, "step": 0.01, "tooltip": "Change "
                                    "threshold for the difference methods (paper: 0.2)."}),
            "colormap": (COLORMAPS, {"default": "viridis", "tooltip": "Colour ramp from early to late keyframes "
                                     "(needs matplotlib; otherwise a blue-to-red ramp)."}),
        }, "optional": {
            "masks": ("MASK", {"tooltip": "Per-frame masks (Time-lapse 'masks'; mask k belongs to frame k)."}),
        }}

    def run(self, frames, method="masks", threshold=0.2, colormap="viridis", masks=None):
        from ..evaluation.time_map import time_map

        threshold = finite_input(threshold, "threshold", 0)
        imgs = images_to_uint8(frames, "frames")
        n = len(imgs)
        change = None
        metric = method
        if method == "masks":
            if masks is None:
                raise NodeInputError("method 'masks' needs the masks input (or choose a difference method)")
            mb = mask_to_batch(masks)
            if mb.shape[0] not in (n, n - 1):
                raise NodeInputError(f"{mb.shape[0]} masks for {n} frames (expected {n} or {n - 1})")
            change = [m.numpy() > 0.5 for m in mb]
        elif method in ("stlpips_alex", "lpips_alex"):
            from .metrics import standalone_metric

            metric = standalone_metric(method, torch.device("cpu"))
        elif method != "pixel":
            raise NodeInputError(f"method must be one of {TIME_MAP_METHODS}, got {method!r}")
        tm = time_map(imgs, threshold=float(threshold), metric=metric, masks=change, cmap=colormap)
        last = torch.from_numpy(tm.index.astype(np.float32) / max(n - 1, 1))[None]
        return (uint8_to_image(tm.image), last)

