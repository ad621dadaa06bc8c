"""What an HPC centre sets up once so hpcai's engines go to its compute nodes: the site kit.

One set of environment variables (:func:`site_environment`: launcher, partition, account, walltime, MPI
arguments, the controller's address, threads per engine) is what :func:`hpcai.cluster_config.cluster_config`
reads; the kit writes it where each user meets it:

- ``hpcai site kernel``: a Jupyter kernel spec presetting it, so ``Engines(4)`` or the panel's engines become a
  Slurm job with no change to any notebook;
- ``hpcai site hub``: a ``jupyterhub_config.py`` fragment -- batchspawner's Slurm spawner behind wrapspawner's
  profiles, each single-user JupyterLab a Slurm job, with the same variables in its environment;
- ``hpcai site engines``: the same variables as ``export`` lines, for a batch script or a shell.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile

from . import checks
from .cluster_config import LAUNCHERS

# the hub's profiles: (label, key, Slurm request); wrapspawner shows the label, batchspawner submits the request
PROFILES = (("1 core, 1 h", "1c1h", {"req_nprocs": "1", "req_runtime": "1:00:00"}),
            ("4 cores, 2 h", "4c2h", {"req_nprocs": "4", "req_runtime": "2:00:00"}),
            ("GPU", "gpu", {"req_nprocs": "4", "req_runtime": "2:00:00", "req_options": "--gres=gpu:1"}))


def site_environment(launcher: str = "slurm", partition: str = "", account: str = "", walltime: str = "",
                     mpi_args: str = "", controller_ip: str = "", threads: int | None = None, env=None) -> dict:
    """The variables hpcai's cluster configuration reads (``HPCAI_*``; the partition is ``HPCAI_QUEUE``, PBS's
    queue), plus thread limits and ``env``."""
    checks.choice("launcher", launcher, LAUNCHERS)
    for name, value in (("partition", partition), ("account", account), ("walltime", walltime), ("mpi_args", mpi_args),
                        ("controller_ip", controller_ip)):
        if "\n" in checks.text(name, value, empty=True):
            raise ValueError(f"{name}: expected one line of text, got {value!r}")
    out = {"HPCAI_LAUNCHER": launcher, "HPCAI_QUEUE": partition, "HPCAI_ACCOUNT": account, "HPCAI_WALLTIME": walltime,
           "HPCAI_MPI_ARGS": mpi_args, "HPCAI_CONTROLLER_IP": controller_ip}
    if threads is not None:
        checks.integer("threads", threads, 1)
        out.update({k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    for key, value in dict(env or {}).items():
        if not isinstance(key, str) or not key.isidentifier() or not isinstance(value, str):
            raise ValueError(f"env: expected NAME=VALUE strings, got {key!r}={value!r}")
        out[key] = value
    return {k: v for k, v in out.items() if v != ""}


def kernel_spec(environment: dict, display_name: str) -> dict:
    """A Jupyter kernel spec (kernel.json) running this Python's IPython kernel with ``environment`` set."""
    return {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": display_name, "language": "python", "env": dict(environment),
            "metadata": {"debugger": True}}


def install_kernel(name: str, environment: dict, display_name: str | None = None, *, user: bool = True,
                   prefix: str | None = None) -> str:
    """Install the kernel spec ``name`` (jupyter_client's own installer: per user, or under ``prefix`` -- e.g.
    the environment a hub's users share); returns the folder it went to."""
    checks.text("name", name)
    if not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"name: expected letters, digits, '-', '_' or '.', got {name!r}")
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError:
        raise ImportError("hpcai site kernel needs jupyter_client: pip install 'hpcai[notebook]'") from None
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "kernel.json"), "w") as f:
            json.dump(kernel_spec(environment, display_name or f"Python (hpcai, {name})"), f, indent=1)
        return KernelSpecManager().install_kernel_spec(tmp, name, user=user and prefix is None, prefix=prefix)


