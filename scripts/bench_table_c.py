"""Table C's sizes on one card: time and peak memory of a denoising step and of the VAE decode (real
architectures, random weights), to check crdiff.memory's rules before a real run.

Per (model, resolution): a step of the UNet at CFG batch 2 in `dense`, `poa_batched` and
`poa_sequential` (crdiff's POA, on-the-fly pruned weights, k 1.5), then `poa_auto` (what
`amplify.batched=auto` decided on this card); the decode of one image `whole` and `tiled` (the real VAE
architecture, SDXL's fp32 upcast), beside crdiff.memory's estimate of the whole decode. Peak memory per
row: CUDA's max allocated, reset before each row (on a CPU: the process's peak RSS, a high-water mark).
Random weights: times and memory are the real ones, images are not (tiling's effect on real images is
measured in docs/config.md).

    PYTHONPATH=. python scripts/bench_table_c.py --device cuda --model sdxl --resolution 1536x1536 2048x2048 --dtype fp16
    PYTHONPATH=. python scripts/bench_table_c.py --device cuda --model sd15 --resolution 1024x1024 --dtype fp16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import crdiff
from crdiff import memory
from crdiff.amplify import branches_used
from crdiff.models import DTYPES, UNET_CONFIGS, Resolution, random_unet

# The real VAE architecture of SD1.5 / SD2.1 / SDXL (one diffusers config; SDXL's decodes in fp32 at fp16)
VAE_CONFIG = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
VAE_SIZE = {"sd15": 512, "sd21": 768, "sdxl": 1024}  # its sample_size: diffusers' tile side


def random_vae(model: str, dtype: torch.dtype, device: str):
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**VAE_CONFIG, sample_size=VAE_SIZE[model], force_upcast=model == "sdxl")
    vae = vae.to_empty(device=device).to(dtype)
    with torch.no_grad():
        generator = torch.Generator(device).manual_seed(0)
        for p in vae.parameters():
            p.normal_(0.0, 0.02, generator=generator)
    return vae.eval()


def step_inputs(unet, res: Resolution, dtype: torch.dtype, device: str):
    g = torch.Generator(device).manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g, device=device, dtype=dtype)  # noqa: E731
    c = unet.config
    kwargs = {"encoder_hidden_states": r(2, 77, c.cross_attention_dim)}
    if c.addition_embed_type == "text_time":
        text = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        size = [res.height, res.width, 0, 0, res.height, res.width]
        kwargs["added_cond_kwargs"] = {"text_embeds": r(2, text),
                                       "time_ids": torch.tensor([size] * 2, device=device, dtype=dtype)}
    return r(2, c.in_channels, res.height // 8, res.width // 8), kwargs


def timed(fn, device: torch.device, calls: int) -> dict:
    """Median seconds of `calls` calls after one warm-up, and the peak memory of them all."""
    fn()
    memory.reset_peak(device)
    seconds = []
    for _ in range(calls):
        began = time.perf_counter()
        with torch.no_grad():
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - began)
    peak, kind = memory.peak(device)
    return {"seconds": sorted(seconds)[len(seconds) // 2], "peak_gib": peak / 2**30, "peak": kind}


def bench(model: str, res: Resolution, dtype: torch.dtype, device: torch.device, calls: int) -> list[dict]:
    rows = []
    unet = random_unet(model, dtype, str(device))
    sample, kwargs = step_inputs(unet, res, dtype, str(device))
    step = lambda: unet(sample, torch.tensor(500.0, device=device), **kwargs)  # noqa: E731
    for mode, batched in (("dense", None), ("poa_batched", True), ("poa_sequential", False), ("poa_auto", "auto")):
        if batched is not None:
            crdiff.apply_crdiff(unet, k=1.5, batched=batched, weights="on_the_fly")
        try:
            row = timed(step, device, calls)
            row["poa_branches"] = "+".join(branches_used(unet)) or None
        except torch.OutOfMemoryError:
            row = {"seconds": None, "peak_gib": None, "peak": "out of memory", "poa_branches": None}
        finally:
            crdiff.remove_crdiff(unet)
        rows.append({"part": "unet step (CFG batch 2)", "mode": mode, **row})
    del unet, sample, kwargs
    vae = random_vae(model, dtype, str(device))
    estimate = memory.decode_bytes(vae, res.height, res.width, 1) / 2**30  # fp32 where SDXL's VAE upcasts
    if dtype == torch.float16 and vae.config.force_upcast:
        vae = vae.to(torch.float32)  # as the SDXL pipeline decodes
    latents = torch.randn(1, 4, res.height // 8, res.width // 8, device=device, dtype=vae.dtype)
    for mode in ("whole", "tiled"):
        vae.use_tiling = mode == "tiled"
        try:
            row = timed(lambda: vae.decode(latents), device, calls)
        except torch.OutOfMemoryError:
            row = {"seconds": None, "peak_gib": None, "peak": "out of memory"}
        rows.append({"part": "vae decode (1 image)", "mode": mode, **row, "estimate_gib": estimate})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(UNET_CONFIGS), default="sdxl")
    parser.add_argument("--resolution", nargs="+", default=["1536x1536", "2048x2048"])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per row (after one warm-up)")
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = [{"model": args.model, "resolution": str(res), "dtype": args.dtype, **row}
            for res in map(Resolution.parse, args.resolution)
            for row in bench(args.model, res, DTYPES[args.dtype], device, args.calls)]
    name = f"table_c_{args.model}_{args.dtype}_{card.replace(' ', '-')}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"device": card, "rows": rows}, indent=1))
    lines = [f"# Table C sizes: {args.model} {args.dtype} on {card} (random weights)", "",
             "| resolution | part | mode | s/call | peak GiB | POA ran | decode estimate GiB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
        lines.append(f"| {r['resolution']} | {r['part']} | {r['mode']} | {fmt(r['seconds'], '{:.3f}')} | "
                     f"{fmt(r['peak_gib'], '{:.2f}')} | {r.get('poa_branches') or '-'} | "
                     f"{fmt(r.get('estimate_gib'), '{:.2f}')} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
