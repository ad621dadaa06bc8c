"""What a study searches: one distribution per parameter, derived from an application's Config fields or given.

A field with declared choices becomes a categorical over them (all, or the ones named); a number field becomes
a range the user narrows -- ``(low, high)``, ``(low, high, "log")`` -- inside the bounds the field declares
(``metadata={"low": ..., "high": ...}``; those bounds themselves when the user gives none, on a log scale where
the field's metadata says ``"log": True``). Every mistake is named before any engine starts: a parameter that
is not a Config field, an empty range, a range outside the field's bounds, a choice the field does not allow. The distributions
are plain dataclasses; only :func:`suggest` talks to Optuna, on the process that holds the study.
"""
from __future__ import annotations

import dataclasses
import math

from .. import checks


@dataclasses.dataclass(frozen=True)
class Float:
    """A real parameter in ``[low, high]``, sampled uniformly or on a log scale (``log=True``: both > 0)."""

    low: float
    high: float
    log: bool = False
    convert = staticmethod(checks.number)  # how an end is checked (Int: checks.integer)
    log_low = math.ulp(0.0)                # the least low end on a log scale

    def check(self, name: str):
        """This range, its ends converted, low < high, and positive on a log scale; a ValueError naming ``name``."""
        low, high = self.convert(f"{name} (low)", self.low), self.convert(f"{name} (high)", self.high)
        if not low < high:
            raise ValueError(f"{name}: expected a range with low < high, got ({self.low!r}, {self.high!r})")
        if self.log and not low >= self.log_low:
            raise ValueError(f"{name}: expected low {'>= 1' if self.log_low == 1 else '> 0'} on a log scale, "
                             f"got {self.low!r}")
        return type(self)(low, high, bool(self.log))


@dataclasses.dataclass(frozen=True)
class Int(Float):
    """An integer parameter in ``[low, high]`` (``log=True``: on a log scale, both >= 1)."""

    convert = staticmethod(checks.integer)
    log_low = 1


@dataclasses.dataclass(frozen=True)
class Categorical:
    """One of ``choices`` (str, int, float, bool or None: what Optuna stores)."""

    choices: tuple

    def check(self, name: str) -> Categorical:
        choices = tuple(self.choices)
        if not choices:
            raise ValueError(f"{name}: expected at least one choice, got []")
        bad = [c for c in choices if c is not None and not isinstance(c, (str, int, float, bool))]
        if bad:
            raise ValueError(f"{name}: expected choices that are str, int, float, bool or None, got {bad[0]!r}")
        if len(set(choices)) != len(choices):
            raise ValueError(f"{name}: expected distinct choices, got {list(choices)}")
        return Categorical(choices)


Distribution = Float | Int | Categorical  # Int is a Float whose ends are integers


def _from_shorthand(name: str, value, kind: type | None) -> Distribution:
    """``value`` as a distribution: one already; a list -> categorical; ``(low, high[, "log"])`` -> a range of the
    field's kind (ints give Int, else Float)."""
    if isinstance(value, (Float, Int, Categorical)):
        return value
    if isinstance(value, list):
        return Categorical(tuple(value))
    if isinstance(value, tuple) and len(value) in (2, 3):
        log = len(value) == 3 and checks.choice(f"{name} (scale)", value[2], ("log", "linear")) == "log"
        integral = kind is int or kind is None and all(isinstance(v, int) and not isinstance(v, bool)
                                                       for v in value[:2])
        return (Int if integral else Float)(value[0], value[1], log)
    raise ValueError(f"{name}: expected a list of choices, (low, high) or (low, high, 'log'), or a "
                     f"Float/Int/Categorical, got {value!r}")


