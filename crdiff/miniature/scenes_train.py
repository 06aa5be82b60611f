"""Training of the scenes miniature (`scripts/train_scenes.py`): the scene encoder (features of the
miniature Fréchet distance), a VAE, then an SDXL-layout UNet with its CLIP text encoder at 64x64 only.

Bit-deterministic on one machine for a given thread count (another CPU's vector instructions round
differently and train other weights: scripts/scenes_rebuild.py), and resumable: every stage writes its
result into a work folder, the UNet stage checkpoints every `checkpoint_every` steps, and every random draw
of a step comes from a generator seeded by (seed, stage, step), so a run stopped and started again gives
the same weights as one run through. The result is a stock `StableDiffusionPipeline` folder; SDXL's size
micro-conditioning (`added_cond_kwargs`) is left out: the model is trained at one size only.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from crdiff import atomic, tiny
from crdiff.miniature import scenes
from crdiff.miniature.scenes_encoder import SceneEncoder

log = logging.getLogger(__name__)

SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
STAGES = {"encoder": 1, "vae": 2, "unet": 3}
# Training scenes per stage start far apart, so the stages never see the same scene numbers; all below
# scenes.EVAL_FIRST_SEED, so evaluation prompts are never training captions of the same scene.
FIRST_SCENE = {"encoder": 200_000_000, "vae": 100_000_000, "unet": 0}
TOKENS = 32  # captions are at most ~16 CLIP tokens; a short context keeps cross-attention cheap
SHARD = "15MB"  # the UNet (48 MB in fp32) is written in shards, so no file of the shipped model passes 20 MB


@dataclass
class TrainConfig:
    seed: int = 0
    # Bit-reproducible on one machine for a fixed thread count (1 and 2 threads give different weights).
    # Two threads on an idle 2-core machine: 0.60 s per UNet step against 0.87 s with one; but on a machine
    # shared with other work two OpenMP threads spin-wait on each other (measured: 8-33 s per step).
    threads: int = 2
    encoder_steps: int = 300
    vae_steps: int = 1200
    unet_steps: int = 6000
    batch_size: int = 32
    vae_batch_size: int = 16
    lr: float = 8e-4
    warmup: int = 200
    uncond_prob: float = 0.1  # captions dropped to "" (classifier-free guidance)
    # Min-SNR loss weighting (Hang et al., ICCV 2023), epsilon prediction: each sample's loss is weighted by
    # min(SNR(t), gamma) / SNR(t), so the nearly clean timesteps (easy denoising) no longer dominate and the
    # noisy ones, where the layout and the caption's objects are decided, get the model's capacity.
    # 0 turns it off (attempts 1-3 trained without it; results/miniature_scenes/attempts.md).
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    checkpoint_every: int = 200
    # The VAE learns every evaluated size, in turn (one per step), as SDXL's VAE works at any size: only the
    # UNet is trained at 64x64. A VAE trained at 64x64 alone could not keep objects at 32x32 (read back
    # from its reconstructions: 0.07 of scenes; results/miniature_scenes/attempts.md).
    vae_sizes: tuple = ((64, 64), (32, 32), (24, 32), (32, 24), (48, 48), (24, 24))
    # The scenes' recipe (crdiff/miniature/scenes.py), recorded so that a work folder of another recipe is refused.
    data: dict = field(default_factory=lambda: dict(
        max_objects=scenes.MAX_OBJECTS, size_range=list(scenes.SIZE_RANGE), gap=scenes.GAP, margin=scenes.MARGIN))
    # SDXL's layout, scaled down: no attention at the highest resolution, transformer depth rising to the
    # lowest (SDXL: 0 / 2 / 10), linear projections; attn1 + ff are >= 50% of the UNet's weights.
    unet: dict = field(default_factory=lambda: dict(
        sample_size=scenes.SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128),
        layers_per_block=2, transformer_layers_per_block=(1, 2, 4), attention_head_dim=(2, 4, 8),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        use_linear_projection=True, cross_attention_dim=64, norm_num_groups=16,
    ))
    text_encoder: dict = field(default_factory=lambda: dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=TOKENS, projection_dim=64,
    ))

    def __post_init__(self) -> None:
        for name in ("encoder_steps", "vae_steps", "unet_steps", "batch_size", "vae_batch_size", "threads",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_snr_gamma < 0:
            raise ValueError(f"min_snr_gamma must be >= 0 (0: off), got {self.min_snr_gamma}")


def _generator(cfg: TrainConfig, stage: str, step: int) -> torch.Generator:
    """The random draws of one step: a function of (seed, stage, step) only, so resuming is exact."""
    return torch.Generator().manual_seed((cfg.seed << 40) + (STAGES[stage] << 32) + step)


def _seeds(stage: str, step: int, batch_size: int) -> list[int]:
    first = FIRST_SCENE[stage] + step * batch_size
    return list(range(first, first + batch_size))


def _cosine(opt, steps: int, warmup: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps)))


def train_encoder(cfg: TrainConfig) -> tuple[SceneEncoder, float]:
    """The scene encoder learns to count each kind of object; returns it and its exact-count accuracy on
    512 held-out scenes (the counts rounded)."""
    torch.manual_seed(cfg.seed + STAGES["encoder"])
    model = SceneEncoder()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = _cosine(opt, cfg.encoder_steps, 50)
    for step in range(cfg.encoder_steps):
        seeds = _seeds("encoder", step, cfg.batch_size)
        loss = F.mse_loss(model((scenes.batch(seeds) + 1) / 2), _counts(seeds))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    held = list(range(scenes.EVAL_FIRST_SEED - 512, scenes.EVAL_FIRST_SEED))
    with torch.no_grad():
        right = (model((scenes.batch(held) + 1) / 2).round() == _counts(held)).all(1)
    return model.requires_grad_(False), right.float().mean().item()


def _counts(seeds: list[int]) -> torch.Tensor:
    kinds = [scenes.scene(s).kinds for s in seeds]
    return torch.tensor([[k[kind] for kind in scenes.KINDS] for k in kinds], dtype=torch.float32)


def train_vae(cfg: TrainConfig):
    """AutoencoderKL with a 4x latent (64x64x3 -> 16x16x4), trained at every size of `vae_sizes`;
    `scaling_factor` makes the latents of 64x64 scenes unit-variance."""
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed + STAGES["vae"])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8, sample_size=scenes.SIZE, mid_block_add_attention=False,
    )
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    sched = _cosine(opt, cfg.vae_steps, 50)
    for step in range(cfg.vae_steps):
        generator = _generator(cfg, "vae", step)
        height, width = cfg.vae_sizes[step % len(cfg.vae_sizes)]
        x = scenes.batch(_seeds("vae", step, cfg.vae_batch_size), height, width)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        loss = F.mse_loss(vae.decode(z).sample, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            log.info("vae step %d/%d loss %.5f", step + 1, cfg.vae_steps, loss.item())
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(scenes.batch(list(range(FIRST_SCENE["vae"] - 256, FIRST_SCENE["vae"])))).latent_dist.mean
    vae.register_to_config(scaling_factor=round(1.0 / latents.std().item(), 5))
    return vae.requires_grad_(False)


def build_unet(cfg: TrainConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**cfg.unet)


def build_text_encoder(cfg: TrainConfig):
    return tiny._text_encoder(**cfg.text_encoder)


def tokenizer():
    """CLIP's real BPE tokenizer, with a 32-token context (captions are short)."""
    tok = tiny._tokenizer()
    tok.model_max_length = TOKENS
    return tok


