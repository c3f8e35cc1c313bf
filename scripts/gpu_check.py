"""GPU check at full size (about 8 minutes on one large GPU): fp16 rehearsal release, memory tiers, speed, NaN/Inf.

    python scripts/gpu_check.py --work /tmp/ip_gpu [--llava-layers 32] [--out RESULTS_DIR]

1. writes a full-size rehearsal release (``inverse-painting rehearsal-release``; LLaVA with ``--llava-layers``
   of 32 decoder layers at full width) under ``--work``, unless one is there;
2. for each memory tier (full, 12gb, 8gb, notext) paints 2 keyframes of assets/example.png at 512 px in fp16
   through the CLI's own code (``inverse-painting paint --vram TIER``), with the peak device memory
   (``torch.cuda.max_memory_allocated``) and seconds per keyframe; meanwhile every network's outputs are
   checked for NaN/Inf (a forward hook on each of them: renderer UNet, ReferenceNet, mask UNet, VAE, text
   encoder, CLIP, LLaVA), reported per network;
3. runs scripts/benchmark_keyframe.py on the same release (whole keyframes, fp16): passes, TFLOPs and seconds
   of the release, the release-equivalent setting and the default.
Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` and prints them. Asserts nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CHECKED = ("RendererUNet", "ReferenceNet", "MaskUNet", "Encoder", "Decoder", "CLIPTextModel", "CLIPVisionModel",
           "LlavaForConditionalGeneration", "CanvasFeatureEncoder", "NextClipPredictor", "TimeEncoder")


def _finite_hook(report: dict):
    def hook(module, args, output):
        name = type(module).__name__
        if name not in CHECKED:
            return
        tensors = [output] if torch.is_tensor(output) else [
            v for v in (output.values() if isinstance(output, dict) else getattr(output, "__dict__", {}).values())
            if torch.is_tensor(v)]
        if not tensors and isinstance(output, (tuple, list)):
            tensors = [v for v in output if torch.is_tensor(v)]
        entry = report.setdefault(name, {"calls": 0, "non_finite": 0})
        entry["calls"] += 1
        entry["non_finite"] += int(any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors))
    return hook


def paint_tier(release: Path, tier: str, out: Path) -> dict:
    from inverse_painting.cli import main as cli_main

    report: dict = {}
    handle = torch.nn.modules.module.register_module_forward_hook(_finite_hook(report))
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    buf = io.StringIO()
    t0 = time.time()
    try:
        with contextlib.redirect_stdout(buf):
            rc = cli_main(["paint", str(REPO / "assets" / "example.png"), "--models", str(release), "--out",
                           str(out / f"paint_{tier}"), "--device", "cuda", "--dtype", "fp16", "--vram", tier,
                           "--max-keyframes", "2", "--short-side", "512", "--text-max-tokens", "8",
                           *(["--instructions", "sky|mountain"] if tier == "notext" else [])])
        error = None
    except Exception as exc:  # noqa: BLE001 - reported per tier
        rc, error = 1, f"{type(exc).__name__}: {exc}"
    finally:
        handle.remove()
    log = buf.getvalue()
    times = [float(line.rsplit("(", 1)[1].rstrip("s)")) for line in log.splitlines() if line.startswith("keyframe")]
    per_kf = [b - a for a, b in zip([0.0] + times, times)]
    return {"tier": tier, "rc": rc, "error": error, "seconds_total": round(time.time() - t0, 1),
            "seconds_per_keyframe": [round(x, 2) for x in per_kf],
            "peak_vram_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2), "finite": report,
            "log_tail": log.splitlines()[-8:]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/ip_gpu_check", help="where the rehearsal release is written")
    p.add_argument("--out", default=None, help="results folder (default: --work)")
    p.add_argument("--llava-layers", type=int, default=32)
    p.add_argument("--tiers", nargs="*", default=["full", "12gb", "8gb", "notext"])
    p.add_argument("--no-benchmark", action="store_true")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this check is for a GPU machine")
        return 2
    work, out = Path(a.work), Path(a.out or a.work)
    out.mkdir(parents=True, exist_ok=True)
    release = work / "rehearsal"
    t0 = time.time()
    if not (release / "README.txt").is_file():
        from inverse_painting.core.rehearsal_release import write_rehearsal_release

        write_rehearsal_release(release, llava_layers=a.llava_layers)
    result = {"device": torch.cuda.get_device_name(), "llava_layers": a.llava_layers,
              "write_seconds": round(time.time() - t0, 1), "tiers": []}
    try:
        import bitsandbytes  # noqa: F401

        result["bitsandbytes"] = bitsandbytes.__version__
    except Exception as exc:  # noqa: BLE001
        result["bitsandbytes"] = f"not usable ({type(exc).__name__})"
    for tier in a.tiers:
        row = paint_tier(release, tier, out)
        print(json.dumps(row), flush=True)
        result["tiers"].append(row)
    if not a.no_benchmark:
        bench = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark_keyframe.py"), "--models",
                                str(release), "--size", "512", "--device", "cuda", "--dtype", "fp16", "--full"],
                               capture_output=True, text=True, cwd=REPO)
        result["benchmark"] = bench.stdout.splitlines()[-12:] + bench.stderr.splitlines()[-3:]
    lines = ["| tier | peak VRAM (GB) | s / keyframe | non-finite outputs | error |", "|---|---|---|---|---|"]
    for row in result["tiers"]:
        bad = {k: v["non_finite"] for k, v in row["finite"].items() if v["non_finite"]}
        lines.append(f"| {row['tier']} | {row['peak_vram_gb']} | {row['seconds_per_keyframe']} | {bad or 'none'} | "
                     f"{row['error'] or ''} |")
    md = "\n".join(lines + [""] + result.get("benchmark", []))
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_check.md").write_text(md + "\n")
    print(md)
    print(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
