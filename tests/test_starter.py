"""The one-command starter recipe (training/starter.py) end to end at micro scale (``--smoke``).

Builds the starter folder (synth -> ground truth -> skeleton -> VAE -> mask generator -> renderer -> tiny
LLaVA text generator -> assemble), then loads it with ``ModelSet.from_release``, paints one keyframe with
``core.loop.Painter`` (metric stlpips_alex) and the trained text generator, and checks the release layout
(safetensors only, MODEL_CARD.md, starter.json) and that the recipe is reproducible from its seed.
"""
import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def starter(tmp_path_factory):
    from inverse_painting.training import starter

    out = tmp_path_factory.mktemp("starter") / "starter"
    assert starter.main(["--out", str(out), "--smoke", "--seed", "0", "--device", "cpu"]) == 0
    return out


def _target(starter_dir):
    from PIL import Image

    data = starter_dir.with_name(starter_dir.name + ".work") / "data" / "train" / "rgb"
    vd = sorted(p for p in data.iterdir() if p.is_dir())[0]
    name = next(iter(json.loads((vd / "last_aligned_frame_inv.json").read_text())))
    with Image.open(vd / f"{name}.jpg") as im:
        return np.asarray(im.convert("RGB"))


def test_layout_and_card(starter):
    import yaml

    for part in ("renderer/config.yaml", "base/unet/config.json", "base/vae/config.json",
                 "base/vae/diffusion_pytorch_model.safetensors", "base/tokenizer", "base/text_encoder/model.safetensors",
                 "clip/model.safetensors", "TP_llava/config.json", "MODEL_CARD.md", "starter.json"):
        assert (starter / part).exists(), part
    assert list((starter / "renderer" / "ckpt").glob("checkpoint-global_step-*.safetensors"))
    rcfg = yaml.safe_load((starter / "renderer" / "config.yaml").read_text())
    assert rcfg["prediction_type"] == "v_prediction" and rcfg["reference_position_encoding"] is True  # the recipe
    assert list((starter / "RP").glob("checkpoint-global_step-*.safetensors"))
    weights = [p for p in starter.rglob("*") if p.suffix in (".ckpt", ".bin", ".pt", ".pth")]
    assert not weights, weights
    assert not [p for p in starter.rglob("*") if p.is_symlink()]
    rec = json.loads((starter / "starter.json").read_text())
    assert set(rec["stages"]) >= {"vae", "mask", "renderer", "text"}
    for k in ("vae", "mask", "renderer", "text"):
        assert rec["stages"][k]["loss"]["steps"] > 0
    assert rec["total_mb"] <= 40
    card = (starter / "MODEL_CARD.md").read_text()
    assert "stlpips_alex" in card and "--smoke" in card
    assert rec["paint_defaults"]["scales"] == [1.0] * 5 and "every guidance scale at 1" in card


def test_decoder_stage_keeps_the_encoder(starter):
    """The decoder stage trains the VAE's decoder again with the encoder frozen: the shipped VAE encodes exactly
    as the one the mask generator and renderer were trained on (same scaling factor), and decodes differently."""
    from safetensors.torch import load_file

    rec = json.loads((starter / "starter.json").read_text())
    assert list(rec["stages"])[:3] == ["data", "vae", "decoder"] and rec["stages"]["decoder"]["loss"]["steps"] == 4
    work = starter.with_name(starter.name + ".work")
    name = "diffusion_pytorch_model.safetensors"
    first, shipped = load_file(str(work / "runs" / "vae" / "vae" / name)), load_file(str(starter / "base" / "vae" / name))
    assert first.keys() == shipped.keys()
    changed = {k for k in first if not bool((first[k] == shipped[k]).all())}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    assert any(k.startswith("encoder.") for k in first)
    scales = [json.loads((d / "config.json").read_text())["scaling_factor"]
              for d in (work / "runs" / "vae" / "vae", starter / "base" / "vae")]
    assert scales[0] == scales[1]
    assert "decoder alone" in (starter / "MODEL_CARD.md").read_text()
    print("starter smoke:", json.dumps({k: v.get("loss") for k, v in rec["stages"].items()}), rec["seconds"], "s")


