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

__all__ = ["APPS", "App", "FieldSpec", "Progress", "Result", "Stopped", "config_fields"]
