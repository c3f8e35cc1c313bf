"""The painting loop on a tiny random release: determinism, stop rules, start canvas, user masks, CLI."""
import json

import numpy as np
import pytest
import torch

from inverse_painting.core.loop import Painter, PaintSettings
from inverse_painting.core.model_set import ModelSet
from inverse_painting.models.lpips_net import load_perceptual_metric
from inverse_painting.models.text_instruction import ManualInstructions


@pytest.fixture(scope="module")
def painter(tiny_release):
    models = ModelSet.from_release(tiny_release)
    return Painter(models, load_perceptual_metric("lpips_alex", weights_dir=tiny_release / "lpips"))


@pytest.fixture(scope="module")
def target():
    rng = np.random.default_rng(3)
    img = np.zeros((72, 100, 3), np.uint8)
    img[:36] = (90, 140, 220)
    img[36:] = (40, 120, 50)
    return np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)


def _run(painter, target, **kw):
    settings = PaintSettings(steps=kw.pop("steps", 3), max_keyframes=kw.pop("max_keyframes", 3), short_side=64,
                             seed=kw.pop("seed", 1), **kw.pop("settings", {}))
    return list(painter.paint(target, settings, instructions=ManualInstructions(["sky", "grass"]), **kw))


def test_loop_is_deterministic_and_seed_dependent(painter, target):
    a, b = _run(painter, target), _run(painter, target)
    assert len(a) == 3 and [k.index for k in a] == [1, 2, 3] and [k.time_s for k in a] == [20, 40, 60]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    c = _run(painter, target, seed=2)
    assert not np.array_equal(a[0].image, c[0].image)
    assert [k.instruction for k in a] == ["sky", "grass", "grass"]
    k = a[0]
    assert k.image.shape == (64, 96, 3) and k.size == (64, 88) and k.cropped.shape == (64, 88, 3)
    assert k.mask.shape == (1, 1, 64, 96) and k.difference.shape == (1, 1, 8, 12)
    assert 0 <= k.mask_area <= 1 and k.lpips_to_target >= 0 and k.threshold == 0.5
    json.dumps(k.record())


def test_fast_guidance_matches_six_branch_in_the_loop(painter, target):
    fast = _run(painter, target, max_keyframes=1)
    six = _run(painter, target, max_keyframes=1, settings={"fast_guidance": False})
    assert torch.allclose(fast[0].latents, six[0].latents, rtol=1e-4, atol=1e-3 * float(six[0].latents.abs().max()))


def test_stop_rules(painter, target):
    _run(painter, target, max_keyframes=2)
    assert painter.last_stop_reason == "max_keyframes"
    frames = _run(painter, target, max_keyframes=10, settings={"stop_target_distance": 10.0})
    assert len(frames) == 1 and painter.last_stop_reason == "close_to_target"
    frames = _run(painter, target, max_keyframes=10, settings={"stop_change": 10.0})
    assert len(frames) == 4 and painter.last_stop_reason == "canvas_stopped_changing"


