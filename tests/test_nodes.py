"""The ComfyUI nodes called directly, without ComfyUI, on a tiny random release.

Checks layouts (IMAGE [B,H,W,C] float 0..1, MASK [B,H,W]), the instruction lists, the timeline, the
files the save node writes, and the errors users get for bad inputs. The real-host tests in
tests/host/ run the same nodes inside a ComfyUI server.
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inverse_painting.nodes as nodes_pkg
from inverse_painting.core.loading import STARTER_PAINT_DEFAULTS
from inverse_painting.core.loop import PaintSettings
from inverse_painting.nodes import NODE_CLASS_MAPPINGS as NODES
from inverse_painting.nodes import comfy_bridge as cb
from inverse_painting.nodes.convert import NodeInputError, image_to_uint8
from inverse_painting.nodes.model_nodes import InversePaintingModel, clear_cache

PACK_IDS = ["InversePaintingLoader", "InversePaintingTextModelLoader", "InversePaintingTextInstruction",
            "InversePaintingDifferenceMask", "InversePaintingMaskGenerator", "InversePaintingRenderKeyframe",
            "InversePaintingScheduler", "InversePaintingTimelapse", "InversePaintingSaveProcess",
            "InversePaintingTimeMap", "InversePaintingEvaluate"]
G = dict(guidance_image=2.0, guidance_canvas=1.0, guidance_time=5.0, guidance_mask=5.0, guidance_text=5.0)
SHORT = 64  # working short side: tiny and fast
H, W = 64, 80  # working size of the 96x120 test target at short side 64


@pytest.fixture(scope="module")
def release(tiny_release, tmp_path_factory) -> Path:
    """The tiny random release inside a models root named like ComfyUI's folder."""
    root = tmp_path_factory.mktemp("models_root")
    (root / "tiny").symlink_to(tiny_release, target_is_directory=True)
    return root / "tiny"


@pytest.fixture(autouse=True)
def models_env(release, monkeypatch):
    monkeypatch.setenv("INVERSE_PAINTING_MODELS", str(release.parent))


@pytest.fixture(scope="module")
def model(release):
    clear_cache()
    (m,) = NODES["InversePaintingLoader"]().load(str(release), "cpu", "fp32", short_side=SHORT)
    return m


def _img(h, w, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, h, w, 3, generator=g)


@pytest.fixture(scope="module")
def target():
    # smooth colour field (LPIPS/difference masks behave like on a picture, not on white noise)
    y, x = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 120), indexing="ij")
    return torch.stack([x, y, (x + y) / 2], -1)[None].float()


@pytest.fixture(scope="module")
def white():
    return torch.ones(1, 40, 40, 3)


def _is_image(t, b, h, w):
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert tuple(t.shape) == (b, h, w, 3), tuple(t.shape)
    assert float(t.min()) >= 0 and float(t.max()) <= 1


