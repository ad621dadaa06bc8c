"""Normalisation ops: batch norm (statistics over every axis but the channels) and layer norm (trailing axes).

Both compute y = (x - mean) / sqrt(var + eps) * weight + bias with the biased variance
[Ioffe & Szegedy 2015, Alg. 1; Ba, Kiros & Hinton 2016, eq. 4]; they differ only in the axes the
statistics run over and the axes the affine parameters vary along, so one Function serves both.

Batch norm in training on the CPU ((N, C, ...) input) takes a faster path (``Normalize._forward_fast``):
per-channel sums and centred sums of squares as BLAS dot products over each (sample, channel) row, the
output and the input gradient written block by block in cache on every thread, and nothing but the batch
statistics kept for backward (x̂ is rebuilt from x there). Forward reads x three times and writes y once;
backward reads x and gy twice and writes gx once (the general path makes about ten passes each way, with
temporaries): 1.6x less time for batch norm in the CBED application's network (one thread). Where numba is
installed (``hpcai.accel``) each of those sweeps is one compiled loop over every (sample, channel) row, the
sums accumulated in float64, where numpy needs a temporary for x - mean and a pass per operation: batch
norm forward + backward on the CBED network's 32x16x64x64 maps took 3x less time (one thread). There the
two statistics come from one sweep, sums of x - s and (x - s)² around each channel's first value s (the
shifted-data algorithm: no cancellation unless s is far out in the tail): forward on those maps 0.78 ->
0.58 ms. The numpy passes stay the reference the tests compare with.

``batch_norm(..., activation="relu", residual=r)`` is the end of a residual block, relu(bn(x) + r), in one op
(``NormalizeRelu``): on that path the ReLU and the sum ride in the same sweeps, so they cost no pass, thread
hand-over or kept array of their own. The CBED application's training step, batch 32: 37.7 -> 35.5 ms on 2
threads, 58.1 -> 55.9 ms on one (medians of 12 alternating blocks in one process).
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import accel, backend, checks
from ..autograd.function import Function
from ..autograd.tensor import Tensor
from .common import expect_float
from .registry import Const, Sample, away_from_zero, register
from .threads import batch_blocks, over_batch


# Compiled sweeps of the CPU batch-norm path (numba): x3, g3 are (N, C, L) with C-ordered rows; sums go to
# float64 (C,) or (C, 2) arrays, added to what they hold. Reassociation lets the sums vectorise.
_FAST_SUMS = {"fastmath": {"reassoc", "contract", "nsz"}}


@accel.jit(**_FAST_SUMS)
def _shifted_sums(x3, shift, out):
    """out[c] += (the sum of x3 - shift[c], the sum of (x3 - shift[c])²) over channel c, in float64."""
    n, c, size = x3.shape
    for p in range(n):
        for q in range(c):
            row, m, s0, s1 = x3[p, q], shift[q], 0.0, 0.0
            for k in range(size):
                d = row[k] - m
                s0 += d
                s1 += d * d
            out[q, 0] += s0
            out[q, 1] += s1


@accel.jit(**_FAST_SUMS)
def _normalize_rows(x3, mean, scale, shift, y):
    """y = (x3 - mean[c]) · scale[c] + shift[c]."""
    n, c, size = x3.shape
    for p in range(n):
        for q in range(c):
            row, out, m, a, b = x3[p, q], y[p, q], mean[q], scale[q], shift[q]
            for k in range(size):
                out[k] = (row[k] - m) * a + b


@accel.jit(**_FAST_SUMS)
def _grad_sums(g3, x3, mean, out):
    """out[c] += (sum of g3, sum of g3 · (x3 - mean[c])) over channel c."""
    n, c, size = x3.shape
    for p in range(n):
        for q in range(c):
            row, g, m, s0, s1 = x3[p, q], g3[p, q], mean[q], 0.0, 0.0
            for k in range(size):
                s0 += g[k]
                s1 += g[k] * (row[k] - m)
            out[q, 0] += s0
            out[q, 1] += s1


@accel.jit(**_FAST_SUMS)
def _input_grad_rows(g3, x3, mean, k1, k2, k3, gx):
    """gx = k1[c] · g3 + k2[c] · (x3 - mean[c]) + k3[c]."""
    n, c, size = x3.shape
    for p in range(n):
        for q in range(c):
            row, g, out, m, a, b, e = x3[p, q], g3[p, q], gx[p, q], mean[q], k1[q], k2[q], k3[q]
            for k in range(size):
                out[k] = a * g[k] + b * (row[k] - m) + e


# The sweeps that fuse a ReLU in (``NormalizeRelu``): y = relu(x̂·w + b [+ r]); backward masks gy where y == 0,
# which is where the ReLU's own gradient vanishes (NaN kept, as ``relu`` keeps it).
@accel.jit(**_FAST_SUMS)
def _normalize_relu_rows(x3, mean, scale, shift, r3, y):
    """y = relu((x3 - mean[c]) · scale[c] + shift[c] + r3); an r3 with no rows adds nothing."""
    n, c, size = x3.shape
    add = r3.shape[0] > 0
    for p in range(n):
        for q in range(c):
            row, out, m, a, b = x3[p, q], y[p, q], mean[q], scale[q], shift[q]
            if add:
                res = r3[p, q]
                for k in range(size):
                    v = (row[k] - m) * a + b + res[k]
                    out[k] = 0 if v <= 0 else v
            else:
                for k in range(size):
                    v = (row[k] - m) * a + b
                    out[k] = 0 if v <= 0 else v


@accel.jit(**_FAST_SUMS)
def _relu_grad_sums(g3, y3, x3, mean, gm, out):
    """gm = g3 · (y3 != 0), and out[c] += (sum of gm, sum of gm · (x3 - mean[c]))."""
    n, c, size = x3.shape
    for p in range(n):
        for q in range(c):
            row, g, yr, dest, m, s0, s1 = x3[p, q], g3[p, q], y3[p, q], gm[p, q], mean[q], 0.0, 0.0
            for k in range(size):
                v = g[k] * (1 if yr[k] != 0 else 0)
                dest[k] = v
                s0 += v
                s1 += v * (row[k] - m)
            out[q, 0] += s0
            out[q, 1] += s1


class Normalize(Function):
    """Normalise ``x`` over ``axes``, then scale and shift by weight and bias (either may be None).

    ``pshape`` is the shape weight and bias broadcast as; their gradients sum over ``paxes``.
    ``stats`` = (mean, var) given as constants replace the batch statistics (batch norm in eval mode).
    ``running`` = (mean_buffer, var_buffer, momentum) are updated in place from the batch statistics.
    """

    def _fast_ok(self, x):
        """Whether the CPU's batch-norm training path takes ``x``: batch statistics over every axis but 1."""
        return (self.xp is np and self.stats is None and x.ndim >= 3 and x.dtype in (np.float32, np.float64)
                and self.axes == (0,) + tuple(range(2, x.ndim)))

    def forward(self, x, weight, bias):
        xp = self.xp
        self.fast = self._fast_ok(x)
        if self.fast:
            return self._forward_fast(x, weight, bias)
        if self.stats is None:
            mean = x.mean(axis=self.axes, keepdims=True)
            var = ((x - mean) ** 2).mean(axis=self.axes, keepdims=True)
            if self.running is not None:
                _update_running(self.running, mean, var, x.size // mean.size)
        else:
            mean, var = (s.reshape(self.pshape) for s in self.stats)
        self.inv_std = 1 / xp.sqrt(var + self.eps)
        self.xhat = (x - mean) * self.inv_std
        self.weight = weight
        self.bias_shape = None if bias is None else bias.shape
        y = self.xhat if weight is None else self.xhat * weight.reshape(self.pshape)
        return y if bias is None else y + bias.reshape(self.pshape)

    def backward(self, gy):
        if self.fast:
            return self._backward_fast(gy)
        xhat, w, (need_x, need_w, need_b) = self.xhat, self.weight, self.needs_input_grad[:3]
        gx = gw = gb = None
        if need_x:
            g = gy if w is None else gy * w.reshape(self.pshape)   # gradient with respect to xhat
            if self.stats is not None:                             # constant statistics: a pure scaling
                gx = g * self.inv_std
            else:                                                  # mean and var depend on x too
                ax = self.axes
                gx = self.inv_std * (g - g.mean(axis=ax, keepdims=True)
                                     - xhat * (g * xhat).mean(axis=ax, keepdims=True))
        if need_w:
            gw = (gy * xhat).sum(axis=self.paxes).reshape(w.shape)
        if need_b:
            gb = gy.sum(axis=self.paxes).reshape(self.bias_shape)
        return gx, gw, gb

    def _forward_fast(self, x, weight, bias):
        """Batch statistics of (N, C, ...) x on the CPU: two sweeps of per-channel dot products, then
        y = (x - mean) · (w / std) + b block by block; keeps x and the statistics (not x̂) for backward."""
        x3, scale = self._statistics(x, weight, bias)
        n, c = x3.shape[:2]
        y = np.empty(x3.shape, x.dtype)
        if self.compiled:
            args = self._row_args(scale, bias)
            over_batch(np, lambda s: _normalize_rows(x3[s], *args, y[s]), n, x.size)
            return y.reshape(x.shape)
        mean = self.mean

        def part(s):
            np.subtract(x3[s], mean, out=y[s])
            y[s] *= scale
            if bias is not None:
                y[s] += bias.reshape(c, 1)

        over_batch(np, part, n, x.size)
        return y.reshape(x.shape)

    def _row_args(self, scale, bias):
        """(mean, scale, shift) per channel, as the compiled sweeps take them."""
        c, dtype = self.mean.shape[0], self.x3.dtype
        shift = np.zeros(c, dtype) if bias is None else bias.astype(dtype, copy=False).reshape(c)
        return self.mean.reshape(c), scale.astype(dtype, copy=False).reshape(c), shift

    def _statistics(self, x, weight, bias):
        """The batch statistics of (N, C, ...) x (one compiled sweep, or two of BLAS dot products), kept with x
        for backward, the running buffers updated; (x as (N, C, L), the scale w / std as (C, 1))."""
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)
        count = x3.shape[0] * x3.shape[2]
        self.compiled = _shifted_sums.available and x3.flags.c_contiguous
        if self.compiled:  # one sweep: sums of x - shift and of its squares around each channel's first value
            shift = x3[0, :, 0].astype(np.float64)

            def part(s):
                out = np.zeros((c, 2))
                _shifted_sums(x3[s], shift, out)
                return out

            sums = batch_blocks(part, n, x.size) / count
            mean = (shift + sums[:, 0]).astype(x.dtype).reshape(c, 1)
            var = np.maximum(sums[:, 1] - sums[:, 0] ** 2, 0).astype(x.dtype).reshape(c, 1)
        else:
            ones = np.ones((x3.shape[2], 1), x.dtype)
            mean = batch_blocks(lambda s: np.matmul(x3[s], ones).sum(axis=0), n, x.size) / count   # (C, 1)

            def centred_squares(s):
                d = x3[s] - mean
                return np.matmul(d[:, :, None, :], d[:, :, :, None]).sum(axis=0).reshape(c, 1)

            var = batch_blocks(centred_squares, n, x.size) / count
        if self.running is not None:
            _update_running(self.running, mean, var, count)
        self.x3, self.mean, self.inv_std = x3, mean, 1 / np.sqrt(var + self.eps)
        self.weight, self.bias_shape = weight, None if bias is None else bias.shape
        return x3, self.inv_std if weight is None else self.inv_std * weight.reshape(c, 1)

    def _backward_fast(self, gy):
        """gx = k1·gy + k2·(x - mean) + k3 per channel, from one sweep of sums of gy and of gy·(x - mean)
        (dL/db and, times 1/std, dL/dw), then one sweep writing gx."""
        x3, mean, need_x = self.x3, self.mean, self.needs_input_grad[0]
        n, c, size = x3.shape
        g3 = gy.reshape(x3.shape)
        compiled = self.compiled and g3.dtype == x3.dtype and _grad_sums.available
        if compiled:
            g3 = np.ascontiguousarray(g3)

            def sums(s):
                out = np.zeros((c, 2))
                _grad_sums(g3[s], x3[s], mean.reshape(c), out)
                return out

            total = batch_blocks(sums, n, g3.size).astype(x3.dtype)
        else:
            ones = np.ones((size, 1), g3.dtype)

            def sums(s):
                d = x3[s] - mean
                dots = np.matmul(g3[s][:, :, None, :], d[:, :, :, None]).sum(axis=0).reshape(c, 1)
                return np.concatenate([np.matmul(g3[s], ones).sum(axis=0), dots], axis=1)

            total = batch_blocks(sums, n, g3.size)
        gw, gb, (k1, k2, k3) = self._coefficients(total)
        if not need_x:
            return None, gw, gb
        gx = np.empty(x3.shape, g3.dtype)
        if compiled:
            args = tuple(k.astype(x3.dtype, copy=False).reshape(c) for k in (mean, k1, k2, k3))
            over_batch(np, lambda s: _input_grad_rows(g3[s], x3[s], *args, gx[s]), n, g3.size)
            return gx.reshape(gy.shape), gw, gb

        def part(s):
            d = x3[s] - mean
            d *= k2
            np.multiply(g3[s], k1, out=gx[s])
            gx[s] += d
            gx[s] += k3

        over_batch(np, part, n, g3.size)
        return gx.reshape(gy.shape), gw, gb

    def _coefficients(self, total):
        """From the per-channel sums (C, 2) of g and of g·(x - mean): dL/dw and dL/db (None where not needed),
        and (k1, k2, k3), each (C, 1), of the input gradient gx = k1·g + k2·(x - mean) + k3."""
        inv_std, w, (_, need_w, need_b) = self.inv_std, self.weight, self.needs_input_grad[:3]
        c, count = self.x3.shape[1], self.x3.shape[0] * self.x3.shape[2]
        gsum, gdot = total[:, :1], total[:, 1:] * inv_std            # sum g, sum g · x̂ (both (C, 1))
        gw = gdot.reshape(w.shape) if need_w else None
        gb = gsum.reshape(self.bias_shape) if need_b else None
        k1 = inv_std if w is None else inv_std * w.reshape(c, 1)
        return gw, gb, (k1, -k1 * inv_std * gdot / count, -k1 * gsum / count)


