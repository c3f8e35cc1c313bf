"""Benchmark one keyframe: UNet passes, TFLOPs (counted from the forward passes run) and seconds, side by side
for the release, the release-equivalent setting and the default.

    python scripts/benchmark_keyframe.py                              # tiny random release, CPU
    python scripts/benchmark_keyframe.py --models REHEARSAL --size 512 # full size (inverse-painting rehearsal-release)
    python scripts/benchmark_keyframe.py --models DIR --device cuda --dtype fp16

Rows:
- ``release``: what the authors' code computes per keyframe: six branches with queries for all 2N tokens of the
  reference attention, the ReferenceNet at batch 6 through the whole network, one mask-generator pass (its
  fewest; the threshold ladder re-runs it up to 5 times), 25 Euler-ancestral steps;
- ``release-equivalent``: this pack computing the release's output (six branches, 25 Euler-ancestral steps,
  the ReferenceNet once per painting, not per keyframe);
- ``default``: PaintSettings' defaults (sampler, steps, guidance branches and interval).
With ``--full`` (default on a GPU) whole keyframes run; otherwise (a CPU, where a full-size keyframe takes an
hour) one denoiser evaluation of each kind (guided, conditional-only) runs and is multiplied by how many the
keyframe makes: exact for FLOPs and passes (each kind has the same shapes every step), seconds scaled alike.
The rows are UNet work (renderer, ReferenceNet, one mask-generator pass); the VAE decode every keyframe ends
with is the same in all and printed apart. Prints a table; asserts nothing (speed targets live here, not in tests). Run heavy jobs with OMP_NUM_THREADS.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class _OfficialQueries:
    """The release's reference attention: queries for cat[tokens, bank] (2N), the first N kept."""

    def __init__(self, proc):
        self.proc = proc

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        state, name = self.proc.state, self.proc.name
        if state.mode != "read" or name not in state.banks:
            return self.proc(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        bank = state.banks[name].to(hidden_states.dtype).expand(hidden_states.shape[0], -1, -1)
        n = hidden_states.shape[1]
        both = torch.cat([hidden_states, bank], 1)
        out = self.proc.inner(attn, both, both, None, temb)[:, :n]
        plain = ~state.use_reference
        if bool(plain.any()):
            out[plain] = self.proc.inner(attn, hidden_states[plain], None, None, temb)
        return out


def _official_processors(unet):
    from inverse_painting.models.reference_attention import ReferenceAttnProcessor

    saved = dict(unet.attn_processors)
    unet.set_attn_processor({k: _OfficialQueries(p) if isinstance(p, ReferenceAttnProcessor) else p
                             for k, p in saved.items()})
    return saved


def measure(fn, device):
    from inverse_painting.core.flops import flop_counter

    _sync(device)
    t0 = time.perf_counter()
    with flop_counter() as fc:
        out = fn()
    _sync(device)
    return out, fc.get_total_flops() / 1e12, time.perf_counter() - t0


def _evaluations(settings, schedule) -> tuple[int, int]:
    """(guided, conditional-only) denoiser evaluations of one keyframe: one per step for both
    built-in samplers; a guidance interval makes the steps outside it conditional-only."""
    sigmas, _ = schedule.sampling(settings.steps)
    inside = [settings.guidance_interval is None or settings.guidance_interval[0] <= float(x) <= settings.guidance_interval[1]
              for x in sigmas[:-1]]
    return sum(inside), len(inside) - sum(inside)


def bench(models_dir, size: int, device: str, dtype, rows, full: bool) -> list[dict]:
    from inverse_painting.core.guidance import GuidanceScales
    from inverse_painting.core.imaging import prepare_image
    from inverse_painting.core.loop import PaintSettings
    from inverse_painting.core.model_set import ModelSet
    from inverse_painting.core.renderer import Renderer
    from inverse_painting.core.sampling import NoiseSource

    models = ModelSet.from_release(models_dir, device=device, dtype=dtype, mask_generator=False)
    r = Renderer(models)
    rng = np.random.default_rng(0)
    working = prepare_image((rng.random((size, size, 3)) * 255).astype(np.uint8), size)
    target, ref_tflop, ref_s = measure(lambda: r.prepare_target(working.padded), device)
    canvas = working.white_canvas()
    mask = torch.zeros(1, 1, *working.hw)
    mask[..., : working.hw[0] // 2, :] = 1
    conds = r.conditions(target, canvas, mask, "sky", 20.0)
    shape = (1, 4, *working.latent_hw)
    # every render ends with one VAE decode: counted and timed alone, taken out of the UNet figures
    _, dec_tflop, dec_s = measure(lambda: models.decode_latents(target.latents), device)
    settings = {"release": PaintSettings(fast_guidance=False, sampler="euler_ancestral", steps=25),
                "release-equivalent": PaintSettings(fast_guidance=False, sampler="euler_ancestral", steps=25),
                "default": PaintSettings()}
    out = []
    for name in rows:
        s = settings[name]
        saved = _official_processors(models.renderer.unet.unet) if name == "release" else None
        extra_tflop = extra_s = 0.0
        if name == "release":  # the release re-runs the whole ReferenceNet at batch 6 every keyframe
            _, extra_tflop, extra_s = measure(lambda: _full_referencenet(models, target, 6), device)
        if full and name != "release":
            r.unet_passes = 0
            noise = NoiseSource(1, shape, models.device, dtype)
            res, tflop, secs = measure(lambda: r.render(conds, noise, s.steps, s.scales, s.fast_guidance,
                                                        sampler_name=s.sampler, guidance_interval=s.guidance_interval),
                                       device)
            passes, tflop, secs = r.unet_passes, tflop - dec_tflop, secs - dec_s
            how = "whole keyframe run"
            finite = bool(torch.isfinite(res.latents).all())
        else:  # one real evaluation of each kind, times how many the keyframe makes (every one has the same shapes)
            guided, conditional = _evaluations(s, r.schedule)
            sig = r.schedule.sampling(s.steps)[0]
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(models.device, dtype) * float(sig[0])
            passes = tflop = secs = 0.0
            finite = True
            for count, sigma, kind in ((guided, sig[0], "guided"), (conditional, sig[-2], "conditional")):
                if count == 0:
                    continue
                interval = s.guidance_interval if kind == "conditional" else None
                den = r.denoiser(conds, s.scales, s.fast_guidance, None, None, interval)
                r.unet_passes = 0
                y, f, t = measure(lambda: den(x, sigma.reshape(1).to(models.device)), device)
                finite &= bool(torch.isfinite(y).all())
                passes, tflop, secs = passes + count * r.unet_passes, tflop + count * f, secs + count * t
            how = f"{guided} guided + {conditional} conditional-only evaluations, one of each run"
        if saved is not None:
            models.renderer.unet.unet.set_attn_processor(saved)
        label = (f"{name} ({s.sampler}, {s.steps} steps, {'4' if s.fast_guidance else '6'} branches"
                 + (f", guided for sigma in [{s.guidance_interval[0]:g}, {s.guidance_interval[1]:g}]"
                    if s.guidance_interval else "")
                 + ("; official attention, ReferenceNet x6 per keyframe" if name == "release" else "")
                 + ("" if finite else "; NON-FINITE OUTPUT") + ")")
        out.append({"setting": label, "passes": passes, "tflop": tflop + extra_tflop, "seconds": secs + extra_s,
                    "how": how})
    del models, r
    # one mask-generator pass per keyframe (ours; the release's fewest), measured on its own to spare memory
    mm = ModelSet.from_release(models_dir, device=device, dtype=dtype, renderer=False)
    h, w = working.latent_hw
    x = torch.randn(1, 9, h, w, device=device, dtype=dtype)
    ctx = torch.randn(1, 78, mm.mask.unet.unet.config.cross_attention_dim, device=device, dtype=dtype)
    with torch.no_grad():
        _, m_tflop, m_s = measure(lambda: mm.mask.unet(x, ctx), device)
    for row in out:
        row["tflop"] += m_tflop
        row["seconds"] += m_s
        row["passes"] = f"{row['passes']:g} + 1 mask"
    print(f"per painting (ours): target latents, CLIP, ReferenceNet banks: {ref_tflop:.2f} TFLOP, {ref_s:.1f} s; "
          f"one mask-generator pass: {m_tflop:.2f} TFLOP, {m_s:.1f} s; one VAE decode (left out of the rows, the "
          f"same in each): {dec_tflop:.2f} TFLOP, {dec_s:.1f} s")
    for row in out:
        print(f"  {row['setting']}: {row['how']}")
    return out


def _full_referencenet(models, target, batch: int) -> None:
    """The release's ReferenceNet call: the whole network (it has no conv_out) at batch 6, every keyframe."""
    refnet = models.renderer.referencenet
    lat = target.latents.repeat(batch, 1, 1, 1)
    ctx = target.clip[:, None, :].to(models.dtype).repeat(batch, 1, 1)
    refnet.state.mode, refnet.state.stop_after_count = "write", None
    try:
        with torch.no_grad():
            refnet.unet(lat, torch.zeros(batch, device=lat.device, dtype=lat.dtype), encoder_hidden_states=ctx)
    except TypeError:  # conv_norm_out / conv_out are None: the network ends here
        pass
    finally:
        refnet.state.mode = "off"
        refnet.state.clear()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", help="a release folder (default: a tiny random release)")
    p.add_argument("--size", type=int, default=256, help="square image side (512: the issue's full-size figure)")
    p.add_argument("--full", action=argparse.BooleanOptionalAction, default=None,
                   help="run whole keyframes (default on a GPU); else one denoiser evaluation of each kind is run "
                        "and multiplied by how many a keyframe makes (exact for FLOPs: all have the same shapes)")
    p.add_argument("--rows", nargs="*", default=["release", "release-equivalent", "default"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    a = p.parse_args()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    print(f"device {a.device}, {a.dtype}, torch threads {torch.get_num_threads()}, {a.size}x{a.size}")
    full = a.full if a.full is not None else a.device.startswith("cuda")
    if a.models:
        rows = bench(a.models, a.size, a.device, dtype, a.rows, full)
    else:
        from inverse_painting.core.tiny_release import write_random_release

        with tempfile.TemporaryDirectory() as tmp:
            rows = bench(write_random_release(tmp), a.size, a.device, dtype, a.rows, full)
    base = rows[0]["tflop"]
    print("| setting | UNet passes / keyframe | TFLOP / keyframe | x fewer than first row | s / keyframe |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['passes']} | {row['tflop']:.4g} | {base / row['tflop']:.2f} | "
              f"{row['seconds']:.1f} |")


if __name__ == "__main__":
    main()