def _is_mask(t, b, h, w, binary=True):
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert tuple(t.shape) == (b, h, w), tuple(t.shape)
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    if binary:
        assert set(torch.unique(t).tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------------------------------- registration


def test_imports_without_comfyui():
    # ComfyUI's modules were not imported; a bare namespace "comfy" can appear when a folder of that name sits
    # next to the pack on sys.path (pytest puts the pack's parent there) and the bridge probes for ComfyUI
    assert "comfy.model_management" not in sys.modules and "folder_paths" not in sys.modules
    assert not cb.in_comfyui()
    assert set(PACK_IDS) <= set(NODES)
    assert set(NODES) == set(nodes_pkg.NODE_DISPLAY_NAME_MAPPINGS)


@pytest.mark.parametrize("node_id", PACK_IDS)
def test_node_declarations(node_id):
    cls = NODES[node_id]
    assert cls.CATEGORY == "Inverse Painting"
    assert callable(getattr(cls(), cls.FUNCTION))
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, s in spec.get(section, {}).items():
            opts = s[1]
            assert opts.get("tooltip"), f"{node_id}.{name}: no tooltip"
            if "default" in opts and "min" in opts:
                assert opts["min"] <= opts["default"] <= opts["max"], f"{node_id}.{name}"
            if isinstance(s[0], list) and "default" in opts:
                assert opts["default"] in s[0]


def test_folder_registration_keeps_existing_paths(monkeypatch, tmp_path):
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.supported_pt_extensions = {".safetensors", ".ckpt"}
    extra = str(tmp_path / "elsewhere")
    fp.folder_names_and_paths = {"inverse_painting": ([extra], {".bin"})}
    fp.get_folder_paths = lambda name: fp.folder_names_and_paths[name][0]
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    assert cb.register_model_folder()
    paths, exts = fp.folder_names_and_paths["inverse_painting"]
    assert paths == [extra, str(tmp_path / "models" / "inverse_painting")]  # extra_model_paths.yaml entry kept
    assert exts >= {".safetensors", ".ckpt", ".bin"}
    del fp.folder_names_and_paths["inverse_painting"]
    assert cb.register_model_folder()
    assert fp.folder_names_and_paths["inverse_painting"][0] == [str(tmp_path / "models" / "inverse_painting")]


def test_example_painting_is_placed_in_comfyuis_input_folder(monkeypatch, tmp_path):
    """Inside ComfyUI the pack copies its example painting into input/ (the example workflows' Load Image name),
    once; a file of that name is never overwritten."""
    fake = types.ModuleType("folder_paths")
    fake.get_input_directory = lambda: str(tmp_path / "input")
    monkeypatch.setattr(cb, "folder_paths", lambda: fake)
    placed = cb.place_example_painting()
    assert placed == tmp_path / "input" / cb.EXAMPLE_INPUT_NAME
    assert placed.read_bytes() == cb.EXAMPLE_PAINTING.read_bytes() and sorted(placed.parent.iterdir()) == [placed]
    placed.write_bytes(b"the user's own file")
    assert cb.place_example_painting() == placed and placed.read_bytes() == b"the user's own file"
    monkeypatch.setattr(cb, "folder_paths", lambda: None)
    assert cb.place_example_painting() is None  # outside ComfyUI: nothing


def test_folder_registration_without_comfyui():
    assert cb.register_model_folder() is False


# ---------------------------------------------------------------------------------------- loader


def test_loader_lists_and_resolves_releases(release):
    assert "tiny" in cb.list_releases("release")
    choices = NODES["InversePaintingLoader"].INPUT_TYPES()["required"]["release"][0]
    assert "tiny" in choices
    (m,) = NODES["InversePaintingLoader"]().load("tiny", "cpu", "auto", short_side=SHORT)
    assert isinstance(m, InversePaintingModel) and m.dtype == torch.float32 and m.device.type == "cpu"
    assert m.describe()["release"] == "tiny"
    described = json.loads(json.dumps(m.describe()))  # goes into the Time-lapse node's JSON timeline
    assert described["scales"] == {"image": 2.0, "canvas": 1.0, "time": 5.0, "mask": 5.0, "text": 5.0}


def test_loader_auto_metric_and_size(release, tmp_path):
    """auto metric: lpips_alex only where the release ships the AlexNet trunk; short side 0: training size."""
    import shutil

    (m,) = NODES["InversePaintingLoader"]().load(str(release), "cpu", "fp32")
    has_trunk = any((release / "lpips").glob("alexnet*"))
    assert m.metric_name == ("lpips_alex" if has_trunk else "stlpips_alex") and m.short_side == 512
    starter = tmp_path / "starter_like"
    shutil.copytree(release, starter, symlinks=False, ignore=shutil.ignore_patterns("lpips"))
    (starter / "starter.json").write_text(json.dumps({"options": {"size": 96},
                                                      "paint_defaults": {"reask": 2, "denoise": 1.0}}))
    (s,) = NODES["InversePaintingLoader"]().load(str(starter), "cpu", "fp32", perceptual_metric="auto", short_side=0)
    assert (s.metric_name, s.short_side) == ("stlpips_alex", 96)
    assert s.painting == PaintSettings.for_model(starter) != PaintSettings(short_side=96)  # the starter's choices
    assert s.painting.compare_to == STARTER_PAINT_DEFAULTS["compare_to"] and s.painting.reask == 2
    assert m.painting == PaintSettings()  # a release paints as the release
    assert s.describe()["reask"] == 2 and "denoise" not in s.describe()  # retired, at the release's value: ignored
    assert s.working(np.zeros((300, 400, 3), np.uint8)).size == (96, 128)
    (e,) = NODES["InversePaintingLoader"]().load(str(starter), "cpu", "fp32", perceptual_metric="stlpips_alex",
                                                 short_side=64)
    assert e.short_side == 64


def test_bundled_models_folder_is_a_root():
    assert cb.BUNDLED_MODELS in cb.model_roots()
    assert "starter_model" in cb.list_releases("release")
    assert "starter_model/TP_llava" in cb.list_releases("text")


def test_loader_is_lazy_and_cached(model):
    from inverse_painting.nodes import model_nodes

    a = model.load()
    assert model.load() is a  # cached in-process
    (again,) = NODES["InversePaintingLoader"]().load(str(model.path), "cpu", "fp32", short_side=128)
    assert again.load() is a  # same weights, other working size: no reload
    assert model_nodes._cache


def test_loader_errors(tmp_path, release):
    with pytest.raises(FileNotFoundError, match="not found"):
        NODES["InversePaintingLoader"]().load("no-such-release")
    broken = tmp_path / "broken"
    (broken / "base").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="cannot find"):
        NODES["InversePaintingLoader"]().load(str(broken))
    (m,) = NODES["InversePaintingLoader"]().load(str(release), "cpu", components="mask generator only")
    with pytest.raises(ValueError, match="without the renderer"):
        m.require(renderer=True)


def test_gpu_choice_without_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="gpu"):
        cb.resolve_device("gpu")
    assert cb.resolve_dtype("auto", torch.device("cpu")) == torch.float32


