"""The starter model shipped in assets/starter_model: layout, size, and the README's main command on it."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PACK = Path(__file__).resolve().parents[1]
STARTER = PACK / "assets" / "starter_model"


def test_bundled_starter_is_complete_and_small():
    rec = json.loads((STARTER / "starter.json").read_text())
    assert not rec["options"]["smoke"] and rec["options"]["seed"] == 0
    files = [p for p in STARTER.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20
    assert not [p for p in files if p.suffix in (".ckpt", ".bin", ".pt", ".pth")]
    card = (STARTER / "MODEL_CARD.md").read_text()
    assert "synthetic" in card.lower() and "stlpips_alex" in card


def test_main_command_paints_the_example_with_the_starter(tmp_path, capsys):
    """`inverse-painting paint --out DIR` (shortened): bundled example + bundled starter, 128 px, no download."""
    from inverse_painting.cli import main

    out = tmp_path / "example"
    assert main(["paint", "--out", str(out), "--max-keyframes", "2", "--steps", "4"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert Path(man["settings"]["models"]).resolve() == STARTER.resolve()
    s = man["settings"]
    assert (s["metric"], s["short_side"], s["compare_to"]) == ("stlpips_alex", 128, "reconstruction")
    # the blank canvas, 1 or 2 painted keyframes (the loop may stop close to the target after one), then the
    # starter's 2 finishing keyframes (cross-fade to the painting)
    finishing = [k.get("finishing", False) for k in man["keyframes"]]
    assert finishing[-2:] == [True, True] and finishing[:-2] in ([False] * 2, [False] * 3)
    assert (out / "timelapse.webp").is_file() and (out / "timelapse.mp4").is_file()
    frames = sorted((out / "frames").glob("*.png"))
    painted, last = (np.asarray(Image.open(frames[i]).convert("RGB")) for i in (1, -1))
    # the frames at the painting's size (640x512, w x h; painted at short side 128), the last one the painting itself
    assert last.shape == painted.shape == (512, 640, 3)
    assert (man["working_size"], man["frame_size"]) == ([128, 160], [512, 640])
    assert painted.std() > 5  # not a blank canvas
    from inverse_painting.cli import EXAMPLE_IMAGE

    assert np.array_equal(last, np.asarray(Image.open(EXAMPLE_IMAGE).convert("RGB")))
    assert all(isinstance(k["instruction"], str) for k in man["keyframes"])
    assert "keyframe   1" in capsys.readouterr().out


def test_starter_text_model_offers_alternatives_from_its_vocabulary():
    """The node's text model gives the loop's re-asking (the starter's ``reask``) distinct answers of the
    instruction vocabulary, its greedy answer among them, and stops at the v0 separator."""
    from inverse_painting.nodes.model_nodes import InversePaintingTextModel

    rec = json.loads((STARTER / "starter.json").read_text())
    assert rec["paint_defaults"]["reask"] == 16
    vocabulary = set(rec["data"]["instructions"])
    text = InversePaintingTextModel(STARTER / "TP_llava", device="cpu", precision="fp32", max_new_tokens=16)
    target = np.asarray(Image.open(PACK / "assets" / "example.png").convert("RGB").resize((160, 128)))
    canvas = np.full_like(target, 255)
    canvas[:48] = target[:48]  # the sky painted
    answers = text.alternatives(canvas, target, 5)
    assert 2 <= len(answers) <= 5 and len(set(answers)) == len(answers)
    assert all("###" not in a for a in answers) and sum(a in vocabulary for a in answers) >= 2
    assert text.generate(canvas, target) in answers


@pytest.mark.parametrize("name", sorted(p.stem for p in (PACK / "workflows").glob("*.json")))
def test_example_workflows_default_to_the_starter(name):
    wf = json.loads((PACK / "workflows" / f"{name}.json").read_text())
    loaders = [n for n in wf["nodes"] if n["type"] == "InversePaintingLoader"]
    assert loaders and all(n["widgets_values"][0] == "starter_model" for n in loaders)
    assert all(n["widgets_values"][4:6] == ["auto", 0] for n in loaders)
    texts = [n for n in wf["nodes"] if n["type"] == "InversePaintingTextModelLoader"]
    assert all(n["widgets_values"][0] == "starter_model/TP_llava" for n in texts)
    # the painting the pack places in ComfyUI's input folder, and a thumbnail for the template browser
    from inverse_painting.nodes.comfy_bridge import EXAMPLE_INPUT_NAME

    paintings = [n for n in wf["nodes"] if n["type"] == "LoadImage"]
    assert paintings and all(n["widgets_values"][0] == EXAMPLE_INPUT_NAME for n in paintings)
    assert (PACK / "workflows" / f"{name}.jpg").is_file()


def test_card_says_what_a_partial_rebuild_reused(tmp_path):
    """A card of a folder rebuilt with --stages: the command builds the same weights in one go, except the text
    generator when its rollouts were reused after a network that paints them was retrained."""
    from inverse_painting.training.starter import write_model_card

    rec = json.loads((STARTER / "starter.json").read_text())
    rec["stages"]["rollouts"].pop("rollout_machine", None)
    for retrained, note in ((["renderer"], "painted by the previous renderer"), (["rollouts"], None),
                            (["mask", "rollouts"], None)):
        write_model_card(tmp_path, {**rec, "retrained": retrained})
        card = (tmp_path / "MODEL_CARD.md").read_text()
        assert f"`--stages {','.join(retrained)}`" in card
        assert (note in card) if note else "except the text generator" not in card
