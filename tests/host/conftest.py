"""Fixtures for the real-host suite: one ComfyUI server per test session.

Everything under tests/host/ is skipped unless COMFYUI_PATH points at a ComfyUI checkout
(a folder with main.py). COMFYUI_PYTHON selects the interpreter that runs the server
(default: the interpreter running pytest); see tests/host/README.md.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # lets the test modules `import comfy_host` in any import mode
    sys.path.insert(0, str(HERE))

from comfy_host import (  # noqa: E402
    RELEASE_NAME, SMALL_IMAGE, TARGET_IMAGE, ComfyServer, find_parity_dir, make_base_dir,
)


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


def _add_tiny_llava(dest: Path, work: Path) -> None:
    """A tiny random LLaVA in the released TP_llava layout (vision tower saved inside), ~1 s to build."""
    try:
        sys.path.insert(0, str(HERE.parent))
        import tiny_llava
    except ImportError:
        return  # text-model workflows then fail with a clear "not found" message
    made = tiny_llava.make_all(str(work))
    import shutil

    shutil.copytree(made["orig_with_tower"], dest)


@pytest.fixture(scope="session")
def parity_dir() -> Path | None:
    return find_parity_dir()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, parity_dir):
    comfy_path = _comfy_path()
    if comfy_path is None:
        pytest.skip("COMFYUI_PATH not set")
    base = tmp_path_factory.mktemp("comfy_base")
    images = {}
    if parity_dir is not None:
        images[TARGET_IMAGE] = parity_dir / "cases" / "f_loop" / "target.png"
    make_base_dir(base, parity_dir / "release" if parity_dir else None, images,
                  link_pack=os.environ.get("COMFYUI_COPY_PACK") != "1")
    _write_small_image(base / "input" / SMALL_IMAGE)
    if parity_dir is not None:
        _add_tiny_llava(base / "models" / "inverse_painting" / RELEASE_NAME / "TP_llava",
                        tmp_path_factory.mktemp("tiny_llava"))
    server = ComfyServer(comfy_path, os.environ.get("COMFYUI_PYTHON", sys.executable), base)
    server.start(timeout=float(os.environ.get("COMFYUI_START_TIMEOUT", "240")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def release_name(comfy_server, parity_dir) -> str:
    if parity_dir is None:
        pytest.skip("tiny model release not found (shared/parity or INVERSE_PAINTING_PARITY_DIR)")
    return RELEASE_NAME


@pytest.fixture(scope="session")
def pack_nodes(comfy_server) -> dict:
    """object_info of the pack's nodes; skips dependent tests when the pack failed to load."""
    info = comfy_server.object_info()
    mine = {k: v for k, v in info.items() if k.startswith("InversePainting")}
    if not mine:
        pytest.fail("no InversePainting* node registered; server log:\n" + comfy_server.log_tail())
    return mine