def test_finishing_keyframes(painter, target, monkeypatch):
    """After a stop rule (here "close to the target", measured against the reconstruction), ``finish_frames``
    cross-fades the last keyframe to the target, the last finishing keyframe being the target itself."""
    import inverse_painting.core.loop as loop
    from inverse_painting.core.difference_mask import compute_difference_mask
    from inverse_painting.core.imaging import prepare_image

    measured = loop.stop_rule_distance
    script = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.05]  # close to the (reconstructed) target at the 8th keyframe
    to_target = iter(script)
    def scripted(metric, a, b):  # the distances to the reference follow the script, then are measured
        value = next(to_target, None) if a is reference[0] else None
        return measured(metric, a, b) if value is None else value

    monkeypatch.setattr(loop, "stop_rule_distance", scripted)
    reference = [None]
    real_round_trip = painter.models.round_trip

    def round_trip(image):  # compare_to="reconstruction": the loop's reference, caught to tell the calls apart
        reference[0] = real_round_trip(image)
        return reference[0]

    monkeypatch.setattr(painter.models, "round_trip", round_trip)
    settings = {"stop_change": 0.0, "compare_to": "reconstruction"}
    frames = _run(painter, target, max_keyframes=12, settings=settings)
    assert len(frames) == 8 and painter.last_stop_reason == "close_to_target"
    assert not any(k.finishing for k in frames)

    to_target = iter(script)
    frames = _run(painter, target, max_keyframes=12, settings={**settings, "finish_frames": 2})
    assert painter.last_stop_reason == "close_to_target" and len(frames) == 10
    last, (half, whole) = frames[7], frames[8:]
    assert [k.index for k in (half, whole)] == [9, 10] and [k.time_s for k in (half, whole)] == [180, 200]
    assert half.finishing and whole.finishing and half.instruction == whole.instruction == "(finish)"
    working = prepare_image(target, 64)
    assert np.array_equal(whole.image, working.padded)  # ends on the painting itself
    canvas = working.repad(last.image)  # the last canvas: the keyframe with the pad blackened again
    mean = (canvas.astype(np.float32) + working.padded) / 2
    assert np.abs(half.image - mean).max() <= 0.5
    region = compute_difference_mask(painter.metric, canvas, working.padded, 0.2, (8, 12))
    assert torch.equal(half.mask, region.full) and torch.equal(whole.mask_latent, region.latent)
    assert half.threshold is None and "finish" in half.ladder[0]["decision"]
    assert half.record()["finishing"] is True and "finishing" not in last.record()
    assert whole.lpips_to_reconstruction == measured(painter.metric, reference[0], whole.image)
    assert whole.lpips_to_target == 0.0  # the painting itself

    frames = _run(painter, target, max_keyframes=2, settings={"finish_frames": 1})  # after max_keyframes too
    assert len(frames) == 3 and np.array_equal(frames[2].image, working.padded) and frames[2].index == 3


def test_compare_to_reconstruction(painter, target):
    """compare_to="reconstruction": masks and the stop distance measure against decode(encode(target))."""
    from inverse_painting.core.difference_mask import compute_difference_mask, stop_rule_distance
    from inverse_painting.core.imaging import prepare_image

    working = prepare_image(target, 64)
    recon = painter.models.round_trip(working.padded)
    assert recon.shape == working.padded.shape and recon.dtype == np.uint8
    assert not np.array_equal(recon, working.padded)  # a random VAE does not give the target back
    trace = []
    frames = _run(painter, target, max_keyframes=1, settings={"compare_to": "reconstruction"}, trace=trace)
    k = frames[0]
    # the stop rule's distance is to the reconstruction; the record's lpips_to_target is to the target itself
    assert k.lpips_to_reconstruction == pytest.approx(stop_rule_distance(painter.metric, recon, k.image), rel=1e-6)
    assert k.lpips_to_target == pytest.approx(stop_rule_distance(painter.metric, working.padded, k.image), rel=1e-6)
    assert k.lpips_to_target != pytest.approx(k.lpips_to_reconstruction, rel=1e-3)
    assert k.record()["lpips_to_reconstruction"] == round(k.lpips_to_reconstruction, 6)
    white = working.white_canvas()
    expected = compute_difference_mask(painter.metric, white, recon, 0.2, working.latent_hw).latent
    assert torch.equal(trace[0]["difference"], expected)
    with pytest.raises(ValueError, match="compare_to"):
        _run(painter, target, max_keyframes=1, settings={"compare_to": "nope"})


