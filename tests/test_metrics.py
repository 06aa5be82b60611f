"""Metrics against independent computations; invariance to batch size and rank count."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from scipy import linalg

from crdiff.metrics import MetricUnavailableError, build_metric, preprocess
from crdiff.metrics.fid import to_uint8
from crdiff.metrics.tiny import TinyFeatures, tiny_open_clip
import hubcache

PROMPTS = ["a cat", "a red bus", "two dogs", "a lighthouse", "a bowl of fruit", "a horse", "pasta", "a city"]


def random_images(n, seed, size=(40, 72)):
    rng = np.random.default_rng(seed)
    return [preprocess(Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))) for _ in range(n)]


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def poly_mmd(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m = x.shape[0]
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def test_preprocessing_modes():
    image = Image.new("RGB", (72, 40))
    assert preprocess(image).size == (256, 256) and preprocess(image, "center_crop_lanczos256").size == (256, 256)
    with pytest.raises(ValueError, match="unknown preprocessing 'x'; valid choices"):
        preprocess(image, "x")


def test_fid_and_kid_equal_independent_computation():
    real, fake = random_images(40, 0), random_images(40, 1, (64, 64))
    features = TinyFeatures()
    with torch.no_grad():
        fr, ff = features(to_uint8(real)).numpy(), features(to_uint8(fake)).numpy()
    fid = build_metric("fid", tiny=True)
    kid = build_metric("kid", tiny=True, subsets=1, subset_size=40)  # one subset = all features
    for m in (fid, kid):
        m.update_reference(real)
        m.update(fake, PROMPTS * 5)
    assert fid.compute() == pytest.approx(frechet(fr, ff), rel=1e-6)
    assert kid.compute() == pytest.approx(poly_mmd(fr, ff), rel=1e-6)
    same = build_metric("fid", tiny=True)
    same.update_reference(real)
    same.update(real, PROMPTS * 5)
    assert abs(same.compute()) < 1e-6


def test_reference_cache_round_trip(tmp_path):
    real, fake = random_images(12, 0), random_images(12, 1)
    for name in ("fid", "kid"):
        first = build_metric(name, tiny=True, **({"subset_size": 12} if name == "kid" else {}))
        first.update_reference(real)
        path = first.cache_file(tmp_path, "coco5k-digest")
        first.save_reference(path)
        first.update(fake, PROMPTS[:6] * 2)
        second = build_metric(name, tiny=True, **({"subset_size": 12} if name == "kid" else {}))
        second.load_reference(path)
        second.update(fake, PROMPTS[:6] * 2)
        assert second.compute() == pytest.approx(first.compute(), rel=1e-9, abs=1e-12)


def test_clip_score_is_raw_cosine():
    images = random_images(4, 2)
    model, preprocess_fn, tokenizer = tiny_open_clip()
    with torch.no_grad():
        a = model.encode_image(torch.stack([preprocess_fn(im) for im in images]))
        b = model.encode_text(tokenizer(PROMPTS[:4]))
        want = ((a / a.norm(dim=-1, keepdim=True)) * (b / b.norm(dim=-1, keepdim=True))).sum(-1).mean()
    metric = build_metric("clip", tiny=True)
    metric.update(images, PROMPTS[:4])
    assert metric.compute() == pytest.approx(float(want), rel=1e-5)
    assert metric.compute() < 0  # not clamped at 0 like torchmetrics' CLIPScore


@pytest.mark.parametrize("name", ["clip", "pickscore", "aesthetic", "fid"])
def test_batch_size_invariance(name):
    images = random_images(8, 3)
    values = []
    for batch in (1, 3, 8):
        metric = build_metric(name, tiny=True)
        if metric.needs_reference:
            metric.update_reference(random_images(8, 4))
        for s in range(0, 8, batch):
            metric.update(images[s : s + batch], PROMPTS[s : s + batch])
        values.append(metric.compute())
    # float32 models: batch composition changes rounding only (~1e-8 relative)
    assert values[0] == pytest.approx(values[1], rel=1e-6, abs=1e-6) == pytest.approx(values[2], rel=1e-6, abs=1e-6)


def _rank(rank, world, init, results):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    images = random_images(8, 3)
    for name in ("clip", "pickscore", "aesthetic", "fid"):
        metric = build_metric(name, tiny=True)
        if metric.needs_reference:
            metric.update_reference(random_images(8, 4)[rank::world])
        metric.update(images[rank::world], PROMPTS[rank::world])
        results[f"{name}{rank}"] = metric.compute()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_rank_count_invariance(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(2, f"file://{tmp_path}/init", results), nprocs=2)
    for name in ("clip", "pickscore", "aesthetic", "fid"):
        single = build_metric(name, tiny=True)
        if single.needs_reference:
            single.update_reference(random_images(8, 4))
        single.update(random_images(8, 3), PROMPTS)
        assert results[f"{name}0"] == results[f"{name}1"] == pytest.approx(single.compute(), rel=1e-6, abs=1e-6)


def test_missing_weights_offline_name_the_prefetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    hubcache.use(monkeypatch, tmp_path / "hub")
    for name in ("pickscore", "aesthetic", "clip"):
        with pytest.raises(MetricUnavailableError, match="scripts/prefetch_weights.py"):
            build_metric(name)


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric 'lpips'; valid choices"):
        build_metric("lpips")


def test_prefetch_command_runs_for_an_offline_experiment(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CRDIFF_CACHE": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "scripts/prefetch_weights.py", "experiment=smoke"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # a tiny model and tiny metric stand-ins are built from config: nothing to download
    assert done.stdout.strip().splitlines()[-1] == "prefetch: 0 B fetched for 0 pieces (0 failed)"


def test_the_paper_configuration_builds_clip_with_quickgelu(monkeypatch):
    """The paper's metrics config builds CLIP through the real path; the download is simulated by
    building the same architecture without weights on the meta device (no memory, no network)."""
    import open_clip
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from crdiff.experiment.config import MetricsConfig
    from crdiff.experiment.scoring import metric_options

    real, calls = open_clip.create_model_and_transforms, []

    def without_download(arch, pretrained=None, **kwargs):
        calls.append((arch, pretrained))
        return real(arch, pretrained=None, **{**kwargs, "device": "meta"})

    monkeypatch.setattr(open_clip, "create_model_and_transforms", without_download)
    root = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(str(root), version_base="1.3"):
        cfg = MetricsConfig(**OmegaConf.to_container(compose("config", overrides=["metrics=paper"]).metrics))
    metric = build_metric("clip", device="meta", **metric_options(cfg, "clip"))
    activations = {type(m).__name__ for m in metric.model.modules() if "GELU" in type(m).__name__}
    assert calls == [("ViT-L-14", "openai")] and activations == {"QuickGELU"}
    gelu = real("ViT-L-14", pretrained=None, device="meta")[0]  # what open_clip builds when not told
    assert {type(m).__name__ for m in gelu.modules() if "GELU" in type(m).__name__} == {"GELU"}


def test_the_reference_cache_is_used_only_when_every_rank_sees_it(tmp_path, monkeypatch):
    """Node-local caches may differ: a rank that found no cache recomputes its share, so the others must
    too (else the synced statistics count the reference twice and the ranks' collectives differ)."""
    from crdiff.experiment import scoring
    from crdiff.experiment.config import MetricsConfig
    from crdiff.experiment.prompts import load_prompts
    from test_run import reference_prompts

    monkeypatch.setenv("CRDIFF_CACHE", str(tmp_path / "cache"))
    prompts = load_prompts("csv", str(reference_prompts(tmp_path)), None, [])
    cfg = MetricsConfig(names=["fid"], tiny=True)
    metric = build_metric("fid", tiny=True)
    cache = metric.cache_file(scoring.cache_dir() / "reference", f"{prompts.reference_digest()}-{cfg.preprocessing}")
    stale = build_metric("fid", tiny=True)  # a cache of other pictures under the same name
    stale.update_reference(random_images(4, 7))
    stale.save_reference(cache)
    scoring.load_reference(metric, cfg, prompts, [0, 1, 2, 3], True)  # one process: the cache it sees
    cached = metric.reference().clone()
    assert torch.equal(cached, stale.reference())
    metric.reset()
    scoring.load_reference(metric, cfg, prompts, [0, 1, 2, 3], True, everywhere=lambda found: False)
    assert metric.pending_cache == cache and not torch.equal(metric.reference(), cached)


def _kid_rank(rank, world, init, results):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    results[(world, rank)] = _kid_of_share(rank, world)
    torch.distributed.destroy_process_group()


def _kid_of_share(rank, world):
    """KID with random subsets smaller than the sets (5 subsets of 6 of 12 images), this rank's share."""
    real, fake, mine = random_images(12, 4), random_images(12, 3), list(range(rank, 12, world))
    kid = build_metric("kid", tiny=True, subsets=5, subset_size=6)
    kid.update_reference([real[i] for i in mine], mine)
    kid.update([fake[i] for i in mine], [PROMPTS[i % 8] for i in mine], mine)
    return kid.compute()


@pytest.mark.slow
def test_kid_does_not_depend_on_the_rank_count(tmp_path):
    """KID's subsets are drawn from the features in image order, not in the order ranks gathered them."""
    results = mp.Manager().dict()
    for world in (2, 4):
        mp.spawn(_kid_rank, args=(world, f"file://{tmp_path}/init{world}", results), nprocs=world)
    single = _kid_of_share(0, 1)
    assert all(v == pytest.approx(single, abs=1e-6) for v in results.values()) and len(results) == 6
    shuffled = build_metric("kid", tiny=True, subsets=5, subset_size=6)  # updates in another order: same value
    real, fake, order = random_images(12, 4), random_images(12, 3), [5, 0, 11, 3, 1, 2, 4, 10, 9, 6, 8, 7]
    shuffled.update_reference([real[i] for i in order], order)
    shuffled.update([fake[i] for i in order], [PROMPTS[i % 8] for i in order], order)
    assert shuffled.compute() == pytest.approx(single, abs=1e-6)


def test_per_image_values_come_back_in_image_order():
    images = random_images(6, 5)
    metric = build_metric("clip", tiny=True)
    metric.update(images[3:], PROMPTS[3:6], [3, 4, 5])
    metric.update(images[:3], PROMPTS[:3], [0, 1, 2])
    index, values = metric.per_image()
    whole = build_metric("clip", tiny=True)
    whole.update(images, PROMPTS[:6])
    assert index.tolist() == list(range(6)) and torch.allclose(values, whole.per_image()[1], atol=1e-6)
    assert metric.compute() == pytest.approx(float(values.mean()), abs=1e-12)


def test_intervals_and_mcnemar_against_scipy():
    from scipy import stats

    from crdiff.metrics import intervals

    values = np.random.default_rng(0).normal(0.3, 0.05, 200)
    low, high = intervals.mean_interval(values, resamples=2000, seed=1)
    assert low < values.mean() < high and high - low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(200), rel=0.15)
    assert intervals.mean_interval(values, 2000, 1) == [low, high]  # seeded: the same interval every time
    assert intervals.mean_interval(np.stack([values, values])) == intervals.mean_interval(values)
    assert intervals.mean_interval(values[:1]) is None and intervals.mean_interval(values, resamples=0) is None
    # a general statistic over prompt indices (how FID is resampled) agrees with the vectorised mean
    assert intervals.interval(lambda idx: values[idx].mean(), 200, 300, 1) == pytest.approx(
        intervals.mean_interval(values, 300, 1), abs=1e-12)
    dense, method = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 0]), np.array([1, 0, 1, 1, 1, 1, 1, 0, 1, 1])
    test = intervals.mcnemar(dense, method)
    assert (test["only_dense"], test["only_method"]) == (1, 5)
    assert test["p"] == pytest.approx(stats.binomtest(5, 6, 0.5).pvalue) == pytest.approx(0.21875)
    assert intervals.mcnemar(dense, dense)["p"] == 1.0


