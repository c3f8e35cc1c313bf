"""Text-generator trainer tests (training/trainers/text_generator.py) on the tiny LLaVA.

* a training sequence is token for token our inference prompt (v0 template, image tokens) followed by
  the answer and EOS, and only the answer is supervised;
* LoRA targets are exactly the LLM's nn.Linear layers;
* 150 steps on 6 synthetic conversations: the loss falls, the merged TP_llava folder reloads with
  TextInstructionGenerator.from_pretrained and reproduces training labels, and the saved adapter +
  projector rebuild the same model.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import tiny_llava as tl  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from inverse_painting.training.ground_truth import write_ground_truth
    from inverse_painting.training.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tt")
    generate_dataset(str(root / "data"), 2, seed=0, size=(64, 96), num_steps=3)
    write_ground_truth(root / "data", "train", masks=False)  # labels only: no metric needed
    tok = tl.train_tiny_sentencepiece(str(root / "tok"))
    hf = tl.write_llava_hf(tl.build_tiny_llava(), os.path.dirname(tok), str(root / "llava_hf"))
    return root, hf


def _pairs(data):
    from inverse_painting.training.raw_layout import iter_pairs, load_frame, read_labels

    for vd, pl in iter_pairs(str(data / "train")):
        tgt, labels = load_frame(vd, pl.target), read_labels(vd)
        for cur, nxt, _ in pl.pairs:
            yield load_frame(vd, cur, like=tgt), tgt, labels[nxt]


def test_training_sequence_is_the_inference_prompt(setup):
    from inverse_painting.models.text_instruction import TP_QUESTION, TextInstructionGenerator, compose_side_by_side
    from inverse_painting.training.trainers.text_generator import IGNORE_INDEX, build_example, llm_linear_names

    root, hf = setup
    gen = TextInstructionGenerator.from_pretrained(hf)
    cur, tgt, label = next(_pairs(root / "data"))
    ex = build_example(gen, compose_side_by_side(cur, tgt), TP_QUESTION, label)
    inf = gen.build_inputs(cur, tgt)
    n = inf["input_ids"].shape[1]
    torch.testing.assert_close(ex["input_ids"][:n], inf["input_ids"][0], rtol=0, atol=0)
    torch.testing.assert_close(ex["pixel_values"][None], inf["pixel_values"], rtol=0, atol=0)
    assert (ex["labels"][:n] == IGNORE_INDEX).all()
    answer = ex["labels"][n:].tolist()
    assert answer == ex["input_ids"][n:].tolist() and answer[-1] == gen.eos_token_id
    assert gen.decode(answer) == label
    names = llm_linear_names(gen.model)
    assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("vision" in n or "projector" in n or "lm_head" in n for n in names)


def test_lora_training_memorises_and_reloads(setup):
    from peft import PeftModel
    from safetensors.torch import load_file

    from inverse_painting.models.text_instruction import TextInstructionGenerator
    from inverse_painting.training.trainers.text_generator import TextConfig, train

    root, hf = setup
    out = root / "out"
    cfg = TextConfig(data=str(root / "data"), base=hf, out=str(out), steps=150, cpu=True, progress=False,
                     tensorboard=False, log_every=0, lora_r=8, lora_alpha=16, lr=5e-3, projector_lr=5e-3,
                     export_dtype="float32")
    res = train(cfg)
    losses = res["losses"]
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    print(f"text generator: 150 steps, loss first10 {first:.3f} last10 {last:.3f}")
    assert last < 0.3 * first
    gen = TextInstructionGenerator.from_pretrained(str(out / "TP_llava"))
    assert json.loads((out / "TP_llava" / "trainer_step.json").read_text())["global_step"] == 150
    got = [(gen.generate(c, t, max_new_tokens=8, stop_strings=["###"]), lab) for c, t, lab in _pairs(root / "data")]
    print("generated vs label:", got)
    labels = {lab for _, lab in got}
    assert sum(g == lab for g, lab in got) >= 2  # memorised at least one label per painting
    assert all(g in labels for g, _ in got)
    # the adapter + projector reproduce the merged weights
    base = TextInstructionGenerator.from_pretrained(hf)
    pm = PeftModel.from_pretrained(base.model, str(out / "TP_lora"))
    pm.get_base_model().model.multi_modal_projector.load_state_dict(load_file(str(out / "TP_lora" / "projector.safetensors")))
    c, t, _ = next(_pairs(root / "data"))
    inputs = gen.build_inputs(c, t)
    with torch.no_grad():
        torch.testing.assert_close(pm.merge_and_unload()(**inputs).logits, gen.model(**inputs).logits, rtol=1e-4, atol=1e-4)


def test_resume_with_cosine_schedule_is_exact(setup, tmp_path):
    from inverse_painting.training.trainers.text_generator import TextConfig, train

    root, hf = setup
    common = dict(data=str(root / "data"), base=hf, steps=6, cpu=True, progress=False, tensorboard=False,
                  log_every=0, lora_r=4, lora_alpha=8, lr=5e-3, warmup_ratio=0.34, save_adapter=False,
                  export_dtype="float32")
    full = train(TextConfig(out=str(tmp_path / "full"), **common))
    train(TextConfig(out=str(tmp_path / "part"), stop_after=3, **common))
    second = train(TextConfig(out=str(tmp_path / "part"), resume="latest", **common))
    np.testing.assert_allclose(second["losses"], full["losses"][3:], rtol=0, atol=0)
    a, b = full["model"].state_dict(), second["model"].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_vision_tower_is_frozen_unless_asked(setup, tmp_path):
    """The release recipe keeps the vision tower frozen; ``train_vision_tower`` (the starter's random tower)
    trains it at the projector's LR, and the merged export carries the trained tower."""
    from safetensors.torch import load_file

    from inverse_painting.training.trainers.text_generator import TextConfig, train

    root, hf = setup
    common = dict(data=str(root / "data"), base=hf, steps=3, cpu=True, progress=False, tensorboard=False,
                  log_every=0, lora_r=4, lora_alpha=8, lr=5e-3, projector_lr=5e-3, save_adapter=False,
                  export_dtype="float32")
    base = load_file(str(next(iter(sorted(Path(hf).glob("*.safetensors"))))))
    for flag in (False, True):
        out = tmp_path / str(flag)
        train(TextConfig(out=str(out), train_vision_tower=flag, **common))
        merged = load_file(str(out / "TP_llava" / "model.safetensors"))
        tower = [k for k in merged if "vision_tower" in k and k in base and merged[k].ndim == 2]
        last = max(int(k.split("layers.")[1].split(".")[0]) for k in tower if "layers." in k)
        # LLaVA reads the second-to-last layer's output: the last layer gets no gradient
        used = [k for k in tower if f"layers.{last}." not in k]
        assert used
        changed = [k for k in used if not torch.equal(merged[k], base[k])]
        assert (changed == used) if flag else not changed, (flag, changed)
