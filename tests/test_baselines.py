"""The naive baseline processes (evaluation/baselines.py) and the held-out starter report around them."""
import json

import numpy as np
import pytest

from inverse_painting.evaluation.baselines import band_reveal, cross_fade, tile_reveal, write_baseline


def _target(h=20, w=28, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_cross_fade_is_linear_from_white_to_target():
    t = _target()
    frames = cross_fade(t, 4)
    assert len(frames) == 5
    assert (frames[0] == 255).all() and np.array_equal(frames[-1], t)
    mid = frames[2].astype(float)
    assert np.abs(mid - (255 + 0.5 * (t.astype(float) - 255))).max() <= 0.5


def test_tile_reveal_shows_every_tile_once_in_seeded_order():
    t = _target()
    frames, masks = tile_reveal(t, 5, tile=8, seed=3)
    assert len(frames) == len(masks) == 6
    assert (frames[0] == 255).all() and np.array_equal(frames[-1], t)
    stacked = np.stack([m > 0 for m in masks[1:]])
    assert (stacked.sum(0) == 1).all()  # every pixel revealed by exactly one step
    tiles = 3 * 4  # ceil(20/8) x ceil(28/8)
    counts = [len({(y // 8, x // 8) for y, x in zip(*np.nonzero(m))}) for m in masks[1:]]
    assert sum(counts) == tiles and max(counts) - min(counts) <= 1
    for k in range(1, 6):  # outside the step's mask nothing changes; inside it becomes the target
        m = masks[k] > 0
        assert np.array_equal(frames[k][~m], frames[k - 1][~m]) and np.array_equal(frames[k][m], t[m])
    again, _ = tile_reveal(t, 5, tile=8, seed=3)
    other, _ = tile_reveal(t, 5, tile=8, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))
    assert not all(np.array_equal(a, b) for a, b in zip(frames, other))


def test_band_reveal_paints_top_to_bottom_in_hard_edged_bands():
    t = _target(23, 17)
    frames, masks = band_reveal(t, 5)
    assert len(frames) == len(masks) == 6
    assert (frames[0] == 255).all() and not masks[0].any() and np.array_equal(frames[-1], t)
    assert set(np.unique(np.stack(masks))) <= {0, 255}
    stacked = np.stack([m > 0 for m in masks[1:]])
    assert (stacked.sum(0) == 1).all()  # every pixel revealed by exactly one step
    rows_done = []
    for k in range(1, 6):
        m = masks[k] > 0
        assert (m.all(1) | ~m.any(1)).all()  # whole rows: a horizontal band
        rows = np.nonzero(m.all(1))[0]
        assert rows.size in (4, 5) and np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))  # one band of ~23/5
        assert rows[0] == (rows_done[-1] + 1 if rows_done else 0)  # right below the previous band
        rows_done.append(rows[-1])
        # hard edge: the band is exactly the target, everything below it still white, above it unchanged
        assert np.array_equal(frames[k][m], t[m]) and (frames[k][rows[-1] + 1:] == 255).all()
        assert np.array_equal(frames[k][~m], frames[k - 1][~m])
    assert band_reveal(t, 1)[0][1].tolist() == t.tolist()  # one keyframe: the whole target at once


def test_written_baseline_reads_back_as_a_sequence(tmp_path):
    from inverse_painting.evaluation.sequences import load_sequences

    t = _target(64, 80)
    write_baseline("tiles", tmp_path / "p", t, 3, interval_s=20)
    seqs = load_sequences(tmp_path / "p")
    seq = next(iter(seqs.values()))
    assert seq.times_s == [0, 20, 40, 60] and np.array_equal(seq.target, t)
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["settings"]["baseline"] == "tiles"
    write_baseline("band", tmp_path / "b", t, 4, interval_s=20)
    band = next(iter(load_sequences(tmp_path / "b").values()))
    assert len(band.frames) == 5 and np.array_equal(band.target, t)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["settings"]["baseline"] == "band"
    with pytest.raises(ValueError):
        write_baseline("nope", tmp_path / "q", t, 3)


def test_starter_report_end_to_end(tmp_path, capsys):
    """Smoke starter -> 2 held-out processes -> starter + baselines -> evaluation -> table and figures."""
    from inverse_painting.evaluation import starter_report
    from inverse_painting.training import starter

    model = tmp_path / "starter"
    assert starter.main(["--out", str(model), "--smoke", "--device", "cpu", "--no-keep-work"]) == 0
    out, figs = tmp_path / "eval", tmp_path / "figs"
    assert starter_report.main(["--models", str(model), "--out", str(out), "--count", "2", "--steps", "1",
                                "--max-keyframes", "3", "--figures", str(figs), "--update-card"]) == 0
    res = json.loads((out / "results.json").read_text())
    # the smoke starter ends with the starter's 2 finishing keyframes: a row without them is added
    assert list(res["overall"]) == ["starter", "starter_unfinished", "crossfade", "tiles", "band",
                                    "vae_bound"]
    # the bound: the real frames through the VAE, at the real times (DTS 0)
    from inverse_painting.evaluation.sequences import load_sequences

    for name, seq in load_sequences(out / "data" / "heldout" / "rgb").items():
        bound = json.loads((out / "vae_bound" / name / "manifest.json").read_text())
        assert [k["time_s"] for k in bound["keyframes"]] == [float(t) for t in seq.times_s]
    assert res["overall"]["vae_bound"]["dts_min"] == 0
    for m, o in res["overall"].items():
        assert o["num_paintings"] == 2
        assert all(np.isfinite(o[k]) or k == "iou" for k in ("lpips", "ddc", "dts_min")), (m, o)
    # baselines get the starter's keyframe count per painting, finishing keyframes included
    for name, n in res["paint"]["keyframes"].items():
        assert 3 <= n <= 5
        man = json.loads((out / "crossfade" / name / "manifest.json").read_text())
        assert len(man["keyframes"]) == n + 1
        painted = json.loads((out / "starter" / name / "manifest.json").read_text())["keyframes"]
        assert [k.get("finishing", False) for k in painted] == [False] * (n - 1) + [True] * 2
        own = json.loads((out / "starter_unfinished" / name / "manifest.json").read_text())["keyframes"]
        assert own == painted[:-2] and all((out / "starter_unfinished" / name / k["file"]).is_file() for k in own)
    assert (figs / "starter_strip.png").stat().st_size > 0 and (figs / "starter_time_map.png").stat().st_size > 0
    table, steps = (out / "results.md").read_text().split("\n\n")
    assert table.count("\n") == 7 and "starter model" in table and "random 8x8 tiles" in table
    assert "top-to-bottom bands" in table
    assert "(bound, not a method)" in table and "**" not in table.splitlines()[-1]
    assert "(not ranked)" in table.splitlines()[3] and "**" not in table.splitlines()[3]
    # the IoU breakdown: one row per method, its step count that of the method's masks
    rows = steps.strip().splitlines()[2:]
    assert len(rows) == len(res["overall"])
    for row, (m, o) in zip(rows, res["overall"].items()):
        b = o["iou_breakdown"]
        assert row.split(" | ")[1:4] == [str(b["steps"]), str(b["unmatched"]), str(b["unchanged"])]
        assert b["unchanged"] <= b["unmatched"] <= b["steps"]
    # one step per keyframe after frame 0 (both smoke paintings have real steps to match)
    assert res["overall"]["starter"]["iou_breakdown"]["steps"] == sum(res["paint"]["keyframes"].values())
    assert "| starter model |" in capsys.readouterr().out
    card = (model / "MODEL_CARD.md").read_text()
    assert "## Evaluation" in card and table.strip() in card
    assert json.loads((model / "starter.json").read_text())["evaluation"]["count"] == 2


def test_held_out_seed_must_not_overlap_training():
    from inverse_painting.evaluation.starter_report import painting_seeds, write_held_out

    assert painting_seeds(0, 5) == painting_seeds(0, 5) and not painting_seeds(0, 240) & painting_seeds(1000, 20)
    with pytest.raises(SystemExit):
        write_held_out(None, 2, 0, 64, None, train_seed=0, train_count=10)
