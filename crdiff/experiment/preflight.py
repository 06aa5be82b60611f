"""Before any model loads: is every piece the run needs on this machine?

The model's weights, every configured metric's weights (as each metric class declares them in
`needs()`), the prompt file and, for FID / KID, the reference images. Each missing piece is one line
naming the command that fixes it; the CLI prints them as `crdiff: error: ...` and exits 2, so a run
that would fail after hours of generation fails in seconds instead.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from crdiff.experiment.config import RunConfig
from crdiff.weights import LocalFiles, Requirement, has_token, offline

PREPARE_COCO = ("python scripts/prepare_coco5k.py --captions annotations/captions_val2014.json "
                "--images val2014/ --out data/coco5k")


@dataclass(frozen=True)
class Missing:
    what: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what}: {self.problem}; fix: {self.fix}"


def model_requirements(run: RunConfig) -> list[Requirement]:
    """Tiny stand-ins are built from config on first use: nothing to fetch."""
    weights = run.model.weights()
    if weights.source.startswith("tiny:"):
        return []
    if weights.source.startswith("bundled:"):
        from crdiff.miniature import bundled

        folder, command = bundled(weights.source.removeprefix("bundled:"))
        return [LocalFiles(weights.what, (folder / "model_index.json",), command)]
    return [weights]


def metric_names(run: RunConfig) -> list[str]:
    """The metrics this run builds: a search builds its objective's scorer only (`search.metric`)."""
    if run.task == "search":
        return [run.search.metric]
    return list(run.metrics.names)


def requirements(run: RunConfig) -> list[Requirement]:
    """Everything `run` loads from disk, each piece once (FID and KID share Inception)."""
    from crdiff.experiment.scoring import metric_options
    from crdiff.metrics import metric_needs

    pieces = model_requirements(run)
    for name in metric_names(run):
        pieces += metric_needs(name, run.metrics.tiny, **metric_options(run.metrics, name))
    unique: dict[tuple[type, str], Requirement] = {}
    for piece in pieces:
        unique.setdefault((type(piece), piece.where), piece)
    return list(unique.values())


def hub_reachable(timeout: float = 2.0) -> bool:
    """One short request: without it, a missing hub file costs ~23 s of retries before failing."""
    if offline():
        return False
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - no network of any kind means the same here
        return False


# Overrides that do not change what is loaded, left out of the prefetch command a message names.
_NOT_FOR_PREFETCH = ("task=", "output_dir=", "device=", "wandb", "hydra", "prompts.", "sampler.")


def prefetch_command(overrides: list[str]) -> str:
    kept = [o for o in overrides if not o.lstrip("+~").startswith(_NOT_FOR_PREFETCH)]
    return "python scripts/prefetch_weights.py" + (f" {shlex.join(kept)}" if kept else "")


def missing_weights(run: RunConfig, overrides: list[str], reachable: bool | None = None) -> list[Missing]:
    """Weights not on this machine. With the hub reachable, hub pieces download at first use and only
    local files (folders, shipped assets) can be missing."""
    reachable = hub_reachable() if reachable is None else reachable
    out = []
    for piece in requirements(run):
        local = isinstance(piece, LocalFiles) or getattr(piece, "is_folder", False)
        problem = piece.missing()
        if problem is not None and reachable and not local and piece.gate \
                and not has_token():  # it would download at first use, but not without a token
            out.append(Missing(piece.what, problem, "accept the licence, then `hf auth login` (or set HF_TOKEN) and "
                               f"`{prefetch_command(overrides)}`"))
            continue
        if problem is None or (reachable and not local):
            continue
        if local:
            out.append(Missing(piece.what, problem, f"`{piece.fix}`"))
            continue
        why = " (HF_HUB_OFFLINE=1)" if offline() else " (hub unreachable)"
        out.append(Missing(piece.what, problem + why, f"`{prefetch_command(overrides)}` where the hub is reachable "
                           f"(or `{piece.fix}`), then run with HF_HUB_OFFLINE=1"))
    return out


def missing_data(run: RunConfig) -> list[Missing]:
    """The prompt file and, for FID / KID, the reference images it lists."""
    import csv

    from crdiff.metrics import REFERENCE_METRICS

    p = run.prompts
    if p.kind != "csv" or not p.path:
        return []  # other prompt kinds are built in or given inline; plan() validates them
    file = Path(p.path)
    if not file.is_file():
        return [Missing("prompts", f"prompt file {str(file)!r} does not exist",
                        f"`{PREPARE_COCO}` (COCO-5K), or prompts.path=<your CSV with a 'prompt' column>")]
    reference = [n for n in metric_names(run) if n in REFERENCE_METRICS]
    if not reference:
        return []
    with file.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "image_path" not in (reader.fieldnames or []):
            return [Missing("reference images", f"metrics {reference} need real images, but {file} has no "
                            "image_path column", f"`{PREPARE_COCO}` writes one")]
        paths = [row["image_path"] for row in reader][: p.limit]
    absent = [path for path in paths if not Path(path).is_file()]
    if absent:
        return [Missing("reference images", f"{len(absent)} of {len(paths)} images listed in {file} are missing, "
                        f"e.g. {absent[0]!r}", f"`{PREPARE_COCO}` with your copy of COCO val2014")]
    return []


def check(run: RunConfig, overrides: list[str] = (), reachable: bool | None = None) -> list[Missing]:
    """Every missing piece of `run` (empty: ready to run). `overrides` name the prefetch command."""
    return missing_data(run) + missing_weights(run, list(overrides), reachable)
