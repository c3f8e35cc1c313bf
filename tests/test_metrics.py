"""Evaluation metrics against hand-computed values (DTW, IoU, Fréchet distance, LPIPS alignment, DTS)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from inverse_painting.evaluation.dtw import dtw
from inverse_painting.evaluation.fid import (
    FID_WEIGHTS_NAME,
    FIDInceptionV3,
    InceptionFeatureExtractor,
    MissingInceptionWeightsError,
    ModuleFeatureExtractor,
    compute_fid,
    fid_from_features,
    frechet_distance,
)
from inverse_painting.evaluation.metrics import (
    FeatureCache,
    best_match_iou,
    dts_minutes,
    evaluate,
    evaluate_painting,
    iou_breakdown,
    mask_iou,
    nearest_time_indices,
    pair_distance,
    resolve_metric,
    score_batches,
)
from inverse_painting.evaluation.sequences import (
    PaintingSequence,
    load_sequences,
    parse_frame_name,
)
from inverse_painting.evaluation.time_map import time_map


# ---------------------------------------------------------------------------------------------- helpers


def _scene(h=64, w=96):
    """A target painting and its four regions (sky, mountain, ground, sun)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (60 + 80 * yy / h).astype(np.uint8)
    img[..., 1] = (120 + 60 * yy / h).astype(np.uint8)
    img[..., 2] = 230
    mountain = yy > h * 0.35 + np.abs(xx - w * 0.5) * 0.6
    ground = yy > h * 0.75
    sun = (yy - h * 0.2) ** 2 + (xx - w * 0.8) ** 2 < (h * 0.12) ** 2
    img[mountain] = (90, 80, 110)
    img[ground] = (60, 140, 50)
    img[sun] = (250, 220, 60)
    regions = [~(mountain | ground | sun), mountain & ~ground, ground, sun]
    return img, regions


def _process(order, h=64, w=96):
    tgt, regions = _scene(h, w)
    frames = [np.full_like(tgt, 255)]
    for k in order:
        cur = frames[-1].copy()
        cur[regions[k]] = tgt[regions[k]]
        frames.append(cur)
    return frames


@pytest.fixture(scope="module")
def metric():
    return resolve_metric("stlpips_alex")


# ---------------------------------------------------------------------------------------------- DTW


def test_dtw_identical_is_zero():
    r = dtw([1.0, 0.5, 0.25, 0.0], [1.0, 0.5, 0.25, 0.0])
    assert r.distance == 0 and r.normalized_distance == 0
    assert r.path == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_dtw_delayed_by_one_keyframe_hand_value():
    # real [1, .5, .25, 0]; generated = same process one keyframe late, ending before the target:
    # path (0,0) (0,1) (1,2) (2,3) (3,3): 0 + 0 + 2*0 + 2*0 + 1*|0 - .25| = .25; normalised by N+M = 8
    r = dtw([1.0, 0.5, 0.25, 0.0], [1.0, 1.0, 0.5, 0.25])
    assert r.distance == pytest.approx(0.25)
    assert r.normalized_distance == pytest.approx(0.03125)
    assert r.path == [(0, 0), (0, 1), (1, 2), (2, 3), (3, 3)]
    # a delay that still reaches the target is absorbed completely by the warping
    assert dtw([1.0, 0.5, 0.25, 0.0], [1.0, 1.0, 0.5, 0.25, 0.0]).distance == 0


def test_dtw_symmetric2_weights():
    # one sample each: D = c(0,0) = 2, normalised 2 / 2
    assert dtw([3.0], [1.0]).normalized_distance == pytest.approx(1.0)
    # x=[0, 1], y=[1]: (0,0) costs 1, (1,0) vertical costs 0 -> 1, / 3
    r = dtw([0.0, 1.0], [1.0])
    assert r.distance == pytest.approx(1.0) and r.normalized_distance == pytest.approx(1 / 3)
    # diagonal counts twice: x=[1, 2], y=[0, 3], c = [[1, 2], [2, 1]]: diagonal 1 + 2*1 = 3,
    # detours 1 + 2 + 1 = 4 -> 3, normalised 3 / 4
    r = dtw([1.0, 2.0], [0.0, 3.0])
    assert r.distance == pytest.approx(3.0) and r.normalized_distance == pytest.approx(0.75)
    # a detour wins when it is cheaper: x=[0, 0], y=[0, 2]: (0,0) 0 -> (1,0) 0 -> (1,1) 2 = 2 < 2*2
    assert dtw([0.0, 0.0], [0.0, 2.0]).distance == pytest.approx(2.0)
    # vector series use the Euclidean local cost
    assert dtw([[0, 0]], [[3, 4]]).distance == pytest.approx(5.0)


