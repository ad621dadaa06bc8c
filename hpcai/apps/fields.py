"""A Config field as a user interface sees it: its kind, whether it may be None, its choices or bounds, its help,
text parsed to it, and the check of a value.

The CLI (one ``--option`` per field), the control panel (one input per field) and every application's
``Config.validate`` read an application's Config through :func:`config_fields`, so a field is typed, parsed,
documented and checked the same way everywhere. A field declares what it accepts in its metadata::

    epochs: int = dataclasses.field(default=20, metadata={"low": 1, "high": 10_000, "help": "passes over the data"})

``choices`` (allowed values), ``low``/``high`` (inclusive bounds; ``low_open``/``high_open``: exclusive, e.g. a
learning rate > 0), ``path`` (a file or folder name; ``os.PathLike`` accepted) and ``help``. :func:`check_fields` checks
every field of a Config against that; ``validate`` adds the checks that involve several fields.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing

from .. import checks

KINDS = {"int": int, "float": float, "bool": bool, "str": str}
NONE_WORDS = ("", "auto", "None")       # what a text input says for None, in an optional field
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One Config field: ``kind`` is int, float, bool or str; ``optional``: None is allowed; ``low``/``high``:
    bounds of a number (``low_open``: low excluded); ``path``: a file or folder name."""

    name: str
    kind: type
    optional: bool
    choices: tuple | None
    default: object
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    path: bool = False
    doc: str = ""

    @property
    def help(self) -> str:
        """The field's help with what it accepts and its default, e.g. ``"passes over the data (1 to 10000;
        default 20)"``: what the CLI and the panel show."""
        excluded = " (excluded)"
        accepts = ([f"one of {', '.join(map(str, self.choices))}"] if self.choices else
                   [f"{'>' if self.low_open else '>='} {self.low:g}" if self.high is None else
                    f"{self.low:g}{excluded * self.low_open} to {self.high:g}{excluded * self.high_open}"]
                   if self.low is not None else [])
        accepts += ["empty/auto for None"] if self.optional else []
        return f"{self.doc} ({'; '.join(accepts + [f'default {self.default}'])})".strip()

    def check(self, value):
        """``value`` if this field accepts it, else a ValueError (or TypeError) naming the field."""
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{self.name}: expected {self.kind.__name__}, got None")
        if self.choices is not None:
            return checks.choice(self.name, value, self.choices)
        if self.path:
            return checks.path(self.name, value)
        if self.kind is bool:
            return checks.flag(self.name, value)
        if self.kind is str:
            return checks.text(self.name, value)
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        if self.kind is int:
            return checks.integer(self.name, value, self.low, self.high)
        return checks.number(self.name, value, low, high, low_open=self.low_open, high_open=self.high_open)

    def parse(self, text: str):
        """``text`` (from a command line or a text box) as this field's value; a ValueError naming the field."""
        stripped = text.strip()
        if self.optional and stripped in NONE_WORDS:
            return None
        if self.kind is str:
            return stripped if self.optional else text
        if self.kind is bool:
            if stripped.lower() in TRUE_WORDS + FALSE_WORDS:
                return stripped.lower() in TRUE_WORDS
            raise ValueError(f"{self.name}: expected true or false{self._or_auto}, got {text!r}")
        try:
            return self.kind(stripped)
        except ValueError:
            raise ValueError(f"{self.name}: expected {self.kind.__name__}{self._or_auto}, got {stripped!r}") from None

    @property
    def _or_auto(self) -> str:
        return " or empty (auto)" if self.optional else ""


def _kind(annotation) -> tuple[type, bool]:
    """(kind, optional) of a field's annotation: ``"float | None"`` (a string, under postponed annotations)
    or the type itself; anything but int/float/bool is read as str."""
    if isinstance(annotation, str):
        names = [part.strip() for part in annotation.split("|")]
    else:
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        names = [getattr(a, "__name__", str(a)) for a in (typing.get_args(annotation) if union else (annotation,))]
    kinds = [n for n in names if n not in ("None", "NoneType")]
    return (KINDS.get(kinds[0], str) if len(kinds) == 1 else str), len(kinds) < len(names)


def config_fields(config_cls) -> list[FieldSpec]:
    """The fields of Config dataclass ``config_cls``, in order; choices from ``metadata["choices"]``."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config_cls: expected a Config dataclass, got {config_cls!r}")
    specs = []
    for f in dataclasses.fields(config_cls):
        kind, optional = _kind(f.type)
        default = (f.default if f.default is not dataclasses.MISSING else
                   f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        meta = f.metadata
        choices = meta.get("choices")
        specs.append(FieldSpec(f.name, kind, optional, tuple(choices) if choices is not None else None, default,
                               meta.get("low"), meta.get("high"), bool(meta.get("low_open")),
                               bool(meta.get("high_open")), bool(meta.get("path")),
                               meta.get("help", "")))
    return specs


def check_fields(config):
    """``config`` if every field holds what its declaration accepts (type, None only where optional, choices,
    bounds), else a ValueError or TypeError naming the first field that does not."""
    for spec in config_fields(type(config)):
        spec.check(getattr(config, spec.name))
    return config