class NormalizeRelu(Normalize):
    """relu(batch norm of x + residual), inputs (x, weight, bias, residual or None): ``batch_norm(...,
    activation="relu")``, the end of a residual block. In training on the CPU, where numba is installed
    (``hpcai.accel``), the ReLU and the residual sum ride in batch norm's own compiled sweeps: no pass, thread
    hand-over or kept array of their own, forward or backward (the mask is rebuilt from y, as ``relu`` does).
    Elsewhere batch norm, the sum and the ReLU run one after another, the reference the tests compare with."""

    def forward(self, x, weight, bias, residual=None):
        xp = self.xp
        self.fused = (self._fast_ok(x) and x.flags.c_contiguous and _normalize_relu_rows.available
                      and (residual is None or residual.dtype == x.dtype))
        if not self.fused:
            y = Normalize.forward(self, x, weight, bias)
            y = y if residual is None else y + residual
            self.y = xp.where(y <= 0, 0, y).astype(y.dtype, copy=False)     # NaN kept, as ``relu`` keeps it
            return self.y
        x3, scale = self._statistics(x, weight, bias)
        args = self._row_args(scale, bias)
        r3 = np.empty((0, 0, 0), x.dtype) if residual is None else np.ascontiguousarray(residual).reshape(x3.shape)
        y = np.empty(x3.shape, x.dtype)
        over_batch(np, lambda s: _normalize_relu_rows(x3[s], *args, r3 if residual is None else r3[s], y[s]),
                   x3.shape[0], x.size)
        self.y = y
        return y.reshape(x.shape)

    def backward(self, gy):
        need_r = self.needs_input_grad[3]
        if not self.fused:
            gm = gy * (self.y != 0)
            gx, gw, gb = Normalize.backward(self, gm)
            return gx, gw, gb, gm if need_r else None
        # one sweep masks gy (kept: it is dL/dr, and batch norm's dL/dx sweep reads it instead of gy and y, the
        # same bytes) and sums it; then batch norm's own dL/dx sweep
        x3, y3, (n, c) = self.x3, self.y, self.x3.shape[:2]
        g3, mean = np.ascontiguousarray(gy.reshape(x3.shape), dtype=x3.dtype), self.mean.reshape(c)
        gm = np.empty(x3.shape, x3.dtype)

        def sums(s):
            out = np.zeros((c, 2))
            _relu_grad_sums(g3[s], y3[s], x3[s], mean, gm[s], out)
            return out

        gw, gb, ks = self._coefficients(batch_blocks(sums, n, g3.size).astype(x3.dtype))
        gx = None
        if self.needs_input_grad[0]:
            gx = np.empty(x3.shape, x3.dtype)
            args = tuple(k.astype(x3.dtype, copy=False).reshape(c) for k in (self.mean,) + ks)
            over_batch(np, lambda s: _input_grad_rows(gm[s], x3[s], *args, gx[s]), n, g3.size)
            gx = gx.reshape(gy.shape)
        return gx, gw, gb, (gm.reshape(gy.shape) if need_r else None)


