"""Writing a painting process: PNG frames, animated WebP, MP4 and the JSON manifest.

Frames are named ``{k:04d}_{m}m{ss:02d}s.png`` (frame 0 is the start canvas at 0:00); the manifest lists
every frame with its time, instruction, mask area and LPIPS to the target, plus the seed and settings.
Videos are marked as AI reconstructions in their metadata. Files are written to a temporary name and
renamed, so an interrupted run never leaves a half-written file under a final name.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

PROVENANCE = "AI reconstruction of a possible painting process (Inverse Painting); not a recording"


def frame_name(index: int, time_s: float) -> str:
    t = int(round(time_s))
    return f"{index:04d}_{t // 60}m{t % 60:02d}s.png"


def _atomic(path: Path, write) -> Path:
    tmp = path.with_name(path.name + ".partial" + path.suffix)
    write(tmp)
    tmp.replace(path)
    return path


def save_png(image: np.ndarray, path: Path, text: dict | None = None) -> Path:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, str(v))
    return _atomic(Path(path), lambda p: Image.fromarray(image).save(p, format="PNG", pnginfo=info))


def save_webp(frames: list[np.ndarray], path: Path, seconds_per_frame: float = 0.5, hold_last_s: float = 1.5,
              lossless: bool = False, quality: int = 90) -> Path:
    ims = [Image.fromarray(f) for f in frames]
    durations = [int(seconds_per_frame * 1000)] * (len(ims) - 1) + [int((seconds_per_frame + hold_last_s) * 1000)]

    def write(p):
        exif = Image.Exif()
        exif[0x010E] = PROVENANCE  # ImageDescription
        ims[0].save(p, format="WEBP", save_all=True, append_images=ims[1:], duration=durations, loop=0,
                    lossless=lossless, quality=quality, exif=exif)

    return _atomic(Path(path), write)


def save_mp4(frames: list[np.ndarray], path: Path, seconds_per_frame: float = 0.5, fps: int = 24,
             hold_last_s: float = 1.5, crf: int = 18) -> Path:
    """H.264 (yuv420p) through PyAV; odd sizes are padded to even, frames repeated to hold their time."""
    import av

    h, w = frames[0].shape[:2]
    H, W = h + h % 2, w + w % 2
    repeat = max(1, round(seconds_per_frame * fps))

    def write(p):
        with av.open(str(p), mode="w", format="mp4") as container:
            container.metadata["comment"] = PROVENANCE
            container.metadata["description"] = PROVENANCE
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            stream.options = {"crf": str(crf)}
            last = len(frames) - 1
            for i, f in enumerate(frames):
                if (H, W) != (h, w):
                    f = np.pad(f, ((0, H - h), (0, W - w), (0, 0)), mode="edge")
                n = repeat + (round(hold_last_s * fps) if i == last else 0)
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
                for _ in range(n):
                    for packet in stream.encode(vf):
                        container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    return _atomic(Path(path), write)


def write_process(out_dir, frames: list[np.ndarray], records: list[dict], settings: dict,
                  masks: list[np.ndarray] | None = None, video: tuple[str, ...] = ("webp", "mp4"),
                  seconds_per_frame: float = 0.5, extra: dict | None = None) -> dict:
    """Write frames (+ masks), videos and ``manifest.json``; returns the manifest.

    ``records[k]`` describes frame k (frame 0 = start canvas) and must hold ``time_s``.
    """
    out = Path(out_dir)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    entries = []
    for k, (frame, rec) in enumerate(zip(frames, records)):
        name = frame_name(k, rec["time_s"])
        save_png(frame, out / "frames" / name, {"Description": PROVENANCE, "instruction": rec.get("instruction", "")})
        entry = dict(rec, index=k, file=f"frames/{name}")
        if masks is not None and k < len(masks) and masks[k] is not None:
            (out / "masks").mkdir(exist_ok=True)
            save_png(masks[k], out / "masks" / name)
            entry["mask_file"] = f"masks/{name}"
        entries.append(entry)
    manifest = {"provenance": PROVENANCE, "settings": settings, "keyframes": entries, **(extra or {})}
    if "webp" in video:
        save_webp(frames, out / "timelapse.webp", seconds_per_frame)
        manifest["webp"] = "timelapse.webp"
    if "mp4" in video:
        save_mp4(frames, out / "timelapse.mp4", seconds_per_frame)
        manifest["mp4"] = "timelapse.mp4"
    _atomic(out / "manifest.json", lambda p: p.write_text(json.dumps(manifest, indent=2)))
    return manifest
