"""Searched ratios per (model, resolution): `pruning.searched=true` takes, at each resolution a job runs,
the preset `<prefix>_<model>_<HxW>.yaml` that a search wrote for that pair (crdiff.experiment.ratio_search):
`searched_` for experiment=search (REF's protocol), and one prefix per other search protocol (`PROTOCOLS`).

A preset records what produced it (`objective`: model source and revision, resolution, prompt set,
scorer, the k images were scored with, steps, guidance, seed) and how its best point did against the
start on held-out seeds (`validation`). `pruning.searched` accepts a preset only when its model,
resolution, criterion and targets are the table's and its objective is the protocol the table names
(`pruning.search_protocol`, default `search`); anything else (a refinement on a user's prompt, another scorer, other weights) is refused with the
field that differs. Refinements are named `refined_<model>_<HxW>` and are never looked up here.

Presets are found on `pruning.preset_path`, first hit wins; by default `<output_dir>/presets/pruning/`
(where a search run with that output_dir leaves them) and then this repository's `conf/pruning/`. A
resolution without a preset falls back to `pruning.ratios`; its rows and tables say so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from crdiff.models import Resolution
from crdiff.pruning import validate_ratios

log = logging.getLogger("crdiff")
CONF = Path(__file__).resolve().parents[2] / "conf"
SOURCES = ("searched preset", "fallback: pruning.ratios (no searched preset)", "pruning.ratios")
# the objective fields that must equal experiment=search's protocol (they differ from a table's sampling
# on purpose: REF searches on two prompts at seed 24432 and k = 1, tables sample COCO at seed 42 and k = 1.5)
PROTOCOL = ("scorer", "prompts_digest", "k", "steps", "guidance", "seed")


def name(model: str, resolution: Resolution | str, refined: bool = False, prefix: str = "searched") -> str:
    """The preset a search of `model` at `resolution` writes; a refinement (k searched) is `refined_`."""
    return f"{'refined' if refined else prefix}_{model.replace('/', '--')}_{resolution}"


def prefix(experiment: str) -> str:
    """The preset-name prefix a search run by `experiment` writes (`searched` unless a protocol says)."""
    return PROTOCOLS.get(experiment, {}).get("prefix", "searched")


def _label(metric: str, tiny: bool) -> str:
    """A scorer as a preset records it: stand-ins are not the real weights (the miniatures' metrics have
    none: tiny or not, they are the shipped models)."""
    from crdiff.metrics.registry import MINIATURE_PREFIXES

    return metric + (" (stand-in)" if tiny and not metric.startswith(MINIATURE_PREFIXES) else "")


def scorer(run) -> str:
    """The search's scorer as a preset records it."""
    return _label(run.search.metric, run.metrics.tiny)


def objective(run, prompts, resolutions: list[Resolution]) -> dict[str, Any]:
    """What a search of `run` at `resolutions` scores: the preset's `objective` block."""
    weights = run.model.weights()
    return {"model": run.model.name, "source": weights.source, "revision": weights.revision,
            "resolution": "_".join(str(r) for r in resolutions), "prompts": prompts.name,
            "prompts_digest": prompts.digest(), "n_prompts": len(prompts), "scorer": scorer(run),
            "k": "searched" if run.search.search_k else run.amplify.k, "steps": run.sampler.steps,
            "guidance": run.sampler.guidance, "seed": run.sampler.seed,
            "negative_prompt": run.sampler.negative_prompt, "scheduler": run.sampler.scheduler}


# The search protocols, by the experiment file that runs each, written out so that this module needs no
# Hydra composition (tests/test_presets.py checks each against what its file composes to). experiment=search
# is REF's (docs/method.md §2); the scenes miniature has REF's protocol on its own scorer (two fixed prompts,
# k = 1) and a 30-prompt objective beside it, whose presets carry their own prefix so the two never collide.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "search": {"prefix": "searched", "scorer": "image_reward", "prompts": ("builtin", 2), "k": 1.0, "steps": 30,
               "guidance": 7.5, "seed": 24432},
    "scenes_search": {"prefix": "searched", "scorer": "scene_composition", "prompts": ("scenes", 2), "k": 1.0,
                      "steps": 20, "guidance": 3.0, "seed": 24432},
    "scenes_search30": {"prefix": "searched30", "scorer": "scene_composition", "prompts": ("scenes", 30),
                        "k": 1.0, "steps": 20, "guidance": 3.0, "seed": 100000},
}
SEARCH_PROTOCOL = PROTOCOLS["search"]


