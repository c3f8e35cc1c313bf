"""Reading painting processes (real or generated) from frame folders.

A :class:`PaintingSequence` is a list of uint8 HWC RGB frames with time stamps in seconds (the clock starts
at the blank canvas, t = 0), plus optional per-frame instructions and masks. Two layouts are read:

* the **official raw layout** (``data/<root>/<split>/rgb/<video>/``): frames ``{ind}_{m:ss}.jpg`` and
  ``last_aligned_frame_inv.json`` = {target frame name: [earlier frame names in temporal order]}. Each key
  gives one sequence: the listed frames then the target, times parsed from the names (``m:ss`` is the time
  in the source video; ``m-ss`` is accepted for file systems that forbid colons). Without the JSON, all
  frames of the folder are used in time order. Our ``labels.json`` (synthetic data) gives instructions.
* **our CLI output**: ``manifest.json`` listing keyframes (``time_s``, ``file``, ``instruction``, optional
  ``mask``) plus frames ``{k:04d}_{m}m{ss:02d}s.png``; without a manifest the names alone are parsed.

:func:`load_sequences` accepts one painting folder or a tree of them and returns {name: sequence}.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import UserInputError
from ..training.raw_layout import INV_JSON as RAW_JSON
from ..training.raw_layout import LABELS_JSON
from ..training.raw_layout import parse_frame_name as raw_parse_frame_name

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MANIFEST = "manifest.json"

# "{k:04d}_{m}m{ss:02d}s" (our export); the official "{ind}_{m:ss}" is parsed by training.raw_layout
OURS_NAME = re.compile(r"^(?P<ind>\d+)_(?P<m>\d+)m(?P<s>\d{2})s$")


class SequenceError(UserInputError):
    """A painting folder that cannot be read as a process; the message names the folder or file."""


@dataclass
class PaintingSequence:
    name: str
    frames: list  # uint8 (H, W, 3)
    times_s: list  # float seconds, non-decreasing; the blank canvas is t = 0
    instructions: list | None = None  # str per frame (None where unknown)
    masks: list | None = None  # per frame: bool (H, W) region painted to reach this frame, or None
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.frames) != len(self.times_s):
            raise SequenceError(f"{self.name}: {len(self.frames)} frames but {len(self.times_s)} time stamps")
        if len(self.frames) == 0:
            raise SequenceError(f"{self.name}: no frames")
        try:
            times = [float(t) for t in self.times_s]
        except (TypeError, ValueError):
            raise SequenceError(f"{self.name}: time stamps must be numbers of seconds: {self.times_s}") from None
        if not all(math.isfinite(t) and t >= 0 for t in times):
            raise SequenceError(f"{self.name}: time stamps must be finite seconds >= 0: {self.times_s}")
        if any(b < a for a, b in zip(times, times[1:])):
            raise SequenceError(f"{self.name}: time stamps are not in order: {self.times_s}")
        self.times_s = times

    def __len__(self):
        return len(self.frames)

    @property
    def duration_s(self) -> float:
        """Painting duration: time of the last frame (the clock starts at the blank canvas)."""
        return self.times_s[-1]

    @property
    def target(self) -> np.ndarray:
        return self.frames[-1]

    @classmethod
    def from_frames(cls, name, frames, times_s=None, interval_s: float = 20.0, **kw) -> "PaintingSequence":
        """Frames with explicit times, or evenly spaced by ``interval_s`` starting at 0."""
        frames = [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]
        if times_s is None:
            times_s = [interval_s * i for i in range(len(frames))]
        return cls(name, frames, list(times_s), **kw)


def format_mss(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}:{s % 60:02d}"


def parse_frame_name(stem: str) -> tuple[int, float] | None:
    """(index, seconds) from an official ``{ind}_{m:ss}`` (or ``m-ss``) or our ``{k:04d}_{m}m{ss}s``
    stem, else None."""
    m = OURS_NAME.match(stem)
    if m:
        return int(m["ind"]), float(int(m["m"]) * 60 + int(m["s"]))
    try:
        return raw_parse_frame_name(stem)
    except ValueError:
        return None


def read_image(path) -> np.ndarray:
    """A frame as uint8 RGB, read like the painter reads its input (EXIF, 16-bit and float scaled, alpha on white)."""
    from ..core.imaging import ImageInputError, load_image

    try:
        return load_image(path)[0]
    except ImageInputError as exc:
        raise SequenceError(str(exc)) from None


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SequenceError(f"{path}: cannot read it as JSON ({exc})") from None


def _inside(folder: Path, name, what: str) -> Path:
    """``folder / name`` for a manifest entry, refused when it points outside ``folder`` (absolute, '..', links)."""
    rel = Path(str(name))
    path = (folder / rel).resolve()
    if rel.is_absolute() or folder.resolve() not in path.parents:
        raise SequenceError(f"{folder / MANIFEST}: {what} {str(name)!r} points outside the painting folder; only files "
                            "inside it are read")
    return path


def read_mask(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("L")) > 127


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _find_frame(folder: Path, name: str) -> Path:
    p = folder / name
    if p.is_file():
        return p
    stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTS else name
    for ext in IMAGE_EXTS:
        for cand in (stem, stem.replace(":", "-"), stem.replace(":", "_")):
            q = folder / f"{cand}{ext}"
            if q.is_file():
                return q
    raise SequenceError(f"frame {name!r} listed in {folder / RAW_JSON} not found")


# ---------------------------------------------------------------------------------------------- layouts


def read_raw_layout(folder) -> list[PaintingSequence]:
    """Official raw layout: one sequence per key of last_aligned_frame_inv.json (see module docstring)."""
    folder = Path(folder)
    js = folder / RAW_JSON
    seqs = []
    if js.is_file():
        table = _read_json(js)
        if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
            raise SequenceError(f"{js}: expected {{target frame: [earlier frames]}}")
        for target, earlier in table.items():
            names = list(earlier) + [target]
            paths = [_find_frame(folder, n) for n in names]
            times = []
            for n, p in zip(names, paths):
                parsed = parse_frame_name(Path(n).stem if Path(n).suffix else n) or parse_frame_name(p.stem)
                if parsed is None:
                    raise SequenceError(f"cannot read a time stamp from frame name {n!r}")
                times.append(parsed[1])
            name = folder.name if len(table) == 1 else f"{folder.name}/{Path(target).stem}"
            # labels.json (written by training.synthetic): {frame name: label of the step producing it}
            labels = _read_json(folder / LABELS_JSON) if (folder / LABELS_JSON).is_file() else {}
            if not isinstance(labels, dict):
                raise SequenceError(f"{folder / LABELS_JSON}: expected {{frame name: label}}")
            instr = [labels.get(Path(n).stem if Path(n).suffix.lower() in IMAGE_EXTS else n) for n in names]
            seqs.append(PaintingSequence(name, [read_image(p) for p in paths], times,
                                         instr if any(instr) else None, source=str(folder),
                                         meta={"layout": "raw", "frame_names": names}))
    else:
        seqs.append(read_named_frames(folder, layout="raw"))
    return seqs


def read_named_frames(folder, layout: str = "named") -> PaintingSequence:
    """All frames of a folder whose names carry time stamps, in (time, index) order."""
    folder = Path(folder)
    items = []
    for p in _images(folder):
        parsed = parse_frame_name(p.stem)
        if parsed is not None:
            items.append((parsed[1], parsed[0], p))
    if not items:
        raise SequenceError(f"{folder}: no frames named with time stamps ({{ind}}_{{m:ss}} or {{k}}_{{m}}m{{ss}}s)")
    items.sort()
    return PaintingSequence(folder.name, [read_image(p) for _, _, p in items], [t for t, _, _ in items],
                            source=str(folder), meta={"layout": layout, "frame_names": [p.name for *_, p in items]})


def _get(entry: dict, *keys, default=None):
    for k in keys:
        if k in entry and entry[k] is not None:
            return entry[k]
    return default


def read_manifest_folder(folder) -> PaintingSequence:
    """Our CLI output: manifest.json with a ``keyframes`` list (``time_s``, ``file``, ``instruction``,
    optional ``mask``); a bare list of entries is accepted too."""
    folder = Path(folder)
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SequenceError(f"{folder / MANIFEST}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, (dict, list)):
        raise SequenceError(f"{folder / MANIFEST}: expected a JSON object with 'keyframes'")
    entries = data if isinstance(data, list) else _get(data, "keyframes", "frames", default=None)
    if not entries:
        return read_named_frames(folder, layout="ours")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise SequenceError(f"{folder / MANIFEST}: 'keyframes' must be a list of objects (each with 'file' and "
                            f"'time_s'), got {json.dumps(entries)[:80]}")
    frames, times, instr, masks = [], [], [], []
    for e in entries:
        f = _get(e, "file", "image", "frame", "path")
        if f is None:
            raise SequenceError(f"{folder / MANIFEST}: keyframe entry without 'file': {e}")
        t = _get(e, "time_s", "time", "t")
        if t is None:
            parsed = parse_frame_name(Path(f).stem)
            if parsed is None:
                raise SequenceError(f"{folder / MANIFEST}: no time_s for {f}")
            t = parsed[1]
        path = _inside(folder, f, "frame")
        if not path.is_file():
            raise SequenceError(f"{folder / MANIFEST}: frame {f!r} not found")
        try:
            t = float(t)
        except (TypeError, ValueError):
            raise SequenceError(f"{folder / MANIFEST}: time stamps must be numbers of seconds, {f} has {t!r}") from None
        frames.append(read_image(path))
        times.append(t)
        instr.append(_get(e, "instruction", "prompt", "text"))
        m = _get(e, "mask", "mask_file")
        mpath = _inside(folder, m, "mask") if isinstance(m, str) else None
        if mpath is not None and not mpath.is_file():
            raise SequenceError(f"{folder / MANIFEST}: mask {m!r} of frame {f!r} not found")
        masks.append(read_mask(mpath) if mpath is not None else None)
    name = data.get("name", folder.name) if isinstance(data, dict) else folder.name
    order = sorted(range(len(times)), key=lambda i: times[i])
    pick = lambda xs: [xs[i] for i in order]  # noqa: E731
    return PaintingSequence(str(name), pick(frames), pick(times), pick(instr),
                            pick(masks) if any(m is not None for m in masks) else None,
                            source=str(folder), meta={"layout": "ours"})


def read_sequence_folder(folder) -> list[PaintingSequence]:
    """The sequences of one painting folder (either layout), or [] if the folder is not one."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        return [read_manifest_folder(folder)]
    if (folder / RAW_JSON).is_file():
        return read_raw_layout(folder)
    if any(parse_frame_name(p.stem) for p in _images(folder)):
        return [read_named_frames(folder)]
    if (folder / "frames").is_dir() and any(parse_frame_name(p.stem) for p in _images(folder / "frames")):
        return [_run_without_manifest(folder)]  # our output whose manifest was lost: frames/ (+ masks/) is one painting
    return []


