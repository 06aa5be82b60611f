"""Tables and figures of the miniature study (results/miniature/) from the runs' result rows.

The runs (three seed sets each but `make main`; 50 prompts and fewer sizes than the experiment files where
the header of the table says so, to keep the study's CPU time under ~35 min on a shared 2-core machine):

    python -m crdiff.run experiment=miniature                                   # main comparison (make main)
    python -m crdiff.run -m experiment=miniature sampler.seed=0,1000,2000 'resolutions.unseen=[24x24]' \
        'methods=[dense,crdiff]' output_dir=study/seeds                        # dense vs CR-Diff, 100 prompts
    python -m crdiff.run -m experiment=miniature sampler.seed=0,1000,2000 'methods=[dense,crdiff,native_resize]' \
        prompts.limit=50 output_dir=study/native
    python -m crdiff.run experiment=miniature prompts.limit=10 metrics=none 'resolutions.unseen=[32x64,64x64]' \
        output_dir=study/cost
    python -m crdiff.run -m experiment=miniature_sweep_k sampler.seed=0,1000,2000 prompts.limit=50 \
        'resolutions.unseen=[24x24,48x48]' output_dir=study/sweep_k
    python -m crdiff.run -m experiment=miniature_baselines sampler.seed=0,1000,2000 \
        'resolutions.unseen=[24x24]' output_dir=study/baselines
    python -m crdiff.run -m experiment=miniature_sweep_ratios sampler.seed=0,1000,2000 \
        'resolutions.unseen=[24x24,48x48]' output_dir=study/sweep_ratios
    python scripts/miniature_study.py --main outputs --seeds study/seeds --baselines study/baselines --sweep-k study/sweep_k \
        --sweep-ratios study/sweep_ratios --native study/native --cost study/cost --out results/miniature
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from crdiff.experiment.methods import METHODS
from crdiff.experiment.results import load_table
from crdiff.report.plots import metric_vs_k, metric_vs_resolution
from crdiff.report.select import report_rows
from crdiff.report.tables import (COST, METRICS, aggregate, cost_note, gains, gains_markdown, gains_title, paper_table,
                                  to_markdown, with_interval)

NAMES = ["digit_accuracy", "digit_fid"]
COST_TITLES = {"denoiser_calls": "denoiser calls per image (counted)", "seconds_per_image": "seconds per image",
               "peak_memory_gib": "peak memory (GiB; on a CPU the process's high-water mark, not per row)"}
SEEDS = "sampler.seed=0,1000,2000"
# the command each table came from (the module docstring's, without output_dir)
COMMANDS = {
    "main": "make main",
    "seeds": f"python -m crdiff.run -m experiment=miniature {SEEDS} 'resolutions.unseen=[24x24]' 'methods=[dense,crdiff]'",
    "native": f"python -m crdiff.run -m experiment=miniature {SEEDS} 'methods=[dense,crdiff,native_resize]' prompts.limit=50",
    "cost": "python -m crdiff.run experiment=miniature prompts.limit=10 metrics=none 'resolutions.unseen=[32x64,64x64]'",
    "sweep_k": f"python -m crdiff.run -m experiment=miniature_sweep_k {SEEDS} prompts.limit=50 'resolutions.unseen=[24x24,48x48]'",
    "baselines": f"python -m crdiff.run -m experiment=miniature_baselines {SEEDS} 'resolutions.unseen=[24x24]'",
    "sweep_ratios": f"python -m crdiff.run -m experiment=miniature_sweep_ratios {SEEDS} 'resolutions.unseen=[24x24,48x48]'",
}
REDUCED = ("reduced from the experiment file to keep the study's CPU time under ~35 min on a shared 2-core machine: "
           "{}")


CELLS = ("- cells: value [lo, hi], the 95% bootstrap interval over prompts (seed sets resampled together), "
         "and with several seed sets the standard deviation of the per-set values (seeds ±s); bold: better than "
         "the other side of a paired 95% interval over dense that excludes 0; digit-FID's interval is a delete-a-group "
         "jackknife over prompts (20 groups, centred on the value, clipped at 0): its sampling spread at this "
         "size, not its distance from the floor below")


def header(title: str, rows: pd.DataFrame, command: str, output_dir: str, reduced: str = "",
           prompt: str = "prompt i = digit i mod 10", cells: tuple[str, ...] = (CELLS,)) -> list[str]:
    """A study file's header: its command, provenance, sampling, reductions and how to read its cells."""
    # the selected rows' own provenance (one output_dir may hold several experiments' rows)
    prov = rows.provenance.iloc[0] if "provenance" in rows and isinstance(rows.provenance.iloc[0], dict) else \
        json.loads(sorted(Path(output_dir, "results").glob("*.json"))[0].read_text())["provenance"]
    seeds = sorted(set(rows.seed)) if "seed" in rows else [0]
    return [f"# {title}", "", f"- command: `{command}`",
            f"- commit {prov['git_sha'][:10]}, {prov['device_name']} ({prov['device']}), torch {prov['torch']}, "
            f"diffusers {prov['diffusers']}, {prov['time']}",
            f"- {rows.n_images.iloc[0]} images per cell and seed set ({prompt}, seed s + i for the "
            f"seed sets s = {', '.join(map(str, seeds))}), {rows.steps.iloc[0]} DDIM steps, guidance {rows.guidance.iloc[0]}",
            *([f"- {REDUCED.format(reduced)}"] if reduced else []), *cells, ""]


