"""Renderer probe: does a trained renderer paint the masked region, and does it use the target to do it?

    python -m inverse_painting.evaluation.renderer_probe --models assets/starter_model --data REAL_PROCESSES

For real (cur, next) pairs where ``next`` paints a blank part of ``cur`` (at least ``--min-new`` of the
frame turns from white to paint), the probe noises ``next``'s latents to a few sigmas of the sampling
schedule, asks the renderer UNet for its x0 estimate (one evaluation, conditional branch, no guidance)
and reports the mean squared latent error inside the newly painted region for:

* ``full``         -- every condition, as the sampler's conditional branch sees them;
* ``no_mask``      -- the region mask zeroed (what the mask-guidance branch subtracts);
* ``no_reference`` -- the ReferenceNet features left out (the only way target *layout* reaches the UNet,
  unless the renderer has ``target_input``: its target latents are kept here);
* ``other_target`` -- every condition, but the ReferenceNet features, the next-CLIP token (and the target
  latents, with ``target_input``) of *another* painting's target (the next painting probed, cyclically; NaN with a single painting);
* ``canvas``       -- the canvas's own latents as the estimate (a renderer that paints nothing).

A renderer that places target content where it paints has ``full`` well under ``canvas`` at the high
sigmas, and ``no_reference`` clearly above ``full``; equal ``full`` and ``no_reference`` mean the target
reaches it only through the global next-CLIP token; ``other_target`` close to ``full`` means it ignores the
target altogether (what the epsilon-trained starter renderers did). The figures are printed and written as JSON. This is
a training diagnostic, not one of the paper's metrics.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.schedule import eps_from_output

VARIANTS = ("full", "no_mask", "no_reference", "other_target", "canvas")


def new_paint_mask(cur: np.ndarray, nxt: np.ndarray, white: int = 240, paint: int = 230) -> np.ndarray:
    """Pixels blank (all channels >= ``white``) in ``cur`` and painted (some channel < ``paint``) in ``nxt``."""
    return (cur >= white).all(-1) & (nxt < paint).any(-1)


@torch.no_grad()
def probe_pair(renderer, models, target_state, cur: np.ndarray, nxt: np.ndarray, region: np.ndarray,
               instruction: str, sigmas, generator: torch.Generator, interval_s: float = 20.0,
               other_state=None) -> dict:
    """{sigma: {variant: in-region latent MSE}} for one pair (images uint8 HWC at the working size);
    ``other_state``: another painting's prepared target (the ``other_target`` variant), or None."""
    mask = torch.from_numpy(region.astype(np.float32))[None, None].to(models.device)
    conds = renderer.conditions(target_state, cur, mask, instruction, interval_s)
    other = renderer.conditions(other_state, cur, mask, instruction, interval_s) if other_state is not None else None
    z_next = models.image_latents(nxt).float()
    z_cur = models.image_latents(cur).float()
    cells = torch.nn.functional.interpolate(mask, size=z_next.shape[-2:], mode="area")[0, 0] > 0.5
    if not bool(cells.any()):
        return {}
    # conditional branch (text context), canvas+mask / canvas only / canvas+mask without the reference
    ctx = conds.contexts[[3, 3, 3]]
    feats = conds.canvas_features[[2, 1, 2]]
    use_ref = torch.tensor([True, True, False], device=ctx.device)
    prediction = models.config["prediction_type"]
    out = {}
    for sigma in sigmas:
        s = float(sigma)
        noise = torch.randn(z_next.shape, generator=generator).to(z_next)
        x = z_next + s * noise
        x_in = (x / (s**2 + 1) ** 0.5).to(ctx.dtype).repeat(3, 1, 1, 1)
        t = torch.full((3,), renderer.schedule.timestep(s), device=ctx.device, dtype=torch.float32)
        eps = eps_from_output(renderer.nets.unet(x_in, t, ctx, feats, conds.banks, use_ref,
                                                 target_latents=conds.target_latents), x_in, s, prediction).float()
        x0 = x - s * eps

        def err(pred):
            return float(((pred - z_next)[:, :, cells] ** 2).mean())

        out[s] = {"full": err(x0[0:1]), "no_mask": err(x0[1:2]), "no_reference": err(x0[2:3]),
                  "other_target": math.nan, "canvas": err(z_cur)}
        if other is not None:
            one = x_in[:1]
            o_eps = eps_from_output(renderer.nets.unet(one, t[:1], other.contexts[[3]], other.canvas_features[[2]],
                                                       other.banks, use_ref[:1], target_latents=other.target_latents),
                                   one, s, prediction).float()
            out[s]["other_target"] = err(x - s * o_eps)
    return out