def _run_without_manifest(folder: Path) -> PaintingSequence:
    seq = read_named_frames(folder / "frames", layout="ours")
    seq.name = folder.name
    masks_dir = folder / "masks"
    if masks_dir.is_dir():
        seq.masks = [read_mask(masks_dir / n) if (masks_dir / n).is_file() else None for n in seq.meta["frame_names"]]
        if not any(m is not None for m in seq.masks):
            seq.masks = None
    seq.source = str(folder)
    return seq


def load_sequences(path, max_depth: int = 4) -> dict[str, PaintingSequence]:
    """{name: sequence} for a painting folder or a tree of painting folders (searched breadth-first)."""
    root = Path(path)
    if not root.is_dir():
        raise SequenceError(f"{root} is not a folder")
    found = read_sequence_folder(root)
    if found:
        return {s.name: s for s in found}
    out: dict[str, PaintingSequence] = {}
    level = [root]
    for _ in range(max_depth):
        nxt = []
        for d in level:
            for sub in sorted(p for p in d.iterdir() if p.is_dir()):
                seqs = read_sequence_folder(sub)
                if seqs:
                    for s in seqs:
                        if s.name in out:  # same folder name in two branches: keep both, path-qualified
                            s.name = str(sub.relative_to(root))
                        out[s.name] = s
                else:
                    nxt.append(sub)
        level = nxt
        if not level:
            break
    if not out:
        raise SequenceError(f"{root}: no painting sequences found (expected {MANIFEST}, {RAW_JSON} or frames "
                            "named with time stamps)")
    return out
