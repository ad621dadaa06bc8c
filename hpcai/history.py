"""Run history: one JSON line per application run, appended to ``history.jsonl`` in the results folder.

Every run that goes through :func:`hpcai.runner.run_app` with a results folder -- its ``history`` argument, else
the Config's ``output_dir`` when set (the panel's and the CLI's runs always; a notebook's when it sets one) --
is recorded there by rank 0, finished, failed or stopped: the application, its configuration, metrics,
timings, output paths and the hpcai version. Read it back to compare runs side by side::

    records = history.load("hpcai-results")
    print(history.compare(records))              # the settings that differ between runs, and key metrics
    print(history.table("hpcai-results", columns=["app", "config.precision", "metrics.test_accuracy"]))

Each record is one ``write`` to a file opened for appending, under an exclusive lock, then fsynced: runs that
finish at the same moment never interleave their lines. A line a killed writer left incomplete is skipped
with a warning when loading, and the next record starts on a fresh line. Output paths inside the history's
folder are stored relative to it, so the folder can be moved; :func:`load` gives them back as full paths.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import html
import json
import math
import os
import secrets
import threading
import warnings

from . import __version__, checks

try:
    import fcntl
except ImportError:  # not POSIX: O_APPEND alone keeps one write in one piece on a local disk
    fcntl = None

FILE = "history.jsonl"
STATUSES = ("finished", "failed", "stopped")
DEFAULT_METRICS = 3
BASIC = ("start", "app", "status", "seconds")  # the columns every table starts with
UNCOMPARED = ("output_dir",)  # differs between runs by design: compare() leaves it out unless asked
ALWAYS = ("precision", "optimizer", "strategy")  # config fields shown even when every run has the same


def path_of(folder) -> str:
    """The history file of the results folder ``folder`` (or ``folder`` itself if it names a ``.jsonl`` file)."""
    folder = checks.path("folder", folder)
    return folder if folder.endswith(".jsonl") else os.path.join(folder, FILE)


def record(folder, app: str, config: dict, *, status: str, start: float, seconds: float, metrics=None,
           figures=None, files=None, engines=0, ranks: int = 1, error: str | None = None) -> dict:
    """Append one run to the history in ``folder`` (created if needed); returns the record as written.

    Args:
        app: the application's name; ``config`` its Config as a dict.
        status: ``"finished"``, ``"failed"`` or ``"stopped"``; ``error``: why it failed or stopped.
        start: when it began (seconds since the epoch); ``seconds``: its wall time.
        metrics, figures, files: the Result's (figures and files: {name: path}).
        engines: 0 (in the process), a number of engines, or a description; ``ranks``: the ranks that ran it.
    """
    path = path_of(folder)
    checks.text("app", app)
    if not isinstance(config, dict):
        raise TypeError(f"config: expected a dict of the Config's fields, got {type(config).__name__}")
    checks.choice("status", status, STATUSES)
    checks.number("start", start, 0)
    checks.number("seconds", seconds, 0)
    checks.integer("ranks", ranks, 1)
    base = os.path.dirname(os.path.abspath(path))
    entry = {"id": f"{datetime.datetime.fromtimestamp(start):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}",
             "app": app, "status": status,
             "start": datetime.datetime.fromtimestamp(start, datetime.timezone.utc).isoformat(timespec="seconds"),
             "seconds": round(float(seconds), 3), "engines": engines if isinstance(engines, int) else str(engines),
             "ranks": int(ranks), "config": _plain(config), "metrics": _plain(metrics or {}),
             "figures": _relative(figures, base), "files": _relative(files, base), "error": error,
             "version": __version__}
    _append(path, (json.dumps(entry, allow_nan=False, separators=(",", ":")) + "\n").encode())
    return entry


def _plain(value):
    """``value`` as strict JSON values: numpy numbers as plain ones, NaN and infinities as None, others as str."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
        if isinstance(value, list):
            return _plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _relative(paths, base: str) -> dict:
    """{name: path}, a path inside ``base`` relative to it, others absolute."""
    out = {}
    for name, p in (paths or {}).items():
        p = os.path.abspath(os.fspath(p))
        out[str(name)] = os.path.relpath(p, base) if p.startswith(os.path.join(base, "")) else p
    return out


