"""Command line: ``inverse-painting`` (paint, parity, convert, tiny-release, evaluate, train).

    inverse-painting paint IMAGE --models DIR --out OUT [--instructions "sky|mountain|details"]
    inverse-painting paint DIR_OR_GLOB --out OUT [--resume]   # one run folder per painting, index.json
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
import json
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


class _PaintContext:
    """What every painting of one command shares: checked options, model folder, metric; models loaded once."""

    def __init__(self, args, device: str | None = None):
        from .core.errors import OptionError
        from .core.guidance import GuidanceScales
        from .core.loading import inspect_release
        from .core.loop import PaintSettings
        from .core.memory import GB, Residency, choose_tier, free_device_bytes
        from .models.lpips_net import load_perceptual_metric, resolve_metric_name
        from .models.text_instruction import parse_instruction_list

        self.args = args
        self.models_dir = Path(args.models) if args.models else _default_models()
        self.paths = inspect_release(self.models_dir)
        self.settings = PaintSettings.for_model(
            self.models_dir, interval_s=args.interval, max_keyframes=args.max_keyframes, seed=args.seed,
            short_side=args.short_side, scales=GuidanceScales(*args.guidance) if args.guidance else None,
            compare_to=None if args.compare_to == "auto" else args.compare_to, reask=args.reask,
            finish_frames=args.finish_frames,
            **_sampling_overrides(args))
        # several processes: each its own device (accelerate's cuda:LOCAL_RANK, or the CPU), whatever --device says
        self.device = check_device(device or args.device)
        self.instructions = None
        if args.instructions is not None:
            self.instructions = parse_instruction_list(args.instructions)
            if not self.instructions:
                raise OptionError("--instructions holds no instruction (give words separated by '|' or new lines)")
        elif self.paths.text_model is None:
            raise OptionError(f"{self.models_dir} has no text-instruction model (TP_llava/): pass --instructions")
        has_text = self.instructions is None
        self.tier = choose_tier(args.vram, free_device_bytes(self.device), text_model=has_text)
        self.residency = None
        if self.tier.name != "full":  # networks wait on the CPU; each comes to the device when it runs
            self.residency = Residency(self.device, "cpu", self.tier.budget_gb * GB if self.tier.budget_gb else None,
                                       log=lambda msg: print(msg, flush=True))
        self.metric_name = resolve_metric_name(args.metric, self.paths.lpips)
        # small, and loading it names a missing AlexNet file before anything is written
        self.metric = load_perceptual_metric(self.metric_name, weights_dir=self.paths.lpips,
                                             device=self.device if self.residency is None else "cpu")
        self.mode = "overwrite" if args.overwrite else ("resume" if args.resume else "new")
        self._loaded = None

    def settings_for(self, working=None, image=None) -> dict:
        """The settings a run folder records (and a resumed run must match)."""
        from .core.painting_run import working_sha256

        rec = dict(self.settings.to_dict(), metric=self.metric_name, models=str(self.models_dir.resolve()),
                   dtype=self.args.dtype, official_fp16_time=bool(self.args.official_fp16_time),
                   instructions=self.instructions, vram=self.tier.name, text_dtype=self.args.text_dtype,
                   text_max_tokens=self.args.text_max_tokens, frame_size=self.args.frame_size)
        if working is not None:
            rec.update(target_sha256=working_sha256(working), image=str(image))
        return json.loads(json.dumps(rec))  # as a manifest reads back (tuples as lists), so --resume compares alike

    def prepare(self, image_path: Path):
        from .core.imaging import load_image, prepare_image

        pixels, note = load_image(image_path)
        return prepare_image(pixels, self.settings.short_side, name=str(image_path)), note, pixels

    def painting(self, pixels):
        """What paint_run writes the frames' size from (None: the working size)."""
        return pixels if self.args.frame_size == "painting" else None

    def painter(self):
        """(painter, instructions), loaded on first use."""
        if self._loaded is None:
            import torch

            from .core.loading import quiet_loaders
            from .core.loop import Painter
            from .core.model_set import ModelSet
            from .models.text_instruction import ManualInstructions

            if torch.device(self.device).type == "cpu" and self.args.dtype != "fp32":
                print(f"note: {self.args.dtype} on the CPU is very slow (25-50x fp32 measured here); fp32 is the "
                      "CPU's precision")
            quiet_loaders(progress_bars=False)
            print(f"memory tier: {self.tier.name}")
            lazy = self.residency is not None
            models = ModelSet.from_release(self.models_dir, device="cpu" if lazy else self.device,
                                           dtype=_parse_dtype(self.args.dtype), lazy=lazy,
                                           time_dtype=torch.float16 if self.args.official_fp16_time else None)
            if lazy:
                models.attach_residency(self.residency, release_referencenet=self.tier.release_referencenet)
                self.residency.register("perceptual_metric", self.metric)
                self.residency.install_hooks("perceptual_metric")
            if self.instructions is not None:
                text = ManualInstructions(self.instructions)
            else:
                text = _load_text_model(self.paths.text_model, self.tier, self.device, self.args.text_dtype,
                                        self.residency, {"max_new_tokens": self.args.text_max_tokens})
            self._loaded = (Painter(models, self.metric), text)
        return self._loaded


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


