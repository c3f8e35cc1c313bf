"""End to end: two synthetic painting processes on disk -> `evaluate` CLI -> five numbers, JSON, plots;
and the ComfyUI evaluation node on frame batches."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from inverse_painting.core.export import write_process
from inverse_painting.evaluation.cli import main
from inverse_painting.training.synthetic import generate_process, write_raw_layout

H, W = 192, 256
SEED = 11


def _write_generated(process, folder, interval_s=20.0):
    """Our CLI layout (core.export): keyframes every 20 s, instructions and masks per keyframe."""
    records = [{"time_s": interval_s * k, "instruction": "" if k == 0 else process.labels[k - 1]}
               for k in range(len(process.frames))]
    masks = [None] + [(m.astype(np.uint8) * 255) for m in process.masks]
    write_process(folder, process.frames, records, {"source": "synthetic"}, masks=masks, video=())


@pytest.fixture(scope="module")
def painted(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    real = generate_process(SEED, H, W)  # the "recorded" process: ~17 steps at irregular times
    gen = generate_process(SEED, H, W, num_steps=6)  # same painting, coarser process, 20 s keyframes
    write_raw_layout(real, str(root / "real" / "val"), "landscape_11")
    _write_generated(gen, root / "generated" / "landscape_11")
    return root, real, gen


def test_cli_end_to_end(painted, capsys):
    root, real, gen = painted
    out = root / "out"
    rc = main(["evaluate", str(root / "generated"), str(root / "real"), "--out", str(out), "--fid", "trunk"])
    assert rc == 0
    text = capsys.readouterr().out
    print(text)  # the five numbers (visible with pytest -s)
    numbers = {}
    for key in ("LPIPS", "IoU", "DDC", "DTS", "FID"):
        m = re.search(rf"^{key}:\s+([0-9.eE+-]+)", text, re.M)
        assert m, f"{key} missing in output:\n{text}"
        numbers[key] = float(m.group(1))

    report = json.loads((out / "evaluation.json").read_text())
    ov = report["overall"]
    assert ov["metric"] == "stlpips_alex" and ov["num_paintings"] == 1
    assert ov["unmatched_generated"] == [] and ov["unmatched_real"] == []
    assert 0 < ov["lpips"] < 1 and 0 < ov["iou"] <= 1 and ov["ddc"] > 0 and ov["fid"] >= 0
    # DTS by hand: real ends at its last time stamp, generated at 20 s x steps
    assert ov["dts_min"] == pytest.approx(abs(real.times_s[-1] - 20.0 * (len(gen.frames) - 1)) / 60)
    assert numbers["DTS"] == pytest.approx(ov["dts_min"], abs=1e-4)
    assert ov["fid_features"] == "stlpips_alex_relu5" and "not comparable" in ov["fid_note"]

    p = report["paintings"][0]
    assert p["name"] == "landscape_11"
    assert p["real"]["num_frames"] == len(real.frames) and p["generated"]["num_frames"] == len(gen.frames)
    assert p["real"]["distance_to_target"][-1] == 0.0  # the real target against itself
    assert len(p["lpips_per_real_frame"]) == len(real.frames)
    assert len(p["iou_per_generated_mask"]) == len(gen.frames) - 1
    for kind in ("distance_curves", "time_map", "contact_sheet"):
        png = out / "landscape_11" / f"{kind}.png"
        assert png.is_file()
        with Image.open(png) as im:
            arr = np.asarray(im.convert("RGB"))
        assert min(arr.shape[:2]) > 200 and arr.std() > 10  # a drawn figure, not a blank page
    assert json.loads((out / "landscape_11" / "metrics.json").read_text())["lpips"] == pytest.approx(p["lpips"])


def test_identical_folders_give_perfect_scores(painted, tmp_path):
    root, _, _ = painted
    rc = main([str(root / "generated" / "landscape_11"), str(root / "generated" / "landscape_11"),
               "--out", str(tmp_path), "--no-plots"])
    assert rc == 0
    ov = json.loads((tmp_path / "evaluation.json").read_text())["overall"]
    assert (ov["lpips"], ov["iou"], ov["ddc"], ov["dts_min"]) == (0.0, 1.0, 0.0, 0.0)
    assert ov["fid"] is None and "no Inception" in ov["fid_note"]


def test_inception_requested_without_file_is_a_clear_error(painted, tmp_path, capsys):
    root, _, _ = painted
    assert main([str(root / "generated"), str(root / "real"), "--out", str(tmp_path), "--fid", "inception",
                 "--inception-weights", str(tmp_path / "missing.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "pt_inception-2015-12-05-6726825d.pth" in err and len(err.splitlines()) == 1


def test_module_entry_point_help():
    r = subprocess.run([sys.executable, "-m", "inverse_painting.evaluation.cli", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "GENERATED" in r.stdout.upper() and "--metric" in r.stdout


def test_comfyui_node_scores_batches(painted):
    from inverse_painting.nodes.evaluation_node import InversePaintingEvaluate, parse_times

    _, real, gen = painted
    spec = InversePaintingEvaluate.INPUT_TYPES()
    for group in spec.values():
        for name, (_, opts) in group.items():
            assert opts.get("tooltip"), f"input {name} has no tooltip"
    assert InversePaintingEvaluate.CATEGORY == "Inverse Painting"
    assert parse_times("0, 0:23 1:05.5") == [0.0, 23.0, 65.5]

    to_batch = lambda frames: torch.from_numpy(np.stack(frames).astype(np.float32) / 255.0)  # noqa: E731
    times = ", ".join(str(int(t)) for t in real.times_s)
    out = InversePaintingEvaluate().run(to_batch(gen.frames), to_batch(real.frames), 20.0, 20.0, "stlpips_alex",
                                        0.2, reference_times=times)
    assert len(out) == len(InversePaintingEvaluate.RETURN_TYPES)
    report = json.loads(out[0])
    lpips, iou, ddc, dts, fid = out[1:6]
    assert report["overall"]["lpips"] == pytest.approx(lpips)
    assert dts == pytest.approx(abs(real.times_s[-1] - 20.0 * (len(gen.frames) - 1)) / 60)
    assert 0 < iou <= 1 and ddc > 0 and math.isnan(fid)
    for img in out[6:]:
        assert img.ndim == 4 and img.shape[0] == 1 and img.shape[-1] == 3 and 0 <= float(img.min()) <= float(img.max()) <= 1
