"""Simulated annealing: resume, bounds, reheats, restarts, failures (REF's trajectory: test_search_ref.py)."""

import pytest

from crdiff.search import SearchConfig, SearchState, anneal


def smooth(p):
    """A cheap deterministic objective with its maximum 1.0 at (0.45, 0.25, 0.6)."""
    return 1.0 - 4 * ((p["down"] - 0.45) ** 2 + (p["mid"] - 0.25) ** 2 + (p["up"] - 0.6) ** 2)


def trail_of(state: SearchState):
    return [({k: h[k] for k in ("down", "mid", "up")}, h["score"]) for h in state.history]


def test_points_stay_in_bounds_and_search_improves():
    state = anneal(smooth, SearchConfig())
    assert all(0.1 <= h[g] <= 0.8 for h in state.history for g in ("down", "mid", "up"))
    assert state.best_score > 0.7 > 0.6 > smooth({"down": 0.3, "mid": 0.3, "up": 0.3})  # improved on the start
    assert state.best_score == max(h["score"] for h in state.history)


def test_kill_and_resume_gives_the_identical_trajectory(tmp_path):
    full = anneal(smooth, SearchConfig())
    calls = {"n": 0}

    def dies_after_40(p):
        calls["n"] += 1
        if calls["n"] > 40:
            raise KeyboardInterrupt  # like a SIGINT / kill in the middle of a trial
        return smooth(p)

    with pytest.raises(KeyboardInterrupt):
        anneal(dies_after_40, SearchConfig(), tmp_path / "state.json")
    partial = SearchState.load(tmp_path / "state.json")
    assert 0 < partial.iteration < 120 and not partial.done
    resumed = anneal(smooth, SearchConfig(), tmp_path / "state.json")
    assert trail_of(resumed) == trail_of(full) and resumed.best == full.best


def test_only_a_main_loop_best_above_the_threshold_unlocks_reheats():
    flat = anneal(lambda p: 0.9, SearchConfig())  # the start scores 0.9, but no move ever beats it
    assert flat.reheats == 0 and flat.restarts == 2 and len(flat.history) == 1 + 72 + 2 and flat.done
    rising = anneal(lambda p: 0.9 + p["up"] - 0.3, SearchConfig())
    assert rising.reheat_unlocked and rising.reheats == 3


def test_restarts_then_stops_below_the_threshold():
    state = anneal(lambda p: 0.3, SearchConfig())
    kinds = [h["kind"] for h in state.history]
    assert state.reheats == 0 and kinds.count("restart") == 2 and state.iteration == 3 * 24


def test_failing_trials_score_minus_two_and_the_search_goes_on():
    calls = []

    def flaky(p):
        calls.append(dict(p))
        if p["up"] > 0.35:
            raise RuntimeError("out of memory")
        return smooth(p)

    state = anneal(flaky, SearchConfig())
    failed = [h for h in state.history if h["up"] > 0.35]
    assert failed and all(h["score"] == -2.0 and h["failed"] and not h["cached"] for h in failed)
    assert state.iteration > 24 and state.best["up"] <= 0.35
    assert not any(f"{h['down']:.4f}_{h['up']:.4f}_{h['mid']:.4f}" in state.cache for h in failed)


def test_a_failed_prompt_scores_minus_two_inside_the_mean_and_is_tried_again():
    tried = []

    def half(p):
        tried.append(1)
        return [0.5, None] if len(tried) == 1 else [0.5, 0.7]

    state = anneal(half, SearchConfig(iterations=1, start={"down": 0.1, "up": 0.1, "mid": 0.1}, low=0.1, high=0.1 + 1e-9))
    assert state.history[0]["score"] == (0.5 - 2.0) / 2 and state.history[0]["failed"]
    assert state.history[1]["score"] == pytest.approx(0.6) and not state.history[1]["cached"]


def test_bad_bounds():
    with pytest.raises(ValueError, match="search bounds"):
        SearchConfig(low=0.5, high=0.2)


# --- the search on a real (tiny) pipeline through the runner ---------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "crdiff.run", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


