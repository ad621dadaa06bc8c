"""Metrics: ``fn(pred, target) -> float``, the mean over a batch, on raw arrays (numpy or cupy).

fit and evaluate weight each batch's value by its number of samples, so the epoch value is the exact
mean over the data. Names: "accuracy", "top<k>" (e.g. "top5"), "mae", "mse"; any callable also works.
"""
from __future__ import annotations

import re

from .. import backend


def _check_classes(pred, target, name):
    if pred.ndim < 2 or target.shape != pred.shape[:1] + pred.shape[2:]:
        raise ValueError(f"{name}: expected scores (N, K, ...) and class indices (N, ...), got shapes "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")


def accuracy(pred, target) -> float:
    """Fraction of samples whose highest score is the target class."""
    _check_classes(pred, target, "accuracy")
    return float((pred.argmax(axis=1) == target).mean())


def top_k_accuracy(k: int):
    """The metric: fraction of samples whose target is among the ``k`` highest scores."""
    def top_k(pred, target) -> float:
        _check_classes(pred, target, f"top{k}")
        xp = backend.get_array_module(pred)
        kk = min(k, pred.shape[1])
        best = xp.argpartition(-pred, kk - 1, axis=1)[:, :kk]
        return float((best == xp.expand_dims(target, 1)).any(axis=1).mean())
    top_k.__name__ = f"top{k}"
    return top_k


def _check_same_shape(pred, target, name):
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred has shape {tuple(pred.shape)} but target has {tuple(target.shape)}")


def mae(pred, target) -> float:
    """Mean absolute error."""
    _check_same_shape(pred, target, "mae")
    xp = backend.get_array_module(pred)
    return float(xp.abs(pred - target).mean())


def mse(pred, target) -> float:
    """Mean squared error."""
    _check_same_shape(pred, target, "mse")
    return float(((pred - target) ** 2).mean())


METRICS = {"accuracy": accuracy, "mae": mae, "mse": mse}


def get_metric(metric):
    """``(name, fn)`` for a metric name or callable; unknown names raise a ValueError listing the known ones."""
    if callable(metric):
        return getattr(metric, "__name__", type(metric).__name__), metric
    if isinstance(metric, str):
        if metric in METRICS:
            return metric, METRICS[metric]
        m = re.fullmatch(r"top[-_]?(\d+)(?:_accuracy)?", metric)
        if m and int(m.group(1)) >= 1:
            return metric, top_k_accuracy(int(m.group(1)))
    raise ValueError(f"metric: expected a callable or one of {sorted(METRICS)} or 'top<k>' (e.g. 'top5'), "
                     f"got {metric!r}")
