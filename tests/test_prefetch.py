"""Prefetch and the checks before a run on machines that cannot download: an unreachable hub stops
prefetch at once with one line; gated repositories are named with what they need."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hubcache

ROOT = Path(__file__).resolve().parents[1]
GATE = "is gated: accept the {} at https://huggingface.co/{} with your account, then download with its token " \
       "(HF_TOKEN=<token> or `hf auth login`)"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def test_prefetch_where_the_hub_cannot_be_reached_stops_at_once_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HUB_CACHE": str(tmp_path / "hub"),
            "TORCH_HOME": str(tmp_path / "torch")}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "scripts/prefetch_weights.py", "experiment=table_a", "model=sdxl"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - began
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"prefetch: error: the hub ({env['HF_ENDPOINT']}) cannot be reached from ")
    assert "run this command where the hub is reachable" in lines[0] and str(tmp_path / "hub") in lines[0]
    assert seconds < 60  # imports and composing; the old path retried each of 9 pieces 5 times (minutes)
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("model,repo,licence", [
    ("flux", "black-forest-labs/FLUX.1-dev", "FLUX.1 [dev] Non-Commercial License"),
    ("sd3", "stabilityai/stable-diffusion-3-medium-diffusers", "Stability AI Community License")])
def test_gated_repositories_are_named_with_what_they_need(tmp_path, monkeypatch, model, repo, licence):
    from test_run import compose_run

    from crdiff.experiment import planner, preflight

    hubcache.use(monkeypatch, tmp_path / "hub")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("crdiff.experiment.preflight.has_token", lambda: False)
    run = compose_run(f"model={model}", "metrics=none", f"output_dir={tmp_path}")
    gate = GATE.format(licence, repo)
    for reachable in (False, True):  # online too: it would download at first use, but not without a token
        (piece,) = preflight.check(run, [f"model={model}"], reachable=reachable)
        assert gate in str(piece)
    plan = planner.report([([f"model={model}"], run)], [f"model={model}"], reachable=False)
    assert gate in plan.splitlines()[-1] and plan.splitlines()[-1].startswith("missing: ")
    monkeypatch.setattr("crdiff.experiment.preflight.has_token", lambda: True)
    assert preflight.check(run, [f"model={model}"], reachable=True) == []
