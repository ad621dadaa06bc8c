"""The control file of a workflow: which modules run, on how many ranks, in what order, coupled how.

A workflow (after openDIEL, Betancourt et al., PEARC 2019) is a set of *modules*, each a function ``main(ctx)`` or
an application from :data:`hpcai.apps.APPS`, run on its own communicator split from the job's. Modules whose
``after`` lists are satisfied start together (a *stage*); *channels* join two modules of one stage point to
point; a *loop* repeats a block of modules until one of them reports done; a *tuple space* on dedicated
server ranks holds data between stages. This module only reads and checks the description, so a mistake is
reported before a single rank starts, naming the file, the key and what was expected::

    control.toml: modules.sim.ranks: expected a positive integer, got 0

It imports no entry: an entry's module may exist only on the engines, where :func:`resolve_entry` finds it.

The format, as TOML (every key shown; a Python dict of the same shape, e.g. from a notebook, works too)::

    [workflow]
    name = "demo"                     # optional; default: the file's stem, or "workflow" for a dict

    [tuple_space]                     # optional; without it, no tuple space (servers = 0)
    servers = 1                       # dedicated server ranks when the job has >1 rank; 0: no tuple space
    max_mb = 256                      # memory bound of the space, in MiB (default 256)

    [modules.setup]
    entry = "mypkg.prep:main"         # a function main(ctx): "package.module:function"

    [modules.sim]
    app = "climate_sr"                # instead of entry: an application of hpcai.apps.APPS
    ranks = 1                         # the module's communicator size (default 1)
    params = { days = 1.0 }           # optional table; for an app, fields of its Config
    after = ["setup"]                 # modules that must finish before this one starts (default [])

    [modules.learner]
    entry = "mypkg.learn:main"
    ranks = 2
    after = ["setup"]

    [modules.report]
    entry = "mypkg.report:main"
    after = ["learner"]

    [[channels]]                      # point to point, between two modules of one stage
    from = "sim"
    to = "learner"
    name = "fields"                   # optional; default "sim->learner"

    [loop]                            # optional: repeat these modules until `until` reports done
    modules = ["sim", "learner"]      # a contiguous block of the plan
    until = "learner"                 # done when its main returns a dict with "done": true
    max_iterations = 10               # required: the bound on the repetitions

Its :meth:`WorkflowSpec.plan` is ``[("setup",), Loop(stages=(("sim", "learner"),), until="learner",
max_iterations=10), ("report",)]``, and it needs 4 ranks on a parallel job (the stage of 1 + 2 ranks, plus
one tuple-space server).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import math
import os
import re
import reprlib
from pathlib import Path
from typing import Callable

from .. import checks

MIB = 2 ** 20
DEFAULT_MAX_MB = 256
TOP_KEYS = ("workflow", "tuple_space", "modules", "channels", "loop")
WORKFLOW_KEYS = ("name",)
TUPLE_SPACE_KEYS = ("servers", "max_mb")
MODULE_KEYS = ("entry", "app", "ranks", "params", "after")
CHANNEL_KEYS = ("from", "to", "name")
LOOP_KEYS = ("modules", "until", "max_iterations")

__all__ = ["ChannelSpec", "Loop", "LoopSpec", "ModuleSpec", "SpecError", "Step", "TupleSpaceSpec", "WorkflowSpec",
           "load", "resolve_entry"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_ENTRY = re.compile(rf"({_DOTTED}):({_DOTTED})\Z")
_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother = 60, 60


class SpecError(ValueError):
    """A control file (or dict) that does not describe a runnable workflow; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
    """One module: ``entry`` ("package.module:function") or ``app`` (a name in APPS), never both."""

    name: str
    entry: str | None
    app: str | None
    ranks: int = 1
    params: dict = dataclasses.field(default_factory=dict)
    after: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ChannelSpec:
    """A point-to-point link from module ``source`` to module ``dest``, both running in one stage."""

    name: str
    source: str
    dest: str


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """Repeat ``modules`` until module ``until`` returns ``{"done": True}``, at most ``max_iterations`` times."""

    modules: tuple[str, ...]
    until: str
    max_iterations: int


@dataclasses.dataclass(frozen=True)
class TupleSpaceSpec:
    """``servers`` dedicated ranks (on a job of >1 rank; 0: no tuple space) holding at most ``max_bytes``."""

    servers: int = 0
    max_bytes: int = DEFAULT_MAX_MB * MIB


