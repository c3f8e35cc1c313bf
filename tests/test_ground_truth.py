"""Ground-truth writer tests (training/ground_truth.py) on 2 synthetic paintings (64x96 px).

Checks the processed layout of spec 4.1: LPIPS masks (core metric, clamp, x255 truncation, grey JPEG),
the text JSON keys with labels.json answers, the white canvas named ``white_<ref>``, the LLaVA images
([cur | target] exactly as inference composes it) and conversation list, that the trainers' PairDataset
reads them back, and one run with the tiny LLaVA as annotator.
"""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import tiny_llava as tl  # noqa: E402


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from inverse_painting.training.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("gt")
    generate_dataset(str(root), 2, seed=0, size=(64, 96), num_steps=3)
    return root


@pytest.fixture(scope="module")
def written(synth):
    from inverse_painting.training.ground_truth import write_ground_truth

    stats = write_ground_truth(synth, "train")
    return synth / "train", stats


def _pairs(split_root):
    from inverse_painting.training.raw_layout import iter_pairs, load_frame, read_labels

    for vd, pl in iter_pairs(str(split_root)):
        target = load_frame(vd, pl.target)
        for cur, nxt, _ in pl.pairs:
            yield vd, pl.target, cur, nxt, load_frame(vd, cur, like=target), load_frame(vd, nxt, like=target), target, \
                read_labels(vd)


def test_layout_masks_text_and_llava(written):
    from inverse_painting.models.lpips_net import load_perceptual_metric
    from inverse_painting.models.text_instruction import TP_QUESTION, compose_side_by_side
    from inverse_painting.training.ground_truth import lpips_mask_u8, processed_name

    root, stats = written
    assert stats["pairs"] == 6 and stats["masks_written"] == 6 and stats["text_from_labels"] == 6
    metric = load_perceptual_metric("stlpips_alex")
    conv = {e["id"]: e for e in json.loads((root / "llava_json.json").read_text())}
    assert len(conv) == 6
    for vd, ref, cur, nxt, cur_u8, nxt_u8, tgt_u8, labels in _pairs(root):
        video = os.path.basename(vd)
        pname = processed_name(cur, ref)
        if cur == "white":
            assert pname == f"white_{ref}"
        with Image.open(root / "lpips" / video / f"{pname}.jpg") as im:
            assert im.mode == "L" and im.format == "JPEG"
            m = np.asarray(im).astype(np.float32)
        exact = lpips_mask_u8(metric, cur_u8, nxt_u8).astype(np.float32)
        assert m.shape == cur_u8.shape[:2]
        assert np.abs(m - exact).mean() < 2.0  # JPEG round trip only
        assert ((m / 255 > 0.2) == (exact / 255 > 0.2)).mean() > 0.97
        t = json.loads((root / "text" / video / f"{pname}.json").read_text())
        assert {"ref_img_name", "cur_image_name", "next_image_name", "prompt", "next_text"} <= set(t)
        assert (t["ref_img_name"], t["cur_image_name"], t["next_image_name"]) == (ref, pname, nxt)
        assert t["next_text"] == labels[nxt] and t["source"] == "labels"
        e = conv[f"{video}/{pname}_{ref}"]
        assert e["image"] == f"{video}/{pname}_{ref}.png"
        assert e["conversations"] == [{"from": "human", "value": "<image>\n" + TP_QUESTION},
                                      {"from": "gpt", "value": labels[nxt]}]
        img = np.asarray(Image.open(root / "llava_image" / e["image"]).convert("RGB"))
        np.testing.assert_array_equal(img, compose_side_by_side(cur_u8, tgt_u8))  # PNG: lossless


def test_mask_file_truncation():
    from inverse_painting.training.ground_truth import lpips_mask_u8

    class Fixed(torch.nn.Module):  # a "metric" returning known distances
        def forward(self, a, b, spatial=False):
            return torch.tensor([-0.1, 0.4999, 0.2, 1.5]).reshape(1, 1, 2, 2)

    u8 = np.zeros((2, 2, 3), np.uint8)
    np.testing.assert_array_equal(lpips_mask_u8(Fixed(), u8, u8), [[0, 127], [51, 255]])


def test_pair_dataset_reads_processed_layout(written):
    from inverse_painting.training.trainers.data import PairDataset

    root, _ = written
    ds = PairDataset(root, split="", metric=None, need_target_mask=False)  # no metric: must read lpips/
    for i in range(len(ds)):
        rec, item = ds.records[i], ds[i]
        from inverse_painting.training.raw_layout import read_labels

        assert item["text"] == read_labels(rec.video_dir)[rec.next]
        assert item["mask_next"].shape[-2:] == item["cur"].shape[-2:] and 0 < item["mask_next"].sum()


def test_annotator_text_and_missing_labels(synth, tmp_path):
    from inverse_painting.models.text_instruction import ANNOTATOR_QUESTION, TextInstructionGenerator
    from inverse_painting.training.ground_truth import processed_name, write_ground_truth

    split = tmp_path / "train"
    shutil.copytree(synth / "train" / "rgb", split / "rgb")
    for lab in split.glob("rgb/*/labels.json"):
        lab.unlink()  # a real video: no labels
    with pytest.raises(ValueError, match="annotator"):
        write_ground_truth(split, "", masks=False)
    tok = tl.train_tiny_sentencepiece(str(tmp_path / "tok"))
    hf = tl.write_llava_hf(tl.build_tiny_llava(), os.path.dirname(tok), str(tmp_path / "llava_hf"))
    ann = TextInstructionGenerator.from_pretrained(hf)
    stats = write_ground_truth(split, "", masks=False, annotator=ann, max_new_tokens=4)
    assert stats["text_from_annotator"] == 6
    vd, ref, cur, nxt, cur_u8, nxt_u8, _, _ = next(_pairs(split))
    t = json.loads((split / "text" / os.path.basename(vd) / f"{processed_name(cur, ref)}.json").read_text())
    assert t["source"] == "annotator" and t["prompt"] == ANNOTATOR_QUESTION
    # the annotator saw [cur | NEXT] with the annotator question
    assert t["next_text"] == ann.generate(cur_u8, nxt_u8, question=ANNOTATOR_QUESTION, max_new_tokens=4,
                                          stop_strings=["###"])
    n = len(json.loads((split / "llava_json.json").read_text()))
    assert n == 6 - stats["empty_text"]
