"""Applications: each a Config dataclass and ``run(config, verbose, comm, progress) -> Result``, listed in :data:`APPS`.

The control panel and the CLI read :data:`APPS`, so a new application appears there by registering here.
A Config field's ``metadata["choices"]`` lists its allowed values (a dropdown in the panel, choices in the CLI);
both read the fields through :func:`config_fields`, which types them and parses their text.
"""
import dataclasses
from typing import Callable

from . import climate_sr, digits
from .fields import FieldSpec, config_fields
from .progress import Progress, Stopped
from .result import Result


@dataclasses.dataclass(frozen=True)
class App:
    """An application: its Config, its run, and the network it trains.

    ``build_model(config)`` returns that network and ``example_batch(config, n, rng)`` ``n`` inputs it takes,
    so the tests gradient-check every application's model end to end.
    """

    name: str
    config: type
    run: Callable
    description: str
    build_model: Callable
    example_batch: Callable


APPS = {
    "digits": App("digits", digits.Config, digits.run,
                  "Handwritten digits: any precision, optimizer and parallel strategy, in seconds",
                  digits.build_model, digits.example_batch),
    "climate_sr": App("climate_sr", climate_sr.Config, climate_sr.run,
                      "Shallow-water jet on the sphere, DCT-compressed in situ, restored by a CNN",
                      climate_sr.build_model, climate_sr.example_batch),
}


def make_config(name: str, config=None, **overrides):
    """Application ``name``'s Config from a Config, a dict of fields, or None (defaults), validated."""
    if not isinstance(name, str) or name not in APPS:
        raise ValueError(f"app: expected one of {sorted(APPS)}, got {name!r}")
    cls = APPS[name].config
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted((set(config if isinstance(config, dict) else ()) | set(overrides)) - set(fields))
    if unknown:
        raise ValueError(f"config: {name} has no field(s) {unknown}; fields: {fields}")
    if config is None or isinstance(config, dict):
        config = cls(**(config or {}))
    elif not isinstance(config, cls):
        raise TypeError(f"config: expected a {cls.__module__}.{cls.__qualname__}, a dict or None, "
                        f"got {type(config).__name__}")
    return dataclasses.replace(config, **overrides).validate()


__all__ = ["APPS", "App", "FieldSpec", "Progress", "Result", "Stopped", "config_fields", "make_config"]
