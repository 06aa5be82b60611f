"""The search commands of README.md and docs/ from the CLI as written, with only the model and the
scorer swapped for offline stand-ins (and fewer iterations, steps and held-out seeds where the test
says so): what preflight, prefetch and `task=plan` ask for, the presets per (model, resolution), a
refinement that leaves the tables' presets alone, and Table B on searched presets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
STAND_INS = ["model=tiny-sdxl", "metrics.tiny=true"]
SHORT = ["++search.anneal.iterations=1", "search.validation_seeds=1", "sampler.steps=1"]


def crdiff(*args, module="crdiff.run"):
    return subprocess.run([sys.executable, "-m", module, *args] if module else [sys.executable, *args], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=900)


def test_a_search_asks_for_the_model_and_its_scorer_only(tmp_path):
    """Offline, without weights: `experiment=search` stops before loading anything, naming exactly the SDXL
    weights and ImageReward's (no FID references, no PickScore / CLIP / aesthetic weights)."""
    done = crdiff("experiment=search", f"output_dir={tmp_path}")
    errors = [line for line in done.stderr.splitlines() if line.startswith("crdiff: error:")]
    assert done.returncode == 2 and errors, done.stderr[-2000:]
    assert all(e.startswith(("crdiff: error: model sdxl", "crdiff: error: metric image_reward")) for e in errors), errors
    assert any("model sdxl" in e for e in errors) and any("image_reward" in e for e in errors)
    check = crdiff("scripts/prefetch_weights.py", "--check", "experiment=search", module=None)
    pieces = [line.split(":")[0] for line in check.stdout.splitlines()]
    assert pieces and all(p.startswith(("model sdxl", "metric image_reward")) for p in pieces), check.stdout


def test_plan_of_a_search_prints_trials_images_and_gpu_hours(tmp_path):
    done = crdiff("task=plan", "experiment=search", f"output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("sdxl ")]
    # one search per resolution of Tables A and B; (1 start + 120 moves + 2 restarts + 2 x 8 held-out) x 2 prompts
    assert [r[2] for r in rows] == ["1024x1024", "512x512", "400x560", "480x360"]
    assert all(r[1] == "search" and r[3] == str((123 + 16) * 2) for r in rows)
    assert "at most 123 trials" in done.stdout and "GPU-hours on NVIDIA H200" in done.stdout
    assert "missing: model sdxl" in done.stdout and "fid" not in done.stdout.lower()


@pytest.mark.slow
def test_readme_search_multirun_and_refine_keep_the_tables_presets(tmp_path):
    out = tmp_path / "out"
    multirun = crdiff("-m", "experiment=search", *STAND_INS, "search.resolutions=[40x72],[96x96]", *SHORT,
                      f"output_dir={out}")
    assert multirun.returncode == 0, multirun.stderr[-3000:]
    presets = {p.name: p.read_bytes() for p in (out / "presets" / "pruning").glob("*.yaml")}
    assert set(presets) == {"searched_tiny-sdxl_40x72.yaml", "searched_tiny-sdxl_96x96.yaml"}
    preset = (out / "presets" / "pruning" / "searched_tiny-sdxl_40x72.yaml").read_text()
    objective = json.loads(preset.split("objective: ")[1].splitlines()[0])
    assert objective["k"] == 1.0 and objective["scorer"] == "image_reward (stand-in)" and objective["seed"] == 24432
    assert json.loads(preset.split("validation: ")[1].splitlines()[0])["images"] == 2

    refine = crdiff("experiment=refine", *STAND_INS, "prompts.texts=['a red fox in the snow']",
                    "search.resolutions=[40x72]", "search.anneal={iterations: 1}", *SHORT[1:], f"output_dir={out}")
    assert refine.returncode == 0, refine.stderr[-3000:]
    assert "pruning=refined_tiny-sdxl_40x72 amplify=refined_tiny-sdxl_40x72" in refine.stdout
    assert {p.name: p.read_bytes() for p in (out / "presets" / "pruning").glob("searched_*.yaml")} == presets
    assert (out / "presets" / "amplify" / "refined_tiny-sdxl_40x72.yaml").is_file()


@pytest.mark.slow
def test_search_then_table_b_reads_the_searched_preset(tmp_path):
    """README "Search, then table", Table B: `experiment=search` with no resolution searches the model's
    default one too (REF's protocol as it is: 30 steps); then table_b's CR-Diff row carries that preset."""
    out = tmp_path / "out"
    search = crdiff("experiment=search", *STAND_INS, "resolutions.sets=[default]", "++search.anneal.iterations=1",
                    "search.validation_seeds=0", f"output_dir={out}")
    assert search.returncode == 0, search.stderr[-3000:]
    preset = out / "presets" / "pruning" / "searched_tiny-sdxl_64x64.yaml"
    assert preset.is_file() and "search best" in search.stdout
    table = crdiff("experiment=table_b", "model=tiny-sdxl", "prompts=builtin", "prompts.limit=1", "metrics=tiny",
                   "metrics.names=[clip]", "sampler.steps=1", f"output_dir={out}")
    assert table.returncode == 0, table.stderr[-3000:]
    rows = [json.loads(p.read_text()) for p in (out / "results").glob("*.json")]
    crd = [r for r in rows if r["method"] == "crdiff"]
    assert [(r["resolution"], r["ratios_source"], r["preset"]) for r in crd] == [
        ("64x64", "searched preset", str(preset))]