@dataclasses.dataclass(frozen=True)
class Loop:
    """A step of a plan: ``stages`` run in order, all repeated until ``until`` is done or ``max_iterations``."""

    stages: tuple[tuple[str, ...], ...]
    until: str
    max_iterations: int


Step = tuple | Loop  # a plan step: a stage (module names run concurrently) or a Loop


@dataclasses.dataclass(frozen=True)
class WorkflowSpec:
    """A checked workflow description; build one with :func:`load`. ``source`` (where it came from, for
    messages) takes no part in equality, so a file and the same dict give equal specs."""

    name: str
    modules: dict[str, ModuleSpec]
    channels: tuple[ChannelSpec, ...] = ()
    loop: LoopSpec | None = None
    tuple_space: TupleSpaceSpec = TupleSpaceSpec()
    source: str = dataclasses.field(default="<dict>", compare=False)

    def plan(self) -> list[Step]:
        """The steps in execution order: stages (tuples of module names started together, the topological
        levels of ``after``) and at most one :class:`Loop`. Loop modules run only inside the loop; modules
        that wait for a loop module run after the whole loop, all others before it."""
        return _plan(self.modules, self.loop, self.source)

    def ranks_needed(self, world_size: int) -> int:
        """Ranks for the largest stage (sum of its modules' ranks), plus the tuple-space servers when
        ``world_size`` > 1 (on one rank the space lives in the process)."""
        world_size = _world_size(world_size)
        ranks = self._largest_stage()[1]
        return ranks + (self.tuple_space.servers if world_size > 1 else 0)

    def check_ranks(self, world_size: int) -> None:
        """Raise :class:`SpecError` when a job of ``world_size`` ranks is too small for this workflow."""
        if world_size >= self.ranks_needed(world_size):
            return
        stage, ranks = self._largest_stage()
        need, servers = self.ranks_needed(2), self.tuple_space.servers  # too small: the job needs >1 rank
        plus = f", plus {servers} tuple-space server{'s' if servers > 1 else ''}" if servers else ""
        raise SpecError(f"{self.source}: needs {need} ranks (stage {list(stage)} uses {ranks}{plus}), "
                        f"but the job has {world_size}")

    def to_dict(self) -> dict:
        """A plain dict (JSON-ready when the params are) that :func:`load` turns back into an equal spec."""
        modules = {}
        for m in self.modules.values():
            d = {"entry": m.entry} if m.entry is not None else {"app": m.app}
            d.update(ranks=m.ranks, params=copy.deepcopy(m.params), after=list(m.after))
            modules[m.name] = d
        mb = self.tuple_space.max_bytes / MIB
        out = {"workflow": {"name": self.name},
               "tuple_space": {"servers": self.tuple_space.servers, "max_mb": int(mb) if mb.is_integer() else mb},
               "modules": modules,
               "channels": [{"from": c.source, "to": c.dest, "name": c.name} for c in self.channels]}
        if self.loop is not None:
            out["loop"] = {"modules": list(self.loop.modules), "until": self.loop.until,
                           "max_iterations": self.loop.max_iterations}
        return out

    def _largest_stage(self) -> tuple[tuple[str, ...], int]:
        stages = [s for step in self.plan() for s in (step.stages if isinstance(step, Loop) else (step,))]
        sizes = [sum(self.modules[m].ranks for m in stage) for stage in stages]
        best = max(range(len(stages)), key=sizes.__getitem__)
        return stages[best], sizes[best]


def load(control, source: str | None = None) -> WorkflowSpec:
    """The checked :class:`WorkflowSpec` of ``control``: a path to a TOML file, a dict of the same shape, or a
    WorkflowSpec (returned as is). ``source`` names a dict in messages (default ``"<dict>"``), e.g. the file
    an engine's JSON copy came from. Raises :class:`SpecError` for anything that would not run."""
    if isinstance(control, WorkflowSpec):
        return control
    if isinstance(control, dict):
        return _Reader(source or "<dict>").workflow(control, default_name="workflow")
    if isinstance(control, (str, os.PathLike)):
        path = Path(control)
        src = source or os.fspath(control)
        return _Reader(src).workflow(_read_toml(path, src), default_name=path.stem)
    raise TypeError(f"control: expected a path to a .toml file, a dict or a WorkflowSpec, "
                    f"got {type(control).__name__}")


