"""Computed device memory of each memory tier at full size (the README's Memory table, computed column).

    python scripts/memory_tiers.py [--keyframes 2]
    python scripts/memory_tiers.py --cpu-release REHEARSAL [--text-dtype bf16]   # also measure CPU RSS

Paints ``--keyframes`` keyframes of a tiny random release under each tier and records the order in which the
loop asks for its networks (``Residency.use`` / ``release``); then replays that order on a Residency whose
networks have their full-size fp16 sizes (counted on meta-device models: three SD1.5 UNets, SD VAE, CLIP text
encoder, CLIP-B/32, LLaVA-1.5-7B with its CLIP-L/336 tower; 8/4-bit text: the LLM's linear layers at 1 / 0.5
byte plus NF4 scales, embeddings and norms fp16, tower fp16) and prints the most weight bytes the tier holds on
the device at once. Weights only: activations, the CUDA context and the allocator come on top (the tiers keep
RESERVE_GB for them). GPU measurements: scripts/gpu_check.py.

``--cpu-release``: also replays each tier's order on that (rehearsal) release on the CPU, in a fresh process per
tier: the real networks read, freed and re-read as the tier says (fp32 UNets, the text model in
``--text-dtype`` on the CPU), every weight read once per use but no forward pass (activations not included);
prints the process's peak RSS (VmHWM).
"""
from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch


def full_size_bytes() -> dict[str, dict[str, int]]:
    """name -> {"fp16": bytes, "8bit": ..., "4bit": ...} of each network at full size (meta models)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from inverse_painting.core.loading import SD15_UNET_CONFIG
    from inverse_painting.core.model_set import build_meta_networks
    from inverse_painting.core.rehearsal_release import CLIP_L336, SD_VAE, llava_shapes
    from inverse_painting.models.feature_encoder import CanvasFeatureEncoder
    from inverse_painting.models.next_clip import NextClipPredictor
    from inverse_painting.models.time_encoder import TimeEncoder

    def numel(m):
        return sum(p.numel() for p in m.parameters())

    nets = build_meta_networks(SD15_UNET_CONFIG)
    with init_empty_weights():
        counts = {"renderer_unet": numel(nets["renderer_unet"]), "referencenet": numel(nets["referencenet"]),
                  "mask_unet": numel(nets["mask_unet"]), "vae": numel(AutoencoderKL(**SD_VAE)),
                  "text_encoder": numel(CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768,
                                                                       intermediate_size=3072, num_hidden_layers=12,
                                                                       num_attention_heads=12))),
                  "clip_vision": numel(CLIPVisionModel(CLIPVisionConfig(hidden_size=768, intermediate_size=3072,
                                                                          num_hidden_layers=12, num_attention_heads=12,
                                                                          patch_size=32))),
                  "feature_encoder": numel(CanvasFeatureEncoder(4, 320)),
                  "next_clip": numel(NextClipPredictor(1536, (1024, 512), 768)),
                  "renderer_time_encoder": numel(TimeEncoder()), "mask_time_encoder": numel(TimeEncoder())}
    sizes = {k: {q: 2 * v for q in ("fp16", "8bit", "4bit")} for k, v in counts.items()}
    sizes["perceptual_metric"] = {q: 4 * 2_470_000 for q in ("fp16", "8bit", "4bit")}  # AlexNet trunk, fp32
    shapes = llava_shapes(32)
    tower = sum(int(np.prod(s)) for k, s in shapes.items() if "vision_tower" in k)
    linear = sum(int(np.prod(s)) for k, s in shapes.items()
                 if k.startswith("model.layers.") and k.endswith("proj.weight"))
    rest = sum(int(np.prod(s)) for k, s in shapes.items()) - tower - linear
    assert CLIP_L336["hidden_size"] == 1024
    sizes["text_model"] = {"fp16": 2 * (linear + rest) + 4 * tower,  # the release's tower is fp32
                           "8bit": linear + 2 * rest + 2 * tower,
                           "4bit": linear // 2 + linear // 64 * 4 + 2 * rest + 2 * tower}  # NF4 + fp32 scale per 64
    return sizes


def record_order(tier_name: str, keyframes: int) -> list[tuple[str, str]]:
    """(call, name) of every Residency.use / release of a tiny-release painting under a tier."""
    from inverse_painting.core.imaging import prepare_image
    from inverse_painting.core.loop import Painter, PaintSettings
    from inverse_painting.core.memory import TIERS, Residency
    from inverse_painting.core.model_set import ModelSet
    from inverse_painting.core.tiny_release import write_random_release
    from inverse_painting.models.lpips_net import load_perceptual_metric
    from inverse_painting.models.text_instruction import ManualInstructions

    tier = TIERS[tier_name]
    calls: list[tuple[str, str]] = []

    class Recording(Residency):
        def use(self, *names):
            for n in names:
                if not calls or calls[-1] != ("use", n):
                    calls.append(("use", n))
            super().use(*names)

        def release(self, name):
            calls.append(("release", name))
            super().release(name)

    with tempfile.TemporaryDirectory() as tmp:
        root = write_random_release(tmp)
        models = ModelSet.from_release(root, lazy=True)
        residency = Recording("cpu", "cpu")
        models.attach_residency(residency, release_referencenet=tier.release_referencenet)
        metric = load_perceptual_metric("stlpips_alex")
        residency.register("perceptual_metric", metric)
        residency.install_hooks("perceptual_metric")
        residency.register("text_model", torch.nn.Linear(1, 1))

        class Text(ManualInstructions):
            def generate(self, *a, **k):
                residency.use("text_model")
                return super().generate(*a, **k)

        rng = np.random.default_rng(0)
        working = prepare_image((rng.random((128, 128, 3)) * 255).astype(np.uint8), 128)
        settings = PaintSettings(max_keyframes=keyframes, steps=2, short_side=128)
        text = Text(["sky"]) if tier.text != "none" else ManualInstructions(["sky"])
        for _ in Painter(models, metric).paint(working, settings, instructions=text):
            pass
    return calls


def tier_peak(tier_name: str, sizes: dict, calls, text_on_device: bool = True) -> tuple[float, list[str]]:
    """Replays the calls at full size; returns (peak GB of weights on the device, what was resident then).
    ``text_on_device=False``: the tier's text model runs on the CPU (no bitsandbytes)."""
    from inverse_painting.core.memory import GB, TIERS, Residency

    tier = TIERS[tier_name]
    quant = tier.text if tier.text in ("8bit", "4bit") else "fp16"
    r = Residency("cpu", "cpu", tier.budget_gb * GB if tier.budget_gb else None)
    for name, by in sizes.items():
        if name == "text_model" and (tier.text == "none" or not text_on_device):
            continue
        r.register(name, torch.nn.Identity(), size=by[quant if name == "text_model" else "fp16"],
                   pinned=name == "text_model" and quant != "fp16",
                   reload=(lambda: torch.nn.Identity()) if name in ("referencenet",) else None)
    peak, at_peak = 0, []
    for call, name in calls:
        if name not in r.modules:
            continue
        r.use(name) if call == "use" else r.release(name)
        if r.resident_bytes() > peak:
            peak, at_peak = r.resident_bytes(), list(r.resident)
    return peak / GB, at_peak


