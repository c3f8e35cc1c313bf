"""Text-instruction generator ("TP"): which content should be painted next, as a short text.

The official method asks a LoRA-fine-tuned LLaVA-1.5-7B "what should be painted next?" about the
image [current canvas | target painting] and feeds the answer to the renderer as its text prompt.
This module reproduces that call with transformers' ``LlavaForConditionalGeneration``:

* loads either the llava-hf layout (config ``model_type: llava``) or the released original-LLaVA
  layout (``TP_llava/``: ``model_type: llava_llama`` with ``mm_*`` fields), remapping the keys;
* rebuilds the exact official inputs by hand: the llava_v0 prompt, LLaVA's pad-to-square
  preprocessing and LLaVA's ``tokenizer_image_token`` sequence (one BOS, 576 image positions);
* decodes greedily like the official ``Predictor``.

``ManualInstructions`` offers the same ``generate`` interface for user-written instructions, so the
painting loop can use either source. No pipeline logic lives here.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..core.errors import NumericalFault, UserInputError

__all__ = [
    "TP_QUESTION",
    "ANNOTATOR_QUESTION",
    "V0_SYSTEM_PROMPT",
    "IMAGE_PLACEHOLDER",
    "CLIP_MEAN",
    "CLIP_STD",
    "PAD_BACKGROUND",
    "LlavaLoadError",
    "LoadReport",
    "build_v0_prompt",
    "compose_side_by_side",
    "expand_to_square",
    "clip_l336_image_processor",
    "preprocess_image",
    "tokenize_with_image",
    "load_weight_files",
    "convert_original_llava_state_dict",
    "TextInstructionGenerator",
    "ManualInstructions",
    "parse_instruction_list",
]

# --------------------------------------------------------------------------------------------
# Prompt constants (official_spec §2.5 and §4.2, verbatim)
# --------------------------------------------------------------------------------------------

#: The question the official demo asks the text generator (inference, TP_llava).
TP_QUESTION = (
    "There are two images side by side. The left image is an intermediate stage in a painting "
    "process of the right image. Please tell me what content should be painted next? "
    "The answer should be less than 2 words."
)

#: The question used with the annotator model (TP_llava_annotator) to make GT text for training.
ANNOTATOR_QUESTION = (
    "There are two images side by side. The right image is the next step of the left image in the "
    "painting process of a painting. Please tell me what is added to right image? "
    "The answer should be less than 2 words."
)

#: System prompt of LLaVA's ``llava_v0`` conversation template.
V0_SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

IMAGE_PLACEHOLDER = "<image>"

# OpenAI CLIP normalisation; LLaVA's pad colour is int(mean * 255) = (122, 116, 104).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_BACKGROUND = tuple(int(m * 255) for m in CLIP_MEAN)

# Config fields of LLaVA's LlavaLlamaForCausalLM that are not LLaMA fields.
_LLAVA_ONLY_FIELDS = {
    "architectures", "model_type", "_name_or_path", "transformers_version", "torch_dtype", "dtype",
    "image_aspect_ratio", "image_grid_pinpoints", "freeze_mm_mlp_adapter", "tune_mm_mlp_adapter",
    "tune_mm_vision_resampler", "unfreeze_mm_vision_tower", "use_mm_proj", "mm_patch_merge_type",
    "tokenizer_padding_side", "tokenizer_model_max_length", "max_length", "mm_projector_lr",
    "mm_vision_tower_lr", "s2", "s2_scales", "use_cache",
}

# Keys that some checkpoints persist but current transformers recomputes (non-persistent buffers).
_IGNORABLE_KEY_RE = re.compile(r"(^|\.)(position_ids|rotary_emb\.inv_freq)$")


def build_v0_prompt(question: str) -> str:
    """The official prompt: LLaVA's ``llava_v0`` template with ``<image>\\n`` before the question.

    The official code picks the template by sniffing the model *folder name*; "TP_llava" selects
    llava_v0 although training used vicuna_v1 (spec B3). We reproduce the inference behaviour.
    """
    return f"{V0_SYSTEM_PROMPT}###Human: {IMAGE_PLACEHOLDER}\n{question}###Assistant:"


class LlavaLoadError(UserInputError, RuntimeError):
    """A model folder cannot be loaded (missing files or keys, unreadable weights, no vision tower)."""


# --------------------------------------------------------------------------------------------
# Image preparation
# --------------------------------------------------------------------------------------------


def _as_rgb_uint8(img: Any) -> np.ndarray:
    """HWC uint8 RGB from an array (HW, HW1, HW3, HW4) or a PIL image; alpha is dropped."""
    if not isinstance(img, np.ndarray):
        img = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img)
    if img.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"expected an HWC image, got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    elif img.shape[2] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got shape {img.shape}")
    return np.ascontiguousarray(img)


def compose_side_by_side(canvas_uint8_hwc: np.ndarray, target_uint8_hwc: np.ndarray,
                         official_layout: bool = False) -> np.ndarray:
    """The TP input image: [current canvas | target] on black, uint8 HWC.

    Our pipeline gives both images at the same working size, so the result is (H, 2W) and spec
    bug B2 (512-scale canvas beside the original-size target) cannot occur. If sizes differ, both
    are pasted at the top (canvas at x=0, target right after it) on a black background of width
    w_canvas + w_target and the larger height, like the official paste at y=0.

    ``official_layout=True`` reproduces the official geometry exactly: a (h_target, 2*w_target)
    black image, canvas pasted at (0, 0) (cropped to fit) and the target at (w_target, 0), which
    then overwrites any part of the canvas wider than the target.
    """
    canvas = _as_rgb_uint8(canvas_uint8_hwc)
    target = _as_rgb_uint8(target_uint8_hwc)
    hc, wc = canvas.shape[:2]
    ht, wt = target.shape[:2]
    if official_layout:
        out = np.zeros((ht, 2 * wt, 3), np.uint8)
        h, w = min(hc, ht), min(wc, 2 * wt)
        out[:h, :w] = canvas[:h, :w]
        out[:, wt:] = target
        return out
    out = np.zeros((max(hc, ht), wc + wt, 3), np.uint8)
    out[:hc, :wc] = canvas
    out[:ht, wc:] = target
    return out


def expand_to_square(img: np.ndarray, background: Sequence[int] = PAD_BACKGROUND) -> np.ndarray:
    """LLaVA's pad-to-square (``image_aspect_ratio='pad'``): the image centred on a square.

    Offsets use floor division, so an odd difference leaves the extra row/column at the
    bottom/right, as PIL's paste at ((size - w) // 2, (size - h) // 2) does.
    """
    img = _as_rgb_uint8(img)
    h, w = img.shape[:2]
    if h == w:
        return img
    size = max(h, w)
    out = np.empty((size, size, 3), np.uint8)
    out[:, :] = np.asarray(background, dtype=np.uint8)
    y0, x0 = (size - h) // 2, (size - w) // 2
    out[y0:y0 + h, x0:x0 + w] = img
    return out


def _clip_processor_class():
    # transformers 5.x without torchvision resolves CLIPImageProcessor to the PIL backend with a
    # warning; import the PIL class directly when it exists (same numbers, no warning).
    try:
        from transformers import CLIPImageProcessorPil as cls  # type: ignore[attr-defined]
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as cls
    return cls


def clip_l336_image_processor(image_size: int = 336, folder: str | None = None):
    """The CLIP-L/336 image processor: shortest edge -> 336 (bicubic), centre crop 336, CLIP mean/std.

    Reads ``preprocessor_config.json`` from ``folder`` when there is one; otherwise builds the
    processor of openai/clip-vit-large-patch14-336 from its known settings (the released TP_llava
    folder has no preprocessor config; LLaVA fetched it from the hub).
    """
    cls = _clip_processor_class()
    if folder is not None and os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        return cls.from_pretrained(folder, local_files_only=True)
    from PIL import Image

    return cls(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        resample=Image.BICUBIC,
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )


def preprocess_image(img_uint8: np.ndarray, image_processor, pad_to_square: bool = True) -> torch.Tensor:
    """LLaVA's ``process_images`` for one image: optional pad-to-square, then the CLIP processor.

    The pad colour comes from the processor's mean, as in LLaVA. Returns float32 (1, 3, S, S).
    """
    from PIL import Image

    img = _as_rgb_uint8(img_uint8)
    if pad_to_square:
        background = tuple(int(m * 255) for m in image_processor.image_mean)
        img = expand_to_square(img, background)
    out = image_processor(images=Image.fromarray(img), return_tensors="pt")
    return out["pixel_values"].float()


# --------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------


def tokenize_with_image(tokenizer, prompt: str, image_token_id: int, num_image_tokens: int) -> list[int]:
    """LLaVA's ``tokenizer_image_token`` with the image expanded to ``num_image_tokens`` ids.

    The official code tokenises each chunk of ``prompt.split("<image>")`` with a BOS-adding LLaMA
    tokenizer, keeps the BOS of the first chunk only and puts one placeholder (-200) between
    chunks, which LLaVA later replaces by the 576 projected patches. The HF model instead expects
    one ``image_token_id`` per patch, so we insert them all here: the LLM then sees exactly the
    official embedding sequence. Chunks are encoded without special tokens and the single BOS is
    added by hand, which equals the official result and does not depend on whether this
    tokenizer's config adds BOS (a bare tokenizer.model converted by transformers 5 does not).
    """
    chunks = prompt.split(IMAGE_PLACEHOLDER)
    bos = tokenizer.bos_token_id
    ids: list[int] = [] if bos is None else [int(bos)]
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.extend([int(image_token_id)] * num_image_tokens)
        if chunk:
            ids.extend(int(t) for t in tokenizer(chunk, add_special_tokens=False)["input_ids"])
    return ids


def _check_tokenizer(tokenizer, path: str, min_size: int) -> None:
    # transformers 5 can silently build a 2-3 token tokenizer when files are missing or passed
    # with v4 keyword names; a model would then run on garbage ids without any error.
    n = len(tokenizer)
    if n < max(min_size, 4):
        raise LlavaLoadError(
            f"the tokenizer loaded from {path} has only {n} tokens (expected at least {max(min_size, 4)}); "
            "tokenizer.model / tokenizer.json is missing or unreadable (is `sentencepiece` installed?)"
        )


def _load_tokenizer(path: str, llama: bool = False):
    """Load the folder's tokenizer; ``llama=True`` for original-LLaVA folders (tokenizer.model).

    Original-LLaVA folders are loaded with LlamaTokenizer explicitly: transformers 5's
    AutoTokenizer turns a tokenizer.model without a usable tokenizer_config into a generic
    backend that drops SentencePiece's dummy-prefix "▁" (different ids from the official slow
    LLaMA tokenizer).
    """
    from transformers import AutoTokenizer, LlamaTokenizer
    from transformers.utils import logging as hf_logging

    use_llama = llama and os.path.isfile(os.path.join(path, "tokenizer.model"))
    # AutoTokenizer also reads config.json; transformers does not know "llava_llama" and logs a
    # misleading "model of type llava_llama ..." warning. The tokenizer itself is checked later.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # legacy rope fields of the LLaMA config
            cls = LlamaTokenizer if use_llama else AutoTokenizer
            return cls.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise LlavaLoadError(f"could not load a tokenizer from {path}: {e}") from e
    finally:
        hf_logging.set_verbosity(verbosity)


def _check_against_sentencepiece(tokenizer, path: str) -> None:
    """Warn when the tokenizer does not split the official prompt like SentencePiece does.

    The official LlamaTokenizer (slow) is SentencePiece itself; the prompt chunks have no leading
    spaces, where the legacy and non-legacy modes agree. Skipped without the package.
    """
    model_file = os.path.join(path, "tokenizer.model")
    try:
        import sentencepiece as spm
    except ImportError:
        return
    if not os.path.isfile(model_file):
        return
    sp = spm.SentencePieceProcessor(model_file=model_file)
    for question in (TP_QUESTION, ANNOTATOR_QUESTION):
        for chunk in build_v0_prompt(question).split(IMAGE_PLACEHOLDER):
            ours = tokenizer(chunk, add_special_tokens=False)["input_ids"]
            if list(ours) != list(sp.encode(chunk)):
                warnings.warn(f"the tokenizer of {path} does not reproduce SentencePiece on the official "
                              f"prompt (chunk {chunk[:40]!r}...); generated text may differ from the official")
                return


# --------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------


def _weight_files(folder: str) -> list[str]:
    """The weight files of a folder, safetensors preferred, shards resolved through the index."""
    for index_name, single_name in (("model.safetensors.index.json", "model.safetensors"),
                                    ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = os.path.join(folder, index_name)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map", {})
            files = [os.path.join(folder, name) for name in sorted(set(weight_map.values()))]
            absent = [p for p in files if not os.path.isfile(p)]
            if absent:
                raise LlavaLoadError(f"{index} lists weight files that are missing: {absent}")
            if not files:
                raise LlavaLoadError(f"{index} has an empty weight_map")
            return files
        single = os.path.join(folder, single_name)
        if os.path.isfile(single):
            return [single]
    raise LlavaLoadError(
        f"no weights found in {folder} (expected model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or pytorch_model.bin.index.json)"
    )


def _iter_weight_file(path: str) -> Iterable[tuple[str, torch.Tensor]]:
    """(key, tensor) pairs of one file; unreadable/truncated files raise LlavaLoadError naming it."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                keys = list(f.keys())
                # Read tensor by tensor: peak memory stays near one copy of the model.
                for k in keys:
                    yield k, f.get_tensor(k)
        else:
            # Pickles are only ever opened with weights_only=True (no arbitrary code execution).
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(sd, dict):
                raise LlavaLoadError(f"{path} does not contain a state dict")
            yield from sd.items()
    except LlavaLoadError:
        raise
    except Exception as e:  # SafetensorError, EOFError, UnpicklingError, RuntimeError, ...
        raise LlavaLoadError(f"could not read weight file {path} (truncated or corrupt?): {e}") from e


