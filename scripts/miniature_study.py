"""Tables and figures of the miniature study (results/miniature/) from the runs' result rows.

    python -m crdiff.run experiment=miniature                                   # main comparison (make main)
    python -m crdiff.run experiment=miniature_baselines output_dir=study/baselines
    python -m crdiff.run -m experiment=miniature_sweep_k output_dir=study/sweep_k
    python -m crdiff.run -m experiment=miniature_sweep_ratios output_dir=study/sweep_ratios
    python -m crdiff.run experiment=miniature methods=[dense,native_resize] output_dir=study/native
    python -m crdiff.run experiment=miniature prompts.limit=10 metrics=none resolutions.unseen=[32x64,64x64] \
        output_dir=study/cost
    python scripts/miniature_study.py --main outputs --baselines study/baselines --sweep-k study/sweep_k \
        --sweep-ratios study/sweep_ratios --native study/native --cost study/cost --out results/miniature
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from crdiff.experiment.methods import METHODS
from crdiff.report.plots import metric_vs_k, metric_vs_resolution
from crdiff.experiment.results import load_table
from crdiff.report.tables import COST, METRICS, cost_note, paper_table, to_markdown

NAMES = ["digit_accuracy", "digit_fid"]
COST_TITLES = {"denoiser_calls": "denoiser calls per image (counted)", "seconds_per_image": "seconds per image"}


def header(title: str, rows: pd.DataFrame, command: str, output_dir: str) -> list[str]:
    first = sorted(Path(output_dir, "results").glob("*.json"))[0]
    prov = json.loads(first.read_text())["provenance"]
    return [f"# {title}", "", f"- command: `{command}`",
            f"- commit {prov['git_sha'][:10]}, {prov['device_name']} ({prov['device']}), torch {prov['torch']}, "
            f"diffusers {prov['diffusers']}, {prov['time']}",
            f"- {rows.n_images.iloc[0]} images per cell (prompt i = digit i mod 10, seed i), {rows.steps.iloc[0]} DDIM "
            f"steps, guidance {rows.guidance.iloc[0]}", ""]


def ordered(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with `method` as a categorical in the documented order (crdiff.experiment.methods.METHODS)."""
    methods = [m for m in METHODS if m in set(rows.method)]
    return rows.assign(method=pd.Categorical(rows.method, methods, ordered=True))


def cost_sections(rows: pd.DataFrame, index: list[str]) -> list[str]:
    """The cost tables (where the rows recorded a cost) and the line naming the measuring device."""
    lines = []
    for name in COST:
        if name in rows and rows[name].notna().any():
            lines += [f"## {COST_TITLES[name]}", "", pivot(rows, index, name), ""]
    return lines + [cost_note(rows)] if lines else []


def pivot(rows: pd.DataFrame, index: list[str], metric: str) -> str:
    table = rows.pivot_table(index=index, columns="resolution", values=metric, aggfunc="first")
    order = list(dict.fromkeys(rows.sort_values(["height", "width"]).resolution))
    table = table[[r for r in order if r in table.columns]]
    lines = ["| " + " | ".join(index + list(table.columns)) + " |", "|" + "---|" * (len(index) + len(table.columns))]
    for key, values in table.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        lines.append("| " + " | ".join([*map(str, key), *(f"{v:.3f}" for v in values)]) + " |")
    return "\n".join(lines) + "\n"


