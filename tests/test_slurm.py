"""Real SLURM jobs on a cluster on this machine (scripts/slurm_cluster.sh up), driven as README and docs/scale-out.md
show them: srun tasks, a k sweep as an array, one multi-task job, a time limit with requeue, scancel, and
`scontrol requeue` (what preemption does). Each makes every image exactly once and equal to one process.

The presets' resources are overridden to fit one 2-core node without GPUs (gpus_per_node=0, 1 CPU and 1 GB
per task). Without a reachable cluster this module skips with one line saying how to bring it up; under
CRDIFF_REQUIRE_SLURM=1 (set by .ci/run) it fails instead. tests/test_slurm_unit.py needs no cluster.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["experiment=smoke", "metrics=none", "resolutions.sets=[default]", "prompts.limit=6", "sampler.batch_size=1",
        "sampler.steps=6"]
N = 2 * 6  # dense and crdiff at 64x64
ONE_NODE = ["hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]


# -- the cluster ------------------------------------------------------------------------------------------
def unreachable() -> str | None:
    """Why no SLURM job can run here, or None."""
    if not shutil.which("sinfo"):
        return "no SLURM here (sinfo not found)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t %c"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s"
    nodes = [line.split() for line in states.stdout.splitlines()]
    if states.returncode or not any(state in ("idle", "mix") and int(cpus) >= 2 for state, cpus in nodes):
        return f"no idle SLURM node with 2 CPUs (sinfo: {(states.stdout + states.stderr).strip()!r})"
    return None


REASON = unreachable()
if REASON and os.environ.get("CRDIFF_REQUIRE_SLURM") == "1":
    pytest.fail(f"CRDIFF_REQUIRE_SLURM=1 but {REASON}", pytrace=False)
if REASON:
    pytest.skip(f"{REASON}: to run the SLURM tests, `bash scripts/slurm_cluster.sh up` as root (README, Set-up)",
                allow_module_level=True)


def env() -> dict[str, str]:
    """The jobs' environment (sbatch and srun pass it on): this checkout first on the path, offline, one
    thread each (the thread count changes float rounding; every run here must be bit-identical)."""
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
         "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR",
                 *(k for k in os.environ if k.startswith("SLURM_"))):
        e.pop(name, None)
    return e


def crdiff(*args: str) -> list[str]:
    return [sys.executable, "-m", "crdiff.run", *args]


def start(cmd: list[str]) -> subprocess.Popen:
    """The command in its own process group; its output goes to a file (a pipe nobody reads could fill)."""
    out = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    proc.output = out
    return proc


class Images:
    """The images of an output_dir, each file as first seen (inode, mtime): an image made twice is
    written twice (atomic rename, a new inode), so it shows up in `rewritten`."""

    def __init__(self, out: Path) -> None:
        self.out, self.seen = out, {}

    def look(self) -> int:
        for path in self.out.glob("images/**/*.png"):
            st = path.stat()
            self.seen.setdefault(path, (st.st_ino, st.st_mtime_ns))
        return len(self.seen)

    def rewritten(self) -> list[Path]:
        return [p for p, first in self.seen.items() if (p.stat().st_ino, p.stat().st_mtime_ns) != first]

    def pixels(self) -> dict[str, np.ndarray]:
        return {str(p.relative_to(self.out)): np.asarray(Image.open(p)) for p in sorted(self.out.glob("images/**/*.png"))}


def watch(proc: subprocess.Popen, images: Images, timeout: float = 1800, until=None) -> str | None:
    """Poll the images while `proc` runs; return its output when it ends (None once `until()` holds)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        images.look()
        if until is not None and until():
            return None
        if proc.poll() is not None:
            proc.output.seek(0)
            out = proc.output.read()
            images.look()
            assert proc.returncode == 0, out[-4000:]
            return out
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"{proc.args} did not finish in {timeout} s")