def load_weight_files(folder: str) -> dict[str, torch.Tensor]:
    """All tensors of a model folder as one state dict (see ``_weight_files`` for the lookup)."""
    out: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        out.update(_iter_weight_file(path))
    return out


# --------------------------------------------------------------------------------------------
# Original-LLaVA layout -> transformers LlavaForConditionalGeneration
# --------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What happened to the checkpoint keys while loading (names after remapping where relevant)."""

    layout: str = ""
    vision_tower_source: str = ""
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    #: converted key -> checkpoint key it came from (for messages in checkpoint terms)
    origin: dict[str, str] = field(default_factory=dict, repr=False)


def _hf_prefixes(model) -> dict[str, str]:
    """Where this transformers version keeps each part of LlavaForConditionalGeneration.

    transformers 5.23 uses ``model.language_model.*``, ``lm_head.*``,
    ``model.multi_modal_projector.*`` and ``model.vision_tower.*`` (no ``vision_model.``);
    4.4x used ``language_model.model.*``, ``language_model.lm_head.*`` and
    ``vision_tower.vision_model.*``. Reading them off the instance keeps the remap version-proof.
    """
    keys = list(model.state_dict().keys())

    def prefix_of(suffix: str, exclude: str | None = None) -> str:
        for k in keys:
            if k.endswith(suffix) and (exclude is None or exclude not in k):
                return k[: -len(suffix)]
        raise LlavaLoadError(f"unexpected LlavaForConditionalGeneration layout: no key ending in {suffix}")

    return {
        "lm": prefix_of("embed_tokens.weight"),
        "lm_head": prefix_of("lm_head.weight") + "lm_head.",
        "projector": prefix_of("linear_1.weight"),
        "vision": prefix_of("embeddings.class_embedding"),
    }


