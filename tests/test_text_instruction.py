"""Text-instruction generator: prompt, image preparation, tokenisation, both LLaVA layouts, manual mode.

Everything runs on a tiny random LLaVA written by tests/tiny_llava.py in both the llava-hf and the
released original-LLaVA layouts (same weights), so the remap can be checked token for token.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_llava as tl  # noqa: E402

from inverse_painting.models.text_instruction import (  # noqa: E402
    ANNOTATOR_QUESTION,
    CLIP_MEAN,
    CLIP_STD,
    PAD_BACKGROUND,
    TP_QUESTION,
    LlavaLoadError,
    ManualInstructions,
    TextInstructionGenerator,
    build_v0_prompt,
    clip_l336_image_processor,
    compose_side_by_side,
    expand_to_square,
    parse_instruction_list,
    preprocess_image,
)

torch.set_num_threads(1)
MAX_NEW = 16
N_IMG = 576  # (336 / 14) ** 2 patches, CLS dropped


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return tl.make_all(str(tmp_path_factory.mktemp("tiny_llava")))


@pytest.fixture(scope="module")
def gen_hf(fx):
    return TextInstructionGenerator.from_pretrained(fx["hf"])


@pytest.fixture(scope="module")
def gen_orig(fx):
    return TextInstructionGenerator.from_pretrained(fx["orig_with_tower"])


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    canvas = np.full((64, 96, 3), 255, np.uint8)
    canvas[10:30, 20:60] = (200, 40, 40)
    target = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    return canvas, target


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


# ------------------------------------------------------------------------------------ prompt


def test_questions_and_v0_prompt_are_exact():
    assert TP_QUESTION == (
        "There are two images side by side. The left image is an intermediate stage in a painting process "
        "of the right image. Please tell me what content should be painted next? The answer should be less "
        "than 2 words."
    )
    assert ANNOTATOR_QUESTION == (
        "There are two images side by side. The right image is the next step of the left image in the "
        "painting process of a painting. Please tell me what is added to right image? The answer should be "
        "less than 2 words."
    )
    assert build_v0_prompt(TP_QUESTION) == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions.###Human: <image>\n"
        + TP_QUESTION + "###Assistant:"
    )
    assert build_v0_prompt("Q?").count("<image>") == 1


# ------------------------------------------------------------------------------------ images


def test_expand_to_square_geometry_and_colour():
    assert PAD_BACKGROUND == (122, 116, 104)
    wide = np.full((4, 10, 3), 7, np.uint8)
    out = expand_to_square(wide)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert (out[3:7] == 7).all()  # centred: offset (10 - 4) // 2 = 3
    assert (out[:3] == PAD_BACKGROUND).all() and (out[7:] == PAD_BACKGROUND).all()

    tall = np.full((10, 3, 3), 9, np.uint8)
    out = expand_to_square(tall, background=(1, 2, 3))
    assert out.shape == (10, 10, 3)
    assert (out[:, 3:6] == 9).all() and (out[:, :3] == (1, 2, 3)).all() and (out[:, 6:] == (1, 2, 3)).all()

    odd = np.full((5, 8, 3), 50, np.uint8)  # odd difference: extra row at the bottom, like PIL paste
    out = expand_to_square(odd)
    assert (out[0] == PAD_BACKGROUND).all() and (out[1:6] == 50).all() and (out[6:] == PAD_BACKGROUND).all()

    square = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    assert np.array_equal(expand_to_square(square), square)

    # Same pixels as LLaVA's PIL-based pad (new square image + paste at the centred offset).
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (37, 90, 3), dtype=np.uint8)
    ref = Image.new("RGB", (90, 90), PAD_BACKGROUND)
    ref.paste(Image.fromarray(img), (0, (90 - 37) // 2))
    assert np.array_equal(expand_to_square(img), np.asarray(ref))


def test_compose_side_by_side():
    canvas = np.full((6, 5, 3), 10, np.uint8)
    target = np.full((6, 5, 3), 20, np.uint8)
    out = compose_side_by_side(canvas, target)
    assert out.shape == (6, 10, 3)
    assert (out[:, :5] == 10).all() and (out[:, 5:] == 20).all()  # left = canvas, right = target

    # Different heights: both pasted at the top on black, nothing cropped.
    out = compose_side_by_side(np.full((4, 5, 3), 10, np.uint8), np.full((6, 3, 3), 20, np.uint8))
    assert out.shape == (6, 8, 3)
    assert (out[:4, :5] == 10).all() and (out[4:, :5] == 0).all() and (out[:, 5:] == 20).all()

    # Official geometry: (h_t, 2 w_t) black, canvas at (0,0), target at (w_t, 0) over the canvas.
    out = compose_side_by_side(np.full((4, 7, 3), 10, np.uint8), np.full((6, 3, 3), 20, np.uint8),
                               official_layout=True)
    assert out.shape == (6, 6, 3)
    assert (out[:4, :3] == 10).all() and (out[4:, :3] == 0).all() and (out[:, 3:] == 20).all()

    # RGBA and greyscale inputs become RGB.
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = 255
    grey = np.full((2, 2), 30, np.uint8)
    out = compose_side_by_side(rgba, grey)
    assert out.shape == (2, 4, 3) and (out[:, 2:] == 30).all()


def test_clip_image_processor_matches_manual_reference(fx):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)
    proc = clip_l336_image_processor()
    pv = preprocess_image(img, proc)
    assert pv.shape == (1, 3, 336, 336) and pv.dtype == torch.float32
    # Reference: pad to square, bicubic 336 (the crop is then a no-op), /255, CLIP mean/std.
    sq = Image.fromarray(expand_to_square(img)).resize((336, 336), Image.BICUBIC)
    ref = (np.asarray(sq, np.float32) / 255 - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    ref = torch.from_numpy(ref).permute(2, 0, 1)[None]
    assert torch.allclose(pv, ref, atol=1e-5)
    # The released CLIP-L/336 preprocessor_config.json (old-style ints) gives the same numbers.
    assert torch.equal(preprocess_image(img, clip_l336_image_processor(folder=fx["clip"])), pv)
    # Without padding: shortest edge 336, centre crop 336.
    assert preprocess_image(img, proc, pad_to_square=False).shape == (1, 3, 336, 336)


# ------------------------------------------------------------------------------------ tokens


def test_token_sequence_around_image(fx, gen_orig, gen_hf, images):
    import sentencepiece as spm

    assert len(gen_orig.tokenizer) >= tl.TEXT_VOCAB  # not an empty offline tokenizer
    inputs = gen_orig.build_inputs(*images)
    ids = inputs["input_ids"][0].tolist()
    assert inputs["pixel_values"].shape == (1, 3, 336, 336)
    assert inputs["attention_mask"].shape == inputs["input_ids"].shape

    # Independent reference: SentencePiece itself (= the official slow LLaMA tokenizer).
    sp = spm.SentencePieceProcessor(model_file=os.path.join(fx["tokenizer"], "tokenizer.model"))
    before, after = build_v0_prompt(TP_QUESTION).split("<image>")
    expected = [1] + sp.encode(before) + [tl.IMAGE_TOKEN_ID] * N_IMG + sp.encode(after)
    assert ids == expected

    assert ids[0] == 1 and ids.count(1) == 1  # BOS once (the second chunk's BOS is dropped)
    first = ids.index(tl.IMAGE_TOKEN_ID)
    assert ids.count(tl.IMAGE_TOKEN_ID) == N_IMG
    assert ids[first:first + N_IMG] == [tl.IMAGE_TOKEN_ID] * N_IMG  # one contiguous block
    # "\n" after the image is "▁" + "<0x0A>" (LLaMA: 29871, 13), as in the official sequence.
    assert sp.id_to_piece(ids[first + N_IMG]) == "▁" and sp.id_to_piece(ids[first + N_IMG + 1]) == "<0x0A>"

    # The llava-hf layout (tokenizer.json with "<image>") builds the identical sequence.
    assert gen_hf.build_inputs(*images)["input_ids"][0].tolist() == ids
    assert gen_hf.num_image_tokens == gen_orig.num_image_tokens == N_IMG


# ------------------------------------------------------------------------------------ layouts


def test_original_layout_matches_llava_hf(fx, gen_hf, gen_orig, images):
    assert gen_orig.load_report.layout == "original-llava"
    assert gen_orig.load_report.vision_tower_source == "saved"
    assert not gen_orig.load_report.unexpected and not gen_orig.load_report.missing

    # Same weights after the remap (the original layout has 400 text rows, zero-padded to 448).
    sd_hf, sd_orig = gen_hf.model.state_dict(), gen_orig.model.state_dict()
    assert sd_hf.keys() == sd_orig.keys()
    for k in sd_hf:
        a, b = sd_hf[k], sd_orig[k]
        if k.endswith("embed_tokens.weight") or k == "lm_head.weight":
            a, b = a[:tl.TEXT_VOCAB], b[:tl.TEXT_VOCAB]
        assert torch.equal(a, b), k

    with torch.no_grad():
        logits_hf = gen_hf.model(**gen_hf.build_inputs(*images)).logits[0, -1, :tl.TEXT_VOCAB]
        logits_orig = gen_orig.model(**gen_orig.build_inputs(*images)).logits[0, -1, :tl.TEXT_VOCAB]
    assert torch.allclose(logits_hf, logits_orig, atol=1e-5)

    ids_hf = gen_hf.generate_ids(*images, max_new_tokens=MAX_NEW)
    ids_orig = gen_orig.generate_ids(*images, max_new_tokens=MAX_NEW)
    assert ids_hf == ids_orig
    assert len(ids_orig) >= 4  # a non-trivial sequence (no immediate EOS) ...
    assert len(ids_orig) == MAX_NEW or ids_orig[-1] == 2  # ... ending at EOS or at the length limit
    assert 2 not in ids_orig[:-1]
    assert all(i < tl.TEXT_VOCAB for i in ids_orig)  # image token / padding rows never emitted
    # The image matters: another pair gives another answer.
    canvas, target = images
    assert gen_orig.generate_ids(canvas, canvas, max_new_tokens=MAX_NEW) != ids_orig


@pytest.mark.parametrize("variant", ["bin_shards", "local_tower_arg", "local_tower_mm_path", "local_forced"])
def test_other_original_variants_generate_the_same(fx, gen_hf, images, variant):
    if variant == "bin_shards":
        gen = TextInstructionGenerator.from_pretrained(fx["orig_bin"])
    elif variant == "local_tower_arg":
        gen = TextInstructionGenerator.from_pretrained(fx["orig_no_tower"], vision_tower_path=fx["clip"])
    elif variant == "local_tower_mm_path":  # mm_vision_tower is an existing local directory
        gen = TextInstructionGenerator.from_pretrained(fx["orig_no_tower_local_mm"])
    else:
        gen = TextInstructionGenerator.from_pretrained(fx["orig_with_tower"], vision_tower_path=fx["clip"],
                                                       vision_tower_source="local")
    if variant != "bin_shards":
        assert gen.load_report.vision_tower_source == "local:" + fx["clip"]
        # The text tower and projections of the full CLIPModel checkpoint are skipped, not loaded.
        assert "text_model.embeddings.token_embedding.weight" in gen.load_report.ignored
    assert gen.generate_ids(*images, max_new_tokens=MAX_NEW) == gen_hf.generate_ids(*images, max_new_tokens=MAX_NEW)


def test_generate_text_stop_strings_and_keyframe_index(gen_orig, images):
    ids = gen_orig.generate_ids(*images, max_new_tokens=MAX_NEW)
    text = gen_orig.generate(*images, max_new_tokens=MAX_NEW, keyframe_index=7)  # index is ignored
    assert text == gen_orig.tokenizer.batch_decode([ids], skip_special_tokens=True)[0].strip()
    assert gen_orig(*images, max_new_tokens=MAX_NEW) == text

    short = gen_orig.generate_ids(*images, max_new_tokens=5)
    assert short == ids[:5]

    stop = next((c for c in text if c.isascii() and c.isalnum()), None)
    assert stop is not None
    cut = gen_orig.generate_ids(*images, max_new_tokens=MAX_NEW, stop_strings=[stop])
    assert cut == ids[:len(cut)] and len(cut) < len(ids)
    assert stop in gen_orig.decode(cut) and stop not in gen_orig.decode(cut[:-1])
    assert gen_orig.generate(*images, max_new_tokens=MAX_NEW, stop_strings=[stop]) == \
        gen_orig.tokenizer.decode(cut, skip_special_tokens=True).split(stop)[0].strip()


def test_alternatives_are_distinct_beam_answers(gen_orig, images):
    """One beam is greedy decoding; more beams give several distinct answers, deterministically."""
    greedy = gen_orig.generate(*images, max_new_tokens=MAX_NEW)
    assert gen_orig.alternatives(*images, 1, max_new_tokens=MAX_NEW) == ([greedy] if greedy else [])
    answers = gen_orig.alternatives(*images, 4, max_new_tokens=MAX_NEW)
    assert 1 < len(answers) <= 4 and len(set(answers)) == len(answers) and all(a.strip() == a and a for a in answers)
    assert gen_orig.alternatives(*images, 4, max_new_tokens=MAX_NEW) == answers


def test_mixed_precision_llm_with_fp32_vision_tower(fx, images):
    gen = TextInstructionGenerator.from_pretrained(fx["orig_with_tower"], dtype=torch.bfloat16,
                                                   vision_dtype=torch.float32)
    assert gen.model.lm_head.weight.dtype == torch.bfloat16
    assert gen.model.model.vision_tower.embeddings.patch_embedding.weight.dtype == torch.float32
    ids = gen.generate_ids(*images, max_new_tokens=4)  # projector input is cast, no dtype error
    assert 1 <= len(ids) <= 4


def test_save_llava_hf_roundtrip(tmp_path, gen_orig, images):
    out = tmp_path / "converted"
    gen_orig.save_llava_hf(str(out))
    with open(out / "config.json") as f:
        assert json.load(f)["model_type"] == "llava"
    gen = TextInstructionGenerator.from_pretrained(str(out))
    assert gen.load_report.layout == "llava-hf"
    assert gen.image_token_id == gen_orig.image_token_id
    assert gen.generate_ids(*images, max_new_tokens=MAX_NEW) == gen_orig.generate_ids(*images, max_new_tokens=MAX_NEW)


# ------------------------------------------------------------------------------------ errors


def test_error_when_no_vision_tower_is_available(fx, tmp_path):
    with pytest.raises(LlavaLoadError, match=r"no CLIP vision tower.*vision_tower_path.*clip-vit-large-patch14-336"):
        TextInstructionGenerator.from_pretrained(fx["orig_no_tower"])
    with pytest.raises(LlavaLoadError, match="is not a directory"):
        TextInstructionGenerator.from_pretrained(fx["orig_no_tower"], vision_tower_path=str(tmp_path / "nope"))
    with pytest.raises(LlavaLoadError, match="no saved vision tower"):
        TextInstructionGenerator.from_pretrained(fx["orig_no_tower"], vision_tower_source="saved")


@pytest.mark.parametrize("src,shard", [("orig_with_tower", "model-00002-of-00002.safetensors"),
                                       ("orig_bin", "pytorch_model-00001-of-00002.bin")])
def test_error_on_truncated_weight_file(fx, tmp_path, src, shard):
    folder = _copy(fx[src], tmp_path / "tp")
    path = os.path.join(folder, shard)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(LlavaLoadError, match=rf"{shard}.*truncated or corrupt"):
        TextInstructionGenerator.from_pretrained(folder)


def test_error_on_truncated_llava_hf_file(fx, tmp_path):
    folder = _copy(fx["hf"], tmp_path / "hf")
    path = os.path.join(folder, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(LlavaLoadError, match="llava-hf model"):
        TextInstructionGenerator.from_pretrained(folder)


def test_llava_hf_added_tokens_are_suppressed(fx, tmp_path):
    # llava-hf conversions add "<pad>" after "<image>"; not in the official vocabulary.
    from transformers import AutoTokenizer

    folder = _copy(fx["hf"], tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.save_pretrained(folder)
    gen = TextInstructionGenerator.from_pretrained(folder)
    assert len(gen.tokenizer) == tl.IMAGE_TOKEN_ID + 2
    assert gen.suppress_token_ids == list(range(tl.IMAGE_TOKEN_ID, tl.HF_VOCAB))


def test_error_on_missing_weight_file(fx, tmp_path):
    folder = _copy(fx["orig_with_tower"], tmp_path / "tp")
    os.remove(os.path.join(folder, "model-00001-of-00002.safetensors"))
    with pytest.raises(LlavaLoadError, match="model-00001-of-00002.safetensors"):
        TextInstructionGenerator.from_pretrained(folder)
    for name in os.listdir(folder):
        if "safetensors" in name:
            os.remove(os.path.join(folder, name))
    with pytest.raises(LlavaLoadError, match="no weights found"):
        TextInstructionGenerator.from_pretrained(folder)


def test_missing_key_raises_and_unexpected_key_warns(fx, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(fx["orig_with_tower"], tmp_path / "tp")
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        index = json.load(f)["weight_map"]
    shard = os.path.join(folder, index["model.mm_projector.2.bias"])
    sd = load_file(shard)
    removed = sd.pop("model.mm_projector.2.bias")
    save_file(sd, shard)
    with pytest.raises(LlavaLoadError, match=r"multi_modal_projector\.linear_2\.bias.*model\.mm_projector\.2\.bias"):
        TextInstructionGenerator.from_pretrained(folder)

    sd["model.mm_projector.2.bias"] = removed
    sd["model.mm_projector.4.weight"] = torch.zeros(2, 2)   # not a mlp2x_gelu key
    sd["model.extra_module.weight"] = torch.zeros(2)        # remaps into the LLM, unknown there
    save_file(sd, shard)
    with pytest.warns(UserWarning, match=r"model\.extra_module\.weight.*model\.mm_projector\.4\.weight"):
        gen = TextInstructionGenerator.from_pretrained(folder)
    assert sorted(gen.load_report.unexpected) == ["model.extra_module.weight", "model.mm_projector.4.weight"]


def test_error_on_empty_tokenizer(fx, tmp_path):
    folder = _copy(fx["orig_no_tower"], tmp_path / "tp")
    os.remove(os.path.join(folder, "tokenizer.model"))
    with pytest.raises(LlavaLoadError, match="tokenizer"):
        TextInstructionGenerator.from_pretrained(folder, vision_tower_path=fx["clip"])


def test_bare_tokenizer_model_still_gives_official_ids(fx, tmp_path, gen_orig, images):
    # A release with only tokenizer.model (no tokenizer_config.json): BOS and "▁" handled the same.
    folder = _copy(fx["orig_with_tower"], tmp_path / "tp")
    os.remove(os.path.join(folder, "tokenizer_config.json"))
    os.remove(os.path.join(folder, "special_tokens_map.json"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "does not reproduce SentencePiece" warning either
        gen = TextInstructionGenerator.from_pretrained(folder)
    assert torch.equal(gen.build_inputs(*images)["input_ids"], gen_orig.build_inputs(*images)["input_ids"])


def test_unsupported_config_is_rejected(fx, tmp_path):
    folder = _copy(fx["orig_with_tower"], tmp_path / "tp")
    cfg_path = os.path.join(folder, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    with open(cfg_path, "w") as f:
        json.dump({**cfg, "mm_projector_type": "linear"}, f)
    with pytest.raises(LlavaLoadError, match="mm_projector_type"):
        TextInstructionGenerator.from_pretrained(folder)
    with open(cfg_path, "w") as f:
        json.dump({**cfg, "model_type": "bert"}, f)
    with pytest.raises(LlavaLoadError, match="model_type"):
        TextInstructionGenerator.from_pretrained(folder)


# ------------------------------------------------------------------------------------ manual mode


def test_parse_instruction_list():
    assert parse_instruction_list("sky | mountain\n\n grass \r\n|") == ["sky", "mountain", "grass"]
    assert parse_instruction_list("Mountain, sky") == ["Mountain, sky"]
    assert parse_instruction_list("  \n | ") == []
    assert parse_instruction_list("") == []


def test_manual_instructions(images):
    manual = ManualInstructions(["sky", "mountain", "grass"])
    assert [manual.generate(*images, keyframe_index=k) for k in range(5)] == \
        ["sky", "mountain", "grass", "grass", "grass"]  # the last entry repeats
    single = ManualInstructions("tree")
    assert single.generate(keyframe_index=0) == single.generate(*images, keyframe_index=30) == "tree"
    assert ManualInstructions("a | b\nc").instructions == ["a", "b", "c"]
    assert ManualInstructions([" x ", "", "y"]).instructions == ["x", "y"]
    assert len(manual) == 3 and manual(keyframe_index=1) == "mountain"
    with pytest.raises(ValueError):
        ManualInstructions(" | \n")
    with pytest.raises(ValueError):
        manual.generate(keyframe_index=-1)
