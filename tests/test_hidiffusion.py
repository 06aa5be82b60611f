"""HiDiffusion from its PyPI package (crdiff/experiment/methods/hidiffusion.py): on a full-size SD1.5-architecture
UNet (random weights, in memory) it changes the images and removal restores dense bit for bit, including what
remove_hidiffusion leaves; every model it does not support and every combination is refused before any work."""

import pytest
import torch

from crdiff.experiment import methods
from crdiff.experiment.run import plan
from crdiff import tiny
from crdiff.models import Resolution

from test_run import compose_run


def draw(pipe):
    return pipe("a lighthouse at dusk", height=256, width=256, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0), output_type="pt").images


def state(pipe):
    """Every module's class and attribute values, the pipeline's attributes and config."""
    unet = {name: (type(m), dict(vars(m))) for name, m in pipe.unet.named_modules()}
    return unet, dict(vars(pipe)), dict(pipe.config)


@pytest.fixture(scope="module")
def sd15_pipe():
    """The real SD1.5 UNet architecture (random weights) in a pipeline with a tiny VAE and text encoder."""
    return tiny.with_real_unet("sd15")


@pytest.mark.slow
def test_baselines_runs_hidiffusion_on_the_sd15_architecture(sd15_pipe, monkeypatch, tmp_path):
    """`python -m crdiff.run experiment=baselines model=sd15` with the model stood in by the full-size
    architecture (HiDiffusion refuses the tiny ones): one image, its row and its cost, dense after the run."""
    from crdiff.experiment.config import ModelConfig
    from crdiff.experiment.run import execute

    monkeypatch.setattr(ModelConfig, "load", lambda self, device="cpu": sd15_pipe)
    run = compose_run("experiment=baselines", "model=sd15", "methods=[hidiffusion]", "prompts=builtin",
                      "prompts.limit=1", "metrics=none", "sampler.steps=2", "resolutions.sets=[unseen]",
                      "resolutions.unseen=[256x256]", "device=cpu", f"output_dir={tmp_path}")
    result = execute(run)
    row = result["table"].set_index("method").loc["hidiffusion"]
    assert result["generated"] == 1 and result["not_applicable"] == {} and row.n_images == 1
    assert row.denoiser_calls == 2 * 3  # as dense: PNDM's 2 steps are 3 UNet calls, each with 2 guidance halves
    assert row.constant_images == 0 and not hasattr(sd15_pipe, "info")  # removed after the run


@pytest.mark.slow
def test_hidiffusion_changes_the_images_and_removes_to_dense_bit_for_bit(sd15_pipe):
    pipe, run = sd15_pipe, compose_run("experiment=smoke", "model=sd15")
    dense = draw(pipe)
    before, upsamplers = state(pipe), pipe.unet.num_upsamplers  # after a call: it sets pipe._num_timesteps etc.
    methods.apply(pipe, run, "hidiffusion", Resolution(256, 256))
    assert pipe.unet.num_upsamplers == upsamplers + 12 and pipe.name_or_path is None  # its id only during apply
    changed = draw(pipe)
    methods.remove(pipe)
    assert not torch.equal(changed, dense) and torch.equal(draw(pipe), dense)
    assert state(pipe) == before and pipe.unet.num_upsamplers == upsamplers and not hasattr(pipe, "info")
    methods.apply(pipe, run, "hidiffusion", Resolution(256, 256))  # again: the same patch, not 12 more upsamplers
    assert pipe.unet.num_upsamplers == upsamplers + 12
    assert torch.equal(draw(pipe), changed)  # window shifts reseeded per call: not what ran before
    methods.remove(pipe)
    assert state(pipe) == before  # every class and attribute value as dense had them (the image above: equal)


