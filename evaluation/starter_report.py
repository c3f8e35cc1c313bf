"""Held-out benchmark of a starter model against three naive baselines (the README's results table).

    python -m inverse_painting.evaluation.starter_report --models assets/starter_model --out output/starter_eval

1. writes ``--count`` synthetic painting processes from ``--seed`` (checked disjoint from the paintings the
   starter was trained on: the per-painting seeds of both sets are compared) at the starter's size/aspect;
2. paints each finished painting with the starter model (the CLI's painting loop and defaults);
3. writes the three baselines of :mod:`.baselines` (cross-fade, random tiles, top-to-bottom bands) with as many keyframes as the starter used for that
   painting, so all three differ only in *what* is painted *when*;
4. runs the evaluation CLI (:func:`.cli.run`) for each method against the real processes (and, when the
   starter ends with finishing keyframes, ``PaintSettings.finish_frames``, for its runs without them: a row
   that is not ranked) and writes ``results.json`` and ``results.md`` (the table), plus, for
   ``--figure-painting``, a keyframe strip (real / starter / baselines at the same times) and the
   starter's time map.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .baselines import BASELINES, write_baseline

METHODS = ("starter",) + BASELINES
LABELS = {"starter": "starter model",
          "starter_unfinished": "starter model without its finishing cross-fade (not ranked)",
          "crossfade": "cross-fade (white -> target)", "tiles": "random 8x8 tiles",
          "band": "top-to-bottom bands",
          "vae_bound": "real process through the starter's VAE (bound, not a method)"}


def painting_seeds(seed: int, count: int) -> set[int]:
    """The per-painting seeds :func:`..training.synthetic.generate_dataset` draws for (seed, count)."""
    return {int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0]) for i in range(int(count))}


def write_held_out(root: Path, count: int, seed: int, size: int, aspect, train_seed: int, train_count: int) -> Path:
    from ..training.synthetic import generate_dataset

    overlap = painting_seeds(seed, count) & painting_seeds(train_seed, train_count)
    if overlap:
        raise SystemExit(f"held-out seed {seed} shares {len(overlap)} paintings with the training set: pick another")
    generate_dataset(str(root), count, seed, size=size, aspect=aspect, split="heldout", prefix="heldout")
    return root / "heldout" / "rgb"


def paint_all(models_dir: Path, models, real: dict, out: Path, steps: int, seed: int, device: str,
              max_keyframes: int = 50, log=print, overrides: dict | None = None) -> dict:
    """Paint each real sequence's last frame with the model (``models``, the ModelSet loaded from
    ``models_dir``; its paint defaults, then ``overrides``).

    Returns ({name: number of keyframes}, {name: perceptual distance between the target and its VAE
    reconstruction}: the floor no keyframe decoded by this VAE gets under).
    """
    from ..core.export import write_process
    from ..core.imaging import prepare_image
    from ..core.loop import Painter, PaintSettings, collect_process
    from ..models.lpips_net import load_perceptual_metric
    from ..models.text_instruction import TextInstructionGenerator

    metric = load_perceptual_metric("stlpips_alex", device=device)
    text = TextInstructionGenerator.from_pretrained(models.paths.text_model, device=device)
    painter = Painter(models, metric)
    from ..core.difference_mask import stop_rule_distance

    counts, floors = {}, {}
    for name, seq in sorted(real.items()):
        t = time.time()
        short = min(seq.target.shape[:2])
        working = prepare_image(seq.target, short)
        settings = PaintSettings.for_model(models_dir, steps=steps, seed=seed, short_side=short,
                                           max_keyframes=max_keyframes, **(overrides or {}))
        floors[name] = stop_rule_distance(metric, working.padded, models.round_trip(working.padded))
        frames, masks, records = collect_process(painter, working, settings, text)
        write_process(out / name, frames, records, dict(settings.to_dict(), metric="stlpips_alex",
                      models=str(models_dir)), masks=masks, video=(), extra={"stop_reason": painter.last_stop_reason},
                      overwrite=True)
        counts[name] = len(frames) - 1
        log(f"{name}: {counts[name]} keyframes ({painter.last_stop_reason}) in {time.time() - t:.1f}s "
            f"(real: {len(seq) - 1}; VAE floor {floors[name]:.3f})")
    return counts, floors


def write_vae_bound(models, real: dict, out: Path) -> None:
    """Every real frame passed through the VAE of ``models`` (a ModelSet), at the real times: what a painter
    that gets every keyframe exactly right would still score, since every keyframe it makes is decoded by it."""
    from ..core.export import write_process
    from ..core.imaging import prepare_image

    for name, seq in sorted(real.items()):
        frames = []
        for f in seq.frames:
            working = prepare_image(f, min(f.shape[:2]))
            h, w = working.size
            frames.append(models.round_trip(working.padded)[:h, :w])
        write_process(out / name, frames, [{"time_s": float(t), "instruction": ""} for t in seq.times_s],
                      {"bound": "real frames through the VAE"}, video=(), overwrite=True)


def without_finishing(src: Path, dst: Path) -> bool:
    """The processes painted in ``src`` without their finishing keyframes (``PaintSettings.finish_frames``), in
    ``dst``: what the model painted itself. False, and nothing written, when no process has any."""
    found = False
    for manifest in sorted(src.glob("*/manifest.json")):
        data = json.loads(manifest.read_text())
        kept = [e for e in data["keyframes"] if not e.get("finishing")]
        found |= len(kept) < len(data["keyframes"])
        folder = dst / manifest.parent.name
        for entry in kept:
            for key in ("file", "mask_file"):
                if key in entry:
                    (folder / entry[key]).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(manifest.parent / entry[key], folder / entry[key])
        (folder / "manifest.json").write_text(json.dumps({**data, "keyframes": kept}, indent=1))
    if not found:
        shutil.rmtree(dst, ignore_errors=True)
    return found


def evaluate_method(generated: Path, real_dir: Path, out: Path, plots: bool) -> dict:
    from .cli import run

    args = SimpleNamespace(generated=str(generated), real=str(real_dir), out=str(out), metric="stlpips_alex",
                           lpips_weights=None, threshold=0.2, short_side=None, fid="none", inception_weights=None,
                           no_plots=not plots, device="cpu", overwrite=True)
    return run(args)


def results_table(overall: dict) -> str:
    """Markdown table: one row per method, best LPIPS/DDC/DTS (lowest) and IoU (highest) in bold."""
    cols = (("lpips", "LPIPS ↓", min), ("iou", "IoU ↑", max), ("ddc", "DDC ↓", min), ("dts_min", "DTS (min) ↓", min))
    best = {k: f([overall[m][k] for m in overall if m in METHODS]) for k, _, f in cols}  # bounds are not ranked
    lines = ["| method | " + " | ".join(h for _, h, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m, o in overall.items():
        cells = [(f"**{o[k]:.4f}**" if o[k] == best[k] and m in METHODS else f"{o[k]:.4f}") for k, _, _ in cols]
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def iou_table(overall: dict) -> str:
    """Markdown table of what each method's IoU is made of (:func:`.metrics.iou_breakdown`)."""
    from .metrics import UNMATCHED_IOU

    lines = [f"| method | steps | matching no real step (IoU < {UNMATCHED_IOU}) | of those, changing nothing seen | "
             "mean IoU of the others |", "|---|---|---|---|---|"]
    for m, o in overall.items():
        b = o["iou_breakdown"]
        mean = "n/a" if b["matched_mean"] is None else f"{b['matched_mean']:.4f}"
        lines.append(f"| {LABELS.get(m, m)} | {b['steps']} | {b['unmatched']} | {b['unchanged']} | {mean} |")
    return "\n".join(lines)


