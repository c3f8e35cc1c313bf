"""Bad and unusual inputs, as a hostile new user would give them, through the command line and the nodes.

Every case must end in a named error before any painting: one ``error: ...`` line on stderr naming the input,
exit code 2 (1 for a numerical fault), no traceback, and the files already in the output folder untouched.
Image modes that used to be read wrongly (16-bit, float, EXIF orientation, ...) are read by their meaning.
An interrupted run keeps its frames and ``--resume`` finishes it with the frames of an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inverse_painting.cli import main

PACK = Path(__file__).resolve().parents[1]
STARTER = PACK / "assets" / "starter_model"
FAST = ["--steps", "2", "--max-keyframes", "2", "--short-side", "64"]


def _snapshot(folder: Path) -> dict:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _earlier_run(folder: Path) -> Path:
    """An output folder holding a user's earlier run (and a note of theirs)."""
    (folder / "frames").mkdir(parents=True)
    Image.new("RGB", (64, 64), "white").save(folder / "frames" / "0000_0m00s.png")
    (folder / "manifest.json").write_text(json.dumps({"settings": {"seed": 1}, "keyframes": []}))
    (folder / "my notes.txt").write_text("mine")
    return folder


def _painting(path: Path, size=(96, 72)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


class Evil:
    """Pickled by reference: a checkpoint holding it must be refused, never unpickled."""


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_release):
    d = tmp_path_factory.mktemp("hostile")
    f = {"painting": _painting(d / "painting.png"), "release": tiny_release, "missing": d / "nope.png",
         "device": Path("/dev/null")}
    (d / "folder.png").mkdir()
    f["folder"] = d / "folder.png"
    (d / "text.png").write_text("not an image")
    f["text"] = d / "text.png"
    good = f["painting"].read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    f["truncated"] = d / "truncated.png"
    Image.new("RGB", (1, 1), "red").save(d / "tiny.png")
    f["tiny"] = d / "tiny.png"
    Image.new("RGB", (20000, 100), "blue").save(d / "strip.png")
    f["strip"] = d / "strip.png"
    a = np.full((80, 80), 0.5, np.float32)
    a[3, 3] = np.nan
    Image.fromarray(a, mode="F").save(d / "nan.tiff")
    f["nan_tiff"] = d / "nan.tiff"
    Image.fromarray(np.full((80, 80), 200.0, np.float32), mode="F").save(d / "range.tiff")
    f["range_tiff"] = d / "range.tiff"
    Image.fromarray(np.full((80, 80), 100000, np.int32), mode="I").save(d / "i32.tiff")
    f["i32_tiff"] = d / "i32.tiff"
    (d / "empty").mkdir()
    f["empty"] = d / "empty"
    (d / "a_file").write_text("x")
    f["a_file"] = d / "a_file"
    return f


def _release_copy(files, tmp_path, name="rel") -> Path:
    dst = tmp_path / name
    shutil.copytree(files["release"], dst)
    return dst


def _renderer_ckpt(release: Path) -> Path:
    return next((release / "renderer" / "ckpt").glob("*.ckpt"))


def _edit_renderer(release: Path, edit) -> None:
    path = _renderer_ckpt(release)
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)


def _nan_weight(ckpt):
    ckpt["unet_state_dict"]["conv_in.weight"][0, 0, 0, 0] = float("nan")


WRONG = "down_blocks.0.resnets.0.conv1.weight"


def _wrong_shape(ckpt):
    w = ckpt["unet_state_dict"][WRONG]
    ckpt["unet_state_dict"][WRONG] = torch.zeros(w.shape[0], w.shape[1], 1, 1)


def _pickle_global(ckpt):
    ckpt["extra"] = Evil()


# ------------------------------------------------------------------------------------------------ the table

# (case id, argv builder(files, tmp, out) -> argv, setup(files, tmp) or None, expected code, words in the error)
P = "paint"


def _paint(files, *extra, image="painting", release=None):
    return [P, str(files[image]), "--models", str(release or files["release"]), "--instructions", "sky", *FAST, *extra]


def _corrupt_release(edit):
    def setup(files, tmp):
        rel = _release_copy(files, tmp)
        edit(rel)
        return rel
    return setup


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _safetensors_stub(lpips: Path) -> None:
    """The trunk as .safetensors, cut after its header length (SafetensorError when read)."""
    (lpips / "alexnet_features.pth").unlink()
    (lpips / "alexnet_features.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")


def _write(rel_path: str, text: str):
    return _corrupt_release(lambda rel: (rel / rel_path).write_text(text))


