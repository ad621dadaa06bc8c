"""Data parallel training equals serial training on the global batch; broadcasts, compression, gradient
accumulation, buckets and fit over MPI. Runs unchanged on 1, 2 and 4 ranks.

Each rank takes its ``B / size`` slice of the same global batch; the serial reference (computed on every
rank, without communication) trains on the whole batch, in fp64.
"""
import contextlib
import io
import warnings

import numpy as np
import pytest

from hpcai import Tensor, datasets, nn, optim
from hpcai.amp import DynamicLossScaler
from hpcai.nn import Parameter
from hpcai.ops.loss import cross_entropy
from hpcai.parallel import data_parallel
from hpcai.parallel.data_parallel import (UNIT_ROUNDOFF, DistributedOptimizer, broadcast_optimizer_state,
                                          broadcast_parameters)
from hpcai.train import Callback, DataLoader, ProgressBar, evaluate, fit

B = 24  # the global batch: divisible by 1, 2, 3 and 4 ranks


def mlp():
    return nn.Sequential(nn.Linear(12, 16, rng=1), nn.Tanh(), nn.Linear(16, 5, rng=2)).astype(np.float64)


def cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5, rng=2)).astype(np.float64)


MODELS = {"mlp": (mlp, (12,)), "cnn": (cnn, (1, 8, 8))}
OPTIMIZERS = {"momentum": lambda p: optim.SGD(p, lr=0.1, momentum=0.9), "adam": lambda p: optim.Adam(p, lr=0.01)}


