"""Applications: each a Config dataclass and ``run(config, verbose, comm, progress) -> Result`` or a workflow,
listed in :data:`APPS`.

The control panel, the CLI, ``run_app``, workflows and the tests read :data:`APPS`, so a new application
appears everywhere by registering here -- or, from another package, through the ``hpcai.apps`` entry-point
group: an entry ``name = "package.module:APP"`` naming an :class:`App` (see :func:`load_entry_points`).
A Config field's ``metadata["choices"]`` lists its allowed values (a dropdown in the panel, choices in the CLI);
both read the fields through :func:`config_fields`, which types them and parses their text.
"""
import dataclasses
import importlib.metadata
import sys
from typing import Callable

from . import alloy_surrogate, cbed, climate_sr, digits
from .fields import FieldSpec, config_fields
from .progress import Progress, Stopped
from .result import Result


@dataclasses.dataclass(frozen=True)
class App:
    """An application: its Config, its run, and the network it trains.

    ``build_model(config)`` returns that network and ``example_batch(config, n, rng)`` ``n`` inputs it takes,
    so the tests gradient-check every application's model end to end. ``workflow(config, ranks, verbose)``,
    for an application whose ranks play different parts, returns (a workflow control dict, the name of the
    module whose value is the run's Result): on several ranks the application runs as that workflow, made on every
    rank and run as rank 0 made it (:func:`hpcai.runner.run_on_ranks`). An
    application that *is* its workflow, on one rank too, has ``run=None``; ``hpcai.runner.run_app`` runs it.
    ``metric_info`` says what each metric of its Result is, ``{name: (group, unit)}`` (group: "accuracy",
    "error", "storage", "timing", ...; unit "" for a plain number), so results can be shown grouped with
    units; a metric it does not name is shown as it is. ``key_metrics`` are those a run history shows first.
    """

    name: str
    config: type
    run: Callable | None
    description: str
    build_model: Callable
    example_batch: Callable
    workflow: Callable | None = None
    metric_info: dict = dataclasses.field(default_factory=dict, hash=False)
    key_metrics: tuple = ()  # the metrics a run history shows first (hpcai.history); default: its first numbers


APPS = {
    "digits": App("digits", digits.Config, digits.run,
                  "Handwritten digits: any precision, optimizer and parallel strategy, in seconds",
                  digits.build_model, digits.example_batch, metric_info=digits.METRICS,
                  key_metrics=("test_accuracy", "test_loss")),
    "climate_sr": App("climate_sr", climate_sr.Config, climate_sr.run,
                      "Shallow-water jet on the sphere, DCT-compressed in situ, restored by a CNN",
                      climate_sr.build_model, climate_sr.example_batch, climate_sr.workflow,
                      metric_info=climate_sr.METRICS,
                      key_metrics=("compression_ratio_total", "l2_restored", "l2_sz3", "max_restored", "max_sz3")),
    "alloy_surrogate": App("alloy_surrogate", alloy_surrogate.Config, None,
                           "Alloy order-disorder: a neural surrogate learned actively inside Monte Carlo, and T_c",
                           alloy_surrogate.build_model, alloy_surrogate.example_batch, alloy_surrogate.workflow,
                           metric_info=alloy_surrogate.METRICS, key_metrics=("tc", "tc_error", "reference_calls")),
    "cbed": App("cbed", cbed.Config, None,
                "Electron diffraction (CBED) of random crystals, simulated in parallel; a CNN reads the symmetry",
                cbed.build_model, cbed.example_batch, cbed.workflow, metric_info=cbed.METRICS,
                key_metrics=("test_accuracy", "test_top5")),
}


ENTRY_POINT_GROUP = "hpcai.apps"


def load_entry_points(apps: dict) -> dict:
    """Add the applications that installed packages declare in the ``hpcai.apps`` entry-point group to ``apps``.

    Each entry point names an :class:`App`; its name must be the entry's name and must not take a built-in
    application's. A package that fails to load is reported on stderr and left out, so one broken plugin
    never stops hpcai from starting.
    """
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            if entry.name in apps:
                raise ValueError(f"{entry.name!r} is taken by {apps[entry.name].config.__module__}")
            app = entry.load()
            if not isinstance(app, App):
                raise TypeError(f"expected an hpcai.apps.App, got {type(app).__name__}")
            if app.name != entry.name:
                raise ValueError(f"the App is named {app.name!r}, the entry point {entry.name!r}")
        except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not fatal
            sys.stderr.write(f"hpcai: application {entry.name!r} from entry point {entry.value!r} "
                             f"({ENTRY_POINT_GROUP}) left out: {type(exc).__name__}: {exc}\n")
            continue
        apps[entry.name] = app
    return apps


load_entry_points(APPS)


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


__all__ = ["APPS", "App", "ENTRY_POINT_GROUP", "load_entry_points", "FieldSpec", "Progress", "Result", "Stopped",
           "config_fields", "make_config"]
