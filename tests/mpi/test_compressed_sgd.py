"""Compressed gradient exchange on float32 models: error feedback telescopes (nothing is lost, only delayed),
and compressed SGD with error feedback ends where uncompressed SGD ends. Runs unchanged on 1, 2 and 4 ranks."""
import contextlib

import numpy as np
import pytest

from hpcai import Tensor, nn, optim
from hpcai.amp import DynamicLossScaler
from hpcai.ops.loss import cross_entropy
from hpcai.parallel import data_parallel
from hpcai.parallel.data_parallel import UNIT_ROUNDOFF, DistributedOptimizer

B = 48  # global batch, divisible by 1, 2, 3 and 4 ranks


def problem(seed=0, n=480):
    """A separable 5-class problem in 12 dimensions (float32), the same on every rank."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((12, 5)), axis=1)
    return x, y


def model():
    return nn.Sequential(nn.Linear(12, 32, rng=1), nn.Tanh(), nn.Linear(32, 5, rng=2))


def train(comm, compression, error_feedback, steps=60, lr=0.5):
    x, y = problem()
    net = model()
    opt = DistributedOptimizer(optim.SGD(net.parameters(), lr=lr), comm=comm, compression=compression,
                               error_feedback=error_feedback)
    n = B // comm.size
    for t in range(steps):
        lo = (t * B) % len(x) + comm.rank * n
        opt.zero_grad()
        cross_entropy(net(Tensor(x[lo:lo + n])), Tensor(y[lo:lo + n])).backward()
        opt.step()
    return float(cross_entropy(net(Tensor(x)), Tensor(y)).item())


@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_error_feedback_telescopes(comm, compression):
    """With fixed weights (lr 0) the exchanged gradients of T steps sum to T times the exact mean gradient,
    minus the residuals left at the end: the error stays bounded instead of growing with T."""
    x, y = problem(1, 60)
    n = 12
    xs, ys = x[comm.rank * n:(comm.rank + 1) * n], y[comm.rank * n:(comm.rank + 1) * n]
    sums, T = {}, 40
    for ef in (False, True):
        net = model()
        opt = DistributedOptimizer(optim.SGD(net.parameters(), lr=0.0), comm=comm, compression=compression,
                                   error_feedback=ef)
        total = 0.0
        for _ in range(T):
            opt.zero_grad()
            cross_entropy(net(Tensor(xs)), Tensor(ys)).backward()
            exact = np.concatenate([p.grad.ravel() for p in net.parameters()]).astype(np.float64)
            opt.step()
            total = total + np.concatenate([p.grad.ravel() for p in net.parameters()])
        sums[ef] = total
    mean = comm.allgather(exact).mean(0)  # the same gradient every step
    err = {ef: np.abs(sums[ef] - T * mean).max() for ef in sums}
    one_step = np.abs(mean).max() * 2.0 ** -7  # a few roundings of one step's gradient
    assert err[True] <= one_step, err
    assert err[False] > 4 * err[True]  # without feedback the same rounding error piles up T times


@pytest.mark.parametrize("gather", [True, False])  # words allgathered and summed in float32, or reduced by MPI
@pytest.mark.parametrize("loss_scale", [1e-6, 1.0, 1e6])
@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_float32_exchange_stays_within_its_error_bound(comm, monkeypatch, compression, loss_scale, gather):
    monkeypatch.setattr(data_parallel, "GATHER_RANKS", 64 if gather else 1)
    net = model()
    rng = np.random.default_rng(100 + comm.rank)  # every rank its own data: different gradients
    x, y = rng.standard_normal((6, 12)).astype(np.float32), rng.integers(0, 5, 6)
    (cross_entropy(net(Tensor(x)), Tensor(y)) * loss_scale).backward()
    local = np.concatenate([p.grad.ravel() for p in net.parameters()])
    grads = comm.allgather(local).astype(np.float64)
    opt = DistributedOptimizer(optim.SGD(net.parameters(), lr=0.0), comm=comm, compression=compression)
    opt.synchronize()
    got = np.concatenate([p.grad.ravel() for p in net.parameters()]).astype(np.float64)
    n, u = comm.size, UNIT_ROUNDOFF[compression]
    mean, m = grads.mean(0), np.abs(grads).max()
    floor = n * m * 2.0 ** -38 if compression == "fp16" else 2.0 ** -134
    bound = n * u / (1 - n * u) * np.abs(grads).mean(0) + floor + 4 * 2.0 ** -24 * np.abs(mean)
    err = np.abs(got - mean)
    assert local.dtype == np.float32 and np.all(err <= bound), f"worst error / bound {np.max(err / bound):.3g}"
    assert err.max() > 0  # it really was rounded


@pytest.mark.parametrize("gather", [True, False])
@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_compressed_sgd_with_error_feedback_converges_like_uncompressed(comm, monkeypatch, compression, gather):
    monkeypatch.setattr(data_parallel, "GATHER_RANKS", 64 if gather else 1)
    plain = train(comm, "none", False)
    squeezed = train(comm, compression, True)
    assert plain < 0.5 * train(comm, "none", False, steps=1)  # it did learn
    assert abs(squeezed - plain) <= 0.02 * plain + 1e-3, (squeezed, plain)


@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_error_feedback_follows_a_changing_loss_scale(comm, compression):
    """The loss scale doubles every step (growth_interval=1). Given the scaler, the optimizer rescales the
    errors it keeps, and the unscaled gradients exchanged over T steps still sum to T times the exact mean
    within a step's rounding; without it each step's errors are fed back at half their weight (kept at
    the old scale), so half of every rounding error is lost and the sum drifts as T grows."""
    x, y = problem(1, 60)
    n = 12
    xs, ys = x[comm.rank * n:(comm.rank + 1) * n], y[comm.rank * n:(comm.rank + 1) * n]
    sums, T, stepped = {}, 24, []
    for told in (False, True):
        net = model()
        scaler = DynamicLossScaler(init_scale=2.0 ** 3, growth_interval=1)
        opt = DistributedOptimizer(optim.SGD(net.parameters(), lr=0.0), comm=comm, compression=compression,
                                   error_feedback=True, loss_scaler=scaler if told else None)
        total = 0.0
        for _ in range(T):
            opt.zero_grad()
            scaler.scale_loss(cross_entropy(net(Tensor(xs)), Tensor(ys))).backward()
            exact = np.concatenate([p.grad.ravel() for p in net.parameters()]).astype(np.float64) / scaler.scale
            stepped.append(scaler.step(opt))  # exchange, unscale, step (lr 0), double the scale
            total = total + np.concatenate([p.grad.ravel() for p in net.parameters()])
        sums[told] = total
    mean = comm.allgather(exact).mean(0)  # the same gradient every step
    err = {told: np.abs(sums[told] - T * mean).max() for told in sums}
    one_step = np.abs(mean).max() * 2.0 ** -7
    assert all(stepped) and scaler.scale == 2.0 ** (3 + T)
    assert err[True] <= one_step, err
    assert err[False] > 4 * err[True], (err, one_step)


def test_train_step_hands_its_loss_scaler_to_error_feedback(comm):
    """TrainStep makes the loss scaler (mixed-fp16), so it tells a DistributedOptimizer with error feedback;
    one given explicitly, or an optimizer with nothing to rescale, is left as it is."""
    from hpcai.train import TrainStep
    net = model()
    kept = DistributedOptimizer(optim.SGD(net.parameters(), lr=0.1), comm=comm, compression="bf16",
                                error_feedback=True)
    step = TrainStep(net, cross_entropy, kept, "mixed-fp16")
    assert step.scaler is not None and kept.loss_scaler is step.scaler
    mine = DynamicLossScaler()
    told = DistributedOptimizer(optim.SGD(net.parameters(), lr=0.1), comm=comm, compression="bf16",
                                error_feedback=True, loss_scaler=mine)
    TrainStep(net, cross_entropy, told, "mixed-fp16")
    plain = DistributedOptimizer(optim.SGD(net.parameters(), lr=0.1), comm=comm, compression="bf16")
    TrainStep(net, cross_entropy, plain, "mixed-fp16")
    assert told.loss_scaler is mine and plain.loss_scaler is None


@pytest.mark.parametrize("passes", [1, 2])
@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_compiled_and_numpy_paths_train_to_the_same_bits(comm, compression, passes):
    """The compiled passes (gradients into the bucket with the errors fed back and the largest |g| found,
    pack, unpack-and-sum) and the numpy ones give the same weights, bit for bit, after compressed SGD with
    error feedback under a changing loss scale (so the kept errors are rescaled too), with one or two
    backward passes per step."""
    from hpcai import accel
    if not data_parallel._last_pass_bits.available:
        pytest.skip("numba is not installed (extra 'fast') or HPCAI_NUMBA=0")  # every rank agrees
    x, y = problem(2)
    n = B // comm.size // passes
    weights = {}
    for compiled in (True, False):
        net = model()
        scaler = DynamicLossScaler(init_scale=2.0 ** 4, growth_interval=3)
        opt = DistributedOptimizer(optim.SGD(net.parameters(), lr=0.3), comm=comm, compression=compression,
                                   error_feedback=True, loss_scaler=scaler, backward_passes_per_step=passes)
        with accel.disabled() if not compiled else contextlib.nullcontext():
            for t in range(12 * passes):
                lo = (t * B // passes) % len(x) + comm.rank * n
                opt.zero_grad()
                scaler.scale_loss(cross_entropy(net(Tensor(x[lo:lo + n])), Tensor(y[lo:lo + n]))).backward()
                scaler.step(opt)  # steps on every passes-th call
        weights[compiled] = np.concatenate([p.data.ravel() for p in net.parameters()])
    assert scaler.scale > 2.0 ** 4  # the scale changed: the errors kept were rescaled
    np.testing.assert_array_equal(weights[True], weights[False])
    assert not np.array_equal(weights[True], np.concatenate([p.data.ravel() for p in model().parameters()]))


@pytest.mark.parametrize("error_feedback", [False, True])
def test_bf16_packed_as_gradients_come_in_counts_a_missing_gradient_as_zeros(comm, error_feedback):
    """bf16 after one backward pass packs each gradient straight into the words; a parameter without a
    gradient on rank 0 only is packed from zeros there (through the bucket), on both paths alike."""
    from hpcai import accel
    from hpcai.nn import Parameter
    rng = np.random.default_rng(20 + comm.rank)
    grads = [rng.standard_normal(n).astype(np.float32) for n in (300, 200, 100)]
    got = {}
    for compiled in (True, False):
        params = [Parameter(np.zeros(g.size, np.float32)) for g in grads]
        opt = DistributedOptimizer(optim.SGD(params, lr=0.0), comm=comm, compression="bf16",
                                   error_feedback=error_feedback)
        with accel.disabled() if not compiled else contextlib.nullcontext():
            for _ in range(2):  # the second step feeds the first one's errors back
                opt.zero_grad()
                for i, (p, g) in enumerate(zip(params, grads)):
                    p.grad = None if (i == 1 and comm.rank == 0) else g.copy()
                opt.synchronize()
        got[compiled] = [None if p.grad is None else p.grad.copy() for p in params]
    everyone = comm.allgather(np.concatenate(grads)).astype(np.float64)
    everyone[0, 300:500] = 0.0  # rank 0 had no gradient for the second parameter
    mean = everyone.mean(0)
    for a, b in zip(got[True], got[False]):
        if a is None or b is None:
            assert a is None and b is None and comm.size == 1
            continue
        np.testing.assert_array_equal(a, b)
    if comm.size > 1:
        exchanged = np.concatenate(got[True])
        assert np.all(np.abs(exchanged - mean) <= 2.0 ** -7 * np.abs(everyone).mean(0) + 1e-30)
