"""Training kit command line: videos -> raw layout -> ground truth -> three trainers -> one model folder.

    python -m inverse_painting.training.cli SUBCOMMAND ...     (the lead hooks it as `inverse-painting train ...`)

Subcommands (each delegates to the module's own CLI / argument parser, so ``--help`` is the module's):

* ``synth``          -- :mod:`.synthetic` (synthetic paintings in the raw layout, with labels.json);
* ``ingest``         -- :func:`.ingest_video.ingest_video` over a folder of videos (one painting per video);
* ``ground-truth``   -- :mod:`.ground_truth` (lpips/, text/, llava_image/, llava_json.json);
* ``train-mask``     -- :mod:`.trainers.mask_generator`;
* ``train-renderer`` -- :mod:`.trainers.renderer`;
* ``train-text``     -- :mod:`.trainers.text_generator`;
* ``assemble``       -- put trained parts into one model folder in the release layout (renderer/, RP/,
  TP_llava/, base/, clip/, lpips/), filling what is missing from a base release.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Sequence

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
RELEASE_PARTS = ("renderer", "RP", "TP_llava", "base", "clip", "lpips")


# ---------------------------------------------------------------------------------------------- ingest
def _safe_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "video"


def ingest_main(argv: Sequence[str] | None = None) -> int:
    from ..core.errors import CommandLineParser, MissingPathError, path_argument
    from .ingest_video import ingest_video

    p = CommandLineParser(prog="train ingest", description=(
        "Ingest every video of a folder (one painting per video) into <data>/<split>/rgb/<name>/. "
        "The canvas is detected automatically; override it per video with --crops crops.json "
        "({\"video_stem\": [x0, y0, x1, y1]}) or for all with --crop. Each video writes ingest_report.json."))
    p.add_argument("videos", type=path_argument, help="a folder of videos, or one video file")
    p.add_argument("data", type=path_argument, help="dataset root; frames go to <data>/<split>/rgb/<video name>/")
    p.add_argument("--split", default="train")
    p.add_argument("--every", type=float, default=2.0, help="sampling step in video seconds")
    p.add_argument("--crop", type=float, nargs=4, default=None, metavar=("X0", "Y0", "X1", "Y1"))
    p.add_argument("--crops", default=None, help="JSON {video stem: [x0, y0, x1, y1]} manual canvas boxes")
    p.add_argument("--short-side", type=int, default=512)
    p.add_argument("--time-scale", type=float, default=1.0, help="e.g. 4 for a 4x-accelerated time-lapse")
    p.add_argument("--start", type=float, default=0.0)
    p.add_argument("--end", type=float, default=None)
    p.add_argument("--windows-safe", action="store_true", help="m-ss names instead of m:ss")
    a = p.parse_args(argv)
    src = Path(a.videos)
    if not src.exists():
        raise MissingPathError(f"train ingest: videos: {src} does not exist (give a folder of videos or one video)")
    vids = [src] if src.is_file() else sorted(f for f in src.iterdir() if f.suffix.lower() in VIDEO_EXTS)
    if not vids:
        raise MissingPathError(f"train ingest: no videos ({', '.join(VIDEO_EXTS)}) in {src}")
    crops = json.loads(Path(a.crops).read_text()) if a.crops else {}
    split_root = os.path.join(a.data, a.split)
    summary = []
    for v in vids:
        name = _safe_name(v.stem)
        crop = crops.get(v.stem, crops.get(name, a.crop))
        try:
            rep = ingest_video(str(v), split_root, name, every_s=a.every, crop=crop, short_side=a.short_side,
                               time_scale=a.time_scale, start_s=a.start, end_s=a.end, windows_safe=a.windows_safe)
        except Exception as e:  # one bad video must not stop a folder of them
            summary.append({"video": str(v), "name": name, "error": f"{type(e).__name__}: {e}"})
            print(f"{v.name}: FAILED {e}")
            continue
        row = {"video": str(v), "name": name, "kept": rep["n_kept"], "samples": rep["n_samples"],
               "canvas": rep["canvas"].get("method", "auto"), "warnings": rep["warnings"]}
        summary.append(row)
        print(f"{v.name} -> {name}: kept {rep['n_kept']}/{rep['n_samples']} frames"
              + (f"  WARN: {'; '.join(rep['warnings'])}" if rep["warnings"] else ""))
    os.makedirs(split_root, exist_ok=True)
    Path(split_root, "ingest_summary.json").write_text(json.dumps(summary, indent=1))
    return 1 if any("error" in r for r in summary) else 0


# ---------------------------------------------------------------------------------------------- assemble
def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _place(src: Path, dst: Path, link: bool) -> None:
    _remove(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())
            return
        except OSError:  # e.g. Windows without symlink rights: copy
            pass
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


def _latest_pair(folder: Path) -> list[Path]:
    """The newest checkpoint of a folder with its .ckpt/.safetensors twin."""
    from ..core.loading import find_weight_file

    best = find_weight_file(folder)
    if best is None:
        return []
    return [p for p in (best.with_suffix(".ckpt"), best.with_suffix(".safetensors")) if p.is_file()]


def assemble(dest, base=None, renderer=None, mask=None, text=None, link_base: bool = True,
             link_trained: bool = False, check: bool = False) -> dict:
    """Build ``dest`` (e.g. ComfyUI/models/inverse_painting/<name>/) in the release layout.

    renderer / mask / text: trainer output folders (``--out`` of train-renderer / train-mask / train-text),
    or the part folders themselves. Only the newest checkpoint of each is taken. Parts not given come
    from the ``base`` release (linked by default, copied with ``link_base=False``).
    Returns {part: source}; with ``check`` also loads the folder with ``ModelSet.from_release``.
    """
    from ..core.errors import MissingPathError

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    placed: dict[str, str] = {}

    def part_dir(out, name):
        o = Path(out)
        return o / name if (o / name).is_dir() else o

    if renderer is not None:
        rdir = part_dir(renderer, "renderer")
        ck = rdir / "ckpt" if (rdir / "ckpt").is_dir() else rdir
        files = _latest_pair(ck)
        if not files:
            raise MissingPathError(f"--renderer: no renderer checkpoint under {ck}")
        _remove(dest / "renderer")
        for f in files:
            _place(f, dest / "renderer" / "ckpt" / f.name, link_trained)
        cfg = rdir / "config.yaml"
        if cfg.is_file():
            _place(cfg, dest / "renderer" / "config.yaml", link_trained)
        placed["renderer"] = str(files[0].resolve())
    if mask is not None:
        files = _latest_pair(part_dir(mask, "RP"))
        if not files:
            raise MissingPathError(f"--mask: no RP checkpoint under {mask}")
        _remove(dest / "RP")
        for f in files:
            _place(f, dest / "RP" / f.name, link_trained)
        placed["RP"] = str(files[0].resolve())
    if text is not None:
        tdir = part_dir(text, "TP_llava")
        if not (tdir / "config.json").is_file():
            raise MissingPathError(f"--text: no LLaVA folder (config.json) at {tdir}")
        _place(tdir, dest / "TP_llava", link_trained)
        placed["TP_llava"] = str(tdir.resolve())
    if base is not None:
        for part in RELEASE_PARTS:
            src, dst = Path(base) / part, dest / part
            if part in placed or not src.exists() or dst.exists() or dst.is_symlink():
                continue  # trained parts win; an existing part of dest is kept
            _place(src, dst, link_base)
            placed[part] = str(src.resolve())
    missing = [p for p in ("renderer", "RP", "base", "clip") if not (dest / p).exists()]
    if missing:
        print(f"warning: {dest} lacks {missing}; pass --base RELEASE to fill them")
    (dest / "assembled.json").write_text(json.dumps(placed, indent=1))
    if check:
        from ..core.model_set import ModelSet

        m = ModelSet.from_release(dest)
        placed["_check"] = f"renderer step {m.renderer.step}, RP step {m.mask.step}"
    return placed


def assemble_main(argv: Sequence[str] | None = None) -> int:
    from ..core.errors import CommandLineParser, OutputFolderError, path_argument

    p = CommandLineParser(prog="train assemble", description=(
        "Assemble trained parts into one model folder in the release layout, e.g. "
        "ComfyUI/models/inverse_painting/<name>/, filling missing parts from a base release."))
    p.add_argument("dest", type=path_argument,
                   help="the model folder to write (e.g. ComfyUI/models/inverse_painting/my_model): new, empty or an "
                        "earlier assembled one")
    p.add_argument("--base", default=None, help="a release folder providing base/, clip/, lpips/ and untrained parts")
    p.add_argument("--renderer", default=None, help="train-renderer --out folder")
    p.add_argument("--mask", default=None, help="train-mask --out folder")
    p.add_argument("--text", default=None, help="train-text --out folder")
    p.add_argument("--copy-base", action="store_true", help="copy base parts instead of linking them")
    p.add_argument("--link-trained", action="store_true", help="link trained parts instead of copying them")
    p.add_argument("--check", action="store_true", help="load the result with ModelSet.from_release")
    a = p.parse_args(argv)
    dest = Path(a.dest)
    # the parts placed replace whole folders (renderer/, RP/, TP_llava/): only in a folder this command made
    if dest.exists() and not dest.is_dir():
        raise OutputFolderError(f"{dest}: a file is in the way (give a folder path)")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / "assembled.json").is_file():
        raise OutputFolderError(f"{dest} is not empty and was not written by assemble (no assembled.json): its "
                                "renderer/, RP/ or TP_llava/ would be replaced; choose a new folder")
    res = assemble(a.dest, a.base, a.renderer, a.mask, a.text, link_base=not a.copy_base,
                   link_trained=a.link_trained, check=a.check)
    print(json.dumps(res, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------- dispatch
def _delegate(module: str):
    def run(argv):
        import importlib

        return importlib.import_module(module, __package__).main(argv)
    return run


COMMANDS = {
    "synth": (_delegate(".synthetic"), "synthetic paintings in the raw layout (with labels)"),
    "ingest": (ingest_main, "a folder of painting videos -> raw layout"),
    "ground-truth": (_delegate(".ground_truth"), "GT masks, GT text and the LLaVA training set"),
    "train-mask": (_delegate(".trainers.mask_generator"), "train the mask generator (RP)"),
    "train-renderer": (_delegate(".trainers.renderer"), "train the renderer"),
    "train-text": (_delegate(".trainers.text_generator"), "LoRA fine-tune the LLaVA text generator"),
    "train-vae": (_delegate(".trainers.vae"), "train a small VAE (starter models)"),
    "starter": (_delegate(".starter"), "the seeded one-command starter-model recipe (all parts)"),
    "assemble": (assemble_main, "trained parts -> one model folder (release layout)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {k:<15} {v[1]}" for k, v in COMMANDS.items()]
        print("usage: inverse-painting train SUBCOMMAND [args]   (SUBCOMMAND --help for its options)\n\n"
              + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    rc = COMMANDS[argv[0]][0](argv[1:])
    return int(rc or 0)


if __name__ == "__main__":
    from ..core.errors import run_command

    raise SystemExit(run_command(main, "--debug" in sys.argv))
