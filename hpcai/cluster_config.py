"""Where and how MPI engines are launched: the one place :mod:`hpcai.cluster` is configured.

:func:`cluster_config` turns arguments -- else environment variables (``HPCAI_LAUNCHER`` local|slurm|pbs,
``HPCAI_MPIEXEC``, ``HPCAI_MPI_ARGS``, ``HPCAI_QUEUE``, ``HPCAI_ACCOUNT``, ``HPCAI_WALLTIME``), so a
JupyterHub kernel spec can preset a site's batch system -- into keyword arguments for
``ipyparallel.Cluster``, using ipyparallel's own launchers: ``MPIEngineSetLauncher`` here, or the Slurm and
PBS ones with the batch scripts below (all ranks of one MPI job, under srun or mpiexec). The ``mpiexec`` is
the active environment's: ipyparallel would run the first one on ``PATH``.

A local run listens on loopback only: ipyparallel's controller binds 127.0.0.1, MPICH's ``mpiexec.gforker``
(beside ``mpiexec``) starts the ranks without opening a port, and the ranks' transports are held to the
loopback interface. Given ``mpi_args`` (Hydra's options), Hydra's ``mpiexec`` runs instead, and it listens on
every interface for its proxies. Batch engines span nodes: there the controller listens where the compute
nodes reach it, and MPI uses the site's network.
"""
from __future__ import annotations

import os
import secrets
import shlex
import shutil
import sys
import tempfile

from .cluster_batch import controller_ip

LAUNCHERS = {"local": "mpi", "mpi": "mpi", "slurm": "slurm", "pbs": "pbs"}

SLURM_TEMPLATE = """#!/bin/sh
#SBATCH --job-name=ipengine-{cluster_id}
#SBATCH --ntasks={n}
#SBATCH --output={output_file}
#SBATCH --export=ALL
{directives}
{start} {program_and_args}
"""
STARTERS = ("mpiexec", "srun")  # how a Slurm job starts its ranks (see cluster_config)
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


def _local_mpiexec(mpiexec: str, mpi_args: list) -> str:
    """MPICH's fork-only ``mpiexec.gforker`` where it sits beside ``mpiexec`` and no ``mpi_args`` (Hydra's
    options) are given, else ``mpiexec``. Hydra's mpiexec listens on every interface (0.0.0.0) for its
    proxies, whatever ``-iface``/``-localhost`` say, and its ranks inherit that socket; gforker talks to
    the ranks it forks over socket pairs and opens no port: a local run stays on this machine."""
    gforker = os.path.join(os.path.dirname(mpiexec), "mpiexec.gforker")
    if mpi_args or os.path.basename(mpiexec) not in ("mpiexec", "mpirun") or not os.access(gforker, os.X_OK):
        return mpiexec
    return gforker


def _loopback_only() -> dict:
    """Variables that keep the ranks' own transports of a local run on the loopback interface (UCX, the
    default of the mpich wheel, and libfabric's tcp/sockets providers would listen on the external address
    too); variables the user has set win."""
    names = ("UCX_NET_DEVICES", "FI_TCP_IFACE", "FI_SOCKETS_IFACE")
    return {k: _loopback_interface() for k in names if k not in os.environ}


def _names_hosts(mpi_args: list) -> bool:
    """Whether ``mpi_args`` put ranks on other hosts (Hydra's and Open MPI's host options)."""
    options = {"-f", "-hosts", "-host", "-hostfile", "-machinefile", "--host", "--hostfile", "--machinefile"}
    return any(a.split("=")[0] in options for a in mpi_args)


def _loopback_interface() -> str:
    """The name of the interface holding 127.0.0.1 ("lo" on Linux, "lo0" on macOS)."""
    try:
        import psutil
        found = [name for name, addrs in psutil.net_if_addrs().items() if any(a.address == "127.0.0.1" for a in addrs)]
    except (ImportError, OSError):
        found = []
    return found[0] if found else "lo"