def _keyframe_line(kf, seconds: float) -> str:
    return (f"keyframe {kf.index:3d}  t={kf.time_s:6.0f}s  '{kf.instruction}'  mask {kf.mask_area:5.1%}  "
            f"LPIPS to target {kf.lpips_to_target:.4f}  ({seconds:.1f}s)")


def cmd_paint(args) -> int:
    from .core.folder_run import expand_inputs

    # everything a user gives is checked before any model loads: model folder, options, images, output folder
    images, folder_mode = expand_inputs(args.images or [str(EXAMPLE_IMAGE)], out=args.out)
    if not folder_mode:
        return _paint_single(_PaintContext(args), images[0])
    import torch
    from accelerate import PartialState

    # one process, or one of those `accelerate launch` / `torchrun` started (gloo between CPU processes)
    state = PartialState(cpu=str(args.device or "").startswith("cpu") or not torch.cuda.is_available())
    # several processes: one device each (accelerate's choice: cuda:LOCAL_RANK, or the CPU)
    return _paint_folder(_PaintContext(args, str(state.device) if state.num_processes > 1 else None), images, state)


def _paint_single(ctx: _PaintContext, image_path: Path) -> int:
    from .core.errors import OptionError
    from .core.painting_run import paint_run, plan_run

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise OptionError("one image cannot be shared between processes: give a folder or a glob of paintings")
    working, note, pixels = ctx.prepare(image_path)
    run_settings = ctx.settings_for(working, image_path)
    out = Path(ctx.args.out)
    plan = plan_run(out, run_settings, ctx.mode)
    if plan.complete:
        print(f"{out}: the run is complete ({plan.writer.count} frames); nothing to resume")
        return 0
    for line in (note, working.note):
        if line:
            print(f"input: {line}")
    painter, text = ctx.painter()
    if plan.writer is not None and plan.writer.count:
        print(f"resuming {out} after keyframe {plan.painted}")
    start = time.time()
    try:
        manifest = paint_run(plan, painter, working, ctx.settings, text, run_settings, painting=ctx.painting(pixels),
                             on_keyframe=lambda kf: print(_keyframe_line(kf, time.time() - start), flush=True))
    except KeyboardInterrupt:
        print(f"interrupted: the frames so far are kept in {out}; continue with the same command and --resume",
              file=sys.stderr)
        return 130
    _report_memory(ctx.device, ctx.residency)
    print(f"stopped: {painter.last_stop_reason}; wrote {len(manifest['keyframes'])} frames, "
          f"{', '.join(k for k in ('webp', 'mp4') if k in manifest)} and manifest.json to {out}")
    return 0


class _FolderProgress:
    """Bars over paintings and over the keyframes of the current one on a terminal; one line each otherwise."""

    def __init__(self, total: int, max_keyframes: int, prefix: str):
        self.bars = sys.stderr.isatty()
        self.total, self.max_keyframes, self.prefix = total, max_keyframes, prefix
        self.outer = self.inner = None
        if self.bars:
            from tqdm import tqdm

            self.outer = tqdm(total=total, desc=f"{prefix}paintings", unit="painting", position=0)

    def start(self, i: int, name: str) -> None:
        self.name, self.t0 = name, time.time()
        if self.bars:
            from tqdm import tqdm

            self.inner = tqdm(total=self.max_keyframes, desc=name[:24], unit="keyframe", position=1, leave=False)
        else:
            print(f"{self.prefix}[{i}/{self.total}] {name}", flush=True)

    def keyframe(self, kf) -> None:
        if self.bars:
            self.inner.total = max(self.inner.total, kf.index)  # finishing keyframes come after the limit
            self.inner.update(1)
            self.inner.set_postfix_str(kf.instruction[:20])
        else:
            print(f"{self.prefix}  {self.name}: {_keyframe_line(kf, time.time() - self.t0)}", flush=True)

    def done(self, line: str) -> None:
        if self.bars:
            self.inner.close()
            self.outer.update(1)
            self.outer.write(f"{self.prefix}{line}")
        else:
            print(f"{self.prefix}{line}", flush=True)

    def close(self) -> None:
        if self.outer is not None:
            self.outer.close()


