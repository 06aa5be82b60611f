"""Text-image agreement: CLIP score (open_clip, raw cosine as in the paper) and PickScore v1."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from crdiff.metrics.base import MeanScore, unavailable
from crdiff.weights import HubFiles, LocalFiles, UrlFile, torch_hub

SIGLIP = "google/siglip-so400m-patch14-384"  # aesthetic_predictor_v2_5's default encoder


class CLIPScore(MeanScore):
    """cos(image embedding, text embedding), not clamped and not x100 (paper: ~0.2-0.33)."""

    name = "clip"

    def __init__(self, model=None, preprocess=None, tokenizer=None, arch: str = "ViT-L-14",
                 pretrained: str | None = "openai", device: str = "cpu") -> None:
        super().__init__()
        if model is None:
            import open_clip

            try:
                model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device,
                                                                             **trained_activation(arch, pretrained))
            except Exception as err:  # noqa: BLE001 - any download failure means the same fix
                raise unavailable(f"open_clip {arch} ({pretrained})", err) from None
            tokenizer = open_clip.get_tokenizer(arch)
        self.model, self.preprocess, self.tokenizer = model.eval().to(device), preprocess, tokenizer
        self.device = device

    @classmethod
    def needs(cls, arch: str = "ViT-L-14", pretrained: str | None = "openai", **_) -> list:
        """What open_clip's own pretrained table points `arch` / `pretrained` at: a hub file (preferred
        by open_clip when it has one, the safetensors copy first) or a URL into ~/.cache/clip."""
        import open_clip

        what = f"metric clip: open_clip {arch} ({pretrained})"
        if pretrained is None:
            return []
        if Path(pretrained).is_file():
            return [LocalFiles(what, (Path(pretrained),), "metrics.clip_pretrained=<an existing checkpoint file>")]
        cfg = open_clip.get_pretrained_cfg(arch, pretrained)
        if not cfg:
            raise ValueError(f"open_clip has no pretrained tag {pretrained!r} for {arch!r}; valid choices: "
                             f"{open_clip.list_pretrained_tags_by_model(arch)}")
        if cfg.get("hf_hub"):
            repo, filename = cfg["hf_hub"].rstrip("/"), ""
            if not cfg["hf_hub"].endswith("/"):
                repo, filename = cfg["hf_hub"].rsplit("/", 1)
            if not filename:
                return [HubFiles(what, repo, (("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),))]
            safe = (filename.rsplit(".", 1)[0] + ".safetensors",) if filename.endswith((".bin", ".pth")) else ()
            return [HubFiles(what, repo, ((*safe, filename),))]
        return [UrlFile(what, cfg["url"], Path("~/.cache/clip").expanduser() / cfg["url"].rsplit("/", 1)[-1])]

    def score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        image = self.model.encode_image(pixels)
        text = self.model.encode_text(self.tokenizer(prompts).to(self.device))
        return F.cosine_similarity(image.float(), text.float(), dim=-1)


def trained_activation(arch: str, pretrained: str | None) -> dict[str, bool]:
    """`force_quick_gelu` when the weights were trained with QuickGELU (OpenAI's CLIPs): open_clip 3.x
    builds `ViT-L-14` with GELU even for `pretrained="openai"` and only warns, which shifts every score."""
    import open_clip

    trained = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}
    return {"force_quick_gelu": True} if trained.get("quick_gelu", False) else {}


class PickScore(MeanScore):
    """PickScore v1: logit_scale.exp() * cos(image, text) of the PickScore CLIP (~18-23 in the paper)."""

    name = "pickscore"
    MODEL, PROCESSOR = "yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

    def __init__(self, model=None, processor=None, model_id: str = MODEL, processor_id: str = PROCESSOR,
                 device: str = "cpu") -> None:
        super().__init__()
        if model is None:
            from transformers import AutoModel, AutoProcessor

            try:
                model = AutoModel.from_pretrained(model_id)
                processor = AutoProcessor.from_pretrained(processor_id)
            except OSError as err:
                raise unavailable(f"PickScore ({model_id})", err) from None
        self.model, self.processor, self.device = model.eval().to(device), processor, device

    @classmethod
    def needs(cls, model_id: str = MODEL, processor_id: str = PROCESSOR, **_) -> list:
        return [HubFiles("metric pickscore: model", model_id, (("config.json",), ("model.safetensors", "pytorch_model.bin"))),
                HubFiles("metric pickscore: processor", processor_id,
                         (("preprocessor_config.json",), ("tokenizer_config.json",), ("tokenizer.json", "vocab.json")))]

    def score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        tokens = self.processor(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        image = _features(self.model.get_image_features(pixel_values=pixels))
        text = _features(self.model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()}))
        return self.model.logit_scale.exp() * F.cosine_similarity(image.float(), text.float(), dim=-1)


class Aesthetic(MeanScore):
    """Aesthetic predictor v2.5 (SigLIP so400m + MLP head; 1-10 in the paper)."""

    name = "aesthetic"

    def __init__(self, model=None, processor=None, device: str = "cpu") -> None:
        super().__init__()
        if model is None:
            try:
                from aesthetic_predictor_v2_5 import convert_v2_5_from_siglip
            except ImportError as err:
                raise unavailable("aesthetic-predictor-v2-5 (pip install -e '.[metrics]')", err) from None
            try:
                model, processor = convert_v2_5_from_siglip(low_cpu_mem_usage=True, trust_remote_code=True)
            except Exception as err:  # noqa: BLE001 - SigLIP from the hub, the head from GitHub
                raise unavailable("aesthetic predictor v2.5 (SigLIP so400m + head)", err) from None
        self.model, self.processor, self.device = model.eval().to(device), processor, device

    @classmethod
    def needs(cls, **_) -> list:
        """SigLIP so400m from the hub and the v2.5 head, which the package fetches through torch.hub."""
        from aesthetic_predictor_v2_5.siglip_v2_5 import URL

        return [HubFiles("metric aesthetic: SigLIP so400m", SIGLIP,
                         (("config.json",), ("model.safetensors",), ("preprocessor_config.json",))),
                UrlFile("metric aesthetic: v2.5 head", URL,
                        torch_hub() / "checkpoints" / URL.rsplit("/", 1)[-1])]

    def score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        return self.model(pixel_values=pixels.to(self.model.dtype)).logits.reshape(-1).float()


def _features(out) -> torch.Tensor:
    """transformers 5 returns an output object whose pooler_output is the projected embedding."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
