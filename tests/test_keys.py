"""One run-key function: every config field joins the key unless EXCLUDED names it, and nothing else."""

from __future__ import annotations

from dataclasses import fields, is_dataclass

import pytest

from crdiff.amplify import CRDiffConfig
from crdiff.experiment.config import RunConfig
from crdiff.experiment.keys import EXCLUDED, run_key, semantic


def config_classes(cls=RunConfig) -> dict[str, type]:
    out = {cls.__name__: cls}
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            out |= config_classes(type(default))
    return out


CLASSES = {**config_classes(), "CRDiffConfig": CRDiffConfig}


def test_every_field_is_in_the_key_or_excluded():
    key = semantic(RunConfig())
    for f in fields(RunConfig):
        value = getattr(RunConfig(), f.name)
        assert (f.name in key) != (f"RunConfig.{f.name}" in EXCLUDED), f.name
        if is_dataclass(value) and f.name in key:
            for g in fields(value):
                name = f"{type(value).__name__}.{g.name}"
                assert (g.name in key[f.name]) != (name in EXCLUDED), name
    crd = semantic({"anywhere": [CRDiffConfig()]})["anywhere"][0]
    assert set(crd) == {f.name for f in fields(CRDiffConfig)} - {"batched", "weights", "memory_budget_gib"}


def test_every_exclusion_names_a_real_field():
    for entry in EXCLUDED:
        cls, name = entry.split(".")
        assert name in {f.name for f in fields(CLASSES[cls])}, entry


@pytest.mark.parametrize("change", [
    {"k": 2.0}, {"ratios": {"down": 0.2, "mid": 0.3, "up": 0.3}}, {"criterion": "random"}, {"seed": 1},
    {"targets": ("attn1.to_q",)},
])
def test_a_semantic_change_changes_the_key(change):
    assert run_key(settings=CRDiffConfig()) != run_key(settings=CRDiffConfig(**change))


def test_speed_only_and_order_do_not():
    assert run_key(settings=CRDiffConfig(batched=True)) == run_key(settings=CRDiffConfig(batched=False))
    assert run_key(settings=CRDiffConfig(weights="cached")) == run_key(
        settings=CRDiffConfig(weights="auto", memory_budget_gib=0.0))
    assert run_key(a=1, b={"x": 1, "y": 2}) == run_key(b={"y": 2, "x": 1}, a=1)


# A different valid value for every field of the groups a job's images depend on: each must change the
# keys `plan` gives the CR-Diff jobs; the speed-only ones must change none. A new field of these
# groups fails the completeness check until it is listed here.
SEMANTIC = {"sampler.scheduler": "ddim", "sampler.steps": 3, "sampler.guidance": 5.0, "sampler.negative_prompt": "x",
            "sampler.seed": 1, "amplify.k": 2.0, "pruning.criterion": "random", "pruning.seed": 1,
            "pruning.ratios.down": 0.2, "pruning.targets": "[attn1.to_q]",
            "metrics.preprocessing": "center_crop_lanczos256", "model.source": "my-org/my-sdxl"}
SPEED = {"sampler.batch_size": 1, "amplify.batched": "false", "amplify.weights": "on_the_fly",
         "amplify.memory_budget_gib": 1.0, "metrics.batch_size": 7, "device": "cpu", "lease_min": 5}


def test_every_keyed_field_changes_the_jobs_keys_and_no_speed_field_does(tmp_path):
    from dataclasses import fields as fields_of

    from crdiff.experiment.config import AmplifyConfig, SamplerConfig
    from crdiff.experiment.run import plan
    from test_run import compose_run

    listed = {k.split(".")[1] for k in (*SEMANTIC, *SPEED) if k.count(".")}
    for cls in (SamplerConfig, AmplifyConfig):
        assert {f.name for f in fields_of(cls)} <= listed, cls.__name__
    base = ["experiment=smoke", f"output_dir={tmp_path}"]

    def keys(*extra):
        return [j.key for j in plan(compose_run(*base, *extra)).jobs if j.method == "crdiff"]

    before = keys()
    for name, value in SEMANTIC.items():
        assert set(keys(f"{name}={value}")).isdisjoint(before), name
    for name, value in SPEED.items():
        assert keys(f"{name}={value}") == before, name
