"""One seeded command that builds a small *starter model* from synthetic painting processes.

    python -m inverse_painting.training.starter --out assets/starter_model --seed 0 --jobs 2
    python -m inverse_painting.training.starter --out /tmp/starter_smoke --smoke      # micro scale, ~2 min CPU

Recipe (every stage seeded from ``--seed``; all intermediate files go to ``<out>.work/``):

1. ``synth``: ``--processes`` synthetic painting processes at a ``--size`` px short side (training/synthetic.py);
2. ``ground-truth``: GT masks with the offline metric ``stlpips_alex``, GT text from the synthetic labels,
   the LLaVA conversation set (training/ground_truth.py);
3. base release skeleton (``<work>/skeleton``): the byte-level CLIP tokenizer of core/tiny_release.py, a
   small random *frozen* CLIP text encoder and CLIP vision tower (width ``--context``; they only have to
   tell instructions / images apart, the trained networks learn to read them), and a UNet config sized for
   a starter (``--unet-widths``);
4. ``train-vae``: a small AutoencoderKL (``--vae-widths``; training/trainers/vae.py), L1 + small KL
   (+ ``--vae-perceptual`` x stlpips_alex); its ``scaling_factor`` = 1 / latent std; goes into ``base/vae``;
   then (``decoder``, ``--steps-decoder``) its decoder again, alone, on whole frames, the encoder frozen: the
   latents the next two stages learn on stay the same, the decoded images sharpen;
5. ``train-mask``: the mask generator (RP) from scratch (training/trainers/mask_generator.py);
6. ``train-renderer``: renderer UNet + ReferenceNet + adapters from scratch (``--init random``), as
   v-prediction (``--renderer-prediction``) with a share of pairs ending on the finished painting
   (``--target-pairs``) and a fixed position code on its reference attention (``--renderer-positions``):
   trained like the release (epsilon, consecutive pairs), this small renderer learned to ignore the target,
   and without the code it took the target's colours but not their places (see
   models/reference_attention.py); the target's latents also enter as 4 more UNet input channels
   (``--renderer-target-input``): through reference attention alone it reproduced the target poorly;
7. text generator: a tiny LLaVA (LLaMA text model + CLIP vision tower, llava-hf layout) with a SentencePiece
   tokenizer trained on the prompt template and the instruction vocabulary, randomly initialised, then
   trained with the text trainer (LoRA + projector + the vision tower, which is random here, merged at
   export; training/trainers/text_generator.py);
8. ``rollouts`` (``--text-rollouts``, ``1.0,0.5`` in the full preset, ``none`` skips it; training/text_rollouts.py):
   the trained networks paint every training painting, each keyframe's instruction coming from the real
   label sequence with the given probability (else from the text generator of step 7), and a second text
   generator (``--text-vocab-rollouts``, ``--batch-text-rollouts``, ``--steps-text-rollouts``) is trained on
   the real frames + every canvas the loop showed, labelled with the real sequence (trained on real frames
   alone, the text generator meets canvases it has never seen); with the loop's re-asking
   (``PaintSettings.reask``) it painted better on validation (training/README.md);
9. ``assemble`` into ``--out`` in the release layout (renderer/, RP/, TP_llava/, base/, clip/), weights as
   safetensors only (checkpoints stored in fp16 unless ``--fp32``), plus ``MODEL_CARD.md`` and
   ``starter.json`` (the exact options, per-stage losses and timings).

There is no ``lpips/`` folder: the starter is meant for the offline metric, i.e. paint with
``--metric stlpips_alex`` (CLI) / metric ``stlpips_alex`` (nodes).
"""
from __future__ import annotations

import argparse
import sys
import json
import os
import platform
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CommandLineParser
from ..core.loading import PAINT_DEFAULTS_BEFORE, STARTER_PAINT_DEFAULTS
from ..core.schedule import PREDICTION_TYPES

METRIC = "stlpips_alex"
DECODER_BATCH = 4  # whole frames (a --size crop) per step of the decoder stage

# full recipe and micro ("--smoke") presets; command-line options override them
PRESETS = {
    # 32,64,64,64 VAE + 32,64,64,128 UNets: ~34 MiB with fp16 renderer/RP checkpoints (limit 40 MiB)
    # sized to train in about 3 h 15 min on 2 CPU cores with --jobs 2 (stage times: README, training/README.md)
    "full": dict(processes=240, size=128, aspect=0.8, batch_size=4, vae_crop=64, vae_perceptual=1.0,
                 steps_vae=3000, steps_mask=5000, steps_renderer=8000, steps_text=20000,
                 # the VAE's decoder again, alone, on whole frames (training/README.md: its streaks were what the
                 # renderer's keyframes carried)
                 steps_decoder=1000, lr_decoder=5e-4,
                 vae_widths="32,64,64,64", unet_widths="32,64,64,128", context=128, text_hidden=64,
                 batch_vae=8, lr_vae=5e-4, lr_mask=3e-4, lr_renderer=2e-3, lr_text=5e-4,
                 # consecutive keyframe pairs only, as the release (training/README.md: ending half of them on the
                 # finished painting taught the renderer to skip the block-in)
                 renderer_prediction="v_prediction", target_pairs=0.0, renderer_positions=True, cache_latents=True,
                 # the target's latents as renderer input channels: without them the from-scratch renderer did
                 # not find the target through reference attention alone (training/README.md)
                 renderer_target_input=True,
                 # the text generator is retrained on the loop's own canvases (training/README.md: with the
                 # loop's re-asking, better on 40 validation processes than without; "none" turns them off)
                 text_rollouts="1.0,0.5", steps_text_rollouts=8000, batch_text_rollouts=8, text_vocab_rollouts=512),
    "smoke": dict(processes=2, size=64, aspect=None, batch_size=1, vae_crop=None, vae_perceptual=0.0,
                  steps_vae=20, steps_mask=6, steps_renderer=6, steps_text=8, steps_decoder=4, lr_decoder=1e-3,
                  vae_widths="16,32,32,32", unet_widths="32,32,64,64", context=32, text_hidden=32,
                  batch_vae=2, lr_vae=1e-3, lr_mask=1e-3, lr_renderer=1e-3, lr_text=5e-3,
                  renderer_prediction="v_prediction", target_pairs=0.5, renderer_positions=True, cache_latents=True,
                  renderer_target_input=False,
                  # the smoke build runs every stage, the rollouts too (what the tests check)
                  text_rollouts="1.0", steps_text_rollouts=8, batch_text_rollouts=1, text_vocab_rollouts=384),
}


# options that change where files go or what is printed, never the weights
_NOT_IN_RECIPE = {"--work": 1, "--print-every": 1, "--progress": 0, "--no-progress": 0, "--keep-work": 0,
                  "--no-keep-work": 0, "--stages": 1}

