"""A tiny, randomly initialised model release written in the real file formats.

Used by the tests, by CI, by the ComfyUI host tests and as the no-download default of the CLI until a
trained starter model ships: it has the released layout (renderer/ckpt/*.ckpt + config.yaml, RP/*.ckpt,
base/ diffusers folder, clip/, lpips/) so every loader runs exactly as on the real weights. The CLIP
tokenizer is a byte-level BPE vocabulary without merges (every byte is a token), which needs no
download; its pictures are noise, of course.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_WIDTH = 32


def _byte_chars() -> list[int]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [256 + n for n in range(256 - len(printable))]
    return printable + extra


def _byte_vocab() -> tuple[dict, str]:
    # GPT-2/CLIP byte-to-unicode table: printable bytes map to themselves, the others to 256+
    chars = [chr(c) for c in _byte_chars()]
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, "#version: 0.2\n"


def write_byte_tokenizer(tok_dir) -> dict:
    """Write the byte-level CLIP tokenizer (no merges) as a slow-tokenizer folder; returns its vocab."""
    from transformers import CLIPTokenizer

    vocab, merges = _byte_vocab()
    tok_dir = Path(tok_dir)
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text(merges)
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), pad_token="<|endoftext|>")
    tok.model_max_length = 77
    tok.save_pretrained(tok_dir)
    return vocab


def unet_config(width: int = TINY_WIDTH, context: int = TINY_WIDTH) -> dict:
    return {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 2,
            "block_out_channels": [width] * 4, "center_input_sample": False, "cross_attention_dim": context,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
            "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 1,
            "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": min(32, width), "out_channels": 4,
            "sample_size": 32, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}


def write_random_release(root, seed: int = 0, width: int = TINY_WIDTH, step: int = 0) -> Path:
    """Write the release layout with random weights under ``root``; returns ``root``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from ..models.feature_encoder import CanvasFeatureEncoder
    from ..models.lpips_net import ALEX_CHANNELS
    from ..models.next_clip import NextClipPredictor
    from ..models.referencenet import ReferenceNet
    from ..models.time_encoder import TimeEncoder

    root = Path(root)
    torch.manual_seed(seed)
    base = root / "base"
    ucfg = unet_config(width, width)
    (base / "unet").mkdir(parents=True, exist_ok=True)
    (base / "unet" / "config.json").write_text(json.dumps(ucfg, indent=2))
    AutoencoderKL(block_out_channels=(width,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4,
                  norm_num_groups=min(32, width), sample_size=64).save_pretrained(base / "vae")
    vocab = write_byte_tokenizer(base / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
                                 num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                 bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                                 pad_token_id=vocab["<|endoftext|>"])).save_pretrained(base / "text_encoder")
    clip_dir = root / "clip"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                                     num_attention_heads=4, image_size=224, patch_size=32)).save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(clip_dir)

    unet = UNet2DConditionModel.from_config(ucfg)
    refnet = ReferenceNet(ucfg)
    refnet.unet.load_state_dict({k: v for k, v in unet.state_dict().items() if k in refnet.unet.state_dict()})
    guider = CanvasFeatureEncoder(4, width, init_scale=1.5)
    ckpt_dir = root / "renderer" / "ckpt"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "global_step": step, "unet_state_dict": unet.state_dict(),
                "referencenet_state_dict": refnet.unet.state_dict(), "cur_image_guider_state_dict": guider.state_dict(),
                "PE_state_dict": TimeEncoder(out_dim=width).state_dict(),
                "image_adpater_state_dict": NextClipPredictor(2 * width, (4 * width, 2 * width), width).state_dict()},
               ckpt_dir / f"checkpoint-global_step-{step}.ckpt")
    (root / "renderer" / "config.yaml").write_text(
        "use_PE: true\nPE_type: abs\nPE_time_interval: 5\nPE_time_max: 100\nuse_TP: true\nis_train_text_encoder: false\n")
    rp = UNet2DConditionModel.from_config(dict(ucfg, in_channels=9, out_channels=1))
    (root / "RP").mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "global_step": step, "RP_state_dict": rp.state_dict(),
                "PE_state_dict": TimeEncoder(out_dim=width).state_dict()}, root / "RP" / f"checkpoint-global_step-{step}.ckpt")

    lp = root / "lpips"
    lp.mkdir(parents=True, exist_ok=True)
    shapes = [(64, 3, 11), (192, 64, 5), (384, 192, 3), (256, 384, 3), (256, 256, 3)]
    feats = {}
    for idx, (o, i, k) in zip((0, 3, 6, 8, 10), shapes):
        conv = torch.nn.Conv2d(i, o, k)
        feats[f"features.{idx}.weight"], feats[f"features.{idx}.bias"] = conv.weight.data, conv.bias.data
    torch.save(feats, lp / "alexnet_features.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) * 0.1 for i, c in enumerate(ALEX_CHANNELS)},
               lp / "alex.pth")
    (root / "README.txt").write_text("Tiny random Inverse Painting release (real formats, random weights): "
                                     "for tests and for trying the pipeline without downloads. Its output is noise.\n")
    return root
