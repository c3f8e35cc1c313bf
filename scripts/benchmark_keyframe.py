"""Benchmark: seconds per keyframe with the six-branch and the fast (zero-weight-skipping) guidance.

    python scripts/benchmark_keyframe.py                      # tiny random release, CPU
    python scripts/benchmark_keyframe.py --models DIR         # any release folder
    python scripts/benchmark_keyframe.py --sd15 --device cuda # full SD1.5-size renderer UNet + ReferenceNet,
                                                              # random weights (denoising loop only)

Prints figures; it asserts nothing (speed targets live here, not in tests).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


def bench_release(models_dir, size: int, steps: int, repeats: int, device: str, dtype) -> None:
    from inverse_painting.core.guidance import GuidanceScales
    from inverse_painting.core.imaging import prepare_image
    from inverse_painting.core.model_set import ModelSet
    from inverse_painting.core.renderer import Renderer
    from inverse_painting.core.sampling import NoiseSource

    models = ModelSet.from_release(models_dir, device=device, dtype=dtype)
    r = Renderer(models)
    rng = np.random.default_rng(0)
    working = prepare_image((rng.random((size, size + size // 4, 3)) * 255).astype(np.uint8), size)
    t0 = time.perf_counter()
    target = r.prepare_target(working.padded)
    print(f"per painting (target latents, CLIP, ReferenceNet banks): {time.perf_counter() - t0:.3f} s")
    canvas = working.white_canvas()
    mask = torch.zeros(1, 1, *working.hw)
    mask[..., : working.hw[0] // 2, :] = 1
    conds = r.conditions(target, canvas, mask, "sky", 20.0)
    for fast in (False, True):
        times = []
        for _ in range(repeats):
            noise = NoiseSource(1, (1, 4, *working.latent_hw), models.device, dtype)
            t0 = time.perf_counter()
            r.render(conds, noise, steps, GuidanceScales(), fast=fast)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        label = "fast (4 branches)" if fast else "six-branch"
        print(f"{label:18s} {working.hw[1]}x{working.hw[0]}, {steps} steps: "
              f"{np.median(times):.3f} s/keyframe (median of {repeats})")


def bench_sd15(steps: int, repeats: int, device: str, dtype, height: int, width: int) -> None:
    from inverse_painting.core.guidance import GuidanceScales
    from inverse_painting.models.referencenet import ReferenceNet
    from inverse_painting.models.renderer_unet import RendererUNet
    from inverse_painting.core.loading import SD15_UNET_CONFIG as SD15

    unet = RendererUNet(SD15).to(device, dtype).eval()
    refnet = ReferenceNet(SD15).to(device, dtype).eval()
    h, w = height // 8, width // 8
    with torch.no_grad():
        banks = refnet.banks(torch.randn(1, 4, h, w, device=device, dtype=dtype),
                             torch.randn(1, 1, 768, device=device, dtype=dtype))
        scales = GuidanceScales()
        for fast in (False, True):
            branches = scales.active_branches() if fast else tuple(range(6))
            n = len(branches)
            x = torch.randn(n, 4, h, w, device=device, dtype=dtype)
            ctx = torch.randn(n, 79, 768, device=device, dtype=dtype)
            feats = torch.randn(n, 320, h, w, device=device, dtype=dtype)
            use = torch.tensor([b != 0 for b in branches], device=device)
            times = []
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                for _ in range(steps):
                    unet(x, torch.full((n,), 500.0, device=device), ctx, feats, banks, use)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            label = "fast (4 branches)" if fast else "six-branch"
            print(f"SD1.5 UNet {label:18s} {width}x{height}, {steps} steps, {dtype}: "
                  f"{np.median(times[1:]):.2f} s/keyframe (denoising only)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--sd15", action="store_true")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=688)
    a = p.parse_args()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    print(f"device {a.device}, torch threads {torch.get_num_threads()}")
    if a.sd15:
        bench_sd15(a.steps, a.repeats, a.device, dtype, a.height, a.width)
        return
    if a.models:
        bench_release(a.models, a.size, a.steps, a.repeats, a.device, dtype)
        return
    from inverse_painting.core.tiny_release import write_random_release

    with tempfile.TemporaryDirectory() as tmp:
        bench_release(write_random_release(tmp), a.size, a.steps, a.repeats, a.device, dtype)


if __name__ == "__main__":
    main()
