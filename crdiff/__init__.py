"""crdiff: CR-Diff (cross-resolution diffusion via block-wise pruning + pruned output amplification)."""

from crdiff.amplify import CRDiffConfig, apply_crdiff, crdiff_config, is_crdiff, remove_crdiff, weights_used
from crdiff.calibration import activation_norms
from crdiff.models import MODELS, ModelUnavailableError, Resolution, load_pipeline
from crdiff.pruning import CRITERIA, compute_masks, plan_pruning, sparsity_report, target_modules

__all__ = [
    "CRITERIA", "CRDiffConfig", "MODELS", "ModelUnavailableError", "Resolution", "activation_norms", "apply_crdiff",
    "compute_masks", "crdiff_config", "is_crdiff", "load_pipeline", "plan_pruning", "remove_crdiff",
    "sparsity_report", "target_modules", "weights_used",
]
__version__ = "0.1.0"