def _remap_original_key(key: str, prefixes: dict[str, str]) -> str | None:
    """Original-LLaVA key -> key of the HF instance, or None if it is not an LLM/projector key."""
    m = re.match(r"^model\.mm_projector\.(0|2)\.(weight|bias)$", key)
    if m:
        return f"{prefixes['projector']}linear_{1 if m.group(1) == '0' else 2}.{m.group(2)}"
    if key.startswith("model.vision_tower.vision_tower."):
        rest = key[len("model.vision_tower.vision_tower."):]
        return _remap_clip_key(rest, prefixes)
    if key.startswith("model.mm_projector.") or key.startswith("model.vision_tower."):
        return None  # other projector types / resamplers: not supported, reported as unexpected
    if key.startswith("model."):
        return prefixes["lm"] + key[len("model."):]
    if key.startswith("lm_head."):
        return prefixes["lm_head"] + key[len("lm_head."):]
    return None


def _original_name(hf_key: str, prefixes: dict[str, str]) -> str:
    """The original-LLaVA name of an HF key (inverse of ``_remap_original_key``, for messages)."""
    m = re.match(re.escape(prefixes["projector"]) + r"linear_(1|2)\.(\w+)$", hf_key)
    if m:
        return f"model.mm_projector.{0 if m.group(1) == '1' else 2}.{m.group(2)}"
    for part, original in (("vision", "model.vision_tower.vision_tower.vision_model."),
                           ("lm_head", "lm_head."), ("lm", "model.")):
        if hf_key.startswith(prefixes[part]):
            return original + hf_key[len(prefixes[part]):]
    return hf_key


