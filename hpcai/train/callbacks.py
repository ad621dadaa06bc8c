"""Callbacks: code that fit runs at fixed points of training, plus the History that fit returns.

A callback sees the running fit through ``self.loop`` (model, optimizer, scaler, loader, history,
counters, rank). Hooks run in ascending ``order`` (stable): schedules (-10) step before anything
reports, checkpoints (100) save last, so they capture every other callback's updated state. Setting
``self.stop_training = True`` ends training after the current batch. Only rank 0 prints, writes logs
or plots; every rank keeps the same state.
"""
from __future__ import annotations

import csv
import io as _stdio
import math
import os
import sys
import time

from .. import checks, io


class History(dict):
    """Per-epoch values by name (``loss``, metrics, ``val_*``, ``lr``, ``time``): ``history["loss"][-1]``.

    ``epoch`` lists the 1-based epoch numbers the rows belong to.
    """

    def __init__(self):
        super().__init__()
        self.epoch = []

    def append(self, epoch: int, logs: dict) -> None:
        for name in logs.keys() - self.keys():
            self[name] = [None] * len(self.epoch)
        self.epoch.append(int(epoch))
        for name, values in self.items():
            values.append(logs.get(name))

    def rows(self) -> list:
        """One dict per epoch: ``{"epoch": e, name: value, ...}``."""
        return [{"epoch": e, **{k: v[i] for k, v in self.items()}} for i, e in enumerate(self.epoch)]

    def state_dict(self) -> dict:
        return {"epoch": list(self.epoch), "values": dict(self)}

    def load_state_dict(self, state: dict) -> None:
        self.clear()
        self.epoch = [int(e) for e in state["epoch"]]
        self.update({k: list(v) for k, v in state["values"].items()})

    def __repr__(self) -> str:
        return f"History(epochs={self.epoch}, {dict.__repr__(self)})"


