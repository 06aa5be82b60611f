"""Scale-out on CPU: SLURM / torchrun ranks through the one init function, claims with leases, and
concurrent jobs on one output_dir making every image exactly once."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crdiff.experiment.claims import HOST, Claims
from crdiff.experiment.distributed import hostnames, launch_env

ROOT = Path(__file__).resolve().parents[1]
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
         "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[007-008]"}


@pytest.mark.parametrize("nodelist", ["node1", "node[1-3,5]", "gpu[007-010],cpu-a5,x[9-10]", "a1,b2"])
def test_nodelist_expands_like_submitit(nodelist):
    from submitit.slurm.slurm import _parse_node_list

    assert hostnames(nodelist) == _parse_node_list(nodelist)


@pytest.mark.parametrize("array", [False, True])
def test_slurm_task_joins_as_submitit_would_place_it(monkeypatch, array):
    from submitit.helpers import TorchDistributedEnvironment

    env = {**SLURM, **({"SLURM_ARRAY_JOB_ID": "4200", "SLURM_ARRAY_TASK_ID": "3"} if array else {})}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**env, "SUBMITIT_EXECUTOR": "slurm"}.items():
        monkeypatch.setenv(name, value)
    theirs = TorchDistributedEnvironment()
    ours = launch_env(env)
    assert ours == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu007",
                    "MASTER_PORT": ours["MASTER_PORT"]}
    assert (theirs.rank, theirs.world_size, theirs.local_rank, theirs.master_addr, theirs.master_port) == \
        (9, 16, 1, "gpu007", int(ours["MASTER_PORT"]))


def test_torchrun_variables_win_and_one_task_is_one_process():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    assert launch_env({**SLURM, **torchrun}) == torchrun
    assert launch_env({**SLURM, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) == {}
    assert launch_env({}) == {}
    with pytest.raises(ValueError, match=r"without \['SLURM_JOB_NODELIST'\]: launch it with srun"):
        launch_env({k: v for k, v in SLURM.items() if k != "SLURM_JOB_NODELIST"})


def test_claims_are_exclusive_and_released(tmp_path):
    a, b = Claims(tmp_path, lease_s=60), Claims(tmp_path, lease_s=60)
    assert a.claim(3) and not b.claim(3) and b.claim(4)
    holder = json.loads((tmp_path / ".claims" / "00003.0").read_text())
    assert holder["host"] == HOST and holder["pid"] == os.getpid()
    a.release(3)
    assert b.claim(3) and list(b.held) == [4, 3]


def test_expired_lease_is_taken_over_once(tmp_path):
    dead = tmp_path / ".claims" / "00001.4"
    dead.parent.mkdir()
    dead.write_text(json.dumps({"host": "another-node", "pid": 1, "time": 0}))
    a, b = Claims(tmp_path, lease_s=60), Claims(tmp_path, lease_s=60)
    assert not a.claim(1)  # another node's claim, lease still running
    os.utime(dead, (time.time() - 61, time.time() - 61))
    assert a.claim(1) and not b.claim(1)
    assert [p.name for p in dead.parent.iterdir()] == ["00001.5"]


def test_claim_of_a_dead_process_on_this_host_is_stale_at_once(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / ".claims" / "00000.0"
    path.parent.mkdir()
    path.write_text(json.dumps({"host": HOST, "pid": int(gone.stdout), "time": time.time()}))
    assert Claims(tmp_path, lease_s=3600).claim(0)


def test_renewal_keeps_a_slow_holder_s_lease(tmp_path):
    a, b = Claims(tmp_path, lease_s=0.4), Claims(tmp_path, lease_s=0.4)
    assert a.claim(0)
    with a.renewing():
        time.sleep(1.0)
        assert not b.claim(0)
    time.sleep(0.6)
    assert b.claim(0)


# -- processes on one output_dir ------------------------------------------------------------------------
# One thread each: the thread count changes CPU float rounding, and every run here must be bit-identical.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR",
             *(k for k in os.environ if k.startswith("SLURM_"))):
    ENV.pop(name, None)
ARGS = ["experiment=smoke", "metrics=none", "resolutions.sets=[default]", "prompts.limit=6", "sampler.batch_size=1",
        "sampler.steps=6"]
N = 2 * 6  # dense and crdiff at 64x64


def start(out: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "crdiff.run", *ARGS, f"output_dir={out}"], cwd=ROOT,
                            env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def images(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): np.asarray(Image.open(p)) for p in sorted(out.glob("images/**/*.png"))}


def made(log: str) -> tuple[int, int]:
    return tuple(map(int, re.search(r"crdiff: generated (\d+) images, skipped (\d+)", log).groups()))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert made(finish(start(out))) == (N, 0)
    return images(out)


def same(want: dict, got: dict) -> bool:
    return len(want) == N and want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)


@pytest.mark.slow
def test_two_slurm_tasks_without_torchrun_equal_one_process(single, tmp_path):
    job = {"SLURM_JOB_ID": str(random.randrange(10**6)), "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0"}
    procs = [start(tmp_path, **job, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)) for r in (0, 1)]
    logs = [finish(p) for p in procs]
    per_rank = [int(re.search(rf"rank {r} of 2 made (\d+) images", log)[1]) for r, log in enumerate(logs)]
    assert all(per_rank) and sum(per_rank) == N  # each task did part of the work, together all of it
    assert made(logs[0]) == (N, 0) and "crdiff: generated" not in logs[1]
    assert same(single, images(tmp_path))


@pytest.mark.slow
def test_two_independent_jobs_at_once_make_each_image_once(single, tmp_path):
    logs = [finish(p) for p in [start(tmp_path), start(tmp_path)]]
    counts = [made(log) for log in logs]
    assert counts[0][0] + counts[1][0] == N and all(g + s == N for g, s in counts)
    assert same(single, images(tmp_path))
    assert not list(tmp_path.glob("images/**/.claims/*"))  # every claim released


@pytest.mark.slow
def test_killed_job_s_claims_are_taken_over_and_a_rerun_regenerates_nothing(single, tmp_path):
    victim, other = start(tmp_path), start(tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it while it holds a claim, after some images exist
        holders = [json.loads(p.read_text() or "{}").get("pid") for p in tmp_path.glob("images/**/.claims/*")]
        if victim.pid in holders and len(list(tmp_path.glob("images/**/*.json"))) >= 2:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("images/**/*.json")}
    assert 2 <= len(before) < N
    generated, skipped = made(finish(other))  # takes over the victim's claim (10 min lease) at once
    assert generated + skipped == N
    assert made(finish(start(tmp_path))) == (0, N)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # nothing made twice
    assert same(single, images(tmp_path))


@pytest.mark.parametrize("preset,nodes,tasks", [("slurm", 1, 1), ("slurm_multigpu", 2, 8)])
def test_slurm_presets_requeue_and_place_one_rank_per_gpu(preset, nodes, tasks):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):  # unknown fields fail to compose
        launcher = compose("config", [f"hydra/launcher={preset}", "experiment=sweep_k"],
                           return_hydra_config=True).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.max_num_timeout > 0
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (nodes, tasks, tasks)
