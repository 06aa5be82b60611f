"""Every experiment in conf/experiment/ end to end under tiny overrides: rows with every metric filled.

Tiny overrides: the paper's models become their tiny stand-ins (same classes, random weights), 2 prompts
(COCO-5K becomes a 2-row prompt CSV with real images beside it, for FID/KID), 2 steps, stand-in scorers
(`metrics.tiny=true`), the first unseen size only; a sweep runs its first point; a search runs 2
iterations per resolution, validates on one held-out seed and writes its presets under the test's output folder.
"""

import math
from pathlib import Path

import pytest
from test_run import EXPERIMENTS, compose_cfg, compose_run, reference_prompts

from crdiff.experiment.run import execute

PAPER_MODELS = ("sdxl", "sd15", "sd21", "sd3", "flux")


def tiny_overrides(experiment: str, tmp_path) -> list[str]:
    cfg = compose_cfg(f"experiment={experiment}", hydra_config=True)
    sweep = {k: str(v).split(",")[0] for k, v in (cfg.hydra.sweeper.params or {}).items()}  # the first job
    model = sweep.pop("model", cfg.model.name)
    overrides = [f"experiment={experiment}", *(f"{k}={v}" for k, v in sweep.items()),
                 f"model=tiny-{model}" if model in PAPER_MODELS else f"model={model}",
                 "prompts.limit=2", "sampler.steps=2", "sampler.batch_size=2", "metrics.tiny=true",
                 "metrics.kid_subset_size=2", f"output_dir={tmp_path / 'out'}"]
    if cfg.prompts.kind == "csv":  # COCO-5K: prompts with real images beside them
        overrides += [f"prompts.path={reference_prompts(tmp_path, n=2)}"]
    if cfg.prompts.kind == "list":
        overrides += ["prompts.texts=[a red fox in the snow,a lighthouse at dusk]"]
    if "hidiffusion" in cfg.methods:  # it refuses the tiny stand-ins (its own tests use the full SD1.5 UNet)
        overrides += [f"methods=[{','.join(m for m in cfg.methods if m != 'hidiffusion')}]"]
    unseen = compose_run(*overrides).resolutions.unseen
    overrides += [f"resolutions.unseen=[{unseen[0]}]"] if unseen else []  # default + one unseen size
    if cfg.task == "search":
        overrides += [f"search.preset_root={tmp_path / 'presets'}", "++search.anneal.iterations=2",
                      "search.validation_seeds=1"]
    return overrides


SLOW = {"baselines", "miniature_baselines", "table_c"}  # eight methods x every resolution; table_c: 4 x 2 sizes


@pytest.mark.parametrize("experiment", [pytest.param(e, marks=pytest.mark.slow) if e in SLOW else e
                                        for e in EXPERIMENTS])
def test_every_experiment_runs_end_to_end_and_scores(experiment, tmp_path):
    run = compose_run(*tiny_overrides(experiment, tmp_path))
    if run.task == "search":
        from crdiff.experiment.ratio_search import run_search

        for result in run_search(run):
            assert math.isfinite(result["best_score"]) and result["iterations"] >= 1
            assert Path(result["preset"]).parent == tmp_path / "presets" / "pruning"
            assert Path(result["preset"]).is_file() and result["validation"]["images"] >= 2
        return
    table = execute(run)["table"]
    want = {(m, str(r)) for m in run.methods for _, r in run.resolutions.selected()}
    assert set(zip(table.method, table.resolution)) == want and (table.n_images == 2).all()
    assert run.metrics.names, f"{experiment} scores nothing"
    for name in run.metrics.names:
        assert table[name].map(math.isfinite).all(), (name, table[name].tolist())
    assert table[["nan_images", "black_images", "constant_images"]].notna().all().all()