def protocol(run) -> dict[str, Any]:
    """The objective fields of the table's search protocol (its scorer on `run`'s stand-ins or real weights)."""
    from crdiff.experiment.prompts import load_prompts

    wanted = PROTOCOLS[run.pruning.search_protocol]
    kind, limit = wanted["prompts"]
    return {"scorer": _label(wanted["scorer"], run.metrics.tiny),
            "prompts_digest": load_prompts(kind, None, limit, []).digest(),
            **{f: wanted[f] for f in ("k", "steps", "guidance", "seed")}}


def preset_name(run, resolution: Resolution | str) -> str:
    """The preset `pruning.searched` looks up for `run` at `resolution`."""
    return name(run.model.name, resolution, prefix=PROTOCOLS[run.pruning.search_protocol]["prefix"])


def preset_path(run) -> list[Path]:
    if run.pruning.preset_path is not None:
        return [Path(p) for p in run.pruning.preset_path]
    return [Path(run.output_dir) / "presets" / "pruning", CONF / "pruning"]


def find(run, resolution: Resolution) -> Path | None:
    for folder in preset_path(run):
        path = folder / f"{preset_name(run, resolution)}.yaml"
        if path.is_file():
            return path
    return None


def load(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


def read(path: Path, run, resolution: Resolution) -> dict[str, float]:
    """The ratios of the preset at `path` for the table `run` at `resolution`, or one error naming what differs."""
    preset, pruning = load(path), run.pruning
    found = (preset.get("kind", "blockwise"), preset.get("criterion", "magnitude"), preset.get("targets"))
    if found != ("blockwise", pruning.criterion, pruning.targets):
        raise ValueError(f"preset {path} has kind, criterion, targets = {found}; pruning.searched takes blockwise "
                         f"presets of pruning.criterion={pruning.criterion!r}, pruning.targets={pruning.targets}")
    if pruning.criterion == "random" and preset.get("seed", 0) != pruning.seed:  # another seed, another mask
        raise ValueError(f"preset {path} was searched with random masks of seed {preset.get('seed', 0)}; "
                         f"pruning.seed is {pruning.seed}")
    recorded = preset.get("objective")
    if not recorded:
        raise ValueError(f"preset {path} records no objective (written before presets did); search again: "
                         f"python -m crdiff.run experiment={run.pruning.search_protocol} model={run.model.name} "
                         f"'search.resolutions=[{resolution}]'")
    weights = run.model.weights()
    table = {"source": weights.source, "revision": weights.revision, "resolution": str(resolution)}
    expected = {**table, **protocol(run)}
    for field, value in expected.items():
        if recorded.get(field) != value:
            protocol_name = run.pruning.search_protocol
            whose = "this table's" if field in table else f"experiment={protocol_name}'s protocol"
            raise ValueError(f"preset {path}: objective.{field} is {recorded.get(field)!r}, {whose} is {value!r}; "
                             f"pruning.searched takes only presets of experiment={protocol_name} (pruning.search_protocol) "
                             "for this model and resolution")
    return validate_ratios(preset["ratios"])


def ratios_at(run, resolution: Resolution | None) -> tuple[dict[str, float], str, str | None]:
    """(ratios, source, preset file) of the pruned methods at `resolution` (None: the configured ratios)."""
    if not run.pruning.searched or resolution is None:
        return run.pruning.ratios, SOURCES[2], None
    path = find(run, resolution)
    if path is None:
        return run.pruning.ratios, SOURCES[1], None
    return read(path, run, resolution), SOURCES[0], str(path)


def beats_start(path: str | None) -> bool | None:
    """Whether the preset's best point beat its start on the held-out seeds (its paired interval lies
    above 0); None without a preset or a validation."""
    if path is None:
        return None
    validation = load(Path(path)).get("validation")
    return None if not validation else bool(validation["beats_start"])


def report(run, resolutions: list[Resolution]) -> None:
    """One line per resolution at planning time: which preset, or the fallback and where it was looked for."""
    if not run.pruning.searched:
        return
    for res in resolutions:
        _, source, path = ratios_at(run, res)
        if path is None:
            log.warning("no preset %s.yaml on %s: CR-Diff at %s uses pruning.ratios %s (marked in its rows and "
                        "tables)", preset_name(run, res), [str(p) for p in preset_path(run)], res,
                        run.pruning.ratios)
        else:
            log.info("CR-Diff at %s: ratios of %s", res, path)