def _update_running(running, mean, var, n):
    """PyTorch's rule: buffer <- (1 - momentum) * buffer + momentum * batch statistic (unbiased variance)."""
    rmean, rvar, momentum = running
    rmean *= 1 - momentum
    rmean += momentum * mean.reshape(-1)
    rvar *= 1 - momentum
    rvar += momentum * var.reshape(-1) * (n / (n - 1))


def _array(a):
    return a.data if isinstance(a, Tensor) else a


def _param(p, shape, name, op, x):
    """``p`` (Tensor, array or None), checked to have ``shape`` and to live on x's device."""
    if p is None:
        return None
    data = _array(p)
    if not backend.is_array(data):
        raise TypeError(f"{op}: {name} must be a Tensor or an array of shape {shape}, got {type(p).__name__}")
    if tuple(data.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(data.shape)}")
    if backend.device_of(data) != backend.device_of(_array(x)):
        raise backend.DeviceError(f"{op}: {name} lives on {backend.device_of(data)} but x on "
                                  f"{backend.device_of(_array(x))}; move them to one device")
    return p


# -- samples and references ---------------------------------------------------------------------------
def _bn_samples(rng):
    c = 3
    stats = (Const(rng.standard_normal(c)), Const(rng.uniform(0.5, 2.0, c)))
    return [Sample((rng.standard_normal((6, c)), rng.uniform(0.5, 1.5, c), rng.standard_normal(c))),
            Sample((rng.standard_normal((2, c, 3, 2)) * 2 + 1, rng.uniform(0.5, 1.5, c), rng.standard_normal(c))),
            Sample((rng.standard_normal((4, c, 2)), None, None), {"eps": 1e-3}),
            Sample((rng.standard_normal((2, c, 2, 2)), rng.uniform(0.5, 1.5, c), rng.standard_normal(c)) + stats,
                   {"training": False}),
            # the end of a residual block, relu(bn(x) + r), in training and in eval: |bn(x)| < 4.6 (18 values per
            # channel: |x̂| <= sqrt(17)), so a residual of 6-8 either way keeps the ReLU's kink away from the
            # finite differences and sends some outputs to each side of it
            Sample((rng.standard_normal((3, c, 2, 3)), rng.uniform(0.5, 1.0, c), rng.uniform(-0.5, 0.5, c), None,
                    None, True, 0.1, 1e-5, away_from_zero(rng, (3, c, 2, 3), 6.0, 8.0)), {"activation": "relu"}),
            Sample((rng.standard_normal((4, c, 5)), rng.uniform(0.5, 1.5, c), rng.standard_normal(c)),
                   {"activation": "relu"}, gradcheck=False),
            Sample((rng.standard_normal((2, c, 2, 2)), rng.uniform(0.5, 1.5, c), rng.standard_normal(c)) + stats +
                   (False, 0.1, 1e-5, away_from_zero(rng, (2, c, 2, 2), 6.0, 8.0)), {"activation": "relu"})]


