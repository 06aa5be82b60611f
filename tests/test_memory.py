"""Memory at large sizes (crdiff.memory): POA's sequential fallback equals its batched call, the VAE decode
rule and its tiling's difference from a whole decode, and what each row records (tiny pipelines, CPU)."""

import copy
from pathlib import Path

import pytest
import torch
from conftest import unet_inputs
from test_run import compose_run

from crdiff import apply_crdiff, memory, remove_crdiff
from crdiff.amplify import branches_used
from crdiff.experiment.run import execute

PROMPT = ["a red fox in the snow", "a lighthouse at dusk"]


def draw(pipe, height=48, width=80):
    g = [torch.Generator().manual_seed(i) for i in range(2)]
    return pipe(PROMPT, height=height, width=width, num_inference_steps=2, generator=g, output_type="pt").images


@pytest.mark.parametrize("kind", ["sdxl"])
def test_sequential_branches_equal_the_batched_call(tiny_pipes, kind):
    """One POA call in float64 to 1e-6 (the same maths; in float32 batched kernels round differently, ~2e-6
    after k = 1.5 amplifies it), then whole float32 images to 1e-5; `auto` on a CPU is the batched call."""
    pipe = tiny_pipes(kind)
    unet = copy.deepcopy(pipe.unet).double()
    args, kwargs = unet_inputs(unet)
    calls, images = {}, {}
    for batched in (True, False, "auto"):
        apply_crdiff(unet, k=1.5, batched=batched)
        apply_crdiff(pipe, k=1.5, batched=batched)
        try:
            with torch.no_grad():
                calls[batched] = unet(*args, **kwargs).sample
            images[batched] = draw(pipe)
            used = branches_used(pipe), branches_used(unet)
        finally:
            remove_crdiff(pipe)
            remove_crdiff(unet)
        assert used == (["sequential" if batched is False else "batched"],) * 2
    assert 0 < (calls[True] - calls[False]).abs().max() <= 1e-6
    assert (images[True] - images[False]).abs().max() <= 1e-5
    assert torch.equal(calls[True], calls["auto"]) and torch.equal(images[True], images["auto"])


def test_batched_switch_refuses_other_values():
    with pytest.raises(ValueError, match="batched is 'yes'; valid choices"):
        compose_run("amplify.batched=yes")
    with pytest.raises(ValueError, match="vae_decode is 'halves'; valid choices"):
        compose_run("vae_decode=halves")


def test_poa_batches_when_twice_one_branch_fits():
    assert memory.batched_fits(100, 221) and not memory.batched_fits(100, 219)  # 2 x 100 x MARGIN 1.1


