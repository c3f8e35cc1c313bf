"""One painting into one run folder, safely: a new folder, an earlier run replaced, or an interrupted run continued.

:func:`plan_run` checks the output folder before any model loads (and, to resume, reopens the run there and refuses
other settings than its own); :func:`paint_run` paints into it frame by frame through
:class:`.export.ProcessWriter`, saving the loop's state after every keyframe, so a run stopped at any point
(Ctrl-C, an error, a kill) can be continued to the same frames as a run never stopped.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import OptionError, OutputFolderError
from .export import LOCK_FILE, MANIFEST, ProcessWriter, _lock, folder_state, prepare_output
from .imaging import WorkingImage, cross_fade, frame_to_size, mask_to_size
from .loop import DISTANCE_FIELDS, Keyframe, LoopState, Painter, PaintSettings

MODES = ("new", "overwrite", "resume")


def working_sha256(working: WorkingImage) -> str:
    """Fingerprint of the prepared target: a resumed run must paint the very same pixels."""
    return hashlib.sha256(working.padded.tobytes() + str(working.padded.shape).encode()).hexdigest()


def compare_settings(run: dict, now: dict, out: Path) -> None:
    """Refuse to continue a run with settings other than its own (the frames would mix two runs); the image's
    path may differ (a moved file), its pixels may not (``target_sha256``). A run from before a switch was retired
    (``loading.RETIRED_PAINT_DEFAULTS``) records it; at the release's value it painted as now."""
    from .loading import without_retired

    run, retired = without_retired(run)
    if retired:
        shown = ", ".join(f"{k} = {v!r}" for k, v in retired.items())
        raise OptionError(f"--resume: the run in {out} was painted with {shown}, an option this version no "
                          "longer has; paint it again into a new folder")
    differ = [k for k in sorted(set(run) | set(now)) if k != "image" and run.get(k) != now.get(k)]
    if differ:
        shown = "; ".join(f"{k}: {run.get(k)!r} in the run, {now.get(k)!r} now" for k in differ[:4])
        raise OptionError(f"--resume: the run in {out} was painted with other settings ({shown}); resume it with "
                          "the same image, model folder and options")


@dataclass
class RunPlan:
    out: Path
    mode: str
    writer: ProcessWriter | None = None  # the reopened run (resume)
    state: LoopState | None = None  # where its loop stood
    seen: tuple | None = None  # the folder as planned (export.folder_state), checked again under the lock

    @property
    def complete(self) -> bool:
        return self.writer is not None and self.writer.status == "complete"

    @property
    def painted(self) -> int:
        return self.state.painted if self.state is not None else 0


def plan_run(out, settings: dict, mode: str = "new", what: str = "--out") -> RunPlan:
    """Check ``out`` for a run with ``settings`` (``mode``: new, overwrite or resume) before any work is done."""
    out = Path(out)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if mode == "resume" and (out / MANIFEST).is_file():
        seen = folder_state(out)
        writer, data, tensors, info = ProcessWriter.resume(out)
        compare_settings(dict(data.get("settings", {})), settings, out)
        return RunPlan(out, mode, writer, LoopState.from_saved(tensors, info) if tensors is not None else None, seen)
    # a run killed after taking the folder's lock but before its manifest leaves only the (released) lock file
    if mode == "resume" and out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise OutputFolderError(f"--resume: {out} holds no run of this tool (no {MANIFEST}); nothing there is "
                                "touched: give the folder of the run to continue")
    # an earlier run's files are only removed (overwrite) once the painting starts
    prepare_output(out, "new" if mode == "new" else "resume", what)
    return RunPlan(out, mode, seen=folder_state(out))


def _take_folder(plan: RunPlan):
    """Lock the run folder, then make sure nobody wrote there since it was planned (another command started at
    the same time, or a folder run's other command painting the same painting): nothing is written otherwise."""
    lock = _lock(plan.out)
    if plan.seen is not None and folder_state(plan.out) != plan.seen:
        if lock is not None:
            lock.close()
        raise OutputFolderError(f"{plan.out}: another command wrote a run there after this one checked the folder; "
                                "nothing was written: check that run, then --resume or --overwrite it")
    return lock or True


def paint_run(plan: RunPlan, painter: Painter, working: WorkingImage, settings: PaintSettings, text,
              run_settings: dict, on_keyframe: Callable[[Keyframe], None] | None = None,
              painting: np.ndarray | None = None, **paint_kwargs) -> dict:
    """Paint the planned run to its end; returns the complete manifest. On an interruption or an error the folder
    is marked (``"status": "interrupted"`` and the reason) and the exception goes on.

    With ``painting`` (the painting as loaded, uint8 HWC) the frames and masks are written at its size: each
    keyframe scaled up from the working size, and the finishing cross-fade mixed at that size from the last
    painted frame to the painting itself, so the last frame is the painting pixel for pixel."""
    h, w = working.size
    size = painting.shape[:2] if painting is not None else (h, w)
    lock = _take_folder(plan)
    writer = plan.writer
    try:
        if writer is None or writer.count == 0:
            writer = ProcessWriter(plan.out, run_settings, {"distances": DISTANCE_FIELDS, "working_size": [h, w],
                                                             "frame_size": list(size)},
                                   mode="overwrite" if plan.mode == "overwrite" else "resume")
            writer._lock = lock
            writer.add(np.full((*size, 3), 255, np.uint8),
                       {"time_s": 0.0, "instruction": "", "mask_area": 0.0, "lpips_to_target": None},
                       np.zeros(size, np.uint8))
        else:
            writer._lock = lock
            writer.drop_unkept()
    except BaseException:  # nothing painted yet: the folder is released (a folder run goes on to the next one)
        if writer is not None and writer._lock is lock:
            writer.close()
        elif lock is not True:
            (plan.out / LOCK_FILE).unlink(missing_ok=True)
            lock.close()
        raise
    last_painted, finished = None, 0
    try:
        for kf in painter.paint(working, settings, instructions=text, resume=plan.state, **paint_kwargs):
            mask = (kf.mask[0, 0, :h, :w].cpu().numpy() > 0.5).astype(np.uint8) * 255
            if painting is None:
                frame = kf.cropped
            elif kf.finishing:
                if last_painted is None:  # resumed right at the stop: the state holds the last painted canvas
                    last_painted = frame_to_size(painter.state.canvas[:h, :w], size)
                finished += 1
                frame = cross_fade(last_painted, painting, finished / settings.finish_frames)
            else:
                frame = last_painted = frame_to_size(kf.cropped, size)
            writer.add(frame, kf.record(), mask_to_size(mask, size))
            if not kf.finishing:
                writer.save_state(*painter.state.to_saved())
            if on_keyframe is not None:
                on_keyframe(kf)
    except KeyboardInterrupt:
        writer.stop("interrupted")
        raise
    except BaseException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        writer.stop(f"error: {type(exc).__name__}: {first}"[:500])
        raise
    return writer.finish({"stop_reason": painter.last_stop_reason})
