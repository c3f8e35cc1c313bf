"""The example workflows on a real ComfyUI server with the tiny release.

Each API workflow of tests/host/workflows/ is queued with speed overrides (working size 128 px, a few
steps and keyframes) and its outputs are checked: frame counts, sizes, files written. Also: the UI
copies in workflows/ convert back to the API copies, ComfyUI samplers drive Render Keyframe,
/interrupt stops a running time-lapse, and bad inputs give validation errors.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_host import REPO_ROOT, SMALL_IMAGE, load_api_workflow, messages
from workflow_tools import strip_meta, ui_to_api

API_DIR = Path(__file__).resolve().parent / "workflows"
UI_DIR = REPO_ROOT / "workflows"
SIZE = (128, 137)  # working size of the 512x550 test painting at short_side 128 (h, w)
FAST_TIMELAPSE = {"2.short_side": 128, "4.steps": 3, "4.max_keyframes": 3,
                  "4.stop_target_distance": 0.0, "4.stop_change": 0.0}  # stop rules off: exactly 3 keyframes


def wf(name: str, **overrides) -> dict:
    return load_api_workflow(API_DIR / f"{name}.json", **overrides)


def _png(server, item) -> np.ndarray:
    return np.asarray(Image.open(server.output_file(item)).convert("RGB"))


@pytest.mark.parametrize("name", sorted(p.stem for p in API_DIR.glob("*.json")))
def test_ui_workflow_matches_api_copy(comfy_server, pack_nodes, name):
    ui = json.loads((UI_DIR / f"{name}.json").read_text())
    api = json.loads((API_DIR / f"{name}.json").read_text())
    assert ui_to_api(ui, comfy_server.object_info()) == strip_meta(api)


def test_templates_listed(comfy_server):
    templates = comfy_server.get("/workflow_templates")
    listed = next(iter(v for k, v in templates.items() if "inverse" in k.lower()), [])
    assert sorted(listed) == sorted(p.stem for p in UI_DIR.glob("*.json"))


def _check_saved_process(server, save_out: dict, n_frames: int) -> dict:
    item = save_out["images"][0]
    assert item["filename"] == "timelapse.webp"
    webp = server.output_file(item)
    run_dir = webp.parent
    with Image.open(webp) as im:
        assert getattr(im, "n_frames", 1) == n_frames
        assert im.size == (SIZE[1], SIZE[0])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(manifest["keyframes"]) == n_frames
    assert manifest["ai_reconstruction"] is True and "AI reconstruction" in manifest["provenance"]
    frames = sorted((run_dir / "frames").glob("*.png"))
    masks = sorted((run_dir / "masks").glob("*.png"))
    assert len(frames) == n_frames and len(masks) == n_frames
    assert np.asarray(Image.open(frames[0])).shape[:2] == SIZE
    mp4 = run_dir / "timelapse.mp4"
    assert mp4.is_file() and mp4.stat().st_size > 0
    try:
        import av
    except ImportError:
        return manifest
    with av.open(str(mp4)) as c:
        assert "AI reconstruction" in c.metadata.get("comment", "")
        assert c.streams.video[0].codec_context.name == "h264"
    return manifest


def test_manual_instruction_timelapse(comfy_server, release_name):
    out = comfy_server.run(wf("manual_instructions", **FAST_TIMELAPSE, **{"4.seed": 11}), timeout=900)
    frames = out["6"]["images"]
    assert len(frames) == 6  # start canvas + 3 keyframes + the starter's 2 finishing keyframes (finish_frames -1)
    first = _png(comfy_server, frames[0])
    assert first.shape[:2] == SIZE and first.min() == 255  # white start canvas
    manifest = _check_saved_process(comfy_server, out["5"], 6)
    assert [k["instruction"] for k in manifest["keyframes"]] == ["(start)", "sky", "mountains", "trees", "(finish)",
                                                                 "(finish)"]
    assert manifest["timeline"]["stop_reason"] == "max_keyframes"


def test_full_timelapse_with_text_model(comfy_server, release_name):
    fast = {**FAST_TIMELAPSE, "4.max_keyframes": 2, "4.seed": 12, "3.max_new_tokens": 4, "4.finish_frames": 1}
    out = comfy_server.run(wf("timelapse_full", **fast), timeout=900)
    manifest = _check_saved_process(comfy_server, out["5"], 4)
    sources = [k.get("instruction_source") for k in manifest["keyframes"][1:]]
    assert sources == ["text_model", "text_model", "finish"]
    tmap = out["7"]["images"]
    assert len(tmap) == 1 and _png(comfy_server, tmap[0]).shape[:2] == SIZE


def _model_loads(server) -> int:
    return server.log_text().count("Inverse Painting: loading /")


def test_single_step_chain(comfy_server, release_name):
    fast = {"2.short_side": 128, "9.steps": 3, "15.steps": 3, "3.max_new_tokens": 4}
    out = comfy_server.run(wf("single_step", **fast, **{"9.seed": 21}), timeout=900)
    for node in ("10", "16"):
        img = _png(comfy_server, out[node]["images"][0])
        assert img.shape == (*SIZE, 3)
    assert _png(comfy_server, out["7"]["images"][0]).shape[:2] == SIZE  # distance map
    assert _png(comfy_server, out["12"]["images"][0]).shape[:2] == SIZE  # mask
    loads = _model_loads(comfy_server)
    # another seed: the renderer re-runs, the weights are not loaded again (cache)
    out2 = comfy_server.run(wf("single_step", **fast, **{"9.seed": 22}), timeout=900)
    assert not np.array_equal(_png(comfy_server, out["10"]["images"][0]), _png(comfy_server, out2["10"]["images"][0]))
    assert _model_loads(comfy_server) == loads


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m"])
def test_comfy_sampler_and_karras_drive_render(comfy_server, release_name, sampler):
    p = wf("custom_sampler", **{"2.short_side": 128, "4.sampler_name": sampler, "5.steps": 3, "7.seed": 31})
    out = comfy_server.run(p, timeout=600)
    img = _png(comfy_server, out["8"]["images"][0])
    assert img.shape == (*SIZE, 3) and img.std() > 0


def test_cfg_pp_sampler_rejected_clearly(comfy_server, release_name):
    p = wf("custom_sampler", **{"2.short_side": 128, "4.sampler_name": "euler_cfg_pp", "5.steps": 2, "7.seed": 32})
    entry = comfy_server.wait(comfy_server.queue(p), timeout=300)
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and "euler_cfg_pp" in errors[0]["exception_message"]
    assert errors[0]["node_id"] == "7"


def test_interrupt_stops_timelapse_and_server_keeps_serving(comfy_server, release_name):
    long_run = wf("manual_instructions", **{"2.short_side": 128, "4.steps": 25, "4.max_keyframes": 50,
                                            "4.stop_target_distance": 0.0, "4.stop_change": 0.0, "4.seed": 41})
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


def test_validation_errors(comfy_server, release_name):
    bad_interval = wf("manual_instructions", **{"4.interval": -5.0})
    status, body = comfy_server.queue_raw(bad_interval)
    assert status == 400 and "4" in body["node_errors"]
    bad_release = wf("manual_instructions", **{"2.release": "no-such-release"})
    status, body = comfy_server.queue_raw(bad_release)
    assert status == 400 and "2" in body["node_errors"]
    bad_sampler = wf("custom_sampler", **{"4.sampler_name": "not_a_sampler"})
    status, body = comfy_server.queue_raw(bad_sampler)
    assert status == 400 and "4" in body["node_errors"]


def test_execution_error_is_reported(comfy_server, release_name):
    """A run-time error (no instructions, no text model) fails the prompt with a clear message."""
    p = wf("manual_instructions", **FAST_TIMELAPSE, **{"4.instructions": "", "4.seed": 51})
    entry = comfy_server.wait(comfy_server.queue(p), timeout=300)
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and "no instructions" in errors[0]["exception_message"]


def test_progress_and_keyframe_previews_over_websocket(comfy_server, release_name):
    from io import BytesIO

    from comfy_host import WsListener

    ws = WsListener(comfy_server)
    try:
        out = comfy_server.run(wf("manual_instructions", **FAST_TIMELAPSE, **{"4.seed": 61, "4.finish_frames": 0}),
                               timeout=900)
        time.sleep(0.5)  # let the last websocket messages arrive
    finally:
        ws.close()
    assert len(out["6"]["images"]) == 4
    progress = [p for p in ws.of_type("progress") if p.get("node") == "4"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 3 * 3  # keyframes x steps
    assert len({p["value"] for p in progress}) >= 9  # every denoising step reported
    previews = [data for kind, data in ws.binary if kind in (1, 4)]
    assert len(previews) >= 4  # the start canvas and every keyframe
    jpeg = previews[-1][4:] if previews[-1][:4] in (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02") else previews[-1]
    with Image.open(BytesIO(jpeg)) as im:  # ComfyUI scales previews to 512 px: check the aspect ratio
        assert abs(im.size[0] / im.size[1] - SIZE[1] / SIZE[0]) < 0.02, im.size


def test_models_reload_after_free(comfy_server, release_name):
    """POST /free unloads ComfyUI-managed models; the next run must bring ours back and work."""
    comfy_server.free(unload_models=True)
    time.sleep(1.0)
    p = wf("custom_sampler", **{"2.short_side": 128, "4.sampler_name": "euler", "5.steps": 2, "7.seed": 71})
    out = comfy_server.run(p, timeout=600)
    assert _png(comfy_server, out["8"]["images"][0]).shape == (*SIZE, 3)
