"""Loading: key manifests at full SD1.5 size, safetensors conversion, and clear errors."""
import json
import shutil

import pytest
import torch

from inverse_painting.core.loading import SD15_UNET_CONFIG, WeightFileError, convert_checkpoint, find_release, read_checkpoint
from inverse_painting.core.model_set import ModelSet, build_meta_networks

from fixture_paths import REPO

MANIFESTS = REPO.parent / "shared" / "reference" / "manifests"

SD15 = SD15_UNET_CONFIG


def _shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.skipif(not MANIFESTS.is_dir(), reason="reference manifests not found")
def test_full_size_networks_match_the_release_manifests():
    from inverse_painting.models.feature_encoder import CanvasFeatureEncoder
    from inverse_painting.models.next_clip import NextClipPredictor
    from inverse_painting.models.time_encoder import TimeEncoder

    nets = build_meta_networks(SD15)
    for name, manifest in (("renderer_unet", "renderer_unet.json"), ("referencenet", "renderer_referencenet.json"),
                           ("mask_unet", "RP_unet.json")):
        expected = json.loads((MANIFESTS / manifest).read_text())
        assert _shapes(nets[name]) == {k: list(v) for k, v in expected.items()}, name
    for module, manifest in ((CanvasFeatureEncoder(4, 320), "renderer_cur_image_guider.json"),
                             (NextClipPredictor(), "renderer_image_adpater.json"),
                             (TimeEncoder(), "renderer_PE.json"), (TimeEncoder(), "RP_PE.json")):
        expected = json.loads((MANIFESTS / manifest).read_text())
        assert _shapes(module) == {k: list(v) for k, v in expected.items()}, manifest


def test_release_layout_is_found(fixture_release):
    paths = find_release(fixture_release)
    assert paths.renderer.name.endswith(".ckpt") and paths.mask_generator.parent.name == "RP"
    assert paths.renderer_config.name == "config.yaml" and paths.base.name == "base"


def test_safetensors_conversion_round_trips_and_is_preferred(fixture_release, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(fixture_release, release)
    for p in release.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    ckpt = next((release / "renderer" / "ckpt").glob("*.ckpt"))
    st = convert_checkpoint(ckpt)
    a, b = read_checkpoint(ckpt), read_checkpoint(st)
    assert a["global_step"] == b["global_step"]
    for part in ("unet_state_dict", "referencenet_state_dict", "PE_state_dict"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    assert find_release(release).renderer == st
    ckpt.unlink()  # the converted file alone is enough
    convert_checkpoint(next((release / "RP").glob("*.ckpt"))).parent
    models = ModelSet.from_release(release)
    assert models.renderer.step == 1 and models.mask.step == 1


def test_bad_weight_files_get_named_errors(fixture_release, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(fixture_release, release)
    for p in release.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    rp = next((release / "RP").glob("*.ckpt"))
    renderer = next((release / "renderer" / "ckpt").glob("*.ckpt"))
    # a truncated file
    data = rp.read_bytes()
    rp.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightFileError, match="truncated"):
        ModelSet.from_release(release)
    # the wrong component in the RP folder
    shutil.copy(renderer, rp)
    with pytest.raises(WeightFileError, match="renderer checkpoint, not a mask-generator"):
        ModelSet.from_release(release)
    # wrong keys are named
    ck = torch.load(renderer, weights_only=True)
    ck["unet_state_dict"].pop("conv_in.bias")
    ck["unet_state_dict"]["bogus.weight"] = torch.zeros(1)
    torch.save(ck, renderer)
    with pytest.raises(WeightFileError, match=r"missing \(1\): conv_in.bias[\s\S]*unexpected \(1\): bogus.weight"):
        ModelSet.from_release(release, mask_generator=False)
    with pytest.raises(WeightFileError, match="cannot find"):
        ModelSet.from_release(tmp_path)
