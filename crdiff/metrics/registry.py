"""Build metrics by name: the real scorers, or `tiny` stand-ins of the same classes (offline)."""

from __future__ import annotations

from crdiff.metrics.base import ImageMetric

METRICS = ("fid", "kid", "clip", "image_reward", "pickscore", "aesthetic", "digit_fid", "digit_accuracy",
           "scene_fd", "scene_composition", "scene_count_error", "scene_duplication", "scene_missing")
REFERENCE_METRICS = ("fid", "kid", "digit_fid", "scene_fd")  # distribution metrics: they need real reference images
MINIATURE_PREFIXES = ("digit_", "scene_")  # the miniatures' metrics: the shipped models, tiny or not
BINARY_METRICS = ("digit_accuracy", "scene_composition", "scene_duplication", "scene_missing")  # per-image 0 / 1 outcomes: paired gains also get McNemar's exact test


def metric_class(name: str) -> type[ImageMetric]:
    from crdiff.metrics import clip, digits, fid, scenes
    from crdiff.metrics.image_reward import ImageReward

    classes = {"fid": fid.FID, "kid": fid.KID, "clip": clip.CLIPScore, "image_reward": ImageReward,
               "pickscore": clip.PickScore, "aesthetic": clip.Aesthetic, "digit_fid": digits.DigitFID,
               "digit_accuracy": digits.DigitAccuracy, **scenes.CLASSES}
    if name not in classes:
        raise ValueError(f"unknown metric {name!r}; valid choices: {list(METRICS)}")
    return classes[name]


def metric_needs(name: str, tiny: bool = False, **options) -> list:
    """What `build_metric(name, tiny, **options)` loads from disk: nothing for the tiny stand-ins
    (built from config), except the miniatures' metrics, which read their shipped models either way."""
    if tiny and not name.startswith(MINIATURE_PREFIXES):
        return []
    return metric_class(name).needs(**options)


def build_metric(name: str, tiny: bool = False, device: str = "cpu", **options) -> ImageMetric:
    """A fresh metric `name`; `tiny=True` injects random-weight stand-ins of the real model classes."""
    from crdiff.metrics import clip, fid
    from crdiff.metrics import tiny as stand_ins

    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; valid choices: {list(METRICS)}")
    if name.startswith("digit_"):  # the miniature's metrics: the shipped classifier, tiny or not
        from crdiff.metrics.digits import DigitAccuracy, DigitFID

        return (DigitFID if name == "digit_fid" else DigitAccuracy)(device=device)
    if name.startswith("scene_"):
        return metric_class(name)(device=device)
    if name in ("fid", "kid"):
        cls = fid.FID if name == "fid" else fid.KID
        if tiny:
            return cls(feature=stand_ins.TinyFeatures(), feature_name="tiny64", device=device, **options)
        return cls(device=device, **options)
    if name == "clip":
        if tiny:
            model, preprocess, tokenizer = stand_ins.tiny_open_clip()
            return clip.CLIPScore(model, preprocess, tokenizer, device=device)
        return clip.CLIPScore(device=device, **options)
    if name == "image_reward":
        from crdiff.metrics.image_reward import ImageReward

        if tiny:
            model, tokenizer = stand_ins.tiny_image_reward()
            return ImageReward(model, tokenizer, image_size=32, device=device)
        return ImageReward(device=device)
    if name == "aesthetic":
        return clip.Aesthetic(*stand_ins.tiny_aesthetic(), device=device) if tiny else clip.Aesthetic(device=device)
    if tiny:
        return clip.PickScore(*stand_ins.tiny_pickscore(), device=device)
    return clip.PickScore(device=device, **options)
