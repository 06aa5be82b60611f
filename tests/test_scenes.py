"""The scenes miniature: data and captions, the detector (on hand-drawn images and on the data at every
evaluated size), the exact metrics, the SDXL layout, and training that resumes to the same weights."""

import csv
import json
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from crdiff.metrics import build_metric
from crdiff.miniature import scenes
from crdiff.miniature.scenes_detect import Reading, detect, kinds
from crdiff.models import ModelUnavailableError, Resolution

from test_run import ENV, ROOT

EVALUATED = ("64x64", "32x32", "24x32", "32x24")  # conf/resolutions/scenes.yaml


# --- data and captions ---------------------------------------------------------------------------------

def test_captions_state_counts_and_attributes():
    assert scenes.caption(Counter({("red", "circle"): 2})) == "two red circles"
    assert scenes.caption(Counter({("red", "square"): 1, ("blue", "triangle"): 1})) == "a red square and a blue triangle"
    assert scenes.caption(Counter({("green", "circle"): 1})) == "a green circle"
    three = Counter({("red", "square"): 1, ("green", "circle"): 1, ("blue", "triangle"): 1})
    with pytest.raises(ValueError, match="1 to 2"):
        scenes.caption(three)
    assert scenes.kinds_of("two red circles and a blue square") == Counter({("red", "circle"): 2, ("blue", "square"): 1})


def test_captions_read_back_exactly():
    for seed in range(300):
        s = scenes.scene(seed)
        assert scenes.kinds_of(s.caption) == s.kinds
        assert 1 <= len(s.objects) <= scenes.MAX_OBJECTS


@pytest.mark.parametrize("text", ["a handwritten digit seven", "two red circle", "a red circle and a red circle",
                                  "a purple circle", "a red circle on a hill"])
def test_text_that_is_no_caption_is_a_clear_error(text):
    with pytest.raises(ValueError, match="caption|well-formed"):
        scenes.kinds_of(text)


def test_scenes_are_a_function_of_their_seed_and_objects_never_touch():
    assert scenes.scene(7) == scenes.scene(7) and scenes.scene(7) != scenes.scene(8)
    assert np.array_equal(scenes.render(scenes.scene(7), 24, 32), scenes.render(scenes.scene(7), 24, 32))
    for seed in range(300):
        objs = scenes.scene(seed).objects
        for i, a in enumerate(objs):
            assert scenes.MARGIN + a.size / 2 <= min(a.y, a.x) and max(a.y, a.x) <= 1 - scenes.MARGIN - a.size / 2
            for b in objs[i + 1:]:
                gap = np.hypot(a.y - b.y, a.x - b.x) - (a.size + b.size) * np.sqrt(2) / 2
                assert gap >= scenes.GAP - 1e-12


def test_evaluation_prompts_are_not_training_scenes():
    from crdiff.miniature.scenes_train import FIRST_SCENE, TrainConfig

    cfg = TrainConfig()
    used = max(FIRST_SCENE.values()) + cfg.batch_size * max(cfg.encoder_steps, cfg.vae_steps, cfg.unet_steps)
    assert used < scenes.EVAL_FIRST_SEED - 512  # 512 held out for the encoder just below
    assert scenes.prompts(3) == [scenes.scene(scenes.EVAL_FIRST_SEED + i).caption for i in range(3)]


# --- the detector --------------------------------------------------------------------------------------

def _hand_drawn(height, width, objects, jitter=0, seed=0):
    """Shapes drawn here with plain numpy inequalities (hard edges, optional colour noise): not the data's
    code path (PIL, anti-aliased), so the detector is checked on images it was not tuned to."""
    image = np.full((height, width, 3), 255.0)
    y, x = np.mgrid[0:height, 0:width] + 0.5
    for colour, shape, cy, cx, half in objects:
        if shape == "circle":
            inside = (y - cy) ** 2 + (x - cx) ** 2 <= half ** 2
        elif shape == "square":
            inside = (abs(y - cy) <= half) & (abs(x - cx) <= half)
        else:
            inside = (y >= cy - half) & (y <= cy + half) & (abs(x - cx) <= (y - cy + half) / 2)
        image[inside] = scenes.COLOURS[colour]
    noise = np.random.default_rng(seed).uniform(-jitter, jitter, image.shape)
    return np.clip(image + noise, 0, 255).round().astype(np.uint8)


