"""What `python -m crdiff.run` (crdiff/run.py, the Hydra entry point) runs: plan, generate, score, write rows.

One job = every method × resolution of the config over one prompt set. Every image is made exactly
once by whichever rank or concurrent job claims it first; finished images are skipped, so running the
same command again resumes; rank 0 writes one result row per (method, resolution) key.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from crdiff.experiment import checks, distributed, hardware, presets, slurm
from crdiff.experiment.claims import Claims
from crdiff.experiment.config import RunConfig
from crdiff.models import MODELS, Resolution
from crdiff.experiment.prompts import PromptSet, load_prompts
from crdiff.pruning import GROUPS
from crdiff.experiment import methods
from crdiff.experiment.keys import METRICS_VERSION, run_key
from crdiff.experiment.results import load_table, provenance, write_row
from crdiff.metrics import intervals
from crdiff.metrics.fid import KID_SUBSETS

log = logging.getLogger("crdiff")
POLL_S = 2.0  # how often a job re-checks images other processes hold


@dataclass(frozen=True)
class Job:
    """One (method, resolution) cell of a table."""

    method: str
    setting: str  # "default" (training resolution), "unseen" or "beyond" (Table C)
    resolution: Resolution
    key: str
    folder: Path


@dataclass
class Plan:
    run: RunConfig
    prompts: PromptSet
    jobs: list[Job]
    output_dir: Path
    weights: dict[str, str | None] = field(default_factory=dict)  # job key -> pruned weights this rank held
    not_applicable: dict[str, str] = field(default_factory=dict)  # methods left out for this model -> why


def plan(run: RunConfig) -> Plan:
    """Validate everything that can be checked without a model, and lay out the jobs."""
    out = run.check_output_dir()
    prompts = load_prompts(run.prompts.kind, run.prompts.path, run.prompts.limit, run.prompts.texts)
    # images are keyed by the prompt set before prompts.limit cut it (image i is prompt i, seed + i whatever
    # the limit), result rows by the prompts they score
    source_key = {"name": prompts.name, "source": prompts.source_digest()}
    prompt_key = {"digest": prompts.digest(), "n": len(prompts)}
    if run.metrics.needs_reference:
        if prompts.image_paths is None:
            raise ValueError(f"metrics {run.metrics.names} include fid/kid, which need reference images: a prompt "
                             "CSV with an image_path column (e.g. prompts=coco5k from scripts/prepare_coco5k.py)")
        missing = [p for p in prompts.image_paths if not Path(p).is_file()]
        if missing:
            raise ValueError(f"{len(missing)} reference images are missing, e.g. {missing[0]!r}")
    if run.model.name in MODELS:
        for _, res in run.resolutions.selected():
            MODELS[run.model.name].check(res)
    presets.report(run, [res for _, res in run.resolutions.selected()])
    jobs, (planned, not_applicable) = [], methods.planned(run)
    for method, why in not_applicable.items():
        log.info("method %s is not applicable to model %s and is left out: %s", method, run.model.name, why)
    for method in planned:
        m = methods.get(run, method)
        m.check()
        for setting, res in run.resolutions.selected():
            # per resolution: under pruning.searched each resolution has its own ratios
            images_key = run_key(model=run.model, sampler=m.sampler(), prompts=source_key, method=method,
                                 settings=m.settings(res))
            images = out / "images" / run.model.name.replace("/", "--") / f"{method}-{images_key}"
            key = run_key(images=images_key, prompts=prompt_key, resolution=str(res), metrics=run.metrics,
                          metrics_version=METRICS_VERSION)
            jobs.append(Job(method, setting, res, key, images / str(res)))
    return Plan(run, prompts, jobs, out, not_applicable=not_applicable)


def plan_search(run: RunConfig) -> Plan:
    """A search's checks before any model loads: its prompts, its searches and their resolutions."""
    from crdiff.experiment.ratio_search import searches

    out = run.check_output_dir()
    prompts = load_prompts(run.prompts.kind, run.prompts.path, run.prompts.limit, run.prompts.texts)
    for search in searches(run):
        for res in search.resolutions:
            if run.model.name in MODELS:
                MODELS[run.model.name].check(res)
    return Plan(run, prompts, [], out)


