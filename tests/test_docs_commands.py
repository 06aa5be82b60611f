"""A documented command is a test: every `crdiff.run` / `scripts/` command in a fenced block of README.md
or docs/*.md (tests/doccommands.py finds them) composes as written, its real configuration passes through
preflight (which names what is missing, loading nothing), and with the tiny substitutions below it passes
preflight and plans. All in this process: one compose per command, no CLI launch per command.

Tiny substitutions (what a CPU without downloads needs, nothing else):
- model=<m> -> model=tiny-<m> (the same pipeline classes built from config); model.source /
  model.revision are dropped with it (they name real weights: tests/test_realweights.py and
  tests/test_hub_journeys.py load a folder, a mirror id and a pinned revision);
- metrics.tiny=true (stand-ins of the scorer classes); prompts.path=<2 prompts with real-image paths>
  where a command reads the COCO-5K CSV; output_dir=<a temporary folder>;
- placeholders: <you> -> me, <yours> -> gpu, <commit> -> a 40-hex revision.
Launchers (torchrun, srun, accelerate, Hydra's SLURM launchers) are not started; the overrides they pass
are what is checked. tests/test_run.py starts `torchrun --standalone` with 2 CPU ranks.
"""

import importlib.util
import re
from pathlib import Path

import pytest

from doccommands import ROOT, commands

# The commands not run, each with its reason (by script; a crdiff.run command is never skipped).
NOT_RUN = {
    "scripts/prepare_coco5k.py": "needs COCO val2014 (captions and 40k images), which cannot be downloaded here; "
                                 "tests/test_coco.py runs it on a COCO-shaped miniature",
    "scripts/miniature_study.py": "reads the outputs of the miniature's runs (`make main`, the seed sets and sweeps, "
                                  "tens of CPU minutes); tests/test_digits.py runs it on a shortened k sweep",
    "scripts/train_scenes.py": "trains the scenes model for about an hour of CPU; tests/test_scenes.py runs the same "
                               "command on a few steps, stopped and resumed",
    "scripts/scenes_rebuild.py": "compares a finished rebuild of the scenes model (an hour of CPU) with the shipped "
                                 "weights; tests/test_scenes.py runs it on tiny runs, identical and apart",
    "scripts/gpu_check.sh": "needs a GPU (it falls back to the CPU only to check itself, minutes); run on a GPU node",
}
PLACEHOLDERS = {"<you>": "me", "<yours>": "gpu", "<commit>": "0" * 40}
REAL = ("sdxl", "sd15", "sd21", "sd3", "flux")
ALL = commands()
RUNS = sorted({c.args: c for c in ALL if c.program == "crdiff.run"}.values(), key=str)
SCRIPTS = sorted({(c.program, c.args): c for c in ALL if c.program != "crdiff.run"}.values(), key=str)


def filled(args) -> list[str]:
    out = []
    for arg in args:
        for placeholder, value in PLACEHOLDERS.items():
            arg = arg.replace(placeholder, value)
        out.append(arg)
    return out


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    from test_hub_journeys import reference_csv

    return reference_csv(tmp_path_factory.mktemp("coco") / "coco5k")


def tiny(overrides: list[str], run, coco: Path, out: Path) -> list[str]:
    kept = [o for o in overrides if not o.startswith(("model.source=", "model.revision=", "output_dir=", "hydra"))]
    extra = [f"model=tiny-{run.model.name}"] if run.model.name in REAL else []
    if run.prompts.kind == "csv":
        extra += [f"prompts.path={coco}"]
    return [*kept, *extra, "metrics.tiny=true", f"output_dir={out}"]


def test_every_documented_command_is_found():
    """The extractor sees the commands the docs are known to hold (a broken fence would hide them all)."""
    assert len(RUNS) >= 20 and {c.file for c in ALL} >= {"README.md", "docs/config.md", "docs/real-weights.md"}
    assert any(c.launcher[:1] == ("torchrun",) for c in ALL) and any(c.multirun for c in ALL)
    assert {c.program for c in SCRIPTS} - set(NOT_RUN) >= {"scripts/prefetch_weights.py", "scripts/make_tables.py"}