HAND_DRAWN = [
    (64, 64, [("red", "circle", 16, 16, 8), ("red", "circle", 44, 20, 9), ("blue", "square", 30, 48, 8)]),
    (64, 64, [("green", "triangle", 20, 40, 10)]),
    (64, 64, [("blue", "triangle", 14, 14, 8), ("blue", "square", 48, 48, 7), ("green", "circle", 16, 48, 7)]),
    (32, 32, [("red", "square", 9, 9, 4), ("green", "triangle", 22, 22, 5)]),
    (32, 32, [("blue", "circle", 8, 24, 4), ("blue", "circle", 24, 8, 4), ("blue", "circle", 24, 24, 4)]),
    (24, 32, [("red", "triangle", 8, 8, 4), ("green", "square", 16, 24, 3.5)]),
    (32, 24, [("green", "circle", 8, 12, 3.5), ("red", "square", 22, 12, 3.5)]),
]


@pytest.mark.parametrize("jitter", [0, 20])
@pytest.mark.parametrize("height,width,objects", HAND_DRAWN)
def test_detector_reads_hand_drawn_scenes(height, width, objects, jitter):
    image = _hand_drawn(height, width, objects, jitter)
    assert kinds(image) == Counter((c, s) for c, s, *_ in objects)
    found = detect(image)
    for f in found:  # each found object sits where one was drawn
        assert any(np.hypot(f.y - cy, f.x - cx) < 0.35 * half + 1 for c, s, cy, cx, half in objects if c == f.colour)


def test_specks_and_foreign_colours_are_no_objects():
    image = _hand_drawn(64, 64, [("red", "circle", 20, 20, 8)])
    image[50, 50] = scenes.COLOURS["blue"]  # a one-pixel speck
    image[40:56, 4:20] = (150, 60, 170)  # a purple square: no palette colour explains it
    assert kinds(image) == Counter({("red", "circle"): 1})
    assert detect(np.full((32, 32, 3), 255, np.uint8)) == []
    with pytest.raises(ValueError, match="RGB"):
        detect(np.zeros((32, 32), np.uint8))


@pytest.mark.parametrize("height,width,objects", HAND_DRAWN)
def test_detector_reads_soft_dark_shapes_as_a_decoder_draws_them(height, width, objects):
    """Blurred (rounded corners, soft edges), darker than the palette, with off-palette ink at the edges: the
    template fit of the first detector read such triangles and squares as circles."""
    from scipy import ndimage

    image = _hand_drawn(height, width, objects).astype(np.float64)
    shaded = image < 250
    image = np.where(shaded, image * 0.8, image)  # darker than the palette colour
    image[..., 1] = np.where(shaded.all(-1) & (np.indices(image.shape[:2]).sum(0) % 7 == 0), 90.0, image[..., 1])
    soft = np.stack([ndimage.gaussian_filter(image[..., c], 0.8 * min(height, width) / 64) for c in range(3)], -1)
    assert kinds(soft.round().astype(np.uint8)) == Counter((c, s) for c, s, *_ in objects)


@pytest.mark.parametrize("size", EVALUATED)
def test_detector_reads_the_data_at_every_evaluated_size(size):
    """Its accuracy on 100 evaluation scenes drawn at each size is exactly 1 (measured: 1.0 on 500 per size,
    results/miniature_scenes/detector.md)."""
    r = Resolution.parse(size)
    for i in range(100):
        s = scenes.scene(scenes.EVAL_FIRST_SEED + i)
        assert kinds(scenes.render(s, r.height, r.width)) == s.kinds, (i, s.caption)