def real_floor(sizes=(50, 100), draws: int = 3, seed: int = 0) -> str:
    """digit-FID of `draws` random subsets of each size of the real digits vs all 1,797 (same preprocessing)."""
    import torch
    from PIL import Image

    from crdiff.miniature import digits
    from crdiff.metrics import build_metric, preprocess

    images, _ = digits.real_digits()
    real = [preprocess(Image.fromarray((im[0] * 255).round().byte().numpy()).convert("RGB")) for im in images]
    generator = torch.Generator().manual_seed(seed)
    lines = ["# digit-FID of real digits against the reference (the small-sample floor)", "",
             f"- `python scripts/miniature_study.py --real-floor`; subsets drawn with torch seed {seed}", "",
             "| images | " + " | ".join(f"draw {d + 1}" for d in range(draws)) + " |", "|---|" + "---|" * draws]
    for n in sizes:
        values = []
        for _ in range(draws):
            fid = build_metric("digit_fid")
            fid.update_reference(real)
            fid.update([real[i] for i in torch.randperm(len(real), generator=generator)[:n].tolist()], [""] * n)
            values.append(f"{fid.compute():.1f}")
        lines.append(f"| {n} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("main", "baselines", "sweep_k", "sweep_ratios", "native", "cost"):
        parser.add_argument(f"--{name.replace('_', '-')}", help=f"output_dir of the {name} run")
    parser.add_argument("--real-floor", action="store_true",
                        help="digit-FID of random subsets of the real digits against all of them (the small-sample floor)")
    parser.add_argument("--out", default="results/miniature")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if args.main:
        rows = load_table(args.main)
        rows = rows[rows.experiment == "miniature"]
        lines = header("Miniature: dense vs CR-Diff", rows, "make main", args.main)
        methods = tuple(m for m in METHODS if m in set(rows.method))
        for setting, title in (("default", "Training resolution"), ("unseen", "Unseen resolutions")):
            lines += [f"## {title}", "", to_markdown(paper_table(rows, setting, methods)), ""]
        if "seconds_device" in rows:
            lines.append(cost_note(rows))
        (out / "main.md").write_text("\n".join(lines))
        written += [out / "main.md", metric_vs_resolution(rows, "digits", out)]
    if args.baselines:
        rows = ordered(load_table(args.baselines))
        lines = header("Miniature: every method side by side", rows, "python -m crdiff.run experiment=miniature_baselines",
                       args.baselines)
        for metric in NAMES:
            lines += [f"## {METRICS[metric][0]}", "", pivot(rows, ["method"], metric), ""]
        lines += cost_sections(rows, ["method"])
        (out / "baselines.md").write_text("\n".join(lines))
        written.append(out / "baselines.md")
    if args.sweep_k:
        rows = load_table(args.sweep_k)
        rows.loc[rows.method == "dense", "k"] = 0.0
        lines = header("Miniature: k sweep (k = 0 is dense, k = 1 is BWP alone)", rows,
                       "python -m crdiff.run -m experiment=miniature_sweep_k", args.sweep_k)
        for metric in NAMES:
            lines += [f"## {METRICS[metric][0]}", "", pivot(rows, ["k"], metric), ""]
        (out / "sweep_k.md").write_text("\n".join(lines))
        written += [out / "sweep_k.md", metric_vs_k(rows.assign(k=rows.k.where(rows.method != "dense")), "digits", out)]
    if args.sweep_ratios:
        rows = load_table(args.sweep_ratios)
        rows = rows.assign(ratios=[("dense" if m == "dense" else f"{d:.1f} / {mi:.1f} / {u:.1f}")
                                   for m, d, mi, u in zip(rows.method, rows.ratio_down, rows.ratio_mid, rows.ratio_up)])
        lines = header("Miniature: ratio sweep (down / mid / up, k = 1.5)", rows,
                       "python -m crdiff.run -m experiment=miniature_sweep_ratios", args.sweep_ratios)
        for metric in NAMES:
            lines += [f"## {METRICS[metric][0]}", "", pivot(rows, ["ratios"], metric), ""]
        (out / "sweep_ratios.md").write_text("\n".join(lines))
        written.append(out / "sweep_ratios.md")
    if args.native:
        rows = ordered(load_table(args.native))
        lines = header("Miniature: native_resize (draw at the training size or the nearest trained aspect, then "
                       "resize)", rows, "python -m crdiff.run experiment=miniature methods=[native_resize]; dense: methods=[dense] "
                       "resolutions.unseen=[24x24,32x64,48x48], the main job's images",
                       args.native)
        drawn = rows[rows.method == "native_resize"].sort_values(["height", "width"])
        lines += ["native_resize draws at: " + ", ".join(f"{r} from {d}" for r, d in zip(drawn.resolution, drawn.drawn_at))
                  + " (centre crop to the target aspect, then Lanczos)", ""]
        for metric in NAMES:
            lines += [f"## {METRICS[metric][0]}", "", pivot(rows, ["method"], metric), ""]
        lines += cost_sections(rows, ["method"])
        if args.cost:
            cost = ordered(load_table(args.cost))
            lines += ["# Cost of dense, CR-Diff and native_resize side by side",
                      "", *header("", cost, "python -m crdiff.run experiment=miniature prompts.limit=10 "
                                  "metrics=none resolutions.unseen=[32x64,64x64]",
                                  args.cost)[2:], *cost_sections(cost, ["method"])]
        (out / "native_resize.md").write_text("\n".join(lines))
        written.append(out / "native_resize.md")
    if args.real_floor:
        (out / "real_floor.md").write_text(real_floor())
        written.append(out / "real_floor.md")
    print("\n".join(str(p) for p in written if p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
