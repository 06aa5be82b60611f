"""Search, then table: per-(model, resolution) presets, what they record, which the tables accept, the fallback."""

import json

import pytest
from test_run import compose_run

from crdiff.experiment.run import execute, plan, row
from crdiff.models import Resolution

TABLE = ["experiment=smoke", "resolutions.sets=[unseen]", "pruning.searched=true"]  # tiny-sdxl: 40x72, 96x96


def write_searched(root, at, ratios, tiny=True, validation=None, *overrides, **objective):
    """A preset at `at` as `experiment=search model=tiny-sdxl` writes it (stand-in scorer when `tiny`), its
    objective fields then replaced by `objective`; returns its path."""
    from crdiff.experiment.prompts import load_prompts
    from crdiff.experiment.ratio_search import Search, write_preset
    from crdiff.search import SearchState

    run = compose_run("experiment=search", "model=tiny-sdxl", f"metrics.tiny={tiny}", f"output_dir={root}",
                      f"search.preset_root={root}", *overrides)
    p = run.prompts
    state = SearchState(best=dict(ratios), best_score=1.0, history=[{"score": 0.5}])
    search = Search((Resolution.parse(at),), f"searched_tiny-sdxl_{at}")
    path = write_preset(run, state, search, load_prompts(p.kind, p.path, p.limit, p.texts), "cpu", validation)
    if objective:
        lines = path.read_text().splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith("objective: "))
        lines[at] = "objective: " + json.dumps({**json.loads(lines[at][len("objective: "):]), **objective})
        path.write_text("\n".join(lines) + "\n")
    return path


def test_search_then_table_takes_the_searched_ratios_of_each_resolution(tmp_path):
    from crdiff.experiment.ratio_search import run_search

    out = tmp_path / "out"
    [found] = run_search(compose_run("experiment=search_smoke", f"output_dir={out}", "search.resolutions=[40x72]",
                                     f"search.preset_root={out / 'presets'}", "++search.anneal.iterations=2",
                                     "sampler.steps=1"))
    assert found["preset"] == str(out / "presets" / "pruning" / "searched_tiny-sdxl_40x72.yaml")
    with pytest.raises(ValueError, match=r"objective.scorer is 'pickscore \(stand-in\)', experiment=search's "
                                         r"protocol is 'image_reward \(stand-in\)'"):
        plan(compose_run(*TABLE, f"output_dir={out}"))  # search_smoke is not the protocol: refused
    write_searched(out / "presets", "40x72", found["best"])  # the protocol's preset, same ratios
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
        path = write_searched(tmp_path, "96x96", {"down": down, "mid": 0.3, "up": 0.4})
        folder.mkdir()
        path.rename(folder / path.name)
    run = compose_run(*TABLE, f"output_dir={tmp_path}", f"pruning.preset_path=[{first},{second}]")
    job = [j for j in plan(run).jobs if j.method == "crdiff" and str(j.resolution) == "96x96"][0]
    assert run.method("crdiff", job.resolution).ratios == {"down": 0.2, "mid": 0.3, "up": 0.4}
    from crdiff.experiment.methods.pruned import group_sizes

    n = group_sizes(run)  # uniform follows the preset: its total sparsity, weighted by each group's weights
    total = (0.2 * n["down"] + 0.3 * n["mid"] + 0.4 * n["up"]) / sum(n.values())
    assert run.method("uniform", job.resolution).ratios == {g: pytest.approx(total) for g in ("down", "mid", "up")}
    (first / "searched_tiny-sdxl_96x96.yaml").write_text("kind: blockwise\ncriterion: random\nratios: {down: 0.2}\n")
    with pytest.raises(ValueError, match="pruning.searched takes blockwise presets of pruning.criterion='magnitude', "
                                         "pruning.targets=None"):
        plan(run)
    with pytest.raises(ValueError, match="pruning.searched takes block-wise presets; pruning.kind is 'uniform'"):
        compose_run(*TABLE, "pruning=uniform")