def train_unet(cfg: TrainConfig, vae, tok, work: Path, stop_after: int | None = None):
    """UNet + text encoder, epsilon prediction on SD's noise schedule, 64x64 captioned scenes only; resumes
    from `work/unet.ckpt`. Returns the EMA weights of both, or None when `stop_after` steps of this run
    ended it early (its last step checkpointed)."""
    from diffusers import DDPMScheduler

    torch.manual_seed(cfg.seed + STAGES["unet"])
    unet, text_encoder = build_unet(cfg), build_text_encoder(cfg)
    noise_schedule = DDPMScheduler(**SCHEDULE)
    params = [*unet.parameters(), *text_encoder.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    sched = _cosine(opt, cfg.unet_steps, cfg.warmup)
    start, checkpoint = 0, work / "unet.ckpt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        for e, saved in zip(ema, state["ema"]):
            e.copy_(saved)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["step"]
        log.info("unet: resumed at step %d from %s", start, checkpoint)
    unet.train()
    text_encoder.train()
    end = cfg.unet_steps if stop_after is None else min(cfg.unet_steps, start + stop_after)
    began = time.perf_counter()
    for step in range(start, end):
        generator = _generator(cfg, "unet", step)
        seeds = _seeds("unet", step, cfg.batch_size)
        drop = torch.rand(cfg.batch_size, generator=generator) < cfg.uncond_prob
        texts = ["" if d else scenes.scene(s).caption for s, d in zip(seeds, drop.tolist())]
        unique = sorted(set(texts))
        ids = tok(unique, padding="max_length", max_length=TOKENS, truncation=True, return_tensors="pt").input_ids
        embeds = text_encoder(ids)[0][torch.tensor([unique.index(t) for t in texts])]
        with torch.no_grad():
            x0 = vae.encode(scenes.batch(seeds)).latent_dist.mean * vae.config.scaling_factor
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(SCHEDULE["num_train_timesteps"], (cfg.batch_size,), generator=generator)
        error = F.mse_loss(unet(noise_schedule.add_noise(x0, noise, t), t, embeds).sample, noise, reduction="none")
        loss = (error.mean(dim=(1, 2, 3)) * _loss_weights(noise_schedule, t, cfg.min_snr_gamma)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            state = dict(unet=unet.state_dict(), text_encoder=text_encoder.state_dict(), ema=ema,
                         opt=opt.state_dict(), sched=sched.state_dict(), step=step + 1)
            atomic.write_with(checkpoint, lambda tmp: torch.save(state, tmp))
        if step % 50 == 0 or step == cfg.unet_steps - 1:
            rate = (time.perf_counter() - began) / (step + 1 - start)
            log.info("unet step %d/%d loss %.4f (%.2f s/step)", step + 1, cfg.unet_steps, loss.item(), rate)
    if end < cfg.unet_steps:
        return None
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    return unet.eval().requires_grad_(False), text_encoder.eval().requires_grad_(False)


def _loss_weights(noise_schedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample weights of the epsilon loss: min(SNR, gamma) / SNR (Min-SNR), or ones when gamma is 0."""
    if gamma == 0:
        return torch.ones(t.shape)
    alpha_bar = noise_schedule.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


def build_pipeline(vae, text_encoder, tok, unet):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _check_work(cfg: TrainConfig, work: Path) -> None:
    """A work folder belongs to one configuration: resuming another's checkpoints would mix two runs."""
    recorded, mine = work / "config.json", json.loads(json.dumps(asdict(cfg)))
    if recorded.is_file() and json.loads(recorded.read_text()) != mine:
        raise ValueError(f"the work folder {work} holds a run of another configuration "
                         f"({recorded}); give another --work or delete it to start over")
    work.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(mine, indent=1) + "\n")


def train(cfg: TrainConfig, work: Path, pipeline_dir: Path = scenes.PIPELINE_DIR,
          encoder_file: Path = scenes.ENCODER_FILE, stop_after: int | None = None) -> dict:
    """Train every stage not already in `work`, then write the pipeline folder and encoder file (each
    replaced atomically). Returns timings and the encoder's held-out count accuracy, and `finished`:
    False when `stop_after` UNet steps ended this run first (nothing written; run again to go on)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    _check_work(cfg, work)
    report: dict = {}
    start = time.perf_counter()
    if (work / "encoder.json").is_file():
        encoder = SceneEncoder()
        encoder.load_state_dict(load_file(work / "encoder.safetensors"))
        report.update(json.loads((work / "encoder.json").read_text()))
    else:
        encoder, accuracy = train_encoder(cfg)
        report.update(encoder_heldout_count_accuracy=accuracy, encoder_s=time.perf_counter() - start)
        atomic.write_with(work / "encoder.safetensors", lambda tmp: save_file(encoder.state_dict(), tmp))
        (work / "encoder.json").write_text(json.dumps(report) + "\n")
    log.info("encoder: held-out count accuracy %.4f", report["encoder_heldout_count_accuracy"])

    start = time.perf_counter()
    if (work / "vae" / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(work / "vae").requires_grad_(False)
    else:
        vae = train_vae(cfg)
        atomic.save_folder(vae.save_pretrained, work / "vae", True)
        report["vae_s"] = time.perf_counter() - start
    log.info("vae: scaling_factor %s", vae.config.scaling_factor)

    tok = tokenizer()
    start = time.perf_counter()
    trained = train_unet(cfg, vae, tok, work, stop_after)
    report["unet_s_this_run"] = time.perf_counter() - start
    if trained is None:
        return {**report, "finished": False}
    unet, text_encoder = trained

    pipe = build_pipeline(vae, text_encoder, tok, unet)
    atomic.save_folder(lambda folder: pipe.save_pretrained(folder, max_shard_size=SHARD), pipeline_dir, True)
    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    atomic.write_with(Path(encoder_file), lambda tmp: save_file(state, tmp))
    return {**report, "finished": True}


def checkpoint_pipeline(work: Path):
    """The pipeline of a training run's last checkpoint (EMA weights), for a look while it trains."""
    from diffusers import AutoencoderKL

    cfg = TrainConfig(**json.loads((Path(work) / "config.json").read_text()))
    state = torch.load(Path(work) / "unet.ckpt", weights_only=True)
    unet, text_encoder = build_unet(cfg), build_text_encoder(cfg)
    params = [*unet.parameters(), *text_encoder.parameters()]
    with torch.no_grad():
        for p, e in zip(params, state["ema"]):
            p.copy_(e)
    vae = AutoencoderKL.from_pretrained(Path(work) / "vae")
    pipe = build_pipeline(vae, text_encoder.eval(), tokenizer(), unet.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe, state["step"]
