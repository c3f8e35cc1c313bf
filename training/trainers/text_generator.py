"""Text-generator ("TP") trainer (spec 4.5) on accelerate: LoRA (peft) fine-tune of a LLaVA.

Recipe as officially: LoRA r 128, alpha 256, dropout 0.05, bias none, on every ``nn.Linear`` of the LLM
(q/k/v/o/gate/up/down; not lm_head, projector or vision tower); the projector is trained fully at its own
LR (2e-5); LR 1e-4, cosine with 3 % warm-up, weight decay 0; the vision tower is frozen (``--train-vision-tower``
trains it too, for a model built from scratch); only the answer
tokens are supervised (every other label is -100).

Deliberate difference (spec B3): the official run trained with the vicuna_v1 template but the released
inference code prompts with llava_v0. We train with the **v0** prompt, built by the very functions our
inference uses (:func:`build_v0_prompt`, :func:`tokenize_with_image`, :func:`compose_side_by_side`,
:func:`preprocess_image`), so a training sequence is token for token the inference prompt followed by the
answer and EOS (what the released model emits after its answer).

Data: ``<split>/llava_json.json`` + ``llava_image/`` written by ``training.ground_truth`` (one conversation
= [cur | target] image, the TP question, answer = GT next_text). Steps are global optimizer steps; with
``--steps 0`` they come from ``--epochs`` (default 10) x pairs / (batch x processes). Each step draws its
batch uniformly with replacement from a (seed, step, rank) generator, as the other trainers, so resume is
exact.

Output: ``<out>/TP_llava/`` = merged weights in llava-hf layout (+ tokenizer, processor), loadable by
``TextInstructionGenerator.from_pretrained`` and the nodes; ``<out>/TP_lora/`` = the peft adapter plus
``projector.safetensors`` (the trained projector, like LLaVA's non_lora_trainables.bin).

CLI: ``python -m inverse_painting.training.trainers.text_generator --data D --base LLAVA_OR_RELEASE --out O``
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...models.text_instruction import (IMAGE_PLACEHOLDER, TextInstructionGenerator, build_v0_prompt,
                                        preprocess_image, tokenize_with_image)
from .common import run_cli, TrainConfig, make_accelerator, train_loop

IGNORE_INDEX = -100


@dataclass
class TextConfig(TrainConfig):
    steps: int = 0  # 0: derived from epochs
    epochs: float = 10.0
    lr: float = 1e-4
    projector_lr: float = 2e-5
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup_ratio: float = 0.03
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    train_projector: bool = True
    # train the vision tower fully (at projector_lr). The release keeps its pretrained CLIP frozen; a model
    # built from scratch (the starter) has a random tower whose frozen features cannot tell the regions
    # apart, and its text generator collapses to one or two answers.
    train_vision_tower: bool = False
    max_length: int = 2048
    vision_tower_path: str = ""  # a local CLIP-L/336 folder for an original-layout base without a saved tower
    base_dtype: str = "float32"  # float32 | bfloat16 | float16: dtype of the frozen base weights
    export_dtype: str = "float16"  # dtype of the merged TP_llava weights (the release is fp16)
    save_adapter: bool = True


# ---------------------------------------------------------------------------------------------- data
def read_conversations(data, split: str = "train") -> tuple[list[dict], Path]:
    """llava_json.json entries as {image (abs path), question, answer}; returns (entries, json path)."""
    from ..ground_truth import LLAVA_IMAGE_DIR, LLAVA_JSON, split_root_of

    p = Path(data)
    if p.is_file():
        jpath, root = p, p.parent
    else:
        root = Path(split_root_of(p, split))
        jpath = root / LLAVA_JSON
    if not jpath.is_file():
        raise FileNotFoundError(f"{jpath} not found: run `inverse-painting train ground-truth {data}` first")
    out = []
    for e in json.loads(jpath.read_text(encoding="utf-8")):
        conv = e["conversations"]
        human = next(c["value"] for c in conv if c["from"] == "human")
        answer = next(c["value"] for c in conv if c["from"] == "gpt")
        img = Path(e["image"])
        if not img.is_absolute():  # official make_list: relative to the image folder (llava_image/)
            img = next((c for c in (root / LLAVA_IMAGE_DIR / img, root / img) if c.is_file()), root / LLAVA_IMAGE_DIR / img)
        question = human.replace(IMAGE_PLACEHOLDER, "", 1).lstrip("\n").strip()
        out.append({"id": e.get("id", str(img)), "image": str(img), "question": question, "answer": str(answer).strip()})
    if not out:
        raise ValueError(f"{jpath} has no conversations")
    return out, jpath


def build_example(gen: TextInstructionGenerator, image_u8: np.ndarray, question: str, answer: str,
                  max_length: int = 2048) -> dict:
    """One training sequence: the exact inference prompt ids + answer ids + EOS; labels = -100 on the prompt.

    ``image_u8`` is the already composed [cur | target] image (the llava_image file).
    """
    prompt_ids = tokenize_with_image(gen.tokenizer, build_v0_prompt(question), gen.image_token_id, gen.num_image_tokens)
    # sentencepiece adds the word-start marker, so "sky" -> "▁sky": the token greedy decoding emits after ":"
    answer_ids = [int(t) for t in gen.tokenizer(answer, add_special_tokens=False)["input_ids"]] + [int(gen.eos_token_id)]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    if all(v == IGNORE_INDEX for v in labels):
        raise ValueError(f"max_length {max_length} leaves no answer token (prompt has {len(prompt_ids)} ids)")
    pixel_values = preprocess_image(image_u8, gen.image_processor, pad_to_square=gen.pad_to_square)
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixel_values": pixel_values[0]}


class ConversationData:
    """Lazily built, cached examples over llava_json.json."""

    def __init__(self, gen: TextInstructionGenerator, entries: list[dict], max_length: int = 2048):
        self.gen, self.entries, self.max_length = gen, entries, max_length
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        if i not in self._cache:
            from PIL import Image

            e = self.entries[i]
            with Image.open(e["image"]) as im:
                img = np.asarray(im.convert("RGB"))
            self._cache[i] = build_example(self.gen, img, e["question"], e["answer"], self.max_length)
        return self._cache[i]

    def sample(self, generator: torch.Generator, batch_size: int = 1) -> dict:
        idx = [int(torch.randint(len(self), (1,), generator=generator)) for _ in range(batch_size)]
        return collate([self[i] for i in idx], pad_id=self.pad_id)

    @property
    def pad_id(self) -> int:
        t = self.gen.tokenizer
        return int(t.pad_token_id if t.pad_token_id is not None else t.eos_token_id)


def collate(items: list[dict], pad_id: int) -> dict:
    """Right-pad to the longest sequence (pad labels -100, attention 0)."""
    n = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), IGNORE_INDEX, dtype=torch.long)
    att = torch.zeros((len(items), n), dtype=torch.long)
    for k, it in enumerate(items):
        m = len(it["input_ids"])
        ids[k, :m], labels[k, :m], att[k, :m] = it["input_ids"], it["labels"], 1
    return {"input_ids": ids, "labels": labels, "attention_mask": att,
            "pixel_values": torch.stack([it["pixel_values"] for it in items])}


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Causal LM loss on the supervised (answer) positions only: token t+1 is predicted at position t."""
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX)