def global_batches(shape, steps, batch=B, seed=0):
    """The same ``steps`` global batches on every rank."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, *shape)), rng.integers(0, 5, batch)) for _ in range(steps)]


def my_slice(batch, comm):
    x, y = batch
    n = len(x) // comm.size
    return x[comm.rank * n:(comm.rank + 1) * n], y[comm.rank * n:(comm.rank + 1) * n]


def train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        cross_entropy(model(Tensor(x)), Tensor(y)).backward()
        opt.step()


def flat(model):
    return np.concatenate([p.data.ravel() for p in model.parameters()])


def spread(comm, a):
    """The largest difference between any rank's copy of ``a`` and rank 0's (one allgather)."""
    everyone = comm.allgather(np.ascontiguousarray(a))
    return float(np.abs(everyone - everyone[0]).max())


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
@pytest.mark.parametrize("model_name", MODELS)
def test_data_parallel_steps_equal_serial_steps_on_the_global_batch(comm, model_name, opt_name):
    make, shape = MODELS[model_name]
    batches = global_batches(shape, steps=3)
    ref, dp = make(), make()
    train(ref, OPTIMIZERS[opt_name](ref.parameters()), batches)
    train(dp, DistributedOptimizer(OPTIMIZERS[opt_name](dp.parameters()), comm=comm),
          [my_slice(b, comm) for b in batches])
    ranks_differ = spread(comm, flat(dp))
    assert np.abs(flat(dp) - flat(ref)).max() <= 1e-10
    assert np.abs(flat(dp) - flat(make())).max() > 1e-3  # it did train
    assert ranks_differ == 0.0  # every rank got the same sums, so the weights stay bitwise equal


@pytest.mark.parametrize("form", ["module", "dict", "list"])
def test_broadcast_parameters_gives_every_rank_the_roots_weights(comm, form):
    root = comm.size - 1

    def model(seed):
        m = nn.Sequential(nn.Linear(6, 4, rng=seed), nn.BatchNorm1d(4))
        m[1].running_mean = np.full(4, seed + 0.5, np.float32)
        return m
    m = model(comm.rank)
    what = {"module": m, "dict": dict(m.named_parameters()), "list": m.parameters()}[form]
    broadcast_parameters(what, root=root, comm=comm)
    state = np.concatenate([v.ravel() for v in m.state_dict().values()])
    expected = model(root).state_dict()
    if form != "module":  # buffers travel only with the module
        expected["1.running_mean"] = np.full(4, comm.rank + 0.5, np.float32)
    ranks_differ = spread(comm, np.concatenate([p.data.ravel() for p in m.parameters()]))
    assert ranks_differ == 0.0
    np.testing.assert_array_equal(state, np.concatenate([v.ravel() for v in expected.values()]))


def test_broadcast_optimizer_state_gives_every_rank_the_roots_state(comm):
    root = comm.size - 1
    model = mlp()
    opt = optim.Adam(model.parameters(), lr=0.01)
    if comm.rank == root:  # only the root has trained (as if it alone had loaded a checkpoint)
        train(model, opt, global_batches((12,), steps=root + 2, seed=7))
        opt.param_groups[0]["lr"] = 0.123
    broadcast_parameters(model, root, comm)
    broadcast_optimizer_state(opt, root, comm)
    sd = opt.state_dict()
    everyone = comm.allgather_obj(sd)
    assert sd["meta"]["state"]["0"]["step"] == root + 2 and opt.param_groups[0]["lr"] == 0.123
    for other in everyone:
        assert other["meta"] == everyone[root]["meta"]
        assert other["arrays"].keys() == everyone[root]["arrays"].keys()
        for k, v in other["arrays"].items():
            np.testing.assert_array_equal(v, everyone[root]["arrays"][k])


@pytest.mark.parametrize("loss_scale", [1e-6, 1.0, 1e6])  # fp16 alone would underflow / overflow at the ends
@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_compressed_exchange_stays_within_its_error_bound(comm, compression, loss_scale):
    model = mlp()
    rng = np.random.default_rng(100 + comm.rank)  # every rank its own data: different gradients
    x, y = rng.standard_normal((6, 12)), rng.integers(0, 5, 6)
    (cross_entropy(model(Tensor(x)), Tensor(y)) * loss_scale).backward()
    params = model.parameters()
    w0 = [p.data.copy() for p in params]
    local = np.concatenate([p.grad.ravel() for p in params])
    grads = comm.allgather(local)  # (size, n): every rank's gradient, for the exact mean
    opt = DistributedOptimizer(optim.SGD(params, lr=1.0), comm=comm, compression=compression)
    opt.step()  # w1 = w0 - exchanged mean gradient
    got = np.concatenate([(a - p.data).ravel() for a, p in zip(w0, params)])
    w = np.abs(np.concatenate([a.ravel() for a in w0]))
    n, u = comm.size, UNIT_ROUNDOFF[compression]
    mean, mean_abs, m = grads.mean(0), np.abs(grads).mean(0), np.abs(grads).max()
    floor = n * m * 2.0 ** -38 if compression == "fp16" else 2.0 ** -134
    bound = n * u / (1 - n * u) * mean_abs + floor + 4 * 2.0 ** -52 * (np.abs(mean) + w)
    err = np.abs(got - mean)
    assert np.all(err <= bound), f"worst error / bound {np.max(err / bound):.3g}"
    assert err.max() > 0  # it really was rounded


@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_compressed_words_are_gathered_into_a_buffer_kept_across_steps(comm, compression):
    """Up to GATHER_RANKS ranks every step's words land in the same per-bucket buffer (no allocation per
    step), and each step's result is bitwise what a fresh optimizer makes of the same gradients."""
    if not 1 < comm.size <= data_parallel.GATHER_RANKS:
        pytest.skip("words are gathered on 2 to GATHER_RANKS ranks")  # every rank agrees
    rng = np.random.default_rng(comm.rank)
    params = [Parameter(np.zeros(400, np.float32)) for _ in range(3)]  # 1600 bytes each: a bucket each

    def exchange(opt, grads):
        opt.zero_grad()
        for p, g in zip(params, grads):
            p.grad = g.copy()
        opt.synchronize()
        return np.concatenate([p.grad for p in params])
    kept = DistributedOptimizer(optim.SGD(params, lr=0.0), comm=comm, compression=compression, bucket_bytes=1600)
    buffers, got, fresh = [], [], []
    for _ in range(2):
        grads = [rng.standard_normal(400).astype(np.float32) for _ in params]
        got.append(exchange(kept, grads))
        buffers.append([id(b) for b in kept._gathered])
        fresh.append(exchange(DistributedOptimizer(optim.SGD(params, lr=0.0), comm=comm, compression=compression,
                                                   bucket_bytes=1600), grads))
    assert len(kept.buckets) == 3 and buffers[0] == buffers[1] and all(b is not None for b in kept._gathered)
    for a, b in zip(got, fresh):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("compression", ["none", "bf16"])
