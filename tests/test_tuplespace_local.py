"""LocalTupleSpace: the tuple space's rules (FIFO by pattern, read vs take, timeouts, back-pressure, the
cancel race) with threads in one process, and its error messages. The same engine serves over MPI
(tests/mpi/test_tuplespace.py)."""
import random
import threading
import time

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcai.parallel.tuplespace import DEFAULT_MAX_BYTES, LocalTupleSpace, SpaceStats

DTYPES = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16, np.int8, np.int32, np.int64, np.uint16, np.bool_]
SHAPES = [(), (0,), (5,), (2, 3), (2, 0, 4), (3, 1, 2)]


def _thread(target, *args):
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


def test_get_takes_the_oldest_match_and_read_leaves_it():
    with LocalTupleSpace() as ts:
        for i in range(3):
            ts.put(f"batch/{i}", i)
        ts.put("other", "x")
        ts.put("batch/0", "again")  # keys may repeat: each put is its own tuple
        assert ts.read("batch/*") == ("batch/0", 0) and ts.try_read("batch/*") == ("batch/0", 0)
        assert [ts.get("batch/*") for _ in range(2)] == [("batch/0", 0), ("batch/1", 1)]
        assert ts.get("batch/0") == ("batch/0", "again")
        assert ts.try_get("batch/?") == ("batch/2", 2) and ts.try_get("batch/*") is None
        assert ts.get("*") == ("other", "x") and ts.try_read("*") is None
        assert ts.stats == SpaceStats(puts=5, gets=5, reads=2, peak_bytes=ts.stats.peak_bytes)


def test_patterns_are_case_sensitive_globs():
    with LocalTupleSpace() as ts:
        for key in ("Batch/1", "batch/10", "batch/2", "model"):
            ts.put(key, key)
        assert ts.try_get("batch/[0-9]") == ("batch/2", "batch/2")
        assert ts.try_get("b*") == ("batch/10", "batch/10")
        assert ts.try_get("batch/*") is None and ts.try_get("m?del") == ("model", "model")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_arrays_come_back_bit_identical_and_as_copies(dtype):
    rng = np.random.default_rng(0)
    with LocalTupleSpace() as ts:
        for shape in SHAPES:
            a = rng.standard_normal(shape).astype(dtype) if np.dtype(dtype).kind == "f" else \
                rng.integers(0, 2 if dtype is np.bool_ else 100, shape).astype(dtype)
            ts.put("a", a)
            a_bits = a.tobytes()
            if a.size:
                a.reshape(-1)[0] = 1  # the space holds its own copy
            _, seen = ts.read("a")
            if seen.size:
                seen.reshape(-1)[0] = 0  # ... and a reader gets another
            _, got = ts.get("a")
            assert got.dtype == np.dtype(dtype) and got.shape == shape and got.tobytes() == a_bits


def test_json_values_and_numpy_scalars():
    with LocalTupleSpace() as ts:
        values = [None, True, 3, -1.5, "text", [1, [2, {"a": None}]], {"k": [1.0, "v"]}]
        for v in values:
            ts.put("j", v)
        assert [ts.get("j")[1] for _ in values] == values
        ts.put("t", (1, 2))  # a tuple comes back as a list, as it would over MPI
        ts.put("s", np.float32(2.5))  # a numpy scalar as a 0-d array of its dtype
        assert ts.get("t")[1] == [1, 2]
        s = ts.get("s")[1]
        assert s.shape == () and s.dtype == np.float32 and s == 2.5


def test_a_blocking_get_and_read_wake_on_a_later_put():
    ts, got = LocalTupleSpace(), {}
    threads = [_thread(lambda: got.setdefault("read", ts.read("wake/*", timeout=10))),
               _thread(lambda: got.setdefault("get", ts.get("wake/*", timeout=10)))]
    time.sleep(0.2)
    assert got == {}
    ts.put("wake/1", [1])
    for t in threads:
        t.join(10)
    assert got == {"read": ("wake/1", [1]), "get": ("wake/1", [1])}
    assert ts.try_get("*") is None


