"""The example workflows on a real ComfyUI server, as a fresh install runs them: the bundled starter model and
the example painting the pack places in input/ (no parity fixtures, nothing copied).

Each API workflow of tests/host/workflows/ is queued with speed overrides (a few steps and keyframes) and its
outputs are checked: frame counts, sizes, files written, the manifest. Also: the UI copies in workflows/
convert back to the API copies and are listed with their thumbnails, ComfyUI samplers and every ComfyUI
scheduler name (through the pack's scheduler node) drive Render Keyframe, the Evaluate node scores a
time-lapse, /interrupt stops a running time-lapse, progress ends at 100 %, and bad inputs give clear errors.
"""
from __future__ import annotations

import json
import os
import time
import urllib.parse
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_host import PACK_DIR_NAME, REPO_ROOT, SMALL_IMAGE, load_api_workflow, messages
from workflow_tools import strip_meta, ui_to_api

API_DIR = Path(__file__).resolve().parent / "workflows"
UI_DIR = REPO_ROOT / "workflows"
FULL = "Time-lapse of a painting"
MANUAL = "Time-lapse with written instructions"
STEP = "One painting step, node by node"
SAMPLER = "One keyframe with a ComfyUI sampler"
PAINTING = (512, 640)  # the example painting (h, w): the time-lapse frames' size
WORKING = (128, 160)  # the starter paints at short side 128
# stop rules off: exactly 3 keyframes (+ the starter's 2 finishing frames), 3 steps each
FAST_TIMELAPSE = {"4.steps": 3, "4.max_keyframes": 3, "4.stop_target_distance": 0.0, "4.stop_change": 0.0}
STEPS_RUN = 3


def wf(name: str, **overrides) -> dict:
    return load_api_workflow(API_DIR / f"{name}.json", **overrides)


def _png(server, item) -> np.ndarray:
    return np.asarray(Image.open(server.output_file(item)).convert("RGB"))


def _painting() -> np.ndarray:
    return np.asarray(Image.open(REPO_ROOT / "assets" / "example.png").convert("RGB"))


@pytest.mark.parametrize("name", sorted(p.stem for p in API_DIR.glob("*.json")))
def test_ui_workflow_matches_api_copy(comfy_server, pack_nodes, name):
    ui = json.loads((UI_DIR / f"{name}.json").read_text())
    api = json.loads((API_DIR / f"{name}.json").read_text())
    assert ui_to_api(ui, comfy_server.object_info()) == strip_meta(api)


def test_templates_listed_with_thumbnails(comfy_server):
    """The template browser lists the pack's workflows under their file names and shows <name>.jpg for each."""
    listed = comfy_server.get("/workflow_templates")[PACK_DIR_NAME]
    assert sorted(listed) == sorted(p.stem for p in UI_DIR.glob("*.json"))
    for name in listed:
        status, kind, body = comfy_server.get_bytes(f"/api/workflow_templates/{PACK_DIR_NAME}/"
                                                    f"{urllib.parse.quote(name)}.jpg")
        assert status == 200 and kind == "image/jpeg", (name, status, kind)
        with Image.open(BytesIO(body)) as im:
            assert im.size == (512, 512)


def _check_saved_process(server, save_out: dict, n_frames: int) -> tuple[dict, Path]:
    item = save_out["images"][0]
    assert item["filename"] == "timelapse.webp"
    webp = server.output_file(item)
    run_dir = webp.parent
    with Image.open(webp) as im:
        assert getattr(im, "n_frames", 1) == n_frames
        assert im.size == (PAINTING[1], PAINTING[0])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(manifest["keyframes"]) == n_frames
    assert manifest["ai_reconstruction"] is True and "AI reconstruction" in manifest["provenance"]
    frames = sorted((run_dir / "frames").glob("*.png"))
    masks = sorted((run_dir / "masks").glob("*.png"))
    assert len(frames) == n_frames and len(masks) == n_frames
    assert np.asarray(Image.open(frames[0])).shape[:2] == PAINTING
    mp4 = run_dir / "timelapse.mp4"
    assert mp4.is_file() and mp4.stat().st_size > 0
    try:
        import av
    except ImportError:
        return manifest, run_dir
    with av.open(str(mp4)) as c:
        assert "AI reconstruction" in c.metadata.get("comment", "")
        assert c.streams.video[0].codec_context.name == "h264"
    return manifest, run_dir


