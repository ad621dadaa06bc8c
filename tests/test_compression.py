"""DCT codecs: honest byte counts, error bounds from orthonormality, and clear errors."""
import numpy as np
import pytest

from hpcai.sim import compression as C


def jet(shape=(64, 128)):
    y, x = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(0, 2 * np.pi, shape[1], endpoint=False),
                       indexing="ij")
    return np.exp(-((y - 0.3) / 0.08) ** 2) * (1 + 0.2 * np.cos(3 * x)) + 0.1 * y


def test_truncate_keeping_everything_is_exact_to_float32():
    f = jet()
    c = C.Truncate(f.shape).compress(f)
    np.testing.assert_allclose(C.decompress(c), f, atol=1e-6)


def test_truncate_counts_bytes_and_error_falls_with_k(xp):
    f = xp.asarray(jet())
    errors = []
    for k in (8, 16, 32):
        c = C.Truncate(k).compress(f)
        assert c.nbytes == k * k * 4 + 16
        assert c.ratio == pytest.approx(64 * 128 * 8 / (k * k * 4 + 16))
        errors.append(C.relative_errors(C.decompress(c, xp), f)[0])
    assert errors[0] > errors[1] > errors[2]


def test_for_ratio_reaches_the_ratio():
    c = C.Truncate.for_ratio((128, 256), 100).compress(np.ones((128, 256)))
    assert c.ratio >= 100


def test_block_error_is_bounded_by_the_quantiser(xp):
    f = xp.asarray(jet((61, 100)))  # not a multiple of the block size: edge padding
    codec = C.Block(step=0.01, block=8, slope=0.5)
    c = codec.compress(f)
    restored = C.decompress(c, xp)
    assert restored.shape == f.shape and restored.dtype == f.dtype
    # orthonormal per-block DCT: the error's energy equals the quantisation error's, at most step_ij / 2 each
    nblocks = int(np.ceil(61 / 8) * np.ceil(100 / 8))
    bound = np.sqrt(nblocks * ((codec._steps() / 2) ** 2).sum())
    assert float(np.sqrt(((restored - f) ** 2).sum())) <= bound
    assert c.nbytes == c.arrays["zlib"].nbytes + 16 and c.ratio > 5


@pytest.mark.parametrize("call, match", [
    (lambda: C.Truncate(0), "k: the codec must keep at least one"),
    (lambda: C.Truncate.for_ratio((8, 8), 1e6), "ratio: 1000000.0 would keep no coefficient"),
    (lambda: C.Truncate(100).compress(jet()), r"k: \(100, 100\) exceeds"),
    (lambda: C.Block(step=0), "step: expected a positive"),
    (lambda: C.Block(step=float("inf")), "step: expected a positive finite"),
    (lambda: C.Block(step=0.1, block=2.5), "block: expected an integer"),
    (lambda: C.Block(step=0.1, slope=-0.1), r"slope: expected a finite number keeping every step positive \(> -0.0714"),
    (lambda: C.Block(step=0.1, slope=float("nan")), "slope: expected a finite number"),
    (lambda: C.Truncate(4).compress(np.ones(10)), "field: expected a 2-d floating-point"),
    (lambda: C.get_codec("wavelet"), "codec: expected one of"),
])
def test_bad_parameters(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("codec", [C.Truncate(4), C.Block(step=0.01)])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_fields_are_refused(xp, codec, bad):
    """A NaN or inf would spread over every DCT coefficient (and wrap around in the block codec's integers)."""
    f = jet((16, 16))
    f[3, 5] = bad
    with pytest.raises(ValueError, match="field: expected finite values, got 1 NaN or infinite of 256"):
        codec.compress(xp.asarray(f))


def test_block_widens_the_integers_for_a_small_step(xp):
    """Coefficients beyond int32 are stored as int64 and come back to the quantiser's accuracy, not wrapped."""
    f = xp.asarray(1e3 * jet((16, 24)))
    codec = C.Block(step=1e-9)  # the 8x8 DC coefficients reach ~1e12 steps: beyond int32, within int64
    c = codec.compress(f)
    assert c.params["int"] == np.dtype(np.int64).str
    restored = C.decompress(c, xp)
    assert float(abs(restored - f).max()) < 1e-6


def test_block_refuses_a_step_beyond_int64(xp):
    f = xp.asarray(1e3 * jet((16, 16)))
    with pytest.raises(ValueError, match=r"step: 1e-300 quantises a coefficient of .* beyond int64; use a step "
                                         r"of at least"):
        C.Block(step=1e-300).compress(f)
    with pytest.raises(ValueError, match=r"step: 5e-324 quantises"):  # coefficient / step overflows to inf
        C.Block(step=5e-324).compress(f)
