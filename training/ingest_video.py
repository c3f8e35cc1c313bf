"""Video ingestion: a painting video -> the official raw layout (keyframes + time stamps).

Role: turn a real (or synthetic) recording of a painting being made into training data, the way the
paper's data was prepared ("cropped to the canvas, frames with hands or minimal change removed").

Pipeline (`ingest_video`):
  1. sample the video every `every_s` seconds (PyAV; any format it reads);
  2. find the canvas (unless `crop=` or `quad=` is given): it is the large region that is bright at
     the start and/or changes over the video while the surroundings stay put; it is detected on
     temporal medians (which remove a passing hand), then a quadrilateral is fitted to its edges;
  3. rectify every sample with a perspective warp (numpy) to a short side of `short_side` (512);
  4. decide per sample (on small, blurred copies of the rectified canvas), relative to the last clean
     sample:
     * occluded, "transient": a sizeable region matches neither the last clean canvas nor any of the
       next `window` samples (a hand / brush moves through; paint stays).  A canvas state must
       therefore be visible in at least two samples to be confirmed: choose `every_s` at most half
       the shortest time between changes;
     * occluded, "reverted": a region changed and later goes back (almost exactly) to the earlier
       canvas (a hand that stayed still, then left; paint does not go back);
     * occluded, "share": a small occluder that is most of what changed (brush tip at the edge);
     * no change: it differs too little from the last kept frame (occluder pixels do not count);
     * otherwise kept.
     Limits: a hand present for the whole video segment (no clean sample around it) or one that never
     moves and never leaves cannot be told from paint; the first sample has no past, so it is only
     checked against the future;
  5. write `{ind}_{m:ss}.jpg` + `last_aligned_frame_inv.json` (the last kept frame is the target)
     and `ingest_report.json` (per sample: time, decision, reason, scores).

Also home of the small geometry helpers (`homography`, `warp_perspective`) that the synthetic video
writer uses to stage a canvas in perspective.  No cv2: numpy + Pillow + PyAV.
"""
from __future__ import annotations

import collections
import json
import math
import os
import shutil
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .raw_layout import INV_JSON, format_frame_name, parse_frame_name

REPORT_JSON = "ingest_report.json"


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------
def homography(src: Sequence, dst: Sequence) -> np.ndarray:
    """3x3 projective map sending the 4 points `src` (x, y) to `dst` (DLT, exact for 4 points)."""
    src = np.asarray(src, np.float64).reshape(4, 2)
    dst = np.asarray(dst, np.float64).reshape(4, 2)
    A, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        A.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        b.append(u)
        A.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b.append(v)
    h = np.linalg.solve(np.asarray(A), np.asarray(b))
    return np.append(h, 1.0).reshape(3, 3)


