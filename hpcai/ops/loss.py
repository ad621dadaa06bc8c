"""Loss functions: cross entropy (class indices or probabilities, label smoothing) and regression losses.

Every loss takes ``reduction`` ("mean", "sum" or "none") as PyTorch does. Inputs are checked strictly:
regression losses never broadcast pred against target (an (N, 1) prediction against an (N,) target would
silently give an (N, N) loss), and a non-finite loss raises FloatingPointError unless ``check_finite=False``.
"""
from __future__ import annotations


import numpy as np

from .. import backend, checks
from ..autograd.function import Function
from ..autograd.tensor import Tensor
from .common import expect_float
from .registry import Const, Sample, away_from_zero, register

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(elem, reduction, total):
    """The per-element losses reduced; ``total`` is the mean's denominator."""
    if reduction == "none":
        return elem
    s = elem.sum()
    return s if reduction == "sum" else s / total


def _spread(gy, shape, reduction, total, xp):
    """The gradient each per-element loss receives from the reduced loss's gradient ``gy``."""
    if reduction == "none":
        return gy
    return xp.broadcast_to(gy if reduction == "sum" else gy / total, shape)


class CrossEntropy(Function):
    """loss = -sum_k coef_k * log_softmax(z)_k along axis 1, where coef is the (smoothed, weighted) target.

    For class indices the loss is formed as PyTorch forms it, from the target's log-probability (and, with
    smoothing, the sum over all classes): a -inf logit on another class costs nothing (not 0 * -inf = NaN),
    an ignored entry is exactly 0, and so is its gradient.
    """

    keep = None   # class indices: which entries count, (N, 1, d1, ...)

    def forward(self, z, target):
        xp, k, eps = self.xp, z.shape[1], self.label_smoothing
        shifted = z - z.max(axis=1, keepdims=True)        # log_softmax, stably
        self.logp = logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        self.w = 1 if self.weight is None else self.weight.reshape((1, k) + (1,) * (z.ndim - 2))
        if target.dtype.kind == "f":                      # class probabilities, the logits' shape
            self.coef = self.w * ((1 - eps) * target.astype(z.dtype, copy=False) + eps / k)
            self.total = target.size // k
            return _reduce(-(self.coef * logp).sum(axis=1), self.reduction, self.total)
        self.keep = keep = xp.expand_dims(target != self.ignore_index, 1)
        self.t = t = xp.where(keep, xp.expand_dims(target, 1), 0)
        self.wt = wt = 1 if self.weight is None else self.weight[t]   # each target's class weight
        elem = -(1 - eps) * wt * xp.take_along_axis(logp, t, axis=1)
        if eps:
            elem = elem - eps / k * (logp if self.weight is None else self.w * logp).sum(axis=1, keepdims=True)
        # PyTorch's mean divides by the kept targets' weight; when that is 0 (every target ignored) the
        # mean is 0/0 = NaN, written so without a division warning
        total = keep.sum(dtype=z.dtype) if self.weight is None else (keep * wt).sum()
        self.total = xp.where(total == 0, xp.nan, total)
        return _reduce(xp.where(keep, elem, 0)[:, 0], self.reduction, self.total)

    def backward(self, gy):
        xp, logp, eps = self.xp, self.logp, self.label_smoothing
        g = xp.expand_dims(_spread(gy, logp.shape[:1] + logp.shape[2:], self.reduction, self.total, xp), 1)
        need_z, need_t = self.needs_input_grad
        if self.keep is None:                             # gz = g * (softmax * sum_k coef_k - coef)
            gz = g * (xp.exp(logp) * self.coef.sum(axis=1, keepdims=True) - self.coef) if need_z else None
            return gz, (-g * (1 - eps) * self.w * logp if need_t else None)
        # the same for class indices, coef = (1 - eps) * w_t * onehot(t) + eps / K * w, term by term
        g = xp.where(self.keep, g, 0)                     # ignored entries get exactly 0, as in PyTorch
        k = logp.shape[1]
        g_t = g * ((1 - eps) * self.wt)
        coef_sum = g_t + g * (eps if self.weight is None else eps / k * self.weight.sum()) if eps else g_t
        onehot = xp.arange(k).reshape((1, k) + (1,) * (logp.ndim - 2)) == self.t
        gz = xp.exp(logp)
        gz *= coef_sum
        gz -= onehot * g_t
        if eps:
            gz -= g * (eps / k) if self.weight is None else g * (eps / k) * self.w
        return gz, None


