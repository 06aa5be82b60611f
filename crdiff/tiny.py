"""Tiny offline pipelines of the real classes (SD1.5-, SD2.1- and SDXL-like), random weights from config.

They share every code path with the real models: built here, saved with `save_pretrained`, and loaded
back through `crdiff.load_pipeline` like a hub id. The tokenizer is the real CLIP BPE tokenizer,
rebuilt from the vocabulary open_clip ships, so prompts tokenize exactly as in Stable Diffusion.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import torch

from crdiff import atomic

KINDS = ("sd15", "sd21", "sdxl", "sd3", "flux")
BUILD_VERSION = "1"  # bump when a builder changes, so cached folders are rebuilt


def clip_tokenizer_files(folder: Path) -> None:
    """Write vocab.json + merges.txt of CLIP's BPE (49,408 tokens) from open_clip's bundled file."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def _tokenizer(pad_token: str = "<|endoftext|>"):
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        clip_tokenizer_files(Path(tmp))
        # transformers 5 ignores vocab_file/merges_file in the constructor: load from the folder.
        return CLIPTokenizer.from_pretrained(tmp, pad_token=pad_token, model_max_length=77)


def _text_encoder(with_projection: bool = False, act: str = "quick_gelu", **overrides):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**{
        "vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 77, "projection_dim": 32, "hidden_act": act,
        "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407, **overrides,
    })
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _vae():
    from diffusers import AutoencoderKL

    # Four levels keep the real vae_scale_factor of 8.
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8, sample_size=64,
    )


def _t5_tokenizer():
    """A T5 (Unigram) tokenizer with a small made-up vocabulary: T5's real one cannot be fetched offline."""
    from transformers import T5TokenizerFast

    words = "a an the of on in with and red blue green cube sphere cat dog photo picture digit".split()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(f"\u2581{w}", -5.0) for w in words] + [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=32)


def _t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   feed_forward_proj="gated-gelu"))


def _dit_vae():
    from diffusers import AutoencoderKL

    # 16 latent channels as SD3 / FLUX, vae_scale_factor 8
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, norm_num_groups=8, sample_size=64,
        shift_factor=0.0, scaling_factor=1.0, use_quant_conv=False, use_post_quant_conv=False,
    )


def build_dit(kind: str):
    """Tiny SD3 (MMDiT, no T5: diffusers feeds zeros in its place) and FLUX (19-of-57-like split:
    2 double-stream + 4 single-stream blocks) pipelines."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    if kind == "sd3":
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=6, attention_head_dim=8,
            num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
            pos_embed_max_size=32,
        )
        return StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_dit_vae(),
            text_encoder=_text_encoder(True), tokenizer=_tokenizer(), text_encoder_2=_text_encoder(True, "gelu"),
            tokenizer_2=_tokenizer(pad_token="!"), text_encoder_3=None, tokenizer_3=None,
        )
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(2, 2, 4),
    )
    tokenizer_2 = _t5_tokenizer()
    return FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=_dit_vae(),
        text_encoder=_text_encoder(), tokenizer=_tokenizer(), text_encoder_2=_t5_encoder(len(tokenizer_2)),
        tokenizer_2=tokenizer_2,
    )


def build(kind: str, seed: int = 0):
    """A tiny pipeline of `kind` (sd15 | sd21 | sdxl | sd3 | flux) with seeded random weights."""
    from diffusers import (
        DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline,
        StableDiffusionXLPipeline, UNet2DConditionModel,
    )

    if kind not in KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; valid choices: {KINDS}")
    torch.manual_seed(seed)
    if kind in ("sd3", "flux"):
        return build_dit(kind)
    common = dict(sample_size=8, norm_num_groups=8, layers_per_block=2, block_out_channels=(16, 32, 64))
    if kind == "sdxl":
        unet = UNet2DConditionModel(
            **common, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 8), use_linear_projection=True,
            cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
        )
        return StableDiffusionXLPipeline(
            vae=_vae(), text_encoder=_text_encoder(), text_encoder_2=_text_encoder(True, "gelu"),
            tokenizer=_tokenizer(), tokenizer_2=_tokenizer(pad_token="!"), unet=unet,
            scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                             timestep_spacing="leading", steps_offset=1),
        )
    v_prediction = kind == "sd21"
    unet = UNet2DConditionModel(
        **common, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4, 8) if v_prediction else 8, use_linear_projection=v_prediction,
    )
    schedule = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    scheduler = (DDIMScheduler(**schedule, prediction_type="v_prediction", clip_sample=False)
                 if v_prediction else PNDMScheduler(**schedule, skip_prk_steps=True))
    return StableDiffusionPipeline(
        vae=_vae(), text_encoder=_text_encoder(act="gelu" if v_prediction else "quick_gelu"),
        tokenizer=_tokenizer(), unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def with_real_unet(kind: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """The tiny `kind` pipeline (sd15 | sdxl) around its real UNet architecture with random weights
    (crdiff.models.random_unet), its text encoders as wide as that UNet's cross-attention: for a method
    that patches the full-size UNet by module name (HiDiffusion). Seeded as `build`."""
    from crdiff.models import random_unet

    widths = {"sd15": {"text_encoder": 768}, "sdxl": {"text_encoder": 768, "text_encoder_2": 1280}}
    if kind not in widths:
        raise ValueError(f"no real-UNet pipeline of kind {kind!r}; valid choices: {sorted(widths)}")
    tiny = build(kind)
    parts = tiny.components
    for name, width in widths[kind].items():  # heads of 64 channels; SDXL's pooled projection is its width
        parts[name] = _text_encoder(name == "text_encoder_2", parts[name].config.hidden_act, hidden_size=width,
                                    num_attention_heads=width // 64, projection_dim=width)
    parts["unet"] = random_unet(kind, dtype, device)
    extra = {"requires_safety_checker": False} if kind == "sd15" else {}
    pipe = type(tiny)(**parts, **extra)
    return pipe if (device, dtype) == ("cpu", torch.float32) else pipe.to(device, dtype)


def save_atomically(pipe, folder: Path, replace: bool = False) -> Path:
    """`save_pretrained` into a temporary sibling, then rename: no reader ever sees half a folder."""
    return atomic.save_folder(pipe.save_pretrained, folder, replace)


def ensure_saved(kind: str, root: Path) -> Path:
    """Folder holding the saved tiny pipeline `kind`; built and saved atomically on first use."""
    folder = Path(root) / f"{kind}-v{BUILD_VERSION}"
    if (folder / "model_index.json").exists():
        return folder
    return save_atomically(build(kind), folder)
