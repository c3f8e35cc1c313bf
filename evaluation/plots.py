"""Evaluation plots (matplotlib, PNG): distance curves, time map, keyframe contact sheet.

Figures are drawn on the Agg canvas directly (no pyplot), so nothing changes matplotlib's global backend
inside ComfyUI; every function returns the RGB image as a uint8 array and writes a PNG when given a path.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .sequences import format_mss


def _figure(w_in: float, h_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w_in, h_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _finish(fig, path=None) -> np.ndarray:
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(str(path), dpi=100)
    return img


def plot_distance_curves(real_times_s, real_curve, generated_times_s, generated_curve, path=None,
                         title: str = "", metric_name: str = "LPIPS", ddc: float | None = None) -> np.ndarray:
    """Distance to the target over time (minutes), real vs generated."""
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(np.asarray(real_times_s) / 60, real_curve, "o-", color="tab:blue", label="real")
    ax.plot(np.asarray(generated_times_s) / 60, generated_curve, "s--", color="tab:orange", label="generated")
    ax.set_xlabel("time (min)")
    ax.set_ylabel(f"{metric_name} to target")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    t = title or "distance to target"
    if ddc is not None and not math.isnan(ddc):
        t += f"  (DDC {ddc:.4f})"
    ax.set_title(t)
    fig.tight_layout()
    return _finish(fig, path)


def plot_time_map(tm, painting=None, times_s=None, path=None, title: str = "time map") -> np.ndarray:
    """The coloured time map (beside the painting when given) with a colour bar of keyframe times."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    panels = 2 if painting is not None else 1
    h, w = tm.index.shape
    fig = _figure(min(4.2 * panels * w / max(h, 1), 14) + 1.2, 4.4)
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    if painting is not None:
        axes[0].imshow(painting)
        axes[0].set_title("painting")
        axes[0].axis("off")
    ax = axes[-1]
    n = tm.num_frames
    cmap = ListedColormap(tm.palette.astype(float) / 255.0)
    norm = BoundaryNorm(np.arange(-0.5, n + 0.5), n)
    im = ax.imshow(tm.index, cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_title(f"{title} (coverage {tm.coverage():.0%})")
    ax.axis("off")
    ticks = list(range(n)) if n <= 12 else list(np.linspace(0, n - 1, 12).round().astype(int))
    cb = fig.colorbar(im, ax=ax, ticks=ticks, fraction=0.046, pad=0.04)
    if times_s is not None and len(times_s) == n:
        cb.ax.set_yticklabels(["never" if k == 0 else format_mss(times_s[k]) for k in ticks])
        cb.set_label("last changed at (m:ss)")
    else:
        cb.set_label("last changed by keyframe")
    fig.tight_layout()
    return _finish(fig, path)


def contact_sheet(frames, times_s=None, instructions=None, masks=None, path=None, cols: int = 6,
                  max_frames: int = 48, title: str = "") -> np.ndarray:
    """Grid of keyframes, each with its time, instruction and (red outline + tint) mask."""
    n_all = len(frames)
    idx = list(range(n_all)) if n_all <= max_frames else list(np.linspace(0, n_all - 1, max_frames).round().astype(int))
    n = len(idx)
    cols = max(1, min(cols, n, math.ceil(math.sqrt(n * 1.5))))
    rows = math.ceil(n / cols)
    h, w = np.asarray(frames[0]).shape[:2]
    cell_w = 2.4
    fig = _figure(cols * cell_w, rows * (cell_w * h / w + 0.55) + (0.4 if title else 0))
    for pos, k in enumerate(idx):
        ax = fig.add_subplot(rows, cols, pos + 1)
        img = np.asarray(frames[k]).astype(np.float32) / 255.0
        m = masks[k] if masks is not None and k < len(masks) else None
        if m is not None:
            m = np.asarray(m) > 0.5
            if m.shape == img.shape[:2] and m.any():
                img = img.copy()
                img[m] = 0.7 * img[m] + 0.3 * np.array([1.0, 0.0, 0.0])
        ax.imshow(np.clip(img, 0, 1))
        if m is not None and m.shape == img.shape[:2] and m.any() and not m.all():
            ax.contour(m.astype(float), levels=[0.5], colors="red", linewidths=0.8)
        label = f"#{k}"
        if times_s is not None:
            label += f"  {format_mss(times_s[k])}"
        text = instructions[k] if instructions is not None and k < len(instructions) else None
        if text:
            text = str(text)
            label += "\n" + (text if len(text) <= 28 else text[:27] + "…")
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():  # a thin frame, so white canvases stay visible
            sp.set_edgecolor("0.6")
            sp.set_linewidth(0.8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, path)


def _fit_mask(mask, hw):
    if mask is None:
        return None
    from PIL import Image

    from .metrics import _unpad

    m = np.asarray(mask) > 0.5
    if m.shape != tuple(hw):
        m = _unpad(m, hw)
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((hw[1], hw[0]), Image.NEAREST)) > 127
    return m


def write_painting_plots(result, generated=None, out_dir=".", metric_name: str = "LPIPS",
                         threshold: float = 0.2) -> dict:
    """The three PNGs of one evaluated painting (a metrics.PaintingResult); returns {kind: path}."""
    from .time_map import time_map

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "distance_curves": out / "distance_curves.png",
        "time_map": out / "time_map.png",
        "contact_sheet": out / "contact_sheet.png",
    }
    plot_distance_curves(result.real_times_s, result.real_curve, result.generated_times_s,
                         result.generated_curve, paths["distance_curves"], title=result.name,
                         metric_name=metric_name, ddc=result.ddc)
    frames = result.generated_frames
    tm = time_map(frames, threshold=threshold, masks=result.generated_masks)
    plot_time_map(tm, painting=frames[-1], times_s=result.generated_times_s, path=paths["time_map"],
                  title="generated time map")
    masks = None
    instructions = None
    if generated is not None:
        instructions = generated.instructions
        if generated.masks is not None and any(m is not None for m in generated.masks):
            # the keyframes' own (mask-generator) masks, brought to the evaluated frame geometry
            masks = [_fit_mask(m, frames[0].shape[:2]) for m in generated.masks]
    if masks is None:
        masks = [None] + list(result.generated_masks)  # difference mask of the step that made frame k
    contact_sheet(frames, result.generated_times_s, instructions, masks, paths["contact_sheet"],
                  title=f"{result.name}: generated keyframes")
    return {k: str(v) for k, v in paths.items()}
