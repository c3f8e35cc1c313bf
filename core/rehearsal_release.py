"""A full-size rehearsal release: random weights in exactly the released files, keys, shapes and dtypes.

Nothing of the authors' can be downloaded here, yet the loaders, the fp16 paths and the memory tiers must run
at the real widths. This writes the release layout (official_spec.md section 1 and its manifests) with random
weights:

- ``renderer/ckpt/checkpoint-global_step-200000.ckpt`` (torch pickle, fp32: UNet, ReferenceNet, feature
  encoder, next-CLIP MLP, time encoder under the released key names) and ``renderer/config.yaml``;
- ``RP/checkpoint-global_step-80000.ckpt`` (fp32: 9-in / 1-out UNet and its time encoder);
- ``TP_llava/``: original-LLaVA format (``model_type: llava_llama``, ``mm_*`` fields, LLaMA-7B config,
  fp16 safetensors shards of at most ``shard_gb`` with their index, the CLIP-L/336 tower saved inside as the
  merge script does, a 32000-piece SentencePiece ``tokenizer.model``); ``llava_layers`` < 32 keeps the full
  width with fewer decoder layers, so it fits a small machine;
- ``base/``: a diffusers SD1.5 folder (unet/config.json, vae/, text_encoder/, tokenizer/ with a 49408-token
  BPE vocabulary, scheduler/, model_index.json), fp32;
- ``clip/``: a CLIP ViT-B/32 ``CLIPModel`` folder (model, processor and tokenizer files), fp32;
- ``lpips/alexnet-owt-7be5be79.pth``: torchvision's AlexNet layout.

The tokenizers' vocabularies are synthetic (no real merges can be had offline), with the real sizes. The
pictures are noise: this is for rehearsing loading, memory and speed, never for judging quality.
:func:`check_release` compares every written file with the reference manifests (names, shapes, dtypes),
and loads the renderer and mask generator checkpoints through the pack's own key reports.
"""
from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import torch

from .loading import SD15_UNET_CONFIG

RENDERER_STEP, RP_STEP = 200000, 80000
LLAVA_LAYERS = 32
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_act="silu")
CLIP_L336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 patch_size=14, image_size=336, hidden_act="quick_gelu", projection_dim=768)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
              layers_per_block=2, norm_num_groups=32, sample_size=512, act_fn="silu", scaling_factor=0.18215)
CLIP_VOCAB = 49408


def _random_like(name: str, shape, dtype, generator: torch.Generator) -> torch.Tensor:
    """Norm weights 1, biases 0, everything else normal with std min(0.02, fan_in^-1/2): each layer keeps
    its input's scale, so activations stay finite (in fp16 too) through the deep networks."""
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    if "norm" in name.rsplit(".", 2)[-2] or "layrnorm" in name:
        return torch.ones(shape, dtype=dtype)
    fan_in = int(torch.Size(shape[1:]).numel()) if len(shape) > 1 else 1
    return (torch.randn(shape, generator=generator) * min(0.02, fan_in ** -0.5)).to(dtype)


# ----------------------------------------------------------------------------------------------
# tokenizers of the real sizes


def _byte_table() -> list[str]:
    from .tiny_release import _byte_chars

    return [chr(c) for c in _byte_chars()]


