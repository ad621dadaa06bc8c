"""Normalisation, dropout and losses beyond what the registry checks: running statistics, train/eval,
dropout's statistics, hand-computed losses, dtypes, and the error messages for bad input."""
import numpy as np
import pytest

from hpcai import Tensor, ops


def t(a, grad=False, xp=np):
    return Tensor(xp.asarray(a), requires_grad=grad)


def log_softmax_np(z):
    s = z - z.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


# -- batch norm / layer norm ---------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5, 2)])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_batch_norm_running_stats_follow_torch(shape, as_tensor, rng):
    torch = pytest.importorskip("torch")
    c = shape[1]
    w, b = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    rm, rv = np.zeros(c), np.ones(c)
    trm, trv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    bufs = (Tensor(rm), Tensor(rv)) if as_tensor else (rm, rv)
    for step in range(4):
        x = rng.standard_normal(shape) * (step + 1) + step
        y = ops.batch_norm(t(x), t(w), t(b), *bufs, training=True, momentum=0.2)
        ref = torch.nn.functional.batch_norm(torch.from_numpy(x), trm, trv, torch.from_numpy(w),
                                             torch.from_numpy(b), training=True, momentum=0.2)
        np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-10, atol=1e-12)
    got = (bufs[0].data, bufs[1].data) if as_tensor else bufs
    np.testing.assert_allclose(got[0], trm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(got[1], trv.numpy(), rtol=1e-12)   # unbiased batch variance, as torch
    x = rng.standard_normal(shape)
    y = ops.batch_norm(t(x), t(w), t(b), *bufs, training=False)
    ref = torch.nn.functional.batch_norm(torch.from_numpy(x), trm, trv, torch.from_numpy(w),
                                         torch.from_numpy(b), training=False)
    np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-10, atol=1e-12)


def test_batch_norm_train_uses_batch_stats_and_eval_uses_running(xp, rng):
    x = rng.standard_normal((16, 3, 4, 4)) * 3 + 5
    rm, rv = xp.zeros(3), xp.ones(3)
    y = ops.batch_norm(t(x, xp=xp), running_mean=rm, running_var=rv).numpy()
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-10)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-4)
    n = 16 * 4 * 4
    np.testing.assert_allclose(np.asarray(rm.get() if xp is not np else rm), 0.1 * x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(np.asarray(rv.get() if xp is not np else rv),
                               0.9 + 0.1 * x.var(axis=(0, 2, 3)) * n / (n - 1))
    before = (rm.copy(), rv.copy())
    y = ops.batch_norm(t(x, xp=xp), running_mean=rm, running_var=rv, training=False, eps=0.0).numpy()
    rm_h, rv_h = (np.asarray(a.get() if xp is not np else a) for a in before)
    np.testing.assert_allclose(y, (x - rm_h[:, None, None]) / np.sqrt(rv_h[:, None, None]), rtol=1e-12)
    assert bool((rm == before[0]).all()) and bool((rv == before[1]).all()), "eval must not update the buffers"


def test_batch_norm_eval_gradient_treats_stats_as_constants(rng):
    x = t(rng.standard_normal((5, 2)), grad=True)
    rv = np.array([4.0, 0.25])
    ops.batch_norm(x, running_mean=np.zeros(2), running_var=rv, training=False, eps=0.0).sum().backward()
    np.testing.assert_allclose(x.grad, np.broadcast_to(1 / np.sqrt(rv), (5, 2)))


def test_layer_norm_int_shape_and_no_affine(rng):
    x = rng.standard_normal((3, 6)) * 2 + 1
    y = ops.layer_norm(t(x), 6, eps=0.0).numpy()
    ref = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-12)