def keyframe_strip(sequences: dict, path: Path, columns: int = 8, title: str = "") -> None:
    """Rows = methods, columns = the same moments (fractions of the real duration), nearest earlier frame."""
    from .plots import _figure, _finish
    from .sequences import format_mss

    real = sequences["real"]
    moments = np.linspace(0, real.duration_s, columns)
    h, w = real.frames[0].shape[:2]
    fig = _figure(columns * 1.5 + 1.2, len(sequences) * (1.5 * h / w + 0.3) + 0.4)
    for r, (label, seq) in enumerate(sequences.items()):
        times = np.asarray(seq.times_s)
        for c, t in enumerate(moments):
            k = int(np.searchsorted(times, t + 1e-6, side="right") - 1)
            ax = fig.add_subplot(len(sequences), columns, r * columns + c + 1)
            ax.imshow(seq.frames[max(k, 0)])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(format_mss(t), fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _finish(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m inverse_painting.evaluation.starter_report", description=__doc__.split("\n")[0])
    p.add_argument("--models", default=str(Path(__file__).resolve().parents[1] / "assets" / "starter_model"))
    p.add_argument("--out", default="output/starter_eval")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--seed", type=int, default=1000, help="seed of the held-out processes (not the training seed)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per keyframe (default: PaintSettings')")
    p.add_argument("--paint-seed", type=int, default=1)
    p.add_argument("--max-keyframes", type=int, default=50)
    p.add_argument("--figure-painting", type=int, default=0, help="index of the painting shown in the figures")
    p.add_argument("--figures", default=None, help="also copy the figures into this folder (e.g. docs/images)")
    p.add_argument("--update-card", action="store_true",
                   help="record the table in the model's starter.json and MODEL_CARD.md")
    p.add_argument("--reask", type=int, default=None, help="override the model's paint default")
    p.add_argument("--finish-frames", type=int, default=None, help="override the model's paint default")
    p.add_argument("--compare-to", choices=("target", "reconstruction"), default=None,
                   help="override the model's paint default")
    p.add_argument("--guidance", type=float, nargs=5, default=None, metavar=("IMAGE", "CANVAS", "TIME", "MASK", "TEXT"),
                   help="override the model's guidance scales")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    overrides = {"reask": a.reask, "finish_frames": a.finish_frames, "scales": a.guidance, "compare_to": a.compare_to}

    from .sequences import load_sequences

    models = Path(a.models)
    info = json.loads((models / "starter.json").read_text())["options"]
    from ..core.loop import PaintSettings

    defaults = PaintSettings.for_model(models)
    if a.steps is None:  # recorded in the results and the card as a number
        a.steps = defaults.steps
    sampler = {"dpmpp_2m": "DPM-Solver++(2M)", "euler_ancestral": "Euler ancestral"}.get(defaults.sampler,
                                                                                          defaults.sampler)
    out = Path(a.out)
    if out.exists():  # only ever replace a previous report, never an unrelated folder
        if any(out.iterdir()) and not (out / "results.json").is_file():
            raise SystemExit(f"{out} exists and is not a previous starter report: choose another --out")
        shutil.rmtree(out)
    t0 = time.time()
    real_dir = write_held_out(out / "data", a.count, a.seed, int(info["size"]), info.get("aspect"),
                              int(info["seed"]), int(info["processes"]))
    real = load_sequences(real_dir)
    import torch

    from ..core.model_set import ModelSet

    model_set = ModelSet.from_release(models, device=a.device, dtype=torch.float32)  # painting and the bound
    counts, floors = paint_all(models, model_set, real, out / "starter", a.steps, a.paint_seed, a.device,
                               a.max_keyframes, overrides=overrides)
    for kind in BASELINES:
        for name, seq in real.items():
            write_baseline(kind, out / kind / name, seq.target, counts[name], seed=a.seed, overwrite=True)
    write_vae_bound(model_set, real, out / "vae_bound")
    # the starter's own keyframes, for a row that shows what its finishing cross-fade adds
    unfinished = ("starter_unfinished",) if without_finishing(out / "starter", out / "starter_unfinished") else ()
    overall, per = {}, {}
    for m in METHODS[:1] + unfinished + METHODS[1:] + ("vae_bound",):
        rep = evaluate_method(out / m, real_dir, out / f"eval_{m}", plots=m == "starter")
        keys = ("lpips", "iou", "ddc", "dts_min", "num_paintings", "iou_breakdown")
        overall[m] = {k: rep["overall"][k] for k in keys}
        per[m] = {js["name"]: {k: js.get(k) for k in ("lpips", "iou", "ddc", "dts_min")} for js in rep["paintings"]}
    table, steps_table = results_table(overall), iou_table(overall)
    names = sorted(real)
    fig_name = names[a.figure_painting % len(names)]
    gen = {m: load_sequences(out / m / fig_name) for m in METHODS}
    strip = out / "starter_strip.png"
    keyframe_strip({"real": real[fig_name], **{LABELS[m]: next(iter(gen[m].values())) for m in METHODS}}, strip,
                   title=f"held-out painting {fig_name}")
    time_map = out / "eval_starter" / fig_name / "time_map.png"
    result = {"models": str(models), "held_out": {"count": a.count, "seed": a.seed, "size": info["size"],
                                                  "aspect": info.get("aspect")},
              "paint": {"steps": a.steps, "seed": a.paint_seed, "max_keyframes": a.max_keyframes, "keyframes": counts,
                        "overrides": {k: v for k, v in overrides.items() if v is not None}},
              "vae_floor": {"mean": float(np.mean(list(floors.values()))), "per_painting": floors},
              "baselines": "same number of keyframes as the starter per painting, 20 s apart",
              "overall": overall, "per_painting": per, "figure_painting": fig_name,
              "seconds": round(time.time() - t0, 1)}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(table + "\n\n" + steps_table + "\n")
    if a.figures:
        fig_dir = Path(a.figures)
        fig_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(strip, fig_dir / "starter_strip.png")
        shutil.copy(time_map, fig_dir / "starter_time_map.png")
    if a.update_card:
        from ..training.starter import rewrite_card

        rewrite_card(models, {"count": a.count, "seed": a.seed, "steps": a.steps, "paint_seed": a.paint_seed,
                              "sampler": sampler, "overrides": result["paint"]["overrides"], "table": table,
                              "overall": overall, "vae_floor": result["vae_floor"]["mean"],
                              "keyframes_mean": float(np.mean(list(counts.values())))})
    print(table + "\n\n" + steps_table)
    print(f"results: {out / 'results.json'} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
