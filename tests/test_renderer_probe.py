"""The renderer probe (evaluation/renderer_probe.py) on a tiny random release and synthetic processes."""
import math

import numpy as np
import torch


def test_new_paint_mask_marks_blank_pixels_that_get_paint():
    from inverse_painting.evaluation.renderer_probe import new_paint_mask

    cur = np.full((4, 4, 3), 255, np.uint8)
    cur[0] = 90  # already painted
    nxt = cur.copy()
    nxt[0, 0] = 10  # repainted: not new
    nxt[2, 1] = (250, 200, 250)  # blank -> paint
    nxt[3, 3] = 245  # still (nearly) blank
    want = np.zeros((4, 4), bool)
    want[2, 1] = True
    np.testing.assert_array_equal(new_paint_mask(cur, nxt), want)


def test_probe_reports_each_variant(tiny_release, tmp_path):
    from inverse_painting.core.imaging import prepare_image
    from inverse_painting.core.model_set import ModelSet
    from inverse_painting.evaluation.renderer_probe import VARIANTS, new_paint_mask, run
    from inverse_painting.evaluation.sequences import load_sequences
    from inverse_painting.training.synthetic import generate_dataset

    generate_dataset(str(tmp_path / "d"), 2, seed=0, size=(64, 96), num_steps=6)
    single = run(tiny_release, tmp_path / "d", count=1, per_painting=2, min_new=0.01)
    assert all(math.isnan(r["other_target"]) for r in single["in_region_latent_mse"].values())  # nothing to swap in
    res = run(tiny_release, tmp_path / "d", count=2, per_painting=2, min_new=0.01)
    assert res["pairs"][: len(single["pairs"])] == single["pairs"]
    rows = res["in_region_latent_mse"]
    assert len(rows) == 3 and all(set(r) == set(VARIANTS) for r in rows.values())
    assert all(math.isfinite(v) and v >= 0 for r in rows.values() for v in r.values())
    # the random release's reference attention is live: leaving the banks out, or using another painting's
    # target, changes the estimate
    assert any(abs(r["full"] - r["no_reference"]) > 1e-6 for r in rows.values())
    assert any(abs(r["full"] - r["other_target"]) > 1e-6 for r in rows.values())
    # "canvas" is the plain latent error of painting nothing, the same at every sigma
    seqs = load_sequences(tmp_path / "d")
    models = ModelSet.from_release(tiny_release, dtype=torch.float32)
    expected = []
    for pair in res["pairs"]:
        seq = seqs[pair["painting"]]
        short = min(seq.target.shape[:2])
        k = pair["frame"]
        cur, nxt = (prepare_image(seq.frames[i], short).padded for i in (k, k + 1))
        zc, zn = models.image_latents(cur).float(), models.image_latents(nxt).float()
        m = torch.from_numpy(new_paint_mask(cur, nxt).astype(np.float32))[None, None]
        cells = torch.nn.functional.interpolate(m, size=zn.shape[-2:], mode="area")[0, 0] > 0.5
        expected.append(float(((zc - zn)[:, :, cells] ** 2).mean()))
    for r in rows.values():
        assert math.isclose(r["canvas"], float(np.mean(expected)), rel_tol=1e-5)