def resolve_entry(entry: str) -> Callable:
    """The function an entry ``"package.module:function"`` names, imported now (on the engine that runs it)."""
    match = _ENTRY.match(entry) if isinstance(entry, str) else None
    if match is None:
        raise SpecError(f"entry {entry!r}: expected \"package.module:function\"")
    module_name, attrs = match.groups()
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise SpecError(f"entry {entry!r}: cannot import module {module_name!r}: {e}") from e
    except Exception as e:  # the module itself raised while importing: keep its traceback (chained)
        raise SpecError(f"entry {entry!r}: importing {module_name!r} failed: {type(e).__name__}: {e}") from e
    for attr in attrs.split("."):
        if not hasattr(obj, attr):
            near = difflib.get_close_matches(attr, [a for a in dir(obj) if not a.startswith("_")], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise SpecError(f"entry {entry!r}: {getattr(obj, '__name__', obj)!r} has no attribute {attr!r}{hint}")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise SpecError(f"entry {entry!r}: expected a function, got {type(obj).__name__} {_repr.repr(obj)}")
    return obj


def _read_toml(path: Path, src: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ImportError("reading a TOML control file needs Python 3.11+ or `pip install tomli`") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SpecError(f"{src}: no such control file") from None
    except OSError as e:
        raise SpecError(f"{src}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{src}: TOML syntax error: {e}") from None


def _world_size(world_size) -> int:
    return checks.integer("world_size", world_size, 1)


class _Reader:
    """Reads a control dict into a WorkflowSpec; every failure names ``source`` and the key path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, message: str) -> SpecError:
        return SpecError(f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}")

    # --- the parts --------------------------------------------------------------------------------------
    def workflow(self, doc: dict, default_name: str) -> WorkflowSpec:
        self.keys(doc, "", TOP_KEYS, what="top-level key")
        head = self.table(doc.get("workflow", {}), "workflow")
        self.keys(head, "workflow", WORKFLOW_KEYS)
        name = self.string(head["name"], "workflow.name") if "name" in head else default_name
        tuple_space = self.tuple_space(doc)
        modules = self.modules(doc)
        loop = self.loop(doc["loop"], modules) if "loop" in doc else None
        _check_acyclic(modules, self)
        plan = _plan(modules, loop, self.source)
        channels = self.channels(doc.get("channels", []), modules, plan)
        return WorkflowSpec(name, modules, channels, loop, tuple_space, self.source)

    def tuple_space(self, doc: dict) -> TupleSpaceSpec:
        if "tuple_space" not in doc:
            return TupleSpaceSpec()
        ts = self.table(doc["tuple_space"], "tuple_space")
        self.keys(ts, "tuple_space", TUPLE_SPACE_KEYS)
        servers = self.integer(ts.get("servers", 1), "tuple_space.servers", minimum=0)
        if servers > 1:  # one server rank holds the whole space (sharding keys over several is not built yet)
            raise self.fail("tuple_space.servers", f"expected 0 or 1 (one server rank holds the space), got {servers}")
        max_mb = ts.get("max_mb", DEFAULT_MAX_MB)
        if (isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or not math.isfinite(max_mb)
                or max_mb <= 0):
            raise self.fail("tuple_space.max_mb", f"expected a positive number (MiB), got {_repr.repr(max_mb)}")
        return TupleSpaceSpec(servers, max(1, int(max_mb * MIB)))

    def modules(self, doc: dict) -> dict[str, ModuleSpec]:
        if "modules" not in doc:
            raise self.fail("", "no [modules.<name>] table: a workflow needs at least one module")
        table = self.table(doc["modules"], "modules")
        if not table:
            raise self.fail("modules", "expected at least one module, got none")
        for name in table:
            if not isinstance(name, str) or not _NAME.match(name):
                raise self.fail("modules", f"module name {name!r}: expected letters, digits, '_' or '-', "
                                           f"starting with a letter or '_'")
        modules = {name: self.module(name, body) for name, body in table.items()}
        for m in modules.values():
            for i, dep in enumerate(m.after):
                self.known(dep, f"modules.{m.name}.after[{i}]", modules)
        return modules

    def module(self, name: str, body) -> ModuleSpec:
        path = f"modules.{name}"
        body = self.table(body, path)
        self.keys(body, path, MODULE_KEYS)
        entry = self.string(body["entry"], f"{path}.entry") if "entry" in body else None
        app = self.string(body["app"], f"{path}.app") if "app" in body else None
        if (entry is None) == (app is None):
            raise self.fail(path, "expected exactly one of 'entry' (a function \"package.module:function\") or "
                                  f"'app' (an application of hpcai.apps.APPS), got {'both' if entry else 'neither'}")
        if entry is not None and not _ENTRY.match(entry):
            raise self.fail(f"{path}.entry", f"expected \"package.module:function\", got {entry!r}")
        ranks = self.integer(body.get("ranks", 1), f"{path}.ranks", minimum=1)
        params = copy.deepcopy(self.table(body.get("params", {}), f"{path}.params"))
        if app is not None:
            self.app(app, params, path)
        after = self.names(body.get("after", []), f"{path}.after", allow_empty=True)
        return ModuleSpec(name, entry, app, ranks, params, tuple(dict.fromkeys(after)))

    def app(self, app: str, params: dict, path: str) -> None:
        from .. import apps  # lazily: loading a spec of entries alone needs no application

        if app not in apps.APPS:
            raise self.fail(f"{path}.app", f"expected one of {', '.join(sorted(apps.APPS))}, got {app!r}")
        if apps.APPS[app].run is None:
            raise self.fail(f"{path}.app", f"{app!r} is itself a workflow (its modules on their own ranks); "
                                           "run it with run_app or `hpcai run`, or add its modules to this file")
        fields = [f.name for f in dataclasses.fields(apps.APPS[app].config)]
        for key in params:
            if key not in fields:
                raise self.fail(f"{path}.params", f"unknown key {key!r} for app {app!r}{_near(key, fields)}; "
                                                  f"allowed: {', '.join(fields)}")

    def channels(self, raw, modules: dict, plan: list) -> tuple[ChannelSpec, ...]:
        if not isinstance(raw, (list, tuple)):
            raise self.fail("channels", f"expected an array of tables ([[channels]]), got {_kind(raw)}")
        where = _positions(plan)
        channels, seen = [], {}
        for i, body in enumerate(raw):
            path = f"channels[{i}]"
            body = self.table(body, path)
            self.keys(body, path, CHANNEL_KEYS)
            for key in ("from", "to"):
                if key not in body:
                    raise self.fail(path, f"missing key {key!r} (a module name)")
            source = self.known(self.string(body["from"], f"{path}.from"), f"{path}.from", modules)
            dest = self.known(self.string(body["to"], f"{path}.to"), f"{path}.to", modules)
            if source == dest:
                raise self.fail(path, f"'from' and 'to' are both {source!r}: a channel joins two modules")
            name = self.string(body["name"], f"{path}.name") if "name" in body else f"{source}->{dest}"
            if name in seen:
                raise self.fail(f"{path}.name", f"{name!r} is already the name of channels[{seen[name]}]")
            if where[source] != where[dest]:
                raise self.fail(path, f"{source!r} ({_describe(where[source], plan)}) and {dest!r} "
                                      f"({_describe(where[dest], plan)}) never run at the same time; a channel "
                                      f"joins modules of one stage: pass data between stages through the "
                                      f"tuple space ([tuple_space])")
            seen[name] = i
            channels.append(ChannelSpec(name, source, dest))
        return tuple(channels)

    def loop(self, raw, modules: dict) -> LoopSpec:
        body = self.table(raw, "loop")
        self.keys(body, "loop", LOOP_KEYS)
        for key, what in (("modules", "a list of module names"), ("until", "a module name"),
                          ("max_iterations", "a positive integer bounding the repetitions")):
            if key not in body:
                raise self.fail("loop", f"missing key {key!r} ({what})")
        names = self.names(body["modules"], "loop.modules", allow_empty=False)
        for i, name in enumerate(names):
            self.known(name, f"loop.modules[{i}]", modules)
            if name in names[:i]:
                raise self.fail(f"loop.modules[{i}]", f"{name!r} is listed twice")
        until = self.known(self.string(body["until"], "loop.until"), "loop.until", modules)
        if until not in names:
            raise self.fail("loop.until", f"expected one of the loop's modules ({', '.join(names)}), got {until!r}")
        max_iterations = self.integer(body["max_iterations"], "loop.max_iterations", minimum=1)
        return LoopSpec(tuple(names), until, max_iterations)

    # --- typed values -----------------------------------------------------------------------------------
    def keys(self, table: dict, path: str, allowed: tuple, what: str = "key") -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(path, f"unknown {what} {key!r}{_near(key, allowed)}; allowed: {', '.join(allowed)}")

    def table(self, value, path: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a table, got {_kind(value)}")
        return value

    def string(self, value, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"expected a non-empty string, got {_kind(value)}")
        return value

    def integer(self, value, path: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise self.fail(path, f"expected {what}, got {_kind(value)}")
        return value

    def names(self, value, path: str, allow_empty: bool) -> list[str]:
        if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
            raise self.fail(path, f"expected a {'' if allow_empty else 'non-empty '}list of module names, "
                                  f"got {_kind(value)}")
        return [self.string(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def known(self, name: str, path: str, modules: dict) -> str:
        if name not in modules:
            raise self.fail(path, f"no module named {name!r}{_near(name, modules)}; modules: {', '.join(modules)}")
        return name


def _kind(value) -> str:
    """How a wrong value is shown: its repr, with its type when the repr alone could mislead."""
    if isinstance(value, (dict, list, tuple)):
        return f"{'a table' if isinstance(value, dict) else 'an array'} {_repr.repr(value)}"
    return _repr.repr(value)


def _near(word, choices) -> str:
    near = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _waves(names: list[str], deps: dict[str, tuple]) -> tuple[list[list[str]], list[str]]:
    """Topological levels of ``names`` under ``deps`` (restricted to ``names``), each in the order of
    ``names``, and the modules left over when ``deps`` has a cycle."""
    inside, level, waves, pending = set(names), {}, [], list(names)
    while pending:
        ready = [m for m in pending if all(d in level for d in deps[m] if d in inside)]
        if not ready:
            break
        for m in ready:
            level[m] = len(waves)
        waves.append(ready)
        pending = [m for m in pending if m not in level]
    return waves, pending


def _check_acyclic(modules: dict[str, ModuleSpec], reader: _Reader) -> None:
    deps = {m: spec.after for m, spec in modules.items()}
    _, stuck = _waves(list(modules), deps)
    if not stuck:
        return
    # every stuck module waits for a stuck module: walk those waits until one repeats
    stuck_set, path, seen = set(stuck), [stuck[0]], {stuck[0]: 0}
    while True:
        nxt = next(d for d in deps[path[-1]] if d in stuck_set)
        if nxt in seen:
            cycle = path[seen[nxt]:]
            break
        seen[nxt] = len(path)
        path.append(nxt)
    order = list(modules)
    first = min(range(len(cycle)), key=lambda i: order.index(cycle[i]))
    cycle = cycle[first:] + cycle[:first]
    raise reader.fail(f"modules.{cycle[0]}.after", f"the 'after' lists form a cycle: "
                                                   f"{' -> '.join(cycle + [cycle[0]])} (each waits for the next)")


def _closure(start: set[str], edges: dict[str, tuple]) -> set[str]:
    """Modules reachable from ``start`` along ``edges`` (``start`` itself excluded unless on a path)."""
    found, todo = set(), [n for s in start for n in edges[s]]
    while todo:
        m = todo.pop()
        if m not in found:
            found.add(m)
            todo.extend(edges[m])
    return found


def _plan(modules: dict[str, ModuleSpec], loop: LoopSpec | None, source: str) -> list[Step]:
    deps = {m: spec.after for m, spec in modules.items()}
    order = list(modules)
    if loop is None:
        return [tuple(w) for w in _waves(order, deps)[0]]
    inside = set(loop.modules)
    waiters = {m: tuple(w for w in order if m in deps[w]) for m in order}
    upstream, downstream = _closure(inside, deps), _closure(inside, waiters)
    between = [m for m in order if m not in inside and m in upstream and m in downstream]
    if between:
        b = between[0]
        first = next(m for m in loop.modules if m in _closure({b}, deps))
        last = next(m for m in loop.modules if b in _closure({m}, deps))
        raise SpecError(f"{source}: loop.modules: the loop must be a contiguous block of the plan, but {b!r} "
                        f"(not in the loop) runs after {first!r} and before {last!r}; add {b!r} to loop.modules "
                        f"or change the 'after' lists")

    def stages(names):
        return [tuple(w) for w in _waves(names, deps)[0]]

    before = [m for m in order if m not in inside and m not in downstream]
    after = [m for m in order if m not in inside and m in downstream]
    body = Loop(tuple(stages([m for m in order if m in inside])), loop.until, loop.max_iterations)
    return stages(before) + [body] + stages(after)


def _positions(plan: list[Step]) -> dict[str, tuple[int, int]]:
    """Module -> (step index, stage index within a loop step, else 0): equal positions run together."""
    where = {}
    for i, step in enumerate(plan):
        for j, stage in enumerate(step.stages if isinstance(step, Loop) else (step,)):
            where.update((m, (i, j)) for m in stage)
    return where


def _describe(position: tuple[int, int], plan: list[Step]) -> str:
    step = plan[position[0]]
    if isinstance(step, Loop):
        return f"in the loop, stage {list(step.stages[position[1]])}"
    return f"stage {list(step)}"