def _paint_folder(ctx: _PaintContext, images: list[Path], state) -> int:
    """Every image into its own run folder under --out, this process's share of them (see core/folder_run.py)."""
    from .core.errors import OutputFolderError, UserInputError
    from .core.export import prepare_output
    from .core.folder_run import (INDEX, check_index, jobs_for, lock_rank, read_index, record, save_records, share,
                                  write_index)
    from .core.imaging import load_image
    from .core.painting_run import compare_settings, paint_run, plan_run

    rank, world = state.process_index, state.num_processes
    out = Path(ctx.args.out)
    shared = ctx.settings_for()
    earlier = check_index(out) if ctx.mode == "resume" else read_index(out)
    jobs = jobs_for(images, earlier if ctx.mode == "resume" else None)  # a resumed run keeps its names
    if ctx.mode == "resume" and earlier is not None:
        compare_settings(dict(earlier.get("settings", {})), shared, out)
    elif ctx.mode == "resume" and out.is_dir() and any(out.iterdir()):
        raise OutputFolderError(f"--resume: {out} holds no folder run of this tool (no {INDEX}); nothing there is "
                                "touched")
    else:
        prepare_output(out, "new" if ctx.mode == "new" else "resume", "--out")
    state.wait_for_everyone()  # every process has checked the folder before any of them writes into it
    hold = lock_rank(out, rank)  # noqa: F841 - held until this process ends
    if ctx.mode == "overwrite" and earlier is not None and rank == 0:
        # the earlier run's paintings that are not in this one: their run files go too (other files stay)
        current = {j.name for j in jobs}
        for row in earlier.get("paintings", []):
            folder = str(row.get("folder", ""))
            if folder and folder not in current and "/" not in folder and folder not in ("..", "."):
                prepare_output(out / folder, "overwrite")
    mine = share(jobs, rank, world)
    prefix = f"[process {rank}/{world}] " if world > 1 else ""
    records: dict[str, dict] = {}
    plans = {}
    for job in mine:  # checked up front; a painting that cannot be painted is recorded and the others go on
        try:
            working, note, _ = ctx.prepare(job.image)  # pixels read again when painted: not all held at once
            run_settings = ctx.settings_for(working, job.image)
            plan = plan_run(job.folder(out), run_settings, ctx.mode, f"{job.name}/")
        except UserInputError as exc:
            records[job.name] = record(job, out, "invalid", str(exc))
            print(f"{prefix}skipped: {exc}", file=sys.stderr)
            continue
        if plan.complete:
            records[job.name] = record(job, out, "complete")
        else:
            plans[job.name] = (plan, working, run_settings)
    save_records(out, rank, records)
    write_index(out, jobs, shared)
    progress = _FolderProgress(len(plans), ctx.settings.max_keyframes, prefix)
    interrupted = False
    try:
        for i, job in enumerate(j for j in mine if j.name in plans):
            plan, working, run_settings = plans[job.name]
            progress.start(i + 1, job.name)
            try:
                painter, text = ctx.painter()
                pixels = load_image(job.image)[0] if ctx.args.frame_size == "painting" else None
                paint_run(plan, painter, working, ctx.settings, text, run_settings, on_keyframe=progress.keyframe,
                          painting=pixels)
                records[job.name] = record(job, out, "complete")
                progress.done(f"{job.name}: {records[job.name]['frames']} frames ({painter.last_stop_reason})")
            except KeyboardInterrupt:
                records[job.name] = record(job, out, "interrupted", "interrupted")
                interrupted = True
                raise
            except Exception as exc:  # noqa: BLE001 - one painting's failure is recorded; the others go on
                line = " ".join(str(exc).split()) or type(exc).__name__
                records[job.name] = record(job, out, "failed", f"{type(exc).__name__}: {line}")
                progress.done(f"{job.name}: failed: {line}")
            finally:
                save_records(out, rank, records)
                write_index(out, jobs, shared)
    except KeyboardInterrupt:
        pass
    finally:
        progress.close()
    index = write_index(out, jobs, shared, sheet=True)
    counts = ", ".join(f"{n} {s}" for s, n in index["counts"].items())
    if interrupted:
        print(f"{prefix}interrupted: {counts}; continue with the same command and --resume", file=sys.stderr)
        return 130
    failed = [r for r in records.values() if r["status"] != "complete"]
    print(f"{prefix}{len(records) - len(failed)} of {len(mine)} paintings of this process done; all: {counts}; "
          f"index: {out / INDEX}")
    return 1 if failed else 0


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