def ordered(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with `method` as a categorical in the documented order (crdiff.experiment.methods.METHODS), the
    controls (dense_cfg<g>, …, not in it) after them."""
    methods = [m for m in METHODS if m in set(rows.method)] + sorted(set(rows.method) - set(METHODS))
    return rows.assign(method=pd.Categorical(rows.method, methods, ordered=True))


def cost_sections(rows: pd.DataFrame, index: list[str]) -> list[str]:
    """The cost tables (where the rows recorded a cost) and the line naming the measuring device."""
    lines = []
    for name in COST:
        if name in rows and rows[name].notna().any():
            lines += [f"## {COST_TITLES[name]}", "", pivot(rows, index, name), ""]
    return lines + [cost_note(rows)] if lines else []


def pivot(cells: pd.DataFrame, index: list[str], metric: str) -> str:
    """One line per `index` value, one column per resolution: `value [lo, hi] (seeds ±s)` of one run per cell
    (`cells` from crdiff.report.tables.aggregate: a second run of a cell was refused before)."""
    lo, hi, spread = f"{metric}_lo", f"{metric}_hi", f"{metric}_spread"
    if metric in COST:  # a cost: its own format (calls/img as integers), no interval
        text = [COST[metric][1].format(v) for v in cells[metric]]
        table = cells.assign(text=text).pivot(index=index, columns="resolution", values="text")
        return _markdown(cells, table, index)
    text = [with_interval(v, *((cells.at[i, lo], cells.at[i, hi]) if lo in cells else ()))
            + ("" if spread not in cells or pd.isna(cells.at[i, spread]) else f" (seeds ±{cells.at[i, spread]:.3f})")
            for i, v in cells[metric].items()]
    table = cells.assign(text=text).pivot(index=index, columns="resolution", values="text")
    return _markdown(cells, table, index)


def _markdown(cells: pd.DataFrame, table: pd.DataFrame, index: list[str]) -> str:
    """A pivoted table as Markdown, resolutions by size."""
    order = list(dict.fromkeys(cells.sort_values(["height", "width"]).resolution))
    table = table[[r for r in order if r in table.columns]]
    lines = ["| " + " | ".join(index + list(table.columns)) + " |", "|" + "---|" * (len(index) + len(table.columns))]
    for key, values in table.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        lines.append("| " + " | ".join([*map(str, key), *("missing" if pd.isna(v) else v for v in values)]) + " |")
    return "\n".join(lines) + "\n"


def study_cells(output_dir: str, experiment: str, by: tuple[str, ...] = (),
                methods: tuple[str, ...] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(selected rows, one line per cell) of an experiment's rows: one run per cell, seed sets aggregated;
    `methods`: only these (the sweeps inherit native_resize from `miniature`, which neither k nor ratios
    change)."""
    rows, _ = report_rows(load_table(output_dir), experiment, by=by)
    if methods is not None:
        rows = rows[rows.method.isin(methods)]
    return rows, aggregate(rows, by=by)


def real_floor(sizes=(50, 100), draws: int = 20, seed: int = 0) -> tuple[str, dict[int, list[float]]]:
    """digit-FID of `draws` random subsets of each size of the real digits vs all 1,797 (same
    preprocessing): the value a perfect generator would score at that sample size."""
    import numpy as np
    import torch
    from PIL import Image

    from crdiff.miniature import digits
    from crdiff.metrics import build_metric, preprocess

    images, _ = digits.real_digits()
    real = [preprocess(Image.fromarray((im[0] * 255).round().byte().numpy()).convert("RGB")) for im in images]
    generator = torch.Generator().manual_seed(seed)
    fid = build_metric("digit_fid")
    fid.update_reference(real)
    reference, features = fid.reference(), fid.features(real).double()
    values = {n: [fid.value(reference, features[torch.randperm(len(real), generator=generator)[:n]])
                  for _ in range(draws)] for n in sizes}
    lines = ["# digit-FID of real digits against the reference (the small-sample floor)", "",
             f"- `python scripts/miniature_study.py --real-floor`; {draws} subsets per size drawn with torch seed {seed}",
             "", "| images | mean | 2.5% | 97.5% | min | max |", "|---|---|---|---|---|---|"]
    for n, v in values.items():
        lo, hi = np.percentile(v, [2.5, 97.5])
        lines.append(f"| {n} | {np.mean(v):.1f} | {lo:.1f} | {hi:.1f} | {min(v):.1f} | {max(v):.1f} |")
    return "\n".join(lines) + "\n", values


def floor_line(n: int, floors: dict[int, list[float]]) -> str:
    """The digit-FID floor at `n` images (each seed set's digit-FID is computed on n images); sizes other than
    real_floor.md's are drawn on demand."""
    if n not in floors:
        floors.update(real_floor((n,))[1])
    low, high = np.percentile(floors[n], [2.5, 97.5])
    return (f"digit-FID floor at {n} images (real digits against the reference, 20 draws, `real_floor.md`): mean "
            f"{np.mean(floors[n]):.1f}, 95% of draws {low:.1f}–{high:.1f}. A cell's digit-FID is the mean of its seed "
            f"sets' values, each on {n} images: read it against this, not against 0.\n")


def gains_by(rows: pd.DataFrame, by: tuple[str, ...], label) -> pd.DataFrame:
    """Gains over dense of each setting of `by` (a k, a ratio triple) in turn, `label(values)` naming the
    method; dense rows have no such setting and are every setting's baseline."""
    dense, parts = rows[rows.method == "dense"], []
    for values, group in rows[rows.method != "dense"].groupby(list(by), sort=True):
        parts.append(gains(pd.concat([dense, group])).assign(method=label(values)))
    return pd.concat(parts, ignore_index=True)


def gains_section(found: pd.DataFrame, baseline: str = "dense") -> list[str]:
    """The gains table, one block per method (METHODS' order, then as found), resolutions by size."""
    title = gains_title() if baseline == "dense" else gains_title().replace("dense", baseline.replace("crdiff", "CR-Diff"))
    order = {m: i for i, m in enumerate(dict.fromkeys([*METHODS, *found.method]))}
    size = [tuple(map(int, r.split("x"))) for r in found.resolution]
    found = found.assign(_m=found.method.map(order), _s=size).sort_values(["_m", "_s", "metric"], kind="stable")
    return [f"## {title}", "", gains_markdown(found, baseline), ""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("main", "seeds", "baselines", "sweep_k", "sweep_ratios", "native", "cost"):
        parser.add_argument(f"--{name.replace('_', '-')}", help=f"output_dir of the {name} run")
    parser.add_argument("--real-floor", action="store_true",
                        help="digit-FID of random subsets of the real digits against all of them (the small-sample floor)")
    parser.add_argument("--out", default="results/miniature")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text, floors = real_floor()  # the draws of real_floor.md: 50 and 100 images
    written = []

    def write(name: str, lines: list[str], found: pd.DataFrame | None = None) -> None:
        (out / f"{name}.md").write_text("\n".join(lines))
        written.append(out / f"{name}.md")
        if found is not None:
            (out / f"{name}_gains.csv").write_text(found.to_csv(index=False))
            written.append(out / f"{name}_gains.csv")

    for name, folder in (("main", args.main), ("seeds", args.seeds)):
        if not folder:
            continue
        rows, cells = study_cells(folder, "miniature")
        lines = header("Miniature: dense vs CR-Diff" + (", three seed sets" if name == "seeds" else ""), rows,
                       COMMANDS[name], folder)
        methods = tuple(m for m in METHODS if m in set(rows.method))
        found = gains(rows)
        for setting, title in (("default", "Training resolution"), ("unseen", "Unseen resolutions")):
            lines += [f"## {title}", "", to_markdown(paper_table(cells, setting, methods, found)), ""]
        if not found.empty:
            lines += gains_section(found)
        lines.append(floor_line(int(rows.n_images.iloc[0]), floors))
        if "seconds_device" in rows:
            lines.append(cost_note(rows))
        write(name, lines, found)
        if name == "main":
            written.append(metric_vs_resolution(cells, "digits", out))
    if args.baselines:
        # k, steps and guidance left free: bwp is k = 1 and the controls change steps or guidance by design
        rows, cells = study_cells(args.baselines, "miniature_baselines", by=("k", "steps", "guidance"))
        cells = ordered(cells)
        lines = header("Miniature: every method side by side", rows, COMMANDS["baselines"], args.baselines,
                       "sizes 32x32, 24x24 (not 32x64, 48x48, 64x64)")
        for metric in NAMES:
            lines += [f"## {METRICS[metric][0]}", "", pivot(cells, ["method"], metric), ""]
        found = gains(rows)
        lines += [floor_line(int(rows.n_images.iloc[0]), floors), *gains_section(found), *cost_sections(cells, ["method"])]
        write("baselines", lines, found)
    if args.sweep_k:
        rows, cells = study_cells(args.sweep_k, "miniature_sweep_k", by=("k",), methods=("dense", "crdiff"))
        lines = header("Miniature: k sweep (k = 0 is dense, k = 1 is BWP alone)", rows, COMMANDS["sweep_k"], args.sweep_k,
                       "50 prompts (not 100), sizes 32x32, 24x24, 48x48 (not 32x64, 64x64)")
        for metric in NAMES:
            lines += [f"## {METRICS[metric][0]}", "", pivot(cells.assign(k=cells.k.fillna(0.0)), ["k"], metric), ""]
        found = gains_by(rows, ("k",), lambda v: f"CR-Diff k={v[0]:g}")
        lines += [floor_line(int(rows.n_images.iloc[0]), floors), *gains_section(found)]
        write("sweep_k", lines, found)
        written.append(metric_vs_k(cells, "digits", out))
    if args.sweep_ratios:
        by = ("ratio_down", "ratio_mid", "ratio_up")
        rows, cells = study_cells(args.sweep_ratios, "miniature_sweep_ratios", by=by, methods=("dense", "crdiff"))
        cells = cells.assign(ratios=[("dense" if m == "dense" else f"{d:.1f} / {mi:.1f} / {u:.1f}")
                                     for m, d, mi, u in zip(cells.method, cells.ratio_down, cells.ratio_mid, cells.ratio_up)])
        lines = header("Miniature: ratio sweep (down / mid / up, k = 1.5)", rows, COMMANDS["sweep_ratios"],
                       args.sweep_ratios, "sizes 24x24, 48x48 (not 64x64)")
        for metric in NAMES:
            lines += [f"## {METRICS[metric][0]}", "", pivot(cells, ["ratios"], metric), ""]
        found = gains_by(rows, by, lambda v: "CR-Diff " + " / ".join(f"{r:.1f}" for r in v))
        lines += [floor_line(int(rows.n_images.iloc[0]), floors), *gains_section(found)]
        write("sweep_ratios", lines, found)
    if args.native:
        rows, cells = study_cells(args.native, "miniature")
        cells = ordered(cells)
        lines = header("Miniature: native_resize (draw at the training size or the nearest trained aspect, then "
                       "resize) beside dense and CR-Diff", rows, COMMANDS["native"], args.native, "50 prompts (not 100)")
        drawn = rows[rows.method == "native_resize"].drop_duplicates("resolution").sort_values(["height", "width"])
        lines += ["native_resize draws at: " + ", ".join(f"{r} from {d}" for r, d in zip(drawn.resolution, drawn.drawn_at))
                  + " (centre crop to the target aspect, then Lanczos)", ""]
        for metric in NAMES:
            lines += [f"## {METRICS[metric][0]}", "", pivot(cells, ["method"], metric), ""]
        found = gains(rows)
        versus = gains(rows[rows.method.isin(["crdiff", "native_resize"])], baseline="crdiff")
        lines += [floor_line(int(rows.n_images.iloc[0]), floors), *gains_section(found),
                  *gains_section(versus, "crdiff"), *cost_sections(cells, ["method"])]
        if args.cost:
            cost_rows, cost = study_cells(args.cost, "miniature")
            lines += ["# Cost of dense, CR-Diff and native_resize side by side", "",
                      *header("", cost_rows, COMMANDS["cost"], args.cost)[2:5], "",
                      *cost_sections(ordered(cost), ["method"])]
        write("native_resize", lines, pd.concat([found.assign(baseline="dense"), versus.assign(baseline="crdiff")],
                                                ignore_index=True))
    if args.real_floor:
        (out / "real_floor.md").write_text(text)
        written.append(out / "real_floor.md")
    print("\n".join(str(p) for p in written if p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