def write_clip_tokenizer(folder) -> None:
    """A CLIP BPE tokenizer with the real vocabulary size (49408): byte tokens, then merges of letters into
    2-, 3- and 4-letter words (synthetic merges: real text splits into other pieces than the real one's)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_table()
    vocab = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    want = CLIP_VOCAB - len(vocab) - 2
    letters = "abcdefghijklmnopqrstuvwxyz"
    level = list(letters)
    while len(merges) < want:
        nxt = []
        for stem in level:
            for c in letters:
                for end in (c, c + "</w>"):
                    if len(merges) < want:
                        merges.append(f"{stem} {end}")
                        vocab.append(stem + end)
                nxt.append(stem + c)
        level = nxt
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>")
    tok.model_max_length = 77
    tok.save_pretrained(folder)
    if len(tok) != CLIP_VOCAB:
        raise RuntimeError(f"CLIP tokenizer has {len(tok)} tokens, expected {CLIP_VOCAB}")


def write_llama_tokenizer(folder, vocab_size: int = 32000) -> None:
    """A LLaMA-style SentencePiece model (BPE, byte fallback, <unk>/<s>/</s> = 0/1/2) of ``vocab_size`` pieces:
    a small model trained on the prompt's words, padded with pieces no text reaches."""
    import random

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    from ..models.text_instruction import ANNOTATOR_QUESTION, TP_QUESTION, V0_SYSTEM_PROMPT

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    words = (V0_SYSTEM_PROMPT + " " + TP_QUESTION + " " + ANNOTATOR_QUESTION +
             " sky mountain mountains ground grass water reflection tree trees cloud clouds river house "
             "Human: Assistant: ###").split()
    corpus = [" ".join(rng.choice(words) for _ in range(16)) for _ in range(400)]
    prefix = str(folder / "tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=prefix, vocab_size=600, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        remove_extra_whitespaces=False, split_digits=True, normalization_rule_name="identity",
        character_coverage=1.0, num_threads=1, minloglevel=2)
    os.remove(prefix + ".vocab")
    proto = pb.ModelProto()
    proto.ParseFromString(Path(prefix + ".model").read_bytes())
    low = min(p.score for p in proto.pieces)
    for i in range(vocab_size - len(proto.pieces)):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"\u2581\u2042{i:05d}", low - 1 - i, pb.ModelProto.SentencePiece.NORMAL
    Path(prefix + ".model").write_bytes(proto.SerializeToString())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "model_max_length": 2048, "padding_side": "right", "clean_up_tokenization_spaces": False}, indent=1))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, indent=1))


# ----------------------------------------------------------------------------------------------
# the parts


def _shapes_on_meta(factory) -> dict[str, tuple]:
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = factory()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _random_state(shapes: dict, dtype, generator) -> dict[str, torch.Tensor]:
    return {k: _random_like(k, s, dtype, generator) for k, s in shapes.items()}


def _save_hf(model, folder: Path, prefix: str = "") -> None:
    """``save_pretrained`` with the checkpoint key names of the released files: transformers 5 writes CLIP keys
    without their ``text_model.`` / ``vision_model.`` prefix, the released (transformers 4) files have it."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    state = {k if not prefix or k.startswith(prefix) else prefix + k: v.contiguous()
             for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def write_base(base: Path, generator) -> None:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    (base / "unet").mkdir(parents=True, exist_ok=True)
    (base / "unet" / "config.json").write_text(json.dumps(
        {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.21.4", **SD15_UNET_CONFIG}, indent=2))
    (base / "scheduler").mkdir(parents=True, exist_ok=True)
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "PNDMScheduler", "_diffusers_version": "0.21.4", "beta_end": 0.012,
         "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
         "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}, indent=2))
    (base / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.21.4",
         "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
         "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
         "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    AutoencoderKL(**SD_VAE).save_pretrained(base / "vae")
    write_clip_tokenizer(base / "tokenizer")
    cfg = CLIPTextConfig(vocab_size=CLIP_VOCAB, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                         projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    _save_hf(CLIPTextModel(cfg), base / "text_encoder", "text_model.")


def write_clip(clip: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=CLIP_VOCAB, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32, hidden_act="quick_gelu"),
        projection_dim=512)
    _save_hf(CLIPModel(cfg), clip)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(clip)
    write_clip_tokenizer(clip)


def write_renderer(root: Path, generator) -> None:
    from ..models.feature_encoder import CanvasFeatureEncoder
    from ..models.next_clip import NextClipPredictor
    from ..models.referencenet import ReferenceNet
    from ..models.renderer_unet import RendererUNet
    from ..models.time_encoder import TimeEncoder

    cfg = dict(SD15_UNET_CONFIG)
    ckpt = {"epoch": 0, "global_step": RENDERER_STEP,
            "unet_state_dict": _random_state(_shapes_on_meta(lambda: RendererUNet(cfg).unet), torch.float32,
                                             generator),
            "cur_image_guider_state_dict": CanvasFeatureEncoder(4, 320).state_dict(),
            "PE_state_dict": TimeEncoder(out_dim=768).state_dict(),
            "referencenet_state_dict": _random_state(_shapes_on_meta(lambda: ReferenceNet(cfg).unet),
                                                     torch.float32, generator),
            "image_adpater_state_dict": NextClipPredictor(1536, (1024, 512), 768).state_dict()}
    folder = root / "renderer" / "ckpt"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / f"checkpoint-global_step-{RENDERER_STEP}.ckpt")
    (root / "renderer" / "config.yaml").write_text(
        "name: train_renderer\nlauncher: pytorch\nuse_PE: true\nPE_type: abs\nPE_time_interval: 5\n"
        "PE_time_max: 100\nuse_TP: true\nis_train_text_encoder: false\npad_mode: pad_to_16\n")


def write_mask_generator(root: Path, generator) -> None:
    from ..models.mask_unet import MaskUNet
    from ..models.time_encoder import TimeEncoder

    cfg = dict(SD15_UNET_CONFIG, in_channels=9, out_channels=1)
    ckpt = {"epoch": 0, "global_step": RP_STEP,
            "RP_state_dict": _random_state(_shapes_on_meta(lambda: MaskUNet(cfg).unet), torch.float32, generator),
            "PE_state_dict": TimeEncoder(out_dim=768).state_dict()}
    (root / "RP").mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, root / "RP" / f"checkpoint-global_step-{RP_STEP}.ckpt")


def llava_shapes(layers: int = LLAVA_LAYERS) -> dict[str, tuple]:
    """Key -> shape of the original-LLaVA checkpoint (LLM, projector, saved vision tower)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    llm = _shapes_on_meta(lambda: LlamaForCausalLM(LlamaConfig(**LLAMA_7B, num_hidden_layers=layers)))
    tower = _shapes_on_meta(lambda: CLIPVisionModel(CLIPVisionConfig(**CLIP_L336)))
    shapes = {k: s for k, s in llm.items() if not k.endswith("rotary_emb.inv_freq")}
    shapes.update({"model.mm_projector.0.weight": (4096, 1024), "model.mm_projector.0.bias": (4096,),
                   "model.mm_projector.2.weight": (4096, 4096), "model.mm_projector.2.bias": (4096,)})
    # transformers 5 drops CLIPVisionModel's "vision_model." prefix; LLaVA's saved tower has it
    shapes.update({"model.vision_tower.vision_tower." + ("" if k.startswith("vision_model.") else "vision_model.") + k: s
                   for k, s in tower.items() if not k.endswith("position_ids")})
    return shapes


