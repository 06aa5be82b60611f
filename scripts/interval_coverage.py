"""How often each FID interval scheme covers the quantity it estimates, by simulation.

    python scripts/interval_coverage.py          # ~1 min on one CPU core; prints a markdown table

Gaussian features (d dimensions): a fixed reference of 2,000 draws from N(0, I), generated sets of n draws
from N(0.3, I) (a shifted model). Over `replicates` generated sets, E[FID_n] (the mean of their FIDs, the
value this protocol reports on average at n images) is what an interval at n images should cover. Per scheme:
the share of intervals that contain E[FID_n] (coverage, nominal 0.95), the share that contain their own
point estimate, and the mean width. Schemes: the percentile bootstrap of the generated images (50 resamples,
crdiff's scheme before) and the delete-a-group jackknife (20 groups, crdiff.metrics.intervals.jackknife).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from crdiff.metrics import intervals
from crdiff.metrics.fid import frechet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[50, 100, 500])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    reference = torch.from_numpy(rng.normal(0, 1, (2000, args.dim)))
    print(f"d = {args.dim}, {args.replicates} replicates, reference 2,000 draws, shift 0.3 per dimension\n")
    print("| n | E[FID_n] | scheme | coverage of E[FID_n] | contains its own value | mean width |")
    print("|---|---|---|---|---|---|")
    for n in args.n:
        found = {"percentile bootstrap (50)": [], "jackknife (20 groups)": []}
        values = []
        for r in range(args.replicates):
            fake = torch.from_numpy(rng.normal(0.3, 1, (n, args.dim)))
            score = lambda idx, fake=fake: frechet(reference, fake[torch.as_tensor(idx)])  # noqa: E731
            values.append(score(np.arange(n)))
            found["percentile bootstrap (50)"].append(intervals.interval(score, n, 50, seed=r))
            lo, hi = intervals.jackknife(score, n, 20, seed=r)
            found["jackknife (20 groups)"].append([max(lo, 0.0), hi])
        target, values = float(np.mean(values)), np.array(values)
        for scheme, cis in found.items():
            cis = np.array(cis)
            cover = np.mean((cis[:, 0] <= target) & (target <= cis[:, 1]))
            own = np.mean((cis[:, 0] <= values) & (values <= cis[:, 1]))
            print(f"| {n} | {target:.3f} | {scheme} | {cover:.3f} | {own:.3f} | {np.mean(cis[:, 1] - cis[:, 0]):.3f} |")


if __name__ == "__main__":
    main()