def check_device(p: Plan) -> str:
    """This process's device, decided before any work: GPUs torch cannot use are an error, and so is
    a full-size model that `device=auto` would leave to the CPU (`device=cpu` asks for it)."""
    device = hardware.pick(p.run.device, int(distributed.launch_env(os.environ).get("LOCAL_RANK", "0")))
    spec = MODELS.get(p.run.model.name)
    if device != "cpu" or p.run.device != "auto" or (spec and spec.source.split(":")[0] in ("tiny", "bundled")):
        return device
    cost = ""
    if p.run.task == "generate":
        amplified = {m: (crd := p.run.method(m)) is not None and crd.k != 1 for m in p.run.methods}
        hours = hardware.cpu_hours([(len(p.prompts), methods.get(p.run, job.method).sampler().steps,
                                     job.resolution.height * job.resolution.width,
                                     amplified[job.method]) for job in p.jobs])
        cost = (f" ({len(p.jobs) * len(p.prompts)} images: at least {hours:,.1f} h on a 2-core CPU, from the "
                "sd15 UNet step time in results/bench/core_sd15_256x256_fp32_cpu.md scaled by pixels)")
    raise ValueError(f"model {p.run.model.name} is full size and this machine has no GPU{cost}; "
                     "run with device=cpu to use the CPU anyway")


def generate_all(p: Plan, ranks: distributed.Ranks, device: str) -> int:
    """Make every missing image this process can claim; returns how many it made.

    Work is cut into fixed batches of `sampler.batch_size` consecutive prompts per job, so any
    number of ranks or concurrent jobs makes images bit-identical to one process. A process
    claims an image before making it (crdiff.experiment.claims): ranks start on their own share of
    each job, then take the batches nobody holds, so concurrent jobs on one output_dir (a sweep's
    shared dense images, the same command twice) split the work and a dead job's claims are taken
    over. It returns once every image exists; the model loads only if something is left to make.
    """
    from crdiff.experiment.sampling import is_done, mark_done, recorded, verified

    n, size, seed = len(p.prompts), p.run.sampler.batch_size, p.run.sampler.seed
    known = {job.folder: verified(job.folder) for job in p.jobs}

    def done(job: Job, i: int) -> bool:  # recorded complete and unchanged on disk (a stat), else decoded
        mark = known[job.folder]
        return (i < len(mark) and mark[i] == recorded(job.folder, p.prompts, i, seed)) or \
            is_done(job.folder, p.prompts, i, seed)

    order = []
    for job in p.jobs:
        batches = [(job, list(range(s, min(s + size, n)))) for s in range(0, n, size)]
        mine = ranks.shard(list(range(len(batches))))
        order += [batches[b] for b in mine] + [b for i, b in enumerate(batches) if i % ranks.world != ranks.rank]
    maker = _Maker(p, device, ranks.is_main)
    waited = False
    while True:
        held_elsewhere = []
        for job, batch in order:
            todo = [i for i in batch if not done(job, i)]
            # images of this batch another process holds (all, or the rest of a batch it shares with a job
            # of another sampler.batch_size): come back until they exist, or take them over when their lease ends
            if todo and maker.make(job, todo) < len(todo):
                held_elsewhere.append((job, batch))
        if not held_elsewhere:
            for job in p.jobs:
                mark_done(job.folder, p.prompts, seed)  # writes only when the record changes
            return maker.close()
        if not waited:
            log.info("waiting for %d batches claimed by other processes", len(held_elsewhere))
            waited = True
        order = held_elsewhere
        time.sleep(POLL_S)


class _Maker:
    """The pipeline (loaded at the first image to make) and the method currently applied to it."""

    def __init__(self, p: Plan, device: str, show: bool) -> None:
        self.p, self.device, self.pipe, self.job, self.made = p, device, None, None, 0
        self.claims = {job.folder: Claims(job.folder, p.run.lease_min * 60) for job in p.jobs}
        self.bar = tqdm(desc="images", unit="img", disable=not show)

    def make(self, job: Job, todo: list[int]) -> int:
        """Claim `todo` in order up to the first image held elsewhere, make those; returns how many it claimed."""
        from crdiff.experiment.sampling import generate, is_done

        claims, seed = self.claims[job.folder], self.p.run.sampler.seed
        got = list(itertools.takewhile(claims.claim, todo))
        if not got:
            return 0
        try:
            mine = [i for i in got if not is_done(job.folder, self.p.prompts, i, seed)]  # finished meanwhile
            if mine:
                method = methods.get(self.p.run, job.method)
                with claims.renewing():
                    self.made += generate(self.pipeline(job), self.p.prompts, mine, job.resolution, method.sampler(),
                                          job.folder, self.bar.update, method.drawing_rule(),
                                          method.call_kwargs(job.resolution), self.p.run.vae_decode)
        finally:
            for i in got:
                claims.release(i)
        return len(got)

    def pipeline(self, job: Job):
        from crdiff.amplify import weights_used

        if self.pipe is None:
            from crdiff.experiment.sampling import set_scheduler

            self.pipe = self.p.run.model.load(self.device)  # the label's source, revision and weight variant
            set_scheduler(self.pipe, self.p.run.sampler.scheduler)
        if job is not self.job:
            methods.remove(self.pipe)
            methods.apply(self.pipe, self.p.run, job.method, job.resolution)
            self.p.weights[job.key] = weights_used(self.pipe)
            self.job = job
        return self.pipe

    def close(self) -> int:
        if self.pipe is not None:
            methods.remove(self.pipe)
        self.bar.close()
        return self.made


