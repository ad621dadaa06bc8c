"""Tests for hpcai.precision: exact rounding (bit for bit against independent references), low-precision
products against explicit references, split-fp16 GEMM accuracy, the matmul-mode registry, bad input."""
import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from hpcai import backend
from hpcai import precision as P

FP16, BF16 = P.PRECISIONS["fp16"], P.PRECISIONS["bf16"]
DOUBLE_ROUNDING = 1 + 2**-8 + 2**-40  # RNE to bf16 gives 1 + 2**-7; via float32 it gives 1.0


def assert_bits_equal(got, want):
    """Same dtype, shape and bits (any NaN matches any NaN)."""
    got, want = backend.to_host(got), backend.to_host(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[want.dtype.itemsize]
    bad = got[~nan].view(uint) != want[~nan].view(uint)
    assert not bad.any(), f"{bad.sum()} differ, e.g. got {got[~nan][bad][:4]}, want {want[~nan][bad][:4]}"


def rne_reference(v: float, dtype) -> float:
    """Round ``v`` to ``dtype``'s format with exact rationals and Python's ties-to-even ``round``."""
    fi = ml_dtypes.finfo(dtype)
    p, emin, emax = fi.nmant + 1, fi.minexp, fi.maxexp - 1
    if v != v or math.isinf(v) or v == 0:
        return v
    f = abs(Fraction(v))
    e = f.numerator.bit_length() - f.denominator.bit_length()  # 2**(e-1) < f < 2**(e+1)
    if Fraction(2) ** e > f:
        e -= 1
    ulp = Fraction(2) ** (max(e, emin) - p + 1)
    y = round(f / ulp) * ulp
    big = (2 - Fraction(2) ** (1 - p)) * Fraction(2) ** emax
    return math.copysign(math.inf if y > big else float(y), v)


def binades(rng, n, lo, hi, dtype=np.float64):
    """Random signed values with exponents uniform in [lo, hi) and full random significands."""
    x = np.ldexp(rng.uniform(1, 2, n), rng.integers(lo, hi, n)) * rng.choice([-1.0, 1.0], n)
    return x.astype(dtype)


def ties(rng, n, dtype):
    """Exact halfway points of ``dtype``'s grid (even and odd neighbours, subnormal to max) and values one
    part in 2**40 beside them, which any double rounding gets wrong."""
    fi = ml_dtypes.finfo(dtype)
    p, emin, emax = fi.nmant + 1, fi.minexp, fi.maxexp - 1
    e = rng.integers(emin - 3, emax + 1, n)
    k = rng.integers(0, 2**p, n).astype(np.float64)
    t = np.ldexp(k + 0.5, np.maximum(e, emin) - p + 1)
    return np.concatenate([t, t * (1 + 2**-40), t * (1 - 2**-40), -t])


def edges(prec):
    """Zeros, infinities, NaN, subnormal ties and the overflow threshold of ``prec`` (as float64)."""
    s, big, ulp_max = prec.smallest_subnormal, prec.max, 2.0 ** (prec.emax - prec.p + 1)
    return np.array([0.0, -0.0, np.inf, -np.inf, np.nan, s, s / 2, -s / 2, s / 2 * (1 + 2**-20), 1.5 * s,
                     2.5 * s, 0.75 * s, prec.tiny, prec.tiny - s / 2, big, big + ulp_max / 2,
                     -(big + ulp_max / 2), big + ulp_max / 2 * (1 - 2**-20), 2 * big, 1.0, 1 + prec.eps / 2,
                     1 + 1.5 * prec.eps, DOUBLE_ROUNDING])


def float32_patterns(rng, n):
    """Random float32 bit patterns: every binade, subnormals, infinities and NaNs."""
    return rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)