# ---------------------------------------------------------------------------------------- step nodes


def test_difference_mask(model, target, white):
    canvases = torch.cat([white, _img(40, 40, 1)])
    mask, dmap = NODES["InversePaintingDifferenceMask"]().run(canvases, target, 0.2, "lpips_alex", model)
    _is_mask(mask, 2, H, W)
    _is_image(dmap, 2, H, W)
    mask0, _ = NODES["InversePaintingDifferenceMask"]().run(target, target, 0.2, "lpips_alex", model)
    assert float(mask0.sum()) == 0  # identical images: nothing to paint
    # without a model the weights are found in the model folders; default working size 512
    m2, d2 = NODES["InversePaintingDifferenceMask"]().run(white, target, 0.5, "lpips_alex")
    _is_mask(m2, 1, 512, 640)
    # the default metric works with and without a model: the model's own, else what can load
    default = NODES["InversePaintingDifferenceMask"].INPUT_TYPES()["required"]["metric"][1]["default"]
    assert default == "auto"
    m3, _ = NODES["InversePaintingDifferenceMask"]().run(canvases, target, 0.2, default, model)
    assert torch.equal(m3, mask)
    m4, _ = NODES["InversePaintingDifferenceMask"]().run(white, target, 0.5, default)
    assert torch.equal(m4, m2)  # the tiny release's lpips/ holds the AlexNet trunk: auto finds lpips_alex


def test_metrics_without_the_alexnet_file(tmp_path, monkeypatch, release, target, white):
    """Where no AlexNet file is installed (the bundled starter alone), auto is the shift-tolerant LPIPS, and
    lpips_alex fails with one sentence naming where the file goes, in every node that offers it."""
    from inverse_painting.nodes import metrics

    monkeypatch.setenv("INVERSE_PAINTING_MODELS", str(tmp_path))  # an empty model folder + the bundled starter
    assert metrics.resolve("auto") == ("stlpips_alex", None)
    mask, dmap = NODES["InversePaintingDifferenceMask"]().run(white, target, 0.2, "auto")
    _is_mask(mask, 1, 512, 640)
    (starter,) = NODES["InversePaintingLoader"]().load("starter_model", "cpu", "fp32")
    assert starter.metric_name == "stlpips_alex"
    frames = torch.ones(2, 32, 32, 3)
    calls = [lambda: NODES["InversePaintingDifferenceMask"]().run(white, target, 0.2, "lpips_alex"),
             lambda: NODES["InversePaintingDifferenceMask"]().run(white, target, 0.2, "lpips_alex", starter),
             lambda: NODES["InversePaintingTimeMap"]().run(frames, "lpips_alex", 0.2, "viridis"),
             lambda: NODES["InversePaintingEvaluate"]().run(frames, frames, metric="lpips_alex"),
             lambda: NODES["InversePaintingLoader"]().load("starter_model", "cpu", "fp32", perceptual_metric="lpips_alex")]
    for call in calls:
        with pytest.raises(FileNotFoundError) as err:
            call()
        message = str(err.value)
        assert message == metrics.MISSING_LPIPS_ALEX and "models/inverse_painting/lpips/" in message
        assert message.count(". ") == 0 and ".." not in message  # one sentence
    # the files in the shared lpips/ folder make lpips_alex available (and auto pick it) without a model
    import shutil

    shutil.copytree(release / "lpips", tmp_path / "lpips")
    assert metrics.resolve("auto") == ("lpips_alex", tmp_path / "lpips")
    img, _ = NODES["InversePaintingTimeMap"]().run(frames, "lpips_alex", 0.2, "viridis")
    _is_image(img, 1, 32, 32)
    (again,) = NODES["InversePaintingLoader"]().load("starter_model", "cpu", "fp32")
    assert again.metric_name == "stlpips_alex"  # a model's auto only counts its own folder: the starter keeps ST-LPIPS


def test_standalone_metric_goes_through_comfyui_memory_management(monkeypatch, white, target):
    """The metric used without a model is handed to ComfyUI's memory manager (ManagedModules), loaded by it
    before every use, and never moved to the device by hand."""
    from inverse_painting.nodes import metrics

    managed = []

    class Recording(cb.ManagedModules):
        def __init__(self, modules, load_device):
            super().__init__(modules, load_device)
            self.loads = 0
            managed.append(self)

        def ensure_loaded(self):
            self.loads += 1
            return super().ensure_loaded()

    monkeypatch.setattr(cb, "ManagedModules", Recording)
    monkeypatch.setattr(metrics, "_cache", {})
    for _ in range(2):
        NODES["InversePaintingDifferenceMask"]().run(white, target, 0.2, "stlpips_alex")
    assert len(managed) == 1 and managed[0].loads == 2  # cached, and loaded through the manager for each run
    entry = managed[0]  # outside ComfyUI the manager's stand-in (core.memory.Residency) holds the networks
    registered = entry.fallback.modules if entry.fallback is not None else {
        k: b.parts[k] for k, b in entry.bundles.items()}
    assert registered["perceptual_metric"].metric_name == "stlpips_alex"
    moved = []
    real_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append((type(self).__name__, str(a[0])))
                        or real_to(self, *a, **k))
    net = metrics.standalone_metric("stlpips_alex", torch.device("meta"))  # another device: a new managed entry
    assert managed[1].load_device == torch.device("meta") and next(net.parameters()).is_meta
    assert len([name for name, dev in moved if dev == "meta"]) == 1  # moved once, by the manager


