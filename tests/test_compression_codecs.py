"""Every gradient codec in CODECS packs bitwise as the reference casts round (ties to even, subnormals,
overflow, inf and NaN) and unpacks exactly, across chunk boundaries and with power-of-two scales, on both
paths: the compiled loops (numba) and the numpy chunks; and the two paths give the same bits, NaN
payloads and residuals included."""
import ml_dtypes
import numpy as np
import pytest

from hpcai import accel
from hpcai.parallel import compression
from hpcai.parallel.compression import CHUNK, CODECS, get_codec

PATHS = ("compiled", "numpy")


@pytest.fixture(params=PATHS, autouse=True)
def path(request):
    """Every test here runs on the compiled loops and again on the numpy chunks (numba switched off)."""
    if request.param == "numpy":
        with accel.disabled():
            yield request.param
        return
    needs_numba()
    yield request.param


def needs_numba():
    if not compression._pack_fp16_kernel.available:
        pytest.skip("numba is not installed (extra 'fast') or HPCAI_NUMBA=0")

SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 65504, 65519.99, 65520, 6e-8, 2 ** -24,
                     2 ** -25, 3 * 2 ** -26, 1e-45, -1e-45, 1.17e-38, 3.4e38, -3.4e38, 1 + 2 ** -8, 1 + 3 * 2 ** -8],
                    np.float32)


def inputs():
    rng = np.random.default_rng(0)
    n = CHUNK + 77  # two chunks, the second partial
    bits = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)  # every pattern
    wide = (rng.standard_normal(n) * 10.0 ** rng.uniform(-12, 3, n)).astype(np.float32)
    ties = (np.arange(n, dtype=np.uint32) << 13 | 0x1000).view(np.float32)  # exact fp16 midpoints
    ties = np.where(np.isfinite(ties) & (np.abs(ties) < 6e4), ties, np.float32(1))
    wide[::5] = 0
    small = bits[np.abs(bits) < 60]  # finite patterns fp16 holds at every scale below: the fast path's inputs
    return {"specials": SPECIALS, "bits": bits, "small_bits": small, "wide": wide, "ties": ties,
            "ties_bf16": ties * np.float32(1 + 2 ** -9)}


def reference(x, name, scale):
    with np.errstate(all="ignore"):
        y = x.astype(np.float64) * scale  # exact
        return y.astype(np.float16) if name == "fp16" else y.astype(np.float32).astype(ml_dtypes.bfloat16)


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize("scale", [1.0, 2.0 ** 9, 2.0 ** -7, 2.0 ** -33, 2.0 ** -40])
@pytest.mark.parametrize("case", sorted(inputs()))
def test_pack_is_the_correctly_rounded_cast_and_unpack_is_exact(name, scale, case):
    x = inputs()[case]
    codec = get_codec(name)
    words = np.empty(x.size, np.uint16)
    codec.pack(x, words, scale)
    ref = reference(x, name, scale)
    nan = np.isnan(ref.astype(np.float32))
    np.testing.assert_array_equal(words[~nan], ref.view(np.uint16)[~nan])
    assert np.isnan(words.view(codec.dtype)[nan].astype(np.float32)).all()
    if name == "bf16":  # ml_dtypes' quiet NaN, sign kept
        np.testing.assert_array_equal(words[nan] & 0x7FFF, 0x7FC0)
    out = np.full(x.size, 7, np.float32)
    codec.unpack(words, out, 1.0 / scale)
    with np.errstate(all="ignore"):
        expect = ref.astype(np.float32) * np.float32(1.0 / scale)
    np.testing.assert_array_equal(out, expect)
    codec.unpack_sum(np.stack([words, words[::-1].copy()]), out, 1.0 / scale)
    with np.errstate(all="ignore"):
        summed = (ref.astype(np.float32) + ref[::-1].astype(np.float32)) * np.float32(1.0 / scale)
        np.testing.assert_array_equal(out, summed)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_float64_and_odd_inputs_take_the_exact_path(name):
    x = np.array([1 + 2.0 ** -8 + 2.0 ** -40, 1 + 2.0 ** -11 + 2.0 ** -40, -3.0], np.float64)
    words = get_codec(name).pack(x, np.empty(3, np.uint16))
    expect = {"fp16": [1 + 2.0 ** -8, 1 + 2.0 ** -10, -3.0], "bf16": [1 + 2.0 ** -7, 1.0, -3.0]}[name]
    np.testing.assert_array_equal(words.view(get_codec(name).dtype).astype(np.float64), expect)
    with pytest.raises(ValueError, match="codec"):
        get_codec("int8")


