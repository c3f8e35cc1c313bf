"""Synthetic painting-process generator and the official raw layout (write + re-read)."""
import json
import os
import re
import time

import numpy as np
import pytest
from PIL import Image

from inverse_painting.training import raw_layout as rl
from inverse_painting.training.synthetic import (
    PALETTES,
    PaintingProcess,
    generate_dataset,
    generate_process,
    main,
    write_raw_layout,
)

NAME_RE = re.compile(r"^\d+_\d+:\d\d$")


def _dist(a, b):
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_determinism_and_seeds_differ():
    a = generate_process(7, 96, 128)
    b = generate_process(7, 96, 128)
    assert isinstance(a, PaintingProcess) and a.seed == 7
    assert len(a.frames) == len(b.frames)
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames))
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    assert a.times_s == b.times_s and a.labels == b.labels
    c = generate_process(8, 96, 128)
    assert _dist(a.final, c.final) > 5.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_process_structure_and_monotone(seed):
    p = generate_process(seed, 128, 160)
    n = len(p.frames)
    assert n >= 6
    assert len(p.times_s) == n and len(p.labels) == n - 1 and len(p.masks) == n - 1
    assert p.frames[0].dtype == np.uint8 and p.frames[0].shape == (128, 160, 3)
    assert (p.frames[0] == 255).all()                       # white canvas at time 0
    assert p.times_s[0] == 0.0
    assert np.array_equal(p.frames[-1], p.final)
    iv = np.diff(p.times_s)
    assert (iv >= 7).all() and (iv <= 38).all()              # irregular intervals, 7..38 s
    assert all(float(t).is_integer() for t in p.times_s)     # whole seconds (names store m:ss)
    for lab in p.labels:
        assert isinstance(lab, str) and lab.strip() and len(lab.split()) <= 2
    for k, m in enumerate(p.masks):
        assert m.dtype == np.bool_ and m.shape == (128, 160) and m.any()
        # a step changes the canvas only inside its region
        outside = ~m
        assert np.array_equal(p.frames[k + 1][outside], p.frames[k][outside])
        assert not np.array_equal(p.frames[k + 1], p.frames[k])
    d = [_dist(f, p.final) for f in p.frames]
    assert d[-1] == 0.0 and d[0] > 30
    assert all(d[k + 1] < d[k] for k in range(n - 1)), d   # every step gets closer to the final painting


def test_layering_back_to_front():
    """Sky first, details last, big regions blocked in then refined (same label twice)."""
    seen_order = []
    twice = 0
    for seed in range(6):
        p = generate_process(seed, 96, 96)
        assert "sky" in p.labels[0]
        twice += p.labels[0] == p.labels[1]                  # block-in then refinement of the sky
        assert p.labels[-1] in ("details", "highlights", "stars", "flowers", "trees", "tree", "forest", "reflection")
        kinds = p.meta["kinds"]
        assert len(kinds) == len(p.labels)
        twice += "blockin" in kinds
        seen_order.append(p.labels)
    assert twice >= 6   # (a refinement too faint to see, e.g. a dark night sky, is merged into its block-in)
    flat = {lab for labs in seen_order for lab in labs}
    assert {"clouds", "flowers"} & flat and ({"mountain", "mountains", "far mountains", "hills"} & flat)


@pytest.mark.parametrize("palette", PALETTES)
def test_palettes(palette):
    p = generate_process(3, 64, 96, palette=palette)
    assert p.meta["palette"] == palette
    if palette == "night":
        assert p.final.mean() < 110
    if palette in ("misty",):
        assert p.final.mean() > 110


def test_any_size_and_length():
    for h, w in [(32, 32), (48, 200), (200, 48), (77, 131)]:
        p = generate_process(11, h, w)
        assert p.final.shape == (h, w, 3) and len(p.frames) > 3
    p = generate_process(5, 64, 64, num_steps=4)
    assert len(p.frames) == 5 and np.abs(np.diff(p.times_s)).min() >= 7
    q = generate_process(5, 64, 64, num_steps=40)
    assert len(q.frames) == 41
    assert np.array_equal(q.final, generate_process(5, 64, 64).final)   # same painting, more steps
    with pytest.raises(ValueError):
        generate_process(0, 16, 64)


def test_speed_256():
    generate_process(0, 64, 64)                               # warm-up (imports, caches)
    t = time.perf_counter()
    p = generate_process(1, 256, 256, num_steps=14)
    dt = time.perf_counter() - t
    assert len(p.frames) == 15
    assert dt < 3.0, f"256x256 process took {dt:.2f} s"