class Callback:
    """Base class: override any hook; ``self.loop`` is set before ``on_train_begin``."""

    order = 0
    loop = None
    stop_training = False

    def set_loop(self, loop) -> None:
        self.loop = loop

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch: int, logs=None):
        pass

    def on_batch_end(self, step: int, logs=None):
        pass

    def on_epoch_end(self, epoch: int, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def state_dict(self) -> dict:
        """State a checkpoint must carry for a resumed run to behave the same (arrays and JSON-able values)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def resume_path(self):
        """A checkpoint fit should resume from, or None."""
        return None


def _shown(logs) -> dict:
    """The values a progress line shows: not lr/time, and skipped steps only once there are some."""
    return {k: v for k, v in logs.items() if k not in ("lr", "time") and v is not None
            and not (k == "skipped_steps" and not v)}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class ProgressBar(Callback):
    """Per-step progress with loss, metrics and ms/step.

    ``mode``: "tqdm" (tqdm.auto: a widget bar in notebooks, a text bar in terminals), "plain" (one line
    per epoch, or every ``every`` steps: what batch-job logs want), or "auto" (tqdm in a notebook or a
    terminal, plain otherwise). verbose=0 prints nothing, verbose=2 one plain line per epoch.
    """

    def __init__(self, verbose: int = 1, mode: str = "auto", every: int | None = None, file=None):
        if mode not in ("auto", "tqdm", "plain"):
            raise ValueError(f"mode: expected 'auto', 'tqdm' or 'plain', got {mode!r}")
        self.verbose, self.mode, self.every, self.file = int(verbose), mode, every, file
        self._bar = None

    def _active(self) -> bool:
        return self.verbose > 0 and self.loop.rank == 0

    def _use_tqdm(self, out) -> bool:
        if self.verbose != 1 or self.mode == "plain":
            return False
        return self.mode == "tqdm" or _in_notebook() or (hasattr(out, "isatty") and out.isatty())

    def _line(self, epoch, step, logs) -> str:
        ms = 1000 * (time.perf_counter() - self._t0) / max(step, 1)
        parts = [f"epoch {epoch + 1}/{self.loop.epochs}", f"{step}/{self._steps}"]
        parts += [f"{k} {_fmt(v)}" for k, v in _shown(logs).items()]
        return " - ".join(parts + [f"{ms:.1f} ms/step"])

    def on_epoch_begin(self, epoch, logs=None):
        if not self._active():
            return
        out = self.file or sys.stdout
        self._t0, self._steps, self._out = time.perf_counter(), len(self.loop.loader), out
        if self._use_tqdm(out):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                raise ImportError("ProgressBar needs tqdm: pip install 'hpcai[notebook]' (or tqdm)") from None
            self._bar = tqdm(total=self._steps, desc=f"epoch {epoch + 1}/{self.loop.epochs}", file=out,
                             leave=True, dynamic_ncols=True)

    def on_batch_end(self, step, logs=None):
        if not self._active():
            return
        if self._bar is not None:
            ms = 1000 * (time.perf_counter() - self._t0) / (step + 1)
            self._bar.set_postfix_str(" ".join(f"{k} {_fmt(v)}" for k, v in _shown(logs).items())
                                      + f" {ms:.1f} ms/step", refresh=False)
            self._bar.update(1)
        elif self.every and (step + 1) % self.every == 0 and step + 1 < self._steps:
            print(self._line(self.loop.epoch, step + 1, logs), file=self._out, flush=True)

    def on_epoch_end(self, epoch, logs=None):
        if not self._active():
            return
        steps = self.loop.epoch_steps
        if self._bar is not None:
            ms = 1000 * (time.perf_counter() - self._t0) / max(steps, 1)
            self._bar.set_postfix_str(" ".join(f"{k} {_fmt(v)}" for k, v in _shown(logs).items())
                                      + f" {ms:.1f} ms/step")
            self._bar.close()
            self._bar = None
        else:
            print(self._line(epoch, steps, logs), file=self._out, flush=True)

    def on_train_end(self, logs=None):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class CSVLogger(Callback):
    """One CSV row per epoch (``epoch`` then the logged values), written on rank 0.

    By default the whole file is rewritten atomically from the history each epoch (a resumed run keeps its
    earlier rows); ``append=True`` appends a row per epoch to an existing file instead, keeping its header.
    A resumed run first drops the file's last rows of the epochs it redoes (written after the checkpoint it
    continues from), so every epoch appears once; a fresh run's rows follow the earlier runs'.
    """

    def __init__(self, path, append: bool = False, separator: str = ","):
        self.path, self.append, self.separator = os.fspath(path), checks.flag("append", append), separator
        self._trimmed = False

    def on_train_begin(self, logs=None):
        self._trimmed = False

    def on_epoch_end(self, epoch, logs=None):
        if self.loop.rank != 0:
            return
        if self.append:
            self._append_row({"epoch": epoch + 1, **logs})
            return
        rows = self.loop.history.rows()
        buf = _stdio.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["epoch", *self.loop.history.keys()], delimiter=self.separator,
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                f.write(buf.getvalue())
        io.atomic_write(self.path, write)

    def _append_row(self, row):
        header = None
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, newline="") as f:
                lines = list(csv.reader(f, delimiter=self.separator))
            header = lines[0]
            if not self._trimmed and row["epoch"] > 1 and "epoch" in header:
                at, kept = header.index("epoch"), lines[1:]
                while kept and len(kept[-1]) > at and kept[-1][at].isdigit() and int(kept[-1][at]) >= row["epoch"]:
                    kept.pop()
                if len(kept) < len(lines) - 1:
                    buf = _stdio.StringIO()
                    csv.writer(buf, delimiter=self.separator, lineterminator="\n").writerows([header, *kept])
                    text = buf.getvalue()

                    def write(tmp):
                        with open(tmp, "w", newline="") as f:
                            f.write(text)
                    io.atomic_write(self.path, write)
        self._trimmed = True
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header or list(row), delimiter=self.separator,
                                    lineterminator="\n", extrasaction="ignore")
            if header is None:
                writer.writeheader()
            writer.writerow({k: _cell(v) for k, v in row.items()})
            f.flush()
            os.fsync(f.fileno())


def _cell(value):
    return "" if value is None else repr(value) if isinstance(value, float) else value


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    ``mode``: "min", "max", or "auto" (max for names containing "acc" or "top", else min). With
    ``restore_best`` the model gets the weights of its best epoch back when training ends.
    """

    order = 50

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, mode: str = "auto",
                 restore_best: bool = False):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode: expected 'auto', 'min' or 'max', got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience: expected a non-negative integer, got {patience!r}")
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, patience, abs(min_delta), restore_best
        self.mode = mode if mode != "auto" else ("max" if ("acc" in monitor or "top" in monitor) else "min")
        self._reset()

    def _reset(self):
        self.best, self.wait, self.best_epoch, self.stopped_epoch = None, 0, None, None
        self.best_state, self.stop_training = None, False

    def on_train_begin(self, logs=None):
        self._reset()

    def _improved(self, value) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        if logs.get(self.monitor) is None:
            raise ValueError(f"EarlyStopping: monitor {self.monitor!r} is not logged; available: {sorted(logs)}")
        value = float(logs[self.monitor])
        if math.isfinite(value) and self._improved(value):
            self.best, self.wait, self.best_epoch = value, 0, epoch + 1
            if self.restore_best:
                self.best_state = self.loop.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stop_training, self.stopped_epoch = True, epoch + 1

    def on_train_end(self, logs=None):
        if self.restore_best and self.best_state is not None:
            self.loop.model.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        state = {"best": self.best, "wait": self.wait, "best_epoch": self.best_epoch}
        if self.best_state is not None:
            state["best_state"] = dict(self.best_state)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait, self.best_epoch = state["best"], state["wait"], state["best_epoch"]
        self.best_state = state.get("best_state")


class LRScheduler(Callback):
    """Step a learning-rate schedule (``schedule.step()``) after every epoch or, with ``per="batch"``, every step."""

    order = -10

    def __init__(self, schedule, per: str = "epoch"):
        if per not in ("epoch", "batch"):
            raise ValueError(f"per: expected 'epoch' or 'batch', got {per!r}")
        if not callable(getattr(schedule, "step", None)):
            raise TypeError(f"schedule: expected an object with step(), got {type(schedule).__name__}")
        self.schedule, self.per = schedule, per

    def on_batch_end(self, step, logs=None):
        if self.per == "batch":
            self.schedule.step()

    def on_epoch_end(self, epoch, logs=None):
        if self.per == "epoch":
            self.schedule.step()

    def state_dict(self) -> dict:
        return self.schedule.state_dict() if hasattr(self.schedule, "state_dict") else {}

    def load_state_dict(self, state: dict) -> None:
        if hasattr(self.schedule, "load_state_dict"):
            self.schedule.load_state_dict(state)
