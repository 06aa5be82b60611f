"""Table C (conf/experiment/table_c.yaml): its jobs, and `task=plan`'s GPU-hours with self-attention's growth
at large sizes (the run itself is in tests/test_experiments.py under tiny overrides)."""

import pytest
from test_run import cli, compose_run, skip_unmerged_methods

from crdiff.experiment import planner
from crdiff.models import Resolution

SD21 = ("experiment=table_c", "model=sd21", "methods=[dense,crdiff,native_resize,freeu]")  # sd21's own methods


def test_table_c_sizes_methods_and_memory_switches():
    run = compose_run(*SD21)
    assert [(s, str(r)) for s, r in run.resolutions.selected()] == [("beyond", "1024x1024")]
    assert (run.amplify.batched, run.vae_decode, run.sampler.steps, run.sampler.seed) == ("auto", "auto", 30, 42)
    sdxl = compose_run("experiment=table_c", "model=sdxl", "methods=[dense]")
    assert [str(r) for _, r in sdxl.resolutions.selected()] == ["1536x1536", "2048x2048"]


def test_plan_of_table_c_lists_every_job():
    skip_unmerged_methods("table_c")
    runs = planner.compose_runs(["experiment=table_c", "prompts.limit=10"])
    assert [run.model.name for _, run in runs] == ["sdxl", "sd15", "sd21"]
    text = planner.report(runs, reachable=False)
    # 10 prompts each: sdxl 5 methods x 2 sizes, sd15 5 x 1, sd21 4 x 1 (hidiffusion left out, said so)
    assert "total: 190 images (190 to generate)" in text and "hidiffusion: not applicable to sd21" in text


def test_plan_cli_scales_up_by_the_denoisers_flops(tmp_path):
    done = cli("task=plan", *SD21, "prompts.limit=100", f"output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    assert "total: 400 images (400 to generate)" in done.stdout
    assert "scaled from 512x512 by the denoiser's FLOPs (x5.82; pixels x4.00: self-attention grows as " \
           "tokens^2)" in done.stdout
    hours = {line.split()[1]: float(line.split()[6]) for line in done.stdout.splitlines()[1:5]}
    assert hours["native_resize"] < hours["dense"] < hours["crdiff"]  # native_resize draws at 512x512


def test_growth_is_the_flop_ratio_up_and_the_pixel_ratio_down():
    small, large = Resolution(512, 512), Resolution(1024, 1024)
    up, how = planner._growth("sd15", small, large)
    assert up == planner.denoiser_flops("sd15", large) / planner.denoiser_flops("sd15", small) > 4
    assert planner._growth("sd15", large, small) == (0.25, "scaled from 1024x1024 by pixel count")
    assert planner._growth("flux", small, large) == (4.0, "scaled from 512x512 by pixel count")  # no UNet config


@pytest.mark.slow
def test_sdxl_flops_grow_faster_than_pixels_beyond_its_training_size():
    """Convolutions and projections grow with tokens, self-attention's scores with tokens^2: FLOPs =
    c + a*p + b*p^2 in the pixel count p exactly, so three sizes predict the fourth (float rounding only)."""
    sizes = [512, 1024, 1536, 2048]
    flops = [planner.denoiser_flops("sdxl", Resolution(s, s)) for s in sizes]
    p = [(s / 512) ** 2 for s in sizes]
    # second differences of F over p on the first three sizes give b; the fourth then follows
    b = ((flops[2] - flops[1]) / (p[2] - p[1]) - (flops[1] - flops[0]) / (p[1] - p[0])) / (p[2] - p[0])
    a = (flops[1] - flops[0]) / (p[1] - p[0]) - b * (p[1] + p[0])
    c = flops[0] - a * p[0] - b * p[0] ** 2
    assert b > 0 and abs(c + a * p[3] + b * p[3] ** 2 - flops[3]) <= 1e-9 * flops[3]
    assert flops[3] / flops[1] > 5.3  # 2048x2048 vs 1024x1024: 4x the pixels, > 5.3x the FLOPs