STAGES = ("vae", "decoder", "text", "mask", "renderer", "rollouts")
# the options each stage reads besides the data (--seed, --processes, --size, --aspect, --smoke) and the
# run-time ones; with --stages, an option that changed must belong to a stage being retrained
STAGE_OPTIONS = {
    "vae": {"steps_vae", "lr_vae", "batch_vae", "vae_widths", "vae_kl", "vae_perceptual", "vae_crop"},
    # the decoder alone, encoder frozen: nothing trained on the latents reads it, only what decodes (rollouts)
    "decoder": {"steps_decoder", "lr_decoder", "vae_perceptual"},
    "text": {"steps_text", "lr_text", "text_hidden", "text_lora_r", "batch_text", "text_vocab"},
    "mask": {"steps_mask", "lr_mask", "batch_size", "unet_widths", "context"},
    "renderer": {"steps_renderer", "lr_renderer", "batch_size", "unet_widths", "context", "cache_latents",
                 "renderer_prediction", "target_pairs", "renderer_positions", "renderer_target_input"},
}
# rollouts: paint the training processes with the other four and retrain the text generator on what it saw
# (the mixed rollouts ask the first text generator, so they read its options too)
STAGE_OPTIONS["rollouts"] = {"text_rollouts", "steps_text_rollouts", "batch_text_rollouts",
                             "text_vocab_rollouts"} | STAGE_OPTIONS["text"]
# options added after the first builds, with what a build recorded before them did
_BEFORE_OPTION = {"cache_latents": False, "renderer_prediction": "epsilon", "target_pairs": 0.0,
                  "renderer_positions": False, "renderer_target_input": False, "batch_text": 1, "text_vocab": 384, "text_rollouts": "",
                  "steps_decoder": 0, "lr_decoder": None}
_RUNTIME_OPTIONS = {"jobs", "threads", "print_every", "device", "keep_work", "progress", "stages", "fp32"}
# where each stage writes in <work>/ (removed before it is retrained: the trainers would resume from it)
_STAGE_DIRS = {"vae": ("runs/vae", "skeleton/base/vae"), "decoder": ("runs/decoder",), "text": ("runs/text", "llava_tokenizer", "llava_init"),
               "mask": ("runs/rp",), "renderer": ("runs/renderer",),
               "rollouts": ("runs/text_rollouts", "rollout_model", "data/train/llava_image/rollouts",
                            "llava_tokenizer_rollouts", "llava_init_rollouts")}


def reproduce_command(argv: Sequence[str]) -> str:
    """The command line that rebuilds the same weights (``argv`` minus output/logging-only options)."""
    kept, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        name = a.split("=", 1)[0]
        if name in _NOT_IN_RECIPE:
            skip = _NOT_IN_RECIPE[name] if "=" not in a else 0
            continue
        kept.append(a)
    return "python -m inverse_painting.training.starter " + " ".join(kept)


def _log(msg: str) -> None:
    print(f"[starter {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- base skeleton
def starter_unet_config(widths=(32, 64, 128, 128), context: int = 128, layers_per_block: int = 1) -> dict:
    """SD-layout UNet config (3 cross-attention down blocks + 1 plain, mirrored up) for a starter."""
    from ..core.tiny_release import unet_config

    widths = [int(w) for w in widths]
    cfg = unet_config(widths[0], int(context))
    cfg.update(block_out_channels=widths, layers_per_block=int(layers_per_block),
               norm_num_groups=min(32, min(widths)), attention_head_dim=8 if min(widths) >= 64 else 4,
               sample_size=32)
    return cfg


def write_skeleton(root, unet_cfg: dict, context: int, seed: int) -> Path:
    """base/ (unet config, tokenizer, text encoder; vae/ comes later), clip/ and renderer/config.yaml."""
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModel,
    )

    from ..core.tiny_release import write_byte_tokenizer

    root = Path(root)
    base = root / "base"
    (base / "unet").mkdir(parents=True, exist_ok=True)
    (base / "unet" / "config.json").write_text(json.dumps(unet_cfg, indent=2))
    vocab = write_byte_tokenizer(base / "tokenizer")
    torch.manual_seed(seed)
    heads = max(1, context // 32)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=context, intermediate_size=2 * context,
                                 num_hidden_layers=2, num_attention_heads=heads, max_position_embeddings=77,
                                 bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                                 pad_token_id=vocab["<|endoftext|>"])).save_pretrained(base / "text_encoder")
    clip_dir = root / "clip"
    # the ReferenceNet reads the CLIP target embedding as its context: CLIP width = cross-attention width
    CLIPVisionModel(CLIPVisionConfig(hidden_size=context, intermediate_size=2 * context, num_hidden_layers=2,
                                     num_attention_heads=heads, image_size=224, patch_size=32)).save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(clip_dir)
    (root / "renderer").mkdir(parents=True, exist_ok=True)
    (root / "renderer" / "config.yaml").write_text(
        "use_PE: true\nPE_type: abs\nPE_time_interval: 5\nPE_time_max: 100\nuse_TP: true\nis_train_text_encoder: false\n")
    return root


# ---------------------------------------------------------------------------------------------- tiny LLaVA
def instruction_corpus(data, split: str = "train") -> list[str]:
    """Texts the tokenizer must cover: the v0 prompt with the TP question, and every GT answer."""
    from ..models.text_instruction import (
        ANNOTATOR_QUESTION,
        TP_QUESTION,
        V0_SYSTEM_PROMPT,
    )
    from .trainers.text_generator import read_conversations

    entries, _ = read_conversations(data, split)
    answers = sorted({e["answer"] for e in entries})
    lines = [V0_SYSTEM_PROMPT, TP_QUESTION, ANNOTATOR_QUESTION, "###Human: ", "###Assistant:", "###"]
    lines += [f"###Human: \n{TP_QUESTION}###Assistant: {a}" for a in answers]
    return lines * 4 + answers * 8


def train_sentencepiece(folder, corpus: list[str], vocab_size: int = 384) -> Path:
    """LLaMA-style SentencePiece BPE (byte fallback; <unk>/<s>/</s> = 0/1/2), deterministic (one thread)."""
    import sentencepiece as spm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = str(folder / "tokenizer")
    size = int(vocab_size)
    while True:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(corpus), model_prefix=prefix, vocab_size=size, model_type="bpe",
                byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
                remove_extra_whitespaces=False, split_digits=True, normalization_rule_name="identity",
                character_coverage=1.0, num_threads=1, minloglevel=2)
            break
        except RuntimeError as e:  # a small corpus cannot fill a large vocabulary
            if "Vocabulary size" not in str(e) or size <= 300:
                raise
            size -= 16
    os.remove(prefix + ".vocab")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
         "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None, "model_max_length": 2048,
         "padding_side": "right", "clean_up_tokenization_spaces": False}))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}))
    return folder