def test_retired_paint_defaults(tmp_path):
    """A starter folder from before the renderer was retrained may still name the retired img2img choices: at the
    release's value they are ignored, at any other value the folder is refused by name (it painted differently)."""
    from inverse_painting.core.loading import (PAINT_DEFAULTS_BEFORE, RETIRED_PAINT_DEFAULTS, STARTER_PAINT_DEFAULTS,
                                               WeightFileError, paint_defaults)

    info = tmp_path / "starter.json"
    info.write_text(json.dumps({"options": {"size": 64}, "paint_defaults": {**RETIRED_PAINT_DEFAULTS, "reask": 2}}))
    assert paint_defaults(tmp_path) == {"short_side": 64, **STARTER_PAINT_DEFAULTS, **PAINT_DEFAULTS_BEFORE, "reask": 2}
    for key, value, why in (("denoise", 0.6, "pure noise"), ("start_from", "target_in_mask", "pure noise"),
                            ("keep_unmasked", True, "pure noise"), ("difference_fallback", True, "pure noise"),
                            ("stop_stalled", 2, "re-asks the text generator after a keyframe that changed nothing")):
        info.write_text(json.dumps({"options": {"size": 64}, "paint_defaults": {key: value}}))
        with pytest.raises(WeightFileError, match=f"'{key}' was retired \\(.*{why}"):
            PaintSettings.for_model(tmp_path)
    for retired in ({"denoise": 0.6}, {"stop_stalled": 2}):
        with pytest.raises(TypeError):
            PaintSettings(**retired)


def test_model_guidance_scales(tmp_path):
    """A starter folder's ``scales`` are its default guidance (the recipe writes all 1); a folder that does not
    name them (built before the key existed) keeps the release's, and a given value still wins. Malformed scales
    are refused by name before anything paints."""
    from inverse_painting.core.errors import OptionError
    from inverse_painting.core.guidance import GuidanceScales
    from inverse_painting.core.loading import STARTER_PAINT_DEFAULTS

    info = tmp_path / "starter.json"
    info.write_text(json.dumps({"options": {"size": 64}, "paint_defaults": STARTER_PAINT_DEFAULTS}))
    assert PaintSettings.for_model(tmp_path).scales == GuidanceScales(1, 1, 1, 1, 1)
    assert PaintSettings.for_model(tmp_path, scales=GuidanceScales(3, 1, 2, 2, 2)).scales == GuidanceScales(3, 1, 2, 2, 2)
    info.write_text(json.dumps({"options": {"size": 64}, "paint_defaults": {"reask": 4}}))
    assert PaintSettings.for_model(tmp_path).scales == GuidanceScales()
    for bad in ([1, 1], "loud", [1, 1, 1, 1, float("nan")]):
        info.write_text(json.dumps({"options": {"size": 64}, "paint_defaults": {"scales": bad}}))
        with pytest.raises(OptionError, match="guidance"):
            PaintSettings.for_model(tmp_path)


class _Asker:
    """A text generator that always answers "sky" and offers ``others`` as its next answers."""

    def __init__(self, others):
        self.others, self.calls = list(others), []

    def generate(self, canvas, target, keyframe_index=0):
        return "sky"

    def alternatives(self, canvas, target, count):
        self.calls.append(count)
        return (["sky"] + self.others)[:count]


