"""How pruned weights are held (on_the_fly | cached | auto): the same images bit for bit, a cache of the
pruned target weights only, freed by remove_crdiff, untouched by k, and auto's choice under a budget."""

import logging
import weakref

import pytest
import torch

import crdiff
from crdiff import amplify
from crdiff.amplify import PRUNE_HOOK, CRDiffConfig
from crdiff.experiment.config import AmplifyConfig

from conftest import unet_inputs
from test_amplify import generate
from test_dit import generate as generate_dit

RATIOS = {"down": 0.4, "mid": 0.6, "up": 0.3}


@pytest.fixture
def clean(tiny_pipes):
    yield tiny_pipes
    for kind in ("sd15", "sdxl", "flux"):
        crdiff.remove_crdiff(tiny_pipes(kind))


def hooks(model) -> dict:
    return {name: m._diffusers_hook.get_hook(PRUNE_HOOK) for name, m in model.named_modules()
            if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook(PRUNE_HOOK)}


def images_per_mode(pipe, draw, **settings) -> dict:
    out = {}
    for weights in ("on_the_fly", "cached"):
        crdiff.apply_crdiff(pipe, weights=weights, **settings)
        assert crdiff.weights_used(pipe) == weights
        out[weights] = draw(pipe)
        crdiff.remove_crdiff(pipe)
    return out


@pytest.mark.parametrize("kind,criterion,batched", [
    ("sd15", "magnitude", True), ("sd15", "magnitude", False), ("sdxl", "magnitude", True), ("sd15", "random", False),
])
def test_cached_images_are_bit_identical_to_on_the_fly(clean, kind, criterion, batched):
    images = images_per_mode(clean(kind), generate, ratios=RATIOS, k=1.5, criterion=criterion, batched=batched)
    assert torch.equal(images["cached"], images["on_the_fly"])


def test_cached_dit_images_are_bit_identical_to_on_the_fly(clean):
    images = images_per_mode(clean("flux"), generate_dit, ratios=RATIOS, k=2.0)
    assert torch.equal(images["cached"], images["on_the_fly"])


def test_cache_holds_the_pruned_target_weights_only(clean):
    unet = clean("sd15").unet
    ratios = {"down": 0.4, "mid": 0.0, "up": 0.3}  # mid untouched: nothing to copy there
    crdiff.apply_crdiff(unet, ratios, weights="cached")
    targets, masks = crdiff.target_modules(unet), crdiff.compute_masks(unet, ratios)
    modules = dict(unet.named_modules())
    held = {name: hook.cached for name, hook in hooks(unet).items() if hook.cached is not None}
    assert set(held) == set(targets["down"]) | set(targets["up"]) and targets["mid"]
    for name, pruned in held.items():
        dense = modules[name].weight
        assert pruned.dtype == dense.dtype and pruned.device == dense.device and not pruned.requires_grad
        assert torch.equal(pruned, dense.detach() * masks[name])


def test_k_needs_no_rebuild_and_remove_frees_the_cache(clean):
    unet = clean("sdxl").unet
    args, kwargs = unet_inputs(unet)
    crdiff.apply_crdiff(unet, RATIOS, k=1.5, weights="cached")
    cache = [hook.cached for hook in hooks(unet).values()]
    refs, storage = [weakref.ref(t) for t in cache], [t.data_ptr() for t in cache]
    del cache
    with torch.no_grad():
        crdiff.crdiff_config(unet).k = 3.0
        cached = unet(*args, **kwargs).sample
        assert [hook.cached.data_ptr() for hook in hooks(unet).values()] == storage
        crdiff.remove_crdiff(unet)
        assert all(ref() is None for ref in refs)  # freed at once, without waiting for the cycle collector
        crdiff.apply_crdiff(unet, RATIOS, k=3.0, weights="on_the_fly")
        assert torch.equal(unet(*args, **kwargs).sample, cached)