def test_manual_instruction_timelapse(comfy_server, pack_nodes):
    out = comfy_server.run(wf(MANUAL, **FAST_TIMELAPSE, **{"4.seed": 11}), timeout=900)
    frames = out["6"]["images"]
    assert len(frames) == 6  # start canvas + 3 keyframes + the starter's 2 finishing keyframes (finish_frames -1)
    first = _png(comfy_server, frames[0])
    assert first.shape[:2] == PAINTING and first.min() == 255  # white start canvas, at the painting's size
    manifest, run_dir = _check_saved_process(comfy_server, out["5"], 6)
    keyframes = manifest["keyframes"]
    assert [k["instruction"] for k in keyframes] == ["(start)", "sky", "mountains", "trees", "(finish)", "(finish)"]
    timeline = manifest["timeline"]
    assert timeline["stop_reason"] == "max_keyframes"
    assert timeline["frame_size"] == list(PAINTING) and timeline["working_size"] == list(WORKING)
    # the time-lapse ends on the painting itself, at its own resolution, and the manifest says so
    last = np.asarray(Image.open(run_dir / keyframes[-1]["file"]).convert("RGB"))
    assert np.array_equal(last, _painting())
    assert keyframes[-1]["lpips_to_target"] == 0.0 and keyframes[-1]["lpips_to_reconstruction"] > 0.0
    assert set(timeline["distances"]) == {"lpips_to_target", "lpips_to_reconstruction", "lpips_change"}


def test_timelapse_paints_a_batch_one_folder_each(comfy_server, pack_nodes):
    """A batch of 3 paintings (the example, its negative, the example again) into one Time-lapse node: one
    time-lapse per painting, each saved in its own run folder and ending on its own painting."""
    prompt = wf(MANUAL, **{**FAST_TIMELAPSE, "4.max_keyframes": 1, "4.finish_frames": 1, "4.seed": 5})
    prompt["20"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
    prompt["21"] = {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["20", 0]}}
    prompt["22"] = {"class_type": "ImageBatch", "inputs": {"image1": ["21", 0], "image2": ["1", 0]}}
    prompt["4"]["inputs"]["target"] = ["22", 0]
    out = comfy_server.run(prompt, timeout=900)
    saved = out["5"]["images"]
    assert [item["filename"] for item in saved] == ["timelapse.webp"] * 3
    run_dirs = [comfy_server.output_file(item).parent for item in saved]
    assert len(set(run_dirs)) == 3  # one run folder per painting, none written over another
    painting = _painting()
    expected = [painting, 255 - painting, painting]
    for run_dir, target in zip(run_dirs, expected):
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert len(manifest["keyframes"]) == 3  # start canvas + 1 keyframe + 1 finishing frame
        last = np.asarray(Image.open(run_dir / manifest["keyframes"][-1]["file"]).convert("RGB"))
        assert np.array_equal(last, target)
    assert len(out["6"]["images"]) == 9  # the preview got every painting's frames


def test_full_timelapse_with_text_model(comfy_server, pack_nodes):
    fast = {**FAST_TIMELAPSE, "4.max_keyframes": 2, "4.seed": 12, "3.max_new_tokens": 4, "4.finish_frames": 1}
    out = comfy_server.run(wf(FULL, **fast), timeout=900)
    manifest, _ = _check_saved_process(comfy_server, out["5"], 4)
    sources = [k.get("instruction_source") for k in manifest["keyframes"][1:]]
    assert sources == ["text_model", "text_model", "finish"]
    tmap = out["7"]["images"]
    assert len(tmap) == 1 and _png(comfy_server, tmap[0]).shape[:2] == PAINTING


def _model_loads(server) -> int:
    return server.log_text().count("Inverse Painting: loading /")


