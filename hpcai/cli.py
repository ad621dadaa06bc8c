"""The ``hpcai`` command.

  hpcai run climate_sr --engines 2        # the application on 2 local MPI engines (ipyparallel)
  hpcai run climate_sr --days 2 --ratio 50 --output-dir results/climate
  mpiexec -n 4 python -m hpcai run climate_sr   # a batch job: every rank runs its part
  hpcai demo                               # a small MLP trained end to end with the core
  hpcai lab                                # JupyterLab on the notebooks, 127.0.0.1 only, token always on
  hpcai bench                              # the quick benchmarks (core, parallel); --list shows them all
  hpcai bench climate -- --quick           # one benchmark, with arguments for its script
  hpcai workflow check control.toml        # a workflow's plan and the ranks it needs
  hpcai site kernel --partition debug      # HPC centres: a kernel whose engines are Slurm jobs (also: hub, engines)
  mpiexec -n 4 python -m hpcai workflow run control.toml   # modules on their own ranks, one MPI job
  hpcai tune digits --trials 20 --engines 4 --group 2 --metric test_accuracy --param lr=1e-4:1e-1:log
                                           # an Optuna study, each trial on a 2-engine sub-communicator

Every field of an application's Config is an option (``--days``, ``--precision``, ...), read from the
dataclass, so a new field or application needs no change here.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import amp, datasets, lab, nn, optim
from .io import DiskFullError, json_default
from .train import evaluate, fit


def demo(epochs: int = 20, hidden: int = 64, precision: str = "fp32", optimizer: str = "adam", lr: float = 3e-3,
         seed: int = 0, verbose: int = 1, out=None):
    """Train an MLP on interleaved spirals with ``fit`` in a precision policy; return (history, test accuracy)."""
    out = out or sys.stdout
    amp.get_policy(precision)  # fail early, naming the argument
    x, y = datasets.spirals(n=1200, classes=3, noise=0.15, turns=1.25, seed=seed)
    split = len(x) * 3 // 4
    model = nn.Sequential(nn.Linear(2, hidden, rng=seed), nn.ReLU(), nn.Linear(hidden, hidden, rng=seed + 1),
                          nn.ReLU(), nn.Linear(hidden, 3, rng=seed + 2))
    opt = optim.get_optimizer(optimizer, model.parameters(), lr=lr)
    print(f"hpcai demo: MLP 2-{hidden}-{hidden}-3 on {split} spiral points, precision {precision}, "
          f"optimizer {optimizer}", file=out)
    history = fit(model, (x[:split], y[:split]), "cross_entropy", opt, epochs=epochs, batch_size=32,
                  metrics=["accuracy"], verbose=verbose, seed=seed, precision=precision)
    result = evaluate(model, (x[split:], y[split:]), "cross_entropy", metrics=["accuracy"], precision=precision)
    print(f"held-out accuracy {result['accuracy']:.3f}; training loss {history['loss'][0]:.3f} -> "
          f"{history['loss'][-1]:.3f}", file=out)
    return history, result["accuracy"]


def _config_options(parser, config_cls) -> None:
    """One ``--name`` option per Config field, typed and parsed as :func:`hpcai.apps.config_fields` says, with
    its declared choices and its help and unit (``metadata["unit"]``, shown first in brackets); an option not
    given is left out (the Config's default applies)."""
    from .apps import config_fields
    units = {f.name: f.metadata.get("unit", "") for f in dataclasses.fields(config_cls)}
    for spec in config_fields(config_cls):
        def parse(text, spec=spec):
            try:
                return spec.parse(text)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        parse.__name__ = spec.kind.__name__
        auto = " ('' or auto means None)" if spec.optional else ""
        unit = f"[{units[spec.name]}] " if units.get(spec.name) else ""
        parser.add_argument("--" + spec.name.replace("_", "-"), type=parse, default=argparse.SUPPRESS,
                            choices=spec.choices, help=(unit + spec.help + auto).replace("%", "%%"))


def build_parser() -> argparse.ArgumentParser:
    """The ``hpcai`` command line: one subcommand per task, one ``run`` subcommand per application."""
    from .apps import APPS
    parser = argparse.ArgumentParser(prog="hpcai", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train a small MLP end to end and print the loss falling")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--precision", default="fp32", choices=list(amp.POLICIES),
                   help="precision policy (fp16/bf16 emulate tensor cores on the CPU)")
    p.add_argument("--optimizer", default="adam", choices=list(optim.OPTIMIZERS))
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="run an application headless; writes its results and figures")
    apps = r.add_subparsers(dest="app", required=True)
    for name, app in APPS.items():
        a = apps.add_parser(name, help=app.description)
        a.add_argument("--engines", type=int, default=0,
                       help="start this many local MPI engines (ipyparallel) and run there; 0: in this process")
        a.add_argument("--quiet", action="store_true", help="print only the result (JSON), no progress lines")
        _config_options(a, app.config)
    w = sub.add_parser("workflow", help="check or run a workflow control file (modules on MPI ranks)")
    wsub = w.add_subparsers(dest="action", required=True)
    for action, text in (("run", "run every module (under mpiexec: on this job's ranks)"),
                         ("check", "check the control file and print its plan and the ranks it needs")):
        wa = wsub.add_parser(action, help=text)
        wa.add_argument("control", help="the control file (TOML)")
        wa.add_argument("--quiet", action="store_true")
    lb = sub.add_parser("lab", help="start JupyterLab on the notebooks (127.0.0.1 and a token unless told otherwise)")
    lb.add_argument("--notebook-dir", default=None,
                    help="folder to serve (default: the notebooks/ of the hpcai repository the current folder is "
                         "in, else of the source tree hpcai runs from, else the current folder); opens on "
                         f"{lab.QUICKSTART} when it is there")
    lb.add_argument("--ip", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    lb.add_argument("--port", type=int, default=8888, help="port (default: 8888; fails if taken, no silent change)")
    lb.add_argument("--token", default=None, help="access token (default: a new random one, printed in the URL)")
    lb.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    lb.add_argument("--allow-root", action="store_true",
                    help="let root run it (automatic, with a note, when running as root: containers)")
    t = sub.add_parser("teach", add_help=False, help="teaching mode: export the tutorials' exercises for nbgrader "
                                                     "(hpcai teach export-nbgrader SRC DST)")
    t.add_argument("rest", nargs=argparse.REMAINDER)
    from .tune import command as tune_command
    tune_command.add_parser(sub, APPS)
    from . import site
    site.add_parser(sub)
    b = sub.add_parser("bench", help="run the source tree's benchmark scripts (hpcai bench NAME -- ARGS)")
    b.add_argument("names", nargs="*", metavar="NAME",
                   help=f"benchmarks to run (default: {' '.join(BENCH_DEFAULT)}, the quick ones)")
    b.add_argument("--list", action="store_true", help="list the benchmarks found and exit")
    b.add_argument("--dir", default=None, help="benchmarks folder (default: the source tree's benchmarks/)")
    return parser


def main(argv=None) -> int:
    from .apps import APPS
    from .tune import command as tune_command
    from . import site
    argv, script_args = list(sys.argv[1:] if argv is None else argv), []
    if argv[:1] == ["bench"] and "--" in argv:  # hpcai bench NAME -- ARGS: ARGS go to the script untouched
        argv, script_args = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    if argv[:1] == ["teach"]:  # its own parser: hpcai teach --help shows its commands
        from .teach.notebook import main as teach
        return teach(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "lab":
        try:
            return lab.lab(args.notebook_dir, args.ip, args.port, args.token, browser=not args.no_browser,
                           allow_root=args.allow_root)
        except ValueError as e:
            parser.exit(2, f"hpcai lab: {e}\n")
    if args.command == "bench":
        try:
            if args.list:
                for name, (_, doc) in benchmarks(args.dir).items():
                    print(f"  {name:<16}{'*' if name in BENCH_DEFAULT else ' '} {doc}")
                print("  (* run by default; hpcai bench NAME -- ARGS passes ARGS to the script)")
                return 0
            return bench(args.names, args.dir, script_args)
        except ValueError as e:
            parser.exit(2, f"hpcai bench: {e}\n")
    if args.command == "tune":
        return tune_command.run(parser, args)
    if args.command == "site":
        return site.run(parser, args)
    if args.command == "workflow":
        return workflow(parser, args.action, args.control, verbose=0 if args.quiet else 1)
    if args.command == "demo":
        history, _ = demo(args.epochs, args.hidden, args.precision, args.optimizer, args.lr, args.seed, verbose=1)
        return 0 if history["loss"][-1] < history["loss"][0] else 1
    fields = {f.name for f in dataclasses.fields(APPS[args.app].config)}
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    if "output_dir" in fields and "output_dir" not in overrides:
        overrides["output_dir"] = os.path.join("results", args.app)
    from .runner import make_config, run_app
    try:  # bad options are a usage error; what fails later in the run keeps its traceback
        config = make_config(args.app, overrides)
    except (ValueError, TypeError) as e:
        parser.exit(2, f"hpcai run {args.app}: {e}\n")
    if args.engines < 0:
        parser.exit(2, f"hpcai run {args.app}: --engines: expected a number of engines >= 0, got {args.engines}\n")
    try:
        with _terminate_as_exception():
            result = run_app(args.app, config, engines=args.engines, verbose=0 if args.quiet else 1,
                             progress=None if args.quiet else _progress_printer())
    except KeyboardInterrupt:  # Ctrl-C: the engines are stopped on the way out; a line, not a traceback
        print(f"hpcai run {args.app}: interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        return 130
    except Terminated:
        print(f"hpcai run {args.app}: terminated (SIGTERM)", file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM
    except DiskFullError as e:  # one line naming the file and the space it needed; earlier files are kept
        print(f"hpcai run {args.app}: {e}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps({"metrics": result.metrics, "figures": result.figures, "files": result.files}, indent=2,
                     default=json_default))
    return 0


# -- hpcai run: progress lines -------------------------------------------------------------------------------
PROGRESS_EVERY = 15.0  # s between two progress lines of one rank within a phase


def _progress_printer():
    """The progress printer of ``hpcai run``, or None on the ranks of an MPI job but its first (each rank of
    ``mpiexec -n 4 python -m hpcai run ...`` reports for itself; rank 0's lines stand for them)."""
    from .parallel.comm import launched_by_mpi, world
    return ProgressPrinter() if not launched_by_mpi() or world().rank == 0 else None


class ProgressPrinter:
    """``progress(snapshots)`` for ``run_app`` that prints plain lines, for a terminal or a batch job's log: one
    when a rank begins a phase or finishes, and one every ``every`` seconds while a phase goes on, with its
    count, the latest loss, the elapsed time, the rate and the time left (when the snapshot has them)."""

    def __init__(self, out=None, every: float = PROGRESS_EVERY, clock=time.monotonic):
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not every >= 0:
            raise ValueError(f"every: expected seconds >= 0, got {every!r}")
        self.out, self.every, self.clock = out, float(every), clock
        self._last = {}  # rank: (phase, finished, when printed, steps done, last loss's step)

    def __call__(self, snapshots: list) -> None:
        now, out = self.clock(), self.out or sys.stderr
        for rank, snap in enumerate(snapshots):
            if not snap:
                continue  # this rank has not reported yet
            state = (snap.get("phase"), bool(snap.get("finished")))
            last = self._last.get(rank)
            changed = last is None or last[:2] != state
            if not changed and (now - last[2] < self.every or snap.get("done") == last[3] or state[1]):
                continue
            steps = snap.get("steps")  # the last loss's step number: the loss list is thinned, its length stalls
            seen = steps[-1] if steps else len(snap.get("losses") or ())
            loss = snap["losses"][-1] if not changed and seen != last[4] else None  # trained since the last line
            prefix = f"rank {rank}: " if len(snapshots) > 1 else ""
            print(f"[progress] {prefix}{self.line(snap, loss)}", file=out, flush=True)
            self._last[rank] = (*state, now, snap.get("done"), seen)

    @staticmethod
    def line(snap: dict, loss=None) -> str:
        """``final training 120/630 (19%), loss 0.12 -- 1m05s elapsed, 3.2 steps/s, about 4m20s left``."""
        from .apps.progress import duration
        done, total = snap.get("done", 0), snap.get("total", 0)
        text = "finished" if snap.get("finished") else str(snap.get("phase", ""))
        if total and not snap.get("finished"):
            text += f" {done}/{total} ({100 * min(done, total) // total}%)"
        if snap.get("message"):
            text += f": {snap['message']}"
        if loss is not None and not snap.get("finished"):
            text += f", loss {loss:.3g}"
        timing = []
        if snap.get("elapsed") is not None:
            timing.append(f"{duration(snap['elapsed'], compact=True)} elapsed")
        if snap.get("rate") and not snap.get("finished"):
            timing.append(f"{snap['rate']:.3g} steps/s")
        if snap.get("eta") is not None and not snap.get("finished"):
            timing.append(f"about {duration(snap['eta'], compact=True)} left")
        return text + (" -- " + ", ".join(timing) if timing else "")


class Terminated(BaseException):
    """SIGTERM arrived (``timeout``, Slurm, ``docker stop``): raised where the process is, so that ``with``
    blocks stop what they started -- engines included -- before it exits."""


@contextlib.contextmanager
def _terminate_as_exception():
    """SIGTERM raises :class:`Terminated` meanwhile (in the main thread only, where signals are handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- hpcai workflow ------------------------------------------------------------------------------------------
def workflow(parser, action: str, control: str, verbose: int = 1) -> int:
    """``hpcai workflow check|run CONTROL``: a bad control file is a usage error naming the file and key."""
    from .parallel.comm import default_comm
    from .workflow import SpecError, load, run_workflow
    try:
        spec = load(control)
        if action == "check":
            print(f"{spec.name}: {len(spec.modules)} module(s); plan:")
            for step in spec.plan():
                print(f"  {list(step)}" if isinstance(step, tuple) else
                      f"  repeat up to {step.max_iterations}x until {step.until!r} is done: {[list(s) for s in step.stages]}")
            print(f"ranks needed: {spec.ranks_needed(1)} on one rank, {spec.ranks_needed(2)} under mpiexec")
            return 0
        comm = default_comm()
        if comm is not None:
            spec.check_ranks(comm.size)
    except SpecError as e:
        parser.exit(2, f"hpcai workflow {action}: {e}\n")
    result = run_workflow(spec, comm, verbose=verbose)
    if comm is None or comm.rank == 0:
        print(json.dumps(dataclasses.asdict(result), indent=2, default=json_default))
    return 0


# -- hpcai bench ---------------------------------------------------------------------------------------------
BENCH_DEFAULT = ("core", "parallel")  # about a minute each on 2 cores; climate and train_vs_torch take minutes


def benchmarks(directory=None) -> dict:
    """Benchmark scripts ``{name: (path, first docstring line)}`` of ``directory`` (default: the source tree's)."""
    import ast
    folder = Path(directory) if directory else lab.source_dir("benchmarks")
    if folder is None or not folder.is_dir():
        raise ValueError(f"no benchmarks directory {'at ' + str(folder) if folder else 'in the source tree'}: the "
                         "benchmarks ship with the source, not the wheel; run from a checkout (pip install -e .) "
                         "or point --dir at one")
    found = {}
    for path in sorted(folder.glob("*.py")):
        if not path.name.startswith("_"):
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            found[path.stem] = (path, doc.strip().splitlines()[0] if doc.strip() else "")
    return found


def bench(names=(), directory=None, script_args=(), out=None) -> int:
    """Run benchmark scripts one after the other with this Python, their output streamed; 1 if any failed."""
    out = out or sys.stdout
    found = benchmarks(directory)
    names = list(names) or [n for n in BENCH_DEFAULT if n in found]
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {sorted(found)}")
    if script_args and len(names) != 1:
        raise ValueError("arguments after -- go to one benchmark script: name exactly one")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    summary = []
    for name in names:
        path = found[name][0]
        print(f"== {name}: {sys.executable} {path.name} {' '.join(script_args)}".rstrip(), file=out, flush=True)
        start = time.perf_counter()
        try:
            code = subprocess.run([sys.executable, str(path), *script_args], cwd=path.parent.parent, env=env).returncode
        except KeyboardInterrupt:
            print(f"== {name}: interrupted", file=out, flush=True)
            return 130
        summary.append((name, code, time.perf_counter() - start))
    print("== summary", file=out)
    for name, code, seconds in summary:
        print(f"  {name:<20} {'ok' if code == 0 else f'FAILED (exit {code})':<18} {seconds:8.1f} s", file=out)
    out.flush()
    return 0 if all(code == 0 for _, code, _ in summary) else 1

if __name__ == "__main__":
    sys.exit(main())
