"""The protocol as the docs state it is the protocol the experiment files run: docs/method.md §4's sampling
sentences and protocol.md's settings table are read and compared with the composed configs."""

import re
from pathlib import Path

import pytest

from crdiff.experiment.planner import compose_runs
from crdiff.models import Resolution

ROOT = Path(__file__).resolve().parents[1]
METHOD, PROTOCOL = (ROOT / "docs" / "method.md").read_text(), (ROOT / "docs" / "protocol.md").read_text()


def sampling(text: str) -> dict:
    """steps, negative prompt and seed of a sentence 'N steps, <negative> and seed S'."""
    text = " ".join(text.split())
    m = re.search(r"(\d+) steps, (no negative prompt|negative prompt `\"\"`).{0,80}? and seed (\d+)", text)
    assert m, f"no 'N steps, ... negative prompt ... and seed S' in {text[:200]!r}"
    return {"steps": int(m[1]), "negative_prompt": None if m[2].startswith("no") else "", "seed": int(m[3])}


def protocol_table() -> dict[str, str]:
    return {m[1].strip(): m[2].strip() for m in re.finditer(r"^\| ([^|]+) \| ([^|]+) \|", PROTOCOL, re.M)}


@pytest.fixture(scope="module")
def tables():
    return {name: [run for _, run in compose_runs([f"experiment={name}"])] for name in ("table_a", "table_b")}


def test_method_md_states_the_samplers_the_configs_use(tables):
    section = METHOD[METHOD.index("**Sampling**"):METHOD.index("**Preprocessing")]
    experiments, defaults = section.split("The sampler's defaults")
    want = sampling(experiments)
    for runs in tables.values():
        for run in runs:
            assert {k: getattr(run.sampler, k) for k in want} == want
            assert run.sampler.guidance == float(re.search(r"guidance ([\d.]+)", section)[1])
    from omegaconf import OmegaConf

    sampler = OmegaConf.load(ROOT / "conf" / "sampler" / "default.yaml")
    assert {k: sampler[k] for k in want} == sampling(defaults)


def test_protocol_md_table_is_what_the_table_experiments_run(tables):
    rows = protocol_table()
    assert int(rows["steps"].split()[0]) == 30 and float(rows["guidance"].split()[0]) == 7.5
    seed = int(re.search(r"manual_seed\((\d+) \+ i\)", rows["seeds"])[1])
    negative = None if rows["negative prompt"].startswith("none") else rows["negative prompt"]
    k = float(rows["k"].split()[0])
    for runs in tables.values():
        for run in runs:
            assert (run.sampler.steps, run.sampler.guidance, run.sampler.seed, run.sampler.negative_prompt) == \
                (int(rows["steps"].split()[0]), float(rows["guidance"].split()[0]), seed, negative)
            assert run.method("crdiff").k == k
    assert sorted(run.model.name for run in tables["table_a"]) == ["sd15", "sd21", "sdxl"]
    a = re.search(r"Table A: SDXL ([\dx, ]+); SD 1\.5 / 2\.1 ([\dx, ]+)\.", rows["resolutions (HxW)"])
    stated = {"sdxl": a[1], "sd15": a[2], "sd21": a[2]}
    for run in tables["table_a"]:
        assert [res for _, res in run.resolutions.selected()] == \
            [Resolution.parse(r.strip()) for r in stated[run.model.name].split(",")]
    for run in tables["table_b"]:
        assert [setting for setting, _ in run.resolutions.selected()] == ["default"]
