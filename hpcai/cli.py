"""The ``hpcai`` command.

  hpcai run climate_sr --engines 2        # the application on 2 local MPI engines (ipyparallel)
  hpcai run climate_sr --days 2 --ratio 50 --output results/
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
import importlib.util
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import amp, datasets, nn, optim
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
    its declared choices; an option not given is left out (the Config's default applies)."""
    from .apps import config_fields
    for spec in config_fields(config_cls):
        def parse(text, spec=spec):
            try:
                return spec.parse(text)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        parse.__name__ = spec.kind.__name__
        auto = " ('' or auto means None)" if spec.optional else ""
        parser.add_argument("--" + spec.name.replace("_", "-"), type=parse, default=argparse.SUPPRESS,
                            choices=spec.choices, help=spec.help + auto)


def main(argv=None) -> int:
    from .apps import APPS
    argv, script_args = list(sys.argv[1:] if argv is None else argv), []
    if argv[:1] == ["bench"] and "--" in argv:  # hpcai bench NAME -- ARGS: ARGS go to the script untouched
        argv, script_args = argv[:argv.index("--")], argv[argv.index("--") + 1:]
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
        a.add_argument("--quiet", action="store_true")
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
                    help="folder to serve (default: the source tree's notebooks/ if there, else the current folder)")
    lb.add_argument("--ip", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    lb.add_argument("--port", type=int, default=8888, help="port (default: 8888; fails if taken, no silent change)")
    lb.add_argument("--token", default=None, help="access token (default: a new random one, printed in the URL)")
    lb.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    lb.add_argument("--allow-root", action="store_true", help="let root run it (containers; not recommended)")
    from .tune import command as tune_command
    tune_command.add_parser(sub, APPS)
    from . import site
    site.add_parser(sub)
    b = sub.add_parser("bench", help="run the source tree's benchmark scripts (hpcai bench NAME -- ARGS)")
    b.add_argument("names", nargs="*", metavar="NAME",
                   help=f"benchmarks to run (default: {' '.join(BENCH_DEFAULT)}, the quick ones)")
    b.add_argument("--list", action="store_true", help="list the benchmarks found and exit")
    b.add_argument("--dir", default=None, help="benchmarks folder (default: the source tree's benchmarks/)")
    args = parser.parse_args(argv)
    if args.command == "lab":
        try:
            return lab(args.notebook_dir, args.ip, args.port, args.token, browser=not args.no_browser,
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
            result = run_app(args.app, config, engines=args.engines, verbose=0 if args.quiet else 1)
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


# -- hpcai lab -----------------------------------------------------------------------------------------------
def _source_dir(name: str) -> Path | None:
    """The folder ``name`` of the source tree this package runs from (a checkout or editable install), else None.

    Notebooks and benchmarks ship with the source, not with the wheel.
    """
    root = Path(__file__).resolve().parents[1]
    return root / name if (root / name).is_dir() and (root / "pyproject.toml").is_file() else None


def _lab_address(ip: str) -> str:
    """``ip`` checked: an IP address or ``localhost``; a warning on stderr when it is not a loopback address."""
    if ip != "localhost":
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"--ip: expected an IP address such as 127.0.0.1 (0.0.0.0: every interface), "
                             f"got {ip!r}") from None
        if not address.is_loopback:
            print(f"hpcai lab: warning: listening on {ip}, not only on this machine's loopback interface: anyone "
                  "who can reach this port and learns the token runs code as you. Prefer the default 127.0.0.1 "
                  "with an SSH tunnel (ssh -L 8888:127.0.0.1:8888 host).", file=sys.stderr)
    return ip


# JupyterLab's main, with the token moved from the environment into the server's own configuration
LAB_MAIN = ("import os, sys; from jupyterlab.labapp import main; token = os.environ.pop('JUPYTER_TOKEN'); "
            "sys.exit(main([*sys.argv[1:], '--IdentityProvider.token=' + token]))")


def lab_command(notebook_dir=None, ip: str = "127.0.0.1", port: int = 8888, token=None, browser: bool = True,
                allow_root: bool = False):
    """The JupyterLab command line, its environment and the URL to open, checked (ValueError when wrong).

    The token travels in the environment (``JUPYTER_TOKEN``), not on the command line, where other users of a
    shared login node could read it with ``ps``; the server takes it out of its environment as it starts
    (:data:`LAB_MAIN`), so the kernels it starts -- and the engines and batch jobs started from them --
    never carry it.
    """
    if importlib.util.find_spec("jupyterlab") is None:
        raise ValueError("JupyterLab is not installed: pip install 'hpcai[notebook]'")
    if token is not None and not token.strip():
        raise ValueError("--token: an empty token would switch authentication off; leave it out for a random one")
    if not 0 < port < 65536:
        raise ValueError(f"--port: expected 1..65535, got {port}")
    ip = _lab_address(ip)
    root = Path(notebook_dir) if notebook_dir else (_source_dir("notebooks") or Path.cwd())
    if not root.is_dir():
        raise ValueError(f"--notebook-dir: no such directory: {root}")
    token = token or secrets.token_urlsafe(24)
    command = [sys.executable, "-c", LAB_MAIN, f"--ServerApp.root_dir={root.resolve()}", f"--ServerApp.ip={ip}",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0",  # the printed URL must be the real one
               "--ServerApp.answer_yes=True"]  # one Ctrl-C stops the server (kernels shut down), no prompt
    if not browser:
        command.append("--no-browser")
    if allow_root:
        command.append("--allow-root")
    env = {**os.environ, "JUPYTER_TOKEN": token}
    env.pop("JUPYTER_TOKEN_FILE", None)
    host = ip
    if ip in ("0.0.0.0", "::"):
        import socket
        host = socket.gethostname()
    elif ":" in ip:
        host = f"[{ip}]"
    return command, env, f"http://{host}:{port}/lab?token={token}"


def lab(notebook_dir=None, ip: str = "127.0.0.1", port: int = 8888, token=None, browser: bool = True,
        allow_root: bool = False) -> int:
    """Start JupyterLab on the notebooks and become it (the process is replaced, so signals reach it directly)."""
    command, env, url = lab_command(notebook_dir, ip, port, token, browser, allow_root)
    root = next(a.split("=", 1)[1] for a in command if a.startswith("--ServerApp.root_dir="))
    print(f"hpcai lab: JupyterLab on {root}\n  open {url}\n  Ctrl-C stops it", flush=True)
    sys.stderr.flush()
    if os.name == "posix":
        os.execve(sys.executable, command, env)
    proc = subprocess.Popen(command, env=env)  # Windows: no exec; Ctrl-C reaches the child through the console
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


# -- hpcai bench ---------------------------------------------------------------------------------------------
BENCH_DEFAULT = ("core", "parallel")  # about a minute each on 2 cores; climate and train_vs_torch take minutes


def benchmarks(directory=None) -> dict:
    """Benchmark scripts ``{name: (path, first docstring line)}`` of ``directory`` (default: the source tree's)."""
    import ast
    folder = Path(directory) if directory else _source_dir("benchmarks")
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