def _remap_clip_key(key: str, prefixes: dict[str, str]) -> str | None:
    """CLIP checkpoint key (CLIPModel, CLIPVisionModel, with or without ``vision_model.``) -> HF key."""
    if key.startswith("vision_model."):
        key = key[len("vision_model."):]
    elif key.split(".")[0] not in ("embeddings", "pre_layrnorm", "encoder", "post_layernorm"):
        return None  # text_model.*, visual_projection, text_projection, logit_scale
    return prefixes["vision"] + key


def convert_original_llava_state_dict(state_dict: dict[str, torch.Tensor], model,
                                      vocab_size: int | None = None) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename an original-LLaVA state dict (``model.*``, ``lm_head.*``, ``model.mm_projector.{0,2}``,
    ``model.vision_tower.vision_tower.vision_model.*``) to the keys of ``model``.

    ``vocab_size``: pad the embedding and lm_head rows with zeros up to this size (room for the
    image token; its embedding row is never read and its logit is suppressed at decoding).
    """
    prefixes = _hf_prefixes(model)
    report = LoadReport()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if _IGNORABLE_KEY_RE.search(key):
            report.ignored.append(key)
            continue
        new = _remap_original_key(key, prefixes)
        if new is None:
            report.unexpected.append(key)
            continue
        out[new] = tensor
        report.origin[new] = key
    if vocab_size is not None:
        for name in (prefixes["lm"] + "embed_tokens.weight", prefixes["lm_head"] + "weight"):
            if name in out and out[name].shape[0] < vocab_size:
                t = out[name]
                out[name] = torch.cat([t, t.new_zeros(vocab_size - t.shape[0], *t.shape[1:])], 0)
    return out, report


def _vision_config_from_tensors(sd: dict[str, torch.Tensor], prefix: str):
    """A CLIPVisionConfig inferred from saved vision-tower shapes (no local CLIP folder needed).

    Head count is not visible in the shapes; OpenAI CLIP ViTs all use 64-wide heads, so
    heads = hidden // 64 (16 for CLIP-L/336). Everything else matches CLIP-L/336's config.
    """
    from transformers import CLIPVisionConfig

    hidden = sd[prefix + "embeddings.class_embedding"].shape[0]
    patch = sd[prefix + "embeddings.patch_embedding.weight"].shape[-1]
    n_pos = sd[prefix + "embeddings.position_embedding.weight"].shape[0]
    layers = 1 + max(int(m.group(1)) for k in sd
                     if (m := re.match(re.escape(prefix) + r"encoder\.layers\.(\d+)\.", k)))
    inter = sd[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0]
    side = math.isqrt(n_pos - 1)
    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64), patch_size=patch, image_size=side * patch,
        hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
    )


def _vision_config_from_folder(folder: str):
    from transformers import CLIPVisionConfig

    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise LlavaLoadError(f"the CLIP vision tower folder {folder} has no config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("model_type") == "clip" or "vision_config" in cfg:
        cfg = cfg.get("vision_config", {})
    cfg = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "transformers_version")}
    return CLIPVisionConfig(**cfg)


def _empty_model(config):
    """LlavaForConditionalGeneration without allocating/initialising its parameters.

    A 7B model would take minutes to randomly initialise only to be overwritten; parameters are
    created on the meta device and assigned from the checkpoint. Buffers (rotary inv_freq) stay
    real, because they are not in the checkpoint.
    """
    from transformers import LlavaForConditionalGeneration

    try:
        from accelerate import init_empty_weights
    except ImportError:
        return LlavaForConditionalGeneration(config)
    with init_empty_weights(include_buffers=False):
        return LlavaForConditionalGeneration(config)


def _to_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""))
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"not a torch dtype: {dtype!r}")
    return dtype


class _StopOnStrings:
    """Stopping criterion: stop once the decoded new text contains one of ``stops``."""

    def __init__(self, tokenizer, prompt_len: int, stops: Sequence[str]):
        self.tokenizer, self.prompt_len, self.stops = tokenizer, prompt_len, list(stops)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        text = self.tokenizer.decode(input_ids[0, self.prompt_len:], skip_special_tokens=True)
        done = any(s in text for s in self.stops)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class TextInstructionGenerator:
    """LLaVA text-instruction generator on transformers' ``LlavaForConditionalGeneration``.

    Build it with :meth:`from_pretrained`. ``generate(canvas, target)`` returns the instruction
    text; ``generate_ids`` the new token ids. Not an nn.Module: it wraps model + tokenizer +
    image processor and owns the official input construction.
    """

    def __init__(self, model, tokenizer, image_processor, *, image_token_id: int, num_image_tokens: int,
                 pad_to_square: bool = True, suppress_token_ids: Sequence[int] = (),
                 eos_token_id: int | None = None, load_report: LoadReport | None = None,
                 vision_dtype: torch.dtype | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = int(image_token_id)
        self.num_image_tokens = int(num_image_tokens)
        self.pad_to_square = pad_to_square
        self.suppress_token_ids = sorted(set(int(i) for i in suppress_token_ids))
        self.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else int(eos_token_id)
        self.load_report = load_report or LoadReport()
        self.vision_dtype = vision_dtype or next(_part(self.model, "vision_tower").parameters()).dtype
        self.dtype = self.model.get_output_embeddings().weight.dtype
        # The official vision tower may run in fp32 beside an fp16 LLM; its features are cast to
        # the projector's dtype (LLaVA casts them to the image dtype, fp16) before projection.
        projector = _part(self.model, "multi_modal_projector")
        projector.register_forward_pre_hook(
            lambda mod, args: tuple(a.to(mod.linear_1.weight.dtype) if torch.is_tensor(a) else a for a in args)
        )

    # ---------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(cls, path: str, device: str | torch.device = "cpu", dtype=torch.float32,
                        vision_tower_path: str | None = None, *, vision_dtype=torch.float32,
                        vision_tower_source: str = "auto") -> "TextInstructionGenerator":
        """Load a LLaVA folder in the llava-hf layout or the released original-LLaVA layout.

        dtype: LLM and projector dtype (the official run uses fp16 on GPU; use fp32 on CPU).
        vision_dtype: CLIP tower dtype; the official run keeps it in fp32 (spec §2.2).
        vision_tower_path: a local CLIP-L/336 folder (HF ``CLIPModel`` or ``CLIPVisionModel``),
            used by the original layout when the TP_llava folder has no saved vision tower.
        vision_tower_source (original layout): "auto" = weights saved in ``path`` when present,
            else the local CLIP folder; "saved" or "local" force one. The official code always
            loads openai's CLIP-L/336 (fp32) and ignores saved copies, which are fp16 after the
            merge, so "local" is the bit-closer choice when both exist.
        """
        path = os.fspath(path)
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise LlavaLoadError(f"{path} has no config.json")
        try:
            with open(cfg_path, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise LlavaLoadError(f"{cfg_path}: cannot read it as JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise LlavaLoadError(f"{cfg_path}: must hold a JSON object")
        try:
            gen = cls._load(path, raw, dtype, vision_dtype, vision_tower_path, vision_tower_source)
        except LlavaLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - transformers' errors for broken folders vary by version
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LlavaLoadError(f"{path}: cannot load this LLaVA folder ({type(exc).__name__}: {first})") from exc
        gen.model.to(device)
        return gen

    @classmethod
    def _load(cls, path: str, raw: dict, dtype, vision_dtype, vision_tower_path, vision_tower_source):
        dtype, vision_dtype = _to_dtype(dtype), _to_dtype(vision_dtype or dtype)
        model_type = raw.get("model_type")
        # Early original-LLaVA releases also wrote model_type "llava"; their mm_* fields tell them apart.
        if model_type == "llava_llama" or (model_type == "llava" and "mm_vision_tower" in raw):
            gen = cls._from_original(path, raw, dtype, vision_dtype, vision_tower_path, vision_tower_source)
        elif model_type == "llava":
            gen = cls._from_llava_hf(path, raw, dtype, vision_dtype)
        else:
            raise LlavaLoadError(
                f"{os.path.join(path, 'config.json')}: model_type {model_type!r} is neither 'llava' (llava-hf layout) "
                "nor 'llava_llama' (original LLaVA layout with a LLaMA/Vicuna LLM)"
            )
        return gen

    @classmethod
    def _from_llava_hf(cls, path: str, raw: dict, dtype, vision_dtype) -> "TextInstructionGenerator":
        from transformers import LlavaForConditionalGeneration

        try:
            model, info = LlavaForConditionalGeneration.from_pretrained(
                path, dtype=dtype, local_files_only=True, output_loading_info=True)
        except Exception as e:
            raise LlavaLoadError(f"could not load the llava-hf model in {path}: {e}") from e
        missing = list(info.get("missing_keys", []))
        if missing:
            raise LlavaLoadError(f"{path}: missing weights: {sorted(missing)}")
        report = LoadReport(layout="llava-hf", vision_tower_source="saved",
                            unexpected=sorted(info.get("unexpected_keys", [])))
        if report.unexpected:
            warnings.warn(f"{path}: unexpected weights ignored: {report.unexpected}")
        _part(model, "vision_tower").to(vision_dtype)
        tokenizer = _load_tokenizer(path)
        vocab = model.config.text_config.vocab_size
        _check_tokenizer(tokenizer, path, min_size=min(1000, vocab // 2))
        image_token_id = model.config.image_token_id
        if tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER) in (None, tokenizer.unk_token_id):
            tokenizer.add_tokens([IMAGE_PLACEHOLDER], special_tokens=True)
        processor = clip_l336_image_processor(model.config.vision_config.image_size, folder=path)
        return cls(model, tokenizer, processor, image_token_id=image_token_id,
                   num_image_tokens=_num_image_tokens(model.config),
                   suppress_token_ids=_suppressed(image_token_id, len(tokenizer), vocab,
                                                  extra=_added_after(tokenizer, image_token_id)),
                   eos_token_id=_eos_from(path, model.config.text_config), load_report=report,
                   vision_dtype=vision_dtype)

    @classmethod
    def _from_original(cls, path: str, raw: dict, dtype, vision_dtype, vision_tower_path,
                       vision_tower_source) -> "TextInstructionGenerator":
        from transformers import LlamaConfig, LlavaConfig

        if vision_tower_source not in ("auto", "saved", "local"):
            raise ValueError(f"vision_tower_source must be 'auto', 'saved' or 'local', not {vision_tower_source!r}")
        projector_type = raw.get("mm_projector_type", "linear")
        if projector_type != "mlp2x_gelu":
            raise LlavaLoadError(f"{path}: mm_projector_type {projector_type!r} is not supported (only mlp2x_gelu)")
        aspect = raw.get("image_aspect_ratio", "square")
        if aspect not in ("pad", "square", None):
            raise LlavaLoadError(f"{path}: image_aspect_ratio {aspect!r} is not supported (pad or square)")
        if raw.get("mm_use_im_start_end", False):
            raise LlavaLoadError(f"{path}: mm_use_im_start_end=True is not supported (the release uses False)")
        select_feature = raw.get("mm_vision_select_feature", "patch")
        strategy = {"patch": "default", "cls_patch": "full"}.get(select_feature)
        if strategy is None:
            raise LlavaLoadError(f"{path}: mm_vision_select_feature {select_feature!r} is not supported")

        tokenizer = _load_tokenizer(path, llama=True)
        text_vocab = int(raw.get("vocab_size", 32000))
        _check_tokenizer(tokenizer, path, min_size=min(1000, text_vocab // 2))
        _check_against_sentencepiece(tokenizer, path)
        # Original LLaVA has no image token in its vocabulary (it splices -200); the HF model
        # needs a real id. Add "<image>" after the text vocabulary and pad the rows to a multiple
        # of 64 like the llava-hf conversion (32000 -> 32064).
        if tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER) in (None, tokenizer.unk_token_id):
            tokenizer.add_tokens([IMAGE_PLACEHOLDER], special_tokens=True)
        image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER))
        vocab = max(text_vocab, image_token_id + 1, len(tokenizer))
        vocab = -(-vocab // 64) * 64

        text_fields = {k: v for k, v in raw.items() if k not in _LLAVA_ONLY_FIELDS and not k.startswith("mm_")}
        if text_fields.get("rope_scaling", 0) is None:
            del text_fields["rope_scaling"]  # LLaMA-1/2 releases write null; 5.x warns on the legacy name
        text_fields.update(vocab_size=vocab, tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)))
        text_config = LlamaConfig.from_dict(text_fields)

        # ---- weights of the folder (LLM, projector, maybe the vision tower)
        state = load_weight_files(path)
        has_saved_tower = any(k.startswith("model.vision_tower.vision_tower.") for k in state)
        local_dir = vision_tower_path
        mm_tower = raw.get("mm_vision_tower")
        if local_dir is None and isinstance(mm_tower, str) and os.path.isdir(mm_tower):
            local_dir = mm_tower
        if local_dir is not None and not os.path.isdir(local_dir):
            raise LlavaLoadError(f"vision_tower_path {local_dir} is not a directory")
        if vision_tower_source == "saved" and not has_saved_tower:
            raise LlavaLoadError(f"{path} has no saved vision tower (model.vision_tower.vision_tower.vision_model.*)")
        use_saved = has_saved_tower and vision_tower_source != "local"
        if not use_saved and local_dir is None:
            raise LlavaLoadError(
                f"no CLIP vision tower available for {path}: "
                + ("vision_tower_source='local' was asked for" if has_saved_tower else
                   "the folder has no saved vision tower weights (model.vision_tower.vision_tower.vision_model.*)")
                + f" and no local CLIP-L/336 folder was given (vision_tower_path=None; mm_vision_tower="
                f"{mm_tower!r} is not a local directory). Download "
                f"{mm_tower or 'openai/clip-vit-large-patch14-336'} and pass its folder as vision_tower_path."
            )
        if not use_saved:  # drop any saved copy so it cannot mix with the local tower
            state = {k: v for k, v in state.items() if not k.startswith("model.vision_tower.vision_tower.")}

        # Vision config: the local CLIP folder's when there is one (exact), else from the shapes.
        if local_dir is not None and (not use_saved or os.path.isfile(os.path.join(local_dir, "config.json"))):
            vision_config = _vision_config_from_folder(local_dir)
        else:
            try:
                vision_config = _vision_config_from_tensors(state, "model.vision_tower.vision_tower.vision_model.")
            except (KeyError, ValueError) as e:
                raise LlavaLoadError(f"{path}: the saved vision tower is incomplete ({e}); pass a local "
                                     "CLIP-L/336 folder as vision_tower_path") from e
        mm_hidden = raw.get("mm_hidden_size")
        if mm_hidden is not None and int(mm_hidden) != vision_config.hidden_size:
            raise LlavaLoadError(f"{path}: mm_hidden_size {mm_hidden} != vision tower width {vision_config.hidden_size}")

        config = LlavaConfig(
            vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
            projector_hidden_act="gelu",  # LLaVA's mlp2x_gelu uses nn.GELU() (exact erf)
            vision_feature_select_strategy=strategy,
            vision_feature_layer=int(raw.get("mm_vision_select_layer", -2)),
            multimodal_projector_bias=True, tie_word_embeddings=text_config.tie_word_embeddings,
        )
        config.image_seq_length = _num_image_tokens(config)
        model = _empty_model(config)
        converted, report = convert_original_llava_state_dict(state, model, vocab_size=vocab)
        del state
        report.layout = "original-llava"
        report.vision_tower_source = "saved" if use_saved else f"local:{local_dir}"
        if not use_saved:
            prefixes = _hf_prefixes(model)
            for key, tensor in load_weight_files(local_dir).items():
                if _IGNORABLE_KEY_RE.search(key):
                    report.ignored.append(key)
                    continue
                new = _remap_clip_key(key, prefixes)
                if new is None:
                    report.ignored.append(key)  # text tower / projections of a full CLIPModel
                else:
                    converted[new] = tensor
                    report.origin[new] = f"{local_dir}:{key}"
        cls._assign(model, converted, report, path, dtype, vision_dtype)
        model.config.dtype = dtype
        processor = clip_l336_image_processor(
            vision_config.image_size, folder=local_dir if local_dir is not None else path)
        return cls(model, tokenizer, processor, image_token_id=image_token_id,
                   num_image_tokens=config.image_seq_length, pad_to_square=(aspect == "pad"),
                   suppress_token_ids=_suppressed(image_token_id, text_vocab, vocab),
                   eos_token_id=_eos_from(path, text_config), load_report=report, vision_dtype=vision_dtype)

    @staticmethod
    def _assign(model, converted: dict, report: LoadReport, path: str, dtype, vision_dtype) -> None:
        """Cast and assign the converted tensors; raise on missing keys, warn on unexpected ones."""
        expected = model.state_dict()
        vision_prefix = _hf_prefixes(model)["vision"]
        for key in list(converted):
            if key not in expected:
                report.unexpected.append(report.origin.get(key, key))
                del converted[key]
                continue
            if tuple(converted[key].shape) != tuple(expected[key].shape):
                raise LlavaLoadError(
                    f"{path}: {report.origin.get(key, key)} -> {key} has shape {tuple(converted[key].shape)}, "
                    f"the config expects {tuple(expected[key].shape)}")
            converted[key] = converted[key].to(vision_dtype if key.startswith(vision_prefix) else dtype)
        report.missing = sorted(k for k in expected if k not in converted)
        if report.missing:
            prefixes = _hf_prefixes(model)
            names = [f"{k} (checkpoint name {_original_name(k, prefixes)})" for k in report.missing]
            raise LlavaLoadError(f"{path}: missing weights: {names}")
        if report.unexpected:
            warnings.warn(f"{path}: unexpected weights ignored: {sorted(report.unexpected)}")
        model.load_state_dict(converted, strict=True, assign=True)

    # ---------------------------------------------------------------------------- inference

    def build_inputs(self, canvas_uint8: np.ndarray, target_uint8: np.ndarray,
                     question: str = TP_QUESTION) -> dict[str, torch.Tensor]:
        """Model inputs of one official TP call: input_ids, attention_mask, pixel_values."""
        image = compose_side_by_side(canvas_uint8, target_uint8)
        pixel_values = preprocess_image(image, self.image_processor, pad_to_square=self.pad_to_square)
        # The official pixels are cast to the LLM dtype (fp16) before entering the fp32 tower.
        pixel_values = pixel_values.to(self.dtype).to(self.vision_dtype)
        ids = tokenize_with_image(self.tokenizer, build_v0_prompt(question), self.image_token_id,
                                  self.num_image_tokens)
        device = self.model.get_output_embeddings().weight.device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "pixel_values": pixel_values.to(device)}

    @torch.no_grad()
    def generate_ids(self, canvas_uint8: np.ndarray, target_uint8: np.ndarray, question: str = TP_QUESTION,
                     max_new_tokens: int = 512, stop_strings: Sequence[str] | None = None,
                     keyframe_index: int | None = None) -> list[int]:
        """Greedy decoding (official settings); the new token ids, EOS included if emitted.

        Decoding stops at EOS or after ``max_new_tokens`` (512 officially). ``stop_strings``
        (default none, as officially) additionally stops once the new text contains one of them,
        e.g. ``["###"]`` for the v0 template's turn separator. ``keyframe_index`` is ignored (it
        exists so that this class and ManualInstructions share one interface).
        """
        inputs = self.build_inputs(canvas_uint8, target_uint8, question)
        kwargs: dict[str, Any] = {}
        if stop_strings:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_StopOnStrings(self.tokenizer, inputs["input_ids"].shape[1], stop_strings)])
        return self._decode_new(inputs, max_new_tokens, num_beams=1, **kwargs)[0]

    def _decode_new(self, inputs: dict, max_new_tokens: int, num_beams: int, **kwargs) -> list[list[int]]:
        """Deterministic decoding (greedy, or beam search with ``num_beams``): the new token ids of each returned
        sequence."""
        from transformers import LogitsProcessor, LogitsProcessorList

        model_dtype = self.dtype

        class RequireFinite(LogitsProcessor):
            """NaN or +Inf scores (broken weights, fp16 overflow) would decode to garbage words; -Inf is the
            suppressed tokens' own value."""

            def __call__(self, input_ids, scores):
                if bool(torch.isnan(scores).any() or torch.isposinf(scores).any()):
                    raise NumericalFault("text model (LLaVA)", model_dtype, "next-token scores")
                return scores

        kwargs["logits_processor"] = LogitsProcessorList([RequireFinite(), *kwargs.get("logits_processor", [])])
        pad = self.tokenizer.pad_token_id
        out = self.model.generate(
            **inputs, do_sample=False, num_beams=int(num_beams), temperature=None, top_p=None, top_k=None,
            max_new_tokens=int(max_new_tokens), use_cache=True, eos_token_id=self.eos_token_id,
            pad_token_id=self.eos_token_id if pad is None else pad,
            # The image token and padding rows do not exist in the official 32000-row vocabulary;
            # masking their logits keeps greedy decoding identical to it.
            suppress_tokens=self.suppress_token_ids or None, **kwargs,
        )
        return out[:, inputs["input_ids"].shape[1]:].tolist()

    @torch.no_grad()
    def alternatives(self, canvas_uint8: np.ndarray, target_uint8: np.ndarray, count: int,
                     question: str = TP_QUESTION, max_new_tokens: int = 512,
                     stop_strings: Sequence[str] | None = None) -> list[str]:
        """Up to ``count`` distinct answers for [canvas | target], most likely first (beam search with
        ``count`` beams; an answer's score is its mean token log-probability; ``stop_strings`` cut the
        decoded texts). The loop asks for these when the greedy answer names a region the mask generator
        finds finished (``PaintSettings.reask``)."""
        inputs = self.build_inputs(canvas_uint8, target_uint8, question)
        answers: list[str] = []
        for row in self._decode_new(inputs, max_new_tokens, num_beams=count, num_return_sequences=int(count)):
            text = self.decode(row, stop_strings)
            if text and text not in answers:
                answers.append(text)
        return answers

    def decode(self, ids: Sequence[int], stop_strings: Sequence[str] | None = None) -> str:
        """The official post-processing: ``batch_decode(skip_special_tokens=True)[0].strip()``."""
        text = self.tokenizer.batch_decode([list(ids)], skip_special_tokens=True)[0]
        for s in stop_strings or ():
            text = text.split(s, 1)[0]
        return text.strip()

    def generate(self, canvas_uint8: np.ndarray, target_uint8: np.ndarray, question: str = TP_QUESTION,
                 max_new_tokens: int = 512, stop_strings: Sequence[str] | None = None,
                 keyframe_index: int | None = None) -> str:
        """The instruction text for [canvas | target] (both uint8 HWC RGB, same working size)."""
        ids = self.generate_ids(canvas_uint8, target_uint8, question, max_new_tokens, stop_strings)
        return self.decode(ids, stop_strings)

    __call__ = generate

    # ---------------------------------------------------------------------------- conversion

    def save_llava_hf(self, path: str) -> None:
        """Write the loaded model in llava-hf layout (model, tokenizer with "<image>", processor).

        The reloaded folder behaves identically with this class. Note that transformers'
        LlavaProcessor does not pad to square nor use the v0 prompt: use this class for parity.
        """
        os.makedirs(path, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)


