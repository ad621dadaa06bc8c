"""DCT codecs: honest byte counts, error bounds from orthonormality, and clear errors."""
import numpy as np
import scipy.fft
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
    assert c.nbytes == c.arrays["bz2"].nbytes + 16 and c.ratio > 5


def test_block_stores_the_coefficients_frequency_major_and_reads_earlier_zlib_streams():
    """The bzip2 stream holds every block's coefficient (0, 0), then (0, 1), ...; a stream of an earlier version
    (zlib, block order) of the same coefficients decodes to the same field."""
    import bz2
    import zlib
    f = jet((40, 64))
    codec = C.Block(step=0.003)
    c = codec.compress(f)
    coef = scipy.fft.dctn(f.reshape(5, 8, 8, 8).transpose(0, 2, 1, 3), type=2, norm="ortho", axes=(2, 3))
    q = np.rint(coef / codec._steps())
    by_frequency = np.frombuffer(bz2.decompress(c.arrays["bz2"].tobytes()), c.params["int"]).reshape(8, 8, 5, 8)
    np.testing.assert_array_equal(by_frequency, q.transpose(2, 3, 0, 1))
    old = C.Compressed("block", c.shape, c.dtype, {"zlib": np.frombuffer(zlib.compress(
        q.astype(c.params["int"]).tobytes()), np.uint8)}, c.params)
    np.testing.assert_array_equal(C.decompress(old), C.decompress(c))


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


# -- every registered codec, and the error-bounded ones (SZ3, ZFP through hdf5plugin) -------------------------
def _needs(name):
    if name in ("sz3", "zfp"):
        pytest.importorskip("hdf5plugin")


@pytest.mark.parametrize("name", list(C.CODECS))
def test_every_codec_counts_the_bytes_it_stores_and_reaches_its_ratio(name):
    _needs(name)
    fields = [jet(), 2 * jet() - 0.5]
    for ratio in (10, 60):
        codec = C.for_ratio(name, fields, ratio)
        if name == "zfp":  # fixed rate too: the largest rate that reaches the ratio
            rate = C.for_ratio(name, fields, ratio, mode="rate")
            assert sum(f.nbytes for f in fields) / sum(rate.compress(f).nbytes for f in fields) >= ratio
        stored = [codec.compress(f) for f in fields]
        for c in stored:
            assert c.nbytes == sum(a.nbytes for a in c.arrays.values()) + 16
        assert sum(f.nbytes for f in fields) / sum(c.nbytes for c in stored) >= ratio
        back = [C.decompress(c) for c in stored]
        assert all(b.shape == f.shape and b.dtype == f.dtype for b, f in zip(back, fields))
        assert C.relative_errors(back[0], fields[0])[0] < 0.5


def test_for_ratio_counts_the_truncation_header():
    """8 x 8 float64 (512 bytes) at ratio 8 leaves 64 bytes: 3 x 3 float32 + 16, not 4 x 4 + 16 (ratio 6.4)."""
    codec = C.Truncate.for_ratio((8, 8), 8)
    assert codec.k == (3, 3) and codec.compress(jet((8, 8))).ratio >= 8


@pytest.mark.parametrize("name, mode, bound, limit", [
    ("sz3", "absolute", 1e-3, lambda f: 1e-3),
    ("sz3", "relative", 1e-3, lambda f: 1e-3 * (f.max() - f.min())),
    ("sz3", "pointwise", 1e-2, lambda f: 1e-2 * abs(f)),
    ("zfp", "absolute", 1e-3, lambda f: 1e-3),
    ("zfp", "relative", 1e-4, lambda f: 1e-4 * (f.max() - f.min())),
])
def test_error_bounded_codecs_keep_their_bound_at_every_point(name, mode, bound, limit):
    _needs(name)
    f = jet((61, 100)) + 0.05 * np.random.default_rng(0).standard_normal((61, 100))
    c = C.get_codec(name, bound=bound, mode=mode).compress(f)
    err = np.abs(C.decompress(c) - f)
    assert np.all(err <= limit(f) * (1 + 1e-9)) and err.max() > 0
    assert c.ratio > 1.5


def test_zfp_fixed_rate_stores_the_rate():
    _needs("zfp")
    c = C.Zfp(8, mode="rate").compress(jet((64, 128)))
    assert c.arrays["stream"].nbytes == pytest.approx(64 * 128, rel=0.05)  # 8 bits a value, plus ZFP's header


def test_stored_streams_read_back_with_plain_h5py(tmp_path):
    """The streams are HDF5 chunks: a reader with h5py + hdf5plugin (xarray too) gets the fields, no hpcai."""
    _needs("sz3")
    import h5py
    fields = np.stack([jet(), jet()[::-1]])
    for name in ("sz3", "zfp"):
        stored = [C.get_codec(name, bound=1e-3).compress(f) for f in fields]
        with h5py.File(tmp_path / f"{name}.h5", "w") as h:
            d = h.create_dataset("x", fields.shape, "<f8", chunks=(1, 64, 128), **C.filter_options(stored[0]))
            for i, c in enumerate(stored):
                d.id.write_direct_chunk((i, 0, 0), c.arrays["stream"].tobytes(), 0)
        pytest.importorskip("hdf5plugin")  # imported: registers the filters for the reader
        with h5py.File(tmp_path / f"{name}.h5", "r") as h:
            back = h["x"][()]
        np.testing.assert_array_equal(back, np.stack([C.decompress(c) for c in stored]))
        assert np.abs(back - fields).max() <= 1e-3


