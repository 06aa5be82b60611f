"""Shared disks and mixed jobs: files other accounts can read, claims that expire, jobs of different
batch sizes on one output_dir, a node-local output_dir, finished jobs and prompts.limit reused."""

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from crdiff import atomic
from crdiff.experiment import run as run_module
from crdiff.experiment.claims import HOST, Claims
from crdiff.experiment.distributed import Ranks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask():
    def set_(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_
    os.umask(old)


@pytest.mark.parametrize("mask,file_mode,folder_mode", [(0o002, 0o664, 0o775), (0o022, 0o644, 0o755),
                                                         (0o077, 0o600, 0o700)])
def test_atomic_files_and_folders_honour_the_umask(tmp_path, umask, mask, file_mode, folder_mode):
    umask(mask)
    atomic.write_json(tmp_path / "row.json", {"a": 1})
    atomic.write_bytes(tmp_path / "img.png", b"x")
    folder = atomic.save_folder(lambda tmp: (tmp / "model.bin").write_bytes(b"w"), tmp_path / "pipe")
    assert (tmp_path / "row.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "img.png").stat().st_mode & 0o777 == file_mode
    assert folder.stat().st_mode & 0o777 == folder_mode
    assert Claims(tmp_path, 60).claim(0)
    assert (tmp_path / ".claims" / "00000.0").stat().st_mode & 0o777 == file_mode


@pytest.mark.parametrize("content", ["", "{\"host\": \"no", "\x00\x01"])
def test_a_claim_that_cannot_be_read_expires_by_its_age(tmp_path, content):
    path = tmp_path / ".claims" / "00002.0"
    path.parent.mkdir()
    path.write_text(content)  # a claimer killed while writing it, or a torn NFS write
    assert not Claims(tmp_path, lease_s=60).claim(2)  # lease running: maybe being written right now
    os.utime(path, (time.time() - 61, time.time() - 61))
    assert Claims(tmp_path, lease_s=60).claim(2)


def compose(*overrides):
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    from crdiff.experiment.config import RunConfig

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["experiment=smoke", "metrics=none", "methods=[dense]",
                                                 "resolutions.sets=[default]", "sampler.steps=2", *overrides])
    return RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))


def test_prompts_limit_reuses_images_and_keeps_rows_apart(tmp_path):
    small, large = (run_module.plan(compose(f"prompts.limit={n}", f"output_dir={tmp_path}")) for n in (2, 4))
    assert [j.folder for j in small.jobs] == [j.folder for j in large.jobs]  # the images of a prompt are shared
    assert [j.key for j in small.jobs] != [j.key for j in large.jobs]  # the rows score different prompts
    other = run_module.plan(compose("prompts=list", "prompts.texts=[a cat,a dog]", f"output_dir={tmp_path}"))
    assert other.jobs[0].folder != small.jobs[0].folder  # other prompts never share a folder
    assert run_module.generate_all(small, Ranks(), "cpu") == 2
    assert run_module.generate_all(large, Ranks(), "cpu") == 2  # only images 2 and 3 are new


def test_a_finished_job_is_recognised_without_decoding_its_images(tmp_path, monkeypatch):
    from crdiff.experiment import sampling

    p = run_module.plan(compose("prompts.limit=3", f"output_dir={tmp_path}"))
    assert run_module.generate_all(p, Ranks(), "cpu") == 3
    assert (p.jobs[0].folder / sampling.DONE).is_file()

    def decoded(*args):
        raise AssertionError("a finished job's images were decoded again")

    monkeypatch.setattr(sampling, "is_done", decoded)
    assert run_module.generate_all(run_module.plan(compose("prompts.limit=3", f"output_dir={tmp_path}")),
                                   Ranks(), "cpu") == 0
    assert run_module.generate_all(run_module.plan(compose("prompts.limit=2", f"output_dir={tmp_path}")),
                                   Ranks(), "cpu") == 0  # a shorter run of the same prompts: finished too
    monkeypatch.undo()
    sampling.image_path(p.jobs[0].folder, 1).unlink()  # the record never hides a missing image
    assert run_module.generate_all(p, Ranks(), "cpu") == 1


def test_generate_all_returns_only_when_every_image_exists(tmp_path, monkeypatch):
    """Another job (here: of sampler.batch_size 1) holds image 1 of this job's batch [0, 1]: this job makes 0,
    waits, and makes 1 once the holder lets go without making it (a job of another batch size stopped)."""
    from crdiff.experiment.sampling import image_path

    monkeypatch.setattr(run_module, "POLL_S", 0.2)
    p = run_module.plan(compose("prompts.limit=4", "sampler.batch_size=2", f"output_dir={tmp_path}"))
    folder = p.jobs[0].folder
    held = folder / ".claims" / "00001.0"
    held.parent.mkdir(parents=True)
    held.write_text(json.dumps({"host": HOST, "pid": os.getpid(), "time": time.time()}))  # a live holder
    seen = {}

    def holder() -> None:
        time.sleep(2.0)
        seen["missing while held"] = not image_path(folder, 1).exists()
        held.unlink()

    thread = threading.Thread(target=holder)
    thread.start()
    made = run_module.generate_all(p, Ranks(), "cpu")
    thread.join()
    assert seen == {"missing while held": True}
    assert made == 4 and all(image_path(folder, i).is_file() for i in range(4))


@pytest.mark.slow
@pytest.mark.parametrize("command", [["experiment=smoke", "metrics=none"], ["experiment=search_smoke"]],
                         ids=["table job", "search"])
def test_a_launch_whose_ranks_see_different_output_dirs_stops_at_start(tmp_path, command):
    """Two SLURM tasks of one job, each with its own node-local folder: both stop with one line, no image
    (a search too: its ranks would resume from different state files)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                      "MASTER_"))}
    job = {"SLURM_JOB_ID": str(random.randrange(10**6)), "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    procs = [subprocess.Popen([sys.executable, "-m", "crdiff.run", *command, f"output_dir={tmp_path / f'node{r}'}"], cwd=ROOT, text=True,
                              env={**env, **job, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-2000:]
        assert err.strip().splitlines()[-1].startswith("crdiff: error: output_dir=") and "Traceback" not in err
        assert "rank(s) [1] of 2 do not see the file rank 0 wrote there" in err
    assert not list(tmp_path.glob("node*/images/**/*.png"))


@pytest.mark.slow
def test_two_jobs_of_different_batch_sizes_on_one_output_dir_make_and_score_every_image(tmp_path):
    """sampler.batch_size is a speed setting: jobs of 1 and 3 share the images (their batches overlap) and
    each returns from generation only when all exist, so both score every image."""
    import re

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                      "MASTER_"))}
    env |= {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "crdiff.run", "experiment=smoke", "prompts.limit=6",
                               "sampler.steps=2", "resolutions.sets=[default]", f"sampler.batch_size={size}",
                               f"output_dir={tmp_path}"], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for size in (1, 3)]
    logs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    counts = [tuple(map(int, re.search(r"crdiff: generated (\d+) images, skipped (\d+)", log).groups()))
              for log in logs]
    assert sum(made for made, _ in counts) == 12 and all(made + skipped == 12 for made, skipped in counts)
    assert len(list(tmp_path.glob("images/**/*.png"))) == 12 and not list(tmp_path.glob("images/**/.claims/*"))
    rows = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*.json")]
    assert len(rows) == 2 and all(set(row["metrics"]) == {"clip", "image_reward", "pickscore", "aesthetic"}
                                  for row in rows)
