"""hpcai.cluster on real ipyparallel MPI engines: data-parallel training with rank-ordered results, a clean
stop (checked by PID), failures that end in seconds instead of hanging (an exception on one rank while the
other waits in a collective, from run() and from a %%px-style execute), a killed rank resumed from the last
checkpoint, launch failures reported with mpiexec's own output, and the Slurm/PBS configuration.

Each engine start takes several seconds; the functions below run on the engines, which import this module
(the engines get this directory on PYTHONPATH).
"""
import hashlib
import logging
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

ipp = pytest.importorskip("ipyparallel")
psutil = pytest.importorskip("psutil")
pytest.importorskip("mpi4py")

import procs  # noqa: E402
from hpcai import optim  # noqa: E402
from hpcai.cluster import EngineError, Engines, EngineStartError, cluster_config, find_mpiexec  # noqa: E402
from hpcai.train import Callback  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
ENGINE_ENV = {"PYTHONPATH": os.pathsep.join([TESTS, os.path.dirname(TESTS), os.environ.get("PYTHONPATH", "")])}
EPOCHS = 4
needs_mpiexec = pytest.mark.skipif(not os.access(find_mpiexec(), os.X_OK), reason="no mpiexec in this environment")


# -- run on the engines ---------------------------------------------------------------------------------
class AveragedSGD(optim.SGD):
    """SGD that first averages every gradient over the ranks: synchronous data parallelism, by hand."""

    def __init__(self, params, comm, **kwargs):
        super().__init__(params, **kwargs)
        self.comm = comm

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad = self.comm.allreduce_(np.ascontiguousarray(p.grad)) / self.comm.size
        return super().step(closure)


class SlowEpochs(Callback):
    def __init__(self, seconds):
        self.seconds = seconds

    def on_epoch_end(self, epoch, logs=None):
        time.sleep(self.seconds)


def train(epochs=EPOCHS, checkpoint=None, resume_from=None, epoch_sleep=0.0):
    """A small MLP on digits, data parallel over all ranks; what each rank ends with."""
    from hpcai import datasets, nn
    from hpcai.parallel import world
    from hpcai.train import ModelCheckpoint, fit, read_checkpoint
    comm = world()
    (x, y), _ = datasets.digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 32, rng=0), nn.ReLU(), nn.Linear(32, 10, rng=1))
    callbacks = [SlowEpochs(epoch_sleep)] + ([ModelCheckpoint(checkpoint)] if checkpoint else [])
    history = fit(model, (x, y), "cross_entropy", AveragedSGD(model.parameters(), comm, lr=0.2), epochs=epochs,
                  batch_size=32, verbose=0, comm=comm, callbacks=callbacks, resume_from=resume_from)
    weights = np.concatenate([np.ascontiguousarray(p.data).ravel() for p in model.parameters()])
    return {"rank": comm.rank, "size": comm.size, "loss": history["loss"],
            "start_epoch": read_checkpoint(resume_from)[1]["epoch"] if resume_from else 0,
            "weights": hashlib.sha256(weights.tobytes()).hexdigest()}


def rank_and_size():
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()


def fail_on_rank_1_while_rank_0_waits():
    from hpcai.parallel import world
    comm = world()
    if comm.rank == 1:
        raise ValueError("rank 1 fails on purpose")
    comm.allreduce_(np.ones(4))  # never completes: rank 1 is not coming


def fail_everywhere():
    raise KeyError("every rank fails")


def busy_until_interrupted(started, seconds=120):
    """Python code busy on every rank (not blocked in MPI) until SIGINT arrives; says when it runs."""
    open(f"{started}.{os.getpid()}", "w").close()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "not interrupted"


# -- helpers --------------------------------------------------------------------------------------------
def processes_of(profile_dir):
    """Every live process started for the cluster with this profile (ipyparallel sets IPP_PROFILE_DIR)."""
    return procs.with_env("IPP_PROFILE_DIR", str(profile_dir))


def kill_leftovers(profile_dir):
    procs.kill(processes_of(profile_dir))


