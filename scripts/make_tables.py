"""Tables A and B (CSV / Markdown / LaTeX), the comparison with the paper, and the figures.

    python scripts/make_tables.py --results outputs --out results/tables     # from a run's result rows
    python scripts/make_tables.py --paper --out results/paper                 # the paper's own numbers
"""

import argparse
import sys

from crdiff.report.plots import metric_vs_k, metric_vs_resolution
from crdiff.experiment.results import load_table
from crdiff.report.tables import paper_rows, write_all


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--results", help="a run's output_dir (its results/*.json rows)")
    source.add_argument("--paper", action="store_true", help="build the tables from results/paper/tables_paper.csv")
    parser.add_argument("--out", default="results/tables")
    args = parser.parse_args(argv)
    rows = paper_rows() if args.paper else load_table(args.results)
    if rows.empty:
        print(f"make_tables: error: no result rows under {args.results}/results", file=sys.stderr)
        return 2
    written = write_all(rows, args.out, compare=not args.paper)
    for model in rows.model.unique():
        written += [p for p in (metric_vs_resolution(rows, model, args.out), metric_vs_k(rows, model, args.out)) if p]
    print("\n".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