def test_mask_generator(model, target, white):
    mask, prob = NODES["InversePaintingMaskGenerator"]().run(model, white, target, "sky", 20.0)
    _is_mask(mask, 1, H, W)
    _is_mask(prob, 1, H, W, binary=False)
    # latent-level decisions: the mask is made of 8x8 blocks
    m = mask[0]
    assert torch.equal(m, m[::8, ::8].repeat_interleave(8, 0).repeat_interleave(8, 1)[:H, :W])
    never, _ = NODES["InversePaintingMaskGenerator"]().run(model, white, target, "sky", 20.0, threshold_ladder=False,
                                                           threshold=1.0)
    assert float(never.sum()) == 0
    nxt, _ = NODES["InversePaintingMaskGenerator"]().run(model, white, target, "sky", 20.0, previous_mask=mask)
    _is_mask(nxt, 1, H, W)


def _render(model, canvas, target, mask, seed=1, steps=2, **kw):
    return NODES["InversePaintingRenderKeyframe"]().run(model, canvas, target, "sky", mask, 20.0, seed, steps,
                                                        **kw, **G)


def test_render_keyframe(model, target, white):
    mask = torch.zeros(1, H, W)
    mask[:, :32, :40] = 1
    img, lat = _render(model, white, target, mask)
    _is_image(img, 1, H, W)
    assert tuple(lat["samples"].shape) == (1, 4, H // 8, W // 8)
    img_again, _ = _render(model, white, target, mask)
    assert torch.equal(img, img_again)  # a seed fully determines the result
    img_other, _ = _render(model, white, target, mask, seed=2)
    assert not torch.equal(img, img_other)
    img2, lat2 = _render(model, img, target, mask, previous_latent=lat)  # combine_init from the 2nd keyframe
    _is_image(img2, 1, H, W)


def test_render_keyframe_bad_inputs(model, target, white):
    mask = torch.ones(1, H, W)
    with pytest.raises(NodeInputError, match="previous_latent"):
        _render(model, white, target, mask, previous_latent={"samples": torch.zeros(1, 4, 3, 3)})
    with pytest.raises(ValueError, match="not a k-diffusion KSAMPLER"):
        _render(model, white, target, mask, sampler=object())
    with pytest.raises(ValueError, match="non-increasing"):
        _render(model, white, target, mask, sigmas=torch.tensor([1.0, 2.0, 0.0]))


class _Sampler:
    """A KSAMPLER look-alike: k-diffusion Euler driving whatever model it is given."""

    def __init__(self, name="sample_euler"):
        self.calls = []

        def fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **opts):
            assert extra_args and "seed" in extra_args
            assert hasattr(model.inner_model.inner_model, "model_sampling")  # what ancestral samplers probe
            for i in range(len(sigmas) - 1):
                denoised = model(x, sigmas[i] * x.new_ones(x.shape[0]), **extra_args)
                x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
                self.calls.append(i)
                if callback is not None:
                    callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
            return x

        fn.__name__ = name
        self.sampler_function = fn
        self.extra_options = {}


def test_render_with_external_sampler_and_sigmas(model, target, white):
    mask = torch.ones(1, H, W)
    s = _Sampler()
    sigmas = torch.tensor([14.6, 3.0, 0.5, 0.0])
    img, lat = _render(model, white, target, mask, sampler=s, sigmas=sigmas)
    _is_image(img, 1, H, W)
    assert s.calls == [0, 1, 2]  # the SIGMAS decide the steps
    with pytest.raises(ValueError, match="euler_cfg_pp"):
        _render(model, white, target, mask, sampler=_Sampler("sample_euler_cfg_pp"))


