"""Convolution, pooling and pixel shuffle beyond the registry's gradient checks: independent references
(nested loops, the adjoint identity), float32 against PyTorch on larger shapes, tiling, and the errors."""
import itertools

import numpy as np
import pytest

from hpcai import Tensor, accel, backend, no_grad, ops
from hpcai.ops import conv as conv_module
from hpcai.ops import pool as pool_module
from hpcai.ops import threads as threads_module


def _t(xp, a, dtype=np.float64, grad=False):
    return Tensor(xp.asarray(np.asarray(a, dtype=dtype)), requires_grad=grad)


def _host(a):
    return backend.to_host(a.data if isinstance(a, Tensor) else a)


def _loop_conv2d(x, w, b, stride, padding, dilation, groups):
    """Definition of the cross-correlation, one output element at a time."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, o, ho, wo))
    og = o // groups
    for i, k, r, q in itertools.product(range(n), range(o), range(ho), range(wo)):
        g = k // og
        acc = b[k] if b is not None else 0.0
        for ci, a, e in itertools.product(range(cg), range(kh), range(kw)):
            acc += w[k, ci, a, e] * xp_[i, g * cg + ci, r * sh + a * dh, q * sw + e * dw]
        y[i, k, r, q] = acc
    return y


# -- independent references (no torch) -----------------------------------------------------------------
@pytest.mark.parametrize("stride,padding,dilation,groups", [
    ((1, 1), (0, 0), (1, 1), 1), ((2, 1), (1, 2), (1, 1), 1), ((1, 2), (2, 1), (2, 1), 2), ((2, 2), (1, 1), (1, 2), 4)])
def test_conv2d_matches_nested_loops(xp, rng, stride, padding, dilation, groups):
    x = rng.standard_normal((2, 4, 7, 8))
    w = rng.standard_normal((4, 4 // groups, 3, 2))
    b = rng.standard_normal(4)
    got = ops.conv2d(_t(xp, x), _t(xp, w), _t(xp, b), stride, padding, dilation, groups)
    np.testing.assert_allclose(_host(got), _loop_conv2d(x, w, b, stride, padding, dilation, groups), atol=1e-12)


@pytest.mark.parametrize("stride,padding,dilation,groups,kernel", [
    (1, 0, 1, 1, (3, 3)), (2, 1, 1, 1, (3, 3)), (3, 2, 2, 2, (3, 2)), (1, 2, 1, 1, (1, 1)), (2, 0, 1, 3, (2, 4))])
def test_conv_transpose2d_is_the_adjoint_of_conv2d(xp, rng, stride, padding, dilation, groups, kernel):
    """<conv2d(x, w), y> == <x, conv_transpose2d(y, w)> for every x and y: the definition of the adjoint."""
    n, c, o, h, wd = 2, 3 * groups, 2 * groups, 9, 8
    x = rng.standard_normal((n, c, h, wd))
    w = rng.standard_normal((o, c // groups) + kernel)
    y = ops.conv2d(_t(xp, x), _t(xp, w), None, stride, padding, dilation, groups)
    gy = rng.standard_normal(y.shape)
    # output_padding recovers the rows/columns a strided conv2d drops, so the shapes match exactly
    out_pad = tuple((s + 2 * padding - dilation * (k - 1) - 1) % stride for s, k in zip((h, wd), kernel))
    xt = ops.conv_transpose2d(_t(xp, gy), _t(xp, w), None, stride, padding, out_pad, dilation, groups)
    assert xt.shape == x.shape
    lhs, rhs = float((_host(y) * gy).sum()), float((x * _host(xt)).sum())
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


def test_tiling_and_adjoint_paths_agree(xp, rng, monkeypatch):
    """Every tile layout (whole batch, batch chunks, row chunks by bytes or by pixels), any number of threads
    sharing the tiles, and both forms of the adjoint give one answer."""
    x = rng.standard_normal((3, 4, 9, 7))
    w = rng.standard_normal((6, 2, 3, 3))
    g = rng.standard_normal((3, 6, 9, 7))

    def run(stride=1):
        xt, wt = _t(xp, x, grad=True), _t(xp, w, grad=True)
        y = ops.conv2d(xt, wt, None, stride, 1, 1, 2)
        y.backward(xp.asarray(g[:, :, :y.shape[2], :y.shape[3]]))
        return _host(y), _host(xt.grad), _host(wt.grad)

    for stride in (1, 2):
        want = run(stride)
        for tile_bytes, adjoint, threads, pixels in [(10**9, 3, 1, 10**9), (4 * 4 * 9 * 7 * 8 * 2, 3, 2, 10**9),
                                                     (64, 3, 2, 10**9), (64, 0, 3, 10**9), (64, 3, 5, 10**9),
                                                     (10**9, 0, 2, 10**9), (10**9, 3, 2, 14), (10**9, 0, 1, 20)]:
            monkeypatch.setattr(conv_module, "_TILE_BYTES", tile_bytes)
            monkeypatch.setattr(conv_module, "_TILE_OUTPUTS", 3 * pixels)     # few columns: rows capped
            monkeypatch.setattr(conv_module, "_ADJOINT_AS_CONV", adjoint)
            monkeypatch.setattr(conv_module, "workers", lambda: threads)
            for a, b in zip(run(stride), want):
                np.testing.assert_allclose(a, b, atol=1e-12)
        monkeypatch.undo()


@pytest.mark.parametrize("stride,padding,dilation,groups,kernel", [
    (2, 1, 1, 1, (3, 3)), (1, 1, 1, 1, (3, 3)), ((2, 3), (0, 2), (2, 1), 2, (3, 2)), (2, 0, 1, 1, (1, 1))])
def test_col2im_compiled_fold_equals_numpy(rng, monkeypatch, stride, padding, dilation, groups, kernel):
    """dL/dx by columns (``_col2im``): the compiled fold of a tile (``_fold``) and numpy's add per kernel offset
    give the same gradient for whole-batch, row and one-sample tiles on one or three threads, and the float32
    gradient matches PyTorch's."""
    if not conv_module._fold.available:
        pytest.skip("numba not installed")
    x = rng.standard_normal((3, 2 * groups, 11, 10))
    w = rng.standard_normal((4 * groups, 2) + kernel) / 3
    gy = None

    def run(dtype=np.float64):
        nonlocal gy
        xt = _t(np, x, dtype, True)
        y = ops.conv2d(xt, _t(np, w, dtype), None, stride, padding, dilation, groups)
        gy = rng.standard_normal(y.shape) if gy is None else gy
        y.backward(gy.astype(dtype))
        return _host(xt.grad)

    monkeypatch.setattr(conv_module, "_ADJOINT_AS_CONV", 0)                       # the adjoint by columns
    for tile_bytes, threads in [(10**9, 1), (8 * 10 * 8, 3), (1, 1)]:
        monkeypatch.setattr(conv_module, "_TILE_BYTES", tile_bytes)
        monkeypatch.setattr(conv_module, "workers", lambda: threads)
        got = run()
        with accel.disabled():
            want = run()
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x.astype(np.float32), requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, torch.tensor(w.astype(np.float32)), None, stride, padding, dilation, groups)
    ty.backward(torch.from_numpy(gy.astype(np.float32)))
    np.testing.assert_allclose(run(np.float32), tx.grad.numpy(), rtol=1e-4, atol=1e-4)