def write_llava(folder: Path, generator, layers: int = LLAVA_LAYERS, shard_gb: float = 10.0) -> None:
    """The text generator as LLaVA's merge script saves it: fp16, shards of at most ``shard_gb`` GB."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"_name_or_path": "TP_llava", "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama",
              **LLAMA_7B, "num_hidden_layers": layers, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
              "initializer_range": 0.02, "pretraining_tp": 1, "rope_scaling": None, "rope_theta": 10000.0,
              "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.37.2",
              "use_cache": True, "attention_bias": False, "attention_dropout": 0.0,
              "freeze_mm_mlp_adapter": False, "image_aspect_ratio": "pad", "mm_hidden_size": 1024,
              "mm_patch_merge_type": "flat", "mm_projector_lr": 2e-05, "mm_projector_type": "mlp2x_gelu",
              "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
              "mm_vision_select_layer": -2, "mm_vision_tower": "openai/clip-vit-large-patch14-336",
              "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right", "tune_mm_mlp_adapter": False,
              "use_mm_proj": True}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_length": 4096,
         "transformers_version": "4.37.2"}, indent=2))
    write_llama_tokenizer(folder)
    shapes = llava_shapes(layers)
    limit = int(shard_gb * 1e9)
    shards: list[list[str]] = [[]]
    size = 0
    for key, shape in shapes.items():
        nbytes = 2 * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map = {}
    for name, keys in zip(names, shards):
        tensors = {k: _random_like(k, shapes[k], torch.float16, generator) for k in keys}
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
        del tensors
        gc.collect()
    if len(names) > 1:
        total = sum(2 * int(torch.Size(s).numel()) for s in shapes.values())
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def write_alexnet(folder: Path) -> None:
    """torchvision's ``alexnet-owt-7be5be79.pth`` layout: features.{0,3,6,8,10}, classifier.{1,4,6}."""
    folder.mkdir(parents=True, exist_ok=True)
    layers = {"features.0": torch.nn.Conv2d(3, 64, 11), "features.3": torch.nn.Conv2d(64, 192, 5),
              "features.6": torch.nn.Conv2d(192, 384, 3), "features.8": torch.nn.Conv2d(384, 256, 3),
              "features.10": torch.nn.Conv2d(256, 256, 3), "classifier.1": torch.nn.Linear(9216, 4096),
              "classifier.4": torch.nn.Linear(4096, 4096), "classifier.6": torch.nn.Linear(4096, 1000)}
    sd = {f"{name}.{k}": v for name, m in layers.items() for k, v in m.state_dict().items()}
    torch.save(sd, folder / "alexnet-owt-7be5be79.pth")


