"""CPU kernels on threads (``hpcai.ops.threads``) and the host allocator setting: the parts cover the
work exactly once, errors and BLAS's thread count survive, and threaded kernels equal serial ones."""
import contextlib
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from hpcai import Tensor, ops
from hpcai.ops import threads


@pytest.mark.parametrize("n,size,workers", [(1, 10**9, 4), (7, 10**9, 2), (64, 10**9, 3), (64, 10, 2), (5, 10**9, 8)])
def test_over_batch_visits_every_sample_once(monkeypatch, n, size, workers):
    monkeypatch.setattr(threads, "workers", lambda: workers)
    seen, lock = [], threading.Lock()

    def record(s):
        with lock:
            seen.extend(range(s.start, s.stop))

    threads.over_batch(np, record, n, size)
    assert sorted(seen) == list(range(n))
    parts = threads.batch_parts(n, size)
    assert len(parts) == (1 if size < 2 * threads._LEAST else min(workers, n))


@pytest.mark.parametrize("n,size,workers", [(1, 10**9, 4), (7, 10**9, 2), (64, 10**9, 3), (64, 10, 2), (5, 10**9, 8)])
def test_batch_blocks_sums_over_every_sample_once(monkeypatch, n, size, workers):
    """The per-block results add up to the sum over the batch, each sample counted once (a per-channel
    reduction's partial sums), in blocks and on threads as over_batch cuts them."""
    monkeypatch.setattr(threads, "workers", lambda: workers)
    values = np.arange(1, n + 1, dtype=np.float64) ** 2
    total = threads.batch_blocks(lambda s: np.array([values[s].sum(), s.stop - s.start]), n, size)
    np.testing.assert_array_equal(total, [values.sum(), n])


def test_parallel_keeps_order_raises_and_restores_blas_threads():
    ctl = threads._controller()
    if ctl is None:
        pytest.skip("numpy's BLAS is not visible to threadpoolctl here")
    before = ctl.num_threads
    inside = []
    assert threads.parallel(lambda p: (inside.append(ctl.num_threads), p * p)[1], [1, 2, 3]) == [1, 4, 9]
    assert inside == [1, 1, 1]                 # BLAS single-threaded while the parts run
    assert ctl.num_threads == before

    def fail(p):
        if p == 2:
            raise KeyError("part 2")
        return p

    with pytest.raises(KeyError, match="part 2"):
        threads.parallel(fail, [1, 2, 3])
    assert ctl.num_threads == before
    # a parallel section inside another sees one thread: no oversubscription
    assert threads.parallel(lambda p: threads.workers(), [0, 1]) == [1, 1]


class _Broken:
    """A spinning kernel whose compilation fails."""
    available = True

    def __call__(self, *args):
        raise RuntimeError("no compiler here")


