"""Reading (and naming) the official raw training-data layout (spec section 4.1).

Layout, one folder per painting video::

    <data>/<split>/rgb/<video>/{ind}_{m:ss}.jpg          frames; ind = frame index, m:ss = video time
    <data>/<split>/rgb/<video>/last_aligned_frame_inv.json  {target_name: [earlier names, temporal order]}
    <data>/<split>/rgb/<video>/labels.json                  (ours, optional) {frame name: step label}

Frame names are given without the ".jpg" extension in the JSON.  The colon in ``m:ss`` makes the
names invalid on Windows; ``format_frame_name(..., windows_safe=True)`` writes ``m-ss`` instead and
``parse_frame_name`` reads both, but the official (colon) form is the default because that is what
the trainers and the official tools read.

Pair list (identical logic in the official dataset and both preprocessors):
  1. drop the first listed frame and put "white" (the blank canvas) in its place;
  2. if >= sample_num - 1 (99) entries remain, subsample them uniformly to 99;
  3. append the target; consecutive entries are the (cur, next) pairs.
Intervals are timestamp differences with the first timestamp clamped to <= 30 s (the white canvas
takes the first listed frame's time).

Official bug B11 (spec 5.1): the official dataset computes the intervals on the *unsubsampled* list,
so whenever subsampling happens (>= 100 frames) pair k gets the interval of full-list pair k.  We
compute the intervals on the subsampled list (the correct behaviour) by default;
``replicate_b11=True`` reproduces the official values for parity experiments.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

INV_JSON = "last_aligned_frame_inv.json"
LABELS_JSON = "labels.json"
WHITE = "white"
SAMPLE_NUM = 100          # official `sample_num`: at most 99 frames + the target
MAX_FIRST_S = 30.0        # the first timestamp (the white canvas) is clamped to <= 30 s

# "{ind}_{m}:{ss}" (official) or "{ind}_{m}-{ss}" (Windows-safe); an optional hour part is tolerated.
_NAME_RE = re.compile(r"^(\d+)_(?:(\d+)[:\-])?(\d+)[:\-](\d{1,2})$")


def format_time(seconds: float, windows_safe: bool = False) -> str:
    """Seconds -> "m:ss" (minutes unbounded, e.g. "75:03"); fractions are truncated like a video clock."""
    s = int(max(0.0, float(seconds)) + 1e-6)
    sep = "-" if windows_safe else ":"
    return f"{s // 60}{sep}{s % 60:02d}"


def format_frame_name(ind: int, seconds: float, windows_safe: bool = False) -> str:
    """Frame name (no extension) in the official form "{ind}_{m:ss}"."""
    return f"{int(ind)}_{format_time(seconds, windows_safe)}"


def parse_frame_name(name: str) -> tuple[int, float]:
    """ "10_3:21" (or "10_3:21.jpg", "10_3-21", "10_1:03:21") -> (10, 201.0)."""
    base = os.path.basename(str(name))
    if base.lower().endswith((".jpg", ".jpeg", ".png")):
        base = base.rsplit(".", 1)[0]
    m = _NAME_RE.match(base)
    if m is None:
        raise ValueError(f"not a raw-layout frame name: {name!r} (expected '{{ind}}_{{m:ss}}')")
    ind, hours, minutes, secs = m.groups()
    total = int(minutes) * 60 + int(secs)
    if hours is not None:
        total += int(hours) * 3600
    return int(ind), float(total)


def frame_seconds(name: str) -> float:
    """Timestamp of a frame name in seconds (m*60 + ss)."""
    return parse_frame_name(name)[1]


@dataclass
class PairList:
    """The (cur, next) sequence of one target: names[0] == "white", names[-1] == target."""

    target: str
    names: list[str]
    times_s: list[float]                       # one per name (first clamped to <= 30 s)
    intervals_s: list[float] = field(default_factory=list)  # one per pair

    @property
    def pairs(self) -> list[tuple[str, str, float]]:
        return [(self.names[k], self.names[k + 1], self.intervals_s[k]) for k in range(len(self.names) - 1)]

    def __len__(self) -> int:
        return len(self.names) - 1


def subsample_indices(n: int, num: int) -> np.ndarray:
    """Uniform subsampling of n entries to num, keeping the first and last.

    The spec only says "subsample uniformly"; we use evenly spaced, rounded positions, which keeps
    entry 0 (the white canvas) and the last listed frame.
    """
    if n <= num:
        return np.arange(n)
    return np.round(np.linspace(0, n - 1, num)).astype(np.int64)


def build_pair_list(
    listed: list[str],
    target: str,
    sample_num: int = SAMPLE_NUM,
    max_first_s: float = MAX_FIRST_S,
    replicate_b11: bool = False,
) -> PairList:
    """Build the official (cur, next) pair list of one target from its earlier-frame list.

    listed: the earlier frame names in temporal order (the JSON value); target: the JSON key.
    """
    if len(listed) == 0:
        raise ValueError(f"target {target!r} has no earlier frames")
    full_names = [WHITE] + list(listed[1:])           # the white canvas replaces the first listed frame
    full_times = [frame_seconds(n) for n in listed] + [frame_seconds(target)]
    full_times[0] = min(full_times[0], max_first_s)     # white canvas time, clamped
    n = len(full_names)
    if n >= sample_num - 1:
        idx = subsample_indices(n, sample_num - 1)
    else:
        idx = np.arange(n)
    names = [full_names[i] for i in idx] + [target]
    times = [full_times[i] for i in idx] + [full_times[-1]]
    if replicate_b11:
        # Official behaviour: pair k uses the interval of *unsubsampled* pair k (wrong when subsampled).
        intervals = [full_times[k + 1] - full_times[k] for k in range(len(names) - 1)]
    else:
        intervals = [times[k + 1] - times[k] for k in range(len(names) - 1)]
    return PairList(target=target, names=names, times_s=times, intervals_s=[float(v) for v in intervals])


def read_inv_json(video_dir: str) -> dict[str, list[str]]:
    """Read `last_aligned_frame_inv.json` of one video folder (insertion order preserved)."""
    with open(os.path.join(video_dir, INV_JSON), "r", encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{INV_JSON} in {video_dir} is not a mapping")
    return {str(k): [str(v) for v in vs] for k, vs in data.items()}


def read_labels(video_dir: str) -> dict[str, str]:
    """Our optional `labels.json` ({frame name: label of the step that produced it}); {} if absent."""
    path = os.path.join(video_dir, LABELS_JSON)
    if not os.path.exists(path):
        return {}
    with open(path, "r", encoding="utf-8") as f:
        return {str(k): str(v) for k, v in json.load(f).items()}


def read_video_pairs(video_dir: str, sample_num: int = SAMPLE_NUM, max_first_s: float = MAX_FIRST_S,
                     replicate_b11: bool = False) -> dict[str, PairList]:
    """All targets of one video folder -> their pair lists."""
    return {t: build_pair_list(ls, t, sample_num, max_first_s, replicate_b11)
            for t, ls in read_inv_json(video_dir).items()}


def list_videos(split_root: str) -> list[str]:
    """Video folders under `<data>/<split>/rgb/` that have a `last_aligned_frame_inv.json` (sorted)."""
    rgb = os.path.join(split_root, "rgb")
    if not os.path.isdir(rgb):
        return []
    return sorted(os.path.join(rgb, d) for d in os.listdir(rgb)
                  if os.path.exists(os.path.join(rgb, d, INV_JSON)))


def frame_path(video_dir: str, name: str, ext: str = ".jpg") -> str:
    return os.path.join(video_dir, name + ext)


def load_frame(video_dir: str, name: str, like: np.ndarray | None = None,
               size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Load a frame as uint8 HxWx3 RGB; "white" is an all-255 canvas at the size of `like`/`size_hw`."""
    if name == WHITE or name.startswith(WHITE + "_"):
        if like is not None:
            size_hw = like.shape[:2]
        if size_hw is None:
            raise ValueError("the white canvas needs a size (pass like= or size_hw=)")
        return np.full((int(size_hw[0]), int(size_hw[1]), 3), 255, np.uint8)
    from PIL import Image

    with Image.open(frame_path(video_dir, name)) as im:
        return np.asarray(im.convert("RGB"))


def iter_pairs(split_root: str, **kw) -> Iterator[tuple[str, PairList]]:
    """(video_dir, PairList) for every target of every video of a split."""
    for vd in list_videos(split_root):
        for pl in read_video_pairs(vd, **kw).values():
            yield vd, pl
