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