def test_bucket_buffers_are_kept_across_steps(comm, compression):
    """A step allocates no bucket buffer: the averaged gradients are views of the same buffers every step
    (each step's values its own, bitwise what a fresh optimizer gives the same gradients)."""
    rng = np.random.default_rng(comm.rank)
    params = [Parameter(np.zeros(400, np.float32)) for _ in range(3)]
    kept = DistributedOptimizer(optim.SGD(params, lr=0.0), comm=comm, compression=compression, bucket_bytes=3200)
    bases, got, fresh = [], [], []
    for _ in range(3):
        grads = [rng.standard_normal(400).astype(np.float32) for _ in params]
        for opt, results in ((kept, got), (DistributedOptimizer(optim.SGD(params, lr=0.0), comm=comm,
                                                                compression=compression, bucket_bytes=3200), fresh)):
            opt.zero_grad()
            for p, g in zip(params, grads):
                p.grad = g.copy()
            opt.synchronize()
            results.append(np.concatenate([p.grad for p in params]))
            if opt is kept:
                bases.append([p.grad.base if p.grad.base is not None else p.grad for p in params])
    assert len(kept.buckets) == 2 and bases[0][0] is bases[0][1] and bases[0][1] is not bases[0][2]
    assert all(x is y for step in bases[1:] for x, y in zip(step, bases[0]))  # the same buffers every step
    for a, b in zip(got, fresh):
        np.testing.assert_array_equal(a, b)


def test_largest_magnitude_on_both_paths():
    """The largest |g| that picks fp16's scale: compiled (an integer max over the bits) and numpy agree;
    an inf or a NaN anywhere gives inf; float64 and empty buffers take numpy's way."""
    from hpcai import accel
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(10007) * 10.0 ** rng.uniform(-40, 30, 10007)).astype(np.float32)
    cases = [x, -np.abs(x), x[:0], np.float32([-0.0, 0.0]), np.float32([1e-45, -3e-45]),
             np.float32([1.0, np.nan, 2.0]), np.float32([-np.inf, 1.0]), x.astype(np.float64)]
    expect = [float(np.abs(x).max()), float(np.abs(x).max()), 0.0, 0.0, float(np.float32(3e-45)),
              np.inf, np.inf, float(np.abs(x).max())]
    for compiled in (True, False):
        with accel.disabled() if not compiled else contextlib.nullcontext():
            assert [data_parallel._max_abs(c) for c in cases] == expect, compiled


def test_two_backward_passes_per_step_equal_one_step_on_the_doubled_batch(comm):
    batches = global_batches((12,), steps=2, batch=2 * B)
    ref, dp = mlp(), mlp()
    train(ref, optim.Adam(ref.parameters(), lr=0.01), batches)
    opt = DistributedOptimizer(optim.Adam(dp.parameters(), lr=0.01), comm=comm, backward_passes_per_step=2)
    unchanged_after_first_pass = []
    for x, y in batches:
        for half in (slice(0, B), slice(B, 2 * B)):
            before = flat(dp)
            train(dp, opt, [my_slice((x[half], y[half]), comm)])
            unchanged_after_first_pass.append(bool(np.array_equal(before, flat(dp))))
    ranks_differ = spread(comm, flat(dp))
    assert unchanged_after_first_pass == [True, False, True, False]
    assert opt.state[dp.parameters()[0]]["step"] == 2
    assert np.abs(flat(dp) - flat(ref)).max() <= 1e-10 and ranks_differ == 0.0


class Counting:
    """A communicator that records the size of every buffer it allreduces."""

    def __init__(self, comm):
        self.comm, self.sizes = comm, []

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def allreduce_(self, buf, op="sum"):
        self.sizes.append(buf.size)
        return self.comm.allreduce_(buf, op)


