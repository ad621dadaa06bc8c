"""Training checkpoints: everything a killed run needs to continue bit for bit, in one checksummed file.

A checkpoint holds the model's parameters and buffers, the optimizer's state, the loss scaler's, every
callback's (schedules, early stopping), the epoch and step counters, the history, the data loader's
shuffling Generator and the Generator of every module that has one (``module.rng``, e.g. Dropout).
Arrays are stored as arrays; everything else as JSON in the file's meta (nested states are split: each
array becomes a named entry and a ``{"__array__": name}`` marker in the JSON). Files are written with
:func:`hpcai.io.save_arrays` (atomic, SHA-256), so a truncated or altered file raises
:class:`hpcai.io.CorruptFileError` instead of resuming from garbage.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from .. import backend, io
from .callbacks import Callback

FORMAT, VERSION = "hpcai-checkpoint", 1


# -- nested state <-> (JSON tree, arrays) -------------------------------------------------------------
def flatten(state, prefix: str, arrays: dict):
    """``state`` as a JSON-able tree; its arrays move into ``arrays`` under names starting with ``prefix``."""
    if backend.is_array(state):
        name = f"{prefix}:{len(arrays)}"
        arrays[name] = backend.to_host(state)
        return {"__array__": name}
    if isinstance(state, np.generic):
        return state.item()
    if isinstance(state, dict):
        if all(isinstance(k, str) for k in state):
            return {k: flatten(v, prefix, arrays) for k, v in state.items()}
        return {"__items__": [[k, flatten(v, prefix, arrays)] for k, v in state.items()]}
    if isinstance(state, tuple):
        return {"__tuple__": [flatten(v, prefix, arrays) for v in state]}
    if isinstance(state, list):
        return [flatten(v, prefix, arrays) for v in state]
    if state is None or isinstance(state, (bool, int, float, str)):
        return state
    raise TypeError(f"checkpoint: cannot store a {type(state).__name__} in a state dict (at {prefix!r})")


def unflatten(tree, arrays: dict):
    """The inverse of :func:`flatten`."""
    if isinstance(tree, dict):
        if "__array__" in tree:
            return arrays[tree["__array__"]]
        if "__items__" in tree:
            return {k: unflatten(v, arrays) for k, v in tree["__items__"]}
        if "__tuple__" in tree:
            return tuple(unflatten(v, arrays) for v in tree["__tuple__"])
        return {k: unflatten(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unflatten(v, arrays) for v in tree]
    return tree


def _module_rngs(model) -> dict:
    """{module name: Generator} for every sub-module holding a numpy Generator as ``rng``."""
    return {name or "<root>": m.__dict__["rng"] for name, m in model.named_modules()
            if isinstance(m.__dict__.get("rng"), np.random.Generator)}


# -- save / load ---------------------------------------------------------------------------------------
def save_checkpoint(path, loop) -> None:
    """Write the state of the fit ``loop`` to ``path`` (.npz or .h5), atomically and checksummed."""
    arrays = {f"model:{k}": v for k, v in loop.model.state_dict().items()}
    meta = {
        "format": FORMAT, "version": VERSION, "model": type(loop.model).__name__, "precision": loop.policy.name,
        "epoch": loop.epoch, "step": loop.step, "skipped_steps": loop.skipped_steps,
        "optimizer": flatten(loop.optimizer.state_dict(), "optimizer", arrays),
        "scaler": loop.scaler.state_dict() if loop.scaler is not None else None,
        "loader": flatten(loop.loader.state_dict(), "loader", arrays),
        "module_rngs": {k: flatten(g.bit_generator.state, "rng", arrays) for k, g in _module_rngs(loop.model).items()},
        "callbacks": [{"class": type(cb).__name__, "state": flatten(cb.state_dict(), f"callback{i}", arrays)}
                      for i, cb in enumerate(loop.callbacks)],
        "history": loop.history.state_dict(),
    }
    io.save_arrays(path, arrays, meta)


def read_checkpoint(path) -> tuple[dict, dict]:
    """``(arrays, meta)`` of a checkpoint file, checksum verified; CorruptFileError if damaged."""
    arrays, meta = io.load_arrays(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)}: not an hpcai training checkpoint (meta format "
                         f"{meta.get('format')!r}); model files written by Module.save load with Module.load")
    return arrays, meta


def load_checkpoint(path, loop) -> None:
    """Restore the fit ``loop`` from ``path`` so that training continues exactly where it stopped.

    A checkpoint whose meta lacks an entry or has one of the wrong shape (a crafted file can carry a valid
    checksum) raises :class:`hpcai.io.CorruptFileError`; one written for another model or optimizer a ValueError.
    """
    path = os.fspath(path)
    arrays, meta = read_checkpoint(path)
    try:
        _restore(path, loop, arrays, meta)
    except (KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
        raise io.CorruptFileError(f"{path}: malformed checkpoint meta ({type(e).__name__}: {e})") from None


def _restore(path, loop, arrays, meta) -> None:
    if meta["precision"] != loop.policy.name:
        raise ValueError(f"{path}: the checkpoint was trained with precision {meta['precision']!r}, this run "
                         f"uses {loop.policy.name!r}")
    model_state = {k[len("model:"):]: v for k, v in arrays.items() if k.startswith("model:")}
    try:
        loop.model.load_state_dict(model_state)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: the checkpoint does not match the model ({meta['model']} saved, "
                         f"{type(loop.model).__name__} given): {e}") from None
    try:
        loop.optimizer.load_state_dict(unflatten(meta["optimizer"], arrays))
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise ValueError(f"{path}: the optimizer state does not match this run's optimizer "
                         f"({type(loop.optimizer).__name__}): {e}") from None
    if (meta["scaler"] is None) != (loop.scaler is None):
        raise ValueError(f"{path}: the checkpoint was written " + ("without" if meta["scaler"] is None else "with")
                         + " a loss scaler, this run " + ("has one" if loop.scaler is not None else "has none"))
    if loop.scaler is not None:
        loop.scaler.load_state_dict(meta["scaler"])
    loop.loader.load_state_dict(unflatten(meta["loader"], arrays))
    rngs = _module_rngs(loop.model)
    if set(rngs) != set(meta["module_rngs"]):
        raise ValueError(f"{path}: the checkpoint has random generators for modules {sorted(meta['module_rngs'])}, "
                         f"the model for {sorted(rngs)}")
    for name, state in meta["module_rngs"].items():
        rngs[name].bit_generator.state = unflatten(state, arrays)
    _restore_callbacks(loop.callbacks, meta["callbacks"], arrays, path)
    loop.epoch, loop.step, loop.skipped_steps = int(meta["epoch"]), int(meta["step"]), int(meta["skipped_steps"])
    loop.history.load_state_dict(meta["history"])


def _holds_something(state) -> bool:
    """Whether a callback's state records anything: ``{"best": None}`` (a checkpoint that never compared)
    does not, and losing it warrants no warning."""
    if isinstance(state, dict):
        return any(_holds_something(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return any(_holds_something(v) for v in state)
    return state is not None


def _restore_callbacks(callbacks, saved, arrays, path) -> None:
    """Give each saved callback state to the next unused callback of the same class."""
    unused = list(callbacks)
    for entry in saved:
        state = unflatten(entry["state"], arrays)
        match = next((cb for cb in unused if type(cb).__name__ == entry["class"]), None)
        if match is None:
            if _holds_something(state):
                warnings.warn(f"{path}: no {entry['class']} callback in this run to restore its state into",
                              stacklevel=3)
            continue
        unused.remove(match)
        match.load_state_dict(state)


class ModelCheckpoint(Callback):
    """Save a full training checkpoint every ``every`` epochs (rank 0 only), last among the callbacks.

    ``path`` may hold ``{epoch}`` (and logged names, e.g. ``{val_loss:.3f}``). With ``monitor`` and
    ``save_best_only`` only improvements are saved. ``resume=True`` makes fit continue from ``path``
    when the file exists (a fixed path is needed then).
    """

    order = 100

    def __init__(self, path, monitor: str | None = None, mode: str = "auto", save_best_only: bool = False,
                 every: int = 1, resume: bool = False):
        self.path = os.fspath(path)
        if resume and "{" in self.path:
            raise ValueError(f"ModelCheckpoint: resume=True needs a fixed path, got the pattern {self.path!r}")
        if save_best_only and monitor is None:
            raise ValueError("ModelCheckpoint: save_best_only needs a monitor (e.g. monitor='val_loss')")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode: expected 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.save_best_only, self.every, self.resume = monitor, save_best_only, int(every), resume
        self.mode = mode if mode != "auto" else ("max" if monitor and ("acc" in monitor or "top" in monitor)
                                                 else "min")
        self.best, self.last_saved = None, None

    def resume_path(self):
        return self.path if self.resume and os.path.exists(self.path) else None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every and epoch + 1 != self.loop.epochs:
            return
        if self.monitor is not None:
            if logs.get(self.monitor) is None:
                raise ValueError(f"ModelCheckpoint: monitor {self.monitor!r} is not logged; available: "
                                 f"{sorted(logs)}")
            value = float(logs[self.monitor])
            better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
            if better:
                self.best = value
            elif self.save_best_only:
                return
        if self.loop.rank == 0:
            path = self.path.format(epoch=epoch + 1, **logs)
            save_checkpoint(path, self.loop)
            self.last_saved = path

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