def test_reask_paints_the_next_answer_with_a_region(painter, target, monkeypatch):
    """With ``reask``, an answer whose region the mask generator finds finished (under 5 % at 0.5) a second
    time is replaced by the first other answer it finds a region for; the first keyframe and user lists are
    left alone."""
    gen = painter.mask_generator
    forward = gen._forward

    def only_grass_left(z_canvas, z_target, difference, difference_map, instruction, interval_s):
        p = forward(z_canvas, z_target, difference, difference_map, instruction, interval_s)
        sure = torch.full_like(p.logits, 20.0 if instruction == "grass" else -20.0)
        return MaskPrediction(sure, torch.sigmoid(sure), *[getattr(p, f) for f in
                                                           ("difference", "difference_map", "z_canvas", "z_target", "context")])

    from inverse_painting.core.mask_generator import MaskPrediction

    monkeypatch.setattr(gen, "_forward", only_grass_left)
    monkeypatch.setattr(painter, "_changed_a_region", lambda *a: True)  # the other trigger: the next test

    def run(asker, reask):
        settings = PaintSettings(steps=1, max_keyframes=3, short_side=64, reask=reask)
        return list(painter.paint(target, settings, instructions=asker))

    asker = _Asker(["rock", "grass"])
    frames = run(asker, 2)  # keyframe 0 is never re-asked, keyframe 1 is the first time "sky" looks finished
    assert [k.instruction for k in frames] == ["sky", "sky", "grass"] and asker.calls == [3]
    assert frames[1].mask_area < 0.05 and frames[2].mask_area == 1.0 and frames[2].threshold == 0.5
    note = frames[2].ladder[0]
    assert "'grass' used" in note["decision"] and [t["instruction"] for t in note["tried"]] == ["rock", "grass"]
    assert [t["area"] for t in note["tried"]] == [0.0, 1.0]
    json.dumps(frames[2].record())

    asker = _Asker(["rock", "grass"])
    frames = run(asker, 1)  # one other answer may be tried: "rock" has no region, "sky" is kept
    assert [k.instruction for k in frames] == ["sky"] * 3 and "kept" in frames[2].ladder[0]["decision"]
    assert frames[2].ladder[0]["tried"] == [{"instruction": "rock", "area": 0.0}]

    asker = _Asker(["rock", "grass"])
    assert [k.instruction for k in run(asker, 0)] == ["sky"] * 3 and asker.calls == []  # the release
    manual = list(painter.paint(target, PaintSettings(steps=1, max_keyframes=3, short_side=64, reask=2),
                                instructions=ManualInstructions(["sky"])))
    assert [k.instruction for k in manual] == ["sky"] * 3
    assert not any(e["decision"].startswith("re-asked") for k in manual for e in k.ladder)


def test_reask_after_a_keyframe_that_changed_nothing(painter, target, monkeypatch):
    """With ``reask``, an answer whose keyframe changed no region is re-asked the next time it is named, whatever
    its mask's area, and answers that changed nothing are not chosen again; when no other is offered the loop
    stops (written instructions excepted); a visible change clears the mark."""
    from inverse_painting.core.mask_generator import MaskPrediction

    gen = painter.mask_generator
    forward = gen._forward

    def everywhere(*args):  # every answer has a region: only the change decides
        p = forward(*args)
        sure = torch.full_like(p.logits, 20.0)
        return MaskPrediction(sure, torch.sigmoid(sure), *[getattr(p, f) for f in
                                                           ("difference", "difference_map", "z_canvas", "z_target", "context")])

    monkeypatch.setattr(gen, "_forward", everywhere)
    changed = {"sky": False, "rock": False, "grass": True}
    monkeypatch.setattr(painter, "_changed_a_region", lambda canvas, image, working, thr: changed[seen[-1]])
    seen = []
    paint = painter.renderer.conditions

    def conditions(tstate, canvas, mask, instruction, interval_s):
        seen.append(instruction)
        return paint(tstate, canvas, mask, instruction, interval_s)

    monkeypatch.setattr(painter.renderer, "conditions", conditions)
    asker = _Asker(["rock", "grass"])
    frames = list(painter.paint(target, PaintSettings(steps=1, max_keyframes=3, short_side=64, reask=3),
                                instructions=asker))
    # keyframe 1: "sky" changed nothing at keyframe 0 -> re-asked, "rock" used, and changes nothing;
    # keyframe 2: "sky" and "rock" are both marked, "grass" used
    assert [k.instruction for k in frames] == ["sky", "rock", "grass"]
    assert "'sky' changed nothing last time, 'rock' used" in frames[1].ladder[0]["decision"]
    assert [t["instruction"] for t in frames[2].ladder[0]["tried"]] == ["grass"]
    assert painter.state.unchanged == ["rock", "sky"]

    # the marks travel with the saved state: a run stopped after keyframe 2 and resumed paints the same third
    from inverse_painting.core.loop import LoopState

    list(painter.paint(target, PaintSettings(steps=1, max_keyframes=2, short_side=64, reask=3),
                       instructions=_Asker(["rock", "grass"])))
    saved = LoopState.from_saved(*painter.state.to_saved())
    rest = list(painter.paint(target, PaintSettings(steps=1, max_keyframes=3, short_side=64, reask=3),
                              instructions=_Asker(["rock", "grass"]), resume=saved))
    assert [k.instruction for k in rest] == ["grass"] and np.array_equal(rest[0].image, frames[2].image)

    # nothing offered would change the canvas: "sky" and "rock" changed nothing, no other answer -> the loop stops
    frames = list(painter.paint(target, PaintSettings(steps=1, max_keyframes=5, short_side=64, reask=3),
                                instructions=_Asker(["rock"])))
    assert [k.instruction for k in frames] == ["sky", "rock"] and painter.last_stop_reason == "nothing_left_to_paint"

    class Written(_Asker):  # a written instruction: no other answer offered (the node's list), the user's choice
        def alternatives(self, canvas, target, count):
            return []

    for written in (Written([]), ManualInstructions(["sky"])):
        frames = list(painter.paint(target, PaintSettings(steps=1, max_keyframes=3, short_side=64, reask=3),
                                    instructions=written))
        assert [k.instruction for k in frames] == ["sky"] * 3 and painter.last_stop_reason == "max_keyframes"

    changed["sky"] = True  # a visible change: "sky" is kept from then on
    seen.clear()
    frames = list(painter.paint(target, PaintSettings(steps=1, max_keyframes=3, short_side=64, reask=3),
                                instructions=_Asker(["rock", "grass"])))
    assert [k.instruction for k in frames] == ["sky"] * 3 and painter.state.unchanged == []