def test_single_step_chain(comfy_server, pack_nodes):
    fast = {"9.steps": 3, "15.steps": 3, "3.max_new_tokens": 4}
    out = comfy_server.run(wf(STEP, **fast, **{"9.seed": 21}), timeout=900)
    for node in ("10", "16"):
        img = _png(comfy_server, out[node]["images"][0])
        assert img.shape == (*WORKING, 3)
    assert _png(comfy_server, out["7"]["images"][0]).shape[:2] == WORKING  # distance map (metric 'auto')
    assert _png(comfy_server, out["12"]["images"][0]).shape[:2] == WORKING  # mask
    loads = _model_loads(comfy_server)
    # another seed: the renderer re-runs, the weights are not loaded again (cache)
    out2 = comfy_server.run(wf(STEP, **fast, **{"9.seed": 22}), timeout=900)
    assert not np.array_equal(_png(comfy_server, out["10"]["images"][0]), _png(comfy_server, out2["10"]["images"][0]))
    assert _model_loads(comfy_server) == loads


def test_lpips_alex_without_its_file_says_where_it_goes(comfy_server, pack_nodes):
    """The starter has no AlexNet file: choosing lpips_alex fails with one sentence naming the folder."""
    entry = comfy_server.wait(comfy_server.queue(wf(STEP, **{"6.metric": "lpips_alex"})), timeout=300)
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_id"] == "6"
    message = errors[0]["exception_message"].strip()
    assert "alexnet-owt-7be5be79.pth" in message and "ComfyUI/models/inverse_painting/lpips/" in message
    assert message.count(". ") == 0 and ".." not in message


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m"])
def test_comfy_sampler_and_scheduler_drive_render(comfy_server, pack_nodes, sampler):
    p = wf(SAMPLER, **{"4.sampler_name": sampler, "5.steps": 3, "7.seed": 31})
    out = comfy_server.run(p, timeout=600)
    img = _png(comfy_server, out["8"]["images"][0])
    assert img.shape == (*WORKING, 3) and img.std() > 0


def test_every_comfyui_scheduler_drives_render(comfy_server, pack_nodes):
    """The pack's scheduler node offers ComfyUI's scheduler names (BasicScheduler's, which needs a MODEL); each
    one's SIGMAS drive Render Keyframe."""
    names = comfy_server.object_info("InversePaintingScheduler")["input"]["required"]["scheduler"]
    core = comfy_server.object_info("BasicScheduler")["input"]["required"]["scheduler"]
    names = names[0] if isinstance(names[0], list) else names[1]["options"]
    core = core[0] if isinstance(core[0], list) else core[1]["options"]
    assert names == core and {"normal", "karras", "exponential", "sgm_uniform", "simple", "beta"} <= set(names)
    failed = {}
    for name in names:
        p = wf(SAMPLER, **{"4.sampler_name": "euler", "5.scheduler": name, "5.steps": 3, "7.seed": 33})
        entry = comfy_server.wait(comfy_server.queue(p), timeout=300)
        if entry["status"]["status_str"] != "success":
            failed[name] = [m[1].get("exception_message") for m in entry["status"]["messages"]
                            if m[0] == "execution_error"]
        else:
            assert _png(comfy_server, entry["outputs"]["8"]["images"][0]).std() > 0
    assert not failed, failed


