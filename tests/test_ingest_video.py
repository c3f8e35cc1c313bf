"""Video ingestion: synthetic painting videos (canvas in perspective, a hand with a brush) -> raw layout."""
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from inverse_painting.training import raw_layout as rl
from inverse_painting.training.ingest_video import (
    REPORT_JSON,
    IngestParams,
    decide,
    fit_quad,
    homography,
    ingest_video,
    iter_samples,
    rectify,
    warp_perspective,
)
from inverse_painting.training.synthetic import generate_process, random_stage, write_video


def _match_errors(report, process, border=6):
    """Mean abs error (0..255) of every kept frame against the process keyframe of the same index."""
    errs = []
    for k, name in enumerate(report["kept"]):
        im = rl.load_frame(report["out_dir"], name).astype(np.float32)
        ref = Image.fromarray(process.frames[k]).resize((im.shape[1], im.shape[0]), Image.BILINEAR)
        ref = np.asarray(ref, np.float32)
        errs.append(float(np.abs(im - ref)[border:-border, border:-border].mean()))
    return errs


# ------------------------------------------------------------------------------------- geometry
def test_homography_and_warp():
    src = np.array([[10, 5], [90, 12], [95, 70], [4, 60]], float)
    dst = np.array([[0, 0], [64, 0], [64, 48], [0, 48]], float)
    H = homography(src, dst)
    p = (H @ np.c_[src, np.ones(4)].T).T
    assert np.allclose(p[:, :2] / p[:, 2:], dst, atol=1e-8)
    img = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    ident = warp_perspective(img, np.eye(3), (20, 30))
    assert np.allclose(ident, img, atol=1e-3)
    # a quad rectified back to its rectangle
    canvas = (np.random.default_rng(1).random((48, 64, 3)) * 255).astype(np.uint8)
    canvas = np.asarray(Image.fromarray(canvas).filter(ImageFilter.BoxBlur(2)))
    frame = warp_perspective(canvas, homography(src, dst), (80, 110))
    back = rectify(np.clip(frame + 0.5, 0, 255).astype(np.uint8), src, (48, 64))
    assert np.abs(back.astype(float) - canvas)[3:-3, 3:-3].mean() < 4.0


def test_fit_quad_recovers_corners():
    quad = np.array([[30.3, 20.7], [170.2, 28.1], [165.6, 130.4], [25.1, 120.2]])
    m = Image.new("L", (200, 150), 0)
    ImageDraw.Draw(m).polygon([tuple(p) for p in quad], fill=1)
    fitted, iou = fit_quad(np.asarray(m).astype(bool))
    assert iou > 0.97
    assert np.abs(fitted - quad).max() < 1.0


# ------------------------------------------------------------------------------------- decisions
def test_decide_reasons():
    """Paint that stays is kept, a blob that comes and goes is dropped, repeats are 'no change'."""
    h, w = 60, 80
    white = np.ones((h, w, 3), np.float32)
    painted = white.copy()
    painted[5:30, :] = [0.3, 0.5, 0.8]                        # the sky goes on and stays
    hand = painted.copy()
    hand[35:55, 20:45] = [0.85, 0.65, 0.5]                    # a hand over the white lower half
    frames = [white, white, painted, painted, hand, hand, painted, painted]
    times = [2.0 * i for i in range(len(frames))]
    rec = decide(frames, times, IngestParams())
    dec = [(r["decision"], r["reason"].split(":")[0]) for r in rec]
    assert dec[0] == ("keep", "first clean frame (the start canvas)")
    assert dec[1] == ("drop", "no change")
    assert dec[2][0] == "keep" and dec[2][1] == "changed"
    assert dec[3] == ("drop", "no change")
    assert dec[4] == ("drop", "occluded") and dec[5] == ("drop", "occluded")
    assert rec[4]["scores"]["reverted"] > 0.05               # the hand left and the canvas came back
    assert dec[6] == ("drop", "no change") and dec[7] == ("drop", "no change")
    # min_gap_s: a second change too soon after the last kept frame is skipped
    more = painted.copy()
    more[30:60, :] = [0.2, 0.5, 0.2]
    rec = decide([white, white, painted, more, more, more], [0, 1, 2, 3, 4, 5], IngestParams(min_gap_s=2.5))
    assert [r["decision"] for r in rec] == ["keep", "drop", "drop", "keep", "drop", "drop"]
    assert rec[1]["reason"].startswith("no change") and rec[2]["reason"].startswith("too soon")


def test_iter_samples_times(tmp_path):
    """Sampling picks the frame on screen at 0, every_s, 2 every_s, ..."""
    import av

    path = str(tmp_path / "count.mp4")
    c = av.open(path, "w")
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
    for i in range(40):
        img = np.full((32, 32, 3), (i * 6) % 256, np.uint8)
        for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(pkt)
    for pkt in s.encode():
        c.mux(pkt)
    c.close()
    got = list(iter_samples(path, 0.5))
    assert [round(t, 3) for t, _ in got] == [0.5 * i for i in range(8)]
    for t, img in got:
        assert abs(float(img.mean()) - (round(t * 10) * 6) % 256) < 4
    got = list(iter_samples(path, 1.0, start_s=1.0, end_s=3.0))
    assert [round(t, 3) for t, _ in got] == [1.0, 2.0, 3.0]
    assert all(img.shape == (16, 16, 3) for _, img in iter_samples(path, 1.0, thumb_long=16))