def squeue(name: str) -> list[str]:
    """Job ids (`<array job>_<task>`) of the jobs called `name` still queued or running."""
    return subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True,
                          check=True).stdout.split()


def job_logs(out: Path) -> dict[str, str]:
    """submitit's log of every task by file name (`<job>_<task>_log.out`; each try appends to it)."""
    return {p.name: p.read_text() for p in sorted(out.glob("multirun/**/.submitit/*/*_log.out"))}


def made(log: str) -> list[tuple[int, int]]:
    return [tuple(map(int, m)) for m in re.findall(r"crdiff: generated (\d+) images, skipped (\d+)", log)]


def rows(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("results/*.json"))]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One plain process: the reference images, and the seconds per image this machine takes now as a
    function of the steps (`long_args`)."""
    out = tmp_path_factory.mktemp("single")
    proc = subprocess.run(crdiff(*ARGS, f"output_dir={out}"), cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # seconds per denoiser pass, overhead included (an upper bound: crdiff batches its two passes), and passes
    # per step of one prompt's dense and crdiff images
    cost = {r["method"]: (r["denoiser_calls"], r["seconds_per_image"]) for r in rows(out)}
    (dense_calls, dense_s), (crdiff_calls, _) = cost["dense"], cost["crdiff"]
    return Images(out).pixels(), (dense_s / dense_calls, (dense_calls + crdiff_calls) / 6)


def same_as(single_images: dict, out: Path) -> bool:
    """Every image of the single process exists under `out` with the same pixels."""
    got = Images(out).pixels()
    return all(k in got and np.array_equal(v, got[k]) for k, v in single_images.items())


# -- jobs -------------------------------------------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.slow
def test_srun_two_tasks_equal_one_process(single, tmp_path):
    proc = subprocess.run(["srun", "--ntasks", "2", "--cpus-per-task", "1", *crdiff(*ARGS, f"output_dir={tmp_path}")],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    per_rank = [int(re.search(rf"rank {r} of 2 made (\d+) images", log)[1]) for r in (0, 1)]
    assert all(per_rank) and sum(per_rank) == N and made(log) == [(N, 0)]  # both made part, one summary
    assert same_as(single[0], tmp_path) and len(Images(tmp_path).pixels()) == N


@pytest.mark.slurm
@pytest.mark.slow
def test_array_over_k_shares_dense_images_and_makes_each_once(single, tmp_path):
    """Two array tasks (one CPU each) run at once on the 2-core node, sharing the dense images' claims."""
    images = Images(tmp_path)
    log = watch(start(crdiff("-m", "hydra/launcher=slurm", *ONE_NODE, *ARGS, "amplify.k=1.5,2.0",
                             "hydra.launcher.name=crdiff-array", f"output_dir={tmp_path}")), images)
    tasks = job_logs(tmp_path)
    assert len(tasks) == 2 and all(re.search(r"_[01]_0_log\.out$", name) for name in tasks)  # one array, 2 tasks
    counts = [made(text)[-1] for text in tasks.values()]
    assert all(g + s == N for g, s in counts) and sum(g for g, _ in counts) == N // 2 * 3  # dense once, 2 crdiff
    stamps = [[time.mktime(time.strptime(m, "%Y-%m-%d %H:%M:%S")) for m in
               re.findall(r"submitit INFO \((\S+ \S+),\d+\) - (?:Starting|Job completed)", text)] for text in
              tasks.values()]
    assert max(s[0] for s in stamps) < min(s[-1] for s in stamps)  # both tasks ran at the same time
    assert images.look() == N // 2 * 3 and not images.rewritten() and same_as(single[0], tmp_path)  # k=1.5 = 1 proc
    assert "Call #2 - Bypassing sacct error" not in log  # explained once (slurm.quiet_sacct), not per poll