class Pointwise(Function):
    """Base of the regression losses: ``loss(d)`` of d = pred - target elementwise, then the reduction.

    Subclasses give the elementwise loss and its derivative side by side.
    """

    def forward(self, pred, target):
        self.d = pred - target.astype(pred.dtype, copy=False)
        return _reduce(self.loss(self.d), self.reduction, self.d.size)

    def backward(self, gy):
        g = _spread(gy, self.d.shape, self.reduction, self.d.size, self.xp) * self.grad(self.d)
        return g, (-g if self.needs_input_grad[1] else None)


class MSELoss(Pointwise):
    def loss(self, d):
        return d * d

    def grad(self, d):
        return 2 * d


class L1Loss(Pointwise):
    def loss(self, d):
        return self.xp.abs(d)

    def grad(self, d):
        return self.xp.sign(d)


class HuberLoss(Pointwise):
    """Quadratic within ``delta`` of the target, linear beyond [Huber 1964]; the slope is d clipped to delta."""

    def loss(self, d):
        a, delta = self.xp.abs(d), self.delta
        return self.xp.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))

    def grad(self, d):
        return self.xp.clip(d, -self.delta, self.delta)


# -- argument checks ---------------------------------------------------------------------------------
def _data(a, name, op):
    data = a.data if isinstance(a, Tensor) else a
    if not backend.is_array(data):
        raise TypeError(f"{op}: {name} must be a Tensor or an array, got {type(a).__name__}")
    return data


