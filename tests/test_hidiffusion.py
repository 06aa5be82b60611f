"""HiDiffusion from its PyPI package on a full-size SD1.5-architecture UNet (random weights, in memory):
it changes the images, and removal restores dense bit for bit, including what remove_hidiffusion leaves."""

import pytest
import torch

from crdiff.experiment import methods
from crdiff.models import Resolution, random_unet

from test_run import compose_run


def sd15_architecture():
    """A StableDiffusionPipeline around the real SD1.5 UNet (random weights), tiny text encoder (768-d) and VAE."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from crdiff import tiny

    torch.manual_seed(0)
    return StableDiffusionPipeline(
        vae=tiny._vae(), text_encoder=tiny._text_encoder(hidden_size=768, num_attention_heads=12),
        tokenizer=tiny._tokenizer(), unet=random_unet("sd15"),
        scheduler=PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                skip_prk_steps=True),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def draw(pipe):
    return pipe("a lighthouse at dusk", height=256, width=256, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0), output_type="pt").images


@pytest.mark.slow
def test_hidiffusion_changes_the_images_and_removes_to_dense_bit_for_bit():
    pipe, run = sd15_architecture(), compose_run("experiment=smoke", "model=sd15")
    attributes = {name: set(vars(m)) for name, m in pipe.unet.named_modules()}
    upsamplers, dense = pipe.unet.num_upsamplers, draw(pipe)
    methods.apply(pipe, run, "hidiffusion", Resolution(256, 256))
    changed = draw(pipe)
    assert pipe.unet.num_upsamplers == upsamplers + 12 and pipe.name_or_path is None  # its id only during apply
    methods.remove(pipe)
    assert not torch.equal(changed, dense) and torch.equal(draw(pipe), dense)
    assert pipe.unet.num_upsamplers == upsamplers and not hasattr(pipe, "info")
    assert {name: set(vars(m)) for name, m in pipe.unet.named_modules()} == attributes
    methods.apply(pipe, run, "hidiffusion", Resolution(256, 256))  # again: the same patch, not 12 more upsamplers
    try:
        assert pipe.unet.num_upsamplers == upsamplers + 12 and torch.equal(draw(pipe), changed)
    finally:
        methods.remove(pipe)


@pytest.mark.parametrize("model", ["sd21", "tiny-sd15", "tiny-sdxl", "digits"])
def test_hidiffusion_refuses_models_it_does_not_support(model):
    from crdiff.experiment.run import plan

    with pytest.raises(ValueError, match=f"hidiffusion' supports models \\['sd15', 'sdxl'\\]; '{model}'"):
        plan(compose_run("experiment=smoke", f"model={model}", "methods=[dense,hidiffusion]", "prompts.limit=1"))


def test_hidiffusion_refuses_a_changed_pipeline(tiny_pipes):
    """Combinations are refused before hidiffusion looks at the UNet (a tiny one is enough to show it)."""
    run, pipe = compose_run("experiment=smoke", "model=sd15"), tiny_pipes("sdxl")
    methods.apply(pipe, run, "freeu", Resolution(64, 64))
    try:
        with pytest.raises(ValueError, match="changed: FreeU"):
            methods.apply(pipe, run, "hidiffusion", Resolution(64, 64))
    finally:
        methods.remove(pipe)
