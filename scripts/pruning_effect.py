"""How far block-wise magnitude pruning moves a miniature's noise prediction, along its own dense trajectory.

    python scripts/pruning_effect.py --out results/miniature_scenes/pruning_effect.md   # ~1 min on 2 cores

For each model (the shipped scenes and digits miniatures), size and ratio (the same in down / mid / up):
dense DDIM sampling (20 steps, guidance 3.0) of the first evaluation prompts, and at every step the
text-conditioned noise prediction of the pruned UNet (BWP alone, k = 1: crdiff.apply_crdiff) against the
dense one on the same latent: relative L2 ||pruned - dense|| / ||dense||, per image, averaged over steps.
With POA at k the output moves k times as far: dense + k (pruned - dense). The share of UNet parameters
pruning targets (attn1 + ff) is printed beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

DEFAULT_SIZES = {"scenes": ["64x64", "32x32", "24x32", "32x24"], "digits": ["32x32", "24x24", "48x48"]}


def prompts_of(model: str, n: int) -> list[str]:
    if model == "scenes":
        from crdiff.miniature import scenes

        return scenes.prompts(n)
    from crdiff.miniature import digits

    return [digits.prompt(i % 10) for i in range(n)]


def targeted_share(unet: torch.nn.Module) -> float:
    """Parameters of the attn1 / ff linear layers in down / mid / up blocks over all UNet parameters."""
    total = sum(p.numel() for p in unet.parameters())
    hit = sum(p.numel() for name, p in unet.named_parameters()
              if (".attn1." in name or ".ff." in name) and name.split(".")[0] in ("down_blocks", "mid_block", "up_blocks"))
    return hit / total


def trajectory(pipe, prompts: list[str], height: int, width: int, steps: int, seed: int) -> list[tuple]:
    """(timestep, latents, text embeddings) at every step of dense DDIM sampling with guidance 3.0."""
    captured = []

    def keep(pipeline, step, timestep, kwargs):
        captured.append((timestep, kwargs["latents"].clone()))
        return kwargs

    generator = torch.Generator().manual_seed(seed)
    embeds, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
    latents = torch.randn((len(prompts), pipe.unet.config.in_channels, height // pipe.vae_scale_factor,
                           width // pipe.vae_scale_factor), generator=generator)
    pipe(prompt_embeds=embeds, negative_prompt_embeds=pipe.encode_prompt([""] * len(prompts), "cpu", 1, False)[0],
         latents=latents.clone(), height=height, width=width, num_inference_steps=steps, guidance_scale=3.0,
         output_type="latent", callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"])
    # the latent each step's prediction was made on: the initial one, then each step's result but the last
    inputs = [latents * pipe.scheduler.init_noise_sigma] + [lat for _, lat in captured[:-1]]
    return [(t, x, embeds) for (t, _), x in zip(captured, inputs)]


@torch.no_grad()
def effect(pipe, points: list[tuple], ratio: float) -> np.ndarray:
    """Relative L2 change of the conditional noise prediction per step and image: [steps, images]."""
    import crdiff

    dense = [pipe.unet(x, t, encoder_hidden_states=e).sample for t, x, e in points]
    crdiff.apply_crdiff(pipe, ratios={"down": ratio, "mid": ratio, "up": ratio}, k=1.0)
    try:
        pruned = [pipe.unet(x, t, encoder_hidden_states=e).sample for t, x, e in points]
    finally:
        crdiff.remove_crdiff(pipe)
    return np.array([((p - d).flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1)).numpy()
                     for p, d in zip(pruned, dense)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["scenes", "digits"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", nargs="+", help="HxW sizes (default: each model's training and unseen sizes)")
    parser.add_argument("--out", default="results/miniature_scenes/pruning_effect.md")
    args = parser.parse_args(argv)
    from crdiff.models import load_pipeline

    lines = ["# How far block-wise pruning moves the noise prediction", "",
             f"- command: `python scripts/pruning_effect.py` ({args.prompts} evaluation prompts, seed 0, dense DDIM "
             f"{args.steps} steps at guidance 3.0; at each step the conditional prediction of the pruned UNet (k = 1) "
             "vs the dense one on the same latent)",
             "- relative L2 = ||pruned - dense|| / ||dense|| per image, mean over steps and images [min, max of the "
             "per-image means]; POA at k moves the output k times as far", "",
             "| model | attn1 + ff share of the UNet | size | ratio (down = mid = up) | relative L2 | first step | last step |",
             "|---|---|---|---|---|---|---|"]
    for model in args.models:
        pipe = load_pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        share = targeted_share(pipe.unet)
        for size in args.sizes or DEFAULT_SIZES[model]:
            height, width = map(int, size.split("x"))
            points = trajectory(pipe, prompts_of(model, args.prompts), height, width, args.steps, seed=0)
            for ratio in args.ratios:
                found = effect(pipe, points, ratio)
                per_image = found.mean(0)
                lines.append(f"| {model} | {share:.0%} | {size} | {ratio:g} | {found.mean():.3f} "
                             f"[{per_image.min():.3f}, {per_image.max():.3f}] | {found[0].mean():.3f} | "
                             f"{found[-1].mean():.3f} |")
                print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
