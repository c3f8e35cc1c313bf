"""Tiny random LLaVA fixtures for the text-instruction tests (offline, CPU, about a second).

Builds one tiny ``LlavaForConditionalGeneration`` (CLIP vision 336/14 -> 576 patches, hidden 32,
2 layers; LLaMA text model hidden 32, 2 layers) and a tiny LLaMA-style SentencePiece tokenizer
trained on the spot, then writes the SAME weights in several layouts:

* llava-hf layout (``save_pretrained``, model_type "llava");
* released original-LLaVA layout (``TP_llava``: model_type "llava_llama" + ``mm_*`` fields,
  ``model.*`` / ``lm_head.*`` / ``model.mm_projector.{0,2}.*`` keys, sharded with an index json),
  with the vision tower saved under ``model.vision_tower.vision_tower.vision_model.*`` or not;
* a local CLIP-L/336-format folder (full ``CLIPModel`` checkpoint: ``vision_model.*`` plus text
  tower and projections, ``pytorch_model.bin``, old-style preprocessor config).

The key names are written out here independently of the loader's remap, from the released
manifests (shared/reference/manifests/TP_llava_*.json).
"""

from __future__ import annotations

import json
import os
import random

import torch

TEXT_VOCAB = 400          # SentencePiece pieces: <unk>/<s>/</s> = 0/1/2, 256 byte pieces, merges
IMAGE_TOKEN_ID = TEXT_VOCAB
HF_VOCAB = 448            # padded to a multiple of 64, like llava-hf (32000 -> 32064)
HUB_TOWER = "openai/clip-vit-large-patch14-336"

_WORDS = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions. There are two images side by "
    "side. The left image is an intermediate stage in a painting process of the right image. Please "
    "tell me what content should be painted next? The answer should be less than 2 words. The right "
    "image is the next step of the left image in the painting process of a painting. Please tell me "
    "what is added to right image? Mountain mountain, ground Grass Water reflection sky tree house "
    "river cloud Human: Assistant: ###"
).split()


def train_tiny_sentencepiece(folder: str) -> str:
    """Train a LLaMA-like SentencePiece BPE model (byte fallback, ids 0/1/2) into ``folder``.

    Writes tokenizer.model plus the tokenizer_config.json / special_tokens_map.json that a LLaVA
    release ships. Deterministic: fixed corpus and one trainer thread.
    """
    import sentencepiece as spm

    os.makedirs(folder, exist_ok=True)
    rng = random.Random(0)
    syllables = ["ka", "lo", "mi", "ne", "ra", "tu", "sho", "pe", "an", "el", "or", "is", "un", "ba", "di"]
    words = _WORDS * 3 + ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    corpus = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)]
    prefix = os.path.join(folder, "tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=prefix, vocab_size=TEXT_VOCAB, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        remove_extra_whitespaces=False, split_digits=True, normalization_rule_name="identity",
        character_coverage=1.0, num_threads=1, minloglevel=2,
    )
    os.remove(prefix + ".vocab")
    write_llama_tokenizer_config(folder)
    return os.path.join(folder, "tokenizer.model")


def write_llama_tokenizer_config(folder: str) -> None:
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
                   "legacy": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "pad_token": None, "model_max_length": 2048, "padding_side": "right",
                   "clean_up_tokenization_spaces": False}, f)
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, f)


def tiny_configs():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    # One vision head: the loader infers hidden // 64 heads (min 1) from saved shapes, as for
    # every OpenAI CLIP ViT, when no CLIP folder config is available.
    vision = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=32, intermediate_size=37,
                              num_hidden_layers=2, num_attention_heads=1, projection_dim=16,
                              hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = LlamaConfig(vocab_size=HF_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       tie_word_embeddings=False)
    llava = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID,
                        vision_feature_layer=-2, vision_feature_select_strategy="default",
                        projector_hidden_act="gelu", tie_word_embeddings=False)
    return llava


def build_tiny_llava(seed: int = 0):
    """The tiny model with weights scaled up so that greedy outputs depend on the image."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(tiny_configs()).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if p.ndim >= 2:  # random init std 0.02 gives near-uniform logits; widen it
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "vision" not in name else 0.05))
    return model


def original_state_dict(model, with_vision_tower: bool = True) -> dict[str, torch.Tensor]:
    """The model's weights under the released original-LLaVA key names (text vocab rows only)."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().clone().contiguous()
        if k.startswith("model.language_model."):
            name = "model." + k[len("model.language_model."):]
            if name == "model.embed_tokens.weight":
                v = v[:TEXT_VOCAB].clone()
        elif k == "lm_head.weight":
            name, v = k, v[:TEXT_VOCAB].clone()
        elif k.startswith("model.multi_modal_projector.linear_1."):
            name = "model.mm_projector.0." + k.rsplit(".", 1)[1]
        elif k.startswith("model.multi_modal_projector.linear_2."):
            name = "model.mm_projector.2." + k.rsplit(".", 1)[1]
        elif k.startswith("model.vision_tower."):
            if not with_vision_tower:
                continue
            name = "model.vision_tower.vision_tower.vision_model." + k[len("model.vision_tower."):]
        else:
            raise KeyError(k)
        out[name] = v
    return out