CLI_CASES = [
    # images
    ("image missing", lambda f, t, o: _paint(f, "--out", o, image="missing"), None, 2, ["nope.png", "no such file"]),
    ("image is a folder without images", lambda f, t, o: _paint(f, "--out", o, image="folder"), None, 2,
     ["folder.png", "no image"]),
    ("image is a device", lambda f, t, o: _paint(f, "--out", o, image="device"), None, 2, ["not a regular file"]),
    ("text file named .png", lambda f, t, o: _paint(f, "--out", o, image="text"), None, 2, ["text.png", "cannot read"]),
    ("truncated png", lambda f, t, o: _paint(f, "--out", o, image="truncated"), None, 2, ["truncated.png"]),
    ("1x1 image", lambda f, t, o: _paint(f, "--out", o, image="tiny"), None, 2, ["1x1", "at least 64"]),
    ("20000x100 strip", lambda f, t, o: _paint(f, "--out", o, image="strip"), None, 2, ["20000x100", "4:1"]),
    ("float tiff with NaN", lambda f, t, o: _paint(f, "--out", o, image="nan_tiff"), None, 2, ["nan.tiff", "NaN"]),
    ("float tiff 0..255", lambda f, t, o: _paint(f, "--out", o, image="range_tiff"), None, 2, ["range.tiff", "0..1"]),
    ("int32 tiff out of range", lambda f, t, o: _paint(f, "--out", o, image="i32_tiff"), None, 2, ["0..65535"]),
    # options
    ("interval nan", lambda f, t, o: _paint(f, "--out", o, "--interval", "nan"), None, 2, ["--interval", "nan"]),
    ("interval -30", lambda f, t, o: _paint(f, "--out", o, "--interval", "-30"), None, 2, ["--interval", "> 0"]),
    ("interval 0", lambda f, t, o: _paint(f, "--out", o, "--interval", "0"), None, 2, ["--interval"]),
    ("interval inf", lambda f, t, o: _paint(f, "--out", o, "--interval", "inf"), None, 2, ["--interval"]),
    ("steps 0", lambda f, t, o: _paint(f, "--out", o, "--steps", "0"), None, 2, ["--steps", "from 1"]),
    ("steps 2.5", lambda f, t, o: _paint(f, "--out", o, "--steps", "2.5"), None, 2, ["--steps", "whole number"]),
    ("max-keyframes 0", lambda f, t, o: _paint(f, "--out", o, "--max-keyframes", "0"), None, 2, ["--max-keyframes"]),
    ("seed 2**64", lambda f, t, o: _paint(f, "--out", o, "--seed", str(2**64)), None, 2, ["--seed"]),
    ("seed -1", lambda f, t, o: _paint(f, "--out", o, "--seed", "-1"), None, 2, ["--seed"]),
    ("guidance nan", lambda f, t, o: _paint(f, "--out", o, "--guidance", "2", "1", "nan", "5", "5"), None, 2,
     ["--guidance"]),
    ("short side 100", lambda f, t, o: _paint(f, "--out", o, "--short-side", "100"), None, 2,
     ["--short-side", "multiple of 8"]),
    ("short side 8", lambda f, t, o: _paint(f, "--out", o, "--short-side", "8"), None, 2, ["--short-side"]),
    ("reask -1", lambda f, t, o: _paint(f, "--out", o, "--reask", "-1"), None, 2, ["--reask"]),
    ("empty instruction list", lambda f, t, o: [P, str(f["painting"]), "--models", str(f["release"]),
                                                "--instructions", " | | ", "--out", o], None, 2, ["--instructions"]),
    ("unknown option", lambda f, t, o: _paint(f, "--out", o, "--colour", "red"), None, 2, ["--colour"]),
    ("overwrite and resume", lambda f, t, o: _paint(f, "--out", o, "--overwrite", "--resume"), None, 2,
     ["--resume", "not allowed"]),
    ("device banana", lambda f, t, o: _paint(f, "--out", o, "--device", "banana"), None, 2, ["--device", "banana"]),
    ("device cuda without CUDA", lambda f, t, o: _paint(f, "--out", o, "--device", "cuda"), None, 2,
     ["--device cuda"]),
    ("dtype fp8", lambda f, t, o: _paint(f, "--out", o, "--dtype", "fp8"), None, 2, ["--dtype"]),
    ("guidance 1e308", lambda f, t, o: _paint(f, "--out", o, "--guidance", "1e308", "1", "5", "5", "5"), None, 2,
     ["--guidance", "<= 100"]),
    ("lpips_alex without AlexNet", lambda f, t, o: [P, str(f["painting"]), "--models", str(STARTER), "--metric",
                                                   "lpips_alex", "--out", o, *FAST], None, 2, ["alexnet"]),
    # model folders
    ("models missing", lambda f, t, o: _paint(f, "--out", o, release=t / "no_models"), None, 2,
     ["no_models", "not found"]),
    ("models empty folder", lambda f, t, o: _paint(f, "--out", o, release=f["empty"]), None, 2,
     ["empty", "cannot find"]),
    ("models is a file", lambda f, t, o: _paint(f, "--out", o, release=f["a_file"]), None, 2, ["a_file"]),
    ("garbage config.yaml", lambda f, t, o: _paint(f, "--out", o, release=t / "rel"),
     _write("renderer/config.yaml", "{: [unbalanced"), 2, ["config.yaml", "YAML"]),
    ("config.yaml a list", lambda f, t, o: _paint(f, "--out", o, release=t / "rel"),
     _write("renderer/config.yaml", "- 1\n- 2\n"), 2, ["config.yaml", "mapping"]),
    ("garbage unet config.json", lambda f, t, o: _paint(f, "--out", o, release=t / "rel"),
     _write("base/unet/config.json", "{not json"), 2, ["unet/config.json", "JSON"]),
    ("garbage vae config.json", lambda f, t, o: _paint(f, "--out", o, release=t / "rel"),
     _write("base/vae/config.json", "[]"), 2, ["vae/config.json"]),
    ("garbage starter.json", lambda f, t, o: _paint(f, "--out", o, release=t / "rel"),
     _write("starter.json", "{\"options\": 3}"), 2, ["starter.json"]),
    ("unknown starter paint default", lambda f, t, o: _paint(f, "--out", o, release=t / "rel"),
     _write("starter.json", json.dumps({"options": {"size": 64}, "paint_defaults": {"colour": 1}})), 2,
     ["starter.json", "colour"]),
    ("truncated renderer ckpt", lambda f, t, o: _paint(f, "--out", o, release=t / "rel"),
     _corrupt_release(lambda rel: _renderer_ckpt(rel).write_bytes(_renderer_ckpt(rel).read_bytes()[:2000])), 2,
     ["checkpoint-global_step"]),
    ("empty renderer ckpt", lambda f, t, o: _paint(f, "--out", o, release=t / "rel"),
     _corrupt_release(lambda rel: _renderer_ckpt(rel).write_bytes(b"")), 2, ["empty"]),
    ("pickle with a Python object", lambda f, t, o: _paint(f, "--out", o, release=t / "rel"),
     _corrupt_release(lambda rel: _edit_renderer(rel, _pickle_global)), 2, ["refused", "could run code"]),
    ("NaN in renderer weights", lambda f, t, o: _paint(f, "--out", o, release=t / "rel"),
     _corrupt_release(lambda rel: _edit_renderer(rel, _nan_weight)), 2, ["NaN", "conv_in.weight"]),
    ("wrong-shaped tensor", lambda f, t, o: _paint(f, "--out", o, release=t / "rel"),
     _corrupt_release(lambda rel: _edit_renderer(rel, _wrong_shape)), 2, [WRONG, "wrong shape"]),
    ("vae folder without weights", lambda f, t, o: _paint(f, "--out", o, release=t / "rel"),
     _corrupt_release(lambda rel: [p.unlink() for p in (rel / "base" / "vae").glob("*.safetensors")]), 2,
     ["vae", "VAE"]),
    ("no text model and no instructions", lambda f, t, o: [P, str(f["painting"]), "--models", str(f["release"]),
                                                           "--out", o, *FAST], None, 2, ["--instructions"]),
    # output locations
    ("out is a file", lambda f, t, o: _paint(f, "--out", str(f["a_file"])), None, 2, ["a file is in the way"]),
    ("out holds an earlier run", lambda f, t, o: _paint(f, "--out", o), None, 2, ["not empty", "--overwrite"]),
    ("out under /proc", lambda f, t, o: _paint(f, "--out", "/proc/inverse_painting_out"), None, 2,
     ["/proc/inverse_painting_out", "cannot be created"]),
    ("out under a file", lambda f, t, o: _paint(f, "--out", str(f["a_file"] / "run")), None, 2, ["cannot be created"]),
    ("resume a folder that is no run", lambda f, t, o: _paint(f, "--out", str(t / "photos"), "--resume"),
     lambda f, t: (t / "photos").mkdir() or (t / "photos" / "cat.jpg").write_text("x"), 2, ["no run", "manifest"]),
    ("resume another tool's run", lambda f, t, o: _paint(f, "--out", o, "--resume", "--seed", "9"),
     None, 2, ["--resume", "other settings"]),
    # other commands
    ("convert missing path", lambda f, t, o: ["convert", str(t / "nothing")], None, 2, ["nothing", "no such"]),
    ("convert empty folder", lambda f, t, o: ["convert", str(f["empty"])], None, 2, ["no .ckpt"]),
    ("convert a text file", lambda f, t, o: ["convert", str(f["text"])], None, 2, ["not a .ckpt"]),
    ("convert onto a folder", lambda f, t, o: ["convert", str(t / "c" / "a.ckpt"), "--overwrite"],
     lambda f, t: (t / "c" / "a.safetensors").mkdir(parents=True) or shutil.copy(_renderer_ckpt(f["release"]),
                                                                                t / "c" / "a.ckpt"), 2,
     ["a.safetensors", "folder is in the way"]),
    ("parity missing folder", lambda f, t, o: ["parity", str(t / "nothing")], None, 2, ["not a parity fixture"]),
    ("tiny-release into a run", lambda f, t, o: ["tiny-release", o], None, 2, ["not empty"]),
    ("evaluate missing folder", lambda f, t, o: ["evaluate", str(t / "nothing"), str(f["empty"])], None, 2,
     ["nothing", "not a folder"]),
    ("evaluate unknown option", lambda f, t, o: ["evaluate", o, o, "--bogus"], None, 2, ["--bogus"]),
    ("evaluate threshold nan", lambda f, t, o: ["evaluate", o, o, "--threshold", "nan"], None, 2, ["--threshold"]),
    ("evaluate garbage raw layout", lambda f, t, o: ["evaluate", str(t / "raw"), str(t / "raw"), "--out",
                                                    str(t / "ev")],
     lambda f, t: (t / "raw").mkdir() or (t / "raw" / "last_aligned_frame_inv.json").write_text("{oops"), 2,
     ["last_aligned_frame_inv.json", "JSON"]),
    ("evaluate time stamps not numbers", lambda f, t, o: ["evaluate", str(t / "g"), str(t / "g"), "--out",
                                                          str(t / "ev")],
     lambda f, t: _generated_run(t / "g") and _rewrite_times(t / "g", ["0", "soon", "40"]), 2, ["time stamps"]),
    ("evaluate manifest a list of numbers", lambda f, t, o: ["evaluate", str(t / "g"), str(t / "g"), "--out",
                                                             str(t / "ev")],
     lambda f, t: _generated_run(t / "g") and (t / "g" / "manifest.json").write_text("[1, 2]"), 2,
     ["manifest.json", "list of objects"]),
    ("evaluate keyframes an object", lambda f, t, o: ["evaluate", str(t / "g"), str(t / "g"), "--out",
                                                      str(t / "ev")],
     lambda f, t: _generated_run(t / "g") and (t / "g" / "manifest.json").write_text('{"keyframes": {"a": 1}}'), 2,
     ["manifest.json", "list of objects"]),
    # weight files the metric reads (safetensors / torch errors used to surface as internal errors)
    ("truncated LPIPS heads", lambda f, t, o: _paint(f, "--out", o, "--metric", "lpips_alex", release=t / "rel"),
     _corrupt_release(lambda rel: _truncate(rel / "lpips" / "alex.pth")), 2, ["alex.pth", "cannot read"]),
    ("LPIPS heads where the trunk belongs", lambda f, t, o: _paint(f, "--out", o, release=t / "rel"),
     _corrupt_release(lambda rel: shutil.copy(rel / "lpips" / "alex.pth", rel / "lpips" / "alexnet_features.pth")), 2,
     ["alexnet_features.pth", "not the weights"]),
    ("LPIPS trunk as truncated safetensors", lambda f, t, o: _paint(f, "--out", o, release=t / "rel"),
     _corrupt_release(lambda rel: _safetensors_stub(rel / "lpips")), 2, ["alexnet_features.safetensors"]),
    # empty paths: Path('') is the current folder (--out '' wrote there, --models '' and IMAGE '' fell back to defaults)
    ("out empty string", lambda f, t, o: _paint(f, "--out", ""), None, 2, ["--out", "empty string"]),
    ("models empty string", lambda f, t, o: [P, str(f["painting"]), "--models", "", "--out", o], None, 2,
     ["--models", "empty string"]),
    ("image empty string", lambda f, t, o: [P, "", "--models", str(f["release"]), "--out", o], None, 2,
     ["IMAGE", "empty string"]),
    ("image blank among others", lambda f, t, o: [P, str(f["painting"]), " ", "--out", o], None, 2, ["IMAGE"]),
    ("evaluate out empty string", lambda f, t, o: ["evaluate", o, o, "--out", ""], None, 2, ["--out", "empty"]),
    ("convert empty string", lambda f, t, o: ["convert", ""], None, 2, ["path", "empty"]),
    # rehearsal-release options, checked before anything is written
    ("rehearsal llava layers 0", lambda f, t, o: ["rehearsal-release", str(t / "r"), "--llava-layers", "0"], None, 2,
     ["--llava-layers"]),
    ("rehearsal shard nan", lambda f, t, o: ["rehearsal-release", str(t / "r"), "--shard-gb", "nan"], None, 2,
     ["--shard-gb"]),
    ("rehearsal seed -1", lambda f, t, o: ["rehearsal-release", str(t / "r"), "--seed", "-1"], None, 2, ["--seed"]),
    ("rehearsal into a run", lambda f, t, o: ["rehearsal-release", o, "--parts", "lpips"], None, 2,
     ["not a rehearsal release"]),
    # any README.txt passed as "a rehearsal release": 15 GB would have been written into a user's project
    ("rehearsal into a folder with a README", lambda f, t, o: ["rehearsal-release", o, "--parts", "lpips"],
     lambda f, t: ((t / "out").mkdir(), (t / "out" / "README.txt").write_text("my project")), 2,
     ["not a rehearsal release"]),
    ("rehearsal into a file", lambda f, t, o: ["rehearsal-release", str(f["a_file"]), "--parts", "lpips"], None, 2,
     ["a file is in the way"]),
    ("rehearsal check an empty folder", lambda f, t, o: ["rehearsal-release", str(f["empty"]), "--check-only"], None,
     2, ["cannot find base"]),
    ("rehearsal manifests missing", lambda f, t, o: ["rehearsal-release", str(f["release"]), "--check-only",
                                                     "--manifests", str(t / "nothing")], None, 2, ["--manifests"]),
    ("rehearsal empty out", lambda f, t, o: ["rehearsal-release", ""], None, 2, ["out", "empty string"]),
    # train assemble replaced renderer/ (rmtree) in any folder given, a user's own included
    ("assemble into a user's folder", lambda f, t, o: ["train", "assemble", o, "--renderer", str(f["release"])], None,
     2, ["not empty", "assembled.json"]),
    ("assemble empty dest", lambda f, t, o: ["train", "assemble", "", "--renderer", str(f["release"])], None, 2,
     ["dest", "empty string"]),
    ("assemble renderer missing", lambda f, t, o: ["train", "assemble", str(t / "new"), "--renderer",
                                                   str(t / "nothing")], None, 2, ["--renderer", "nothing"]),
    # the other training commands printed argparse's usage block, or a raw "[Errno 2]" with exit 1
    ("train ingest videos missing", lambda f, t, o: ["train", "ingest", str(t / "nope"), o], None, 2,
     ["videos", "does not exist"]),
    ("train ingest folder without videos", lambda f, t, o: ["train", "ingest", str(f["empty"]), o], None, 2,
     ["no videos"]),
    ("train ingest empty path", lambda f, t, o: ["train", "ingest", "", o], None, 2, ["videos", "empty string"]),
    ("train-renderer bad number", lambda f, t, o: ["train", "train-renderer", "--steps", "many"], None, 2,
     ["--steps", "invalid int"]),
    ("train-mask missing options", lambda f, t, o: ["train", "train-mask"], None, 2, ["required", "--data"]),
    ("synth bad count", lambda f, t, o: ["train", "synth", "--count", "x"], None, 2, ["--count"]),
    ("ground-truth without data", lambda f, t, o: ["train", "ground-truth"], None, 2, ["required", "data"]),
]