def test_vae_decode_rule(tiny_pipes, monkeypatch):
    vae = tiny_pipes("sdxl").vae
    need = memory.decode_bytes(vae, 64, 64, 4)
    assert need == 4 * 64 * 64 * vae.config.block_out_channels[0] * 4 * memory.DECODE_TENSORS  # fp32
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert memory.choose_decode(vae, cpu, 64, 64, 4) == "whole"  # auto never changes a CPU decode
    assert memory.choose_decode(vae, cpu, 64, 64, 4, "tiled") == "tiled"
    for free, mode in ((need, "whole"), (need - 1, "sliced"), (need // 4, "sliced"), (need // 4 - 1, "sliced")):
        monkeypatch.setattr(memory, "available", lambda device, free=free: free)
        assert memory.choose_decode(vae, cuda, 64, 64, 4) == mode, free
    with pytest.raises(ValueError, match="vae_decode is 'x'"):
        memory.choose_decode(vae, cpu, 64, 64, 4, "x")


DIGITS_VAE = Path(__file__).resolve().parents[1] / "crdiff" / "assets" / "digits-t2i" / "vae"


def test_vae_tiling_differs_from_a_whole_decode_by_the_documented_amount():
    """docs/config.md states these numbers: the miniature's trained VAE (latent 4x smaller, trained on 32x32
    digits) decoding 4x4 mosaics of real digits at 128x128, whole vs tiled (diffusers' 1/4 overlap)."""
    from diffusers import AutoencoderKL

    from crdiff.miniature.digits import real_digits

    vae = AutoencoderKL.from_pretrained(DIGITS_VAE).eval()
    ink = real_digits()[0][:64].repeat(1, 3, 1, 1)
    mosaic = ink.reshape(4, 4, 4, 3, 32, 32).permute(0, 3, 1, 4, 2, 5).reshape(4, 3, 128, 128)
    holder = type("Pipe", (), {"vae": vae})()
    pixels = lambda x: (x / 2 + 0.5).clamp(0, 1)  # noqa: E731  the pipeline's [0, 1] image
    with torch.no_grad():
        latents = vae.encode(mosaic * 2 - 1).latent_dist.mean
        whole = pixels(vae.decode(latents).sample)
        with memory.vae_decode(holder, "sliced"):
            assert (pixels(vae.decode(latents).sample) - whole).abs().max() <= 1e-6  # one image at a time
        measured = {}
        for tile in (64, 32):  # 3x3 tiles of 64 px, 5x5 of 32 px (the training size)
            vae.tile_sample_min_size, vae.tile_latent_min_size = tile, tile // 4
            with memory.vae_decode(holder, "tiled"):
                diff = (pixels(vae.decode(latents).sample) - whole).abs()
            measured[tile] = (round(diff.mean().item(), 3), round(diff.max().item(), 2))
    assert (vae.use_tiling, vae.use_slicing) == (False, False)  # as it was
    assert measured == {64: (0.015, 0.18), 32: (0.035, 0.43)}


def test_each_row_records_peak_memory_decode_and_poa_branches_and_the_table_shows_peak(tmp_path):
    from crdiff.experiment.results import load_table
    from crdiff.report.tables import write_all

    run = compose_run("prompts.limit=2", "sampler.steps=2", "sampler.batch_size=2", "resolutions.sets=[beyond]",
                      "resolutions.beyond=[96x96]", "methods=[dense,crdiff,freeu]", "amplify.batched=false",
                      "vae_decode=sliced", f"output_dir={tmp_path}")
    table = execute(run)["table"].set_index("method")
    assert (table.peak_memory == "process_peak_rss").all() and (table.peak_memory_gib > 0).all()
    assert (table.vae_decode == "sliced").all() and (table.setting == "beyond").all()
    assert table.poa_branches.isna()["dense"] and table.poa_branches["crdiff"] == "sequential"
    write_all(load_table(tmp_path).assign(metrics_version=table.metrics_version.iloc[0]), tmp_path / "tables",
              compare=False)
    text = (tmp_path / "tables" / "methods_C.md").read_text()
    assert "peak GiB" in text and "the process's peak RSS" in text


@pytest.mark.slow
def test_bench_table_c_writes_a_row_per_mode_with_peak_memory(tmp_path, monkeypatch):
    """scripts/bench_table_c.py as a GPU session runs it, on the CPU at 64x64 (the real SD1.5 architecture)."""
    import importlib.util
    import json
    import sys

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_table_c.py"
    spec = importlib.util.spec_from_file_location("bench_table_c", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["bench_table_c.py", "--model", "sd15", "--resolution", "64x64", "--dtype",
                                      "fp32", "--device", "cpu", "--calls", "1", "--out", str(tmp_path)])
    bench.main()
    rows = json.loads((tmp_path / "table_c_sd15_fp32_cpu.json").read_text())["rows"]
    assert [(r["part"].split()[0], r["mode"]) for r in rows] == [
        ("unet", "dense"), ("unet", "poa_batched"), ("unet", "poa_sequential"), ("unet", "poa_auto"),
        ("vae", "whole"), ("vae", "tiled")]
    assert [r["poa_branches"] for r in rows[:4]] == [None, "batched", "sequential", "batched"]  # auto: CPU
    assert all(r["peak_gib"] > 0 and r["peak"] == "process_peak_rss" for r in rows)
