"""`task=search`: the ratio search on a loaded pipeline, resumable, written out as a validated pruning preset.

One search per (model, resolution), as the paper: with `search.resolutions` empty a job searches each
resolution the tables need (the model's `resolutions.sets`) one after the other on one loaded pipeline;
`search.resolutions=[a, b]` is one joint search over both, under its own name. Every trial re-derives
the pruned weights in place from the dense ones (`remove_crdiff` + `apply_crdiff` with a
`MagnitudeIndex`: no reload, no copy). Under torchrun the ranks split each trial's prompts and agree
on its scores, or on its failure, with one collective, so all ranks walk the identical trajectory;
rank 0 writes the state, the trial CSV and the preset. After the search the best point and the start
are scored on held-out seeds of the same prompts, and the preset records both with a paired interval.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from crdiff import atomic
from crdiff.amplify import apply_crdiff, denoiser_of, remove_crdiff, weights_used
from crdiff.experiment import distributed, presets
from crdiff.experiment.config import RunConfig
from crdiff.experiment.keys import run_key
from crdiff.experiment.prompts import PromptSet, load_prompts
from crdiff.experiment.results import provenance
from crdiff.experiment.sampling import draw, set_scheduler
from crdiff.experiment.scoring import metric_options
from crdiff.metrics import build_metric, preprocess
from crdiff.models import Resolution
from crdiff.pruning import GROUPS, MagnitudeIndex
from crdiff.search import SearchState, anneal

log = logging.getLogger("crdiff")
TRAJECTORY = 2  # joins the state's key: states of the walk before REF's order (1) are not resumed


class TrialFailed(RuntimeError):
    """A trial raised on some rank: every rank raises this, so all score it `failed_score` together."""


@dataclass
class Objective:
    """The scores of the images at `point` (ratios, and k when searched) for every prompt x resolution."""

    pipe: Any
    prompts: PromptSet
    resolutions: list[Resolution]
    run: RunConfig
    metric: Any  # a per-image score (crdiff.metrics.base.MeanScore)
    index: MagnitudeIndex
    ranks: distributed.Ranks = distributed.Ranks()

    weights: str | None = None  # the mode `amplify.weights` resolved to at the first trial

    def apply(self, point: dict[str, float] | None) -> None:
        """The pipeline at `point` (None: dense), pruned once for every resolution of the trial."""
        remove_crdiff(self.pipe)
        if point is None:
            return
        p, a = self.run.pruning, self.run.amplify
        apply_crdiff(self.pipe, {g: point[g] for g in GROUPS}, k=point.get("k", a.k), criterion=p.criterion,
                     seed=p.seed, batched=a.batched, index=self.index, targets=p.targets,
                     weights=self.weights or a.weights, memory_budget_gib=None if self.weights else a.memory_budget_gib)
        self.weights = weights_used(self.pipe)  # same images in every mode: decide (and log) `auto` once

    def images(self, point: dict[str, float] | None, seed: int) -> dict[Resolution, list]:
        """This rank's images at `point`, image i of prompt i drawn with `seed + i`."""
        self.apply(point)
        sampler = replace(self.run.sampler, seed=seed)
        mine = self.ranks.shard(list(range(len(self.prompts))))
        return {res: draw(self.pipe, self.prompts, mine, res, sampler) for res in self.resolutions}

    def scores(self, point: dict[str, float] | None, seeds: list[int] | None = None,
               keep: dict[Resolution, list] | None = None) -> list[float]:
        """Per-image scores over all ranks (seed-major, then resolution, then prompt); `keep` receives this
        rank's images of the first seed. A trial that raises on any rank raises `TrialFailed` on every
        rank: one collective carries the scores and the failures."""
        seeds = [self.run.sampler.seed] if seeds is None else seeds
        n, mine = len(self.prompts), self.ranks.shard(list(range(len(self.prompts))))
        values, failed = [0.0] * (len(seeds) * len(self.resolutions) * n), 0.0
        try:
            for s, seed in enumerate(seeds):
                drawn = self.images(point, seed)
                if keep is not None and s == 0:
                    keep.update(drawn)
                for r, (res, images) in enumerate(drawn.items()):
                    for i, value in zip(mine, self._score(images, [self.prompts.prompts[i] for i in mine])):
                        values[(s * len(self.resolutions) + r) * n + i] = value
        except Exception as err:  # noqa: BLE001 - every rank must reach the collective below
            log.warning("rank %d: trial %s failed (%s: %s)", self.ranks.rank, point, type(err).__name__, err)
            failed = 1.0
        *total, failures = self.ranks.all_sum_float(values + [failed])
        if failures:
            raise TrialFailed(f"the trial at {point} failed on {int(failures)} of {self.ranks.world} ranks")
        return total

    def _score(self, images: list, prompts: list[str]) -> list[float]:
        size, mode = self.run.metrics.batch_size, self.run.metrics.preprocessing
        out = []
        with torch.no_grad():
            for s in range(0, len(images), size):
                batch = [preprocess(im, mode) for im in images[s : s + size]]
                out += self.metric.score(batch, prompts[s : s + size]).double().cpu().tolist()
        return out

    __call__ = scores


