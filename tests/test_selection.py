"""One run per table cell, per-image scores, intervals and paired gains, through the documented commands:
`python -m crdiff.run ...` (tiny runs in one process) then `python scripts/make_tables.py` as typed."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crdiff.experiment.results import write_row
from crdiff.experiment.run import execute
from test_run import ENV, ROOT, compose_run, reference_prompts


def make_tables(*args):
    env = {**ENV, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "scripts/make_tables.py", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tables_select_one_run_per_cell_with_intervals_from_per_image_scores(tmp_path):
    out = tmp_path / "out"
    common = ["experiment=smoke", "prompts=csv", f"prompts.path={reference_prompts(tmp_path)}",
              "metrics.names=[fid,clip]", "resolutions.sets=[default]", f"output_dir={out}",
              "metrics.feature_groups=4", "metrics.resamples=200"]
    execute(compose_run(*common))                        # seed set 0, k = 1.5 (smoke's)
    execute(compose_run(*common, "sampler.seed=1"))      # a second seed set of the same cells
    execute(compose_run(*common, "amplify.k=3.0", "methods=[crdiff]"))  # the same cell at another k

    rows = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    assert len(rows) == 5 and all(r["experiments"] == ["smoke"] for r in rows)
    for row in rows:  # per-image scores: one line per image, their mean is the row's value
        scores = pd.read_csv(out / row["scores"]["per_image"])
        assert list(scores.columns) == ["index", "prompt", "seed", "clip"] and len(scores) == 4
        assert scores.seed.tolist() == [row["seed"] + i for i in range(4)]
        assert scores["clip"].mean() == pytest.approx(row["metrics"]["clip"], abs=1e-12)
        features = np.load(out / row["scores"]["features"]["fid"])
        assert features.shape == (4, 64) and set(row["ci95"]) == {"fid", "clip"}
        low, high = row["ci95"]["clip"]
        assert low <= row["metrics"]["clip"] <= high

    done = make_tables("--results", out, "--out", tmp_path / "tables")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "experiment smoke, k=1.5" in done.stdout and "1 other row(s)" in done.stdout  # the k = 3 row: named
    table = (tmp_path / "tables" / "table_B.md").read_text()
    assert re.search(r"\d \[-?\d+\.\d+, -?\d+\.\d+\] \(seeds ±\d", table) and "95% paired interval" in table
    gains = pd.read_csv(tmp_path / "tables" / "table_B_gains.csv")
    assert set(gains.metric) == {"fid", "clip"} and (gains.seeds == 2).all() and gains.gain_lo.notna().all()
    assert (gains.gain_lo <= gains.gain).all() and (gains.gain <= gains.gain_hi).all()

    k3 = make_tables("--results", out, "--out", tmp_path / "k3", "k=3.0")  # the other run, by a filter
    assert k3.returncode == 0, k3.stderr[-3000:]
    assert "k=3.0" in k3.stdout and (tmp_path / "k3" / "table_B.md").exists()

    execute(compose_run(*common, "pruning.ratios.down=0.5", "methods=[crdiff]"))  # a second run at k = 1.5
    both = make_tables("--results", out, "--out", tmp_path / "both")
    assert both.returncode == 2 and "more than one run" in both.stderr and "ratio_down" in both.stderr
    assert both.stderr.count("key ") == 2


def test_missing_cells_print_as_missing_and_dense_only_rows_do_not_fail(tmp_path):
    """With dense rows only (CR-Diff still running) the tables print the CR-Diff cells as missing."""
    for res in ("400x560", "768x768"):
        write_row(tmp_path / "results", f"dense-{res}", {
            "experiments": ["table_a"], "model": "sd15", "method": "dense", "setting": "unseen", "resolution": res,
            "height": int(res.split("x")[0]), "width": int(res.split("x")[1]), "k": None, "seed": 42, "steps": 30,
            "metrics": {"fid": 40.0, "clip": 0.31}, "ci95": {"fid": [38.0, 43.0], "clip": [0.30, 0.32]}})
    done = make_tables("--results", tmp_path)  # no --out: the tables go under the results, not ./results/tables
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(tmp_path / "tables" / "table_A.md") in done.stdout.splitlines()
    table = (tmp_path / "tables" / "table_A.md").read_text()
    assert "| sd15 | 400x560 | 40.000 [38.000, 43.000] | missing | 0.310 [0.300, 0.320] | missing |" in table
    comparison = pd.read_csv(tmp_path / "tables" / "paper_comparison.csv")
    assert comparison.ours_gain.isna().all() and {"ours_gain_lo", "ours_gain_hi"} <= set(comparison.columns)
    calibration = pd.read_csv(tmp_path / "tables" / "dense_calibration.csv")
    fid = calibration[(calibration.metric == "fid") & (calibration.resolution == "400x560")].iloc[0]
    assert fid.paper == 39.047 and fid.within and fid.tolerance == pytest.approx(3.9047)
    clip768 = calibration[(calibration.metric == "clip") & (calibration.resolution == "768x768")].iloc[0]
    assert clip768.within and not (tmp_path / "tables" / "table_A_gains.csv").exists()


def test_dense_far_from_the_paper_is_flagged_before_any_gain(tmp_path):
    write_row(tmp_path / "results", "dense", {
        "experiments": ["table_b"], "model": "sdxl", "method": "dense", "setting": "default",
        "resolution": "1024x1024", "height": 1024, "width": 1024, "k": None, "seed": 42, "metrics": {"fid": 60.0}})
    done = make_tables("--results", tmp_path, "--out", tmp_path / "tables")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: dense sdxl 1024x1024 fid is 60.000, the paper's 33.186 (outside ±3.319)" in done.stderr


@pytest.mark.slow
def test_rows_scored_before_per_image_scores_are_rescored_by_rerunning_the_command(tmp_path):
    out = tmp_path / "out"
    args = ["experiment=smoke", "metrics.names=[clip]", "resolutions.sets=[default]", "methods=[dense]",
            f"output_dir={out}"]
    first = execute(compose_run(*args))
    (path,) = (out / "results").glob("*.json")
    row = json.loads(path.read_text())
    old = {k: v for k, v in row.items() if k not in ("ci95", "scores", "intervals")}  # a row as written before
    path.write_text(json.dumps(old))
    for file in (out / "scores").iterdir():
        file.unlink()
    again = execute(compose_run(*args))
    assert again["generated"] == 0  # the kept images, scored again
    row = json.loads(path.read_text())
    assert (out / row["scores"]["per_image"]).is_file() and row["ci95"]["clip"] is not None
    assert row["metrics"]["clip"] == pytest.approx(first["table"]["clip"][0], abs=1e-12)


def test_fid_intervals_of_rows_scored_with_the_bootstrap_are_redone_from_kept_features(tmp_path):
    """A row whose FID interval came from the percentile bootstrap (before the jackknife) gets the jackknife
    interval from its kept features when its command runs again: no image drawn, no feature recomputed."""
    from crdiff.metrics import intervals

    out = tmp_path / "out"
    args = ["experiment=smoke", "prompts=csv", f"prompts.path={reference_prompts(tmp_path)}", "metrics.names=[fid]",
            "resolutions.sets=[default]", "methods=[dense]", "metrics.feature_groups=4", f"output_dir={out}"]
    execute(compose_run(*args))
    (path,) = (out / "results").glob("*.json")
    row = json.loads(path.read_text())
    assert row["intervals"]["feature_method"] == intervals.FEATURE_METHOD
    fresh = row["ci95"]["fid"]
    assert fresh[0] <= row["metrics"]["fid"] <= fresh[1]
    features = (out / row["scores"]["features"]["fid"]).stat().st_mtime_ns
    old = {**row, "ci95": {"fid": [1e6, 2e6]}, "intervals": {k: v for k, v in row["intervals"].items()
                                                             if k not in ("feature_method", "feature_groups")}}
    path.write_text(json.dumps(old))
    again = execute(compose_run(*args))
    assert again["generated"] == 0
    row = json.loads(path.read_text())
    assert row["ci95"]["fid"] == pytest.approx(fresh, abs=1e-9) and row["intervals"]["feature_method"]
    assert (out / row["scores"]["features"]["fid"]).stat().st_mtime_ns == features


def test_two_rows_of_one_seed_set_are_two_runs_not_two_replicates():
    """Rows equal in every recorded field and seed (they differ in something no row records, e.g.
    baselines.freeu) are refused, never averaged as seed sets; other seeds of one run still aggregate."""
    import pandas as pd

    from crdiff.report.select import COMPARABLE, AmbiguousCells, select

    base = {"model": "sdxl", "setting": "unseen", "resolution": "512x512", "method": "freeu", "key": "k",
            "experiments": ["baselines"], **{f: "same" for f in COMPARABLE}}
    replicates = pd.DataFrame([{**base, "seed": 42}, {**base, "seed": 1042}])
    assert len(select(replicates)) == 2
    clash = pd.DataFrame([{**base, "seed": 42}, {**base, "seed": 42}])
    with pytest.raises(AmbiguousCells):
        select(clash)


def accuracy_run(folder: Path, method: str, seeds: tuple[int, ...], n: int, right) -> pd.DataFrame:
    """Rows of one run as load_table gives them, one per seed set, each with its per-image file: prompt i
    is digit i mod 5, image i of seed set s draws from seed s + i, `right(digit, seed)` its outcome."""
    rows = []
    for s in seeds:
        scores = pd.DataFrame({"index": range(n), "prompt": [f"digit {i % 5}" for i in range(n)],
                               "seed": [s + i for i in range(n)]})
        scores["digit_accuracy"] = [float(right(i % 5, s + i)) for i in range(n)]
        name = f"scores/{method}-{s}.csv"
        (folder / "scores").mkdir(exist_ok=True)
        scores.to_csv(folder / name, index=False)
        rows.append({"method": method, "seed": s, "prompts_digest": "p", "output_dir": str(folder),
                     "scores": {"per_image": name}, "digit_accuracy": scores.digit_accuracy.mean()})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seeds,distinct", [((0, 10), 20), ((0, 5), 15)])
def test_mcnemar_pools_the_distinct_images_of_every_seed_set(tmp_path, seeds, distinct):
    """Seed sets 0 and 10 over 10 prompts draw 20 distinct images, pooled; seed sets 0 and 5 draw
    (digit d, seed 5..9) twice: the same 5 images, counted once (15 pairs, not 20)."""
    from scipy import stats

    from crdiff.report.cells import gain

    dense = accuracy_run(tmp_path, "dense", seeds, 10, lambda d, seed: seed % 2 == 0)
    method = accuracy_run(tmp_path, "crdiff", seeds, 10, lambda d, seed: seed % 3 == 0)
    images = {(i % 5, s + i) for s in seeds for i in range(10)}
    assert len(images) == distinct
    only_dense = sum(seed % 2 == 0 and seed % 3 != 0 for _, seed in images)
    only_method = sum(seed % 2 != 0 and seed % 3 == 0 for _, seed in images)
    test = gain(method, dense, "digit_accuracy", resamples=50).mcnemar
    assert (test["only_dense"], test["only_method"]) == (only_dense, only_method)
    assert test["p"] == stats.binomtest(only_method, only_dense + only_method, 0.5).pvalue


def test_a_methods_own_k_steps_and_guidance_keep_its_rows_in_its_experiments_table():
    """bwp (k = 1) and the controls (twice the steps, another guidance) are rows of experiment=miniature_baselines
    at the values they set themselves: the experiment file's run-wide k / steps / guidance must not drop them,
    while a row of the same cell at another k (a second run) is still left out."""
    from crdiff.report.select import report_rows

    base = dict(model="digits", setting="unseen", resolution="24x24", experiments=["miniature_baselines"], seed=0,
                steps=20, guidance=3.0)
    rows = pd.DataFrame([
        {**base, "method": "dense", "k": None},
        {**base, "method": "crdiff", "k": 1.5},
        {**base, "method": "crdiff", "k": 3.0},  # another run of the cell: not this experiment file's
        {**base, "method": "bwp", "k": 1.0},
        {**base, "method": "dense_steps2x", "k": None, "steps": 40},
        {**base, "method": "dense_cfg4.5", "k": None, "guidance": 4.5},
    ])
    chosen, note = report_rows(rows, "miniature_baselines")
    assert sorted(zip(chosen.method, chosen.k.fillna(0))) == [
        ("bwp", 1.0), ("crdiff", 1.5), ("dense", 0), ("dense_cfg4.5", 0), ("dense_steps2x", 0)]
    assert "bwp: k=1.0" in note and "dense_steps2x: steps=40" in note and "1 other row(s)" in note
    other = rows.assign(negative_prompt=None)  # the file states none: a row drawn with one is another run
    other.loc[len(other)] = {**base, "method": "bwp", "k": 1.0, "negative_prompt": "blurry"}
    kept, _ = report_rows(other, "miniature_baselines")
    assert len(kept) == 5 and kept.negative_prompt.isna().all()
    forced, _ = report_rows(rows, "miniature_baselines", {"k": "3.0"})  # a filter still rules every method
    assert sorted(forced.method) == ["crdiff", "dense", "dense_cfg4.5", "dense_steps2x"]
