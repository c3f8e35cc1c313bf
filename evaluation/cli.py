"""``evaluate GENERATED REAL``: the paper's metrics for generated painting processes against real ones.

GENERATED and REAL are each one painting folder or a tree of them (see :mod:`.sequences` for the
layouts). Paintings are paired by folder name (a single painting on both sides is paired directly).
Writes ``evaluation.json`` (overall + per painting) and, per painting, ``<name>/metrics.json`` and the
PNG plots (distance curves, time map, contact sheet) into ``--out``; prints the five numbers.

Run as ``python -m inverse_painting.evaluation.cli GENERATED REAL`` or through the package CLI
(``inverse-painting evaluate ...``), which can reuse :func:`add_arguments` and :func:`run`.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from ..core.difference_mask import DIFFERENCE_THRESHOLD
from ..core.errors import number_argument, path_argument
from ..models.lpips_net import PERCEPTUAL_METRICS
from .metrics import DEFAULT_METRIC

FID_CHOICES = ("auto", "inception", "trunk", "none")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("generated", type=path_argument,
                   help="generated painting folder (manifest.json + frames) or a folder of them")
    p.add_argument("real", type=path_argument,
                   help="real painting folder (official raw layout or time-stamped frames) or a folder of them")
    p.add_argument("--out", default=None, type=path_argument, help="output folder (default: GENERATED/evaluation)")
    p.add_argument("--metric", choices=PERCEPTUAL_METRICS, default=DEFAULT_METRIC,
                   help=f"perceptual distance (default {DEFAULT_METRIC}: works offline; lpips_alex needs the "
                        "ImageNet AlexNet file in --lpips-weights)")
    p.add_argument("--lpips-weights", default=None, type=path_argument,
                   help="folder with alexnet_features.pth / alexnet-owt-7be5be79.pth (+ optional alex.pth heads)")
    p.add_argument("--threshold", type=number_argument("float", 0, 2), default=DIFFERENCE_THRESHOLD,
                   help="difference-mask threshold (0.2)")
    p.add_argument("--short-side", type=number_argument("int", 8, 4096), default=None,
                   help="evaluate at this short side (frames larger than that are downscaled; default: real size)")
    p.add_argument("--fid", choices=FID_CHOICES, default="auto",
                   help="FID features: inception (needs --inception-weights), trunk (offline proxy from the "
                        "perceptual metric, not comparable with published FIDs), none; auto = inception if "
                        "weights are given, else skipped")
    p.add_argument("--inception-weights", default=os.environ.get("INVERSE_PAINTING_FID_WEIGHTS") or None,
                   type=path_argument,
                   help="pytorch-fid pt_inception-2015-12-05-6726825d.pth (file or folder)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier evaluation in --out")
    p.add_argument("--device", default="cpu")
    return p


def build_parser() -> argparse.ArgumentParser:
    from ..core.errors import CommandLineParser

    return add_arguments(CommandLineParser(prog="inverse-painting evaluate", description=__doc__.split("\n")[0]))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "painting"


def pair_sequences(generated: dict, real: dict) -> tuple[list, list, list]:
    """[(name, real, generated)], unmatched generated names, unmatched real names."""
    if len(generated) == 1 and len(real) == 1:
        (gn, g), (_, r) = next(iter(generated.items())), next(iter(real.items()))
        return [(gn, r, g)], [], []
    base = lambda n: n.replace("\\", "/").split("/")[-1]  # noqa: E731
    real_by_base = {}
    for n, s in real.items():
        real_by_base.setdefault(base(n), (n, s))
    pairs, used = [], set()
    for gn, g in sorted(generated.items()):
        hit = (gn, real[gn]) if gn in real else real_by_base.get(base(gn))
        if hit is None:
            continue
        pairs.append((gn, hit[1], g))
        used.add(hit[0])
    g_un = [n for n in generated if n not in {p[0] for p in pairs}]
    r_un = [n for n in real if n not in used]
    return pairs, g_un, r_un


def _fid_extractor(args, metric):
    from .fid import InceptionFeatureExtractor, TrunkFeatureExtractor

    mode = args.fid
    if mode == "auto":
        mode = "inception" if args.inception_weights else "none"
    if mode == "inception":
        return InceptionFeatureExtractor(args.inception_weights, device=args.device)  # clear error if missing
    if mode == "trunk":
        return TrunkFeatureExtractor(metric)
    return None


def run(args) -> dict:
    from .metrics import evaluate, resolve_metric
    from .sequences import load_sequences

    from ..core.errors import OptionError, OutputFolderError
    from ..core.export import prepare_output, write_json

    t0 = time.time()
    out = Path(args.out) if args.out else Path(args.generated) / "evaluation"
    if (out / "evaluation.json").is_file() and not getattr(args, "overwrite", False):
        raise OutputFolderError(f"{out} already holds an evaluation: give another --out, or --overwrite to replace it")
    generated = load_sequences(args.generated)
    real = load_sequences(args.real)
    pairs, g_un, r_un = pair_sequences(generated, real)
    if not pairs:
        raise OptionError(f"no painting names in common between {args.generated} ({sorted(generated)}) and "
                          f"{args.real} ({sorted(real)})")
    prepare_output(out, "resume", "--out")  # checked before the metrics run
    metric = resolve_metric(args.metric, args.lpips_weights, args.device)
    extractor = _fid_extractor(args, metric)
    report = evaluate([(r, g) for _, r, g in pairs], metric=metric, threshold=args.threshold,
                      short_side=args.short_side, fid_extractor=extractor)
    results = report.pop("_results")
    for (name, _, _), res, js in zip(pairs, results, report["paintings"]):
        res.name = js["name"] = name
    for (name, _, g), res, js in zip(pairs, results, report["paintings"]):
        d = out / _safe(name)
        if not args.no_plots:
            from .plots import write_painting_plots

            js["plots"] = write_painting_plots(res, g, d, metric_name=report["overall"]["metric"],
                                               threshold=args.threshold)
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "metrics.json", js)
    report["overall"].update({
        "generated": str(args.generated), "real": str(args.real), "short_side": args.short_side,
        "unmatched_generated": g_un, "unmatched_real": r_un, "seconds": round(time.time() - t0, 2),
    })
    write_json(out / "evaluation.json", report)
    report["out"] = str(out)
    return report


def format_summary(overall: dict) -> str:
    def f(x, nd=4):
        return "n/a" if x is None else f"{x:.{nd}f}"

    fid = "n/a" if overall.get("fid") is None else f"{overall['fid']:.6g}"
    if overall.get("fid") is not None and overall.get("fid_features") != "inception_v3_pool3":
        fid += f" ({overall.get('fid_features')} features)"
    elif overall.get("fid") is None:
        fid += f" ({overall.get('fid_note', '')})"
    return (f"paintings: {overall['num_paintings']}  metric: {overall['metric']}\n"
            f"LPIPS: {f(overall['lpips'])}\nIoU:   {f(overall['iou'])}\nDDC:   {f(overall['ddc'])}\n"
            f"DTS:   {f(overall['dts_min'])} min\nFID:   {fid}")


def main(argv=None) -> int:
    from ..core.errors import run_command

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "evaluate":
        argv = argv[1:]
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]

    def command() -> int:
        report = run(build_parser().parse_args(argv))
        print(format_summary(report["overall"]))
        print(f"results: {Path(report['out']) / 'evaluation.json'}")
        return 0

    return run_command(command, debug)


if __name__ == "__main__":
    sys.exit(main())