def test_get_read_and_put_time_out():
    ts = LocalTupleSpace(max_bytes=100)
    for call in (lambda: ts.get("nothing/*", timeout=0.2), lambda: ts.read("nothing", timeout=0.2)):
        start = time.perf_counter()
        with pytest.raises(TimeoutError, match="nothing"):
            call()
        assert 0.2 <= time.perf_counter() - start < 10  # it fired (the bound only guards a hang)
    ts.put("full", np.zeros(10))  # 80 + 4 bytes of 100
    with pytest.raises(TimeoutError, match="stayed full"):
        ts.put("late", np.zeros(2), timeout=0.1)
    assert ts.try_get("late") is None  # a timed-out put leaves nothing behind
    assert ts.stats.cancelled == 3 and ts.stats.peak_bytes == 84


def test_back_pressure_a_put_waits_until_a_get_frees_room():
    ts, done = LocalTupleSpace(max_bytes=1000), []
    ts.put("bp/0", np.zeros(100, np.uint8))
    ts.put("bp/1", np.zeros(800, np.uint8))
    t = _thread(lambda: done.append(ts.put("bp/2", np.zeros(500, np.uint8), timeout=10)))
    time.sleep(0.2)
    assert done == [] and ts.stats.waited == 1
    ts.get("bp/0")  # 100 bytes free: not enough, the put still waits
    time.sleep(0.1)
    assert done == []
    ts.get("bp/1")
    t.join(10)
    assert done == [None] and ts.get("*")[0] == "bp/2" and ts.stats.peak_bytes <= 1000


def test_a_put_into_a_full_space_goes_straight_to_a_waiting_get():
    ts = LocalTupleSpace(max_bytes=100)
    ts.put("filler", np.zeros(80, np.uint8))
    got = []
    t = _thread(lambda: got.append(ts.get("hand/*", timeout=10)))
    time.sleep(0.1)
    ts.put("hand/1", np.ones(50, np.uint8), timeout=1)  # does not fit, but need not be stored
    t.join(10)
    assert got[0][0] == "hand/1" and ts.stats.waited == 0
    # the other way round: the put waits first, then a get takes it without it ever being stored
    done = []
    t = _thread(lambda: done.append(ts.put("hand/2", np.ones(50, np.uint8), timeout=10)))
    time.sleep(0.1)
    assert ts.get("hand/*", timeout=1)[0] == "hand/2"
    t.join(10)
    assert done == [None] and ts.stats.waited == 1 and ts.stats.peak_bytes <= 100


def test_a_large_waiting_put_is_not_overtaken_by_small_ones():
    ts, order = LocalTupleSpace(max_bytes=200), []
    ts.put("x", np.zeros(150, np.uint8))
    big = _thread(lambda: (ts.put("big", np.zeros(150, np.uint8), timeout=10), order.append("big")))
    time.sleep(0.1)
    small = _thread(lambda: (ts.put("small", np.zeros(10, np.uint8), timeout=10), order.append("small")))
    time.sleep(0.1)
    assert order == []  # the small one would fit, but waits its turn
    ts.get("x")
    big.join(10)
    small.join(10)
    # the space admitted them in turn (which thread then returns first is up to the scheduler)
    assert sorted(order) == ["big", "small"] and [ts.get("*")[0] for _ in range(2)] == ["big", "small"]


def test_many_threads_lose_nothing_and_duplicate_nothing():
    ts, n, per = LocalTupleSpace(max_bytes=4000), 4, 1500  # small: puts wait for room often
    taken = [[] for _ in range(n)]

    def producer(p):
        for i in range(per):
            ts.put(f"p{p}/{i}", np.array([p, i]), timeout=30)

    def consumer(c):
        for _ in range(per):
            taken[c].append(ts.get("*", timeout=30))

    threads = [_thread(producer, p) for p in range(n)] + [_thread(consumer, c) for c in range(n)]
    for t in threads:
        t.join(60)
    everything = [kv for part in taken for kv in part]
    assert sorted(k for k, _ in everything) == sorted(f"p{p}/{i}" for p in range(n) for i in range(per))
    assert all(k == f"p{v[0]}/{v[1]}" for k, v in everything)
    for part in taken:  # one producer's tuples reach one consumer in the order they were put
        for p in range(n):
            mine = [int(v[1]) for k, v in part if k.startswith(f"p{p}/")]
            assert mine == sorted(mine)
    stats = ts.stats
    assert (stats.puts, stats.gets, stats.left) == (n * per, n * per, 0) and stats.peak_bytes <= 4000


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=st.lists(st.lists(st.tuples(st.sampled_from(["put", "get", "read", "try_get"]),
                                         st.integers(0, 3), st.sampled_from([0.0, 0.001, 0.01])),
                               max_size=25), min_size=2, max_size=4),
       max_bytes=st.sampled_from([60, 200, DEFAULT_MAX_BYTES]))
