"""Tables and figures of the scenes miniature's study (results/miniature_scenes/) from the runs' result rows.

    python -m crdiff.run experiment=scenes_baselines prompts.limit=200 output_dir=study/scenes   # every method
    python -m crdiff.run -m experiment=scenes_study sampler.seed=0,1000,2000 output_dir=study/scenes
    python -m crdiff.run -m experiment=scenes_sweep_k prompts.limit=200 'resolutions.sets=[unseen]' output_dir=study/scenes
    python -m crdiff.run -m experiment=scenes_sweep_ratios prompts.limit=200 output_dir=study/scenes
    python -m crdiff.run experiment=scenes_fd output_dir=study/scenes         # scene-FD on 2,000 images
    python scripts/scenes_study.py --baselines study/scenes --study study/scenes --fd study/scenes \
        --sweep-k study/scenes --sweep-ratios study/scenes --out results/miniature_scenes

One output_dir may hold them all (images of the same method, settings and seeds are drawn once); each
table takes the rows its experiment produced or reused. Every method side by side per exact metric
(`value [lo, hi]`, the 95% bootstrap interval over prompts; scene-FD a delete-a-group jackknife), the paired
gains over dense with McNemar's exact test for the 0 / 1 readings (composition, duplication, missing),
CR-Diff against native_resize and the random mask, and the sweeps' gains per k and per ratio setting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from crdiff.report.plots import metric_vs_k, metric_vs_resolution
from crdiff.report.tables import METRICS, gains

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the digits study's table helpers, beside this script
from miniature_study import cost_sections, gains_by, gains_section, header, ordered, pivot, study_cells  # noqa: E402

UNSEEN = ("32x32", "24x32", "32x24")  # conf/resolutions/scenes.yaml's unseen sizes
NAMES = ["scene_composition", "scene_duplication", "scene_missing", "scene_count_error", "scene_fd"]


CELLS = ("- cells: value [lo, hi], the 95% bootstrap interval over prompts (scene-FD: a delete-a-group jackknife "
         "over prompts), and with several seed sets the standard deviation of the per-set values (seeds ±s); which differences are real: the paired gains below (an interval over dense, McNemar's p)",
         "- scene-FD floor (real scenes against the reference, `scene_fd_floor.md`): read a scene-FD cell "
         "against it at its size and sample size, not against 0")


def command(rows: pd.DataFrame, experiment: str, extra: str = "") -> str:
    """The command that made the rows, from what they record (prompt count, seed sets)."""
    seeds = sorted(set(rows.seed))
    sweep = f" sampler.seed={','.join(map(str, seeds))}" if len(seeds) > 1 else (
        f" sampler.seed={seeds[0]}" if seeds[0] != 0 else "")
    multi = len(seeds) > 1 or experiment.startswith("scenes_sweep")
    unseen = list(dict.fromkeys(rows[rows.setting == "unseen"].resolution)) if "setting" in rows else []
    if unseen and set(unseen) != set(UNSEEN):  # fewer sizes than conf/resolutions/scenes.yaml's
        extra += f" 'resolutions.unseen=[{','.join(unseen)}]'"
    return (f"python -m crdiff.run{' -m' if multi else ''} experiment={experiment} "
            f"prompts.limit={rows.n_images.iloc[0]}{sweep}{extra}")


def comparison(output_dir: str, experiment: str, title: str,
               extra: str = "") -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    """(lines, gains over dense and over CR-Diff, cells) of a side-by-side run (scenes_baselines, scenes_study)."""
    # k, steps and guidance left free: bwp is k = 1 and dense_steps2x changes the steps by design
    rows, cells = study_cells(output_dir, experiment, by=("k", "steps", "guidance"))
    cells = ordered(cells)
    lines = header(title, rows, command(rows, experiment, extra), output_dir, prompt="evaluation prompt i", cells=CELLS)
    ratios = rows[rows.method == "crdiff"].drop_duplicates("resolution")
    lines += ["CR-Diff's ratios (down / mid / up): " + ", ".join(
        f"{r} {d:.2f} / {m:.2f} / {u:.2f} ({src})" for r, d, m, u, src in
        zip(ratios.resolution, ratios.ratio_down, ratios.ratio_mid, ratios.ratio_up, ratios.ratios_source)), ""]
    drawn = rows[rows.method == "native_resize"].drop_duplicates("resolution")
    lines += [] if drawn.empty else ["native_resize draws at: " + ", ".join(f"{r} from {d}" for r, d in zip(drawn.resolution, drawn.drawn_at))
              + " (centre crop to the target aspect, then Lanczos)", ""]
    for metric in NAMES:
        lines += [f"## {METRICS[metric][0]}", "", pivot(cells, ["method"], metric), ""]
    found = gains(rows)
    versus = gains(rows[rows.method.isin(["crdiff", "native_resize", "random_mask"])], baseline="crdiff")
    lines += [*(gains_section(found) if not found.empty else []),
              *(gains_section(versus, "crdiff") if not versus.empty else []), *cost_sections(cells, ["method"])]
    both = pd.concat([found.assign(baseline="dense"), versus.assign(baseline="crdiff")], ignore_index=True)
    return lines, both, cells


def sweep(output_dir: str, experiment: str, by: tuple[str, ...]) -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    """(lines, gains over dense per setting, cells) of a k or ratio sweep."""
    rows, cells = study_cells(output_dir, experiment, by=by, methods=("dense", "crdiff"))
    if by == ("k",):
        title, extra = "Scenes miniature: k sweep (k = 0 is dense, k = 1 is BWP alone)", " 'resolutions.sets=[unseen]'"
        cells, index = cells.assign(k=cells.k.where(cells.method != "dense", 0.0)), ["k"]
        found = gains_by(rows, by, lambda v: f"CR-Diff k={v[0]:g}")
    else:
        title, extra = "Scenes miniature: ratio sweep (down / mid / up, k = 1.5)", ""
        cells = cells.assign(ratios=[("dense" if m == "dense" else f"{d:.1f} / {mi:.1f} / {u:.1f}") for m, d, mi, u
                                     in zip(cells.method, cells.ratio_down, cells.ratio_mid, cells.ratio_up)])
        index = ["ratios"]
        found = gains_by(rows, by, lambda v: "CR-Diff " + " / ".join(f"{r:.1f}" for r in v))
    lines = header(title, rows, command(rows, experiment, extra), output_dir, prompt="evaluation prompt i",
                   cells=CELLS)
    for metric in NAMES:
        lines += [f"## {METRICS[metric][0]}", "", pivot(cells, index, metric), ""]
    return [*lines, *gains_section(found), *cost_sections(cells, index)], found, cells


def method_grids(output_dir: str, experiment: str, out: Path, columns: int = 8) -> list[Path]:
    """Per size `grid_study_<HxW>.png`: a row per method (METHODS' order), the first `columns` evaluation
    prompts of the first seed set, the same prompts and seeds in every row."""
    from PIL import Image

    from crdiff.miniature.scenes_study import grid

    rows, _ = study_cells(output_dir, experiment, by=("k", "steps", "guidance"))
    rows = ordered(rows[rows.seed == rows.seed.min()]).sort_values("method")
    written = []
    for resolution, mine in rows.groupby("resolution", sort=False):
        shown = min(columns, int(mine.n_images.min()))
        images = {m: [Image.open(Path(d) / f"{i:05d}.png").convert("RGB") for i in range(shown)]
                  for m, d in zip(mine.method, mine.image_dir)}
        path = out / f"grid_study_{resolution}.png"
        grid(images, path, shown)
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("baselines", "study", "fd", "search30", "sweep_k", "sweep_ratios"):
        parser.add_argument(f"--{name.replace('_', '-')}", help=f"output_dir of the scenes_{name} run(s)")
    parser.add_argument("--out", default="results/miniature_scenes")
    args = parser.parse_args(argv)
    if not any((args.baselines, args.study, args.fd, args.search30, args.sweep_k, args.sweep_ratios)):
        parser.error("name at least one of --baselines, --study, --fd, --search30, --sweep-k, --sweep-ratios")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def write(name: str, lines: list[str], found: pd.DataFrame) -> None:
        (out / f"{name}.md").write_text("\n".join(lines))
        (out / f"{name}_gains.csv").write_text(found.to_csv(index=False))
        written.extend([out / f"{name}.md", out / f"{name}_gains.csv"])

    if args.baselines:
        lines, found, _ = comparison(args.baselines, "scenes_baselines", "Scenes miniature: every method side by side")
        write("baselines", lines, found)
    if args.study:
        lines, found, cells = comparison(args.study, "scenes_study",
                                         "Scenes miniature: the study below the training size")
        write("study", lines, found)
        written.extend(method_grids(args.study, "scenes_study", out))
        written.append(metric_vs_resolution(cells, "scenes", out, methods=tuple(cells.method.cat.categories),
                                            name="study_metrics_vs_resolution.png"))
    if args.fd:
        lines, found, _ = comparison(args.fd, "scenes_fd", "Scenes miniature: scene-FD on the scenes_fd run's images")
        write("fd", lines, found)
    if args.search30:  # experiment=scenes with the 30-prompt search's presets
        lines, found, _ = comparison(args.search30, "scenes", "Scenes miniature: CR-Diff with the 30-prompt search's "
                                     "presets", " pruning.search_protocol=scenes_search30 'methods=[dense,crdiff]' 'resolutions.sets=[unseen]'")
        write("search30_study", lines, found)
    if args.sweep_k:
        lines, found, cells = sweep(args.sweep_k, "scenes_sweep_k", ("k",))
        write("sweep_k", lines, found)
        written.append(metric_vs_k(cells, "scenes", out))
    if args.sweep_ratios:
        lines, found, _ = sweep(args.sweep_ratios, "scenes_sweep_ratios", ("ratio_down", "ratio_mid", "ratio_up"))
        write("sweep_ratios", lines, found)
    print("\n".join(str(p) for p in written if p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