def _check_reduction(op, reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _finite(op, out, inputs, check):
    """``out``, or FloatingPointError if the loss is not finite, counting the non-finite input values."""
    xp = out.xp
    if not check or bool(xp.isfinite(out.data).all()):
        return out
    bad = sum(int((~xp.isfinite(a)).sum()) for a in inputs if a.dtype.kind == "f")
    why = ("" if bad else f" (the inputs are finite: the loss overflowed {out.dtype}, or a mean ran over "
                          "zero total weight, e.g. every target ignored)")
    raise FloatingPointError(f"{op}: the loss is not finite; the inputs hold {bad} non-finite value(s) "
                             f"(NaN or inf){why}. Pass check_finite=False to allow it")


def _check_target_indices(op, t, k, ignore_index):
    if t.size == 0:
        return
    xp = backend.get_array_module(t)
    kept = xp.where(t == ignore_index, 0, t)
    lo, hi = int(kept.min()), int(kept.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"{op}: target values must lie in [0, {k}), got " + (f"max {hi}" if hi >= k else f"min {lo}"))


def _regression(cls, op, pred, target, reduction, check_finite, **params):
    _check_reduction(op, reduction)
    p, t = _data(pred, "pred", op), _data(target, "target", op)
    expect_float(p, "pred", op)
    expect_float(t, "target", op)
    if p.shape != t.shape:
        raise ValueError(f"{op}: pred has shape {tuple(p.shape)} but target has shape {tuple(t.shape)}; "
                         "they must match")
    return _finite(op, cls.apply(pred, target, reduction=reduction, **params), (p, t), check_finite)


# -- samples and references ---------------------------------------------------------------------------
def _ce_samples(rng):
    def probs(shape):
        e = rng.uniform(0.1, 1.0, shape)
        return e / e.sum(axis=1, keepdims=True)
    spatial_t = rng.integers(0, 4, (2, 3, 2))
    spatial_t[0, 1, 0] = -100                                    # ignored
    return [Sample((rng.standard_normal((5, 4)) * 2, Const(rng.integers(0, 4, 5)))),
            Sample((rng.standard_normal((5, 4)), Const(rng.integers(0, 4, 5))),
                   {"label_smoothing": 0.1, "reduction": "sum"}),
            Sample((rng.standard_normal((2, 4, 3, 2)), Const(spatial_t)), {"reduction": "none"}),
            Sample((rng.standard_normal((2, 4, 3, 2)), Const(spatial_t)),
                   {"weight": Const(rng.uniform(0.5, 2.0, 4)), "label_smoothing": 0.2}),
            Sample((rng.standard_normal((3, 4)), probs((3, 4))), {"label_smoothing": 0.2}),
            Sample((rng.standard_normal((2, 4, 3)), probs((2, 4, 3))),
                   {"weight": Const(rng.uniform(0.5, 2.0, 4)), "reduction": "sum"}),
            Sample((rng.standard_normal((3, 5)) + 500.0, Const(rng.integers(0, 5, 3)))),  # naive exp overflows
            *_ce_edge_samples(rng)]


def _ce_edge_samples(rng):
    """-inf logits (masked-out classes), every target ignored, zero total weight: each as PyTorch gives it."""
    z, t = rng.standard_normal((4, 3)), np.array([0, 2, 1, 0])
    z[[0, 1, 3], [1, 0, 2]] = -np.inf                            # never on the target: a finite loss
    z_hit = z.copy()
    z_hit[2, 1] = -np.inf                                        # on row 2's target: an infinite loss
    p = np.array([[0.7, 0.0, 0.3], [0.0, 0.5, 0.5], [0.2, 0.3, 0.5], [0.6, 0.4, 0.0]])
    nan_ok = {"check_finite": False}
    none = Const(np.full(4, -100))
    return [Sample((z, Const(t))),
            Sample((z, Const(t)), {"weight": Const(np.array([0.5, 2.0, 1.0])), "reduction": "none"}),
            Sample((z, Const(t)), {"label_smoothing": 0.1, **nan_ok}, gradcheck=False),        # inf: smoothing
            Sample((z_hit, Const(t)), {"reduction": "none", **nan_ok}, gradcheck=False),
            Sample((z, p), nan_ok, gradcheck=False),          # probabilities: 0 * -inf is NaN in PyTorch too
            Sample((rng.standard_normal((4, 3)), none), nan_ok, gradcheck=False),              # NaN, gradient 0
            Sample((rng.standard_normal((4, 3)), none), {"label_smoothing": 0.2, **nan_ok}, gradcheck=False),
            Sample((rng.standard_normal((4, 3)), Const(np.array([0, -100, 0, -100]))),      # zero total weight
                   {"weight": Const(np.array([0.0, 1.0, 2.0])), **nan_ok}, gradcheck=False)]


def _regression_samples(rng):
    t = rng.standard_normal((3, 4))
    return [Sample((t + away_from_zero(rng, (3, 4), 0.1, 2.0), t)),
            Sample((rng.standard_normal((2, 3)), Const(rng.standard_normal((2, 3)))), {"reduction": "sum"}),
            Sample((rng.standard_normal((4,)), rng.standard_normal((4,))), {"reduction": "none"})]


def _huber_samples(rng):
    t = rng.standard_normal((3, 4))
    return [Sample((t + away_from_zero(rng, (3, 4), 0.1, 2.0), t)),
            Sample((t + away_from_zero(rng, (3, 4), 0.1, 2.0), Const(t)), {"delta": 0.5, "reduction": "none"})]


def _torch_f(name):
    """PyTorch's ``F.<name>``; ``check_finite`` (ours only) is dropped."""
    def ref(*a, check_finite=True, **k):
        return getattr(__import__("torch").nn.functional, name)(*a, **k)
    return ref


# -- public functions --------------------------------------------------------------------------------
@register("cross_entropy", _ce_samples, torch=_torch_f("cross_entropy"))
def cross_entropy(logits, target, *, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean",
                  check_finite=True):
    """Cross entropy of softmax(logits) along axis 1 against ``target``, as PyTorch defines it.

    logits: (N, K) or (N, K, d1, ...). target: integer class indices of shape (N,) / (N, d1, ...)
    (entries equal to ``ignore_index`` are skipped), or float class probabilities of the logits' shape.
    ``label_smoothing`` eps mixes the target with the uniform distribution: (1 - eps) * target + eps / K.
    ``weight``: a constant per-class weight of shape (K,); the mean over class indices divides by the
    total weight of the kept targets, as PyTorch does.
    """
    op = "cross_entropy"
    _check_reduction(op, reduction)
    z, t = _data(logits, "logits", op), _data(target, "target", op)
    expect_float(z, "logits", op)
    if z.ndim < 2:
        raise ValueError(f"{op}: logits must be (N, K) or (N, K, d1, ...), got shape {tuple(z.shape)}")
    n, k = z.shape[:2]
    if t.ndim == 0 or t.shape[0] != n:
        raise ValueError(f"{op}: logits have batch size {n} but target has "
                         + (f"{t.shape[0]}" if t.ndim else "no batch axis (a scalar)"))
    if t.dtype.kind in "iu":
        want = (n,) + tuple(z.shape[2:])
        if t.shape != want:
            raise ValueError(f"{op}: integer class indices must have shape {want} (the logits' shape without "
                             f"the class axis 1), got {tuple(t.shape)}")
        _check_target_indices(op, t, k, ignore_index)
    elif t.dtype.kind == "f":
        if t.shape != z.shape:
            raise ValueError(f"{op}: a float target holds class probabilities and must have the logits' shape "
                             f"{tuple(z.shape)}, got {tuple(t.shape)}; pass class indices as an integer array")
    else:
        raise TypeError(f"{op}: target must hold integer class indices or float class probabilities, "
                        f"got dtype {t.dtype}")
    label_smoothing = checks.number(f"{op}: label_smoothing", label_smoothing, 0.0, 1.0)
    if weight is not None:
        w = _data(weight, "weight", op)
        if w.shape != (k,):
            raise ValueError(f"{op}: weight must have shape ({k},), one per class, got {tuple(w.shape)}")
        weight = w.astype(z.dtype, copy=False)
    out = CrossEntropy.apply(logits, target, weight=weight, ignore_index=ignore_index,
                             label_smoothing=label_smoothing, reduction=reduction)
    return _finite(op, out, (z, t), check_finite)


@register("mse_loss", _regression_samples, torch=_torch_f("mse_loss"))
def mse_loss(pred, target, *, reduction="mean", check_finite=True):
    """Squared error (pred - target)**2; pred and target must have the same shape (no broadcasting)."""
    return _regression(MSELoss, "mse_loss", pred, target, reduction, check_finite)


@register("l1_loss", _regression_samples, torch=_torch_f("l1_loss"))
def l1_loss(pred, target, *, reduction="mean", check_finite=True):
    """Absolute error |pred - target| (gradient 0 where they are equal); shapes must match."""
    return _regression(L1Loss, "l1_loss", pred, target, reduction, check_finite)


@register("huber_loss", _huber_samples, torch=_torch_f("huber_loss"))
def huber_loss(pred, target, delta=1.0, *, reduction="mean", check_finite=True):
    """Huber loss: 0.5 d**2 for |d| <= delta, else delta (|d| - delta / 2), d = pred - target; shapes must match."""
    delta = checks.number("huber_loss: delta", delta, 0.0, low_open=True)
    return _regression(HuberLoss, "huber_loss", pred, target, reduction, check_finite, delta=delta)
