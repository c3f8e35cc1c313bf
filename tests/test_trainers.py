"""Trainer tests on a tiny random release and synthetic paintings (64x96 px).

Each trainer runs and its loss falls (mean of the first vs the last 10 steps, printed), its checkpoint
loads into ModelSet.from_release (and the renderer's renders a keyframe with the core Renderer), and an
interrupted run resumed from its accelerate state ends with exactly the parameters of an uninterrupted
run. The 2-process torchrun/gloo test is marked ``slow`` (skip with ``-m "not slow"``).
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    from inverse_painting.training.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(str(root), 2, seed=0, size=(64, 96), num_steps=6)
    return root


def _cfg(kind, **kw):
    from inverse_painting.training.trainers.common import TrainConfig
    from inverse_painting.training.trainers.renderer import RendererConfig

    cls = RendererConfig if kind == "renderer" else TrainConfig
    base = dict(cpu=True, progress=False, tensorboard=False, lr=1e-3, log_every=0)
    if kind == "renderer":
        base["init"] = "random"
    base.update(kw)
    return cls(**base)


def _train(kind, cfg):
    from inverse_painting.training.trainers import mask_generator, renderer

    return (renderer if kind == "renderer" else mask_generator).train(cfg)


def _loss_falls(losses, name):
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    print(f"{name}: {len(losses)} steps, loss first10 {first:.4f} last10 {last:.4f}")
    assert last < first * 0.9, (first, last)


def test_mask_generator_trains_and_loads(tiny_release, synth_data, tmp_path):
    from inverse_painting.core.model_set import ModelSet

    out = tmp_path / "out"
    res = _train("mask", _cfg("mask", data=str(synth_data), base=str(tiny_release), out=str(out), steps=120))
    _loss_falls(res["losses"], "mask generator")
    ck = out / "RP" / "checkpoint-global_step-120.ckpt"
    assert ck.is_file() and ck.with_suffix(".safetensors").is_file()
    models = ModelSet.from_release(out)
    assert models.mask.step == 120
    trained = res["model"].unet.unet.state_dict()
    for k, v in models.mask.unet.unet.state_dict().items():
        torch.testing.assert_close(v, trained[k], rtol=0, atol=0)
    # one forward of the loaded mask generator
    x = torch.randn(1, 9, 8, 12)
    ctx = torch.cat([models.mask.time_encoder(20.0), models.text(["sky"])], 1)
    assert models.mask.unet(x, ctx).shape == (1, 1, 8, 12)


def test_renderer_trains_loads_and_renders(tiny_release, synth_data, tmp_path):
    import yaml

    from inverse_painting.core.model_set import ModelSet
    from inverse_painting.core.renderer import Renderer
    from inverse_painting.core.sampling import NoiseSource

    out = tmp_path / "out"
    res = _train("renderer", _cfg("renderer", data=str(synth_data), base=str(tiny_release), out=str(out), steps=120))
    _loss_falls(res["losses"], "renderer")
    ck = out / "renderer" / "ckpt" / "checkpoint-global_step-120.ckpt"
    assert ck.is_file() and ck.with_suffix(".safetensors").is_file() and (out / "renderer" / "config.yaml").is_file()
    written = yaml.safe_load((out / "renderer" / "config.yaml").read_text())
    assert not {"prediction_type", "reference_position_encoding"} & set(written)  # the release's six keys only
    models = ModelSet.from_release(out)
    assert models.renderer.step == 120 and not models.renderer.unet.position_encoding
    torch.testing.assert_close(models.renderer.feature_encoder.state_dict()["scale"],
                               res["model"].guider.state_dict()["scale"], rtol=0, atol=0)
    r = Renderer(models)
    rng = np.random.default_rng(0)
    target = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    canvas = np.full_like(target, 255)
    tstate = r.prepare_target(target)
    mask = torch.zeros(1, 1, 64, 96)
    mask[..., :32, :] = 1
    conds = r.conditions(tstate, canvas, mask, "sky", 20.0)
    result = r.render(conds, NoiseSource(0, (1, 4, 8, 12), first_keyframe=True), steps=2)
    assert result.image.shape == (64, 96, 3) and result.image.dtype == np.uint8


@pytest.mark.parametrize("kind", ["mask", "renderer"])
def test_resume_matches_uninterrupted(kind, tiny_release, synth_data, tmp_path):
    steps = 12 if kind == "mask" else 6
    common = dict(data=str(synth_data), base=str(tiny_release), steps=steps, ema_decay=0.9)
    full = _train(kind, _cfg(kind, out=str(tmp_path / "full"), **common))
    part = tmp_path / "part"
    first = _train(kind, _cfg(kind, out=str(part), stop_after=steps // 2, **common))
    assert first["step"] == steps // 2 and not any((part).glob("**/checkpoint-global_step-*.ckpt"))
    second = _train(kind, _cfg(kind, out=str(part), resume="latest", **common))
    assert second["step"] == steps and len(second["losses"]) == steps - steps // 2
    np.testing.assert_array_equal(full["losses"][steps // 2:], second["losses"])
    a, b = full["model"].state_dict(), second["model"].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    for k in full["ema"].shadow:
        torch.testing.assert_close(full["ema"].shadow[k], second["ema"].shadow[k], rtol=0, atol=0)


DDP_SCRIPT = textwrap.dedent("""
    import sys
    from inverse_painting.training.trainers.common import TrainConfig
    from inverse_painting.training.trainers import mask_generator
    data, base, out = sys.argv[1:4]
    res = mask_generator.train(TrainConfig(data=data, base=base, out=out, steps=6, lr=1e-3, cpu=True,
                                           progress=False, tensorboard=False, log_every=0))
    if res["rank"] == 0:
        print("WORLD", res["world_size"], "IN_SYNC", res["ranks_in_sync"], "LOSS", res["losses"])
