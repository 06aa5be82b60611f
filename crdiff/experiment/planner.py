"""`python -m crdiff.run task=plan <overrides>`: what a command will do and cost, before it runs.

One row per job (method x resolution, for each value of a sweep), the images already on disk, a
GPU-hour estimate from the per-image times recorded in results/bench/throughput.csv, the disk the
images take, and every missing piece (crdiff.experiment.preflight). Loads no weights. A time measured
at a smaller size is scaled up by the denoiser's FLOPs (its real architecture counted on the meta
device), which include self-attention's tokens^2 growth; down, by pixel count (see `seconds_per_image`). `task=plan`
plans the command without it: `task=plan experiment=search` plans the search (one row per search
and resolution: its trials at most, the images they draw, validation included).
"""

from __future__ import annotations

import csv
import functools
import itertools
from dataclasses import dataclass
from pathlib import Path

from crdiff.experiment import methods
from crdiff.experiment.config import RunConfig
from crdiff.experiment.run import plan
from crdiff.models import DTYPES, Resolution

THROUGHPUT = Path(__file__).resolve().parents[2] / "results" / "bench" / "throughput.csv"
# A generated photo saved as PNG: ~1.7 bytes per pixel (an assumption, not a measurement), used until
# a job has images on disk, whose mean size is then used instead.
PNG_BYTES_PER_PIXEL = 1.7
# Models without their own measurement that share another's UNet layout and widths (SD2.1: SD1.5's
# blocks with linear projections and 1024-d cross-attention): an estimate, said so in the output.
SAME_COST = {"sd21": "sd15"}


