"""Search, then table: per-(model, resolution) presets, the fallback, and what the rows record."""

import pytest
from test_run import compose_run

from crdiff.experiment.run import execute, plan, row
from crdiff.models import Resolution

TABLE = ["experiment=smoke", "resolutions.sets=[unseen]", "pruning.searched=true"]  # tiny-sdxl: 40x72, 96x96


def test_search_then_table_takes_the_searched_ratios_of_each_resolution(tmp_path):
    from crdiff.experiment.ratio_search import run_search

    out = tmp_path / "out"
    found = run_search(compose_run("experiment=search_smoke", f"output_dir={out}", "search.resolutions=[40x72]",
                                   f"search.preset_root={out / 'presets'}", "++search.anneal.iterations=2",
                                   "sampler.steps=1"))
    assert found["preset"] == str(out / "presets" / "pruning" / "searched_tiny-sdxl_40x72.yaml")
    p = plan(compose_run(*TABLE, f"output_dir={out}"))  # default preset_path: <output_dir>/presets/pruning first
    rows = {(j.method, str(j.resolution)): row(p, j, {}, {}) for j in p.jobs}
    searched, fallback = rows[("crdiff", "40x72")], rows[("crdiff", "96x96")]
    assert [searched[f"ratio_{g}"] for g in ("down", "mid", "up")] == [round(found["best"][g], 4)
                                                                       for g in ("down", "mid", "up")]
    assert (searched["ratios_source"], searched["preset"]) == ("searched preset", found["preset"])
    assert [fallback[f"ratio_{g}"] for g in ("down", "mid", "up")] == [0.3, 0.3, 0.3]
    assert (fallback["ratios_source"], fallback["preset"]) == ("fallback: pruning.ratios (no searched preset)", None)
    assert (rows[("dense", "40x72")]["ratios_source"], rows[("dense", "40x72")]["preset"]) == (None, None)
    folders = {(j.method, str(j.resolution)): j.folder.parent for j in p.jobs}
    assert folders[("crdiff", "40x72")] != folders[("crdiff", "96x96")]  # images keyed by the ratios they used
    plain = plan(compose_run(*TABLE[:2], f"output_dir={out}"))  # not searched: the keys of before
    assert [j.key for j in plain.jobs if j.method == "dense"] == [j.key for j in p.jobs if j.method == "dense"]
    assert [j.key for j in plain.jobs][3] == [j.key for j in p.jobs][3]  # crdiff 96x96 fell back to the same ratios


def test_preset_path_is_searched_in_order_and_a_foreign_preset_is_refused(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, down in ((first, 0.2), (second, 0.6)):
        folder.mkdir()
        (folder / "searched_tiny-sdxl_96x96.yaml").write_text(
            f"kind: blockwise\ncriterion: magnitude\nratios: {{down: {down}, mid: 0.3, up: 0.4}}\n")
    run = compose_run(*TABLE, f"output_dir={tmp_path}", f"pruning.preset_path=[{first},{second}]")
    job = [j for j in plan(run).jobs if j.method == "crdiff" and str(j.resolution) == "96x96"][0]
    assert run.method("crdiff", job.resolution).ratios == {"down": 0.2, "mid": 0.3, "up": 0.4}
    assert run.method("uniform", job.resolution).ratios == {g: pytest.approx(0.3) for g in ("down", "mid", "up")}
    (first / "searched_tiny-sdxl_96x96.yaml").write_text("kind: blockwise\ncriterion: random\nratios: {down: 0.2}\n")
    with pytest.raises(ValueError, match="pruning.searched takes blockwise presets of pruning.criterion='magnitude', "
                                         "pruning.targets=None"):
        plan(run)
    with pytest.raises(ValueError, match="pruning.searched takes block-wise presets; pruning.kind is 'uniform'"):
        compose_run(*TABLE, "pruning=uniform")


def test_table_a_runs_on_searched_presets_end_to_end(tmp_path):
    presets = tmp_path / "presets" / "pruning"
    presets.mkdir(parents=True)
    (presets / "searched_tiny-sdxl_40x72.yaml").write_text(
        "kind: blockwise\ncriterion: magnitude\nratios: {down: 0.5, mid: 0.1, up: 0.2}\n")
    table = execute(compose_run("experiment=table_a", "model=tiny-sdxl", "prompts=builtin", "prompts.limit=1",
                                "metrics=none", "sampler.steps=1", f"output_dir={tmp_path}"))["table"]
    crd = table[table.method == "crdiff"].set_index("resolution")
    assert crd.loc["40x72", ["ratio_down", "ratio_mid", "ratio_up"]].tolist() == [0.5, 0.1, 0.2]
    assert crd.loc["96x96", "ratios_source"].startswith("fallback") and (table.seed == 42).all()


def test_a_hub_id_search_writes_the_preset_pruning_searched_finds(tmp_path):
    """The preset of `model=<org>/<name>` is one file `searched_<org>--<name>_<HxW>.yaml`, the name the
    table side looks up (a '/' would put it in a subfolder nobody reads)."""
    from crdiff.experiment import presets
    from crdiff.experiment.ratio_search import write_preset
    from crdiff.search import SearchState

    run = compose_run(*TABLE, "model.name=my-org/my-sdxl", f"output_dir={tmp_path}")
    best = {"down": 0.25, "mid": 0.35, "up": 0.45}
    state = SearchState(best=best, best_score=1.0, history=[{"score": 0.5}])
    path = write_preset(run, state, [Resolution(40, 72)], "cpu")
    assert path == tmp_path / "presets" / "pruning" / "searched_my-org--my-sdxl_40x72.yaml"
    assert presets.ratios_at(run, Resolution(40, 72)) == (best, "searched preset", str(path))


def test_a_random_mask_preset_of_another_seed_is_refused(tmp_path):
    (tmp_path / "searched_tiny-sdxl_96x96.yaml").write_text(
        "criterion: random\nseed: 3\nratios: {down: 0.2, mid: 0.3, up: 0.4}\n")
    args = (*TABLE, f"output_dir={tmp_path}", f"pruning.preset_path=[{tmp_path}]", "pruning.criterion=random")
    assert compose_run(*args, "pruning.seed=3").method("crdiff", Resolution(96, 96)).ratios["down"] == 0.2
    with pytest.raises(ValueError, match="searched with random masks of seed 3; pruning.seed is 0"):
        compose_run(*args).method("crdiff", Resolution(96, 96))