# --- the exact metrics ---------------------------------------------------------------------------------

def test_reading_names_the_failure():
    want = Counter({("red", "circle"): 2, ("blue", "square"): 1})
    right = Reading(want, Counter(want))
    assert (right.correct, right.count_error, right.duplicated, right.missing) == (True, 0, False, False)
    tiled = Reading(want, Counter({("red", "circle"): 4, ("blue", "square"): 2}))
    assert (tiled.correct, tiled.count_error, tiled.duplicated, tiled.missing) == (False, 3, True, False)
    lost = Reading(want, Counter({("red", "circle"): 1}))
    assert (lost.correct, lost.count_error, lost.duplicated, lost.missing) == (False, 2, False, True)
    wrong = Reading(want, Counter({("red", "circle"): 2, ("blue", "square"): 1, ("green", "circle"): 1}))
    assert (wrong.correct, wrong.count_error, wrong.duplicated, wrong.missing) == (False, 1, False, False)
    swapped = Reading(want, Counter({("red", "circle"): 2, ("blue", "circle"): 1}))
    assert (swapped.correct, swapped.count_error, swapped.duplicated, swapped.missing) == (False, 0, False, True)


def test_detector_metrics_score_images_against_their_captions():
    seeds = [scenes.EVAL_FIRST_SEED + i for i in range(6)]
    images = [Image.fromarray(scenes.render(scenes.scene(s))) for s in seeds]
    captions = [scenes.scene(s).caption for s in seeds]
    shifted = captions[1:] + captions[:1]
    expected = [Reading(scenes.kinds_of(w), scenes.scene(s).kinds) for w, s in zip(shifted, seeds)]
    for name, reading in (("scene_composition", "correct"), ("scene_count_error", "count_error"),
                          ("scene_duplication", "duplicated"), ("scene_missing", "missing")):
        metric = build_metric(name)
        metric.update(images, captions)
        assert metric.compute() == (1.0 if name == "scene_composition" else 0.0)
        metric.reset()
        metric.update(images, shifted)
        assert metric.compute() == pytest.approx(np.mean([float(getattr(e, reading)) for e in expected]), abs=1e-12)
    with pytest.raises(ValueError, match="not a scenes caption"):
        build_metric("scene_composition").update(images[:1], ["a handwritten digit seven"])


# --- the model: SDXL's layout, training, loading ----------------------------------------------------------

def test_unet_has_sdxls_layout_and_majority_targets():
    from crdiff.miniature.scenes_train import TrainConfig, build_unet

    unet = build_unet(TrainConfig())
    depths = [[len(a.transformer_blocks) for a in getattr(b, "attentions", [])] for b in unet.down_blocks]
    assert depths[0] == [] and depths[1] == [2, 2] and depths[2] == [4, 4]  # none at the highest, rising
    assert [len(a.transformer_blocks) for a in unet.mid_block.attentions] == [4]
    total = sum(p.numel() for p in unet.parameters())
    targets = sum(p.numel() for n, p in unet.named_parameters() if ".attn1." in n or ".ff." in n)
    assert targets / total >= 0.5
    assert unet.config.sample_size * 4 == scenes.SIZE and unet.config.sample_size >= 16  # latent 16x16 at 64x64


def test_missing_bundled_scenes_model_names_the_training_script(monkeypatch, tmp_path, capsys):
    from crdiff import load_pipeline

    monkeypatch.setattr(scenes, "PIPELINE_DIR", tmp_path / "nothing")
    with pytest.raises(ModelUnavailableError, match="train_scenes"):
        load_pipeline("scenes")

    # the failure-first script as documented: one line naming the fix, no traceback, nothing written
    import runpy

    monkeypatch.setattr(sys, "argv", ["scenes_failure.py", "--prompts", "2", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "scripts" / "scenes_failure.py"), run_name="__main__")
    assert stop.value.code == 1 and not (tmp_path / "out").exists()
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "train_scenes.py" in said and "Traceback" not in said