def run(models_dir, data, count: int = 8, per_painting: int = 3, min_new: float = 0.05,
        sigma_steps=(0, 8, 16), seed: int = 0, device: str = "cpu") -> dict:
    """Probe the renderer of ``models_dir`` on the processes in ``data``; returns the summary dict."""
    from ..core.imaging import prepare_image
    from ..core.model_set import ModelSet
    from ..core.renderer import Renderer
    from .sequences import load_sequences

    models = ModelSet.from_release(Path(models_dir), device=device, dtype=torch.float32)
    renderer = Renderer(models)
    sigmas, _ = renderer.schedule.sampling(25)
    chosen = [float(sigmas[i]) for i in sigma_steps]
    generator = torch.Generator().manual_seed(seed)
    per_sigma: dict[float, list[dict]] = {s: [] for s in chosen}
    pairs = []
    paintings = sorted(load_sequences(data).items())[:count]
    for i, (name, seq) in enumerate(paintings):
        short = min(seq.target.shape[:2])
        working = prepare_image(seq.target, short)
        other_seq = paintings[(i + 1) % len(paintings)][1] if len(paintings) > 1 else None
        state = other_state = None
        used = 0
        for k in range(len(seq) - 1):
            if used >= per_painting:
                break
            cur = prepare_image(seq.frames[k], short).padded
            nxt = prepare_image(seq.frames[k + 1], short).padded
            region = new_paint_mask(cur, nxt)
            if region.mean() < min_new:
                continue
            if state is None:
                state = renderer.prepare_target(working.padded)
                if other_seq is not None:  # resized to this painting's size: the latent grids must agree
                    h, w = working.size
                    other = np.asarray(Image.fromarray(other_seq.target).resize((w, h), Image.BICUBIC))
                    other_state = renderer.prepare_target(prepare_image(other, None).padded)
            text = (seq.instructions[k + 1] if seq.instructions else None) or ""  # the step making frame k+1
            res = probe_pair(renderer, models, state, cur, nxt, region, text, chosen, generator,
                             other_state=other_state)
            for s, v in res.items():
                per_sigma[s].append(v)
            pairs.append({"painting": name, "frame": k, "new_area": float(region.mean())})
            used += 1
    summary = {f"{s:.3f}": {v: float(np.mean([r[v] for r in rows])) for v in VARIANTS}
               for s, rows in per_sigma.items() if rows}
    return {"models": str(models_dir), "data": str(data), "pairs": pairs, "in_region_latent_mse": summary}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m inverse_painting.evaluation.renderer_probe",
                                description=__doc__.split("\n")[0])
    p.add_argument("--models", required=True, help="a model folder (release layout)")
    p.add_argument("--data", required=True, help="real painting processes (a folder of them)")
    p.add_argument("--count", type=int, default=8, help="paintings")
    p.add_argument("--per-painting", type=int, default=3, help="pairs per painting")
    p.add_argument("--min-new", type=float, default=0.05, help="least fraction of the frame newly painted")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    res = run(a.models, a.data, a.count, a.per_painting, a.min_new, seed=a.seed, device=a.device)
    print(f"{len(res['pairs'])} pairs; in-region latent MSE of the x0 estimate")
    print("sigma    " + "  ".join(f"{v:>12}" for v in VARIANTS))
    for s, row in res["in_region_latent_mse"].items():
        print(f"{s:>7}  " + "  ".join(f"{row[v]:12.4f}" for v in VARIANTS))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