def write_tiny_llava(folder, tokenizer_dir, hidden: int = 64, seed: int = 0, image_size: int = 224,
                     patch_size: int = 32) -> Path:
    """A randomly initialised tiny LLaVA in llava-hf layout (+ tokenizer with <image>, CLIP processor).

    Text model: LLaMA, 2 layers, ``hidden`` wide; vision: CLIP ViT 2 layers, ``image_size``/``patch_size``
    (224/32 = 49 image tokens instead of LLaVA-1.5's 576, so that CPU training is quick). The LLM weights
    are drawn wider than HF's default (std 0.02) so that the frozen lm_head can express confident answers
    (the text trainer trains LoRA on the LLM linears + the projector; embeddings and lm_head stay frozen).
    """
    from transformers import (
        AutoTokenizer,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from ..models.text_instruction import IMAGE_PLACEHOLDER, clip_l336_image_processor

    folder = Path(folder)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    n_text = len(tok)
    tok.add_tokens([IMAGE_PLACEHOLDER], special_tokens=True)
    image_id = tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    vocab = -(-(n_text + 1) // 64) * 64  # padded like llava-hf (32000 -> 32064)
    vision = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden,
                              intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=max(1, hidden // 32),
                              projection_dim=hidden, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                       num_attention_heads=max(1, hidden // 16), num_key_value_heads=max(1, hidden // 16),
                       max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       tie_word_embeddings=False)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id, vision_feature_layer=-2,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim < 2 or "vision" in name:
                continue
            if "embed_tokens" in name:
                std = 1.0
            elif "lm_head" in name:
                std = 0.3
            else:
                std = 1.0 / p.shape[1] ** 0.5
            p.copy_(torch.randn(p.shape, generator=g) * std)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    clip_l336_image_processor(image_size).save_pretrained(str(folder))
    return folder


# ---------------------------------------------------------------------------------------------- output
def halve_checkpoints(folder) -> None:
    """Store the nested safetensors checkpoints (renderer/ckpt, RP) in fp16, metadata kept."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for path in list(Path(folder).glob("renderer/ckpt/*.safetensors")) + list(Path(folder).glob("RP/*.safetensors")):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            sd = {k: f.get_tensor(k) for k in f.keys()}
        sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
        tmp = path.with_name(path.name + ".partial")
        save_file(sd, str(tmp), metadata=meta)
        tmp.replace(path)


def folder_size_mb(folder) -> dict:
    sizes = {}
    for p in Path(folder).rglob("*"):
        if p.is_file() and not p.is_symlink():
            part = p.relative_to(folder).parts[0]
            sizes[part] = sizes.get(part, 0) + p.stat().st_size
    return {k: round(v / 2**20, 2) for k, v in sorted(sizes.items())}


def _loss_summary(losses) -> dict:
    losses = list(losses)
    return {"steps": len(losses), "first10": round(float(np.mean(losses[:10])), 5) if losses else None,
            "last10": round(float(np.mean(losses[-10:])), 5) if losses else None}


def _r(v, n=4):
    return round(float(v), n) if isinstance(v, (int, float)) else v


def write_model_card(out: Path, rec: dict) -> None:
    o, st = {**_BEFORE_OPTION, **rec["options"]}, rec["stages"]

    def row(name, key):
        s = st.get(key, {})
        loss = s.get("loss", {})
        return (f"| {name} | {s.get('params_m', '')} | {loss.get('steps', '')} | {loss.get('first10', '')} | "
                f"{loss.get('last10', '')} | {s.get('seconds', '')} |")

    sizes = rec["sizes_mb"]
    vae = st.get("vae", {})
    paint = {**STARTER_PAINT_DEFAULTS, **PAINT_DEFAULTS_BEFORE, **rec.get("paint_defaults", {})}
    decoder = st.get("decoder")
    decoder_row = "\n" + row("VAE decoder again, encoder frozen (shipped)", "decoder") if decoder else ""
    rollout_row = ("\n" + row("text generator again, on real frames + rollout canvases (shipped)", "rollouts")
                   if "rollouts" in st else "")
    retrained = ""
    if rec.get("retrained"):
        retrained = (f"\nThis folder was last rebuilt with `--stages {','.join(rec['retrained'])}` on the work folder of an "
                     "earlier full build (its data and the other networks reused). Every stage is seeded from "
                     "`--seed`, so the command above trains the same networks in one go (on a CPU: with the same number "
                     "of threads per stage)")
        names = {"vae": "VAE", "decoder": "VAE decoder", "text": "text generator", "mask": "mask generator",
                 "renderer": "renderer"}
        painters = [names[n] for n in names if n in rec["retrained"]]
        # the rollouts read every network: reused after one was retrained, they were painted by the old one
        stale = "rollouts" in st and "rollouts" not in rec["retrained"] and painters
        elsewhere = st.get("rollouts", {}).get("rollout_machine")  # same recipe, not the same bits
        where = f" ({elsewhere})" if elsewhere else ""
        if stale:
            many = len(painters) > 1
            retrained += (f", except the text generator: its rollout canvases were reused, painted by the previous "
                          f"{' and '.join(painters)}{where}; the command paints them with the new "
                          f"one{'s' if many else ''}.\n")
        elif elsewhere:
            retrained += (f", except the text generator: its rollout canvases were painted{where}, so a local run "
                          "trains it on slightly different canvases.\n")
        else:
            retrained += ".\n"
    text = f"""# Inverse Painting starter model ({'smoke preset' if o['smoke'] else 'starter recipe'})

A small model trained **only on synthetic painting processes** by the pack's training kit, so that the nodes
and `inverse-painting paint` have real (not random) weights without any download. It is far below the
released models (trained on 294 real painting videos with Stable Diffusion 1.5 weights): expect simple,
blocky layer-by-layer paintings in the style of the synthetic generator.

Reproduce (seeded, CPU or GPU):

```bash
{rec['command']}
```
{retrained}
## Data
- `{o['processes']}` synthetic processes (`training/synthetic.py`, seed {o['seed']}), {o['size']} px short side,
  {rec['data']['pairs']} (cur, next) pairs, {rec['data']['frames']} frames.
- Ground truth: masks = `{METRIC}`(cur, next) > 0.2; text = the generator's step labels
  ({len(rec['data']['instructions'])} distinct instructions: {', '.join(rec['data']['instructions'])}).

## Networks (trained from scratch)
| part | params (M) | steps | loss first10 | loss last10 | seconds |
|---|---|---|---|---|---|
{row('VAE (base/vae)', 'vae')}{decoder_row}
{row('mask generator (RP)', 'mask')}
{row('renderer (UNet + ReferenceNet + adapters)', 'renderer')}
{row('text generator (TP_llava, tiny LLaVA)', 'text')}{rollout_row}

- VAE: AutoencoderKL widths {o['vae_widths']}, 4 latent channels, 8x; L1 + {o['vae_kl']} KL
  (+ {o['vae_perceptual']} {METRIC}); scaling_factor {_r(vae.get('scaling_factor'))} = 1 / latent std
  ({_r(vae.get('latent_std'))}); reconstruction MAE {_r(vae.get('reconstruction_mae_255'), 1)} / 255 on training frames
  (decode of the posterior mean, whole frames).{_decoder_line(o, decoder)}
- Renderer / RP UNets: widths {o['unet_widths']}, cross-attention {o['context']}; text encoder and CLIP vision
  are small **random frozen** CLIP models (byte-level tokenizer) of width {o['context']}.
- Renderer objective: {_renderer_recipe(o)}.
- Text generator: LLaMA {o['text_hidden']} wide x 2 layers + CLIP ViT 224/32, SentencePiece tokenizer
  ({o['text_vocab']} pieces) from the instruction vocabulary; trained by LoRA (r {o['text_lora_r']}) + projector +
  the vision tower (random at the start: frozen, as in the release recipe, the text generator collapsed to
  one or two answers), batch {o['batch_text']}, merged, fp16.
{_rollout_recipe(o, st.get('rollouts'))}
- Renderer/RP checkpoints stored as {'fp32' if o['fp32'] else 'fp16'} safetensors.

Sizes (MiB): {json.dumps(sizes)}; total {rec['total_mb']} MiB.

## Use
- `inverse-painting paint IMAGE --models {out.name}` (the CLI's default model when it is `assets/starter_model`),
  or `{out.name}` in *Load Inverse Painting* with metric `auto` and short side `0`. The folder's
  `starter.json` makes the CLI and the nodes paint at {o['size']} px, with the offline metric **`{METRIC}`**
  (there is no `lpips/` folder), and measure difference masks and the stop rule against the VAE's
  reconstruction of the target (`compare_to = reconstruction`): the small VAE cannot reproduce the target
  within the release's thresholds (0.2 / 0.1), so against the target itself no region would ever look done.
  Each keyframe is rendered from pure noise, as in the release, {_guidance_line(paint.get('scales'))}
  {_reask_line(paint.get('reask', 0))}
  {_end_line(paint.get('finish_frames', 0))}
  These values were picked on validation processes (synthetic seeds 3000 and 4000), not on the benchmark set.
- Text model: `{out.name}/TP_llava` (or write the instructions by hand).
- Reproducibility: every stage is seeded; on a CPU with a given thread count the tests' smoke builds come out
  bit-exact, but two full runs of the renderer stage on the shared 2-core machine ended at different losses
  (same first losses); GPU kernels may differ in the last bits.

## Limits
- Synthetic data only: landscapes of flat/noisy layers (sky, mountains, ground, water, trees, ...) painted in
  blocks; real paintings are out of distribution.
- The VAE (8x, 4 latent channels, {vae.get('params_m', '?')} M parameters) limits sharpness: decoded images are
  blurry and carry vertical stroke-like artefacts (the ST-LPIPS term trades exact pixels for texture); every
  keyframe is decoded by it, so no keyframe is sharper than its reconstruction (the benchmark's bound row).
- The frozen CLIP text/vision encoders are random: the renderer and RP can only use what they separate.
- Small step counts; {'this is the SMOKE preset: outputs are essentially untrained' if o['smoke'] else 'losses have not converged'}.
"""
    ev = rec.get("evaluation")
    if ev:
        overrides = ev.get("overrides") or {}
        own = int(overrides.get("finish_frames", paint.get("finish_frames", 0))) == 0
        sampler = f"{ev['sampler']}, " if ev.get("sampler") else ""
        how = (" **without the finishing cross-fade** (`--finish-frames 0`: the model's own keyframes only)"
               if own and paint.get("finish_frames", 0) else "")
        flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in sorted(overrides.items()) if k != "scales")
        if overrides.get("scales"):
            flags += " --guidance " + " ".join(f"{x:g}" for x in overrides["scales"])
        if int(ev["count"]) != 20:
            flags = f" --count {ev['count']}" + flags
        text += f"""
## Evaluation (held-out synthetic processes)
{ev['count']} processes from seed {ev['seed']} (no painting shared with the training set), painted with the
CLI's defaults unless the command below says otherwise ({sampler}{ev['steps']} denoising steps, fast guidance, seed {ev['paint_seed']}){how}; the
evaluation CLI (`{METRIC}`) against the real processes, next to three naive baselines with the same number of
keyframes per painting (`python -m inverse_painting.evaluation.starter_report --seed {ev['seed']}{flags}`):

{ev['table']}

The starter used {_r(ev.get('keyframes_mean'), 1)} keyframes per painting on average\
{"" if own else _finishing_note(paint)}; the distance between a target and its own VAE reconstruction is
{_r(ev.get('vae_floor'), 3)} on average, a floor for every frame this model decodes.
"""
        if ev.get("notes"):
            text += "\nObserved on this benchmark:\n" + "".join(f"- {n}\n" for n in ev["notes"])
    (out / "MODEL_CARD.md").write_text(text, encoding="utf-8")


def _decoder_line(o: dict, d: dict | None) -> str:
    """The card's sentence on the decoder stage (``d``: its record)."""
    if not d:
        return ""
    return (f"\n  Then its decoder alone, {o['steps_decoder']} steps on whole frames (batch {DECODER_BATCH}, lr "
            f"{o['lr_decoder']:g}), the encoder and scaling factor frozen, so the latents the other networks learn on "
            f"are the same: reconstruction MAE {_r(d.get('reconstruction_mae_255'), 1)} / 255.")


def _guidance_line(scales) -> str:
    """The card's clause on the guidance scales the folder paints with."""
    def shown(values):
        return ", ".join(f"{float(x):g}" for x in values)

    release = shown(PAINT_DEFAULTS_BEFORE["scales"])
    if scales is None or shown(scales) == release:
        return f"with the release's guidance scales ({release})."
    if all(float(x) == 1.0 for x in scales):
        return (f"with every guidance scale at 1 (`scales`: the fully conditioned prediction alone, one UNet pass per "
                f"step); the release's ({release}) pushed this small renderer's colours off the target and kept "
                "its keyframes further from it (training/README.md).")
    return f"with guidance scales ({shown(scales)}) (`scales`; the release: {release})."


def _reask_line(reask: int) -> str:
    """The card's sentence on ``PaintSettings.reask``."""
    if not reask:
        return "The loop keeps the text generator's answer even when its region looks finished (`reask = 0`, the release)."
    return (f"When the mask generator finds the named region finished for the second time, or the last keyframe "
            f"for that answer changed no region of the canvas, the loop asks the text generator for its next answers "
            f"(`reask = {reask}`, beam search) and paints the first one with a region; the release keeps the answer, "
            "and this small generator would stall on a finished region. When an answer that changed nothing comes "
            "back and no other has a region, the loop stops (`nothing_left_to_paint`).")


def _finishing_note(paint: dict) -> str:
    """The card's evaluation clause on the finishing keyframes counted in the mean."""
    n = paint.get("finish_frames", 0)
    return f", the last {n} of each cross-fading to the painting" if n else ""


def _end_line(finish: int) -> str:
    """The card's sentences on the stop and ``PaintSettings.finish_frames``."""
    stop = "The loop's other stops are the release's (close to the target, or the canvas no longer changing)."
    end = (f"After the stop, {finish} keyframes cross-fade (in pixels) from the last keyframe to the painting itself "
           f"(`finish_frames = {finish}`), so the time-lapse ends on the painting; the model does not render them "
           "(the manifest marks them `finishing`)." if finish
           else "The time-lapse ends on the last rendered keyframe (`finish_frames = 0`, the release).")
    return f"{stop}\n  {end}"


def _rollout_recipe(o: dict, r: dict | None) -> str:
    """The card's line on the text generator's rollouts (``r``: the rollouts stage's record)."""
    if not r:
        return "- The text generator was trained on real frames only (no `--text-rollouts`)."
    agree = "" if r.get("model_agreement") is None else (
        f"; on the mixed rollouts the first generator agreed with the expert on {100 * r['model_agreement']:.0f} % "
        "of its answers")
    return (f"- Rollouts (`--text-rollouts {o['text_rollouts']}`, training/text_rollouts.py): the four networks painted "
            f"each training painting once per expert share ({r['rollouts']} rollouts, {r['canvases']} canvases); each "
            "keyframe's instruction came from the real label sequence (the expert) with that probability, else from "
            "the text generator above, and every canvas was labelled with the expert's instruction. The shipped text "
            f"generator is a new one of the same size ({o['text_vocab_rollouts']} pieces, batch "
            f"{o['batch_text_rollouts']}, {o['steps_text_rollouts']} steps) trained on the real frames + these "
            f"canvases{agree}.")


def _renderer_recipe(o: dict) -> str:
    """The renderer's training objective in words (``o``: the options with :data:`_BEFORE_OPTION` filled in)."""
    pred = ("**v-prediction** (`prediction_type: v_prediction` in `renderer/config.yaml`; the release predicts "
            "epsilon)" if o["renderer_prediction"] == "v_prediction" else "epsilon-prediction, as the release")
    pairs = (f"{o['target_pairs']:g} of the pairs end on the finished painting (`--target-pairs`; the release "
             "uses consecutive keyframes only)" if float(o["target_pairs"]) > 0 else "consecutive keyframe pairs, as the release")
    where = ("a fixed position code on the reference attention (`reference_position_encoding: true`; the release "
             "has none)" if o["renderer_positions"] else "reference attention without a position code, as the release")
    if o["renderer_target_input"]:
        where += ("; the target's latents as 4 more UNet input channels (`target_input: true`; the release reads "
                  "the target only through the ReferenceNet)")
    return f"{pred}; {pairs}; {where}; lr {o['lr_renderer']:g} (cosine), batch {o['batch_size']}"


def rewrite_card(out, evaluation: dict | None = None) -> dict:
    """Re-render MODEL_CARD.md from ``starter.json`` (optionally recording an evaluation first)."""
    import shlex

    out = Path(out)
    rec = json.loads((out / "starter.json").read_text())
    rec["command"] = reproduce_command(shlex.split(rec["command"])[3:])
    rec.setdefault("paint_defaults", dict(STARTER_PAINT_DEFAULTS))
    if evaluation is not None:
        rec["evaluation"] = evaluation
    (out / "starter.json").write_text(json.dumps(rec, indent=1))
    write_model_card(out, rec)
    return rec


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(prog="python -m inverse_painting.training.starter",
                                description="Build a seeded starter model from synthetic painting processes.")
    p.add_argument("--out", required=True, help="the model folder to write (release layout)")
    p.add_argument("--work", default=None, help="intermediate files (default: <out>.work)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="micro preset: everything in a few steps (minutes on CPU)")
    p.add_argument("--processes", type=int)
    p.add_argument("--size", type=int, help="short side of the synthetic paintings (px)")
    p.add_argument("--aspect", type=float,
                   help="fixed width/height of every painting (full preset 0.8, portrait 4:5; smoke: random "
                        "common canvas shapes); a fixed aspect allows --batch-size > 1")
    p.add_argument("--batch-size", type=int, help="pairs per step of the mask generator and renderer")
    for part in ("vae", "mask", "renderer", "text"):
        p.add_argument(f"--steps-{part}", type=int)
        p.add_argument(f"--lr-{part}", type=float)
    p.add_argument("--batch-vae", type=int)
    p.add_argument("--steps-decoder", type=int,
                   help="steps of the VAE's decoder trained again alone, on whole frames, its encoder frozen (the "
                        "latents the other networks learn on do not change; 0: skip; full preset 1000)")
    p.add_argument("--lr-decoder", type=float)
    p.add_argument("--vae-widths")
    p.add_argument("--vae-kl", type=float, default=1e-6)
    p.add_argument("--vae-perceptual", type=float, help="weight of the stlpips_alex term (texture: a tiny VAE "
                   "trained on L1 alone blurs the strokes away)")
    p.add_argument("--unet-widths")
    p.add_argument("--context", type=int, help="cross-attention / CLIP width")
    p.add_argument("--text-hidden", type=int)
    p.add_argument("--text-lora-r", type=int, default=0, help="0 = the text model's hidden size")
    p.add_argument("--batch-text", type=int, default=1, help="conversations per step of the text generator")
    p.add_argument("--text-vocab", type=int, default=384,
                   help="SentencePiece vocabulary of the text generator (256 of it are byte pieces; 512 makes "
                        "every instruction word of the synthetic data one piece; a corpus too small to fill it gets "
                        "a smaller one)")
    p.add_argument("--text-rollouts",
                   help="expert shares of the rollouts that retrain the text generator on the loop's own canvases "
                        "(training/text_rollouts.py), e.g. 1.0,0.5 (full preset): one rollout led by the real label "
                        "sequence, one where the model answers half the keyframes; 'none': real frames only")
    p.add_argument("--steps-text-rollouts", type=int, help="steps of the text generator trained on the rollouts")
    p.add_argument("--batch-text-rollouts", type=int, help="its batch (full preset 8)")
    p.add_argument("--text-vocab-rollouts", type=int, help="its SentencePiece vocabulary (full preset 512)")
    p.add_argument("--vae-crop", type=int, help="square crop of the VAE's training frames (px; default --size)")
    p.add_argument("--cache-latents", action=argparse.BooleanOptionalAction, default=None,
                   help="the renderer keeps each frame's VAE posterior after its first encode (~1.5x faster steps on "
                        "CPU; full preset: on); same statistics, but not the weights of a build without it")
    p.add_argument("--renderer-prediction", choices=list(PREDICTION_TYPES),
                   help="what the renderer UNet predicts (the release: epsilon; full preset: v_prediction, written "
                        "to renderer/config.yaml): a small renderer trained from scratch on epsilon learns to "
                        "ignore the target")
    p.add_argument("--target-pairs", type=float,
                   help="share of renderer training pairs whose next frame is the finished painting (0 = the "
                        "release's consecutive pairs only; full preset 0.5)")
    p.add_argument("--renderer-positions", action=argparse.BooleanOptionalAction, default=None,
                   help="add a fixed position code to the renderer's reference attention (not in the release; "
                        "full preset: on): without one, a renderer trained from scratch takes the target's "
                        "colours but not where they go")
    p.add_argument("--renderer-target-input", action=argparse.BooleanOptionalAction, default=None,
                   help="give the renderer UNet the target's latents as 4 more input channels (not in the release; "
                        "written to renderer/config.yaml as target_input; full preset: on): a small renderer trained "
                        "from scratch does not find the target through its reference attention alone")
    p.add_argument("--jobs", type=int, default=1, choices=[1, 2],
                   help="2 = train in two processes: [VAE -> renderer] next to [text -> mask]")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process with --jobs 2 (0 = cores / 2)")
    p.add_argument("--print-every", type=int, default=0, help="print the mean loss every N steps")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (accelerate picks the GPU)")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--fp32", action="store_true", help="keep renderer/RP checkpoints in fp32")
    p.add_argument("--keep-work", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--stages", default="all",
                   help="comma-separated subset of vae,decoder,text,mask,renderer,rollouts to retrain in an existing --work "
                        "of a previous build (its data and the other stages' runs are reused; every stage is seeded, "
                        "so the result equals a full build with the same options; the rollouts, which read every "
                        "network, are always redone); default: all")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    return p


def resolve_options(argv: Sequence[str] | None) -> dict:
    a = build_parser().parse_args(argv)
    preset = PRESETS["smoke" if a.smoke else "full"]
    o = dict(vars(a))
    for k, v in preset.items():
        if o.get(k) is None:
            o[k] = v
    if not o["text_lora_r"]:
        o["text_lora_r"] = int(o["text_hidden"])
    o["text_rollouts"] = ",".join(str(float(x)) for x in rollout_shares(o["text_rollouts"]))
    names = STAGES if o["stages"] in ("all", "", None) else [n.strip() for n in str(o["stages"]).split(",") if n.strip()]
    unknown = sorted(set(names) - set(STAGES))
    if unknown:
        raise SystemExit(f"--stages: unknown stage(s) {unknown}; choose from {','.join(STAGES)}")
    if "vae" in names:  # the mask generator and the renderer are trained on the VAE's latents, the decoder after it
        names = list(names) + ["decoder", "mask", "renderer"]
    names = list(names) + ["rollouts"]  # the rollouts read every network: redone whenever one is retrained
    o["stages"] = tuple(n for n in all_stages(o) if n in names)
    return o


def rollout_shares(value) -> list[float]:
    """``--text-rollouts`` as a list of expert shares ("" / "none": no rollouts)."""
    text = str(value or "").strip().lower()
    if text in ("", "none", "0", "off"):
        return []
    shares = [float(x) for x in text.split(",") if x.strip()]
    if any(not 0.0 <= x <= 1.0 for x in shares):
        raise SystemExit(f"--text-rollouts: expert shares must lie in [0, 1], got {value!r}")
    return shares


def all_stages(o: dict) -> tuple[str, ...]:
    """The stages of a full build with options ``o`` (no ``decoder`` without its steps, no ``rollouts`` without
    expert shares)."""
    skip = {"decoder"} if not int(o.get("steps_decoder") or 0) else set()
    if not rollout_shares(o.get("text_rollouts")):
        skip.add("rollouts")
    return tuple(s for s in STAGES if s not in skip)


def previous_build(out: Path, work: Path, o: dict) -> dict:
    """The record of the build in ``out`` / ``work`` that ``--stages`` retrains part of.

    Refuses when a file it reuses is missing, or when an option changed that a reused stage (or the data)
    reads: the result would no longer be what the recorded command builds.
    """
    for need in (out / "starter.json", work / "skeleton", work / "data"):
        if not need.exists():
            raise SystemExit(f"--stages needs a previous full build with its work folder: {need} is missing")
    prev = json.loads((out / "starter.json").read_text())
    # a stage the options switch off (rollouts without expert shares) reuses nothing either
    retrained = set(o["stages"]) | (set(STAGES) - set(all_stages(o)))
    parser = build_parser()
    for k in sorted((set(o) | set(prev["options"])) - _RUNTIME_OPTIONS - {"out", "work"}):
        # an option newer than the previous build's record: what builds did before it existed
        before = prev["options"].get(k, _BEFORE_OPTION.get(k, parser.get_default(k)))
        if o.get(k) == before:
            continue
        owners = {s for s in STAGES if k in STAGE_OPTIONS[s]}
        if not owners or not owners <= retrained:
            raise SystemExit(f"--{k.replace('_', '-')} differs from the previous build ({before!r} -> "
                             f"{o.get(k)!r}) and is read by stage(s) not retrained "
                             f"({', '.join(sorted(owners - retrained)) or 'the data'}): run a full build")
    return prev


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    o = resolve_options(argv)
    build(o, argv)
    return 0


def _stage_common(o: dict) -> dict:
    cpu = o["device"] == "cpu" or (o["device"] == "auto" and not torch.cuda.is_available())
    return dict(cpu=cpu, progress=bool(o["progress"]), tensorboard=False, log_every=0, seed=int(o["seed"]),
                mixed_precision=o["mixed_precision"], metric=METRIC, print_every=int(o["print_every"]),
                lr_schedule="cosine", warmup_ratio=0.02)


def _params_m(model) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 3)


def _exit_with(parent_pid: int) -> None:
    """In a lane's worker process: exit when the build process is gone (killed or interrupted), instead of
    training on as an orphan that writes into the work folder a new build is using."""
    import threading

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def run_stage(name: str, o: dict, work: str, threads: int = 0, parent_pid: int | None = None) -> dict:
    """Train one network of the recipe (``vae``, ``mask``, ``renderer``, ``text``, or ``text_rollouts``: the
    text generator again, once the rollouts are written); returns its record.

    A top-level function so that the lanes can run it in worker processes. Every stage seeds itself from
    ``--seed`` (the shared loop's (seed, step, rank) generators), so the result does not depend on which
    lane or process runs it, only on the stages it reads (mask and renderer read the VAE).
    """
    from .trainers import mask_generator, renderer
    from .trainers import vae as vae_trainer
    from .trainers.common import TrainConfig
    from .trainers.renderer import RendererConfig
    from .trainers.vae import VAEConfig

    if parent_pid is not None:
        _exit_with(parent_pid)
    if threads:
        torch.set_num_threads(int(threads))
    work = Path(work)
    data, skel, runs = work / "data", work / "skeleton", work / "runs"
    common = _stage_common(o)
    t = time.time()
    _log(f"{name}: start")
    if name == "vae":
        res = vae_trainer.train(VAEConfig(data=str(data), out=str(runs / "vae"), steps=o["steps_vae"],
                                          lr=o["lr_vae"], batch_size=o["batch_vae"], widths=o["vae_widths"],
                                          crop=int(o["vae_crop"] or o["size"]), kl_weight=o["vae_kl"],
                                          perceptual_weight=o["vae_perceptual"], **common))
        shutil.copytree(runs / "vae" / "vae", skel / "base" / "vae")
        rec = json.loads((runs / "vae" / "vae_stats.json").read_text())
        model = res["model"]
    elif name == "decoder":  # installed into the skeleton by run_stages, once no other stage is reading it
        res = vae_trainer.train(VAEConfig(data=str(data), base=str(runs / "vae" / "vae"), out=str(runs / "decoder"),
                                          steps=o["steps_decoder"], lr=o["lr_decoder"], batch_size=DECODER_BATCH,
                                          crop=int(o["size"]), perceptual_weight=o["vae_perceptual"], init="base",
                                          part="decoder", **common))
        rec = json.loads((runs / "decoder" / "vae_stats.json").read_text())
        model = res["model"].vae.decoder
    elif name == "mask":
        res = mask_generator.train(TrainConfig(data=str(data), base=str(skel), out=str(runs / "rp"),
                                               steps=o["steps_mask"], lr=o["lr_mask"], batch_size=o["batch_size"],
                                               complete_release=False, **common))
        rec, model = {}, res["model"]
    elif name == "renderer":
        res = renderer.train(RendererConfig(data=str(data), base=str(skel), out=str(runs / "renderer"),
                                            steps=o["steps_renderer"], lr=o["lr_renderer"], init="random",
                                            batch_size=o["batch_size"], complete_release=False,
                                            cache_latents=bool(o["cache_latents"]),
                                            prediction_type=o["renderer_prediction"],
                                            target_pair_prob=float(o["target_pairs"]),
                                            reference_position_encoding=bool(o["renderer_positions"]),
                                            target_input=bool(o["renderer_target_input"]), **common))
        rec, model = {}, res["model"]
    elif name == "text":
        res = _train_text(o, work, data, "", o["text_vocab"], o["batch_text"], o["steps_text"])
        rec, model = {}, res["generator"].model
    elif name == "text_rollouts":
        # a new text generator (its own tokenizer and initial weights) on the real frames + the rollouts' canvases
        from .text_rollouts import ROLLOUT_JSON

        res = _train_text(o, work, data / "train" / ROLLOUT_JSON, "_rollouts", o["text_vocab_rollouts"],
                          o["batch_text_rollouts"], o["steps_text_rollouts"])
        rec, model = {}, res["generator"].model
    else:
        raise ValueError(f"unknown stage {name!r}")
    rec.update(loss=_loss_summary(res["losses"]), seconds=round(time.time() - t, 1), params_m=_params_m(model))
    _log(f"{name}: done in {rec['seconds']} s (loss {rec['loss']['first10']} -> {rec['loss']['last10']})")
    return rec


def _train_text(o: dict, work: Path, data, suffix: str, vocab: int, batch: int, steps: int) -> dict:
    """A text generator: a SentencePiece tokenizer of ``vocab`` pieces from the instruction vocabulary
    (``<work>/llava_tokenizer<suffix>``), a seeded random tiny LLaVA (``<work>/llava_init<suffix>``), trained on
    the conversations of ``data`` (a data root or one conversation file) into ``<work>/runs/text<suffix>``."""
    from .trainers import text_generator
    from .trainers.text_generator import TextConfig

    tok_dir = train_sentencepiece(work / f"llava_tokenizer{suffix}", instruction_corpus(work / "data"), int(vocab))
    base = write_tiny_llava(work / f"llava_init{suffix}", tok_dir, hidden=int(o["text_hidden"]), seed=int(o["seed"]))
    r = int(o["text_lora_r"])
    common = _stage_common(o)
    return text_generator.train(TextConfig(data=str(data), base=str(base), out=str(work / "runs" / f"text{suffix}"),
                                           steps=int(steps), lr=o["lr_text"], projector_lr=o["lr_text"],
                                           batch_size=int(batch),
                                           lora_r=r, lora_alpha=2 * r, lora_dropout=0.0, save_adapter=False,
                                           train_vision_tower=True,  # random tower: frozen, it collapses
                                           export_dtype="float16", **{**common, "mixed_precision": "no"}))


def rollout_model(o: dict, work: Path) -> Path:
    """``<work>/rollout_model``: the trained networks of ``<work>/runs`` as one model folder (linked), painting
    with the starter's defaults, for the rollouts."""
    from .cli import assemble

    dest, runs = work / "rollout_model", work / "runs"
    shutil.rmtree(dest, ignore_errors=True)
    assemble(dest, base=str(work / "skeleton"), renderer=str(runs / "renderer"), mask=str(runs / "rp"),
             text=str(runs / "text"), link_base=True, link_trained=True)
    # (``reask`` does nothing here: the expert mixture that gives the rollouts' instructions has no alternatives)
    (dest / "starter.json").write_text(json.dumps({"options": {"size": int(o["size"])},
                                                   "paint_defaults": dict(STARTER_PAINT_DEFAULTS)}))
    return dest


def run_rollouts(o: dict, work: str, shard: tuple[int, int] = (0, 1), threads: int = 0,
                 parent_pid: int | None = None) -> dict:
    """One shard of the rollouts (every ``shard[1]``-th training process): canvases + conversations."""
    from .text_rollouts import write_rollouts

    if parent_pid is not None:
        _exit_with(parent_pid)
    if threads:
        torch.set_num_threads(int(threads))
    work = Path(work)
    device = "cpu" if _stage_common(o)["cpu"] else "cuda"
    return write_rollouts(work / "rollout_model", work / "data", "train", rollout_shares(o["text_rollouts"]),
                          seed=int(o["seed"]), device=device, shard=shard,
                          log=lambda m: _log(f"rollouts {shard[0]}/{shard[1]}: {m}"))


def run_rollout_stage(o: dict, work: Path, pool=None, threads: int = 0) -> dict:
    """Paint every training process with the trained networks (``--text-rollouts`` expert shares), then
    retrain the text generator on the real frames + the canvases the loop showed it (training/text_rollouts.py).

    ``pool``: the lanes' worker pool (``--jobs 2``): the processes are split between its two workers, and
    the retraining runs in one of them, as the text stage does.
    """
    from .text_rollouts import merge_rollouts

    t = time.time()
    _log(f"rollouts: expert shares {o['text_rollouts']}")
    rollout_model(o, work)
    if pool is None:
        parts = [run_rollouts(o, str(work))]
    else:
        me = os.getpid()
        parts = [f.result() for f in [pool.submit(run_rollouts, o, str(work), (i, 2), threads, me) for i in (0, 1)]]
    merge_rollouts(work / "data", "train")
    stats = {k: sum(p[k] for p in parts) for k in parts[0]}
    seconds = round(time.time() - t, 1)
    _log(f"rollouts: {stats['canvases']} canvases from {stats['rollouts']} rollouts in {seconds} s")
    if pool is None:
        rec = run_stage("text_rollouts", o, str(work))
    else:
        rec = pool.submit(run_stage, "text_rollouts", o, str(work), threads, os.getpid()).result()
    agree = stats["model_right"] / stats["model_answers"] if stats["model_answers"] else None
    rec.update(rollouts=stats["rollouts"], canvases=stats["canvases"], rollout_seconds=seconds,
               model_agreement=None if agree is None else round(agree, 4), seconds=round(time.time() - t, 1))
    return rec


def run_stages(o: dict, work: Path) -> dict:
    """The trainings of ``o["stages"]``, in two lanes when ``--jobs 2``: [VAE -> renderer] and [text -> mask],
    then the rollouts (split between the two workers), which read every network.

    The mask generator and the renderer read the VAE's latents, so they start after it; the text generator
    needs only the images. With one job everything runs in this process, in the same order. With two, the
    stages always run in worker processes with the lanes' thread count (also when only one is retrained), so
    that a partial rebuild computes exactly what the full build did.
    """
    names = o["stages"]
    if int(o["jobs"]) <= 1:
        stages = {name: run_stage(name, o, str(work)) for name in names if name != "rollouts"}
        install_decoder(work, names)
        if "rollouts" in names:
            stages["rollouts"] = run_rollout_stage(o, work)
        return stages
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 2) // 2) if o["threads"] == 0 else int(o["threads"])
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as pool:
        me = os.getpid()
        futures = {n: pool.submit(run_stage, n, o, str(work), threads, me) for n in ("vae", "text") if n in names}
        stages = {"vae": futures.pop("vae").result()} if "vae" in futures else {}
        for n in ("renderer", "mask", "decoder"):  # the renderer, the longest, takes the first free worker
            if n in names:
                futures[n] = pool.submit(run_stage, n, o, str(work), threads, me)
        stages.update({n: f.result() for n, f in futures.items()})
        install_decoder(work, names)
        if "rollouts" in names:  # reads every network: after both lanes
            stages["rollouts"] = run_rollout_stage(o, work, pool, threads)
    return {n: stages[n] for n in names}


def install_decoder(work: Path, names) -> None:
    """The retrained decoder's VAE (same encoder, same scaling factor) becomes the skeleton's ``base/vae``, which
    the rollouts and the assembled folder read; done after the lanes, so that no stage is loading it meanwhile."""
    if "decoder" not in names:
        return
    vae = work / "skeleton" / "base" / "vae"
    shutil.rmtree(vae, ignore_errors=True)
    shutil.copytree(work / "runs" / "decoder" / "vae", vae)


def _prepare_data(o: dict, work: Path, rec: dict) -> None:
    """Steps 1-3: synthetic processes, ground truth (masks, text, LLaVA set) and the base skeleton."""
    from .ground_truth import write_ground_truth
    from .synthetic import generate_dataset
    from .trainers.data import PairDataset

    t = time.time()
    data = work / "data"
    _log(f"synth {o['processes']} processes at {o['size']} px")
    paintings = generate_dataset(str(data), o["processes"], int(o["seed"]), size=int(o["size"]), aspect=o["aspect"])
    _log("ground truth (stlpips_alex masks, label text, LLaVA set)")
    write_ground_truth(data, "train", metric_name=METRIC)
    pairs = len(PairDataset(str(data), "train", metric=None, need_next_mask=False, need_target_mask=False))
    instructions = sorted({lab for p in paintings for lab in p["labels"].values()} if paintings and isinstance(
        paintings[0]["labels"], dict) else {lab for p in paintings for lab in p["labels"]})
    rec["data"] = {"pairs": pairs, "frames": sum(p["frames"] for p in paintings), "instructions": instructions}
    rec["stages"]["data"] = {"seconds": round(time.time() - t, 1)}
    widths = [int(w) for w in str(o["unet_widths"]).split(",")]
    write_skeleton(work / "skeleton", starter_unet_config(widths, o["context"]), int(o["context"]), int(o["seed"]))


def build(o: dict, argv: Sequence[str] = ()) -> dict:
    from .cli import assemble

    t_all = time.time()
    out = Path(o["out"])
    work = Path(o["work"]) if o.get("work") else out.with_name(out.name + ".work")
    partial = o["stages"] != all_stages(o)
    prev = previous_build(out, work, o) if partial else None
    for d, mark in ((out, "starter.json"), (work, "skeleton")):  # only ever replace a previous starter build
        if d.exists() and any(d.iterdir()) and not (d / mark).exists():
            raise FileExistsError(f"{d} exists and is not a previous starter build: choose another --out/--work")
    if work.exists() and not partial:
        shutil.rmtree(work)
    seed = int(o["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)
    cpu = _stage_common(o)["cpu"]
    options = {k: v for k, v in o.items() if k not in ("out", "work", "stages")}
    rec = {"options": options, "stages": {},
           "command": reproduce_command(argv or ["--out", str(out)]),
           "paint_defaults": dict(STARTER_PAINT_DEFAULTS),
           "torch": torch.__version__, "machine": platform.machine(), "device": "cpu" if cpu else "cuda"}
    if partial:
        # reuse the data, skeleton and other stages of the previous build; retrain the rest from scratch
        for name in o["stages"]:
            for rel in _STAGE_DIRS[name]:
                shutil.rmtree(work / rel, ignore_errors=True)
        rec["data"] = prev["data"]
        rec["stages"] = {k: v for k, v in prev["stages"].items() if k not in o["stages"]}
        rec["retrained"] = list(o["stages"])
        _log(f"retraining {', '.join(o['stages'])} in {work}")
    else:
        work.mkdir(parents=True)
        _prepare_data(o, work, rec)
    rec["stages"].update(run_stages(o, work))
    rec["stages"] = {k: rec["stages"][k] for k in ("data",) + STAGES if k in rec["stages"]}
    skel = work / "skeleton"

    # 9: assemble (the previous model stays in place until the new one is trained)
    _log(f"assemble -> {out}")
    if out.exists():
        shutil.rmtree(out)
    assemble(out, base=str(skel), renderer=str(work / "runs" / "renderer"), mask=str(work / "runs" / "rp"),
             text=str(work / "runs" / ("text_rollouts" if "rollouts" in all_stages(o) else "text")),
             link_base=False, link_trained=False)
    for f in list(out.glob("renderer/ckpt/*.ckpt")) + list(out.glob("RP/*.ckpt")):
        f.unlink()  # safetensors only
    (out / "assembled.json").unlink(missing_ok=True)
    if not o["fp32"]:
        halve_checkpoints(out)
    rec["sizes_mb"] = folder_size_mb(out)
    rec["total_mb"] = round(sum(rec["sizes_mb"].values()), 2)
    rec["seconds"] = round(time.time() - t_all, 1)
    (out / "starter.json").write_text(json.dumps(rec, indent=1))
    write_model_card(out, rec)
    if not o["keep_work"]:
        shutil.rmtree(work)
    _log(f"done in {rec['seconds']} s: {out} ({rec['total_mb']} MiB)")
    return rec


if __name__ == "__main__":
    from ..core.errors import run_command

    raise SystemExit(run_command(main, "--debug" in sys.argv))
