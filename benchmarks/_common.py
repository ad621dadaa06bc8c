"""What the benchmark scripts share: the result row, the BLAS thread count, and launching under mpiexec.

The scripts import it as ``_common``: running ``python benchmarks/X.py`` (which is also what ``hpcai bench``
does) puts ``benchmarks/`` first on ``sys.path``. The leading underscore keeps it out of ``hpcai bench --list``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_LAUNCHER_VARS = ("PMI_", "PMIX_", "OMPI_", "HYDRA_")  # set inside an MPI launch; a child launch must not inherit them
RESULT = "RESULT "


def report(name: str, value, note: str = "") -> None:
    """Print one result row: name, value (4 significant digits) and a note."""
    print(f"  {name:<46} {value:>12.4g}  {note}".rstrip(), flush=True)


def blas_threads():
    """Thread counts of the loaded BLAS libraries (threadpoolctl)."""
    import threadpoolctl
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def find_mpiexec() -> str | None:
    """hpcai's mpiexec (``HPCAI_MPIEXEC``, the one beside this Python, else on PATH), or None if there is none."""
    from hpcai.cluster_config import find_mpiexec as hpcai_mpiexec
    found = hpcai_mpiexec()
    return found if os.access(found, os.X_OK) else shutil.which(found)


def under_mpiexec() -> bool:
    """Whether this process is one of several ranks of an MPI launch."""
    from hpcai.parallel.comm import launched_by_mpi
    return launched_by_mpi()


def print_result(obj) -> None:
    """Print ``obj`` as the JSON line that :func:`mpi_run` reads back (call it on rank 0 only)."""
    print(RESULT + json.dumps(obj), flush=True)


def mpi_run(ranks: int, args, needed_by: str, timeout: float = 600, cwd=None):
    """Run ``mpiexec -n ranks python *args`` with one BLAS thread per rank; return the JSON of the last line
    it printed with :func:`print_result`. Raises ``SystemExit`` naming ``needed_by`` when there is no
    mpiexec, ``RuntimeError`` with the ranks' output when the run fails or prints no result."""
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise SystemExit(f"{needed_by} needs mpiexec (pip install mpich, or an MPI library) and mpi4py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_VARS)}
    cmd = [mpiexec, "-n", str(ranks), sys.executable, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, **ONE_THREAD}, timeout=timeout, cwd=cwd)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len(RESULT):])


def section_parser(doc: str, sections) -> argparse.ArgumentParser:
    """A parser for a script made of named sections (positional, default all); the script adds its own
    options and calls :func:`chosen_sections` on what it parsed."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("sections", nargs="*", help=f"any of {list(sections)} (default: all)")
    return parser


def chosen_sections(parser, args, sections) -> list:
    """The sections named on the command line (all when none), or a parser error naming the unknown ones."""
    unknown = sorted(set(args.sections) - set(sections))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(sections)}")
    return [s for s in sections if s in (args.sections or sections)]
