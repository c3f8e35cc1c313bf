"""Fixtures for the real-host suite: one ComfyUI server per test session.

Everything under tests/host/ is skipped unless COMFYUI_PATH points at a ComfyUI checkout
(a folder with main.py). COMFYUI_PYTHON selects the interpreter that runs the server
(default: the interpreter running pytest); see tests/host/README.md. The server's base directory is
a fresh install's: the pack in custom_nodes/ and nothing else (the pack brings its starter model and
places its example painting in input/).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # lets the test modules `import comfy_host` in any import mode
    sys.path.insert(0, str(HERE))

from comfy_host import SMALL_IMAGE, ComfyServer, make_base_dir  # noqa: E402


def _comfy_path() -> Path | None:
    p = os.environ.get("COMFYUI_PATH")
    if p and (Path(p) / "main.py").is_file():
        return Path(p).resolve()
    return None


def pytest_collection_modifyitems(config, items):
    if _comfy_path() is not None:
        return
    reason = "host suite: set COMFYUI_PATH to a ComfyUI checkout (see tests/host/README.md)"
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=reason))


def _write_small_image(path: Path) -> None:
    import numpy as np
    from PIL import Image

    h, w = 80, 96
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 128)], -1).astype(np.uint8)
    Image.fromarray(img).save(path)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    comfy_path = _comfy_path()
    if comfy_path is None:
        pytest.skip("COMFYUI_PATH not set")
    base = tmp_path_factory.mktemp("comfy_base")
    make_base_dir(base, link_pack=os.environ.get("COMFYUI_COPY_PACK") != "1")
    _write_small_image(base / "input" / SMALL_IMAGE)
    server = ComfyServer(comfy_path, os.environ.get("COMFYUI_PYTHON", sys.executable), base)
    server.start(timeout=float(os.environ.get("COMFYUI_START_TIMEOUT", "240")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pack_nodes(comfy_server) -> dict:
    """object_info of the pack's nodes; fails dependent tests when the pack failed to load."""
    info = comfy_server.object_info()
    mine = {k: v for k, v in info.items() if k.startswith("InversePainting")}
    if not mine:
        pytest.fail("no InversePainting* node registered; server log:\n" + comfy_server.log_tail())
    return mine
