"""Memory tiers: tier choice, the residency bookkeeping, lazy UNets, text-model quantization bookkeeping."""
import numpy as np
import pytest
import torch

from inverse_painting.core.memory import (GB, TIERS, Residency, StagedText, choose_tier, quantize_linears,
                                          text_placement, weight_bytes)


def test_choose_tier_from_free_memory():
    assert choose_tier("auto", 40 * GB).name == "full"
    assert choose_tier("auto", 23 * GB).name == "full"
    assert choose_tier("auto", 15 * GB).name == "12gb"
    assert choose_tier("auto", 11.5 * GB).name == "12gb"
    assert choose_tier("auto", 7.5 * GB).name == "8gb"
    assert choose_tier("auto", 4 * GB).name == "8gb"
    assert choose_tier("auto", None).name == "full"  # the CPU: no device limit
    # without a text model the smaller tiers become "notext"; a large GPU still keeps everything resident
    assert choose_tier("auto", 15 * GB, text_model=False).name == "notext"
    assert choose_tier("auto", 40 * GB, text_model=False).name == "full"
    assert choose_tier("auto", None, text_model=False).name == "full"  # the CPU: nothing to page to
    assert choose_tier("8gb", 40 * GB).name == "8gb"
    with pytest.raises(ValueError, match="unknown memory tier"):
        choose_tier("6gb", None)


def test_text_placement_without_cuda_goes_to_the_cpu():
    assert text_placement(TIERS["full"], "cpu") == ("cpu", None)
    assert text_placement(TIERS["12gb"], "cpu") == ("cpu", None)  # no bitsandbytes off CUDA
    assert text_placement(TIERS["8gb"], "cpu") == ("cpu", None)
    assert text_placement(TIERS["notext"], "cpu") == ("none", None)


def _net(n):
    return torch.nn.Linear(n, n, bias=False)  # n*n*4 bytes


def test_residency_evicts_least_recently_used_within_the_budget():
    nets = {"a": _net(100), "b": _net(100), "c": _net(100), "small": _net(10)}
    size = weight_bytes(nets["a"])
    assert size == 100 * 100 * 4
    r = Residency("cpu", "cpu", budget_bytes=2 * size + weight_bytes(nets["small"]))
    for name, m in nets.items():
        r.register(name, m)
    r.use("a", "small")
    r.use("b")
    assert list(r.resident) == ["a", "small", "b"]
    r.use("a")  # touched: now most recent
    r.use("c")  # over budget: the least recently used that is not wanted goes (small, then b)
    assert "c" in r.resident and "a" in r.resident
    assert r.resident_bytes() <= r.budget
    assert ("small", "out") in r.moves or ("b", "out") in r.moves
    assert r.peak_bytes <= r.budget


def test_residency_frees_reloadable_networks_and_reads_them_again():
    net = _net(50)
    reference = net.weight.detach().clone()
    reads = []

    def reload():
        reads.append(1)
        net.load_state_dict({"weight": reference.clone()}, assign=True)
        return net

    r = Residency("cpu", "cpu")
    r.register("unet", net, reload=reload)
    r.use("unet")
    r.release("unet")
    assert net.weight.is_meta and "unet" in r.dropped and "unet" not in r.resident
    r.use("unet")
    assert reads == [1] and torch.equal(net.weight, reference)
    # pinned networks never move nor leave
    pinned = _net(10)
    r.register("q", pinned, pinned=True)
    r.release("q")
    assert "q" in r.resident and not pinned.weight.is_meta


def test_hooks_bring_a_network_in_when_it_runs():
    net = _net(8)
    r = Residency("cpu", "cpu", budget_bytes=weight_bytes(net))
    other = _net(8)
    r.register("net", net)
    r.register("other", other)
    r.install_hooks("net")
    r.install_hooks("other")
    other(torch.ones(1, 8))
    assert list(r.resident) == ["other"]
    net(torch.ones(1, 8))  # the forward pre-hook asks for it; the budget sends "other" out
    assert list(r.resident) == ["net"]


def test_quantize_linears_replaces_only_the_language_model_linears():
    class Fake(torch.nn.Module):
        def __init__(self, linear, bits):
            super().__init__()
            self.bits, self.shape = bits, tuple(linear.weight.shape)

    lm = torch.nn.Module()
    lm.layers = torch.nn.ModuleList([torch.nn.ModuleDict({"q_proj": torch.nn.Linear(4, 4),
                                                          "norm": torch.nn.LayerNorm(4)})])
    lm.lm_head = torch.nn.Linear(4, 9)
    replaced = quantize_linears(lm, 4, factory=Fake)
    assert replaced == ["layers.0.q_proj"]
    assert isinstance(lm.layers[0]["q_proj"], Fake) and lm.layers[0]["q_proj"].bits == 4
    assert isinstance(lm.lm_head, torch.nn.Linear) and isinstance(lm.layers[0]["norm"], torch.nn.LayerNorm)


def test_staged_text_loads_on_first_question():
    loads = []

    class Gen:
        def generate(self, canvas, target, **kw):
            return f"sky{kw}"

    text = StagedText(lambda: loads.append(1) or Gen(), None, max_new_tokens=3)
    assert loads == []
    assert text.generate(None, None, keyframe_index=2) == "sky{'max_new_tokens': 3}"
    text.generate(None, None)
    assert loads == [1]


def test_lazy_model_set_under_a_tier_paints_the_same_keyframe(tiny_release):
    """A tier changes where the networks are, never the pictures: the lazy, budgeted, ReferenceNet-freeing set
    renders the same keyframe as the plain one, and frees and re-reads the ReferenceNet per target."""
    from inverse_painting.core.imaging import prepare_image
    from inverse_painting.core.model_set import ModelSet
    from inverse_painting.core.renderer import Renderer
    from inverse_painting.core.sampling import NoiseSource

    rng = np.random.default_rng(0)
    working = prepare_image((rng.random((128, 160, 3)) * 255).astype(np.uint8), 128)
    mask = torch.zeros(1, 1, *working.hw)
    mask[..., :64, :] = 1
    results = []
    for lazy in (False, True):
        models = ModelSet.from_release(tiny_release, lazy=lazy)
        residency = None
        if lazy:
            assert next(models.renderer.unet.parameters()).is_meta
            residency = Residency("cpu", "cpu", budget_bytes=1)  # tiny: every network evicts the others
            models.attach_residency(residency, release_referencenet=True)
        r = Renderer(models)
        target = r.prepare_target(working.padded)
        if lazy:
            assert next(models.renderer.referencenet.parameters()).is_meta  # freed after the banks
        conds = r.conditions(target, working.white_canvas(), mask, "sky", 20.0)
        out = r.render(conds, NoiseSource(1, (1, 4, *working.latent_hw)), steps=3)
        results.append(out.image)
        if lazy:
            r.prepare_target(working.padded)  # a second target reads the ReferenceNet again
            assert [m for m in residency.moves if m[0] == "referencenet"].count(("referencenet", "reload")) == 2
    np.testing.assert_array_equal(results[0], results[1])
