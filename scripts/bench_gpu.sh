#!/usr/bin/env bash
# The GPU benchmarks on a lent card: real-size models with random weights (see docs/benchmarks.md).
# Usage: OUT=<dir> bash scripts/bench_gpu.sh [core|throughput|all]   (default all; OUT=results/bench)
# Each part fits one 10-minute device command on an H100 / H200 (core ~5 min, throughput ~5 min).
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-results/bench}
PART=${1:-all}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
core() { python3 scripts/bench_core.py --device cuda --steps 10 --repeats 5 --out "$OUT" "$@"; }
throughput() { python3 scripts/bench_throughput.py --device cuda --images 8 --batch-size 4 --steps 30 --out "$OUT" "$@"; }
if [[ $PART == core || $PART == all ]]; then
  core --model sdxl --resolution 512x512 --dtype fp16
  core --model sdxl --resolution 1024x1024 --dtype fp16
  core --model flux --resolution 1024x1024 --dtype bf16
fi
if [[ $PART == throughput || $PART == all ]]; then
  throughput --model sdxl --dtype fp16 --resolutions 512x512 1024x1024
  throughput --model sd15 --dtype fp16 --resolutions 512x512 768x768
fi
