"""TupleSpace over MPI, on 2 or 4 ranks: the last rank serves, the others are clients working at once.

Run by tests/test_mpi.py (``mpiexec -n 2`` and ``-n 4``); under plain pytest (one rank) only the argument
checks run and the rest skip. Each case opens the space on a fresh ``dup()`` of the world, gathers what
every rank saw (its result, or its traceback) and asserts only after that last collective. Client calls
carry timeouts, so a failing case ends instead of hanging.
"""
import dataclasses
import random
import time
import traceback

import ml_dtypes
import numpy as np
import pytest

from hpcai.parallel.comm import Communicator, SerialCommunicator
from hpcai.parallel.tuplespace import DEFAULT_MAX_BYTES, TupleSpace, serve

WAIT = 30  # seconds: the timeout of calls that must succeed
DTYPES = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16, np.int8, np.int32, np.int64, np.uint16, np.bool_]
SHAPES = [(), (0,), (1,), (7,), (2, 3), (2, 0, 4), (3, 1, 2), (64, 33)]


def _session(comm, client, max_bytes=DEFAULT_MAX_BYTES, clients_needed=1):
    """Serve on the last rank and run ``client(ts, c, n)`` on ranks c = 0 .. n-1; returns (server stats as a
    dict, [each client's result]) on every rank, after raising any rank's error (past the last collective)."""
    if comm.size < clients_needed + 1:
        pytest.skip(f"needs {clients_needed} client rank(s) beside the server")
    space_comm, server = comm.dup(), comm.size - 1
    try:
        if comm.rank == server:
            out = ("ok", dataclasses.asdict(serve(space_comm, max_bytes=max_bytes)))
        else:
            with TupleSpace(space_comm, server) as ts:
                out = ("ok", client(ts, comm.rank, comm.size - 1))
    except Exception:  # noqa: BLE001 - reported by every rank below, after the collective
        out = ("error", f"rank {comm.rank}: {traceback.format_exc()}")
    everyone = comm.allgather_obj(out)
    errors = [value for kind, value in everyone if kind == "error"]
    assert not errors, "\n".join(errors)
    return everyone[-1][1], [value for _, value in everyone[:-1]]


