"""Text-generator training canvases from the painting loop itself (DAgger-style data aggregation).

The text generator is trained on real process frames, but in the loop it sees the *renderer's* canvases,
which a small renderer paints differently (blurred, partly finished regions). Off its training
distribution it repeats a region for dozens of keyframes or names one the painting lacks, while the same
renderer and mask generator given the real label sequence paint ahead of the baselines (training/README.md).

So this paints each training painting with the trained model, choosing each keyframe's instruction from
the real process's label sequence (the *expert*: keyframe k gets the label of real frame k + 1, as the
ground-truth set pairs frame k with it) with probability ``expert_share``, and from the model's own text
generator otherwise, and records every canvas the loop shows the text generator together with the
expert's label for it. The rollout with the expert alone covers the canvases of a good painting; the
mixed one adds canvases after the model's own mistakes, labelled with the way back (DAgger). Each
rollout stops ``extra`` keyframes after the real sequence's end, so the last label does not swamp the set.

The conversations are written in the ground-truth set's format ([canvas | target] images under
``llava_image/rollouts/``), appended to a copy of ``llava_json.json`` that the text trainer reads.
"""
from __future__ import annotations

import argparse
import sys
import json
import time
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.errors import CommandLineParser

ROLLOUT_DIR = "rollouts"
ROLLOUT_JSON = "llava_json_rollouts.json"


class ExpertMixture:
    """Instructions for the loop: the expert's label with probability ``expert_share``, else the model's.

    Records ``(keyframe, canvas, expert label, the model's answer or None)`` for every keyframe it is asked
    about.
    """

    def __init__(self, labels: Sequence[str], model=None, expert_share: float = 1.0, seed: int = 0):
        if not labels:
            raise ValueError("the expert needs at least one label")
        if model is None and expert_share < 1:
            raise ValueError("expert_share < 1 needs the model's text generator")
        self.labels = [str(s) for s in labels]
        self.model, self.expert_share = model, float(expert_share)
        self.rng = np.random.default_rng(seed)
        self.visited: list[tuple[int, np.ndarray, str, str | None]] = []

    def expert(self, keyframe_index: int) -> str:
        return self.labels[min(int(keyframe_index), len(self.labels) - 1)]

    def generate(self, canvas_uint8, target_uint8, keyframe_index: int = 0, **kw) -> str:
        label = self.expert(keyframe_index)
        # one draw per keyframe whoever answers, so the choices do not depend on the model's answers
        use_expert = self.rng.random() < self.expert_share
        said = None if use_expert else str(self.model.generate(canvas_uint8, target_uint8)).strip()
        self.visited.append((int(keyframe_index), np.array(canvas_uint8, copy=True), label, said))
        return label if said is None else said


def real_label_sequence(video_dir) -> tuple[np.ndarray, list[str]]:
    """(target image, labels of frames 1..N) of one raw-layout process with a labels.json.

    Only the target frame is read: the labels follow the frame order of last_aligned_frame_inv.json.
    """
    from .raw_layout import load_frame, read_inv_json, read_labels

    table = read_inv_json(str(video_dir))
    target_name = list(table)[-1]
    names = list(table[target_name]) + [target_name]
    found = read_labels(str(video_dir))
    labels = [found.get(n) for n in names[1:]]
    if not labels or any(not s for s in labels):
        raise ValueError(f"{video_dir}: every frame after the first needs a label in labels.json")
    return load_frame(str(video_dir), target_name), labels


def rollout_seed(seed: int, video: str, share_index: int) -> int:
    """The painting seed of one rollout: from the process's number (``synth_00042`` -> 42; a CRC of other
    names) and the share, so the rollouts do not depend on how the processes are sharded."""
    tail = video.rsplit("_", 1)[-1]
    key = int(tail) if tail.isdigit() else zlib.crc32(video.encode("utf-8"))
    return int(np.random.SeedSequence([int(seed), key, int(share_index)]).generate_state(1)[0] % (2 ** 31))


def roll_out(painter, models_dir, target: np.ndarray, labels: Sequence[str], model_text, expert_share: float,
             seed: int, extra: int = 2, steps: int | None = None):
    """Paint ``target`` once with an :class:`ExpertMixture`; returns (mixture, keyframes painted, stop reason)."""
    from ..core.imaging import prepare_image
    from ..core.loop import PaintSettings

    short = min(target.shape[:2])
    working = prepare_image(target, short)
    # the rollout covers the real process's length (+ extra) whatever the model's stop and finish choices: its
    # canvases are the training data, and a finishing cross-fade asks the text generator nothing
    settings = PaintSettings.for_model(models_dir, seed=seed, short_side=short, steps=steps,
                                       max_keyframes=len(labels) + int(extra), finish_frames=0)
    mix = ExpertMixture(labels, model_text, expert_share, seed=seed)
    n = sum(1 for _ in painter.paint(working, settings, instructions=mix))
    return mix, working, n, painter.last_stop_reason