@pytest.mark.slurm
@pytest.mark.slow
def test_multigpu_preset_one_job_of_two_ranks_one_row_set(single, tmp_path):
    log = watch(start(crdiff("-m", "hydra/launcher=slurm_multigpu", *ONE_NODE, "hydra.launcher.nodes=1",
                             "hydra.launcher.tasks_per_node=2", *ARGS, "hydra.launcher.name=crdiff-multi",
                             f"output_dir={tmp_path}")), Images(tmp_path))
    tasks = job_logs(tmp_path)
    assert len({name.rsplit("_", 2)[0] for name in tasks}) == 1 and len(tasks) == 2, tasks.keys()  # 1 job, 2 tasks
    text = "".join(tasks.values())
    per_rank = [int(re.search(rf"rank {r} of 2 made (\d+) images", text)[1]) for r in (0, 1)]
    assert all(per_rank) and sum(per_rank) == N and made(text) == [(N, 0)], log[-2000:]
    assert len(rows(tmp_path)) == 2 and same_as(single[0], tmp_path)  # one row per (method, resolution)


@pytest.mark.slurm
@pytest.mark.slow
def test_multigpu_preset_on_two_nodes(single, tmp_path):
    """nodes=2 on the cluster's second slurmd (same host; partition `two` holds both nodes): one rank per
    node, rendezvous at the first host of SLURM_JOB_NODELIST. submitit's batch script starts the ranks with
    `srun`, so this is also the README's `srun --nodes 2 ...` inside an sbatch script."""
    nodes = subprocess.run(["sinfo", "-h", "-p", "two", "-o", "%D"], capture_output=True, text=True).stdout.split()
    if nodes != ["2"]:
        message = "no partition `two` of 2 nodes: bring the cluster up with scripts/slurm_cluster.sh"
        pytest.fail(message) if os.environ.get("CRDIFF_REQUIRE_SLURM") == "1" else pytest.skip(message)
    watch(start(crdiff("-m", "hydra/launcher=slurm_multigpu", *ONE_NODE, "hydra.launcher.nodes=2",
                       "hydra.launcher.tasks_per_node=1", "hydra.launcher.partition=two", *ARGS,
                       "hydra.launcher.name=crdiff-nodes", f"output_dir={tmp_path}")), Images(tmp_path))
    text = "".join(job_logs(tmp_path).values())
    assert len(set(re.findall(r"node=([01])\(2\)", text))) == 2  # submitit's JobEnvironment: node 0 and 1 of 2
    per_rank = [int(re.search(rf"rank {r} of 2 made (\d+) images", text)[1]) for r in (0, 1)]
    assert all(per_rank) and sum(per_rank) == N and made(text) == [(N, 0)]
    assert len(rows(tmp_path)) == 2 and same_as(single[0], tmp_path)


def long_args(speed: tuple[float, float], seconds: float) -> list[str]:
    """ARGS with enough denoising steps for at most `seconds` of work at the speed `single` measured (its
    per-pass time includes the per-image overhead and crdiff batches its passes: the work was 1/2 to 1/1 of
    `seconds` in the runs so far), so that the job is still running when the test or its limit acts on it."""
    per_pass, passes_per_step = speed
    return [*ARGS[:-1], f"sampler.steps={max(10, int(seconds / 6 / (passes_per_step * per_pass)))}"]


def requeue_result(out: Path, images: Images, restarts: int) -> None:
    """After a requeued job: every image once, the restart count in the log and in the rows' provenance."""
    assert images.look() == N and not images.rewritten()
    text = "".join(job_logs(out).values())
    assert f"restarted {restarts} time" in text
    assert {r["provenance"]["slurm"]["restart_count"] for r in rows(out)} == {restarts}
    g, s = made(text)[-1]
    assert g + s == N and s > 0  # the last try skipped what earlier tries made


def set_time_limit(job: str, minutes: int) -> None:
    subprocess.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={minutes}"], check=True)