# ---------------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", list(P.PRECISIONS))
def test_precision_constants_match_finfo(name):
    prec, fi = P.PRECISIONS[name], ml_dtypes.finfo(P.PRECISIONS[name].dtype)
    assert prec.name == name
    assert (prec.p, prec.emin, prec.emax) == (fi.nmant + 1, fi.minexp, fi.maxexp - 1)
    assert (prec.max, prec.tiny, prec.eps) == (float(fi.max), float(fi.smallest_normal), float(fi.eps))
    assert prec.smallest_subnormal == float(fi.smallest_subnormal)
    assert P.get_precision(name) is prec and P.get_precision(prec) is prec


def test_get_precision_errors_name_argument_and_choices():
    with pytest.raises(ValueError) as err:
        P.get_precision("fp8")
    assert str(err.value) == "precision: expected one of 'fp64', 'fp32', 'fp16', 'bf16', got 'fp8'"
    with pytest.raises(TypeError, match=r"^precision: expected one of 'fp64'.*got int 16"):
        P.get_precision(16)


# ---------------------------------------------------------------------------------------------- rounding
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fp16_rounding_matches_numpy_cast(xp, rng, dtype):
    with np.errstate(over="ignore"):
        x = np.concatenate([binades(rng, 20000, -30, 20), ties(rng, 2000, np.float16),
                            edges(FP16)]).astype(dtype)
        want = x.astype(np.float16).astype(dtype)
    assert_bits_equal(P.round_to(xp.asarray(x), "fp16"), want)
    if dtype == np.float32:
        x = float32_patterns(rng, 50000)
        with np.errstate(over="ignore", invalid="ignore"):
            assert_bits_equal(P.round_to(xp.asarray(x), FP16), x.astype(np.float16).astype(np.float32))


def test_fp16_edge_values_explicitly():
    got = P.round_to(np.array([65504.0, 65519.99, 65520.0, -65520.0, 2.0**-25, 3 * 2.0**-25, 1 + 2**-11,
                               1 + 3 * 2**-11, 1 + 2**-11 + 2**-40, -0.0]), "fp16")
    want = [65504.0, 65504.0, np.inf, -np.inf, 0.0, 2.0**-23, 1.0, 1 + 2**-9, 1 + 2**-10, -0.0]
    assert_bits_equal(got, np.array(want))


def test_bf16_rounding_matches_ml_dtypes_from_float32(xp, rng):
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.concatenate([float32_patterns(rng, 100000), binades(rng, 20000, -140, -120, np.float32),
                            ties(rng, 2000, ml_dtypes.bfloat16).astype(np.float32),
                            edges(BF16).astype(np.float32)])
        want = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert_bits_equal(P.round_to(xp.asarray(x), "bf16"), want)


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp32"])
def test_rounding_from_float64_matches_exact_rationals(xp, rng, name):
    prec = P.PRECISIONS[name]
    x = np.concatenate([binades(rng, 1500, prec.emin - prec.p - 1, prec.emax + 2),
                        ties(rng, 500, prec.dtype), edges(prec)])
    want = np.array([rne_reference(float(v), prec.dtype) for v in x])
    assert_bits_equal(P.round_to(xp.asarray(x), name), want)