# ---- which runs: each value of a sweep ------------------------------------------------------------
def expand(overrides: list[str], sweep: dict[str, str] | None = None) -> list[list[str]]:
    """The override lists of every job of a sweep: `model=sd15,sd21` on the command line and an
    experiment's `hydra.sweeper.params` (a command-line value wins over the experiment's)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    given = parser.parse_overrides(list(overrides))
    keys = {o.get_key_element() for o in given}
    params = [f"{k}={v}" for k, v in (sweep or {}).items() if k not in keys]
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
            else [o.input_line] for o in given + parser.parse_overrides(params)]
    return [list(combo) for combo in itertools.product(*axes)]


def compose_runs(overrides: list[str], sweep: dict[str, str] | None = None) -> list[tuple[list[str], RunConfig]]:
    """(overrides, RunConfig) of every job; `sweep=None` reads the experiment's own sweeper params."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from crdiff.experiment import schemas

    schemas.register()

    def build(ovr: list[str], hydra: bool = False):
        return compose("config", overrides=ovr, return_hydra_config=hydra)

    def runs():
        from hydra.core.override_parser.overrides_parser import OverridesParser

        fixed = [o.input_line for o in OverridesParser.create().parse_overrides(list(overrides))
                 if not o.is_sweep_override()]
        params = sweep
        if params is None:
            found = build(fixed, True).hydra.sweeper.params
            params = OmegaConf.to_container(found, resolve=False) if found else {}
        out = []
        for combo in expand(overrides, {k: str(v) for k, v in params.items()}):
            cfg = OmegaConf.to_container(build(combo), resolve=True)
            out.append((combo, RunConfig.from_dict(cfg)))
        return out

    if GlobalHydra.instance().is_initialized():  # inside `python -m crdiff.run`
        return runs()
    with initialize_config_dir(str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        return runs()


def runs_of(overrides: list[str], hydra_cfg) -> list[tuple[list[str], RunConfig]]:
    """The runs of this command: in a single run the experiment's sweep is expanded here (so
    `task=plan experiment=table_b` shows its three models); under `-m` Hydra already made this job one."""
    from hydra.types import RunMode

    planned = [o for o in overrides if o.replace(" ", "") != "task=plan"]  # the command's own task
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return compose_runs(planned, sweep={})
    return compose_runs(planned, sweep={str(k): str(v) for k, v in (hydra_cfg.sweeper.params or {}).items()})


# ---- the cost of one image ------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    model: str
    resolution: Resolution
    dtype: str
    method: str
    device_name: str
    steps: int
    seconds_per_image: float
    kind: str  # "job": a whole job timed; "unet_calls": denoiser calls only (a lower bound)
    source: str


def measurements(path: Path = THROUGHPUT) -> list[Measurement]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [Measurement(r["model"], Resolution.parse(r["resolution"]), r["dtype"], r["method"], r["device_name"],
                            int(r["steps"]), float(r["seconds_per_image"]), r["kind"], r["source"])
                for r in csv.DictReader(f)]


SEARCH = "search"  # the method column of a search's rows


def cost_class(run: RunConfig, method: str, resolution: Resolution | None = None) -> str:
    """`crdiff` (two denoiser evaluations per step, one batched call) / `crdiff_sequential` / `dense`
    (one evaluation: dense, bwp's pruned net alone, freeu, entropy): the method's own (Method.cost_class).
    A search scores at `amplify.k` (1: the pruned net alone), or at a searched k (two evaluations)."""
    if method != SEARCH:
        return methods.get(run, method).cost_class(resolution)
    k = None if run.search.search_k else run.amplify.k
    if k in (0.0, 1.0):
        return "dense"
    return "crdiff" if run.amplify.batched else "crdiff_sequential"


@functools.lru_cache(maxsize=None)
def denoiser_flops(model: str, resolution: Resolution) -> int | None:
    """FLOPs of one call of `model`'s real UNet (crdiff.models.UNET_CONFIGS) on one sample of `resolution`,
    counted on the meta device (no weights, no compute): convolutions and linear layers grow with the
    tokens, self-attention's scores with tokens^2. None for a model without a UNet config."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from crdiff.models import UNET_CONFIGS, random_unet

    if model not in UNET_CONFIGS:
        return None
    unet = random_unet(model, meta=True)
    c = unet.config
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        extra = {}
        if c.addition_embed_type == "text_time":  # SDXL's pooled text and size conditioning
            text = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
            extra = {"added_cond_kwargs": {"text_embeds": torch.zeros(1, text), "time_ids": torch.zeros(1, 6)}}
        unet(torch.zeros(1, c.in_channels, resolution.height // 8, resolution.width // 8), torch.zeros(1),
             torch.zeros(1, 77, c.cross_attention_dim), **extra)
    return counter.get_total_flops()


def _growth(model: str, measured: Resolution, target: Resolution) -> tuple[float, str]:
    """(time at `target` / time at `measured`, how): by the denoiser's FLOPs scaling up, else by pixels.
    Scaling down by pixels overestimates a little (attention shrinks faster; a card is less busy)."""
    pixels = target.height * target.width / (measured.height * measured.width)
    if pixels > 1 and (flops := denoiser_flops(model, measured)) is not None:
        return denoiser_flops(model, target) / flops, f"scaled from {measured} by the denoiser's FLOPs " \
            f"(x{denoiser_flops(model, target) / flops:.2f}; pixels x{pixels:.2f}: self-attention grows as tokens^2)"
    return pixels, f"scaled from {measured} by pixel count"


def seconds_per_image(table: list[Measurement], model: str, resolution: Resolution, dtype: str, method: str,
                      steps: int) -> tuple[float, Measurement, str] | None:
    """(seconds, the measurement used, how it was scaled): a whole-job row before a denoiser-call row,
    the same resolution before the nearest pixel count (time scaled by `_growth`: FLOPs up, pixels down),
    the same dtype before another of the same width (fp16 ~ bf16); time scales with the step count."""
    measured = model if any(m.model == model for m in table) else SAME_COST.get(model, model)
    width = DTYPES[dtype].itemsize if dtype in DTYPES else None
    rows = [m for m in table if m.model == measured and m.method == method
            and (m.dtype == dtype or DTYPES[m.dtype].itemsize == width)]
    if not rows:
        return None
    pixels = resolution.height * resolution.width

    def rank(m: Measurement):
        return (m.kind != "job", m.dtype != dtype, abs(m.resolution.height * m.resolution.width - pixels))

    best = min(rows, key=rank)
    scale, how = _growth(best.model, best.resolution, resolution)
    notes = [n for n, on in ((f"{best.model} measured for {model}", best.model != model),
                             (how, best.resolution != resolution),
                             (f"{best.dtype} measured for {dtype}", best.dtype != dtype)) if on]
    return best.seconds_per_image * scale * steps / best.steps, best, "; ".join(notes)


# ---- the plan ------------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    method: str
    resolution: Resolution
    images: int | None
    done: int
    folder: str
    bytes_per_image: float | None = None


def _done(folder: Path, n: int) -> tuple[int, float | None]:
    """Images whose PNG and metadata both exist (the run re-validates each one), and their mean size."""
    if not folder.is_dir():
        return 0, None
    sizes = [(folder / f"{i:05d}.png").stat().st_size for i in range(n)
             if (folder / f"{i:05d}.png").is_file() and (folder / f"{i:05d}.json").is_file()]
    return len(sizes), (sum(sizes) / len(sizes) if sizes else None)


def search_rows(run: RunConfig) -> tuple[list[Row], list[str]]:
    """One row per (search, resolution): the images of every trial it may run and of its validation."""
    from crdiff.experiment.ratio_search import search_dir, searches
    from crdiff.experiment.run import plan_search
    from crdiff.search import SearchState

    p = plan_search(run)
    cfg, n, validation = run.search.settings(), len(p.prompts), run.search.validation_seeds
    trials = 1 + cfg.iterations + cfg.max_restarts
    rows, notes = [], [f"a search: at most {trials} trials (start, {cfg.iterations} moves, {cfg.max_restarts} "
                       f"restarts; cached points and an early stop cost nothing) x {n} prompts per resolution, "
                       f"then best and start on {validation} held-out seeds ({2 * validation * n} images)"]
    for search in searches(run):
        folder = search_dir(run, p.prompts, search)
        state = folder / "state.json"
        done = len(SearchState.load(state).history) * n if state.exists() else 0
        for res in search.resolutions:
            rows.append(Row(run.model.name, SEARCH, res, trials * n + 2 * validation * n, done, str(folder)))
    return rows, notes


def rows_of(run: RunConfig) -> tuple[list[Row], list[str]]:
    """The jobs of one run, and why a job's count or folder is unknown (a missing prompt file)."""
    if run.task == "search":
        return search_rows(run)
    try:
        p = plan(run)
    except ValueError as err:
        n = run.prompts.limit
        note = f"{err}" + ("" if n else "; pass prompts.limit=N to plan N prompts per job")
        return [Row(run.model.name, m, res, n, 0, "?") for m in run.methods for _, res in
                run.resolutions.selected()], [note]
    rows = []
    for job in p.jobs:
        done, size = _done(job.folder, len(p.prompts))
        rows.append(Row(run.model.name, job.method, job.resolution, len(p.prompts), done, str(job.folder),
                        bytes_per_image=size))
    return rows, []


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return ""


def report(runs: list[tuple[list[str], RunConfig]], overrides: list[str] = (), table: list[Measurement] | None = None,
           reachable: bool | None = None) -> str:
    """The printed plan of `runs` (see the module docstring)."""
    from crdiff.experiment import preflight

    table = measurements() if table is None else table
    lines, notes, missing, used, cards, unknown, counted = [], [], [], {}, set(), set(), True
    total = todo = 0
    disk = hours_total = 0.0
    header = f"{'model':<10} {'method':<12} {'resolution':<10} {'images':>7} {'done':>7} {'to do':>7} {'GPU-h':>7}  folder"
    for _, run in runs:
        rows, why = rows_of(run)
        notes += [n for n in why if n not in notes]
        for piece in preflight.check(run, list(overrides), reachable):
            if str(piece) not in missing:
                missing.append(str(piece))
        for r in rows:
            left = None if r.images is None else r.images - r.done
            method = None if r.method == SEARCH else methods.get(run, r.method)
            steps = run.sampler.steps if method is None else method.sampler().steps
            rule = None if method is None else method.drawing_rule()  # native_resize draws at its bucket
            drawn = rule.size(r.resolution) if rule else r.resolution
            est = seconds_per_image(table, run.model.name, drawn, run.model.dtype, cost_class(run, r.method), steps)
            hours = None
            if est is not None and left is not None:
                seconds, m, how = est
                hours = seconds * left / 3600
                hours_total += hours
                cards.add(m.device_name)
                used.setdefault(f"{run.model.name} {cost_class(run, r.method)}: {m.model} {m.resolution} {m.dtype} "
                                f"{m.method}, {m.steps} steps ({m.kind}: {m.source})" + (f" [{how}]" if how else ""))
            elif est is None:
                unknown.add(f"{run.model.name} {run.model.dtype} {cost_class(run, r.method)}")
            counted &= r.images is not None
            if r.images is not None:
                total, todo = total + r.images, todo + left
                per_image = r.bytes_per_image or PNG_BYTES_PER_PIXEL * r.resolution.height * r.resolution.width
                disk += 0 if r.method == SEARCH else per_image * left  # a search keeps no images
            lines.append(f"{r.model:<10} {r.method:<12} {str(r.resolution):<10} "
                         f"{'?' if r.images is None else r.images:>7} {r.done:>7} {'?' if left is None else left:>7} "
                         f"{'?' if hours is None else f'{hours:.2f}':>7}  {r.folder}")
    out = [header, *lines]
    out.append(f"total: {total} images ({todo} to generate)" + ("" if counted else " -- counts unknown for some jobs"))
    if used:
        out.append(f"estimate: {hours_total:.1f} GPU-hours on {', '.join(sorted(cards))} -- an estimate, not a "
                   f"measurement, from results/bench/{THROUGHPUT.name}:")
        out += [f"  {m}" for m in used]
        if any("unet_calls" in m for m in used):
            out.append("  unet_calls rows time the denoiser only: text encoders, VAE decode, PNG writes and metrics "
                       "add to it")
    for what in sorted(unknown):
        out.append(f"estimate: no measurement for {what} in {THROUGHPUT.name}; those jobs are left out of the hours")
    out.append(f"disk: ~{_fmt_bytes(disk)} for the images still to generate (PNG, ~{PNG_BYTES_PER_PIXEL} bytes/pixel "
               "assumed where no image of the job exists yet)")
    out += [f"note: {n}" for n in notes]
    out += [f"missing: {m}" for m in missing] or ["missing: nothing"]
    return "\n".join(out)