def test_table_a_runs_on_searched_presets_end_to_end(tmp_path):
    write_searched(tmp_path / "presets", "40x72", {"down": 0.5, "mid": 0.1, "up": 0.2}, False,
                   {"beats_start": False})
    table = execute(compose_run("experiment=table_a", "model=tiny-sdxl", "prompts=builtin", "prompts.limit=1",
                                "metrics=none", "sampler.steps=1", f"output_dir={tmp_path}"))["table"]
    crd = table[table.method == "crdiff"].set_index("resolution")
    assert crd.loc["40x72", ["ratio_down", "ratio_mid", "ratio_up"]].tolist() == [0.5, 0.1, 0.2]
    assert crd.loc["96x96", "ratios_source"].startswith("fallback") and (table.seed == 42).all()
    assert crd.loc["40x72", "preset_beats_start"] == False and crd.loc["96x96", "preset_beats_start"] is None  # noqa: E712


def test_a_hub_id_search_writes_the_preset_pruning_searched_finds(tmp_path):
    """The preset of `model=<org>/<name>` is one file `searched_<org>--<name>_<HxW>.yaml`, the name the
    table side looks up (a '/' would put it in a subfolder nobody reads)."""
    from crdiff.experiment import presets
    from crdiff.experiment.ratio_search import write_preset
    from crdiff.search import SearchState

    from crdiff.experiment.prompts import load_prompts
    from crdiff.experiment.ratio_search import searches

    run = compose_run("experiment=search", "model=tiny-sdxl", "model.name=my-org/my-sdxl", "metrics.tiny=true",
                      f"output_dir={tmp_path}", "search.resolutions=[40x72]")
    best = {"down": 0.25, "mid": 0.35, "up": 0.45}
    state = SearchState(best=best, best_score=1.0, history=[{"score": 0.5}])
    [search] = searches(run)
    path = write_preset(run, state, search, load_prompts("builtin", None, 2, []), "cpu")
    assert path == tmp_path / "presets" / "pruning" / "searched_my-org--my-sdxl_40x72.yaml"
    table = compose_run(*TABLE, "model.name=my-org/my-sdxl", f"output_dir={tmp_path}")
    assert presets.ratios_at(table, Resolution(40, 72)) == (best, "searched preset", str(path))


def test_a_random_mask_preset_of_another_seed_is_refused(tmp_path):
    write_searched(tmp_path / "p", "96x96", {"down": 0.2, "mid": 0.3, "up": 0.4}, True, None,
                   "pruning.criterion=random", "pruning.seed=3").rename(tmp_path / "searched_tiny-sdxl_96x96.yaml")
    args = (*TABLE, f"output_dir={tmp_path}", f"pruning.preset_path=[{tmp_path}]", "pruning.criterion=random")
    assert compose_run(*args, "pruning.seed=3").method("crdiff", Resolution(96, 96)).ratios["down"] == 0.2
    with pytest.raises(ValueError, match="searched with random masks of seed 3; pruning.seed is 0"):
        compose_run(*args).method("crdiff", Resolution(96, 96))


@pytest.mark.parametrize("field, value, says", [
    ("source", "my-org/other-weights", "objective.source is 'my-org/other-weights', this table's is 'tiny:sdxl'"),
    ("resolution", "40x72", "objective.resolution is '40x72', this table's is '96x96'"),
    ("prompts_digest", "0123456789ab", "objective.prompts_digest is '0123456789ab', experiment=search's protocol"),
    ("k", 1.5, "objective.k is 1.5, experiment=search's protocol is 1.0"),
    ("steps", 2, "objective.steps is 2, experiment=search's protocol is 30"),
    ("guidance", 3.0, "objective.guidance is 3.0, experiment=search's protocol is 7.5"),
    ("seed", 0, "objective.seed is 0, experiment=search's protocol is 24432"),
])
def test_a_preset_of_another_objective_is_refused_naming_the_field(tmp_path, field, value, says):
    args = (*TABLE, f"output_dir={tmp_path}", f"pruning.preset_path=[{tmp_path / 'pruning'}]")
    write_searched(tmp_path, "96x96", {"down": 0.2, "mid": 0.3, "up": 0.4})
    assert compose_run(*args).method("crdiff", Resolution(96, 96)).ratios["down"] == 0.2
    write_searched(tmp_path, "96x96", {"down": 0.2, "mid": 0.3, "up": 0.4}, **{field: value})
    with pytest.raises(ValueError, match="^preset .*: " + __import__("re").escape(says)):
        compose_run(*args).method("crdiff", Resolution(96, 96))