def test_random_interleavings_never_lose_or_duplicate_a_tuple(plans, max_bytes):
    """Threads race puts, gets and reads with short timeouts (every kind of cancel); afterwards each tuple
    whose put succeeded was taken exactly once or is still there, and no timed-out put left anything."""
    ts, lock = LocalTupleSpace(max_bytes=max_bytes), threading.Lock()
    stored, taken = [], []

    def run(t, plan):
        rnd = random.Random(t)
        for i, (op, k, timeout) in enumerate(plan):
            key, value = f"k{k}/{t}.{i}", np.array([t, i])  # 16 + 7 bytes: two or three fit in 60
            try:
                if op == "put":
                    ts.put(key, value, timeout=timeout)
                    with lock:
                        stored.append(key)
                elif op == "get":
                    got = ts.get(f"k{k}/*", timeout=timeout)
                    with lock:
                        taken.append(got[0])
                elif op == "read":
                    ts.read(f"k{k}/*", timeout=timeout)
                elif (got := ts.try_get("*")) is not None:
                    with lock:
                        taken.append(got[0])
            except TimeoutError:
                pass
            if rnd.random() < 0.3:
                time.sleep(0)

    threads = [_thread(run, t, plan) for t, plan in enumerate(plans)]
    for t in threads:
        t.join(30)
    left = []
    while (got := ts.try_get("*")) is not None:
        left.append(got[0])
    assert sorted(taken + left) == sorted(stored)
    assert ts.stats.peak_bytes <= max_bytes


def test_close_is_idempotent_and_wakes_waiting_calls():
    ts, errors = LocalTupleSpace(), []

    def wait():
        try:
            ts.get("never")
        except RuntimeError as e:
            errors.append(str(e))

    t = _thread(wait)
    time.sleep(0.1)
    ts.close()
    ts.close()
    t.join(5)
    assert errors == ["get: the tuple space was closed while this call waited"]
    for call in (lambda: ts.put("k", 1), lambda: ts.get("k"), lambda: ts.try_read("k")):
        with pytest.raises(RuntimeError, match="closed"):
            call()


@pytest.mark.parametrize("call, error, match", [
    (lambda ts: ts.put(3, 1), TypeError, "key: expected a str, got int"),
    (lambda ts: ts.put("", 1), ValueError, "key: expected 1 to"),
    (lambda ts: ts.put("a*", 1), ValueError, "without the glob characters"),
    (lambda ts: ts.put("k", object()), TypeError, "value: expected an array or a JSON value"),
    (lambda ts: ts.put("k", {1, 2}), TypeError, "value: .* got set"),
    (lambda ts: ts.put("k", float("nan")), TypeError, "value: .*finite"),
    (lambda ts: ts.put("k", np.array(["a"])), TypeError, "value: arrays of booleans, integers or floats"),
    (lambda ts: ts.put("k", np.ones(2, np.complex64)), TypeError, "got dtype complex64"),
    (lambda ts: ts.put("k", "x" * 600_000), ValueError, "put large data as an array"),
    (lambda ts: ts.put("k", np.zeros(200)), ValueError, "exceeds the space's max_bytes=1000"),
    (lambda ts: ts.put("k", 1, timeout=-1), ValueError, "timeout: expected None or a number"),
    (lambda ts: ts.get(None), TypeError, "pattern: expected a str"),
    (lambda ts: ts.read(b"k*"), TypeError, "pattern: expected a str"),
    (lambda ts: ts.try_get(""), ValueError, "pattern: expected 1 to"),
    (lambda ts: ts.get("k", timeout="1"), ValueError, "timeout: expected None or a number"),
])
def test_bad_arguments_name_the_argument(call, error, match):
    with LocalTupleSpace(max_bytes=1000) as ts, pytest.raises(error, match=match):
        call(ts)


@pytest.mark.parametrize("max_bytes", [0, -5, 1.5, True, "1"])
def test_bad_max_bytes(max_bytes):
    with pytest.raises(ValueError, match="max_bytes: expected an integer >= 1"):
        LocalTupleSpace(max_bytes=max_bytes)
