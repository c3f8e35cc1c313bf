"""Command line: ``inverse-painting`` (paint, parity, convert, tiny-release, evaluate, train).

    inverse-painting paint IMAGE --models DIR --out OUT [--instructions "sky|mountain|details"]
    inverse-painting parity FIXTURE_DIR          # one line per case, exit 1 on any failure
    inverse-painting convert DIR_OR_CKPT         # .ckpt -> .safetensors beside it
    inverse-painting tiny-release OUT            # a random release in the real formats (tests, demos)
    inverse-painting rehearsal-release OUT       # a FULL-SIZE random release (rehearsing memory and speed)
    inverse-painting evaluate GENERATED REAL     # the paper's metrics (see evaluation/)
    inverse-painting train SUBCOMMAND ...        # data preparation and trainers (see training/README.md)

Without ``--models`` the painter uses the bundled starter model when present, else a tiny random
release written to a cache folder (no download; its pictures are noise, but every stage runs).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent
STARTER_MODEL = PACK_DIR / "assets" / "starter_model"
EXAMPLE_IMAGE = PACK_DIR / "assets" / "example.png"


def _default_models() -> Path:
    if (STARTER_MODEL / "renderer").is_dir():
        return STARTER_MODEL
    from .core.tiny_release import write_random_release

    cache = Path(os.environ.get("INVERSE_PAINTING_CACHE", Path.home() / ".cache" / "inverse_painting")) / "tiny_random_release"
    if not (cache / "RP").is_dir():
        print(f"no starter model bundled: writing a tiny random release to {cache} (pictures will be noise)")
        write_random_release(cache)
    return cache


def _parse_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def cmd_paint(args) -> int:
    import torch
    from PIL import Image

    from .core.export import write_process
    from .core.guidance import GuidanceScales
    from .core.imaging import prepare_image
    from .core.loading import find_release
    from .core.loop import Painter, PaintSettings, collect_process
    from .core.memory import GB, Residency, choose_tier, free_device_bytes
    from .core.model_set import ModelSet
    from .models.lpips_net import load_perceptual_metric, resolve_metric_name
    from .models.text_instruction import ManualInstructions, TextInstructionGenerator, parse_instruction_list

    image_path = Path(args.image) if args.image else EXAMPLE_IMAGE
    if not image_path.is_file():
        print(f"error: image not found: {image_path}", file=sys.stderr)
        return 2
    try:
        img = Image.open(image_path)
        img.load()
    except Exception as exc:
        print(f"error: cannot read image {image_path}: {exc}", file=sys.stderr)
        return 2
    models_dir = Path(args.models) if args.models else _default_models()
    settings = PaintSettings.for_model(
        models_dir, interval_s=args.interval, max_keyframes=args.max_keyframes, seed=args.seed,
        short_side=args.short_side, scales=GuidanceScales(*args.guidance),
        compare_to=None if args.compare_to == "auto" else args.compare_to, denoise=args.denoise,
        start_from=args.start_from, keep_unmasked=args.keep_unmasked, difference_fallback=args.difference_fallback,
        reask=args.reask, stop_stalled=args.stop_stalled, finish_frames=args.finish_frames,
        **_sampling_overrides(args))
    working = prepare_image(img, settings.short_side)
    if working.note:
        print(f"input: {working.note}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    has_text = not args.instructions and find_release(models_dir).text_model is not None
    tier = choose_tier(args.vram, free_device_bytes(device), text_model=has_text)
    print(f"memory tier: {tier.name}")
    residency = None
    if tier.name != "full":  # load on the CPU; each network comes to the device when it runs
        residency = Residency(device, "cpu", tier.budget_gb * GB if tier.budget_gb else None,
                              log=lambda msg: print(msg, flush=True))
    models = ModelSet.from_release(models_dir, device=device if residency is None else "cpu",
                                   dtype=_parse_dtype(args.dtype), lazy=residency is not None,
                                   time_dtype=torch.float16 if args.official_fp16_time else None)
    lpips_dir = models.paths.lpips
    metric_name = resolve_metric_name(args.metric, lpips_dir)
    metric = load_perceptual_metric(metric_name, weights_dir=lpips_dir, device=device if residency is None else "cpu")
    if residency is not None:
        models.attach_residency(residency, release_referencenet=tier.release_referencenet)
        residency.register("perceptual_metric", metric)
        residency.install_hooks("perceptual_metric")
    text_kwargs = {"max_new_tokens": args.text_max_tokens}
    if args.instructions:
        text = ManualInstructions(parse_instruction_list(args.instructions))
    elif has_text:
        text = _load_text_model(models.paths.text_model, tier, device, args.text_dtype, residency, text_kwargs)
    else:
        print("error: no text-instruction model in the models folder: pass --instructions", file=sys.stderr)
        return 2
    painter = Painter(models, metric)
    frames, masks, records = collect_process(painter, working, settings, text, log=lambda kf, sec: print(
        f"keyframe {kf.index:3d}  t={kf.time_s:6.0f}s  '{kf.instruction}'  mask {kf.mask_area:5.1%}  "
        f"LPIPS to target {kf.lpips_to_target:.4f}  ({sec:.1f}s)", flush=True))
    manifest = write_process(args.out, frames, records, dict(settings.to_dict(), metric=metric_name,
                             models=str(models_dir), image=str(image_path), vram=tier.name), masks=masks,
                             extra={"stop_reason": painter.last_stop_reason})
    _report_memory(device, residency)
    print(f"stopped: {painter.last_stop_reason}; wrote {len(frames)} frames, "
          f"{', '.join(k for k in ('webp', 'mp4') if k in manifest)} and manifest.json to {args.out}")
    return 0


def _sampling_overrides(args) -> dict:
    """PaintSettings sampling fields from the command line (None: the default)."""
    if args.release_sampling:  # the release's keyframe: six branches, 25 Euler-ancestral steps, always guided
        return {"fast_guidance": False, "sampler": "euler_ancestral", "steps": args.steps or 25,
                "guidance_interval": None}
    out = {"sampler": args.sampler, "steps": args.steps}
    if args.six_branch:
        out["fast_guidance"] = False
    if args.guidance_interval is not None:
        lo, hi = args.guidance_interval
        out["guidance_interval"] = None if lo <= 0 and hi <= 0 else (lo, hi)
    return out


def _load_text_model(path, tier, device, dtype_name, residency, kwargs):
    """The LLaVA text model placed as the memory tier says (core.memory.text_placement), loaded when first
    asked (after the ReferenceNet has been released, in the tiers that release it)."""
    import torch

    from .core.memory import StagedText, quantize_linears, text_placement
    from .models.text_instruction import TextInstructionGenerator, _part

    where, quant = text_placement(tier, device)
    if dtype_name == "auto":
        dtype = torch.float16 if torch.device(where).type == "cuda" else torch.float32
    else:
        dtype = _parse_dtype(dtype_name)
    managed = residency is not None and not quant and torch.device(where).type != "cpu"

    def load():
        # quantized tiers also halve the CLIP-L tower (fp32 in the release: 1.2 GB)
        gen = TextInstructionGenerator.from_pretrained(path, device="cpu", dtype=dtype,
                                                       vision_dtype=torch.float16 if quant else torch.float32)
        print(f"text model: {where}{f', {quant}' if quant else ''}, {str(dtype).replace('torch.', '')}", flush=True)
        if quant:
            quantize_linears(_part(gen.model, "language_model"), 8 if quant == "8bit" else 4)
            gen.model.to(where)  # bitsandbytes quantizes on the move; quantized layers stay there
        if residency is not None and (quant or managed):
            residency.register("text_model", gen.model, pinned=bool(quant))
        if not managed:
            gen.model.to(where)
        return gen

    return StagedText(load, residency if managed else None, **kwargs)


def _report_memory(device, residency) -> None:
    import resource

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB
    line = f"memory: peak RSS {rss:.2f} GB"
    if torch.device(device).type == "cuda":
        line += f", peak device memory {torch.cuda.max_memory_allocated(device) / 1e9:.2f} GB"
    if residency is not None:
        line += f", peak weights on the device (bookkeeping, run dtypes) {residency.peak_bytes / 1e9:.2f} GB"
    print(line)


def cmd_parity(args) -> int:
    from .core.parity import run_fixture_dir

    results = run_fixture_dir(args.fixture_dir, only=args.case or None)
    if not results:
        print(f"no cases found under {args.fixture_dir}/cases", file=sys.stderr)
        return 1
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def cmd_convert(args) -> int:
    from .core.loading import WEIGHT_SUFFIXES, convert_checkpoint

    target = Path(args.path)
    files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.suffix in (".ckpt", ".pt", ".pth")
                                                     and p.parent.name != "lpips" and p.suffix in WEIGHT_SUFFIXES)
    for f in files:
        print(f"{f} -> {convert_checkpoint(f)}")
    return 0


def cmd_tiny_release(args) -> int:
    from .core.tiny_release import write_random_release

    print(write_random_release(args.out, seed=args.seed))
    return 0


def cmd_rehearsal_release(args) -> int:
    from .core.rehearsal_release import PARTS, check_release, write_rehearsal_release

    if not args.check_only:
        out = Path(args.out)
        if out.exists() and any(out.iterdir()) and not (out / "README.txt").is_file():
            print(f"error: {out} exists and is not a rehearsal release: choose another folder", file=sys.stderr)
            return 2
        write_rehearsal_release(out, seed=args.seed, llava_layers=args.llava_layers, shard_gb=args.shard_gb,
                                parts=args.parts or PARTS)
    problems = check_release(args.out, args.manifests)
    for line in problems:
        print(f"MISMATCH {line}")
    print("release matches" + (" the manifests" if args.manifests else " the loaders") if not problems
          else f"{len(problems)} mismatch(es)")
    return 1 if problems else 0


def cmd_evaluate(argv) -> int:
    from .evaluation.cli import main as evaluate_main

    return evaluate_main(argv)


def cmd_train(argv) -> int:
    from .training.cli import main as train_main

    return train_main(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inverse-painting", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    paint = sub.add_parser("paint", help="paint a time-lapse of an image")
    paint.add_argument("image", nargs="?", help="the finished painting (default: the bundled example)")
    paint.add_argument("--models", help="model folder (released layout); default: starter model or tiny random")
    paint.add_argument("--out", default="output/timelapse", help="output folder")
    paint.add_argument("--instructions", help="manual instructions, '|' or newline separated (one per keyframe; "
                                              "the last repeats); default: the folder's LLaVA text model")
    paint.add_argument("--interval", type=float, default=20.0, help="seconds of painting per keyframe")
    paint.add_argument("--max-keyframes", type=int, default=50)
    paint.add_argument("--steps", type=int, default=None,
                       help="denoising steps per keyframe (default: the sampler's, PaintSettings.steps)")
    paint.add_argument("--sampler", default=None, choices=["euler_ancestral", "dpmpp_2m"],
                       help="built-in sampler (default: PaintSettings.sampler; the release: euler_ancestral)")
    paint.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                       help="guide only for sigmas in [LO, HI], one fully conditioned pass elsewhere "
                            "(0 0 = always, as the release)")
    paint.add_argument("--release-sampling", action="store_true",
                       help="the release's keyframe: six guidance branches, 25 Euler-ancestral steps, always "
                            "guided (the output the release computes, at its cost)")
    paint.add_argument("--vram", default="auto", choices=["auto", "full", "12gb", "8gb", "notext"],
                       help="memory tier (README: Memory); auto: from the free device memory")
    paint.add_argument("--text-dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                       help="text model precision (auto: fp16 on a GPU, fp32 on the CPU)")
    paint.add_argument("--text-max-tokens", type=int, default=512,
                       help="longest text-model answer in tokens (the release: 512)")
    paint.add_argument("--seed", type=int, default=1)
    paint.add_argument("--guidance", type=float, nargs=5, default=[2.0, 1.0, 5.0, 5.0, 5.0],
                       metavar=("IMAGE", "CANVAS", "TIME", "MASK", "TEXT"))
    paint.add_argument("--short-side", type=int, default=None,
                       help="resize the input to this short side first (default: the model's training size: "
                            "512 for released models, the starter's own size for a starter)")
    paint.add_argument("--metric", default="auto", choices=["auto", "lpips_alex", "stlpips_alex"],
                       help="difference metric; auto: lpips_alex when <models>/lpips/ has the AlexNet file, "
                            "else the offline shift-tolerant stlpips_alex")
    paint.add_argument("--compare-to", default="auto", choices=["auto", "target", "reconstruction"],
                       help="difference masks and the stop rule measure against the target, or against the "
                            "target through the model's VAE (auto: what the model folder asks for; a starter "
                            "asks for reconstruction)")
    paint.add_argument("--denoise", type=float, default=None,
                       help="< 1: start each keyframe from the canvas noised this far instead of pure noise "
                            "(default: the model folder's choice; 1.0 = the release)")
    paint.add_argument("--start-from", default=None, choices=["canvas", "target_in_mask"],
                       help="with --denoise < 1, what a keyframe starts from: the canvas, or the canvas with the "
                            "region to paint taken from the target (default: the model folder's choice)")
    paint.add_argument("--keep-unmasked", default=None, action=argparse.BooleanOptionalAction,
                       help="keep the canvas pixels outside the painted region (default: the model folder's "
                            "choice; the release keeps the whole rendered image)")
    paint.add_argument("--difference-fallback", default=None, action=argparse.BooleanOptionalAction,
                       help="paint the difference mask when the mask generator finds (almost) nothing while the "
                            "canvas still differs from the target (default: the model folder's choice; off in "
                            "the release, whose loop then stops with those areas unpainted)")
    paint.add_argument("--reask", type=int, default=None,
                       help="when the text model names a region the mask generator finds finished for the second "
                            "time, try up to this many of its next answers (default: the model folder's choice; "
                            "0 = the release)")
    paint.add_argument("--stop-stalled", type=int, default=None,
                       help="also stop when the last N keyframes got no closer to the target than the best one "
                            "before them (default: the model folder's choice; 0 = the release)")
    paint.add_argument("--finish-frames", type=int, default=None,
                       help="after the stop, N keyframes cross-fading to the painting itself, so the time-lapse "
                            "ends on it (default: the model folder's choice; 0 = the release)")
    paint.add_argument("--device")
    paint.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    paint.add_argument("--six-branch", action="store_true", help="evaluate all six guidance branches (release order)")
    paint.add_argument("--official-fp16-time", action="store_true", help="time encoder in fp16 like the release")
    paint.set_defaults(func=cmd_paint)
    par = sub.add_parser("parity", help="check a fixture folder (laid out like shared/parity)")
    par.add_argument("fixture_dir")
    par.add_argument("--case", action="append", help="only this case (repeatable)")
    par.set_defaults(func=cmd_parity)
    conv = sub.add_parser("convert", help="convert .ckpt checkpoints to .safetensors (beside them)")
    conv.add_argument("path")
    conv.set_defaults(func=cmd_convert)
    tiny = sub.add_parser("tiny-release", help="write a tiny random release in the real formats")
    tiny.add_argument("out")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_release)
    reh = sub.add_parser("rehearsal-release", help="write a FULL-SIZE random release (the released files, keys, "
                         "shapes and dtypes; about 15 GB with --llava-layers 4) and check it")
    reh.add_argument("out")
    reh.add_argument("--llava-layers", type=int, default=32,
                     help="LLaVA decoder layers at full width (32 = the release; 4 fits a 24 GB machine)")
    reh.add_argument("--shard-gb", type=float, default=10.0, help="largest LLaVA weight shard (GB)")
    reh.add_argument("--seed", type=int, default=0)
    reh.add_argument("--parts", nargs="*", choices=["base", "clip", "renderer", "mask_generator", "text_model",
                                                     "lpips"], help="write only these parts")
    reh.add_argument("--manifests", help="folder of the reference key manifests (shared/reference/manifests): "
                                         "compare every file's names, shapes and dtypes with them")
    reh.add_argument("--check-only", action="store_true", help="only check an existing folder")
    reh.set_defaults(func=cmd_rehearsal_release)
    sub.add_parser("evaluate", help="the paper's metrics: evaluate GENERATED REAL [options]", add_help=False)
    sub.add_parser("train", help="training kit: synth, ingest, ground-truth, train-*, assemble", add_help=False)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "evaluate":
        return cmd_evaluate(argv[1:])
    if argv and argv[0] == "train":
        return cmd_train(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
