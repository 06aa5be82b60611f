"""`python -m crdiff.run <overrides>` (console script `crdiff-run`): the Hydra entry point, the only
module that sees DictConfig; the work is in crdiff.experiment.run (generate, score), crdiff.experiment.planner
(`task=plan`) and crdiff.experiment.ratio_search (`task=search`)."""

from __future__ import annotations

import sys
from pathlib import Path

from crdiff.experiment import distributed, planner, preflight, schemas, slurm
from crdiff.experiment.config import RunConfig
from crdiff.experiment.run import check_device, execute, plan, plan_search


def preset_overrides(run: RunConfig, preset: Path) -> str:
    """The overrides that select a preset the search wrote (its folder is on the search path by default)."""
    choice = f"pruning={preset.stem}" + (f" amplify={preset.stem}" if run.search.search_k else "")
    if preset.parent.parent.resolve() == (Path(run.output_dir) / "presets").resolve() and run.output_dir == "outputs":
        return choice
    return f"{choice} 'hydra.searchpath=[file://{preset.parent.parent.resolve()}]'"


def cli() -> None:
    """Console entry point (`crdiff-run`), same as `python -m crdiff.run`."""
    import hydra
    from omegaconf import OmegaConf

    schemas.register()
    slurm.quiet_sacct()  # under hydra/launcher=slurm*, on a SLURM without accounting

    @hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[1] / "conf"),
                config_name="config")
    def main(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig


        overrides = list(HydraConfig.get().overrides.task)
        try:
            run = RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))
            if run.task == "plan":  # loads no weights: prints the jobs, their cost and what is missing
                print(planner.report(planner.runs_of(overrides, HydraConfig.get()), overrides))
                return
            missing = preflight.check(run, overrides)  # every file the run will read, before any model loads
            for piece in missing:
                print(f"crdiff: error: {piece}", file=sys.stderr)
            if missing:
                sys.exit(2)
            checked = plan_search(run) if run.task == "search" else plan(run)  # every input check, no model yet
            check_device(checked)
        except (ValueError, TypeError) as err:
            print(f"crdiff: error: {err}", file=sys.stderr)
            sys.exit(2)
        if run.task == "search":
            from crdiff.experiment.ratio_search import run_search

            try:
                results = run_search(run)
            except distributed.NotShared as err:  # found at start, on every rank
                print(f"crdiff: error: {err}", file=sys.stderr)
                sys.exit(2)
            for result in results:
                if "preset" not in result:  # ranks other than 0 write nothing
                    continue
                v = result["validation"]
                held_out = "" if v is None else (
                    f"; held-out seeds: best - start {v['difference']:+.4f} [{v['interval'][0]:+.4f}, "
                    f"{v['interval'][1]:+.4f}] over {v['images']} images"
                    + ("" if v["beats_start"] else ", NOT better than the start"))
                print(f"crdiff: search best {result['best_score']:.4f} at {result['best']} ({result['resolutions']}, "
                      f"{result['iterations']} iterations){held_out} -> preset {result['preset']}\n"
                      f"crdiff: use it with {preset_overrides(run, Path(result['preset']))}")
            return
        try:
            summary = execute(run, checked)
        except distributed.NotShared as err:  # found at start, on every rank
            print(f"crdiff: error: {err}", file=sys.stderr)
            sys.exit(2)
        if summary["table"] is None:  # ranks other than 0 report nothing
            return
        print(f"crdiff: generated {summary['generated']} images, skipped {summary['skipped']} "
              f"(output_dir={summary['output_dir']})")
        if len(summary["table"]):
            cols = ["method", "setting", "resolution", "n_images", "k", *run.metrics.names, "denoiser_calls",
                    "seconds_per_image", "key"]
            print(summary["table"][cols].to_string(index=False))

    main()


if __name__ == "__main__":
    cli()
