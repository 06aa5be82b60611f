"""W&B logging that can never fail a run: one W&B run per job, finished inside the job."""

from __future__ import annotations

import logging
from typing import Any

from crdiff.experiment.config import WandbConfig

log = logging.getLogger(__name__)


class Tracker:
    """Thin guard around a W&B run; every call is a no-op after the first W&B error."""

    def __init__(self, cfg: WandbConfig, config: dict[str, Any], name: str, directory: str) -> None:
        self.run = None
        if cfg.mode == "disabled":
            return
        try:
            import wandb

            self.run = wandb.init(mode=cfg.mode, project=cfg.project, entity=cfg.entity, group=cfg.group,
                                  tags=cfg.tags, name=name, config=config, dir=directory, reinit="finish_previous")
        except Exception as err:  # noqa: BLE001 - logging must not fail a run
            log.warning("W&B disabled for this job: %s", err)

    def _safe(self, fn, *args) -> None:
        if self.run is None:
            return
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001
            log.warning("W&B call failed, logging stops for this job: %s", err)
            self.run = None

    def log(self, data: dict[str, Any]) -> None:
        self._safe(lambda: self.run.log(data))

    def summarize(self, data: dict[str, Any]) -> None:
        """Summary scalars: one value per name for the whole run (what W&B panels plot across runs)."""
        self._safe(lambda: self.run.summary.update(data))

    def log_images(self, images: dict[str, Any]) -> None:
        self._safe(lambda: self.run.log({k: _wandb().Image(v) for k, v in images.items()}))

    def log_table(self, name: str, frame) -> None:
        self._safe(lambda: self.run.log({name: _wandb().Table(dataframe=frame)}))

    def finish(self) -> None:
        self._safe(lambda: self.run.finish())
        self.run = None


def _wandb():
    """W&B, imported only once a run exists: `wandb.mode=disabled` needs no W&B install (a GPU node's image)."""
    import wandb

    return wandb
