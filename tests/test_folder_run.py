"""Many paintings in one command: a folder in, one run folder each, an index and a contact sheet; failures recorded
while the others go on; --resume skips finished paintings and continues a half-painted one; several processes
(torchrun) paint the same frames as one; the results score against real processes matched by name."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inverse_painting.cli import main
from inverse_painting.core.folder_run import expand_inputs, painting_names

FAST = ["--steps", "2", "--max-keyframes", "2", "--short-side", "64", "--instructions", "sky|land"]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix == ".png" and "contact" not in p.name}


@pytest.fixture(scope="module")
def paintings(tmp_path_factory):
    d = tmp_path_factory.mktemp("paintings")
    rng = np.random.default_rng(3)
    for name, size in (("alpha.png", (96, 72)), ("beta.jpg", (88, 72)), ("gamma.png", (72, 96))):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(d / name)
    return d


def _paint(tiny_release, *args):
    return main(["paint", *map(str, args), "--models", str(tiny_release), *FAST])


def test_inputs_expand_to_single_or_folder_runs(paintings, tmp_path):
    assert expand_inputs([str(paintings / "alpha.png")]) == ([paintings / "alpha.png"], False)
    found, folder = expand_inputs([str(paintings)])
    assert folder and [p.name for p in found] == ["alpha.png", "beta.jpg", "gamma.png"]
    found, folder = expand_inputs([str(paintings / "*.png")])
    assert folder and [p.name for p in found] == ["alpha.png", "gamma.png"]
    found, _ = expand_inputs([str(paintings / "beta.jpg"), str(paintings / "alpha.png")])
    assert [p.name for p in found] == ["beta.jpg", "alpha.png"]  # the order given
    (tmp_path / "empty").mkdir()
    from inverse_painting.core.errors import MissingPathError

    for bad in ([str(tmp_path / "empty")], [str(tmp_path / "*.png")], [str(tmp_path / "none.png"), "x"]):
        with pytest.raises(MissingPathError):
            expand_inputs(bad)
    assert painting_names([Path("a/x.png"), Path("b/x.png"), Path("a/X.jpg"), Path("y.png")]) == \
        ["x", "x~2", "X~3", "y"]


def test_folder_run_writes_one_run_per_painting_an_index_and_a_sheet(paintings, tiny_release, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for p in paintings.iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    assert _paint(tiny_release, src, "--out", out) == 1  # one painting could not be painted
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err
    index = json.loads((out / "index.json").read_text())
    status = {r["name"]: r["status"] for r in index["paintings"]}
    assert status == {"alpha": "complete", "beta": "complete", "broken": "invalid", "gamma": "complete"}
    assert index["complete"] and index["counts"] == {"complete": 3, "invalid": 1}
    assert index["contact_sheets"] == ["contact_sheet.png"]
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.height >= 3 * 128
    for name in ("alpha", "beta", "gamma"):
        man = json.loads((out / name / "manifest.json").read_text())
        assert man["status"] == "complete" and (out / name / "timelapse.webp").is_file()
        assert man["settings"]["image"].endswith(name + (".jpg" if name == "beta" else ".png"))
    assert not (out / "broken").exists()
    # the same command again is refused (nothing overwritten); --resume finds everything done
    before = _snapshot(out)
    assert _paint(tiny_release, src, "--out", out) == 2
    assert _paint(tiny_release, src, "--out", out, "--resume") == 1  # broken.png is still broken
    assert _snapshot(out) == before


def test_a_failing_painting_does_not_stop_the_others(paintings, tiny_release, tmp_path, monkeypatch, capsys):
    from inverse_painting.core import painting_run

    paint_run = painting_run.paint_run

    def fail_beta(plan, *args, **kwargs):
        if plan.out.name == "beta":
            raise RuntimeError("disk on fire")
        return paint_run(plan, *args, **kwargs)

    monkeypatch.setattr(painting_run, "paint_run", fail_beta)
    out = tmp_path / "out"
    assert _paint(tiny_release, paintings, "--out", out) == 1
    rows = {r["name"]: r for r in json.loads((out / "index.json").read_text())["paintings"]}
    assert rows["beta"]["status"] == "failed" and "disk on fire" in rows["beta"]["error"]
    assert rows["alpha"]["status"] == rows["gamma"]["status"] == "complete"


def test_interrupted_folder_run_resumes_to_the_same_frames(paintings, tiny_release, tmp_path, monkeypatch, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert _paint(tiny_release, paintings, "--out", full) == 0
    from inverse_painting.core.export import ProcessWriter

    add = ProcessWriter.add

    def stop_in_beta(self, frame, record, mask=None):
        entry = add(self, frame, record, mask)
        if self.out.name == "beta" and self.count == 2:
            raise KeyboardInterrupt
        return entry

    monkeypatch.setattr(ProcessWriter, "add", stop_in_beta)
    assert _paint(tiny_release, paintings, "--out", part) == 130
    status = {r["name"]: r["status"] for r in json.loads((part / "index.json").read_text())["paintings"]}
    assert status == {"alpha": "complete", "beta": "interrupted", "gamma": "pending"}
    monkeypatch.setattr(ProcessWriter, "add", add)
    alpha_before = _snapshot(part / "alpha")
    assert _paint(tiny_release, paintings, "--out", part, "--resume") == 0
    out = capsys.readouterr().out
    assert "[1/2] beta" in out and "alpha" not in out.split("[1/2]")[1]  # alpha skipped, beta continued
    assert _snapshot(part / "alpha") == alpha_before
    assert _snapshot(part) == _snapshot(full)
    assert json.loads((part / "index.json").read_text())["counts"] == {"complete": 3}
    assert _paint(tiny_release, paintings, "--out", part, "--resume", "--seed", "4") == 2  # other settings


def test_overwrite_replaces_the_whole_earlier_folder_run(paintings, tiny_release, tmp_path):
    out = tmp_path / "out"
    assert _paint(tiny_release, paintings, "--out", out) == 0
    (out / "alpha" / "my notes.txt").write_text("mine")
    assert _paint(tiny_release, paintings / "beta.jpg", paintings / "gamma.png", "--out", out, "--overwrite") == 0
    index = json.loads((out / "index.json").read_text())
    assert [r["name"] for r in index["paintings"]] == ["beta", "gamma"]
    assert not (out / "alpha" / "manifest.json").exists() and not list((out / "alpha").rglob("*.png"))
    assert (out / "alpha" / "my notes.txt").read_text() == "mine"


def test_folder_results_score_against_real_processes_by_name(paintings, tiny_release, tmp_path, capsys):
    from inverse_painting.training.synthetic import generate_process, write_raw_layout

    real = tmp_path / "real"
    for i, name in enumerate(("alpha", "gamma")):
        proc = generate_process(20 + i, 64, 80, num_steps=4)
        write_raw_layout(proc, str(real), name)
        Image.fromarray(proc.frames[-1]).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    assert _paint(tiny_release, tmp_path / "*.png", "--out", out) == 0
    assert main(["evaluate", str(out), str(real), "--out", str(tmp_path / "ev"), "--no-plots"]) == 0
    report = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert sorted(p["name"] for p in report["paintings"]) == ["alpha", "gamma"]
    assert report["overall"]["num_paintings"] == 2 and not report["overall"]["unmatched_generated"]


@pytest.mark.slow
def test_two_processes_paint_the_frames_of_one(paintings, tiny_release, tmp_path):
    """torchrun, two CPU processes (gloo): each paints its share; frames identical to a one-process run."""
    args = [str(paintings), "--models", str(tiny_release), *FAST]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    one = subprocess.run([sys.executable, "-m", "inverse_painting.cli", "paint", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "inverse_painting.cli", "paint", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "[process 1/2]" in two.stdout and "[process 0/2]" in two.stdout
    assert _snapshot(tmp_path / "two") == _snapshot(tmp_path / "one")
    index = json.loads((tmp_path / "two" / "index.json").read_text())
    assert index["complete"] and index["counts"] == {"complete": 3}


@pytest.mark.slow
def test_starter_folder_run_two_processes_kill_and_resume(tmp_path):
    """With the bundled starter: 5 files, one of them unreadable. Two torchrun processes paint the same frames as
    one process; the unreadable file is recorded in the index while the other 4 finish; a one-process run killed
    (SIGKILL) after 2 finished paintings resumes to the same frames."""
    import signal
    import time

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(5)
    for name in "abcd":
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(src / f"{name}.png")
    (src / "e.png").write_bytes(b"not a png")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    fast = ["--steps", "2", "--max-keyframes", "2", "--short-side", "64", "--instructions", "sky|land",
            "--finish-frames", "0"]
    cli = [sys.executable, "-m", "inverse_painting.cli", "paint", str(src), *fast, "--out"]

    one = subprocess.run([*cli, str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=900)
    assert one.returncode == 1, one.stderr  # 1: not every painting could be made
    rows = {r["name"]: r for r in json.loads((tmp_path / "one" / "index.json").read_text())["paintings"]}
    assert {n: r["status"] for n, r in rows.items()} == {**dict.fromkeys("abcd", "complete"), "e": "invalid"}
    assert "cannot read it as an image" in rows["e"]["error"]
    reference = _snapshot(tmp_path / "one")
    assert len([k for k in reference if k.split("/")[1] == "frames"]) == 4 * 3

    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *cli[1:], str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=900)
    assert two.returncode == 1, two.stderr[-2000:]
    assert _snapshot(tmp_path / "two") == reference

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cli, str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        index = killed / "index.json"
        done = [r for r in json.loads(index.read_text())["paintings"] if r["status"] == "complete"] \
            if index.is_file() else []
        if len(done) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    resumed = subprocess.run([*cli, str(killed), "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 1, resumed.stderr
    assert _snapshot(killed) == reference
    counts = json.loads((killed / "index.json").read_text())["counts"]
    assert counts == {"complete": 4, "invalid": 1}


def test_an_output_folder_inside_the_inputs_is_never_painted(tiny_release, tmp_path, capsys):
    """`paint 'pics/**/*.png' --out pics/out` then --resume: the frames and contact sheet under out/ are no input
    (the resume painted its own 16 frames as new paintings); --out the input folder itself is refused by name."""
    pics = tmp_path / "pics"
    for sub in ("s1", "s2"):
        (pics / sub).mkdir(parents=True)
    rng = np.random.default_rng(5)
    for name in ("a.png", "s1/x.png", "s2/x.png"):
        Image.fromarray(rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(pics / name)
    glob_arg, out = str(pics / "**" / "*.png"), pics / "out"
    assert _paint(tiny_release, glob_arg, "--out", out) == 0
    rows = lambda: [(r["name"], Path(r["image"]).relative_to(pics).as_posix(), r["status"])  # noqa: E731
                    for r in json.loads((out / "index.json").read_text())["paintings"]]
    first = rows()
    assert first == [("a", "a.png", "complete"), ("x", "s1/x.png", "complete"), ("x~2", "s2/x.png", "complete")]
    before = _snapshot(out)
    assert _paint(tiny_release, glob_arg, "--out", out, "--resume") == 0
    assert rows() == first and _snapshot(out) == before
    # a new x.png sorted before the others: the painted runs keep their folders, the new one gets a free name
    (pics / "s0").mkdir()
    Image.fromarray(rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(pics / "s0" / "x.png")
    assert _paint(tiny_release, glob_arg, "--out", out, "--resume") == 0
    assert sorted(rows()) == sorted(first + [("x~3", "s0/x.png", "complete")])
    assert {k: v for k, v in _snapshot(out).items() if not k.startswith("x~3/")} == before
    capsys.readouterr()
    assert _paint(tiny_release, pics, "--out", pics, "--overwrite") == 2
    assert "inside the output folder" in capsys.readouterr().err


def test_painting_names_stay_inside_the_output_folder():
    """A file '...png' given by name had the stem '..': its run folder was OUT/.., the folder above OUT."""
    assert painting_names([Path("p/...png"), Path("p/.hidden.png"), Path("p/ .png"), Path("p/a.png")]) == \
        ["painting", "hidden", "painting~2", "a"]


@pytest.mark.parametrize("text", ["[1]", '{"settings": 5}', "null"])
def test_resume_names_a_damaged_index(paintings, tiny_release, tmp_path, capsys, text):
    """A hand-edited or damaged index.json was an internal AttributeError/TypeError on --resume."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.json").write_text(text)
    (out / "alpha").mkdir()
    (out / "alpha" / "my notes.txt").write_text("mine")
    before = _snapshot(out) | {"index": (out / "index.json").read_text()}
    assert _paint(tiny_release, paintings, "--out", out, "--resume") == 2
    err = capsys.readouterr().err
    assert "index.json is damaged" in err and "Traceback" not in err
    assert _snapshot(out) | {"index": (out / "index.json").read_text()} == before
    assert (out / "alpha" / "my notes.txt").read_text() == "mine"