def _renderer_sigmas() -> np.ndarray:
    """The renderer's training sigmas (linear betas 0.00085..0.012, 1000 steps), t = 0..999."""
    alphas_cumprod = np.cumprod(1.0 - np.linspace(0.00085, 0.012, 1000))
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def test_scheduler_node_computes_comfyuis_schedules_on_the_renderers_noise_schedule(comfy_server, pack_nodes):
    """The SIGMAS a Time-lapse used (its timeline) are ComfyUI's karras / normal schedules on the renderer's
    own schedule (sigma_max 25.15, not SD's 14.6)."""
    table = _renderer_sigmas()
    lo, hi = table[0], table[-1]
    steps = 4
    ramp = np.linspace(0, 1, steps)
    expected = {"karras": np.append((hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7, 0.0),
                "normal": np.append(np.exp(np.interp(np.linspace(999, 0, steps), np.arange(1000), np.log(table))),
                                    0.0)}
    for name, want in expected.items():
        p = wf(MANUAL, **{**FAST_TIMELAPSE, "4.max_keyframes": 1, "4.finish_frames": 0, "4.sigmas": ["20", 0],
                          "4.frame_size": "working"})
        p["20"] = {"class_type": "InversePaintingScheduler", "inputs": {"scheduler": name, "steps": steps,
                                                                         "denoise": 1.0}}
        out = comfy_server.run(p, timeout=600)
        run_dir = comfy_server.output_file(out["5"]["images"][0]).parent
        got = json.loads((run_dir / "manifest.json").read_text())["timeline"]["sigmas"]
        assert np.allclose(got, want, rtol=1e-4, atol=1e-6), (name, got, want.tolist())


def test_evaluate_node_scores_a_timelapse(comfy_server, pack_nodes):
    """Evaluate: a time-lapse against itself scores perfectly; against a 'process' that is the painting throughout
    it does not; the plots come out as images."""
    p = wf(MANUAL, **{**FAST_TIMELAPSE, "4.max_keyframes": 2, "4.finish_frames": 0, "4.frame_size": "working"})
    p["30"] = {"class_type": "InversePaintingEvaluate", "inputs": {
        "generated": ["4", 0], "reference": ["4", 0], "generated_interval_s": 20.0, "reference_interval_s": 20.0,
        "metric": "stlpips_alex", "threshold": 0.2}}
    p["31"] = {"class_type": "PreviewAny", "inputs": {"source": ["30", 0]}}
    p["32"] = {"class_type": "PreviewImage", "inputs": {"images": ["30", 6]}}
    p["33"] = {"class_type": "PreviewImage", "inputs": {"images": ["30", 7]}}
    p["34"] = {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear",
                                                      "width": WORKING[1], "height": WORKING[0], "crop": "disabled"}}
    p["35"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["34", 0], "amount": 3}}
    p["36"] = {"class_type": "InversePaintingEvaluate", "inputs": {
        "generated": ["4", 0], "reference": ["35", 0], "generated_interval_s": 20.0, "reference_interval_s": 20.0,
        "metric": "stlpips_alex", "threshold": 0.2}}
    p["37"] = {"class_type": "PreviewAny", "inputs": {"source": ["36", 0]}}
    out = comfy_server.run(p, timeout=900)
    same = json.loads(out["31"]["text"][0])["overall"]
    other = json.loads(out["37"]["text"][0])["overall"]
    assert same["lpips"] == 0.0 and same["ddc"] == 0.0 and same["dts_min"] == 0.0
    assert other["lpips"] > 0.05 and other["ddc"] > 0.0
    for node in ("32", "33"):
        img = _png(comfy_server, out[node]["images"][0])
        assert img.ndim == 3 and img.std() > 0


