"""Speed options: DPM-Solver++(2M), the guidance interval, FLOP counting; the rehearsal release's pieces."""
import json
import math

import numpy as np
import pytest
import torch

from inverse_painting.core.sampling import NoiseSource, sample_dpmpp_2m, sample_euler_ancestral


def _gaussian_denoiser(s_data: float):
    """The exact denoiser of data ~ N(0, s_data^2): D(x, sigma) = x s^2 / (sigma^2 + s^2)."""
    return lambda x, sigma: x * s_data**2 / (sigma.reshape(-1, 1, 1, 1) ** 2 + s_data**2)


def _karras(n, smin=0.03, smax=25.0, rho=7.0):
    ramp = torch.linspace(0, 1, n)
    s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)]).double()


def test_dpmpp_2m_follows_the_probability_flow_ode():
    """For Gaussian data the ODE solution is known: x(sigma) = x(sigma_T) sqrt(sigma^2 + s^2) / sqrt(sigma_T^2 + s^2).
    Second order: the error falls ~4x per doubling of the steps (a first-order solver, DDIM: 2x) and 20 steps land
    five times closer than DDIM's 20."""
    s_data = 0.5
    den = _gaussian_denoiser(s_data)
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 25.0

    def exact(sigma_end):
        return x_t * math.sqrt(sigma_end**2 + s_data**2) / math.sqrt(25.0**2 + s_data**2)

    errors = []
    for n in (20, 40):
        sig = _karras(n)
        out = sample_dpmpp_2m(den, x_t.clone(), sig[:-1])  # stop at sigma_min (the ODE's end point there)
        errors.append(float((out - exact(float(sig[-2]))).abs().max() / exact(float(sig[-2])).abs().max()))
    assert errors[0] < 0.03
    assert errors[1] < errors[0] / 3.5  # second order (measured 4.3x)

    # first-order (DDIM, = DPM-Solver++ 1S) at 20 steps
    sig = _karras(20)[:-1]
    x = x_t.clone()
    for i in range(len(sig) - 1):
        d = den(x, sig[i].reshape(1))
        x = (sig[i + 1] / sig[i]) * x - math.expm1(-math.log(sig[i] / sig[i + 1])) * d
    first = float((x - exact(float(sig[-1]))).abs().max() / exact(float(sig[-1])).abs().max())
    assert errors[0] < first / 4


def test_dpmpp_2m_last_step_to_zero_returns_the_denoised_estimate():
    den = _gaussian_denoiser(1.0)
    x = torch.ones(1, 1, 2, 2)
    seen = []
    out = sample_dpmpp_2m(den, x, torch.tensor([2.0, 0.0]), callback=lambda info: seen.append(info["i"]))
    torch.testing.assert_close(out, x * 1.0 / 5.0)
    assert seen == [0]


def test_samplers_share_post_step_and_noise_interface():
    den = _gaussian_denoiser(1.0)
    sig = torch.tensor([3.0, 1.0, 0.0])
    calls = []
    post = lambda i, x: calls.append(i) or x  # noqa: E731
    noise = NoiseSource(0, (1, 1, 2, 2))
    for sampler in (sample_euler_ancestral, sample_dpmpp_2m):
        calls.clear()
        sampler(den, torch.ones(1, 1, 2, 2), sig, noise, post_step=post)
        assert calls == [0, 1]


def test_flop_counter_counts_cpu_attention_and_matmuls():
    from inverse_painting.core.flops import flop_counter

    q = torch.randn(2, 4, 64, 16)
    lin = torch.nn.Linear(32, 16, bias=False)
    with flop_counter() as fc:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        lin(torch.randn(10, 32))
    assert fc.get_total_flops() == 4 * 2 * 4 * 64 * 64 * 16 + 2 * 10 * 32 * 16


@pytest.fixture(scope="module")
def renderer_setup(tiny_release):
    from inverse_painting.core.imaging import prepare_image
    from inverse_painting.core.model_set import ModelSet
    from inverse_painting.core.renderer import Renderer

    models = ModelSet.from_release(tiny_release)
    r = Renderer(models)
    rng = np.random.default_rng(1)
    working = prepare_image((rng.random((128, 128, 3)) * 255).astype(np.uint8), 128)
    target = r.prepare_target(working.padded)
    mask = torch.zeros(1, 1, *working.hw)
    mask[..., 32:96, :] = 1
    conds = r.conditions(target, working.white_canvas(), mask, "sky", 20.0)
    return r, conds, working


