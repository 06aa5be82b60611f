"""Comparison methods: each one's defining property, and every one removes back to dense exactly."""

import math
from pathlib import Path

import numpy as np
from PIL import Image

import pytest
import torch

from crdiff.experiment import methods
from crdiff.experiment.methods.entropy import EntropyScaling
from crdiff.experiment.methods.freeu import freeu_values
from crdiff.experiment.methods.pruned import group_sizes
from crdiff.models import Resolution
from crdiff.pruning import GROUPS, compute_masks, target_modules
from crdiff.experiment.config import RunConfig

from test_run import compose_run

ALL = [m for m in methods.METHODS if m != "hidiffusion"]  # full-size UNets only: tests/test_hidiffusion.py


def generate(pipe, height=64, width=64):
    g = [torch.Generator().manual_seed(i) for i in range(2)]
    return pipe(["a red cube", "a blue sphere"], height=height, width=width, num_inference_steps=3,
                generator=g, output_type="pt").images


@pytest.fixture
def run() -> RunConfig:
    return compose_run("experiment=smoke")


@pytest.mark.parametrize("name", ALL)
def test_every_method_removes_back_to_dense_exactly(tiny_pipes, run, name):
    pipe = tiny_pipes("sdxl")
    dense = generate(pipe, 40, 72)
    methods.apply(pipe, run, name, Resolution(40, 72))
    changed = generate(pipe, 40, 72)
    methods.remove(pipe)
    assert torch.equal(generate(pipe, 40, 72), dense)
    assert not any(hasattr(m, "_diffusers_hook") or "forward" in m.__dict__ for m in pipe.unet.modules())
    # native_resize and the controls leave the pipeline as loaded: they change the call (where the sampler
    # draws, its steps, SDXL's size conditioning; tests/test_native.py, below)
    assert torch.equal(changed, dense) == (name in ("dense", "native_resize", "dense_steps2x", "dense_sizecond"))


def test_entropy_scaling_is_plain_attention_at_the_training_size(tiny_pipes, run):
    pipe = tiny_pipes("sd15")
    dense = generate(pipe, 64, 64)  # tiny models are "trained" at 64x64
    methods.apply(pipe, run, "entropy", Resolution(64, 64))
    try:
        assert torch.equal(generate(pipe, 64, 64), dense)
    finally:
        methods.remove(pipe)


def test_entropy_scaling_factor():
    hook = EntropyScaling(pixel_ratio=4.0)  # test image has 1/4 of the training pixels
    q = torch.randn(2, 100, 8)
    want = q * math.sqrt(math.log(100) / math.log(400))
    torch.testing.assert_close(hook.post_forward(None, q), want, rtol=0, atol=0)


def test_pruning_baselines_share_the_crdiff_settings(run):
    crd, bwp = methods.pruning_settings(run, "crdiff"), methods.pruning_settings(run, "bwp")
    uniform, rnd = methods.pruning_settings(run, "uniform"), methods.pruning_settings(run, "random_mask")
    assert bwp.k == 1.0 and bwp.ratios == crd.ratios
    assert len(set(uniform.ratios.values())) == 1 and uniform.k == crd.k
    assert rnd.criterion == "random" and rnd.ratios == crd.ratios and rnd.k == crd.k
    assert freeu_values(run) == (0.9, 0.2, 1.3, 1.4)  # SDXL's published values


