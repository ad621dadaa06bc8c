"""What every application's ``run`` returns."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Result:
    """What a run produced: numbers, arrays for plots, and the files written (the same on every rank).

    ``metrics``: JSON-able numbers and names; ``arrays``: numpy arrays behind the figures; ``figures``:
    {name: PNG path}; ``files``: {name: path} of everything else written.
    """

    metrics: dict
    arrays: dict
    figures: dict = dataclasses.field(default_factory=dict)
    files: dict = dataclasses.field(default_factory=dict)
