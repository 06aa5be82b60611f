"""Training of the miniature (`scripts/train_tiny_t2i.py`): the digit classifier, a VAE, then the UNet and
its CLIP text encoder on captioned digits at 32x32 only. Bit-deterministic on one machine for a given
thread count.

The result is a stock `StableDiffusionPipeline` folder (AutoencoderKL with a 4x latent, CLIPTextModel with
the real CLIP tokenizer, UNet2DConditionModel with SD's attn1 / attn2 / ff blocks, DDIM sampler).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from crdiff import atomic, tiny

from crdiff.miniature import digits

log = logging.getLogger(__name__)

SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@dataclass
class TrainConfig:
    seed: int = 0
    threads: int = 2  # results are bit-reproducible on one machine for a fixed thread count
    classifier_steps: int = 600
    vae_steps: int = 400
    unet_steps: int = 1500
    batch_size: int = 64
    vae_batch_size: int = 32
    lr: float = 1e-3
    uncond_prob: float = 0.1  # captions dropped to "" (classifier-free guidance)
    ema_decay: float = 0.999
    unet: dict = field(default_factory=lambda: dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=16,
    ))


def _augment(x: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random small rotations, scalings and shifts of white-background digits."""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    angle, scale, shift = u[:, 0] * 0.2 * strength, 1 + u[:, 1] * 0.12 * strength, u[:, 2:] * 0.12 * strength
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return 1 - F.grid_sample(1 - x, grid, align_corners=False)  # pad with white


def _split(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    cut = int(n * 0.8)
    return order[:cut], order[cut:]


def train_classifier(cfg: TrainConfig) -> tuple[digits.DigitClassifier, float]:
    """The classifier on 80% of the digits (augmented); returns it and its held-out accuracy."""
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    images, labels = digits.real_digits()
    train, held = _split(len(images), generator)
    model = digits.DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for step in range(cfg.classifier_steps):
        batch = train[torch.randint(len(train), (cfg.batch_size,), generator=generator)]
        loss = F.cross_entropy(model(_augment(images[batch], generator)), labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[held]).argmax(1) == labels[held]).float().mean().item()
    return model, accuracy


def train_vae(cfg: TrainConfig):
    """AutoencoderKL with a 4x latent (32x32x3 -> 8x8x4); `scaling_factor` makes the latents unit-variance."""
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed + 1)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8, sample_size=digits.SIZE, mid_block_add_attention=False,
    )
    images, _ = digits.real_digits()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.vae_steps)))
    for step in range(cfg.vae_steps):
        x = _augment(images[torch.randint(len(images), (cfg.vae_batch_size,), generator=generator)], generator, 0.5)
        x = x.expand(-1, 3, -1, -1) * 2 - 1
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        loss = F.mse_loss(vae.decode(z).sample, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(images.expand(-1, 3, -1, -1) * 2 - 1).latent_dist.mean
    vae.register_to_config(scaling_factor=round(1.0 / latents.std().item(), 5))
    return vae.requires_grad_(False)


def train_unet(cfg: TrainConfig, vae, tokenizer):
    """UNet + text encoder, epsilon prediction on SD's noise schedule, 32x32 captioned digits only.
    Returns the EMA weights of both."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(cfg.seed + 2)
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    # the tiny SD1.5-like CLIP text encoder with 2 heads (projection_dim: the config default, unused by CLIPTextModel)
    unet, text_encoder = UNet2DConditionModel(**cfg.unet), tiny._text_encoder(num_attention_heads=2, projection_dim=512)
    noise_schedule = DDPMScheduler(**SCHEDULE)
    images, labels = digits.real_digits()
    with torch.no_grad():
        latents = vae.encode(images.expand(-1, 3, -1, -1) * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    captions = [[digits.prompt(d, t) for t in digits.TEMPLATES] for d in range(10)]
    params = [*unet.parameters(), *text_encoder.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    warmup = 100
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, cfg.unet_steps) / cfg.unet_steps)))
    unet.train()
    text_encoder.train()
    for step in range(cfg.unet_steps):
        batch = torch.randint(len(latents), (cfg.batch_size,), generator=generator)
        template = torch.randint(len(digits.TEMPLATES), (cfg.batch_size,), generator=generator)
        drop = torch.rand(cfg.batch_size, generator=generator) < cfg.uncond_prob
        texts = ["" if d else captions[labels[i]][t] for i, t, d in zip(batch.tolist(), template.tolist(), drop)]
        unique = sorted(set(texts))
        ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        embeds = text_encoder(ids)[0][torch.tensor([unique.index(t) for t in texts])]
        x0 = latents[batch]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(SCHEDULE["num_train_timesteps"], (cfg.batch_size,), generator=generator)
        loss = F.mse_loss(unet(noise_schedule.add_noise(x0, noise, t), t, embeds).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        if step % 200 == 0 or step == cfg.unet_steps - 1:
            log.info("unet step %d/%d loss %.4f", step + 1, cfg.unet_steps, loss.item())
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    return unet.eval().requires_grad_(False), text_encoder.eval().requires_grad_(False)


def build_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def train(cfg: TrainConfig, pipeline_dir: Path = digits.PIPELINE_DIR,
          classifier_file: Path = digits.CLASSIFIER_FILE) -> dict:
    """Train everything and write the pipeline folder and classifier file (each replaced atomically)."""
    from safetensors.torch import save_file

    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    times = {}
    start = time.perf_counter()
    classifier, accuracy = train_classifier(cfg)
    times["classifier_s"] = time.perf_counter() - start
    log.info("classifier: held-out accuracy %.4f (%.0f s)", accuracy, times["classifier_s"])
    start = time.perf_counter()
    vae = train_vae(cfg)
    times["vae_s"] = time.perf_counter() - start
    log.info("vae: scaling_factor %s (%.0f s)", vae.config.scaling_factor, times["vae_s"])
    tokenizer = tiny._tokenizer()
    start = time.perf_counter()
    unet, text_encoder = train_unet(cfg, vae, tokenizer)
    times["unet_s"] = time.perf_counter() - start
    log.info("unet + text encoder: %.0f s", times["unet_s"])

    tiny.save_atomically(build_pipeline(vae, text_encoder, tokenizer, unet), pipeline_dir, replace=True)
    state = {k: v.contiguous() for k, v in classifier.state_dict().items()}
    atomic.write_with(Path(classifier_file), lambda tmp: save_file(state, tmp))
    return {"classifier_heldout_accuracy": accuracy, **times}
