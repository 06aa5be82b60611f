"""Benchmark of POA's ways to hold the pruned weights, against dense and REF's two copies: time and peak memory.

Modes, each one denoiser call per sampling step (CFG batch 2 for SD1.5 / SD2.1 / SDXL / SD3, batch 1 for
FLUX's distilled guidance), real architecture with random weights:
  dense                  the plain model
  on_the_fly_batched     apply_crdiff(weights="on_the_fly", batched=True): w · mask rebuilt every call,
                         dense and pruned halves in one call of twice the batch
  on_the_fly_sequential  the same, dense and pruned calls one after the other (batched=False)
  cached_batched         apply_crdiff(weights="cached", batched=True): pruned target weights built once
  cached_sequential      the same, batched=False
  two_copy               REF: a deep copy masked in place, two calls per step (crdiff.reference)
Protocol: the model is built once; a warm-up; then `--repeats` rounds, each running every mode once in
an order rotated by one per round (modes interleaved, so the drift of a busy machine hits all alike):
apply, `--untimed` calls, `--steps` timed calls (their median is the round's seconds per step), remove.
Reported per mode: median and min-max over rounds; time ratio to dense paired by round (median and
min-max); peak memory over apply + calls (CUDA: max_memory_allocated; CPU: process RSS sampled every
millisecond) and its ratio to dense's. `--thresholds` adds exact group-threshold selection on the real
SDXL target shapes (radix select vs concatenate + kthvalue).

    PYTHONPATH=. python scripts/bench_core.py          # CPU: SD1.5, 128x128, fp32 (see docs/benchmarks.md)
    PYTHONPATH=. python scripts/bench_core.py --device cuda --model sdxl --resolution 1024x1024 --dtype fp16
    PYTHONPATH=. python scripts/bench_core.py --device cuda --model flux --resolution 1024x1024 --dtype bf16
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

import crdiff
from crdiff.models import DTYPES, TRANSFORMER_CONFIGS, UNET_CONFIGS, Resolution, random_transformer, random_unet
from crdiff.pruning import MagnitudeIndex, plan_pruning, target_modules
from crdiff.reference import pruned_copy, two_copy_forward

LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
MODES = ("dense", "on_the_fly_batched", "on_the_fly_sequential", "cached_batched", "cached_sequential", "two_copy")
RATIOS = {"down": 0.3, "mid": 0.3, "up": 0.3}  # a DiT reads them as early / middle / late


def machine(device: str) -> str:
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    name = platform.processor() or platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {psutil.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def versions(device: str) -> dict[str, str | None]:
    import diffusers

    out = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
           "crdiff": crdiff.__version__, "cuda": torch.version.cuda, "cudnn": None, "driver": None, "git": None}
    if device.startswith("cuda"):
        out["cudnn"] = str(torch.backends.cudnn.version())
        out["driver"] = _command(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    out["git"] = _command(["git", "rev-parse", "--short", "HEAD"])
    return out


def _command(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(model: str, dtype: torch.dtype, device: str):
    if model in TRANSFORMER_CONFIGS:
        return random_transformer(model, dtype, device)
    return random_unet(model, dtype, device)


def inputs(model: str, net, res: Resolution, dtype: torch.dtype, device: str) -> tuple[dict, str]:
    """One step's denoiser arguments and the name of the one that carries the latents."""
    g = torch.Generator(device).manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g, device=device, dtype=dtype)  # noqa: E731
    full = lambda n, v: torch.full((n,), v, device=device, dtype=dtype)  # noqa: E731
    if model == "sd3":
        return {"hidden_states": r(2, 16, res.height // 8, res.width // 8), "encoder_hidden_states": r(2, 333, 4096),
                "pooled_projections": r(2, 2048), "timestep": full(2, 500.0)}, "hidden_states"
    if model == "flux":
        tokens, cols = (res.height // 16) * (res.width // 16), res.width // 16
        ids = torch.zeros(tokens, 3, device=device, dtype=dtype)
        ids[:, 1] = torch.arange(tokens, device=device) // cols
        ids[:, 2] = torch.arange(tokens, device=device) % cols
        return {"hidden_states": r(1, tokens, 64), "encoder_hidden_states": r(1, 512, 4096),
                "pooled_projections": r(1, 768), "timestep": full(1, 0.5), "guidance": full(1, 3.5),
                "img_ids": ids, "txt_ids": torch.zeros(512, 3, device=device, dtype=dtype)}, "hidden_states"
    kwargs = {"sample": r(2, 4, res.height // 8, res.width // 8), "timestep": full(2, 500.0),
              "encoder_hidden_states": r(2, 77, net.config.cross_attention_dim)}
    if net.config.addition_embed_type == "text_time":
        size = [res.height, res.width, 0, 0, res.height, res.width]
        kwargs["added_cond_kwargs"] = {"text_embeds": r(2, 1280),
                                       "time_ids": torch.tensor([size] * 2, device=device, dtype=dtype)}
    return kwargs, "sample"


def enter(net, mode: str, k: float, index: MagnitudeIndex) -> None:
    """Put `net` in `mode`; the group thresholds come from `index` in every mode, so what is timed is
    holding the pruned weights (cache build, REF's deep copy), not selecting them again."""
    if mode == "two_copy":
        plan = plan_pruning(net, RATIOS, index=index)
        masks = {name: plan.keep(name, net.get_submodule(name).weight.detach()) for name in plan.names()}
        net.forward = two_copy_forward(net, pruned_copy(net, masks), k)
    elif mode != "dense":
        weights, order = mode.rsplit("_", 1)
        crdiff.apply_crdiff(net, RATIOS, k=k, batched=order == "batched", weights=weights, index=index)


def leave(net) -> None:
    crdiff.remove_crdiff(net)
    net.__dict__.pop("forward", None)
    gc.collect()  # two_copy's closure and the hooks sit in reference cycles
    if LIBC is not None:  # hand freed heap back to the OS, or the next mode's RSS peak starts from this one's
        LIBC.malloc_trim(0)


class Peak:
    """Peak memory inside the block: CUDA allocator peak, or process RSS sampled every millisecond."""

    def __init__(self, device: str) -> None:
        self.device, self.bytes = device, 0

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return self
        self.process, self.running, self.bytes = psutil.Process(), True, psutil.Process().memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.bytes = max(self.bytes, self.process.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            self.bytes = torch.cuda.max_memory_allocated()
            return
        self.running = False
        self.thread.join()
        self.bytes = max(self.bytes, self.process.memory_info().rss)


def measure(net, mode: str, kwargs: dict, key: str, args, index: MagnitudeIndex) -> dict:
    """One round of `mode`: apply, `args.untimed` calls, `args.steps` timed calls, remove."""
    device = args.device
    times = []
    with Peak(device) as peak:
        sync(device)
        start = time.perf_counter()
        enter(net, mode, args.k, index)
        sync(device)
        apply_s, used = time.perf_counter() - start, crdiff.weights_used(net)
        x = kwargs[key]
        with torch.inference_mode():
            for _ in range(args.untimed + args.steps):
                sync(device)
                start = time.perf_counter()
                out = net(**{**kwargs, key: x}).sample
                x = x + 0.01 * out.to(x.dtype)  # the next step depends on this one, as in sampling
                sync(device)
                times.append(time.perf_counter() - start)
        finite = bool(torch.isfinite(x).all())
        leave(net)
    return {"mode": mode, "s_per_step": statistics.median(times[args.untimed:]), "apply_s": apply_s,
            "peak_bytes": peak.bytes, "weights_used": used, "finite": finite}


def run_modes(args) -> tuple[list[dict], dict]:
    res, dtype = Resolution.parse(args.resolution), DTYPES[args.dtype]
    net = build(args.model, dtype, args.device)
    targets = [m.weight for group in target_modules(net).values() for m in group.values()]
    sizes = {"weights_gib": sum(p.numel() * p.element_size() for p in net.parameters()) / 2**30,
             "target_weights_gib": sum(w.numel() * w.element_size() for w in targets) / 2**30}
    kwargs, key = inputs(args.model, net, res, dtype, args.device)
    index = MagnitudeIndex(net)
    for _ in range(args.warmup):
        measure(net, "dense", kwargs, key, args, index)
    rounds = []
    for r in range(args.repeats):
        order = args.modes[r % len(args.modes):] + args.modes[:r % len(args.modes)]
        for mode in order:
            rounds.append({"round": r, **measure(net, mode, kwargs, key, args, index)})
            print(json.dumps(rounds[-1]), flush=True)
    return rounds, sizes


def summarize(rounds: list[dict], modes: list[str]) -> list[dict]:
    """Per mode: median and min-max over rounds; ratios to dense paired by round; the highest peak."""
    by = {(r["round"], r["mode"]): r for r in rounds}
    n = 1 + max(r["round"] for r in rounds)
    rows = []
    for mode in modes:
        mine = [by[i, mode] for i in range(n)]
        seconds = [r["s_per_step"] for r in mine]
        row = {"mode": mode, "s_median": statistics.median(seconds), "s_min": min(seconds), "s_max": max(seconds),
               "apply_s": statistics.median(r["apply_s"] for r in mine),
               "peak_gib": max(r["peak_bytes"] for r in mine) / 2**30, "weights_used": mine[0]["weights_used"],
               "finite": all(r["finite"] for r in mine)}
        for ref in ("dense", "two_copy"):
            if ref in modes:
                ratios = [by[i, mode]["s_per_step"] / by[i, ref]["s_per_step"] for i in range(n)]
                row[f"x_{ref}"] = [statistics.median(ratios), min(ratios), max(ratios)]
        rows.append(row)
    if "dense" in modes:
        dense_peak = next(r["peak_gib"] for r in rows if r["mode"] == "dense")
        for row in rows:
            row["peak_x_dense"] = row["peak_gib"] / dense_peak
    return rows


def goals(rows: list[dict], sizes: dict) -> list[str]:
    """The issue's targets, checked on this run's ratios."""
    by = {r["mode"]: r for r in rows}
    if not {"dense", "two_copy"} <= set(by):
        return []
    bound = 1 + sizes["target_weights_gib"] / sizes["weights_gib"]
    lines = ["| mode | time × two_copy (median) | goal | peak × dense | goal | met |", "|---|---|---|---|---|---|"]
    for mode, (t_goal, m_goal) in {"cached_batched": (1.03, bound), "cached_sequential": (1.03, bound),
                                   "on_the_fly_batched": (1.10, 1.10), "on_the_fly_sequential": (1.10, 1.10)}.items():
        if mode in by:
            t, m = by[mode]["x_two_copy"][0], by[mode]["peak_x_dense"]
            met = "yes" if t <= t_goal and m <= m_goal else "no"
            lines.append(f"| {mode} | {t:.3f} | ≤ {t_goal:.2f} | {m:.3f} | ≤ {m_goal:.3f} | {met} |")
    return lines


def report(args, header: dict, rows: list[dict], sizes: dict, thresholds: list[dict]) -> str:
    v = header["versions"]
    lines = [f"# Core benchmark: {args.model} (real config, random weights) at {args.resolution}, {args.dtype}", "",
             f"- machine: {header['machine']} ({args.device})",
             f"- note: {args.note}" if args.note else None,
             f"- load average (1 min) at start / end: {header['load_start']:.2f} / {header['load_end']:.2f}",
             f"- software: python {v['python']}, torch {v['torch']} (CUDA {v['cuda']}, cuDNN {v['cudnn']}, driver "
             f"{v['driver']}), diffusers {v['diffusers']}, crdiff {v['crdiff']} (git {v['git']})",
             f"- command: `python scripts/bench_core.py {' '.join(header['argv'])}` ({header['wall_s'] / 60:.1f} min)",
             f"- protocol: {args.warmup} warm-up dense round(s); {args.repeats} rounds, modes interleaved (order rotated "
             f"each round); per round and mode: apply (thresholds from a precomputed MagnitudeIndex), {args.untimed} "
             f"untimed call(s), {args.steps} timed call(s) (median); ratios {RATIOS}, k={args.k}",
             f"- weights {sizes['weights_gib']:.2f} GiB, of which BWP targets {sizes['target_weights_gib']:.2f} GiB "
             f"(cached memory bound 1 + targets / all = {1 + sizes['target_weights_gib'] / sizes['weights_gib']:.3f})",
             ""]
    lines = [line for line in lines if line is not None]
    lines += ["| mode | held | s / step median | min – max | × dense (median, min – max) | × two_copy (median) "
              "| apply s | peak GiB | × dense peak |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        xd, xt = r.get("x_dense", [float("nan")] * 3), r.get("x_two_copy", [float("nan")] * 3)
        lines.append(f"| {r['mode']} | {r['weights_used'] or '-'} | {r['s_median']:.3f} | {r['s_min']:.3f} – "
                     f"{r['s_max']:.3f} | {xd[0]:.2f} ({xd[1]:.2f} – {xd[2]:.2f}) | {xt[0]:.3f} | {r['apply_s']:.2f} | "
                     f"{r['peak_gib']:.2f} | {r.get('peak_x_dense', float('nan')):.3f} |")
    checks = goals(rows, sizes)
    if checks:
        lines += ["", "Goals of issue 17 (time paired by round against two_copy; memory against dense):", "", *checks]
    if thresholds:
        lines += ["", "## Group thresholds, SDXL target shapes, random bf16 weights, ratio 0.3", "",
                  "| group | weights | radix s | radix extra GiB | cat+kthvalue s | cat+kthvalue extra GiB | equal |",
                  "|---|---|---|---|---|---|---|"]
        for r in thresholds:
            lines.append(f"| {r['group']} | {r['weights']:,} | {r['radix_s']:.2f} | {r['radix_extra_gib']:.3f} | "
                         f"{r['kthvalue_s']:.2f} | {r['kthvalue_extra_gib']:.2f} | {r['equal']} |")
    return "\n".join(lines) + "\n"


def timed_extra(fn, device: str):
    """(result, seconds, peak bytes above the level at entry) of fn()."""
    sync(device)
    base = torch.cuda.memory_allocated() if device.startswith("cuda") else psutil.Process().memory_info().rss
    with Peak(device) as peak:
        start = time.perf_counter()
        out = fn()
        sync(device)
        seconds = time.perf_counter() - start
    return out, seconds, max(0, peak.bytes - base)


def run_thresholds(args) -> list[dict]:
    """Exact group thresholds on the real SDXL target shapes, random bf16 weights."""
    from crdiff._select import kth_smallest_abs
    from crdiff.pruning import num_to_prune

    targets = target_modules(random_unet("sdxl", meta=True))
    g = torch.Generator(args.device).manual_seed(0)
    rows = []
    for group, modules in targets.items():
        ws = [torch.empty(m.weight.shape, dtype=torch.bfloat16, device=args.device).normal_(0, 0.02, generator=g)
              for m in modules.values()]
        n = sum(w.numel() for w in ws)
        k = num_to_prune(n, 0.3)
        radix, t_radix, m_radix = timed_extra(lambda ws=ws: kth_smallest_abs(ws, k), args.device)
        ref, t_ref, m_ref = timed_extra(lambda ws=ws: torch.cat([w.abs().flatten() for w in ws]).kthvalue(k).values,
                                        args.device)
        rows.append({"group": group, "weights": n, "radix_s": t_radix, "radix_extra_gib": m_radix / 2**30,
                     "kthvalue_s": t_ref, "kthvalue_extra_gib": m_ref / 2**30,
                     "equal": bool(torch.equal(radix.cpu(), ref.cpu()))})
        print(json.dumps(rows[-1]), flush=True)
        del ws
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="sd15", choices=sorted(UNET_CONFIGS) + sorted(TRANSFORMER_CONFIGS))
    parser.add_argument("--resolution", default="128x128")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--steps", type=int, default=3, help="timed calls per round and mode (median)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds over all modes (>= 5 for a recorded result)")
    parser.add_argument("--untimed", type=int, default=1, help="untimed calls per round and mode, after apply")
    parser.add_argument("--warmup", type=int, default=1, help="untimed dense rounds before the first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a crowded machine)")
    parser.add_argument("--k", type=float, default=1.5)
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--thresholds", action="store_true", help="also time exact group-threshold selection")
    parser.add_argument("--note", default="", help="written into the file, e.g. 'machine shared with 5 others'")
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")
    header = {"argv": sys.argv[1:], "machine": machine(args.device), "versions": versions(args.device),
              "load_start": os.getloadavg()[0]}
    start = time.perf_counter()
    rounds, sizes = run_modes(args) if args.modes else ([], {})
    rows = summarize(rounds, args.modes) if rounds else []
    thresholds = run_thresholds(args) if args.thresholds else []
    header |= {"load_end": os.getloadavg()[0], "wall_s": time.perf_counter() - start}
    tag = "cpu" if args.device == "cpu" else torch.cuda.get_device_name(args.device).replace(" ", "-")
    stem = Path(args.out) / f"core_{args.model}_{args.resolution}_{args.dtype}_{tag}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({**header, "note": args.note, "sizes": sizes, "summary": rows,
                                                     "rounds": rounds, "thresholds": thresholds}, indent=1))
    stem.with_suffix(".md").write_text(report(args, header, rows, sizes, thresholds))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
