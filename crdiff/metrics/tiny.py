"""Tiny stand-ins of the scorers' real classes (random weights, offline) for tests and the smoke job."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from torch import nn

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


def tiny_open_clip(seed: int = 0):
    """(model, preprocess, tokenizer) of a registered tiny open_clip architecture 'crdiff-tiny-clip'."""
    import open_clip

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crdiff-tiny-clip.json"
        path.write_text(json.dumps(TINY_CLIP))
        open_clip.add_model_config(path)
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms("crdiff-tiny-clip", pretrained=None)
    return model, preprocess, open_clip.get_tokenizer("crdiff-tiny-clip")


def tiny_pickscore(seed: int = 0):
    """(CLIPModel, CLIPProcessor) of the PickScore classes, tiny, with the real CLIP tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from crdiff.tiny import clip_tokenizer_files

    torch.manual_seed(seed)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    vision = {**text, "image_size": 32, "patch_size": 8}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    with tempfile.TemporaryDirectory() as tmp:
        clip_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=images, tokenizer=tokenizer)


class TinyFeatures(nn.Module):
    """A small seeded conv net as an FID/KID feature extractor: uint8 or [0,1] images -> 64 features."""

    num_features = 64

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 5, stride=4), nn.GELU(), nn.Conv2d(16, 64, 3, stride=2), nn.GELU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        return self.net(x).double()


def tiny_aesthetic(seed: int = 0):
    """(AestheticPredictorV2_5Model, processor) of the real v2.5 classes on a tiny SigLIP config."""
    from aesthetic_predictor_v2_5.siglip_v2_5 import AestheticPredictorV2_5Model, AestheticPredictorV2_5Processor
    from transformers import SiglipVisionConfig

    torch.manual_seed(seed)
    config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=32, patch_size=8)
    return AestheticPredictorV2_5Model(config), AestheticPredictorV2_5Processor(size={"height": 32, "width": 32})


def tiny_image_reward(seed: int = 0, image_size: int = 32):
    """(ImageRewardModel, BertTokenizer) on tiny BLIP configs with a small word-piece vocabulary."""
    from transformers import BertTokenizer

    from crdiff.metrics.image_reward import ImageRewardModel, configs

    torch.manual_seed(seed)
    words = ["a", "cat", "dog", "red", "bus", "picture", "number", "of", "the", "on", "in"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    med = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "max_position_embeddings": 64, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
    model = ImageRewardModel(*configs(med, image_size=image_size, vision_width=48, depth=2, heads=4, patch_size=8))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer.from_pretrained(tmp)
    return model, tokenizer
