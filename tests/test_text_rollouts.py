"""Text-generator rollouts (training/text_rollouts.py): the expert mixture, the label order, the merge.

The rollouts of a trained model end to end run in tests/test_starter.py (the smoke recipe's ``rollouts`` stage).
"""
import json

import numpy as np
import pytest

from inverse_painting.training.text_rollouts import ExpertMixture, merge_rollouts, real_label_sequence, rollout_seed


class _Model:
    """A text generator that always answers the same, and counts its calls."""

    def __init__(self, answer="model says"):
        self.answer, self.calls = answer, 0

    def generate(self, canvas, target):
        self.calls += 1
        return self.answer


def _canvas(v):
    return np.full((8, 8, 3), v, np.uint8)


def test_expert_alone_follows_the_real_sequence_and_repeats_its_last_label():
    mix = ExpertMixture(["sky", "sea", "boat"], expert_share=1.0)
    said = [mix.generate(_canvas(k), _canvas(0), keyframe_index=k) for k in range(5)]
    assert said == ["sky", "sea", "boat", "boat", "boat"]
    assert [v[2] for v in mix.visited] == said and all(v[3] is None for v in mix.visited)
    assert [int(v[1][0, 0, 0]) for v in mix.visited] == list(range(5))  # the canvas each keyframe started from


def test_model_answers_are_used_but_the_expert_label_is_recorded():
    model = _Model()
    mix = ExpertMixture(["sky", "sea"], model, expert_share=0.0)
    assert [mix.generate(_canvas(0), _canvas(0), keyframe_index=k) for k in range(3)] == ["model says"] * 3
    assert model.calls == 3 and [v[2] for v in mix.visited] == ["sky", "sea", "sea"]
    assert [v[3] for v in mix.visited] == ["model says"] * 3
    with pytest.raises(ValueError, match="text generator"):
        ExpertMixture(["sky"], None, expert_share=0.5)


def test_mixed_choices_are_seeded_and_do_not_depend_on_the_answers():
    def who(answer, seed):
        mix = ExpertMixture([f"l{k}" for k in range(40)], _Model(answer), expert_share=0.5, seed=seed)
        return [mix.generate(_canvas(0), _canvas(0), keyframe_index=k) == f"l{k}" for k in range(40)]

    a = who("x", 3)
    assert a == who("y", 3) and a != who("x", 4)
    assert 8 < sum(a) < 32  # about half from the expert


def test_labels_follow_the_frame_order_of_the_process(tmp_path):
    from inverse_painting.training.synthetic import generate_dataset

    generate_dataset(str(tmp_path), 1, 5, size=64)
    vd = next((tmp_path / "train" / "rgb").iterdir())
    target, labels = real_label_sequence(vd)
    inv = json.loads((vd / "last_aligned_frame_inv.json").read_text())
    names = [*list(inv.values())[-1], list(inv)[-1]]
    found = json.loads((vd / "labels.json").read_text())
    assert labels == [found[n] for n in names[1:]] and len(labels) == len(names) - 1
    assert target.dtype == np.uint8 and min(target.shape[:2]) == 64
    found.pop(names[2])
    (vd / "labels.json").write_text(json.dumps(found))
    with pytest.raises(ValueError, match="needs a label"):
        real_label_sequence(vd)


def _conv(i, label):
    return {"id": i, "image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                             {"from": "gpt", "value": label}]}


def test_merge_is_the_same_however_the_rollouts_were_sharded(tmp_path):
    root = tmp_path / "train"
    parts = root / "llava_image" / "rollouts"
    parts.mkdir(parents=True)
    (root / "rgb").mkdir()
    real = [_conv("real/a", "sky")]
    (root / "llava_json.json").write_text(json.dumps(real))
    rolled = [_conv(f"rollouts/v{k}/e100_00", f"l{k}") for k in range(4)]
    (parts / "rollouts_0of1.json").write_text(json.dumps(rolled))
    one = json.loads(merge_rollouts(tmp_path).read_text())
    (parts / "rollouts_0of1.json").unlink()
    (parts / "rollouts_0of2.json").write_text(json.dumps(rolled[0::2]))
    (parts / "rollouts_1of2.json").write_text(json.dumps(rolled[1::2]))
    two = json.loads(merge_rollouts(tmp_path).read_text())
    assert one == two == real + rolled
    (parts / "rollouts_0of3.json").write_text(json.dumps(rolled[:1]))  # a stale part of another run
    with pytest.raises(ValueError, match="different runs"):
        merge_rollouts(tmp_path)


def test_rollout_seeds_depend_on_the_process_and_share_only():
    seeds = {rollout_seed(0, v, s) for v in ("synth_00001", "synth_00002", "my video") for s in (0, 1)}
    assert len(seeds) == 6 and all(0 <= x < 2 ** 31 for x in seeds)
    assert rollout_seed(0, "my video", 1) == rollout_seed(0, "my video", 1) != rollout_seed(1, "my video", 1)


def test_rollouts_paint_the_whole_process_whatever_the_models_finish_choice(tmp_path):
    """A rollout's canvases are training data: it paints up to the real process's length + ``extra`` keyframes
    and no finishing cross-fades (``finish_frames``) even when the model folder asks for them."""
    from inverse_painting.core.loading import STARTER_PAINT_DEFAULTS
    from inverse_painting.training.text_rollouts import roll_out

    info = {"options": {"size": 64}, "paint_defaults": STARTER_PAINT_DEFAULTS}
    (tmp_path / "starter.json").write_text(json.dumps(info))
    assert STARTER_PAINT_DEFAULTS["finish_frames"] > 0

    class Painter:
        last_stop_reason = "max_keyframes"

        def paint(self, working, settings, instructions):
            self.settings = settings
            return iter(())

    painter = Painter()
    roll_out(painter, tmp_path, np.full((64, 80, 3), 90, np.uint8), ["sky", "sea", "boat"], None, 1.0, seed=3, extra=2)
    s = painter.settings
    assert (s.finish_frames, s.max_keyframes) == (0, 5)
    assert (s.reask, s.compare_to) == (STARTER_PAINT_DEFAULTS["reask"], STARTER_PAINT_DEFAULTS["compare_to"])