# found while the weights load, which happens after the output folder was checked (and created): these cases
# run with a new output folder, which must stay empty
AT_LOAD = {"pickle with a Python object", "NaN in renderer weights", "wrong-shaped tensor", "vae folder without weights"}


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_bad_input_by_name(case, files, tmp_path, capsys):
    name, argv_of, setup, code, words = case
    if setup is not None:
        setup(files, tmp_path)
    out = tmp_path / "new_out" if name in AT_LOAD else _earlier_run(tmp_path / "out")
    before = _snapshot(out)
    rc, stdout, err = _run(argv_of(files, tmp_path, str(out)), capsys)
    lines = err.strip().splitlines()
    assert rc == code, (name, rc, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + stdout
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "weights_only=False" not in err
    assert _snapshot(out) == before  # the earlier run and the user's note are untouched
    assert not list(tmp_path.rglob("*.partial*"))


def test_debug_shows_the_traceback(files, tmp_path, capsys):
    rc, _, err = _run(_paint(files, "--out", str(tmp_path / "o"), image="tiny") + ["--debug"], capsys)
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_numerical_fault_names_its_stage_and_keeps_earlier_frames(files, tmp_path, capsys, monkeypatch):
    """NaN appearing in the renderer at keyframe 2: exit 1 naming the stage; keyframe 1 kept, nothing black."""
    from inverse_painting.models.renderer_unet import RendererUNet

    forward = RendererUNet.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls["n"] += 1
        return out * float("nan") if calls["n"] > 2 else out  # two steps per keyframe: keyframe 2 breaks

    monkeypatch.setattr(RendererUNet, "forward", poisoned)
    out = tmp_path / "o"
    rc, _, err = _run(_paint(files, "--out", str(out)), capsys)
    assert rc == 1 and err.strip().startswith("error: non-finite values") and "renderer UNet" in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "interrupted" and len(man["keyframes"]) == 2  # start canvas + keyframe 1
    assert sorted(p.name for p in (out / "frames").iterdir()) == [Path(e["file"]).name for e in man["keyframes"]]


def test_vae_decoder_fault_is_named(files, tmp_path, capsys, monkeypatch):
    from inverse_painting.core.model_set import ModelSet

    decode = ModelSet.decode_latents
    monkeypatch.setattr(ModelSet, "decode_latents", lambda self, latents: decode(self, latents * float("nan")))
    rc, _, err = _run(_paint(files, "--out", str(tmp_path / "o")), capsys)
    assert rc == 1 and "VAE decoder" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ nodes


@pytest.fixture(scope="module")
def node_model(tiny_release):
    from inverse_painting.nodes.model_nodes import InversePaintingModel

    return InversePaintingModel(tiny_release, device="cpu", precision="fp32", short_side=64)


def _image(h=64, w=80, value=0.5):
    return torch.full((1, h, w, 3), value)


def _nan_image():
    img = _image()
    img[0, 3, 3, 1] = float("nan")
    return img


GUIDANCE = dict(guidance_image=2.0, guidance_canvas=1.0, guidance_time=5.0, guidance_mask=5.0, guidance_text=5.0)


def _timelapse(model, **over):
    from inverse_painting.nodes.timelapse import InversePaintingTimelapse

    kw = dict(model=model, target=_image(), interval=20.0, max_keyframes=1, seed=1, steps=1, instructions="sky",
              **GUIDANCE)
    kw.update(over)
    return InversePaintingTimelapse().run(**kw)


def _render(model, **over):
    from inverse_painting.nodes.step_nodes import InversePaintingRenderKeyframe

    kw = dict(model=model, canvas=_image(value=1.0), target=_image(), instruction="sky",
              mask=torch.ones(1, 64, 80), interval=20.0, seed=1, steps=1, **GUIDANCE)
    kw.update(over)
    return InversePaintingRenderKeyframe().run(**kw)


def _save(**over):
    from inverse_painting.nodes.output_nodes import InversePaintingSaveProcess

    kw = dict(frames=torch.rand(2, 64, 64, 3), filename_prefix="hostile/run")
    kw.update(over)
    return InversePaintingSaveProcess().save(**kw)


def _loader(release):
    from inverse_painting.nodes.model_nodes import InversePaintingLoader

    return InversePaintingLoader().load(release=release, device="cpu")


def _evaluate(**over):
    from inverse_painting.nodes.evaluation_node import InversePaintingEvaluate

    kw = dict(generated=torch.rand(3, 64, 64, 3), reference=torch.rand(3, 64, 64, 3))
    kw.update(over)
    return InversePaintingEvaluate().run(**kw)


def _difference(**over):
    from inverse_painting.nodes.step_nodes import InversePaintingDifferenceMask

    kw = dict(canvas=_image(value=1.0), target=_image(), threshold=0.2, metric="stlpips_alex")
    kw.update(over)
    return InversePaintingDifferenceMask().run(**kw)


def _mask(model, **over):
    from inverse_painting.nodes.step_nodes import InversePaintingMaskGenerator

    kw = dict(model=model, canvas=_image(value=1.0), target=_image(), instruction="sky", interval=20.0)
    kw.update(over)
    return InversePaintingMaskGenerator().run(**kw)


def _time_map(**over):
    from inverse_painting.nodes.output_nodes import InversePaintingTimeMap

    kw = dict(frames=torch.rand(3, 64, 64, 3), method="pixel")
    kw.update(over)
    return InversePaintingTimeMap().run(**kw)


NODE_CASES = [
    ("time-lapse target NaN", lambda m: _timelapse(m, target=_nan_image()), ["target", "NaN"]),
    ("time-lapse start canvas NaN", lambda m: _timelapse(m, start_canvas=_nan_image()), ["start_canvas", "NaN"]),
    ("time-lapse interval NaN", lambda m: _timelapse(m, interval=float("nan")), ["interval", "nan"]),
    ("time-lapse interval 0", lambda m: _timelapse(m, interval=0.0), ["interval", "> 0"]),
    ("time-lapse guidance inf", lambda m: _timelapse(m, guidance_text=float("inf")), ["guidance_text"]),
    ("time-lapse strip target", lambda m: _timelapse(m, target=_image(h=64, w=600)), ["600x64", "4:1"]),
    ("time-lapse target batch of masks", lambda m: _timelapse(m, target=torch.rand(1, 64, 80)), ["target"]),
    ("time-lapse stop distance NaN", lambda m: _timelapse(m, stop_target_distance=float("nan")),
     ["stop_target_distance"]),
    ("render guidance NaN", lambda m: _render(m, guidance_image=float("nan")), ["guidance_image"]),
    ("render canvas NaN", lambda m: _render(m, canvas=_nan_image()), ["canvas", "NaN"]),
    ("render combine ratio 2", lambda m: _render(m, combine_ratio=2.0), ["combine_ratio"]),
    ("mask generator interval inf", lambda m: _mask(m, interval=float("inf")), ["interval"]),
    ("difference threshold NaN", lambda m: _difference(threshold=float("nan")), ["threshold"]),
    ("save frames NaN", lambda m: _save(frames=_nan_image()), ["frames", "NaN"]),
    ("save seconds per frame NaN", lambda m: _save(seconds_per_frame=float("nan")), ["seconds_per_frame"]),
    ("save prefix escaping output", lambda m: _save(filename_prefix="../../etc/x"), ["filename_prefix"]),
    ("evaluate times not times", lambda m: _evaluate(generated_times="0, soon, 40"), ["generated_times", "soon"]),
    ("evaluate times miscounted", lambda m: _evaluate(reference_times="0, 20"), ["reference_times"]),
    ("evaluate images NaN", lambda m: _evaluate(generated=_nan_image()), ["generated", "NaN"]),
    ("time map threshold NaN", lambda m: _time_map(threshold=float("nan")), ["threshold"]),
    # re-probe: a batch where one picture is painted used its first image silently; seeds/steps out of range
    ("render canvas batch of 2", lambda m: _render(m, canvas=_image(value=1.0).repeat(2, 1, 1, 1)),
     ["canvas", "batch of 2"]),
    ("render target batch of 2", lambda m: _render(m, target=_image().repeat(2, 1, 1, 1)), ["target", "batch of 2"]),
    ("render mask batch of 3", lambda m: _render(m, mask=torch.ones(3, 64, 80)), ["mask", "batch of 3"]),
    ("render seed 2**64 + 5", lambda m: _render(m, seed=2**64 + 5), ["seed"]),
    ("render seed -1", lambda m: _render(m, seed=-1), ["seed"]),
    ("render steps 0", lambda m: _render(m, steps=0), ["steps"]),
    ("mask generator canvas batch of 2", lambda m: _mask(m, canvas=_image(value=1.0).repeat(2, 1, 1, 1)),
     ["canvas", "batch of 2"]),
    ("difference target batch of 2", lambda m: _difference(target=_image().repeat(2, 1, 1, 1)), ["target"]),
    ("time-lapse empty target batch", lambda m: _timelapse(m, target=torch.zeros(0, 64, 80, 3)), ["target", "empty"]),
    ("save prefix with NUL", lambda m: _save(filename_prefix="run\x00x"), ["filename_prefix", "control"]),
    ("save prefix 300 bytes", lambda m: _save(filename_prefix="hostile/" + "x" * 300),
     ["filename_prefix", "300 bytes"]),
    ("loader with an empty release name", lambda m: _loader(""), ["no model folder chosen"]),
    ("save prefix 100 CJK characters", lambda m: _save(filename_prefix="絵" * 100), ["filename_prefix", "bytes"]),
]


@pytest.mark.parametrize("case", NODE_CASES, ids=[c[0] for c in NODE_CASES])
def test_nodes_refuse_bad_input_by_name(case, node_model, tmp_path, monkeypatch):
    from inverse_painting.core.errors import UserInputError

    monkeypatch.setenv("INVERSE_PAINTING_OUTPUT", str(tmp_path))
    name, call, words = case
    with pytest.raises(UserInputError) as info:
        call(node_model)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert not list(tmp_path.rglob("*.png"))  # refused before anything was written


def test_loader_node_names_a_broken_release(tmp_path, tiny_release):
    from inverse_painting.core.errors import UserInputError
    from inverse_painting.nodes.model_nodes import InversePaintingModel

    rel = tmp_path / "rel"
    shutil.copytree(tiny_release, rel)
    shutil.rmtree(rel / "clip")
    with pytest.raises(UserInputError, match="clip"):
        InversePaintingModel(rel, device="cpu", precision="fp32")


# ------------------------------------------------------------------------------------------------ image modes


def _read(path):
    from inverse_painting.core.imaging import load_image

    return load_image(path)


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 96 * 80).reshape(80, 96).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    img, note = _read(tmp_path / "g16.png")
    assert img[0, 0].tolist() == [0, 0, 0] and img[-1, -1].tolist() == [255, 255, 255]
    assert abs(float(img.mean()) - 127.5) < 1.5 and "16-bit" in note
    f = np.linspace(0, 1, 96 * 80).reshape(80, 96).astype(np.float32)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tiff")
    img, note = _read(tmp_path / "f.tiff")
    assert img[0, 0, 0] == 0 and img[-1, -1, 0] == 255 and abs(float(img.mean()) - 127.5) < 1.5


