"""The DiT path (SD3, FLUX): explicit early / middle / late groups and targets, POA equal to the two-copy
form, clean removal, and the runner on tiny SD3 / FLUX pipelines of the real classes."""

import pytest
import torch

import crdiff
from crdiff.experiment import methods
from crdiff.models import Resolution
from crdiff.pruning import target_modules
from crdiff.reference import pruned_copy, two_copy_forward

from test_run import compose_run

RATIOS = {"early": 0.4, "middle": 0.6, "late": 0.3}


def generate(pipe, height=64, width=48, steps=2):
    g = [torch.Generator().manual_seed(i) for i in range(2)]
    kwargs = {"max_sequence_length": 16} if "max_sequence_length" in pipe.__call__.__code__.co_varnames else {}
    return pipe(["a red cube", "a blue sphere"], height=height, width=width, num_inference_steps=steps,
                generator=g, output_type="pt", **kwargs).images


def transformer_inputs(pipe, batch=2, seed=0):
    """Transformer call arguments as the pipeline builds them (latents 64x48 px)."""
    g = torch.Generator().manual_seed(seed)
    t = pipe.transformer
    if type(t).__name__ == "FluxTransformer2DModel":
        text = 5  # hidden_states: the 12 packed 2x2 patches of an 8x6 latent
        return {"hidden_states": torch.randn(batch, 12, t.config.in_channels, generator=g),
                "encoder_hidden_states": torch.randn(batch, text, t.config.joint_attention_dim, generator=g),
                "pooled_projections": torch.randn(batch, t.config.pooled_projection_dim, generator=g),
                "timestep": torch.full((batch,), 0.5), "guidance": torch.full((batch,), 3.5),
                "img_ids": torch.randn(12, 3, generator=g), "txt_ids": torch.zeros(text, 3)}
    return {"hidden_states": torch.randn(batch, t.config.in_channels, 8, 6, generator=g),
            "encoder_hidden_states": torch.randn(batch, 7, t.config.joint_attention_dim, generator=g),
            "pooled_projections": torch.randn(batch, t.config.pooled_projection_dim, generator=g),
            "timestep": torch.full((batch,), 500.0)}


@pytest.fixture
def clean(tiny_pipes):
    yield tiny_pipes
    for kind in ("sd3", "flux"):
        methods.remove(tiny_pipes(kind))


def test_groups_are_thirds_of_the_blocks_and_targets_are_explicit(clean):
    # 6 joint blocks: 2 / 2 / 2, 12 targets each, but the last one is context_pre_only (no to_add_out,
    # no ff_context): it has 9
    sd3 = target_modules(clean("sd3").transformer)
    assert {g: len(m) for g, m in sd3.items()} == {"down": 24, "mid": 24, "up": 21}
    assert all(n.split(".")[1] in "01" for n in sd3["down"]) and all(n.split(".")[1] in "45" for n in sd3["up"])
    flux = target_modules(clean("flux").transformer)  # 2 double (12 each) then 4 single (5 each): 2 / 2 / 2 blocks
    assert {g: len(m) for g, m in flux.items()} == {"down": 24, "mid": 10, "up": 10}
    assert all(n.startswith("transformer_blocks.") for n in flux["down"])
    assert all(n.startswith("single_transformer_blocks.") for g in ("mid", "up") for n in flux[g])
    only_ff = target_modules(clean("flux").transformer, ["ff.net.0.proj", "ff.net.2"])
    assert sorted(only_ff["down"]) == [f"transformer_blocks.{i}.ff.net.{j}" for i in (0, 1) for j in ("0.proj", "2")]


def test_real_flux_config_prunes_every_block_linear_but_the_modulation():
    from crdiff.models import random_transformer

    flux = random_transformer("flux", meta=True)  # the FLUX.1-dev architecture: 19 double + 38 single blocks
    chosen = {n for mods in target_modules(flux).values() for n in mods}
    linears = {n for n, m in flux.named_modules() if isinstance(m, torch.nn.Linear) and "transformer_blocks." in n}
    assert linears - chosen == {n for n in linears if ".norm" in n}  # adaLN modulation only
    assert {g: len(m) for g, m in target_modules(flux).items()} == {"down": 19 * 12, "mid": 19 * 5, "up": 19 * 5}


@pytest.mark.parametrize("kind", ["sd3", "flux"])
@pytest.mark.parametrize("batched", [False, True])
def test_transformer_poa_equals_two_copy_form(clean, kind, batched):
    pipe = clean(kind)
    t = pipe.transformer
    inputs = transformer_inputs(pipe)
    with torch.no_grad():
        want = two_copy_forward(t, pruned_copy(t, crdiff.compute_masks(t, RATIOS)), 1.5)(**inputs).sample
        crdiff.apply_crdiff(pipe, RATIOS, k=1.5, batched=batched)
        got = t(**inputs).sample
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_pipeline_prunes_amplifies_and_removes_exactly(clean, kind):
    pipe = clean(kind)
    dense = generate(pipe)
    crdiff.apply_crdiff(pipe, RATIOS, k=2.0)
    amplified = generate(pipe)
    crdiff.remove_crdiff(pipe)
    assert torch.equal(generate(pipe), dense)
    assert not torch.equal(amplified, dense)
    # FLUX's pipeline keeps an (empty) diffusers hook registry of its own for cache contexts: no hook may remain
    assert not any(getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks
                   for m in pipe.transformer.modules())
    assert not any("forward" in m.__dict__ for m in pipe.transformer.modules() if m is not pipe.transformer)


def test_runner_on_tiny_flux_with_the_dit_pruning_config(tmp_path):
    from crdiff.experiment.run import execute

    run = compose_run("experiment=smoke", "model=tiny-flux", "pruning=dit", f"output_dir={tmp_path}",
                      "prompts.limit=2", "metrics=none", "sampler.steps=2", "resolutions.sets=[default]")
    assert run.pruning.ratios == {"down": 0.3, "mid": 0.3, "up": 0.3} and run.pruning.targets is None  # DIT_TARGETS
    table = execute(run)["table"]
    assert list(table.method) == ["dense", "crdiff"] and table.n_images.tolist() == [2, 2]


def test_unet_only_methods_refuse_a_dit_clearly(clean):
    run = compose_run("experiment=smoke", "model=tiny-sd3")
    with pytest.raises(ValueError, match="UNet"):
        methods.apply(clean("sd3"), run, "freeu", Resolution(64, 64))


def test_a_size_the_transformer_cannot_patch_is_one_clear_error():
    from crdiff.experiment.run import plan

    with pytest.raises(ValueError, match="multiples of 16"):
        plan(compose_run("experiment=smoke", "model=tiny-sd3", "resolutions.unseen=[40x72]"))
    assert compose_run("model=flux").resolutions.unseen == ["512x512", "400x560", "480x368"]