def search_space(params: dict, config_cls=None) -> dict[str, Distribution]:
    """The checked distributions of ``params`` ({name: shorthand or distribution}).

    With ``config_cls`` (an application's Config) every name must be one of its fields; ``None`` for a field
    means "as the field declares": all its choices, or its metadata ``bounds`` (and ``log``).
    """
    if not isinstance(params, dict) or not params:
        raise ValueError(f"params: expected a dict of at least one parameter to search, got {params!r}")
    fields = {f.name: f for f in dataclasses.fields(config_cls)} if config_cls is not None else None
    from ..apps import config_fields
    specs = {s.name: s for s in config_fields(config_cls)} if config_cls is not None else {}
    space = {}
    for name, value in params.items():
        checks.text("params (a parameter's name)", name)
        if fields is not None and name not in fields:
            raise ValueError(f"{name}: not a field of {config_cls.__module__}.{config_cls.__qualname__}; "
                             f"fields: {sorted(fields)}")
        spec = specs.get(name)
        if value is None:
            meta = fields[name].metadata if fields is not None else {}
            if spec is not None and spec.choices is not None:
                value = list(spec.choices)
            elif meta.get("low") is not None and meta.get("high") is not None and not meta.get("low_open"):
                value = (meta["low"], meta["high"], "log" if meta.get("log") else "linear")
            else:
                raise ValueError(f"{name}: a number field needs a range: (low, high) or (low, high, 'log')")
        dist = _from_shorthand(name, value, spec.kind if spec is not None else None).check(name)
        if spec is not None:
            _fits_field(name, dist, spec)
        space[name] = dist
    return space


def _fits_field(name: str, dist: Distribution, spec) -> None:
    """A distribution whose values the field can take: its declared choices, its kind."""
    if isinstance(dist, Categorical):
        if spec.choices is not None:
            bad = [c for c in dist.choices if c not in spec.choices]
            if bad:
                raise ValueError(f"{name}: expected choices among {list(spec.choices)}, got {bad[0]!r}")
        elif spec.kind in (int, float):
            for c in dist.choices:
                if c is None and spec.optional:
                    continue
                checks.number(name, c) if spec.kind is float else checks.integer(name, c)
        return
    if spec.choices is not None or spec.kind not in (int, float):
        raise ValueError(f"{name}: a range fits number fields only; this {spec.kind.__name__} field takes a list "
                         f"of choices")
    if spec.kind is int and type(dist) is Float:
        raise ValueError(f"{name}: expected an integer range for this int field, got ({dist.low!r}, {dist.high!r})")
    if hasattr(spec, "check"):  # the field's own bounds: the range narrows them
        for end in (dist.low, dist.high):
            spec.check(float(end) if spec.kind is float else end)


def suggest(trial, space: dict[str, Distribution]) -> dict:
    """Values for one trial from an Optuna ``trial`` (on the process that holds the study)."""
    values = {}
    for name, dist in space.items():
        if isinstance(dist, Int):
            values[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, Float):
            values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        else:
            values[name] = trial.suggest_categorical(name, list(dist.choices))
    return values


def parse_param(text: str) -> tuple[str, Distribution]:
    """A command-line parameter: ``lr=1e-4:1e-1:log``, ``hidden=16:256``, ``optimizer=adam,sgd`` or ``precision=*``
    (all the field's choices)."""
    name, sep, spec = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--param: expected NAME=LOW:HIGH[:log], NAME=A,B,... or NAME=*, got {text!r}")
    name, spec = name.strip(), spec.strip()
    if spec == "*":
        return name, None
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"{name}: expected LOW:HIGH or LOW:HIGH:log, got {spec!r}")
        bounds = [_number(name, p) for p in parts[:2]]
        return name, (*bounds, *parts[2:])
    return name, [_scalar(p.strip()) for p in spec.split(",") if p.strip()]


def _number(name: str, text: str):
    value = _scalar(text.strip())
    if isinstance(value, (str, bool)) or value is None:
        raise ValueError(f"{name}: expected a number, got {text!r}")
    return value


def _scalar(text: str):
    """A choice as written on a command line: an int, a float, true/false, none, or the text itself."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if kind is int or math.isfinite(value):
            return value
    return text
