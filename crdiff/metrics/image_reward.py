"""ImageReward v1.0 (Xu et al. 2023) on transformers' BLIP classes.

The `image-reward` package pins timm==0.6.13, which cannot live beside open_clip (timm>=1.0.17), and
its BLIP code imports transformers internals removed in v5. The model is small enough to rebuild:
BLIP ViT-L/16 image encoder -> BERT text encoder cross-attending to the image tokens -> [CLS] ->
5-layer MLP -> (r - mean) / std. The official checkpoint (THUDM/ImageReward, `ImageReward.pt`,
BLIP's original parameter names) is converted once at load time.
"""

from __future__ import annotations

import json
import re

import torch
from PIL import Image
from torch import nn

from crdiff.metrics.base import MeanScore, unavailable
from crdiff.weights import HubFiles

REPO = "THUDM/ImageReward"
BERT = "google-bert/bert-base-uncased"  # ImageReward's tokenizer
MEAN, STD = 0.16717362830052426, 1.0333394966054072  # the reward normalisation of ImageReward v1.0
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class ImageRewardModel(nn.Module):
    """reward(image, prompt): BLIP text encoder over the prompt, cross-attending to the ViT's tokens."""

    def __init__(self, vision_config, text_config) -> None:
        super().__init__()
        from transformers.models.blip.modeling_blip import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        width = text_config.hidden_size
        # ImageReward's MLP: linear layers with dropout between, no activations (as published)
        self.mlp = nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                 nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        image = self.vision(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image,
                         encoder_attention_mask=image_mask).last_hidden_state[:, 0].float()
        return (self.mlp(text).squeeze(-1) - MEAN) / STD


VISION_RENAMES = [  # BLIP / timm ViT names -> transformers' BlipVisionModel names
    (r"^cls_token$", "embeddings.class_embedding"), (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."), (r"^blocks\.", "encoder.layers."),
    (r"\.norm1\.", ".layer_norm1."), (r"\.norm2\.", ".layer_norm2."), (r"\.attn\.qkv\.", ".self_attn.qkv."),
    (r"\.attn\.proj\.", ".self_attn.projection."), (r"^norm\.", "post_layernorm."),
]


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ImageReward.pt (keys blip.visual_encoder.*, blip.text_encoder.*, mlp.layers.*) -> this model's keys.

    BLIP's text encoder is the module transformers' BlipTextModel was ported from: same names.
    """
    out = {}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            name = key.removeprefix("blip.visual_encoder.")
            for pattern, repl in VISION_RENAMES:
                name = re.sub(pattern, repl, name)
            out[f"vision.{name}"] = value
        elif key.startswith("blip.text_encoder.") and not key.endswith("position_ids"):
            out[f"text.{key.removeprefix('blip.text_encoder.')}"] = value
        elif key.startswith("mlp.layers."):
            out[f"mlp.{key.removeprefix('mlp.layers.')}"] = value
    return out


def configs(med_config: dict, image_size: int = 224, vision_width: int = 1024, depth: int = 24, heads: int = 16,
            patch_size: int = 16):
    """transformers configs of BLIP ViT-L/16 (eps 1e-6, as BLIP's ViT) and the med (BERT) text encoder."""
    from transformers import BlipTextConfig, BlipVisionConfig

    vision = BlipVisionConfig(hidden_size=vision_width, intermediate_size=4 * vision_width, num_hidden_layers=depth,
                              num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
                              layer_norm_eps=1e-6, hidden_act="gelu")
    text = BlipTextConfig(
        vocab_size=med_config["vocab_size"], hidden_size=med_config["hidden_size"],
        intermediate_size=med_config["intermediate_size"], num_hidden_layers=med_config["num_hidden_layers"],
        num_attention_heads=med_config["num_attention_heads"],
        max_position_embeddings=med_config["max_position_embeddings"], layer_norm_eps=med_config["layer_norm_eps"],
        hidden_act=med_config["hidden_act"], encoder_hidden_size=vision_width,
        pad_token_id=med_config.get("pad_token_id", 0), bos_token_id=None, sep_token_id=None,
    )
    return vision, text


class ImageReward(MeanScore):
    """Mean ImageReward v1.0 (the paper's tables and the ratio search's objective)."""

    name = "image_reward"

    def __init__(self, model: ImageRewardModel | None = None, tokenizer=None, image_size: int = 224,
                 device: str = "cpu") -> None:
        super().__init__()
        if model is None:
            model, tokenizer = load_image_reward()
        self.model, self.tokenizer, self.device = model.eval().to(device), tokenizer, device
        self.image_size = image_size

    @classmethod
    def needs(cls, **_) -> list:
        return [HubFiles("metric image_reward: checkpoint", REPO, (("ImageReward.pt",), ("med_config.json",))),
                HubFiles("metric image_reward: BERT tokenizer", BERT, (("vocab.txt",), ("tokenizer_config.json",)))]

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """ImageReward's preprocessing: bicubic resize of the short side, centre crop, CLIP normalisation."""
        from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

        transform = Compose([Resize(self.image_size, interpolation=InterpolationMode.BICUBIC),
                             CenterCrop(self.image_size), ToTensor(), Normalize(CLIP_MEAN, CLIP_STD)])
        return torch.stack([transform(im.convert("RGB")) for im in images])

    def score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        return self.model(self.pixels(images).to(self.device), tokens["input_ids"].to(self.device),
                          tokens["attention_mask"].to(self.device))


def load_image_reward() -> tuple[ImageRewardModel, object]:
    """Download (or read from the cache) ImageReward v1.0 and BERT's tokenizer; convert the checkpoint."""
    from huggingface_hub import hf_hub_download
    from transformers import BertTokenizer

    try:
        checkpoint = hf_hub_download(REPO, "ImageReward.pt")
        med_config = json.loads(open(hf_hub_download(REPO, "med_config.json")).read())
        tokenizer = BertTokenizer.from_pretrained(BERT)
    except Exception as err:  # noqa: BLE001 - any missing file means the same fix
        raise unavailable(f"ImageReward v1.0 ({REPO})", err) from None
    model = ImageRewardModel(*configs(med_config))
    missing, _ = model.load_state_dict(convert_state_dict(torch.load(checkpoint, map_location="cpu")), strict=False)
    if missing:
        raise RuntimeError(f"ImageReward checkpoint lacks {len(missing)} parameters, e.g. {missing[:3]}")
    return model, tokenizer
