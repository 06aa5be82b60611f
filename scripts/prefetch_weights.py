"""Download exactly what a command will load: its model (the weight variant that runs, e.g. fp16) and
every configured metric's weights, for each value of a sweep.

    python scripts/prefetch_weights.py experiment=table_a model=sdxl       # any overrides of crdiff.run
    python scripts/prefetch_weights.py experiment=table_b              # the experiment's sweep: sdxl, sd15, sd21
    python scripts/prefetch_weights.py model=sd15,sd21 metrics=paper   # a command-line sweep
Run it once where the internet is reachable; compute nodes then run with HF_HUB_OFFLINE=1. It reads
the same declarations as the run's preflight check (crdiff.experiment.preflight.requirements), so
what it fetches is what that check looks for. Caches: the hub cache (HF_HOME / HF_HUB_CACHE), torch
hub (TORCH_HOME) for Inception and the aesthetic head.
"""

import argparse
import os
import sys

from crdiff.experiment.planner import compose_runs
from crdiff.experiment.preflight import requirements


def human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report what is missing; download nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of python -m crdiff.run")
    args = parser.parse_args(argv)
    if os.environ.get("HF_HUB_OFFLINE") and not args.check:
        print("prefetch: HF_HUB_OFFLINE is set; unset it to download (pieces already cached are kept)",
              file=sys.stderr)
    pieces = {}
    for _, run in compose_runs(args.overrides):
        for piece in requirements(run):
            pieces.setdefault((type(piece), piece.where), piece)
    total, failed = 0, 0
    for piece in pieces.values():
        problem = piece.missing()
        if args.check:
            print(f"{piece.what}: {'ok' if problem is None else problem}")
            failed += problem is not None
            continue
        try:
            fetched = piece.fetch()
        except Exception as err:  # noqa: BLE001 - report every piece, then fail
            print(f"prefetch: error: {piece.what} ({piece.where}): {err.__class__.__name__}: {err}", file=sys.stderr)
            failed += 1
            continue
        total += fetched
        print(f"{piece.what}: {piece.where}: fetched {human(fetched)}")
    if not args.check:
        print(f"prefetch: {human(total)} fetched for {len(pieces)} pieces ({failed} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
