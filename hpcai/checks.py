"""Argument checks, in one place: each returns the value converted, or raises naming the argument.

Every public entry point of hpcai checks what it is given with these, so that bad input gets one kind of
message everywhere -- ``"<name>: expected <what>, got <value>"`` -- instead of a traceback from deep
inside numpy, h5py or MPI. They depend on nothing but numpy and sit below every other module.
"""
from __future__ import annotations

import math
import numbers
import os

import numpy as np


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def number(name: str, value, low: float = -math.inf, high: float = math.inf, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float if it is a finite real number in the interval (closed unless told open)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        if high == math.inf and low == -math.inf:
            expected = "a finite number"
        elif high == math.inf:
            expected = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif low == -math.inf:
            expected = f"a finite number {'<' if high_open else '<='} {high:g}"
        else:
            expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name}: expected {expected}, got {_shown(value)}")
    return float(value)


def integer(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int if it is an integer (not a bool, not a float) in ``[low, high]``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low is not None and high is not None:
            expected = f"an integer in [{low}, {high}]"
        elif low is not None:
            expected = f"an integer >= {low}"
        elif high is not None:
            expected = f"an integer <= {high}"
        else:
            expected = "an integer"
        raise ValueError(f"{name}: expected {expected}, got {_shown(value)}")
    return int(value)


def pair(name: str, value, low: int = 1) -> tuple[int, int]:
    """``value`` -- an int or a pair of ints, each >= ``low`` (kernel sizes, strides, paddings) -- as a pair."""
    both = (value, value) if isinstance(value, numbers.Integral) else \
        tuple(value) if isinstance(value, (tuple, list)) else None
    if both is None or len(both) != 2 or any(isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral)
                                             or k < low for k in both):
        what = "positive" if low == 1 else "non-negative" if low == 0 else f">= {low}"
        raise ValueError(f"{name}: expected a {what} int or a pair of them, got {_shown(value)}")
    return int(both[0]), int(both[1])


def choice(name: str, value, choices):
    """``value`` if it is one of ``choices`` (compared with ``==``; strings case-sensitively)."""
    choices = tuple(choices)
    try:
        ok = not isinstance(value, (list, dict, set, np.ndarray)) and value in choices
    except (TypeError, ValueError):  # a value that cannot even be compared
        ok = False
    if not ok:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {_shown(value)}")
    return value


def folders(name: str, value) -> list:
    """``value`` (None, a folder or a list of folders) as absolute folder names, each checked to exist."""
    items = [] if value is None else [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, (str, os.PathLike)) for p in items):
        raise TypeError(f"{name}: expected a folder or a list of folders, got {_shown(value)}")
    found = [os.path.abspath(os.fspath(p)) for p in items]
    missing = [f for f in found if not os.path.isdir(f)]
    if missing:
        raise ValueError(f"{name}: expected existing folders, got {missing[0]!r}")
    return found


def flag(name: str, value) -> bool:
    """``value`` if it is a bool (or numpy bool): a switch given 0, "no" or None is refused, not guessed."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {_shown(value)}")
    return bool(value)


def path(name: str, value) -> str:
    """``value`` as a str if it is a non-empty file or folder name (a str or an ``os.PathLike``)."""
    if not isinstance(value, (str, os.PathLike)) or not isinstance(os.fspath(value), str) or not os.fspath(value):
        raise ValueError(f"{name}: expected a file or folder name (str or path), got {_shown(value)}")
    return os.fspath(value)


def timeout(name: str, value) -> float | None:
    """``None`` (wait for ever) or a number of seconds >= 0, as a float."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{name}: expected None or a number of seconds >= 0, got {_shown(value)}")
    return float(value)


def rank(name: str, value, size: int) -> int:
    """``value`` as an int if it is a rank of a communicator of ``size`` ranks."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or not 0 <= value < size:
        raise ValueError(f"{name}: expected a rank in [0, {size}), got {_shown(value)}")
    return int(value)


def text(name: str, value, *, empty: bool = False) -> str:
    """``value`` if it is a str (non-empty unless ``empty``)."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, got {type(value).__name__}")
    if not value and not empty:
        raise ValueError(f"{name}: expected a non-empty str, got ''")
    return value


def array(name: str, value, *, ndim: int | None = None, shape: tuple | None = None,
          kinds: str = "fiub", finite: bool = False):
    """``value`` if it is a numpy or cupy array of the given rank/shape and dtype kinds (and finite)."""
    if not hasattr(value, "dtype") or not hasattr(value, "shape") or np.ndim(value) is None:
        raise TypeError(f"{name}: expected an array, got {type(value).__name__}")
    if value.dtype.kind not in kinds:
        raise ValueError(f"{name}: expected an array of dtype kind in {kinds!r}, got dtype {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name}: expected an array with {ndim} dimensions, got shape {tuple(value.shape)}")
    if shape is not None and (len(shape) != value.ndim or
                              any(s is not None and s != v for s, v in zip(shape, value.shape))):
        want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected an array of shape {want}, got {tuple(value.shape)}")
    if finite and value.dtype.kind in "fc":
        if not bool((abs(value) < math.inf).all()):  # array methods only: numpy and cupy alike
            raise ValueError(f"{name}: expected finite values, found NaN or infinity")
    return value
