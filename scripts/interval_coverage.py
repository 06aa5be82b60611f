"""How often each FID / KID interval scheme covers the quantity it estimates, by simulation.

    python scripts/interval_coverage.py          # ~1 min on one CPU core; prints a markdown table
    python scripts/interval_coverage.py --metric kid --n 200 --dim 8 --replicates 100   # KID's leave-outs

Gaussian features (d dimensions): a fixed reference of 2,000 draws from N(0, I), generated sets of n draws
from N(0.3, I) (a shifted model). Over `replicates` generated sets, E[FID_n] (the mean of their FIDs, the
value this protocol reports on average at n images) is what an interval at n images should cover. Per scheme:
the share of intervals that contain E[FID_n] (coverage, nominal 0.95), the share that contain their own
point estimate, and the mean width. Schemes: the percentile bootstrap of the generated images (50 resamples,
crdiff's scheme before) and the delete-a-group jackknife (20 groups, crdiff.metrics.intervals.jackknife).
With `--metric kid` (20 subsets of 50 images): the jackknife whose leave-outs keep the full run's random
subsets less the left-out images (crdiff's) against one that draws new subsets for every leave-out.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from crdiff.metrics import intervals
from crdiff.metrics.fid import frechet, kernel_distance, on_kept


def kid_schemes(reference, fake, n: int, r: int) -> tuple[float, dict[str, list[float]]]:
    """KID of one generated set and its two jackknife intervals (subsets kept / redrawn per leave-out)."""
    def score(real, gen, keep=None):
        return kernel_distance(real, gen, subsets=20, subset_size=50, keep=keep)

    return score(reference, fake), {
        "jackknife, subsets kept (20 groups)": intervals.jackknife(
            lambda idx: on_kept("kid", score, reference, fake, idx), n, 20, seed=r),
        "jackknife, subsets redrawn (20 groups)": intervals.jackknife(
            lambda idx: score(reference, fake[torch.as_tensor(idx)]), n, 20, seed=r)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[50, 100, 500])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metric", choices=["fid", "kid"], default="fid")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    reference = torch.from_numpy(rng.normal(0, 1, (2000, args.dim)))
    print(f"d = {args.dim}, {args.replicates} replicates, reference 2,000 draws, shift 0.3 per dimension\n")
    name = args.metric.upper()
    print(f"| n | E[{name}_n] | scheme | coverage of E[{name}_n] | contains its own value | mean width |")
    print("|---|---|---|---|---|---|")
    for n in args.n:
        found = {"percentile bootstrap (50)": [], "jackknife (20 groups)": []}
        values = []
        for r in range(args.replicates):
            fake = torch.from_numpy(rng.normal(0.3, 1, (n, args.dim)))
            if args.metric == "kid":
                value, cis = kid_schemes(reference, fake, n, r)
                values.append(value)
                for scheme, ci in cis.items():
                    found.setdefault(scheme, []).append(ci)
                continue
            score = lambda idx, fake=fake: frechet(reference, fake[torch.as_tensor(idx)])  # noqa: E731
            values.append(score(np.arange(n)))
            found["percentile bootstrap (50)"].append(intervals.interval(score, n, 50, seed=r))
            lo, hi = intervals.jackknife(score, n, 20, seed=r)
            found["jackknife (20 groups)"].append([max(lo, 0.0), hi])
        target, values = float(np.mean(values)), np.array(values)
        for scheme, cis in found.items():
            if not cis:
                continue
            cis = np.array(cis)
            cover = np.mean((cis[:, 0] <= target) & (target <= cis[:, 1]))
            own = np.mean((cis[:, 0] <= values) & (values <= cis[:, 1]))
            print(f"| {n} | {target:.3f} | {scheme} | {cover:.3f} | {own:.3f} | {np.mean(cis[:, 1] - cis[:, 0]):.3f} |")


if __name__ == "__main__":
    main()
