"""Make the CUDA-only torchvision wheel importable next to a CPU build of torch.

PyPI ships only CUDA builds of torchvision. Installed with ``--no-deps`` beside
``torch==2.13.0+cpu`` its compiled ``_C`` extension cannot load (it links the CUDA
runtime), and ``torchvision/_meta_registrations.py`` then fails at import because it
registers fake kernels for ``torchvision::nms`` / ``torchvision::qnms`` unconditionally,
although those operators were never defined. ComfyUI imports torchvision at start-up
(only ``torchvision.transforms`` is used), so the server cannot start without a fix.

This script guards those registrations with ``torchvision.extension._has_ops()``.
The pure-Python parts (transforms, models, utils) then work; the C++ operators raise
"Couldn't load custom C++ ops" when called, which ComfyUI never does on CPU.

Usage: ``python patch_torchvision_cpu.py`` run by the interpreter of the venv to patch.
The patch is idempotent and does not import torchvision to find it.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

MARKER = "# inverse-painting: guarded for CPU-only torch"
# Operators whose fake kernels are registered unconditionally in torchvision 0.2x.
_UNGUARDED_OPS = ("torchvision::nms", "torchvision::qnms")


def find_meta_registrations() -> Path:
    spec = importlib.util.find_spec("torchvision")  # finds, does not import, the package
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torchvision is not installed in this interpreter: " + sys.executable)
    path = Path(list(spec.submodule_search_locations)[0]) / "_meta_registrations.py"
    if not path.is_file():
        raise SystemExit(f"{path} not found: unknown torchvision layout")
    return path


def patch_source(src: str) -> tuple[str, int]:
    """Return (patched source, number of functions guarded).

    Each ``@torch.library.register_fake("<op>")`` decorated function for the ops above is
    re-indented under ``if torchvision.extension._has_ops():``. The function body ends at
    the next line that starts at column 0 and is not blank (the next top-level statement).
    """
    lines = src.splitlines(keepends=True)
    out: list[str] = []
    guarded = 0
    i = 0
    deco = re.compile(r'^@torch\.library\.register_fake\(\s*"([^"]+)"\s*\)')
    while i < len(lines):
        m = deco.match(lines[i])
        if m and m.group(1) in _UNGUARDED_OPS:
            j = i + 1
            # decorator block + def line
            while j < len(lines) and lines[j].startswith("@"):
                j += 1
            j += 1  # the def line itself
            while j < len(lines) and (lines[j].strip() == "" or lines[j][0] in " \t"):
                j += 1
            block = lines[i:j]
            # keep trailing blank lines outside the guarded block
            tail: list[str] = []
            while block and block[-1].strip() == "":
                tail.insert(0, block.pop())
            out.append(f"if torchvision.extension._has_ops():  {MARKER}\n")
            out.extend(("    " + ln) if ln.strip() else ln for ln in block)
            out.extend(tail)
            guarded += 1
            i = j
            continue
        out.append(lines[i])
        i += 1
    return "".join(out), guarded


def main() -> int:
    path = find_meta_registrations()
    src = path.read_text()
    if MARKER in src:
        print(f"already patched: {path}")
        return 0
    new, guarded = patch_source(src)
    if guarded == 0:
        # Newer torchvision releases may already guard these; nothing to do then.
        print(f"nothing to patch in {path} (no unguarded nms/qnms registrations)")
        return 0
    if "import torchvision" not in new:
        new = "import torchvision  " + MARKER + "\n" + new
    compile(new, str(path), "exec")  # never write a file that does not parse
    path.write_text(new)
    print(f"patched {guarded} registrations in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