def cmd_rehearsal_release(args) -> int:
    from .core.errors import MissingPathError, OutputFolderError
    from .core.export import prepare_output
    from .core.rehearsal_release import (PARTS, check_release, is_rehearsal_release, missing_parts,
                                        write_rehearsal_release)

    out = Path(args.out)
    if args.manifests is not None and not Path(args.manifests).is_dir():
        raise MissingPathError(f"--manifests {args.manifests}: no such folder (expected the reference key manifests)")
    if args.check_only:
        if not out.is_dir():
            raise MissingPathError(f"{out}: no such model folder to check")
    else:  # checked before anything is written: a user's folder is never written into
        if out.exists() and not out.is_dir():
            raise OutputFolderError(f"{out}: a file is in the way (give a folder path)")
        if out.is_dir() and any(out.iterdir()) and not is_rehearsal_release(out):
            raise OutputFolderError(f"{out} exists and is not a rehearsal release: choose another folder")
        prepare_output(out, "resume", "rehearsal-release folder")  # a read-only location fails here
        write_rehearsal_release(out, seed=args.seed, llava_layers=args.llava_layers, shard_gb=args.shard_gb,
                                parts=args.parts or PARTS)
        lacking = missing_parts(out)
        if args.parts and lacking:
            print(f"wrote {', '.join(args.parts)}; not checked: {out} still lacks {', '.join(lacking)} (write them "
                  "with --parts, then check with --check-only)")
            return 0
    problems = check_release(out, args.manifests)
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