def _compiled_bn_case(rng, monkeypatch, dtype, threads, block):
    """(x, w, b, gy) for the compiled batch-norm sweeps, the work cut into ``threads`` parts of ``block``
    elements (skipped without numba): a mean far from zero, an output gradient that is not C-ordered."""
    from hpcai.ops import normalization
    from hpcai.ops import threads as threads_module
    if not normalization._shifted_sums.available:
        pytest.skip("numba not installed")
    monkeypatch.setattr(threads_module, "workers", lambda: threads)
    monkeypatch.setattr(threads_module, "_BLOCK", block)
    monkeypatch.setattr(threads_module, "_LEAST", 1)
    x = (rng.standard_normal((6, 4, 5, 7)) * 3 + 40).astype(dtype)
    w, b = rng.uniform(0.5, 1.5, 4).astype(dtype), rng.standard_normal(4).astype(dtype)
    return x, w, b, rng.standard_normal((7, 5, 4, 6)).astype(dtype).transpose(3, 2, 1, 0)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads, block", [(1, 1 << 18), (3, 64)])
def test_batch_norm_compiled_path_equals_numpy_and_torch(rng, monkeypatch, affine, dtype, threads, block):
    """Batch norm's CPU training path by the numba sweeps and by the numpy passes (blocks shared among
    threads): the same output, gradients and running statistics, with a mean far from zero and an output
    gradient that is not C-ordered; both against PyTorch."""
    from hpcai import accel
    from hpcai.ops import normalization
    x, w, b, gy = _compiled_bn_case(rng, monkeypatch, dtype, threads, block)

    def run():
        rm, rv = np.zeros(4, dtype), np.ones(4, dtype)
        xt = t(x, grad=True)
        wt, bt = (t(w, grad=True), t(b, grad=True)) if affine else (None, None)
        y = ops.batch_norm(xt, wt, bt, rm, rv, training=True, momentum=0.3)
        assert y._ctx.fast and y._ctx.compiled == normalization._shifted_sums.available
        y.backward(gy)
        return [y.numpy(), xt.grad, rm, rv] + ([wt.grad, bt.grad] if affine else [])

    got = run()
    with accel.disabled():
        want = run()
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for a, ref in zip(got, want):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, ref, rtol=tol, atol=tol)
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x, requires_grad=True)
    tw, tb = (torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)) if affine else (None, None)
    trm, trv = torch.zeros(4, dtype=tx.dtype), torch.ones(4, dtype=tx.dtype)
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, True, 0.3, 1e-5)
    ty.backward(torch.from_numpy(np.ascontiguousarray(gy)))
    refs = [ty, tx.grad, trm, trv] + ([tw.grad, tb.grad] if affine else [])
    for a, ref in zip(got, refs):
        np.testing.assert_allclose(a, ref.detach().numpy(), rtol=tol * 2, atol=tol * 2)


@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads, block", [(1, 1 << 18), (3, 64)])
def test_batch_norm_relu_fused_equals_the_composition_and_torch(rng, monkeypatch, with_residual, dtype, threads,
                                                                 block):
    """relu(batch_norm(x) + r) by the fused compiled sweeps (``NormalizeRelu``), by its reference passes
    (numba off), and by the three ops one after another: the same output, gradients (of x, weight, bias and r) and
    running statistics, some outputs at exactly 0 and a gradient that is not C-ordered; all against PyTorch."""
    from hpcai import accel
    from hpcai.ops import normalization
    x, w, b, gy = _compiled_bn_case(rng, monkeypatch, dtype, threads, block)
    r = rng.standard_normal(x.shape).astype(dtype)

    def run(fused):
        rm, rv = np.zeros(4, dtype), np.ones(4, dtype)
        xt, wt, bt, rt = t(x, grad=True), t(w, grad=True), t(b, grad=True), t(r, grad=True)
        if fused:
            y = ops.batch_norm(xt, wt, bt, rm, rv, momentum=0.3, residual=rt if with_residual else None,
                               activation="relu")
            assert y._ctx.fused == normalization._normalize_relu_rows.available
        else:
            y = ops.batch_norm(xt, wt, bt, rm, rv, momentum=0.3)
            y = ops.relu(y + rt if with_residual else y)
        y.backward(gy)
        return [y.numpy(), xt.grad, wt.grad, bt.grad, rm, rv] + ([rt.grad] if with_residual else [])

    got = run(True)
    assert (got[0] == 0).any() and (got[0] > 0).any()
    with accel.disabled():
        reference = run(True)
    composed = run(False)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for a, ref, comp in zip(got, reference, composed):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(a, comp, rtol=tol, atol=tol)
    torch = pytest.importorskip("torch")
    tx, tw, tb, tr = (torch.tensor(a, requires_grad=True) for a in (x, w, b, r))
    trm, trv = torch.zeros(4, dtype=tx.dtype), torch.ones(4, dtype=tx.dtype)
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, True, 0.3, 1e-5)
    ty = torch.relu(ty + tr if with_residual else ty)
    ty.backward(torch.from_numpy(np.ascontiguousarray(gy)))
    refs = [ty, tx.grad, tw.grad, tb.grad, trm, trv] + ([tr.grad] if with_residual else [])
    for a, ref in zip(got, refs):
        np.testing.assert_allclose(a, ref.detach().numpy(), rtol=tol * 2, atol=tol * 2)


