"""Ground truth for training (spec 4.1 / 4.2): raw layout -> the official processed layout.

For every (cur, next) pair of every target of a split (``<split>/rgb/<video>/...``) this writes, beside
``rgb/``:

* ``lpips/<video>/<cur>.jpg`` -- 8-bit grey JPEG of the core's spatial LPIPS(cur, next) at native
  resolution, clamped to [0, 1], times 255, truncated (the trainers threshold it at 0.2);
* ``text/<video>/<cur>.json`` -- {ref_img_name, cur_image_name, next_image_name, prompt, next_text}
  (+ ``source``: "labels" or "annotator"). ``next_text`` is our ``labels.json`` entry of the next frame
  for synthetic data, else the answer of a LLaVA annotator (:class:`TextInstructionGenerator`) asked
  :data:`ANNOTATOR_QUESTION` about [cur | next], greedy, like the official ``run_llava/main.py``;
* ``llava_image/<video>/<cur>_<ref>.png`` -- [cur | ref] as our inference composes it
  (:func:`compose_side_by_side`), and ``llava_json.json`` -- LLaVA conversations (human
  "<image>\\n" + TP question, gpt = next_text); ``image`` is relative to ``llava_image/``.

``<cur>`` of the white start canvas is ``white_<ref>`` (official naming; :func:`processed_name`), so two
targets of one video do not overwrite each other's first pair.

CLI: ``python -m inverse_painting.training.ground_truth DATA [--split train] [--annotator TP_llava_annotator]``
"""
from __future__ import annotations

import argparse
import sys
import json
import os
from typing import Callable

import numpy as np

from ..core.errors import CommandLineParser
from .raw_layout import WHITE, iter_pairs, load_frame, read_labels

LPIPS_DIR, TEXT_DIR, LLAVA_IMAGE_DIR, LLAVA_JSON = "lpips", "text", "llava_image", "llava_json.json"
JPEG_QUALITY = 95  # cv2.imwrite's default, which the official preprocessor used


def processed_name(cur: str, ref: str) -> str:
    """File stem of a pair in the processed layout: the white canvas is ``white_<ref>``."""
    return f"{WHITE}_{ref}" if cur == WHITE else cur


def split_root_of(data_root, split: str = "train") -> str:
    """``<data>/<split>`` when it has ``rgb/``, else ``<data>`` itself (already a split folder)."""
    root = os.fspath(data_root)
    cand = os.path.join(root, split) if split else root
    if os.path.isdir(os.path.join(cand, "rgb")):
        return cand
    if os.path.isdir(os.path.join(root, "rgb")):
        return root
    raise FileNotFoundError(f"no rgb/ folder under {cand} or {root}")