""")


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_in_sync(tiny_release, synth_data, tmp_path):
    if os.environ.get("INVERSE_PAINTING_SKIP_SLOW"):
        pytest.skip("slow tests disabled")
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(torchrun + [str(script), str(synth_data), str(tiny_release), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    print(proc.stdout[-2000:], proc.stderr[-3000:])
    assert proc.returncode == 0
    assert "WORLD 2 IN_SYNC True" in proc.stdout
    assert (tmp_path / "out" / "RP" / "checkpoint-global_step-6.ckpt").is_file()


@pytest.mark.parametrize("kind", ["mask", "renderer"])
def test_gradient_checkpointing_matches(kind, tiny_release, synth_data, tmp_path):
    common = dict(data=str(synth_data), base=str(tiny_release), steps=2)
    a = _train(kind, _cfg(kind, out=str(tmp_path / "a"), **common))
    b = _train(kind, _cfg(kind, out=str(tmp_path / "b"), gradient_checkpointing=True, **common))
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("kind", ["mask", "renderer"])
def test_latent_cache_keys_are_the_encoded_frames(kind, tiny_release, synth_data, tmp_path, monkeypatch):
    import os

    from inverse_painting.training.raw_layout import load_frame
    from inverse_painting.training.trainers.common import BaseParts
    from inverse_painting.training.trainers.data import pad16, to_m11

    common = dict(data=str(synth_data), base=str(tiny_release), steps=8, batch_size=2)
    a = _train(kind, _cfg(kind, out=str(tmp_path / "a"), **common))
    seen = {}
    posterior = BaseParts.posterior

    def recording(self, x, ids=None):
        assert ids is not None and len(ids) == x.shape[0]  # every encode of the trainer names its frames
        for k, row in zip(ids, x):
            seen.setdefault(k, row.clone())
        return posterior(self, x, ids)

    monkeypatch.setattr(BaseParts, "posterior", recording)
    b = _train(kind, _cfg(kind, out=str(tmp_path / "b"), cache_latents=True, **common))
    # each name is the frame that was encoded under it (the trainers pass the ids of the right images)
    assert len(seen) >= 3
    for k, row in seen.items():
        video_dir, name = os.path.split(k)
        some = next(n for n in os.listdir(video_dir) if n[0].isdigit()).rsplit(".", 1)[0]
        like = load_frame(video_dir, some)  # the size of the white canvas ("white" frames)
        torch.testing.assert_close(row, to_m11(pad16(load_frame(video_dir, name, like=like))), rtol=0, atol=0)
    # the first step draws what the uncached run draws; later steps differ: cached posteriors differ from
    # batch-encoded ones in the last bits, and training amplifies that (same statistics, other weights)
    np.testing.assert_allclose(a["losses"][0], b["losses"][0], rtol=1e-5)
    assert len(b["losses"]) == 8


def test_latent_cache_encodes_each_frame_once(tiny_release):
    from inverse_painting.training.trainers.common import load_base

    base = load_base(tiny_release)
    calls = []
    encode = base.vae.encode
    base.vae.encode = lambda x: calls.append(x.shape[0]) or encode(x)
    x = torch.rand(3, 3, 32, 48) * 2 - 1
    x[2] = x[0]  # one frame named twice in a batch
    plain = base.posterior(x)
    base.latent_cache = {}
    first = base.posterior(x, ["a", "b", "a"])
    again = base.posterior(x[[1, 0]], ["b", "a"])  # all cached: no encode
    assert calls == [3, 2]  # "a" (named twice) and "b" once each
    base.posterior(x[[1, 0]], ["b", "c"])  # one new frame: only it is encoded
    assert calls == [3, 2, 1] and set(base.latent_cache) == {"a", "b", "c"}
    for got, want in ((first[0], plain[0]), (first[1], plain[1]), (again[0], plain[0][[1, 0]])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(base.encode(x[:2], g1, ["a", "b"]), base.encode(x[:2], g2), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def lpips_metric():
    from inverse_painting.models.lpips_net import load_perceptual_metric

    return load_perceptual_metric("stlpips_alex")  # ships with the stlpips-pytorch wheel


def test_target_pairs_end_on_the_finished_painting(synth_data, lpips_metric):
    from inverse_painting.training.raw_layout import WHITE, frame_seconds
    from inverse_painting.training.trainers.data import PairDataset

    plain = PairDataset(synth_data, "train", metric=lpips_metric, need_target_mask=True)
    always = PairDataset(synth_data, "train", metric=lpips_metric, need_target_mask=False, target_pair_prob=1.0)
    b = always.sample(torch.Generator().manual_seed(0), 4)
    for i, idx in enumerate(b["index"]):
        rec, ref = always.records[idx], plain[idx]
        torch.testing.assert_close(b["next"][i], ref["target"], rtol=0, atol=0)
        assert b["next_id"][i] == ref["target_id"]
        assert b["interval"][i] == frame_seconds(rec.target) - (0.0 if rec.cur == WHITE else frame_seconds(rec.cur))
        torch.testing.assert_close(b["mask_next"][i], ref["mask_target"], rtol=0, atol=0)  # LPIPS(cur, target) > 0.2
        assert b["text"][i] == ref["text"]
    # p = 0 draws the same stream as before the option existed; 0 < p < 1 mixes both kinds
    assert PairDataset(synth_data, "train", metric=lpips_metric, need_target_mask=False).sample(
        torch.Generator().manual_seed(5), 6)["index"] == _indices(plain, 5, 6)
    half = PairDataset(synth_data, "train", metric=lpips_metric, need_target_mask=False, target_pair_prob=0.5)
    b = half.sample(torch.Generator().manual_seed(1), 16)
    to_target = [bool(torch.equal(b["next"][i], half[idx]["target"])) and half.records[idx].next != half.records[idx].target
                 for i, idx in enumerate(b["index"])]
    assert any(to_target) and not all(to_target)


def _indices(ds, seed, n):
    """The pair indices ``PairDataset.sample`` draws without target pairs: one randint, then the drop flags."""
    from inverse_painting.training.trainers.data import DROP_FLAGS

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        out.append(int(torch.randint(len(ds), (1,), generator=g)))
        torch.rand(len(DROP_FLAGS), generator=g)
    return out


def test_v_prediction_position_coded_renderer_trains_and_renders_through_the_conversion(tiny_release, synth_data, tmp_path):
    import yaml

    from inverse_painting.core.model_set import ModelSet
    from inverse_painting.core.renderer import Renderer
    from inverse_painting.core.guidance import GuidanceScales

    out = tmp_path / "out"
    res = _train("renderer", _cfg("renderer", data=str(synth_data), base=str(tiny_release), out=str(out), steps=120,
                                  prediction_type="v_prediction", target_pair_prob=0.5,
                                  reference_position_encoding=True))
    _loss_falls(res["losses"], "v-prediction renderer")
    written = yaml.safe_load((out / "renderer" / "config.yaml").read_text())
    assert written["prediction_type"] == "v_prediction" and written["reference_position_encoding"] is True
    models = ModelSet.from_release(out)
    assert models.config["prediction_type"] == "v_prediction"
    assert models.renderer.unet.position_encoding  # the loaded renderer reads the bank with the code
    r = Renderer(models)
    rng = np.random.default_rng(0)
    target = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    canvas = np.full_like(target, 255)
    mask = torch.ones(1, 1, 64, 96)
    conds = r.conditions(r.prepare_target(target), canvas, mask, "sky", 20.0)
    scales = GuidanceScales(1.0, 0.0, 0.0, 0.0, 0.0)  # the image branch alone (reference + next-CLIP token)
    den = r.denoiser(conds, scales)
    sigma = 3.0
    x = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(0)) * (1 + sigma**2) ** 0.5
    x0 = den(x, torch.tensor([sigma]))
    # the same x0 from the scheduler's own v-prediction formula: x0 = sqrt(a) x_t - sqrt(1 - a) v
    a = 1.0 / (1 + sigma**2)
    x_t = x * a**0.5
    t = torch.full((1,), r.schedule.timestep(sigma))
    with torch.no_grad():
        v = models.renderer.unet(x_t, t, conds.context_batch((1,)), conds.canvas_batch((1,)), conds.banks,
                                 torch.tensor([True]))
    torch.testing.assert_close(x0, a**0.5 * x_t - (1 - a) ** 0.5 * v, rtol=1e-4, atol=1e-4)
    # read as epsilon, the same weights give another estimate: the config is what decides
    models.config["prediction_type"] = "epsilon"
    assert not torch.allclose(r.denoiser(conds, scales)(x, torch.tensor([sigma])), x0, atol=1e-3)