def test_scheduler_node_gives_the_renderers_schedule(model, target, white):
    """Without ComfyUI the scheduler node offers the core's three schedules on the renderer's own noise schedule
    (inside ComfyUI: ComfyUI's scheduler functions, checked by the host suite); its SIGMAS drive Render Keyframe."""
    from inverse_painting.core.schedule import Schedule

    node = NODES["InversePaintingScheduler"]
    spec = node.INPUT_TYPES()["required"]
    assert spec["scheduler"][0] == ["normal", "karras", "exponential"] and spec["scheduler"][1]["default"] == "normal"
    table = Schedule.official().train_sigmas
    for name in spec["scheduler"][0]:
        (sig,) = node().run(name, 10)
        assert sig.shape == (11,) and sig.dtype == torch.float32 and float(sig[-1]) == 0.0
        assert bool(torch.all(sig[:-1] > sig[1:]))
        assert float(sig[0]) == pytest.approx(table[-1], rel=1e-5) and float(sig[-2]) == pytest.approx(table[0], rel=1e-5)
    release_sigmas, _ = Schedule.official().sampling(10)
    (normal,) = node().run("normal", 10)
    assert torch.allclose(normal, release_sigmas, rtol=0.05)  # the release's spacing, log- instead of linear-interpolated
    (karras,) = node().run("karras", 10)
    assert not torch.allclose(karras, normal, rtol=0.05)
    (tail,) = node().run("karras", 4, 0.5)  # like BasicScheduler: the last 4 steps of an 8-step schedule
    assert torch.equal(tail, node().run("karras", 8)[0][-5:])
    with pytest.raises(ValueError, match="unknown schedule"):
        node().run("beta", 10)
    mask = torch.ones(1, H, W)
    img, _ = _render(model, white, target, mask, sampler=_Sampler(), sigmas=karras)
    _is_image(img, 1, H, W)


# ---------------------------------------------------------------------------------------- time-lapse


class _FakeText:
    def __init__(self):
        self.asked = []

    def generate(self, canvas, target, keyframe_index=0):
        assert canvas.shape == target.shape and canvas.dtype == np.uint8
        self.asked.append(keyframe_index)
        return f"thing {keyframe_index}"


def _timelapse_items(model, target, **kw):
    args = dict(interval=20.0, max_keyframes=2, seed=3, steps=2, stop_target_distance=0.0, stop_change=0.0)
    args.update(kw)
    return NODES["InversePaintingTimelapse"]().run(model, target, **args, **G)


def _timelapse(model, target, **kw):
    """One painting: the node's outputs are lists of one item."""
    outputs = _timelapse_items(model, target, **kw)
    assert all(isinstance(o, list) and len(o) == 1 for o in outputs)
    return tuple(o[0] for o in outputs)


def test_timelapse_outputs(model, target):
    frames, masks, instructions, timeline = _timelapse(model, target, instructions="sky\nmountains | trees",
                                                       frame_size="working")
    _is_image(frames, 3, H, W)
    _is_mask(masks, 3, H, W)
    assert float(frames[0].min()) == 1.0  # white start canvas
    assert float(masks[0].sum()) == 0
    assert instructions.split("\n") == ["(start)", "sky", "mountains"]
    tl = json.loads(timeline)
    assert tl["ai_reconstruction"] is True and tl["stop_reason"] == "max_keyframes"
    assert [f["index"] for f in tl["frames"]] == [0, 1, 2]
    assert tl["frames"][2]["time_s"] == 40.0 and tl["working_size"] == tl["frame_size"] == [H, W]
    assert tl["settings"]["seed"] == 3 and tl["settings"]["steps"] == 2
    # the manifest says what each distance measures; a release compares with the target itself
    assert set(tl["distances"]) >= {"lpips_to_target", "lpips_change"} and tl["model"]["perceptual_metric"]
    assert all("lpips_to_target" in f and "lpips_to_reconstruction" not in f for f in tl["frames"][1:])
    big, big_masks, _, big_tl = _timelapse(model, target, instructions="sky\nmountains | trees")
    _is_image(big, 3, 96, 120)  # the default: the painting's own size
    _is_mask(big_masks, 3, 96, 120)
    assert json.loads(big_tl)["frame_size"] == [96, 120]
    with pytest.raises(NodeInputError, match="frame_size"):
        _timelapse(model, target, instructions="sky", frame_size="huge")


def test_timelapse_text_model_fills_in(model, target):
    text = _FakeText()
    _, _, instructions, timeline = _timelapse(model, target, max_keyframes=3, instructions="? | river", text_model=text)
    assert instructions.split("\n") == ["(start)", "thing 0", "river", "thing 2"]
    assert text.asked == [0, 2]
    assert [f.get("instruction_source") for f in json.loads(timeline)["frames"][1:]] == ["text_model", "list",
                                                                                       "text_model"]


def test_planned_instructions_offer_the_text_models_alternatives():
    """The loop's re-asking (PaintSettings.reask) gets the text model's other answers only for a keyframe the text
    model named; a written instruction has none."""
    from inverse_painting.nodes.timelapse import PlannedInstructions

    class Asked(_FakeText):
        def alternatives(self, canvas, target, count):
            return [f"other {i}" for i in range(count)]

    img = np.zeros((4, 4, 3), np.uint8)
    plan = PlannedInstructions("? | river", Asked())
    assert plan.generate(img, img, keyframe_index=0) == "thing 0"
    assert plan.alternatives(img, img, 2) == ["other 0", "other 1"]
    assert plan.generate(img, img, keyframe_index=1) == "river" and plan.alternatives(img, img, 2) == []
    plain = PlannedInstructions("?", _FakeText())  # a text model without alternatives
    plain.generate(img, img, keyframe_index=0)
    assert plain.alternatives(img, img, 2) == []


