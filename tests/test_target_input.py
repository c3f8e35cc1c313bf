"""The renderer's ``target_input`` option: the target's latents as 4 more UNet input channels.

Absent from a config (every release folder) it changes nothing; present, the extra channels are read; a
renderer widened with zero weights (how training resumes the bundled starter renderer) paints exactly as
the renderer it was made from.
"""
import shutil

import numpy as np
import pytest
import torch
import yaml

from inverse_painting.core.guidance import GuidanceScales
from inverse_painting.core.loading import WeightFileError, find_release, read_checkpoint, read_renderer_config
from inverse_painting.core.model_set import ModelSet
from inverse_painting.core.renderer import Renderer
from inverse_painting.models.renderer_unet import widen_conv_in


def _widened_copy(src, dst, extra_weights=None, config_key=True):
    """A copy of the release ``src`` whose renderer UNet takes the target channels (weights ``extra_weights``,
    default zero) and whose config says ``target_input: config_key``."""
    shutil.copytree(src, dst)
    path = find_release(dst).renderer
    ck = read_checkpoint(path)
    unet = widen_conv_in(ck["unet_state_dict"])
    if extra_weights is not None:
        unet["conv_in.weight"][:, 4:] = extra_weights
    for f in path.parent.iterdir():
        f.unlink()
    torch.save({**ck, "unet_state_dict": unet}, path.parent / "checkpoint-global_step-1.ckpt")
    cfg_path = dst / "renderer" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    cfg["target_input"] = config_key
    cfg_path.write_text(yaml.safe_dump(cfg))
    return dst