def test_raw_layout_roundtrip(tmp_path):
    p = generate_process(2, 96, 128)
    split = tmp_path / "train"
    vd = write_raw_layout(p, str(split), "synth_a")
    assert vd == os.path.join(str(split), "rgb", "synth_a")
    names = p.frame_names()
    assert all(NAME_RE.match(nm) for nm in names)
    files = set(os.listdir(vd))
    assert files == {nm + ".jpg" for nm in names} | {rl.INV_JSON, rl.LABELS_JSON}
    for k, nm in enumerate(names):
        ind, t = rl.parse_frame_name(nm)
        assert ind == k and t == p.times_s[k]
    with open(os.path.join(vd, rl.INV_JSON)) as f:
        inv = json.load(f)
    assert inv == {names[-1]: names[:-1]}                    # target: every earlier frame, in order
    labels = rl.read_labels(vd)
    assert labels == {names[k + 1]: p.labels[k] for k in range(p.num_steps)}
    # frames re-read close to the process (JPEG q95)
    for k in (1, len(names) // 2, len(names) - 1):
        im = rl.load_frame(vd, names[k])
        assert im.shape == p.frames[k].shape and _dist(im, p.frames[k]) < 3.0
    white = rl.load_frame(vd, "white", like=p.final)
    assert (white == 255).all() and white.shape == p.final.shape
    # pair list as the official dataset builds it: white replaces the first listed frame
    pairs = rl.read_video_pairs(vd)
    assert list(pairs) == [names[-1]]
    pl = pairs[names[-1]]
    assert pl.names == ["white"] + names[1:]
    assert pl.intervals_s == p.intervals_s
    assert [c for c, _, _ in pl.pairs] == ["white"] + names[1:-1]
    assert rl.list_videos(str(split)) == [vd]


def test_raw_layout_subsampling_branch(tmp_path):
    p = generate_process(4, 48, 64, num_steps=120)          # 121 frames: the >= 100 frame branch
    assert len(p.frames) == 121
    vd = write_raw_layout(p, str(tmp_path), "long")
    names = p.frame_names()
    pl = rl.read_video_pairs(vd)[names[-1]]
    assert len(pl.names) == rl.SAMPLE_NUM and pl.names[0] == "white" and pl.names[-1] == names[-1]
    assert len(pl.pairs) == 99
    idx = rl.subsample_indices(120, 99)
    assert idx[0] == 0 and idx[-1] == 119 and (np.diff(idx) >= 1).all()
    assert pl.names[1:-1] == [names[i] for i in idx[1:]]
    # intervals on the subsampled list (the correct behaviour, not official bug B11)
    t = [0.0] + [p.times_s[i] for i in idx[1:]] + [p.times_s[-1]]
    assert pl.intervals_s == list(np.diff(t))
    assert sum(pl.intervals_s) == p.times_s[-1]
    b11 = rl.read_video_pairs(vd, replicate_b11=True)[names[-1]]
    assert b11.names == pl.names
    assert b11.intervals_s == list(np.diff(p.times_s))[:99]  # official: unsubsampled intervals
    assert b11.intervals_s != pl.intervals_s


def test_pair_list_rules():
    listed = ["0_0:45", "1_1:10", "2_1:29"]
    pl = rl.build_pair_list(listed, "3_2:07")
    assert pl.names == ["white", "1_1:10", "2_1:29", "3_2:07"]
    assert pl.times_s == [30.0, 70.0, 89.0, 127.0]           # first clamped to <= 30 s
    assert pl.intervals_s == [40.0, 19.0, 38.0]
    # exactly 99 entries after the white replacement: subsampling is the identity
    listed = [rl.format_frame_name(i, 10 * i) for i in range(99)]
    pl = rl.build_pair_list(listed, rl.format_frame_name(99, 990))
    assert len(pl.names) == 100 and pl.names[1:-1] == listed[1:]
    assert rl.parse_frame_name("10_3:21") == (10, 201.0)
    assert rl.parse_frame_name("10_3:21.jpg") == (10, 201.0)
    assert rl.parse_frame_name("7_75:03") == (7, 4503.0)
    assert rl.parse_frame_name("7_1:15:03") == (7, 4503.0)
    assert rl.parse_frame_name("10_3-21") == (10, 201.0)
    assert rl.format_frame_name(3, 65.9) == "3_1:05"
    assert rl.format_frame_name(3, 65.9, windows_safe=True) == "3_1-05"
    with pytest.raises(ValueError):
        rl.parse_frame_name("white")


def test_windows_safe_names(tmp_path):
    p = generate_process(6, 48, 48, num_steps=5)
    vd = write_raw_layout(p, str(tmp_path), "win", windows_safe=True)
    assert not any(":" in f for f in os.listdir(vd))
    pl = rl.read_video_pairs(vd)
    (only,) = pl.values()
    assert only.intervals_s == p.intervals_s


def test_generate_dataset_and_cli(tmp_path):
    recs = generate_dataset(str(tmp_path), count=3, seed=5, size=48, split="val", num_steps=(4, 6))
    assert len(recs) == 3
    vids = rl.list_videos(str(tmp_path / "val"))
    assert [os.path.basename(v) for v in vids] == ["synth_00000", "synth_00001", "synth_00002"]
    for r, vd in zip(recs, vids):
        assert 5 <= r["frames"] <= 7 and min(r["height"], r["width"]) == 48
        (pl,) = rl.read_video_pairs(vd).values()
        assert len(pl.pairs) == r["frames"] - 1
        im = rl.load_frame(vd, pl.names[-1])
        assert im.shape[:2] == (r["height"], r["width"])
    manifest = json.load(open(tmp_path / "val" / "synthetic.json"))
    assert [p["name"] for p in manifest["paintings"]] == ["synth_00000", "synth_00001", "synth_00002"]
    # the same seed regenerates the same painting
    r = recs[1]
    again = generate_process(r["seed"], r["height"], r["width"], num_steps=r["num_steps"], palette=None)
    assert again.labels == r["labels"] and again.times_s == r["times_s"]
    assert main([str(tmp_path / "cli"), "--count", "1", "--seed", "1", "--size", "40", "56"]) == 0
    (vd,) = rl.list_videos(str(tmp_path / "cli" / "train"))
    (pl,) = rl.read_video_pairs(vd).values()
    assert Image.open(os.path.join(vd, pl.names[-1] + ".jpg")).size == (56, 40)
