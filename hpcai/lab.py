"""``hpcai lab``: JupyterLab on the notebooks of hpcai's source tree, supervised so that no process it starts
(kernels, controllers, mpiexec, engines) outlives it; and where that source tree is (notebooks and
benchmarks ship with the source, not with the wheel)."""
from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path


def _is_source_tree(root: Path) -> bool:
    """Whether ``root`` is a copy of hpcai's source tree (its pyproject names the project ``hpcai``)."""
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False
    return any(line.replace(" ", "") in ('name="hpcai"', "name='hpcai'") for line in text.splitlines())


def source_dir(name: str) -> Path | None:
    """The folder ``name`` of hpcai's source tree: the one the current folder is in (a copy of the repository,
    whichever hpcai is installed), else the one this package runs from (a checkout or editable install), else
    None. Notebooks and benchmarks ship with the source, not with the wheel."""
    here = Path.cwd().resolve()
    for root in (*[d for d in (here, *here.parents) if (d / "pyproject.toml").is_file()][:1],
                 Path(__file__).resolve().parents[1]):
        if (root / name).is_dir() and _is_source_tree(root):
            return root / name
    return None


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


QUICKSTART = "00_quickstart.ipynb"  # the notebook the lab opens on, when the folder served has it
LAB_GRACE = 20.0  # s the server has to shut its kernels down after SIGINT/SIGTERM before what is left is ended
TREE_GRACE = 5.0  # s between SIGTERM and SIGKILL to the processes left

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
    root = Path(notebook_dir) if notebook_dir else (source_dir("notebooks") or Path.cwd())
    if not root.is_dir():
        raise ValueError(f"--notebook-dir: no such directory: {root}")
    token = token or secrets.token_urlsafe(24)
    page = f"/lab/tree/{QUICKSTART}" if (root / QUICKSTART).is_file() else "/lab"  # the quickstart, else the Launcher
    command = [sys.executable, "-c", LAB_MAIN, f"--ServerApp.root_dir={root.resolve()}", f"--ServerApp.ip={ip}",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0",  # the printed URL must be the real one
               "--ServerApp.answer_yes=True",  # one Ctrl-C stops the server (kernels shut down), no prompt
               f"--ServerApp.default_url={page}"]  # what the browser opens
    if not browser:
        command.append("--no-browser")
    if allow_root or _is_root():
        command.append("--allow-root")
    env = {**os.environ, "JUPYTER_TOKEN": token}
    env.pop("JUPYTER_TOKEN_FILE", None)
    host = ip
    if ip in ("0.0.0.0", "::"):
        import socket
        host = socket.gethostname()
    elif ":" in ip:
        host = f"[{ip}]"
    return command, env, f"http://{host}:{port}{page}?token={token}"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def lab(notebook_dir=None, ip: str = "127.0.0.1", port: int = 8888, token=None, browser: bool = True,
        allow_root: bool = False) -> int:
    """Start JupyterLab on the notebooks, wait for it, and leave no process of it behind (POSIX, see
    :func:`supervise`; on Windows it runs as a plain child, and Ctrl-C reaches it through the console)."""
    command, env, url = lab_command(notebook_dir, ip, port, token, browser, allow_root)
    root = next(a.split("=", 1)[1] for a in command if a.startswith("--ServerApp.root_dir="))
    if _is_root() and not allow_root:
        print("hpcai lab: note: running as root (a container?), so JupyterLab runs with --allow-root", flush=True)
    print(f"hpcai lab: JupyterLab on {root}\n  open {url}\n  Ctrl-C stops it", flush=True)
    sys.stderr.flush()
    if os.name != "posix":
        proc = subprocess.Popen(command, env=env)  # Windows: Ctrl-C reaches the child through the console
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                continue
    return supervise(command, env)


def supervise(command, env=None, grace: float = LAB_GRACE, tree_grace: float = TREE_GRACE) -> int:
    """Run ``command`` (the server) as a child and, when it ends, end every process it left behind; its exit code.

    SIGINT, SIGTERM and SIGHUP to this process reach the server as SIGTERM: it shuts its kernels down. A
    terminal's Ctrl-C would reach the processes the kernels started (controllers, mpiexec, engines) too;
    without a terminal (nohup, a batch script, a container) nothing does, and the kernels may not have
    stopped them before the server gave up on them. So this process is the *subreaper* of the tree (Linux:
    orphans are re-parented to it, not to init, wherever they set up their own session) and remembers
    every descendant by PID as it goes; once the server has exited -- or ``grace`` s after the signal --
    what is left gets SIGTERM, and SIGKILL ``tree_grace`` s later.
    """
    import psutil
    _become_subreaper()
    me = psutil.Process()
    proc = subprocess.Popen(command, env=env, start_new_session=True)  # signals reach it from here only
    server, signalled, seen = psutil.Process(proc.pid), [], {}

    def forward(signum, frame):  # as SIGTERM: the server's orderly stop, terminal or not (SIGINT is not)
        signalled.append(time.monotonic())
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, forward) for sig in handled}
    try:
        while proc.poll() is None:
            _remember(me, seen, server.pid)
            if signalled and time.monotonic() - signalled[0] > grace:
                break  # the server did not stop in time: it is ended with the rest
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
        _remember(me, seen, server.pid)
        seen.pop(server.pid, None)
        left = _living([server, *seen.values()])
        if left and proc.poll() is not None:  # the kernels' own exit hooks may still be stopping engines
            left = _wait_gone(psutil, left, 2.0)
        _end_processes(psutil, left, tree_grace)
        if left:
            print(f"hpcai lab: ended {len(left)} process(es) the server left behind", file=sys.stderr, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    code = proc.wait()
    return code if code >= 0 else 128 - code


def _become_subreaper() -> None:
    """Linux: orphaned descendants are re-parented to this process instead of init (best effort elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _remember(me, seen: dict, server_pid: int) -> None:
    """Add this process's live descendants to ``seen`` ({pid: psutil.Process}; start times guard reused PIDs),
    and reap the orphans re-parented to it that have exited (all but the server, which ``Popen`` waits for)."""
    import psutil
    with contextlib.suppress(psutil.Error):
        for child in me.children(recursive=True):
            seen.setdefault(child.pid, child)
    for pid in [pid for pid, p in seen.items() if pid != server_pid and not _living([p])]:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        del seen[pid]


def _living(procs) -> list:
    """Those of ``procs`` still running (a zombie, or a PID reused by another process, counts as gone)."""
    import psutil
    alive = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


def _wait_gone(psutil, procs, seconds: float) -> list:
    """Wait up to ``seconds`` for ``procs`` to exit (reaping those that are our children); those still alive."""
    deadline = time.monotonic() + seconds
    while procs and time.monotonic() < deadline:
        psutil.wait_procs(procs, timeout=0.25)
        procs = _living(procs)
    return procs


def _end_processes(psutil, procs, grace: float) -> None:
    """SIGTERM to ``procs``, SIGKILL ``grace`` s later to those left; reaped where they are our children."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        procs = _wait_gone(psutil, procs, grace if sig == signal.SIGTERM else 5.0)
        if not procs:
            return
