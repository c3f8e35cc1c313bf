#!/usr/bin/env bash
# Set-up: create .venv/ in the repository and install the pack (console command `inverse-painting`).
# torch is pinned through a constraint so that no other package can swap in a CUDA build; on a CPU-only
# machine the local CPU wheel of torch 2.13.0 is used when pip finds it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -U pip
TORCH=${TORCH_VERSION:-2.13.0}
.venv/bin/python -m pip install -q "torch==$TORCH"
constraints=$(mktemp)
echo "torch==$TORCH" > "$constraints"
.venv/bin/python -m pip install -q -c "$constraints" -r requirements.txt -r requirements-dev.txt
# weight files only: lpips (v0.1 heads) and stlpips-pytorch (shift-tolerant LPIPS) are read, never imported,
# so their torchvision dependency is not installed (a CUDA-only torchvision breaks diffusers on CPU machines)
.venv/bin/python -m pip install -q --no-deps lpips==0.1.4 stlpips-pytorch==0.0.2
.venv/bin/python -m pip install -q --no-deps -e .
rm -f "$constraints"
.venv/bin/inverse-painting --help >/dev/null
echo "set-up done: .venv/bin/inverse-painting"
