"""The documented path end to end against a real hub server on loopback (tests/hubserver.py), typed as a
user types it: prefetch -> HF_HUB_OFFLINE=1 plan -> run -> make_tables, with XDG_CACHE_HOME and HF_HOME
pointing elsewhere, under umask 002, with a pinned model.revision. Nothing reaches the internet.

Per piece, what is real and what is a stand-in:
- the model `stable-diffusion-v1-5/stable-diffusion-v1-5` (sd15's maintained copy): real id, real
  diffusers file layout and config-driven loading, at a real commit; the weights are the tiny SD1.5-like
  pipeline (crdiff.tiny, random weights), whose architecture diffusers builds from the served configs.
- every metric repository the paper's metrics read (open_clip's CLIP, ImageReward and its BERT
  tokenizer, PickScore and its processor, SigLIP): real ids and the real file names preflight and
  prefetch look for; the bytes are placeholders. Their architectures are fixed in code at full size,
  so the journey proves download and cache placement, and the run then scores with the stand-ins of
  the same classes (metrics.tiny=true).
- Inception-v3 and the aesthetic head (URLs outside the hub): real file names, placeholder bytes, from a
  loopback file server through CRDIFF_WEIGHTS_URL, into torch's hub folder under XDG_CACHE_HOME.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crdiff import tiny
from hubserver import add_repo, file_server, hub_server

ROOT = Path(__file__).resolve().parents[1]
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MODEL = "model=sd15 model.dtype=fp32 model.revision={rev}"
SMALL = ("prompts=csv prompts.path={csv} prompts.limit=2 resolutions.default=[64x64] resolutions.sets=[default] "
         "sampler.steps=2 sampler.batch_size=2")


def metric_pieces():
    """The paper's metrics' downloads, as preflight and prefetch declare them."""
    from crdiff.metrics import metric_needs
    from crdiff.weights import HubFiles, UrlFile

    repos, urls = {}, []
    for name in ("fid", "kid", "clip", "image_reward", "pickscore", "aesthetic"):
        for piece in metric_needs(name):
            if isinstance(piece, HubFiles):
                files = repos.setdefault(piece.repo, {})
                files |= {alternatives[0]: f"stand-in for {piece.repo}/{alternatives[0]}".encode()
                          for alternatives in piece.files}
            elif isinstance(piece, UrlFile):
                urls.append(piece)
    return repos, urls


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The hub server with the model and every metric repository, and the file server for the rest."""
    root, work = tmp_path_factory.mktemp("mirror"), tmp_path_factory.mktemp("servers")
    saved = work / "sd15"
    tiny.build("sd15").save_pretrained(saved)
    rev = add_repo(root, SD15, saved)
    repos, urls = metric_pieces()
    for repo, files in repos.items():
        add_repo(root, repo, files)
    files = work / "files"
    files.mkdir()
    for piece in urls:
        (files / piece.url.rsplit("/", 1)[-1]).write_bytes(b"stand-in for " + piece.url.encode())
    with hub_server(root, work) as endpoint, file_server(files) as mirror:
        yield {"endpoint": endpoint, "mirror": mirror, "rev": rev, "repos": repos, "urls": urls}


def typed(command: str, env: dict, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`command` as a user types it in a shell whose umask is 002, with this venv active (its `python`)."""
    env = {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    done = subprocess.run(["bash", "-c", f"umask 002 && {command}"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"$ {command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def reference_csv(folder: Path) -> Path:
    """Two prompts with real-image paths (what FID / KID read), as scripts/prepare_coco5k.py writes them."""
    folder.mkdir()
    rows = []
    for i, prompt in enumerate(["a red bus on a street", "two cats on a sofa"]):
        path = folder / f"real_{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        rows.append({"id": f"coco_{i}", "prompt": prompt, "image_path": str(path)})
    file = folder / "prompts.csv"
    with file.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "prompt", "image_path"])
        writer.writeheader()
        writer.writerows(rows)
    return file


@pytest.mark.slow
def test_prefetch_then_an_offline_table_job_with_xdg_and_hf_home_elsewhere(served, tmp_path):
    home, xdg, hf = tmp_path / "home", tmp_path / "xdg", tmp_path / "hf"
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TORCH_HOME", "HF_TOKEN")}
    env |= {"HOME": str(home), "XDG_CACHE_HOME": str(xdg), "HF_HOME": str(hf), "HF_ENDPOINT": served["endpoint"],
            "CRDIFF_WEIGHTS_URL": served["mirror"], "WANDB_MODE": "disabled", "CRDIFF_CACHE": str(tmp_path / "crdiff")}
    model = MODEL.format(rev=served["rev"])
    small = SMALL.format(csv=reference_csv(tmp_path / "coco"))
    out = tmp_path / "out"

    fetched = typed(f"python scripts/prefetch_weights.py {model} metrics=paper", env)
    assert "(0 failed)" in fetched.stdout
    snapshot = hf / "hub" / f"models--{SD15.replace('/', '--')}" / "snapshots" / served["rev"]
    assert (snapshot / "model_index.json").is_file() and (snapshot / "unet" / "config.json").is_file()
    for repo, files in served["repos"].items():
        for name in files:
            assert list((hf / "hub").glob(f"models--{repo.replace('/', '--')}/snapshots/*/{name}")), (repo, name)
    for piece in served["urls"]:
        assert (xdg / "torch" / "hub" / "checkpoints" / piece.url.rsplit("/", 1)[-1]).is_file()
    assert not (home / ".cache").exists()  # every cache followed XDG_CACHE_HOME / HF_HOME

    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # the compute node
    plan = typed(f"python -m crdiff.run task=plan {model} metrics=paper {small} output_dir={out}", offline)
    assert plan.stdout.strip().splitlines()[-1] == "missing: nothing"
    ran = typed(f"python -m crdiff.run {model} metrics=paper metrics.tiny=true {small} device=cpu "
                f"output_dir={out}", offline)
    assert "crdiff: generated 4 images, skipped 0" in ran.stdout
    tables = typed(f"python scripts/make_tables.py --results {out} --out {out}/tables", offline)
    assert tables.stdout.strip()

    rows = sorted((out / "results").glob("*.json"))
    assert len(rows) == 2 and all(f"{SD15}@{served['rev']}" in row.read_text() for row in rows)
    for path in [*rows, *out.glob("images/**/*.png"), *out.glob("images/**/*.json")]:
        assert path.stat().st_mode & 0o777 == 0o664, path  # a collaborator in the group reads and resumes
    for path in [p for p in out.glob("images/**") if p.is_dir()]:
        assert path.stat().st_mode & 0o777 == 0o775, path