def new_engines(profile_dir, **kwargs):
    return Engines(2, profile_dir=str(profile_dir), env=ENGINE_ENV, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Two engines shared by the failure tests (each restarts them when it ended the job)."""
    profile = tmp_path_factory.mktemp("ipp-failures")
    e = new_engines(profile, abort_after=2.0)
    try:
        yield e.start_sync()
    finally:
        e.stop_sync()
        kill_leftovers(profile)


# -- tests ----------------------------------------------------------------------------------------------
@needs_mpiexec
def test_data_parallel_training_rank_ordered_then_stop_leaves_no_process(tmp_path):
    profile = tmp_path / "profile"
    try:
        with new_engines(profile) as e:
            started = [psutil.Process(pid) for pid in e.pids]
            assert {info.pid for info in e.ranks} <= set(e.pids) and len(started) >= 4  # controller, mpiexec, engines
            assert [info.rank for info in e.ranks] == [0, 1]
            results = e.run_sync(train)
            assert [(r["rank"], r["size"]) for r in results] == [(0, 2), (1, 2)]
            assert results[0]["weights"] == results[1]["weights"]  # averaged gradients keep the replicas equal
            losses = results[0]["loss"]
            assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.5 * losses[0], losses
            assert processes_of(profile)
        assert procs.living(started) == []
        assert processes_of(profile) == []
    finally:
        kill_leftovers(profile)


@needs_mpiexec
def test_exception_on_one_rank_while_the_other_waits_ends_quickly(engines):
    with pytest.raises(EngineError) as symmetric:  # every rank raises: nobody waits, the engines live on
        engines.run_sync(fail_everywhere, label="run_app('digits')")
    assert sorted(symmetric.value.failures) == [0, 1] and symmetric.value.job_ended is None and engines.running
    assert str(symmetric.value).startswith("run_app('digits') failed on 2 of 2 MPI ranks")  # named as told
    assert "KeyError: 'every rank fails'" in symmetric.value.failures[1]

    with pytest.raises(EngineError) as info:
        engines.run_sync(fail_on_rank_1_while_rank_0_waits, timeout=30)  # the hang guard: ends the job at 30 s
    err = info.value
    assert "still busy" in (err.job_ended or ""), f"the watchdog did not end the job; it ended as: {err.job_ended}"
    assert list(err.failures) == [1] and err.lost == [0] and err.job_ended
    assert "--- rank 1 raised:" in str(err) and "ValueError: rank 1 fails on purpose" in str(err)
    assert "in fail_on_rank_1_while_rank_0_waits" in str(err)  # the remote traceback, plain text
    assert not engines.running
    with pytest.raises(EngineError, match="restart"):
        engines.run_sync(rank_and_size)
    engines.restart_sync()
    assert engines.run_sync(rank_and_size) == [(0, 2), (1, 2)]


@needs_mpiexec
def test_interrupt_stops_the_function_on_every_rank_and_keeps_the_engines(engines, tmp_path):
    if not engines.running:
        engines.restart_sync()
    started = tmp_path / "started"

    def interrupt_once_every_rank_runs():
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("started.*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        engines.interrupt_sync()

    interrupter = threading.Thread(target=interrupt_once_every_rank_runs, daemon=True)
    interrupter.start()
    with pytest.raises(EngineError) as info:
        engines.run_sync(busy_until_interrupted, str(started), timeout=45)  # the hang guard: ends the job at 45 s
    interrupter.join()
    err = info.value
    assert err.job_ended is None, f"the interrupt did not reach the function; the job ended as: {err.job_ended}"
    assert sorted(err.failures) == [0, 1] and all("KeyboardInterrupt" in tb for tb in err.failures.values()), err
    assert engines.running and engines.run_sync(rank_and_size) == [(0, 2), (1, 2)]


@needs_mpiexec
def test_killed_rank_is_reported_and_run_resilient_resumes_from_checkpoint(engines, tmp_path, caplog):
    if not engines.running:
        engines.restart_sync()
    reference = engines.run_sync(train, checkpoint=str(tmp_path / "reference.npz"))
    checkpoint, victim, killed_at = tmp_path / "ckpt.npz", engines.ranks[1].pid, []

    def kill_after_first_checkpoint():
        deadline = time.monotonic() + 60
        while not checkpoint.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        killed_at.append(time.time())

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    with caplog.at_level(logging.WARNING, logger="hpcai.cluster"):
        results = engines.run_resilient_sync(train, checkpoint=str(checkpoint), epoch_sleep=0.3, timeout=120)
    killer.join()
    assert killed_at, "the training ended before a checkpoint was written"
    retried = [r for r in caplog.records if "resuming from" in r.getMessage()]
    assert len(retried) == 1 and retried[0].created - killed_at[0] < 15
    assert "no result from rank(s)" in retried[0].getMessage() and "the MPI job ended" in retried[0].getMessage()
    assert f"the engine of rank(s) [1] died (rank 1: pid {victim} on" in retried[0].getMessage()  # the killed one
    assert "the engine of rank(s) [0, 1]" not in retried[0].getMessage()
    assert "mpi_rank = MPI.COMM_WORLD" not in retried[0].getMessage()  # ipyparallel's set-up, not the engines' output
    assert [(r["rank"], r["size"]) for r in results] == [(0, 2), (1, 2)]
    assert results[0]["start_epoch"] >= 1  # resumed, not restarted from scratch
    assert results[0]["weights"] == results[1]["weights"] == reference[0]["weights"]
    assert results[0]["loss"] == reference[0]["loss"]


@needs_mpiexec
def test_cell_raising_on_one_rank_errors_instead_of_hanging(engines):
    """%%px runs view.execute(cell, block=False) then waits on the result: so does this (the last test on `engines`)."""
    if not engines.running:
        engines.restart_sync()
    cell = ("from hpcai.parallel import world\nimport numpy as np\ncomm = world()\n"
            "if comm.rank == 1:\n    raise ValueError('cell fails on rank 1')\ncomm.allreduce_(np.ones(4))\n")
    ar = engines.view.execute(cell, block=False)
    with pytest.raises(ipp.error.CompositeError, match="cell fails on rank 1"):
        try:
            ar.get(timeout=30)  # the hang guard
        except ipp.error.TimeoutError:
            pytest.fail("the cell still hangs after 30 s: the watchdog did not end the job")
    assert not engines.running


@needs_mpiexec
@pytest.mark.parametrize("kwargs, expected", [
    ({"mpi_args": ["--no-such-option"]}, "unrecognized argument no-such-option"),  # mpiexec's own words
    ({"mpiexec": "/nonexistent/bin/mpiexec"}, "/nonexistent/bin/mpiexec"),
])
def test_start_failure_reports_the_launchers_output(tmp_path, kwargs, expected):
    profile = tmp_path / "profile"
    e = new_engines(profile, **kwargs)
    try:
        with pytest.raises(EngineStartError) as info:
            e.start_sync()
        assert expected in str(info.value) and "did not start" in str(info.value)
        assert not e.running and processes_of(profile) == []
    finally:
        kill_leftovers(profile)


@needs_mpiexec
def test_mpiexec_of_another_mpi_is_detected(tmp_path):
    """An mpiexec that does not match mpi4py's MPI starts n separate one-rank jobs: start() must say so."""
    other = tmp_path / "mpiexec"
    other.write_text('#!/bin/sh\n[ "$1" = -n ] || exit 2\nn=$2; shift 2\n'
                     'while [ "$n" -gt 0 ]; do "$@" & n=$((n - 1)); done\nwait\n')
    other.chmod(0o755)
    profile = tmp_path / "profile"
    e = new_engines(profile, mpiexec=str(other))
    try:
        with pytest.raises(EngineStartError, match=r"do not form one MPI job of 2 ranks: .*\(0, 1\), \(0, 1\)"):
            e.start_sync()
        assert processes_of(profile) == []
    finally:
        kill_leftovers(profile)


# -- configuration (no engines started) -----------------------------------------------------------------
def _batch_script(kwargs, tmp_path):
    """The batch script ipyparallel's own launcher writes for the configuration hpcai produces."""
    cluster = ipp.Cluster(**kwargs, profile_dir=str(tmp_path), cluster_id="test")
    launcher = cluster.engine_launcher_class(work_dir=str(tmp_path), parent=cluster, log=cluster.log,
                                             profile_dir=str(tmp_path), cluster_id="test", engine_set_id="s")
    launcher.write_batch_script(kwargs["n"])
    with open(launcher.batch_file) as f:
        script = f.read()
    os.remove(launcher.batch_file)  # a private temporary file (not the working directory)
    return launcher, script


def test_slurm_config(tmp_path, monkeypatch):
    kwargs = cluster_config(8, "slurm", mpi_args=["--cpu-bind=cores"], queue="gpu", account="proj42",
                            walltime="00:30:00", batch_options=["--gpus-per-task=1"], env={"OMP_NUM_THREADS": "4"})
    assert kwargs["engines"] == "slurm" and kwargs["controller_ip"] not in ("*", "0.0.0.0", "")
    launcher, script = _batch_script(kwargs, tmp_path)
    lines = script.splitlines()
    for directive in ["--ntasks=8", "--partition=gpu", "--account=proj42", "--time=00:30:00", "--gpus-per-task=1"]:
        assert f"#SBATCH {directive}" in lines
    start = next(line for line in lines if "ipyparallel.engine" in line)
    hydra = os.access(os.path.join(os.path.dirname(find_mpiexec()), "mpiexec.hydra"), os.X_OK)
    if hydra:  # MPICH: its own mpiexec inside the job, as in local runs
        assert start.startswith(f"SLURM_EXPORT_ENV=ALL {find_mpiexec()} -n 8 --cpu-bind=cores {sys.executable} "
                                "-m ipyparallel.engine")
    else:
        assert start.startswith(f"srun --export=ALL --mpi=pmi2 --cpu-bind=cores {sys.executable} -m ipyparallel.engine")
    assert "--mpi" in start.split("ipyparallel.engine")[1]  # ipengine --mpi
    _, script = _batch_script(cluster_config(2, "slurm", mpi_args=["--mpi=pmix"]), tmp_path)
    assert next(ln for ln in script.splitlines() if "ipyparallel.engine" in ln).startswith("srun --export=ALL --mpi=pmix ")
    monkeypatch.setenv("HPCAI_SLURM_STARTER", "srun")
    _, script = _batch_script(cluster_config(2, "slurm"), tmp_path)
    assert next(ln for ln in script.splitlines() if "ipyparallel.engine" in ln).startswith("srun --export=ALL --mpi=pmi2 ")
    monkeypatch.setenv("HPCAI_SLURM_STARTER", "ssh")
    with pytest.raises(ValueError, match="HPCAI_SLURM_STARTER: expected one of mpiexec, srun"):
        cluster_config(2, "slurm")
    monkeypatch.delenv("HPCAI_SLURM_STARTER")
    monkeypatch.setenv("HPCAI_CONTROLLER_IP", "10.1.2.3")
    assert cluster_config(2, "slurm")["controller_ip"] == "10.1.2.3"
    assert launcher.args[0] == "sbatch" and launcher.get_env()["OMP_NUM_THREADS"] == "4"


def test_pbs_config_from_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCAI_LAUNCHER", "pbs")
    monkeypatch.setenv("HPCAI_MPIEXEC", "/opt/site-mpi/bin/mpiexec")
    monkeypatch.setenv("HPCAI_MPI_ARGS", "-ppn 4")
    monkeypatch.setenv("HPCAI_QUEUE", "workq")
    monkeypatch.setenv("HPCAI_WALLTIME", "01:00:00")
    kwargs = cluster_config(8, account="proj42")
    launcher, script = _batch_script(kwargs, tmp_path)
    lines = script.splitlines()
    assert {"#PBS -q workq", "#PBS -A proj42", "#PBS -l walltime=01:00:00"} <= set(lines)
    run = next(line for line in lines if "ipyparallel.engine" in line)
    assert run.startswith(f"/opt/site-mpi/bin/mpiexec -n 8 -ppn 4 {sys.executable} -m ipyparallel.engine")
    assert launcher.args[0] == "qsub"
    assert cluster_config(8, "slurm", mpi_args=[])["engines"] == "slurm"  # arguments win over the environment


def test_local_config_uses_the_environments_mpiexec(tmp_path, monkeypatch):
    decoy = tmp_path / "mpiexec"
    decoy.write_text("#!/bin/sh\nexit 1\n")
    decoy.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.delenv("HPCAI_MPIEXEC", raising=False)
    monkeypatch.delenv("HPCAI_LAUNCHER", raising=False)
    kwargs = cluster_config(2, mpi_args=["-bind-to", "core"])
    assert kwargs["engines"] == "mpi" and kwargs["n"] == 2
    mpi_cmd = kwargs["config"].MPIEngineSetLauncher.mpi_cmd
    own = os.path.join(sys.prefix, "bin", "mpiexec")
    assert mpi_cmd == ([own] if os.access(own, os.X_OK) else [str(decoy)])  # PATH's only as a fallback
    assert kwargs["config"].MPIEngineSetLauncher.mpi_args == ["-bind-to", "core"]
    with pytest.raises(ValueError, match="launcher"):
        cluster_config(2, "sge")
    with pytest.raises(ValueError, match="n:"):
        Engines(0)


def test_a_local_run_stays_on_loopback_unless_mpi_args_name_other_hosts(monkeypatch):
    """MPICH's gforker (no listening port) in place of Hydra's mpiexec when it sits beside it, and the ranks'
    transports on the loopback interface; Hydra's own options keep Hydra, hosts keep the network."""
    for name in ("HPCAI_MPIEXEC", "HPCAI_MPI_ARGS", "UCX_NET_DEVICES", "FI_TCP_IFACE", "FI_SOCKETS_IFACE"):
        monkeypatch.delenv(name, raising=False)
    launcher = cluster_config(2)["config"].MPIEngineSetLauncher
    gforker = os.path.join(os.path.dirname(find_mpiexec()), "mpiexec.gforker")
    assert launcher.mpi_cmd == [gforker if os.access(gforker, os.X_OK) else find_mpiexec()]
    assert launcher.environment["UCX_NET_DEVICES"] == launcher.environment["FI_TCP_IFACE"] != ""
    assert cluster_config(2, mpi_args=["-bind-to", "core"])["config"].MPIEngineSetLauncher.mpi_cmd == [find_mpiexec()]
    assert "UCX_NET_DEVICES" not in cluster_config(2, mpi_args=["-hosts", "a,b"])["config"].MPIEngineSetLauncher.environment
    monkeypatch.setenv("UCX_NET_DEVICES", "mlx5_0:1")  # the user's own choice wins
    assert "UCX_NET_DEVICES" not in cluster_config(2)["config"].MPIEngineSetLauncher.environment