def _bn_torch(x, weight, bias, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5,
              residual=None, activation=None):
    import torch.nn.functional as F
    y = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    y = y if residual is None else y + residual
    return F.relu(y) if activation == "relu" else y


def _ln_samples(rng):
    return [Sample((rng.standard_normal((4, 5)), (5,), rng.uniform(0.5, 1.5, 5), rng.standard_normal(5))),
            Sample((rng.standard_normal((2, 3, 4)) * 3, (3, 4), rng.uniform(0.5, 1.5, (3, 4)),
                    rng.standard_normal((3, 4)))),
            Sample((rng.standard_normal((3, 4)), (4,)), {"eps": 1e-3})]


# -- public functions --------------------------------------------------------------------------------
@register("batch_norm", _bn_samples, torch=_bn_torch)
def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, training=True,
               momentum=0.1, eps=1e-5, residual=None, activation=None):
    """Batch normalisation of (N, C) or (N, C, *spatial) over every axis but the channel axis 1.

    Training uses the batch statistics and, when running buffers (arrays or Tensors of shape (C,))
    are given, updates them in place outside the graph as PyTorch does (the variance buffer gets the
    unbiased batch variance). Eval (``training=False``) normalises with the running statistics.
    ``activation="relu"`` returns relu(y + ``residual``) (residual: x's shape, or None), the end of a residual
    block; on the CPU both ride in batch norm's own passes (:class:`NormalizeRelu`).
    """
    op = "batch_norm"
    expect_float(x, "x", op)
    if x.ndim < 2:
        raise ValueError(f"{op}: x must be (N, C) or (N, C, H, W), got shape {tuple(x.shape)}")
    checks.choice(f"{op}: activation", activation, (None, "relu"))
    if residual is not None:
        if activation is None:
            raise ValueError(f"{op}: residual is added before the activation; pass activation='relu' with it")
        if not (isinstance(residual, Tensor) or backend.is_array(residual)):
            raise TypeError(f"{op}: residual must be a Tensor or an array of x's shape {tuple(x.shape)}, got "
                            f"{type(residual).__name__}")
        expect_float(residual, "residual", op)
        if tuple(residual.shape) != tuple(x.shape):
            raise ValueError(f"{op}: residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    c = x.shape[1]
    pshape = (1, c) + (1,) * (x.ndim - 2)
    axes = (0,) + tuple(range(2, x.ndim))
    weight, bias = (_param(p, (c,), name, op, x) for p, name in ((weight, "weight"), (bias, "bias")))
    rmean, rvar = (_array(_param(p, (c,), name, op, x)) for p, name in ((running_mean, "running_mean"),
                                                                          (running_var, "running_var")))
    if (rmean is None) != (rvar is None):
        raise ValueError(f"{op}: pass both running_mean and running_var, or neither")
    checks.number(f"{op}: momentum", momentum, 0.0, 1.0)
    stats = running = None
    if not training:
        if rmean is None:
            raise ValueError(f"{op}: eval mode (training=False) normalises with running_mean and running_var; "
                             "pass them")
        stats = (rmean.astype(x.dtype, copy=False), rvar.astype(x.dtype, copy=False))
    else:
        if x.size // c <= 1:
            raise ValueError(f"{op}: training needs more than one value per channel, got x of shape "
                             f"{tuple(x.shape)}")
        running = None if rmean is None else (rmean, rvar, float(momentum))
    params = dict(axes=axes, paxes=axes, pshape=pshape, stats=stats, running=running, eps=float(eps))
    if activation == "relu":
        return NormalizeRelu.apply(x, weight, bias, residual, **params)
    return Normalize.apply(x, weight, bias, **params)


@register("layer_norm", _ln_samples, torch=lambda x, shape, *a, **k: __import__("torch").nn.functional.layer_norm(
    x, shape, *a, **k))
def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalisation over the trailing axes ``normalized_shape`` (an int or a tuple of sizes).

    weight and bias (or None) have shape ``normalized_shape``; the statistics are per leading index.
    """
    op = "layer_norm"
    expect_float(x, "x", op)
    shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or k > x.ndim or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"{op}: normalized_shape {shape} must equal the trailing sizes of x, "
                         f"got x of shape {tuple(x.shape)}")
    weight, bias = (_param(p, shape, name, op, x) for p, name in ((weight, "weight"), (bias, "bias")))
    lead = x.ndim - k
    return Normalize.apply(x, weight, bias, axes=tuple(range(lead, x.ndim)), paxes=tuple(range(lead)),
                           pshape=(1,) * lead + shape, stats=None, running=None, eps=float(eps))