def write_rollouts(models_dir, data, split: str = "train", expert_shares: Sequence[float] = (1.0, 0.5),
                   seed: int = 0, extra: int = 2, device: str = "cpu", shard: tuple[int, int] = (0, 1),
                   log=print) -> dict:
    """Roll out the model on every process of ``<data>/<split>/rgb`` (``shard`` = (i, n): every n-th from
    i) once per expert share; writes the images and ``rollouts_<i>of<n>.json`` (conversations) under
    ``<data>/<split>/llava_image/rollouts/``. Returns counts."""
    import torch
    from PIL import Image

    from ..core.loop import Painter
    from ..core.model_set import ModelSet
    from ..models.lpips_net import load_perceptual_metric
    from ..models.text_instruction import IMAGE_PLACEHOLDER, TP_QUESTION, TextInstructionGenerator, compose_side_by_side
    from .ground_truth import LLAVA_IMAGE_DIR, split_root_of
    from .raw_layout import list_videos
    from .starter import METRIC

    models_dir = Path(models_dir)
    root = Path(split_root_of(data, split))
    images = root / LLAVA_IMAGE_DIR / ROLLOUT_DIR
    models = ModelSet.from_release(models_dir, device=device, dtype=torch.float32)
    painter = Painter(models, load_perceptual_metric(METRIC, device=device))
    expert_shares = [float(x) for x in expert_shares]
    model_text = None  # only the mixed rollouts ask the model
    if any(x < 1 for x in expert_shares):
        model_text = TextInstructionGenerator.from_pretrained(models.paths.text_model, device=device)
    videos = list_videos(str(root))[shard[0]::shard[1]]
    conversations, stats = [], {"rollouts": 0, "canvases": 0, "model_answers": 0, "model_right": 0}
    for vd in videos:
        video = Path(vd).name
        target, labels = real_label_sequence(vd)
        for si, share in enumerate(expert_shares):
            t = time.time()
            mix, working, n, why = roll_out(painter, models_dir, target, labels, model_text, share,
                                            rollout_seed(seed, video, si), extra)
            target_padded = working.padded
            for k, canvas, label, said in mix.visited:
                rel = f"{ROLLOUT_DIR}/{video}/e{int(round(share * 100))}_{k:02d}.png"
                path = root / LLAVA_IMAGE_DIR / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(compose_side_by_side(canvas, target_padded)).save(path)
                conversations.append({"id": rel[:-4], "image": rel, "conversations": [
                    {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{TP_QUESTION}"},
                    {"from": "gpt", "value": label}]})
                if said is not None:  # how often the model agrees with the expert on its own rollouts
                    stats["model_answers"] += 1
                    stats["model_right"] += said == label
            stats["rollouts"] += 1
            stats["canvases"] += len(mix.visited)
            log(f"{video} expert {share:.2f}: {n} keyframes ({why}) in {time.time() - t:.1f}s")
        # after every process, so that a stopped run keeps what it painted
        images.mkdir(parents=True, exist_ok=True)
        part = images / f"rollouts_{shard[0]}of{shard[1]}.json"
        part.write_text(json.dumps(conversations, indent=1), encoding="utf-8")
    return stats


def merge_rollouts(data, split: str = "train") -> Path:
    """``llava_json_rollouts.json`` = the ground-truth conversations + every rollout part; returns its path."""
    from .ground_truth import LLAVA_IMAGE_DIR, LLAVA_JSON, split_root_of

    root = Path(split_root_of(data, split))
    entries = json.loads((root / LLAVA_JSON).read_text(encoding="utf-8"))
    parts = sorted((root / LLAVA_IMAGE_DIR / ROLLOUT_DIR).glob("rollouts_*of*.json"))
    if not parts:
        raise FileNotFoundError(f"no rollout parts under {root / LLAVA_IMAGE_DIR / ROLLOUT_DIR}")
    counts = {p.stem.split("of")[-1] for p in parts}
    if len(counts) != 1 or len(parts) != int(counts.pop()):
        raise ValueError(f"rollout parts of different runs or a missing part: {[p.name for p in parts]}")
    rolled = [e for p in parts for e in json.loads(p.read_text(encoding="utf-8"))]
    entries += sorted(rolled, key=lambda e: e["id"])  # the same set in the same order however it was sharded
    out = root / ROLLOUT_JSON
    out.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    return out


def main(argv=None) -> int:
    p = CommandLineParser(description="Roll the painting loop out on training processes and write "
                                            "text-generator conversations for the canvases it shows.")
    p.add_argument("--models", required=True, help="trained model folder (release layout)")
    p.add_argument("--data", required=True, help="data root with <split>/rgb and the ground-truth set")
    p.add_argument("--split", default="train")
    p.add_argument("--expert-shares", default="1.0,0.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shard", default="0/1", help="i/n: every n-th process from the i-th")
    p.add_argument("--merge", action="store_true", help="only merge the parts into llava_json_rollouts.json")
    a = p.parse_args(argv)
    if a.merge:
        print(merge_rollouts(a.data, a.split))
        return 0
    i, n = (int(x) for x in a.shard.split("/"))
    from .starter import rollout_shares  # the starter's --text-rollouts parser: one syntax, range-checked

    stats = write_rollouts(a.models, a.data, a.split, rollout_shares(a.expert_shares), a.seed, a.extra, a.device,
                           (i, n))
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    from ..core.errors import run_command

    raise SystemExit(run_command(main, "--debug" in sys.argv))