def test_residual_block_is_the_unfused_composition(rng):
    """The residual block's fused batch norm + ReLU (+ shortcut) gives what conv-BN-ReLU-conv-BN, the shortcut's
    sum and a ReLU give as separate ops, in training and in eval, and the same parameter gradients."""
    from hpcai import nn

    block = nn.ResidualBlock(3, 5, stride=2, rng=0)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)

    def unfused(m, h):
        bn = lambda mod, a: ops.batch_norm(a, mod.weight, mod.bias, mod.running_mean.copy(),  # noqa: E731
                                           mod.running_var.copy(), training=m.training, momentum=mod.momentum)
        a = ops.relu(bn(m.bn1, m.conv1(h)))
        return ops.relu(bn(m.bn2, m.conv2(a)) + m.shortcut(h))

    for training in (True, False):
        block.train(training)
        want = unfused(block, t(x))
        ops.sum(want * want).backward()
        expected = [p.grad.copy() for p in block.parameters()]
        block.zero_grad()
        got = block(t(x))
        ops.sum(got * got).backward()
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
        for p, e in zip(block.parameters(), expected):
            np.testing.assert_allclose(p.grad, e, rtol=1e-4, atol=1e-5)
        block.zero_grad()


@pytest.mark.parametrize("op", ["batch_norm", "layer_norm"])
def test_norm_float32_stays_float32(op, xp, rng):
    x = t(rng.standard_normal((4, 3, 2)).astype(np.float32), grad=True, xp=xp)
    w = t(np.ones(2 if op == "layer_norm" else 3, np.float32), grad=True, xp=xp)
    y = ops.layer_norm(x, 2, w) if op == "layer_norm" else ops.batch_norm(x, w)
    y.sum().backward()
    assert y.dtype == x.grad.dtype == w.grad.dtype == np.float32


# -- dropout ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_statistics(p, xp):
    x = t(np.full((400, 500), 2.0), xp=xp)
    y = ops.dropout(x, p, seed=3).numpy()
    assert abs((y == 0).mean() - p) < 0.005                   # 200k draws: std of the fraction < 0.0012
    assert abs(y.mean() - 2.0) < 0.03                         # inverted dropout keeps the mean
    np.testing.assert_allclose(np.unique(y), [0.0, 2.0 / (1 - p)] if p else [2.0])


def test_dropout_gradient_is_the_scaled_mask(xp, rng):
    x = t(rng.uniform(0.5, 1.5, (30, 40)), grad=True, xp=xp)
    y = ops.dropout(x, 0.3, seed=11)
    y.backward(xp.ones(y.shape))
    grad = np.asarray(x.grad.get() if xp is not np else x.grad)
    kept = y.numpy() != 0
    np.testing.assert_allclose(grad, kept / 0.7)
    np.testing.assert_allclose(y.numpy(), x.numpy() * kept / 0.7)


def test_dropout_eval_identity_and_reproducibility(rng):
    x = t(rng.standard_normal((20, 20)), grad=True)
    assert ops.dropout(x, 0.5, training=False) is x
    assert ops.dropout(x, 0.0) is x
    a, b = ops.dropout(x, 0.5, seed=5).numpy(), ops.dropout(x, 0.5, seed=5).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, ops.dropout(x, 0.5, seed=6).numpy())
    g = np.random.default_rng(0)
    first, second = ops.dropout(x, 0.5, generator=g).numpy(), ops.dropout(x, 0.5, generator=g).numpy()
    assert not np.array_equal(first, second), "a generator must advance between calls"
    np.testing.assert_array_equal(first, ops.dropout(x, 0.5, generator=np.random.default_rng(0)).numpy())