def _part(model, name: str):
    """A sub-module of LlavaForConditionalGeneration (under ``.model`` in transformers 5)."""
    inner = getattr(model, "model", None)
    return getattr(inner, name) if inner is not None and hasattr(inner, name) else getattr(model, name)


def _num_image_tokens(config) -> int:
    vc = config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2
    return n + (1 if config.vision_feature_select_strategy == "full" else 0)


def _suppressed(image_token_id: int, real_vocab: int, vocab: int, extra: Iterable[int] = ()) -> list[int]:
    # The image token plus every row beyond the real vocabulary (padding rows).
    return sorted({int(image_token_id), *range(int(real_vocab), int(vocab)), *(int(i) for i in extra)})


def _added_after(tokenizer, image_token_id: int) -> list[int]:
    """Special tokens added after "<image>" by a llava-hf conversion (e.g. "<pad>" = 32001).

    They are not in the official 32000-token vocabulary, so they must not win the greedy argmax.
    """
    keep = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return [i for i, tok in added.items()
            if i > image_token_id and i not in keep and getattr(tok, "special", False)]


def _eos_from(path: str, text_config) -> int | None:
    gen_cfg = os.path.join(path, "generation_config.json")
    if os.path.isfile(gen_cfg):
        with open(gen_cfg, encoding="utf-8") as f:
            eos = json.load(f).get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        if eos is not None:
            return int(eos)
    eos = getattr(text_config, "eos_token_id", None)
    return eos[0] if isinstance(eos, list) else eos