def test_timelapse_finishing_frames(model, target):
    """finish_frames: after the stop, frames cross-fading to the target (the last one the target); -1 keeps the
    model's choice (a release: none)."""
    frames, masks, instructions, timeline = _timelapse(model, target, instructions="sky", finish_frames=2,
                                                       frame_size="working")
    assert frames.shape[0] == 5 and masks.shape[0] == 5
    assert instructions.split("\n") == ["(start)", "sky", "sky", "(finish)", "(finish)"]
    tl = json.loads(timeline)
    assert [f.get("instruction_source") for f in tl["frames"][1:]] == ["list", "list (repeated)", "finish", "finish"]
    assert tl["settings"]["finish_frames"] == 2 and tl["frames"][4]["finishing"] is True
    painting = model.working(image_to_uint8(target, 0, "target")).padded[:H, :W]  # the target at working size
    assert torch.equal(frames[4], torch.from_numpy(painting).float() / 255)
    assert not torch.equal(frames[3], frames[4]) and not torch.equal(frames[3], frames[2])
    assert tl["frames"][4]["lpips_to_target"] == 0.0  # it is the painting
    assert _timelapse(model, target, instructions="sky")[0].shape[0] == 3  # -1: the model's choice, none here
    # at the painting's size the time-lapse ends on the painting itself, pixel for pixel
    big, big_masks, _, _ = _timelapse(model, target, instructions="sky", finish_frames=2)
    painting = torch.from_numpy(image_to_uint8(target, 0, "target")).float() / 255
    assert big.shape == (5, 96, 120, 3) and torch.equal(big[4], painting)
    halfway = (big[2] * 255 + painting * 255) / 2  # the first finishing frame: half way from the last painted one
    assert (big[3] * 255 - halfway).abs().max() <= 0.51
    assert big_masks.shape == (5, 96, 120)


def test_timelapse_progress_ends_at_100_percent_and_checks_interrupts(model, target, monkeypatch):
    """The bar counts keyframes x denoising steps; when a stop rule ends the run early the total becomes what was
    painted, so it ends full; Cancel is checked at every denoising step."""
    bars, interrupts = [], []

    class Bar(cb.Progress):
        def __init__(self, total, node_id=None):
            super().__init__(total, node_id)
            self.history = [(self.value, self.total)]
            bars.append(self)

        def set(self, value, preview=None, total=None):
            super().set(value, preview, total)
            self.history.append((self.value, self.total))

    monkeypatch.setattr(cb, "Progress", Bar)
    monkeypatch.setattr(cb, "check_interrupt", lambda: interrupts.append(1))
    _timelapse(model, target, max_keyframes=5, steps=3, instructions="sky", stop_target_distance=10.0)
    history = bars[-1].history
    assert history[0] == (0, 5 * 3)  # up to max_keyframes x steps
    assert history[-1] == (3, 3)  # stopped after one keyframe: the bar ends full
    values = [v for v, _ in history]
    assert values == sorted(values) and len(set(values)) == 4  # 0, then each of the 3 denoising steps
    assert len(interrupts) >= 3
    _timelapse(model, target, max_keyframes=2, steps=3, instructions="sky", finish_frames=1)
    assert bars[-1].history[0] == (0, (2 + 1) * 3) and bars[-1].history[-1] == (9, 9)


def test_timelapse_paints_a_batch_one_painting_after_the_other(model, target, monkeypatch):
    """A target batch of two: one output item each, each the time-lapse that painting gets alone; one bar over both,
    ending full."""
    other = torch.flip(target, dims=[2])
    alone = [_timelapse(model, t, instructions="sky | land", frame_size="working") for t in (target, other)]
    bars = []

    class Bar(cb.Progress):
        def __init__(self, total, node_id=None):
            super().__init__(total, node_id)
            bars.append(self)

    monkeypatch.setattr(cb, "Progress", Bar)
    frames, masks, instructions, timelines = _timelapse_items(model, torch.cat([target, other]),
                                                              instructions="sky | land", frame_size="working")
    assert len(frames) == len(masks) == len(instructions) == len(timelines) == 2
    for i in range(2):
        assert torch.equal(frames[i], alone[i][0]) and torch.equal(masks[i], alone[i][1])
        assert instructions[i] == alone[i][2]
    assert len(bars) == 1 and bars[0].value == bars[0].total
    with pytest.raises(NodeInputError, match="start_canvas: 3 images for 2 paintings"):
        _timelapse_items(model, torch.cat([target, other]), instructions="sky", start_canvas=torch.rand(3, 8, 8, 3))