def test_loads_and_paints_a_keyframe(starter):
    from inverse_painting.core.loop import Painter, PaintSettings
    from inverse_painting.core.model_set import ModelSet
    from inverse_painting.models.lpips_net import load_perceptual_metric
    from inverse_painting.models.text_instruction import TextInstructionGenerator

    models = ModelSet.from_release(starter)
    assert models.renderer is not None and models.mask is not None
    assert models.vae_scale == pytest.approx(json.loads((starter / "starter.json").read_text())["stages"]["vae"]["scaling_factor"])
    text = TextInstructionGenerator.from_pretrained(str(starter / "TP_llava"))
    painter = Painter(models, load_perceptual_metric("stlpips_alex"), text)
    target = _target(starter)
    frames = list(painter.paint(target, PaintSettings(steps=3, max_keyframes=1, short_side=64)))
    assert len(frames) == 1
    k = frames[0]
    assert k.image.dtype == np.uint8 and k.image.shape[2] == 3 and isinstance(k.instruction, str)
    assert 0 <= k.mask_area <= 1


def test_seeded_recipe_is_reproducible(starter, tmp_path):
    from inverse_painting.training import starter as st
    from safetensors.torch import load_file

    again = tmp_path / "again"
    assert st.main(["--out", str(again), "--smoke", "--seed", "0", "--device", "cpu", "--no-keep-work"]) == 0
    assert not again.with_name("again.work").exists()
    for rel in ("base/vae/diffusion_pytorch_model.safetensors", "TP_llava/model.safetensors"):
        a, b = load_file(str(starter / rel)), load_file(str(again / rel))
        assert a.keys() == b.keys()
        assert all(bool((a[k] == b[k]).all()) for k in a), rel
    for ck in (next((starter / "RP").glob("*.safetensors")), next((starter / "renderer" / "ckpt").glob("*.safetensors"))):
        a, b = load_file(str(ck)), load_file(str(again / ck.relative_to(starter)))
        assert a.keys() == b.keys()
        assert all(bool((a[k] == b[k]).all()) for k in a), ck.name


def test_two_lanes_give_the_same_weights(starter, tmp_path):
    """--jobs 2 (VAE -> renderer next to text -> mask, in worker processes) == the one-process recipe."""
    from inverse_painting.training import starter as st
    from safetensors.torch import load_file

    lanes = tmp_path / "lanes"
    assert st.main(["--out", str(lanes), "--smoke", "--seed", "0", "--device", "cpu", "--no-keep-work",
                    "--jobs", "2", "--threads", "1"]) == 0
    rec = json.loads((lanes / "starter.json").read_text())
    assert rec["options"]["jobs"] == 2 and set(rec["stages"]) >= {"vae", "text", "mask", "renderer"}
    for ck in (next((starter / "RP").glob("*.safetensors")), next((starter / "renderer" / "ckpt").glob("*.safetensors")),
               starter / "TP_llava" / "model.safetensors", starter / "base/vae/diffusion_pytorch_model.safetensors"):
        a, b = load_file(str(ck)), load_file(str(lanes / ck.relative_to(starter)))
        assert a.keys() == b.keys()
        assert all(bool((a[k] == b[k]).all()) for k in a), ck.name


