"""Elementwise ops with numpy broadcasting: arithmetic, math functions, activations, comparisons, where."""
from __future__ import annotations

import math

import numpy as np

from .. import accel, backend
from ..autograd.function import Function
from ..autograd.tensor import Tensor
from .common import unbroadcast
from .registry import Const, Sample, away_from_zero, register
from .threads import over_batch


def _shape(x):
    return x.shape if hasattr(x, "shape") else ()


# -- samples ---------------------------------------------------------------------------------------
def _binary_samples(rng, positive_b=False):
    b = (lambda s: rng.uniform(0.5, 2.0, s)) if positive_b else (lambda s: away_from_zero(rng, s))
    return [Sample((away_from_zero(rng, (3, 4)), b((3, 4)))),
            Sample((away_from_zero(rng, (2, 3, 4)), b((4,)))),          # broadcast the right operand
            Sample((away_from_zero(rng, (3, 1)), b((2, 1, 5)))),        # broadcast both ways
            Sample((away_from_zero(rng, (2, 3)), 1.7))]                 # a Python scalar


def _unary_samples(low=-2.0, high=2.0, away=False):
    def samples(rng):
        draw = (lambda s: away_from_zero(rng, s, 0.2, high)) if away else (lambda s: rng.uniform(low, high, s))
        return [Sample((draw((3, 4)),)), Sample((draw((2, 3, 2)),))]
    return samples


# -- arithmetic ------------------------------------------------------------------------------------
class Add(Function):
    def forward(self, a, b):
        self.shapes = _shape(a), _shape(b)
        return a + b

    def backward(self, gy):
        return unbroadcast(gy, self.shapes[0]), unbroadcast(gy, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        self.shapes = _shape(a), _shape(b)
        return a - b

    def backward(self, gy):
        return unbroadcast(gy, self.shapes[0]), unbroadcast(-gy, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        ga = unbroadcast(gy * self.b, _shape(self.a)) if self.needs_input_grad[0] else None
        gb = unbroadcast(gy * self.a, _shape(self.b)) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        ga = unbroadcast(gy / self.b, _shape(self.a)) if self.needs_input_grad[0] else None
        gb = unbroadcast(-gy * self.a / (self.b * self.b), _shape(self.b)) if self.needs_input_grad[1] else None
        return ga, gb


class Pow(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        self.y = self.xp.power(a, b)
        return self.y

    def backward(self, gy):
        # PyTorch's masks: d/da is 0 where b == 0 (not 0 * 0**-1 = NaN at a = 0); d/db is 0 where a == 0 and
        # b >= 0 (not 0 * log 0 = NaN). The masked-out values are computed, so their warnings are silenced.
        a, b, xp = self.a, self.b, self.xp
        ga = gb = None
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.needs_input_grad[0]:
                da = xp.asarray(b * xp.power(a, b - 1))     # an array even for 0-d a and b
                if not np.isscalar(b) or b == 0:           # the mask costs nothing for x ** 2.0
                    xp.copyto(da, 0, where=b == 0)
                ga = unbroadcast(gy * da, _shape(a))
            if self.needs_input_grad[1]:
                db = xp.asarray(self.y * xp.log(a))
                xp.copyto(db, 0, where=(a == 0) & (b >= 0))
                gb = unbroadcast(gy * db, _shape(b))
        return ga, gb


class Maximum(Function):
    def forward(self, a, b):
        # ties send the gradient to a, as numpy's argmax picks the first; a NaN sends it to both, as PyTorch
        self.a_gets, self.b_gets = ~(a < b), ~(a >= b)
        self.shapes = _shape(a), _shape(b)
        return self.xp.maximum(a, b)

    def backward(self, gy):
        return unbroadcast(gy * self.a_gets, self.shapes[0]), unbroadcast(gy * self.b_gets, self.shapes[1])


class Minimum(Function):
    def forward(self, a, b):
        self.a_gets, self.b_gets = ~(a > b), ~(a <= b)
        self.shapes = _shape(a), _shape(b)
        return self.xp.minimum(a, b)

    def backward(self, gy):
        return unbroadcast(gy * self.a_gets, self.shapes[0]), unbroadcast(gy * self.b_gets, self.shapes[1])


@register("add", _binary_samples, torch=lambda a, b: a + b)
def add(a, b):
    """a + b with broadcasting."""
    return Add.apply(a, b)


@register("sub", _binary_samples, torch=lambda a, b: a - b)
def sub(a, b):
    """a - b with broadcasting."""
    return Sub.apply(a, b)


@register("mul", _binary_samples, torch=lambda a, b: a * b)
def mul(a, b):
    """a * b with broadcasting."""
    return Mul.apply(a, b)


@register("div", _binary_samples, torch=lambda a, b: a / b)
def div(a, b):
    """a / b with broadcasting."""
    return Div.apply(a, b)


def _pow_samples(rng):
    zero_base = np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]])   # a = 0 against every kind of b
    return [Sample((rng.uniform(0.5, 2.0, (2, 3, 4)), away_from_zero(rng, (4,)))),
            Sample((rng.uniform(0.5, 2.0, (3, 4)), rng.uniform(-1.5, 1.5, (4,)))),
            Sample((away_from_zero(rng, (3, 4)), 3.0)),
            Sample((zero_base, np.array([3.0, 2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 0.0])), gradcheck=False),
            Sample((zero_base, 0.0), gradcheck=False), Sample((zero_base, 1.0), gradcheck=False)]