def test_timelapse_start_canvas_and_user_masks(model, target):
    start = torch.zeros(1, 30, 30, 3)
    start[..., 0] = 0.5
    user = torch.zeros(2, H, W)
    user[0, 5:20, 5:20] = 1  # keyframe 0: hand-drawn; keyframe 1: empty -> mask generator
    frames, masks, _, tl = _timelapse(model, target, start_canvas=start, masks=user, instructions="sky",
                                      frame_size="working")
    assert abs(float(frames[0, ..., 0].mean()) - 0.5) < 0.01 and float(frames[0, ..., 1].max()) == 0
    expected = torch.zeros(H, W)
    expected[0:24, 0:24] = 1  # snapped to the 8x8 grid the renderer was trained on
    assert torch.equal(masks[1], expected)
    assert json.loads(tl)["frames"][1]["ladder"] == [{"decision": "user mask"}]


def test_timelapse_needs_instructions(model, target):
    with pytest.raises(ValueError, match="no instructions"):
        _timelapse(model, target, instructions="")


def test_timelapse_stops_on_target_distance(model, target):
    frames, _, _, timeline = _timelapse(model, target, max_keyframes=5, instructions="sky", stop_target_distance=10.0)
    assert frames.shape[0] == 2  # first keyframe already "close enough": the loop stops before the second
    assert json.loads(timeline)["stop_reason"] == "close_to_target"


# ---------------------------------------------------------------------------------------- text model


def test_text_instruction_with_fake_model(target, white):
    (text,) = NODES["InversePaintingTextInstruction"]().run(_FakeText(), torch.cat([white, white]), target)
    assert text.split("\n") == ["thing 0", "thing 1"]


def test_text_model_loader_with_tiny_llava(tmp_path, target, white):
    pytest.importorskip("sentencepiece")
    sys.path.insert(0, str(Path(__file__).parent))
    import tiny_llava

    made = tiny_llava.make_all(str(tmp_path / "llava"))
    (tm,) = NODES["InversePaintingTextModelLoader"]().load(made["orig_with_tower"], "cpu", "fp32", max_new_tokens=3)
    (text,) = NODES["InversePaintingTextInstruction"]().run(tm, white, target)
    assert isinstance(text, str) and "\n" not in text
    with pytest.raises(FileNotFoundError):
        NODES["InversePaintingTextModelLoader"]().load(str(tmp_path))


# ---------------------------------------------------------------------------------------- output nodes


@pytest.fixture
def out_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("INVERSE_PAINTING_OUTPUT", str(tmp_path / "out"))
    return tmp_path / "out"


def _process(n=3):
    frames = torch.rand(n, 30, 42, 3)
    masks = torch.zeros(n, 30, 42)
    masks[1:, :10] = 1
    timeline = {"settings": {"seed": 5}, "frames": [{"index": k, "time_s": 20.0 * k, "instruction": f"i{k}"}
                                                     for k in range(n)]}
    return frames, masks, json.dumps(timeline)


def test_save_process_writes_everything(out_dir):
    frames, masks, timeline = _process()
    res = NODES["InversePaintingSaveProcess"]().save(frames, "ip/run", "webp + mp4", 0.25, True, masks=masks,
                                                     instructions="a\nb\nc", timeline=timeline)
    folder = Path(res["result"][0])
    assert folder == out_dir / "ip" / "run_00001"
    assert res["ui"]["images"] == [{"filename": "timelapse.webp", "subfolder": "ip/run_00001", "type": "output"}]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [k["instruction"] for k in manifest["keyframes"]] == ["i0", "i1", "i2"]
    assert manifest["settings"] == {"seed": 5} and manifest["ai_reconstruction"] is True
    assert len(list((folder / "frames").glob("*.png"))) == 3 and len(list((folder / "masks").glob("*.png"))) == 3
    with Image.open(folder / "timelapse.webp") as im:
        assert im.n_frames == 3 and im.size == (42, 30)
        assert "AI reconstruction" in str(im.getexif().get(0x010E))
    with Image.open(next((folder / "frames").glob("*.png"))) as im:
        assert "AI reconstruction" in im.text.get("Description", "")
    assert (folder / "timelapse.mp4").stat().st_size > 0
    res2 = NODES["InversePaintingSaveProcess"]().save(frames, "ip/run", "none (PNG frames only)", 0.5, False)
    folder2 = Path(res2["result"][0])
    assert folder2.name == "run_00002" and not (folder2 / "timelapse.webp").exists()
    assert res2["ui"]["images"][0]["subfolder"] == "ip/run_00002/frames"
    names = sorted(p.name for p in (folder2 / "frames").glob("*.png"))
    assert names[1] == "0001_0m20s.png"  # no timeline: the interval names the frames


def test_save_process_errors(out_dir):
    frames, masks, _ = _process()
    with pytest.raises(NodeInputError, match="relative"):
        NODES["InversePaintingSaveProcess"]().save(frames, "../escape")
    with pytest.raises(NodeInputError, match="masks for"):
        NODES["InversePaintingSaveProcess"]().save(frames, "x", "webp", masks=masks[:2])
    with pytest.raises(NodeInputError, match="JSON"):
        NODES["InversePaintingSaveProcess"]().save(frames, "x", "webp", timeline="{nope")