def test_dropout_float32_stays_float32(xp):
    y = ops.dropout(t(np.ones((4, 4), np.float32), xp=xp), 0.5, seed=0)
    assert y.dtype == np.float32


# -- losses ----------------------------------------------------------------------------------------
def test_cross_entropy_label_smoothing_by_hand(rng):
    z, y, eps, k = rng.standard_normal((6, 5)) * 3, rng.integers(0, 5, 6), 0.15, 5
    q = (1 - eps) * np.eye(k)[y] + eps / k
    per = -(q * log_softmax_np(z)).sum(axis=1)
    np.testing.assert_allclose(ops.cross_entropy(t(z), y, label_smoothing=eps).numpy(), per.mean(), rtol=1e-12)
    np.testing.assert_allclose(ops.cross_entropy(t(z), y, label_smoothing=eps, reduction="none").numpy(),
                               per, rtol=1e-12)
    zt = t(z, grad=True)
    ops.cross_entropy(zt, y, label_smoothing=eps, reduction="sum").backward()
    softmax = np.exp(log_softmax_np(z))
    np.testing.assert_allclose(zt.grad, softmax - q, rtol=1e-10, atol=1e-12)


def test_cross_entropy_probability_targets_by_hand(rng):
    z = rng.standard_normal((2, 4, 3))                       # (N, K, d): classes on axis 1
    p = rng.uniform(0.1, 1, (2, 4, 3))
    p /= p.sum(axis=1, keepdims=True)
    q = 0.9 * p + 0.1 / 4
    per = -(q * log_softmax_np(z)).sum(axis=1)
    np.testing.assert_allclose(ops.cross_entropy(t(z), p, label_smoothing=0.1).numpy(), per.mean(), rtol=1e-12)
    # probabilities equal to a one-hot give the same loss as the class indices
    idx = rng.integers(0, 4, (2, 3))
    onehot = np.moveaxis(np.eye(4)[idx], -1, 1)
    np.testing.assert_allclose(ops.cross_entropy(t(z), onehot).numpy(), ops.cross_entropy(t(z), idx).numpy())


def test_cross_entropy_ignore_index_and_stability(rng):
    z, y = rng.standard_normal((5, 3)), np.array([0, 2, -100, 1, -100])
    keep = y != -100
    ref = -log_softmax_np(z[keep])[np.arange(3), y[keep]].mean()
    np.testing.assert_allclose(ops.cross_entropy(t(z), y).numpy(), ref, rtol=1e-12)
    big = np.array([[1000.0, 0.0], [0.0, -1000.0]], np.float32)
    np.testing.assert_allclose(ops.cross_entropy(t(big), np.array([1, 0])).numpy(), 500.0, rtol=1e-6)


def test_cross_entropy_masked_logit_costs_nothing():
    # a -inf logit on another class (a masked-out class) drops out, as in PyTorch, instead of 0 * -inf = NaN
    z, y = np.array([[1.0, -np.inf, 0.5], [0.2, 0.1, -np.inf]]), np.array([0, 1])
    kept = [np.array([[1.0, 0.5]]), np.array([[0.2, 0.1]])]
    ref = -(log_softmax_np(kept[0])[0, 0] + log_softmax_np(kept[1])[0, 1]) / 2
    zt = t(z, grad=True)
    loss = ops.cross_entropy(zt, y)
    loss.backward()
    np.testing.assert_allclose(loss.numpy(), ref, rtol=1e-12)
    soft = [np.exp(log_softmax_np(k))[0] for k in kept]
    np.testing.assert_allclose(zt.grad, [[(soft[0][0] - 1) / 2, 0, soft[0][1] / 2],
                                         [soft[1][0] / 2, (soft[1][1] - 1) / 2, 0]], rtol=1e-12)


