"""BWP semantics against a straightforward implementation of docs/method.md §1 (concatenate + kthvalue)."""

import math

import pytest
import torch
from diffusers import UNet2DConditionModel

import crdiff
from crdiff._select import kth_smallest_abs, pack_bits, unpack_bits
from crdiff.pruning import plan_pruning

PREFIXES = {"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}
RATIO_TRIPLES = [(0.0, 0.0, 0.0), (0.3, 0.5, 0.7), (0.95, 0.1, 0.0), (0.5, 0.5, 0.5), (0.0, 0.95, 0.2)]


def reference_masks(unet, ratios):
    """docs/method.md §1 written out: concatenate a group's |w|, kthvalue, prune |w| <= threshold."""
    masks = {}
    for group, prefix in PREFIXES.items():
        layers = {
            n: m.weight.detach() for n, m in unet.named_modules()
            if type(m) in (torch.nn.Linear, torch.nn.Conv2d) and n.startswith(prefix)
            and ("attn" in n or "ff" in n) and "attn2" not in n
        }
        if ratios[group] == 0:
            masks.update({n: torch.ones_like(w, dtype=torch.bool) for n, w in layers.items()})
            continue
        flat = torch.cat([w.abs().flatten() for w in layers.values()])
        threshold = flat.kthvalue(max(1, int(flat.numel() * ratios[group]))).values
        masks.update({n: w.abs() > threshold for n, w in layers.items()})
    return masks


def unseen_unet(seed: int, dtype=torch.float32, quantize: bool = False):
    """UNets the product was not written against: other depths/widths, optional heavy ties in |w|."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, norm_num_groups=4, layers_per_block=1, block_out_channels=(8, 16, 24, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12, attention_head_dim=4, transformer_layers_per_block=(1, 1, 2, 3),
        use_linear_projection=bool(seed % 2),
    ).to(dtype)
    if quantize:  # few distinct magnitudes: thresholds fall inside runs of ties
        with torch.no_grad():
            for p in unet.parameters():
                p.copy_((p * 20).round() / 20)
    return unet


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_kth_smallest_abs_equals_kthvalue(dtype):
    g = torch.Generator().manual_seed(1)
    parts = [torch.randn(n, generator=g).to(dtype) for n in (1, 17, 300, 4096)]
    parts.append(torch.zeros(50, dtype=dtype))
    parts.append((torch.randn(100, generator=g) * 4).round().to(dtype))  # ties
    flat = torch.cat([p.abs() for p in parts])
    for k in (1, 2, 50, 51, 777, flat.numel() // 2, flat.numel() - 1, flat.numel()):
        got = kth_smallest_abs(parts, k)
        assert got.dtype == dtype
        assert torch.equal(got, flat.kthvalue(k).values), k


def test_kth_smallest_rejects_out_of_range_k():
    with pytest.raises(ValueError, match="outside"):
        kth_smallest_abs([torch.ones(3)], 4)


@pytest.mark.parametrize("kind", ["sd15", "sd21", "sdxl"])
@pytest.mark.parametrize("ratios", RATIO_TRIPLES)
def test_masks_equal_reference_on_tiny_pipelines(tiny_pipes, kind, ratios):
    unet = tiny_pipes(kind).unet
    ratios = dict(zip(PREFIXES, ratios))
    got, want = crdiff.compute_masks(unet, ratios), reference_masks(unet, ratios)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("seed,dtype,quantize", [
    (0, torch.float32, False), (1, torch.float16, False), (2, torch.bfloat16, True), (3, torch.float32, True),
])
def test_masks_equal_reference_on_unseen_unets(seed, dtype, quantize):
    unet = unseen_unet(seed, dtype, quantize)
    for ratios in RATIO_TRIPLES[1:]:
        ratios = dict(zip(PREFIXES, ratios))
        got, want = crdiff.compute_masks(unet, ratios), reference_masks(unet, ratios)
        assert got.keys() == want.keys()
        for name in want:
            assert torch.equal(got[name], want[name]), (ratios, name)
        # ties at the threshold are pruned too: the pruned count may exceed the nominal one
        for group, prefix in PREFIXES.items():
            pruned = sum(int((~m).sum()) for n, m in got.items() if n.startswith(prefix))
            numel = sum(m.numel() for n, m in got.items() if n.startswith(prefix))
            assert pruned >= (max(1, int(numel * ratios[group])) if ratios[group] else 0)


def test_targets_are_exactly_attn1_and_ff_linears(tiny_pipes):
    unet = tiny_pipes("sdxl").unet
    targets = crdiff.target_modules(unet)
    assert {g: len(v) for g, v in targets.items()} == {"down": 36, "mid": 12, "up": 54}
    suffixes = {"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2"}
    for modules in targets.values():
        for name in modules:
            assert any(name.endswith(s) for s in suffixes) and "attn2" not in name, name


def test_layerwise_thresholds_are_per_layer(tiny_pipes):
    unet = tiny_pipes("sd15").unet
    ratios = {"down": 0.4, "mid": 0.0, "up": 0.8}
    masks = crdiff.compute_masks(unet, ratios, criterion="magnitude_layerwise")
    for name, keep in masks.items():
        w = unet.get_submodule(name).weight.detach().abs().flatten()
        ratio = ratios[next(g for g, p in PREFIXES.items() if name.startswith(p))]
        want = torch.ones_like(keep) if ratio == 0 else (w > w.kthvalue(max(1, int(w.numel() * ratio))).values).view_as(keep)
        assert torch.equal(keep, want), name


def test_random_criterion_prunes_exactly_and_is_seeded(tiny_pipes):
    unet = tiny_pipes("sdxl").unet
    ratios = {"down": 0.37, "mid": 0.5, "up": 0.9}
    masks = crdiff.compute_masks(unet, ratios, criterion="random", seed=3)
    for group, prefix in PREFIXES.items():
        group_masks = [m for n, m in masks.items() if n.startswith(prefix)]
        numel = sum(m.numel() for m in group_masks)
        assert sum(int((~m).sum()) for m in group_masks) == int(numel * ratios[group])
    again = crdiff.compute_masks(unet, ratios, criterion="random", seed=3)
    other = crdiff.compute_masks(unet, ratios, criterion="random", seed=4)
    assert all(torch.equal(masks[n], again[n]) for n in masks)
    assert not all(torch.equal(masks[n], other[n]) for n in masks)


def test_pack_bits_round_trip():
    g = torch.Generator().manual_seed(0)
    for shape in [(1,), (7,), (8,), (3, 5), (4, 4, 3, 3)]:
        mask = torch.rand(shape, generator=g) > 0.5
        assert torch.equal(unpack_bits(pack_bits(mask), mask.shape), mask)
        assert pack_bits(mask).numel() == math.ceil(mask.numel() / 8)


def test_sparsity_report_counts(tiny_pipes):
    unet = tiny_pipes("sd15").unet
    ratios = {"down": 0.3, "mid": 0.5, "up": 0.0}
    report = crdiff.sparsity_report(unet, plan_pruning(unet, ratios))
    masks = reference_masks(unet, ratios)
    groups = report[report.layer == "(group)"].set_index("group")
    for group, prefix in PREFIXES.items():
        pruned = sum(int((~m).sum()) for n, m in masks.items() if n.startswith(prefix))
        assert groups.loc[group, "pruned"] == pruned
    layers = report[report.layer != "(group)"].set_index("layer")
    assert set(layers.index) == set(masks)
    assert (layers.loc[[n for n in masks if n.startswith("up_blocks")], "pruned"] == 0).all()


@pytest.mark.parametrize("ratios,match", [
    ({"down": 1.0, "mid": 0.3, "up": 0.3}, r"'down' is 1.0; valid range is \[0, 1\)"),
    ({"down": 0.3, "mid": -0.1, "up": 0.3}, r"'mid' is -0.1; valid range is \[0, 1\)"),
    ({"down": 0.3, "mid": 0.3, "up": float("nan")}, r"'up' is nan; valid range is \[0, 1\)"),
    ({"down": 0.3, "mid": 0.3, "up": "0.3"}, r"'up' is '0.3'; valid range"),
    ({"down": 0.3, "mid": 0.3}, r"missing \['up'\]"),
    ({"down": 0.3, "mid": 0.3, "up": 0.3, "left": 0.1}, r"unknown \['left'\]"),
])
def test_bad_ratios_raise(tiny_pipes, ratios, match):
    with pytest.raises(ValueError, match=match):
        crdiff.compute_masks(tiny_pipes("sd15").unet, ratios)


def test_unknown_criterion_raises(tiny_pipes):
    with pytest.raises(ValueError, match=r"unknown criterion 'l1'; valid choices: \['magnitude'"):
        crdiff.compute_masks(tiny_pipes("sd15").unet, {"down": 0.3, "mid": 0.3, "up": 0.3}, criterion="l1")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_magnitude_index_gives_the_same_thresholds(dtype):
    from crdiff.pruning import MagnitudeIndex

    unet = unseen_unet(4, dtype)
    index = MagnitudeIndex(unet)
    for ratios in RATIO_TRIPLES[1:]:
        ratios = dict(zip(PREFIXES, ratios))
        plain, fast = plan_pruning(unet, ratios), plan_pruning(unet, ratios, index=index)
        assert plain.thresholds.keys() == fast.thresholds.keys()
        assert all(torch.equal(plain.thresholds[n], fast.thresholds[n]) for n in plain.thresholds)
