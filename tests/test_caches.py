"""One source of truth for cache folders: crdiff looks where huggingface_hub and torch.hub (and so every
loader and metric) look, whatever combination of XDG_CACHE_HOME, HF_HOME, HF_HUB_CACHE, TORCH_HOME is set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubcache import add_repo

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, torch
from huggingface_hub import constants
from crdiff import weights
from crdiff.metrics import metric_needs
piece = weights.HubFiles("model", "org/name", (("config.json",),))
print(json.dumps({"crdiff": str(weights.hub_cache()), "hub": constants.HF_HUB_CACHE, "torch": torch.hub.get_dir(),
                  "crdiff_torch": str(weights.torch_hub()), "inception": str(metric_needs("fid")[0].path.parent),
                  "missing": piece.missing()}))
"""


def caches(tmp_path: Path, **env) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
                                                               "TORCH_HOME", "XDG_CACHE_HOME")}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, "HOME": str(tmp_path / "home"), **env},
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("env,hub,torch_dir", [
    ({"XDG_CACHE_HOME": "{t}/xdg"}, "{t}/xdg/huggingface/hub", "{t}/xdg/torch/hub"),
    ({"XDG_CACHE_HOME": "{t}/xdg", "HF_HOME": "$SCRATCH/hf", "SCRATCH": "{t}/scratch"}, "{t}/scratch/hf/hub",
     "{t}/xdg/torch/hub"),
    ({"HF_HOME": "~/hf", "TORCH_HOME": "{t}/th"}, "{t}/home/hf/hub", "{t}/th/hub"),
    ({"HF_HUB_CACHE": "{t}/only-hub", "HF_HOME": "{t}/hf"}, "{t}/only-hub", "{t}/home/.cache/torch/hub"),
])
def test_crdiff_looks_where_the_loaders_look(tmp_path, env, hub, torch_dir):
    env = {k: v.format(t=tmp_path) for k, v in env.items()}
    hub, torch_dir = hub.format(t=tmp_path), torch_dir.format(t=tmp_path)
    add_repo(Path(hub), "org/name", {"config.json": b"{}"})
    got = caches(tmp_path, **env)
    assert got["crdiff"] == got["hub"] == hub
    assert got["crdiff_torch"] == got["torch"] == torch_dir and got["inception"] == f"{torch_dir}/checkpoints"
    assert got["missing"] is None  # found where the run's loaders will read it
