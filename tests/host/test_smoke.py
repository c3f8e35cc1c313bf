"""Smoke tests on a real ComfyUI server: it starts, runs core nodes, and lists this pack's nodes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from comfy_host import (EXAMPLE_IMAGE, MIN_VERSION, PACK_CATEGORY, PACK_DIR_NAME, PACK_NODE_IDS, REPO_ROOT, SMALL_IMAGE,
                        parse_version)


def test_version_parsing():
    assert parse_version("0.3.64") == (0, 3, 64) < parse_version("0.28.0") == (0, 28, 0)
    assert parse_version("0.3.64-rc1") == (0, 3, 64) and parse_version("1.0") == (1, 0) > MIN_VERSION


def test_server_answers(comfy_server):
    stats = comfy_server.get("/system_stats")
    assert parse_version(stats["system"]["comfyui_version"]) >= MIN_VERSION, stats["system"]["comfyui_version"]
    assert stats["devices"][0]["type"] == "cpu"


def test_pack_places_its_example_painting(comfy_server):
    """A fresh install: the pack copied its example painting into input/, where the workflows' Load Image looks."""
    placed = comfy_server.base_dir / "input" / EXAMPLE_IMAGE
    assert placed.read_bytes() == (REPO_ROOT / "assets" / "example.png").read_bytes()
    assert EXAMPLE_IMAGE in json.dumps(comfy_server.object_info("LoadImage")["input"]["required"]["image"])


def test_core_workflow_runs(comfy_server):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": SMALL_IMAGE}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "smoke/inverted"}},
    }
    outputs = comfy_server.run(prompt, timeout=120)
    images = outputs["3"]["images"]
    assert len(images) == 1
    path = comfy_server.output_file(images[0])
    saved = np.asarray(Image.open(path).convert("RGB"))
    source = np.asarray(Image.open(comfy_server.base_dir / "input" / SMALL_IMAGE).convert("RGB"))
    assert saved.shape == (80, 96, 3)
    assert np.abs(saved.astype(int) - (255 - source.astype(int))).max() <= 1


def test_core_validation_error(comfy_server):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "does-not-exist.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    status, body = comfy_server.queue_raw(prompt)
    assert status == 400
    assert "1" in body["node_errors"]


def test_pack_imported_cleanly(comfy_server):
    log = comfy_server.log_text()
    failed = [ln for ln in log.splitlines() if "IMPORT FAILED" in ln and PACK_DIR_NAME in ln]
    assert not failed, "pack failed to import:\n" + comfy_server.log_tail()
    assert PACK_DIR_NAME in log, "pack not in ComfyUI's custom-node import list"


def test_pack_nodes_listed(comfy_server, pack_nodes):
    missing = [n for n in PACK_NODE_IDS if n not in pack_nodes]
    assert not missing, f"nodes missing from /object_info: {missing}"
    for node_id in PACK_NODE_IDS:
        info = pack_nodes[node_id]
        assert info["category"] == PACK_CATEGORY, node_id
        assert info["display_name"], node_id
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"


@pytest.mark.parametrize("node_id", PACK_NODE_IDS)
def test_pack_node_info_endpoint(comfy_server, pack_nodes, node_id):
    info = comfy_server.object_info(node_id)
    assert info["name"] == node_id
    assert info["output"], node_id