@pytest.mark.parametrize("name, scale", [("fp16", 1.0), ("fp16", 2.0 ** 9), ("fp16", 2.0 ** -7), ("bf16", 1.0)])
def test_finite_float32_in_range_takes_the_integer_kernels(name, scale, monkeypatch):
    """The comparisons above hold for the fast kernels, not only for the exact cast they fall back to (bf16
    is only ever scaled by 1: a scaled bf16 takes the exact cast by design)."""
    codec = get_codec(name)
    monkeypatch.setattr(codec, "_pack_reference", lambda *a: pytest.fail("fell back to the exact cast"))
    x = inputs()["small_bits"]
    words = codec.pack(x, np.empty(x.size, np.uint16), scale)
    np.testing.assert_array_equal(words, reference(x, name, scale).view(np.uint16))


def normal_range(k, seed=1):
    """Float32 values whose fp16 (times ``2**k``) is normal or overflows from the top binade: every fp16
    exponent, random mantissas, a third of them exact midpoints between fp16 neighbours, both signs, zeros."""
    rng = np.random.default_rng(seed)
    n = 2 * CHUNK + 5
    e = rng.integers(-14, 16, n)  # fp16's exponents, 15 included (from 65520 on that rounds to inf)
    m = rng.integers(0, 2 ** 23, n, dtype=np.uint64).astype(np.uint32)
    m[::3] = (m[::3] & ~np.uint32(0x1FFF)) | np.uint32(0x1000)  # ties: the 13 bits fp16 drops are 1000...0
    x = ((e + 127 - k).astype(np.uint32) << np.uint32(23) | m).view(np.float32)
    x[1::2] *= -1
    x[::7], x[3::11] = 0.0, -0.0
    x[5:9] = np.array([65520, -(65536 - 2 ** -8), 65520 - 2 ** -8, -65504]) * 2.0 ** -k  # inf, -inf, max, -max
    return x


@pytest.mark.parametrize("k", [0, 9, -7, 21, -37, 99])
def test_fp16_normal_range_takes_the_fast_path_alone(k, monkeypatch):
    """Values in fp16's normal range (ties, both signs, zeros, the top binade rounding to inf) are packed by
    the fast path alone, bitwise as numpy's cast rounds them."""
    codec = get_codec("fp16")
    for name in ("_pack_reference", "_fp16_chunk"):
        monkeypatch.setattr(codec, name, lambda *a, name=name: pytest.fail(f"{name} ran"))
    x = normal_range(k)
    words = codec.pack(x, np.empty(x.size, np.uint16), 2.0 ** k)
    ref = reference(x, "fp16", 2.0 ** k).view(np.uint16)
    assert (ref == 0x7C00).any() and (ref == 0xFC00).any() and (ref == 0x8000).any()  # inf, -inf, -0 made
    np.testing.assert_array_equal(words, ref)