def original_config(mm_vision_tower: str = HUB_TOWER) -> dict:
    """config.json of a LLaVA-1.5 merge (LlavaLlamaForCausalLM), tiny sizes."""
    return {
        "_name_or_path": "./checkpoints/llava-v1.5-7b-task-lora_final", "architectures": ["LlavaLlamaForCausalLM"],
        "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2, "freeze_mm_mlp_adapter": False,
        "hidden_act": "silu", "hidden_size": 32, "image_aspect_ratio": "pad", "initializer_range": 0.02,
        "intermediate_size": 64, "max_length": 4096, "max_position_embeddings": 1024, "mm_hidden_size": 32,
        "mm_patch_merge_type": "flat", "mm_projector_lr": None, "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2, "mm_vision_tower": mm_vision_tower, "model_type": "llava_llama",
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 4, "pad_token_id": 0,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right",
        "torch_dtype": "float32", "transformers_version": "4.37.2", "tune_mm_mlp_adapter": False,
        "tune_mm_vision_resampler": False, "unfreeze_mm_vision_tower": False, "use_cache": True,
        "use_mm_proj": True, "vocab_size": TEXT_VOCAB,
    }


def _save_shards(sd: dict, folder: str, fmt: str, n_shards: int) -> list[str]:
    from safetensors.torch import save_file

    keys = list(sd)
    per = -(-len(keys) // n_shards)
    weight_map, files = {}, []
    for i in range(n_shards):
        if fmt == "safetensors":
            name = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        else:
            name = f"pytorch_model-{i + 1:05d}-of-{n_shards:05d}.bin"
        part = {k: sd[k] for k in keys[i * per:(i + 1) * per]}
        if fmt == "safetensors":
            save_file(part, os.path.join(folder, name), metadata={"format": "pt"})
        else:
            torch.save(part, os.path.join(folder, name))
        weight_map.update({k: name for k in part})
        files.append(name)
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    with open(os.path.join(folder, index), "w") as f:
        json.dump({"metadata": {"total_size": sum(t.numel() * t.element_size() for t in sd.values())},
                   "weight_map": weight_map}, f)
    return files


def write_original_llava(model, tokenizer_dir: str, folder: str, *, with_vision_tower: bool = True,
                         fmt: str = "safetensors", n_shards: int = 2, mm_vision_tower: str = HUB_TOWER) -> str:
    """Write ``model`` as a released TP_llava folder (original-LLaVA layout)."""
    import shutil

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(original_config(mm_vision_tower), f, indent=2)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_length": 4096}, f)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(folder, name))
    _save_shards(original_state_dict(model, with_vision_tower), folder, fmt, n_shards)
    return folder


CLIP_L336_PREPROCESSOR = {
    "crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3, "size": 336,
}


def write_clip_folder(model, folder: str) -> str:
    """A CLIP-L/336-format folder (openai/clip-vit-large-patch14-336 layout) with the tiny tower."""
    os.makedirs(folder, exist_ok=True)
    vc = model.config.vision_config.to_dict()
    vc = {k: v for k, v in vc.items() if k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                               "num_attention_heads", "patch_size", "image_size",
                                               "hidden_act", "layer_norm_eps", "projection_dim")}
    cfg = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 16,
           "logit_scale_init_value": 2.6592,
           "text_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "vocab_size": 64, "max_position_embeddings": 77,
                           "projection_dim": 16},
           "vision_config": vc}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(CLIP_L336_PREPROCESSOR, f, indent=2)
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("model.vision_tower."):
            sd["vision_model." + k[len("model.vision_tower."):]] = v.detach().clone()
    # What a full CLIPModel checkpoint also holds (must be skipped by the loader).
    sd["vision_model.embeddings.position_ids"] = torch.arange(577)[None]
    sd["text_model.embeddings.token_embedding.weight"] = torch.zeros(64, 16)
    sd["text_model.final_layer_norm.weight"] = torch.ones(16)
    sd["visual_projection.weight"] = torch.zeros(16, 32)
    sd["text_projection.weight"] = torch.zeros(16, 16)
    sd["logit_scale"] = torch.tensor(2.6592)
    torch.save(sd, os.path.join(folder, "pytorch_model.bin"))
    return folder


def write_llava_hf(model, tokenizer_dir: str, folder: str) -> str:
    """Write ``model`` in llava-hf layout with its tokenizer (+"<image>") and CLIP-L/336 processor."""
    from transformers import AutoTokenizer

    model.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    tok.add_tokens(["<image>"], special_tokens=True)
    assert tok.convert_tokens_to_ids("<image>") == IMAGE_TOKEN_ID
    tok.save_pretrained(folder)
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(CLIP_L336_PREPROCESSOR, f, indent=2)
    return folder


def make_all(root: str) -> dict[str, str]:
    """Every fixture folder under ``root``; returns name -> path."""
    tok_dir = os.path.join(root, "tokenizer")
    train_tiny_sentencepiece(tok_dir)
    model = build_tiny_llava()
    clip_dir = write_clip_folder(model, os.path.join(root, "clip-vit-large-patch14-336"))
    return {
        "tokenizer": tok_dir,
        "hf": write_llava_hf(model, tok_dir, os.path.join(root, "llava_hf")),
        "orig_with_tower": write_original_llava(model, tok_dir, os.path.join(root, "TP_llava")),
        "orig_no_tower": write_original_llava(model, tok_dir, os.path.join(root, "TP_llava_no_tower"),
                                              with_vision_tower=False),
        "orig_no_tower_local_mm": write_original_llava(model, tok_dir, os.path.join(root, "TP_llava_mm_local"),
                                                       with_vision_tower=False, mm_vision_tower=clip_dir),
        "orig_bin": write_original_llava(model, tok_dir, os.path.join(root, "TP_llava_bin"), fmt="bin"),
        "clip": clip_dir,
    }
