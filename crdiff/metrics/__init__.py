"""Metrics of the paper's tables behind one interface (docs/method.md §4): update(images, prompts) -> compute().

Every score is reduced through torchmetrics' synced states, so values do not depend on rank count
or batch size. Each scorer's model is injectable; `build_metric(name, ...)` loads the real one.
"""

from crdiff.metrics.base import ImageMetric, MetricUnavailableError, MeanScore
from crdiff.metrics.preprocess import PREPROCESSING, preprocess
from crdiff.metrics.registry import METRICS, REFERENCE_METRICS, build_metric, metric_needs

__all__ = ["ImageMetric", "METRICS", "MeanScore", "MetricUnavailableError", "PREPROCESSING", "REFERENCE_METRICS",
           "build_metric", "metric_needs",
           "preprocess"]
