"""Images per GPU-hour of a whole table job: sampling + VAE decode + PNG + every metric, at real sizes.

For each resolution and method (dense; crdiff = POA, batched, `--weights`) of one model, the runner's own
code paths time one job: `sampling.generate` (text encoders, `--steps` denoising steps with CFG, VAE
decode, PNG write) on a pipeline of the model's real classes and sizes with random weights (UNet, CLIP
text encoders and VAE from their published configs; the real CLIP tokenizer), then `scoring.score_job`
with every metric of conf/metrics/paper.yaml on stand-ins of the scorers' real architectures with random
weights (CLIP ViT-L/14 quickgelu, PickScore's ViT-H/14, ImageReward's BLIP ViT-L/16 + BERT-base, the
aesthetic predictor's SigLIP so400m/14 at 384, Inception-v3 at 299 with 2048 features for FID and KID).
Random weights change no kernel, so the times are those of the real job. One untimed warm-up batch per
pipeline state; the FID/KID reference statistics (once per prompt set, then cached) are timed apart.

Rows go to results/bench/throughput.csv (columns model, resolution, dtype, method, device_name, steps,
seconds_per_image, kind, source; kind `job`), replacing rows with the same model, resolution, dtype,
method, device and kind; a report with the split into generation and scoring goes beside it.

    PYTHONPATH=. python scripts/bench_throughput.py --device cuda --model sdxl --resolutions 512x512 1024x1024
    PYTHONPATH=. python scripts/bench_throughput.py --tiny --out /tmp/bench   # CPU check of the code path
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import crdiff
from crdiff import atomic
from crdiff.experiment.config import MetricsConfig, SamplerConfig
from crdiff.experiment.prompts import PromptSet
from crdiff.models import DTYPES, Resolution, random_unet

COLUMNS = ("model", "resolution", "dtype", "method", "device_name", "steps", "seconds_per_image", "kind", "source")
PAPER_METRICS = ("fid", "kid", "clip", "image_reward", "pickscore", "aesthetic")
# Published text-encoder sizes (CLIP ViT-L/14 text tower; OpenCLIP ViT-H/14 and ViT-bigG/14 text towers).
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "projection_dim": 768}
OPENCLIP_H = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
              "projection_dim": 1024, "hidden_act": "gelu"}
OPENCLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
                 "projection_dim": 1280, "hidden_act": "gelu"}


def randomize(module: torch.nn.Module, dtype: torch.dtype, device: str) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return module.to(device=device, dtype=dtype).eval()


def real_pipeline(model: str, dtype: torch.dtype, device: str):
    """A pipeline of `model`'s real classes and sizes with random weights (no download)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from crdiff.tiny import _text_encoder, _tokenizer

    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        scaling_factor=0.13025 if model == "sdxl" else 0.18215, force_upcast=model == "sdxl")
    # Euler for every model: the scheduler's own arithmetic is negligible next to a UNet call
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       steps_offset=1, prediction_type="v_prediction" if model == "sd21" else "epsilon")
    parts = {"vae": randomize(vae, dtype, device), "unet": random_unet(model, dtype, device), "scheduler": scheduler}
    if model == "sdxl":
        return StableDiffusionXLPipeline(
            text_encoder=randomize(_text_encoder(**CLIP_L), dtype, device), tokenizer=_tokenizer(),
            text_encoder_2=randomize(_text_encoder(True, **OPENCLIP_BIGG), dtype, device),
            tokenizer_2=_tokenizer(pad_token="!"), **parts)
    encoder = OPENCLIP_H if model == "sd21" else CLIP_L
    return StableDiffusionPipeline(text_encoder=randomize(_text_encoder(**encoder), dtype, device),
                                   tokenizer=_tokenizer(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False, **parts)


class InceptionFeatures(torch.nn.Module):
    """Inception-v3 (random weights) as FID/KID's extractor: uint8 images -> 2048 pool features at 299x299."""

    num_features = 2048

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        self.net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        self.net.fc = torch.nn.Identity()
        self.net.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(2 * x - 1).double()


def real_metrics(device: str, names=PAPER_METRICS) -> dict:
    """The metrics `names` on their scorers' real architectures and input sizes, random weights."""
    return {name: globals()[f"_{name}"](device) for name in names}


def _clip(device: str):
    import open_clip

    from crdiff.metrics.clip import CLIPScore

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-L-14-quickgelu", pretrained=None)
    return CLIPScore(model, preprocess, open_clip.get_tokenizer("ViT-L-14-quickgelu"), device=device)


def _pickscore(device: str):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from crdiff.metrics.clip import PickScore
    from crdiff.tiny import clip_tokenizer_files

    model = CLIPModel(CLIPConfig(projection_dim=1024, text_config={**OPENCLIP_H, "num_hidden_layers": 24},
                                 vision_config={"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                                                "num_attention_heads": 16, "image_size": 224, "patch_size": 14}))
    with tempfile.TemporaryDirectory() as tmp:
        clip_tokenizer_files(Path(tmp))
        tokens = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    return PickScore(model, CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokens), device=device)


def _image_reward(device: str):
    from transformers import BertTokenizer

    from crdiff.metrics.image_reward import ImageReward, ImageRewardModel, configs

    med = {"vocab_size": 30524, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
           "num_attention_heads": 12, "max_position_embeddings": 512, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
    with tempfile.TemporaryDirectory() as tmp:
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
        (Path(tmp) / "vocab.txt").write_text("\n".join(words) + "\n")
        bert = BertTokenizer.from_pretrained(tmp)  # prompts are padded to 35 tokens: the vocabulary costs nothing
    return ImageReward(ImageRewardModel(*configs(med)), bert, device=device)


def _aesthetic(device: str):
    from aesthetic_predictor_v2_5.siglip_v2_5 import AestheticPredictorV2_5Model, AestheticPredictorV2_5Processor
    from transformers import SiglipVisionConfig

    from crdiff.metrics.clip import Aesthetic

    siglip = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                                image_size=384, patch_size=14)
    return Aesthetic(AestheticPredictorV2_5Model(siglip), AestheticPredictorV2_5Processor(size={"height": 384,
                                                                                               "width": 384}),
                     device=device)


def _fid(device: str):
    from crdiff.metrics.fid import FID

    return FID(feature=InceptionFeatures(), feature_name="inception-random", device=device)


def _kid(device: str):
    from crdiff.metrics.fid import KID

    return KID(feature=InceptionFeatures(), feature_name="inception-random", device=device, subset_size=50)


def device_name(device: str) -> str:
    import platform

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def reference_images(folder: Path, n: int) -> list[str]:
    """Stand-ins of COCO's real images (640x480 noise PNGs) for the FID/KID reference pass."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"ref{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def merge_rows(path: Path, rows: list[dict]) -> None:
    """Write `rows` into the CSV at `path`, replacing any row with the same measurement key."""
    fields = ("model", "resolution", "dtype", "method", "device_name", "kind")
    key = lambda r: tuple(str(r[c]) for c in fields)  # noqa: E731
    old = list(csv.DictReader(path.open(newline=""))) if path.exists() else []
    new = {key(r) for r in rows}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows([r for r in old if key(r) not in new] + rows)
    atomic.write_bytes(path, buffer.getvalue().encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="sd15", choices=["sd15", "sd21", "sdxl"])
    parser.add_argument("--resolutions", nargs="+", default=["512x512"])
    parser.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    parser.add_argument("--methods", nargs="+", default=["dense", "crdiff"], choices=["dense", "crdiff"])
    parser.add_argument("--weights", default="auto", choices=["on_the_fly", "cached", "auto"])
    parser.add_argument("--images", type=int, default=8, help="timed images per job (after a warm-up batch)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--tiny", action="store_true", help="tiny pipeline and metrics: checks the code path only")
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")
    from crdiff.experiment.sampling import generate
    from crdiff.experiment.scoring import score_job
    from crdiff.metrics import build_metric

    dtype = DTYPES[args.dtype]
    pipe = (crdiff.load_pipeline(f"tiny-{args.model}", args.dtype, args.device) if args.tiny
            else real_pipeline(args.model, dtype, args.device))
    pipe.set_progress_bar_config(disable=True)
    metrics = ({n: build_metric(n, tiny=True, device=args.device) for n in PAPER_METRICS} if args.tiny
               else real_metrics(args.device))
    sampler = SamplerConfig(steps=args.steps, batch_size=args.batch_size)
    cfg = MetricsConfig(names=list(PAPER_METRICS), batch_size=32, kid_subset_size=min(50, args.images))
    name, rows, lines = device_name(args.device), [], []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CRDIFF_CACHE"] = tmp  # the reference statistics are cached here, not in the user's cache
        n = args.batch_size + args.images
        refs = reference_images(Path(tmp), args.images)
        prompts = PromptSet("bench", tuple(f"a photo of object number {i} on a table" for i in range(n)),
                            tuple(f"p{i}" for i in range(n)), tuple(refs))
        warm, timed_ids = list(range(args.batch_size)), list(range(args.batch_size, n))
        reference = list(range(len(refs)))
        for res in map(Resolution.parse, args.resolutions):
            for method in args.methods:
                crdiff.remove_crdiff(pipe)
                if method == "crdiff":
                    crdiff.apply_crdiff(pipe, k=1.5, batched=True, weights=args.weights)
                folder = Path(tmp) / f"{method}-{res}"
                generate(pipe, prompts, warm, res, sampler, folder)
                gen = timed(lambda: generate(pipe, prompts, timed_ids, res, sampler, folder), args.device)
                first = not rows
                score = timed(lambda: score_job(metrics, cfg, prompts, folder, timed_ids, True, 1, reference),
                              args.device)
                if first:  # the reference pass ran inside: time scoring again, now from the cache
                    ref = score
                    score = timed(lambda: score_job(metrics, cfg, prompts, folder, timed_ids, True, 1, reference),
                                  args.device)
                    lines.append(f"- FID/KID reference statistics: {(ref - score) / len(refs):.3f} s per real image "
                                 "(once per prompt set, then cached)")
                per_image = (gen + score) / args.images
                held = crdiff.weights_used(pipe) or "-"
                rows.append({"model": args.model, "resolution": str(res), "dtype": args.dtype, "method": method,
                             "device_name": name, "steps": args.steps, "seconds_per_image": round(per_image, 5),
                             "kind": "job", "source": f"scripts/bench_throughput.py (weights {held}, batch "
                                                      f"{args.batch_size}, {args.images} images)"})
                lines.append(f"| {res} | {method} | {held} | {gen / args.images:.3f} | {score / args.images:.3f} | "
                             f"{per_image:.3f} | {3600 / per_image:.0f} |")
                print(lines[-1], flush=True)
    crdiff.remove_crdiff(pipe)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    merge_rows(out / "throughput.csv", rows)
    head = [f"# Whole-job throughput: {args.model}{' (tiny: code path only)' if args.tiny else ''}, {args.dtype}, "
            f"{name}", "", f"- command: `python scripts/bench_throughput.py {' '.join(sys.argv[1:])}`",
            f"- torch {torch.__version__}, diffusers {__import__('diffusers').__version__}, "
            f"crdiff {crdiff.__version__}",
            f"- {args.steps} steps, CFG 7.5, batch {args.batch_size}, {args.images} timed images per job; metrics "
            f"{', '.join(PAPER_METRICS)}", *[line for line in lines if line.startswith("- ")], "",
            "| resolution | method | weights held | generation s/img | scoring s/img | total s/img "
            "| images / GPU-hour |",
            "|---|---|---|---|---|---|---|"]
    table = [line for line in lines if line.startswith("|")]
    tag = name.replace(" ", "-")
    (out / f"throughput_{args.model}_{args.dtype}_{tag}{'_tiny' if args.tiny else ''}.md").write_text(
        "\n".join(head + table) + "\n")


if __name__ == "__main__":
    main()
