"""Where and how MPI engines are launched: the one place :mod:`hpcai.cluster` is configured.

:func:`cluster_config` turns arguments -- else environment variables (``HPCAI_LAUNCHER`` local|slurm|pbs,
``HPCAI_MPIEXEC``, ``HPCAI_MPI_ARGS``, ``HPCAI_QUEUE``, ``HPCAI_ACCOUNT``, ``HPCAI_WALLTIME``), so a
JupyterHub kernel spec can preset a site's batch system -- into keyword arguments for
``ipyparallel.Cluster``, using ipyparallel's own launchers: ``MPIEngineSetLauncher`` here, or the Slurm and
PBS ones with the batch scripts below (all ranks of one MPI job, under srun or mpiexec). The ``mpiexec`` is
the active environment's: ipyparallel would run the first one on ``PATH``.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys

LAUNCHERS = {"local": "mpi", "mpi": "mpi", "slurm": "slurm", "pbs": "pbs"}

SLURM_TEMPLATE = """#!/bin/sh
#SBATCH --job-name=ipengine-{cluster_id}
#SBATCH --ntasks={n}
#SBATCH --output={output_file}
#SBATCH --export=ALL
{directives}
srun {mpi_args} {program_and_args}
"""
PBS_TEMPLATE = """#!/bin/sh
#PBS -N ipengine-{cluster_id}
#PBS -V
#PBS -j oe
#PBS -o {output_file}
{directives}
cd "$PBS_O_WORKDIR"
{mpiexec} -n {n} {mpi_args} {program_and_args}
"""


def find_mpiexec() -> str:
    """``HPCAI_MPIEXEC``, else the active environment's ``mpiexec`` (beside the interpreter), else PATH's."""
    if os.environ.get("HPCAI_MPIEXEC"):
        return os.environ["HPCAI_MPIEXEC"]
    for d in (os.path.join(sys.prefix, "bin"), os.path.dirname(sys.executable)):
        if os.access(os.path.join(d, "mpiexec"), os.X_OK):
            return os.path.join(d, "mpiexec")
    return shutil.which("mpiexec") or "mpiexec"


def _thread_limits(n: int) -> dict:
    """BLAS/OpenMP threads per local engine so n engines share this machine's cores instead of spinning
    against each other (OpenBLAS threads that busy-wait on oversubscribed cores slow training 5-10x);
    variables the user has set win."""
    per_rank = str(max(1, (os.cpu_count() or 1) // n))
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    return {k: per_rank for k in names if k not in os.environ}


def cluster_config(n: int, launcher=None, mpi_args=None, mpiexec=None, env=None, queue=None, account=None,
                   walltime=None, batch_options=()) -> dict:
    """Keyword arguments for ``ipyparallel.Cluster``: the one place engines are configured.

    Args:
        launcher: "local" (mpiexec here; also "mpi"), "slurm" (sbatch + srun) or "pbs" (qsub + mpiexec).
        mpi_args: extra arguments for mpiexec (local, PBS) or srun (Slurm), e.g. ``["-bind-to", "core"]``.
        env: environment variables for the engines.
        queue, account, walltime: the batch job's partition/queue, account and time limit ("HH:MM:SS").
        batch_options: further batch directives, verbatim: ``["--gpus-per-task=1"]`` for Slurm; for PBS the
            node request, e.g. ``["-l select=2:ncpus=64:mpiprocs=64"]`` (Slurm's comes from ``--ntasks=n``).

    Batch engines run ``ipengine --mpi`` under srun/mpiexec in one job (the script is ipyparallel's
    ``batch_template``); the controller stays here, listening on all interfaces for the compute nodes.
    """
    try:
        from traitlets.config import Config
    except ImportError:
        raise ImportError("hpcai.cluster needs ipyparallel: pip install 'hpcai[notebook,mpi]'") from None
    name = launcher or os.environ.get("HPCAI_LAUNCHER", "local")
    if name not in LAUNCHERS:
        raise ValueError(f"launcher: expected one of {sorted(LAUNCHERS)}, got {name!r}")
    kind, c = LAUNCHERS[name], Config()
    mpi_args = list(mpi_args) if mpi_args is not None else shlex.split(os.environ.get("HPCAI_MPI_ARGS", ""))
    mpiexec = mpiexec or find_mpiexec()
    if kind == "mpi":
        c.MPIEngineSetLauncher.mpi_cmd = [mpiexec]
        c.MPIEngineSetLauncher.mpi_args = mpi_args
        c.MPIEngineSetLauncher.environment = {**_thread_limits(n), **dict(env or {})}
        return {"engines": "mpi", "n": n, "config": c}
    queue, account, walltime = (v or os.environ.get(f"HPCAI_{k}", "") for k, v in
                                (("QUEUE", queue), ("ACCOUNT", account), ("WALLTIME", walltime)))
    if kind == "slurm":
        prefix, template, cls = "#SBATCH", SLURM_TEMPLATE, "SlurmEngineSetLauncher"
        options = [queue and f"--partition={queue}", account and f"--account={account}",
                   walltime and f"--time={walltime}"]
    else:
        prefix, template, cls = "#PBS", PBS_TEMPLATE, "PBSEngineSetLauncher"
        options = [queue and f"-q {queue}", account and f"-A {account}", walltime and f"-l walltime={walltime}"]
    directives = "\n".join(f"{prefix} {o}" for o in [*options, *batch_options] if o)
    c[cls].batch_template = template
    c[cls].namespace = {"directives": directives, "mpi_args": shlex.join(mpi_args), "mpiexec": shlex.quote(mpiexec)}
    c[cls].engine_args = ["--mpi"]
    c[cls].environment = dict(env or {})
    return {"engines": kind, "n": n, "config": c, "controller_ip": "*"}