@pytest.mark.parametrize("command", RUNS, ids=str)
def test_documented_run_composes_passes_preflight_and_plans(command, coco, tmp_path):
    from crdiff.experiment import planner, preflight

    overrides = filled(command.args)
    written = planner.compose_runs(overrides)  # each job of a sweep, the experiment's own included
    assert written
    for combo, run in written:
        preflight.check(run, combo, reachable=False)  # names what the real run lacks; raises on nothing
        (_, small), = planner.compose_runs(tiny(combo, run, coco, tmp_path), sweep={})
        assert small.task == run.task and small.methods == run.methods and small.sampler == run.sampler
        assert preflight.check(small, reachable=False) == [], combo
        rows, notes = planner.rows_of(small)
        # a method of `methods_if_supported` (hidiffusion) the tiny stand-in lacks is left out, said so
        notes = [n for n in notes if "left out (methods_if_supported)" not in n]
        # a search's plan lays its generation jobs out with the search's metrics (left to the search's owners)
        assert rows and (not notes or small.task == "search"), (combo, notes)


def script(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("command", SCRIPTS, ids=str)
def test_documented_script_runs_or_says_why_not(command, coco, tmp_path, capsys):
    from crdiff.experiment import planner

    if command.program in NOT_RUN:
        assert (ROOT / command.program).is_file()
        pytest.skip(NOT_RUN[command.program])
    args = filled(command.args)
    if command.program == "scripts/prefetch_weights.py":
        overrides = [a for a in args if a != "--check"]
        for combo, run in planner.compose_runs(overrides):  # the real pieces, declared without a download
            assert script(command.program).requirements(run)
            small = tiny(combo, run, coco, tmp_path)
            assert script(command.program).main(["--check", *small]) == 0, capsys.readouterr()
    elif command.program == "scripts/make_tables.py":
        if "--results" in args:  # a finished run's rows: made here by a tiny run of the experiment the command reads
            from crdiff.experiment.run import execute

            chosen = args[args.index("--experiment") + 1] if "--experiment" in args else "smoke"
            fields = [a for a in args if "=" in a and not a.startswith("-")]  # FIELD=VALUE filters (k=3.0)
            wanted = [f"experiment={chosen}", *(f"amplify.{a}" for a in fields if a.startswith("k="))]
            (_, real), = planner.compose_runs(wanted, sweep={})
            small = [*tiny(wanted, real, coco, tmp_path / "outputs"), "prompts.limit=2", "resolutions.sets=[default]"]
            (_, run), = planner.compose_runs(small, sweep={})
            execute(run)
            args = [re.sub(r"^outputs$", str(tmp_path / "outputs"), a) for a in args]
        args = [str(tmp_path / "tables") if a.startswith("results/") else a for a in args]
        assert script(command.program).main(args) == 0
        assert list((tmp_path / "tables").iterdir())
    elif command.program == "scripts/scenes_failure.py":  # the shipped scenes model, as written, on 2 prompts
        import runpy
        import sys

        out = tmp_path / "failure"
        argv = [command.program, *args, "--prompts", "2", "--sizes", "64x64", "32x32", "--detector-scenes", "2",
                "--out", str(out)]
        import torch

        old_argv, sys.argv, threads = sys.argv, argv, torch.get_num_threads()
        try:
            runpy.run_path(str(ROOT / command.program), run_name="__main__")
        finally:  # the script sets torch's thread count; later tests' images depend on it
            sys.argv = old_argv
            torch.set_num_threads(threads)
        assert (out / "failure.md").is_file() and len((out / "failure.csv").read_text().splitlines()) == 1 + 2 * 2
    elif command.program == "scripts/pruning_effect.py":  # the shipped models, shortened
        out = tmp_path / "effect.md"
        assert script(command.program).main(["--prompts", "2", "--steps", "2", "--sizes", "32x32", "--ratios", "0.3",
                                             "--out", str(out)]) == 0
        rows = [line for line in out.read_text().splitlines() if line.startswith("| scenes") or line.startswith("| digits")]
        assert len(rows) == 2 and all(float(r.split("|")[5].split()[0]) > 0 for r in rows)
    elif command.program == "scripts/scenes_study.py":  # the rows of tiny runs of the experiments it reads, then tables
        from crdiff.experiment.run import execute

        folder = tmp_path / "outputs"
        # each experiment at its own prompt count, so that a table reading another experiment's rows shows
        experiments = {"--baselines": ("scenes_baselines", {}, 2), "--study": ("scenes_study", {}, 3),
                       "--fd": ("scenes_fd", {}, 4), "--search30": ("scenes", {}, 5),
                       "--sweep-k": ("scenes_sweep_k", {"amplify.k": "1.0,2.0,3.0"}, 2),
                       "--sweep-ratios": ("scenes_sweep_ratios", {"pruning.ratios.down": "0.1,0.5"}, 2)}
        named = [flag for flag in experiments if flag in args]
        assert named, args
        for flag in named:
            experiment, sweep, n = experiments[flag]
            # a sweep's table takes the steps its experiment file states; the side-by-side tables leave them free
            steps = [] if sweep else ["sampler.steps=2"]
            if flag == "--search30":  # no 30-prompt preset here: CR-Diff falls back to pruning.ratios, said so
                steps += ["pruning.search_protocol=scenes_search30", "methods=[dense,crdiff]"]
            for _, run in planner.compose_runs([f"experiment={experiment}", f"prompts.limit={n}", *steps,
                                                "sampler.batch_size=2", "resolutions.unseen=[32x32]",
                                                "resolutions.sets=[unseen]", f"output_dir={folder}"], sweep=sweep):
                execute(run)
        study = {a for a in args if not a.startswith("-") and not a.startswith("results/")}
        args = [str(folder) if a in study else str(tmp_path / "tables") if a.startswith("results/") else a
                for a in args]
        assert script(command.program).main(args) == 0
        tables = {"--baselines": "baselines.md", "--study": "study.md", "--fd": "fd.md", "--search30": "search30_study.md",
                  "--sweep-k": "sweep_k.md", "--sweep-ratios": "sweep_ratios.md"}
        for flag in named:
            experiment, _, n = experiments[flag]
            table = (tmp_path / "tables" / tables[flag]).read_text()
            assert f"experiment={experiment} prompts.limit={n}" in table, flag  # its own rows' command
            assert f"- {n} images per cell" in table and "composition↑" in table and "McNemar" in table, flag
        if "--study" in named:
            study_md = (tmp_path / "tables" / "study.md").read_text()
            assert "| bwp |" in study_md and "| random_mask |" in study_md and "| uniform |" not in study_md
            assert (tmp_path / "tables" / "study_metrics_vs_resolution.png").is_file()
        if "--fd" in named:
            fd_md = (tmp_path / "tables" / "fd.md").read_text()
            assert "| native_resize |" in fd_md and "| bwp |" not in fd_md
            assert re.search(r"scene-FD↓\n\n.*\n.*\n\| dense \| \d+\.\d+ \[\d", fd_md)  # 4 images: an interval
        if "--baselines" in named:
            assert "| uniform |" in (tmp_path / "tables" / "baselines.md").read_text()
        if "--sweep-k" in named:
            assert "CR-Diff k=3" in (tmp_path / "tables" / "sweep_k.md").read_text()
            assert (tmp_path / "tables" / "scenes_metrics_vs_k.png").is_file()
        if "--sweep-ratios" in named:
            ratios = (tmp_path / "tables" / "sweep_ratios.md").read_text()
            assert "CR-Diff 0.1 / 0.3 / 0.3" in ratios and "CR-Diff 0.5 / 0.3 / 0.3" in ratios
    else:
        pytest.fail(f"{command.program} is documented but neither run here nor in NOT_RUN with a reason")