def source_coords(H: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (u, v) of every output pixel centre under the homography H (out -> src)."""
    ys = np.arange(out_hw[0], dtype=np.float64) + 0.5
    xs = np.arange(out_hw[1], dtype=np.float64) + 0.5
    den = H[2, 0] * xs[None, :] + H[2, 1] * ys[:, None] + H[2, 2]
    u = (H[0, 0] * xs[None, :] + H[0, 1] * ys[:, None] + H[0, 2]) / den
    v = (H[1, 0] * xs[None, :] + H[1, 1] * ys[:, None] + H[1, 2]) / den
    return u, v


def warp_perspective(img: np.ndarray, H_out_to_src: np.ndarray, out_hw: tuple[int, int],
                     return_alpha: bool = False):
    """Sample `img` (HxWxC) at H(out pixel) with bilinear interpolation -> float32 (oh, ow, C).

    Coordinates are continuous with pixel edges on integers (pixel (i, j) covers [j, j+1) x [i, i+1)).
    return_alpha: also return the coverage of the source rectangle, anti-aliased over about one pixel
    (used to composite a warped canvas onto a background).
    """
    oh, ow = int(out_hw[0]), int(out_hw[1])
    src = np.asarray(img)
    if src.ndim == 2:
        src = src[..., None]
    sh, sw = src.shape[:2]
    H = np.asarray(H_out_to_src, np.float64)
    u, v = source_coords(H, (oh, ow))
    fx = np.clip(u - 0.5, 0, sw - 1).astype(np.float32)
    fy = np.clip(v - 0.5, 0, sh - 1).astype(np.float32)
    x0 = np.minimum(fx.astype(np.int32), sw - 2) if sw > 1 else np.zeros_like(fx, np.int32)
    y0 = np.minimum(fy.astype(np.int32), sh - 2) if sh > 1 else np.zeros_like(fy, np.int32)
    wx = (fx - x0)[..., None]
    wy = (fy - y0)[..., None]
    x1 = np.minimum(x0 + 1, sw - 1)
    y1 = np.minimum(y0 + 1, sh - 1)
    s = src.astype(np.float32, copy=False)
    out = (s[y0, x0] * (1 - wx) + s[y0, x1] * wx) * (1 - wy) + (s[y1, x0] * (1 - wx) + s[y1, x1] * wx) * wy
    if not return_alpha:
        return out
    # distance to the source rectangle's edge, in output pixels (local scale from the Jacobian)
    cx, cy = ow / 2.0, oh / 2.0
    p = [H @ np.array([cx + dx, cy + dy, 1.0]) for dx, dy in ((0, 0), (1, 0), (0, 1))]
    p = [q[:2] / q[2] for q in p]
    a, b = p[1] - p[0], p[2] - p[0]
    scale = math.sqrt(abs(a[0] * b[1] - a[1] * b[0])) or 1.0
    d = np.minimum(np.minimum(u, sw - u), np.minimum(v, sh - v)) / scale
    alpha = np.clip(d + 0.5, 0.0, 1.0).astype(np.float32)
    return out, alpha


class Warper:
    """A fixed perspective warp with precomputed bilinear taps (the same quad for every video frame)."""

    def __init__(self, H_out_to_src: np.ndarray, src_hw: tuple[int, int], out_hw: tuple[int, int]):
        oh, ow = int(out_hw[0]), int(out_hw[1])
        sh, sw = int(src_hw[0]), int(src_hw[1])
        u, v = source_coords(np.asarray(H_out_to_src, np.float64), (oh, ow))
        fx = np.clip(u - 0.5, 0, sw - 1).ravel()
        fy = np.clip(v - 0.5, 0, sh - 1).ravel()
        x0 = np.minimum(fx.astype(np.int64), max(0, sw - 2))
        y0 = np.minimum(fy.astype(np.int64), max(0, sh - 2))
        x1 = np.minimum(x0 + 1, sw - 1)
        y1 = np.minimum(y0 + 1, sh - 1)
        wx = (fx - x0).astype(np.float32)[:, None]
        wy = (fy - y0).astype(np.float32)[:, None]
        self.idx = [y0 * sw + x0, y0 * sw + x1, y1 * sw + x0, y1 * sw + x1]
        self.wts = [(1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy]
        self.src_hw, self.out_hw = (sh, sw), (oh, ow)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if img.shape[:2] != self.src_hw:
            raise ValueError(f"frame size {img.shape[:2]} != {self.src_hw}")
        flat = img.reshape(-1, img.shape[2] if img.ndim == 3 else 1)
        out = None
        for ix, wt in zip(self.idx, self.wts):
            term = flat[ix].astype(np.float32) * wt
            out = term if out is None else out + term
        return out.reshape(self.out_hw[0], self.out_hw[1], -1)


def quad_size(quad: np.ndarray) -> tuple[float, float]:
    """(height, width) of a TL, TR, BR, BL quad from the mean lengths of opposite sides."""
    q = np.asarray(quad, np.float64)
    w = (np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3])) / 2
    h = (np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1])) / 2
    return float(h), float(w)


class Rectifier:
    """Warp the canvas quad (TL, TR, BR, BL, frame pixels) of every frame to an out_hw uint8 image.

    Big reductions first shrink the frame with a box filter (Pillow `reduce`) so the bilinear
    sampling does not alias.  The sampling taps are computed once.
    """

    def __init__(self, quad: np.ndarray, frame_hw: tuple[int, int], out_hw: tuple[int, int]):
        quad = np.asarray(quad, np.float64)
        qh, qw = quad_size(quad)
        self.f = int(min(qh / out_hw[0], qw / out_hw[1]) // 1.5)
        if self.f >= 2:
            quad = quad / self.f
            frame_hw = (frame_hw[0] // self.f, frame_hw[1] // self.f)
        oh, ow = out_hw
        H = homography(np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], np.float64), quad)
        self.warper = Warper(H, frame_hw, out_hw)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self.f >= 2:
            frame = np.asarray(Image.fromarray(frame).reduce(self.f))
            frame = frame[: self.warper.src_hw[0], : self.warper.src_hw[1]]
        return np.clip(self.warper(frame) + 0.5, 0, 255).astype(np.uint8)


def rectify(frame: np.ndarray, quad: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """One-off rectification of the quad of `frame` (see `Rectifier`)."""
    return Rectifier(quad, frame.shape[:2], out_hw)(frame)


def _order_quad(q: np.ndarray) -> np.ndarray:
    """Order 4 points as TL, TR, BR, BL."""
    q = np.asarray(q, np.float64)
    s, d = q.sum(1), q[:, 0] - q[:, 1]
    return np.array([q[np.argmin(s)], q[np.argmax(d)], q[np.argmax(s)], q[np.argmin(d)]])


# --------------------------------------------------------------------------------------------
# numpy image helpers
# --------------------------------------------------------------------------------------------
def _box(a: np.ndarray, r: int) -> np.ndarray:
    """Box mean over (2r+1)^2 with edge padding, for 2-D or HxWxC arrays."""
    if r <= 0:
        return a.astype(np.float32)
    a = a.astype(np.float32)
    for axis in (0, 1):
        n = a.shape[axis]
        pad = [(0, 0)] * a.ndim
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis, dtype=np.float64)
        a = ((np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
              - np.take(c, np.arange(n), axis=axis)) / (2 * r + 1)).astype(np.float32)
    return a


def _cmax(a: np.ndarray) -> np.ndarray:
    """Max over the colour axis (much faster than .max(-1) on HxWx3)."""
    return np.maximum(np.maximum(a[..., 0], a[..., 1]), a[..., 2])


def _erode(m: np.ndarray, r: int) -> np.ndarray:
    return _box(m, r) > 0.999 if r > 0 else m.copy()


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    return _box(m, r) > 1e-3 if r > 0 else m.copy()


def _open(m: np.ndarray, r: int) -> np.ndarray:
    return _dilate(_erode(m, r), r)


def _otsu(x: np.ndarray) -> float:
    """Otsu threshold of values in [0, 1]."""
    hist, edges = np.histogram(x.ravel(), bins=256, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    omega = np.cumsum(p)
    mu = np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    mu_t = mu[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        sb = (mu_t * omega - mu) ** 2 / (omega * (1 - omega))
    sb = np.nan_to_num(sb)
    return float(edges[int(np.argmax(sb)) + 1])


def _largest_component(m: np.ndarray) -> np.ndarray:
    """Largest 4-connected component (label propagation; call on small masks only)."""
    if not m.any():
        return m.copy()
    h, w = m.shape
    lab = np.where(m, np.arange(1, h * w + 1).reshape(h, w), 0)
    for _ in range(4 * (h + w)):
        n = lab.copy()
        n[1:] = np.maximum(n[1:], lab[:-1])
        n[:-1] = np.maximum(n[:-1], lab[1:])
        n[:, 1:] = np.maximum(n[:, 1:], lab[:, :-1])
        n[:, :-1] = np.maximum(n[:, :-1], lab[:, 1:])
        n = np.where(m, n, 0)
        # pointer jumping: follow labels to the label of the pixel they name (fast convergence)
        flat = n.ravel()
        nz = flat > 0
        jumped = flat.copy()
        jumped[nz] = np.maximum(flat[nz], flat[flat[nz] - 1])
        n = jumped.reshape(h, w)
        if np.array_equal(n, lab):
            break
        lab = n
    vals, counts = np.unique(lab[lab > 0], return_counts=True)
    return lab == vals[np.argmax(counts)]


def _span_fill(m: np.ndarray) -> np.ndarray:
    """Fill a (nearly convex) blob: pixels between the first and last set pixel of their row AND column."""
    h, w = m.shape
    rows = m.any(1)
    cols = m.any(0)
    r0 = np.where(rows, m.argmax(1), w)
    r1 = np.where(rows, w - 1 - m[:, ::-1].argmax(1), -1)
    c0 = np.where(cols, m.argmax(0), h)
    c1 = np.where(cols, h - 1 - m[::-1, :].argmax(0), -1)
    xx = np.arange(w)[None, :]
    yy = np.arange(h)[:, None]
    return (xx >= r0[:, None]) & (xx <= r1[:, None]) & (yy >= c0[None, :]) & (yy <= c1[None, :])


def _resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((int(hw[1]), int(hw[0])), Image.BILINEAR, reducing_gap=2.0))


# --------------------------------------------------------------------------------------------
# canvas detection
# --------------------------------------------------------------------------------------------
def _fit_line(pts: np.ndarray):
    """Total-least-squares line through points: (point, unit direction)."""
    c = pts.mean(0)
    _, _, vt = np.linalg.svd(pts - c, full_matrices=False)
    return c, vt[0]


def _intersect(l1, l2) -> np.ndarray:
    (p, d), (q, e) = l1, l2
    A = np.array([d, -e]).T
    if abs(np.linalg.det(A)) < 1e-9:
        return (p + q) / 2
    t = np.linalg.solve(A, q - p)
    return p + t[0] * d


def fit_quad(mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Fit a quadrilateral (TL, TR, BR, BL; pixel-edge coordinates) to a filled blob.

    Corners start at the extremes of x+y and x-y; each side is then re-fitted by least squares to
    the blob's boundary pixels near it (away from the corners), and adjacent sides are intersected.
    Returns (quad, iou) where iou compares the blob with the fitted quad (a fit-quality score).
    """
    m = np.pad(mask.astype(bool), 1)          # a blob touching the frame border still has an edge there
    edge = m & ~_erode(m, 1)
    ys, xs = np.nonzero(edge)
    pts = np.stack([xs - 0.5, ys - 0.5], 1).astype(np.float64)   # undo the padding
    if len(pts) < 8:
        raise ValueError("canvas blob too small to fit a quadrilateral")
    s, d = pts.sum(1), pts[:, 0] - pts[:, 1]
    quad = np.array([pts[np.argmin(s)], pts[np.argmax(d)], pts[np.argmax(s)], pts[np.argmin(d)]])
    centre = quad.mean(0)
    for _ in range(2):
        lines = []
        for k in range(4):
            a, b = quad[k], quad[(k + 1) % 4]
            ab = b - a
            L = np.linalg.norm(ab) + 1e-9
            u = ab / L
    # distance of every boundary point to this side, and its position along the side
            rel = pts - a
            t = rel @ u / L
            dist = np.abs(rel[:, 0] * u[1] - rel[:, 1] * u[0])
            sel = (t > 0.1) & (t < 0.9) & (dist < max(2.0, 0.04 * L))
            if sel.sum() < 4:
                sel = (t > 0.0) & (t < 1.0) & (dist < max(3.0, 0.08 * L))
            if sel.sum() < 2:
                lines.append((a, u))
                continue
            p, dirv = _fit_line(pts[sel])
            res = np.abs((pts[sel] - p) @ np.array([-dirv[1], dirv[0]]))
            keep = res <= max(1.0, 2.5 * np.median(res))
            if keep.sum() >= 2:
                p, dirv = _fit_line(pts[sel][keep])
            # boundary pixel centres lie half a pixel inside the true edge: move the line outwards
            nrm = np.array([-dirv[1], dirv[0]])
            if (p - centre) @ nrm < 0:
                nrm = -nrm
            lines.append((p + 0.5 * nrm, dirv))
        quad = np.array([_intersect(lines[(k - 1) % 4], lines[k]) for k in range(4)])
        centre = quad.mean(0)
    m = m[1:-1, 1:-1]
    qm = Image.new("L", (m.shape[1], m.shape[0]), 0)
    ImageDraw.Draw(qm).polygon([tuple(p) for p in quad], fill=1)
    qm = np.asarray(qm).astype(bool)
    iou = float((qm & m).sum() / max(1, (qm | m).sum()))
    return _order_quad(quad), iou


def detect_canvas(thumbs: list[np.ndarray], frame_hw: tuple[int, int], k: int = 5) -> dict:
    """Find the canvas quad in full-frame coordinates from sampled thumbnails (uint8 HxWx3).

    Candidate canvas pixels = bright in the median of the first k samples (Otsu on luminance; the blank
    canvas) OR changed between the medians of the first and last k samples (where paint went); the
    largest connected blob is filled and a quadrilateral fitted to it.
    """
    th, tw = thumbs[0].shape[:2]
    k = max(1, min(k, (len(thumbs) + 1) // 2))
    early = np.median(np.stack(thumbs[:k]), 0).astype(np.float32) / 255.0
    late = np.median(np.stack(thumbs[-k:]), 0).astype(np.float32) / 255.0
    lum = early.mean(-1)
    thr = max(_otsu(_box(lum, 1)), 0.3)
    bright = _box(lum, 1) > thr
    changed = _cmax(np.abs(_box(late, 1) - _box(early, 1))) > 0.12

    def blob_of(cand: np.ndarray) -> np.ndarray:
        cand = _open(cand, 1)
        # connected components on a small copy (label propagation is cheap there)
        f = max(1, int(math.ceil(max(th, tw) / 160)))
        small = cand[: th // f * f, : tw // f * f].reshape(th // f, f, tw // f, f).mean((1, 3)) > 0.5
        comp = _largest_component(small)
        comp_full = np.zeros_like(cand)
        up = np.repeat(np.repeat(comp, f, 0), f, 1)
        comp_full[: up.shape[0], : up.shape[1]] = up
        return _span_fill(cand & _dilate(comp_full, f + 1))

    # The blank canvas alone gives the sharpest edges (a change map bleeds into the background where
    # dark paint meets a dark table); the change map rescues pre-toned or dark canvases.
    blob = blob_of(bright)
    cue = "bright"
    quad, iou = fit_quad(blob) if blob.sum() >= 16 else (None, 0.0)
    if quad is None or iou < 0.95 or blob.mean() < 0.05:
        blob2 = blob_of(bright | changed)
        quad2, iou2 = fit_quad(blob2)
        if quad is None or iou2 > iou:
            blob, quad, iou, cue = blob2, quad2, iou2, "bright+changed"
    sx, sy = frame_hw[1] / tw, frame_hw[0] / th
    quad_full = quad * np.array([sx, sy])
    area = float(blob.mean())
    return {"method": "auto", "cue": cue, "quad": quad_full.tolist(), "iou": round(iou, 4),
            "area_fraction": round(area, 4),
            "bright_threshold": round(thr, 4), "ok": bool(iou > 0.9 and area > 0.05)}


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------
def iter_samples(video_path: str, every_s: float, start_s: float = 0.0, end_s: float | None = None,
                 thumb_long: int | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """(time_s, RGB uint8 frame) for the frame on screen at start_s, start_s + every_s, ...

    thumb_long: if set, frames are scaled (by FFmpeg) so their long side is at most this.
    """
    import av

    with av.open(video_path) as container:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        rate = float(vs.average_rate) if vs.average_rate else 25.0
        eps = 0.5 / rate
        nxt = float(start_s)
        idx = 0
        for frame in container.decode(vs):
            t = float(frame.time) if frame.time is not None else idx / rate
            idx += 1
            if end_s is not None and t > end_s + eps:
                break
            if t + eps < nxt:
                continue
            if thumb_long:
                fw, fh = frame.width, frame.height
                sc = min(1.0, thumb_long / max(fw, fh))
                img = frame.to_ndarray(format="rgb24", width=max(2, int(round(fw * sc))),
                                       height=max(2, int(round(fh * sc)))) if sc < 1 else frame.to_ndarray(format="rgb24")
            else:
                img = frame.to_ndarray(format="rgb24")
            yield t, img
            while nxt <= t + eps:
                nxt += every_s


def video_info(video_path: str) -> dict:
    import av

    with av.open(video_path) as c:
        vs = c.streams.video[0]
        dur = None
        if vs.duration is not None and vs.time_base is not None:
            dur = float(vs.duration * vs.time_base)
        elif c.duration is not None:
            dur = c.duration / 1e6
        return {"width": vs.codec_context.width, "height": vs.codec_context.height,
                "fps": float(vs.average_rate) if vs.average_rate else None, "duration_s": dur,
                "codec": vs.codec_context.name, "frames": vs.frames or None}


# --------------------------------------------------------------------------------------------
# decisions
# --------------------------------------------------------------------------------------------
@dataclass
class IngestParams:
    every_s: float = 2.0
    short_side: int = 512
    analysis_short: int = 160       # decisions run on rectified copies of this short side
    border: float = 0.02            # ignore this fraction of each canvas edge (rectification seams)
    diff_thresh: float = 0.08       # per-pixel difference (max over RGB, 0..1, after a light blur)
    occlusion_area: float = 0.004   # transient (moving) occluder area, fraction of the canvas, that drops a frame
    revert_area: float = 0.01       # reverted area that drops a frame (larger: paint can match an old state by chance)
    revert_thresh: float = 0.035    # "back to the earlier canvas" tolerance (tighter than diff_thresh)
    min_occluder: float = 0.0005    # smaller occluder areas are treated as noise
    occluder_share: float = 0.25    # drop if occluder pixels are more than this share of the change
    change_thresh: float = 0.04     # per-pixel difference counted as a change vs the last kept frame
    min_change: float = 0.002       # changed area (fraction) needed to keep a frame
    window: int = 3                 # later samples that may confirm new paint (moving occluders)
    revert_window: int = 16         # later samples searched for a change that goes back (still occluders)
    min_gap_s: float = 0.0          # keep at most one frame per this many (source) seconds


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _cmax(np.abs(a - b))


def decide(frames: list[np.ndarray], times: list[float], p: IngestParams) -> list[dict]:
    """Per-sample decisions from analysis frames (float32 HxWx3 in [0,1], already blurred).

    Occluder cues, relative to the last clean sample (not occluded):
      * transient: pixels that differ from the last clean canvas and from every one of the next
        `window` samples (paint stays, a moving hand does not);
      * reverted: pixels that differ from the last clean canvas but return to it (within
        `revert_thresh`) in one of the next `revert_window` samples (paint never goes back; a hand
        that stayed still and then left does).
    A sample is dropped if the transient area exceeds `occlusion_area`, the reverted area exceeds
    `revert_area`, or occluder pixels are more than `occluder_share` of its change since the last kept
    frame; otherwise it is kept if its confirmed change (occluder pixels excluded) is at least
    `min_change`.
    """
    n = len(frames)
    out: list[dict] = []
    if n == 0:
        return out
    h, w = frames[0].shape[:2]
    bh, bw = int(round(h * p.border)), int(round(w * p.border))
    inner = np.zeros((h, w), bool)
    inner[bh:h - bh, bw:w - bw] = True
    area = float(inner.sum())
    tau = p.diff_thresh
    last_clean = None
    last_kept = None
    last_kept_t = -1e18
    for i in range(n):
        A = frames[i]
        # Without a clean past (the start) the only evidence is the future: look further ahead so a start
        # canvas seen at least twice is confirmed even when painting begins soon after.
        fut = frames[i + 1: i + 1 + (p.window if last_clean is not None else p.revert_window)]
        d_past = _diff(A, last_clean) if last_clean is not None else None
        if fut:
            d_fut = _diff(A, fut[0])
            for F in fut[1:]:
                d_fut = np.minimum(d_fut, _diff(A, F))
        else:
            d_fut = None
        if d_past is None and d_fut is None:
            U = np.zeros((h, w), bool)
        elif d_past is None:
            U = d_fut > tau
        elif d_fut is None:
            U = d_past > tau
        else:
            U = (d_past > tau) & (d_fut > tau)
        U = _open(U & inner, 1)
        R = np.zeros((h, w), bool)
        if d_past is not None:
            changed = (d_past > tau) & inner
            if changed.sum() > p.min_occluder * area:
                # a hand leaving restores its whole footprint at once: take the largest single revert
                best, best_n = None, 0
                for F in frames[i + 1: i + 1 + p.revert_window]:
                    # a leaving hand restores the old pixels almost exactly; new paint rarely does
                    back = changed & (_diff(F, last_clean) <= p.revert_thresh) & (_diff(F, A) > tau)
                    nb = int(back.sum())
                    if nb > best_n:
                        best, best_n = back, nb
                if best is not None and best_n > p.min_occluder * area:
                    R = _open(best, 1)
        O = U | R
        u_area, r_area = float(U.sum() / area), float(R.sum() / area)
        occ = float(O.sum() / area)
        rec = {"index": i, "time_s": round(float(times[i]), 3),
               "scores": {"occlusion": round(occ, 5), "transient": round(u_area, 5), "reverted": round(r_area, 5)}}
        # a small occluder (brush tip, fingers at the edge) can stay under the area thresholds but still
        # be most of what "changed": then the change is not trusted either
        share = 0.0
        if last_kept is not None and occ > p.min_occluder:
            raw = _open((_diff(A, last_kept) > p.change_thresh) & inner, 1)
            if raw.any():
                share = float((O & raw).sum() / raw.sum())
            rec["scores"]["occluder_share"] = round(share, 3)
        if u_area > p.occlusion_area or r_area > p.revert_area or share > p.occluder_share:
            rec["decision"] = "drop"
            if share > p.occluder_share and not (u_area > p.occlusion_area or r_area > p.revert_area):
                rec["reason"] = (f"occluded: a small occluder is {share:.0%} of the change since the last kept "
                                 "frame")
            elif d_fut is None and not R.any():
                rec["reason"] = "unconfirmed: changed at the last sample, no later sample to confirm it"
            elif r_area > p.revert_area:
                rec["reason"] = "occluded: a region changed and later went back to the earlier canvas"
            else:
                rec["reason"] = "occluded: a region differs from both the last clean canvas and the later samples"
            ys, xs = np.nonzero(O)
            rec["scores"]["occluder_bbox"] = [round(float(xs.min()) / w, 3), round(float(ys.min()) / h, 3),
                                             round(float(xs.max() + 1) / w, 3), round(float(ys.max() + 1) / h, 3)]
            out.append(rec)
            continue
        last_clean = A
        if last_kept is None:
            rec.update(decision="keep", reason="first clean frame (the start canvas)")
            rec["scores"]["change"] = 1.0
        else:
            # only confirmed paint counts: small occluder pixels below the drop thresholds do not
            ch = _open((_diff(A, last_kept) > p.change_thresh) & inner & ~O, 1)
            chg = float(ch.sum() / area)
            rec["scores"]["change"] = round(chg, 5)
            if chg < p.min_change:
                rec.update(decision="drop", reason=f"no change: changed area {chg:.4f} < {p.min_change}")
            elif times[i] - last_kept_t < p.min_gap_s:
                rec.update(decision="drop", reason=f"too soon after the last kept frame (< {p.min_gap_s} s)")
            else:
                rec.update(decision="keep", reason=f"changed: area {chg:.4f} >= {p.min_change}")
        if rec["decision"] == "keep":
            last_kept, last_kept_t = A, times[i]
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------------
# main entry
# --------------------------------------------------------------------------------------------
def _analysis(img: np.ndarray, short: int) -> np.ndarray:
    h, w = img.shape[:2]
    sc = short / min(h, w)
    small = _resize(img, (max(8, int(round(h * sc))), max(8, int(round(w * sc))))) if sc < 1 else img
    return _box(small.astype(np.float32) / 255.0, 1)


def _clear_frames(folder: str) -> None:
    """Remove frame files and jsons of an earlier run (only names that parse as raw-layout frames)."""
    for fn in os.listdir(folder):
        if fn.endswith(".jpg"):
            try:
                parse_frame_name(fn)
            except ValueError:
                continue
            os.remove(os.path.join(folder, fn))
    for fn in (INV_JSON, REPORT_JSON):
        if os.path.exists(os.path.join(folder, fn)):
            os.remove(os.path.join(folder, fn))


def ingest_video(
    video_path: str,
    out_root: str,
    name: str,
    every_s: float = 2.0,
    crop: tuple[float, float, float, float] | None = None,
    quad: Sequence[Sequence[float]] | None = None,
    short_side: int = 512,
    time_scale: float = 1.0,
    start_s: float = 0.0,
    end_s: float | None = None,
    jpeg_quality: int = 95,
    windows_safe: bool = False,
    params: IngestParams | None = None,
    **param_overrides,
) -> dict:
    """Ingest one painting video into `out_root/rgb/<name>/` (official raw layout); returns the report.

    video_path: anything PyAV reads.  out_root: the split folder (e.g. `<data>/train`).
    every_s: sampling step in video seconds.
    crop: manual canvas box (x0, y0, x1, y1) in video pixels; quad: manual canvas corners
      (TL, TR, BR, BL); neither: automatic detection (reported with a fit score).
    short_side: output short side (the official data is at 512).
    time_scale: multiplies video time for the names (e.g. 4.0 for a 4x time-lapse, 1/s for our
      synthetic videos written with time_scale s) so the intervals are in painting seconds.
    start_s, end_s: ignore an intro / outro.
    params / param_overrides: decision thresholds (see `IngestParams`).
    The report is also written to `ingest_report.json` beside the frames.
    """
    p = params or IngestParams()
    p = IngestParams(**{**p.__dict__, "every_s": float(every_s), "short_side": int(short_side), **param_overrides})
    info = video_info(video_path)
    fh, fw = int(info["height"]), int(info["width"])
    warnings: list[str] = []

    # ---- 1+2: canvas ----
    if quad is not None:
        q = _order_quad(np.asarray(quad, np.float64).reshape(4, 2))
        canvas = {"method": "manual quad", "quad": q.tolist(), "ok": True}
    elif crop is not None:
        x0, y0, x1, y1 = (float(v) for v in crop)
        if not (0 <= x0 < x1 <= fw and 0 <= y0 < y1 <= fh):
            raise ValueError(f"crop {crop} outside the {fw}x{fh} video")
        q = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        canvas = {"method": "manual crop", "crop": [x0, y0, x1, y1], "quad": q.tolist(), "ok": True}
    else:
        # thumbnails over the whole video (at most ~120) for the temporal medians
        span = (end_s if end_s is not None else (info["duration_s"] or 0.0)) - start_s
        step = max(every_s, span / 120.0) if span > 0 else every_s
        # only the first and last few thumbnails are needed (temporal medians): bounded memory
        k = 5
        first: list[np.ndarray] = []
        last: collections.deque = collections.deque(maxlen=k)
        for _, img in iter_samples(video_path, step, start_s, end_s, thumb_long=640):
            (first if len(first) < k else last).append(img)
        thumbs = first + list(last)
        if not thumbs:
            raise ValueError(f"no frames decoded from {video_path}")
        canvas = detect_canvas(thumbs, (fh, fw), k=k)
        q = np.asarray(canvas["quad"])
        if not canvas["ok"]:
            warnings.append("canvas detection is unsure (low fit score); consider crop=(x0, y0, x1, y1)")
    qh, qw = quad_size(q)
    if qh <= qw:
        out_hw = (int(short_side), int(round(short_side * qw / qh)))
    else:
        out_hw = (int(round(short_side * qh / qw)), int(short_side))
    canvas["out_hw"] = list(out_hw)

    # ---- 3: sample + rectify; candidates go straight to JPEG in a temp folder ----
    out_dir = os.path.join(out_root, "rgb", name)
    os.makedirs(out_dir, exist_ok=True)
    _clear_frames(out_dir)
    tmp = os.path.join(out_dir, ".ingest_tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    times: list[float] = []
    analysis: list[np.ndarray] = []
    rectifier = Rectifier(q, (fh, fw), out_hw)
    try:
        for t, frame in iter_samples(video_path, p.every_s, start_s, end_s):
            rect = rectifier(frame)
            Image.fromarray(rect).save(os.path.join(tmp, f"{len(times)}.jpg"), quality=int(jpeg_quality),
                                     subsampling=0)  # 4:4:4 chroma: painted texture survives
            times.append(t)
            analysis.append(_analysis(rect, p.analysis_short))
        # ---- 4: decisions ----
        records = decide(analysis, times, p)
        kept = [r for r in records if r["decision"] == "keep"]
        names = []
        for j, r in enumerate(kept):
            nm = format_frame_name(j, r["time_s"] * time_scale, windows_safe)
            r["name"] = nm
            names.append(nm)
            os.replace(os.path.join(tmp, f"{r['index']}.jpg"), os.path.join(out_dir, nm + ".jpg"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(kept) < 2:
        warnings.append(f"only {len(kept)} frame(s) kept: not usable for training")
    if names:
        with open(os.path.join(out_dir, INV_JSON), "w", encoding="utf-8") as f:
            json.dump({names[-1]: names[:-1]}, f)
    counts: dict[str, int] = {}
    for r in records:
        key = r["decision"] if r["decision"] == "keep" else r["reason"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    report = {
        "video": os.path.abspath(video_path), "name": name, "out_dir": os.path.abspath(out_dir),
        "video_info": info, "params": {**p.__dict__, "time_scale": time_scale, "start_s": start_s, "end_s": end_s},
        "canvas": canvas, "n_samples": len(records), "n_kept": len(kept), "counts": counts,
        "kept": names, "target": names[-1] if names else None, "warnings": warnings, "samples": records,
    }
    with open(os.path.join(out_dir, REPORT_JSON), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: python -m inverse_painting.training.ingest_video VIDEO OUT_ROOT NAME [--every 2] [--crop x0 y0 x1 y1]"""
    from ..core.errors import CommandLineParser

    ap = CommandLineParser(description="Ingest a painting video into the official raw layout.")
    ap.add_argument("video")
    ap.add_argument("out_root")
    ap.add_argument("name")
    ap.add_argument("--every", type=float, default=2.0)
    ap.add_argument("--crop", type=float, nargs=4, default=None)
    ap.add_argument("--short-side", type=int, default=512)
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--start", type=float, default=0.0)
    ap.add_argument("--end", type=float, default=None)
    a = ap.parse_args(argv)
    rep = ingest_video(a.video, a.out_root, a.name, every_s=a.every, crop=a.crop, short_side=a.short_side,
                       time_scale=a.time_scale, start_s=a.start, end_s=a.end)
    print(json.dumps({k: rep[k] for k in ("n_samples", "n_kept", "counts", "target", "warnings")}, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    from ..core.errors import run_command

    raise SystemExit(run_command(main, "--debug" in sys.argv))
