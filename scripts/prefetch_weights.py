"""Download exactly what a command will load: its model (the weight variant that runs, e.g. fp16) and
every configured metric's weights, for each value of a sweep.

    python scripts/prefetch_weights.py experiment=table_a model=sdxl       # any overrides of crdiff.run
    python scripts/prefetch_weights.py experiment=table_b              # the experiment's sweep: sdxl, sd15, sd21
    python scripts/prefetch_weights.py model=sd15,sd21 metrics=paper   # a command-line sweep
Run it once where the internet is reachable; compute nodes then run with HF_HUB_OFFLINE=1 (where the
hub cannot be reached it stops at once, saying so). Gated models (flux, sd3) need their licence accepted
and a token (HF_TOKEN or `hf auth login`). It reads
the same declarations as the run's preflight check (crdiff.experiment.preflight.requirements), so
what it fetches is what that check looks for. Caches: huggingface_hub's (HF_HUB_CACHE, else HF_HOME/hub,
else $XDG_CACHE_HOME/huggingface/hub), torch hub's (TORCH_HOME, else $XDG_CACHE_HOME/torch) for Inception
and the aesthetic head; CRDIFF_WEIGHTS_URL=<mirror> fetches those two from <mirror>/<file name> instead.
"""

import argparse
import socket
import sys
import warnings

from huggingface_hub import constants

from crdiff.experiment.planner import compose_runs
from crdiff.experiment.preflight import hub_reachable, requirements
from crdiff.weights import HubFiles, PipelineWeights, has_token, hub_cache, offline


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
    # <output_dir>/presets is on the search path before any search wrote it (as in crdiff.run's CLI)
    warnings.filterwarnings("ignore", message=r"provider=hydra\.searchpath in main, path=.*presets is not available")
    pieces = {}
    for _, run in compose_runs(args.overrides):
        for piece in requirements(run):
            pieces.setdefault((type(piece), piece.where), piece)
    from_hub = [p for p in pieces.values() if isinstance(p, (HubFiles, PipelineWeights)) and not
                getattr(p, "is_folder", False) and p.missing() is not None]
    if from_hub and not args.check and not hub_reachable():  # once, before the first piece: not 5 retries each
        why = "HF_HUB_OFFLINE is set: unset it to download" if offline() else \
            f"the hub ({constants.ENDPOINT}) cannot be reached from {socket.gethostname()}"
        print(f"prefetch: error: {why}; {len(from_hub)} piece(s) to download ({from_hub[0].where}, ...): run this "
              f"command where the hub is reachable (a login node, or with HTTPS_PROXY set) into the same cache "
              f"({hub_cache()}), then run with HF_HUB_OFFLINE=1", file=sys.stderr)
        return 1
    for piece in from_hub:
        if piece.gate and not has_token():
            print(f"prefetch: {piece.gate}", file=sys.stderr)
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
            print(f"prefetch: error: {piece.what} ({piece.where}): {err.__class__.__name__}: {err}"
                  + (f" ({piece.gate})" if piece.gate else ""), file=sys.stderr)
            failed += 1
            continue
        total += fetched
        print(f"{piece.what}: {piece.where}: fetched {human(fetched)}")
    if not args.check:
        print(f"prefetch: {human(total)} fetched for {len(pieces)} pieces ({failed} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
