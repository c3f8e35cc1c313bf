"""Training CLI tests (training/cli.py) at tiny size.

End to end: ``synth`` -> ``ground-truth`` -> ``train-mask`` (4 steps on the tiny random release) ->
``assemble`` into a models/inverse_painting/<name>/ folder -> ``ModelSet.from_release`` loads it (the
trained RP, the base release's renderer/base/clip/lpips). Also ``ingest`` over a folder holding one
synthetic time-lapse video, ``train-text`` through the CLI, and ``python -m inverse_painting.training.cli``.
"""
import json
import os
import subprocess
import sys


sys.path.insert(0, os.path.dirname(__file__))
import tiny_llava as tl  # noqa: E402

QUIET = ["--cpu", "--no-progress", "--no-tensorboard", "--log-every", "0"]


def test_synth_groundtruth_trainmask_assemble_load(tiny_release, tmp_path):
    from inverse_painting.core.model_set import ModelSet
    from inverse_painting.training.cli import main

    data, out = tmp_path / "data", tmp_path / "rp_out"
    assert main(["synth", str(data), "--count", "2", "--seed", "0", "--size", "64", "96", "--steps", "3"]) == 0
    assert main(["ground-truth", str(data)]) == 0
    assert len(list((data / "train" / "lpips").glob("*/*.jpg"))) == 6
    assert len(json.loads((data / "train" / "llava_json.json").read_text())) == 6
    assert main(["train-mask", "--data", str(data), "--base", str(tiny_release), "--out", str(out),
                 "--steps", "4", "--lr", "1e-3", "--no-complete-release", *QUIET]) == 0
    dest = tmp_path / "ComfyUI" / "models" / "inverse_painting" / "mine"
    assert main(["assemble", str(dest), "--base", str(tiny_release), "--mask", str(out)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["renderer", "RP", "base", "clip", "lpips", "assembled.json"])
    assert not (dest / "RP").is_symlink() and (dest / "base").is_symlink()  # trained: copied; base: linked
    models = ModelSet.from_release(dest)
    assert models.mask.step == 4 and models.renderer.step == 0


def test_ingest_folder_of_videos(tmp_path):
    from inverse_painting.training.cli import main
    from inverse_painting.training.raw_layout import read_inv_json
    from inverse_painting.training.synthetic import generate_process, write_video

    vids = tmp_path / "videos"
    vids.mkdir()
    write_video(generate_process(3, 96, 128, num_steps=4), str(vids / "my painting.mp4"), fps=4,
                seconds_per_keyframe=1.0)
    (vids / "notes.txt").write_text("not a video")
    # manual canvas box (the canvas fills this synthetic video)
    rc = main(["ingest", str(vids), str(tmp_path / "data"), "--every", "0.5", "--short-side", "64",
               "--crop", "0", "0", "128", "96"])
    summary = json.loads((tmp_path / "data" / "train" / "ingest_summary.json").read_text())
    assert rc == 0 and len(summary) == 1 and summary[0]["name"] == "my_painting", summary
    folder = tmp_path / "data" / "train" / "rgb" / "my_painting"
    assert (folder / "ingest_report.json").is_file()
    (target, earlier), = read_inv_json(str(folder)).items()
    assert len(earlier) >= 1


def test_train_text_through_cli(tmp_path):
    from inverse_painting.models.text_instruction import TextInstructionGenerator
    from inverse_painting.training.cli import main

    data = tmp_path / "data"
    main(["synth", str(data), "--count", "1", "--size", "64", "--steps", "2"])
    main(["ground-truth", str(data), "--no-masks"])
    tok = tl.train_tiny_sentencepiece(str(tmp_path / "tok"))
    hf = tl.write_llava_hf(tl.build_tiny_llava(), os.path.dirname(tok), str(tmp_path / "llava_hf"))
    out = tmp_path / "text_out"
    assert main(["train-text", "--data", str(data), "--base", hf, "--out", str(out), "--epochs", "2",
                 "--lora-r", "4", "--lora-alpha", "8", "--gradient-checkpointing", *QUIET]) == 0
    assert json.loads((out / "TP_llava" / "trainer_step.json").read_text())["global_step"] == 4  # 2 epochs x 2 pairs
    TextInstructionGenerator.from_pretrained(str(out / "TP_llava"))
    dest = tmp_path / "models" / "mine"
    from inverse_painting.training.cli import assemble

    assemble(dest, text=out)
    assert (dest / "TP_llava" / "config.json").is_file()


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "inverse_painting.training.cli", "--help"], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and "train-text" in r.stdout and "assemble" in r.stdout
