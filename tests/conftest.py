import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402

from crdiff.experiment import schemas  # noqa: E402

schemas.register()  # the config groups' dataclass schemas, before any test composes a config


@pytest.fixture(scope="session", autouse=True)
def _crdiff_cache(tmp_path_factory):
    """Tiny pipelines are built once per test session into a private cache."""
    os.environ["CRDIFF_CACHE"] = str(tmp_path_factory.mktemp("crdiff-cache"))
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_pipes():
    """Loader of the tiny pipelines by kind, each loaded once through `load_pipeline`."""
    from crdiff import load_pipeline

    cache = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = load_pipeline(f"tiny-{kind}")
        return cache[kind]

    return get


def unet_inputs(unet, height: int = 48, width: int = 80, batch: int = 2, seed: int = 0):
    """Deterministic UNet call arguments (latents at HxW / 8, SDXL added conditioning if needed)."""
    g = torch.Generator().manual_seed(seed)
    dtype = unet.dtype
    sample = torch.randn(batch, unet.config.in_channels, height // 8, width // 8, generator=g).to(dtype)
    ehs = torch.randn(batch, 7, unet.config.cross_attention_dim, generator=g).to(dtype)
    kwargs = {"encoder_hidden_states": ehs}
    if unet.config.addition_embed_type == "text_time":
        text_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, text_dim, generator=g).to(dtype),
            "time_ids": torch.tensor([[height, width, 0, 0, height, width]] * batch, dtype=dtype),
        }
    return (sample, torch.tensor(500)), kwargs