def test_jackknife_of_a_mean_is_the_t_interval_and_groups_are_seeded_and_even():
    """Delete-one (one group per prompt) jackknife of a mean: se = s / sqrt(n) exactly, so the interval
    is the textbook t interval; groups are a seeded split of every prompt, as even as possible."""
    from scipy import stats

    from crdiff.metrics import intervals

    values = np.random.default_rng(3).normal(2.0, 0.7, 30)
    low, high = intervals.jackknife(lambda idx: values[idx].mean(), 30, count=30)
    half = stats.t.ppf(0.975, 29) * values.std(ddof=1) / np.sqrt(30)
    assert low == pytest.approx(values.mean() - half, abs=1e-12) and high == pytest.approx(values.mean() + half, abs=1e-12)
    parts = intervals.groups(30, 4, seed=5)
    assert sorted(np.concatenate(parts).tolist()) == list(range(30)) and [len(g) for g in parts] == [8, 8, 7, 7]
    assert all(np.array_equal(a, b) for a, b in zip(parts, intervals.groups(30, 4, seed=5)))
    assert len(intervals.groups(3, 20)) == 3  # at most one group per prompt
    assert intervals.jackknife(lambda idx: 0.0, 1) is None and intervals.jackknife(lambda idx: 0.0, 10, 0) is None
    # two images: each leave-out holds one, whose covariance is undefined: no interval, not [nan, nan]
    import torch

    from crdiff.metrics.fid import frechet

    real, two = torch.randn(50, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    assert intervals.jackknife(lambda idx: frechet(real, two[torch.as_tensor(idx)]), 2) is None


def test_the_coverage_and_floor_scripts_run_as_documented(tmp_path):
    """`scripts/interval_coverage.py` and `scripts/scene_fd_floor.py` (docs/protocol.md, results/miniature_scenes),
    shortened: their tables come out with a row per setting."""
    import subprocess
    import sys

    from test_run import ENV, ROOT

    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], cwd=ROOT, env=ENV, capture_output=True,  # noqa: E731
                                    text=True, timeout=300)
    done = run("scripts/interval_coverage.py", "--n", "20", "--replicates", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("| 20 |") == 2 and "jackknife (20 groups)" in done.stdout
    done = run("scripts/interval_coverage.py", "--metric", "kid", "--n", "40", "--dim", "4", "--replicates", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("| 40 |") == 2 and "subsets kept" in done.stdout and "E[KID_n]" in done.stdout
    done = run("scripts/scene_fd_floor.py", "--n", "20", "--sizes", "32x32", "--out", tmp_path / "floor.md")
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "floor.md").read_text()
    assert "| the same scenes | 0.000 |" in table and "n other real scenes drawn at 32x32" in table


def test_a_fid_cell_interval_contains_its_value_where_the_percentile_bootstrap_did_not(tmp_path):
    """The defect of issue 21: a bootstrap resample repeats images and raises FID, so its percentile interval
    lay above the value. The jackknife cell and gain intervals are centred on the estimates."""
    import pandas as pd
    import torch

    from crdiff.metrics import intervals
    from crdiff.metrics.fid import frechet
    from crdiff.report import cells

    rng = np.random.default_rng(0)
    reference, fake = rng.normal(0, 1, (400, 8)), rng.normal(0.1, 1, (60, 8))
    other = fake + rng.normal(0, 0.3, fake.shape)  # a method's images: the same prompts and seeds, changed a little
    value = frechet(torch.from_numpy(reference), torch.from_numpy(fake))
    old = intervals.interval(lambda idx: frechet(torch.from_numpy(reference), torch.from_numpy(fake[idx])), 60, 50, 0)
    assert old[0] > value  # the old scheme's interval excludes its own value
    rows = []
    for method, features in (("dense", fake), ("crdiff", other)):
        np.save(tmp_path / f"{method}.npy", features)
        rows.append({"method": method, "seed": 0, "output_dir": str(tmp_path), "intervals": {},
                     "fid": frechet(torch.from_numpy(reference), torch.from_numpy(features)),
                     "fid_lo": old[0], "fid_hi": old[1],  # as a row scored before stored it
                     "scores": {"features": {"fid": f"{method}.npy"}, "reference": {"fid": "reference.npy"}}})
    np.save(tmp_path / "reference.npy", reference)
    table = pd.DataFrame(rows)
    dense, crdiff = table[table.method == "dense"], table[table.method == "crdiff"]
    found = cells.cell(dense, "fid")
    assert found.value == value and found.ci95[0] <= value <= found.ci95[1] and found.ci95 != old
    assert found.ci95[1] - value == pytest.approx(value - found.ci95[0]) or found.ci95[0] == 0.0
    gain = cells.gain(crdiff, dense, "fid")
    assert gain.value == pytest.approx(crdiff.fid.iloc[0] - value)
    assert gain.ci95[0] <= gain.value <= gain.ci95[1]
    # paired: the same groups left out on both sides, so a method equal to dense gains exactly 0 in every group
    same = cells.gain(dense.assign(method="crdiff"), dense, "fid")
    assert same.value == 0.0 and same.ci95 == [0.0, 0.0]


def test_per_image_values_of_one_image_keep_one_row():
    """torchmetrics squeezes a one-element result to 0-d; per-image values stay one row per image."""
    import torch

    from crdiff.metrics.base import PerImage

    scores, features = PerImage(), PerImage()
    scores.update(torch.tensor([0]), torch.tensor([0.5]))
    features.update(torch.tensor([0]), torch.zeros(1, 4))
    assert [t.shape for t in scores.compute()] == [torch.Size([1]), torch.Size([1])]
    assert [t.shape for t in features.compute()] == [torch.Size([1]), torch.Size([1, 4])]


def test_frechet_of_fewer_than_two_images_is_nan_without_calling_lapack(monkeypatch):
    """A side of one image has no covariance: NaN at once (MKL's eigensolver given NaN corrupted the heap
    in a jackknife leave-out of a two-image run), never a call into the solver."""
    import torchmetrics.image.fid as tm_fid

    from crdiff.metrics.fid import frechet

    real = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    assert frechet(real, real) == pytest.approx(0.0, abs=1e-6)
    monkeypatch.setattr(tm_fid, "_compute_fid", lambda *a: pytest.fail("the solver was called"))
    assert math.isnan(frechet(real, real[:1])) and math.isnan(frechet(real[:1], real))


def test_numbers_that_round_to_zero_print_without_a_sign():
    import pandas as pd

    from crdiff.report.tables import gains_markdown, number, with_interval

    assert number(-0.0004) == "0.000" and number(-0.0006) == "-0.001" and number(0.0) == "0.000"
    assert with_interval(-0.0001, -0.0002, 0.01) == "0.000 [0.000, 0.010]"
    gains = pd.DataFrame([{"model": "scenes", "resolution": "32x32", "metric": "scene_fd", "method": "crdiff",
                           "gain": -0.0001, "gain_lo": -0.0003, "gain_hi": 0.002, "seed_spread": float("nan"),
                           "seeds": 1, "mcnemar_p": float("nan"), "only_dense": 0, "only_method": 0}])
    assert "-0.000" not in gains_markdown(gains) and "| 0.000 | [0.000, 0.002] |" in gains_markdown(gains)


def test_kid_leave_outs_keep_their_random_subsets():
    """A KID jackknife leave-out uses the full run's random subsets less the images left out: all kept is
    the value itself, and the interval measures the images, not new subset draws (redrawing them, as
    before, widened it)."""
    from crdiff.metrics import intervals
    from crdiff.metrics.fid import kernel_distance, on_kept

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(400, 8, generator=g).double(), (torch.randn(400, 8, generator=g) + 0.2).double()

    def score(r, f, keep=None):
        return kernel_distance(r, f, subsets=20, subset_size=50, keep=keep)

    everything = np.arange(400)
    assert on_kept("kid", score, real, fake, everything) == score(real, fake)
    left = np.setdiff1d(everything, np.arange(0, 400, 20))
    assert on_kept("kid", score, real, fake, left) != score(real, fake[torch.as_tensor(left)])
    fixed = intervals.jackknife(lambda idx: on_kept("kid", score, real, fake, idx), 400)
    redrawn = intervals.jackknife(lambda idx: score(real, fake[torch.as_tensor(idx)]), 400)
    assert fixed[0] < score(real, fake) < fixed[1]
    assert fixed[1] - fixed[0] < 0.7 * (redrawn[1] - redrawn[0])