@pytest.mark.parametrize("count", [5, 300])  # a few (numpy's cast) or more (the general kernel) per chunk
@pytest.mark.parametrize("k", [0, 9])
def test_fp16_subnormals_among_normal_values_are_redone_exactly(k, count, monkeypatch):
    codec = get_codec("fp16")
    monkeypatch.setattr(codec, "_pack_reference", lambda *a: pytest.fail("fell back to the exact cast"))
    x = normal_range(k, seed=2)
    rng = np.random.default_rng(3)
    where = np.concatenate([[0, CHUNK - 1, CHUNK, x.size - 1], rng.choice(x.size, count, replace=False)])
    tiny = rng.integers(1, 2 ** 31, where.size, dtype=np.uint64).astype(np.uint32)
    tiny = (tiny % np.uint32((113 - k) << 23)).view(np.float32)  # 0 < |x| < 2**(-14 - k): fp16 subnormals
    edges = [2 ** -25, -3 * 2 ** -26, 2 ** -24 + 2 ** -40, -(2 ** -15 + 2 ** -25 + 2 ** -40)]  # ties and near
    tiny[:4] = np.array(edges) * 2.0 ** -k
    x[where] = tiny * np.where(rng.random(where.size) < 0.5, -1, 1).astype(np.float32)
    words = codec.pack(x, np.empty(x.size, np.uint16), 2.0 ** k)
    ref = reference(x, "fp16", 2.0 ** k).view(np.uint16)
    assert (ref[where] & 0x7C00 == 0).mean() > 0.9  # they really are subnormal (or zero) in fp16
    np.testing.assert_array_equal(words, ref)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_unpack_sum_promised_finite_and_folded_factor_give_the_same_bits(name):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, CHUNK + 9)) * 10.0 ** rng.uniform(-8, 3, (3, CHUNK + 9))).astype(np.float32)
    codec = get_codec(name)
    rows = np.stack([codec.pack(r, np.empty(r.size, np.uint16)) for r in x])
    values = rows.view(codec.dtype).astype(np.float32)
    for factor in (1.0, 2.0 ** -21, 1 / 3):
        out = np.full(x.shape[1], np.nan, np.float32)
        codec.unpack_sum(rows, out, factor, finite=True)
        np.testing.assert_array_equal(out, (values[0] + values[1] + values[2]) * np.float32(factor))


