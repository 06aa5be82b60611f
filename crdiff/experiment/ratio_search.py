"""`task=search`: the ratio search on a loaded pipeline, resumable, written out as a pruning preset.

The pipeline loads once; every trial re-derives the pruned weights in place from the dense ones
(`remove_crdiff` + `apply_crdiff` with a `MagnitudeIndex`: no reload, no copy). Under torchrun the
ranks split each trial's prompts and the metric's synced mean gives every rank the same score, so
all ranks walk the identical trajectory; rank 0 writes the state, the trial CSV and the preset.
"""

from __future__ import annotations

import csv
import json
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crdiff.experiment import distributed
from crdiff.amplify import apply_crdiff, denoiser_of, remove_crdiff, weights_used
from crdiff.experiment.config import RunConfig
from crdiff.metrics import ImageMetric, build_metric, preprocess
from crdiff.models import Resolution
from crdiff.experiment.prompts import PromptSet, load_prompts
from crdiff.pruning import GROUPS, MagnitudeIndex
from crdiff import atomic
from crdiff.experiment.keys import run_key
from crdiff.experiment.results import provenance
from crdiff.experiment import presets
from crdiff.experiment.sampling import draw, set_scheduler
from crdiff.experiment.scoring import metric_options
from crdiff.search import SearchState, anneal



@dataclass
class Objective:
    """Mean metric of the images at `point` (ratios, and k when searched) over prompts x resolutions."""

    pipe: Any
    prompts: PromptSet
    indices: list[int]  # this rank's prompts
    resolutions: list[Resolution]
    run: RunConfig
    metric: ImageMetric
    index: MagnitudeIndex

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

    def evaluate(self, point: dict[str, float] | None) -> tuple[float, dict[Resolution, list]]:
        """(synced mean score, this rank's images per resolution) at `point`, seeds `sampler.seed + i`."""
        self.metric.reset()
        self.apply(point)
        drawn = {}
        for resolution in self.resolutions:
            drawn[resolution] = draw(self.pipe, self.prompts, self.indices, resolution, self.run.sampler)
            self.metric.update([preprocess(im, self.run.metrics.preprocessing) for im in drawn[resolution]],
                               [self.prompts.prompts[i] for i in self.indices])
        return self.metric.compute(), drawn

    def score(self, point: dict[str, float] | None) -> float:
        return self.evaluate(point)[0]

    __call__ = score


def search_resolutions(run: RunConfig) -> list[Resolution]:
    texts = run.search.resolutions or run.resolutions.unseen[:1] or run.resolutions.default[:1]
    return [Resolution.parse(t) for t in texts]


def search_dir(run: RunConfig, prompts: PromptSet, resolutions: list[Resolution]) -> Path:
    key = run_key(model=run.model, sampler=run.sampler, prompts=prompts.digest(), search=run.search,
                  resolutions=[str(r) for r in resolutions], amplify=run.amplify, pruning=run.pruning,
                  metrics=run.metrics)
    return Path(run.output_dir) / "search" / f"{run.model.name.replace('/', '--')}-{key}"