@pytest.mark.slow
def test_search_smoke_resumes_after_a_kill_and_writes_a_preset_a_table_experiment_uses(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from crdiff.experiment.config import RunConfig

    source_tree = sorted(ROOT.glob("conf/**/*"))
    args = ["experiment=search_smoke", f"output_dir={tmp_path / 'out'}"]  # the preset goes under output_dir
    full = run_cli(*args, f"output_dir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, "-m", "crdiff.run", *args], cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = __import__("time").time() + 300
    while __import__("time").time() < deadline:
        states = list((tmp_path / "out").glob("search/*/state.json"))
        if states and SearchState.load(states[0]).iteration >= 3:
            break
        __import__("time").sleep(0.05)
    proc.kill()
    proc.wait()
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = SearchState.load(next((tmp_path / "full").glob("search/*/state.json")))
    b = SearchState.load(next((tmp_path / "out").glob("search/*/state.json")))
    assert trail_of(a) == trail_of(b) and a.best == b.best and b.done
    csv = next((tmp_path / "out").glob("search/*/trials.csv")).read_text().splitlines()
    assert csv[0] == "iteration,kind,down,mid,up,score,temperature,cached,failed" and len(csv) == len(b.history) + 1

    presets = tmp_path / "out" / "presets"
    preset = presets / "pruning" / "searched_tiny-sdxl_40x72.yaml"
    assert preset.exists() and "pickscore" in preset.read_text()
    assert f"use it with pruning=searched_tiny-sdxl_40x72 'hydra.searchpath=[file://{presets}]'" in resumed.stdout
    assert sorted(ROOT.glob("conf/**/*")) == source_tree
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", "pruning=searched_tiny-sdxl_40x72",
                                           f"hydra.searchpath=[file://{presets}]"])
    run = RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))
    assert run.pruning.ratios == {g: round(b.best[g], 4) for g in ("down", "mid", "up")}


def test_refine_experiment_composes_with_k():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from crdiff.experiment.config import RunConfig

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=refine", "model=tiny-sd15", "prompts.texts=[a red fox]"])
    run = RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))
    settings = run.search.settings()
    assert settings.variables == ("down", "up", "mid", "k") and settings.clip("k", 9.0) == 3.0
    assert run.task == "search" and run.search.compare


@pytest.mark.slow
def test_refine_saves_dense_vs_refined_with_scores(tmp_path):
    import json

    done = run_cli("experiment=refine", "model=tiny-sd15", "prompts.texts=[a red fox in the snow,a lighthouse]",
                   "metrics=tiny", "search.metric=pickscore", "search.resolutions=[40x72]",
                   "search.anneal={iterations: 3}", "search.validation_seeds=1", "sampler.steps=2", f"output_dir={tmp_path}",
                   f"search.preset_root={tmp_path / 'conf'}")
    assert done.returncode == 0, done.stderr[-2000:]
    folder = next(tmp_path.glob("search/*"))
    scores = json.loads((folder / "comparison.json").read_text())
    assert set(scores) == {"dense", "refined", "best"} and 1.0 <= scores["best"]["k"] <= 3.0
    assert (folder / "dense_vs_refined_40x72.png").exists()
    assert not list((tmp_path / "conf").glob("*/searched_*"))  # a refinement never writes a table's preset
    k_preset = (tmp_path / "conf" / "amplify" / "refined_tiny-sd15_40x72.yaml").read_text()
    assert f"k: {round(scores['best']['k'], 4)}\n" in k_preset


@pytest.mark.slow
def test_two_rank_search_walks_the_same_trajectory(tmp_path):
    env = {"OMP_NUM_THREADS": "1"}
    args = ["experiment=search_smoke", "sampler.batch_size=1", f"search.preset_root={tmp_path / 'conf'}"]
    one = run_cli(*args, f"output_dir={tmp_path / 'one'}", env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "crdiff.run", *args, f"output_dir={tmp_path / 'two'}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (SearchState.load(next((tmp_path / d).glob("search/*/state.json"))) for d in ("one", "two"))
    assert [p for p, _ in trail_of(a)] == [p for p, _ in trail_of(b)]
    assert [s for _, s in trail_of(a)] == pytest.approx([s for _, s in trail_of(b)], rel=1e-5)