def double_rounding_traps(prec):
    """float64 values one part in 2**40 beside ``prec``'s ties, on the side a double rounding through float32
    gets wrong (float32 rounds them onto the tie, which then goes to even): above ties with an even lower
    neighbour, below ties with an odd one; normal and subnormal, both signs, and just below the overflow
    threshold ``max + ulp/2`` (correct: max; through float32: inf)."""
    p, emin, emax = prec.p, prec.emin, prec.emax
    k = np.arange(0, 2**p, 7, dtype=np.float64)  # significands, even and odd; below 2**(p-1): subnormal
    k = np.concatenate([k, [2**p - 1]])
    rows = []
    for e in (emin, 0, 5, emax):  # subnormals and the smallest normals share emin's ulp
        kk = k if e == emin else k[k >= 2 ** (p - 1)]
        t = np.ldexp(kk + 0.5, e - p + 1)
        rows.append(np.where(kk % 2 == 0, t * (1 + 2**-40), t * (1 - 2**-40)))
    x = np.concatenate(rows)
    return np.concatenate([x, -x])


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_rounding_from_float64_is_one_rne_where_double_rounding_fails(xp, name):
    """hpcai's promise: float64 -> fp16/bf16 is a single round-to-nearest-even, checked against exact
    rationals on the inputs where rounding through float32 first goes wrong, and on the IEEE edges."""
    prec = P.PRECISIONS[name]
    traps = double_rounding_traps(prec)
    want = np.array([rne_reference(float(v), prec.dtype) for v in traps])
    with np.errstate(over="ignore"):
        through_fp32 = backend.to_host(P.round_to(xp.asarray(traps.astype(np.float32)), name)).astype(np.float64)
    assert np.all(through_fp32 != want), "every trap must be one that a double rounding gets wrong"
    x = np.concatenate([traps, edges(prec)])  # + zeros, inf, NaN, subnormal ties, overflow threshold
    want = np.array([rne_reference(float(v), prec.dtype) for v in x])
    assert_bits_equal(P.round_to(xp.asarray(x), name), want)
    assert_bits_equal(P.cast(xp.asarray(x), name).astype(np.float64), want)
    assert float(P.round_to(xp.asarray([DOUBLE_ROUNDING]), "bf16")[0]) == 1 + 2**-7


