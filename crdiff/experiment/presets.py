"""Searched ratios per (model, resolution): `pruning.searched=true` takes, at each resolution a job runs,
the preset `searched_<model>_<HxW>.yaml` that `task=search` wrote for that pair (crdiff.experiment.ratio_search).

Presets are found on `pruning.preset_path`, first hit wins; by default
`<output_dir>/presets/pruning/` (where a search run with that output_dir leaves them) and then this
repository's `conf/pruning/` (presets committed with the code). A resolution without a preset falls back
to `pruning.ratios`; its rows say so (`ratios_source`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from crdiff.models import Resolution
from crdiff.pruning import validate_ratios

log = logging.getLogger("crdiff")
CONF = Path(__file__).resolve().parents[2] / "conf"
SOURCES = ("searched preset", "fallback: pruning.ratios (no searched preset)", "pruning.ratios")


def name(model: str, resolution: Resolution | str) -> str:
    """The preset a search of `model` at one `resolution` writes (ratio_search.write_preset's default)."""
    return f"searched_{model.replace('/', '--')}_{resolution}"


def preset_path(run) -> list[Path]:
    if run.pruning.preset_path is not None:
        return [Path(p) for p in run.pruning.preset_path]
    return [Path(run.output_dir) / "presets" / "pruning", CONF / "pruning"]


def find(run, resolution: Resolution) -> Path | None:
    for folder in preset_path(run):
        path = folder / f"{name(run.model.name, resolution)}.yaml"
        if path.is_file():
            return path
    return None


def read(path: Path, pruning) -> dict[str, float]:
    """The ratios of a pruning preset; one searched with another kind, criterion or targets than `pruning`
    would be applied differently from how it was found, and is refused."""
    from omegaconf import OmegaConf

    preset = OmegaConf.to_container(OmegaConf.load(path))
    found = (preset.get("kind", "blockwise"), preset.get("criterion", "magnitude"), preset.get("targets"))
    if found != ("blockwise", pruning.criterion, pruning.targets):
        raise ValueError(f"preset {path} has kind, criterion, targets = {found}; pruning.searched takes blockwise "
                         f"presets of pruning.criterion={pruning.criterion!r}, pruning.targets={pruning.targets}")
    if pruning.criterion == "random" and preset.get("seed", 0) != pruning.seed:  # another seed, another mask
        raise ValueError(f"preset {path} was searched with random masks of seed {preset.get('seed', 0)}; "
                         f"pruning.seed is {pruning.seed}")
    return validate_ratios(preset["ratios"])


def ratios_at(run, resolution: Resolution | None) -> tuple[dict[str, float], str, str | None]:
    """(ratios, source, preset file) of the pruned methods at `resolution` (None: the configured ratios)."""
    if not run.pruning.searched or resolution is None:
        return run.pruning.ratios, SOURCES[2], None
    path = find(run, resolution)
    if path is None:
        return run.pruning.ratios, SOURCES[1], None
    return read(path, run.pruning), SOURCES[0], str(path)


def report(run, resolutions: list[Resolution]) -> None:
    """One line per resolution at planning time: which preset, or the fallback and where it was looked for."""
    if not run.pruning.searched:
        return
    for res in resolutions:
        _, source, path = ratios_at(run, res)
        if path is None:
            log.warning("no preset %s.yaml on %s: CR-Diff at %s uses pruning.ratios %s (marked in its rows)",
                        name(run.model.name, res), [str(p) for p in preset_path(run)], res, run.pruning.ratios)
        else:
            log.info("CR-Diff at %s: ratios of %s", res, path)