def test_a_preset_without_an_objective_and_real_vs_stand_in_scorers_are_refused(tmp_path):
    args = (*TABLE, f"output_dir={tmp_path}", f"pruning.preset_path=[{tmp_path}]")
    (tmp_path / "searched_tiny-sdxl_96x96.yaml").write_text("ratios: {down: 0.2, mid: 0.3, up: 0.4}\n")
    with pytest.raises(ValueError, match="records no objective .*experiment=search model=tiny-sdxl "
                                         r"'search.resolutions=\[96x96\]'"):
        compose_run(*args).method("crdiff", Resolution(96, 96))
    write_searched(tmp_path / "real", "96x96", {"down": 0.2, "mid": 0.3, "up": 0.4}, False).rename(
        tmp_path / "searched_tiny-sdxl_96x96.yaml")
    with pytest.raises(ValueError, match=r"objective.scorer is 'image_reward', experiment=search's protocol is "
                                         r"'image_reward \(stand-in\)'"):
        compose_run(*args).method("crdiff", Resolution(96, 96))  # smoke scores with stand-ins


def test_the_table_says_when_a_row_has_no_preset_or_one_that_did_not_beat_its_start():
    import pandas as pd

    from crdiff.report.tables import paper_table, to_markdown

    rows = pd.DataFrame([
        {"model": "sdxl", "setting": "unseen", "resolution": res, "method": method, "image_reward": value,
         "ratios_source": None if method == "dense" else source, "preset_beats_start": beats}
        for res, source, beats in (("512x512", "searched preset", True), ("400x560", "fallback: pruning.ratios "
                                   "(no searched preset)", None), ("480x360", "searched preset", False))
        for method, value in (("dense", 0.1), ("crdiff", 0.2))])
    text = to_markdown(paper_table(rows, "unseen"))
    assert "| sdxl | 512x512 |" in text and "| sdxl | 400x560 (no searched preset) |" in text
    assert "| sdxl | 480x360 (preset not better than its start) |" in text


@pytest.mark.parametrize("tiny", [False, True])
@pytest.mark.parametrize("experiment", ["search", "scenes_search", "scenes_search30"])
def test_each_written_protocol_is_what_its_experiment_composes_to(experiment, tiny):
    from crdiff.experiment import presets
    from crdiff.experiment.prompts import load_prompts

    run = compose_run(f"experiment={experiment}", f"metrics.tiny={tiny}", f"pruning.search_protocol={experiment}")
    p = run.prompts
    found = presets.objective(run, load_prompts(p.kind, p.path, p.limit, p.texts), [])
    assert {f: found[f] for f in presets.PROTOCOL} == presets.protocol(run)
    assert run.experiment == experiment and presets.prefix(experiment) == presets.PROTOCOLS[experiment]["prefix"]


def test_the_scenes_protocols_write_presets_of_their_own_names_and_tables_find_each_by_its_protocol(tmp_path):
    from crdiff.experiment import presets
    from crdiff.experiment.ratio_search import searches
    from crdiff.models import Resolution

    res = Resolution.parse("32x32")
    names = {e: searches(compose_run(f"experiment={e}", "search.resolutions=[32x32]"))[0].preset
             for e in ("scenes_search", "scenes_search30", "search")}
    assert names == {"scenes_search": "searched_scenes_32x32", "scenes_search30": "searched30_scenes_32x32",
                     "search": "searched_sdxl_32x32"}
    for protocol in ("scenes_search", "scenes_search30"):
        table = compose_run("experiment=scenes", f"pruning.search_protocol={protocol}", f"output_dir={tmp_path}",
                            f"pruning.preset_path=[{tmp_path / 'presets' / 'pruning'}]")  # not conf/pruning's
        assert presets.preset_name(table, res) == names[protocol]
        assert presets.find(table, res) is None  # nothing searched yet: the fallback, marked
        folder = tmp_path / "presets" / "pruning"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{names[protocol]}.yaml").write_text("ratios: {down: 0.2, mid: 0.3, up: 0.4}\n")
        assert presets.find(table, res) == folder / f"{names[protocol]}.yaml"


def test_an_unknown_search_protocol_is_refused():
    with pytest.raises(ValueError, match="pruning.search_protocol"):
        compose_run("experiment=scenes", "pruning.search_protocol=scenes")
