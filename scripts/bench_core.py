"""Benchmark of the core: POA memory/time vs dense and REF's two-copy form; exact group thresholds.

Part 1 runs a denoising loop (UNet + Euler scheduler, CFG batch of 2, random latents and text
embeddings) on a real UNet architecture with random weights for each mode:
  dense          plain UNet
  poa            crdiff.apply_crdiff(batched=False), dense and pruned branches one after the other
  poa_batched    crdiff.apply_crdiff(batched=True, the default), both branches in one UNet call of twice the batch
  two_copy       REF: deepcopy + in-place masking, two UNet calls per step
Peak memory is the process's peak RSS (CPU, each mode in a fresh process) or
torch.cuda.max_memory_allocated (GPU). Part 2 times exact per-group threshold selection on the real
SDXL target shapes with random bf16 weights: crdiff's radix select vs concatenate + kthvalue.

    python scripts/bench_core.py                      # CPU defaults (SD1.5, 256x256)
    python scripts/bench_core.py --device cuda --model sdxl --resolution 1024x1024 --dtype fp16
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

import crdiff
from crdiff.models import DTYPES, Resolution, random_unet
from crdiff.reference import pruned_copy, two_copy_forward

MODES = ("dense", "poa", "poa_batched", "two_copy")
RATIOS = {"down": 0.3, "mid": 0.3, "up": 0.3}


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_mode(mode: str, model: str, res: Resolution, dtype: torch.dtype, device: str, steps: int, k: float) -> dict:
    """One generation loop in `mode`; returns time per step and peak memory."""
    from diffusers import EulerDiscreteScheduler

    unet = random_unet(model, dtype, device)
    weights = sum(p.numel() * p.element_size() for p in unet.parameters())
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()  # weights + workspaces (+ anything left alive)
    if mode == "two_copy":
        unet.forward = two_copy_forward(unet, pruned_copy(unet, crdiff.compute_masks(unet, RATIOS)), k)
    elif mode.startswith("poa"):
        crdiff.apply_crdiff(unet, RATIOS, k=k, batched=mode == "poa_batched")
    g = torch.Generator(device).manual_seed(0)
    batch = 2  # one prompt with classifier-free guidance
    latents = torch.randn(1, 4, res.height // 8, res.width // 8, generator=g, device=device, dtype=dtype)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g, device=device, dtype=dtype)
    kwargs = {"encoder_hidden_states": context}
    if unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 1280, generator=g, device=device, dtype=dtype),
            "time_ids": torch.tensor([[res.height, res.width, 0, 0, res.height, res.width]] * batch,
                                     device=device, dtype=dtype),
        }
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(steps + 1, device=device)
    times = []
    with torch.inference_mode():
        for t in scheduler.timesteps:
            sync(device)
            start = time.perf_counter()
            x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            uncond, cond = unet(x, t, **kwargs).sample.chunk(2)
            latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents).prev_sample
            sync(device)
            times.append(time.perf_counter() - start)
    return {
        "mode": mode, "s_per_step": sorted(times[1:])[len(times[1:]) // 2],  # median, first step = warm-up
        "peak_gib": peak_bytes(device) / 2**30, "unet_weights_gib": weights / 2**30,
        "finite": bool(torch.isfinite(latents).all()),
        "resident_before_gib": (resident if device.startswith("cuda") else weights) / 2**30,
    }


def run_modes(args) -> list[dict]:
    rows = []
    if args.device == "cpu":  # a fresh process per mode: ru_maxrss is a process-lifetime peak
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--one-mode", mode, *sys.argv[1:]]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
        return rows
    # GPU: a dense warm-up brings clocks and kernel choices up; then every mode twice, in turn,
    # keeping each mode's faster pass. gc between modes: hooks form reference cycles, and a
    # previous mode's UNet must be gone before the next peak is measured.
    res, dtype = Resolution.parse(args.resolution), DTYPES[args.dtype]
    run_mode("dense", args.model, res, dtype, args.device, 3, args.k)
    best: dict[str, dict] = {}
    for _ in range(2):
        for mode in args.modes:
            gc.collect()
            torch.cuda.empty_cache()
            r = run_mode(mode, args.model, res, dtype, args.device, args.steps, args.k)
            print(json.dumps(r), flush=True)
            if mode not in best or r["s_per_step"] < best[mode]["s_per_step"]:
                best[mode] = {**r, "peak_gib": max(r["peak_gib"], best.get(mode, r)["peak_gib"])}
    return [best[m] for m in args.modes]


class PeakRSS:
    """Peak RSS above the level at entry, sampled every millisecond in a thread (CPU)."""

    def __enter__(self):
        self.process, self.base, self.peak, self.running = psutil.Process(), psutil.Process().memory_info().rss, 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss - self.base)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def measure(fn, device: str):
    """(result, seconds, extra peak bytes) of fn()."""
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = fn()
        sync(device)
        return out, time.perf_counter() - start, torch.cuda.max_memory_allocated() - base
    with PeakRSS() as rss:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return out, seconds, rss.peak


def run_thresholds(args) -> list[dict]:
    """Exact group thresholds on the real SDXL target shapes, random bf16 weights."""
    from crdiff._select import kth_smallest_abs
    from crdiff.pruning import num_to_prune, target_modules

    targets = target_modules(random_unet("sdxl", meta=True))
    g = torch.Generator(args.device).manual_seed(0)
    rows = []
    for group, modules in targets.items():
        weights = [torch.empty(m.weight.shape, dtype=torch.bfloat16, device=args.device).normal_(0, 0.02, generator=g)
                   for m in modules.values()]
        n = sum(w.numel() for w in weights)
        k = num_to_prune(n, 0.3)
        radix, t_radix, m_radix = measure(lambda: kth_smallest_abs(weights, k), args.device)
        ref, t_ref, m_ref = measure(lambda: torch.cat([w.abs().flatten() for w in weights]).kthvalue(k).values,
                                    args.device)
        rows.append({"group": group, "weights": n, "radix_s": t_radix, "radix_extra_gib": m_radix / 2**30,
                     "kthvalue_s": t_ref, "kthvalue_extra_gib": m_ref / 2**30,
                     "equal": bool(torch.equal(radix.cpu(), ref.cpu()))})
        print(json.dumps(rows[-1]), flush=True)
        del weights
    return rows


def report(args, modes: list[dict], thresholds: list[dict]) -> str:
    lines = [f"# Core benchmark: {args.model} UNet (random weights) at {args.resolution}, {args.dtype}",
             "", f"- machine: {machine(args.device)}", f"- device: {args.device}",
             f"- torch {torch.__version__}, diffusers {__import__('diffusers').__version__}, crdiff {crdiff.__version__}",
             f"- command: `python scripts/bench_core.py {' '.join(sys.argv[1:])}`",
             f"- loop: {args.steps} timed Euler steps (+1 warm-up; GPU: best of 2 passes after a warm-up run), CFG batch 2, ratios {RATIOS}, k={args.k}", ""]
    if modes:
        dense = next(r for r in modes if r["mode"] == "dense")
        lines += ["| mode | s / step | × dense time | peak GiB | × dense peak |", "|---|---|---|---|---|"]
        for r in modes:
            lines.append(f"| {r['mode']} | {r['s_per_step']:.3f} | {r['s_per_step'] / dense['s_per_step']:.2f} | "
                         f"{r['peak_gib']:.2f} | {r['peak_gib'] / dense['peak_gib']:.3f} |")
        lines += ["", f"UNet weights: {dense['unet_weights_gib']:.2f} GiB.", ""]
    if thresholds:
        lines += ["## Group thresholds, SDXL target shapes, random bf16 weights, ratio 0.3", "",
                  "| group | weights | radix s | radix extra GiB | cat+kthvalue s | cat+kthvalue extra GiB | equal |",
                  "|---|---|---|---|---|---|---|"]
        for r in thresholds:
            lines.append(f"| {r['group']} | {r['weights']:,} | {r['radix_s']:.2f} | {r['radix_extra_gib']:.3f} | "
                         f"{r['kthvalue_s']:.2f} | {r['kthvalue_extra_gib']:.2f} | {r['equal']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="sd15", choices=["sd15", "sd21", "sdxl"])
    parser.add_argument("--resolution", default="256x256")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--k", type=float, default=1.5)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--no-thresholds", action="store_true")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--one-mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_mode:
        print(json.dumps(run_mode(args.one_mode, args.model, Resolution.parse(args.resolution), DTYPES[args.dtype],
                                  args.device, args.steps, args.k)))
        return
    modes = run_modes(args) if args.modes else []
    thresholds = [] if args.no_thresholds else run_thresholds(args)
    tag = "cpu" if args.device == "cpu" else torch.cuda.get_device_name().replace(" ", "-")
    stem = Path(args.out) / f"core_{args.model}_{args.resolution}_{args.dtype}_{tag}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"argv": sys.argv[1:], "machine": machine(args.device),
                                                     "modes": modes, "thresholds": thresholds}, indent=1))
    stem.with_suffix(".md").write_text(report(args, modes, thresholds))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