@pytest.mark.parametrize("name", list(P.PRECISIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_portable_path_matches_numpy_fast_path(rng, name, dtype):
    """The xp-only path (the one cupy runs) agrees bit for bit with numpy's casts and ml_dtypes."""
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.concatenate([binades(rng, 20000, -150, 130), ties(rng, 2000, np.float16),
                            ties(rng, 2000, ml_dtypes.bfloat16), edges(FP16), edges(BF16)]).astype(dtype)
        if dtype == np.float32:
            x = np.concatenate([x, float32_patterns(rng, 50000)])
    prec = P.PRECISIONS[name]
    assert_bits_equal(P._round_portable(x, prec), P.round_to(x, prec))


def test_round_to_returns_new_array_of_input_dtype_and_shape(xp):
    x = xp.asarray(np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4))
    for name in P.PRECISIONS:
        y = P.round_to(x, name)
        assert y.dtype == x.dtype and y.shape == x.shape and y is not x
    assert float(P.round_to(xp.asarray([1 / 3]), "bf16")[0]) == 0.333984375


def test_cast_gives_storage_dtype_and_rounded_values(xp, rng):
    x = xp.asarray(binades(rng, 1000, -20, 15))
    h = P.cast(x, "fp16")
    assert h.dtype == np.float16
    assert_bits_equal(h.astype(np.float64), P.round_to(x, "fp16"))
    b = P.cast(x, "bf16")
    assert b.dtype == (ml_dtypes.bfloat16 if xp is np else np.float32)  # cupy has no bfloat16
    assert_bits_equal(b.astype(np.float64), P.round_to(x, "bf16"))
    assert P.cast(h, "fp32").dtype == np.float32 and P.cast(x, "fp64").dtype == np.float64


# --------------------------------------------------------------------------------------------- products
def rounded_on_host(x, name):
    """Operands rounded by an independent route (numpy float16 / ml_dtypes from float32), as float64."""
    dtype = np.float16 if name == "fp16" else ml_dtypes.bfloat16
    return np.asarray(x, np.float32).astype(dtype).astype(np.float64)


def rel_fro(got, want):
    got = backend.to_host(got).astype(np.float64)
    return np.linalg.norm(got - want) / np.linalg.norm(want)


@pytest.mark.parametrize("name, lo, hi", [("fp16", 1e-4, 3e-3), ("bf16", 1e-3, 3e-2)])
@pytest.mark.parametrize("shapes", [((33, 257), (257, 19)), ((3, 1, 8, 64), (4, 64, 5)), ((6, 40), (2, 40, 7))])
def test_lowp_matmul_is_rounded_operands_with_fp32_accumulation(xp, rng, name, lo, hi, shapes):
    a, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    got = P.lowp_matmul(xp.asarray(a), xp.asarray(b), name)
    assert got.dtype == np.float32
    a_r, b_r = rounded_on_host(a, name), rounded_on_host(b, name)
    want, scale = a_r @ b_r, np.abs(a_r) @ np.abs(b_r)
    assert got.shape == want.shape
    k = a.shape[-1]
    # BLAS sums in fp32 (error ~ u sqrt(k)); tensor cores truncate while accumulating (Fasi et al. 2021,
    # "Numerical behavior of NVIDIA tensor cores"), so allow the worst-case k u there.
    tol = 4 * 2**-24 * math.sqrt(k) if xp is np else 2 * k * 2**-24
    assert np.max(np.abs(backend.to_host(got) - want) / scale) <= tol
    assert lo < rel_fro(got, a.astype(np.float64) @ b.astype(np.float64)) < hi  # clearly not fp32


@pytest.mark.parametrize("scaling", ["row", "matrix"])
def test_split_parts_use_fp16_range_and_rebuild_the_operand(xp, rng, scaling):
    x = (rng.standard_normal((64, 48)) * np.logspace(-20, 20, 64)[:, None]).astype(np.float32)
    hi, lo, e_hi, e_lo = (backend.to_host(v) for v in P._split(xp.asarray(x), -1, scaling))
    axes = -1 if scaling == "row" else (-2, -1)
    for part in (hi, lo):
        assert_bits_equal(part, P.round_to(part, "fp16"))  # fp16 values
        big = np.max(np.abs(part), axis=axes)
        assert np.all((2.0**14 <= big) & (big <= 2.0**15))  # full range, no overflow (65504)
    rebuilt = hi * np.exp2(e_hi.astype(np.float64)) + lo * np.exp2(e_lo.astype(np.float64))
    big = np.max(np.abs(x), axis=axes, keepdims=True)
    assert np.all(np.abs(rebuilt - x) <= 2.0**-22 * np.abs(x) + 2.0**-49 * big)  # _split's stated bound


def test_split_rounds_to_fp16_like_numpy(xp, rng):
    """_split's own rounding (bits and 0.75-shift) against numpy's float16 cast, on what it is given:
    finite float32 up to fp16's max, all binades and subnormals, ties included."""
    x = float32_patterns(rng, 400000)
    x = np.concatenate([x[np.abs(x) <= 65504], ties(rng, 20000, np.float16).astype(np.float32),
                        np.float32([65504, -65504, 2.0**-24, 2.0**-25, 3 * 2.0**-25, 2.0**-14, 0.0])])
    got = backend.to_host(P._fp16_values(xp.asarray(x)))
    want = x.astype(np.float16).astype(np.float32)
    assert_bits_equal(np.where(want == 0, 0, got), np.where(want == 0, 0, want))  # a zero's sign aside


def wide_inner(rng, m, k, n, order=None):
    """A with columns and B with rows scaled by d = logspace(-6, 6) along k (A D and D**-1 B, d permuted by
    ``order``): every term of the product matters alike, so scales over the whole of k lose the small ones."""
    d = np.logspace(-6, 6, k)[order if order is not None else slice(None)]
    a = rng.standard_normal((m, k)) * d
    b = rng.standard_normal((k, n)) / d[:, None]
    return a.astype(np.float32), b.astype(np.float32)


def componentwise(got, a, b, want):
    """``max |got - want| / (|A||B|)``: the error in the units of a GEMM's error bound."""
    scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    return np.max(np.abs(backend.to_host(got).astype(np.float64) - want) / scale)


def test_split_blocks_keep_small_entries_out_of_fp16_subnormals(xp, rng):
    a, b = wide_inner(rng, 64, 512, 8)
    blocks, _ = P._k_blocks(xp.asarray(a), xp.asarray(b), 128)  # (4, 64, 128): a range of 1e3 in each
    assert blocks.shape == (4, 64, 128)
    for blocked, x in ((False, xp.asarray(a)), (True, blocks)):
        hi, lo, e_hi, e_lo = (backend.to_host(v) for v in P._split(x, -1, "row"))
        x = backend.to_host(x)
        for part in (hi, lo):
            big = np.max(np.abs(part), axis=-1)
            assert np.all((2.0**14 <= big) & (big <= 2.0**15))  # each row (of each block) at fp16's top
        rebuilt = hi * np.exp2(e_hi.astype(np.float64)) + lo * np.exp2(e_lo.astype(np.float64))
        assert np.all(np.abs(rebuilt - x) <= 2.0**-22 * np.abs(x) + 2.0**-49 * np.max(np.abs(x), -1, keepdims=True))
        subnormal = np.mean(np.abs(hi) < 2.0**-14)  # x has no zeros
        worst = np.max(np.abs(rebuilt - x) / np.abs(x))
        if blocked:
            assert subnormal < 1e-3 and worst <= 2.0**-20
        else:  # one scale per row: a quarter of the entries in fp16's subnormals, some lost outright
            assert subnormal > 0.2 and worst > 0.5


SCALED = {  # name: (row factors of A, column factors of B); entries outside fp16 range or badly scaled
    "normal": (1.0, 1.0), "tiny": (1e-8, 1e-8), "huge": (1e8, 1e8),
    "rows": (np.logspace(-6, 6, 512)[:, None], np.logspace(6, -6, 512)[None, :]),
}


@pytest.mark.parametrize("case", list(SCALED))
def test_split_gemm_reaches_fp32_accuracy_where_fp16_does_not(xp, rng, case):
    ra, cb = SCALED[case]
    a = (rng.standard_normal((512, 512)) * ra).astype(np.float32)
    b = (rng.standard_normal((512, 512)) * cb).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    a, b = xp.asarray(a), xp.asarray(b)
    got = P.split_gemm(a, b)
    assert got.dtype == np.float32 and rel_fro(got, want) <= 1e-6
    with np.errstate(all="ignore"):
        plain = rel_fro(P.lowp_matmul(a, b, "fp16"), want)
    assert not plain <= 1e-4  # ~3e-4 when in range; inf/NaN/1 when not
    if case in ("normal", "huge"):
        assert rel_fro(P.split_gemm(a, b, scaling="matrix"), want) <= 1e-6


def test_split_gemm_batched_and_float64_input(xp, rng):
    a, b = rng.standard_normal((2, 3, 40, 50)) * 1e5, rng.standard_normal((50, 30)) * 1e-5
    got = P.split_gemm(xp.asarray(a), xp.asarray(b))
    assert got.shape == (2, 3, 40, 30) and got.dtype == np.float32
    assert rel_fro(got, a @ b) <= 1e-6


@pytest.mark.parametrize("m, k, n", [(512, 512, 512), (256, 1024, 256)])
def test_split_gemm_wide_range_along_k_is_as_accurate_as_fp32(xp, rng, m, k, n):
    a, b = wide_inner(rng, m, k, n)
    want = a.astype(np.float64) @ b.astype(np.float64)  # the independent reference
    fp32 = xp.matmul(xp.asarray(a), xp.asarray(b))
    got = P.split_gemm(xp.asarray(a), xp.asarray(b))
    assert got.dtype == np.float32 and rel_fro(got, want) <= min(2 * rel_fro(fp32, want), 1e-6)
    assert componentwise(got, a, b, want) <= 2 * max(componentwise(fp32, a, b, want), 2**-24)
    one_scale = P.split_gemm(xp.asarray(a), xp.asarray(b), block=None)  # per row/column over all of k
    assert rel_fro(one_scale, want) > 30 * rel_fro(fp32, want)  # ~7e-5: what the blocks are for


@pytest.mark.parametrize("m, k, n", [(512, 512, 512), (256, 1024, 256), (64, 300, 32)])
def test_split_gemm_ordinary_inputs_keep_fp32_accuracy(xp, rng, m, k, n):
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    fp32 = rel_fro(xp.matmul(xp.asarray(a), xp.asarray(b)), want)
    for block in (P.SPLIT_BLOCK, 64, None):
        got = P.split_gemm(xp.asarray(a), xp.asarray(b), block=block)
        assert rel_fro(got, want) <= min(1.25 * fp32, 1e-6), block


@pytest.mark.parametrize("shape_a, shape_b, block", [((3, 1, 8, 301), (4, 301, 5), 128),
                                                     ((6, 301), (2, 301, 7), 64), ((2, 3, 40, 50), (50, 30), 16)])
def test_split_gemm_batched_broadcast_ragged_k(xp, rng, shape_a, shape_b, block):
    """Batch dimensions broadcast like matmul; k not a multiple of the block (zero padding)."""
    k = shape_a[-1]
    d = np.logspace(-6, 6, k)
    a = (rng.standard_normal(shape_a) * d).astype(np.float32)
    b = (rng.standard_normal(shape_b) / d[:, None]).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    got = P.split_gemm(xp.asarray(a), xp.asarray(b), block=block)
    assert got.shape == want.shape and got.dtype == np.float32
    assert componentwise(got, a, b, want) <= 4 * 2**-24
    batch = want.shape[:-2]
    last = tuple(s - 1 for s in batch)  # the last matrix of the batch, alone, gives the same product
    a1, b1 = (np.broadcast_to(x, batch + x.shape[-2:])[last] for x in (a, b))
    single = backend.to_host(P.split_gemm(xp.asarray(a1), xp.asarray(b1), block=block))
    np.testing.assert_allclose(backend.to_host(got[last]), single, rtol=0, atol=1e-6 * np.abs(single).max())


def test_split_gemm_bounded_temporaries_give_the_same_product(xp, rng, monkeypatch):
    a, b = wide_inner(rng, 3 * 16, 1000, 20)
    a = a.reshape(3, 16, 1000)
    whole = backend.to_host(P.split_gemm(xp.asarray(a), xp.asarray(b), block=100))
    monkeypatch.setattr(P, "_SPLIT_BUFFER", 2 * 16 * 20 * 3)  # two blocks at a time
    pairs = backend.to_host(P.split_gemm(xp.asarray(a), xp.asarray(b), block=100))
    monkeypatch.setattr(P, "_SPLIT_BUFFER", 1)  # one block at a time
    ones = backend.to_host(P.split_gemm(xp.asarray(a), xp.asarray(b), block=100))
    np.testing.assert_allclose(pairs, whole, rtol=1e-6)
    np.testing.assert_allclose(ones, whole, rtol=1e-6)


def test_split_gemm_zero_blocks_rows_columns_and_operands(xp, rng):
    a, b = rng.standard_normal((64, 512)).astype(np.float32), rng.standard_normal((512, 48)).astype(np.float32)
    a[:, 128:256] = 0  # a whole k-block of A
    b[256:384] = 0  # another one of B
    a[5], a[7, :256], b[:, 3] = 0, 0, 0  # a row, a row within two blocks, a column
    want = a.astype(np.float64) @ b.astype(np.float64)
    with np.errstate(divide="raise"):  # an all-zero block gets a scale, not a division by its zero max
        got = backend.to_host(P.split_gemm(xp.asarray(a), xp.asarray(b), block=128))
    assert np.all(np.isfinite(got)) and not got[5].any() and not got[:, 3].any()
    assert rel_fro(got, want) <= 1e-6
    for scaling in ("row", "matrix"):
        zero = backend.to_host(P.split_gemm(xp.zeros((8, 300), np.float32), xp.asarray(b[:300]), scaling))
        assert zero.shape == (8, 48) and not zero.any()
    empty = P.split_gemm(xp.ones((2, 3, 0), np.float32), xp.ones((0, 4), np.float32))
    assert empty.shape == (2, 3, 4) and empty.dtype == np.float32 and not backend.to_host(empty).any()
    assert P.split_gemm(xp.ones((0, 5), np.float32), xp.ones((5, 4), np.float32)).shape == (0, 4)


def test_split_gemm_limit_is_the_range_within_a_block(xp, rng):
    """The documented limit: scales interleaved along k put the whole 1e12 into every block. block=1, or
    sorting k by scale (the same product), brings back fp32 accuracy."""
    a, b = wide_inner(rng, 32, 512, 32, order=rng.permutation(512))
    want = a.astype(np.float64) @ b.astype(np.float64)
    fp32 = rel_fro(xp.matmul(xp.asarray(a), xp.asarray(b)), want)
    assert rel_fro(P.split_gemm(xp.asarray(a), xp.asarray(b)), want) > 30 * fp32
    assert rel_fro(P.split_gemm(xp.asarray(a), xp.asarray(b), block=1), want) <= 2 * fp32
    p = np.argsort(np.max(np.abs(a), axis=0))
    assert rel_fro(P.split_gemm(xp.asarray(a[:, p]), xp.asarray(b[p])), want) <= 2 * fp32


@pytest.mark.parametrize("mode", list(P.MATMUL_MODES))
def test_every_matmul_mode_is_within_its_stated_tolerance(xp, rng, mode):
    a, b = rng.standard_normal((256, 300)), rng.standard_normal((300, 128))
    got = P.matmul(xp.asarray(a.astype(np.float32)), xp.asarray(b.astype(np.float32)), mode)
    want = a.astype(np.float32).astype(np.float64) @ b.astype(np.float32).astype(np.float64)
    assert got.dtype == (np.float64 if mode == "fp64" else np.float32)
    assert rel_fro(got, want) <= P.MATMUL_MODES[mode].rtol
    assert P.MATMUL_MODES[mode].name == mode


# ------------------------------------------------------------------------------------------------ errors
def test_bad_inputs_name_the_argument(xp):
    x = xp.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="^precision: .*got 'fp8'"):
        P.round_to(x, "fp8")
    with pytest.raises(ValueError, match="^precision: .*'fp16x3', got 'fp8'"):
        P.matmul(x, x.T, "fp8")
    for bad in (xp.arange(3), xp.ones(3, dtype=np.complex64)):
        with pytest.raises(TypeError, match="^x: expected a float32 or float64 array, got dtype"):
            P.round_to(bad, "fp16")
    with pytest.raises(TypeError, match="^a: expected"):
        P.lowp_matmul(xp.ones((2, 3), dtype=np.int32), x.T)
    with pytest.raises(ValueError, match=r"^a and b: .*\(2, 3\).*\(4, 5\)"):
        P.lowp_matmul(x, xp.ones((4, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"^a and b: .*\(3,\)"):
        P.split_gemm(x, xp.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="^scaling: expected 'row' or 'matrix', got 'col'"):
        P.split_gemm(x, x.T, scaling="col")
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=rf"^block: expected a positive int or None, got {bad!r}$"):
            P.split_gemm(x, x.T, block=bad)


def test_mixing_numpy_and_cupy_raises_device_error(xp):
    if xp is np:
        pytest.skip("needs cupy arrays to mix with numpy ones")
    with pytest.raises(backend.DeviceError, match="^a and b: "):
        P.lowp_matmul(np.ones((2, 2), np.float32), xp.ones((2, 2), dtype=np.float32))
