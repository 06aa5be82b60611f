"""`native_resize`: the dense pipeline at its training size (or nearest trained aspect bucket), then a
centred crop + Lanczos resize to the target (crdiff.native); refuses a pipeline another method changed."""

from __future__ import annotations

from typing import Any

from crdiff import native
from crdiff.experiment.methods.base import Method, train_resolution
from crdiff.models import MODELS, Resolution

# The real SD models were trained on crops with sides multiples of 64; the miniature and the tiny
# stand-ins take their own side multiple (8: the VAE factor crdiff requires; 16 for DiTs).
NATIVE_MULTIPLE = 64


def native_rule(run) -> native.NativeRule:
    """Where native_resize draws for this model (`baselines.native_size`, docs/native_resize.md)."""
    train = train_resolution(run)
    if run.baselines.native_size == "train":
        return native.NativeRule(train, (train,))
    if run.model.name == "sdxl":
        return native.NativeRule(train, native.SDXL_BUCKETS)
    spec = MODELS.get(run.model.name)
    real = spec is None or not spec.source.startswith(("tiny:", "bundled:"))
    return native.NativeRule(train, native.area_buckets(train, NATIVE_MULTIPLE if real else spec.multiple))


class NativeResize(Method):
    """Draws with the dense pipeline at the bucket, then fits the image to the target."""

    name = "native_resize"

    def settings(self, resolution: Resolution | None = None) -> dict[str, Any]:
        return {"native": native_rule(self.run), "fit": native.FIT}  # the bucket and resize rules: either re-keys

    def apply(self, pipe, resolution: Resolution) -> None:
        native.check_unchanged(pipe)  # nothing to change: it only refuses a pipeline some method changed

    def drawing_rule(self) -> native.NativeRule:
        return native_rule(self.run)
