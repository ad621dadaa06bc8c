"""Optimizers, learning-rate schedules and gradient clipping, with PyTorch's names and formulas.

``OPTIMIZERS`` maps the short names the UI menus show to constructors; :func:`get_optimizer` builds one
by name. Every entry is compared with ``torch.optim`` (or the paper's formula) by the tests.
"""
from __future__ import annotations

from functools import partial

from .adagrad import Adagrad
from .adam import Adam, AdamW
from .clip import clip_grad_norm_, clip_grad_value_
from .lamb import LAMB
from .lars import LARS
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .schedule import SCHEDULES, CosineAnnealingLR, ExponentialLR, LinearWarmup, LRScheduler, StepLR
from .sgd import SGD

OPTIMIZERS = {
    "sgd": SGD,
    "momentum": partial(SGD, momentum=0.9),
    "nesterov": partial(SGD, momentum=0.9, nesterov=True),
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
    "adagrad": Adagrad,
    "lars": LARS,
    "lamb": LAMB,
}


def get_optimizer(name: str, params, **kwargs) -> Optimizer:
    """The optimizer registered as ``name`` over ``params``; ``kwargs`` override its defaults (e.g. ``lr``)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"name: expected one of {sorted(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name](params, **kwargs)


__all__ = ["OPTIMIZERS", "SCHEDULES", "LAMB", "LARS", "SGD", "Adagrad", "Adam", "AdamW", "CosineAnnealingLR",
           "ExponentialLR", "LRScheduler", "LinearWarmup", "Optimizer", "RMSprop", "StepLR", "clip_grad_norm_",
           "clip_grad_value_", "get_optimizer"]
