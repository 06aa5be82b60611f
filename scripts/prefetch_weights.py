"""Download every model and metric weight an experiment needs into the local caches.

    python scripts/prefetch_weights.py experiment=table_a model=sdxl  # any Hydra overrides of crdiff.run
Run it once where the internet is reachable; compute nodes then run with HF_HUB_OFFLINE=1.
Caches: the Hugging Face hub cache (HF_HOME), torch hub (Inception for FID), CRDIFF_CACHE (tiny models).
"""

import os
import sys
from pathlib import Path

os.environ.pop("HF_HUB_OFFLINE", None)  # this script's job is to download: read before the hub imports

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from crdiff.experiment import schemas  # noqa: E402
from crdiff.experiment.config import RunConfig  # noqa: E402
from crdiff.models import resolve  # noqa: E402
from crdiff.experiment.scoring import build_all  # noqa: E402


def main(overrides: list[str]) -> int:
    schemas.register()
    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        run = RunConfig.from_dict(OmegaConf.to_container(compose("config", overrides=overrides), resolve=True))
    source = resolve(run.model.name)  # tiny models are built here; hub ids pass through
    if not Path(source).is_dir():
        from diffusers import DiffusionPipeline

        DiffusionPipeline.download(source)
    print(f"model {run.model.name}: {source}")
    for name in build_all(run.metrics, "cpu"):  # constructing a scorer downloads its weights
        print(f"metric {name}: ready{' (tiny stand-in)' if run.metrics.tiny else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