def elapsed_s(job: str) -> int:
    """How long the job's current try has run (squeue's [[D-]H:]M:SS)."""
    fields = subprocess.run(["squeue", "-h", "-j", job, "-o", "%M"], capture_output=True, text=True,
                            check=True).stdout.strip().replace("-", ":").split(":")
    return sum(int(v) * w for v, w in zip(reversed(fields), (1, 60, 3600, 86400)))


@pytest.mark.slurm
@pytest.mark.slow
def test_time_limit_requeues_and_resumes(single, tmp_path):
    """A job submitted with timeout_min=2, signal_delay_s=30 reaches its time limit mid-work: SLURM sends
    USR2 (its checks run every 30 s), submitit sees a time-out, requeues it (scontrol requeue), SLURM holds
    it (AuthInfo=cred_expire) and the next try skips what is done. So that the limit falls after the first
    images on a fast or a busy machine alike, the test holds the limit at 15 min until 2 images exist, then
    sets it 1-2 min ahead of the try's run time; once the job is requeued it lifts it to 15 min again, so
    the second try finishes (exactly one restart)."""
    images = Images(tmp_path)
    proc = start(crdiff("-m", "hydra/launcher=slurm", *ONE_NODE, *long_args(single[1], 300),
                        "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30",
                        "hydra.launcher.name=crdiff-timeout", f"output_dir={tmp_path}"))
    watch(proc, images, until=lambda: squeue("crdiff-timeout"))
    [job] = squeue("crdiff-timeout")
    set_time_limit(job, 15)
    watch(proc, images, until=lambda: images.look() >= 2)
    set_time_limit(job, elapsed_s(job) // 60 + 2)
    watch(proc, images, until=lambda: "Requeued job" in "".join(job_logs(tmp_path).values()))
    before = images.look()
    set_time_limit(job, 15)
    watch(proc, images)
    text = "".join(job_logs(tmp_path).values())
    assert "Caught signal SIGUSR2" in text and "this job is timed-out" in text
    assert 2 <= before < N
    requeue_result(tmp_path, images, 1)


@pytest.mark.slurm
@pytest.mark.slow
def test_scontrol_requeue_of_a_running_job_resumes(single, tmp_path):
    images = Images(tmp_path)
    proc = start(crdiff("-m", "hydra/launcher=slurm", *ONE_NODE, *long_args(single[1], 25),
                        "hydra.launcher.name=crdiff-requeue", f"output_dir={tmp_path}"))
    watch(proc, images, until=lambda: images.look() >= 3)
    [job] = squeue("crdiff-requeue")
    subprocess.run(["scontrol", "requeue", job], check=True)  # what preemption with PreemptMode=REQUEUE does
    before = images.look()
    watch(proc, images)
    assert 0 < before < N
    requeue_result(tmp_path, images, 1)


@pytest.mark.slurm
@pytest.mark.slow
def test_scancel_then_the_same_command_finishes_the_rest(single, tmp_path):
    images = Images(tmp_path)
    cmd = crdiff("-m", "hydra/launcher=slurm", *ONE_NODE, *long_args(single[1], 25),
                 "hydra.launcher.name=crdiff-cancel", f"output_dir={tmp_path}")
    proc = start(cmd)
    watch(proc, images, until=lambda: images.look() >= 3)
    subprocess.run(["scancel", *squeue("crdiff-cancel")], check=True)
    deadline = time.time() + 60
    while squeue("crdiff-cancel") and time.time() < deadline:  # SIGTERM, then SIGKILL after KillWait
        time.sleep(0.5)
    assert not squeue("crdiff-cancel")
    # without accounting submitit cannot see the job is gone and waits for its result: the user stops it
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:  # a loaded machine: the user presses Ctrl-C again, harder
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    before = images.look()
    assert 0 < before < N and not rows(tmp_path)
    watch(start(cmd), images)
    assert images.look() == N and not images.rewritten()
    assert made(list(job_logs(tmp_path).values())[-1])[-1] == (N - before, before)
