"""Parity runner: reproduce a fixture folder laid out like ``shared/parity`` and compare.

``run_fixture_dir(dir)`` loads ``dir/release`` with the normal loaders, runs every case under
``dir/cases`` through the normal code paths (stage by stage, feeding each stage the fixture's inputs),
and compares with ``expected.safetensors`` using the fixture README's tolerances:

- tensors computed before the denoising loop: relative to their largest magnitude, ``PRE_LOOP_RTOL``;
  the VAE posterior means carry an extra ~1e-5 relative difference from the newer diffusers VAE kernels,
  and everything fed by them inherits it, so those keys use ``VAE_RTOL``;
- noise predictions and latents: ``LOOP_RTOL`` relative; ``image_float``: 1e-3 absolute;
- uint8 images: off by at most one level in at most 0.1 % of the values;
- thresholded masks: a cell may differ only where the underlying value is within tolerance of the
  threshold; token ids, chosen thresholds, ladder decisions and stop decisions must be identical.

The ``inverse-painting parity DIR`` command prints one line per case and exits non-zero on a failure.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

PRE_LOOP_RTOL = 1e-5
VAE_RTOL = 5e-5
LOOP_RTOL = 1e-3
LATER_KEYFRAME_RTOL = 3e-3  # downstream of a keyframe's one-level uint8 flips (fixture README §6)
IMAGE_FLOAT_ATOL = 1e-3
UINT8_MAX_FRACTION = 1e-3


@dataclass
class Check:
    key: str
    error: float
    limit: float
    ok: bool
    note: str = ""


@dataclass
class CaseResult:
    name: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and bool(self.checks)

    @property
    def max_abs_error(self) -> float:
        return max((c.error for c in self.checks if c.note != "exact"), default=0.0)

    def line(self) -> str:
        bad = [c for c in self.checks if not c.ok]
        status = "PASS" if self.ok else "FAIL"
        text = f"{status} {self.name}: max abs error {self.max_abs_error:.3g} over {len(self.checks)} checks"
        if bad:
            text += "; failed: " + ", ".join(f"{c.key} ({c.error:.3g} > {c.limit:.3g}{' ' + c.note if c.note else ''})" for c in bad[:6])
        return text

    # ------------------------------------------------------------------ comparisons
    def close(self, key, actual, expected, rtol=PRE_LOOP_RTOL, atol=None):
        a = torch.as_tensor(actual).detach().float().cpu().reshape(torch.as_tensor(expected).shape)
        e = torch.as_tensor(expected).float()
        err = float((a - e).abs().max()) if e.numel() else 0.0
        limit = atol if atol is not None else rtol * max(float(e.abs().max()), 1e-12)
        self.checks.append(Check(key, err, limit, err <= limit))

    def exact(self, key, actual, expected):
        same = actual == expected
        if isinstance(same, (np.ndarray, torch.Tensor)):
            same = bool(np.all(np.asarray(same)))
        self.checks.append(Check(key, 0.0 if same else 1.0, 0.0, bool(same), "exact" if same else f"{actual!r} != {expected!r}"))

    def uint8(self, key, actual, expected):
        d = np.abs(np.asarray(actual).astype(int) - np.asarray(expected).astype(int))
        frac = float((d != 0).mean())
        ok = d.max() <= 1 and frac <= UINT8_MAX_FRACTION
        self.checks.append(Check(key, float(d.max()), 1.0, ok, f"{frac:.2%} differ"))

    def mask(self, key, actual, expected, values, threshold, tol):
        """Masks may differ only where ``values`` is within ``tol`` of the threshold."""
        a = torch.as_tensor(actual).float().reshape(-1)
        e = torch.as_tensor(expected).float().reshape(-1)
        v = torch.as_tensor(values).float().reshape(-1)
        differ = a != e
        borderline = (v - threshold).abs() <= tol
        ok = bool((~differ | borderline).all())
        self.checks.append(Check(key, float(differ.sum()), 0.0, ok, f"{int(differ.sum())} cells differ"))


# ---------------------------------------------------------------------- fixture helpers
def _load(case_dir: Path):
    from safetensors.torch import load_file

    case = json.loads((case_dir / "case.json").read_text())
    expected = load_file(str(case_dir / "expected.safetensors"))
    extra = {}
    for name in ("noise", "inputs"):
        p = case_dir / f"{name}.safetensors"
        if p.is_file():
            extra[name] = load_file(str(p))
    return case, expected, extra


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).copy()


def _mask_png(path: Path) -> torch.Tensor:
    from PIL import Image

    return torch.from_numpy((np.asarray(Image.open(path).convert("L")) > 127).astype(np.float32))[None, None]


class _Context:
    """Lazily loaded models of one fixture release (shared by the cases)."""

    def __init__(self, release: Path):
        self.release = release
        self._models = None
        self._metric = None

    @property
    def models(self):
        if self._models is None:
            from .model_set import ModelSet

            self._models = ModelSet.from_release(self.release)
        return self._models

    @property
    def metric(self):
        if self._metric is None:
            from ..models.lpips_net import load_perceptual_metric

            self._metric = load_perceptual_metric("lpips_alex", weights_dir=self.release / "lpips")
        return self._metric


def _scales(case):
    from .guidance import GuidanceScales

    return GuidanceScales(case["guidance_scale"], case["cur_guidance_scale"], case["PE_guidance_scale"],
                          case["RP_guidance_scale"], case["TP_guidance_scale"])


# ---------------------------------------------------------------------- the cases
def case_time_encoder(ctx, case_dir, res):
    case, exp, _ = _load(case_dir)
    intervals = case["intervals_s"]
    models = ctx.models
    for prefix, enc in (("renderer", models.renderer.time_encoder), ("rp", models.mask.time_encoder)):
        for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            m = _copy_module(enc, dtype)
            with torch.no_grad():
                x = m.interval_to_x(intervals)
                feats = m.features(x)
                emb = m.forward_x(x)
            rtol = 1e-3 if precision == "fp16" else PRE_LOOP_RTOL  # fp16: a unit in the last place
            res.close(f"{prefix}.{precision}.x", x, exp[f"{prefix}.{precision}.x"], atol=0.0)
            res.close(f"{prefix}.{precision}.features", feats, exp[f"{prefix}.{precision}.features"], rtol=rtol)
            res.close(f"{prefix}.{precision}.embedding", emb, exp[f"{prefix}.{precision}.embedding"], rtol=rtol)


def _copy_module(module, dtype):
    import copy

    return copy.deepcopy(module).to(dtype)


def case_text_encoding(ctx, case_dir, res):
    from .text_encoding import tokenize

    case, exp, _ = _load(case_dir)
    text = ctx.models.text
    ids = tokenize(text.tokenizer, case["prompts"])
    res.exact("input_ids", ids.numpy(), exp["input_ids"].numpy())
    text.clear()
    res.close("embeddings", text(case["prompts"]), exp["embeddings"])


def case_difference_mask(ctx, case_dir, res):
    from .difference_mask import compute_difference_mask, stop_rule_distance
    from .imaging import pad_to_multiple

    case, exp, _ = _load(case_dir)
    canvas = _png(case_dir / "canvas.png")
    target = pad_to_multiple(_png(case_dir / "target.png"))
    thr = case["binary_threshold"]
    d = compute_difference_mask(ctx.metric, canvas, target, thr, tuple(case["latent_size_hw"]))
    tol = PRE_LOOP_RTOL * float(exp["lpips_map"].abs().max())
    res.close("lpips_map", d.map, exp["lpips_map"])
    res.mask("mask_full", d.full, exp["mask_full"], exp["lpips_map"], thr, tol)
    sub = exp["lpips_map"][..., ::8, ::8]
    res.mask("mask_latent", d.latent, exp["mask_latent"], sub, thr, tol)
    res.close("lpips_scalar", stop_rule_distance(ctx.metric, canvas, target), exp["lpips_scalar"])
    res.close("lpips_scalar_target_vs_target", stop_rule_distance(ctx.metric, target, target),
              exp["lpips_scalar_target_vs_target"], atol=1e-6)


def case_mask_generator(ctx, case_dir, res):
    from .imaging import pad_to_multiple, upsample_latent_mask
    from .mask_generator import MaskGenerator

    case, exp, _ = _load(case_dir)
    canvas = _png(case_dir / "canvas.png")
    target = pad_to_multiple(_png(case_dir / "target.png"))
    gen = MaskGenerator(ctx.models, ctx.metric)
    p = gen.predict(canvas, target, case["prompt"], case["interval_s"], case["binary_threshold"])
    res.close("z_canvas", p.z_canvas, exp["z_canvas"], rtol=VAE_RTOL)
    res.close("z_target", p.z_target, exp["z_target"], rtol=VAE_RTOL)
    res.close("context", p.context, exp["context"])
    res.close("logits", p.logits, exp["logits"], rtol=VAE_RTOL)
    res.close("sigmoid", p.probability, exp["sigmoid"], rtol=VAE_RTOL)
    res.exact("difference_mask_latent", p.difference.to(torch.uint8).numpy(), exp["difference_mask_latent"].numpy())
    tol = VAE_RTOL * float(exp["sigmoid"].abs().max())
    for i, tau in enumerate(case["thresholds"]):
        res.mask(f"masks_latent[{tau}]", p.probability > tau, exp["masks_latent"][i], exp["sigmoid"], tau, tol)
    res.mask("mask_full_0.5", upsample_latent_mask((p.probability > 0.5).float(), canvas.shape[:2]),
             exp["mask_full_0.5"], upsample_latent_mask(exp["sigmoid"], canvas.shape[:2]), 0.5, tol)
    prev = _mask_png(case_dir / "prev_mask.png")
    chosen = gen.choose(p, prev, first=False)
    res.exact("chosen_threshold", chosen.threshold, case["ladder"]["chosen_threshold"])
    res.exact("ladder_decisions", [t["decision"] for t in chosen.trail], [t["decision"] for t in case["ladder"]["trail"]])


def case_renderer_keyframe(ctx, case_dir, res):
    from .imaging import pad_to_multiple
    from .renderer import Renderer, TargetState
    from .sampling import NoiseSource

    case, exp, extra = _load(case_dir)
    noise, inputs = extra["noise"], extra["inputs"]
    models = ctx.models
    r = Renderer(models)
    target = pad_to_multiple(_png(case_dir / "target.png"))
    canvas = _png(case_dir / "canvas.png")
    mask = _mask_png(case_dir / "mask.png")
    tstate = r.prepare_target(target)
    res.close("ref_latents", tstate.latents, exp["ref_latents"], rtol=VAE_RTOL)
    res.close("e_target", tstate.clip, exp["e_target"])
    # the banks on their own: the ReferenceNet fed the fixture's latents
    with torch.no_grad():
        banks = r.nets.referencenet.banks(exp["ref_latents"].to(models.device, models.dtype),
                                          exp["e_target"][:, None].to(models.device, models.dtype))
    for key, value in exp.items():
        if key.startswith("bank.") and key.endswith(".head16"):
            name = key[len("bank."):-len(".head16")]
            res.close(key, banks[name][0, :16], value)
        elif key.startswith("bank.") and key.endswith(".full"):
            name = key[len("bank."):-len(".full")]
            res.close(key, banks[name][0], value)
    tstate = TargetState(target, exp["ref_latents"].to(models.device, models.dtype), tstate.clip, banks)
    conds = r.conditions(tstate, canvas, mask, case["prompt"], case["interval_s"], case["negative_prompt"])
    for key, value in (("e_canvas", conds.e_canvas), ("e_next", conds.e_next), ("pe_token", conds.time_token),
                       ("text_tokens", conds.text_tokens), ("neg_text_tokens", conds.negative_text),
                       ("context", conds.context_batch(range(6))), ("latent_cur_distinct", conds.canvas_features)):
        res.close(key, value, exp[key])
    sigmas, timesteps = r.schedule.sampling(case["steps"])
    res.close("sigmas", sigmas, exp["sigmas"])
    res.close("timesteps", timesteps, exp["timesteps"])
    draws = torch.cat([noise["init_noise"][None], noise["step_noises"]])
    scales = _scales(case)
    for fast in (False, True):
        trace: list = []
        ns = NoiseSource(0, noise["init_noise"].shape, models.device, models.dtype, draws=draws)
        out = r.render(conds, ns, case["steps"], scales, fast, inputs["img_init_latents"], case["combine_init_ratio"],
                       trace=trace)
        tag = "fast." if fast else ""
        if not fast:
            res.close("eps_branches_step0", trace[0]["eps_branches"], exp["eps_branches_step0"], rtol=LOOP_RTOL)
        res.close(tag + "eps_guided", torch.stack([t["eps"] for t in trace]), exp["eps_guided"], rtol=LOOP_RTOL)
        res.close(tag + "final_latents", out.latents, exp["final_latents"], rtol=LOOP_RTOL)
        res.close(tag + "image_float", out.image_float.permute(0, 2, 3, 1), exp["image_float"], atol=IMAGE_FLOAT_ATOL)
        res.uint8(tag + "image_uint8", out.image, exp["image_uint8"].numpy())


def case_loop(ctx, case_dir, res):
    from .loop import Painter, PaintSettings

    case, exp, extra = _load(case_dir)
    settings = PaintSettings(interval_s=case["interval_s"], max_keyframes=case["keyframes"], steps=case["steps"],
                             scales=_scales(case), fast_guidance=False, sampler="euler_ancestral",
                             difference_threshold=case["binary_threshold"],
                             combine_init=case["combine_init"], combine_ratio=case["combine_init_ratio"],
                             short_side=None)
    target = _png(case_dir / "target.png")

    class Prompts:
        def generate(self, canvas, target, keyframe_index=0):
            return case["prompts"][keyframe_index]

    trace: list = []
    painter = Painter(ctx.models, ctx.metric)
    frames = list(painter.paint(target, settings, instructions=Prompts(), noise_draws=extra["noise"]["draws"], trace=trace))
    res.exact("keyframes", len(frames), case["keyframes"])
    res.exact("stop_reason", painter.last_stop_reason, "max_keyframes")
    for kf, record, tr in zip(frames, case["keyframe_records"], trace):
        k = kf.index - 1
        p = f"kf{k}."
        rtol = VAE_RTOL if k == 0 else LATER_KEYFRAME_RTOL
        res.close(p + "rp_logits", tr["rp_logits"], exp[p + "rp_logits"], rtol=rtol)
        res.exact(p + "difference_mask_latent", kf.difference.to(torch.uint8).numpy(), exp[p + "difference_mask_latent"].numpy())
        res.exact(p + "chosen_threshold", kf.threshold, record["chosen_threshold"])
        res.exact(p + "ladder", [t["decision"] for t in kf.ladder], [t["decision"] for t in record["rp_tries"]])
        sig = torch.sigmoid(exp[p + "rp_logits"])
        res.mask(p + "mask_latent", kf.mask_latent, exp[p + "mask_latent"], sig, kf.threshold, rtol)
        res.close(p + "final_latents", kf.latents, exp[p + "final_latents"], rtol=LOOP_RTOL if k == 0 else LATER_KEYFRAME_RTOL)
        res.uint8(p + "image_uint8", kf.image, exp[p + "image_uint8"].numpy())
        res.close(p + "lpips_canvas_vs_pred", kf.lpips_change, exp[p + "lpips_canvas_vs_pred"], rtol=LOOP_RTOL)
        res.close(p + "lpips_target_vs_pred", kf.lpips_to_target, exp[p + "lpips_target_vs_pred"], rtol=LOOP_RTOL)


CASES = {"time_encoder": case_time_encoder, "text_encoding": case_text_encoding,
         "difference_mask": case_difference_mask, "mask_generator": case_mask_generator,
         "renderer_keyframe": case_renderer_keyframe, "loop": case_loop}


def run_case(ctx: _Context, case_dir: Path) -> CaseResult:
    kind = json.loads((case_dir / "case.json").read_text())["case"]
    res = CaseResult(case_dir.name)
    if kind not in CASES:
        res.checks.append(Check("case kind", 1.0, 0.0, False, f"unknown case kind {kind!r}"))
        return res
    with torch.no_grad():
        CASES[kind](ctx, case_dir, res)
    return res


def run_fixture_dir(fixture_dir, only: list[str] | None = None, echo=print) -> list[CaseResult]:
    fixture_dir = Path(fixture_dir)
    ctx = _Context(fixture_dir / "release")
    results = []
    for case_dir in sorted(p for p in (fixture_dir / "cases").iterdir() if (p / "case.json").is_file()):
        if only and case_dir.name not in only:
            continue
        try:
            res = run_case(ctx, case_dir)
        except Exception as exc:  # a crash is a failed case, reported on its line
            res = CaseResult(case_dir.name, [Check("run", 1.0, 0.0, False, f"{type(exc).__name__}: {exc}")])
        results.append(res)
        if echo:
            echo(res.line())
    return results
