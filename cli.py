"""Command line: ``inverse-painting`` (paint, parity, convert, tiny-release, evaluate, train).

    inverse-painting paint IMAGE --models DIR --out OUT [--instructions "sky|mountain|details"]
    inverse-painting parity FIXTURE_DIR          # one line per case, exit 1 on any failure
    inverse-painting convert DIR_OR_CKPT         # .ckpt -> .safetensors beside it
    inverse-painting tiny-release OUT            # a random release in the real formats (tests, demos)
    inverse-painting evaluate GENERATED REAL     # the paper's metrics (see evaluation/)
    inverse-painting train SUBCOMMAND ...        # data preparation and trainers (see training/README.md)

Without ``--models`` the painter uses the bundled starter model when present, else a tiny random
release written to a cache folder (no download; its pictures are noise, but every stage runs).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
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


def check_device(name: str | None) -> str:
    """The device to paint on: ``name`` checked against what this machine has, or CUDA when available."""
    import torch

    from .core.errors import OptionError

    if not name:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise OptionError(f"--device {name!r} is not a device name (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise OptionError(f"--device {name}: no CUDA device is available (torch {torch.__version__}); use cpu")
        if dev.index is not None and dev.index >= count:
            raise OptionError(f"--device {name}: only {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise OptionError(f"--device {name}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise OptionError(f"--device {name}: unsupported device type (cpu, cuda, cuda:N, mps)")
    return str(dev)


def _working_sha256(working) -> str:
    import hashlib

    return hashlib.sha256(working.padded.tobytes() + str(working.padded.shape).encode()).hexdigest()


def _compare_to_run(run_settings: dict, now: dict, out: Path) -> None:
    """Refuse to resume a run with settings other than its own (the frames would mix two runs)."""
    from .core.errors import OptionError

    differ = [k for k in sorted(set(run_settings) | set(now)) if k not in ("image",)
              and run_settings.get(k) != now.get(k)]
    if differ:
        shown = "; ".join(f"{k}: {run_settings.get(k)!r} in the run, {now.get(k)!r} now" for k in differ[:4])
        raise OptionError(f"--resume: the run in {out} was painted with other settings ({shown}); resume it with "
                          "the same image, model folder and options")


def cmd_paint(args) -> int:
    import numpy as np
    import torch

    from .core.errors import OptionError, OutputFolderError
    from .core.export import MANIFEST, ProcessWriter, prepare_output
    from .core.guidance import GuidanceScales
    from .core.imaging import load_image, prepare_image
    from .core.loading import inspect_release
    from .core.loop import LoopState, Painter, PaintSettings
    from .core.model_set import ModelSet
    from .models.lpips_net import load_perceptual_metric, resolve_metric_name
    from .models.text_instruction import ManualInstructions, TextInstructionGenerator, parse_instruction_list

    # everything a user gives is checked before any model loads: model folder, options, image, output folder
    models_dir = Path(args.models) if args.models else _default_models()
    paths = inspect_release(models_dir)
    settings = PaintSettings.for_model(
        models_dir, interval_s=args.interval, max_keyframes=args.max_keyframes, steps=args.steps, seed=args.seed,
        short_side=args.short_side, fast_guidance=not args.six_branch, scales=GuidanceScales(*args.guidance),
        compare_to=None if args.compare_to == "auto" else args.compare_to, denoise=args.denoise,
        start_from=args.start_from, keep_unmasked=args.keep_unmasked, difference_fallback=args.difference_fallback,
        reask=args.reask, stop_stalled=args.stop_stalled, finish_frames=args.finish_frames)
    device = check_device(args.device)
    instructions = None
    if args.instructions is not None:
        instructions = parse_instruction_list(args.instructions)
        if not instructions:
            raise OptionError("--instructions holds no instruction (give words separated by '|' or new lines)")
    elif paths.text_model is None:
        raise OptionError(f"{models_dir} has no text-instruction model (TP_llava/): pass --instructions")
    image_path = Path(args.image) if args.image else EXAMPLE_IMAGE
    pixels, note = load_image(image_path)
    working = prepare_image(pixels, settings.short_side, name=str(image_path))
    metric_name = resolve_metric_name(args.metric, paths.lpips)
    metric = load_perceptual_metric(metric_name, weights_dir=paths.lpips, device=device)  # small; names what's missing
    run_settings = dict(settings.to_dict(), metric=metric_name, models=str(models_dir.resolve()),
                        target_sha256=_working_sha256(working), dtype=args.dtype,
                        official_fp16_time=bool(args.official_fp16_time),
                        instructions=instructions)
    out = Path(args.out)
    resume_state, writer = None, None
    if args.resume and (out / MANIFEST).is_file():
        writer, data, tensors, info = ProcessWriter.resume(out)
        _compare_to_run(dict(data.get("settings", {})), dict(run_settings, image=str(image_path)), out)
        if writer.status == "complete":
            print(f"{out}: the run is complete ({writer.count} frames); nothing to resume")
            return 0
        resume_state = LoopState.from_saved(tensors, info) if tensors is not None else None
    else:  # checked now; an earlier run's files are only removed (--overwrite) once the painting starts
        if args.resume and out.is_dir() and any(out.iterdir()):
            raise OutputFolderError(f"--resume: {out} holds no run of this tool (no {MANIFEST}); nothing there is "
                                    "touched: give the folder of the run to continue")
        prepare_output(out, "resume" if args.overwrite or args.resume else "new", "--out")
    if torch.device(device).type == "cpu" and args.dtype != "fp32":
        print(f"note: {args.dtype} on the CPU is very slow (25-50x fp32 measured here); fp32 is the CPU's precision")
    for line in (note, working.note):
        if line:
            print(f"input: {line}")

    from .core.loading import quiet_loaders

    quiet_loaders(progress_bars=False)
    models = ModelSet.from_release(models_dir, device=device, dtype=_parse_dtype(args.dtype),
                                   time_dtype=torch.float16 if args.official_fp16_time else None)
    text = (ManualInstructions(instructions) if instructions is not None
            else TextInstructionGenerator.from_pretrained(paths.text_model, device=device))
    painter = Painter(models, metric)
    h, w = working.size
    if writer is None or writer.count == 0:
        writer = ProcessWriter(out, dict(run_settings, image=str(image_path)),
                               mode="overwrite" if args.overwrite else "resume")
        writer.add(working.white_canvas()[:h, :w],
                   {"time_s": 0.0, "instruction": "", "mask_area": 0.0, "lpips_to_target": None},
                   np.zeros((h, w), np.uint8))
    else:
        writer.drop_unkept()
        print(f"resuming {out} after keyframe {resume_state.painted if resume_state else 0}")
    start = time.time()
    try:
        for kf in painter.paint(working, settings, instructions=text, resume=resume_state):
            mask = (kf.mask[0, 0, :h, :w].cpu().numpy() > 0.5).astype(np.uint8) * 255
            writer.add(kf.cropped, kf.record(), mask)
            if not kf.finishing:
                writer.save_state(*painter.state.to_saved())
            print(f"keyframe {kf.index:3d}  t={kf.time_s:6.0f}s  '{kf.instruction}'  mask {kf.mask_area:5.1%}  "
                  f"LPIPS to target {kf.lpips_to_target:.4f}  ({time.time() - start:.1f}s)", flush=True)
    except KeyboardInterrupt:
        writer.stop("interrupted")
        print(f"interrupted: {writer.count} frames kept in {out}; continue with the same command and --resume",
              file=sys.stderr)
        return 130
    except BaseException as exc:
        writer.stop(f"error: {type(exc).__name__}")
        raise
    manifest = writer.finish({"stop_reason": painter.last_stop_reason})
    print(f"stopped: {painter.last_stop_reason}; wrote {writer.count} frames, "
          f"{', '.join(k for k in ('webp', 'mp4') if k in manifest)} and manifest.json to {out}")
    return 0


def cmd_parity(args) -> int:
    from .core.errors import UserInputError
    from .core.parity import run_fixture_dir

    fixture = Path(args.fixture_dir)
    if not (fixture / "cases").is_dir() or not (fixture / "release").is_dir():
        raise UserInputError(f"{fixture}: not a parity fixture folder (expected cases/ and release/ inside)")
    results = run_fixture_dir(fixture, only=args.case or None)
    if not results:
        raise UserInputError(f"{fixture / 'cases'}: no case found" + (f" named {args.case}" if args.case else ""))
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def cmd_convert(args) -> int:
    from .core.errors import UserInputError
    from .core.loading import convert_checkpoint

    target = Path(args.path)
    if not target.exists():
        raise UserInputError(f"{target}: no such file or folder")
    if target.is_file():
        if target.suffix not in (".ckpt", ".pt", ".pth"):
            raise UserInputError(f"{target}: not a .ckpt/.pt/.pth checkpoint")
        files = [target]
    else:
        files = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix in (".ckpt", ".pt", ".pth")
                       and p.parent.name != "lpips")
        if not files:
            raise UserInputError(f"{target}: no .ckpt/.pt/.pth checkpoint in it (lpips/ is left as is)")
    for f in files:
        dst = f.with_suffix(".safetensors")
        if dst.exists() and not args.overwrite:
            print(f"{f}: {dst.name} exists, kept (--overwrite to write it again)")
            continue
        print(f"{f} -> {convert_checkpoint(f, dst)}")
    return 0


def cmd_tiny_release(args) -> int:
    from .core.export import prepare_output
    from .core.tiny_release import write_random_release

    prepare_output(args.out, "new", "tiny-release folder", hint="choose a new or empty folder")
    print(write_random_release(args.out, seed=args.seed))
    return 0


def cmd_evaluate(argv) -> int:
    from .evaluation.cli import main as evaluate_main

    return evaluate_main(argv)


def cmd_train(argv) -> int:
    from .training.cli import main as train_main

    return train_main(argv)


def _short_side(text: str) -> int:
    from .core.errors import number_argument
    from .core.imaging import MAX_SHORT_SIDE, MIN_SIDE

    n = number_argument("int", MIN_SIDE, MAX_SHORT_SIDE)(text)
    if n % 8:
        raise argparse.ArgumentTypeError(f"must be a multiple of 8 from {MIN_SIDE} to {MAX_SHORT_SIDE}, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    from .core.errors import CommandLineParser, number_argument
    from .core.loop import MAX_GUIDANCE, MAX_INTERVAL_S, MAX_KEYFRAMES, MAX_STEPS

    p = CommandLineParser(prog="inverse-painting", description=__doc__.split("\n")[0],
                          epilog="--debug (anywhere) prints the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    paint = sub.add_parser("paint", help="paint a time-lapse of an image")
    paint.add_argument("image", nargs="?", help="the finished painting (default: the bundled example)")
    paint.add_argument("--models", help="model folder (released layout); default: starter model or tiny random")
    paint.add_argument("--out", default="output/timelapse",
                       help="output folder; must be new or empty unless --overwrite or --resume")
    again = paint.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out (its frames, masks, videos and manifest; other files are kept)")
    again.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in --out from its last keyframe (same image, models and "
                            "options: the same frames as a run never interrupted)")
    paint.add_argument("--instructions", help="manual instructions, '|' or newline separated (one per keyframe; "
                                              "the last repeats); default: the folder's LLaVA text model")
    paint.add_argument("--interval", type=number_argument("float", 0, MAX_INTERVAL_S, low_open=True), default=20.0,
                       help="seconds of painting per keyframe")
    paint.add_argument("--max-keyframes", type=number_argument("int", 1, MAX_KEYFRAMES), default=50)
    paint.add_argument("--steps", type=number_argument("int", 1, MAX_STEPS), default=25, help="denoising steps per keyframe")
    paint.add_argument("--seed", type=number_argument("int", 0, 2**64 - 1), default=1)
    paint.add_argument("--guidance", type=number_argument("float", -MAX_GUIDANCE, MAX_GUIDANCE), nargs=5, default=[2.0, 1.0, 5.0, 5.0, 5.0],
                       metavar=("IMAGE", "CANVAS", "TIME", "MASK", "TEXT"))
    paint.add_argument("--short-side", type=_short_side, default=None,
                       help="resize the input to this short side first (default: the model's training size: "
                            "512 for released models, the starter's own size for a starter)")
    paint.add_argument("--metric", default="auto", choices=["auto", "lpips_alex", "stlpips_alex"],
                       help="difference metric; auto: lpips_alex when <models>/lpips/ has the AlexNet file, "
                            "else the offline shift-tolerant stlpips_alex")
    paint.add_argument("--compare-to", default="auto", choices=["auto", "target", "reconstruction"],
                       help="difference masks and the stop rule measure against the target, or against the "
                            "target through the model's VAE (auto: what the model folder asks for; a starter "
                            "asks for reconstruction)")
    paint.add_argument("--denoise", type=number_argument("float", 0, 1, low_open=True), default=None,
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
    paint.add_argument("--reask", type=number_argument("int", 0, MAX_KEYFRAMES), default=None,
                       help="when the text model names a region the mask generator finds finished for the second "
                            "time, try up to this many of its next answers (default: the model folder's choice; "
                            "0 = the release)")
    paint.add_argument("--stop-stalled", type=number_argument("int", 0, MAX_KEYFRAMES), default=None,
                       help="also stop when the last N keyframes got no closer to the target than the best one "
                            "before them (default: the model folder's choice; 0 = the release)")
    paint.add_argument("--finish-frames", type=number_argument("int", 0, MAX_KEYFRAMES), default=None,
                       help="after the stop, N keyframes cross-fading to the painting itself, so the time-lapse "
                            "ends on it (default: the model folder's choice; 0 = the release)")
    paint.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda when available)")
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
    conv.add_argument("--overwrite", action="store_true", help="write .safetensors files that already exist again")
    conv.set_defaults(func=cmd_convert)
    tiny = sub.add_parser("tiny-release", help="write a tiny random release in the real formats")
    tiny.add_argument("out", help="a new or empty folder")
    tiny.add_argument("--seed", type=number_argument("int", 0, 2**63 - 1), default=0)
    tiny.set_defaults(func=cmd_tiny_release)
    sub.add_parser("evaluate", help="the paper's metrics: evaluate GENERATED REAL [options]", add_help=False)
    sub.add_parser("train", help="training kit: synth, ingest, ground-truth, train-*, assemble", add_help=False)
    return p


def main(argv=None) -> int:
    """Run one command; errors become one line on stderr (exit 2 for a user error), ``--debug`` adds the
    traceback (see :func:`.core.errors.run_command`)."""
    from .core.errors import run_command

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]

    def command() -> int:
        if argv and argv[0] == "evaluate":
            return cmd_evaluate(argv[1:])
        if argv and argv[0] == "train":
            return cmd_train(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)

    return run_command(command, debug)


if __name__ == "__main__":
    sys.exit(main())