def test_guidance_interval_runs_one_pass_outside_it(renderer_setup):
    r, conds, working = renderer_setup
    shape = (1, 4, *working.latent_hw)
    runs = {}
    for name, interval in (("always", None), ("everywhere", (0.0, 1e9)), ("nowhere", (-2.0, -1.0)),
                           ("part", (0.5, 5.0))):
        r.unet_passes = 0
        runs[name] = r.render(conds, NoiseSource(3, shape), steps=6, guidance_interval=interval)
        runs[name].passes = r.unet_passes
    sigmas = r.schedule.sampling(6)[0][:-1]
    inside = int(((sigmas >= 0.5) & (sigmas <= 5.0)).sum())
    assert runs["always"].passes == 6 * 4 and runs["nowhere"].passes == 6
    assert runs["part"].passes == inside * 4 + (6 - inside)
    np.testing.assert_array_equal(runs["always"].image, runs["everywhere"].image)
    assert not np.array_equal(runs["always"].image, runs["nowhere"].image)


def test_dpmpp_2m_renders_and_unknown_samplers_are_named(renderer_setup):
    r, conds, working = renderer_setup
    shape = (1, 4, *working.latent_hw)
    r.unet_passes = 0
    out = r.render(conds, NoiseSource(3, shape), steps=5, sampler_name="dpmpp_2m")
    assert r.unet_passes == 5 * 4 and np.isfinite(out.latents.numpy()).all()
    with pytest.raises(ValueError, match="unknown sampler 'heun'"):
        r.render(conds, NoiseSource(3, shape), steps=2, sampler_name="heun")


def test_rehearsal_tokenizers_have_the_real_sizes(tmp_path):
    from transformers import CLIPTokenizer, LlamaTokenizer

    from inverse_painting.core.rehearsal_release import write_clip_tokenizer, write_llama_tokenizer

    write_llama_tokenizer(tmp_path / "llama")
    tok = LlamaTokenizer.from_pretrained(str(tmp_path / "llama"))
    assert len(tok) == 32000 and tok.bos_token_id == 1 and tok.eos_token_id == 2
    write_clip_tokenizer(tmp_path / "clip")
    clip = CLIPTokenizer.from_pretrained(str(tmp_path / "clip"))
    assert len(clip) == 49408
    assert clip("sky")["input_ids"][0] == 49406 and clip("sky")["input_ids"][-1] == 49407


def test_rehearsal_llava_keys_match_the_release_manifest():
    from fixture_paths import REPO

    from inverse_painting.core.rehearsal_release import llava_shapes

    man = REPO.parent / "shared" / "reference" / "manifests"
    if not man.is_dir():
        pytest.skip("reference manifests not found")
    expected = json.loads((man / "TP_llava_llm_and_projector.json").read_text())
    expected.update(json.loads((man / "TP_llava_vision_tower_if_saved.json").read_text()))
    shapes = llava_shapes(32)
    assert shapes == {k: tuple(v) for k, v in expected.items()}
    few = llava_shapes(2)  # fewer layers, full width
    assert few["model.embed_tokens.weight"] == (32000, 4096)
    assert not any(k.startswith("model.layers.2.") for k in few)


def test_check_release_reports_wrong_keys(tiny_release, tmp_path):
    import shutil

    from inverse_painting.core.rehearsal_release import check_release

    assert check_release(tiny_release, log=lambda *_: None) == []
    broken = tmp_path / "broken"
    shutil.copytree(tiny_release, broken)
    ckpt = next((broken / "RP").glob("*.ckpt"))
    data = torch.load(ckpt, weights_only=True)
    del data["RP_state_dict"]["mid_block.attentions.0.proj_out.bias"]
    torch.save(data, ckpt)
    problems = check_release(broken, log=lambda *_: None)
    assert problems and "missing (1): mid_block.attentions.0.proj_out.bias" in problems[0]