def test_stages_retrain_part_of_a_build(starter, tmp_path):
    """--stages text on a copy of a build: data, skeleton and the other stages are reused, the text generator
    is retrained from scratch and comes out equal to the full build's (every stage is seeded); an option that
    a reused stage reads may not change."""
    import shutil

    from inverse_painting.training import starter as st
    from safetensors.torch import load_file

    out, work = tmp_path / "starter", tmp_path / "starter.work"
    shutil.copytree(starter, out)
    shutil.copytree(starter.with_name(starter.name + ".work"), work)
    (out / "TP_llava" / "model.safetensors").unlink()
    (work / "runs" / "text" / "TP_llava" / "model.safetensors").unlink()  # nothing left to resume from
    args = ["--out", str(out), "--smoke", "--seed", "0", "--device", "cpu", "--stages", "text"]
    # a record written before the renderer options existed holds what builds did then (epsilon, no cache,
    # no target pairs): the current recipe's renderer differs, so only a renderer retrain may reuse it
    rec = json.loads((out / "starter.json").read_text())
    older = {**rec, "options": {k: v for k, v in rec["options"].items()
                                if k not in ("cache_latents", "renderer_prediction", "target_pairs",
                                             "renderer_positions")}}
    (out / "starter.json").write_text(json.dumps(older))
    with pytest.raises(SystemExit, match="cache-latents .*renderer"):
        st.main(args)
    (out / "starter.json").write_text(json.dumps(rec))
    with pytest.raises(SystemExit, match="steps-mask"):
        st.main(args + ["--steps-mask", "7"])
    for changed, name in ((["--no-cache-latents"], "cache-latents"), (["--target-pairs", "0"], "target-pairs"),
                          (["--renderer-prediction", "epsilon"], "renderer-prediction"),
                          (["--no-renderer-positions"], "renderer-positions")):
        with pytest.raises(SystemExit, match=name):
            st.main(args + changed)
    with pytest.raises(SystemExit, match="unknown stage"):
        st.main(args[:-1] + ["texts"])
    assert st.main(args + ["--steps-text", "9", "--batch-text", "2", "--text-vocab", "320"]) == 0
    rec, before = (json.loads((d / "starter.json").read_text()) for d in (out, starter))
    assert rec["retrained"] == ["text", "rollouts"] and list(rec["stages"]) == list(before["stages"])
    assert rec["stages"]["vae"] == before["stages"]["vae"] and rec["stages"]["text"]["loss"]["steps"] == 9
    assert "--stages" not in rec["command"] and "--steps-text 9 --batch-text 2 --text-vocab 320" in rec["command"]
    assert (rec["options"]["batch_text"], rec["options"]["text_vocab"]) == (2, 320)
    from transformers import AutoTokenizer

    # the (first) text generator's tokenizer has the asked-for vocabulary (+ <image>), smaller than the recipe's
    sizes = [len(AutoTokenizer.from_pretrained(str(d / "runs" / "text" / "TP_llava")))
             for d in (work, starter.with_name(starter.name + ".work"))]
    assert sizes[0] == 321 < sizes[1], sizes
    for rel in ("base/vae/diffusion_pytorch_model.safetensors", next((starter / "RP").glob("*.safetensors")),
                next((starter / "renderer" / "ckpt").glob("*.safetensors"))):
        rel = Path(rel).relative_to(starter) if Path(rel).is_absolute() else rel
        a, b = load_file(str(starter / rel)), load_file(str(out / rel))
        assert all(bool((a[k] == b[k]).all()) for k in a), rel
    # back to the recipe's step count: the same text generator as the full build
    assert st.main(args) == 0
    a, b = (load_file(str(d / "TP_llava" / "model.safetensors")) for d in (starter, out))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_rollouts_retrain_the_text_generator_on_the_loops_canvases(starter):
    """The rollouts stage paints every training process with the trained networks, labels each canvas the text
    generator saw with the real process's next label, and the shipped text generator is the one retrained on
    the real frames + those canvases."""
    from PIL import Image
    from safetensors.torch import load_file

    from inverse_painting.training.text_rollouts import ROLLOUT_JSON, real_label_sequence

    work = starter.with_name(starter.name + ".work")
    rec = json.loads((starter / "starter.json").read_text())
    r = rec["stages"]["rollouts"]
    assert rec["options"]["text_rollouts"] == "1.0" and r["rollouts"] == rec["options"]["processes"]
    assert r["canvases"] > 0 and r["loss"]["steps"] == rec["options"]["steps_text_rollouts"]
    train = work / "data" / "train"
    real = json.loads((train / "llava_json.json").read_text())
    entries = json.loads((train / ROLLOUT_JSON).read_text())
    assert entries[:len(real)] == real and len(entries) - len(real) == r["canvases"]
    for e in entries[len(real):]:
        _, video, name = e["id"].split("/")
        keyframe = int(name.split("_")[1])
        target, labels = real_label_sequence(train / "rgb" / video)
        assert e["conversations"][1]["value"] == labels[min(keyframe, len(labels) - 1)]
        with Image.open(train / "llava_image" / e["image"]) as im:
            assert im.size == (2 * target.shape[1], target.shape[0])  # [canvas | target]
    shipped, again, first = (load_file(str(d / "TP_llava" / "model.safetensors"))
                             for d in (starter, work / "runs" / "text_rollouts", work / "runs" / "text"))
    assert all(bool((shipped[k] == again[k]).all()) for k in shipped)
    assert not all(bool((shipped[k] == first[k]).all()) for k in shipped)
    assert "Rollouts (`--text-rollouts 1.0`" in (starter / "MODEL_CARD.md").read_text()


