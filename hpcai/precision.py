"""Floating-point precisions: their names, exact rounding to them, and low-precision matrix products.

Low precision is emulated by *values*: :func:`round_to` returns, in the input's own float32/float64
dtype, the correctly rounded (IEEE round-to-nearest-even) fp16 or bf16 value of every element, so the
rest of the code keeps working in ordinary dtypes. Rounding from float64 is done directly, never
through float32: that double rounding is wrong near ties (``1 + 2**-8 + 2**-40`` goes to 1 through float32,
the correct bf16 is ``1 + 2**-7``), and older ``ml_dtypes`` cast float64 to bfloat16 that way.

:func:`lowp_matmul` has tensor-core numerics (Markidis et al. 2018, "NVIDIA Tensor Core
Programmability, Performance & Precision"): operands rounded to fp16/bf16, products accumulated in fp32,
an fp32 result. :func:`split_gemm` recovers fp32 accuracy from three such products by splitting each
operand into a scaled high and low fp16 part (Markidis et al. 2018 Eq. (1); scaling as in Ootomo &
Yokota 2022, "Recovering single precision accuracy from Tensor Cores while surpassing the FP32
theoretical peak performance"), with scales per block of the inner dimension so that a wide range
along it stays accurate. Every function runs on numpy and cupy arrays alike.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import ml_dtypes
import numpy as np

from . import backend

__all__ = ["Precision", "PRECISIONS", "get_precision", "round_to", "cast", "lowp_matmul", "split_gemm",
           "SPLIT_BLOCK", "MatmulMode", "MATMUL_MODES", "matmul"]


@dataclasses.dataclass(frozen=True)
class Precision:
    """A binary floating-point format: ``p`` significand bits (implicit bit included), exponents
    ``emin..emax`` of its normal numbers, and the numpy dtype that stores it."""

    name: str
    dtype: np.dtype
    p: int
    emin: int
    emax: int

    @property
    def max(self) -> float:
        """Largest finite value, ``(2 - 2**(1-p)) * 2**emax``."""
        return (2.0 - 2.0 ** (1 - self.p)) * 2.0 ** self.emax

    @property
    def tiny(self) -> float:
        """Smallest positive normal value, ``2**emin``."""
        return 2.0 ** self.emin

    @property
    def smallest_subnormal(self) -> float:
        """Smallest positive value, ``2**(emin - p + 1)``."""
        return 2.0 ** (self.emin - self.p + 1)

    @property
    def eps(self) -> float:
        """Gap between 1 and the next value, ``2**(1-p)`` (twice the unit roundoff)."""
        return 2.0 ** (1 - self.p)


PRECISIONS: dict[str, Precision] = {
    "fp64": Precision("fp64", np.dtype(np.float64), 53, -1022, 1023),
    "fp32": Precision("fp32", np.dtype(np.float32), 24, -126, 127),
    "fp16": Precision("fp16", np.dtype(np.float16), 11, -14, 15),
    "bf16": Precision("bf16", np.dtype(ml_dtypes.bfloat16), 8, -126, 127),
}


def _lookup(registry: dict, value, arg: str):
    """``registry[value]``, or an error naming ``arg``, what it accepts and what came."""
    expected = ", ".join(repr(k) for k in registry)
    if not isinstance(value, str):
        raise TypeError(f"{arg}: expected one of {expected}, got {type(value).__name__} {value!r}")
    if value not in registry:
        raise ValueError(f"{arg}: expected one of {expected}, got {value!r}")
    return registry[value]


def get_precision(precision, arg: str = "precision") -> Precision:
    """The :class:`Precision` named ``precision`` (a Precision passes through); ``arg`` names it in errors."""
    return precision if isinstance(precision, Precision) else _lookup(PRECISIONS, precision, arg)


def _float_array(x, arg: str, widen: bool = False):
    """``x`` as a float32/float64 array; with ``widen``, float16/bfloat16 are accepted (exactly) as float32."""
    x = x if backend.is_array(x) else np.asarray(x)
    if x.dtype in (np.float32, np.float64):
        return x
    if widen and x.dtype in (np.float16, ml_dtypes.bfloat16):
        return x.astype(np.float32)
    kinds = "float16, bfloat16, float32 or float64" if widen else "float32 or float64"
    raise TypeError(f"{arg}: expected a {kinds} array, got dtype {x.dtype}")


# ---------------------------------------------------------------------------------------------- rounding
@np.errstate(over="ignore", under="ignore", invalid="ignore")
def round_to(x, precision):
    """Round ``x`` (float32 or float64) to the nearest ``precision`` value, ties to even.

    Returns a new array in x's own dtype holding exactly representable values of the target format;
    subnormals, overflow to +-inf (from ``max + ulp/2`` on), +-0, +-inf and NaN follow IEEE 754.
    """
    prec = get_precision(precision)
    x = _float_array(x, "x")
    if backend.get_array_module(x) is np:  # fast paths: numpy's direct casts, ml_dtypes from float32
        if prec.name == "fp16" or (prec.name == "fp32" and x.dtype == np.float64):
            return x.astype(prec.dtype).astype(x.dtype)
        if prec.name == "bf16" and x.dtype == np.float32:  # (not from float64: see the module doc)
            return x.astype(ml_dtypes.bfloat16).astype(np.float32)
    return _round_portable(x, prec)


@np.errstate(over="ignore", under="ignore", invalid="ignore")
def _round_portable(x, prec: Precision):
    """:func:`round_to` with ``xp`` operations only: the path cupy takes (it has no bfloat16 dtype)."""
    xp = backend.get_array_module(x)
    if prec.p >= np.finfo(x.dtype).nmant + 1:  # the target holds every value of x's dtype
        return x.copy()
    if x.dtype == np.float64:
        return _round_exact(x, prec)
    if prec.name == "fp16":  # float32 -> float16 casts are correctly rounded (numpy, CUDA)
        return x.astype(np.float16).astype(np.float32)
    # bf16 is the top half of a float32: add half an ulp minus one, plus the kept lsb (ties to even),
    # then drop the low 16 bits. Carries propagate into the exponent, up to inf. Integer arithmetic,
    # so float32 subnormals survive on GPUs too (cupy's float32 kernels flush them to zero).
    u = x.view(xp.uint32)
    r = (u + (0x7FFF + ((u >> 16) & 1))) & 0xFFFF0000
    return xp.where(xp.isnan(x), x, r.view(xp.float32))


def _round_exact(x, prec: Precision):
    """Exact RNE of float64 ``x``: scale so the target ulp is 1, ``rint``, scale back (a single rounding).

    The ulp of a value in ``[2**e, 2**(e+1))`` is ``2**q``, ``q = max(e, emin) - p + 1``; the ``emin``
    floor makes the target's subnormals. The powers of two are built from their bits, so both scalings
    are exact; all arithmetic is float64, which GPUs never flush to zero.
    """
    xp = backend.get_array_module(x)
    e = ((x.view(xp.uint64) >> 52) & 0x7FF).astype(xp.int64) - 1023  # float64 subnormals: -1023
    q = xp.maximum(e, prec.emin) - (prec.p - 1)
    y = xp.rint(x * ((1023 - q) << 52).view(xp.float64)) * ((1023 + q) << 52).view(xp.float64)
    return xp.where(xp.abs(y) > prec.max, xp.copysign(xp.inf, x), y)


def cast(x, precision):
    """Convert ``x`` to ``precision``'s storage dtype with one correct rounding (RNE), also from float64.

    On numpy fp16/bf16 are stored as float16 / ``ml_dtypes.bfloat16``. cupy has no bfloat16 dtype, so on
    cupy bf16 is stored as float32 arrays holding bf16-rounded values (what :func:`round_to` returns);
    cupy's casts to float32 flush float32 subnormals (below 1.2e-38) to zero.
    """
    prec = get_precision(precision)
    x = _float_array(x, "x", widen=True)
    y = round_to(x, prec)  # now exactly representable: the cast below is exact
    if prec.name == "bf16" and backend.get_array_module(x) is not np:
        return y.astype(np.float32, copy=False)
    return y.astype(prec.dtype, copy=False)


# ------------------------------------------------------------------------------------- matrix products
def _operands(a, b):
    """Check ``a @ b`` operands; return their array module and both as float arrays."""
    a, b = _float_array(a, "a", widen=True), _float_array(b, "b", widen=True)
    xp = backend.get_array_module(a)
    if backend.get_array_module(b) is not xp:
        raise backend.DeviceError(f"a and b: arrays on different devices ({backend.device_of(a)} and "
                                  f"{backend.device_of(b)}); move one with hpcai.backend.to_device")
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"a and b: expected shapes (..., m, k) and (..., k, n), "
                         f"got a.shape={a.shape} and b.shape={b.shape}")
    return xp, a, b


def _lowp_product(a, b, prec: Precision, chunk=None):
    """``a @ b`` of float32 arrays holding fp16/bf16 values, with fp32 accumulation and result."""
    if backend.get_array_module(a) is np:
        # fp16 x fp16 and bf16 x bf16 products are exact in fp32, so a float32 BLAS product is exact
        # tensor-core emulation up to summation order (numpy's own float16 matmul is ~1000x slower).
        return np.matmul(a, b)
    return _gemm_ex(a, b, prec, chunk)


def _gemm_ex(a, b, prec: Precision, chunk=None):
    """cuBLAS GemmEx on fp16/bf16 storage, fp32 compute and output (tensor cores), batched by strides.

    With ``chunk``, the inner dimension is cut into pieces of that length whose products are added
    into C by cuBLAS' epilogue (``beta = 1``, rounded to nearest): tensor cores truncate while they
    accumulate (Fasi et al. 2021, "Numerical behavior of NVIDIA tensor cores"), so long sums drift.
    """
    cp = backend._cupy
    cublas, runtime = cp.cuda.cublas, cp.cuda.runtime
    if prec.name == "fp16":
        a, b, dtype16 = a.astype(cp.float16), b.astype(cp.float16), runtime.CUDA_R_16F
    else:  # raw bf16 bits: the top half of each (already bf16-valued) float32
        a, b = [(x.view(cp.uint32) >> 16).astype(cp.uint16) for x in (a, b)]
        dtype16 = runtime.CUDA_R_16BF
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    (m, k), n = a.shape[-2:], b.shape[-1]
    c = cp.zeros(batch + (m, n), cp.float32)
    if c.size == 0 or k == 0:
        return c

    def strided(x):  # one shared matrix (stride 0), or a contiguous stack over the whole batch
        if math.prod(x.shape[:-2]) == 1:
            return cp.ascontiguousarray(x.reshape(x.shape[-2:])), 0
        return cp.ascontiguousarray(cp.broadcast_to(x, batch + x.shape[-2:])), x.shape[-2] * x.shape[-1]

    (a, stride_a), (b, stride_b) = strided(a), strided(b)
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    step = chunk or k
    for i in range(0, k, step):
        # Row-major C = A B is column-major C^T = B^T A^T: pass B first, leading dimensions n, k, n.
        # Columns i.. of B^T start i*n elements in, rows i.. of A^T start i elements in.
        cublas.gemmStridedBatchedEx(
            cp.cuda.device.get_cublas_handle(), cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_N, n, m, min(step, k - i),
            one.ctypes.data, b.data.ptr + i * n * b.itemsize, dtype16, n, stride_b,
            a.data.ptr + i * a.itemsize, dtype16, k, stride_a, (one if i else zero).ctypes.data,
            c.data.ptr, runtime.CUDA_R_32F, n, m * n, math.prod(batch),
            cublas.CUBLAS_COMPUTE_32F, cublas.CUBLAS_GEMM_DEFAULT)
    return c


def lowp_matmul(a, b, precision="fp16"):
    """``a @ b`` with tensor-core numerics: operands rounded to fp16/bf16, fp32 accumulation, fp32 result.

    Batched like ``matmul``: ``(..., m, k) @ (..., k, n)``. ``"fp32"``/``"fp64"`` give a plain product in
    that dtype. On a GPU this runs cuBLAS' own fp16/bf16 GEMM, so it is fast there, not just emulated.
    """
    prec = get_precision(precision)
    xp, a, b = _operands(a, b)
    if prec.name in ("fp32", "fp64"):
        return xp.matmul(a.astype(prec.dtype, copy=False), b.astype(prec.dtype, copy=False))
    a, b = (round_to(x, prec).astype(np.float32, copy=False) for x in (a, b))
    return _lowp_product(a, b, prec)


# Inner-dimension chunk for the main split product on GPUs. Measured on an H100 (n x n normal, relative
# Frobenius error vs fp64): unchunked 6.5e-7 (n=512), 1.3e-6 (1024), 4.9e-6 (4096); chunked by 256,
# 3.5e-7 for all three; cuBLAS' own fp32 product gives 5.7e-7 (1024) and 1.1e-6 (4096).
_SPLIT_CHUNK = 256

# Default inner-dimension block of split_gemm (each k-block of a row of A / column of B gets its own scales)
# and the most values of block products it holds at once. Every block adds passes over the m x n output,
# so the cost grows with k / block. numpy, one BLAS thread, 512x512x512, time / fp32 product: unblocked
# 4.4, blocks of 256 4.8, 128 5.6, 64 7.6; 2048**3: unblocked 3.9, blocks of 256 4.4.
SPLIT_BLOCK = 256
_SPLIT_BUFFER = 2**22


def _exponents(x, axis, scaling: str):
    """Exponents ``e`` such that ``max |x| * 2**-e`` lies in [2**14, 2**15) per row/column (``axis``
    reduced) or per matrix: fp16's full range, with headroom below its max of 65504. Clipped so that
    ``2**e`` and ``2**-e`` are normal float32 numbers; an all-zero row gets ``e = -15`` (no division)."""
    xp = backend.get_array_module(x)
    big = xp.max(xp.abs(x), axis=axis if scaling == "row" else (-2, -1), keepdims=True)
    return xp.maximum(xp.frexp(big)[1] - 15, -126)


def _pow2(e, dtype):
    """``2.0**e`` for a (small) integer array of exponents."""
    xp = backend.get_array_module(e)
    return xp.ldexp(xp.ones(1, dtype), e)


def _fp16_values(v):
    """float32 ``v`` (finite, ``|v| <= 65504``) rounded to fp16 values, RNE, a zero's sign aside: 3x faster
    than numpy's float16 round trip, and equal to it on every such float32. fp16's normals are float32s
    with the low 13 significand bits rounded off (the bit trick of :func:`_round_portable`); its
    subnormals, the multiples of 2**-24, come from adding and subtracting 0.75, whose binade has that ulp."""
    xp = backend.get_array_module(v)
    u = v.view(xp.uint32)
    normal = ((u + (0x0FFF + ((u >> 13) & 1))) & 0xFFFFE000).view(xp.float32)
    return xp.where(xp.abs(v) < 2.0**-14, (v + np.float32(0.75)) - np.float32(0.75), normal)


def _split(x, axis, scaling: str):
    """``x = 2**e_hi * hi + 2**e_lo * lo`` to ``2**-22 |x| + 2**-49 max |x|`` (the max over what shares a
    scale), for float32 ``x``, with fp16-valued ``hi``, ``lo``.

    The residual ``x * 2**-e_hi - hi`` is exact (a rounding error) and gets its own scale, so ``lo``
    uses fp16's full range too instead of falling into its subnormals. What is left: entries below
    ~2**-28 max fall into fp16's subnormals in ``hi`` (to zero below ~2**-39 max), an absolute error up
    to 2**-39 max that ``lo`` carries to its own relative 2**-11 and absolute 2**-50 max.
    """
    e_hi = _exponents(x, axis, scaling)
    scaled = x * _pow2(-e_hi, np.float32)
    hi = _fp16_values(scaled)
    rest = scaled - hi
    e_rel = _exponents(rest, axis, scaling)  # about -11: 2**-e_rel stays a normal float32
    return hi, _fp16_values(rest * _pow2(-e_rel, np.float32)), e_hi, e_hi + e_rel


def _k_blocks(a, b, block: int):
    """``a`` (..., m, k) and ``b`` (..., k, n) as (..., nb, m, kb) and (..., nb, kb, n): ``nb = ceil(k / block)``
    blocks of equal length ``kb = ceil(k / nb)`` (so a ragged k costs at most nb - 1 zero columns)."""
    xp = backend.get_array_module(a)
    k = a.shape[-1]
    nb = -(-k // block)
    kb = -(-k // nb)
    if nb * kb > k:
        pad = nb * kb - k
        a = xp.concatenate([a, xp.zeros(a.shape[:-1] + (pad,), a.dtype)], axis=-1)
        b = xp.concatenate([b, xp.zeros(b.shape[:-2] + (pad, b.shape[-1]), b.dtype)], axis=-2)
    return xp.moveaxis(a.reshape(a.shape[:-1] + (nb, kb)), -2, -3), b.reshape(b.shape[:-2] + (nb, kb, b.shape[-1]))


@np.errstate(over="ignore", under="ignore", invalid="ignore")
def split_gemm(a, b, scaling: str = "row", block: int | None = SPLIT_BLOCK):
    """fp32-accurate ``a @ b`` from three fp16 products (Markidis et al. 2018 Eq. (1), Ootomo & Yokota 2022).

    The inner dimension is cut into equal blocks of at most ``block`` (None: one block). Within a block
    ``A = 2**ea * A_hi + 2**fa * A_lo`` (same for B) with power-of-two scales, so scaling is exact, and
    ``A B = A_hi B_hi + A_hi B_lo + A_lo B_hi`` (each product as in :func:`lowp_matmul`), ``A_lo B_lo``
    being below fp32 resolution. ``scaling="row"`` scales A per row and B per column within each block,
    ``"matrix"`` one scale per operand and block. A block's products are summed in fp32, then scaled
    and added over blocks in float64 (on a GPU, blocks longer than 256 are summed in chunks, see
    ``_gemm_ex``). Operands are taken as float32 (the result's precision). Batched like ``matmul``.

    Guarantee: an entry ``x`` (fp32-normal) is kept to ``2**-22 |x| + 2**-49 M``, ``M`` the largest
    magnitude in its row of A (column of B) and k-block (in the whole block with ``"matrix"``), so the
    error is an fp32 GEMM's (``~u (|A||B|)_ij``, u = 2**-24) plus ``2**-49 sum_blocks (M_A |B| + |A| M_B)``.
    That extra term stays below the fp32 one whatever the range across blocks, rows or columns
    (1e-30..1e30 included) as long as, within a block, the entries that matter lie within 2**27 (1e8) of
    the block's largest. A range that varies smoothly along k does once the blocks cut it finely enough
    (logspace(-6, 6) over any k > 256 with the default block of 256). Limit: a range interleaved along k
    does not (a row of A alternating 1 and 1e-12 against rows of B alternating 1 and 1e12); there only a
    smaller ``block`` (``block=1`` handles any input, slowly) or a permutation of k that sorts the
    scales into blocks helps (``a[..., p] @ b[..., p, :]`` is the same product).
    """
    xp, a, b = _operands(a, b)
    if scaling not in ("row", "matrix"):
        raise ValueError(f"scaling: expected 'row' or 'matrix', got {scaling!r}")
    if block is not None and (not isinstance(block, (int, np.integer)) or isinstance(block, bool) or block < 1):
        raise ValueError(f"block: expected a positive int or None, got {block!r}")
    a, b = a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
    if 0 in a.shape[-2:] + b.shape[-1:]:  # empty product (zeros when k == 0): nothing to scale
        return xp.matmul(a, b)
    fp16 = PRECISIONS["fp16"]
    a, b = _k_blocks(a, b, block or a.shape[-1])
    a_hi, a_lo, ea_hi, ea_lo = _split(a, -1, scaling)  # scales (..., nb, m, 1) or (..., nb, 1, 1)
    b_hi, b_lo, eb_hi, eb_lo = _split(b, -2, scaling)  # scales (..., nb, 1, n) or (..., nb, 1, 1)
    # Within a block in fp32, relative to the hi scales (2**(e_lo - e_hi) is a normal float32 below 1);
    # across blocks in float64, as the scales 2**(ea_hi + eb_hi) span 2**-252..2**226.
    ra, rb = _pow2(ea_lo - ea_hi, np.float32), _pow2(eb_lo - eb_hi, np.float32)
    sa, sb = _pow2(ea_hi, np.float64), _pow2(eb_hi, np.float64)
    nb, c = a.shape[-3], xp.zeros(np.broadcast_shapes(a.shape[:-3], b.shape[:-3]) + (a.shape[-2], b.shape[-1]))
    group = max(1, _SPLIT_BUFFER // max(c.size, 1))  # blocks multiplied at once (bounded temporaries)
    for g in (np.s_[..., i:i + group, :, :] for i in range(0, nb, group)):
        part, small = _lowp_product(a_hi[g], b_lo[g], fp16), _lowp_product(a_lo[g], b_hi[g], fp16)
        part *= rb[g]
        small *= ra[g]
        part += small
        part += _lowp_product(a_hi[g], b_hi[g], fp16, _SPLIT_CHUNK)
        part = part * sa[g]
        part *= sb[g]
        c += part[..., 0, :, :] if part.shape[-3] == 1 else part.sum(axis=-3)
    return c.astype(np.float32)


# ---------------------------------------------------------------------------------------- matmul modes
@dataclasses.dataclass(frozen=True)
class MatmulMode:
    """A way to multiply matrices; ``rtol`` is the relative Frobenius error vs an fp64 product that it
    stays within for standard-normal operands with inner dimension up to ~1000."""

    name: str
    fn: Callable
    rtol: float
    about: str


MATMUL_MODES: dict[str, MatmulMode] = {m.name: m for m in [
    MatmulMode("fp64", functools.partial(lowp_matmul, precision="fp64"), 1e-12, "float64 product"),
    MatmulMode("fp32", functools.partial(lowp_matmul, precision="fp32"), 1e-6, "float32 product"),
    MatmulMode("fp16", functools.partial(lowp_matmul, precision="fp16"), 2e-3,
               "fp16 operands, fp32 accumulation (tensor cores)"),
    MatmulMode("bf16", functools.partial(lowp_matmul, precision="bf16"), 2e-2,
               "bf16 operands, fp32 accumulation (tensor cores)"),
    MatmulMode("fp16x3", split_gemm, 1e-6, "three fp16 products of split operands (fp32 accuracy)"),
]}


def matmul(a, b, precision):
    """``a @ b`` in one of :data:`MATMUL_MODES` (``"fp64"``, ``"fp32"``, ``"fp16"``, ``"bf16"``, ``"fp16x3"``)."""
    name = precision.name if isinstance(precision, Precision) else precision
    return _lookup(MATMUL_MODES, name, "precision").fn(a, b)
