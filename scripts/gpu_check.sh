#!/usr/bin/env bash
# Every path only a GPU can run, on a machine with one GPU (~5 min on one H200; random weights, nothing
# downloaded; written on a CPU machine). Works from a git checkout or an unpacked release (no git), and
# leaves nothing behind but its log.
#  1-4. the smoke experiment scored with FID, KID (stand-in features: extracted on the GPU, kept per image and
#       sync across ranks) and CLIP: as one process; as 2 torchrun ranks on the same GPU; as 2 tasks
#       started with SLURM's variables (no torchrun); as 2 independent jobs at once on one output_dir.
#       Images must be bit-identical to 1. and metrics equal up to float rounding.
#  5.   in one process: CR-Diff in fp16 and bf16 on the GPU (finite images, different from dense),
#       cached pruned weights equal to on-the-fly ones, `auto` choosing the cache from the GPU's free
#       memory, and a device move after caching refused (then remove + apply again works on the new device).
#  6.   HiDiffusion (the `hidiffusion` extra) on the real SDXL UNet architecture (random fp16 weights, tiny
#       text encoders and VAE; tests/test_hidiffusion.py covers SD1.5 on the CPU): 2 steps at 512x512, finite,
#       different from dense, and removed (twice) back to dense bit for bit, num_upsamplers restored.
# Output: results/bench/gpu_check_<card>.txt (or $OUT/...). Without nvidia-smi it runs on the CPU (card
# "cpu"; steps 5 and 6 are then skipped), which checks the script itself.
# Usage: bash scripts/gpu_check.sh   [PYTHON=.venv/bin/python] [OUT=folder]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this tree's crdiff, installed or not
PYTHON=${PYTHON:-python3}
OUT=${OUT:-results/bench}
WORK=$(mktemp -d)
export CRDIFF_CACHE="$WORK/cache"  # tiny pipelines and reference statistics: gone with the rest
trap 'rm -rf "$WORK"' EXIT
trap 'exit 143' INT TERM  # so that EXIT runs on a kill too
CARD=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo cpu) | head -1 | tr ' /' '--')
LOG="$OUT/gpu_check_${CARD}.txt"
mkdir -p "$OUT"
run() { echo "\$ $*" >>"$LOG"; "$@" 2>&1 | tr '\r' '\n' | { grep -E "^crdiff: |rank [0-9]+ of [0-9]+ made|Error" || true; } | tee -a "$LOG"; }
both() { local pids=(); "$@" 0 & pids+=($!); "$@" 1 & pids+=($!); for p in "${pids[@]}"; do wait "$p"; done; }