def test_time_map(model):
    frames = torch.ones(3, 64, 96, 3)
    frames[1:, :32] = 0.2  # keyframe 1 paints the top, keyframe 2 the left half (over it)
    frames[2, :, :48] = 0.7
    masks = torch.zeros(3, 64, 96)
    masks[1, :32] = 1
    masks[2, :, :48] = 1
    img, last = NODES["InversePaintingTimeMap"]().run(frames, "masks", 0.2, "viridis", masks)
    _is_image(img, 1, 64, 96)
    _is_mask(last, 1, 64, 96, binary=False)
    assert float(last[0, 0, 0]) == 1.0 and float(last[0, 0, 80]) == 0.5 and float(last[0, 50, 80]) == 0.0
    img_p, last_p = NODES["InversePaintingTimeMap"]().run(frames, "pixel", 0.1, "viridis")
    assert torch.equal(last_p, last)  # the pixel method finds the same changes here
    img_l, _ = NODES["InversePaintingTimeMap"]().run(frames, "lpips_alex", 0.2, "viridis")
    _is_image(img_l, 1, 64, 96)
    with pytest.raises(NodeInputError, match="masks"):
        NODES["InversePaintingTimeMap"]().run(frames, "masks", 0.2, "viridis")


def test_bridge_is_inert_outside_comfyui():
    cb.check_interrupt()
    p = cb.Progress(3)
    p.step(preview=np.zeros((8, 8, 3), np.uint8))
    p.set(5)
    assert p.value == 3 and p.bar is None


# ---------------------------------------------------------------------------------------- example workflows

REPO = Path(__file__).resolve().parents[1]


def _local_object_info() -> dict:
    """/object_info entries for the pack's nodes, built from the classes (no ComfyUI needed)."""
    info = {}
    for name, cls in NODES.items():
        spec = cls.INPUT_TYPES()
        info[name] = {"input": {s: spec.get(s, {}) for s in ("required", "optional")},
                      "input_order": {s: list(spec.get(s, {})) for s in ("required", "optional")},
                      "output": list(cls.RETURN_TYPES), "output_name": list(cls.RETURN_NAMES)}
    return info


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "workflows").glob("*.json")))
def test_example_workflows_are_consistent(name):
    sys.path.insert(0, str(REPO / "tests" / "host"))
    from workflow_tools import _ordered_inputs, is_widget, widget_extras

    ui = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    api = json.loads((REPO / "tests" / "host" / "workflows" / f"{name}.json").read_text())
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert sorted(nodes) == sorted(int(k) for k in api)
    for link_id, src, src_slot, dst, dst_slot, typ in ui["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[src]["outputs"][src_slot]["type"] == typ
    info = _local_object_info()
    for node in ui["nodes"]:
        if node["type"] not in info:
            continue  # ComfyUI core node: checked against a live server by tests/host
        n_widgets = sum(1 + len(widget_extras(spec)) for _, spec, _ in _ordered_inputs(info[node["type"]])
                        if is_widget(spec))
        assert len(node["widgets_values"]) == n_widgets, f"{name}: node {node['id']} ({node['type']})"
        assert node["outputs"] and [o["type"] for o in node["outputs"]] == info[node["type"]]["output"]
    # the layout: no two nodes (title bar included) overlap; each node is at least as large as its rows
    from workflow_tools import TITLE_H, node_size

    boxes = [(n["pos"][0], n["pos"][1] - TITLE_H, n["size"][0], n["size"][1] + TITLE_H, n["id"]) for n in ui["nodes"]]
    for i, (x1, y1, w1, h1, a) in enumerate(boxes):
        for x2, y2, w2, h2, b in boxes[i + 1:]:
            assert not (x1 < x2 + w2 and x2 < x1 + w1 and y1 < y2 + h2 and y2 < y1 + h1), f"{name}: {a} over {b}"
    for node in ui["nodes"]:
        if node["type"] in info:
            assert node["size"][1] >= node_size(node["type"], info[node["type"]])[1], f"{name}: node {node['id']}"


def test_auto_precision_keeps_a_starter_in_fp32(monkeypatch):
    """On a GPU, 'auto' is ComfyUI's half precision for released weights, but fp32 for the starter, whose networks
    overflow fp16 (NaN in its ReferenceNet measured in fp16): the default workflows must not fail on a GPU."""
    from inverse_painting.core.loading import needs_fp32

    starter = REPO / "assets" / "starter_model"
    assert needs_fp32(starter) and needs_fp32(starter / "TP_llava")
    gpu = torch.device("cuda")
    monkeypatch.setattr(cb, "model_management", lambda: None)  # outside ComfyUI: fp16 on a GPU
    assert cb.resolve_dtype("auto", gpu, half_ok=False) == torch.float32
    assert cb.resolve_dtype("auto", gpu) == torch.float16
    assert cb.resolve_dtype("fp16", gpu, half_ok=False) == torch.float16  # a named precision is the user's