def test_hidiffusion_patches_the_sdxl_architecture_and_removes_exactly(tiny_pipes):
    """SDXL's patch on its real UNet architecture, on the meta device (no weights, no forward: the images
    are scripts/gpu_check.sh's step 6): blocks patched, then every class and attribute back."""
    from crdiff.models import random_unet

    tiny_sdxl = tiny_pipes("sdxl")
    pipe = type(tiny_sdxl)(**{**tiny_sdxl.components, "unet": random_unet("sdxl", meta=True)})
    before, upsamplers = state(pipe), pipe.unet.num_upsamplers
    methods.apply(pipe, compose_run("experiment=smoke", "model=sdxl"), "hidiffusion", Resolution(1024, 1024))
    patched = [name for name, m in pipe.unet.named_modules() if hasattr(m, "_parent")]
    assert len(patched) == 14 and pipe.unet.num_upsamplers == upsamplers + 12  # RAU-Net 4, MSW-MSA 10 blocks
    assert {"down_blocks.1", "up_blocks.0.upsamplers.0.conv", "up_blocks.1.attentions.2.transformer_blocks.1"} <= set(patched)
    assert all(m.model == "sdxl" for m in pipe.unet.modules())
    methods.remove(pipe)
    assert state(pipe) == before


@pytest.mark.parametrize("model", ["sd21", "tiny-sd15", "tiny-sdxl", "digits"])
def test_hidiffusion_refuses_models_it_does_not_support_at_plan_time(model):
    with pytest.raises(ValueError, match=rf"method 'hidiffusion' supports models \['sd15', 'sdxl'\]; '{model}' is not"):
        plan(compose_run("experiment=smoke", f"model={model}", "methods=[dense,hidiffusion]", "prompts.limit=1"))


def test_baselines_plans_hidiffusion_where_supported_and_says_why_not_elsewhere(tmp_path):
    """experiment=baselines lists it in methods_if_supported: planned beside CR-Diff and the controls on sdxl,
    left out with its reason on sd21 (`python -m crdiff.run task=plan experiment=baselines`, as documented)."""
    from crdiff.experiment.planner import rows_of
    from test_run import cli

    common = ("experiment=baselines", "prompts=builtin", "prompts.limit=1", "metrics=none", f"output_dir={tmp_path}")
    rows, notes = rows_of(compose_run(*common, "model=sdxl"))
    assert {"crdiff", "hidiffusion", "dense_steps2x", "dense_cfg5", "dense_sizecond"} <= {r.method for r in rows}
    assert not notes
    done = cli("task=plan", *common, "model=sd21")
    assert done.returncode == 0, done.stderr
    planned = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("sd21 ")}
    assert "crdiff" in planned and planned.isdisjoint({"hidiffusion", "dense_sizecond"})
    assert "note: hidiffusion: not applicable to sd21, left out (methods_if_supported): it supports models" in done.stdout
    assert "note: dense_sizecond: not applicable to sd21" in done.stdout


def test_hidiffusion_refuses_another_architecture_and_a_changed_pipeline(tiny_pipes):
    """Before hidiffusion touches the UNet (a tiny one is enough to show it): a UNet that is not the run's
    model's architecture, and a pipeline another method changed (HiDiffusion is an alternative)."""
    pipe = tiny_pipes("sd15")
    upsamplers = pipe.unet.num_upsamplers
    with pytest.raises(ValueError, match=r"this UNet is not the sd15 architecture it patches \(no module "):
        methods.apply(pipe, compose_run("experiment=smoke", "model=sd15"), "hidiffusion", Resolution(64, 64))
    assert not hasattr(pipe, "info") and pipe.unet.num_upsamplers == upsamplers
    methods.apply(pipe, compose_run("experiment=smoke", "model=tiny-sd15"), "freeu", Resolution(64, 64))
    try:
        with pytest.raises(ValueError, match=r"hidiffusion draws with the dense pipeline, but this one is changed: "
                                             r"FreeU"):
            methods.apply(pipe, compose_run("experiment=smoke", "model=sd15"), "hidiffusion", Resolution(64, 64))
    finally:
        methods.remove(pipe)


def test_hidiffusion_costs_one_pass_per_step_and_keys_its_package():
    method = methods.get(compose_run("experiment=smoke", "model=sd15", "sampler.steps=30"), "hidiffusion")
    assert method.passes(Resolution(768, 768)) == 30 and method.cost_class() == "dense"
    assert method.settings() == {"hidiffusion": "0.1.10", "raunet": True, "window_attn": True, "shift_seed": 0}