@dataclass(frozen=True)
class Search:
    """One search of a job: the resolutions it scores together and the preset it writes."""

    resolutions: tuple[Resolution, ...]
    preset: str

    @property
    def label(self) -> str:
        return "_".join(str(r) for r in self.resolutions)


def searches(run: RunConfig) -> list[Search]:
    """`search.resolutions` given: one (joint) search over them; empty: one per resolution the tables need."""
    refined = run.search.search_k
    if run.search.resolutions:
        groups = [tuple(Resolution.parse(t) for t in run.search.resolutions)]
    else:
        groups = [(res,) for _, res in run.resolutions.selected()]
    prefix = presets.prefix(run.experiment)
    found = [Search(g, presets.name(run.model.name, "_".join(str(r) for r in g), refined, prefix)) for g in groups]
    if run.search.preset_name:
        if len(found) > 1:
            raise ValueError(f"search.preset_name names one preset, but this job runs {len(found)} searches "
                             f"({', '.join(s.label for s in found)}); give search.resolutions=[HxW] too")
        found = [replace(found[0], preset=run.search.preset_name)]
    return found


def start_point(run: RunConfig) -> dict[str, float]:
    return dict(run.search.settings().start)


def search_dir(run: RunConfig, prompts: PromptSet, search: Search) -> Path:
    key = run_key(model=run.model, sampler=run.sampler, prompts=prompts.digest(), search=run.search,
                  resolutions=[str(r) for r in search.resolutions], amplify=run.amplify, pruning=run.pruning,
                  metrics=run.metrics, trajectory=TRAJECTORY)
    return Path(run.output_dir) / "search" / f"{run.model.name.replace('/', '--')}-{search.label}-{key}"


def trials_csv(state: SearchState) -> bytes:
    buffer = io.StringIO()
    fields = ["iteration", "kind", *[k for k in ("down", "mid", "up", "k") if any(k in h for h in state.history)],
              "score", "temperature", "cached", "failed"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(state.history)
    return buffer.getvalue().encode()


def trial_step(trial: dict[str, Any], state: SearchState) -> dict[str, Any]:
    """One W&B step per trial: its ratios (and k), score, temperature, and the best so far."""
    return {**{k: trial[k] for k in ("iteration", "down", "mid", "up", "k", "score", "temperature", "cached")
               if k in trial}, "best_score": state.best_score, **{f"best_{k}": v for k, v in state.best.items()}}


def held_out_seeds(run: RunConfig, n_prompts: int) -> list[int]:
    """`search.validation_seeds` blocks past the search's own seeds: image i of block j (1-based) uses
    `sampler.seed + j * n_prompts + i`, so no validation image repeats a searched one."""
    return [run.sampler.seed + j * n_prompts for j in range(1, run.search.validation_seeds + 1)]


def paired(best: list[float], start: list[float]) -> dict[str, Any]:
    """Mean of best and start, their mean paired difference and its 95% t interval."""
    from scipy import stats

    diffs = [b - s for b, s in zip(best, start)]
    m = len(diffs)
    mean = sum(diffs) / m
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (m - 1)) if m > 1 else math.nan
    half = float(stats.t.ppf(0.975, m - 1)) * sd / math.sqrt(m) if m > 1 else math.nan
    interval = [mean - half, mean + half]
    return {"images": m, "best": sum(best) / m, "start": sum(start) / m, "difference": mean,
            "interval": interval, "beats_start": bool(interval[0] > 0)}


def validate(objective: Objective, state: SearchState, run: RunConfig) -> dict[str, Any]:
    """The best point and the start, scored on the held-out seeds of the same prompts, paired per image."""
    seeds = held_out_seeds(run, len(objective.prompts))
    best, start = objective.scores(state.best, seeds), objective.scores(start_point(run), seeds)
    return {"seeds": [seeds[0], seeds[-1] + len(objective.prompts) - 1], **paired(best, start)}