def test_auto_caches_within_the_budget_and_not_beyond(clean, caplog):
    unet = clean("sd15").unet
    need = sum(m.weight.numel() * m.weight.element_size() for g in crdiff.target_modules(unet).values()
               for m in g.values())
    caplog.set_level(logging.INFO, logger="crdiff")
    for budget, want in ((need / 2**30, "cached"), (0.999 * need / 2**30, "on_the_fly")):
        crdiff.apply_crdiff(unet, RATIOS, weights="auto", memory_budget_gib=budget)
        assert crdiff.weights_used(unet) == want and f"auto -> {want}" in caplog.text
        assert all((hook.cached is not None) == (want == "cached") for hook in hooks(unet).values())
        crdiff.remove_crdiff(unet)


def test_auto_budget_is_free_memory_minus_the_reserve(clean, monkeypatch):
    """Without an override: a device with room caches, a nearly full one does not (CPU and CUDA queries)."""
    unet = clean("sd15").unet
    for free, want in ((64 * 2**30, "cached"), (25 * 2**30, "on_the_fly")):  # total 100 GiB: 25 GiB reserved
        monkeypatch.setattr(amplify, "_host_memory", lambda free=free: (free, 100 * 2**30))
        crdiff.apply_crdiff(unet, RATIOS, weights="auto")
        assert crdiff.weights_used(unet) == want
        crdiff.remove_crdiff(unet)
    assert amplify.memory_budget(torch.device("cpu")) == 0
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (30 * 2**30, 80 * 2**30))
    assert amplify.memory_budget(torch.device("cuda", 0)) == 10 * 2**30
    assert amplify.memory_budget(torch.device("meta")) is None


def test_offloaded_models_hold_nothing(clean, monkeypatch):
    """accelerate's offloading moves weights every call: auto does not cache, an explicit cache is refused."""
    unet = clean("sd15").unet
    monkeypatch.setattr(unet.down_blocks[0], "_hf_hook", object(), raising=False)
    crdiff.apply_crdiff(unet, RATIOS, weights="auto", memory_budget_gib=100.0)
    assert crdiff.weights_used(unet) == "on_the_fly"
    crdiff.remove_crdiff(unet)
    with pytest.raises(ValueError, match="cannot follow weights that accelerate offloading moves"):
        crdiff.apply_crdiff(unet, RATIOS, weights="cached")


def test_a_changed_dense_weight_with_a_stale_cache_fails_loudly(clean):
    unet = clean("sd15").unet
    args, kwargs = unet_inputs(unet)
    crdiff.apply_crdiff(unet, RATIOS, weights="cached")
    name = next(iter(hooks(unet)))
    with torch.no_grad():
        unet.get_submodule(name).weight.mul_(1.0)  # same values, but edited in place after the cache was built
        with pytest.raises(RuntimeError, match=f"{name} was moved, cast or changed in place"):
            unet(*args, **kwargs)


@pytest.mark.parametrize("settings,message", [
    ({"weights": "lazy"}, r"weights is 'lazy'; valid choices: \['on_the_fly', 'cached', 'auto'\]"),
    ({"weights": "cached", "memory_budget_gib": 4.0}, "read only by weights='auto'"),
    ({"memory_budget_gib": -1.0}, "finite number of GiB >= 0"),
    ({"memory_budget_gib": True}, "finite number of GiB >= 0"),
])
@pytest.mark.parametrize("cls", [CRDiffConfig, AmplifyConfig])
def test_bad_weights_settings_are_one_clear_error(cls, settings, message):
    with pytest.raises(ValueError, match=message):
        cls(**settings)


def test_settings_given_two_ways_are_refused(clean):
    unet = clean("sd15").unet
    with pytest.raises(ValueError, match=r"not both: got config and \['weights'\]"):
        crdiff.apply_crdiff(unet, config=CRDiffConfig(weights="auto"), weights="cached")
    assert not crdiff.is_crdiff(unet)
