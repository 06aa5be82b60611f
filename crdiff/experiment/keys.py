"""Run keys: one function turns the settings that change a result into a short hash.

A result (a folder of images, a result row, a search's state) is stored under the key of everything
that changes it, so changing any of those makes a new result and rerunning the same command resumes
the old one. Everything a config holds joins the key unless it is listed in `EXCLUDED`: a new config
field changes keys until someone writes down that it does not change results.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

# Fields that change where, how fast or how visibly a run goes, not its images or its numbers (up to
# float rounding of batched kernels), as `<dataclass>.<field>`: they are left out wherever the dataclass
# sits in a key.
EXCLUDED = frozenset({
    "RunConfig.device", "RunConfig.output_dir", "RunConfig.experiment", "RunConfig.task", "RunConfig.methods",
    "RunConfig.methods_if_supported",
    "RunConfig.wandb", "RunConfig.lease_min",
    # a tiled decode differs from a whole one (docs/config.md states by how much); every image records
    # how it was decoded, and its row says so
    "RunConfig.vae_decode",
    "SamplerConfig.batch_size",
    # act through the ratios they resolve per resolution, and those join the key (crdiff.experiment.presets)
    "PruningConfig.searched", "PruningConfig.preset_path", "PruningConfig.search_protocol",
    "PruningConfig.objective", "PruningConfig.validation",  # a preset's provenance: never read by pruning
    "AmplifyConfig.batched", "CRDiffConfig.batched",
    "AmplifyConfig.weights", "CRDiffConfig.weights", "AmplifyConfig.memory_budget_gib", "CRDiffConfig.memory_budget_gib",
    "MetricsConfig.batch_size",
    # the jackknife's groups of FID / KID intervals (rows record them); `semantic` writes the field the key
    # held before in its place (LEGACY), so rows scored with the bootstrap keep their keys and rerunning
    # their command redoes their intervals from kept features instead of rescoring into new rows
    "MetricsConfig.feature_groups",
    "RatioSearchConfig.preset_root", "RatioSearchConfig.preset_name", "RatioSearchConfig.compare",
    "RatioSearchConfig.validation_seeds",  # scored after the search: it never changes the walk
    "PruningConfig.model_kind",  # a guard: it refuses a model, never changes an image
})
# Bump when a metric's definition changes (preprocessing, feature layer, reference statistics): result
# rows keyed before then are recomputed instead of mixed with new ones.
METRICS_VERSION = 3  # 2: CLIP score on QuickGELU for OpenAI weights (issue 12); 3: KID's subsets drawn in
# image order (rank-count independent), per-image scores and 95% intervals in every row (issue 21)


# fields a key holds at a fixed value in place of a renamed one (see EXCLUDED), so that old keys stay valid
LEGACY = {"MetricsConfig": {"feature_resamples": 50}}


def semantic(value: Any) -> Any:
    """`value` (dataclasses, mappings, sequences, scalars) as plain JSON data without `EXCLUDED` fields."""
    if is_dataclass(value) and not isinstance(value, type):
        cls = type(value).__name__
        return {**{f.name: semantic(getattr(value, f.name)) for f in fields(value)
                   if f"{cls}.{f.name}" not in EXCLUDED}, **LEGACY.get(cls, {})}
    if isinstance(value, Mapping):
        return {str(name): semantic(item) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [semantic(item) for item in value]
    return value


def run_key(length: int = 10, **parts: Any) -> str:
    """Stable short hash of the named `parts` after `semantic` (key order does not matter)."""
    data = json.dumps(semantic(parts), sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:length]