def test_without_rollouts_the_text_generator_is_the_first_one(tmp_path):
    from inverse_painting.training import starter as st
    from safetensors.torch import load_file

    out = tmp_path / "plain"
    assert st.main(["--out", str(out), "--smoke", "--seed", "0", "--device", "cpu", "--text-rollouts", "none"]) == 0
    rec = json.loads((out / "starter.json").read_text())
    assert "rollouts" not in rec["stages"] and rec["options"]["text_rollouts"] == "" and "retrained" not in rec
    work = out.with_name("plain.work")
    assert not (work / "runs" / "text_rollouts").exists()
    a, b = (load_file(str(d / "TP_llava" / "model.safetensors")) for d in (out, work / "runs" / "text"))
    assert all(bool((a[k] == b[k]).all()) for k in a)
    assert "trained on real frames only" in (out / "MODEL_CARD.md").read_text()
    with pytest.raises(SystemExit, match="expert shares"):
        st.main(["--out", str(tmp_path / "bad"), "--smoke", "--text-rollouts", "1.5"])


def test_lane_worker_exits_with_its_build(tmp_path):
    """A lane's worker (run_stage in a --jobs 2 pool) stops when the build process dies, instead of training
    on into the work folder."""
    import os
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "worker.pid"
    worker = ("import os, time\nfrom inverse_painting.training.starter import _exit_with\n"
              f"_exit_with(os.getppid())\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    build = (f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {worker!r}])\n"
             f"while not __import__('os').path.exists({str(pid_file)!r}): time.sleep(0.1)\n")
    subprocess.run([sys.executable, "-c", build], check=True, timeout=60)  # the "build" exits at once
    pid = int(pid_file.read_text())
    stat = Path(f"/proc/{pid}/stat")
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if stat.is_file() and stat.read_text().split(")")[-1].split()[0] == "Z":
            return  # exited, not yet reaped (a container's init may never reap it)
        time.sleep(0.1)
    os.kill(pid, 9)
    raise AssertionError("the orphaned worker kept running")


def test_text_vocabulary_makes_instruction_words_whole_pieces(tmp_path):
    """At the default 384 pieces (256 of them bytes) the instructions come out nearly letter by letter;
    --text-vocab 512 gives each instruction word one piece, so the answer is decided at one token."""
    from transformers import AutoTokenizer

    from inverse_painting.models.text_instruction import TP_QUESTION, V0_SYSTEM_PROMPT
    from inverse_painting.training.starter import train_sentencepiece

    answers = ["sky", "blue sky", "sunset sky", "clouds", "far mountains", "mountains", "hills", "mist", "lake",
               "water", "meadow", "grass", "field", "trees", "forest", "reflection", "flowers", "highlights"]
    corpus = [V0_SYSTEM_PROMPT, TP_QUESTION] * 4
    corpus += [f"###Human: \n{TP_QUESTION}###Assistant: {a}" for a in answers] * 4 + answers * 8

    def pieces(size):
        tok = AutoTokenizer.from_pretrained(str(train_sentencepiece(tmp_path / str(size), corpus, size)))
        return {a: len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers}

    assert pieces(512) == {a: len(a.split()) for a in answers}
    assert sum(pieces(384).values()) > 3 * len(answers)


def test_renderer_target_input_option_builds_a_renderer_that_reads_the_target(tmp_path):
    """--renderer-target-input: the renderer is trained with the target channels, its config says so, the
    folder loads with an 8-channel UNet, and the card names the option."""
    import yaml

    from inverse_painting.core.model_set import ModelSet
    from inverse_painting.training import starter as st

    out = tmp_path / "wide"
    assert st.main(["--out", str(out), "--smoke", "--seed", "0", "--device", "cpu", "--text-rollouts", "none",
                    "--renderer-target-input", "--no-keep-work"]) == 0
    assert yaml.safe_load((out / "renderer" / "config.yaml").read_text())["target_input"] is True
    assert json.loads((out / "starter.json").read_text())["options"]["renderer_target_input"] is True
    models = ModelSet.from_release(out)
    assert models.renderer.unet.target_input and models.renderer.unet.unet.conv_in.in_channels == 8
    assert "`target_input: true`" in (out / "MODEL_CARD.md").read_text()
