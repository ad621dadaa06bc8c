"""Applications: each a Config dataclass and ``run(config) -> Result``, listed in :data:`APPS`.

The control panel and the CLI read :data:`APPS`, so a new application appears there by registering here.
"""
import dataclasses
from typing import Callable

from . import climate_sr


@dataclasses.dataclass(frozen=True)
class App:
    name: str
    config: type
    run: Callable
    description: str


APPS = {"climate_sr": App("climate_sr", climate_sr.Config, climate_sr.run,
                          "Shallow-water jet on the sphere, DCT-compressed in situ, restored by a CNN")}

__all__ = ["APPS", "App"]
