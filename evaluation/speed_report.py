"""Speed at equal quality: the sampling settings compared on held-out processes with a starter model.

    python -m inverse_painting.evaluation.speed_report --models assets/starter_model --seed 1000 --out output/speed

Paints ``--count`` held-out synthetic processes (as :mod:`.starter_report`; the model folder's paint
defaults, without finishing keyframes: the model's own keyframes are scored) once per sampling setting
(``--settings``, default all of :data:`SETTINGS`), scores each against the real processes with the
evaluation CLI (LPIPS / IoU / DDC), and prints one table: UNet passes per painted keyframe, seconds, the
metrics and their difference from the faithful setting (the release's six branches, 25 Euler-ancestral
steps), marked ``ok`` when all three are within ``--tolerance`` (0.005). Choose settings on validation seeds
(3000, 4000); report on a benchmark seed (1000, 5000, 6000). Writes ``results.json`` / ``results.md``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

# sampling settings (PaintSettings fields); "faithful" is the reference every other row is compared with
SETTINGS = {
    "faithful": {"fast_guidance": False, "sampler": "euler_ancestral", "steps": 25, "guidance_interval": None},
    "fast": {"fast_guidance": True, "sampler": "euler_ancestral", "steps": 25, "guidance_interval": None},
    "euler_a_12": {"fast_guidance": True, "sampler": "euler_ancestral", "steps": 12, "guidance_interval": None},
    "dpmpp_2m_12": {"fast_guidance": True, "sampler": "dpmpp_2m", "steps": 12, "guidance_interval": None},
    "dpmpp_2m_10": {"fast_guidance": True, "sampler": "dpmpp_2m", "steps": 10, "guidance_interval": None},
    "fast_interval": {"fast_guidance": True, "sampler": "euler_ancestral", "steps": 25,
                      "guidance_interval": (0.3, 6.0)},
    "dpmpp_2m_12_interval": {"fast_guidance": True, "sampler": "dpmpp_2m", "steps": 12,
                             "guidance_interval": (0.3, 6.0)},
    "default": {},  # PaintSettings' own defaults
}
METRICS = ("lpips", "iou", "ddc")


def paint_setting(models_dir: Path, models, text, metric, real: dict, out: Path, overrides: dict, seed: int,
                  log=print) -> dict:
    """Paint every real sequence's last frame with one setting; returns passes, keyframes and seconds."""
    from ..core.export import write_process
    from ..core.imaging import prepare_image
    from ..core.loop import Painter, PaintSettings, collect_process

    painter = Painter(models, metric)
    keyframes, t0 = 0, time.time()
    for name, seq in sorted(real.items()):
        short = min(seq.target.shape[:2])
        working = prepare_image(seq.target, short)
        settings = PaintSettings.for_model(models_dir, seed=seed, short_side=short,
                                           **{"finish_frames": 0, **overrides})
        frames, masks, records = collect_process(painter, working, settings, text)
        write_process(out / name, frames, records, dict(settings.to_dict(), metric="stlpips_alex",
                      models=str(models_dir)), masks=masks, video=(), extra={"stop_reason": painter.last_stop_reason})
        keyframes += sum(1 for r in records[1:] if not r.get("finishing"))
    seconds = time.time() - t0
    passes = painter.renderer.unet_passes
    log(f"  {keyframes} painted keyframes, {passes / max(keyframes, 1):.1f} UNet passes each, {seconds:.0f} s")
    return {"keyframes": keyframes, "passes_per_keyframe": passes / max(keyframes, 1), "seconds": seconds}


def compare(rows: dict, reference: str = "faithful", tolerance: float = 0.005) -> str:
    """Markdown table of the rows, with each metric's difference from ``reference`` and an ok/no verdict."""
    ref = rows.get(reference)
    lines = ["| setting | UNet passes / keyframe | s | LPIPS | IoU | DDC | Δ LPIPS | Δ IoU | Δ DDC | within ±"
             f"{tolerance} |", "|---" * 10 + "|"]
    for name, r in rows.items():
        deltas = [r[m] - ref[m] for m in METRICS] if ref else [float("nan")] * 3
        ok = "reference" if name == reference else ("ok" if all(abs(d) <= tolerance for d in deltas) else "no")
        lines.append(f"| {name} | {r['passes_per_keyframe']:.1f} | {r['seconds']:.0f} | "
                     + " | ".join(f"{r[m]:.4f}" for m in METRICS) + " | "
                     + " | ".join(f"{d:+.4f}" for d in deltas) + f" | {ok} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from .starter_report import evaluate_method, write_held_out

    p = argparse.ArgumentParser(prog="python -m inverse_painting.evaluation.speed_report",
                                description=__doc__.split("\n")[0])
    p.add_argument("--models", default=str(Path(__file__).resolve().parents[1] / "assets" / "starter_model"))
    p.add_argument("--out", default="output/speed_report")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--seed", type=int, default=1000,
                   help="held-out processes (1000, 5000, 6000: benchmarks; 3000/4000: validation)")
    p.add_argument("--paint-seed", type=int, default=1)
    p.add_argument("--settings", nargs="*", choices=list(SETTINGS), help="default: all")
    p.add_argument("--tolerance", type=float, default=0.005)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)

    import torch

    from ..core.model_set import ModelSet
    from ..models.lpips_net import load_perceptual_metric
    from ..models.text_instruction import TextInstructionGenerator
    from .sequences import load_sequences

    models_dir = Path(a.models)
    info = json.loads((models_dir / "starter.json").read_text())["options"]
    out = Path(a.out)
    if out.exists():  # only ever replace a previous report, never an unrelated folder
        if any(out.iterdir()) and not (out / "results.json").is_file():
            raise SystemExit(f"{out} exists and is not a previous speed report: choose another --out")
        shutil.rmtree(out)
    names = a.settings or list(SETTINGS)
    if "faithful" not in names:
        names = ["faithful", *names]
    real_dir = write_held_out(out / "data", a.count, a.seed, int(info["size"]), info.get("aspect"),
                              int(info["seed"]), int(info["processes"]))
    real = load_sequences(real_dir)
    models = ModelSet.from_release(models_dir, device=a.device, dtype=torch.float32)
    metric = load_perceptual_metric("stlpips_alex", device=a.device)
    text = TextInstructionGenerator.from_pretrained(models.paths.text_model, device=a.device)
    rows = {}
    for name in names:
        print(f"{name}: {SETTINGS[name] or 'PaintSettings defaults'}", flush=True)
        run = paint_setting(models_dir, models, text, metric, real, out / name, SETTINGS[name], a.paint_seed)
        rep = evaluate_method(out / name, real_dir, out / f"eval_{name}", plots=False)
        rows[name] = {**run, **{m: rep["overall"][m] for m in METRICS}, "settings": SETTINGS[name]}
        shutil.rmtree(out / f"eval_{name}", ignore_errors=True)
    table = compare(rows, tolerance=a.tolerance)
    (out / "results.json").write_text(json.dumps({"models": str(models_dir), "seed": a.seed, "count": a.count,
                                                  "paint_seed": a.paint_seed, "rows": rows}, indent=1, default=list))
    (out / "results.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
