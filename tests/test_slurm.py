"""Engines through a real Slurm: one job whose ranks form one MPI world, data-parallel training identical to
local engines, a stop that leaves the queue empty, a job that pends forever and one cancelled mid-run that
end with a clear message instead of a hang.

The one-node Slurm comes from ``.ci/slurm`` (Debian's slurm-wlm and munge): CI starts it and exports
``SLURM_CONF``; without it, a root developer's run starts one for the session (stopped by PID afterwards).
Otherwise the tests skip -- except under ``HPCAI_REQUIRE_SLURM=1`` (CI), where that is a failure.
"""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("ipyparallel")
pytest.importorskip("mpi4py")
psutil = pytest.importorskip("psutil")

from hpcai.cluster import EngineError, Engines, EngineStartError  # noqa: E402
from hpcai.cluster_batch import BatchJob  # noqa: E402
from hpcai.runner import run_app  # noqa: E402

import procs  # noqa: E402
from procs import slurm_queue  # noqa: E402

# The one-node cluster is a site whose ranks share one machine: UCX keeps to shared memory and loopback there
# (its tcp transport on a virtual NIC of unknown bandwidth fails MPI_Init now and then: pmodels/mpich#7417)
SITE = {"UCX_NET_DEVICES": "lo"}
ONE_THREAD = {**SITE, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
DIGITS = {"epochs": 2, "hidden": 32, "batch_size": 64, "seed": 3}




def test_slurm_engines_train_like_local_ones_and_leave_nothing(slurm):
    engines = Engines(2, launcher="slurm", env=ONE_THREAD, timeout=120)
    with engines:
        job = engines.cluster.engine_set.job_id
        assert job in slurm_queue()
        assert [r.rank for r in engines.ranks] == [0, 1]  # start() checked they are one 2-rank MPI world
        pids = [r.pid for r in engines.ranks]
        on_slurm = run_app("digits", engines=engines, verbose=0, **DIGITS)
    assert job not in slurm_queue(), "stop() left the engines' job in the queue"
    assert not procs.collect(lambda: pids, grace=20), "engine processes outlived stop()"
    here = run_app("digits", engines=2, verbose=0, **DIGITS)
    for name in ("test_accuracy", "test_loss"):
        assert np.array_equal(on_slurm.metrics[name], here.metrics[name]), name


def test_pending_job_ends_with_its_reason_within_the_timeout(slurm):
    engines = Engines(2, launcher="slurm", env=SITE, batch_options=["--begin=now+2hours"], timeout=6)
    t0 = time.monotonic()
    with pytest.raises(EngineStartError, match=r"within timeout=6 s; Slurm job \d+ is PENDING \(reason: BeginTime\)"):
        engines.start_sync()
    assert time.monotonic() - t0 < 60
    assert engines.client is None and not slurm_queue(), "the pending job was not cancelled"


def test_impossible_request_ends_at_once_with_the_schedulers_reason(slurm):
    t0 = time.monotonic()
    with pytest.raises(EngineStartError, match=r"Slurm job \d+ is PENDING \(reason: PartitionConfig\), which it never"):
        Engines(64, launcher="slurm", timeout=300).start_sync()  # 64 tasks on a 4-slot node
    assert time.monotonic() - t0 < 60 and not slurm_queue()


def test_job_cancelled_mid_run_is_reported_in_seconds(slurm):
    engines = Engines(2, launcher="slurm", env=SITE, timeout=120)
    with engines:
        job = engines.cluster.engine_set.job_id
        threading.Timer(2.0, subprocess.run, (["scancel", job],)).start()
        t0 = time.monotonic()
        with pytest.raises(EngineError, match=rf"Slurm job {job} is (CANCELLED|COMPLETING)"):
            engines.run_sync(time.sleep, 120)
        assert time.monotonic() - t0 < 30
    assert job not in slurm_queue()


def test_rank_that_fails_to_start_is_reported_at_once(slurm, caplog):
    """A rank dying in MPI_Init: one more try (often transient in a fresh job), then the error, in seconds."""
    t0 = time.monotonic()
    with pytest.raises(EngineStartError, match=r"(?s)(a rank of the batch job failed to start|Slurm job \d+ is FAILED).*Fatal error in"):
        Engines(2, launcher="slurm", env={"UCX_TLS": "no-such-transport"}, timeout=300).start_sync()
    assert time.monotonic() - t0 < 90 and not slurm_queue()
    assert "starting the engines once more" in caplog.text


def test_site_kernel_sends_a_notebooks_engines_to_slurm(slurm, tmp_path, monkeypatch):
    """The kernel spec ``hpcai site kernel`` installs: Engines() with no arguments in it is a Slurm job."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import start_new_kernel

    from hpcai import site
    env = site.site_environment("slurm", partition="debug", walltime="00:10:00", threads=1, env=SITE)
    where = site.install_kernel("hpcai-slurm-test", env, prefix=str(tmp_path))
    assert where.startswith(str(tmp_path))
    monkeypatch.setenv("JUPYTER_PATH", os.path.dirname(os.path.dirname(where)))  # where a hub's users find it
    assert KernelSpecManager().get_kernel_spec("hpcai-slurm-test").env["HPCAI_LAUNCHER"] == "slurm"
    km, kc = start_new_kernel(kernel_name="hpcai-slurm-test")
    lines = []
    try:
        code = ("from hpcai.cluster import Engines\n"
                "with Engines(2) as e:\n"
                "    print('launcher', e.config['engines'], 'job', e.cluster.engine_set.job_id, 'ranks', len(e.ranks))\n")
        reply = kc.execute_interactive(code, timeout=180, output_hook=lambda msg: lines.append(
            msg["content"].get("text", "")) if msg["msg_type"] == "stream" else None)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    out = "".join(lines)
    assert "launcher slurm" in out and "ranks 2" in out, out
    assert not slurm_queue()


def test_client_killed_its_engines_job_is_cancelled(slurm):
    """SIGKILL of the process that holds the engines (a kernel, a script): its guard cancels the job and removes
    its batch script."""
    code = ("import sys, time\nfrom hpcai.cluster import Engines\n"
            f"e = Engines(2, launcher='slurm', env={SITE!r}, timeout=120).start_sync()\n"
            "print('job', e.cluster.engine_set.job_id, e.cluster.engine_set.batch_file, flush=True)\n"
            "time.sleep(600)\n")
    client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = client.stdout.readline()
        assert line.startswith("job "), line
        job, script = line.split()[1:3]
        assert job in slurm_queue() and os.path.isfile(script)
    finally:
        client.kill()
        client.wait()
    deadline, batch = time.monotonic() + 30, BatchJob("slurm", job)
    while batch.active() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert batch.state()[0] == "CANCELLED", f"the guard did not cancel the job: {batch.describe()}"
    assert job not in slurm_queue()
    while os.path.exists(script) and time.monotonic() < deadline + 30:  # removed once the processes have ended
        time.sleep(0.5)
    assert not os.path.exists(script), "the guard left the job's batch script behind"
