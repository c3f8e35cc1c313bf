"""Small-VAE trainer (training/trainers/vae.py) on synthetic paintings at 64 px.

* 60 steps: the loss (L1 + small KL) falls;
* the exported ``vae/`` folder is a diffusers AutoencoderKL in safetensors with the data's scaling factor
  (1 / std of the posterior means), reloads with ``AutoencoderKL.from_pretrained`` with identical outputs;
* put into a tiny release's ``base/vae`` it is what ``ModelSet.from_release`` uses (encode/decode round trip);
* the CLI runs (``--base`` optional) and the run is reproducible from its seed.
"""
import json
import shutil

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    from inverse_painting.training.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("vae_data")
    generate_dataset(str(root), 2, seed=0, size=(64, 96), num_steps=6)
    return root


def _cfg(data, out, **kw):
    from inverse_painting.training.trainers.vae import VAEConfig

    base = dict(data=str(data), out=str(out), steps=60, cpu=True, progress=False, tensorboard=False, log_every=0,
                crop=64, widths="16,32,64,64", batch_size=2, lr=1e-3, seed=3)
    base.update(kw)
    return VAEConfig(**base)


@pytest.fixture(scope="module")
def trained(frames, tmp_path_factory):
    from inverse_painting.training.trainers.vae import train

    out = tmp_path_factory.mktemp("vae_out")
    return train(_cfg(frames, out)), out


def test_loss_falls_and_folder_reloads(trained, frames):
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    res, out = trained
    losses = res["losses"]
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    print(f"vae: 60 steps at 64 px, loss first10 {first:.4f} last10 {last:.4f}")
    assert len(losses) == 60 and last < 0.9 * first
    folder = out / "vae"
    assert (folder / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(folder.glob("*.bin"))
    stats = json.loads((out / "vae_stats.json").read_text())
    vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True).eval()
    assert vae.config.scaling_factor == pytest.approx(stats["scaling_factor"])
    assert stats["scaling_factor"] == pytest.approx(1 / stats["latent_std"], rel=1e-5)
    assert tuple(vae.config.block_out_channels) == (16, 32, 64, 64) and vae.config.latent_channels == 4
    sd = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    live = res["model"].vae.state_dict()
    for k, v in sd.items():
        torch.testing.assert_close(v, live[k].float(), rtol=0, atol=0, msg=k)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
    assert z.shape == (1, 4, 8, 8)
    # scaled latents of the data have about unit std
    from inverse_painting.training.trainers.vae import FrameData, latent_scaling_factor

    _, st = latent_scaling_factor(vae, FrameData(str(frames)).images)
    assert st["latent_std"] * vae.config.scaling_factor == pytest.approx(1.0, rel=1e-3)


def test_model_set_uses_the_trained_vae(trained, tiny_release, tmp_path):
    from diffusers import AutoencoderKL
    from inverse_painting.core.model_set import ModelSet

    _, out = trained
    rel = tmp_path / "release"
    shutil.copytree(tiny_release, rel)
    shutil.rmtree(rel / "base" / "vae")
    shutil.copytree(out / "vae", rel / "base" / "vae")
    models = ModelSet.from_release(rel)
    vae = AutoencoderKL.from_pretrained(str(out / "vae"), local_files_only=True).eval()
    assert models.vae_scale == pytest.approx(vae.config.scaling_factor)
    assert tuple(models.vae.config.block_out_channels) == (16, 32, 64, 64)
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    lat = models.encode_latents(x)
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(lat, ref)
    img = models.decode_latents(lat)
    assert img.shape == (1, 3, 64, 96) and float(img.min()) >= 0 and float(img.max()) <= 1


def test_cli_without_base_is_reproducible(frames, tmp_path):
    from diffusers import AutoencoderKL
    from inverse_painting.training.trainers import vae as vt

    args = ["--data", str(frames), "--steps", "3", "--cpu", "--no-progress", "--no-tensorboard", "--crop", "32",
            "--widths", "8,16,16,16", "--norm-groups", "8", "--batch-size", "1", "--seed", "5"]
    assert vt.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert vt.main(args + ["--out", str(tmp_path / "b")]) == 0
    a = AutoencoderKL.from_pretrained(str(tmp_path / "a" / "vae")).state_dict()
    b = AutoencoderKL.from_pretrained(str(tmp_path / "b" / "vae")).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_decoder_part_keeps_the_encoder_and_its_latents(trained, frames, tmp_path):
    """``part="decoder"``: the encoder, quant_conv and scaling factor stay bit for bit (the latents the mask
    generator and renderer learned on do not move), the decoder learns and its reconstruction error falls."""
    from diffusers import AutoencoderKL
    from inverse_painting.training.trainers.vae import train

    _, first = trained
    res = train(_cfg(frames, tmp_path / "dec", steps=40, init="base", base=str(first / "vae"), part="decoder"))
    before = AutoencoderKL.from_pretrained(str(first / "vae")).state_dict()
    after = AutoencoderKL.from_pretrained(str(tmp_path / "dec" / "vae")).state_dict()
    assert before.keys() == after.keys()
    for k in before:
        same = torch.equal(before[k], after[k])
        assert same == (not k.startswith(("decoder.", "post_quant_conv."))), k
    scale = [json.loads((d / "vae" / "config.json").read_text())["scaling_factor"] for d in (first, tmp_path / "dec")]
    assert scale[0] == scale[1]
    assert "_name_or_path" not in json.loads((tmp_path / "dec" / "vae" / "config.json").read_text())  # no local path
    mae = [json.loads((d / "vae_stats.json").read_text())["reconstruction_mae_255"] for d in (first, tmp_path / "dec")]
    print(f"decoder part: reconstruction MAE {mae[0]:.2f} -> {mae[1]:.2f} / 255")
    assert mae[1] < mae[0]
    with pytest.raises(ValueError, match="--init base"):  # refused before any frame is read
        train(_cfg(tmp_path / "no_data", tmp_path / "bad", steps=1, part="decoder"))
    with pytest.raises(ValueError, match="--part"):
        train(_cfg(tmp_path / "no_data", tmp_path / "bad", steps=1, part="encoder"))