def cpu_replay(release: str, tier_name: str, calls, text_dtype: str) -> float:
    """Replays a tier's calls with the real networks of ``release`` on the CPU; returns the peak RSS (GB)."""
    from inverse_painting.core.memory import GB, TIERS, Residency
    from inverse_painting.core.model_set import ModelSet
    from inverse_painting.core.loading import find_release
    from inverse_painting.models.lpips_net import load_perceptual_metric
    from inverse_painting.models.text_instruction import TextInstructionGenerator

    tier = TIERS[tier_name]
    models = ModelSet.from_release(release, lazy=True)
    r = Residency("cpu", "cpu", tier.budget_gb * GB if tier.budget_gb else None)
    models.attach_residency(r, release_referencenet=tier.release_referencenet)
    r.register("perceptual_metric", load_perceptual_metric("stlpips_alex"))
    text = None
    for call, name in calls:
        if name == "text_model":
            if text is None and tier.text != "none" and find_release(release).text_model is not None:
                text = TextInstructionGenerator.from_pretrained(
                    find_release(release).text_model, dtype=getattr(torch, {"bf16": "bfloat16", "fp32": "float32",
                                                                             "fp16": "float16"}[text_dtype]))
            continue
        if call == "use":
            r.use(name)
            for t in r.modules[name].parameters():  # read every weight, as a forward pass does (mapped pages
                t.sum()  # of a lazily read .ckpt only count once touched)
        else:
            r.release(name)
    with open("/proc/self/status") as f:
        hwm = next(line for line in f if line.startswith("VmHWM"))
    return int(hwm.split()[1]) / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keyframes", type=int, default=2)
    p.add_argument("--cpu-release", help="a (rehearsal) release: also measure each tier's CPU peak RSS")
    p.add_argument("--text-dtype", default="bf16", choices=["bf16", "fp32", "fp16"])
    p.add_argument("--replay-tier", help=argparse.SUPPRESS)  # one tier in this process (used by --cpu-release)
    a = p.parse_args()
    if a.replay_tier:
        print(f"RSS {cpu_replay(a.cpu_release, a.replay_tier, record_order(a.replay_tier, a.keyframes), a.text_dtype):.2f}")
        return
    sizes = full_size_bytes()
    print("| tier | text model | computed peak weights on the GPU (GB, fp16) | resident at the peak |")
    print("|---|---|---|---|")
    for tier, text, on_device in (("full", "fp16 on the GPU", True), ("12gb", "8-bit (bitsandbytes)", True),
                                  ("12gb", "on the CPU", False), ("8gb", "4-bit (bitsandbytes)", True),
                                  ("8gb", "on the CPU", False), ("notext", "none", True)):
        calls = record_order(tier, a.keyframes)
        gb, names = tier_peak(tier, sizes, calls, on_device)
        print(f"| {tier} | {text} | {gb:.2f} | {', '.join(names)} |", flush=True)
    if a.cpu_release:
        import subprocess
        import sys

        for tier in ("12gb", "8gb", "notext"):  # full: every network at once, ~15 GB at fp32 on the CPU
            run = subprocess.run([sys.executable, __file__, "--cpu-release", a.cpu_release, "--replay-tier", tier,
                                  "--keyframes", str(a.keyframes), "--text-dtype", a.text_dtype],
                                 capture_output=True, text=True)
            rss = [line for line in run.stdout.splitlines() if line.startswith("RSS")]
            print(f"CPU peak RSS, tier {tier} (load / free / re-read order, no forward passes): "
                  f"{rss[-1].split()[1] + ' GB' if rss else 'failed: ' + run.stderr[-300:]}", flush=True)


if __name__ == "__main__":
    main()