@register("pow", _pow_samples, torch=lambda a, b: a ** b)
def pow(a, b):  # noqa: A001 - mirrors the operator's name
    """a ** b; the gradient with respect to b needs a > 0, or a = 0 with b >= 0 (where it is 0).

    At a = 0 the gradients follow PyTorch: d/da is 0 where b == 0 (and b * 0**(b-1) otherwise: 0 for
    b > 1, 1 for b = 1, inf for 0 < b < 1, -inf for b < 0); d/db is 0 for b >= 0 and -inf for b < 0.
    """
    return Pow.apply(a, b)


def _extremum_samples(rng):  # no ties: there the gradient deliberately differs from torch.maximum's
    a, b = np.array([1.0, np.nan, 2.0, np.nan, -np.inf]), np.array([np.nan, 1.0, 1.0, np.nan, 0.0])
    return _binary_samples(rng) + [Sample((a, b), gradcheck=False)]


@register("maximum", _extremum_samples, torch=lambda a, b: __import__("torch").maximum(a, b)
          if hasattr(b, "shape") else a.clamp(min=b))
def maximum(a, b):
    """Elementwise larger of a and b; NaN wins, and its gradient goes to both, as in PyTorch.

    Deliberate difference: a tie sends the whole gradient to a (as ``torch.clamp`` does for x), where
    ``torch.maximum`` splits it in half between a and b.
    """
    return Maximum.apply(a, b)


@register("minimum", _extremum_samples, torch=lambda a, b: __import__("torch").minimum(a, b)
          if hasattr(b, "shape") else a.clamp(max=b))
def minimum(a, b):
    """Elementwise smaller of a and b; NaN wins, and its gradient goes to both, as in PyTorch.

    Deliberate difference: a tie sends the whole gradient to a, where ``torch.minimum`` splits it in half.
    """
    return Minimum.apply(a, b)


# -- unary math ------------------------------------------------------------------------------------
class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Exp(Function):
    def forward(self, x):
        self.y = self.xp.exp(x)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    def forward(self, x):
        self.x = x
        return self.xp.log(x)

    def backward(self, gy):
        return gy / self.x


class Sqrt(Function):
    def forward(self, x):
        self.y = self.xp.sqrt(x)
        return self.y

    def backward(self, gy):
        return gy / (2 * self.y)


class Abs(Function):
    def forward(self, x):
        self.sign = self.xp.nan_to_num(self.xp.sign(x), copy=False)  # 0 at NaN, as PyTorch's sgn
        return self.xp.abs(x)

    def backward(self, gy):
        return gy * self.sign


