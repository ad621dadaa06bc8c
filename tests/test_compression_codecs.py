"""Every gradient codec in CODECS packs bitwise as the reference casts round (ties to even, subnormals,
overflow, inf and NaN) and unpacks exactly, across chunk boundaries and with power-of-two scales."""
import ml_dtypes
import numpy as np
import pytest

from hpcai.parallel.compression import CHUNK, CODECS, get_codec

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
@pytest.mark.parametrize("scale", [1.0, 2.0 ** 9, 2.0 ** -7])
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