PARTS = ("base", "clip", "renderer", "mask_generator", "text_model", "lpips")


REHEARSAL_MARK = "Full-size REHEARSAL release"  # how its README.txt begins


def is_rehearsal_release(folder: Path) -> bool:
    """Whether ``folder`` holds a release this command wrote (its README.txt says so), not a user's folder."""
    try:
        return (Path(folder) / "README.txt").read_text(errors="replace").startswith(REHEARSAL_MARK)
    except OSError:
        return False


def write_rehearsal_release(root, seed: int = 0, llava_layers: int = LLAVA_LAYERS, shard_gb: float = 10.0,
                            parts=PARTS, log=print) -> Path:
    """Write the full-size release layout with random weights under ``root`` (one part at a time, so the
    peak memory is one part: about 7 GB for the renderer checkpoint)."""
    import time

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    writers = {"base": lambda: write_base(root / "base", generator), "clip": lambda: write_clip(root / "clip"),
               "renderer": lambda: write_renderer(root, generator),
               "mask_generator": lambda: write_mask_generator(root, generator),
               "text_model": lambda: write_llava(root / "TP_llava", generator, llava_layers, shard_gb),
               "lpips": lambda: write_alexnet(root / "lpips")}
    for part in parts:
        t0 = time.time()
        writers[part]()
        gc.collect()
        log(f"wrote {part} ({time.time() - t0:.0f} s)")
    (root / "README.txt").write_text(
        f"{REHEARSAL_MARK}: the released files, key names, shapes and dtypes with random weights "
        f"(LLaVA with {llava_layers} of 32 decoder layers). Written by `inverse-painting rehearsal-release`. "
        "Its pictures are noise: for rehearsing loading, memory and speed only.\n")
    return root


# ----------------------------------------------------------------------------------------------
# checking a release against the manifests