def hub_config(environment: dict, profiles=PROFILES, partition: str = "", account: str = "") -> str:
    """A ``jupyterhub_config.py`` fragment: wrapspawner's ProfilesSpawner over batchspawner's SlurmSpawner,
    each profile a Slurm request; the single-user servers get ``environment`` (their engines go to Slurm)."""
    rows = ",\n".join(f"    ({label!r}, {key!r}, 'batchspawner.SlurmSpawner', {request!r})"
                      for label, key, request in profiles)
    lines = ["# JupyterLab as a Slurm job, one profile per request (written by `hpcai site hub`)",
             "import batchspawner  # noqa: registers its API handler, which wrapspawner's late import would miss",
             "c.JupyterHub.spawner_class = 'wrapspawner.ProfilesSpawner'",
             "c.Spawner.default_url = '/lab'",
             "c.Spawner.start_timeout = 300  # a job may queue",
             "c.Spawner.http_timeout = 120",
             f"c.ProfilesSpawner.profiles = [\n{rows},\n]",
             # on Spawner, not SlurmSpawner: wrapspawner links its own traits (environment too) down to the child
             f"c.Spawner.environment = {dict(environment)!r}"]
    if partition:
        lines.append(f"c.SlurmSpawner.req_partition = {partition!r}")
    if account:
        lines.append(f"c.SlurmSpawner.req_account = {account!r}")
    return "\n".join(lines) + "\n"


def export_lines(environment: dict) -> str:
    """``export NAME=VALUE`` lines, quoted for a POSIX shell."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in environment.items())


# -- the command line -------------------------------------------------------------------------------------
def add_parser(sub) -> None:
    """``hpcai site kernel|hub|engines`` with the site's options."""
    s = sub.add_parser("site", help="write what an HPC centre sets up once: kernel spec, hub profiles, engine settings")
    ssub = s.add_subparsers(dest="what", required=True)
    for what, text in (("kernel", "install a Jupyter kernel spec whose engines go to the batch system"),
                       ("hub", "print a jupyterhub_config.py fragment (batchspawner + wrapspawner profiles)"),
                       ("engines", "print the engine settings as shell export lines")):
        p = ssub.add_parser(what, help=text)
        p.add_argument("--launcher", default="slurm", choices=sorted(LAUNCHERS))
        p.add_argument("--partition", default="", help="the batch partition/queue for the engines")
        p.add_argument("--account", default="", help="the account to charge")
        p.add_argument("--walltime", default="", help="the engines' time limit, HH:MM:SS")
        p.add_argument("--mpi-args", default="", help="extra srun/mpiexec arguments, e.g. '--mpi=pmix'")
        p.add_argument("--controller-ip", default="", help="the address compute nodes reach this host at")
        p.add_argument("--threads", type=int, default=None, help="BLAS/OpenMP threads per engine")
        p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="a further variable")
        if what == "kernel":
            p.add_argument("--name", default="hpcai-batch", help="the kernel's name (default: hpcai-batch)")
            p.add_argument("--display-name", default=None)
            p.add_argument("--prefix", default=None, help="install under this prefix (shared) instead of per user")


def run(parser, args) -> int:
    try:
        env = dict(item.split("=", 1) for item in args.env if "=" in item)
        if len(env) != len(args.env):
            raise ValueError(f"env: expected NAME=VALUE, got {[e for e in args.env if '=' not in e]}")
        environment = site_environment(args.launcher, args.partition, args.account, args.walltime, args.mpi_args,
                                       args.controller_ip, args.threads, env)
        if args.what == "kernel":
            where = install_kernel(args.name, environment, args.display_name, prefix=args.prefix)
            print(f"installed kernel {args.name!r} in {where}")
        elif args.what == "hub":
            print(hub_config(environment, partition=args.partition, account=args.account), end="")
        else:
            print(export_lines(environment), end="")
    except (ValueError, ImportError) as e:
        parser.exit(2, f"hpcai site: {e}\n")
    return 0
