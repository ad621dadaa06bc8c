"""Communicator collectives against analytic values, on 1, 2 or 4 ranks alike.

As in mpi4py's test/test_cco_buf.py, one test body runs on several communicators: MPI's world, MPI's
COMM_SELF and the serial stand-in (the expected values are written in terms of ``size`` and ``rank``).
"""
import signal
import sys
import time

import ml_dtypes
import numpy as np
import pytest

from hpcai.parallel.comm import LAUNCHER_SIZES, Communicator, SerialCommunicator, default_comm, world

DTYPES = [np.float64, np.float32, np.int32, np.float16, ml_dtypes.bfloat16]
_SELF = []


@pytest.fixture(params=["world", "self", "serial"])
def any_comm(request, comm):
    if request.param == "world":
        return comm
    if request.param == "serial":
        return SerialCommunicator()
    if not isinstance(comm, Communicator):  # (a Communicator is also a SerialCommunicator)
        pytest.skip("mpi4py is not installed")
    if not _SELF:
        from mpi4py import MPI
        _SELF.append(Communicator(MPI.COMM_SELF))
    return _SELF[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", ["sum", "max", "min"])
def test_allreduce_in_place_gives_the_analytic_value(any_comm, op, dtype):
    n, r = any_comm.size, any_comm.rank
    base = np.arange(1000) % 7  # small integers: exact in every dtype, sums included
    buf = (base * (r + 1)).astype(dtype)
    out = any_comm.allreduce_(buf, op)
    factor = {"sum": n * (n + 1) // 2, "max": n, "min": 1}[op]
    assert out is buf and buf.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(buf.astype(np.float64), base * factor)


def test_allreduce_of_a_large_float32_buffer(comm):
    buf = np.full(3_000_001, comm.rank + 0.5, np.float32)  # several MB: MPI's large-message algorithms
    comm.allreduce_(buf)
    assert np.all(buf == np.float32(comm.size ** 2 / 2))


@pytest.mark.parametrize("dtype", [np.float64, np.int64, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
def test_bcast_overwrites_every_rank_with_the_root(any_comm, dtype):
    root = any_comm.size - 1
    buf = np.full((3, 4), any_comm.rank + 1, dtype)
    any_comm.bcast_(buf, root=root)
    np.testing.assert_array_equal(buf.astype(np.float64), np.full((3, 4), root + 1.0))


def test_allgather_is_in_rank_order(any_comm):
    out = any_comm.allgather(np.array([any_comm.rank, 10 * any_comm.rank], np.int64))
    assert out.shape == (any_comm.size, 2)
    np.testing.assert_array_equal(out, [[r, 10 * r] for r in range(any_comm.size)])
    kept = np.full((any_comm.size, 2), -1, np.int64)  # into a kept buffer: filled and returned, nothing new
    assert any_comm.allgather(np.array([any_comm.rank, 10 * any_comm.rank], np.int64), out=kept) is kept
    np.testing.assert_array_equal(kept, [[r, 10 * r] for r in range(any_comm.size)])
    for bad in (np.zeros((any_comm.size, 3), np.int64), np.zeros((any_comm.size, 2), np.int32), [[0, 0]]):
        with pytest.raises(ValueError, match="out: expected"):
            any_comm.allgather(np.zeros(2, np.int64), out=bad)


def test_object_collectives(any_comm):
    n, r = any_comm.size, any_comm.rank
    total, top = any_comm.allreduce_obj(r), any_comm.allreduce_obj(r, "max")
    got = any_comm.bcast_obj({"epochs": [1, 2], "from": r} if r == n - 1 else None, root=n - 1)
    everyone = any_comm.allgather_obj(f"rank{r}")
    gathered = any_comm.gather_obj(r * r, root=0)
    any_comm.barrier()
    assert (total, top) == (n * (n - 1) // 2, n - 1)
    assert got == {"epochs": [1, 2], "from": n - 1}
    assert everyone == [f"rank{q}" for q in range(n)]
    assert gathered == ([q * q for q in range(n)] if r == 0 else None)


@pytest.mark.parametrize("poll", [False, True])
def test_no_rank_leaves_a_barrier_before_the_last_one_arrives(any_comm, poll):
    time.sleep(0.05 * any_comm.rank)  # rank r arrives r * 50 ms late
    arrived = time.time()
    any_comm.barrier(poll=poll)
    left = time.time()
    times = any_comm.allgather_obj((arrived, left))
    assert min(t[1] for t in times) >= max(t[0] for t in times), times


def test_wait_polls_so_that_a_signal_interrupts_it(any_comm):
    """A receive nobody sends never completes: MPI_Wait would block forever, the polling wait lets a
    SIGALRM handler (as Ctrl-C would) end it after 0.2 s."""
    if not isinstance(any_comm, Communicator):
        pytest.skip("the serial stand-in has no requests")
    request = any_comm.MPI.COMM_SELF.Irecv([np.empty(1), any_comm.MPI.DOUBLE], source=0, tag=77)

    def interrupt(signum, frame):
        raise TimeoutError("interrupted")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(TimeoutError):
            any_comm.wait(request)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        request.Cancel()
        request.Wait()


def test_default_comm_is_the_world_under_an_mpi_launcher_else_none(comm, monkeypatch):
    for name in LAUNCHER_SIZES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)  # world() is cached: nothing is imported
    assert default_comm() is None
    for value, expected in (("1", None), ("", None), ("four", None), ("2", world())):
        monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", value)
        assert default_comm() is expected, value
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", object())  # mpi4py's MPI already loaded (an MPI job of 1)
    assert default_comm() is world()


def test_average_is_the_mean_over_ranks(any_comm):
    assert any_comm.average(any_comm.rank) == pytest.approx((any_comm.size - 1) / 2, abs=1e-15)


def test_split_into_even_and_odd_ranks(comm):
    color = comm.rank % 2
    sub = comm.split(color, key=comm.rank)
    members = [q for q in range(comm.size) if q % 2 == color]
    total = sub.allreduce_(np.array([comm.rank], np.int64))[0]
    names = sub.allgather_obj(comm.rank)
    assert (sub.size, sub.rank) == (len(members), comm.rank // 2)
    assert total == sum(members) and names == members


def test_every_rank_of_one_node_is_local(comm):
    assert (comm.local_rank, comm.local_size) == (comm.rank, comm.size)  # mpiexec on one machine


def test_bad_op_name_and_bad_buffer_fail_before_communicating(any_comm):
    with pytest.raises(ValueError, match="op: expected one of"):
        any_comm.allreduce_(np.zeros(3), "mean")
    with pytest.raises(ValueError, match="op: expected one of"):
        any_comm.allreduce_obj(1.0, "avg")
    if isinstance(any_comm, Communicator):
        with pytest.raises(ValueError, match="C-contiguous"):
            any_comm.allreduce_(np.zeros((4, 4))[:, 0])


@pytest.mark.parametrize("op", ["sum", "max"])
def test_fp16_reduces_by_a_ufunc_op_where_mpi_has_no_fp16_type(comm, monkeypatch, op):
    if not isinstance(comm, Communicator):
        pytest.skip("mpi4py is not installed")
    monkeypatch.setattr(comm.MPI, "FLOAT16_T", comm.MPI.DATATYPE_NULL, raising=False)
    n, base = comm.size, np.arange(500) % 9
    buf = (base * (comm.rank + 1)).astype(np.float16)
    comm.allreduce_(buf, op)
    assert ("float16", op) in {(d.name, o) for d, o in comm._half_ops}  # the fallback ran
    np.testing.assert_array_equal(buf.astype(np.float64), base * (n * (n + 1) // 2 if op == "sum" else n))