def test_exif_orientation_is_honoured(tmp_path):
    a = np.zeros((60, 100, 3), np.uint8)
    a[:, :50] = 255  # left half white, landscape as stored
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view": a portrait photo
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    img, note = _read(tmp_path / "phone.jpg")
    assert img.shape == (100, 60, 3) and "EXIF" in note
    assert img[:45].mean() > 200 and img[55:].mean() < 50  # white half on top after the turn


def test_other_modes_read_by_their_meaning(tmp_path):
    from PIL import ImageCms  # noqa: F401 - Pillow's LittleCMS, needed for LAB

    Image.new("LAB", (80, 80), (128, 128, 128)).save(tmp_path / "lab.tiff")
    img, _ = _read(tmp_path / "lab.tiff")
    assert abs(int(img[0, 0, 0]) - 119) <= 3 and len(set(img[0, 0].tolist())) == 1  # mid grey, not a colour
    p = Image.new("P", (80, 80), 0)
    p.putpalette([10, 20, 30] * 256)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    assert _read(tmp_path / "p.png")[0][0, 0].tolist() == [255, 255, 255]  # transparent = blank canvas
    Image.new("CMYK", (80, 80), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert _read(tmp_path / "c.jpg")[0].min() > 245
    frames = [Image.new("RGB", (80, 80), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    img, note = _read(tmp_path / "anim.gif")
    assert img[0, 0, 0] > 200 and "first of its 2 frames" in note


def test_image_arrays_with_nan_are_refused():
    from inverse_painting.core.imaging import ImageInputError, to_rgb_uint8

    with pytest.raises(ImageInputError, match="start canvas.*NaN"):
        to_rgb_uint8(np.full((8, 8, 3), np.nan), "start canvas")


# ------------------------------------------------------------------------------------------------ output folders


def _paint_argv(files, out, *extra):
    return _paint(files, "--out", str(out), "--seed", "5", *extra)


def test_overwrite_replaces_only_the_earlier_run(files, tmp_path, capsys):
    out = tmp_path / "o"
    assert _run(_paint_argv(files, out, "--max-keyframes", "3"), capsys)[0] == 0
    assert len(list((out / "frames").glob("*.png"))) >= 3
    (out / "my notes.txt").write_text("mine")
    assert _run(_paint_argv(files, out, "--overwrite", "--max-keyframes", "1"), capsys)[0] == 0  # a shorter run
    names = sorted(p.name for p in (out / "frames").glob("*.png"))
    man = json.loads((out / "manifest.json").read_text())
    assert names == sorted(Path(e["file"]).name for e in man["keyframes"]) and len(names) == 2  # nothing mixed
    assert (out / "my notes.txt").read_text() == "mine" and man["status"] == "complete"
    assert not (out / ".resume_state.safetensors").exists()


@pytest.mark.parametrize("stop_after", [3, -1], ids=["keyframe 2", "first finishing frame"])
def test_interrupt_keeps_a_valid_folder_and_resume_gives_the_same_frames(files, tmp_path, capsys, monkeypatch,
                                                                         stop_after):
    """Ctrl-C after keyframe 2 of 4, or after the first of the 2 finishing frames (in process), then --resume:
    byte-identical frames and masks (at the painting's size, the finishing cross-fade mixed at that size)."""
    full, part = tmp_path / "full", tmp_path / "part"
    argv = lambda out, *x: _paint_argv(files, out, "--max-keyframes", "4", "--instructions", "sky|sea|land",  # noqa
                                       "--finish-frames", "2", *x)
    assert _run(argv(full), capsys)[0] == 0
    ends = [k.get("finishing", False) for k in json.loads((full / "manifest.json").read_text())["keyframes"]]
    assert ends[-3:] == [False, True, True]
    if stop_after < 0:
        stop_after += len(ends)  # the start canvas, the painted keyframes and the first finishing frame
    from inverse_painting.core.export import ProcessWriter

    add = ProcessWriter.add

    def add_then_stop(self, frame, record, mask=None):
        entry = add(self, frame, record, mask)
        if self.count == stop_after:
            raise KeyboardInterrupt
        return entry

    monkeypatch.setattr(ProcessWriter, "add", add_then_stop)
    rc, _, err = _run(argv(part), capsys)
    assert rc == 130 and "--resume" in err
    man = json.loads((part / "manifest.json").read_text())
    assert man["status"] == "interrupted" and len(man["keyframes"]) == stop_after
    monkeypatch.setattr(ProcessWriter, "add", add)
    before = _snapshot(part)
    rc, _, err = _run(argv(part, "--resume", "--seed", "9"), capsys)  # other settings: refused, nothing touched
    assert rc == 2 and "seed: 5 in the run, 9 now" in err and _snapshot(part) == before
    rc, out, _ = _run(argv(part, "--resume"), capsys)
    assert rc == 0 and "resuming" in out
    assert _snapshot(part / "frames") == _snapshot(full / "frames")
    assert _snapshot(part / "masks") == _snapshot(full / "masks")
    done = json.loads((part / "manifest.json").read_text())
    assert done["status"] == "complete" and done["settings"] == json.loads((full / "manifest.json").read_text())["settings"]
    rc, out, _ = _run(argv(part, "--resume"), capsys)
    assert rc == 0 and "nothing to resume" in out


@pytest.mark.parametrize("stop_at", ["first frame", "lock only"])
def test_a_run_killed_before_its_first_frame_is_written_resumes(files, tmp_path, capsys, monkeypatch, stop_at):
    """Killed (no cleanup: the lock file stays) after the first frame's file but before its mask, or after the
    folder's lock but before anything else: --resume paints the run, with the frames of an uninterrupted one."""
    from inverse_painting.core import export

    full, part = tmp_path / "full", tmp_path / "part"
    argv = lambda out, *x: _paint_argv(files, out, "--max-keyframes", "2", "--instructions", "sky|sea",  # noqa
                                       "--finish-frames", "0", *x)
    assert _run(argv(full), capsys)[0] == 0
    save = export.save_png

    def killed_at_the_mask(image, path, text=None):
        if Path(path).parent.name == "masks":
            raise KeyboardInterrupt
        return save(image, path, text)

    def killed_before_writing(self, frame, record, mask=None):
        self._begin()  # the folder's lock
        raise KeyboardInterrupt

    if stop_at == "first frame":
        monkeypatch.setattr(export, "save_png", killed_at_the_mask)
    else:
        monkeypatch.setattr(export.ProcessWriter, "add", killed_before_writing)
    # a SIGKILL leaves the lock file (the lock itself goes with the process)
    monkeypatch.setattr(export.ProcessWriter, "close", lambda self: self._lock not in (None, True) and self._lock.close())
    assert _run(argv(part), capsys)[0] == 130
    assert (part / export.LOCK_FILE).is_file()
    assert (part / "frames").is_dir() == (part / "manifest.json").is_file() == (stop_at == "first frame")
    monkeypatch.undo()
    rc, _, err = _run(argv(part, "--resume"), capsys)
    assert rc == 0, err
    assert _snapshot(part / "frames") == _snapshot(full / "frames")
    assert _snapshot(part / "masks") == _snapshot(full / "masks")
    assert json.loads((part / "manifest.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_killed_run_resumes_to_the_frames_of_an_uninterrupted_one(tmp_path):
    """A real process killed with SIGKILL after some keyframe (no cleanup at all), then resumed."""
    cmd = [sys.executable, "-m", "inverse_painting.cli", "paint", "--out"]
    opts = ["--max-keyframes", "4", "--steps", "2", "--seed", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    subprocess.run(cmd + [str(tmp_path / "full")] + opts, env=env, check=True, capture_output=True)
    part = tmp_path / "part"
    proc = subprocess.Popen(cmd + [str(part)] + opts, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (part / "frames" / "0002_0m40s.png").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((part / "manifest.json").read_text())["status"] == "painting"
    r = subprocess.run(cmd + [str(part)] + opts + ["--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _snapshot(part / "frames") == _snapshot(tmp_path / "full" / "frames")
    assert _snapshot(part / "masks") == _snapshot(tmp_path / "full" / "masks")


def test_one_writer_per_run_folder(tmp_path):
    from inverse_painting.core.errors import OutputFolderError
    from inverse_painting.core.export import ProcessWriter

    first = ProcessWriter(tmp_path / "o", {}, video=())
    second = ProcessWriter(tmp_path / "o", {}, video=())  # both found the folder empty...
    first.add(np.zeros((8, 8, 3), np.uint8), {"time_s": 0.0})
    with pytest.raises(OutputFolderError, match="another run is writing"):  # ...only one may write
        second.add(np.zeros((8, 8, 3), np.uint8), {"time_s": 0.0})
    first.finish()
    assert not (tmp_path / "o" / ".writing.lock").exists()


def test_a_failure_before_the_first_frame_releases_the_folder(files, tmp_path, capsys, monkeypatch):
    """Writing the start canvas fails (a full disk): the folder's lock is released, so the same process (a folder
    run going on to its next painting) or a later command can write there."""
    from inverse_painting.core.export import LOCK_FILE, ProcessWriter, _lock

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ProcessWriter, "add", full_disk)
    out = tmp_path / "o"
    rc, _, err = _run(_paint_argv(files, out), capsys)
    assert rc == 1 and "No space left" in err
    assert not (out / LOCK_FILE).exists()
    handle = _lock(out)  # not refused as "another run is writing"
    handle.close()


def test_temporary_files_are_hidden_from_globs(tmp_path):
    from inverse_painting.core.export import save_png

    def failing(p):
        raise OSError("disk full")

    from inverse_painting.core import export

    with pytest.raises(OSError):
        export._atomic(tmp_path / "0003_1m00s.png", failing)
    save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "0001_0m20s.png")
    assert [p.name for p in tmp_path.glob("*.png")] == ["0001_0m20s.png"] and not list(tmp_path.glob(".*"))


# ------------------------------------------------------------------------------------------------ evaluate


def _generated_run(folder: Path, frames: int = 3) -> Path:
    from inverse_painting.core.export import write_process

    imgs = [np.full((64, 64, 3), 255 - 60 * k, np.uint8) for k in range(frames)]
    write_process(folder, imgs, [{"time_s": 20.0 * k, "instruction": ""} for k in range(frames)], {},
                  masks=[np.full((64, 64), 255, np.uint8)] * frames, video=())
    return folder


def _rewrite_times(folder: Path, times) -> bool:
    man = json.loads((folder / "manifest.json").read_text())
    for entry, t in zip(man["keyframes"], times):
        entry["time_s"] = t
    (folder / "manifest.json").write_text(json.dumps(man))
    return True


def test_evaluate_reads_only_inside_the_given_folders(tmp_path, capsys):
    gen = _generated_run(tmp_path / "gen" / "p")
    real = _generated_run(tmp_path / "real" / "p")
    man = json.loads((gen / "manifest.json").read_text())
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), "black").save(secret)
    man["keyframes"][1]["file"] = "../../secret.png"
    (gen / "manifest.json").write_text(json.dumps(man))
    rc, _, err = _run(["evaluate", str(gen), str(real), "--out", str(tmp_path / "ev"), "--no-plots"], capsys)
    assert rc == 2 and "outside the painting folder" in err and "Traceback" not in err
    man["keyframes"][1]["file"] = str(secret)  # absolute
    (gen / "manifest.json").write_text(json.dumps(man))
    rc, _, err = _run(["evaluate", str(gen), str(real), "--out", str(tmp_path / "ev"), "--no-plots"], capsys)
    assert rc == 2 and "outside the painting folder" in err


def test_evaluate_names_a_missing_mask(tmp_path, capsys):
    """A mask the manifest names but that is not on disk was silently read as 'no mask'."""
    gen = _generated_run(tmp_path / "gen" / "p")
    real = _generated_run(tmp_path / "real" / "p")
    man = json.loads((gen / "manifest.json").read_text())
    named = man["keyframes"][1]["mask_file"]
    (gen / named).unlink()
    rc, _, err = _run(["evaluate", str(gen), str(real), "--out", str(tmp_path / "ev"), "--no-plots"], capsys)
    assert rc == 2 and f"mask {named!r}" in err and "not found" in err and "Traceback" not in err


def test_evaluate_reads_a_run_without_manifest_as_one_painting(tmp_path):
    from inverse_painting.evaluation.sequences import load_sequences

    gen = _generated_run(tmp_path / "p", frames=4)
    (gen / "manifest.json").unlink()
    seqs = load_sequences(gen)
    assert list(seqs) == ["p"] and len(seqs["p"]) == 4 and seqs["p"].masks is not None


def test_evaluate_keeps_an_earlier_evaluation(tmp_path, capsys):
    gen, real = _generated_run(tmp_path / "gen" / "p"), _generated_run(tmp_path / "real" / "p")
    ev = tmp_path / "ev"
    argv = ["evaluate", str(gen), str(real), "--out", str(ev), "--no-plots"]
    assert _run(argv, capsys)[0] == 0
    before = _snapshot(ev)
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "--overwrite" in err and _snapshot(ev) == before
    assert _run(argv + ["--overwrite"], capsys)[0] == 0


def test_convert_keeps_an_existing_safetensors(tiny_release, tmp_path, capsys):
    rel = tmp_path / "rel"
    shutil.copytree(tiny_release, rel)
    assert _run(["convert", str(rel)], capsys)[0] == 0
    st = next((rel / "RP").glob("*.safetensors"))
    before = st.read_bytes()
    st.write_bytes(before + b"")  # same bytes
    rc, out, _ = _run(["convert", str(rel)], capsys)
    assert rc == 0 and "kept" in out and st.read_bytes() == before


# ------------------------------------------------------------------------------------------------ re-probe (issue 19)


def test_rehearsal_check_names_a_broken_weight_file_of_any_part(files, tmp_path, capsys):
    """The check read only the renderer and mask generator: a truncated CLIP file (or a folder in its place)
    passed as 'release matches'."""
    rel = _release_copy(files, tmp_path)
    _truncate(rel / "clip" / "model.safetensors")
    (rel / "base" / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (rel / "base" / "vae" / "diffusion_pytorch_model.safetensors").mkdir()
    rc, out, err = _run(["rehearsal-release", str(rel), "--check-only"], capsys)
    assert rc == 1 and "Traceback" not in err
    assert "MISMATCH" in out and "clip/model.safetensors" in out and "a folder where a weight file belongs" in out


def test_fid_weights_that_cannot_be_read_are_named(tmp_path):
    from inverse_painting.core.errors import UserInputError
    from inverse_painting.evaluation.fid import load_fid_inception

    torch.save({"a": torch.zeros(2)}, tmp_path / "other.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "other.pth").read_bytes()[:100])
    for name, words in (("other.pth", "not the pytorch-fid"), ("cut.pth", "cannot read")):
        with pytest.raises(UserInputError, match=words) as info:
            load_fid_inception(tmp_path / name)
        assert name in str(info.value)


def _icc_swapped() -> bytes:
    """sRGB with its red and blue primaries swapped: a pure red pixel means blue."""
    import struct

    from PIL import ImageCms

    b = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    entries = {bytes(b[132 + 12 * i:136 + 12 * i]): 132 + 12 * i for i in range(struct.unpack(">I", b[128:132])[0])}
    r, bl = entries[b"rXYZ"], entries[b"bXYZ"]
    b[r + 4:r + 12], b[bl + 4:bl + 12] = b[bl + 4:bl + 12], b[r + 4:r + 12]
    return bytes(b)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_icc_profile_applies_with_alpha_and_palette(tmp_path, mode):
    """The profile was applied to RGB only: RGBA and palette images were read as if sRGB."""
    Image.new("RGB", (80, 80), (255, 0, 0)).convert(mode).save(tmp_path / "p.png", icc_profile=_icc_swapped())
    img, note = _read(tmp_path / "p.png")
    assert img[0, 0].tolist() == [0, 0, 255] and "ICC" in note


def test_transparent_pixels_stay_blank_canvas_through_an_icc_profile(tmp_path):
    a = np.zeros((80, 80, 4), np.uint8)
    a[..., 0], a[:40, :, 3] = 255, 255  # top half opaque red, bottom half transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "p.png", icc_profile=_icc_swapped())
    img, _ = _read(tmp_path / "p.png")
    assert img[0, 0].tolist() == [0, 0, 255] and img[-1, -1].tolist() == [255, 255, 255]


def test_resume_refuses_another_image_or_model_folder(files, tmp_path, capsys):
    out = tmp_path / "o"
    assert _run(_paint_argv(files, out, "--max-keyframes", "1"), capsys)[0] == 0
    man = json.loads((out / "manifest.json").read_text())
    man["status"] = "interrupted"
    (out / "manifest.json").write_text(json.dumps(man))
    before = _snapshot(out)
    other = _painting(tmp_path / "other.png", size=(80, 72))
    rc, _, err = _run([P, str(other), "--models", str(files["release"]), "--instructions", "sky", *FAST, "--out",
                       str(out), "--seed", "5", "--max-keyframes", "1", "--resume"], capsys)
    assert rc == 2 and "target_sha256" in err and _snapshot(out) == before
    rel = _release_copy(files, tmp_path)
    rc, _, err = _run(_paint(files, "--out", str(out), "--seed", "5", "--max-keyframes", "1", "--resume",
                             release=rel), capsys)
    assert rc == 2 and "models:" in err and _snapshot(out) == before


def test_a_run_planned_before_another_command_painted_the_folder_writes_nothing(files, tmp_path, capsys, monkeypatch):
    """Two commands started at once on one new folder: both find it empty; the slower one (models still loading
    while the other finished) must not paint over the finished run."""
    from inverse_painting.core import painting_run

    out = tmp_path / "o"
    plan = painting_run.plan_run
    later = {}

    def plan_then_other_command(folder, settings, mode="new", what="--out"):
        p = plan(folder, settings, mode, what)
        if not later:  # while this command loads its models, another one paints the whole run
            later["done"] = True
            monkeypatch.setattr(painting_run, "plan_run", plan)
            assert main(_paint_argv(files, out, "--max-keyframes", "1", "--seed", "7")) == 0
        return p

    monkeypatch.setattr(painting_run, "plan_run", plan_then_other_command)
    rc, _, err = _run(_paint_argv(files, out, "--max-keyframes", "1"), capsys)
    assert later and rc == 2 and "another command wrote a run there" in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete" and man["settings"]["seed"] == 7  # the other command's run, untouched


def test_one_command_per_folder_run(files, tmp_path, capsys):
    from inverse_painting.core.folder_run import lock_rank

    src = tmp_path / "src"
    src.mkdir()
    _painting(src / "a.png")
    _painting(src / "b.png", size=(80, 72))
    out = tmp_path / "out"
    argv = [P, str(src), "--models", str(files["release"]), "--instructions", "sky", *FAST, "--out", str(out),
            "--max-keyframes", "1"]
    assert _run(argv, capsys)[0] == 0
    before = _snapshot(out)
    held = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                             "from inverse_painting.core.folder_run import lock_rank\n"
                             f"h = lock_rank(Path({str(out)!r}), 0)\nprint('held', flush=True)\ntime.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert held.stdout.readline().strip() == "held"  # another command paints into out
        rc, _, err = _run(argv + ["--overwrite"], capsys)
        assert rc == 2 and "another command is painting into this folder" in err
        assert _snapshot(out) == before
    finally:
        held.kill()
        held.wait()
    assert lock_rank(out, 0) is not None  # free again once that command has ended
