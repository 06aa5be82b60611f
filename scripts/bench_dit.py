"""DiT benchmark: CR-Diff's POA on real-size SD3-medium and FLUX.1-dev transformers (random bf16 weights).

Modes as scripts/bench_core.py: dense, poa (branches in turn), poa_batched (one call of twice the batch),
two_copy (REF: deepcopy + masked weights). SD3 runs with CFG (batch 2, 333 text tokens: 77 CLIP + 256
T5); FLUX.1-dev with its distilled guidance (batch 1, 512 text tokens). Peak = torch.cuda.max_memory_allocated.

    python scripts/bench_dit.py --model flux --resolution 1024x1024 --out results/bench
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

import crdiff
from crdiff.models import TRANSFORMER_CONFIGS, Resolution, random_transformer
from crdiff.pruning import target_modules
from crdiff.reference import pruned_copy, two_copy_forward

MODES = ("dense", "poa", "poa_batched", "two_copy")
RATIOS = {"early": 0.3, "middle": 0.3, "late": 0.3}
def inputs(name: str, res: Resolution, dtype, device) -> dict:
    g = torch.Generator(device).manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g, device=device, dtype=dtype)  # noqa: E731
    if name == "sd3":
        return {"hidden_states": r(2, 16, res.height // 8, res.width // 8), "encoder_hidden_states": r(2, 333, 4096),
                "pooled_projections": r(2, 2048), "timestep": torch.full((2,), 500.0, device=device, dtype=dtype)}
    tokens = (res.height // 16) * (res.width // 16)
    ids = torch.zeros(tokens, 3, device=device, dtype=dtype)
    ids[:, 1] = torch.arange(tokens, device=device) // (res.width // 16)
    ids[:, 2] = torch.arange(tokens, device=device) % (res.width // 16)
    return {"hidden_states": r(1, tokens, 64), "encoder_hidden_states": r(1, 512, 4096), "pooled_projections": r(1, 768),
            "timestep": torch.full((1,), 0.5, device=device, dtype=dtype),
            "guidance": torch.full((1,), 3.5, device=device, dtype=dtype),
            "img_ids": ids, "txt_ids": torch.zeros(512, 3, device=device, dtype=dtype)}


def run_mode(model, name: str, mode: str, res: Resolution, steps: int, k: float) -> dict:
    device, dtype = model.device, model.dtype
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    if mode == "two_copy":
        model.forward = two_copy_forward(model, pruned_copy(model, crdiff.compute_masks(model, RATIOS)), k)
    elif mode.startswith("poa"):
        crdiff.apply_crdiff(model, RATIOS, k=k, batched=mode == "poa_batched")
    kwargs = inputs(name, res, dtype, device)
    times = []
    with torch.inference_mode():
        for _ in range(steps + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = model(**kwargs).sample
            kwargs["hidden_states"] = kwargs["hidden_states"] + 0.01 * out.to(dtype)  # a step's dependency
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    finite = bool(torch.isfinite(out).all())
    crdiff.remove_crdiff(model)
    model.__dict__.pop("forward", None)
    gc.collect()
    torch.cuda.empty_cache()
    return {"mode": mode, "s_per_call": sorted(times[1:])[len(times[1:]) // 2], "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "finite": finite}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(TRANSFORMER_CONFIGS), required=True)
    parser.add_argument("--resolution", default="1024x1024")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--k", type=float, default=1.5)
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()
    res = Resolution.parse(args.resolution)
    model = random_transformer(args.model, torch.bfloat16, "cuda")
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    counts = {g: (len(m), sum(x.weight.numel() for x in m.values())) for g, m in target_modules(model).items()}
    run_mode(model, args.model, "dense", res, 2, args.k)  # warm-up
    rows = []
    for mode in MODES:
        rows.append(run_mode(model, args.model, mode, res, args.steps, args.k))
        print(json.dumps(rows[-1]), flush=True)
    dense = rows[0]
    gpu = torch.cuda.get_device_name()
    lines = [f"# DiT benchmark: {args.model} transformer (real config, random bf16 weights) at {args.resolution}", "",
             f"- GPU: {gpu}; torch {torch.__version__}, diffusers {__import__('diffusers').__version__}",
             f"- command: `python scripts/bench_dit.py {' '.join(sys.argv[1:])}`",
             f"- {args.steps} timed transformer calls (median; +1 warm-up), ratios {RATIOS}, k={args.k}",
             f"- weights {weights:.2f} GiB; targets per group (layers, weights): {counts}", "",
             "| mode | s / call | × dense time | peak GiB | × dense peak |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['s_per_call']:.3f} | {r['s_per_call'] / dense['s_per_call']:.2f} | "
                     f"{r['peak_gib']:.2f} | {r['peak_gib'] / dense['peak_gib']:.3f} |")
    stem = Path(args.out) / f"dit_{args.model}_{args.resolution}_bf16_{gpu.replace(' ', '-')}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps({"gpu": gpu, "weights_gib": weights, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