def lpips_mask_u8(metric, cur: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Official GT mask file content: uint8(clamp(LPIPS_spatial(cur, next), 0, 1) * 255), truncated."""
    from ..core.difference_mask import difference_map

    d = difference_map(metric, cur, nxt)[0, 0].clamp(0, 1) * 255
    return d.cpu().numpy().astype(np.uint8)  # astype truncates toward zero, as the official uint8 cast


def _save_jpeg_grey(arr: np.ndarray, path: str) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr, mode="L").save(path, quality=JPEG_QUALITY)


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


def load_annotator(annotator, device="cpu", dtype="float32", vision_tower_path: str | None = None):
    """A path (TP_llava_annotator, either LLaVA layout) or an object with ``generate`` -> the annotator."""
    if annotator is None or hasattr(annotator, "generate"):
        return annotator
    import torch

    from ..models.text_instruction import TextInstructionGenerator

    return TextInstructionGenerator.from_pretrained(os.fspath(annotator), device=device,
                                                    dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype,
                                                    vision_tower_path=vision_tower_path)


def write_ground_truth(data_root, split: str = "train", *, metric=None, metric_name: str = "stlpips_alex",
                       metric_dir=None, annotator=None, text_source: str = "auto", masks: bool = True,
                       text: bool = True, llava: bool = True, overwrite: bool = False, device: str = "cpu",
                       max_new_tokens: int = 16, annotator_dtype: str = "float32",
                       vision_tower_path: str | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Write the processed layout for one split; returns a summary dict.

    metric: a PerceptualDistance, else built by ``load_perceptual_metric(metric_name, metric_dir)``
      (the official metric is "lpips_alex" with a release's ``lpips/`` folder; "stlpips_alex" works offline
      and is the trainers' default).
    annotator: a TextInstructionGenerator (or a folder to load one from), used for pairs without a label.
    text_source: "auto" (label if present, else annotator), "labels" (labels only; missing -> ""), or
      "annotator" (always ask the annotator).
    Existing files are kept unless ``overwrite`` (text JSON is re-read so llava_json.json stays complete).
    max_new_tokens: the annotator's answer budget (the official 512 is pointless for a <2-word answer);
      decoding also stops at the v0 separator "###".
    """
    from ..models.text_instruction import ANNOTATOR_QUESTION, IMAGE_PLACEHOLDER, TP_QUESTION, compose_side_by_side

    if text_source not in ("auto", "labels", "annotator"):
        raise ValueError(f"text_source must be auto, labels or annotator, not {text_source!r}")
    say = log or (lambda s: None)
    root = split_root_of(data_root, split)
    if masks and metric is None:
        from ..models.lpips_net import load_perceptual_metric

        metric = load_perceptual_metric(metric_name, weights_dir=metric_dir, device=device)
    ann = None
    stats = {"split_root": root, "pairs": 0, "masks_written": 0, "text_from_labels": 0, "text_from_annotator": 0,
             "text_kept": 0, "empty_text": 0, "llava_entries": 0, "videos": 0}
    conversations = []
    for vd, pl in iter_pairs(root):
        video = os.path.basename(vd)
        labels = read_labels(vd)
        stats["videos"] += 1
        target = load_frame(vd, pl.target)
        for cur_name, next_name, _iv in pl.pairs:
            stats["pairs"] += 1
            pname = processed_name(cur_name, pl.target)
            cur = nxt = None

            def frames():
                return load_frame(vd, cur_name, like=target), load_frame(vd, next_name, like=target)

            if masks:
                mpath = os.path.join(root, LPIPS_DIR, video, pname + ".jpg")
                if overwrite or not os.path.isfile(mpath):
                    cur, nxt = frames()
                    _save_jpeg_grey(lpips_mask_u8(metric, cur, nxt), mpath)
                    stats["masks_written"] += 1
            next_text = ""
            tpath = os.path.join(root, TEXT_DIR, video, pname + ".json")
            if text:
                if not overwrite and os.path.isfile(tpath):
                    with open(tpath, encoding="utf-8") as f:
                        next_text = str(json.load(f).get("next_text", ""))
                    stats["text_kept"] += 1
                else:
                    source = "labels"
                    if text_source != "annotator" and next_name in labels:
                        next_text = labels[next_name]
                        stats["text_from_labels"] += 1
                    elif text_source != "labels":
                        if ann is None:
                            if annotator is None:
                                raise ValueError(f"{vd}: no label for {next_name!r} and no annotator given "
                                                 "(pass --annotator PATH_TO_LLAVA, or --text-source labels)")
                            ann = load_annotator(annotator, device=device, dtype=annotator_dtype,
                                                 vision_tower_path=vision_tower_path)
                        if cur is None:
                            cur, nxt = frames()
                        # the annotator sees [cur | NEXT] (the generator later sees [cur | target])
                        next_text = ann.generate(cur, nxt, question=ANNOTATOR_QUESTION, max_new_tokens=max_new_tokens,
                                                 stop_strings=["###"]).strip()
                        source = "annotator"
                        stats["text_from_annotator"] += 1
                    _write_json(tpath, {"ref_img_name": pl.target, "cur_image_name": pname,
                                        "next_image_name": next_name, "prompt": ANNOTATOR_QUESTION,
                                        "next_text": next_text, "source": source})
            elif os.path.isfile(tpath):
                with open(tpath, encoding="utf-8") as f:
                    next_text = str(json.load(f).get("next_text", ""))
            if llava:
                if not next_text:
                    stats["empty_text"] += 1  # nothing to supervise: no conversation for this pair
                    continue
                rel = f"{video}/{pname}_{pl.target}.png"
                ipath = os.path.join(root, LLAVA_IMAGE_DIR, *rel.split("/"))
                if overwrite or not os.path.isfile(ipath):
                    from PIL import Image

                    if cur is None:
                        cur, nxt = frames()
                    os.makedirs(os.path.dirname(ipath), exist_ok=True)
                    # [cur | target] exactly as inference composes it (train == infer)
                    Image.fromarray(compose_side_by_side(cur, target)).save(ipath)
                conversations.append({"id": f"{video}/{pname}_{pl.target}", "image": rel, "conversations": [
                    {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{TP_QUESTION}"},
                    {"from": "gpt", "value": next_text}]})
        say(f"{video}: {len(pl.pairs)} pairs")
    if llava:
        _write_json(os.path.join(root, LLAVA_JSON), conversations)
        stats["llava_entries"] = len(conversations)
    return stats


def main(argv=None) -> int:
    p = CommandLineParser(description="Write GT masks (lpips/), GT text (text/) and the LLaVA training "
                                            "set (llava_image/, llava_json.json) for a raw-layout dataset.")
    p.add_argument("data", help="dataset root (with <split>/rgb/) or a split folder (with rgb/)")
    p.add_argument("--split", default="train")
    p.add_argument("--metric", default="stlpips_alex", choices=("stlpips_alex", "lpips_alex"))
    p.add_argument("--metric-dir", default=None, help="LPIPS weights folder (e.g. a release's lpips/)")
    p.add_argument("--annotator", default=None, help="LLaVA annotator folder (TP_llava_annotator or llava-hf)")
    p.add_argument("--text-source", default="auto", choices=("auto", "labels", "annotator"))
    p.add_argument("--annotator-dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="LLM dtype of the annotator (float16 on a GPU, as officially)")
    p.add_argument("--vision-tower", default=None,
                   help="local CLIP-L/336 folder for an original-layout annotator without a saved tower")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-masks", dest="masks", action="store_false")
    p.add_argument("--no-text", dest="text", action="store_false")
    p.add_argument("--no-llava", dest="llava", action="store_false")
    a = p.parse_args(argv)
    stats = write_ground_truth(a.data, a.split, metric_name=a.metric, metric_dir=a.metric_dir, annotator=a.annotator,
                               text_source=a.text_source, masks=a.masks, text=a.text, llava=a.llava,
                               overwrite=a.overwrite, device=a.device, max_new_tokens=a.max_new_tokens,
                               annotator_dtype=a.annotator_dtype, vision_tower_path=a.vision_tower, log=print)
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ..core.errors import run_command

    raise SystemExit(run_command(main, "--debug" in sys.argv))