def test_clients_put_and_get_at_once_and_nothing_is_lost_or_duplicated(comm):
    """>= 10^4 operations in all: every client puts its share in bursts and takes as many with "*"."""
    per = -(-5000 // max(comm.size - 1, 1))

    def client(ts, c, n):
        taken = []
        for start in range(0, per, 50):
            burst = range(start, min(start + 50, per))
            for i in burst:  # even i: an array; odd i: a JSON value
                ts.put(f"c{c}/{i}", np.array([c, i], np.int64) if i % 2 == 0 else [c, i], timeout=WAIT)
            for _ in burst:
                key, value = ts.get("*", timeout=WAIT)
                taken.append((key, isinstance(value, np.ndarray), [int(v) for v in value]))
        return taken

    stats, results = _session(comm, client)
    n = comm.size - 1
    taken = [t for part in results for t in part]
    assert sorted(k for k, _, _ in taken) == sorted(f"c{c}/{i}" for c in range(n) for i in range(per))
    assert all(key == f"c{v[0]}/{v[1]}" and is_array == (v[1] % 2 == 0) for key, is_array, v in taken)
    assert (stats["puts"], stats["gets"], stats["left"]) == (n * per, n * per, 0)


def test_a_blocking_get_wakes_on_a_later_put_from_another_rank(comm):
    def client(ts, c, n):
        start = time.perf_counter()
        if c == n - 1:  # the putter: the others are waiting by now
            time.sleep(0.5)
            ts.put("wake/get", np.arange(3.0))
            for r in range(1, n - 1):
                ts.put(f"wake/read/{r}", {"from": c})
            return None
        key, value = ts.get("wake/get", timeout=WAIT) if c == 0 else ts.read(f"wake/read/{c}", timeout=WAIT)
        return key, value.tolist() if isinstance(value, np.ndarray) else value, time.perf_counter() - start

    stats, results = _session(comm, client, clients_needed=2)
    n = comm.size - 1
    assert results[0][:2] == ("wake/get", [0.0, 1.0, 2.0]) and 0.3 < results[0][2] < 5
    for r in range(1, n - 1):  # a blocked read wakes too, and leaves its tuple
        assert results[r][:2] == (f"wake/read/{r}", {"from": n - 1}) and 0.3 < results[r][2] < 5
    assert stats["left"] == n - 2


def test_timeouts_fire_and_the_try_calls_return_none(comm):
    def client(ts, c, n):
        seconds = []
        for call in (lambda: ts.get("nothing/*", timeout=0.2), lambda: ts.read("nothing", timeout=0.2)):
            start = time.perf_counter()
            try:
                call()
            except TimeoutError:
                seconds.append(time.perf_counter() - start)
        return seconds, ts.try_get("nothing/*"), ts.try_read("*")

    stats, results = _session(comm, client)
    for seconds, got, read in results:
        assert len(seconds) == 2 and all(0.2 <= s < 10 for s in seconds), seconds  # fired; the bound guards a hang
        assert got is None and read is None
    assert stats["cancelled"] == 2 * (comm.size - 1)


def test_a_timed_out_get_never_loses_or_duplicates_a_tuple(comm):
    """timeout=0 cancels at once: a tuple already there is still returned (the server answered first), a
    missing one gives TimeoutError. Then, with 2+ clients, puts race gets with random short timeouts."""
    rounds = 300

    def client(ts, c, n):
        answered, timed_out = 0, 0
        for k in range(100):
            ts.put(f"own/{c}/{k}", k)
            answered += ts.get(f"own/{c}/{k}", timeout=0) == (f"own/{c}/{k}", k)
            try:
                ts.get(f"own/{c}/none", timeout=0)
            except TimeoutError:
                timed_out += 1
        rnd, in_race, after = random.Random(c), [], []
        if n >= 2 and c == 1:  # the putter
            for k in range(rounds):
                time.sleep(rnd.uniform(0, 0.001))
                ts.put(f"race/{k}", k)
            ts.put("race/done", -1)
        elif n >= 2 and c == 0:  # the getter
            for k in range(rounds):
                try:
                    in_race.append(ts.get(f"race/{k}", timeout=rnd.uniform(0, 0.0015))[1])
                except TimeoutError:
                    pass
            ts.get("race/done", timeout=WAIT)  # every race put reached the server before this one
            while (got := ts.try_get("race/*")) is not None:
                after.append(got[1])
        return answered, timed_out, in_race, after

    stats, results = _session(comm, client)
    assert [r[:2] for r in results] == [(100, 100)] * len(results)
    if len(results) >= 2:
        in_race, after = results[0][2], results[0][3]
        assert sorted(in_race + after) == list(range(rounds)), (len(in_race), len(after))
    assert stats["left"] == 0 and stats["cancelled"] >= 100 * len(results)


def test_a_timed_out_put_is_stored_once_or_not_at_all(comm):
    """A space with room for two tuples: client 1 puts with random short timeouts while client 0 takes
    them at random pace; what client 0 takes is exactly the puts that did not raise TimeoutError."""
    rounds = 300

    def client(ts, c, n):
        rnd, done = random.Random(c), []
        if c == 1:
            for k in range(rounds):
                try:
                    ts.put(f"pr/{k}", np.array([k]), timeout=rnd.uniform(0, 0.002))
                    done.append(k)
                except TimeoutError:
                    pass
            ts.put("pr/end", np.array([-1]), timeout=WAIT)
        elif c == 0:
            while True:
                time.sleep(rnd.uniform(0, 0.001))
                key, value = ts.get("pr/*", timeout=WAIT)
                if key == "pr/end":  # the putter's last: every earlier put was stored before it
                    break
                done.append(int(value[0]))
        return done

    stats, results = _session(comm, client, max_bytes=40, clients_needed=2)
    assert results[0] == results[1] and len(results[0]) > 0, (len(results[0]), len(results[1]))
    assert stats["left"] == 0 and stats["peak_bytes"] <= 40


def test_back_pressure_a_put_waits_for_room_and_a_too_large_tuple_is_refused(comm):
    """max_bytes=2000: one 1200-byte tuple fills the space. With a second client, a put waits until that
    client takes the first tuple, and a put that does not fit goes straight to its waiting get."""
    block = np.zeros(1200, np.uint8)

    def client(ts, c, n):
        seen = {}
        if c == 0:
            ts.put("bp/a", block)
            try:
                ts.put("bp/b", block, timeout=0.2)
            except TimeoutError:
                seen["timed out"] = ts.try_read("bp/b") is None  # and left nothing behind
            try:
                ts.put("huge", np.zeros(3000, np.uint8))
            except ValueError as e:
                seen["refused"] = "max_bytes=2000" in str(e)
            if n == 1:
                ts.get("bp/a")
            else:
                ts.put("bp/go", 1)
            start = time.perf_counter()
            ts.put("bp/b", block, timeout=WAIT)  # waits for client 1 to take bp/a
            seen["waited"] = time.perf_counter() - start
            if n > 1:
                ts.put("hand/1", block + 1, timeout=WAIT)  # no room, but client 1 waits for it
            seen["b"] = ts.get("bp/b", timeout=WAIT)[1].tobytes() == block.tobytes()
        elif c == 1:
            ts.get("bp/go", timeout=WAIT)
            time.sleep(0.3)
            ts.get("bp/a", timeout=WAIT)
            seen["hand"] = ts.get("hand/*", timeout=WAIT)[1].tobytes() == (block + 1).tobytes()
        return seen

    stats, results = _session(comm, client, max_bytes=2000)
    first = results[0]
    assert first["timed out"] and first["refused"] and first["b"]
    if len(results) > 1:
        assert first["waited"] > 0.15 and results[1] == {"hand": True}
        assert stats["waited"] >= 2  # bp/b twice; hand/1 too unless client 1 was already waiting
    assert stats["peak_bytes"] <= 2000 and stats["left"] == 0


def test_read_leaves_the_tuple_and_gets_come_oldest_first(comm):
    def client(ts, c, n):
        for i in range(5):
            ts.put(f"r/{c}/{i}", {"i": i})
        reads = [ts.read(f"r/{c}/*"), ts.try_read(f"r/{c}/*"), ts.read(f"r/{c}/3")]
        gets = [ts.get(f"r/{c}/*", timeout=WAIT)[1]["i"] for _ in range(5)]
        return reads, gets, ts.try_get(f"r/{c}/*")

    stats, results = _session(comm, client)
    for c, (reads, gets, last) in enumerate(results):
        assert reads == [(f"r/{c}/0", {"i": 0})] * 2 + [(f"r/{c}/3", {"i": 3})]
        assert gets == [0, 1, 2, 3, 4] and last is None
    assert stats["reads"] == 3 * len(results)


def _array(c, j):
    """Client c's j-th array: every dtype and shape, floats with arbitrary bit patterns (NaNs, infinities)."""
    dtype, shape = DTYPES[j % len(DTYPES)], SHAPES[j // len(DTYPES)]
    rng = np.random.default_rng(1000 * c + j)
    if dtype is np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    return rng.integers(0, 256, int(np.prod(shape)) * np.dtype(dtype).itemsize, np.uint8).view(dtype).reshape(shape)


def test_arrays_and_json_values_arrive_bit_identical(comm):
    count = len(DTYPES) * len(SHAPES)
    values = [None, True, 7, -2.5, "text", [1, [2, {"a": None}]], {"k": [1.0, "v"]}]

    def client(ts, c, n):
        for j in range(count):
            ts.put(f"arr/{c}/{j}", _array(c, j))
        for j, v in enumerate(values):
            ts.put(f"json/{c}/{j}", v)
        peer, wrong = (c + 1) % n, []  # from the next client (from itself with one client)
        for j in range(count):
            expected, (_, got) = _array(peer, j), ts.get(f"arr/{peer}/{j}", timeout=WAIT)
            if got.dtype != expected.dtype or got.shape != expected.shape or got.tobytes() != expected.tobytes():
                wrong.append((j, str(expected.dtype), expected.shape, str(got.dtype), got.shape))
        got_values = [ts.get(f"json/{peer}/{j}", timeout=WAIT)[1] for j in range(len(values))]
        return wrong, got_values

    stats, results = _session(comm, client)
    for wrong, got_values in results:
        assert wrong == [] and got_values == values
    assert stats["left"] == 0


def test_a_closed_client_refuses_calls_and_a_spare_server_rank_leaves_at_once(comm):
    if comm.size < 3:
        pytest.skip("needs a spare server rank beside a client and the server")
    space_comm, server = comm.dup(), comm.size - 1
    try:
        if comm.rank == server:
            out = ("stats", serve(space_comm, server=server).puts)
        elif comm.rank == server - 1:
            out = ("spare", serve(space_comm, server=server))
        else:
            ts = TupleSpace(space_comm, server)
            ts.put("k", 1)
            ts.close()
            ts.close()
            try:
                ts.get("k")
                out = ("client", "no error")
            except RuntimeError as e:
                out = ("client", str(e))
    except Exception:  # noqa: BLE001
        out = ("error", traceback.format_exc())
    everyone = comm.allgather_obj(out)
    assert everyone[-1] == ("stats", comm.size - 2) and everyone[-2] == ("spare", None)
    assert everyone[:-2] == [("client", "get: this tuple space is closed")] * (comm.size - 2)


def test_bad_arguments_name_the_argument(comm):
    with pytest.raises(TypeError, match="comm: expected an hpcai Communicator"):
        TupleSpace(object(), 0)
    for one_rank in [SerialCommunicator()] + ([comm] if comm.size == 1 and isinstance(comm, Communicator) else []):
        with pytest.raises(ValueError, match="comm: a tuple space over MPI needs 2 or more ranks"):
            TupleSpace(one_rank, 0)
        with pytest.raises(ValueError, match="comm: .* LocalTupleSpace"):
            serve(one_rank)
    if comm.size > 1:
        with pytest.raises(ValueError, match="server: rank .* is this rank"):
            TupleSpace(comm, comm.rank)
        with pytest.raises(ValueError, match=r"server: expected a rank in \[0, "):
            TupleSpace(comm, comm.size)
        with pytest.raises(ValueError, match="max_bytes: expected an integer >= 1"):
            serve(comm, max_bytes=0)
        with pytest.raises(ValueError, match="clients: expected ranks"):
            serve(comm, clients=[comm.rank])
