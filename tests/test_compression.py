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
    (lambda: C.Truncate(4).compress(np.ones(10)), "field: expected a 2-d floating-point"),
    (lambda: C.get_codec("wavelet"), "codec: expected one of"),
])
def test_bad_parameters(call, match):
    with pytest.raises(ValueError, match=match):
        call()
