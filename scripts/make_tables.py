"""Tables A and B (CSV / Markdown / LaTeX) with intervals and paired gains, the dense calibration, the
comparison with the paper, and the figures, from one run per cell.

    python scripts/make_tables.py --results outputs --out results/tables     # from a run's result rows
    python scripts/make_tables.py --results outputs --experiment sweep_k k=3.0 --out results/k3
    python scripts/make_tables.py --paper --out results/paper                 # the paper's own numbers

Rows are selected per table (crdiff.report.select): Table A from the rows experiment `table_a` produced or
reused, Table B from `table_b`'s, each at the values its experiment file states (k, steps, guidance,
negative prompt, preprocessing, safety checker); without table_a / table_b rows, the one experiment the
rows hold. `--experiment` and FIELD=VALUE filters override. A cell with more than one run exits 2 listing
the candidates and the fields that differ; a cell without a row prints as `missing`.
"""

import argparse
import sys
from pathlib import Path

from crdiff.experiment.results import load_table
from crdiff.report import select
from crdiff.report.plots import metric_vs_k, metric_vs_resolution
from crdiff.report.tables import aggregate, dense_calibration, paper_rows, write_all


def tolerances(items: list[str]) -> dict:
    """`fid=0.2` (FID relative), `clip=0.02` (others absolute)."""
    return {metric: ("relative" if metric == "fid" else "absolute", float(value))
            for metric, value in select.parse_filters(items).items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--results", help="a run's output_dir (its results/*.json rows)")
    source.add_argument("--paper", action="store_true", help="build the tables from results/paper/tables_paper.csv")
    parser.add_argument("--out", help="where the tables go (default: <results>/tables; with --paper, results/paper)")
    parser.add_argument("--experiment", help="build from the rows this experiment produced or reused")
    parser.add_argument("--tolerance", action="append", default=[], metavar="METRIC=VALUE",
                        help="dense calibration tolerance (FID relative, others absolute), e.g. fid=0.2")
    parser.add_argument("--device", default="cpu",
                        help="where the FID/KID jackknife recomputations run (cuda where there is one)")
    parser.add_argument("filters", nargs="*", metavar="FIELD=VALUE", help="only rows with these values, e.g. k=1.5")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = "results/paper" if args.paper else str(Path(args.results) / "tables")
    if args.paper:
        rows = paper_rows()
        written = write_all(rows, args.out, compare=False)
        written += [p for p in (metric_vs_resolution(rows, m, args.out) for m in rows.model.unique()) if p]
        print("\n".join(str(p) for p in written))
        return 0
    rows = load_table(args.results)
    if rows.empty:
        print(f"make_tables: error: no result rows under {args.results}/results", file=sys.stderr)
        return 2
    try:
        filters, tolerance = select.parse_filters(args.filters), tolerances(args.tolerance)
        chosen, note = select.report_rows(rows, args.experiment, filters)
        across_k, _ = select.report_rows(rows, args.experiment, filters, by=("k",))
    except ValueError as err:  # select.AmbiguousCells among them: the candidates and what differs
        print(f"make_tables: error: {err}", file=sys.stderr)
        return 2
    if chosen.empty:
        print(f"make_tables: error: no rows match: {note}", file=sys.stderr)
        return 2
    print(note)
    cells = aggregate(chosen, args.device)
    calibration = dense_calibration(cells, tolerance)
    for line in calibration[~calibration.within.astype(bool)].itertuples() if not calibration.empty else ():
        print(f"make_tables: warning: dense {line.model} {line.resolution} {line.metric} is {line.ours:.3f}, the "
              f"paper's {line.paper:.3f} (outside ±{line.tolerance:.3f}): read this cell's gains with care",
              file=sys.stderr)  # before any gain is read
    written = write_all(chosen, args.out, device=args.device, tolerance=tolerance, cells_=cells, note=note)
    cells_k = aggregate(across_k, args.device, by=("k",))
    for model in cells.model.unique():
        written += [p for p in (metric_vs_resolution(cells, model, args.out), metric_vs_k(cells_k, model, args.out)) if p]
    print("\n".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
