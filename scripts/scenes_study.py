"""Tables of the scenes miniature's study (results/miniature_scenes/) from the runs' result rows.

    python -m crdiff.run experiment=scenes_baselines prompts.limit=200 output_dir=study/scenes_baselines
    python scripts/scenes_study.py --baselines study/scenes_baselines --out results/miniature_scenes

Every method side by side per exact metric (`value [lo, hi]`, the 95% bootstrap interval over prompts;
scene-FD a delete-a-group jackknife), the paired gains over dense with McNemar's exact test for the 0 / 1
readings (composition, duplication, missing), and CR-Diff against native_resize and the random mask.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from crdiff.report.tables import METRICS, gains

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the digits study's table helpers, beside this script
from miniature_study import cost_sections, gains_section, header, ordered, pivot, study_cells  # noqa: E402

NAMES = ["scene_composition", "scene_duplication", "scene_missing", "scene_count_error", "scene_fd"]


CELLS = ("- cells: value [lo, hi], the 95% bootstrap interval over prompts (scene-FD: a delete-a-group jackknife "
         "over prompts); bold: better than the other side of a paired 95% interval over dense that excludes 0",
         "- scene-FD floor (real scenes against the reference, `scene_fd_floor.md`): read a scene-FD cell "
         "against it at its size and sample size, not against 0")


def command(rows: pd.DataFrame) -> str:
    """The command that made the rows, from what they record (prompt count, seed sets)."""
    seeds = sorted(set(rows.seed))
    sweep = f" sampler.seed={','.join(map(str, seeds))}" if len(seeds) > 1 else (
        f" sampler.seed={seeds[0]}" if seeds[0] != 0 else "")
    return (f"python -m crdiff.run{' -m' if len(seeds) > 1 else ''} experiment=scenes_baselines "
            f"prompts.limit={rows.n_images.iloc[0]}{sweep}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baselines", required=True, help="output_dir of the scenes_baselines run")
    parser.add_argument("--out", default="results/miniature_scenes")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # k, steps and guidance left free: bwp is k = 1 and dense_steps2x changes the steps by design
    rows, cells = study_cells(args.baselines, "scenes_baselines", by=("k", "steps", "guidance"))
    cells = ordered(cells)
    lines = header("Scenes miniature: every method side by side", rows, command(rows), args.baselines,
                   prompt="evaluation prompt i", cells=CELLS)
    drawn = rows[rows.method == "native_resize"].drop_duplicates("resolution")
    lines += ["native_resize draws at: " + ", ".join(f"{r} from {d}" for r, d in zip(drawn.resolution, drawn.drawn_at))
              + " (centre crop to the target aspect, then Lanczos)", ""]
    for metric in NAMES:
        lines += [f"## {METRICS[metric][0]}", "", pivot(cells, ["method"], metric), ""]
    found = gains(rows)
    versus = gains(rows[rows.method.isin(["crdiff", "native_resize", "random_mask"])], baseline="crdiff")
    lines += [*gains_section(found), *gains_section(versus, "crdiff"), *cost_sections(cells, ["method"])]
    (out / "baselines.md").write_text("\n".join(lines))
    both = pd.concat([found.assign(baseline="dense"), versus.assign(baseline="crdiff")], ignore_index=True)
    (out / "baselines_gains.csv").write_text(both.to_csv(index=False))
    print(out / "baselines.md", out / "baselines_gains.csv", sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
