"""LPIPS / ST-LPIPS on plain torch and the difference mask (parity case c_difference_mask)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inverse_painting.core.difference_mask import (
    compute_difference_mask,
    difference_map,
    difference_mask,
    stop_rule_distance,
    to_latent,
)
from inverse_painting.core.imaging import pad_to_multiple
from inverse_painting.models.lpips_net import (
    LPIPS_ALEX,
    PERCEPTUAL_METRICS,
    STLPIPS_ALEX,
    MissingWeightsError,
    PerceptualDistance,
    load_perceptual_metric,
    load_weight_file,
    package_file,
)

from fixture_paths import parity_dir

PARITY = parity_dir() or Path("/nonexistent")
LPIPS_DIR = PARITY / "release" / "lpips"
CASE_C = PARITY / "cases" / "c_difference_mask"
needs_fixture = pytest.mark.skipif(not CASE_C.is_dir(), reason="parity fixtures not found (set PARITY_DIR)")
needs_stlpips = pytest.mark.skipif(
    package_file("stlpips_pytorch", "weights/vST0.0/alex_shift_tolerant.pth") is None,
    reason="stlpips-pytorch wheel not installed",
)


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """README section 6: about 1e-5 relative to the largest magnitude."""
    scale = float(expected.abs().max()) or 1.0
    err = float((actual.float() - expected.float()).abs().max())
    assert err <= rel * scale + 1e-9, f"max abs err {err:.3g} vs scale {scale:.3g}"


def _png(path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))  # np.array: a writable copy


def _smooth_images(h=96, w=120):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    base = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), xx * yy])[None]
    other = torch.stack([torch.cos(5 * xx * yy), torch.sin(4 * yy), xx])[None]
    return base, other


@pytest.fixture(scope="module")
def lpips_fixture_metric():
    return load_perceptual_metric(LPIPS_ALEX, weights_dir=LPIPS_DIR)


@pytest.fixture(scope="module")
def case_c():
    from safetensors.torch import load_file

    canvas = _png(CASE_C / "canvas.png")
    target = pad_to_multiple(_png(CASE_C / "target.png"))  # 512x550 -> 512x560, black pad
    return canvas, target, load_file(str(CASE_C / "expected.safetensors"))


# ---------------------------------------------------------------------------------------------- parity


@needs_fixture
def test_case_c_map_and_masks(lpips_fixture_metric, case_c):
    canvas, target, exp = case_c
    assert canvas.shape == target.shape == (512, 560, 3)
    dm = compute_difference_mask(lpips_fixture_metric, canvas, target, threshold=0.2)
    assert dm.map.shape == (1, 1, 512, 560)
    _close(dm.map, exp["lpips_map"])
    # masks may only differ where the map is within tolerance of the threshold
    tol = 1e-5 * float(exp["lpips_map"].abs().max())
    flips = dm.full.to(torch.uint8) != exp["mask_full"]
    assert bool(((exp["lpips_map"][flips] - 0.2).abs() <= tol).all())
    assert dm.latent.shape == (1, 1, 64, 70)
    lat_flips = dm.latent.to(torch.uint8) != exp["mask_latent"]
    assert bool(((exp["lpips_map"][..., ::8, ::8][lat_flips] - 0.2).abs() <= tol).all())
    assert int(flips.sum()) <= 10 and int(lat_flips.sum()) <= 2


@needs_fixture
def test_case_c_scalars(lpips_fixture_metric, case_c):
    canvas, target, exp = case_c
    d = stop_rule_distance(lpips_fixture_metric, canvas, target)
    _close(torch.tensor([d]), exp["lpips_scalar"])
    assert stop_rule_distance(lpips_fixture_metric, target, target) == float(exp["lpips_scalar_target_vs_target"])


@needs_fixture
def test_spatial_mean_matches_scalar(lpips_fixture_metric, case_c):
    canvas, target, exp = case_c
    dmap = difference_map(lpips_fixture_metric, canvas, target)
    assert float(dmap.mean()) == pytest.approx(float(exp["lpips_scalar"]), rel=1e-3)


# ---------------------------------------------------------------------------------------------- loading


def test_missing_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(MissingWeightsError) as ei:
        load_perceptual_metric(LPIPS_ALEX, weights_dir=tmp_path)
    msg = str(ei.value)
    assert "alexnet-owt-7be5be79.pth" in msg and str(tmp_path) in msg and "download.pytorch.org" in msg
    with pytest.raises(MissingWeightsError, match="nope.pth"):
        load_perceptual_metric(LPIPS_ALEX, backbone_path=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="unknown perceptual metric"):
        load_perceptual_metric("ssim")


@needs_fixture
def test_full_torchvision_checkpoint_and_wheel_heads(tmp_path, lpips_fixture_metric):
    """A full torchvision AlexNet state dict (classifier.* included) loads; heads default to the wheel."""
    sd = load_weight_file(LPIPS_DIR / "alexnet_features.pth")
    sd["classifier.1.weight"] = torch.zeros(4096, 9216)
    sd["classifier.1.bias"] = torch.zeros(4096)
    torch.save(sd, tmp_path / "alexnet-owt-7be5be79.pth")
    if package_file("lpips", "weights/v0.1/alex.pth") is None:
        pytest.skip("lpips wheel not installed")
    m = load_perceptual_metric(LPIPS_ALEX, weights_dir=tmp_path)
    assert m.sources["heads"].endswith("weights/v0.1/alex.pth")
    a, b = _smooth_images(64, 80)
    with torch.no_grad():
        assert torch.equal(m(a, b), lpips_fixture_metric(a, b))


def test_metric_names():
    assert PERCEPTUAL_METRICS[0] == STLPIPS_ALEX and LPIPS_ALEX in PERCEPTUAL_METRICS


# ---------------------------------------------------------------------------------------------- ST-LPIPS


@needs_stlpips
def test_stlpips_loads_offline_and_matches_package():
    m = load_perceptual_metric(STLPIPS_ALEX)
    assert isinstance(m, PerceptualDistance) and m.metric_name == STLPIPS_ALEX
    base, other = _smooth_images()
    with torch.no_grad():
        assert float(m(base, base)) == 0.0
        assert float(m(base, base, spatial=True).abs().max()) == 0.0
        shifted = float(m(base, torch.roll(base, 1, dims=3)))
        different = float(m(base, other))
        darker = float(m(base, base * 0.5))
    # reference values computed by stlpips_pytorch 0.0.2 itself (LPIPS(net="alex", variant="shift_tolerant"),
    # run once in a throwaway process with torchvision/IPython/torchsummary stubbed out)
    assert shifted == pytest.approx(0.0017522803973406553, rel=1e-4)
    assert different == pytest.approx(0.726352334022522, rel=1e-4)
    assert darker == pytest.approx(0.15108059346675873, rel=1e-4)
    assert 0 < shifted < darker < different


@needs_stlpips
def test_stlpips_spatial_and_batch():
    m = load_perceptual_metric(STLPIPS_ALEX)
    base, other = _smooth_images(77, 93)  # odd sizes
    with torch.no_grad():
        smap = m(base, other, spatial=True)
        scalar = m(base, other)
        batch = m(torch.cat([base, other]), base)  # b with batch 1 is broadcast
    assert smap.shape == (1, 1, 77, 93) and float(smap.min()) >= 0
    assert float(smap.mean()) == pytest.approx(float(scalar), rel=2e-2)
    assert batch.shape == (2, 1, 1, 1)
    assert float(batch[0]) == 0.0 and float(batch[1]) == pytest.approx(float(scalar), rel=1e-5)


# ---------------------------------------------------------------------------------------------- masks


def test_mask_threshold_is_strict_and_latent_picks_8i_8j():
    dmap = torch.zeros(1, 1, 16, 24)
    dmap[0, 0, 0, 0] = 0.2  # exactly the threshold: not in the mask
    dmap[0, 0, 8, 8] = 0.2001
    dmap[0, 0, 9, 9] = 0.9  # not on the (8i, 8j) grid: lost at latent level
    full = difference_mask(dmap, 0.2)
    assert full.dtype == torch.float32 and int(full.sum()) == 2 and full[0, 0, 0, 0] == 0
    lat = to_latent(full, (2, 3))
    assert lat.shape == (1, 1, 2, 3)
    assert lat[0, 0].tolist() == [[0, 0, 0], [0, 1, 0]]


@needs_fixture
def test_stop_rule_uint8_equals_tensor_path(lpips_fixture_metric):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    ta = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    tb = torch.from_numpy(b).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    with torch.no_grad():
        ref = float(lpips_fixture_metric(ta, tb))
    assert stop_rule_distance(lpips_fixture_metric, a, b) == ref
    with pytest.raises(ValueError, match="differ in size"):
        stop_rule_distance(lpips_fixture_metric, a, b[:32])
