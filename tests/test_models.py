"""Registry, loading through diffusers' from_pretrained, tiny pipelines, clear errors offline."""

import os
from pathlib import Path

import open_clip
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

import crdiff
from crdiff import ModelUnavailableError, Resolution, load_pipeline
from crdiff.tiny import build
import hubcache


def test_registry_agrees_with_the_paper_and_the_configs():
    """Each paper model's training size is the size of its Table B row; each conf/model file asks for the
    registry's dtype (fp16 for REF's models); no source is one the hub no longer serves."""
    import pandas as pd
    from omegaconf import OmegaConf

    from crdiff.models import GONE_SOURCES

    root = Path(__file__).resolve().parents[1]
    paper = pd.read_csv(root / "results" / "paper" / "tables_paper.csv")
    for row in paper[paper.table == "B"].itertuples():
        assert crdiff.MODELS[row.model].resolution == Resolution(row.height, row.width), row.model
    for file in (root / "conf" / "model").glob("*.yaml"):
        cfg = OmegaConf.load(file)
        assert crdiff.MODELS[cfg.name].dtype == cfg.dtype, file.name
    assert {m: spec.source for m, spec in crdiff.MODELS.items() if spec.source in GONE_SOURCES} == {}


@pytest.mark.parametrize("kind,cls", [("sd15", StableDiffusionPipeline), ("sd21", StableDiffusionPipeline),
                                      ("sdxl", StableDiffusionXLPipeline)])
def test_tiny_pipeline_round_trips_through_load_pipeline(tiny_pipes, kind, cls):
    loaded = tiny_pipes(kind)
    assert type(loaded) is cls
    built = build(kind).unet.state_dict()
    assert all(torch.equal(built[n], p) for n, p in loaded.unet.state_dict().items())
    want = "v_prediction" if kind == "sd21" else "epsilon"
    assert loaded.scheduler.config.prediction_type == want
    assert loaded.vae_scale_factor == 8


def test_load_pipeline_accepts_a_local_folder_and_dtype(tiny_pipes, tmp_path):
    tiny_pipes("sd15").save_pretrained(tmp_path)
    pipe = load_pipeline(str(tmp_path), dtype="bf16")
    assert pipe.unet.dtype == torch.bfloat16


def test_tokenizer_matches_open_clip(tiny_pipes):
    tokenizer, reference = tiny_pipes("sdxl").tokenizer, open_clip.get_tokenizer("ViT-L-14")
    assert len(tokenizer) == 49408
    for prompt in ["A cat holding a sign that says hello world",
                   "A billboard in Times Square showing the text 'FUTURE IS NOW' in bold neon letters",
                   "naïve café — 3 dogs!!"]:
        ids = tokenizer(prompt).input_ids
        assert ids == reference([prompt])[0][: len(ids)].tolist()


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown model 'sd3000'; valid choices: \[.*'sd15'"):
        load_pipeline("sd3000")


def test_missing_hub_model_offline_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    hubcache.use(monkeypatch, tmp_path / "hub")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(ModelUnavailableError, match=r"scripts/prefetch_weights.py model=sd15` or `hf download "
                                                     r"stable-diffusion-v1-5/stable-diffusion-v1-5 "):
        load_pipeline("sd15")


@pytest.mark.parametrize("text,want", [("400x560", (400, 560)), ("480X360", (480, 360)), (" 8x16 ", (8, 16))])
def test_resolution_parses_height_first(text, want):
    res = Resolution.parse(text)
    assert (res.height, res.width) == want and str(res) == f"{want[0]}x{want[1]}"


@pytest.mark.parametrize("text,match", [("401x560", "height 401 is not a positive multiple of 8"),
                                        ("400x0", "width 0 is not"), ("400", "not written HxW")])
def test_bad_resolution_raises(text, match):
    with pytest.raises(ValueError, match=match):
        Resolution.parse(text)


@pytest.mark.parametrize("name,counts", [
    ("sdxl", {"down": 550_502_400, "mid": 262_144_000, "up": 825_753_600}),
    ("sd15", {"down": 68_812_800, "mid": 26_214_400, "up": 103_219_200}),
    ("sd21", {"down": 68_812_800, "mid": 26_214_400, "up": 103_219_200}),
])
def test_target_counts_on_real_configs_match_the_paper(name, counts):
    """docs/method.md §1's table, from the real architectures on the meta device (no weights)."""
    from crdiff.models import random_unet

    targets = crdiff.target_modules(random_unet(name, meta=True))
    assert {g: sum(m.weight.numel() for m in mods.values()) for g, mods in targets.items()} == counts


def _with_safety_checker(folder):
    """A tiny SD1.5-like pipeline saved with a (tiny) safety checker, as SD1.5 ships."""
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    checker = StableDiffusionSafetyChecker(CLIPConfig(text_config=tiny, vision_config={**tiny, "image_size": 32,
                                                      "patch_size": 8}, projection_dim=16))
    parts = {k: v for k, v in build("sd15").components.items() if k not in ("safety_checker", "feature_extractor")}
    pipe = StableDiffusionPipeline(**parts, safety_checker=checker, feature_extractor=CLIPImageProcessor(),
                                   requires_safety_checker=True)
    pipe.save_pretrained(folder)
    return folder


def test_the_safety_checker_is_kept_or_dropped_as_asked(tmp_path):
    import json

    from diffusers import DiffusionPipeline

    folder = _with_safety_checker(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["safety_checker"][1] == "StableDiffusionSafetyChecker"
    assert DiffusionPipeline.from_pretrained(tmp_path).safety_checker is not None  # diffusers' default
    assert load_pipeline(str(folder)).safety_checker is None  # drop, the library's default
    assert load_pipeline(str(folder), safety_checker="keep").safety_checker is not None
    with pytest.raises(ValueError, match="model.safety_checker is 'maybe'; valid choices"):
        load_pipeline(str(folder), safety_checker="maybe")


def test_a_pinned_revision_does_not_override_the_safety_checker_setting(tmp_path, monkeypatch):
    """Offline, a prefetched commit has no refs/main: the decision must read the pinned revision's
    model_index.json from the same cache as the pipeline (it read the default branch and, failing,
    loaded the checker whatever was asked)."""
    from hubcache import add_repo, use

    cache, revision = tmp_path / "hub", "1234567890abcdef1234567890abcdef12345678"
    add_repo(cache, "someone/sd15-copy", _with_safety_checker(tmp_path / "saved"), revision=revision, main=False)
    use(monkeypatch, cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_pipeline("someone/sd15-copy", revision=revision).safety_checker is None
    assert load_pipeline("someone/sd15-copy", revision=revision, safety_checker="keep").safety_checker is not None


@pytest.mark.parametrize("experiment", ["table_a", "table_b", "sweep_k", "sweep_ratios", "baselines"])
def test_table_experiments_keep_the_safety_checker_as_the_paper_evidently_did(experiment):
    from test_run import compose_run

    assert compose_run(f"experiment={experiment}", "model=sd15").model.safety_checker == "keep"
    assert compose_run(f"experiment={experiment}", "model=sd15", "model.safety_checker=drop").model.safety_checker == "drop"
    assert compose_run("experiment=smoke").model.safety_checker == "drop"