class Tanh(Function):
    def forward(self, x):
        self.y = self.xp.tanh(x)
        return self.y

    def backward(self, gy):
        return gy * (1 - self.y * self.y)


def _expit(xp, x):
    """1 / (1 + e**-x), PyTorch's formula: right to the last digits in the tail, where it is e**x (0 below
    x ~ -709, where e**-x overflows harmlessly); 0.5 * (1 + tanh(x / 2)) loses digits from x ~ -20 and is 0
    below -37."""
    with np.errstate(over="ignore"):
        return 1 / (1 + xp.exp(-x))


class Sigmoid(Function):
    def forward(self, x):
        self.y = _expit(self.xp, x)
        return self.y

    def backward(self, gy):
        return gy * self.y * (1 - self.y)


@accel.jit
def _relu_rows(x, y):
    """y = max(x, 0) over flat C-ordered arrays, NaN kept (it is not <= 0)."""
    for k in range(x.size):
        v = x[k]
        y[k] = 0 if v <= 0 else v


@accel.jit
def _relu_grad_rows(gy, y, gx):
    """gx = gy · (y != 0) over flat C-ordered arrays (an infinite gy times 0 is NaN, as in numpy)."""
    for k in range(gy.size):
        gx[k] = gy[k] * (1 if y[k] != 0 else 0)


class Relu(Function):
    """max(x, 0), which keeps NaN (and takes -inf to 0); the gradient passes where x is not <= 0, NaN
    included, as in PyTorch. That is exactly where y != 0, so forward is one pass that keeps only y, and
    backward rebuilds the mask from y block by block, in cache. Both share the batch among CPU threads.
    Where numba is installed (``hpcai.accel``) each is one compiled loop on the CPU, without numpy's boolean
    mask and its mixed-type product: forward 3x and forward + backward 2x faster on 32x16x32x32 (one thread)."""

    def forward(self, x):
        xp = self.xp
        if x.ndim == 0:
            self.y = xp.maximum(x, 0)
            return self.y
        y = xp.empty(x.shape, x.dtype)
        if self._compiled(x):
            over_batch(xp, lambda s: _relu_rows(x[s].reshape(-1), y[s].reshape(-1)), x.shape[0], x.size)
        else:
            over_batch(xp, lambda s: xp.maximum(x[s], 0, out=y[s]), x.shape[0], x.size)
        self.y = y
        return y

    def backward(self, gy):
        xp, y = self.xp, self.y
        if gy.ndim == 0:
            return gy * (y != 0)
        gx = xp.empty(gy.shape, gy.dtype)
        if self._compiled(gy) and gy.dtype == y.dtype:
            over_batch(xp, lambda s: _relu_grad_rows(gy[s].reshape(-1), y[s].reshape(-1), gx[s].reshape(-1)),
                       gy.shape[0], gy.size)
            return gx

        def part(s):
            xp.multiply(gy[s], y[s] != 0, out=gx[s])

        over_batch(xp, part, gy.shape[0], gy.size)
        return gx

    def _compiled(self, a):
        """Whether the numba loops run: the CPU, a float dtype, C-ordered ``a``, numba available."""
        return (self.xp is np and a.dtype in (np.float32, np.float64) and a.flags.c_contiguous
                and _relu_rows.available)


class LeakyRelu(Function):
    def forward(self, x):
        self.scale = self.xp.where(x > 0, 1, self.slope).astype(x.dtype)
        return x * self.scale

    def backward(self, gy):
        return gy * self.scale


class Gelu(Function):
    def forward(self, x):
        xp, self.x = self.xp, x
        if self.approximate == "tanh":
            c = math.sqrt(2 / math.pi)
            self.t = xp.tanh(c * (x + 0.044715 * x ** 3))
            return 0.5 * x * (1 + self.t)
        self.cdf = 0.5 * (1 + backend.special(xp).erf(x / math.sqrt(2)))
        return x * self.cdf

    def backward(self, gy):
        x, xp = self.x, self.xp
        if self.approximate == "tanh":
            c = math.sqrt(2 / math.pi)
            dt = (1 - self.t * self.t) * c * (1 + 3 * 0.044715 * x * x)
            return gy * (0.5 * (1 + self.t) + 0.5 * x * dt)
        pdf = xp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return gy * (self.cdf + x * pdf)