# ---------------------------------------------------------------------------------------------- IoU


def test_mask_iou_known_overlaps():
    a = np.zeros((8, 8), bool)
    b = np.zeros((8, 8), bool)
    a[0:4, 0:4] = True  # 16 px
    b[2:6, 2:6] = True  # 16 px, overlap 2x2 = 4 -> union 28
    assert mask_iou(a, b) == pytest.approx(4 / 28)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, ~a) == 0.0
    assert mask_iou(np.zeros((8, 8), bool), np.zeros((8, 8), bool)) == 1.0
    c = np.zeros((8, 8), bool)
    c[0:4, 0:2] = True  # half of a
    assert mask_iou(a, c) == pytest.approx(0.5)
    mean, details = best_match_iou([a, b, c], [a, c])
    # a -> a (1), b -> best of (4/28, 0) , c -> c (1)
    assert mean == pytest.approx((1 + 4 / 28 + 1) / 3)
    assert [d["best_real_transition"] for d in details] == [1, 1, 2]
    assert np.isnan(best_match_iou([], [a])[0])


def test_empty_masks_match_nothing():
    # an imperceptible generated step must not borrow a perfect score from an imperceptible real step
    empty = np.zeros((8, 8), bool)
    a = np.zeros((8, 8), bool)
    a[0:4, 0:4] = True
    mean, details = best_match_iou([empty, a], [empty, a])
    assert mean == pytest.approx(0.5)
    assert [d["best_real_transition"] for d in details] == [2, 2]  # the empty real step is no candidate
    assert np.isnan(best_match_iou([a], [empty, empty])[0])


def test_iou_breakdown_pools_steps_over_paintings():
    from types import SimpleNamespace

    empty = np.zeros((8, 8), bool)
    a, b, corner = empty.copy(), empty.copy(), empty.copy()
    a[:4] = True  # top half
    b[4:] = True  # bottom half
    corner[:2, :2] = True  # 4 of 32 cells of a: IoU 0.125
    sliver = empty.copy()
    sliver[4, 0] = True  # 1 of 32 cells of b: IoU 0.031, matches no real step
    results = []
    for gen in ([a, empty, corner], [sliver, b]):
        _, details = best_match_iou(gen, [a, b])
        results.append(SimpleNamespace(iou_details=details, generated_masks=gen))
    # a painting with no real change has no IoU details: its steps are not counted
    results.append(SimpleNamespace(iou_details=[], generated_masks=[empty]))
    got = iou_breakdown(results)
    assert (got["steps"], got["unmatched"], got["unchanged"]) == (5, 2, 1)
    assert got["matched_mean"] == pytest.approx((1 + 0.125 + 1) / 3)
    assert iou_breakdown([])["matched_mean"] is None
    # the bound itself counts as a match: 1 cell of a 20-cell real region is IoU 0.05
    real = empty.copy()
    real.flat[:20] = True
    one = empty.copy()
    one.flat[0] = True
    _, details = best_match_iou([one], [real])
    assert iou_breakdown([SimpleNamespace(iou_details=details, generated_masks=[one])])["unmatched"] == 0


# ---------------------------------------------------------------------------------------------- Fréchet


def test_frechet_closed_form_gaussians():
    # diagonal: |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2 = (1 + 4) + ((1-2)^2 + (2-3)^2) = 7
    assert frechet_distance([0, 0], np.diag([1.0, 4.0]), [1, 2], np.diag([4.0, 9.0])) == pytest.approx(7.0)
    # 1-D: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance([2.0], [[9.0]], [-1.0], [[1.0]]) == pytest.approx(9 + 4)
    # identical -> 0
    s = np.array([[2.0, 0.5], [0.5, 1.0]])
    assert frechet_distance([1, 1], s, [1, 1], s) == pytest.approx(0.0, abs=1e-12)
    # non-commuting covariances: same as the scipy sqrtm form
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + np.eye(5), b @ b.T + 0.5 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2))))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)


