"""Writing a painting process: PNG frames, animated WebP, MP4 and the JSON manifest.

Frames are named ``{k:04d}_{m}m{ss:02d}s.png`` (frame 0 is the start canvas at 0:00); the manifest lists
every frame with its time, instruction, mask area and distances, plus the seed and settings. Videos are
marked as AI reconstructions in their metadata.

A run is written as it is painted (:class:`ProcessWriter`): every frame as soon as it exists, then the
manifest, so an interrupted run leaves a consistent folder (``"status": "painting"`` or ``"interrupted"``)
that can be resumed. Every file goes to a hidden temporary name (``.NAME.partial``, matched by no ``*.png``
glob) and is renamed into place, so no half-written file ever carries a final name. An output folder that
already holds files is refused unless the caller asks to overwrite (then only this tool's own files of the
earlier run are removed first, so two runs never mix) or to resume.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import OutputFolderError

PROVENANCE = "AI reconstruction of a possible painting process (Inverse Painting); not a recording"
MANIFEST = "manifest.json"
STATE_FILE = ".resume_state.safetensors"  # the loop's state after the last keyframe (core.loop.LoopState)
PROBE_PREFIX = ".write-test-"
LOCK_FILE = ".writing.lock"  # held (flock) by the one writer of a run folder while it writes
VIDEOS = {"webp": "timelapse.webp", "mp4": "timelapse.mp4"}
# the videos' long side at most: WebP and common H.264 levels refuse or choke past about this (a 6000x4000
# painting's frames failed in the WebP encoder), and the writer holds every video frame in memory
VIDEO_MAX_SIDE = 2048
FRAME_NAME = re.compile(r"^\d{4,}_\d+m\d{2}s\.png$")


def frame_name(index: int, time_s: float) -> str:
    t = int(round(time_s))
    return f"{index:04d}_{t // 60}m{t % 60:02d}s.png"


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, data) -> Path:
    return _atomic(Path(path), lambda p: p.write_text(json.dumps(data, indent=2), encoding="utf-8"))


def _own_files(out: Path) -> list[Path]:
    """This tool's files of a run in ``out``: manifest, videos, resume state, frames and masks by their names."""
    files = [out / n for n in (MANIFEST, STATE_FILE, LOCK_FILE, *VIDEOS.values())]
    for sub in ("frames", "masks"):
        if (out / sub).is_dir():
            files += [p for p in (out / sub).iterdir() if FRAME_NAME.match(p.name) or p.name.endswith(".partial")]
    return [p for p in files if p.is_file()]


RUN_HINT = "choose a new folder, or add --overwrite to replace the run in it (other files are kept), or --resume to continue it"


def prepare_output(out, mode: str = "new", what: str = "output folder", hint: str = RUN_HINT) -> Path:
    """Check that ``out`` can hold a run before any work is done, and make it ready.

    ``mode``: "new" refuses a folder that holds anything; "overwrite" removes this tool's files of an earlier run
    (never other files) so runs do not mix; "resume" keeps the run there. The folder is created, and a probe file
    written and removed, so a read-only or special location fails here, not after the painting.
    """
    out = Path(out)
    if mode not in ("new", "overwrite", "resume"):
        raise ValueError(f"mode must be new, overwrite or resume, not {mode!r}")
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{what} {out}: a file is in the way (give a folder path)")
    if mode == "new" and out.is_dir():
        try:  # another process's probe (below) is not content
            entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(PROBE_PREFIX))
        except OSError as exc:
            raise OutputFolderError(f"{what} {out}: cannot list it ({exc.strerror or exc})") from None
        if entries:
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise OutputFolderError(f"{what} {out} is not empty ({shown}): {hint}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f"{PROBE_PREFIX}{uuid.uuid4().hex}.partial"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise OutputFolderError(f"{what} {out}: cannot be created or written ({exc.strerror or exc})") from None
    if mode == "overwrite":
        for p in _own_files(out):
            p.unlink()
    return out


def _lock(out: Path):
    """An exclusive lock on the run folder ``out`` for this writer (released when it closes or the process ends),
    or :class:`OutputFolderError` when another process writes there; None where flock does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return None
    path = out / LOCK_FILE
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # the holder removes the file when it closes: a lock taken on a file already removed protects nothing
        if os.fstat(handle.fileno()).st_ino != os.stat(path).st_ino:
            raise OSError("lock file replaced")
    except OSError:
        handle.close()
        raise OutputFolderError(f"{out}: another run is writing to this folder right now") from None
    return handle


def folder_state(out: Path) -> tuple:
    """What a run folder holds, as far as a run's plan depends on it (its manifest's bytes, this tool's files):
    compared again once the folder is locked, so a run planned before another command wrote there never
    writes over that command's run."""
    import hashlib

    man = Path(out) / MANIFEST
    try:
        digest = hashlib.sha256(man.read_bytes()).hexdigest() if man.is_file() else None
    except OSError:
        digest = "unreadable"
    own = sorted(p.name for p in _own_files(Path(out)) if p.name != LOCK_FILE) if Path(out).is_dir() else []
    return digest, tuple(own)


def save_png(image: np.ndarray, path: Path, text: dict | None = None) -> Path:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, str(v))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _atomic(Path(path), lambda p: Image.fromarray(image).save(p, format="PNG", pnginfo=info))


