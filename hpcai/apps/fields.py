"""A Config field as a user interface sees it: its kind, whether it may be None, its choices, text parsed to it.

The CLI (one ``--option`` per field) and the control panel (one input per field) both read an application's
Config through :func:`config_fields`, so a field is typed and parsed the same way in both.
"""
from __future__ import annotations

import dataclasses
import types
import typing

KINDS = {"int": int, "float": float, "bool": bool, "str": str}
NONE_WORDS = ("", "auto", "None")       # what a text input says for None, in an optional field
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One Config field: ``kind`` is int, float, bool or str; ``optional``: None is allowed."""

    name: str
    kind: type
    optional: bool
    choices: tuple | None
    default: object

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
        choices = f.metadata.get("choices")
        specs.append(FieldSpec(f.name, kind, optional, tuple(choices) if choices is not None else None, default))
    return specs