# ---------------------------------------------------------------------------------------------- model
def llm_linear_names(model) -> list[str]:
    """Full names of every nn.Linear of the LLM (not lm_head, projector or vision tower)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".language_model." in f".{n}." and "lm_head" not in n]


class TextTrainable(torch.nn.Module):
    """The peft-wrapped LLaVA; ``param_groups`` gives the projector its own LR."""

    def __init__(self, gen: TextInstructionGenerator, cfg: TextConfig):
        super().__init__()
        from peft import LoraConfig, get_peft_model

        model = gen.model
        targets = llm_linear_names(model)
        if not targets:
            raise ValueError("no nn.Linear found in the LLaVA language model")
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                          target_modules=targets)
        self.peft = get_peft_model(model, lcfg)  # freezes everything but the LoRA matrices
        if cfg.train_projector:
            self.projector.float().requires_grad_(True)  # trained in fp32 even on a bf16/fp16 base
        if cfg.train_vision_tower:
            self.vision_tower.float().requires_grad_(True)
        self.cfg = cfg

    @property
    def projector(self):
        # a property, not a submodule: a second registration would make shared tensors in the saved state
        return self.peft.get_base_model().model.multi_modal_projector

    @property
    def vision_tower(self):
        return self.peft.get_base_model().model.vision_tower

    def param_groups(self, cfg: TextConfig):
        proj = {id(p) for p in self.projector.parameters()}
        tower = {id(p) for p in self.vision_tower.parameters()} if cfg.train_vision_tower else set()
        lora = [p for p in self.parameters() if p.requires_grad and id(p) not in proj | tower]
        groups = [{"params": lora, "lr": cfg.lr}]
        if cfg.train_projector:
            groups.append({"params": [p for p in self.projector.parameters() if p.requires_grad], "lr": cfg.projector_lr})
        if cfg.train_vision_tower:
            groups.append({"params": [p for p in self.vision_tower.parameters() if p.requires_grad],
                           "lr": cfg.projector_lr})
        return groups

    def forward(self, input_ids, attention_mask, pixel_values):
        return self.peft(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits


def resolve_base(base) -> Path:
    """A LLaVA folder (config.json), or a release / models folder with TP_llava/."""
    b = Path(base)
    if (b / "config.json").is_file():
        return b
    from ...core.loading import find_release

    tm = find_release(b).text_model
    if tm is None:
        raise FileNotFoundError(f"{base}: neither a LLaVA folder (config.json) nor a release with TP_llava/")
    return tm


@torch.no_grad()
def merged_model(peft_model, dtype: torch.dtype):
    """A plain LlavaForConditionalGeneration on CPU with W + scale * B @ A folded in, in ``dtype``.

    Built layer by layer from the state dict (the live GPU model is neither copied nor modified), so a
    checkpoint export in the middle of a run costs one CPU copy of the weights, not a second GPU model.
    """
    from peft.tuners.lora import LoraLayer
    from transformers import LlavaForConditionalGeneration

    base = peft_model.get_base_model()
    sd = {}
    for k, v in base.state_dict().items():
        if ".lora_" not in k:
            sd[k.replace(".base_layer.", ".")] = v
    for name, mod in base.named_modules():
        if isinstance(mod, LoraLayer) and hasattr(mod, "get_delta_weight"):
            sd[name + ".weight"] = sd[name + ".weight"].float() + mod.get_delta_weight("default").float()
    sd = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype) for k, v in sd.items()}
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(copy.deepcopy(base.config))
    model.load_state_dict(sd, strict=True, assign=True)
    model.config.dtype = dtype
    return model.eval()


def export_text(out: Path, trainable: TextTrainable, gen: TextInstructionGenerator, step: int,
                export_dtype: str = "float16", save_adapter: bool = True) -> Path:
    """Write ``<out>/TP_llava`` (merged, llava-hf layout) and ``<out>/TP_lora`` (adapter + projector)."""
    from safetensors.torch import save_file

    out = Path(out)
    if save_adapter:
        ad = out / "TP_lora"
        trainable.peft.save_pretrained(str(ad))
        save_file({k: v.detach().float().cpu().contiguous() for k, v in trainable.projector.state_dict().items()},
                  str(ad / "projector.safetensors"))
        (ad / "trainer_step.json").write_text(json.dumps({"global_step": int(step)}))
    merged = merged_model(trainable.peft, getattr(torch, export_dtype))
    dst = out / "TP_llava"
    tmp = out / "TP_llava.partial"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    merged.save_pretrained(str(tmp))
    del merged
    gen.tokenizer.save_pretrained(str(tmp))
    gen.image_processor.save_pretrained(str(tmp))
    (tmp / "trainer_step.json").write_text(json.dumps({"global_step": int(step)}))
    if dst.exists():
        import shutil

        shutil.rmtree(dst)
    tmp.replace(dst)
    return dst


def train(cfg: TextConfig) -> dict:
    from transformers.utils import logging as tlog

    tlog.set_verbosity_error()
    accelerator = make_accelerator(cfg)
    base_dir = resolve_base(cfg.base)
    gen = TextInstructionGenerator.from_pretrained(str(base_dir), dtype=getattr(torch, cfg.base_dtype),
                                                   vision_tower_path=cfg.vision_tower_path or None,
                                                   vision_dtype=getattr(torch, cfg.base_dtype))
    entries, jpath = read_conversations(cfg.data, cfg.split)
    data = ConversationData(gen, entries, cfg.max_length)
    if cfg.steps <= 0:
        per_step = cfg.batch_size * accelerator.num_processes
        cfg.steps = max(1, math.ceil(cfg.epochs * len(data) / per_step))
    accelerator.print(f"text generator: {len(data)} conversations from {jpath}, {cfg.steps} steps")
    torch.manual_seed(cfg.seed)  # identical LoRA init on every rank
    model = TextTrainable(gen, cfg)
    if cfg.gradient_checkpointing:
        model.peft.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.peft.enable_input_require_grads()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    def loss_fn(m, step, g, acc):
        b = data.sample(g, cfg.batch_size)
        # LoRA dropout uses the global RNG: reseed it from the step generator so resume is exact
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))
        dev = acc.device
        px = b["pixel_values"].to(gen.dtype).to(gen.vision_dtype)  # as build_inputs: LLM dtype, then tower dtype
        with acc.autocast():
            logits = m(b["input_ids"].to(dev), b["attention_mask"].to(dev), px.to(dev))
        return answer_loss(logits, b["labels"].to(dev))

    def export_fn(m, step):
        export_text(out, m, gen, step, cfg.export_dtype, cfg.save_adapter)

    res = train_loop(cfg, accelerator, model, loss_fn, export_fn, "text_generator")
    res["generator"] = gen  # gen.model is the (live, adapter-wrapped) base model
    return res


def main(argv=None) -> int:
    return run_cli(TextConfig, train, argv, "LoRA fine-tune of the Inverse Painting LLaVA text generator.")


if __name__ == "__main__":
    import sys

    from ...core.errors import run_command

    raise SystemExit(run_command(main, "--debug" in sys.argv))