# --------------------------------------------------------------------------------------------
# Manual mode
# --------------------------------------------------------------------------------------------


def parse_instruction_list(text: str) -> list[str]:
    """Split user text into instructions on newlines or '|'; blank entries are dropped.

    "sky | mountain\\n\\ngrass " -> ["sky", "mountain", "grass"].
    """
    return [part.strip() for part in re.split(r"[\r\n|]", text or "") if part.strip()]


class ManualInstructions:
    """User-supplied instructions, one per keyframe, with the generator's ``generate`` interface.

    Keyframe k uses ``instructions[k]``; when the list is shorter than the number of keyframes
    the last entry repeats, so a single instruction applies to every keyframe. A string is
    parsed with :func:`parse_instruction_list`.
    """

    def __init__(self, instructions: str | Sequence[str]):
        if isinstance(instructions, str):
            items = parse_instruction_list(instructions)
        else:
            items = [str(s).strip() for s in instructions if str(s).strip()]
        if not items:
            raise ValueError("ManualInstructions needs at least one non-blank instruction")
        self.instructions = items

    def __len__(self) -> int:
        return len(self.instructions)

    def generate(self, canvas_uint8: np.ndarray | None = None, target_uint8: np.ndarray | None = None,
                 question: str | None = None, max_new_tokens: int | None = None,
                 stop_strings: Sequence[str] | None = None, keyframe_index: int = 0) -> str:
        """The instruction of keyframe ``keyframe_index`` (images and decoding args are ignored)."""
        if keyframe_index is None or keyframe_index < 0:
            raise ValueError(f"keyframe_index must be >= 0, got {keyframe_index}")
        return self.instructions[min(int(keyframe_index), len(self.instructions) - 1)]

    __call__ = generate