def test_ingest_full_frame_canvas(tmp_path):
    """A plain time-lapse (the canvas is the whole frame) goes through automatic detection unchanged."""
    proc = generate_process(4, 120, 160, num_steps=5)
    video = str(tmp_path / "plain.mp4")
    info = write_video(proc, video, fps=6, seconds_per_keyframe=1.0)       # default codec (libx264)
    rep = ingest_video(video, str(tmp_path), "plain", every_s=0.25, short_side=120,
                       time_scale=1.0 / info["time_scale"])
    assert np.allclose(rep["canvas"]["quad"], [[0, 0], [160, 0], [160, 120], [0, 120]], atol=0.5)
    assert rep["n_kept"] == len(proc.frames) and not rep["warnings"]
    assert max(_match_errors(rep, proc, border=2)) < 6.0


# ------------------------------------------------------------------------------------- end to end
def test_ingest_hand_perspective(tmp_path):
    proc = generate_process(3, 192, 256)
    rng = np.random.default_rng(3)
    stage = random_stage(rng, proc.final.shape[:2], rotate_deg=5, perspective=0.05)  # off-centre, tilted
    iv = np.asarray(proc.intervals_s)
    hands = [int(k) for k in np.argsort(-iv)[:3]]            # a hand over the canvas on 3 keyframes
    video = str(tmp_path / "painting.mp4")
    info = write_video(proc, video, fps=8, seconds_per_keyframe=2.0, stage=stage, hand_keyframes=hands,
                       noise=2.0, codec="mpeg4", seed=3)
    assert max(info["hand_canvas_fraction"]) > 0.03            # the test really occludes the canvas
    every = 0.25
    rep = ingest_video(video, str(tmp_path / "train"), "vid", every_s=every, short_side=192,
                       time_scale=1.0 / info["time_scale"])
    # canvas found: corners within a pixel of the truth, short side 192
    assert rep["canvas"]["method"] == "auto" and rep["canvas"]["ok"]
    assert np.abs(np.asarray(rep["canvas"]["quad"]) - np.asarray(info["quad"])).max() < 1.5
    assert min(rep["canvas"]["out_hw"]) == 192
    # every keyframe recovered once, in order, and nothing else
    assert rep["n_kept"] == len(proc.frames)
    errs = _match_errors(rep, proc)
    assert max(errs) < 8.0, errs
    kept = [r for r in rep["samples"] if r["decision"] == "keep"]
    for k, r in enumerate(kept):                              # times within one sampling step
        assert 0.0 <= r["time_s"] - info["keyframe_times"][k] <= every + 1e-6
        assert abs(rl.frame_seconds(r["name"]) - proc.times_s[k]) <= every / info["time_scale"] + 1
    # the hand frames are dropped, and the report says why
    cover = {round(t, 3): c for t, c in zip(info["hand_times"], info["hand_canvas_fraction"])}
    n_occ = 0
    for r in rep["samples"]:
        c = cover.get(round(r["time_s"], 3))
        if c is not None:
            assert r["decision"] == "drop"
            if c > 0.01:
                assert r["reason"].startswith("occluded"), r
                assert r["scores"]["occlusion"] > 0
                n_occ += 1
    assert n_occ >= 5
    assert rep["counts"]["no change"] > 0
    for r in rep["samples"]:
        assert {"index", "time_s", "decision", "reason", "scores"} <= set(r)
    # the raw layout is in the official format and reads back as a pair list
    vd = rep["out_dir"]
    with open(os.path.join(vd, REPORT_JSON)) as f:
        assert json.load(f)["kept"] == rep["kept"]
    files = {f for f in os.listdir(vd) if f.endswith(".jpg")}
    assert files == {n + ".jpg" for n in rep["kept"]}
    (pl,) = rl.read_video_pairs(vd).values()
    assert pl.names == ["white"] + rep["kept"][1:]
    assert len(pl.pairs) == len(proc.frames) - 1
    assert all(abs(a - b) <= every / info["time_scale"] + 1 for a, b in zip(pl.intervals_s, proc.intervals_s))


def test_ingest_crop_override(tmp_path):
    """A bright wall around the canvas: the manual crop box gives the canvas exactly."""
    proc = generate_process(12, 144, 192, num_steps=6)
    box = (70, 30, 70 + 192, 30 + 144)                        # x0, y0, x1, y1 in the video frame
    stage = {"frame_hw": (220, 320), "background": (236, 234, 228),
             "quad": [[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]]}
    video = str(tmp_path / "wall.mp4")
    info = write_video(proc, video, fps=8, seconds_per_keyframe=1.5, stage=stage, hand_keyframes=[2],
                       codec="mpeg4", seed=1)
    rep = ingest_video(video, str(tmp_path), "wall", every_s=0.25, crop=box, short_side=144,
                       time_scale=1.0 / info["time_scale"])
    assert rep["canvas"]["method"] == "manual crop" and rep["canvas"]["crop"] == list(map(float, box))
    assert rep["canvas"]["out_hw"] == [144, 192]
    assert rep["n_kept"] == len(proc.frames)
    errs = _match_errors(rep, proc, border=3)
    assert max(errs) < 6.0, errs
    # a quad override is the same thing for a rectangle
    rep2 = ingest_video(video, str(tmp_path), "wall2", every_s=0.25, short_side=144,
                        quad=stage["quad"], time_scale=1.0 / info["time_scale"])
    assert rep2["kept"] == rep["kept"]
    with pytest.raises(ValueError):
        ingest_video(video, str(tmp_path), "bad", crop=(0, 0, 999, 10))