def test_interrupt_stops_timelapse_and_server_keeps_serving(comfy_server, pack_nodes):
    long_run = wf(MANUAL, **{"4.steps": 25, "4.max_keyframes": 50, "4.stop_target_distance": 0.0,
                             "4.stop_change": 0.0, "4.seed": 41})
    pid = comfy_server.queue(long_run)
    comfy_server.wait_until_running(pid, timeout=300)
    time.sleep(3.0)  # well inside the loop (model loaded, denoising)
    t0 = time.monotonic()
    comfy_server.interrupt()
    entry = comfy_server.wait(pid, timeout=120)
    stopped_after = time.monotonic() - t0
    assert "execution_interrupted" in messages(entry), entry["status"]
    assert stopped_after < 20, f"interrupt took {stopped_after:.1f} s"
    ok = {"1": {"class_type": "LoadImage", "inputs": {"image": SMALL_IMAGE}},
          "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    assert comfy_server.run(ok, timeout=60)["2"]["images"]


def test_validation_errors(comfy_server, pack_nodes):
    bad_interval = wf(MANUAL, **{"4.interval": -5.0})
    status, body = comfy_server.queue_raw(bad_interval)
    assert status == 400 and "4" in body["node_errors"]
    bad_release = wf(MANUAL, **{"2.release": "no-such-release"})
    status, body = comfy_server.queue_raw(bad_release)
    assert status == 400 and "2" in body["node_errors"]
    bad_sampler = wf(SAMPLER, **{"4.sampler_name": "not_a_sampler"})
    status, body = comfy_server.queue_raw(bad_sampler)
    assert status == 400 and "4" in body["node_errors"]
    bad_scheduler = wf(SAMPLER, **{"5.scheduler": "not_a_scheduler"})
    status, body = comfy_server.queue_raw(bad_scheduler)
    assert status == 400 and "5" in body["node_errors"]


def test_execution_error_is_reported(comfy_server, pack_nodes):
    """A run-time error (no instructions, no text model) fails the prompt with a clear message."""
    p = wf(MANUAL, **FAST_TIMELAPSE, **{"4.instructions": "", "4.seed": 51})
    entry = comfy_server.wait(comfy_server.queue(p), timeout=300)
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and "no instructions" in errors[0]["exception_message"]


def _progress_run(server, **overrides) -> tuple[dict, list[dict], list]:
    from comfy_host import WsListener

    ws = WsListener(server)
    try:
        out = server.run(wf(MANUAL, **{**FAST_TIMELAPSE, **overrides}), timeout=900)
        time.sleep(0.5)  # let the last websocket messages arrive
    finally:
        ws.close()
    return out, [p for p in ws.of_type("progress") if p.get("node") == "4"], [d for k, d in ws.binary if k in (1, 4)]


def test_progress_and_keyframe_previews_over_websocket(comfy_server, pack_nodes):
    out, progress, previews = _progress_run(comfy_server, **{"4.seed": 61, "4.finish_frames": 0})
    assert len(out["6"]["images"]) == 4
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 3 * STEPS_RUN  # keyframes x steps
    values = [p["value"] for p in progress]
    assert values == sorted(values) and {STEPS_RUN, 2 * STEPS_RUN, 3 * STEPS_RUN} <= set(values)
    # every denoising step reported; newer ComfyUI drops updates that come sooner than its throttle interval
    # (those with a preview, the keyframes', always pass)
    utils = Path(os.environ["COMFYUI_PATH"]) / "comfy" / "utils.py"
    if "PROGRESS_THROTTLE_MIN_INTERVAL" not in utils.read_text():
        assert len(set(values)) >= 3 * STEPS_RUN
    assert len(previews) >= 4  # the start canvas and every keyframe
    jpeg = previews[-1][4:] if previews[-1][:4] in (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02") else previews[-1]
    with Image.open(BytesIO(jpeg)) as im:  # ComfyUI scales previews to 512 px: check the aspect ratio
        assert abs(im.size[0] / im.size[1] - WORKING[1] / WORKING[0]) < 0.02, im.size


def test_progress_ends_at_100_percent_when_a_stop_rule_ends_the_run(comfy_server, pack_nodes):
    """Stopped after one keyframe of up to three: the bar's total becomes what was painted, so it ends full."""
    out, progress, _ = _progress_run(comfy_server, **{"4.seed": 62, "4.finish_frames": 0,
                                                      "4.stop_target_distance": 1.0})
    assert len(out["6"]["images"]) == 2
    assert progress[0]["max"] == 3 * STEPS_RUN
    assert progress[-1]["value"] == progress[-1]["max"] == STEPS_RUN


def test_models_reload_after_free(comfy_server, pack_nodes):
    """POST /free unloads ComfyUI-managed models; the next run must bring ours back and work."""
    comfy_server.free(unload_models=True)
    time.sleep(1.0)
    p = wf(SAMPLER, **{"4.sampler_name": "euler", "5.steps": 2, "7.seed": 71})
    out = comfy_server.run(p, timeout=600)
    assert _png(comfy_server, out["8"]["images"][0]).shape == (*WORKING, 3)