# The stride-1 kernels and their block-size constants; the (block bytes, threads) tried: whole samples, one
# row, a few rows such that some threads' blocks are a sample's short last one, and (shifted views) two
# samples to a block, one thread's blocks then of two sizes.
_STRIDE1_PATHS = {
    "shifted": ("_flat_ok", "_FLAT_BYTES", lambda c, o: [(10**9, 1), (1, 2), (c * 13 * 8 * 4, 3),
                                                         (c * 13 * 8 * 6, 4), (c * 13 * 15 * 8 * 2, 1)]),
    "output-side": ("_narrow_ok", "_NARROW_BYTES", lambda c, o: [(10**9, 1), (1, 2), ((c + o * 6) * 13 * 8 * 5, 3),
                                                                 ((c + o * 6) * 13 * 8 * 9, 4)]),
}


@pytest.mark.parametrize("path,c,o,kernel,padding,dilation", [
    ("shifted", 16, 8, (3, 3), 1, 1), ("shifted", 20, 1, (5, 5), 2, 1), ("shifted", 16, 4, (2, 3), (0, 1), (2, 1)),
    ("shifted", 8, 16, (3, 3), 1, 1), ("shifted", 40, 20, (3, 3), 1, 1), ("shifted", 16, 16, (3, 3), 1, 1),
    ("output-side", 32, 1, (5, 5), 2, 1), ("output-side", 20, 2, (3, 3), 1, 1),
    ("output-side", 27, 3, (3, 3), (0, 1), (2, 1)), ("output-side", 12, 1, (2, 3), 0, (1, 2))])
def test_stride1_paths_match_im2col(xp, rng, monkeypatch, path, c, o, kernel, padding, dilation):
    """The stride-1 kernels (shifted views; output side for few outputs) agree with im2col in forward, dL/dx
    (through the convolution form of the adjoint) and dL/dw, for any block size and thread count, with the
    shifted views' kernel-row products summed by numba (``_add_taps``) or by numpy, and with PyTorch in
    float32. Each case takes its path in forward or in the adjoint."""
    taken, block_name, block_sizes = _STRIDE1_PATHS[path]
    ok = getattr(conv_module, taken)
    assert ok(np, np.empty((1, c, 1, 1)), np.empty((o, c) + kernel), (1, 1), 1) or \
        ok(np, np.empty((1, o, 1, 1)), np.empty((c, o) + kernel), (1, 1), 1)
    x = rng.standard_normal((3, c, 9, 11))
    w = rng.standard_normal((o, c) + kernel) / np.sqrt(c * kernel[0] * kernel[1])
    b = rng.standard_normal(o)

    def run(dtype=np.float64):
        xt, wt, bt = _t(xp, x, dtype, True), _t(xp, w, dtype, True), _t(xp, b, dtype, True)
        y = ops.conv2d(xt, wt, bt, 1, padding, dilation)
        y.backward(xp.asarray(np.ones(y.shape, dtype) + np.arange(y.size, dtype=dtype).reshape(y.shape) % 3))
        return _host(y), _host(xt.grad), _host(wt.grad), _host(bt.grad)

    monkeypatch.setattr(conv_module, "_NARROW_RATIO", 0)                 # im2col only: the reference
    monkeypatch.setattr(conv_module, "_FLAT_CHANNELS", 10**9)
    want = run()
    monkeypatch.undo()
    for block_bytes, threads in block_sizes(c, o):
        monkeypatch.setattr(conv_module, block_name, block_bytes)
        monkeypatch.setattr(conv_module, "workers", lambda: threads)
        for got, ref in zip(run(), want):                          # compiled sums of the taps where numba is
            np.testing.assert_allclose(got, ref, atol=1e-12)
        with accel.disabled():                                     # numpy's adds
            for got, ref in zip(run(), want):
                np.testing.assert_allclose(got, ref, atol=1e-12)
        monkeypatch.undo()
    _agrees_with_torch_fp32(run, x, w, b, padding, dilation)