@pytest.mark.parametrize("sign", [1, -1])
def test_fp16_fast_path_rounds_every_float32_of_a_binade_as_numpy_does(sign, monkeypatch):
    """All 2**23 significands in [1, 2): every tie and near-tie pattern of the 13 bits fp16 drops (the
    splitting only sees significands: a power-of-two scale moves it to any other binade)."""
    codec = get_codec("fp16")
    monkeypatch.setattr(codec, "_pack_reference", lambda *a: pytest.fail("fell back to the exact cast"))
    x = (np.uint32(127 << 23) | np.arange(2 ** 23, dtype=np.uint32)).view(np.float32) * np.float32(sign)
    words = codec.pack(x, np.empty(x.size, np.uint16))
    np.testing.assert_array_equal(words, x.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize("scale", [1.0, 2.0 ** 9, 2.0 ** -7, 2.0 ** -20, 2.0 ** -40])
@pytest.mark.parametrize("case", ["specials", "wide", "ties", "small_bits"])
def test_pack_keeps_the_rounding_error_as_the_words_give_it(name, scale, case):
    """``residual`` is ``src - value(words) / scale`` in float32, bitwise, whichever path packed."""
    x = inputs()[case]
    codec = get_codec(name)
    res = np.full(x.size, 7, np.float32)
    words = codec.pack(x, np.empty(x.size, np.uint16), scale, residual=res)
    np.testing.assert_array_equal(words, codec.pack(x, np.empty(x.size, np.uint16), scale))
    with np.errstate(all="ignore"):
        expect = x - words.view(codec.dtype).astype(np.float32) * np.float32(1 / scale)
    np.testing.assert_array_equal(res, expect)
    wide = np.full(x.size, 7.0)  # float64 buffers (and models) take the exact cast, residual included
    codec.pack(x.astype(np.float64), np.empty(x.size, np.uint16), scale, residual=wide)
    with np.errstate(all="ignore"):
        expect = x.astype(np.float64) - reference(x, name, scale).astype(np.float64) * (1 / scale)
    np.testing.assert_array_equal(wide, expect)


def _every_result(name, x, scale, factor):
    """Words, residual, unpacked values and three-row sums (from a 2-D array and from a list) of ``x``."""
    codec, n = get_codec(name), x.size
    words, res = np.empty(n, np.uint16), np.full(n, 7, np.float32)
    with np.errstate(all="ignore"):
        codec.pack(x, words, scale, residual=res)
        alone = codec.pack(x, np.empty(n, np.uint16), scale)
        rows = np.stack([words, words[::-1], np.roll(words, 3)])
        out = [codec.unpack(words, np.empty(n, np.float32), factor),
               codec.unpack_sum(rows, np.empty(n, np.float32), factor),
               codec.unpack_sum(list(rows), np.empty(n, np.float32), factor)]
    return [words, alone, res.view(np.uint32)] + [o.view(np.uint32) for o in out]


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize("k", [0, 9, -7, -37, 99, 100])  # 100: past the kernels' range, the exact cast
@pytest.mark.parametrize("factor", ["unscale", "half", 1 / 3, 2.0 ** 13])
@pytest.mark.parametrize("path", ["compiled"])  # (overrides the fixture: both paths run inside)
def test_compiled_and_numpy_paths_give_the_same_bits(path, name, k, factor):
    """Bit for bit, NaN payloads (signalling ones included), the sign of zeros and residuals of inf and NaN
    too: the comparisons above see every NaN as equal."""
    needs_numba()
    x = inputs()["bits"]
    factor = {"unscale": 2.0 ** -k, "half": 2.0 ** (-k - 1)}.get(factor, factor)
    compiled = _every_result(name, x, 2.0 ** k, factor)
    with accel.disabled():
        reference_bits = _every_result(name, x, 2.0 ** k, factor)
    for what, a, b in zip(["words", "words without residual", "residual", "unpack", "unpack_sum",
                           "unpack_sum of a list"], compiled, reference_bits):
        np.testing.assert_array_equal(a, b, err_msg=what)


@pytest.mark.parametrize("path", ["compiled"])
def test_compiled_path_runs_no_numpy_chunk(path, monkeypatch):
    """With numba every conversion is its compiled loop: none of the numpy chunk kernels runs."""
    needs_numba()
    x = inputs()["wide"]
    for name in sorted(CODECS):
        codec = get_codec(name)
        for method in ("_bf16_chunk", "_fp16_fast_chunk", "_fp16_chunk", "_decode", "_pack_reference"):
            monkeypatch.setattr(codec, method, lambda *a, method=method: pytest.fail(f"{method} ran"))
        words = codec.pack(x, np.empty(x.size, np.uint16), 2.0 ** 9 if name == "fp16" else 1.0,
                           residual=np.empty(x.size, np.float32))
        codec.unpack(words, np.empty(x.size, np.float32), 0.5)
        codec.unpack_sum(np.stack([words, words]), np.empty(x.size, np.float32), 1 / 3)


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize("ratio", [1.0, 2.0, 0.5])
def test_pack_fed_back_is_pack_of_the_sum_in_one_pass(name, ratio):
    """``pack_fed_back(g, out, e, r)`` packs ``g + e * r`` (float32 arithmetic), leaves ``g`` as it was, puts
    the new rounding error in ``e`` and returns the largest ``|g + e * r|``, inf for an inf or NaN."""
    rng = np.random.default_rng(6)
    g = (rng.standard_normal(CHUNK + 33) * 10.0 ** rng.uniform(-6, 2, CHUNK + 33)).astype(np.float32)
    e = (g * rng.uniform(-2 ** -9, 2 ** -9, g.size)).astype(np.float32)
    codec = get_codec(name)
    for special in (None, np.inf, np.nan):
        if special is not None:
            g[7] = special
        before, res = g.copy(), e.copy()
        words = np.empty(g.size, np.uint16)
        largest = codec.pack_fed_back(g, words, res, ratio)
        with np.errstate(all="ignore"):
            v = g + e * np.float32(ratio)
            expect_res = np.empty_like(v)
            expect = codec.pack(v, np.empty(g.size, np.uint16), 1.0, residual=expect_res)
        np.testing.assert_array_equal(g, before)
        np.testing.assert_array_equal(words, expect)
        np.testing.assert_array_equal(res, expect_res)
        assert largest == (float(np.abs(v).max()) if special is None else np.inf)