def test_cross_entropy_every_target_ignored():
    # as PyTorch: the mean is 0/0 = NaN, the sum 0, and the gradient 0 either way
    z, y = np.random.default_rng(0).standard_normal((3, 4)), np.full(3, -100)
    with pytest.raises(FloatingPointError, match="every target ignored"):
        ops.cross_entropy(t(z), y)
    for reduction, want in (("mean", np.nan), ("sum", 0.0)):
        zt = t(z, grad=True)
        loss = ops.cross_entropy(zt, y, reduction=reduction, check_finite=False)
        loss.backward()
        np.testing.assert_array_equal(loss.numpy(), want)
        np.testing.assert_array_equal(zt.grad, np.zeros((3, 4)))


@pytest.mark.parametrize("loss, target", [
    (ops.cross_entropy, "indices"), (ops.cross_entropy, "probabilities"),
    (ops.mse_loss, "values"), (ops.l1_loss, "values"), (ops.huber_loss, "values")])
def test_losses_float32_in_float32_out(loss, target, xp, rng):
    x = t(rng.standard_normal((4, 3)).astype(np.float32), grad=True, xp=xp)
    y = {"indices": rng.integers(0, 3, 4), "probabilities": np.full((4, 3), 1 / 3, np.float32),
         "values": rng.standard_normal((4, 3)).astype(np.float32)}[target]
    out = loss(x, xp.asarray(y))
    out.backward()
    assert out.dtype == x.grad.dtype == np.float32


def test_regression_losses_by_hand(rng):
    p, q = rng.standard_normal((4, 3)) * 2, rng.standard_normal((4, 3))
    d = p - q
    huber = np.where(np.abs(d) <= 0.7, 0.5 * d * d, 0.7 * (np.abs(d) - 0.35))
    np.testing.assert_allclose(ops.mse_loss(t(p), q).numpy(), (d * d).mean())
    np.testing.assert_allclose(ops.l1_loss(t(p), q, reduction="sum").numpy(), np.abs(d).sum())
    np.testing.assert_allclose(ops.huber_loss(t(p), q, 0.7, reduction="none").numpy(), huber)
    pt, qt = t(p, grad=True), t(q, grad=True)
    ops.huber_loss(pt, qt, 0.7, reduction="sum").backward()
    np.testing.assert_allclose(pt.grad, np.clip(d, -0.7, 0.7))
    np.testing.assert_allclose(qt.grad, -np.clip(d, -0.7, 0.7))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy warns about the NaN/inf before the loss raises
def test_non_finite_loss_raises_unless_allowed():
    z = np.zeros((4, 3))
    z[1, 2], z[3, 0] = np.nan, np.inf
    with pytest.raises(FloatingPointError, match=r"cross_entropy: the loss is not finite; the inputs hold 2 non-"):
        ops.cross_entropy(t(z), np.array([0, 1, 2, 0]))
    p = np.ones(5)
    p[0] = np.inf
    with pytest.raises(FloatingPointError, match=r"mse_loss: .* 1 non-finite value"):
        ops.mse_loss(t(p), np.ones(5))
    assert not np.isfinite(ops.mse_loss(t(p), np.ones(5), check_finite=False).item())
    with pytest.raises(FloatingPointError, match=r"mse_loss: .*hold 0 non-finite.*overflowed float16"):
        ops.mse_loss(t(np.full(3, 300, np.float16)), np.zeros(3, np.float16))   # 300**2 > 65504


def tens(*shape):
    return Tensor(np.zeros(shape))