def test_fid_from_features_matches_sample_moments():
    rng = np.random.default_rng(1)
    f1 = rng.normal(size=(200, 3))
    f2 = rng.normal(loc=2.0, size=(150, 3)) * 0.5
    ref = frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert fid_from_features(f1, f2) == pytest.approx(ref)
    assert fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-9)


def test_fid_with_a_small_pluggable_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
    ext = ModuleFeatureExtractor(net, batch_size=3)
    frames = _process([0, 1, 2, 3])
    assert compute_fid(frames, frames, ext) == pytest.approx(0.0, abs=1e-9)
    other = _process([3, 2, 1, 0])
    # features are deterministic: FID equals the Fréchet distance of the extracted features
    assert compute_fid(frames, other, ext) == pytest.approx(fid_from_features(ext(frames), ext(other)))


def test_inception_layout_and_missing_file(tmp_path):
    with pytest.raises(MissingInceptionWeightsError) as ei:
        InceptionFeatureExtractor(tmp_path)
    assert FID_WEIGHTS_NAME in str(ei.value)
    net = FIDInceptionV3()
    sd = net.state_dict()
    # torchvision Inception3 key names, 1008-way fc as in pytorch-fid's file
    assert tuple(sd["Conv2d_1a_3x3.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(sd["Mixed_5b.branch_pool.conv.weight"].shape) == (32, 192, 1, 1)
    assert tuple(sd["Mixed_6e.branch7x7dbl_5.conv.weight"].shape) == (192, 192, 1, 7)
    assert tuple(sd["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape) == (384, 384, 3, 1)
    assert tuple(sd["fc.weight"].shape) == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in sd)
    torch.save(sd, tmp_path / FID_WEIGHTS_NAME)
    ext = InceptionFeatureExtractor(tmp_path)  # a folder holding the file works too
    feats = ext(_process([0, 1])[:2])
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()


# ---------------------------------------------------------------------------------------------- alignment


def test_nearest_time_and_dts():
    gen = [0, 20, 40, 60, 80, 100]
    # 1:17 -> 1:20 (index 4); 10 s is a tie between 0 and 20 -> the earlier; beyond the end -> last
    assert nearest_time_indices([77, 10, 31, 500], gen) == [4, 0, 2, 5]
    assert dts_minutes(200, 260) == pytest.approx(1.0)
    assert dts_minutes(260, 200) == pytest.approx(1.0)


def test_identical_sequences(metric):
    seq = PaintingSequence.from_frames("p", _process([0, 1, 2, 3]), [0, 23, 41, 65, 88])
    r = evaluate_painting(seq, seq, metric)
    assert (r.lpips, r.iou, r.ddc, r.dts_min) == (0.0, 1.0, 0.0, 0.0)


def test_sequence_delayed_by_one_keyframe(metric):
    frames = _process([0, 1, 2, 3])
    n = len(frames)
    times = [0, 20, 40, 60, 80]
    real = PaintingSequence.from_frames("p", frames, times)
    delayed = PaintingSequence.from_frames("p", [frames[0]] + frames[:-1], times)
    r = evaluate_painting(real, delayed, metric)
    cache = FeatureCache(metric)
    step = [pair_distance(metric, cache, frames[i], frames[i - 1]) for i in range(1, n)]
    # LPIPS: real frame i meets generated frame i = real frame i-1
    assert r.lpips == pytest.approx(sum(step) / n, rel=1e-6)
    # IoU: the generated masks are [empty, real masks 1..n-2]; every real mask is non-empty, so the
    # empty one scores 0 and the others 1
    assert all(m.any() for m in r.real_masks)
    assert r.iou == pytest.approx((n - 2) / (n - 1))
    # DDC: only the last cell (target vs frame n-2) costs, once: r_{n-2} / (N + M)
    assert r.real_curve[-1] == 0.0
    assert r.ddc == pytest.approx(r.real_curve[-2] / (2 * n), rel=1e-9)
    assert r.dts_min == 0.0


def test_score_batches_accepts_comfy_tensors(metric):
    frames = _process([0, 1, 2])
    batch = torch.from_numpy(np.stack(frames).astype(np.float32) / 255.0)  # [B, H, W, C] 0..1
    rep = score_batches(batch, batch, metric=metric)
    ov = rep["overall"]
    assert (ov["lpips"], ov["iou"], ov["ddc"], ov["dts_min"]) == (0.0, 1.0, 0.0, 0.0)
    assert ov["metric"] == "stlpips_alex" and ov["fid"] is None
    json.dumps({k: v for k, v in rep.items() if k != "_results"})


def test_evaluate_overall_means_and_fid(metric):
    a = PaintingSequence.from_frames("a", _process([0, 1, 2, 3]), [0, 23, 41, 65, 88])
    b = PaintingSequence.from_frames("b", _process([1, 0, 3, 2]))
    ext = ModuleFeatureExtractor(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2)), name="rgb_pool2")
    rep = evaluate([(a, a), (a, b)], metric, fid_extractor=ext)
    p1, p2 = rep["paintings"]
    assert rep["overall"]["lpips"] == pytest.approx((p1["lpips"] + p2["lpips"]) / 2)
    assert rep["overall"]["dts_min"] == pytest.approx(abs(88 - 80) / 60 / 2)
    assert rep["overall"]["fid_features"] == "rgb_pool2" and rep["overall"]["fid"] > 0
    assert rep["overall"]["fid_num_real"] == 10 and rep["overall"]["fid_num_generated"] == 10


# ---------------------------------------------------------------------------------------------- time map


def test_time_map_pixel_method_and_given_masks():
    frames = _process([0, 1, 2, 3])
    _, regions = _scene()
    tm = time_map(frames, threshold=0.01, metric="pixel")
    assert tm.index.shape == (64, 96) and tm.image.shape == (64, 96, 3) and tm.image.dtype == np.uint8
    # every region was changed last by the keyframe that painted it (sun last, over the sky)
    for k, reg in enumerate(regions, start=1):
        assert (tm.index[reg] == k).all()
    assert tm.coverage() == 1.0
    # given masks: later transitions overwrite earlier ones; unchanged pixels stay 0 (white)
    m1 = np.zeros((64, 96), bool)
    m1[:32] = True
    m2 = np.zeros((64, 96), bool)
    m2[16:40] = True
    tm2 = time_map(frames[:3], masks=[m1, m2])
    assert (tm2.index[:16] == 1).all() and (tm2.index[16:40] == 2).all() and (tm2.index[40:] == 0).all()
    assert (tm2.image[50, 50] == 255).all()


def test_time_map_default_metric(metric):
    frames = _process([0, 2])
    tm = time_map(frames, threshold=0.2, metric=metric)
    _, regions = _scene()
    # the sky painted first, the ground later: the bulk of each region carries its keyframe
    assert (tm.index[regions[0]] == 1).mean() > 0.5
    assert (tm.index[regions[2]] == 2).mean() > 0.8


# ---------------------------------------------------------------------------------------------- reading


def test_frame_name_parsing():
    assert parse_frame_name("10_3:21") == (10, 201)
    assert parse_frame_name("3_0-07") == (3, 7)
    assert parse_frame_name("0004_1m20s") == (4, 80)
    assert parse_frame_name("sample_3") is None


def test_read_both_layouts(tmp_path):
    from PIL import Image

    frames = _process([0, 1, 2])
    raw = tmp_path / "real" / "video1"
    raw.mkdir(parents=True)
    names = ["0_0:05", "4_0:27", "9_0:49", "12_1:17"]
    for n, f in zip(names, frames):
        Image.fromarray(f).save(raw / f"{n}.png")
    (raw / "last_aligned_frame_inv.json").write_text(json.dumps({names[-1]: names[:-1]}))
    gen = tmp_path / "gen" / "video1"
    gen.mkdir(parents=True)
    entries = []
    for k, f in enumerate(frames):
        fn = f"{k:04d}_{(20 * k) // 60}m{(20 * k) % 60:02d}s.png"
        Image.fromarray(f).save(gen / fn)
        entries.append({"index": k, "time_s": 20.0 * k, "file": fn, "instruction": ["", "sky", "mountain", "ground"][k]})
    (gen / "manifest.json").write_text(json.dumps({"keyframes": entries}))
    real = load_sequences(tmp_path / "real")
    assert list(real) == ["video1"] and real["video1"].times_s == [5, 27, 49, 77]
    assert np.array_equal(real["video1"].frames[2], frames[2])
    g = load_sequences(gen)["video1"]
    assert g.times_s == [0, 20, 40, 60] and g.instructions[1] == "sky" and g.duration_s == 60
    (gen / "manifest.json").unlink()  # names alone are enough
    assert load_sequences(gen)["video1"].times_s == [0, 20, 40, 60]