def _x0(models, target, canvas_value=255, sigma=3.0, scales=GuidanceScales()):
    """One guided denoiser call (all six branches) of the models' renderer on a fixed input."""
    r = Renderer(models)
    h, w = target.shape[:2]
    canvas = np.full_like(target, canvas_value)
    mask = torch.ones(1, 1, h, w)
    conds = r.conditions(r.prepare_target(target), canvas, mask, "sky", 20.0)
    x = torch.randn(1, 4, h // 8, w // 8, generator=torch.Generator().manual_seed(0)) * (1 + sigma**2) ** 0.5
    return r.denoiser(conds, scales, fast=False)(x, torch.tensor([sigma]))


def _target(seed=0, h=64, w=96):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_config_without_the_key_is_off_and_release_renderers_ignore_target_latents(tiny_release):
    assert read_renderer_config(find_release(tiny_release).renderer_config)["target_input"] is False
    models = ModelSet.from_release(tiny_release)
    unet = models.renderer.unet
    assert unet.target_input is False and unet.unet.conv_in.in_channels == 4
    x = torch.randn(2, 4, 8, 12)
    ctx = torch.randn(2, 79, unet.unet.config.cross_attention_dim)
    with torch.no_grad():
        plain = unet(x, torch.tensor([500, 500]), ctx)
        given = unet(x, torch.tensor([500, 500]), ctx, target_latents=torch.randn(1, 4, 8, 12))
    assert torch.equal(plain, given)


def test_zero_initialised_target_channels_paint_exactly_as_before(tiny_release, tmp_path):
    before = ModelSet.from_release(tiny_release)
    wide = ModelSet.from_release(_widened_copy(tiny_release, tmp_path / "wide"))
    assert wide.config["target_input"] is True and wide.renderer.unet.unet.conv_in.in_channels == 8
    assert wide.renderer.referencenet.unet.conv_in.in_channels == 4  # it reads the target alone
    t = _target()
    torch.testing.assert_close(_x0(wide, t), _x0(before, t), rtol=0, atol=0)


def test_target_channels_are_read_in_every_branch(tiny_release, tmp_path):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(ModelSet.from_release(tiny_release).renderer.unet.unet.conv_in.out_channels, 4, 3, 3,
                    generator=g)
    used = ModelSet.from_release(_widened_copy(tiny_release, tmp_path / "used", extra_weights=w))
    zero = ModelSet.from_release(_widened_copy(tiny_release, tmp_path / "zero"))
    t = _target()
    assert not torch.allclose(_x0(used, t), _x0(zero, t), atol=1e-4)
    # the unconditional branch alone (scales (0, 0, 0, 0, 0): weight 1 on it) sees the target latents too
    u_only = GuidanceScales(0.0, 0.0, 0.0, 0.0, 0.0)
    assert not torch.allclose(_x0(used, t, scales=u_only), _x0(zero, t, scales=u_only), atol=1e-4)
    # and the UNet refuses to run without them
    unet = used.renderer.unet
    with pytest.raises(ValueError, match="target_input"):
        unet(torch.randn(1, 4, 8, 12), torch.tensor([1]), torch.randn(1, 79, unet.unet.config.cross_attention_dim))


def test_config_and_weights_must_agree(tiny_release, tmp_path):
    # target channels in the weights, but no key in the config; and the key without the channels
    wide = _widened_copy(tiny_release, tmp_path / "a", config_key=False)
    with pytest.raises(WeightFileError, match="target_input"):
        ModelSet.from_release(wide)
    narrow = tmp_path / "b"
    shutil.copytree(tiny_release, narrow)
    cfg = yaml.safe_load((narrow / "renderer" / "config.yaml").read_text()) or {}
    (narrow / "renderer" / "config.yaml").write_text(yaml.safe_dump({**cfg, "target_input": True}))
    with pytest.raises(WeightFileError, match="target_input"):
        ModelSet.from_release(narrow)
    (narrow / "renderer" / "config.yaml").write_text(yaml.safe_dump({**cfg, "target_input": "yes"}))
    with pytest.raises(WeightFileError, match="target_input"):
        ModelSet.from_release(narrow)


def test_trainer_resumes_a_renderer_with_zero_target_channels(tiny_release):
    """--init resume --target-input: every part of the checkpoint, the new channels at zero: the trainable
    model's prediction equals that of the same checkpoint resumed without the option."""
    from inverse_painting.training.trainers.common import load_base
    from inverse_painting.training.trainers.renderer import RendererTrainable

    base = load_base(str(tiny_release), need_clip=True)
    clip_dim = int(base.clip_vision.config.hidden_size)
    models = {}
    for wide in (False, True):
        m = RendererTrainable(base.unet_config, clip_dim, base.pe_kwargs, target_input=wide)
        assert m.initialise("resume", base.base_dir, base.release_root) == "resume"
        models[wide] = m.eval()
    assert torch.equal(models[True].unet.unet.conv_in.weight[:, 4:], torch.zeros_like(
        models[True].unet.unet.conv_in.weight[:, 4:]))
    ck = read_checkpoint(find_release(tiny_release).renderer)
    for part, module in (("cur_image_guider_state_dict", models[True].guider),
                         ("image_adpater_state_dict", models[True].adapter), ("PE_state_dict", models[True].pe)):
        for k, v in module.state_dict().items():
            assert torch.equal(v, ck[part][k].to(v)), (part, k)
    g = torch.Generator().manual_seed(0)
    b, ctx = 2, int(base.unet_config["cross_attention_dim"])
    args = (torch.randn(b, 4, 8, 12, generator=g), torch.tensor([10, 900]), torch.randn(b, 4, 8, 12, generator=g),
            torch.randn(b, 4, 64, 96, generator=g), torch.randn(b, clip_dim, generator=g),
            torch.randn(b, clip_dim, generator=g), torch.rand(b, generator=g)[:, None],
            torch.randn(b, 77, ctx, generator=g),
            {"drop_image_embeds": torch.tensor([False, True]), "drop_time_step": torch.tensor([False, False])})

    class Acc:
        def autocast(self):
            return torch.autocast("cpu", enabled=False)

    with torch.no_grad():
        torch.testing.assert_close(models[True](*args, Acc()), models[False](*args, Acc()), rtol=0, atol=0)


def test_resume_refuses_other_objective_or_position_code(tiny_release, tmp_path):
    from inverse_painting.training.trainers.renderer import RendererConfig, train

    cfg = RendererConfig(data=str(tmp_path / "none"), base=str(tiny_release), out=str(tmp_path / "o"), steps=1,
                         init="resume", prediction_type="v_prediction", target_input=True, cpu=True,
                         progress=False, tensorboard=False)
    with pytest.raises(ValueError, match="resume"):  # the tiny release's renderer predicts epsilon
        train(cfg)


def test_a_renderer_with_target_channels_is_not_loaded_without_them(tiny_release):
    """Its conv_in has 4 more channels than a plain renderer's: refused by name, not a size-mismatch error."""
    from inverse_painting.training.trainers.common import load_base
    from inverse_painting.training.trainers.renderer import RendererTrainable

    base = load_base(str(tiny_release), need_clip=True)
    clip_dim = int(base.clip_vision.config.hidden_size)
    wide = RendererTrainable(base.unet_config, clip_dim, base.pe_kwargs, target_input=True)
    plain = RendererTrainable(base.unet_config, clip_dim, base.pe_kwargs, target_input=False)
    with pytest.raises(ValueError, match="--target-input"):
        plain.load_unet(wide.unet.unet.state_dict())
