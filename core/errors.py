"""Named errors: what the user gave that cannot be used, and numerical faults found while painting.

A :class:`UserInputError` names the input (a file, an option, a folder, a node input) and says what would
be accepted; the command line prints it on one line and exits with 2, ComfyUI shows it in its error
dialog. A :class:`NumericalFault` names the stage where values stopped being finite and the likely cause.
"""
from __future__ import annotations

import argparse
import math
import sys
import traceback
from typing import Callable


class UserInputError(ValueError):
    """An input that cannot be used; the message names it and what would be accepted."""


class OptionError(UserInputError):
    """An option or node setting out of its range."""


class MissingPathError(UserInputError, FileNotFoundError):
    """A file or folder the user named that does not exist (or is not of the kind expected)."""


class OutputFolderError(UserInputError):
    """An output location that cannot be written, or holds a run that must not be overwritten."""


class NumericalFault(RuntimeError):
    """Values that stopped being finite (NaN/Inf) at a named stage of the painting."""

    def __init__(self, stage: str, dtype=None, detail: str = ""):
        self.stage = stage
        if str(dtype) == "torch.float16":
            cause = ("likely an fp16 overflow: run in bf16 or fp32 (--dtype / the loader's precision)")
        else:
            cause = "likely NaN/Inf in the model's weights or in an input"
        super().__init__(f"non-finite values (NaN/Inf) in the {stage}{': ' + detail if detail else ''}; {cause}. "
                         "Nothing from this keyframe was kept.")


def check_finite(tensor, stage: str, detail: str = ""):
    """``tensor`` unchanged, or :class:`NumericalFault` naming ``stage`` if it holds NaN/Inf."""
    import torch  # here, so that the command line starts without torch

    if not bool(torch.isfinite(tensor).all()):
        raise NumericalFault(stage, tensor.dtype, detail)
    return tensor


def finite_number(value, name: str, low: float | None = None, high: float | None = None,
                  low_open: bool = False) -> float:
    """``value`` as a float, or :class:`OptionError` naming ``name`` when it is NaN/Inf or out of range."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be a number, got {value!r}") from None
    ok = math.isfinite(x) and (low is None or (x > low if low_open else x >= low)) and (high is None or x <= high)
    if not ok:
        lo = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
        hi = "" if high is None else f"<= {high:g}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        raise OptionError(f"{name} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}")
    return x


def whole_number(value, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int, or :class:`OptionError` naming ``name`` when it is not one or out of range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise OptionError(f"{name} must be a whole number, got {value!r}")
    try:
        n = int(value) if not isinstance(value, float) else (int(value) if value.is_integer() else None)
    except (TypeError, ValueError, OverflowError):
        n = None
    if n is None or (low is not None and n < low) or (high is not None and n > high):
        rng = f" from {low} to {high}" if low is not None and high is not None else (
            f" >= {low}" if low is not None else (f" <= {high}" if high is not None else ""))
        raise OptionError(f"{name} must be a whole number{rng}, got {value!r}")
    return n


def number_argument(kind: str, low=None, high=None, low_open: bool = False):
    """argparse type: a finite float (``kind`` "float") or a whole number ("int") in range; NaN, inf, 2**64 or
    -30 where they make no sense are refused with the flag's name (argparse adds it)."""
    def parse(text: str):
        try:
            if kind == "int":
                return whole_number(text, "value", low, high)
            return finite_number(text, "value", low, high, low_open)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("value must", "must", 1)) from None

    parse.__name__ = kind
    return parse


def path_argument(text: str) -> str:
    """argparse type of a file or folder argument: an empty (or blank) string is refused by the flag's name
    (``Path("")`` is the current folder: ``--out ''`` would write into it, ``--models ''`` or an image ``''``
    fall back to a default silently)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError(f"must be a file or folder path, got an empty string {text!r}")
    return text


class CommandLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as an :class:`OptionError` (one line, exit 2 through
    :func:`run_command`) instead of printing the usage block."""

    def error(self, message):
        raise OptionError(f"{self.prog}: {message} (see --help)")


def _one_line(exc: BaseException) -> str:
    text = " ".join(part.strip() for part in str(exc).strip().splitlines() if part.strip())
    return text or type(exc).__name__


def run_command(command: Callable[[], int], debug: bool = False, stderr=None) -> int:
    """Run a command-line entry point and turn its failures into one line on stderr and an exit code:
    2 for a user error (:class:`UserInputError`), 1 for a numerical fault, a file-system error or an internal
    error, 130 for Ctrl-C. ``debug`` also prints the traceback."""
    stderr = stderr or sys.stderr
    try:
        return command()
    except KeyboardInterrupt:
        print("interrupted", file=stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - reported, never silently swallowed
        if isinstance(exc, UserInputError):
            line, code = f"error: {_one_line(exc)}", 2
        elif isinstance(exc, (NumericalFault, OSError)):
            line, code = f"error: {_one_line(exc)}", 1
        else:
            line, code = (f"internal error: {type(exc).__name__}: {_one_line(exc)} (please report it with the "
                          "output of the same command with --debug)"), 1
        if debug:
            traceback.print_exc(file=stderr)
        print(line, file=stderr)
        return code