{ date -u +%FT%TZ
  git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo "no git checkout: $("$PYTHON" -c 'import crdiff; print("crdiff", crdiff.__version__)' 2>/dev/null || echo "crdiff (version unknown)") at $ROOT"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda build', torch.version.cuda,
'available', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"; } >"$LOG"
start=$SECONDS

# 8 prompts with real-image paths (random pictures) for FID / KID, as scripts/prepare_coco5k.py lays them out
"$PYTHON" - "$WORK/coco" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from crdiff.experiment.prompts import write_prompt_csv

folder = Path(sys.argv[1])
folder.mkdir()
paths = []
for i in range(8):
    paths.append(str(folder / f"real_{i}.png"))
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
write_prompt_csv(folder / "prompts.csv", [f"coco_{i}" for i in range(8)],
                 [f"a photo of object number {i} on a table" for i in range(8)], {"image_path": paths})
EOF
ARGS=(experiment=smoke device=auto prompts=csv "prompts.path=$WORK/coco/prompts.csv" prompts.limit=8
      sampler.batch_size=2 "resolutions.sets=[default,unseen]" "metrics.names=[fid,kid,clip]" metrics.kid_subset_size=8
      ${EXTRA:-})

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

status=0
"$PYTHON" - "$WORK" <<'EOF' | tee -a "$LOG" || status=1
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from crdiff.experiment.results import load_table

work = Path(sys.argv[1])
def images(d):
    return {str(p.relative_to(d)): np.asarray(Image.open(p)) for p in sorted(d.glob("images/**/*.png"))}
one, table = images(work / "one"), load_table(work / "one").set_index("key").sort_index()
metrics = ["fid", "kid", "clip"]
ok = bool(one) and table[metrics].notna().all().all()
for name in ("torchrun", "slurm", "concurrent"):
    other, t = images(work / name), load_table(work / name).set_index("key").sort_index()
    same = other.keys() == one.keys() and all(np.array_equal(one[k], other[k]) for k in one)
    worst = max(np.abs(one[k].astype(int) - other[k].astype(int)).max() for k in one) if other.keys() == one.keys() else None
    # metric models see other batch compositions across ranks: float rounding only (tests/test_metrics.py)
    gap = float(np.abs(t[metrics].to_numpy() - table[metrics].to_numpy()).max()) if list(t.index) == list(table.index) else None
    # FID of 8 images: a square root of rank-deficient covariances, so looser than CLIP
    close = gap is not None and np.allclose(t[["fid", "kid"]], table[["fid", "kid"]], rtol=1e-3, atol=1e-4) \
        and np.allclose(t[["clip"]], table[["clip"]], rtol=1e-5, atol=1e-6)
    print(f"{name}: {len(other)} images, identical to one process: {same} (max pixel diff {worst}); "
          f"fid/kid/clip equal: {close} (max diff {gap})")
    ok &= same and close
print("gpu_check ranks:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF

"$PYTHON" - <<'EOF' 2>&1 | { grep -v Warning || true; } | tee -a "$LOG" || status=1
import sys

import numpy as np
import torch

import crdiff
from crdiff import tiny
from crdiff.amplify import weights_used

if not torch.cuda.is_available():
    print("gpu paths: skipped (no GPU)")
    sys.exit(0)
ok = True
ratios = {"down": 0.3, "mid": 0.3, "up": 0.3}
for dtype in (torch.float16, torch.bfloat16):
    pipe = tiny.build("sdxl").to("cuda", dtype)
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt=["a red bus", "two cats"], num_inference_steps=4, height=64, width=64, output_type="np")
    draw = lambda: pipe(**call, generator=[torch.Generator("cpu").manual_seed(i) for i in range(2)]).images
    dense = draw()
    crdiff.apply_crdiff(pipe, ratios, k=1.5, weights="cached")
    cached = draw()
    crdiff.remove_crdiff(pipe)
    crdiff.apply_crdiff(pipe, ratios, k=1.5, weights="on_the_fly")
    fly = draw()
    crdiff.remove_crdiff(pipe)
    crdiff.apply_crdiff(pipe, ratios, k=1.5)  # auto: asks the GPU's free memory
    auto = weights_used(pipe)
    pipe.to("cpu")  # a device move after caching: refused, never stale
    try:
        pipe(**call, generator=[torch.Generator("cpu").manual_seed(i) for i in range(2)])
        refused = False
    except RuntimeError as err:
        refused = "moved, cast or changed" in str(err)
    crdiff.remove_crdiff(pipe)
    pipe.to("cuda")
    crdiff.apply_crdiff(pipe, ratios, k=1.5, weights="cached")
    again = draw()
    finite = all(np.isfinite(x).all() for x in (dense, cached, fly, again))
    # the same pruned weights, computed once or at every call: equal up to kernel choice
    same, again_same = np.allclose(cached, fly, atol=2e-3), np.allclose(again, cached, atol=2e-3)
    good = finite and not np.array_equal(dense, cached) and same and auto == "cached" and refused and again_same
    print(f"gpu paths {str(dtype)[6:]}: finite {finite}, crdiff != dense {not np.array_equal(dense, cached)}, "
          f"cached == on_the_fly {same} (max diff {np.abs(cached - fly).max():.2e}), auto -> {auto}, "
          f"device move refused {refused}, re-applied on cuda == cached {again_same}")
    ok &= good
print("gpu_check paths:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
"$PYTHON" - <<'EOF' 2>&1 | { grep -v Warning || true; } | tee -a "$LOG" || status=1
import sys

import torch

from crdiff import tiny
from crdiff.experiment import methods
from crdiff.experiment.config import ModelConfig, RunConfig
from crdiff.models import Resolution

if not torch.cuda.is_available():
    print("hidiffusion sdxl: skipped (no GPU)")
    sys.exit(0)
pipe = tiny.with_real_unet("sdxl", torch.float16, "cuda")
pipe.set_progress_bar_config(disable=True)
run, size = RunConfig(model=ModelConfig(name="sdxl"), methods=["dense", "hidiffusion"]), Resolution(512, 512)
draw = lambda: pipe(prompt=["a red bus", "two cats"], num_inference_steps=2, height=size.height, width=size.width,
                    generator=[torch.Generator("cpu").manual_seed(i) for i in range(2)], output_type="pt").images
upsamplers, dense, ok = pipe.unet.num_upsamplers, draw(), True
for attempt in (1, 2):
    methods.apply(pipe, run, "hidiffusion", size)
    changed = draw()
    methods.remove(pipe)
    back = draw()
    good = (bool(torch.isfinite(changed).all()) and not torch.equal(changed, dense) and torch.equal(back, dense)
            and pipe.unet.num_upsamplers == upsamplers and not hasattr(pipe, "info"))
    print(f"hidiffusion sdxl {size} {str(pipe.unet.dtype)[6:]}, round {attempt}: finite {bool(torch.isfinite(changed).all())}, "
          f"!= dense {not torch.equal(changed, dense)} (mean |diff| {(changed - dense).abs().mean():.3f}), "
          f"removed == dense {torch.equal(back, dense)} (max diff {(back - dense).abs().max():.2e}), "
          f"num_upsamplers {pipe.unet.num_upsamplers} (dense {upsamplers})")
    ok &= good
print("gpu_check hidiffusion:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
echo "elapsed $((SECONDS - start)) s" | tee -a "$LOG"
exit $status