def existing_row(p: Plan, job: Job) -> dict[str, Any]:
    path = p.output_dir / "results" / f"{job.key}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def scored(p: Plan, job: Job) -> dict[str, Any] | None:
    """The stored scores of `job` (metrics, ci95, score files) if complete: every configured metric with
    its interval and its per-image file on disk; else None (rows scored before per-image scores existed
    are rescored from their kept images by rerunning the command that made them)."""
    old = existing_row(p, job)
    if not old:
        return None
    files = old.get("scores") or {}
    names = set(p.run.metrics.names)
    if not (names <= set(old.get("metrics", {})) and names <= set(old.get("ci95", {}))):
        return None
    paths = [files.get("per_image"), *files.get("features", {}).values(), *files.get("reference", {}).values()]
    if names and not all(path and (p.output_dir / path).is_file() for path in paths):
        return None
    ci95 = dict(old["ci95"])
    # scored before FID / KID had the jackknife (or KID before its leave-outs kept their subsets): those
    # intervals again from the kept features, no image drawn
    stale = [name for name in sorted(set(files.get("features", {})) & names)
             if intervals.stale(old.get("intervals"), name)]
    if stale:
        from crdiff.experiment.scoring import kept_feature_interval

        for name in stale:
            ci95[name] = kept_feature_interval(name, p.output_dir / files["features"][name],
                                               p.output_dir / files["reference"][name], p.run.metrics, len(p.prompts))
    return {"metrics": old["metrics"], "ci95": ci95, "scores": files}


def score_all(p: Plan, ranks: distributed.Ranks, device: str) -> dict[str, dict[str, Any]]:
    """Metrics of every job still missing them; all ranks take part, each on its share of images; rank 0
    writes each job's per-image scores and returns, per job key, {metrics, ci95, scores (files)}."""
    from crdiff.experiment.scoring import build_all, score_job, write_scores

    scores = {job.key: scored(p, job) for job in p.jobs}
    # every rank must score the same jobs (each score is a collective): a job is to do if any rank found
    # its row incomplete (another job on this output_dir may write a shared row between two ranks' reads)
    missing = ranks.all_sum([int(scores[job.key] is None) for job in p.jobs])
    todo = [job for job, n in zip(p.jobs, missing) if n]
    if not todo:
        return scores
    metrics = build_all(p.run.metrics, device)
    features = {name: metric.feature_name for name, metric in metrics.items() if metric.needs_reference}
    mine = ranks.shard(list(range(len(p.prompts))))
    reference = ranks.shard(list(range(len(p.prompts.image_paths or ()))))
    for job in tqdm(todo, desc="metrics", disable=not ranks.is_main):
        result = score_job(metrics, p.run.metrics, p.prompts, job.folder, mine, ranks.is_main, ranks.world,
                           reference, everywhere=lambda found: ranks.all_sum([int(found)])[0] == ranks.world,
                           device=device)
        files = (write_scores(p.output_dir, job.key, p.prompts, p.run.sampler.seed, result, features)
                 if ranks.is_main and p.run.metrics.names else {})
        scores[job.key] = {"metrics": result.values, "ci95": result.ci95, "scores": files}
    return scores