def _short_side(text: str) -> int:
    from .core.errors import number_argument
    from .core.limits import MAX_SHORT_SIDE, MIN_SIDE

    n = number_argument("int", MIN_SIDE, MAX_SHORT_SIDE)(text)
    if n % 8:
        raise argparse.ArgumentTypeError(f"must be a multiple of 8 from {MIN_SIDE} to {MAX_SHORT_SIDE}, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    from .core.errors import CommandLineParser, number_argument, path_argument
    from .core.limits import FRAME_SIZES, MAX_GUIDANCE, MAX_INTERVAL_S, MAX_KEYFRAMES, MAX_STEPS

    p = CommandLineParser(prog="inverse-painting", description=__doc__.split("\n")[0],
                          epilog="--debug (anywhere) prints the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    paint = sub.add_parser("paint", help="paint a time-lapse of an image")
    paint.add_argument("images", nargs="*", metavar="IMAGE", type=path_argument,
                       help="the finished painting (default: the bundled example); or a folder, a glob ('**' recurses) "
                            "or several images: one run folder each under --out, with index.json and a contact sheet")
    paint.add_argument("--models", type=path_argument,
                       help="model folder (released layout); default: starter model or tiny random")
    paint.add_argument("--out", default="output/timelapse", type=path_argument,
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
    paint.add_argument("--steps", type=number_argument("int", 1, MAX_STEPS), default=None,
                       help="denoising steps per keyframe (default: the sampler's, PaintSettings.steps)")
    paint.add_argument("--sampler", default=None, choices=["euler_ancestral", "dpmpp_2m"],
                       help="built-in sampler (default: PaintSettings.sampler; the release: euler_ancestral)")
    paint.add_argument("--guidance-interval", type=number_argument("float", 0), nargs=2, default=None,
                       metavar=("LO", "HI"), help="guide only for sigmas in [LO, HI], one fully conditioned pass "
                                                  "elsewhere (0 0 = always, as the release)")
    paint.add_argument("--release-sampling", action="store_true",
                       help="the release's keyframe: six guidance branches, 25 Euler-ancestral steps, always "
                            "guided (the output the release computes, at its cost)")
    paint.add_argument("--vram", default="auto", choices=["auto", "full", "12gb", "8gb", "notext"],
                       help="memory tier (README: Memory); auto: from the free device memory")
    paint.add_argument("--text-dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                       help="text model precision (auto: fp16 on a GPU, fp32 on the CPU)")
    paint.add_argument("--text-max-tokens", type=number_argument("int", 1, 4096), default=512,
                       help="longest text-model answer in tokens (the release: 512)")
    paint.add_argument("--seed", type=number_argument("int", 0, 2**64 - 1), default=1)
    paint.add_argument("--guidance", type=number_argument("float", -MAX_GUIDANCE, MAX_GUIDANCE), nargs=5,
                       default=None, metavar=("IMAGE", "CANVAS", "TIME", "MASK", "TEXT"),
                       help="guidance scales (default: the model's; the release's 2 1 5 5 5, the starter's 1 1 1 1 1)")
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
    paint.add_argument("--reask", type=number_argument("int", 0, MAX_KEYFRAMES), default=None,
                       help="when the text model names a region the mask generator finds finished for the second "
                            "time, or one whose last keyframe changed nothing, try up to this many of its next "
                            "answers (default: the model folder's choice; 0 = the release)")
    paint.add_argument("--finish-frames", type=number_argument("int", 0, MAX_KEYFRAMES), default=None,
                       help="after the stop, N keyframes cross-fading to the painting itself, so the time-lapse "
                            "ends on it (default: the model folder's choice; 0 = the release)")
    paint.add_argument("--frame-size", choices=FRAME_SIZES, default=FRAME_SIZES[0],
                       help="size of the written frames and videos: the painting's own (each keyframe scaled up from "
                            "the working size; the last finishing frame is the painting itself) or the working size "
                            "(default: painting)")
    paint.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    paint.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    paint.add_argument("--six-branch", action="store_true", help="evaluate all six guidance branches (release order)")
    paint.add_argument("--official-fp16-time", action="store_true", help="time encoder in fp16 like the release")
    paint.set_defaults(func=cmd_paint)
    par = sub.add_parser("parity", help="check a fixture folder (laid out like shared/parity)")
    par.add_argument("fixture_dir", type=path_argument)
    par.add_argument("--case", action="append", help="only this case (repeatable)")
    par.set_defaults(func=cmd_parity)
    conv = sub.add_parser("convert", help="convert .ckpt checkpoints to .safetensors (beside them)")
    conv.add_argument("path", type=path_argument)
    conv.add_argument("--overwrite", action="store_true", help="write .safetensors files that already exist again")
    conv.set_defaults(func=cmd_convert)
    tiny = sub.add_parser("tiny-release", help="write a tiny random release in the real formats")
    tiny.add_argument("out", type=path_argument, help="a new or empty folder")
    tiny.add_argument("--seed", type=number_argument("int", 0, 2**63 - 1), default=0)
    tiny.set_defaults(func=cmd_tiny_release)
    reh = sub.add_parser("rehearsal-release", help="write a FULL-SIZE random release (the released files, keys, "
                         "shapes and dtypes; about 15 GB with --llava-layers 4) and check it")
    reh.add_argument("out", type=path_argument)
    reh.add_argument("--llava-layers", type=number_argument("int", 1, 32), default=32,
                     help="LLaVA decoder layers at full width (32 = the release; 4 fits a 24 GB machine)")
    reh.add_argument("--shard-gb", type=number_argument("float", 0, 1000, low_open=True), default=10.0,
                     help="largest LLaVA weight shard (GB)")
    reh.add_argument("--seed", type=number_argument("int", 0, 2**63 - 1), default=0)
    reh.add_argument("--parts", nargs="*", choices=["base", "clip", "renderer", "mask_generator", "text_model",
                                                     "lpips"], help="write only these parts")
    reh.add_argument("--manifests", type=path_argument,
                     help="folder of the reference key manifests (shared/reference/manifests): "
                                         "compare every file's names, shapes and dtypes with them")
    reh.add_argument("--check-only", action="store_true", help="only check an existing folder")
    reh.set_defaults(func=cmd_rehearsal_release)
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