def video_frame(frame: np.ndarray, max_side: int = VIDEO_MAX_SIDE) -> np.ndarray:
    """``frame`` as the videos show it: scaled down (Lanczos) when its long side is over ``max_side``."""
    frame = np.asarray(frame)
    h, w = frame.shape[:2]
    if max(h, w) <= max_side:
        return frame
    scale = max_side / max(h, w)
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.LANCZOS))


def save_webp(frames: list[np.ndarray], path: Path, seconds_per_frame: float = 0.5, hold_last_s: float = 1.5,
              lossless: bool = False, quality: int = 90) -> Path:
    ims = [Image.fromarray(video_frame(f)) for f in frames]
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

    frames = [video_frame(f) for f in frames]
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


class ProcessWriter:
    """Writes one painting process into ``out`` frame by frame (see the module docstring).

    ``add(frame, record, mask)`` writes frame k (+ its mask) and the manifest; ``save_state`` the loop state that
    ``--resume`` continues from; ``finish()`` the videos and the complete manifest; ``stop(reason)`` marks an
    interrupted run. ``resume(out)`` reopens a run written by an earlier writer.
    """

    def __init__(self, out, settings: dict, extra: dict | None = None, video: tuple[str, ...] = ("webp", "mp4"),
                 seconds_per_frame: float = 0.5, mode: str = "new"):
        unknown = set(video) - set(VIDEOS)
        if unknown:
            raise ValueError(f"unknown video formats {sorted(unknown)}; known: {sorted(VIDEOS)}")
        self.out = prepare_output(out, "new" if mode == "new" else "resume")
        self.settings, self.extra = settings, dict(extra or {})
        self.video, self.seconds_per_frame = tuple(video), float(seconds_per_frame)
        self.frames: list[np.ndarray] = []
        self.entries: list[dict] = []
        self.status = "painting"
        self._clear_first = mode == "overwrite"  # done under the lock, at the first write
        self._lock = None

    def _begin(self) -> None:
        """Before the first write: take the folder's lock, then (overwrite) remove the earlier run's files."""
        if self._lock is None:
            self._lock = _lock(self.out) or True
        if self._clear_first:
            for p in _own_files(self.out):
                if p.name != LOCK_FILE:
                    p.unlink()
            self._clear_first = False

    def close(self) -> None:
        """Release the folder (the lock file goes with it)."""
        if self._lock not in (None, True):
            (self.out / LOCK_FILE).unlink(missing_ok=True)
            self._lock.close()
        self._lock = None

    @property
    def count(self) -> int:
        return len(self.entries)

    def manifest(self) -> dict:
        return {"provenance": PROVENANCE, "status": self.status, "settings": self.settings, "keyframes": self.entries,
                **self.extra}

    def _write_manifest(self) -> dict:
        data = self.manifest()
        write_json(self.out / MANIFEST, data)
        return data

    def add(self, frame: np.ndarray, record: dict, mask: np.ndarray | None = None) -> dict:
        """Write frame ``self.count`` (``record`` must hold ``time_s``) and its mask, then the manifest (for frame 0
        also before it)."""
        self._begin()
        k = self.count
        if k == 0:  # a run stopped while writing its first frame still leaves a manifest to resume from
            self._write_manifest()
        name = frame_name(k, record["time_s"])
        save_png(frame, self.out / "frames" / name,
                 {"Description": PROVENANCE, "instruction": record.get("instruction", "")})
        entry = dict(record, index=k, file=f"frames/{name}")
        if mask is not None:
            save_png(mask, self.out / "masks" / name)
            entry["mask_file"] = f"masks/{name}"
        self.frames.append(video_frame(frame))
        self.entries.append(entry)
        self._write_manifest()
        return entry

    def save_state(self, tensors: dict, info: dict) -> None:
        """The loop's state after the frames written so far (tensors + JSON-able info), for ``resume``."""
        from safetensors.torch import save_file

        self._begin()
        meta = {"info": json.dumps(dict(info, frames=self.count))}
        _atomic(self.out / STATE_FILE, lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, str(p),
                                                           metadata=meta))

    def stop(self, reason: str) -> dict:
        """Mark the run as ended before its end (an interruption, an error); the frames so far stay valid."""
        self._begin()
        self.status = "interrupted"
        self.extra["stop_reason"] = reason
        data = self._write_manifest()
        self.close()
        return data

    def finish(self, extra: dict | None = None) -> dict:
        """Write the videos and the complete manifest; the resume state is removed."""
        self._begin()
        self.extra.update(extra or {})
        if self.frames:
            if "webp" in self.video:
                save_webp(self.frames, self.out / VIDEOS["webp"], self.seconds_per_frame)
                self.extra["webp"] = VIDEOS["webp"]
            if "mp4" in self.video:
                save_mp4(self.frames, self.out / VIDEOS["mp4"], self.seconds_per_frame)
                self.extra["mp4"] = VIDEOS["mp4"]
        self.status = "complete"
        data = self._write_manifest()
        (self.out / STATE_FILE).unlink(missing_ok=True)
        self.close()
        return data

    @classmethod
    def resume(cls, out, video: tuple[str, ...] = ("webp", "mp4"), seconds_per_frame: float = 0.5):
        """Reopen the run in ``out`` without changing it: (writer, manifest, state tensors, state info), the writer
        holding the frames up to the saved state (later entries are painted again: call :meth:`drop_unkept` once
        the run is known to go on). State is None when the run has none (nothing painted yet, or complete)."""
        out = Path(out)
        try:
            data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OutputFolderError(f"{out / MANIFEST}: cannot read the run to resume ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("keyframes"), list):
            raise OutputFolderError(f"{out / MANIFEST}: not a manifest of this tool")
        tensors, info = None, None
        if (out / STATE_FILE).is_file():
            from safetensors import safe_open

            try:
                with safe_open(str(out / STATE_FILE), framework="pt") as f:
                    info = json.loads((f.metadata() or {})["info"])
                    tensors = {k: f.get_tensor(k) for k in f.keys()}
            except Exception as exc:  # noqa: BLE001 - a damaged state file: say so, never guess
                raise OutputFolderError(f"{out / STATE_FILE}: the resume state is damaged ({exc})") from None
        keep = info["frames"] if info else min(1, len(data["keyframes"]))
        if data.get("status") == "complete":
            keep = len(data["keyframes"])
        if len(data["keyframes"]) < keep:
            raise OutputFolderError(f"{out}: the manifest lists {len(data['keyframes'])} frames but the resume state "
                                    f"needs {keep}; the folder was changed by hand")
        writer = cls.__new__(cls)
        writer.out = prepare_output(out, "resume")
        writer.settings = data.get("settings", {})
        writer.extra = {k: v for k, v in data.items()
                        if k not in ("provenance", "status", "settings", "keyframes", "webp", "mp4", "stop_reason")}
        writer.video, writer.seconds_per_frame = tuple(video), float(seconds_per_frame)
        writer.entries, writer.frames = [], []
        writer.status = data.get("status", "painting")
        writer._clear_first, writer._lock = False, None
        for entry in data["keyframes"][:keep]:
            rel = Path(str(entry.get("file", "")))
            path = (out / rel).resolve()
            if rel.is_absolute() or out.resolve() not in path.parents or not path.is_file():
                raise OutputFolderError(f"{out / MANIFEST}: frame {entry.get('file')!r} is missing or outside the run")
            with Image.open(path) as im:
                writer.frames.append(video_frame(np.asarray(im.convert("RGB"))))
            writer.entries.append(entry)
        return writer, data, tensors, info

    def drop_unkept(self) -> None:
        """Before a resumed run goes on: remove what an interruption left beyond the saved state (frames painted
        again, writes cut short by a kill), so that nothing of the interrupted attempt mixes with the new frames."""
        self._begin()
        for leftover in [*self.out.glob(".*.partial"), *self.out.glob("*/.*.partial")]:
            leftover.unlink()
        kept = {e.get(k) for e in self.entries for k in ("file", "mask_file")}
        for stale in _own_files(self.out):
            rel = stale.relative_to(self.out).as_posix()
            if rel.startswith(("frames/", "masks/")) and rel not in kept:
                stale.unlink()


def write_process(out_dir, frames: list[np.ndarray], records: list[dict], settings: dict,
                  masks: list[np.ndarray] | None = None, video: tuple[str, ...] = ("webp", "mp4"),
                  seconds_per_frame: float = 0.5, extra: dict | None = None, overwrite: bool = False) -> dict:
    """Write a whole process at once (frames + masks, videos, ``manifest.json``); returns the manifest.

    ``records[k]`` describes frame k (frame 0 = start canvas) and must hold ``time_s``. ``out_dir`` must be empty
    or new, unless ``overwrite`` (then an earlier run's files there are removed first).
    """
    writer = ProcessWriter(out_dir, settings, extra, video, seconds_per_frame, "overwrite" if overwrite else "new")
    for k, (frame, rec) in enumerate(zip(frames, records)):
        mask = masks[k] if masks is not None and k < len(masks) else None
        writer.add(frame, rec, mask)
    return writer.finish()