@pytest.mark.parametrize("bucket_bytes", [8, 800])
def test_small_buckets_give_the_results_of_one_bucket(comm, bucket_bytes):
    batches = [my_slice(b, comm) for b in global_batches((12,), steps=2)]
    one, split = mlp(), mlp()
    counted = Counting(comm)
    train(one, DistributedOptimizer(optim.SGD(one.parameters(), lr=0.1, momentum=0.9), comm=comm), batches)
    opt = DistributedOptimizer(optim.SGD(split.parameters(), lr=0.1, momentum=0.9), comm=counted,
                               bucket_bytes=bucket_bytes)
    train(split, opt, batches)
    sizes = [p.size for p in split.parameters()]  # 192, 16, 80, 5 fp64 values
    expected = {8: [[s] for s in sizes], 800: [[192], [16, 80], [5]]}[bucket_bytes]
    assert [[hi - lo for _, lo, hi in b.entries] for b in opt.buckets] == expected
    per_step = [len(sizes)] + [sum(b) for b in expected]  # the has-gradient flags, then one per bucket
    assert counted.sizes == 2 * per_step
    # an allreduce's summation order may depend on the message size, hence not bitwise on 3+ ranks
    assert np.abs(flat(split) - flat(one)).max() <= 1e-13


def test_a_gradient_missing_on_some_ranks_counts_as_zero_and_missing_everywhere_stays_none(comm):
    used, root_only, unused = (Parameter(np.ones(3)) for _ in range(3))
    opt = DistributedOptimizer(optim.SGD([used, root_only, unused], lr=0.5, weight_decay=0.1), comm=comm)
    opt.zero_grad()
    loss = (used * float(comm.rank + 1)).sum()
    if comm.rank == 0:
        loss = loss + (root_only * 2.0).sum()  # a branch only rank 0 takes: the others have no gradient
    loss.backward()
    opt.step()
    n = comm.size
    ranks_differ = spread(comm, np.concatenate([used.data, root_only.data, unused.data]))
    np.testing.assert_allclose(used.data, 1 - 0.5 * ((n + 1) / 2 + 0.1), rtol=1e-15)
    np.testing.assert_allclose(root_only.data, 1 - 0.5 * (2.0 / n + 0.1), rtol=1e-15)
    assert unused.grad is None and np.all(unused.data == 1.0)  # not stepped: weight decay would move it
    assert ranks_differ == 0.0


class LocalLogs(Callback):
    """Keeps this rank's own running means at each epoch's last batch (before fit averages them)."""

    def __init__(self):
        self.losses = []

    def on_batch_end(self, step, logs=None):
        if step + 1 == len(self.loop.loader):
            self.losses.append(logs["loss"])


@pytest.fixture(scope="module")
def digits():
    return datasets.digits(flat=True)


def test_fit_with_comm_learns_digits_and_keeps_ranks_identical(comm, digits):
    (xtr, ytr), (xte, yte) = digits
    model = nn.Sequential(nn.Linear(64, 64, rng=0), nn.ReLU(), nn.Linear(64, 10, rng=1))
    out, local = io.StringIO(), LocalLogs()
    opt = DistributedOptimizer(optim.Adam(model.parameters(), lr=1e-2), comm=comm)
    history = fit(model, (xtr, ytr), "cross_entropy", opt, epochs=6, batch_size=64 // comm.size,  # global 64
                  metrics=["accuracy"], callbacks=[ProgressBar(2, file=out), local], comm=comm)
    accuracy = evaluate(model, (xte, yte), metrics=["accuracy"])["accuracy"]
    ranks_differ = spread(comm, flat(model))
    local_means = np.mean(comm.allgather_obj(local.losses), axis=0)
    histories = comm.allgather_obj(history["loss"])
    printed = comm.allgather_obj(out.getvalue().count("epoch"))
    assert accuracy >= 0.9 and ranks_differ == 0.0
    assert all(h == history["loss"] for h in histories)
    np.testing.assert_allclose(history["loss"], local_means, rtol=1e-12)  # averaged over ranks, then reported
    assert printed == [6] + [0] * (comm.size - 1)  # only rank 0 prints


