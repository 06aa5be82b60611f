"""Check a rebuild of the scenes miniature against the shipped weights.

    python scripts/train_scenes.py --out /tmp/scenes --work /tmp/scenes-work --report /tmp/scenes/training.json
    python scripts/scenes_rebuild.py --rebuilt /tmp/scenes --out /tmp/scenes/check   # ~7 min on 2 idle cores

Training is bit-deterministic on one machine for a fixed thread count, but float rounding follows the
CPU's vector instructions, so another CPU trains other weights from the same recipe. This script says
which happened: it refuses a rebuild of another recipe (its report's config must equal the shipped
one's), compares every weight file (SHA-256, tensors equal, relative L2 distance), and when the files
differ, draws the same prompts and seeds with both models at 64x64 and the study's sizes and reads them
with the detector: each reading per model, and rebuilt - shipped paired over prompts (95% bootstrap
interval; McNemar's exact test for composition). Writes rebuild.md and rebuild.csv (one row per image
and model) to --out (default results/miniature_scenes/).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from crdiff.experiment.results import cpu_name
from crdiff.metrics.intervals import mcnemar
from crdiff.miniature import scenes, scenes_study
from crdiff.models import Resolution

ROOT = Path(__file__).resolve().parents[1]
SIZES = ("64x64", "32x32", "24x32", "32x24")  # the training size, then the study's (scripts/scenes_failure.py)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare_file(rebuilt: Path, shipped: Path) -> str | None:
    """'identical', or how far apart two weight files are (tensors equal, relative L2 distance); None when
    they do not hold the same tensors (another architecture: not a rebuild)."""
    if rebuilt.read_bytes() == shipped.read_bytes():
        return "identical"
    if rebuilt.suffix != ".safetensors":
        return "differs"
    a, b = load_file(rebuilt), load_file(shipped)
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return None
    equal = sum(torch.equal(a[k], b[k]) for k in a)
    diff = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a)
    norm = sum(float((b[k].double() ** 2).sum()) for k in b)
    return f"{equal} / {len(a)} tensors equal, relative L2 {np.sqrt(diff / norm):.2e}"


def read_report(parser: argparse.ArgumentParser, path: Path, flag: str) -> dict:
    """A finished training report with its config and hashes, or one line naming what is wrong."""
    if not path.is_file():
        parser.error(f"no training report at {path}: pass the {flag} that scripts/train_scenes.py wrote")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        parser.error(f"{path} is not a training report (not JSON: {err})")
    if not isinstance(report, dict) or not isinstance(report.get("config"), dict) or not report.get("sha256"):
        parser.error(f"{path} is not a training report of scripts/train_scenes.py (no config or sha256)")
    if not report.get("finished"):
        parser.error(f"{path}: the run has not finished; run scripts/train_scenes.py again to go on")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuilt", type=Path, required=True, help="the --out folder of scripts/train_scenes.py")
    parser.add_argument("--report", type=Path, default=None, help="its --report (default: <rebuilt>/training.json)")
    parser.add_argument("--against", type=Path, default=scenes.ASSETS,
                        help="the weights to compare with, called 'shipped' in the report (default: crdiff/assets)")
    parser.add_argument("--against-report", type=Path, default=ROOT / "results/miniature_scenes/training.json",
                        help="their training report (default: results/miniature_scenes/training.json)")
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="torch threads while drawing (failure.md ran with 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "results/miniature_scenes")
    args = parser.parse_args()
    try:  # a bad size fails here, before any work
        sizes = [Resolution.parse(s) for s in args.sizes]
    except ValueError as err:
        parser.error(str(err))
    if not 1 <= args.prompts <= 2000:
        parser.error(f"--prompts must be 1..2000 (the evaluation prompts), got {args.prompts}")
    rebuilt_report = read_report(parser, args.report or args.rebuilt / "training.json", "--report")
    shipped_report = read_report(parser, args.against_report, "--against-report")
    recipe, theirs = rebuilt_report["config"], shipped_report["config"]
    changed = sorted(k for k in {*recipe, *theirs} if recipe.get(k) != theirs.get(k))
    if changed:
        parser.error(f"not a rebuild: its recipe differs from the shipped one's in {', '.join(changed)}")
    if set(rebuilt_report["sha256"]) != set(shipped_report["sha256"]):
        parser.error("not a rebuild: its weight files are not the shipped one's: "
                     + ", ".join(sorted(set(rebuilt_report["sha256"]) ^ set(shipped_report["sha256"]))))
    names = sorted(shipped_report["sha256"])
    for folder, report, flag in ((args.rebuilt, rebuilt_report, "--rebuilt"),
                                 (args.against, shipped_report, "--against")):
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            parser.error(f"{folder} lacks {', '.join(missing)}: "
                         f"give {flag} the --out folder of scripts/train_scenes.py")
        stale = [name for name in names if sha256(folder / name) != report["sha256"][name]]
        if stale:
            parser.error(f"{folder}: {', '.join(stale)} not the file its report records (SHA-256 differs): "
                         "give the folder and report of one training run")
    files = {name: compare_file(args.rebuilt / name, args.against / name) for name in names}
    if None in files.values():
        parser.error("not a rebuild: other tensors in " + ", ".join(n for n, how in files.items() if how is None))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    lines = ["# Scenes miniature: a rebuild against the shipped weights", "",
             f"- command: `{' '.join(['python scripts/scenes_rebuild.py', *sys.argv[1:]])}`",
             f"- shipped: trained at commit {shipped_report.get('commit')}, on {shipped_report.get('machine')}, "
             f"{shipped_report.get('threads')} threads ({args.against_report.name})",
             f"- rebuilt: trained at commit {rebuilt_report.get('commit')}, on {rebuilt_report.get('machine')}, "
             f"{rebuilt_report.get('threads')} threads, the same recipe (config equal); compared at commit "
             f"{commit or '?'} on {cpu_name()}, {args.threads} threads", "",
             "| file | rebuilt SHA-256 | shipped SHA-256 | rebuilt vs shipped |", "|---|---|---|---|"]
    lines += [f"| `{name}` | {rebuilt_report['sha256'][name][:16]} | {shipped_report['sha256'][name][:16]} | {how} |"
              for name, how in files.items()]
    rows = []
    if any(how != "identical" for how in files.values()):
        from crdiff import ModelUnavailableError, load_pipeline

        try:
            pipes = {"shipped": load_pipeline(str(args.against / scenes.PIPELINE_DIR.name)),
                     "rebuilt": load_pipeline(str(args.rebuilt / scenes.PIPELINE_DIR.name))}
        except ModelUnavailableError as err:
            parser.exit(1, f"scenes_rebuild.py: {err}\n")
        prompts = scenes.prompts(args.prompts)
        for size in sizes:
            for model, pipe in pipes.items():
                images = scenes_study.generate(pipe, prompts, size, args.seed, args.steps, args.guidance,
                                               args.batch_size)
                rows += [dict(model=model, **r.__dict__) for r in scenes_study.score(images, prompts, size, args.seed)]
                logging.info("%s %s: %d images", model, size, len(images))
        lines += ["", f"The weights differ, so both models drew the same {args.prompts} evaluation prompts (image i: "
                  f"prompt i, seed {args.seed} + i) at each size, DDIM {args.steps} steps, guidance {args.guidance}, "
                  "here, and the detector read them: mean [95% bootstrap interval over prompts]; rebuilt - shipped "
                  "paired over prompts; p: McNemar's exact test of composition (images only the shipped / only "
                  "the rebuilt model got right).", "",
                  "| size | reading | shipped | rebuilt | rebuilt - shipped | p |", "|---|---|---|---|---|---|"]
        for size in sizes:
            got = {m: [r for r in rows if r["model"] == m and r["size"] == str(size)] for m in pipes}
            for name in scenes_study.READINGS:
                values = {m: np.array([r[name] for r in got[m]], dtype=float) for m in pipes}
                cell = {m: "{:.3f} [{:.3f}, {:.3f}]".format(*scenes_study.interval(v)) for m, v in values.items()}
                paired = values["rebuilt"] - values["shipped"]
                gain = "{:+.3f} [{:+.3f}, {:+.3f}]".format(*scenes_study.interval(paired))
                test = mcnemar(values["shipped"], values["rebuilt"])
                p = f"{test['p']:.3g} ({test['only_dense']} / {test['only_method']})" if name == "composition" else ""
                lines.append(f"| {size} | {name} | {cell['shipped']} | {cell['rebuilt']} | {gain} | {p} |")
    else:
        lines += ["", "Every file is identical: the rebuild reproduced the shipped weights bit for bit."]
    args.out.mkdir(parents=True, exist_ok=True)
    if rows:
        with (args.out / "rebuild.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    (args.out / "rebuild.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