def row(p: Plan, job: Job, prov: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    from crdiff.experiment.sampling import cost

    method = methods.get(p.run, job.method)
    crd, rule, sampler = method.pruning(job.resolution), method.drawing_rule(), method.sampler()
    _, ratios_source, preset = presets.ratios_at(p.run, job.resolution)
    old = existing_row(p, job)
    return {
        # every experiment that produced or reused this row (one key, several experiments: a sweep_k job at
        # table_a's k makes table_a's row); the tables select rows by these names (crdiff.report.select)
        "experiments": sorted({*old.get("experiments", []), p.run.experiment}),
        "model": p.run.model.name, "dtype": p.run.model.dtype,
        "safety_checker": p.run.model.safety_checker,
        "source": p.run.model.weights().where,  # the weights behind the label: hub id[@revision] (variant) or folder
        "method": job.method, "setting": job.setting, "resolution": str(job.resolution),
        "height": job.resolution.height, "width": job.resolution.width,
        "prompts": p.prompts.name, "prompts_digest": p.prompts.digest(), "n_images": len(p.prompts),
        "k": None if crd is None else crd.k, "criterion": None if crd is None else crd.criterion,
        **{f"ratio_{g}": None if crd is None else crd.ratios[g] for g in GROUPS},
        "ratios_source": None if crd is None else ratios_source, "preset": None if crd is None else preset,
        # False: on held-out seeds the preset's ratios did not beat the search's start (its paired interval)
        "preset_beats_start": None if crd is None else presets.beats_start(preset),
        "steps": sampler.steps, "guidance": sampler.guidance, "seed": sampler.seed,
        "negative_prompt": sampler.negative_prompt, "metrics_version": METRICS_VERSION,
        "scheduler": sampler.scheduler, "image_dir": str(job.folder),
        # cost: denoiser passes and wall seconds per image as measured when the images were made
        "drawn_at": str(rule.size(job.resolution) if rule else job.resolution),
        **cost(job.folder, list(range(len(p.prompts)))),
        "preprocessing": p.run.metrics.preprocessing, **checks.count(job.folder, len(p.prompts)),
        "provenance": prov, **(scores or {"metrics": {}, "ci95": {}, "scores": {}}),
        "intervals": {"resamples": p.run.metrics.resamples, "feature_groups": p.run.metrics.feature_groups,
                      "seed": p.run.metrics.interval_seed, "level": 0.95, "method": "percentile bootstrap over prompts",
                      "feature_method": intervals.FEATURE_METHOD, "kid_leave_out": intervals.KID_LEAVE_OUT,
                      "kid_subsets": KID_SUBSETS, "kid_subset_size": min(p.run.metrics.kid_subset_size, len(p.prompts))},
        # how rank 0 held the pruned weights (amplify.weights resolved); kept from the last run that generated
        "weights": p.weights[job.key] if job.key in p.weights else old.get("weights"),
    }


def summary_scalars(result: dict[str, Any]) -> dict[str, float]:
    """`<metric>/<method>/<HxW>` (and the image counts, the ratios used) of one row, for the W&B summary:
    the runs of a sweep then plot metric vs the config value in a W&B panel without reading tables."""
    cell = f"{result['method']}/{result['resolution']}"
    values = {**result["metrics"], **{name: result[name] for name in ("nan_images", "black_images", "constant_images",
                                                                       *(f"ratio_{g}" for g in GROUPS))}}
    return {f"{name}/{cell}": value for name, value in values.items() if value is not None}


def finalize(p: Plan, device: str, counts: dict[str, int], scores: dict[str, dict[str, float]]):
    """Rank 0 only: result rows, grids, W&B; returns this run's table."""
    from crdiff.experiment.sampling import grid, sheet
    from crdiff.experiment.tracking import Tracker

    tracker = Tracker(p.run.wandb, asdict(p.run), f"{p.run.experiment}-{p.run.model.name}", str(p.output_dir))
    grids, prov, summary = {}, provenance(device), {}
    for job in p.jobs:
        result = row(p, job, prov, scores[job.key])
        checks.warn(result)
        write_row(p.output_dir / "results", job.key, result)
        summary |= summary_scalars(result)
        image = grid(job.folder, list(range(min(16, len(p.prompts)))))
        if image is not None:
            path = p.output_dir / "grids" / f"{job.method}_{job.resolution}_{job.key}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            grids[f"grid/{job.method}/{job.resolution}"] = image
    for _, res in p.run.resolutions.selected():  # one sheet per resolution: a row per method, same seeds
        rows = [[grids[f"grid/{m}/{res}"]] for m in p.run.methods if f"grid/{m}/{res}" in grids]
        if len(rows) > 1:
            sheet(rows).save(p.output_dir / "grids" / f"methods_{'_'.join(p.run.methods)}_{res}.png")
    table = load_table(p.output_dir).set_index("key").loc[[j.key for j in p.jobs]].reset_index()
    tracker.summarize(summary)
    tracker.log(counts)
    tracker.log_images(grids)
    tracker.log_table("results", table)
    tracker.finish()
    return table


def execute(run: RunConfig, p: Plan | None = None) -> dict[str, Any]:
    """Plan, generate this rank's share, gather once; returns counts (summed over ranks) and the table."""
    p = p or plan(run)
    check_device(p)
    slurm.log_restarts()
    ranks, device = distributed.init(run.device)
    try:
        distributed.check_shared(p.output_dir, ranks)
        here = generate_all(p, ranks, device)
        log.info("rank %d of %d made %d images", ranks.rank, ranks.world, here)
        made = ranks.all_sum([here])[0]
        total = len(p.jobs) * len(p.prompts)
        counts = {"generated": made, "skipped": total - made}  # skipped: made before or by other jobs
        ranks.barrier()
        scores = score_all(p, ranks, device)
        table = finalize(p, device, counts, scores) if ranks.is_main else None
        ranks.barrier()
    finally:
        distributed.shutdown()
    return {**counts, "table": table, "output_dir": str(p.output_dir), "not_applicable": p.not_applicable}
