#!/usr/bin/env bash
# Prepare a Python venv that can run a ComfyUI checkout headless on CPU, with this pack.
#
# Usage:  tests/host/setup_comfyui.sh COMFYUI_PATH VENV_PATH
#   COMFYUI_PATH  an existing ComfyUI checkout (tested: v0.3.64, commit a125cd84, and 0.28.0, commit
#                 66655153 of the kaalibro/ComfyUI snapshot; see tests/host/README.md). This script never
#                 downloads ComfyUI: get the checkout yourself.
#   VENV_PATH     venv to create (or reuse); keep it outside the repository.
# Environment:
#   PYTHON=python3        interpreter used to create the venv (3.10+; tested 3.11.7)
#   TORCH_VERSION=2.13.0  torch to pin (a +cpu wheel must be reachable by pip)
#   TORCHVISION_VERSION=0.28.0  the torchvision release that declares torch==TORCH_VERSION
#   TORCHAUDIO_VERSION=2.11.0   set to "" to skip torchaudio (ComfyUI then logs that its
#                               audio nodes are unavailable, everything else works)
#   INSTALL_PACK=1        also `pip install -e` this pack (no deps) and its runtime deps (requirements.txt)
#
# Why the fix-ups: only CUDA builds of torchvision/torchaudio are on PyPI. Next to a CPU torch
# neither imports as shipped; ComfyUI cannot start without torchvision (comfy/sd.py imports it).
#  * torchvision: installed --no-deps, then patch_torchvision_cpu.py guards two fake-kernel
#    registrations so `import torchvision` works (transforms only; C++ ops unavailable).
#  * torchaudio: installed --no-deps, then its CUDA-linked lib/*.so are deleted so it takes
#    its pure-Python "no extension" path (resample / MelSpectrogram keep working).
# Every pip call carries a torch==TORCH_VERSION constraint so nothing swaps in a CUDA torch.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
fi
COMFYUI_PATH=$(cd "$1" && pwd)
VENV_PATH=$2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PACK_PATH=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.28.0}
TORCHAUDIO_VERSION=${TORCHAUDIO_VERSION-2.11.0}
INSTALL_PACK=${INSTALL_PACK:-1}

[[ -f "$COMFYUI_PATH/main.py" && -f "$COMFYUI_PATH/requirements.txt" ]] || {
    echo "error: $COMFYUI_PATH does not look like a ComfyUI checkout (no main.py/requirements.txt)" >&2
    exit 1
}
if [[ -f "$COMFYUI_PATH/comfyui_version.py" ]]; then
    echo "ComfyUI: $(grep -o '"[0-9.]*"' "$COMFYUI_PATH/comfyui_version.py" | tr -d '"') at $COMFYUI_PATH"
fi

[[ -x "$VENV_PATH/bin/python" ]] || "$PYTHON" -m venv "$VENV_PATH"
VPY="$VENV_PATH/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "torch==$TORCH_VERSION" > "$work/constraints.txt"
# ComfyUI's requirements without the torch family (installed separately below).
grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFYUI_PATH/requirements.txt" > "$work/req.txt"

echo "== torch $TORCH_VERSION"
"${PIP[@]}" "torch==$TORCH_VERSION"
if "$VPY" -c "import torch, sys; sys.exit(0 if torch.version.cuda is None else 1)"; then
    :
else
    echo "warning: the installed torch is a CUDA build; this script targets CPU-only hosts" >&2
fi

echo "== ComfyUI requirements (+ requests, which app/frontend_management.py imports)"
"${PIP[@]}" -r "$work/req.txt" requests -c "$work/constraints.txt"

echo "== torchvision $TORCHVISION_VERSION (--no-deps) + CPU patch"
"${PIP[@]}" --no-deps "torchvision==$TORCHVISION_VERSION"
"$VPY" "$HERE/patch_torchvision_cpu.py"

if [[ -n "$TORCHAUDIO_VERSION" ]]; then
    echo "== torchaudio $TORCHAUDIO_VERSION (--no-deps), CUDA-linked extension removed"
    "${PIP[@]}" --no-deps "torchaudio==$TORCHAUDIO_VERSION"
    ta_dir=$("$VPY" -c "import importlib.util as u; print(list(u.find_spec('torchaudio').submodule_search_locations)[0])")
    rm -f "$ta_dir"/lib/*.so
fi

if [[ "$INSTALL_PACK" == "1" ]]; then
    echo "== this pack (editable, no deps) + its runtime deps"
    "${PIP[@]}" -e "$PACK_PATH" --no-deps
    if [[ -f "$PACK_PATH/requirements.txt" ]]; then
        "${PIP[@]}" -c "$work/constraints.txt" -r "$PACK_PATH/requirements.txt"
    else
        "${PIP[@]}" -c "$work/constraints.txt" diffusers transformers accelerate safetensors einops av pyyaml \
            numpy pillow sentencepiece protobuf
    fi
fi

echo "== check"
"$VPY" - <<'EOF'
import torch, torchvision, torchvision.transforms  # noqa: F401
print("torch", torch.__version__, "| torchvision", torchvision.__version__)
try:
    import torchaudio
    print("torchaudio", torchaudio.__version__)
except Exception as e:  # optional
    print("torchaudio unavailable:", type(e).__name__, e)
EOF
echo "done. Run ComfyUI with:"
echo "  mkdir -p BASE/custom_nodes && cd $COMFYUI_PATH && $VPY main.py --cpu --listen 127.0.0.1 --port 8199 --disable-auto-launch --base-directory BASE"
echo "Host tests:  COMFYUI_PATH=$COMFYUI_PATH COMFYUI_PYTHON=$VPY pytest tests/host"
