"""Every public entry point refuses what it would ignore: settings given twice, targets, groups or model
kinds that match no layer, config values another field overrides."""

import pytest

import crdiff
from crdiff.experiment import methods
from crdiff.experiment.config import PruningConfig
from crdiff.models import Resolution
from crdiff.pruning import plan_pruning, target_modules

from test_run import compose_run

RATIOS = {"down": 0.3, "mid": 0.3, "up": 0.3}


def test_settings_given_as_config_and_as_keywords(tiny_pipes):
    pipe = tiny_pipes("sd15")
    with pytest.raises(ValueError, match=r"either as config=CRDiffConfig\(\.\.\.\) or as keywords, not both: got "
                                         r"config and \['k'\]"):
        crdiff.apply_crdiff(pipe, config=crdiff.CRDiffConfig(k=2.0), k=5.0)
    assert not crdiff.is_crdiff(pipe)
    crdiff.apply_crdiff(pipe, config=crdiff.CRDiffConfig(k=2.0))  # either way alone is fine
    assert crdiff.crdiff_config(pipe).k == 2.0
    crdiff.remove_crdiff(pipe)
    crdiff.apply_crdiff(pipe, k=5.0)
    assert crdiff.crdiff_config(pipe).k == 5.0 and crdiff.crdiff_config(pipe).ratios == RATIOS
    crdiff.remove_crdiff(pipe)


def test_a_target_that_matches_nothing_names_what_exists(tiny_pipes):
    unet = tiny_pipes("sd15").unet
    with pytest.raises(ValueError, match=r"targets \['attn1.to_qq'\] match no prunable layer of this "
                                         r"UNet2DConditionModel; its prunable layers end in: \[.*'attn1.to_q'.*\]"):
        plan_pruning(unet, RATIOS, targets=["attn1.to_q", "attn1.to_qq"])
    with pytest.raises(ValueError, match="match no prunable layer"):  # cross-attention is never a target
        target_modules(unet, ["attn2.to_q"])
    picked = target_modules(unet, ["attn1.to_q"])
    assert all(name.endswith(".attn1.to_q") for names in picked.values() for name in names)


def test_a_group_with_a_ratio_but_no_target_layer(tiny_pipes):
    unet = tiny_pipes("sd15").unet
    ups = {n.split("up_blocks.", 1)[1].split(".", 1)[1] for n in target_modules(unet)["up"]}
    others = {n.split(".", 2)[2] for g in ("down", "mid") for n in target_modules(unet)[g]}
    only_up = sorted(ups - others)[0]  # a suffix that exists in the up blocks alone
    assert plan_pruning(unet, {"down": 0.0, "mid": 0.0, "up": 0.3}, targets=[only_up]).groups["up"]
    with pytest.raises(ValueError, match=r"groups \['down', 'mid'\] have a ratio > 0 but no target layer"):
        plan_pruning(unet, RATIOS, targets=[only_up])


def test_dit_pruning_on_a_unet_is_an_error(tiny_pipes):
    run = compose_run("experiment=smoke", "pruning=dit")
    assert run.pruning.model_kind == "dit" and run.pruning.targets is None  # DIT_TARGETS live in code only
    pipe = tiny_pipes("sdxl")
    with pytest.raises(ValueError, match=r"pruning.model_kind is 'dit' but the model's denoiser is a unet "
                                         r"\(UNet2DConditionModel\); use pruning=blockwise"):
        methods.apply(pipe, run, "crdiff", Resolution(64, 64))
    assert not crdiff.is_crdiff(pipe)


def test_dit_pruning_on_a_dit_prunes_the_dit_targets(tiny_pipes):
    run = compose_run("experiment=smoke", "model=tiny-sd3", "pruning=dit")
    pipe = tiny_pipes("sd3")
    methods.apply(pipe, run, "crdiff", Resolution(64, 64))
    try:
        assert crdiff.is_crdiff(pipe)
    finally:
        methods.remove(pipe)


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "uniform", "ratio": 0.2, "ratios": RATIOS}, "pruning.ratios is set but pruning.kind=uniform ignores it"),
    ({"kind": "none", "ratios": RATIOS}, "pruning.ratios is set but pruning.kind=none ignores it"),
    ({"kind": "blockwise", "ratio": 0.2}, "pruning.ratio is set but pruning.kind=blockwise does not read it"),
    ({"kind": "uniform"}, "pruning.kind=uniform needs pruning.ratio"),
    ({"model_kind": "vit"}, "pruning.model_kind is 'vit'; valid choices"),
])
def test_pruning_values_another_field_would_override(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningConfig(**kwargs)


def test_pruning_kinds_derive_their_ratios():
    assert PruningConfig(kind="uniform", ratio=0.2).ratios == {"down": 0.2, "mid": 0.2, "up": 0.2}
    assert PruningConfig(kind="none").ratios == {"down": 0.0, "mid": 0.0, "up": 0.0}
    assert PruningConfig().ratios == RATIOS  # REF's search start
    again = PruningConfig(kind="uniform", ratio=0.2)
    assert PruningConfig(kind="uniform", ratio=0.2, ratios=again.ratios).ratios == again.ratios  # round trip


def test_an_unknown_config_key_is_refused_by_the_schema():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="ratioz"):
        compose_run("experiment=smoke", "pruning.ratioz=0.3")
    with pytest.raises(ConfigCompositionException, match="nmaes"):
        compose_run("experiment=smoke", "metrics.nmaes=[clip]")