def test_uniform_prunes_as_many_weights_as_crdiff(tiny_pipes):
    run = compose_run("experiment=smoke", "pruning.ratios={down:0.1,mid:0.5,up:0.3}")
    crd, uniform = methods.pruning_settings(run, "crdiff"), methods.pruning_settings(run, "uniform")
    unet = tiny_pipes("sdxl").unet
    sizes = {g: sum(m.weight.numel() for m in mods.values()) for g, mods in target_modules(unet).items()}
    assert group_sizes(run) == sizes  # counted without loading weights = counted on the loaded model
    total = sum(crd.ratios[g] * sizes[g] for g in GROUPS) / sum(sizes.values())
    assert uniform.ratios == {g: total for g in GROUPS} and total != pytest.approx(0.3)  # not the plain mean

    def pruned(ratios):
        return sum(int((~keep).sum()) for keep in compute_masks(unet, ratios).values())

    assert abs(pruned(uniform.ratios) - pruned(crd.ratios)) <= len(GROUPS)  # int(N_g r_g) floors per group
    override = compose_run("experiment=smoke", "pruning.ratios={down:0.1,mid:0.5,up:0.3}", "baselines.uniform_ratio=0.2")
    assert methods.pruning_settings(override, "uniform").ratios == {g: 0.2 for g in GROUPS}


def test_one_experiment_runs_every_method_side_by_side(tmp_path):
    from crdiff.experiment.run import execute

    summary = execute(compose_run("experiment=smoke", f"output_dir={tmp_path}", f"methods={ALL}".replace("'", ""),
                                  "resolutions.sets=[unseen]", "prompts.limit=1", "metrics=none"))
    table = summary["table"]
    assert list(dict.fromkeys(table.method)) == ALL and len(table) == 2 * len(ALL)
    assert table.key.is_unique


def test_controls_are_dense_called_differently(tmp_path):
    """dense_steps2x and dense_cfg<s> make exactly dense's images at twice the steps / guidance s, under
    their own keys; dense_sizecond changes SDXL's size conditioning only; cost columns count the passes."""
    from crdiff.experiment.run import execute

    def table(*overrides):
        return execute(compose_run("experiment=smoke", f"output_dir={tmp_path}", "resolutions.sets=[unseen]",
                                   "resolutions.unseen=[40x72]", "prompts.limit=1", "metrics=none",
                                   "sampler.steps=2", *overrides))["table"].set_index("method")

    rows = table("methods=[dense,crdiff,dense_steps2x,dense_cfg5,dense_sizecond]")
    assert rows.denoiser_calls["dense_steps2x"] == rows.denoiser_calls["crdiff"] == 2 * rows.denoiser_calls["dense"]
    assert rows.steps["dense_steps2x"] == 4 and rows.guidance["dense_cfg5"] == 5.0 and rows.key.is_unique

    def pixels(row):
        return np.asarray(Image.open(Path(row.image_dir) / "00000.png"))

    steps4, cfg5 = table("methods=[dense]", "sampler.steps=4"), table("methods=[dense]", "sampler.guidance=5")
    assert np.array_equal(pixels(rows.loc["dense_steps2x"]), pixels(steps4.loc["dense"]))
    assert np.array_equal(pixels(rows.loc["dense_cfg5"]), pixels(cfg5.loc["dense"]))
    assert not np.array_equal(pixels(rows.loc["dense_sizecond"]), pixels(rows.loc["dense"]))


def test_controls_refuse_what_they_do_not_apply_to():
    with pytest.raises(ValueError, match="dense_sizecond.*model 'tiny-sd15' has none"):
        from crdiff.experiment.run import plan

        plan(compose_run("experiment=smoke", "model=tiny-sd15", "methods=[dense_sizecond]", "prompts.limit=1"))
    with pytest.raises(ValueError, match=r"dense_cfg<scale> needs a guidance scale >= 0"):
        compose_run("experiment=smoke", "methods=[dense_cfgx]")


def test_uniform_counts_each_miniature_in_its_own_folder(monkeypatch, tmp_path):
    """A bundled model is counted from its own pipeline folder, never another miniature's."""
    from crdiff.experiment.methods import pruned
    from crdiff.miniature import digits, scenes

    seen = []
    monkeypatch.setattr(pruned, "_from_folder", lambda folder: seen.append(folder) or torch.nn.Module())
    monkeypatch.setattr(scenes, "PIPELINE_DIR", tmp_path)  # present whether or not its weights ship yet
    pruned.meta_denoiser("digits")
    pruned.meta_denoiser("scenes")
    assert seen == [digits.PIPELINE_DIR, tmp_path]