def test_filter_codecs_name_the_extra_without_hdf5plugin(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "hdf5plugin", None)
    with pytest.raises(ImportError, match=r"hdf5plugin: pip install 'hpcai\[io\]'"):
        C.Sz3(1e-3).compress(jet())


@pytest.mark.parametrize("call, match", [
    (lambda: C.Sz3(0), "bound: expected a finite number > 0, got 0"),
    (lambda: C.Zfp(1e-3, mode="pointwise"), "mode: expected one of 'absolute', 'relative', 'rate', 'precision'"),
    (lambda: C.for_ratio("lz4", [jet()], 10), "codec: expected one of"),
    (lambda: C.for_ratio("block", [jet()], 0.5), r"ratio: expected a finite number > 1"),
])
def test_bad_filter_parameters(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_guard_keeps_a_point_wise_bound_after_any_restoration():
    """Whatever a network adds, clamping to the codec's band and the stored corrections bound every point."""
    _needs("sz3")
    f, bound = jet(), 2e-3
    dec = C.decompress(C.Sz3(bound).compress(f))
    rng = np.random.default_rng(1)
    restored = f + rng.normal(0, bound, f.shape)  # a restoration better than the codec at most points ...
    restored[rng.integers(0, 64, 50), rng.integers(0, 128, 50)] += 1.0  # ... and badly wrong at a few
    clamped = C.clamp(restored, dec, bound)
    assert np.abs(clamped - f).max() <= 2 * bound * (1 + 1e-12)
    for tight in (bound, bound / 10):  # any bound, also one tighter than the codec's
        corrections = C.guard(clamped, f, tight)
        out = C.apply_guard(clamped, corrections, tight)
        assert np.abs(out - f).max() <= tight
        wrong = np.abs(clamped - f) > tight
        np.testing.assert_array_equal(out[~wrong], clamped[~wrong])  # only the points beyond the bound change
        multiples = (out - clamped)[wrong] / (C.GUARD_UNIT * tight)  # whole multiples of the unit
        np.testing.assert_allclose(multiples, np.rint(multiples), rtol=0, atol=1e-6)
        assert 0 < wrong.sum() and corrections.nbytes < 8 * wrong.sum()
    assert C.guard(f, f, bound).nbytes == 1  # nothing to correct: the layout byte alone
    with pytest.raises(ValueError, match=r"bound: 10.0 is below float64 round-off"):  # values 1e16 bounds
        C.guard(np.full((4, 4), 1e17), np.full((4, 4), 1e17 + 48), 10.0)  # 8.4 left, rounded to 16 apart
    with pytest.raises(ValueError, match="bound: expected a finite number > 0"):
        C.guard(clamped, f, -1.0)


@pytest.mark.parametrize("share", [0.01, 0.4])
def test_guard_codes_sparse_and_dense_corrections_and_restores_them_exactly(share):
    rng = np.random.default_rng(1)
    original = rng.standard_normal((48, 96))
    restored = original.copy()
    hit = rng.random(original.shape) < share
    restored[hit] += rng.choice([-1, 1], hit.sum()) * rng.uniform(1.5, 300, hit.sum())  # beyond int8 multiples
    stored = C.guard(restored, original, 1.0)
    assert stored[0] == 3  # int16 multiples of 2 * bound
    out = C.apply_guard(restored, stored, 1.0)
    assert np.abs(out - original).max() <= 1.0 and np.array_equal(out[~hit], restored[~hit])
    assert stored.nbytes < hit.sum() * 4 + 16  # under 4 bytes a correction, position and value, and a header


@pytest.mark.parametrize("layout", ["gaps", "bitmap"])
def test_apply_guard_reads_the_sparse_corrections_of_earlier_versions(layout):
    """Files of earlier versions hold the corrected points as gaps or a bitmap, then int8 multiples of the bound."""
    import zlib
    restored = np.zeros((4, 8))
    idx, q = np.array([1, 5, 30]), np.array([2, -3, 1], np.int8)
    if layout == "gaps":
        data = b"\0" + zlib.compress(bytes([0]) + np.diff(idx, prepend=0).astype(np.uint8).tobytes() + q.tobytes())
    else:
        mask = np.zeros(32, bool)
        mask[idx] = True
        where = zlib.compress(np.packbits(mask).tobytes())
        data = b"\1" + len(where).to_bytes(4, "little") + where + zlib.compress(bytes([0]) + q.tobytes())
    out = C.apply_guard(restored, np.frombuffer(data, np.uint8), 0.5)
    expected = np.zeros(32)
    expected[idx] = q * 0.5
    np.testing.assert_array_equal(out.reshape(-1), expected)