def _slurm_start(n: int, mpiexec: str, mpi_args: list) -> str:
    """The command that starts the ranks inside the Slurm job (see :func:`cluster_config`'s ``mpi_args``).

    Either way ``SLURM_EXPORT_ENV`` is ALL: from inside another job (a hub's JupyterLab) it would otherwise keep
    all but that job's few variables -- the engines' connection info among them -- from the ranks."""
    starter = os.environ.get("HPCAI_SLURM_STARTER", "")
    if starter and starter not in STARTERS:
        raise ValueError(f"HPCAI_SLURM_STARTER: expected one of {', '.join(STARTERS)}, got {starter!r}")
    hydra = os.access(os.path.join(os.path.dirname(mpiexec), "mpiexec.hydra"), os.X_OK)
    if any(a.startswith("--mpi") for a in mpi_args) or starter == "srun" or not (starter or hydra):
        pmi = [] if any(a.startswith("--mpi") for a in mpi_args) else ["--mpi=pmi2"]
        return shlex.join(["srun", "--export=ALL", *pmi, *mpi_args])
    return "SLURM_EXPORT_ENV=ALL " + shlex.join([mpiexec, "-n", str(n), *mpi_args])


def cluster_config(n: int, launcher=None, mpi_args=None, mpiexec=None, env=None, queue=None, account=None,
                   walltime=None, batch_options=()) -> dict:
    """Keyword arguments for ``ipyparallel.Cluster``: the one place engines are configured.

    Args:
        launcher: "local" (mpiexec here; also "mpi"), "slurm" (sbatch + srun) or "pbs" (qsub + mpiexec).
        mpi_args: extra arguments for mpiexec, or for srun where srun starts the ranks, e.g. ``["-bind-to", "core"]``.
            Inside a Slurm job the ranks start under MPICH's own ``mpiexec`` (Hydra, which starts its proxies
            through Slurm) when the environment's MPI is MPICH -- the same PMI as local runs: under
            ``srun --mpi=pmi2`` the mpich wheel's ``MPI_Init`` failed now and then (UCX address exchange) --
            else under ``srun --mpi=pmi2`` (Intel MPI, MVAPICH and Open MPI 4 speak PMI2; without a PMI
            plugin, many sites' default, each rank would be a 1-rank world). ``HPCAI_SLURM_STARTER=srun`` or
            ``mpiexec`` chooses; a ``--mpi=`` in ``mpi_args`` (``["--mpi=pmix"]`` for Open MPI 5) means srun.
        env: environment variables for the engines.
        queue, account, walltime: the batch job's partition/queue, account and time limit ("HH:MM:SS").
        batch_options: further batch directives, verbatim: ``["--gpus-per-task=1"]`` for Slurm; for PBS the
            node request, e.g. ``["-l select=2:ncpus=64:mpiprocs=64"]`` (Slurm's comes from ``--ntasks=n``).

    Batch engines run ``ipengine --mpi`` under srun/mpiexec in one job (the script is ipyparallel's
    ``batch_template``); the controller stays here, listening on the one address the compute nodes reach it
    at (:func:`~hpcai.cluster_batch.controller_ip`; ``HPCAI_CONTROLLER_IP`` chooses another).
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
        c.MPIEngineSetLauncher.mpi_cmd = [_local_mpiexec(mpiexec, mpi_args)]
        c.MPIEngineSetLauncher.mpi_args = mpi_args
        here = {} if _names_hosts(mpi_args) else _loopback_only()  # ranks on other hosts need the network
        c.MPIEngineSetLauncher.environment = {**_thread_limits(n), **here, **dict(env or {})}
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
    c[cls].namespace = {"directives": directives, "mpi_args": shlex.join(mpi_args), "mpiexec": shlex.quote(mpiexec),
                        "start": _slurm_start(n, mpiexec, mpi_args) if kind == "slurm" else ""}
    c[cls].engine_args = ["--mpi"]
    # ipyparallel writes the script to the working directory (a notebook's folder); a private file instead
    c[cls].batch_file_name = os.path.join(tempfile.gettempdir(), f"hpcai-{kind}-engines-{secrets.token_hex(8)}.sh")
    c[cls].environment = dict(env or {})
    return {"engines": kind, "n": n, "config": c, "controller_ip": controller_ip()}