@pytest.mark.parametrize("call, error, match", [
    (lambda: ops.cross_entropy(tens(4, 10), np.array([0, 3, 12, 1])), ValueError,
     r"cross_entropy: target values must lie in \[0, 10\), got max 12"),
    (lambda: ops.cross_entropy(tens(4, 10), np.array([0, -3, 2, 1])), ValueError,
     r"cross_entropy: target values must lie in \[0, 10\), got min -3"),
    (lambda: ops.cross_entropy(tens(4, 10), np.ones(4, bool)), TypeError,
     r"cross_entropy: target must hold integer class indices or float class probabilities, got dtype bool"),
    (lambda: ops.cross_entropy(tens(4, 10), np.ones(4)), ValueError,
     r"cross_entropy: a float target holds class probabilities and must have the logits' shape \(4, 10\), "
     r"got \(4,\)"),
    (lambda: ops.cross_entropy(tens(8, 10), np.zeros(6, int)), ValueError,
     r"cross_entropy: logits have batch size 8 but target has 6"),
    (lambda: ops.cross_entropy(tens(2, 3, 4), np.zeros((2, 5), int)), ValueError,
     r"cross_entropy: integer class indices must have shape \(2, 4\)"),
    (lambda: ops.cross_entropy(tens(10), np.zeros(1, int)), ValueError,
     r"cross_entropy: logits must be \(N, K\)"),
    (lambda: ops.cross_entropy(tens(4, 3), np.zeros(4, int), reduction="avg"), ValueError,
     r"cross_entropy: reduction must be 'mean', 'sum' or 'none', got 'avg'"),
    (lambda: ops.cross_entropy(tens(4, 3), np.zeros(4, int), weight=np.ones(4)), ValueError,
     r"cross_entropy: weight must have shape \(3,\)"),
    (lambda: ops.cross_entropy(tens(4, 3), [0, 1, 2, 0]), TypeError, r"cross_entropy: target must be a Tensor"),
    (lambda: ops.mse_loss(tens(8, 1), np.zeros(8)), ValueError,
     r"mse_loss: pred has shape \(8, 1\) but target has shape \(8,\); they must match"),
    (lambda: ops.l1_loss(tens(8), np.zeros((8, 1))), ValueError, r"l1_loss: pred has shape \(8,\) but target"),
    (lambda: ops.huber_loss(tens(3), tens(4)), ValueError, r"huber_loss: pred has shape \(3,\) but target"),
    (lambda: ops.mse_loss(tens(3), np.zeros(3, int)), TypeError, r"mse_loss: target must be a floating-point"),
    (lambda: ops.mse_loss(tens(3), tens(3), reduction="avg"), ValueError, r"mse_loss: reduction must be"),
    (lambda: ops.huber_loss(tens(3), tens(3), 0.0), ValueError, r"huber_loss: delta: expected a finite number > 0"),
    (lambda: ops.dropout(tens(3), 1.0), ValueError, r"dropout: p: expected a number in \[0, 1\), got 1.0"),
    (lambda: ops.dropout(tens(3), -0.1), ValueError, r"dropout: p: expected a number in \[0, 1\)"),
    (lambda: ops.dropout(tens(3), 0.5, seed=1, generator=np.random.default_rng()), ValueError,
     r"dropout: pass generator or seed"),
    (lambda: ops.batch_norm(tens(4, 3), training=False), ValueError,
     r"batch_norm: eval mode \(training=False\) normalises with running_mean and running_var"),
    (lambda: ops.batch_norm(tens(4, 3), np.ones(4)), ValueError, r"batch_norm: weight must have shape \(3,\)"),
    (lambda: ops.batch_norm(tens(1, 3)), ValueError, r"batch_norm: training needs more than one value"),
    (lambda: ops.batch_norm(tens(4, 3), running_mean=np.zeros(3)), ValueError,
     r"batch_norm: pass both running_mean and running_var"),
    (lambda: ops.batch_norm(tens(4, 3), activation="gelu"), ValueError,
     r"batch_norm: activation: expected one of None, 'relu', got 'gelu'"),
    (lambda: ops.batch_norm(tens(4, 3), residual=tens(4, 3)), ValueError,
     r"batch_norm: residual is added before the activation; pass activation='relu' with it"),
    (lambda: ops.batch_norm(tens(4, 3), residual=tens(4, 2), activation="relu"), ValueError,
     r"batch_norm: residual must have x's shape \(4, 3\), got \(4, 2\)"),
    (lambda: ops.batch_norm(tens(4, 3), residual=np.zeros((4, 3), int), activation="relu"), TypeError,
     r"batch_norm: residual must be a floating-point tensor, got dtype int"),
    (lambda: ops.batch_norm(tens(4, 3), residual=[[0.0] * 3] * 4, activation="relu"), TypeError,
     r"batch_norm: residual must be a Tensor or an array of x's shape \(4, 3\), got list"),
    (lambda: ops.layer_norm(tens(4, 3), (4,)), ValueError,
     r"layer_norm: normalized_shape \(4,\) must equal the trailing sizes of x"),
])
def test_error_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