def test_changed_a_region_looks_inside_the_painting(painter):
    """The change test of ``reask``: identical frames changed nothing, a repainted block did, and the padding
    (re-blackened after every keyframe) does not count. The starter's metric: the tiny release's has random heads."""
    from inverse_painting.core.imaging import prepare_image

    painter = Painter(painter.models, load_perceptual_metric("stlpips_alex"))

    working = prepare_image(np.full((72, 100, 3), 200, np.uint8), 72)
    canvas = working.white_canvas()
    assert not painter._changed_a_region(canvas, canvas.copy(), working, 0.2)
    h, w = working.size
    padded = canvas.copy()  # noise where the renderer's output is cut off (noise is far over 0.2; a flat grey is not)
    noise = np.random.default_rng(0).integers(0, 256, canvas.shape).astype(np.uint8)
    padded[h:], padded[:, w:] = noise[h:], noise[:, w:]
    assert (h, w) != canvas.shape[:2] and not painter._changed_a_region(canvas, padded, working, 0.2)
    painted = canvas.copy()
    painted[10:40, 20:60] = (20, 120, 40)
    assert painter._changed_a_region(canvas, painted, working, 0.2)


def test_start_canvas_user_masks_and_step_callback(painter, target):
    start = np.full((72, 100, 3), 128, np.uint8)
    mask = np.zeros((72, 100), np.float32)
    mask[:20, :30] = 1
    calls = []
    frames = _run(painter, target, max_keyframes=2, start_canvas=start, masks=[mask, None],
                  step_callback=lambda k, info: calls.append((k, info["i"])))
    assert frames[0].threshold is None and frames[1].threshold is not None
    m = frames[0].mask[0, 0]
    assert m[:8, :8].min() == 1 and m[32:].max() == 0  # snapped to 8x8 blocks around the user's region
    assert calls == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]

    def interrupt(k, info):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(painter, target, step_callback=interrupt)


