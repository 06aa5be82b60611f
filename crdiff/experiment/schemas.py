"""Hydra schemas: each config group's validated dataclass is registered as `<group>/schema`, the base
that the group's YAML files extend (`defaults: [schema, _self_]`), so a YAML file holds only what differs
from the code's defaults and Hydra refuses a key the dataclass does not have."""

from __future__ import annotations

from crdiff.experiment.config import AmplifyConfig, MetricsConfig, ModelConfig, PruningConfig, ResolutionsConfig

SCHEMAS = {"model": ModelConfig, "pruning": PruningConfig, "amplify": AmplifyConfig, "metrics": MetricsConfig,
           "resolutions": ResolutionsConfig}


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (before any compose; idempotent). <output_dir>/presets is on
    the search path for the presets a search writes; before the first search it does not exist yet, which is
    normal, not worth Hydra's warning on every compose (runs, plans, scripts)."""
    import warnings

    from hydra.core.config_store import ConfigStore

    warnings.filterwarnings("ignore", message=r"provider=hydra\.searchpath in main, path=.*presets is not available")
    store = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        store.store(group=group, name="schema", node=schema)
