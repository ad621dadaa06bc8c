"""Shared fixtures: every backend-aware test runs on numpy and, where a GPU is usable, on cupy; a one-node
Slurm for the batch-system tests."""
import os
import shutil
import subprocess

import numpy as np
import pytest

from hpcai import backend

BACKENDS = ["numpy", "cupy"]


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array module under test; the cupy case skips cleanly without a usable GPU."""
    if request.param == "cupy":
        if not backend.GPU_AVAILABLE:
            pytest.skip("no usable GPU (cupy absent or no CUDA device)")
        return backend._cupy
    return np


@pytest.fixture
def rng():
    """A seeded generator, so every random test is reproducible."""
    return np.random.default_rng(1234)


SLURM_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".ci", "slurm")


def _works() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(set(out.stdout.split()) & {"idle", "mixed", "allocated"})


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A working Slurm: the environment's (``SLURM_CONF``, as ``.ci/run`` exports), else -- as root -- a
    one-node Slurm that ``.ci/slurm`` starts for the session and stops by PID afterwards. Skips without one,
    fails instead under ``HPCAI_REQUIRE_SLURM=1`` (CI)."""
    started = None
    if not (os.environ.get("SLURM_CONF") and _works()):
        why = None
        if shutil.which("slurmctld") is None or shutil.which("munged") is None:
            why = "Slurm is not installed (Debian: apt-get install slurm-wlm munge)"
        elif os.getuid() != 0:
            why = "no SLURM_CONF cluster and not root to start one (.ci/slurm start DIR)"
        if why is None:
            started = str(tmp_path_factory.mktemp("slurm"))
            subprocess.run([SLURM_SCRIPT, "start", started], check=True, timeout=120, capture_output=True)
            os.environ["SLURM_CONF"] = os.path.join(started, "slurm.conf")
            if not _works():
                subprocess.run([SLURM_SCRIPT, "stop", started], timeout=60)
                why = "the one-node Slurm started by .ci/slurm is not idle"
        if why:
            if os.environ.get("HPCAI_REQUIRE_SLURM") == "1":
                pytest.fail(f"HPCAI_REQUIRE_SLURM=1 but {why}")
            pytest.skip(why)
    try:
        yield
    finally:
        if started:
            subprocess.run([SLURM_SCRIPT, "stop", started], timeout=60)
            os.environ.pop("SLURM_CONF", None)