def _agrees_with_torch_fp32(run, x, w, b, padding, dilation):
    """``run(np.float32)`` -> (y, dx, dw, db) of a stride-1 conv2d against PyTorch's, with the same output grad."""
    torch = pytest.importorskip("torch")
    tx, tw, tb = (torch.tensor(a.astype(np.float32), requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, 1, padding, dilation)
    ty.backward(torch.from_numpy(np.ones(ty.shape, np.float32) + np.arange(ty.numel(), dtype=np.float32).reshape(
        ty.shape) % 3))
    for got, ref in zip(run(np.float32), (ty, tx.grad, tw.grad, tb.grad)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref.detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c,o,kernel,stride,padding,dilation", [
    (32, 64, (3, 3), 1, 1, 1), (32, 64, (3, 3), 2, 1, 1), (40, 64, (2, 3), (2, 1), (0, 1), (2, 1)),
    (64, 64, (3, 3), 1, 1, 1), (32, 32, (3, 3), 1, 1, 1)])
def test_channels_last_path_matches_im2col(rng, monkeypatch, c, o, kernel, stride, padding, dilation):
    """The channels-last path (forward, dL/dx through the convolution form of the adjoint at stride 1, dL/dw)
    agrees with im2col for blocks of all samples, of one, of one sample's rows one or a few at a time, and any
    number of threads, and with PyTorch in float32."""
    assert conv_module._last_ok(np, np.empty((1, c, 1, 1)), np.empty((o, c) + kernel), (1, 1), 1)
    x = rng.standard_normal((5, c, 9, 8))
    w = rng.standard_normal((o, c) + kernel) / np.sqrt(c * kernel[0] * kernel[1])
    b = rng.standard_normal(o)
    gy = None

    def run(dtype=np.float64):
        nonlocal gy
        xt, wt, bt = _t(np, x, dtype, True), _t(np, w, dtype, True), _t(np, b, dtype, True)
        y = ops.conv2d(xt, wt, bt, stride, padding, dilation)
        taken = y._ctx.last
        gy = (np.ones(y.shape) + np.arange(y.size).reshape(y.shape) % 3) if gy is None else gy
        y.backward(gy.astype(dtype))
        return taken, _host(y), _host(xt.grad), _host(wt.grad), _host(bt.grad)

    monkeypatch.setattr(conv_module, "_LAST_CHANNELS", (10**9, 10**9))     # im2col / shifted views: the reference
    taken, *want = run()
    assert not taken
    monkeypatch.undo()
    for tile_bytes, threads in [(10**9, 1), (1, 2), (50_000, 2), (10**9, 3)]:
        monkeypatch.setattr(conv_module, "_TILE_BYTES", tile_bytes)
        monkeypatch.setattr(conv_module, "workers", lambda: threads)
        taken, *got = run()
        assert taken
        for a, ref in zip(got, want):
            np.testing.assert_allclose(a, ref, atol=1e-12)
        monkeypatch.undo()
    torch = pytest.importorskip("torch")
    tx, tw, tb = (torch.tensor(a.astype(np.float32), requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride, padding, dilation)
    ty.backward(torch.from_numpy(gy.astype(np.float32)))
    for a, ref in zip(run(np.float32)[1:], (ty, tx.grad, tw.grad, tb.grad)):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, ref.detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_sample_blocks_cover_the_batch_once_and_share_it_evenly(monkeypatch, threads):
    """The channels-last and shifted-view paths cut the batch into blocks no larger than their cache budget,
    each sample once, and deal them out so that no thread has more than one block more than another (the CBED
    network's 32 -> 32 layer on 2 threads was cut 11 against 21 samples). Where one sample's columns exceed the
    budget, the channels-last path cuts its rows instead, each (sample, row) once."""
    monkeypatch.setattr(conv_module, "workers", lambda: threads)
    budget = conv_module._TILE_BYTES
    for n in range(1, 70):
        for sample_bytes in (1, 1 << 16, 295 << 10, 1 << 20, 4 << 20, 8 << 20, 105 << 20):
            ho = 7 if n % 2 else 128
            most = max(1, min(budget // sample_bytes, -(-n // threads)))
            lists = conv_module._last_blocks(n, ho, sample_bytes)
            blocks = [b for part in lists for b in part]
            cells = sorted((s, r) for b, nb, r0, nr in blocks for s in range(b, b + nb) for r in range(r0, r0 + nr))
            assert cells == [(s, r) for s in range(n) for r in range(ho)]
            if sample_bytes <= budget:
                assert all(nr == ho for *_, nr in blocks) and max(nb for _, nb, *_ in blocks) <= most
                shares = [sum(nb for _, nb, *_ in part) for part in lists]
                assert max(shares) - min(shares) <= max(nb for _, nb, *_ in blocks), (n, sample_bytes, lists)
            else:
                rows = max(1, budget * ho // sample_bytes)
                assert all(nb == 1 and nr <= rows for _, nb, _, nr in blocks)
                assert sample_bytes * rows // ho <= budget or rows == 1
                counts = [len(part) for part in lists]
                assert max(counts) - min(counts) <= 1
    if threads == 2:
        assert [sum(nb for _, nb, *_ in part) for part in conv_module._last_blocks(32, 16, 295 << 10)] == [16, 16]
        flat = conv_module._flat_blocks(np.zeros((32, 16, 34, 34), np.float32), (3, 3), (1, 1), (32, 32))
        assert [sum(nb for _, nb, *_ in part) for part in flat] == [16, 16]


def test_channels_last_path_is_taken_for_many_channels_only():
    """At least 32 inputs and 64 outputs, one group, a kernel larger than 1x1, a BLAS dtype, and neither the
    shifted-view nor the output-side path taking the layer; or at least 32 inputs and as many outputs on a map
    of at most 16x16."""
    ok, x = conv_module._last_ok, np.empty((1, 64, 8, 8), np.float32)
    assert ok(np, x, np.empty((64, 64, 3, 3), np.float32), (1, 1), 1)
    assert ok(np, x[:, :32], np.empty((64, 32, 3, 3), np.float32), (2, 2), 1)
    assert ok(np, x[:, :32], np.empty((32, 32, 3, 3), np.float32), (1, 1), 1)         # as many outputs, 8x8
    assert ok(np, np.empty((1, 32, 16, 16), np.float32), np.empty((32, 32, 3, 3), np.float32), (1, 1), 1)
    big = np.empty((1, 32, 32, 17), np.float32)
    assert not ok(np, big, np.empty((32, 32, 3, 3), np.float32), (1, 1), 1)           # larger map: shifted views
    assert not ok(np, x, np.empty((32, 64, 3, 3), np.float32), (1, 1), 1)             # fewer outputs: shifted views
    assert not ok(np, big[:, :16], np.empty((32, 16, 3, 3), np.float32), (1, 1), 1)   # 16 inputs: im2col
    assert not ok(np, x[:, :16], np.empty((64, 16, 3, 3), np.float32), (1, 1), 1)     # 16 inputs
    assert not ok(np, x, np.empty((64, 64, 1, 1), np.float32), (1, 1), 1)             # 1x1: im2col is no copy
    assert not ok(np, x, np.empty((64, 32, 3, 3), np.float32), (1, 1), 2)
    assert not ok(np, np.zeros(x.shape, np.float16), np.zeros((64, 64, 3, 3), np.float16), (1, 1), 1)


@pytest.mark.parametrize("groups", [1, 3])
def test_few_column_layers_match_im2col(rng, monkeypatch, groups):
    """A layer with few columns per pixel (3 -> 16 3x3, and 3 groups of 6 -> 6) by whole-sample columns with
    the bias carried by a row of ones, GEMMs over runs of pixels that split output rows, blocks of one, of three
    (4 samples: 3 + 1) and of all samples, and row blocks of a sample, for one to three threads, against the plain
    tiles of im2col; and against PyTorch in float32."""
    c, o = (3, 16) if groups == 1 else (6, 18)                  # 3x3 columns per group: 27, or 18
    x = rng.standard_normal((4, c, 11, 13))
    w = rng.standard_normal((o, c // groups, 3, 3)) / 5
    b = rng.standard_normal(o)
    gy = rng.standard_normal((4, o, 11, 13))

    def run(dtype=np.float64):
        xt, wt, bt = _t(np, x, dtype, True), _t(np, w, dtype, True), _t(np, b, dtype, True)
        y = ops.conv2d(xt, wt, bt, 1, 1, 1, groups)
        y.backward(gy.astype(dtype))
        return _host(y), _host(xt.grad), _host(wt.grad), _host(bt.grad)

    monkeypatch.setattr(conv_module, "_SHORT_COLUMNS", (0, 0))                  # plain tiles: the reference
    want = run()
    monkeypatch.undo()
    sample = c * 9 * 11 * 13 * 8                                # bytes of one sample's columns
    for pixels, tile_bytes, block_bytes, threads in [(100, 10**9, 1, 1), (20, 10**9, 10**9, 3),
                                                     (30, 10**9, 3 * sample, 1), (40, 27 * 13 * 8 * 3, 10**9, 2),
                                                     (7, 1, 10**9, 1)]:
        monkeypatch.setattr(conv_module, "_TILE_OUTPUTS", pixels * (o // groups))
        monkeypatch.setattr(conv_module, "_TILE_BYTES", tile_bytes)
        monkeypatch.setattr(conv_module, "_SHORT_BYTES", block_bytes)
        monkeypatch.setattr(conv_module, "workers", lambda: threads)
        monkeypatch.setattr(threads_module, "workers", lambda: threads)
        monkeypatch.setattr(threads_module, "_LEAST", 1)
        for a, ref in zip(run(), want):
            np.testing.assert_allclose(a, ref, atol=1e-12)
        monkeypatch.undo()
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(conv_module, "_TILE_OUTPUTS", 20 * (o // groups))
    tx, tw, tb = (torch.tensor(a.astype(np.float32), requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, 1, 1, 1, groups)
    ty.backward(torch.from_numpy(gy.astype(np.float32)))
    for a, ref in zip(run(np.float32), (ty, tx.grad, tw.grad, tb.grad)):
        np.testing.assert_allclose(a, ref.detach().numpy(), rtol=1e-4, atol=1e-4)


def test_output_side_path_is_taken_only_for_few_outputs():
    """O·kh·kw at most C, stride 1, one group, a kernel larger than 1x1, a BLAS dtype."""
    ok, x = conv_module._narrow_ok, np.empty((1, 32, 8, 8), np.float32)
    assert ok(np, x, np.empty((1, 32, 5, 5), np.float32), (1, 1), 1)
    assert not ok(np, x, np.empty((2, 32, 5, 5), np.float32), (1, 1), 1)       # 50 > 32
    assert not ok(np, x, np.empty((1, 32, 5, 5), np.float32), (2, 2), 1)
    assert not ok(np, x, np.empty((2, 16, 3, 3), np.float32), (1, 1), 2)
    assert not ok(np, x, np.empty((4, 32, 1, 1), np.float32), (1, 1), 1)
    assert not ok(np, np.zeros(x.shape, np.float16), np.zeros((1, 32, 3, 3), np.float16), (1, 1), 1)


def test_shifted_view_path_is_taken_where_it_wins():
    """Stride 1, one group, many input channels and at most half as many outputs (more than 16 only with a
    kernel of at most 3x3), or as many as the inputs up to 32 of them with a kernel of at most 3x3; not
    otherwise."""
    ok = conv_module._flat_ok
    x, w = np.empty((1, 32, 8, 8), np.float32), np.empty((16, 32, 3, 3), np.float32)
    assert ok(np, x, w, (1, 1), 1)
    assert not ok(np, x, w, (2, 1), 1) and not ok(np, x, w[:, :16], (1, 1), 2)
    assert ok(np, x, np.empty((32, 32, 3, 3), np.float32), (1, 1), 1)          # as many outputs as inputs up
    assert ok(np, x[:, :16], np.empty((16, 16, 3, 3), np.float32), (1, 1), 1)  # to 32 channels, 3x3 at most
    assert not ok(np, x[:, :16], np.empty((16, 16, 5, 5), np.float32), (1, 1), 1)
    assert not ok(np, x[:, :16], np.empty((32, 16, 3, 3), np.float32), (1, 1), 1)   # more outputs than inputs
    assert not ok(np, np.empty((1, 64, 8, 8), np.float32), np.empty((64, 64, 3, 3), np.float32), (1, 1), 1)
    assert ok(np, np.empty((1, 64, 8, 8), np.float32), np.empty((32, 64, 3, 3), np.float32), (1, 1), 1)
    assert not ok(np, np.empty((1, 64, 8, 8), np.float32), np.empty((32, 64, 5, 5), np.float32), (1, 1), 1)
    assert not ok(np, x, np.empty((16, 32, 1, 1), np.float32), (1, 1), 1)      # 1x1: im2col is no copy
    assert not ok(np, np.zeros(x.shape, np.float16), np.zeros(w.shape, np.float16), (1, 1), 1)  # no float16 BLAS


@pytest.mark.parametrize("shape, args", [((2, 3, 8, 8), (2,)), ((2, 3, 7, 9), (2,)), ((2, 3, 9, 9), (3, 2)),
                                         ((1, 2, 6, 7), ((2, 3), (1, 2))), ((1, 2, 9, 10), ((2, 3), (3, 4))),
                                         ((2, 2, 7, 7), ((3, 1), (1, 1)))])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_max_pool2d_indices_route_like_torch_with_many_ties(shape, args, dtype, rng):
    """Without padding or NaN, backward routes by the indices forward kept: first maximum, as in PyTorch."""
    torch = pytest.importorskip("torch")
    x = np.maximum(np.round(rng.standard_normal(shape) * 2) / 2, 0).astype(dtype)  # zeros and repeated values
    x[0, 0, 0, :3] = -np.inf
    t = Tensor(x, requires_grad=True)
    y = ops.max_pool2d(t, *args)
    assert y._ctx.index is not None
    g = rng.standard_normal(y.shape).astype(dtype)
    y.backward(g)
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(tx, *args).backward(torch.from_numpy(g))
    np.testing.assert_array_equal(y.numpy(), torch.nn.functional.max_pool2d(torch.from_numpy(x), *args).numpy())
    np.testing.assert_allclose(t.grad, tx.grad.numpy(), rtol=1e-6, atol=1e-12)  # sums of overlaps: any order


def test_max_pool2d_keeps_indices_only_when_a_backward_can_run(monkeypatch, rng):
    kept, forward = [], pool_module.MaxPool2d.forward

    def spy(self, x):
        out = forward(self, x)
        kept.append(self.index is not None)
        return out

    monkeypatch.setattr(pool_module.MaxPool2d, "forward", spy)
    x = rng.standard_normal((2, 3, 8, 8))
    trained = ops.max_pool2d(Tensor(x, requires_grad=True), 2)
    with no_grad():
        inferred = ops.max_pool2d(Tensor(x, requires_grad=True), 2)
    constant = ops.max_pool2d(Tensor(x), 2)
    assert kept == [True, False, False]
    np.testing.assert_array_equal(inferred.numpy(), trained.numpy())
    np.testing.assert_array_equal(constant.numpy(), trained.numpy())


def test_max_pool2d_ties_go_to_the_first_maximum(xp):
    x = _t(xp, np.ones((1, 1, 4, 4)), grad=True)
    ops.max_pool2d(x, 2).sum().backward()
    want = np.zeros((4, 4))
    want[::2, ::2] = 1.0
    np.testing.assert_array_equal(_host(x.grad)[0, 0], want)


@pytest.mark.parametrize("shape, args", [((2, 3, 8, 8), (2,)), ((2, 3, 7, 9), (2,)), ((2, 3, 9, 9), (3, 2, 1)),
                                         ((1, 2, 6, 6), ((2, 3), (1, 2), (1, 1)))])
def test_max_pool2d_gradient_matches_torch_with_many_ties(shape, args, rng):
    torch = pytest.importorskip("torch")
    x = np.maximum(np.round(rng.standard_normal(shape) * 2) / 2, 0)  # after a ReLU: zeros and repeated values
    x[0, 0, 1, 1] = np.nan  # its windows output NaN and route no gradient anywhere
    g = rng.standard_normal(ops.max_pool2d(Tensor(x), *args).shape)
    t = Tensor(x, requires_grad=True)
    ops.max_pool2d(t, *args).backward(g)
    tx = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.max_pool2d(tx, *args)
    ref.backward(torch.from_numpy(g))
    finite = ~np.isnan(ref.detach().numpy()).any(axis=(2, 3), keepdims=True)  # torch sends NaN windows' grads
    np.testing.assert_array_equal(ops.max_pool2d(Tensor(x), *args).numpy(), ref.detach().numpy())
    np.testing.assert_allclose(np.where(finite, t.grad, 0), np.where(finite, tx.grad.numpy(), 0), atol=1e-12)


@pytest.mark.parametrize("args", [(2,), (3, 2, 1)])
def test_max_pool2d_infinite_gradient_reaches_only_the_maxima(args, rng):
    x = Tensor(rng.standard_normal((1, 2, 6, 6)), requires_grad=True)
    y = ops.max_pool2d(x, *args)
    g = np.ones(y.shape)
    g[0, 0, 0, 0] = np.inf
    y.backward(g)
    ref = Tensor(x.data.copy(), requires_grad=True)
    ops.max_pool2d(ref, *args).backward(np.where(np.isinf(g), 1.0, g))
    routed = ref.grad != 0  # where the windows' maxima are
    assert not np.isnan(x.grad).any() and np.all(x.grad[~routed] == 0)
    assert np.isinf(x.grad).sum() >= 1


def test_pooling_values(xp):
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(_host(ops.max_pool2d(_t(xp, x), 2))[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(_host(ops.max_pool2d(_t(xp, -x), 3, 2, 1))[0, 0], [[0, -1], [-4, -5]])
    # avg pool counts the zero padding: the corner window holds x[0,0], x[0,1], x[1,0], x[1,1] of 9
    corner = _host(ops.avg_pool2d(_t(xp, x), 3, 2, 1))[0, 0, 0, 0]
    assert corner == pytest.approx((0 + 1 + 4 + 5) / 9)


def test_pixel_shuffle_layout(xp, rng):
    r, x = 3, rng.standard_normal((2, 2 * 9, 3, 4))
    y = _host(ops.pixel_shuffle(_t(xp, x), r))
    assert y.shape == (2, 2, 9, 12)
    for c, i, j in itertools.product(range(2), range(r), range(r)):
        np.testing.assert_array_equal(y[:, c, i::r, j::r], x[:, c * r * r + i * r + j])


@pytest.mark.parametrize("name", ["conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "pixel_shuffle"])
def test_float32_in_float32_out(xp, rng, name):
    x = _t(xp, rng.standard_normal((2, 4, 8, 8)), np.float32, grad=True)
    w = _t(xp, rng.standard_normal((4, 2, 3, 3)), np.float32, grad=True)
    b = _t(xp, rng.standard_normal(4 if name == "conv2d" else 2), np.float32, grad=True)
    calls = {"conv2d": lambda: ops.conv2d(x, w, b, padding=1, groups=2),
             "conv_transpose2d": lambda: ops.conv_transpose2d(x, w, b, stride=2),
             "max_pool2d": lambda: ops.max_pool2d(x, 2), "avg_pool2d": lambda: ops.avg_pool2d(x, 3, 1, 1),
             "pixel_shuffle": lambda: ops.pixel_shuffle(x, 2)}
    y = calls[name]()
    assert y.dtype == np.float32
    y.sum().backward()
    for t in (x, w, b) if "conv" in name else (x,):
        assert t.grad.dtype == np.float32


# -- float32 against PyTorch on larger shapes ------------------------------------------------------------
def test_float32_matches_torch_on_a_larger_case(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal((4, 8, 32, 32)).astype(np.float32)
    w = (rng.standard_normal((16, 8, 3, 3)) / 9).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    g = rng.standard_normal((4, 16, 32, 32)).astype(np.float32)
    ours = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    theirs = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    y = ops.conv2d(*ours, stride=1, padding=1)
    ref = F.conv2d(*theirs, stride=1, padding=1)
    y.backward(g)
    ref.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y.numpy(), ref.detach().numpy(), rtol=1e-4, atol=1e-4)
    for a, t in zip(ours, theirs):
        np.testing.assert_allclose(a.grad, t.grad.numpy(), rtol=1e-4, atol=1e-5 * float(np.abs(t.grad.numpy()).max()))
    yt = ops.conv_transpose2d(Tensor(x), Tensor(w.transpose(1, 0, 2, 3).copy()), None, 2, 1, 1)
    ref = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w.transpose(1, 0, 2, 3).copy()), None, 2, 1, 1)
    np.testing.assert_allclose(yt.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ops.max_pool2d(Tensor(x), 3, 2, 1).numpy(), F.max_pool2d(torch.from_numpy(x), 3, 2, 1))
    np.testing.assert_allclose(ops.avg_pool2d(Tensor(x), 2).numpy(), F.avg_pool2d(torch.from_numpy(x), 2), rtol=1e-6)


# -- errors name the argument, say what was expected and what came --------------------------------------
def _z(*shape, dtype=np.float32):
    return Tensor(np.zeros(shape, dtype))


@pytest.mark.parametrize("call,error,match", [
    (lambda: ops.conv2d(_z(3, 5, 5), _z(2, 3, 3, 3)), ValueError, r"conv2d: x must be 4-d .*got shape \(3, 5, 5\)"),
    (lambda: ops.conv2d(_z(1, 3, 5, 5), _z(2, 3, 3)), ValueError, r"conv2d: weight must be 4-d"),
    (lambda: ops.conv2d(_z(1, 3, 5, 5), _z(2, 4, 3, 3)), ValueError,
     r"conv2d: x has 3 channels but weight expects 4 \(weight shape \(2, 4, 3, 3\)"),
    (lambda: ops.conv2d(_z(1, 3, 5, 5), _z(4, 1, 3, 3), groups=2), ValueError,
     r"x's 3 channels are not divisible by groups=2"),
    (lambda: ops.conv2d(_z(1, 4, 5, 5), _z(3, 2, 3, 3), groups=2), ValueError,
     r"weight's 3 output channels are not divisible by groups=2"),
    (lambda: ops.conv2d(_z(1, 4, 5, 5), _z(3, 4, 3, 3), groups=0), ValueError, r"groups: expected an integer >= 1"),
    (lambda: ops.conv2d(_z(1, 1, 2, 2), _z(1, 1, 3, 3)), ValueError, r"kernel \(3, 3\).*larger than the padded input"),
    (lambda: ops.conv2d(_z(1, 1, 5, 5), _z(1, 1, 3, 3), dilation=3), ValueError, r"extent 7 with dilation 3"),
    (lambda: ops.conv2d(_z(1, 1, 5, 5), _z(2, 1, 3, 3), _z(3)), ValueError, r"bias must have shape \(2,\).*got \(3,\)"),
    (lambda: ops.conv2d(_z(1, 1, 5, 5), _z(2, 1, 3, 3), stride=0), ValueError, r"stride must be a positive int"),
    (lambda: ops.conv2d(_z(1, 1, 5, 5), _z(2, 1, 3, 3), stride=(1, 2, 3)), ValueError, r"stride.*got \(1, 2, 3\)"),
    (lambda: ops.conv2d(_z(1, 1, 5, 5), _z(2, 1, 3, 3), stride=1.5), ValueError, r"stride.*got 1.5"),
    (lambda: ops.conv2d(_z(1, 1, 5, 5), _z(2, 1, 3, 3), padding=-1), ValueError, r"padding must be a non-negative"),
    (lambda: ops.conv2d(_z(1, 1, 5, 5), _z(2, 1, 3, 3), padding="full"), ValueError, r"padding must be .*'same'"),
    (lambda: ops.conv2d(_z(1, 1, 5, 5), _z(2, 1, 3, 3), stride=2, padding="same"), ValueError,
     r"padding='same' needs stride 1"),
    (lambda: ops.conv2d(_z(1, 1, 5, 5), _z(2, 1, 3, 3), dilation=(1, 0)), ValueError, r"dilation must be a positive"),
    (lambda: ops.conv2d(_z(1, 1, 5, 5), _z(2, 1, 3, 3, dtype=np.float64)), TypeError,
     r"x and weight must have the same dtype, got float32 and float64"),
    (lambda: ops.conv2d(_z(1, 1, 5, 5), _z(2, 1, 3, 3), _z(2, dtype=np.float64)), TypeError,
     r"bias must have x's dtype"),
    (lambda: ops.conv2d(_z(1, 1, 5, 5, dtype=np.int64), _z(2, 1, 3, 3)), TypeError, r"x must be a floating-point"),
    (lambda: ops.conv_transpose2d(_z(1, 3, 4, 4), _z(4, 2, 3, 3)), ValueError,
     r"conv_transpose2d: x has 3 channels but weight expects 4"),
    (lambda: ops.conv_transpose2d(_z(1, 4, 4, 4), _z(4, 2, 3, 3), stride=2, output_padding=2), ValueError,
     r"output_padding must be smaller than stride or dilation"),
    (lambda: ops.conv_transpose2d(_z(1, 4, 2, 2), _z(4, 2, 1, 1), padding=1), ValueError,
     r"padding=\(1, 1\) removes the whole output"),
    (lambda: ops.conv_transpose2d(_z(1, 4, 2, 2), _z(4, 2, 3, 3), _z(4)), ValueError, r"bias must have shape \(2,\)"),
    (lambda: ops.max_pool2d(_z(2, 5, 5), 2), ValueError, r"max_pool2d: x must be 4-d"),
    (lambda: ops.max_pool2d(_z(1, 1, 2, 2), 3), ValueError, r"kernel_size \(3, 3\) is larger than the padded input"),
    (lambda: ops.avg_pool2d(_z(1, 1, 4, 4), 2, padding=2), ValueError, r"padding must be at most half the kernel"),
    (lambda: ops.avg_pool2d(_z(1, 1, 4, 4), 2, stride=0), ValueError, r"avg_pool2d: stride must be a positive"),
    (lambda: ops.max_pool2d(_z(1, 1, 4, 4), (2, 0)), ValueError, r"kernel_size must be a positive"),
    (lambda: ops.pixel_shuffle(_z(1, 6, 2, 2), 2), ValueError, r"x's 6 channels are not divisible by upscale_factor"),
    (lambda: ops.pixel_shuffle(_z(1, 4, 2, 2), 0), ValueError, r"upscale_factor: expected an integer >= 1"),
])
def test_errors_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("shape, args", [((1, 2, 5, 5), (3, 2, 1)), ((2, 1, 6, 7), ((2, 3), (1, 2), (1, 1))),
                                         ((1, 1, 4, 4), (2, 1, 1)), ((1, 2, 6, 6), (2,))])
def test_max_pool2d_all_minus_inf_windows_match_torch(shape, args, rng):
    """A window holding only -inf (input cells and -inf padding) outputs -inf and sends its gradient to
    its first cell inside the input, as torch does; none is lost in the padding."""
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape)
    x[:, :, :3, :3] = -np.inf  # the top-left windows, padding included, hold nothing else
    x[..., -1] = -np.inf       # and the right column's windows, where they reach into the padding
    g = rng.standard_normal(ops.max_pool2d(Tensor(x), *args).shape)
    t = Tensor(x, requires_grad=True)
    y = ops.max_pool2d(t, *args)
    y.backward(g)
    tx = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.max_pool2d(tx, *args)
    ref.backward(torch.from_numpy(g))
    assert np.isneginf(ref.detach().numpy()).any()
    np.testing.assert_array_equal(y.numpy(), ref.detach().numpy())
    np.testing.assert_allclose(t.grad, tx.grad.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(t.grad.sum(), g.sum(), rtol=1e-12)  # every window's gradient reaches x


@pytest.mark.parametrize("stride", [1, 2])
def test_an_empty_batch_gives_empty_outputs_and_zero_weight_gradients(xp, stride):
    x = _t(xp, np.zeros((0, 3, 8, 8)), grad=True)
    w, b = _t(xp, np.ones((4, 3, 3, 3)), grad=True), _t(xp, np.ones(4), grad=True)
    y = ops.conv2d(x, w, b, stride=stride, padding=1)
    assert y.shape == (0, 4, 8 // stride, 8 // stride)
    y.sum().backward()
    assert x.grad.shape == x.shape and not _host(w.grad).any() and not _host(b.grad).any()
    wt = _t(xp, np.ones((3, 4, 3, 3)), grad=True)
    z = ops.conv_transpose2d(x, wt, stride=stride)
    assert z.shape[:2] == (0, 4)
    z.sum().backward()
    assert not _host(wt.grad).any()
    for pooled in (ops.max_pool2d(x, 2), ops.relu(x)):
        assert pooled.shape[:2] == (0, 3)
        x.grad = None
        pooled.sum().backward()
        assert x.grad.shape == x.shape


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 7, 9), (1, 1, 2, 2)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 3])
def test_max_pool2d_compiled_path_equals_numpy(monkeypatch, rng, shape, dtype, threads):
    """2x2 max pooling by the numba kernels and by the numpy passes: the same output, indices and input
    gradient, with ties, -inf windows, a NaN window (whose backward falls back to finding the maxima), an
    infinite output gradient and odd sizes (the last row or column in no window)."""
    if not pool_module._max_pool_2x2.available:
        pytest.skip("numba not installed")
    monkeypatch.setattr(threads_module, "workers", lambda: threads)
    monkeypatch.setattr(threads_module, "_LEAST", 1)
    monkeypatch.setattr(threads_module, "_BLOCK", 8)
    x = np.maximum(np.round(rng.standard_normal(shape) * 2) / 2, 0).astype(dtype)  # many ties
    x[0, 0, 0, :2] = x[0, 0, 1, :2] = -np.inf
    gy = rng.standard_normal(shape[:2] + (shape[2] // 2, shape[3] // 2)).astype(dtype)
    gy[-1, -1, -1, -1] = np.inf

    def run(x):
        t = Tensor(x, requires_grad=True)
        y = ops.max_pool2d(t, 2)
        index = y._ctx.index.copy()
        y.backward(gy)
        return y.numpy(), index, t.grad

    for data in (x, np.where(np.arange(x.size).reshape(x.shape) == x.size - 1, np.nan, x).astype(dtype)):
        got = run(data)
        with accel.disabled():
            want = run(data)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[2], want[2])
        kept = ~np.isnan(want[0])                      # a NaN window's index is never used
        np.testing.assert_array_equal(got[1][kept], want[1][kept])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relu_compiled_path_equals_numpy(monkeypatch, rng, dtype):
    """ReLU by the numba loops and by numpy, batch shared among three threads: the same output (NaN kept,
    -inf to 0) and input gradient (an infinite output gradient at a zero output gives NaN in both)."""
    from hpcai.ops import elementwise
    if not elementwise._relu_rows.available:
        pytest.skip("numba not installed")
    monkeypatch.setattr(threads_module, "workers", lambda: 3)
    monkeypatch.setattr(threads_module, "_LEAST", 1)
    monkeypatch.setattr(threads_module, "_BLOCK", 16)
    x = rng.standard_normal((5, 3, 4, 6)).astype(dtype)
    x[0, 0, 0, :5] = [np.nan, -np.inf, np.inf, 0.0, -0.0]
    gy = rng.standard_normal(x.shape).astype(dtype)
    gy[0, 0, 0, 1], gy[0, 0, 1, :2] = np.inf, [np.inf, np.nan]

    def run():
        t = Tensor(x, requires_grad=True)
        y = ops.relu(t)
        y.backward(gy)
        return y.numpy(), t.grad

    got = run()
    with accel.disabled(), np.errstate(invalid="ignore"):
        want = run()
    for a, b in zip(got, want):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)
    assert np.isnan(got[1][0, 0, 0, 1]) and got[0][0, 0, 0, 1] == 0