class Softplus(Function):
    def forward(self, x):
        xp, bx = self.xp, self.beta * x
        self.bx = bx
        # log(1 + e^bx) / beta computed stably; linear above the threshold as in PyTorch
        soft = (xp.maximum(bx, 0) + xp.log1p(xp.exp(-xp.abs(bx)))) / self.beta
        return xp.where(bx > self.threshold, x, soft)

    def backward(self, gy):  # sigmoid(bx), accurate in the far negative tail (see Sigmoid)
        return gy * self.xp.where(self.bx > self.threshold, 1, _expit(self.xp, self.bx))


class Cast(Function):
    def forward(self, x):
        self.src = x.dtype
        return x.astype(self.dtype)

    def backward(self, gy):
        return gy.astype(self.src)


def _t(name):
    return lambda *a, **k: getattr(__import__("torch"), name)(*a, **k)


@register("neg", _unary_samples(), torch=lambda x: -x)
def neg(x):
    """-x."""
    return Neg.apply(x)


@register("exp", _unary_samples(), torch=_t("exp"))
def exp(x):
    """e**x."""
    return Exp.apply(x)


@register("log", _unary_samples(0.2, 3.0), torch=_t("log"))
def log(x):
    """Natural logarithm (x > 0)."""
    return Log.apply(x)


@register("sqrt", _unary_samples(0.2, 3.0), torch=_t("sqrt"))
def sqrt(x):
    """Square root (x > 0 for a finite gradient)."""
    return Sqrt.apply(x)


_SPECIAL = np.array([[np.nan, np.inf, -np.inf, 0.0, -1.5, 2.0]])   # edge sample for the activations


def _with_special(samples):
    """``samples`` plus one row of NaN, ±inf and 0, compared with PyTorch only (no finite differences)."""
    return lambda rng: samples(rng) + [Sample((_SPECIAL.copy(),), gradcheck=False)]


@register("abs", _with_special(_unary_samples(away=True)), torch=_t("abs"))
def abs(x):  # noqa: A001
    """|x| (gradient sign(x); 0 at 0 and at NaN, as in PyTorch)."""
    return Abs.apply(x)


@register("tanh", _unary_samples(), torch=_t("tanh"))
def tanh(x):
    """Hyperbolic tangent."""
    return Tanh.apply(x)


def _tail_samples(low, high):
    """``_unary_samples(low, high)`` and the far tails (sigmoid is e**x there; below -709 both round to 0)."""
    def samples(rng):
        tail = -np.geomspace(20.0, 700.0, 12).reshape(3, 4)
        return _unary_samples(low, high)(rng) + [Sample((tail,)), Sample((np.array([[-745.0, -700.0, 40.0, 750.0]]),))]
    return samples


@register("sigmoid", _with_special(_tail_samples(-6, 6)), torch=_t("sigmoid"))
def sigmoid(x):
    """Logistic sigmoid 1 / (1 + e**-x), stable for any x and accurate to the last digits in its tail."""
    return Sigmoid.apply(x)


@register("relu", _with_special(_unary_samples(away=True)), torch=_t("relu"))
def relu(x):
    """max(x, 0); NaN stays NaN and passes its gradient, as in PyTorch."""
    return Relu.apply(x)


@register("leaky_relu", lambda rng: [Sample((away_from_zero(rng, (3, 4)),), {"slope": 0.1}),
                                     Sample((_SPECIAL.copy(),), {"slope": 0.1}, gradcheck=False)],
          torch=lambda x, slope: __import__("torch").nn.functional.leaky_relu(x, slope))
def leaky_relu(x, slope: float = 0.01):
    """x for x > 0, slope * x otherwise."""
    return LeakyRelu.apply(x, slope=float(slope))