def test_fit_with_loss_scaling_skips_together_when_one_rank_has_a_non_finite_loss(comm, digits):
    (xtr, ytr), _ = digits
    n = len(xtr) // comm.size
    x, y = xtr[comm.rank * n:(comm.rank + 1) * n].copy(), ytr[comm.rank * n:(comm.rank + 1) * n]
    if comm.rank == comm.size - 1:
        x[:32] = np.inf  # this rank's first two batches give an infinite loss
    model = nn.Sequential(nn.Linear(64, 32, rng=0), nn.ReLU(), nn.Linear(32, 10, rng=1))
    opt = DistributedOptimizer(optim.Adam(model.parameters(), lr=1e-2), comm=comm)
    with np.errstate(all="ignore"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        history = fit(model, DataLoader((x, y), 16, shuffle=False), "cross_entropy", opt, epochs=1, verbose=0,
                      precision="mixed-fp16", loss_scaler=DynamicLossScaler(init_scale=2.0 ** 8), comm=comm)
    said = [str(w.message) for w in caught if "step skipped" in str(w.message)]
    if comm.rank == comm.size - 1:  # the rank whose data is bad says which steps were skipped
        assert [m.split(" (global")[0] for m in said] == ["fit: step skipped at epoch 1, step 1",
                                                          "fit: step skipped at epoch 1, step 2"], said
    skipped = comm.allgather_obj(history["skipped_steps"][-1])
    ranks_differ = spread(comm, flat(model))
    assert skipped == [2] * comm.size and ranks_differ == 0.0
    assert np.isfinite(flat(model)).all()


def test_the_wrapper_passes_groups_state_and_state_dict_through_and_checks_its_arguments(comm):
    model = mlp()
    inner = optim.Adam(model.parameters(), lr=0.01)
    opt = DistributedOptimizer(inner, comm=comm)
    train(model, opt, [my_slice(global_batches((12,), steps=1)[0], comm)])
    opt.param_groups[0]["lr"] = 0.5  # what a schedule does
    assert inner.param_groups[0]["lr"] == 0.5 and opt.state is inner.state
    sd = opt.state_dict()
    assert sd["meta"]["optimizer"] == "Adam" and sd["meta"]["state"]["0"]["step"] == 1
    fresh = DistributedOptimizer(optim.Adam(model.parameters(), lr=0.01), comm=comm)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["lr"] == 0.5 and fresh.state[model.parameters()[0]]["step"] == 1
    for bad, match in [({"compression": "int8"}, "compression"), ({"op": "mean"}, "op"),
                       ({"bucket_bytes": 0}, "bucket_bytes"), ({"backward_passes_per_step": 1.5}, "backward")]:
        with pytest.raises(ValueError, match=match):
            DistributedOptimizer(optim.SGD(model.parameters()), comm=comm, **bad)
    with pytest.raises(TypeError, match="not yet distributed"):
        DistributedOptimizer(opt, comm=comm)
    with pytest.raises(TypeError, match="loss_scaler"):
        DistributedOptimizer(optim.SGD(model.parameters()), comm=comm, error_feedback=True, loss_scaler=2.0)


def test_init_installs_the_abort_hook_and_stall_settings_unless_told_not_to(comm, monkeypatch):
    import sys
    import threading

    from hpcai.parallel import data_parallel
    for module, name in ((sys, "excepthook"), (threading, "excepthook")):
        monkeypatch.setattr(module, name, getattr(module, name))  # put back after the test
    for name in ("stall_warning", "stall_timeout"):
        monkeypatch.setattr(comm, name, getattr(comm, name, None), raising=False)
    monkeypatch.setattr(data_parallel, "_DEFAULT_COMM", data_parallel._DEFAULT_COMM)
    before = sys.excepthook
    assert data_parallel.init(comm, abort_on_error=False) is comm and sys.excepthook is before
    data_parallel.init(comm, stall_warning=7, stall_timeout=0)  # the default: an error ends the job (MPI_Abort)
    assert (sys.excepthook is not before) == (comm.size > 1)
    if hasattr(comm, "comm"):  # MPI's: the settings stall detection reads
        assert comm.stall_warning == 7.0 and comm.stall_timeout is None
    for bad, error in [({"abort_on_error": 1}, TypeError), ({"stall_warning": -1}, ValueError),
                       ({"stall_timeout": "60"}, ValueError)]:
        with pytest.raises(error, match=next(iter(bad))):
            data_parallel.init(comm, **bad)