def _file_tensors(path: Path) -> dict[str, tuple]:
    """name -> (shape, dtype) of every tensor in a weight file (nested checkpoints as part/name)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), str(f.get_slice(k).get_dtype())) for k in f.keys()}
    data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update({f"{key}/{k}": (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in value.items()})
    return out


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _compare(found: dict, manifest: dict, dtype: str, what: str, prefix: str = "") -> list[str]:
    want = {prefix + k: tuple(v) for k, v in manifest.items()}
    have = {k: v for k, v in found.items() if k.startswith(prefix)}
    problems = [f"{what}: missing {k}" for k in want if k not in have]
    problems += [f"{what}: unexpected {k}" for k in have if k not in want]
    for k in want:
        if k in have:
            shape, dt = have[k]
            dt = _SAFETENSORS_DTYPES.get(dt, dt)
            if shape != want[k]:
                problems.append(f"{what}: {k} has shape {shape}, the manifest {want[k]}")
            if dt != dtype:
                problems.append(f"{what}: {k} is {dt}, the release {dtype}")
    return problems


def missing_parts(root) -> list[str]:
    """The release parts the loaders need that ``root`` does not hold (yet)."""
    from .loading import find_release

    paths = find_release(root)
    return [n for n in ("base", "clip", "renderer", "mask_generator") if getattr(paths, n) is None]


def weight_file_problems(root) -> list[str]:
    """Every weight file under ``root`` opened by its header (a truncated file, or a folder where a weight file
    belongs, is a problem: the loader-level check below reads only the renderer and mask generator)."""
    from .loading import WEIGHT_SUFFIXES, WeightFileError, _check_weight_header

    problems = []
    for path in sorted(Path(root).rglob("*")):
        if path.suffix not in WEIGHT_SUFFIXES:
            continue
        if path.is_dir():
            problems.append(f"{path}: a folder where a weight file belongs")
            continue
        try:
            _check_weight_header(path)
        except WeightFileError as exc:
            problems.append(str(exc))
    return problems


def check_release(root, manifests=None, log=print) -> list[str]:
    """Check a (rehearsal) release; returns the problems found (empty: all match).

    Always: the renderer and mask-generator checkpoints through the pack's loader key reports (strict names and
    shapes against networks built from base/unet/config.json). With ``manifests`` (the folder of the reference
    JSON manifests): every checkpoint part, the LLaVA files (at their layer count), the VAE, text encoder and
    CLIP vision weights by name, shape and dtype.
    """
    from .loading import (MASK_PARTS, RENDERER_PARTS, find_release, load_checked, read_checkpoint,
                          read_unet_config, unet_config_for)
    from .model_set import build_meta_networks
    from ..models.text_instruction import _weight_files

    root = Path(root)
    paths = find_release(root)
    paths.require("base", "clip", "renderer", "mask_generator")  # a part missing is named, not a traceback
    problems: list[str] = weight_file_problems(root)
    base_cfg = read_unet_config(paths.base)
    for label, path, parts, nets in (("renderer", paths.renderer, RENDERER_PARTS, ("renderer_unet", "referencenet")),
                                     ("mask generator", paths.mask_generator, MASK_PARTS, ("mask_unet",))):
        ckpt = read_checkpoint(path)
        missing = [p for p in parts if p not in ckpt]
        problems += [f"{label}: no {p}" for p in missing]
        if missing:
            continue
        first = ckpt[parts[0]]
        in_ch = first["conv_in.weight"].shape[1]
        meta = build_meta_networks(unet_config_for(first, base_cfg), mask_in=in_ch,
                                   target_input=label == "renderer" and in_ch == 8)  # a starter's target channels
        for net, part in zip(nets, parts):
            try:
                load_checked(meta[net], ckpt[part], f"{label} {part}", assign=True)
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                problems.append(str(exc))
        log(f"{label}: {path.name} loads strictly ({', '.join(parts)})")
        del ckpt, meta
        gc.collect()
    if manifests is None:
        return problems
    man = Path(manifests)

    def read(name):
        from .loading import read_json

        return read_json(man / name, "reference manifest")  # a missing or broken manifest named
    renderer = _file_tensors(paths.renderer)
    for part, name in (("unet_state_dict", "renderer_unet.json"), ("referencenet_state_dict", "renderer_referencenet.json"),
                       ("cur_image_guider_state_dict", "renderer_cur_image_guider.json"),
                       ("image_adpater_state_dict", "renderer_image_adpater.json"), ("PE_state_dict", "renderer_PE.json")):
        problems += _compare(renderer, read(name), "float32", paths.renderer.name, f"{part}/")
    rp = _file_tensors(paths.mask_generator)
    problems += _compare(rp, read("RP_unet.json"), "float32", paths.mask_generator.name, "RP_state_dict/")
    problems += _compare(rp, read("RP_PE.json"), "float32", paths.mask_generator.name, "PE_state_dict/")
    del renderer, rp
    for sub, name in (("vae", "base_vae.json"), ("text_encoder", "base_text_encoder.json")):
        found = {}
        for f in sorted((paths.base / sub).glob("*.safetensors")):
            found.update(_file_tensors(f))
        manifest = {k: v for k, v in read(name).items() if not k.endswith("position_ids")}
        problems += _compare(found, manifest, "float32", f"base/{sub}")
    clip = {}
    for f in sorted(paths.clip.glob("*.safetensors")):
        clip.update(_file_tensors(f))
    vision = {k: v for k, v in clip.items() if k.startswith("vision_model.")}
    problems += _compare(vision, {k: v for k, v in read("base_clip_vision_b32.json").items()
                                  if not k.endswith("position_ids")}, "float32", "clip (vision)")
    if paths.text_model is not None:
        llava = {}
        for f in _weight_files(str(paths.text_model)):
            llava.update(_file_tensors(Path(f)))
        layers = 1 + max(int(k.split(".")[2]) for k in llava if k.startswith("model.layers."))
        manifest = {k: v for k, v in read("TP_llava_llm_and_projector.json").items()
                    if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
        manifest.update(read("TP_llava_vision_tower_if_saved.json"))
        manifest = {k: v for k, v in manifest.items() if not k.endswith("position_ids")}
        problems += _compare(llava, manifest, "float16", f"TP_llava ({layers} of 32 layers)")
    log(f"manifests: {len(problems)} problem(s)")
    return problems
