#!/usr/bin/env bash
# The scale-out check on a machine with one GPU (< 5 min; written on a CPU machine, run it whenever a GPU
# is available): the smoke experiment with stand-in metrics 1. as one process, 2. as 2 torchrun ranks on
# the same GPU, 3. as 2 tasks started with SLURM's variables (no torchrun), 4. as 2 independent jobs at
# once on one output_dir. Images must be bit-identical to 1. and metrics equal; each launch's counts
# are recorded. Output: results/bench/gpu_check_<card>.txt (or $OUT/...). Without nvidia-smi it runs on
# the CPU (card "cpu"), which checks the script itself.
# Usage: bash scripts/gpu_check.sh   [PYTHON=.venv/bin/python]
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=1
PYTHON=${PYTHON:-python3}
OUT=${OUT:-results/bench}
WORK=$(mktemp -d)
CARD=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo cpu) | head -1 | tr ' /' '--')
LOG="$OUT/gpu_check_${CARD}.txt"
mkdir -p "$OUT"
ARGS=(experiment=smoke device=auto prompts.limit=8 sampler.batch_size=2 "resolutions.sets=[default,unseen]" ${EXTRA:-})
run() { echo "\$ $*" >>"$LOG"; "$@" 2>&1 | { grep -E "crdiff: |rank [0-9]+ of|Error" || true; } | tee -a "$LOG"; }
both() { local pids=(); "$@" 0 & pids+=($!); "$@" 1 & pids+=($!); for p in "${pids[@]}"; do wait "$p"; done; }

{ date -u +%FT%TZ; git rev-parse HEAD; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda build', torch.version.cuda,
'available', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"; } >"$LOG"
start=$SECONDS

run "$PYTHON" -m crdiff.run "${ARGS[@]}" output_dir="$WORK/one"
run "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2 -m crdiff.run "${ARGS[@]}" \
  output_dir="$WORK/torchrun"
slurm_task() {  # what srun gives each of 2 tasks on one node (both see the one GPU: cuda:LOCALID mod 1)
  SLURM_JOB_ID=$JOB SLURM_NTASKS=2 SLURM_JOB_NODELIST=localhost SLURM_JOB_NUM_NODES=1 SLURM_NODEID=0 \
    SLURM_PROCID=$1 SLURM_LOCALID=$1 run "$PYTHON" -m crdiff.run "${ARGS[@]}" output_dir="$WORK/slurm"
}
JOB=$RANDOM both slurm_task
job() { run "$PYTHON" -m crdiff.run "${ARGS[@]}" output_dir="$WORK/concurrent"; }
both job

"$PYTHON" - "$WORK" <<'EOF' | tee -a "$LOG"
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from crdiff.experiment.results import load_table

work = Path(sys.argv[1])
def images(d):
    return {str(p.relative_to(d)): np.asarray(Image.open(p)) for p in sorted(d.glob("images/**/*.png"))}
one, table = images(work / "one"), load_table(work / "one").set_index("key").sort_index()
metrics = [c for c in ("clip", "image_reward", "pickscore", "aesthetic") if c in table]
ok = bool(one)
for name in ("torchrun", "slurm", "concurrent"):
    other, t = images(work / name), load_table(work / name).set_index("key").sort_index()
    same = other.keys() == one.keys() and all(np.array_equal(one[k], other[k]) for k in one)
    worst = max(np.abs(one[k].astype(int) - other[k].astype(int)).max() for k in one) if other.keys() == one.keys() else None
    # metric models see other batch compositions across ranks: float rounding only (tests/test_metrics.py)
    gap = float(np.abs(t[metrics].to_numpy() - table[metrics].to_numpy()).max()) if list(t.index) == list(table.index) else None
    close = gap is not None and np.allclose(t[metrics], table[metrics], rtol=1e-6, atol=1e-6)
    print(f"{name}: {len(other)} images, bit-identical to one process: {same} (max pixel diff {worst}); "
          f"metrics equal: {close} (max diff {gap})")
    ok &= same and close
print("gpu_check:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
echo "elapsed $((SECONDS - start)) s" | tee -a "$LOG"
rm -rf "$WORK"