def test_cli_paints_and_writes_outputs(tiny_release, tmp_path, target):
    from PIL import Image

    from inverse_painting.cli import main

    img = tmp_path / "p.png"
    Image.fromarray(target).convert("RGBA").save(img)
    out = tmp_path / "out"
    assert main(["paint", str(img), "--models", str(tiny_release), "--out", str(out), "--instructions", "sky|grass",
                 "--steps", "2", "--max-keyframes", "2", "--short-side", "64"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["keyframes"]) == 3 and manifest["settings"]["seed"] == 1
    assert [k["instruction"] for k in manifest["keyframes"]] == ["", "sky", "grass"]
    assert all((out / k["file"]).is_file() for k in manifest["keyframes"])
    # frames at the painting's size (100x72), painted at the working size (88x64)
    assert Image.open(out / manifest["keyframes"][1]["file"]).size == (100, 72)
    assert Image.open(out / manifest["keyframes"][1]["file"].replace("frames/", "masks/")).size == (100, 72)
    assert (manifest["working_size"], manifest["frame_size"]) == ([64, 88], [72, 100])
    webp = Image.open(out / "timelapse.webp")
    assert webp.n_frames == 3
    import av

    with av.open(str(out / "timelapse.mp4")) as c:
        assert c.streams.video[0].frames > 0
    assert not list(out.rglob("*.partial*"))
    assert main(["paint", str(tmp_path / "missing.png"), "--models", str(tiny_release)]) == 2
    assert main(["paint", str(img), "--models", str(tiny_release), "--out", str(tmp_path / "o2"), "--instructions",
                 "sky", "--steps", "2", "--max-keyframes", "1", "--short-side", "64", "--reask", "3",
                 "--finish-frames", "1", "--frame-size", "working"]) == 0
    manifest = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert Image.open(tmp_path / "o2" / manifest["keyframes"][-1]["file"]).size == (88, 64)
    settings = manifest["settings"]
    assert (settings["reask"], settings["finish_frames"]) == (3, 1)
    assert "denoise" not in settings and "stop_stalled" not in settings
    assert [k.get("finishing", False) for k in manifest["keyframes"]] == [False, False, True]


def test_parity_cli_fails_on_a_broken_fixture(parity, tmp_path):
    import shutil

    from inverse_painting.cli import main

    fx = tmp_path / "fx"
    shutil.copytree(parity / "release", fx / "release")
    shutil.copytree(parity / "cases" / "a_time_encoder", fx / "cases" / "a_time_encoder")
    for p in fx.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    assert main(["parity", str(fx)]) == 0
    from safetensors.torch import load_file, save_file

    path = fx / "cases" / "a_time_encoder" / "expected.safetensors"
    exp = load_file(str(path))
    exp["renderer.fp32.embedding"] = exp["renderer.fp32.embedding"] + 1e-3
    save_file(exp, str(path))
    assert main(["parity", str(fx)]) == 1


def test_resume_of_a_run_from_before_the_retired_switches(tmp_path):
    """A run folder written before a switch was retired (the img2img ones, ``stop_stalled``) records it: at the
    release's value it painted as now and resumes; otherwise it is refused by name, not as a generic mismatch."""
    from inverse_painting.core.errors import OptionError
    from inverse_painting.core.loading import RETIRED_PAINT_DEFAULTS
    from inverse_painting.core.painting_run import compare_settings

    now = PaintSettings().to_dict()
    compare_settings({**now, **RETIRED_PAINT_DEFAULTS}, now, tmp_path)
    with pytest.raises(OptionError, match="denoise = 0.6, an option this version no longer has"):
        compare_settings({**now, **RETIRED_PAINT_DEFAULTS, "denoise": 0.6}, now, tmp_path)
    with pytest.raises(OptionError, match="stop_stalled = 2, an option this version no longer has"):
        compare_settings({**now, "stop_stalled": 2}, now, tmp_path)
    with pytest.raises(OptionError, match="other settings"):
        compare_settings({**now, "reask": 3}, now, tmp_path)
