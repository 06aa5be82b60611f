"""ImageReward on transformers' BLIP: the checkpoint conversion against timm's ViT (BLIP's ViT is timm's)."""

from functools import partial

import pytest
import timm
import torch
from PIL import Image
from torch import nn

from crdiff.metrics import MetricUnavailableError, build_metric
from crdiff.metrics.image_reward import MEAN, STD, ImageRewardModel, configs, convert_state_dict
from crdiff.metrics.tiny import tiny_image_reward
import hubcache


def blip_checkpoint(seed=0):
    """A state dict in ImageReward.pt's layout: BLIP ViT (= timm ViT), BLIP text encoder, MLP, extras."""
    torch.manual_seed(seed)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, num_classes=0, global_pool="",
        qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    for p in vit.parameters():  # not the init values: every tensor distinct
        p.data.normal_(0, 0.2)
    reference = tiny_image_reward(seed + 1)[0].eval()
    state = {f"blip.visual_encoder.{k}": v for k, v in vit.state_dict().items()}
    state |= {f"blip.text_encoder.{k}": v for k, v in reference.text.state_dict().items()}
    state |= {f"mlp.layers.{k}": v for k, v in reference.mlp.state_dict().items()}
    state |= {"blip.vision_proj.weight": torch.zeros(3, 3), "blip.text_encoder.embeddings.position_ids": torch.arange(4)}
    return vit, reference, state


def test_checkpoint_conversion_reproduces_blip():
    vit, reference, state = blip_checkpoint()
    model, tokenizer = tiny_image_reward(seed=5)
    model.eval()
    missing, unexpected = model.load_state_dict(convert_state_dict(state), strict=False)
    assert missing == [] and unexpected == []
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.vision(pixel_values=pixels).last_hidden_state, vit.forward_features(pixels),
                                   rtol=1e-5, atol=1e-5)
        tokens = tokenizer(["a red cat", "the dog on a bus"], padding="max_length", max_length=35, return_tensors="pt")
        image = vit.forward_features(pixels)
        cls = reference.text(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                             encoder_hidden_states=image,
                             encoder_attention_mask=torch.ones(image.shape[:-1], dtype=torch.long)).last_hidden_state[:, 0]
        want = (reference.mlp(cls).squeeze(-1) - MEAN) / STD
        torch.testing.assert_close(model(pixels, tokens.input_ids, tokens.attention_mask), want, rtol=1e-5, atol=1e-5)


def test_scorer_tokenizes_to_35_and_is_a_mean():
    metric = build_metric("image_reward", tiny=True)
    images = [Image.new("RGB", (72, 40), c) for c in ("red", "blue", "white")]
    prompts = ["a red cat", "a dog", "the bus"]
    per_image = metric.score(images, prompts)
    metric.update(images, prompts)
    assert metric.compute() == pytest.approx(float(per_image.double().mean()), rel=1e-9)
    assert metric.tokenizer(prompts, padding="max_length", max_length=35)["input_ids"][0].__len__() == 35


def test_real_configs_have_imagereward_shapes():
    med = {"vocab_size": 30524, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
           "num_attention_heads": 12, "max_position_embeddings": 512, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
    with torch.device("meta"):
        model = ImageRewardModel(*configs(med))
    n = sum(p.numel() for p in model.parameters())
    assert 440e6 < n < 480e6  # BLIP ViT-L (~303M) + BERT-base with cross-attention (~137M) + MLP


def test_missing_checkpoint_offline_names_the_prefetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    hubcache.use(monkeypatch, tmp_path / "hub")
    with pytest.raises(MetricUnavailableError, match="ImageReward v1.0 .*prefetch_weights.py"):
        build_metric("image_reward")