def write_preset(run: RunConfig, state: SearchState, search: Search, prompts: PromptSet, device: str,
                 validation: dict[str, Any] | None = None) -> Path:
    """<output_dir>/presets/pruning/<name>.yaml (or under search.preset_root): experiments select it with
    pruning=<name>, found through the Hydra search path (conf/config.yaml adds <output_dir>/presets)."""
    root = Path(run.search.preset_root) if run.search.preset_root else Path(run.output_dir) / "presets"
    ratios = {g: round(state.best[g], 4) for g in GROUPS}
    prov = provenance(device)
    found = {"score": state.best_score, "start_score": state.history[0]["score"], "iterations": state.iteration,
             "trials": len(state.history)}
    lines = [
        f"# Searched by crdiff.ratio_search: model {run.model.name}, resolution(s) {search.label},",
        f"# {run.search.metric} {state.best_score:.4f} (start {state.history[0]['score']:.4f}), "
        f"{state.iteration} iterations, {len(state.cache)} distinct trials, prompts '{run.prompts.kind}'.",
        f"# git {prov['git_sha']}, {prov['device_name']}, {prov['time']}.",
        "defaults: [schema, _self_]",
        "ratios: {" + ", ".join(f"{g}: {v}" for g, v in ratios.items()) + "}",
        f"criterion: {run.pruning.criterion}",  # what the search pruned with: the preset reproduces it
        f"seed: {run.pruning.seed}",
        f"targets: {json.dumps(run.pruning.targets)}",
        f"objective: {json.dumps({**presets.objective(run, prompts, list(search.resolutions)), **found})}",
        f"validation: {json.dumps(validation)}",
    ]
    path = root / "pruning" / f"{search.preset}.yaml"
    atomic.write_bytes(path, ("\n".join(lines) + "\n").encode())
    if "k" in state.best:  # prompt-specific refinement searched k too
        atomic.write_bytes(root / "amplify" / f"{search.preset}.yaml",
                           f"# k searched with {path.name}\ndefaults: [schema, _self_]\nk: {round(state.best['k'], 4)}\n".encode())
    return path


def run_search(run: RunConfig) -> list[dict[str, Any]]:
    """Load once; for each search: anneal (resuming any saved state), validate, write trials and preset."""
    prompts = load_prompts(run.prompts.kind, run.prompts.path, run.prompts.limit, run.prompts.texts)
    ranks, device = distributed.init(run.device)
    try:
        # every rank resumes from the same state file: a node-local output_dir would desync the walks silently
        distributed.check_shared(Path(run.output_dir), ranks)
        pipe = run.model.load(device)
        set_scheduler(pipe, run.sampler.scheduler)
        metric = build_metric(run.search.metric, tiny=run.metrics.tiny, device=device,
                              **metric_options(run.metrics, run.search.metric))
        index = MagnitudeIndex(denoiser_of(pipe), run.pruning.targets)
        results = []
        for search in searches(run):
            objective = Objective(pipe, prompts, list(search.resolutions), run, metric, index, ranks)
            results.append(_one(run, search, prompts, objective, ranks, device))
        ranks.barrier()
        return results
    finally:
        distributed.shutdown()


def _one(run: RunConfig, search: Search, prompts: PromptSet, objective: Objective, ranks, device: str) -> dict:
    from crdiff.experiment.tracking import Tracker

    folder = search_dir(run, prompts, search)
    config = {**asdict(run), "search_dir": str(folder), "search_resolutions": search.label}
    tracker = Tracker(run.wandb, config, f"search-{run.model.name}-{search.label}", run.output_dir) \
        if ranks.is_main else None
    state_file = folder / "state.json"
    logged = [len(SearchState.load(state_file).history) if state_file.exists() else 0]  # by an earlier run

    def on_trial(state: SearchState) -> None:
        if ranks.is_main:
            atomic.write_bytes(folder / "trials.csv", trials_csv(state))
            for trial in state.history[logged[0]:]:  # the last checkpoint adds no trial; a restart two
                tracker.log(trial_step(trial, state))
            logged[0] = len(state.history)

    state = anneal(objective, run.search.settings(), state_file, on_trial, save=ranks.is_main)
    validation = validate(objective, state, run) if run.search.validation_seeds else None
    result = {"best": state.best, "best_score": state.best_score, "iterations": state.iteration,
              "folder": str(folder), "resolutions": search.label, "validation": validation}
    if ranks.is_main:
        result["preset"] = str(write_preset(run, state, search, prompts, device, validation))
    if run.search.compare:
        result["comparison"] = compare(objective, state, folder, ranks)
    remove_crdiff(objective.pipe)
    if tracker:
        tracker.summarize({"best_score": state.best_score, **{f"best_{k}": v for k, v in state.best.items()},
                           **({"validation_difference": validation["difference"]} if validation else {})})
        tracker.finish()
    return result


def compare(objective: Objective, state: SearchState, folder: Path, ranks) -> dict[str, float]:
    """Dense vs the searched setting on the search's own prompts and seeds: images side by side and scores."""
    from crdiff.experiment.sampling import sheet

    dense_images, refined_images = {}, {}
    dense, refined = objective.scores(None, keep=dense_images), objective.scores(state.best, keep=refined_images)
    scores = {"dense": sum(dense) / len(dense), "refined": sum(refined) / len(refined)}
    if ranks.is_main:  # this rank's prompts: dense row above the refined row
        for resolution in objective.resolutions:
            sheet([dense_images[resolution], refined_images[resolution]]).save(
                folder / f"dense_vs_refined_{resolution}.png")
        atomic.write_json(folder / "comparison.json", {**scores, "best": state.best})
    return scores
