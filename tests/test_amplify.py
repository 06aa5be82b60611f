"""POA: equals REF's two-copy form, k = 0 / remove are exactly dense, linear in k, dtype kept."""

import copy

import pytest
import torch

import crdiff
from crdiff.reference import pruned_copy, two_copy_forward

from conftest import unet_inputs

RATIOS = {"down": 0.4, "mid": 0.6, "up": 0.3}


def generate(pipe, height=48, width=80, seed=0, steps=3):
    g = torch.Generator().manual_seed(seed)
    return pipe(["a red cube", "a blue sphere"], height=height, width=width, num_inference_steps=steps,
                guidance_scale=7.5, generator=g, output_type="pt").images


def snapshot(module):
    return {n: p.clone() for n, p in module.state_dict().items()}


@pytest.fixture
def clean(tiny_pipes):
    """Yield the pipeline getter; afterwards every tiny pipeline must be back to plain dense."""
    yield tiny_pipes
    for kind in ("sd15", "sd21", "sdxl"):
        crdiff.remove_crdiff(tiny_pipes(kind))


@pytest.mark.parametrize("kind", ["sd15", "sd21", "sdxl"])
@pytest.mark.parametrize("batched", [False, True])
def test_unet_poa_equals_two_copy_form(clean, kind, batched):
    unet = clean(kind).unet
    args, kwargs = unet_inputs(unet, 40, 72)
    masks = crdiff.compute_masks(unet, RATIOS)
    with torch.no_grad():
        want = two_copy_forward(unet, pruned_copy(unet, masks), 1.5)(*args, **kwargs).sample
        crdiff.apply_crdiff(unet, RATIOS, k=1.5, batched=batched)
        got = unet(*args, **kwargs).sample
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,size", [("sd15", (48, 80)), ("sdxl", (80, 48)), ("sd21", (56, 40))])
def test_pipeline_poa_equals_two_copy_form(clean, kind, size):
    pipe = clean(kind)
    pruned = pruned_copy(pipe.unet, crdiff.compute_masks(pipe.unet, RATIOS))
    pipe.unet.forward = two_copy_forward(pipe.unet, pruned, 2.0)
    try:
        want = generate(pipe, *size)
    finally:
        del pipe.unet.forward
    crdiff.apply_crdiff(pipe, RATIOS, k=2.0)
    got = generate(pipe, *size)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_k0_and_remove_are_bit_exact_dense(clean, kind):
    pipe = clean(kind)
    weights, dense = snapshot(pipe.unet), generate(pipe)
    attrs, modules = set(pipe.unet.__dict__), [n for n, _ in pipe.unet.named_modules()]
    crdiff.apply_crdiff(pipe, RATIOS, k=0.0)
    assert torch.equal(generate(pipe), dense)
    crdiff.crdiff_config(pipe).k = 1.5
    assert not torch.equal(generate(pipe), dense)
    crdiff.remove_crdiff(pipe)
    assert torch.equal(generate(pipe), dense)
    assert set(pipe.unet.__dict__) == attrs and [n for n, _ in pipe.unet.named_modules()] == modules
    assert not any(hasattr(m, "_diffusers_hook") or "forward" in m.__dict__ for m in pipe.unet.modules())
    after = pipe.unet.state_dict()
    assert all(torch.equal(after[n], w) for n, w in weights.items())


def test_k1_is_bwp_alone(clean):
    unet = clean("sdxl").unet
    args, kwargs = unet_inputs(unet)
    with torch.no_grad():
        want = pruned_copy(unet, crdiff.compute_masks(unet, RATIOS))(*args, **kwargs).sample
        crdiff.apply_crdiff(unet, RATIOS, k=1.0)
        got = unet(*args, **kwargs).sample
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_attn2_and_non_targets_run_dense(clean):
    """Pruned branch with every ratio ~0.99: modules outside the selection keep their dense output."""
    unet = clean("sd15").unet
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: outputs.setdefault(n, []).append(o.detach().clone()))
             for n, m in unet.named_modules() if "attn2.to_k" in n or n.endswith("proj_in")]
    args, kwargs = unet_inputs(unet)
    try:
        with torch.no_grad():
            unet(*args, **kwargs)
            crdiff.apply_crdiff(unet, {"down": 0.99, "mid": 0.99, "up": 0.99}, k=1.0)
            unet(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    assert outputs and all(len(v) == 2 for v in outputs.values())  # every hooked module ran in both passes
    # attn2.to_k sees the text embeddings only, so its output must be identical in both passes;
    # the first proj_in sees only untouched layers before it.
    for name, (dense, pruned) in outputs.items():
        if "attn2.to_k" in name or name == "down_blocks.0.attentions.0.proj_in":
            assert torch.equal(dense, pruned), name
    assert not any("attn2" in n or "proj_in" in n for n in crdiff.compute_masks(unet, RATIOS))


def test_output_is_linear_in_k(clean):
    unet = clean("sdxl").unet
    args, kwargs = unet_inputs(unet, 64, 40)
    outs = {}
    with torch.no_grad():
        dense = unet(*args, **kwargs).sample
        crdiff.apply_crdiff(unet, RATIOS, k=1.0)
        pruned = unet(*args, **kwargs).sample
        for k in (-0.5, 0.5, 1.5, 3.0):
            crdiff.crdiff_config(unet).k = k
            outs[k] = unet(*args, **kwargs).sample
    for k, out in outs.items():
        torch.testing.assert_close(out, (1 - k) * dense + k * pruned, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_is_kept(clean, dtype):
    unet = copy.deepcopy(clean("sd15").unet).to(dtype)
    args, kwargs = unet_inputs(unet)
    masks = crdiff.compute_masks(unet, RATIOS)
    with torch.no_grad():
        want = two_copy_forward(unet, pruned_copy(unet, masks), 1.5)(*args, **kwargs).sample
        crdiff.apply_crdiff(unet, RATIOS, k=1.5)
        got = unet(*args, **kwargs).sample
    assert got.dtype == dtype
    tol = 2e-2 if dtype == torch.float16 else 1e-1
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


def test_tuple_output_is_poa(clean):
    """return_dict=False: the tuple's sample is REF's two-copy POA, bit for bit (sequential branches)."""
    unet = clean("sdxl").unet
    args, kwargs = unet_inputs(unet)
    pruned = pruned_copy(unet, crdiff.compute_masks(unet, RATIOS))
    with torch.no_grad():
        dense = unet(*args, **kwargs, return_dict=False)[0]
        want = dense.lerp(pruned(*args, **kwargs, return_dict=False)[0], 1.5)
        crdiff.apply_crdiff(unet, RATIOS, k=1.5, batched=False)
        got = unet(*args, **kwargs, return_dict=False)
    assert isinstance(got, tuple) and len(got) == 1 and torch.equal(got[0], want)
    assert not torch.equal(got[0], dense)


@pytest.mark.parametrize("k", [float("inf"), float("nan"), "1.5", True])
def test_bad_k_raises(clean, k):
    with pytest.raises(ValueError, match="valid range is any finite real number"):
        crdiff.apply_crdiff(clean("sd15"), RATIOS, k=k)
    assert not crdiff.is_crdiff(clean("sd15"))


def test_apply_twice_raises_and_remove_is_idempotent(clean):
    pipe = clean("sd15")
    crdiff.apply_crdiff(pipe, RATIOS)
    with pytest.raises(ValueError, match="already applied"):
        crdiff.apply_crdiff(pipe, RATIOS)
    crdiff.remove_crdiff(pipe)
    crdiff.remove_crdiff(pipe)
    assert not crdiff.is_crdiff(pipe)
