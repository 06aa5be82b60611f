#!/usr/bin/env bash
# The GPU benchmark run on a lent card (see docs/benchmarks.md): real-size UNets, random weights.
# Usage: OUT=<dir> bash scripts/bench_gpu.sh   (diffusers may be installed from carried wheels first)
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-results/bench}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 scripts/bench_core.py --device cuda --model sdxl --resolution 1024x1024 --dtype fp16 --steps 10 --no-thresholds --out "$OUT"
python3 scripts/bench_core.py --device cuda --model sdxl --resolution 512x512 --dtype fp16 --steps 10 --no-thresholds --out "$OUT"
python3 scripts/bench_core.py --device cuda --model sd15 --resolution 512x512 --dtype fp16 --steps 10 --out "$OUT"