def _train(tmp_path, *args, env=ENV):
    done = subprocess.run(
        [sys.executable, "scripts/train_scenes.py", "--encoder-steps", "2", "--vae-steps", "2", "--unet-steps", "4",
         "--batch-size", "4", "--vae-batch-size", "2", "--checkpoint-every", "2", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _run(tmp_path, letter: str, env=ENV):
    """A tiny training run into tmp_path/<letter>, its report (by default <out>/training.json) copied to
    tmp_path/<letter>.json."""
    out = _train(tmp_path, "--out", str(tmp_path / letter), "--work", str(tmp_path / f"w{letter}"), env=env)
    (tmp_path / f"{letter}.json").write_bytes((tmp_path / letter / "training.json").read_bytes())
    return out


def _check(tmp_path, rebuilt: str, against: str, *extra):
    return subprocess.run(
        [sys.executable, "scripts/scenes_rebuild.py", "--rebuilt", str(tmp_path / rebuilt), "--report",
         str(tmp_path / f"{rebuilt}.json"), "--against", str(tmp_path / against), "--against-report",
         str(tmp_path / f"{against}.json"), *extra], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_training_resumes_to_the_same_weights_and_the_model_loads_and_scores(tmp_path):
    """The documented command, twice: once straight through, once stopped after 1 UNet step and run again."""
    from crdiff import load_pipeline

    straight = ["--out", str(tmp_path / "a"), "--work", str(tmp_path / "wa"), "--report", str(tmp_path / "a.json")]
    _train(tmp_path, *straight)
    split = ["--out", str(tmp_path / "b"), "--work", str(tmp_path / "wb"), "--report", str(tmp_path / "b.json")]
    assert '"finished": false' in _train(tmp_path, *split, "--stop-after", "1")
    assert not (tmp_path / "b").exists()
    _train(tmp_path, *split)
    a, b = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    parts = {name.split("/")[-2] if "/" in name else name for name in a["sha256"]}
    assert parts == {"unet", "vae", "text_encoder", "scene-encoder.safetensors"} and a["sha256"] == b["sha256"]
    assert sum("unet/" in name for name in a["sha256"]) == 5  # 4 shards of <= 15 MB and their index
    for name in (n for n in a["sha256"] if n.endswith(".safetensors")):
        wa, wb = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # the rebuild check says so, drawing no image
    done = _check(tmp_path, "b", "a", "--out", str(tmp_path / "check"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bit for bit" in (tmp_path / "check" / "rebuild.md").read_text()
    assert not (tmp_path / "check" / "rebuild.csv").exists()

    pipe = load_pipeline(str(tmp_path / "a" / "scenes-t2i"))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    prompt = scenes.prompts(1)[0]
    image = pipe(prompt, height=24, width=32, num_inference_steps=2, guidance_scale=3.0,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 24)
    metric = build_metric("scene_count_error")
    metric.update([image], [prompt])
    assert metric.compute() >= 0

    # the harness, as the README shows it, on this model in place of the shipped one
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "crdiff.run", "model=scenes", f"model.source={tmp_path / 'a' / 'scenes-t2i'}",
         "prompts=scenes", "prompts.limit=2", "metrics=scenes", "methods=[dense]", "sampler.steps=2",
         "resolutions.unseen=[24x32]", f"output_dir={out}"], cwd=ROOT, env=ENV, capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(p.read_text()) for p in (out / "results").glob("*.json")]
    assert sorted(r["resolution"] for r in rows) == ["24x32", "64x64"]
    assert all(set(r["metrics"]) == {"scene_fd", "scene_composition", "scene_count_error", "scene_duplication",
                                     "scene_missing"} for r in rows)

    # the failure-first measurement, on the run's last checkpoint
    study = tmp_path / "study"
    done = subprocess.run(
        [sys.executable, "scripts/scenes_failure.py", "--work", str(tmp_path / "wb"), "--prompts", "3",
         "--sizes", "64x64", "24x32", "--steps", "2", "--detector-scenes", "5", "--out", str(study)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with (study / "failure.csv").open() as f:
        assert [(r["size"], r["index"]) for r in csv.DictReader(f)] == [
            ("64x64", "0"), ("64x64", "1"), ("64x64", "2"), ("24x32", "0"), ("24x32", "1"), ("24x32", "2")]
    report = (study / "failure.md").read_text()
    assert "UNet step 4" in report and "after the model's VAE" in report and (study / "grid_failure.png").is_file()


# Another CPU, simulated: torch's ATen kernels without vector instructions, oneDNN capped at SSE4.1 and MKL in
# its compatible mode round differently from this machine's defaults, as another machine's vector units do.
OTHER_CPU = {**ENV, "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}


@pytest.mark.slow
@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT", reason="this CPU has no vector "
                    "instructions for torch to give up, so another CPU cannot be simulated here")
def test_a_rebuild_on_another_cpu_differs_and_the_check_compares_the_models(tmp_path):
    """The same recipe on another CPU trains other weights; the check says how far apart, draws the same
    prompts and seeds with both and reads them. A rebuild of another recipe is refused before any work."""
    _run(tmp_path, "a")
    _run(tmp_path, "c", env=OTHER_CPU)
    a, c = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "c.json").read_text())
    assert a["config"] == c["config"] and a["sha256"] != c["sha256"] and a["machine"] != c["machine"]

    out = tmp_path / "check"
    done = _check(tmp_path, "c", "a", "--prompts", "2", "--sizes", "24x32", "--steps", "2", "--batch-size", "2",
                  "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "rebuild.md").read_text()
    apart = [(int(e), int(n), float(d)) for e, n, d in re.findall(r"(\d+) / (\d+) tensors equal, relative L2 (\S+) \|",
                                                                  report)]
    assert apart and any(e < n and d > 0 for e, n, d in apart)
    assert [line.split("|")[2].strip() for line in report.splitlines() if line.startswith("| 24x32 |")] == [
        "composition", "count_error", "duplication", "missing"]
    with (out / "rebuild.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["model"], r["index"]) for r in rows) == [
        ("rebuilt", "0"), ("rebuilt", "1"), ("shipped", "0"), ("shipped", "1")]
    pairs = {}
    for r in rows:  # the two models drew each image from the same prompt and seed
        pairs.setdefault(r["index"], set()).add((r["prompt"], r["seed"]))
    assert all(len(p) == 1 for p in pairs.values())

    other = json.loads((tmp_path / "c.json").read_text())
    other["config"]["seed"] = 1
    (tmp_path / "d.json").write_text(json.dumps(other))
    (tmp_path / "d").symlink_to(tmp_path / "c")
    done = _check(tmp_path, "d", "a", "--out", str(tmp_path / "refused"))
    assert done.returncode == 2 and "recipe differs from the shipped one's in seed" in done.stderr
    assert not (tmp_path / "refused").exists()
    # a folder whose files are not its report's run: refused, not compared
    (tmp_path / "c.json").write_text(json.dumps({**c, "sha256": a["sha256"]}))
    done = _check(tmp_path, "c", "a", "--out", str(tmp_path / "refused"))
    assert done.returncode == 2 and "not the file its report records" in done.stderr
    assert not (tmp_path / "refused").exists()


def test_vae_ceiling_reads_the_scenes_through_the_vae():
    """An identity VAE keeps every scene (ceiling 1); one that decodes a blank page keeps none (ceiling 0)."""
    from types import SimpleNamespace

    from crdiff.miniature.scenes_study import vae_ceiling

    class Identity:
        dtype = torch.float32

        def encode(self, x):
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

        def decode(self, z):
            return SimpleNamespace(sample=z)

    class Blank(Identity):
        def decode(self, z):
            return SimpleNamespace(sample=torch.ones_like(z))

    assert vae_ceiling(Identity(), Resolution(24, 32), 20) == 1.0
    assert vae_ceiling(Blank(), Resolution(24, 32), 20) == 0.0


def test_bootstrap_interval_and_table():
    from crdiff.miniature.scenes_study import Row, interval, table

    assert interval(np.full(10, 0.5)) == (0.5, 0.5, 0.5)
    mean, lo, hi = interval(np.array([0.0, 1.0] * 50))
    assert mean == 0.5 and 0.39 < lo < 0.5 < hi < 0.61  # ~ +-1.96 * 0.05
    rows = [Row(i, "32x32", i, "a red circle", "", 0, 1, 0, 1) for i in range(4)]
    assert "| 32x32 | 4 | 0.000 [0.000, 0.000] | 1.000 [1.000, 1.000] | 0.000 [0.000, 0.000] | 1.000 [1.000, 1.000] |" \
        in table(rows, [Resolution(32, 32)])


def test_scenes_prompt_set_pairs_each_caption_with_its_real_scene():
    from crdiff.experiment.prompts import load_prompts

    three, five = load_prompts("scenes", limit=3), load_prompts("scenes", limit=5)
    assert list(three.prompts) == scenes.prompts(3) and three.ids == ("scenes_0", "scenes_1", "scenes_2")
    assert three.source_digest() == five.source_digest()  # cut from the same 2,000
    for prompt, path in zip(three.prompts, three.image_paths):
        assert kinds(np.asarray(Image.open(path).convert("RGB"))) == scenes.kinds_of(prompt)
    with pytest.raises(ValueError, match="limit"):
        load_prompts("scenes", limit=0)


def test_the_shipped_weights_are_the_recorded_training_run():
    """crdiff/assets holds exactly the files `scripts/train_scenes.py` wrote in the run its report records."""
    import hashlib

    report = json.loads((ROOT / "results" / "miniature_scenes" / "training.json").read_text())
    assets = scenes.PIPELINE_DIR.parent
    shipped = {str(p.relative_to(assets)) for p in [*scenes.PIPELINE_DIR.glob("*/*.safetensors"),
                                                     *scenes.PIPELINE_DIR.glob("*/*.index.json"), scenes.ENCODER_FILE]}
    assert shipped == set(report["sha256"])
    for name, digest in report["sha256"].items():
        assert hashlib.sha256((assets / name).read_bytes()).hexdigest() == digest, name
    assert sum((assets / name).stat().st_size for name in shipped) <= 80e6  # tens of MB
    assert report["finished"] and report["config"]["unet_steps"] == 6000 and report["config"]["min_snr_gamma"] == 5.0


def test_the_detector_reads_an_image_once_for_the_four_metrics(monkeypatch):
    """The four detector metrics score the same images: one reading each, shared, equal to a fresh one."""
    from crdiff.metrics import scenes as metrics
    from crdiff.miniature import scenes, scenes_detect

    calls = []
    real_read = scenes_detect.read
    monkeypatch.setattr(scenes_detect, "read", lambda px, cap: calls.append(cap) or real_read(px, cap))
    monkeypatch.setattr(metrics, "_READINGS", {})
    images = [Image.fromarray(scenes.render(scenes.scene(scenes.EVAL_FIRST_SEED + i), 32, 32)) for i in range(3)]
    captions = scenes.prompts(3)
    found = {name: metrics.CLASSES[name]().score(images, captions) for name in metrics.DETECTOR_METRICS}
    assert len(calls) == 3
    fresh = [real_read(np.asarray(im.convert("RGB")), c) for im, c in zip(images, captions)]
    assert found["scene_composition"].tolist() == [float(r.correct) for r in fresh]
    assert found["scene_missing"].tolist() == [float(r.missing) for r in fresh]
