"""Unit tests of the core pieces that the parity cases do not isolate."""
import numpy as np
import pytest
import torch

from inverse_painting.core.guidance import GuidanceScales, combine_six, combine_weighted
from inverse_painting.core.imaging import ImageInputError, prepare_image, to_rgb_uint8
from inverse_painting.core.mask_generator import iou, threshold_ladder
from inverse_painting.core.sampling import NoiseSource
from inverse_painting.core.schedule import Schedule
from inverse_painting.models.time_encoder import normalise_interval


def test_interval_rounding_is_bankers():
    assert normalise_interval(12.5) == 0.1  # round(2.5) == 2
    assert normalise_interval(2.5) == 0.0
    assert normalise_interval(37) == 0.35
    assert normalise_interval(500) == 1.0


@pytest.mark.parametrize("scales", [GuidanceScales(), GuidanceScales(3, 1.5, 2, 4, 7), GuidanceScales(1, 1, 1, 1, 1)])
def test_fast_guidance_equals_six_branch(scales):
    eps = torch.randn(6, 4, 8, 8, dtype=torch.float64)
    active = scales.active_branches()
    fast = combine_weighted(eps[list(active)], active, scales)
    assert torch.allclose(fast, combine_six(eps, scales), atol=1e-12)


def test_default_scales_skip_two_branches():
    assert GuidanceScales().weights() == (-1.0, 1.0, -4.0, 0.0, 0.0, 5.0)
    assert GuidanceScales().active_branches() == (0, 1, 2, 5)


def test_official_schedule_values():
    sigmas, timesteps = Schedule.official().sampling(25)
    assert abs(float(sigmas[0]) - 25.1461) < 1e-3 and float(sigmas[-1]) == 0
    assert abs(float(sigmas[1]) - 19.6429) < 1e-3 and abs(float(sigmas[-2]) - 0.0292) < 1e-3
    assert float(timesteps[0]) == 999 and abs(float(timesteps[1]) - 957.375) < 1e-4
    sched = Schedule.official()
    for s, t in zip(sigmas[:-1], timesteps):
        assert abs(sched.timestep(float(s)) - float(t)) < 1e-2


def test_noise_source_reproduces_the_release_draw_pattern():
    first = NoiseSource(7, (1, 4, 2, 2), first_keyframe=True)
    later = NoiseSource(7, (1, 4, 2, 2))
    # keyframe 0 spends one draw first; later keyframes reuse the same stream shifted by one
    assert torch.equal(first.initial(), later.step(0))
    assert torch.equal(first.step(3), later.step(4))
    assert not torch.equal(first.initial(), later.initial())


def test_ladder_rules():
    H = W = 64
    prob = torch.zeros(1, 1, 8, 8)
    prob[..., :4, :] = 0.45  # half the image at 0.45
    prob[..., 0, 0] = 0.9  # one cell above 0.5: too small (1/64 < 5 %)
    prev = torch.zeros(1, 1, H, W)
    r = threshold_ladder(prob, (H, W), prev, first=False)
    assert r.threshold == 0.4 and [t["decision"] for t in r.trail] == ["too_small_continue", "accept"]
    # the same region as before: IoU 1 at every threshold -> fall back to the last one
    prev = torch.nn.functional.interpolate((prob > 0.4).float(), size=(H, W))
    prob2 = prob.clone()
    r = threshold_ladder(prob2, (H, W), prev, first=False)
    assert r.threshold == 0.1 and "fallback" in r.trail[-1]["decision"]
    assert threshold_ladder(prob, (H, W), None, first=True).threshold == 0.5
    assert iou(torch.ones(4), torch.ones(4)) == 1.0


def test_image_inputs_are_converted_or_refused():
    from PIL import Image

    rgba = Image.new("RGBA", (100, 80), (255, 0, 0, 0))
    assert to_rgb_uint8(rgba)[0, 0].tolist() == [255, 255, 255]  # transparent -> white canvas
    grey = Image.new("L", (100, 80), 7)
    assert to_rgb_uint8(grey).shape == (80, 100, 3)
    with pytest.raises(ImageInputError, match="batch"):
        to_rgb_uint8(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(ImageInputError, match="at least"):
        prepare_image(np.zeros((40, 100, 3), np.uint8))
    w = prepare_image(np.zeros((300, 400, 3), np.uint8), 128)
    assert w.size == (128, 170) and w.hw == (128, 176) and "resized" in w.note
    assert w.padded[:, 170:].max() == 0
    big = prepare_image(np.zeros((5000, 100 * 50, 3), np.uint8), 512)
    assert min(big.size) == 512
    with pytest.raises(ImageInputError, match="4096"):
        prepare_image(np.zeros((5000, 5000, 3), np.uint8), None)


def test_canvas_repad_keeps_geometry():
    w = prepare_image(np.full((100, 130, 3), 9, np.uint8), None)
    painted = np.full((*w.hw, 3), 200, np.uint8)
    nxt = w.repad(painted)
    assert nxt.shape == painted.shape and nxt[:100, :130].min() == 200 and nxt[100:].max() == 0


def test_v_prediction_output_converts_to_the_noise_estimate():
    """A v-prediction UNet's exact v gives back the exact eps (and so the exact x0) at every sigma;
    epsilon outputs pass through; an unknown type is refused."""
    from inverse_painting.core.schedule import eps_from_output

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 6, 5, generator=g), torch.randn(2, 4, 6, 5, generator=g)
    for sigma in (0.03, 1.0, 7.5, 25.146):
        a = 1.0 / (sigma**2 + 1)
        x = x0 + sigma * eps  # k-diffusion (sigma) space
        x_in = x * a**0.5  # what the UNet sees: the variance-preserving sample
        v = a**0.5 * eps - (1 - a) ** 0.5 * x0
        got = eps_from_output(v, x_in, sigma, "v_prediction")
        torch.testing.assert_close(got, eps, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x - sigma * got, x0, rtol=1e-3, atol=1e-3 * sigma)
        assert eps_from_output(eps, x_in, sigma, "epsilon") is eps
    with pytest.raises(ValueError):
        eps_from_output(eps, x0, 1.0, "sample")