def trials_csv(state: SearchState) -> bytes:
    buffer = io.StringIO()
    fields = ["iteration", "kind", *[k for k in ("down", "mid", "up", "k") if any(k in h for h in state.history)],
              "score", "temperature", "cached"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(state.history)
    return buffer.getvalue().encode()


def trial_step(trial: dict[str, Any], state: SearchState) -> dict[str, Any]:
    """One W&B step per trial: its ratios (and k), score, temperature, and the best so far."""
    return {**{k: trial[k] for k in ("iteration", "down", "mid", "up", "k", "score", "temperature", "cached")
               if k in trial}, "best_score": state.best_score, **{f"best_{k}": v for k, v in state.best.items()}}


def write_preset(run: RunConfig, state: SearchState, resolutions: list[Resolution], device: str) -> Path:
    """<output_dir>/presets/pruning/<name>.yaml (or under search.preset_root): experiments select it with
    pruning=<name>, found through the Hydra search path (conf/config.yaml adds <output_dir>/presets)."""
    # a hub id's "/" becomes "--", as in the name `pruning.searched` looks for (crdiff.experiment.presets)
    name = run.search.preset_name or presets.name(run.model.name, "_".join(str(r) for r in resolutions))
    root = Path(run.search.preset_root) if run.search.preset_root else Path(run.output_dir) / "presets"
    ratios = {g: round(state.best[g], 4) for g in GROUPS}
    prov = provenance(device)
    lines = [
        f"# Searched by crdiff.ratio_search: model {run.model.name}, resolution(s) {[str(r) for r in resolutions]},",
        f"# {run.search.metric} {state.best_score:.4f} (start {state.history[0]['score']:.4f}), "
        f"{state.iteration} iterations, {len(state.cache)} distinct trials, prompts '{run.prompts.kind}'.",
        f"# git {prov['git_sha']}, {prov['device_name']}, {prov['time']}.",
        "defaults: [schema, _self_]",
        "ratios: {" + ", ".join(f"{g}: {v}" for g, v in ratios.items()) + "}",
        f"criterion: {run.pruning.criterion}",  # what the search pruned with: the preset reproduces it
        f"seed: {run.pruning.seed}",
        f"targets: {json.dumps(run.pruning.targets)}",
    ]
    path = root / "pruning" / f"{name}.yaml"
    atomic.write_bytes(path, ("\n".join(lines) + "\n").encode())
    if "k" in state.best:  # prompt-specific refinement searched k too
        atomic.write_bytes(root / "amplify" / f"{name}.yaml",
                           f"# k searched with {path.name}\ndefaults: [schema, _self_]\nk: {round(state.best['k'], 4)}\n".encode())
    return path


def run_search(run: RunConfig) -> dict[str, Any]:
    """Load once, anneal (resuming any saved state), write trials, preset and optional comparison."""
    from crdiff.experiment.tracking import Tracker

    prompts = load_prompts(run.prompts.kind, run.prompts.path, run.prompts.limit, run.prompts.texts)
    resolutions = search_resolutions(run)
    folder = search_dir(run, prompts, resolutions)
    ranks, device = distributed.init(run.device)
    try:
        pipe = run.model.load(device)
        set_scheduler(pipe, run.sampler.scheduler)
        metric = build_metric(run.search.metric, tiny=run.metrics.tiny, device=device,
                              **metric_options(run.metrics, run.search.metric))
        objective = Objective(pipe, prompts, ranks.shard(list(range(len(prompts)))), resolutions, run, metric,
                              MagnitudeIndex(denoiser_of(pipe), run.pruning.targets))
        config = {**asdict(run), "search_dir": str(folder), "search_resolutions": [str(r) for r in resolutions]}
        tracker = Tracker(run.wandb, config, f"search-{run.model.name}", run.output_dir) if ranks.is_main else None

        state_file = folder / "state.json"
        logged = [len(SearchState.load(state_file).history) if state_file.exists() else 0]  # by an earlier run

        def on_trial(state: SearchState) -> None:
            if ranks.is_main:
                atomic.write_bytes(folder / "trials.csv", trials_csv(state))
                for trial in state.history[logged[0]:]:  # the last checkpoint adds no trial; a restart two
                    tracker.log(trial_step(trial, state))
                logged[0] = len(state.history)

        state = anneal(objective, run.search.settings(), state_file, on_trial, save=ranks.is_main)
        result = {"best": state.best, "best_score": state.best_score, "iterations": state.iteration,
                  "folder": str(folder)}
        if ranks.is_main:
            result["preset"] = str(write_preset(run, state, resolutions, device))
        if run.search.compare:
            result["comparison"] = compare(objective, state, folder, ranks)
        if tracker:
            tracker.summarize({"best_score": state.best_score, **{f"best_{k}": v for k, v in state.best.items()}})
            tracker.finish()
        ranks.barrier()
        return result
    finally:
        distributed.shutdown()


def compare(objective: Objective, state: SearchState, folder: Path, ranks) -> dict[str, float]:
    """Dense vs the searched setting on the search's own prompts: images side by side and scores."""
    from crdiff.experiment.sampling import sheet

    (dense, dense_images), (refined, refined_images) = objective.evaluate(None), objective.evaluate(state.best)
    scores = {"dense": dense, "refined": refined}
    if ranks.is_main:  # this rank's prompts: dense row above the refined row
        for resolution in objective.resolutions:
            sheet([dense_images[resolution], refined_images[resolution]]).save(
                folder / f"dense_vs_refined_{resolution}.png")
        atomic.write_json(folder / "comparison.json", {**scores, "best": state.best})
    remove_crdiff(objective.pipe)
    return scores