def _append(path: str, line: bytes) -> None:
    """``line`` at the end of ``path`` in one write, under an exclusive lock, fsynced; a last line that a killed
    writer left without its newline is ended first, so this record stays readable; a write that fails (a full
    disk) is taken back.

    The lock is a POSIX record lock (``lockf``), which NFS and parallel file systems carry between nodes
    (``flock`` is local to one node on some systems); such locks are per process, so threads of one process
    take a lock of their own first. A file system without locks gets the one unlocked append, with a warning.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _THREADS:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)  # no \r
        try:
            _lock(fd, path)
            _write_line(fd, line)
        finally:
            os.close(fd)  # releases the lock


_THREADS = threading.Lock()  # record locks do not exclude the threads of one process from each other
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _lock(fd: int, path: str) -> None:
    if fcntl is None:
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
    except OSError as e:
        if e.errno not in _NO_LOCKS:
            raise
        warnings.warn(f"run history: {path} is on a file system without locks ({e.strerror}); writing unlocked",
                      RuntimeWarning, stacklevel=4)


def _write_line(fd: int, line: bytes) -> None:
    size = os.fstat(fd).st_size
    if size and _byte_at(fd, size - 1) != b"\n":
        line = b"\n" + line
    view = memoryview(line)
    try:
        while view:  # a regular file takes it in one write; the loop is for the odd short write
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:  # a full disk: take back the part written, so no half line stays
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


def _byte_at(fd: int, offset: int) -> bytes:
    """The byte of ``fd`` at ``offset`` (``os.pread`` is POSIX only; O_APPEND writes go to the end anyway)."""
    if hasattr(os, "pread"):
        return os.pread(fd, 1, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, 1)


def load(folder) -> list[dict]:
    """The runs recorded in ``folder`` (its ``history.jsonl``), oldest first; [] if none yet.

    A line that is not a complete record (a killed writer's, an edit gone wrong) is skipped with a warning
    naming the file and line. Output paths come back as full paths.
    """
    path = path_of(folder)
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return []
    base = os.path.dirname(os.path.abspath(path))
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("id", "app", "start")) \
                    or not isinstance(entry.get("config"), dict):  # what the view and compare() rely on
                raise ValueError("not a run record")
        except ValueError as e:
            shown = line[:60].decode(errors="replace") + ("..." if len(line) > 60 else "")
            warnings.warn(f"{path}, line {number}: skipped, not a complete run record ({e}): {shown}",
                          RuntimeWarning, stacklevel=2)
            continue
        for key in ("figures", "files"):
            entry[key] = {k: os.path.join(base, p) for k, p in (entry.get(key) or {}).items()}
        entry.setdefault("metrics", {})
        records.append(entry)
    return records


class Table:
    """Rows of values under named columns: ``str()`` aligns them as text, notebooks show an HTML table."""

    def __init__(self, columns: list, rows: list):
        self.columns, self.rows = list(columns), [list(r) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def dicts(self) -> list[dict]:
        """The rows as {column: value}."""
        return [dict(zip(self.columns, row)) for row in self.rows]

    def __str__(self) -> str:
        cells = [self.columns] + [[_cell(v) for v in row] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                       for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        return f"Table({len(self.rows)} rows: {', '.join(self.columns)})"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def value(entry: dict, column: str):
    """A record's value for ``column``: a top-level key (``"status"``), ``"config.<field>"``,
    ``"metrics.<name>"``, or a bare field or metric name (config first); None where the record has none."""
    if column in entry:
        return entry[column]
    group, _, key = column.partition(".")
    if key and isinstance(entry.get(group), dict):
        return entry[group].get(key)
    for group in ("config", "metrics"):
        if column in (entry.get(group) or {}):
            return entry[group][column]
    return None


def differing(records: list[dict], keys=None) -> list[str]:
    """The config fields whose values are not the same in every record; a field some records lack counts as
    differing. Of ``keys`` in their order when given; else of all fields, in the order they first appear (the
    first record's, then those only later records have)."""
    names = []
    for entry in records:
        names += [k for k in entry.get("config", {}) if k not in names]
    if keys is not None:
        names = [k for k in _names("keys", keys) if k in names]
    missing = object()
    return [k for k in names
            if len({json.dumps(entry.get("config", {}).get(k, missing), default=repr) for entry in records}) > 1]


def _apps() -> dict:
    """The application registry (imported when first needed: reading a history needs no application)."""
    from .apps import APPS
    return APPS


def key_metrics(records: list[dict]) -> list[str]:
    """The metrics a table shows by default: each application's ``key_metrics`` (:class:`hpcai.apps.App`),
    else the first :data:`DEFAULT_METRICS` numbers its runs reported."""
    names = []
    for entry in records:
        app = _apps().get(entry.get("app"))
        preferred = app.key_metrics if app is not None else ()
        numbers = [k for k, v in entry.get("metrics", {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        names += [k for k in (preferred or numbers[:DEFAULT_METRICS]) if k not in names]
    return names


def compare(records: list[dict], keys=None, metrics=None, always=ALWAYS) -> Table:
    """Runs side by side: start, application, status and wall seconds, the config fields of ``always`` that
    the runs have (the choices a run is named by) and those (of ``keys``, default all but
    :data:`UNCOMPARED`) that differ between the runs, then ``metrics`` (default: :func:`key_metrics`)."""
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise TypeError(f"records: expected a list of run records (history.load), got {type(records).__name__}")
    metrics = key_metrics(records) if metrics is None else _names("metrics", metrics)
    shown = [k for k in _names("always", list(always)) if any(k in r.get("config", {}) for r in records)]
    shown += [k for k in differing(records, keys) if (keys is not None or k not in UNCOMPARED) and k not in shown]
    columns = [*BASIC, *(f"config.{k}" for k in shown), *(f"metrics.{m}" for m in metrics)]
    return Table(columns, [[value(r, c) for c in columns] for r in records])


def table(folder, columns=None, app: str | None = None) -> Table:
    """The runs recorded in ``folder`` (of application ``app``, default all), oldest first, as a Table of
    ``columns`` (names as :func:`value` reads them); without ``columns``, as :func:`compare` shows them."""
    if app is not None:
        checks.text("app", app)
    records = load(folder)
    if app is not None:
        records = [r for r in records if r["app"] == app]
    if columns is None:
        return compare(records)
    columns = _names("columns", columns)
    return Table(columns, [[value(r, c) for c in columns] for r in records])


def _names(name: str, values) -> list[str]:
    if isinstance(values, str) or not isinstance(values, (list, tuple)) or \
            not all(isinstance(v, str) for v in values):
        raise TypeError(f"{name}: expected a list of names, got {values!r}")
    return list(values)


if __name__ == "__main__":  # python -m hpcai.history FOLDER: the runs recorded there, side by side
    import sys
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hpcai.history FOLDER")
    print(table(sys.argv[1]))