@pytest.mark.parametrize("compiled", [True, False, "broken"])
def test_team_deals_out_many_parts_and_serves_callers_from_several_threads(monkeypatch, compiled):
    """More parts than threads are dealt out and come back in order; two Python threads starting sections at
    once both get their results (the second runs its parts itself); a failed section leaves the team working;
    with and without numba's spinning wait, and with a spinning kernel that fails."""
    from hpcai import accel
    if threads._controller() is None:
        pytest.skip("numpy's BLAS is not visible to threadpoolctl here")
    monkeypatch.setitem(threads._state, "team", None)              # a team of its own, made below
    if compiled == "broken":
        monkeypatch.setattr(threads, "_spin", _Broken())
    context = accel.disabled() if compiled is False else contextlib.nullcontext()
    with context:
        threads.parallel(lambda p: p, [0, 1])
        assert threads._state["team"].spin is (compiled is True and accel.numba_installed())
        assert threads.parallel(lambda p: p * p, list(range(11))) == [p * p for p in range(11)]
        with pytest.raises(ZeroDivisionError):
            threads.parallel(lambda p: 1 // (p - 7), list(range(9)))
        results, errors = {}, []

        def caller(name):
            try:
                with (accel.disabled() if compiled is False else contextlib.nullcontext()):
                    for k in range(50):
                        parts = list(range(k % 5 + 1))
                        got = threads.parallel(lambda p: (name, p, threading.get_ident()), parts)
                        assert [g[:2] for g in got] == [(name, p) for p in parts]
                results[name] = True
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        callers = [threading.Thread(target=caller, args=(n,)) for n in ("a", "b")]
        for t in callers:
            t.start()
        for t in callers:
            t.join(60)
        assert not errors and results == {"a": True, "b": True}
        # the parts after the first ran on another thread than the caller's
        assert len({t for _, _, t in threads.parallel(lambda p: (0, p, threading.get_ident()), [0, 1])}) == 2


def test_threaded_relu_and_max_pool_equal_serial(monkeypatch, rng):
    x = rng.standard_normal((8, 4, 96, 96)).astype(np.float32)
    x[0, 0, :2, :2] = 0.0                        # ties
    x[1, 1, 0, 0] = np.nan
    g = rng.standard_normal((8, 4, 48, 48)).astype(np.float32)

    def run():
        xt = Tensor(x, requires_grad=True)
        y = ops.max_pool2d(ops.relu(xt), 2)
        y.backward(g)
        xt2 = Tensor(x, requires_grad=True)
        z = ops.max_pool2d(xt2, 3, stride=2, padding=1)
        z.backward(np.ones(z.shape, np.float32))
        return [y.numpy(), xt.grad, z.numpy(), xt2.grad]

    monkeypatch.setattr(threads, "workers", lambda: 1)
    serial = run()
    monkeypatch.setattr(threads, "workers", lambda: 3)
    monkeypatch.setattr(threads, "_BLOCK", 1 << 12)    # many blocks per thread
    assert threads.batch_parts(8, x.size) != [slice(0, 8)]
    for a, b in zip(run(), serial):
        np.testing.assert_array_equal(a, b)


_FAULTS = textwrap.dedent("""
    import resource, numpy as np
    import hpcai
    def step():  # a training step's temporaries: a few 16 MB arrays alive at once, then freed
        arrays = [np.ones(4 << 20, np.float32) for _ in range(4)]
        del arrays
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_host_memory_is_recycled_instead_of_faulted_in_afresh():
    def faults(**env):
        out = subprocess.run([sys.executable, "-c", _FAULTS], env={**os.environ, **env}, capture_output=True,
                             text=True, check=True)
        return int(out.stdout.strip())

    kept, system = faults(), faults(HPCAI_SYSTEM_MALLOC="1")
    assert system > 1000                         # of 4 x 4096 pages of 4 KiB, many faulted in anew
    assert kept < system / 10, (kept, system)


@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((300, 200), (200, 100)), ((64, 512), (512, 1200)),
                                    ((4, 100, 90), (90, 80)), ((2, 1, 70, 60), (3, 60, 50))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_equals_numpy_and_leaves_blas_threads_as_they_were(rng, shapes, dtype):
    ctl = threads._controller()
    before = ctl.num_threads if ctl is not None else None
    a, b = (rng.standard_normal(s).astype(dtype) for s in shapes)
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(threads.matmul(a, b), np.matmul(a, b), **tol)
    out = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]), dtype)
    assert threads.matmul(a, b, out=out) is out
    np.testing.assert_allclose(out, np.matmul(a, b), **tol)
    if ctl is not None:
        assert ctl.num_threads == before


def test_mid_sized_products_run_with_blas_single_threaded(monkeypatch, rng):
    ctl = threads._controller()
    if ctl is None or ctl.num_threads < 2:
        pytest.skip("needs numpy's BLAS with several threads")
    seen = []
    real = np.matmul
    monkeypatch.setattr(np, "matmul", lambda *a, **k: (seen.append(ctl.num_threads), real(*a, **k))[1])
    a, b = rng.standard_normal((256, 256)), rng.standard_normal((256, 10))      # 655,360 multiply-adds
    big = rng.standard_normal((512, 512))                                       # 134 million
    threads.matmul(a, b)
    threads.matmul(big, big)
    assert seen == [1, ctl.num_threads]


@pytest.mark.parametrize("kwargs,name", [({"largest": 64 << 20}, "largest"), ({"largest": -1}, "largest"),
                                         ({"keep": 1.5}, "keep"), ({"keep": True}, "keep")])
def test_keep_host_memory_names_a_bad_argument(kwargs, name):
    from hpcai import backend
    with pytest.raises(ValueError, match=f"keep_host_memory: {name} must be a number of bytes"):
        backend.keep_host_memory(**kwargs)