@register("gelu", lambda rng: [Sample((rng.uniform(-3, 3, (3, 4)),)),
                               Sample((rng.uniform(-3, 3, (3, 4)),), {"approximate": "tanh"})],
          torch=lambda x, approximate="none": __import__("torch").nn.functional.gelu(x, approximate=approximate))
def gelu(x, approximate: str = "none"):
    """Gaussian error linear unit x * Phi(x); ``approximate="tanh"`` for the tanh formula."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return Gelu.apply(x, approximate=approximate)


@register("softplus", lambda rng: [Sample((rng.uniform(-5, 5, (3, 4)),)),
                                   Sample((away_from_zero(rng, (3, 4), 0.3, 5),), {"beta": 2.0, "threshold": 4.0}),
                                   Sample((-np.geomspace(20.0, 700.0, 12).reshape(3, 4),)),   # the far tail
                                   Sample((_SPECIAL.copy(),), gradcheck=False)],
          torch=lambda x, beta=1.0, threshold=20.0: __import__("torch").nn.functional.softplus(x, beta, threshold))
def softplus(x, beta: float = 1.0, threshold: float = 20.0):
    """log(1 + e**(beta x)) / beta, computed without overflow; linear where beta x > threshold.

    The gradient is sigmoid(beta x), accurate in the far negative tail. Deliberate difference, only for a
    threshold above 709: where 709 < beta x <= threshold PyTorch's e**(beta x) overflows (loss inf,
    gradient NaN), while this stays finite (x and 1).
    """
    return Softplus.apply(x, beta=float(beta), threshold=float(threshold))


def cast(x, dtype):
    """``x`` converted to ``dtype`` inside the graph (the gradient is cast back)."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"cast: dtype must be a floating-point type to stay differentiable, got {dtype}")
    return Cast.apply(x, dtype=dtype)


# -- comparisons and where ---------------------------------------------------------------------------
def _compare(name, op):
    def compare(a, b):
        arrays = [x.data if isinstance(x, Tensor) else x for x in (a, b)]
        return Tensor(op(*arrays))
    compare.__name__ = name
    compare.__doc__ = f"Elementwise a {name} b as a boolean tensor (no gradient flows)."
    return compare


def _compare_samples(rng):
    a = rng.integers(-2, 3, (3, 4)).astype(float)
    return [Sample((a, rng.integers(-2, 3, (3, 4)).astype(float))), Sample((a, 0.0))]


for _name, _op, _torch in [("eq", np.equal, "eq"), ("ne", np.not_equal, "ne"), ("lt", np.less, "lt"),
                           ("le", np.less_equal, "le"), ("gt", np.greater, "gt"), ("ge", np.greater_equal, "ge")]:
    # numpy's ufuncs dispatch to cupy through __array_ufunc__, so one table serves both backends
    globals()[_name] = register(_name, _compare_samples, torch=_t(_torch), differentiable=False)(
        _compare(_name, _op))


class Where(Function):
    def forward(self, cond, a, b):
        self.cond, self.shapes = cond, (_shape(a), _shape(b))
        return self.xp.where(cond, a, b)

    def backward(self, gy):
        zero = self.xp.zeros((), gy.dtype)
        return (None, unbroadcast(self.xp.where(self.cond, gy, zero), self.shapes[0]),
                unbroadcast(self.xp.where(self.cond, zero, gy), self.shapes[1]))


@register("where", lambda rng: [
    Sample((Const(rng.random((3, 4)) > 0.5), rng.standard_normal((3, 4)), rng.standard_normal((3, 4)))),
    Sample((Const(rng.random((3, 1)) > 0.5), rng.standard_normal((4,)), 0.0))],
    torch=lambda c, a, b: __import__("torch").where(c, a, b))
def where(cond, a, b):
    """``a`` where ``cond`` else ``b``; the mask is a constant, gradients flow to a and b only."""
    cond = cond.data if isinstance(cond, Tensor) else cond
    if getattr(cond, "dtype", None) != np.bool_:
        raise TypeError(f"where: cond must be a boolean array or tensor, got {getattr(cond, 'dtype', type(cond))}")
    return Where.apply(cond, a, b)