def test_renderer_config_prediction_type(tmp_path):
    from inverse_painting.core.loading import WeightFileError, read_renderer_config

    assert read_renderer_config(None)["prediction_type"] == "epsilon"  # the release's config has no such key
    p = tmp_path / "config.yaml"
    p.write_text("use_PE: true\nPE_type: abs\nprediction_type: v_prediction\n")
    assert read_renderer_config(p)["prediction_type"] == "v_prediction"
    p.write_text("PE_type: abs\nprediction_type: sample\n")
    with pytest.raises(WeightFileError):
        read_renderer_config(p)


def test_position_code_tells_cells_apart_at_every_unet_level():
    """Each token's code is closest to its own cell's (so attention can route by place), at the grid of
    every UNet level of an odd-sized latent; a token count that is no level is refused."""
    from inverse_painting.models.reference_attention import position_code, token_grid

    assert [token_grid(h * w, (20, 15)) for h, w in ((20, 15), (10, 8), (5, 4), (3, 2))] == \
        [(20, 15), (10, 8), (5, 4), (3, 2)]
    with pytest.raises(ValueError):
        token_grid(7, (20, 15))
    for hw in ((20, 15), (10, 8), (3, 2)):
        n = hw[0] * hw[1]
        code = position_code(n, 64, (20, 15), "cpu", torch.float64)[0]
        assert code.shape == (n, 64)
        gram = code @ code.T
        assert torch.equal(gram.argmax(1), torch.arange(n))
        assert (gram.diagonal()[:, None] - gram + torch.eye(n, dtype=gram.dtype) > 1e-6).all()


def test_reference_position_encoding_makes_the_bank_read_depend_on_place():
    """Without the code, attention over [tokens, bank] ignores where bank tokens sit (the release); with it,
    the same bank tokens in another spatial order give another output."""
    from inverse_painting.core.tiny_release import unet_config
    from inverse_painting.models.renderer_unet import RendererUNet

    outs = {}
    for pe in (False, True):
        torch.manual_seed(0)  # the same weights both times
        unet = RendererUNet(dict(unet_config(), in_channels=4, out_channels=4), position_encoding=pe).eval()
        torch.manual_seed(1)
        x, ctx = torch.randn(1, 4, 8, 12), torch.randn(1, 3, unet.unet.config.cross_attention_dim)
        shapes = {}  # each block's (tokens, width), from a plain forward

        def record(name):
            def hook(module, args):
                shapes[name] = args[0].shape
            return hook

        hooks = [unet.unet.get_submodule(n).attn1.register_forward_pre_hook(record(n)) for n in unet.blocks]
        with torch.no_grad():
            unet(x, torch.tensor([500]), ctx)
        for h in hooks:
            h.remove()
        torch.manual_seed(2)
        banks = {n: torch.randn(1, *shapes[n][1:]) for n in unet.blocks}
        flipped = {n: b.flip(1) for n, b in banks.items()}  # the same tokens, in reverse spatial order
        with torch.no_grad():
            outs[pe] = [unet(x, torch.tensor([500]), ctx, banks=b) for b in (banks, flipped)]
    same = (outs[False][0] - outs[False][1]).abs().max()
    moved = (outs[True][0] - outs[True][1]).abs().max()
    assert same < 1e-4 and moved > 1e-2


def test_renderer_config_reference_position_encoding(tmp_path):
    from inverse_painting.core.loading import WeightFileError, read_renderer_config

    assert read_renderer_config(None)["reference_position_encoding"] is False  # absent in the release
    p = tmp_path / "config.yaml"
    p.write_text("PE_type: abs\nreference_position_encoding: true\n")
    assert read_renderer_config(p)["reference_position_encoding"] is True
    p.write_text("PE_type: abs\nreference_position_encoding: sincos\n")
    with pytest.raises(WeightFileError):
        read_renderer_config(p)


def test_videos_of_large_paintings_are_scaled_to_the_video_limit(tmp_path):
    """Frames keep the painting's size; the videos (and the frames the writer holds for them) are scaled down to
    VIDEO_MAX_SIDE on the long side (a 6000x4000 painting's frames failed in the WebP encoder)."""
    from PIL import Image

    from inverse_painting.core.export import VIDEO_MAX_SIDE, ProcessWriter

    rng = np.random.default_rng(0)
    writer = ProcessWriter(tmp_path / "o", {})
    for k in range(2):
        writer.add(rng.integers(0, 255, (80, VIDEO_MAX_SIDE + 100, 3), dtype=np.uint8), {"time_s": 20.0 * k})
    assert all(max(f.shape[:2]) == VIDEO_MAX_SIDE for f in writer.frames)
    writer.finish()
    assert Image.open(tmp_path / "o" / "frames" / "0001_0m20s.png").size == (VIDEO_MAX_SIDE + 100, 80)
    with Image.open(tmp_path / "o" / "timelapse.webp") as im:
        assert im.size == (VIDEO_MAX_SIDE, round(80 * VIDEO_MAX_SIDE / (VIDEO_MAX_SIDE + 100)))
    import av

    with av.open(str(tmp_path / "o" / "timelapse.mp4")) as c:
        assert c.streams.video[0].codec_context.width == VIDEO_MAX_SIDE
