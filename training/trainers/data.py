"""Pair dataset over the official raw layout (spec 4.1), shared by the trainers.

One item is one (cur, next) pair of one target painting:

* ``cur``, ``next``, ``target``: (3, H, W) float32 in [-1, 1], zero-padded (black) bottom/right to a
  multiple of 16 *before* normalisation, as the official ``pad_to_16`` mode; native resolution;
* ``cur_u8``, ``target_u8``: the unpadded uint8 HWC images for the CLIP processor (the white canvas
  is a 224x224 white image, as officially); the trainer runs the processor;
* ``interval``: seconds (float); ``text``: the GT ``next_text`` (``text/<video>/<cur>.json`` if the
  processed layout exists, else our ``labels.json`` entry of the next frame, else "");
* ``mask_next``: (1, H, W) {0,1} GT mask of the painted region, LPIPS(cur, next) > 0.2, read from
  ``lpips/<video>/<cur>.jpg`` (/255) when present and ``use_lpips_folder``, else computed with the
  core metric on the fly (cached per pair);
* ``mask_target``: (1, H, W) {0,1} LPIPS(cur, target) > 0.2 (the mask generator's M_d input);
* the CFG drop flags (spec 4.1), each True with probability ``drop_prob``: ``drop_image_embeds``,
  ``drop_time_step``, ``drop_feature``, ``drop_cur_cond``, ``drop_RP``.

With ``target_pair_prob`` > 0 (not in the official recipe; see :meth:`PairDataset.item`) a share of
the sampled items end on the finished painting instead of the next frame.

Unlike the official dataset (which ignores its index and draws a random video/target/pair), items are
addressed by index, and ``sample(generator)`` draws a uniformly random pair plus the drop flags from a
caller-supplied ``torch.Generator``. The trainers seed that generator from (seed, step, rank), so an
interrupted run resumes with exactly the same data stream.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from ...core.difference_mask import DIFFERENCE_THRESHOLD
from ..ground_truth import processed_name
from ..raw_layout import WHITE, frame_seconds, iter_pairs, load_frame, read_labels

DROP_FLAGS = ("drop_image_embeds", "drop_time_step", "drop_feature", "drop_cur_cond", "drop_RP")
CLIP_WHITE_SIZE = 224


@dataclass(frozen=True)
class PairRecord:
    video_dir: str
    target: str
    cur: str
    next: str
    interval: float

    @property
    def video(self) -> str:
        return os.path.basename(self.video_dir)


def pad16(image: np.ndarray, multiple: int = 16) -> np.ndarray:
    """Zero-pad (black) an HWC uint8 image bottom/right to a multiple of ``multiple``."""
    h, w = image.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image
    return np.pad(image, ((0, ph), (0, pw), (0, 0)))


def to_m11(image: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> (3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0 * 2 - 1


class PairDataset(torch.utils.data.Dataset):
    """All (cur, next) pairs of all targets of a split of the raw layout."""

    def __init__(self, data_root, split: str = "train", metric=None, threshold: float = DIFFERENCE_THRESHOLD,
                 drop_prob: float = 0.1, use_lpips_folder: bool = True, need_target_mask: bool = True,
                 need_next_mask: bool = True, replicate_b11: bool = False, cache: bool = True,
                 target_pair_prob: float = 0.0):
        self.root = os.fspath(data_root)
        split_root = os.path.join(self.root, split) if split else self.root
        if not os.path.isdir(os.path.join(split_root, "rgb")) and os.path.isdir(os.path.join(self.root, "rgb")):
            split_root = self.root  # the root is already the split folder
        self.split_root = split_root
        self.metric = metric
        self.threshold = float(threshold)
        self.drop_prob = float(drop_prob)
        self.use_lpips_folder = use_lpips_folder
        self.need_target_mask = need_target_mask
        self.need_next_mask = need_next_mask
        self.records: list[PairRecord] = []
        self._labels: dict[str, dict[str, str]] = {}
        for vd, pl in iter_pairs(split_root, replicate_b11=replicate_b11):
            for cur, nxt, iv in pl.pairs:
                self.records.append(PairRecord(vd, pl.target, cur, nxt, float(iv)))
        if not self.records:
            raise FileNotFoundError(f"no (cur, next) pairs under {split_root}/rgb/*/last_aligned_frame_inv.json")
        self._cache: dict | None = {} if cache else None
        self.target_pair_prob = float(target_pair_prob)

    def __len__(self) -> int:
        return len(self.records)

    # ------------------------------------------------------------------ GT text and masks
    def _processed(self, folder: str, rec: PairRecord, ext: str) -> str:
        # the processed layout names the white canvas "white_<target>" (spec 4.1); plain "white" is accepted too
        path = os.path.join(self.split_root, folder, rec.video, processed_name(rec.cur, rec.target) + ext)
        return path if os.path.isfile(path) else os.path.join(self.split_root, folder, rec.video, rec.cur + ext)

    def text_for(self, rec: PairRecord) -> str:
        processed = self._processed("text", rec, ".json")
        if os.path.isfile(processed):
            with open(processed, encoding="utf-8") as f:
                return str(json.load(f).get("next_text", ""))
        if rec.video_dir not in self._labels:
            self._labels[rec.video_dir] = read_labels(rec.video_dir)
        return self._labels[rec.video_dir].get(rec.next, "")

    def _lpips_mask(self, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
        if self.metric is None:
            raise RuntimeError("no perceptual metric given and no lpips/ folder: cannot build the GT masks")
        dev = next(self.metric.parameters()).device
        with torch.no_grad():
            d = self.metric(to_m11(a)[None].to(dev), to_m11(b)[None].to(dev), spatial=True).float().cpu()
        return (d.clamp(0, 1)[0] > self.threshold).float()

    def _folder_mask(self, rec: PairRecord, hw) -> torch.Tensor | None:
        if not self.use_lpips_folder:
            return None
        path = self._processed("lpips", rec, ".jpg")
        if not os.path.isfile(path):
            return None
        from PIL import Image

        with Image.open(path) as im:
            m = np.asarray(im.convert("L"), np.float32) / 255.0
        full = np.zeros(hw, np.float32)
        full[: m.shape[0], : m.shape[1]] = m[: hw[0], : hw[1]]
        return (torch.from_numpy(full).clamp(0, 1) > self.threshold).float()[None]

    def _cached(self, key, fn):
        if self._cache is None:
            return fn()
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    # ------------------------------------------------------------------ items
    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, to_target: bool = False) -> dict:
        """Pair ``index``; ``to_target`` makes it a "target pair" (not in the official recipe): the finished
        painting is its ``next`` frame, interval = target time - canvas time, GT mask = LPIPS(cur, target) >
        0.2, and the text stays the pair's own next instruction."""
        index = int(index)
        rec = self.records[index]
        target = load_frame(rec.video_dir, rec.target)
        cur = load_frame(rec.video_dir, rec.cur, like=target)
        next_name = rec.target if to_target else rec.next
        nxt = target if to_target else load_frame(rec.video_dir, rec.next, like=target)
        if not (cur.shape == nxt.shape == target.shape):
            raise ValueError(f"{rec}: frame sizes differ {cur.shape} {nxt.shape} {target.shape}")
        cur_p, nxt_p, tgt_p = pad16(cur), pad16(nxt), pad16(target)
        interval = rec.interval
        if to_target:
            interval = frame_seconds(rec.target) - (0.0 if rec.cur == WHITE else frame_seconds(rec.cur))
        item = {"cur": to_m11(cur_p), "next": to_m11(nxt_p), "target": to_m11(tgt_p),
                "cur_u8": (np.full((CLIP_WHITE_SIZE, CLIP_WHITE_SIZE, 3), 255, np.uint8)
                           if rec.cur == WHITE else cur),
                "target_u8": target, "interval": interval, "text": self.text_for(rec),
                "index": index, "hw": tuple(target.shape[:2]),
                # names of the three frames: keys of the trainers' VAE latent cache
                "cur_id": f"{rec.video_dir}/{rec.cur}", "next_id": f"{rec.video_dir}/{next_name}",
                "target_id": f"{rec.video_dir}/{rec.target}"}

        def target_mask():
            return self._lpips_mask(cur_p, tgt_p)

        if self.need_next_mask:
            def next_mask():
                m = self._folder_mask(rec, cur_p.shape[:2])
                return m if m is not None else self._lpips_mask(cur_p, nxt_p)
            item["mask_next"] = self._cached(("target", index), target_mask) if to_target else \
                self._cached(("next", index), next_mask)
        if self.need_target_mask:
            item["mask_target"] = self._cached(("target", index), target_mask)
        return item

    def drop_flags(self, generator: torch.Generator | None = None) -> dict[str, bool]:
        u = torch.rand(len(DROP_FLAGS), generator=generator)
        return {k: bool(v < self.drop_prob) for k, v in zip(DROP_FLAGS, u)}

    def sample(self, generator: torch.Generator, batch_size: int = 1) -> dict:
        """A batch of uniformly random pairs (with replacement) and their drop flags."""
        items = []
        for _ in range(batch_size):
            idx = int(torch.randint(len(self), (1,), generator=generator))
            # the extra draw only when target pairs are on: the default stream stays as it was
            to_target = self.target_pair_prob > 0 and float(torch.rand(1, generator=generator)) < self.target_pair_prob
            item = self.item(idx, to_target)
            item.update(self.drop_flags(generator))
            items.append(item)
        return collate(items)


def collate(items: list[dict]) -> dict:
    """Stack tensors (same sizes required, as with the official batch of 1), keep images/strings as lists,
    turn the drop flags into (B,) bool tensors and the intervals into a list of floats."""
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if isinstance(vals[0], torch.Tensor):
            out[key] = torch.stack(vals)
        elif key in DROP_FLAGS:
            out[key] = torch.tensor(vals, dtype=torch.bool)
        else:
            out[key] = vals
    return out
