"""2-d convolutions over NCHW tensors: ``conv2d`` and its adjoint ``conv_transpose2d``.

Both rest on one core. A convolution is im2col + GEMM: the padded input is viewed (``as_strided``,
no copy) as columns (N, C·kh·kw, Ho·Wo), copied once, and multiplied by the weight (O, C·kh·kw); with
the batch leading the columns, the product lands in NCHW order with no transpose. On the CPU this runs
in tiles of a few samples (or rows) whose columns stay in cache, so columns are never stored: the weight
gradient rebuilds them. A layer with few columns per pixel (a 3-channel input layer) copies a whole sample's
columns at once, with a row of ones that carries the bias, and multiplies them a few thousand pixels at a
time (``_tile_pixels``), where its GEMM, short in its inner dimension, runs faster (``_short_pass``). The tiles
are shared among threads (``threads.parallel``), each copying its own columns, so no core idles while
another copies. The adjoint (the input gradient, which *is* the transposed convolution) multiplies by the
transposed weight and folds the columns back (col2im: one vectorised add per kernel offset, or where numba
is installed one compiled pass per tile, ``_fold``). At stride 1 the adjoint is itself a convolution (of the
output gradient with the flipped weight), which skips the big column gradient and the kh·kw folding passes;
it is used there when it moves fewer bytes. Groups are a leading axis of the GEMMs: (G, O/G, K/G) @ (N, G, K/G, L).

At stride 1 with many input channels the CPU copies kw times the input instead of kh·kw times
(``_flat_conv``, ``_flat_weight_grad``): a sample's padded input, flattened to (C, Hp·Wp), shifted by
i·Wp + j is the (C, Ho·Wp) operand of kernel offset (i, j), on a grid Wp wide whose last Wp - Wo columns
are dropped. The kw shifts of one kernel row are copied once as columns (C·kw, ·); kernel row i is
those columns shifted by i·Wp, a strided view that BLAS reads in place. So the convolution is kh GEMMs
(O, C·kw) @ (C·kw, rows·Wp) summed (where numba is installed, summed and cropped to Wo in one compiled pass,
``_add_taps``), and the weight gradient kh GEMMs (C·kw, rows·Wp) @ (rows·Wp, O), in
blocks of a few rows that stay in cache, or of several small samples (one batched GEMM per kernel row).
Weight gradients are computed transposed, (K, O) rather than (O, K): a GEMM whose long axis is its first
runs 1.5x faster in OpenBLAS when O is a few dozen.

With many channels on small maps (at least 32 inputs and 64 outputs, e.g. 64 -> 64 3x3 on 8x8, or at least
32 inputs and as many outputs on maps of at most 16x16) the CPU works channels-last (``_last_conv``,
``_last_weight_grad``): the input is padded into (N, Hp, Wp, C), where a kernel row's kw·C values of a pixel
are contiguous, so the columns (pixels, kh·kw·C) are copied in runs of kw·C instead of runs of Wo (8 values
on an 8x8 map), and each block of samples is one GEMM (pixels, K) @ (K, O) with K and O both large; the
output is transposed back to NCHW in cache. Where one sample's columns exceed the tile budget (large maps: the
input gradient of SRCNN's 64 -> 32 5x5 layer on 128x256, 105 MB of columns a sample) a block is a run of a
sample's rows: that pass 467 -> 344 ms (one thread, batch 8), PyTorch's 342 ms.

With fewer outputs still (O·kh·kw <= C, e.g. 32 -> 1 5x5) every product above is a matrix-vector one; the
output-side path (``_narrow_conv``, ``_narrow_weight_grad``) instead multiplies the flattened input in place,
(O·kh·kw, C) @ (C, ·), and shifts the O·kh·kw product rows onto the output grid, one channel's worth each.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import accel, checks
from ..autograd.function import Function
from .common import expect_float, expect_ndim
from .registry import Sample, register
from .threads import batch_parts, over_batch, parallel, workers

# Geometry travels as plain tuples: stride (sh, sw), pads ((top, bottom), (left, right)) where a negative
# pad crops, dilation (dh, dw), and the output size (Ho, Wo). The core works on inputs already padded.

# Bytes of columns per GEMM on the CPU: small enough that a tile's columns are still in cache when the
# GEMM reads them (and that the buffer is recycled by malloc instead of page-faulted in afresh), large
# enough that each GEMM is efficient. On a GPU one tile of up to 64× this is better.
_TILE_BYTES = 4 << 20
# GEMMs of a layer with few columns per pixel (16 <= C·kh·kw < 64 per group: an input layer of 3 channels,
# 3x3) write at most this many output values (outputs per group x pixels of a sample): the GEMM's inner
# dimension is short, and over a longer run of pixels it ran 1.2-1.5x slower, over a shorter one up to 1.2x
# (forward and dL/dw of 3 -> 16 on 64x64: 2048 pixels best; 3 -> 32 on 128x128: 1024; 3 -> 64 on 64x64:
# 512, forward 13.9 -> 9.3 ms from 1024; one thread, batch 32, CPU time). With fewer columns (1 channel,
# 3x3) so small a tile costs more in calls than it gains.
_TILE_OUTPUTS = 1 << 15
_SHORT_COLUMNS = (16, 64)
# Bytes of columns such a layer copies, and multiplies in one call, per block of samples (2 MiB: 4 samples of
# 3 -> 16 3x3 on 64x64; 1 and 4 MiB were 1.03-1.09x slower on 2 threads).
_SHORT_BYTES = 2 << 20


def _pad(xp, x, pads):
    """Zero-pad the last two axes of ``x`` by ``pads``; negative amounts crop instead. On the CPU the
    batch is shared among threads (``threads.over_batch``)."""
    (t, b), (l, r) = pads
    if min(t, b, l, r) < 0:
        h, w = x.shape[-2:]
        x = x[..., max(-t, 0):h - max(-b, 0), max(-l, 0):w - max(-r, 0)]
        (t, b), (l, r) = (max(t, 0), max(b, 0)), (max(l, 0), max(r, 0))
    if not (t or b or l or r):
        return x
    (n, c, h, w) = x.shape
    out = xp.empty((n, c, h + t + b, w + l + r), x.dtype)

    def part(s):
        o = out[s]
        o[:, :, :t], o[:, :, t + h:], o[:, :, t:t + h, :l], o[:, :, t:t + h, l + w:] = 0, 0, 0, 0
        o[:, :, t:t + h, l:l + w] = x[s]

    over_batch(xp, part, n, out.size)
    return out


def _tiles(xp, n, ho, row_bytes):
    """(batch slice, output-row slice) pairs covering n × ho with at most about one tile budget of columns
    each; batch tiles come in a multiple of the CPU threads, of equal sizes, so that each thread gets the
    same work."""
    rows = max(1, (_TILE_BYTES if xp is np else 64 * _TILE_BYTES) // row_bytes)
    if rows < ho:  # one sample's columns exceed the budget: split its rows
        return [(slice(b, b + 1), slice(r, min(r + rows, ho))) for b in range(n) for r in range(0, ho, rows)]
    if n == 0:
        return []
    parts = min(workers(), n) if xp is np else 1
    count = _block_count(n, rows // ho, parts)
    edges = [n * i // count for i in range(count + 1)]
    return [(slice(a, b), slice(0, ho)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _block_count(n, per, parts):
    """Blocks of at most ``per`` of ``n`` samples, as many as a multiple of the ``parts`` threads, so that equal
    blocks give the threads equal shares (32 samples of 14 at most on 2 threads: 4 blocks of 8, not 11 + 11 + 10
    shared 11 against 21: the CBED network's 32 -> 32 layer)."""
    return math.ceil(math.ceil(n / per) / parts) * parts


def _even(n, per, parts):
    """Samples per block of :func:`_block_count`'s blocks."""
    return max(1, math.ceil(n / _block_count(n, per, parts)))


def _column_tiles(xp, xpad, tiles, ksize, stride, dilation, groups, wo):
    """im2col, one tile at a time: yields (batch slice, row slice, columns (nb, G, C/G·kh·kw, rows·Wo)).

    Each tile is one copy of an ``as_strided`` view into a buffer reused by every tile, rows ordered
    (c, i, j) like the weight's; a tile must be consumed before the next is made.
    """
    if not tiles:  # an empty batch
        return
    c = xpad.shape[1]
    (kh, kw), (sh, sw), (dh, dw) = ksize, stride, dilation
    s0, s1, s2, s3 = xpad.strides
    buf = xp.empty(max((b.stop - b.start) * (r.stop - r.start) for b, r in tiles) * c * kh * kw * wo, xpad.dtype)
    for bs, rs in tiles:
        nb, nr = bs.stop - bs.start, rs.stop - rs.start
        view = xp.lib.stride_tricks.as_strided(xpad[bs, :, rs.start * sh:], (nb, c, kh, kw, nr, wo),
                                               (s0, s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw))
        cols = buf[:view.size].reshape(view.shape)
        xp.copyto(cols, view)
        yield bs, rs, cols.reshape(nb, groups, -1, nr * wo)


def _run(xp, fn, tiles):
    """[fn(run) for run in runs], the tiles cut into one run per CPU thread (``threads.parallel``; one run
    on a GPU) only between samples, so that no two runs write the same sample."""
    parts = workers() if xp is np and tiles else 1
    starts = [k for k, (bs, _) in enumerate(tiles) if k == 0 or bs.start != tiles[k - 1][0].start] or [0]
    cuts = [starts[len(starts) * p // parts] for p in range(parts)] + [len(tiles)]
    return parallel(fn, [tiles[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a] or [tiles])


def _conv_pass(xp, xpad, w, stride, dilation, groups, out_hw, y=None, gy=None, bias=None):
    """One sweep over the column tiles of the padded input ``xpad``: writes the convolution by ``w`` (plus
    ``bias``, added while the tile is in cache) into ``y`` (N, G, O/G, Ho·Wo) when given, and returns
    dL/dw for the output gradient ``gy`` when given."""
    g, o, (kh, kw), wo = groups, w.shape[0], w.shape[2:], out_hw[1]
    k = xpad.shape[1] // g * kh * kw
    if xp is np and _SHORT_COLUMNS[0] <= k < _SHORT_COLUMNS[1] and out_hw[0] * wo > _tile_pixels(o // g):
        return _short_pass(xpad, w, stride, dilation, groups, out_hw, y, gy, bias)
    w3 = w.reshape(g, o // g, -1)
    bias = bias.reshape(g, o // g, 1) if bias is not None else None
    gy = gy.reshape(gy.shape[0], g, o // g, out_hw[0] * out_hw[1]) if gy is not None else None
    tiles = _tiles(xp, xpad.shape[0], out_hw[0], k * g * wo * xpad.itemsize)

    def work(run):  # dL/dw as its transpose (G, K/G, O/G): the long column axis leads the GEMM, 1.5x faster
        gwt = xp.zeros(w3.swapaxes(1, 2).shape, w.dtype) if gy is not None else None
        for bs, rs, cols in _column_tiles(xp, xpad, run, (kh, kw), stride, dilation, groups, wo):
            part = (bs, slice(None), slice(None), slice(rs.start * wo, rs.stop * wo))
            if y is not None:
                xp.matmul(w3, cols, out=y[part])
                if bias is not None:
                    y[part] += bias
            if gy is not None:
                gwt += xp.matmul(cols, gy[part].swapaxes(-1, -2)).sum(axis=0)
        return gwt

    grads = _run(xp, work, tiles)
    return xp.ascontiguousarray(sum(grads).swapaxes(1, 2)).reshape(w.shape) if gy is not None else None


def _tile_pixels(outputs):
    """Pixels per GEMM of a layer with few columns per pixel and ``outputs`` outputs per group."""
    return max(1, _TILE_OUTPUTS // outputs)


def _chunked(a, pixels):
    """The whole ``pixels``-long runs at the start of the last axis of ``a`` (nb, G, m, P) as one stack of views
    (nb, P // pixels, G, m, pixels), and how many pixels they cover."""
    full = a.shape[-1] // pixels
    return np.moveaxis(a[..., :full * pixels].reshape(a.shape[:-1] + (full, pixels)), -2, 1), full * pixels


def _short_pass(xpad, w, stride, dilation, groups, out_hw, y=None, gy=None, bias=None):
    """``_conv_pass`` on the CPU for a layer with few columns per pixel (``_SHORT_COLUMNS``: a 3-channel input
    layer): the columns of a block of samples (about ``_SHORT_BYTES``; of a block of a sample's rows where one
    sample's exceed ``_TILE_BYTES``) are copied at once, with a row of ones that carries the bias through the
    GEMM, and the GEMMs run over ``_tile_pixels`` pixels at a time, where such a GEMM, short in its inner
    dimension, is fastest: all of a block's GEMMs are one stacked ``matmul``. Copying whole samples' columns
    instead of one small tile at a time, and adding the bias inside the GEMM, took the CBED network's 3 -> 16 3x3
    layer on 64x64 from 4.4 to 2.4 ms forward and 3.3 to 2.6 ms for dL/dw (batch 32, one thread, CPU time). Fewer
    numpy calls matter most on several threads, where each call may wait for the GIL: one call per block instead
    of one per sample and run of pixels took forward and dL/dw together from 5.5 to 2.9 ms on 2 threads (4.9 to
    4.4 ms on one; medians of alternating blocks)."""
    n, c = xpad.shape[:2]
    g, o, (kh, kw), (ho, wo) = groups, w.shape[0], w.shape[2:], out_hw
    (sh, sw), (dh, dw), kg = stride, dilation, c // g * kh * kw
    ones = y is not None and bias is not None
    w3 = w.reshape(g, o // g, kg)
    if ones:  # the bias as one more column of the weight, times the row of ones
        w3 = np.concatenate([w3, bias.reshape(g, o // g, 1).astype(w.dtype, copy=False)], axis=2)
    rows = max(1, min(ho, _TILE_BYTES // (kg * g * wo * xpad.itemsize)))
    per = max(1, _SHORT_BYTES // (kg * g * ho * wo * xpad.itemsize)) if rows == ho else 1
    pixels = _tile_pixels(o // g)
    gy = gy.reshape(n, g, o // g, ho * wo) if gy is not None else None
    out = y.reshape(n, g, o // g, ho * wo) if y is not None else None
    s0, s1, s2, s3 = xpad.strides

    def work(part):
        buf = np.empty((per, g, kg + ones, rows * wo), xpad.dtype)
        if ones:
            buf[:, :, kg] = 1
        gwt = np.zeros((g, kg, o // g), w.dtype) if gy is not None else None
        for b in range(part.start, part.stop, per):
            nb = min(per, part.stop - b)
            for r in range(0, ho, rows):
                nr = min(rows, ho - r)
                view = np.lib.stride_tricks.as_strided(xpad[b:, :, r * sh:], (nb, g, c // g, kh, kw, nr, wo),
                                                       (s0, s1 * (c // g), s1, s2 * dh, s3 * dw, s2 * sh, s3 * sw))
                cols = buf[:nb, :, :, :nr * wo]
                np.copyto(cols[:, :, :kg].reshape(view.shape), view)
                stack, covered = _chunked(cols, pixels)
                at = slice(r * wo, (r + nr) * wo)
                if out is not None:
                    dest = out[b:b + nb, :, :, at]
                    np.matmul(w3, stack, out=_chunked(dest, pixels)[0])
                    if covered < nr * wo:
                        np.matmul(w3, cols[..., covered:], out=dest[..., covered:])
                if gy is not None:
                    src = gy[b:b + nb, :, :, at]
                    gwt += np.matmul(stack[..., :kg, :], _chunked(src, pixels)[0].swapaxes(-1, -2)).sum(axis=(0, 1))
                    if covered < nr * wo:
                        gwt += np.matmul(cols[:, :, :kg, covered:], src[..., covered:].swapaxes(-1, -2)).sum(axis=0)
        return gwt

    grads = parallel(work, batch_parts(n, n * kg * g * ho * wo))
    return np.ascontiguousarray(sum(grads).swapaxes(1, 2)).reshape(w.shape) if gy is not None else None


def _conv(xp, xpad, w, stride, dilation, groups, out_hw, bias=None):
    """The convolution of the padded input ``xpad`` by ``w``, plus ``bias``: (N, O, Ho, Wo)."""
    if _narrow_ok(xp, xpad, w, stride, groups) and xpad.shape[0]:
        return _narrow_conv(xp, xpad, w, dilation, out_hw, bias)
    if _flat_ok(xp, xpad, w, stride, groups) and xpad.shape[0]:
        return _flat_conv(xp, xpad, w, dilation, out_hw, bias)
    n, o = xpad.shape[0], w.shape[0]
    y = xp.empty((n, groups, o // groups, out_hw[0] * out_hw[1]), w.dtype)
    _conv_pass(xp, xpad, w, stride, dilation, groups, out_hw, y=y, bias=bias)
    return y.reshape((n, o) + tuple(out_hw))


# The shifted-view path needs stride 1, one group, a BLAS dtype, a kernel larger than 1x1, at least this many
# input channels and no more outputs than half the inputs: there im2col's one GEMM has few rows and its columns
# (C·kh·kw per pixel) dwarf the output, and the path wins (1.3x on 32 -> 16 3x3, 1.3-1.5x on 32 -> 1 5x5; by
# CPU time 1.2-1.4x on 64 -> 32 and 1.2x on 128 -> 64 3x3, the adjoints of a CBED-like net's layers). With
# more than this many outputs it is kept to kernels of at most 3x3: at 64 -> 32 5x5 the two are even.
_FLAT_CHANNELS = 16
# Up to this many input channels it also takes as many outputs as inputs (3x3 or smaller): there the im2col
# GEMM (O, C·9) @ (C·9, ·) has too few rows to hide the copy of its columns, and the path is 1.5x faster on
# 16 -> 16 3x3 on 32x32 (forward, dL/dx and dL/dw together, batch 32: the CBED application's first residual
# block; one thread, CPU time), 1.15x on 32 -> 32 on 16x16; from 64 -> 64 on, im2col is as fast or faster.
_FLAT_SQUARE = 32
# Bytes of the input rows of one block of the shifted-view path: a block's operands stay in a core's L2.
_FLAT_BYTES = 384 << 10


def _flat_ok(xp, x, w, stride, groups):
    """Whether the shifted-view path applies (``x`` the input, ``w`` the weight)."""
    (o, c, kh, kw) = w.shape
    few = 2 * o <= c and (o <= _FLAT_CHANNELS or kh * kw <= 9)
    square = o <= c <= _FLAT_SQUARE and kh * kw <= 9
    return (xp is np and stride == (1, 1) and groups == 1 and c >= _FLAT_CHANNELS and 1 < kh * kw and
            (few or square) and x.dtype in (np.float32, np.float64))


def _flat_blocks(xpad, ksize, dilation, out_hw):
    """Work of the shifted-view path: (first sample, samples, first row, rows) blocks of about ``_FLAT_BYTES``
    of input, split into one list per CPU thread. Small samples go several to a block (one batched GEMM
    per kernel row: fewer calls from Python), as long as every thread still gets a block."""
    n, c, hp, wp = xpad.shape
    rows = max(1, min(out_hw[0], _FLAT_BYTES // (c * wp * xpad.itemsize) - (ksize[0] - 1) * dilation[0]))
    if rows < out_hw[0]:
        blocks = [(b, 1, r, min(rows, out_hw[0] - r)) for b in range(n) for r in range(0, out_hw[0], rows)]
    else:
        per = max(1, min(_FLAT_BYTES // (c * hp * wp * xpad.itemsize), math.ceil(n / workers())))
        per = _even(n, per, min(workers(), n))
        blocks = [(b, min(per, n - b), 0, out_hw[0]) for b in range(0, n, per)]
    parts = max(1, min(workers(), len(blocks)))
    return [blocks[len(blocks) * p // parts:len(blocks) * (p + 1) // parts] for p in range(parts)]


def _row_columns(xp, flat, b, nb, start, length, kw, dw, buf):
    """The columns of one kernel row, shared by all kh rows of a block: (nb, C·kw, length) of samples
    b..b+nb of the flattened padded input, row (c, j) starting at ``start + j·dw`` (one copy of a strided
    view)."""
    c = flat.shape[1]
    s0, s1, s2 = flat.strides
    view = xp.lib.stride_tricks.as_strided(flat[b:b + nb, :, start:], (nb, c, kw, length), (s0, s1, s2 * dw, s2))
    cols = buf[:nb * c * kw * length].reshape(nb, c, kw, length)
    xp.copyto(cols, view)
    return cols.reshape(nb, c * kw, length)


@accel.jit
def _add_taps(prods, wp, bias, with_bias, y):
    """y (nb, O, rows, Wo) = the sum over kernel rows i of prods[i] (kh, nb, O, >= rows·Wp) on the Wp-wide grid,
    cropped to Wo columns, plus ``bias`` (O,) when ``with_bias``: one pass, in numpy's order of the sums."""
    kh, nb, o = prods.shape[:3]
    nr, wo = y.shape[2:]
    for b in range(nb):
        for q in range(o):
            for r in range(nr):
                dst = y[b, q, r]
                first = prods[0, b, q, r * wp:r * wp + wo]
                for t in range(wo):
                    dst[t] = first[t]
                for i in range(1, kh):
                    src = prods[i, b, q, r * wp:r * wp + wo]
                    for t in range(wo):
                        dst[t] += src[t]
                if with_bias:
                    add = bias[q]
                    for t in range(wo):
                        dst[t] += add


def _flat_conv(xp, xpad, w, dilation, out_hw, bias=None):
    """The stride-1 convolution of ``xpad`` by ``w`` (+ ``bias``) by shifted views: (N, O, Ho, Wo).

    Block (b, nb, r, nr) covers output rows r..r+nr of samples b..b+nb on the Wp-wide grid; its length
    stops at the last row's Wo-th column, so that no tap reads past a sample. The kw taps of a kernel row
    are copied once as (C·kw, ·) columns over the block's input rows; kernel row i is then the view of
    those columns shifted by i·dh·Wp, and the block is kh GEMMs (O, C·kw) @ (C·kw, block) summed: by numpy, one
    add per kernel row then a cropping copy, or where numba is installed by one pass that also crops and adds
    the bias (``_add_taps``): 16 -> 16 3x3 on 32x32, batch 32, 2.5 -> 2.05 ms (one thread, CPU time)."""
    n, c, hp, wp = xpad.shape
    (o, _, kh, kw), (dh, dw), (ho, wo) = w.shape, dilation, out_hw
    flat = xp.ascontiguousarray(xpad).reshape(n, c, hp * wp)
    rows = xp.ascontiguousarray(w.transpose(2, 0, 1, 3)).reshape(kh, o, c * kw)      # (kh, O, C·kw)
    y = xp.empty((n, o, ho, wo), w.dtype)

    compiled = xp is np and _add_taps.available
    zero = xp.zeros(o, w.dtype)

    def work(blocks):
        most, many = max(nr for *_, nr in blocks) * wp, max(nb for _, nb, *_ in blocks)
        prods = xp.empty((kh, many, o, most), w.dtype)                  # one product per kernel row
        buf = xp.empty(many * c * kw * (most + (kh - 1) * dh * wp), w.dtype)
        for b, nb, r, nr in blocks:
            size = (nr - 1) * wp + wo
            cols = _row_columns(xp, flat, b, nb, r * wp, size + (kh - 1) * dh * wp, kw, dw, buf)
            for i in range(kh):
                xp.matmul(rows[i], cols[:, :, i * dh * wp:i * dh * wp + size], out=prods[i, :nb, :, :size])
            if compiled:
                _add_taps(prods[:, :nb], wp, zero if bias is None else bias.reshape(o), bias is not None,
                          y[b:b + nb, :, r:r + nr])
                continue
            for i in range(1, kh):
                prods[0, :nb, :, :size] += prods[i, :nb, :, :size]
            grid = prods[0, :nb, :, :nr * wp].reshape(nb, o, nr, wp)[..., :wo]
            if bias is not None:
                xp.add(grid, bias.reshape(o, 1, 1), out=y[b:b + nb, :, r:r + nr])
            else:
                y[b:b + nb, :, r:r + nr] = grid

    parallel(work, _flat_blocks(xpad, w.shape[2:], dilation, out_hw))
    return y


def _flat_weight_grad(xp, xpad, gy, wshape, dilation):
    """dL/dw of the stride-1 convolution of ``xpad`` for the output gradient ``gy``, by shifted views:
    per block, kh GEMMs (C·kw, block) @ (block, O) of gy laid on the Wp-wide grid (zeros in its extra
    columns) and the kernel-row columns of ``_flat_conv`` shifted by each kernel row."""
    n, c, hp, wp = xpad.shape
    (o, _, kh, kw), (dh, dw), (ho, wo) = wshape, dilation, gy.shape[2:]
    flat = xp.ascontiguousarray(xpad).reshape(n, c, hp * wp)

    def work(blocks):  # dL/dw as (kh, C·kw, O): the long column axis leads each GEMM
        most, many = max(nr for *_, nr in blocks), max(nb for _, nb, *_ in blocks)
        gwt, tmp = xp.zeros((kh, c * kw, o), gy.dtype), xp.empty((many, c * kw, o), gy.dtype)
        grid = xp.zeros((many, o, most, wp), gy.dtype)                        # columns >= Wo stay zero
        most *= wp
        buf = xp.empty(many * c * kw * (most + (kh - 1) * dh * wp), gy.dtype)
        for b, nb, r, nr in blocks:
            size = (nr - 1) * wp + wo
            grid[:nb, :, :nr, :wo] = gy[b:b + nb, :, r:r + nr]
            g = grid[:nb].reshape(nb, o, -1)[:, :, :size].swapaxes(1, 2)
            cols = _row_columns(xp, flat, b, nb, r * wp, size + (kh - 1) * dh * wp, kw, dw, buf)
            for i in range(kh):
                xp.matmul(cols[:, :, i * dh * wp:i * dh * wp + size], g, out=tmp[:nb])
                gwt[i] += tmp[0] if nb == 1 else tmp[:nb].sum(axis=0)
        return gwt

    gwt = sum(parallel(work, _flat_blocks(xpad, wshape[2:], dilation, (ho, wo))))   # (kh, C·kw, O)
    return xp.ascontiguousarray(gwt.reshape(kh, c, kw, o).transpose(3, 1, 0, 2))


# The output-side path needs stride 1, one group, a BLAS dtype, a kernel larger than 1x1 and O·kh·kw <= this × C
# (few outputs): there the shifted-view products are matrix-vector ones, and this path takes 2.4x less CPU
# time forward and 1.6x less for dL/dw (32 -> 1 5x5 on 128x256, SRCNN's last layer).
_NARROW_RATIO = 1
# Bytes of input plus products of one block of the output-side path (a core's L2); at least 4·(kh-1) rows.
_NARROW_BYTES = 2 << 20


def _narrow_ok(xp, x, w, stride, groups):
    """Whether the output-side path applies (``x`` the input, ``w`` the weight)."""
    (o, c, kh, kw) = w.shape
    return (xp is np and stride == (1, 1) and groups == 1 and kh * kw > 1 and o * kh * kw <= _NARROW_RATIO * c
            and x.dtype in (np.float32, np.float64))


def _narrow_blocks(xpad, wshape, dilation, out_hw):
    """Work of the output-side path: (sample, first row, rows) blocks, one list per CPU thread; a block reads
    (kh-1)·dh input rows more than it outputs, so it has at least 4x that many rows."""
    (n, c, _, wp), (o, _, kh, kw), halo = xpad.shape, wshape, (wshape[2] - 1) * dilation[0]
    budget = _NARROW_BYTES // ((c + o * kh * kw) * wp * xpad.itemsize) - halo
    rows = max(1, min(out_hw[0], max(budget, 4 * halo)))
    blocks = [(b, r, min(rows, out_hw[0] - r)) for b in range(n) for r in range(0, out_hw[0], rows)]
    parts = max(1, min(workers(), len(blocks)))
    return [blocks[len(blocks) * p // parts:len(blocks) * (p + 1) // parts] for p in range(parts)]


def _narrow_conv(xp, xpad, w, dilation, out_hw, bias=None):
    """The stride-1 convolution of ``xpad`` by ``w`` (+ ``bias``) with few outputs: (N, O, Ho, Wo).

    Per block of rows on the Wp-wide grid of the flattened input (C, span), one GEMM (O·kh·kw, C) @ (C, span)
    reads the input in place; output o is then the sum over the kernel offsets (i, j) of its product rows
    shifted by i·dh·Wp + j·dw (O·kh·kw adds over one channel's block, where im2col copies C·kh·kw)."""
    n, c, hp, wp = xpad.shape
    (o, _, kh, kw), (dh, dw), (ho, wo) = w.shape, dilation, out_hw
    flat = xp.ascontiguousarray(xpad).reshape(n, c, hp * wp)
    wr = xp.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(o * kh * kw, c)       # rows (o, i, j)
    shifts = [i * dh * wp + j * dw for i in range(kh) for j in range(kw)]
    y = xp.empty((n, o, ho, wo), w.dtype)
    bias = bias.reshape(o, 1, 1) if bias is not None else None

    def work(blocks):
        most = max(nr for _, _, nr in blocks)
        z = xp.empty(o * kh * kw * (most + (kh - 1) * dh) * wp, w.dtype)
        acc = xp.empty((o, most * wp), w.dtype)
        for b, r, nr in blocks:
            span, size = (nr + (kh - 1) * dh) * wp, (nr - 1) * wp + wo
            prod = z[:o * kh * kw * span].reshape(o * kh * kw, span)
            xp.matmul(wr, flat[b, :, r * wp:r * wp + span], out=prod)
            prod, out = prod.reshape(o, kh * kw, span), acc[:, :size]
            xp.add(prod[:, 0, :size], prod[:, 1, shifts[1]:shifts[1] + size], out=out)
            for k in range(2, kh * kw):
                out += prod[:, k, shifts[k]:shifts[k] + size]
            grid = acc[:, :nr * wp].reshape(o, nr, wp)[:, :, :wo]
            if bias is not None:
                xp.add(grid, bias, out=y[b, :, r:r + nr])
            else:
                y[b, :, r:r + nr] = grid

    parallel(work, _narrow_blocks(xpad, w.shape, dilation, out_hw))
    return y


def _narrow_weight_grad(xp, xpad, gy, wshape, dilation):
    """dL/dw of the stride-1 convolution of ``xpad`` with few outputs: per block, gy laid on the Wp-wide grid
    is copied once per kernel offset, shifted, into rows (O·kh·kw, span), and one GEMM (C, span) @ (span,
    O·kh·kw) with the input read in place gives dL/dw transposed; the long axis is the GEMM's inner one."""
    n, c, hp, wp = xpad.shape
    (o, _, kh, kw), (dh, dw), (ho, wo) = wshape, dilation, gy.shape[2:]
    flat = xp.ascontiguousarray(xpad).reshape(n, c, hp * wp)
    shifts = [i * dh * wp + j * dw for i in range(kh) for j in range(kw)]

    def work(blocks):
        most = max(nr for _, _, nr in blocks)
        longest = (most + (kh - 1) * dh) * wp
        gwt, tmp = xp.zeros((c, o * kh * kw), gy.dtype), xp.empty((c, o * kh * kw), gy.dtype)
        grid, rows = xp.zeros((o, most, wp), gy.dtype), xp.empty((o, kh * kw, longest), gy.dtype)
        for b, r, nr in blocks:
            span, size = (nr + (kh - 1) * dh) * wp, (nr - 1) * wp + wo
            grid[:, :nr, :wo] = gy[b, :, r:r + nr]                            # columns >= Wo stay zero
            g = grid.reshape(o, -1)[:, :size]
            for k, sk in enumerate(shifts):
                rows[:, k, :sk], rows[:, k, sk + size:span] = 0, 0
                rows[:, k, sk:sk + size] = g
            xp.matmul(flat[b, :, r * wp:r * wp + span], rows.reshape(o * kh * kw, longest)[:, :span].T, out=tmp)
            gwt += tmp
        return gwt

    gwt = sum(parallel(work, _narrow_blocks(xpad, wshape, dilation, (ho, wo))))       # (C, O·kh·kw)
    return xp.ascontiguousarray(gwt.reshape(c, o, kh, kw).transpose(1, 0, 2, 3))


# The channels-last path needs the CPU, one group, a BLAS dtype, a kernel larger than 1x1 and at least this many
# (input, output) channels, where neither the shifted-view nor the output-side path applies: im2col's copy in
# runs of Wo (8 values on 8x8) costs half its GEMM there. One thread, batch 32 (the CBED network's last block):
# 64 -> 64 3x3 on 8x8 forward 2.9 -> 1.8 ms and dL/dw 2.6 -> 1.8 ms, 32 -> 64 3x3 stride 2 on 16x16 forward
# 1.3 -> 1.05 ms, dL/dw 1.5 -> 1.05 ms; with 16 channels or 32 outputs it is no faster (a short GEMM).
_LAST_CHANNELS = (32, 64)
# It also takes at least as many outputs as inputs (from 32 inputs on) on maps of at most this many pixels, before
# the shifted-view path: 32 -> 32 3x3 on 16x16 (the CBED network's second block) forward, dL/dx and dL/dw
# 7.1 -> 6.6 ms, on 8x8 2.3 -> 1.7 ms; on 32x32 the shifted views are 1.1x faster (batch 32, one thread, CPU time).
_LAST_SQUARE_PIXELS = 256


def _last_ok(xp, x, w, stride, groups):
    """Whether the channels-last path applies (``x`` the input, ``w`` the weight)."""
    (o, c, kh, kw) = w.shape
    many = o >= _LAST_CHANNELS[1] and not _flat_ok(xp, x, w, stride, groups)
    small = o >= c and x.shape[2] * x.shape[3] <= _LAST_SQUARE_PIXELS
    return (xp is np and groups == 1 and kh * kw > 1 and c >= _LAST_CHANNELS[0] and (many or small)
            and x.dtype in (np.float32, np.float64) and not _narrow_ok(xp, x, w, stride, groups))


def _pad_last(xp, x, pads):
    """``x`` (N, C, H, W) zero-padded by ``pads`` (negative amounts crop) into channels-last (N, Hp, Wp, C); the
    batch shared among threads."""
    (t, b), (l, r) = pads
    if min(t, b, l, r) < 0:
        h, w = x.shape[-2:]
        x = x[..., max(-t, 0):h - max(-b, 0), max(-l, 0):w - max(-r, 0)]
        (t, b), (l, r) = (max(t, 0), max(b, 0)), (max(l, 0), max(r, 0))
    (n, c, h, w) = x.shape
    out = xp.empty((n, h + t + b, w + l + r, c), x.dtype)

    def part(s):
        o = out[s]
        o[:, :t], o[:, t + h:], o[:, t:t + h, :l], o[:, t:t + h, l + w:] = 0, 0, 0, 0
        o[:, t:t + h, l:l + w] = x[s].transpose(0, 2, 3, 1)

    over_batch(xp, part, n, out.size)
    return out


def _last_blocks(n, ho, sample_bytes):
    """Blocks (first sample, samples, first output row, rows) of the channels-last path, about ``_TILE_BYTES`` of
    columns each, one list per thread: whole samples, or where one sample's columns exceed the budget (SRCNN's
    maps) runs of its rows, whose columns then stay in cache between their copy and their GEMM."""
    if sample_bytes > _TILE_BYTES and ho > 1:
        rows = max(1, _TILE_BYTES * ho // sample_bytes)
        blocks = [(b, 1, r, min(rows, ho - r)) for b in range(n) for r in range(0, ho, rows)]
    else:
        per = max(1, min(_TILE_BYTES // max(sample_bytes, 1), math.ceil(n / workers())))
        per = _even(n, per, min(workers(), n))
        blocks = [(b, min(per, n - b), 0, ho) for b in range(0, n, per)]
    parts = max(1, min(workers(), len(blocks)))
    return [blocks[len(blocks) * p // parts:len(blocks) * (p + 1) // parts] for p in range(parts)]


def _last_columns(xp, xlast, block, ksize, stride, dilation, wo, buf):
    """The columns (samples·rows·Wo, kh·kw·C) of one block (b, nb, r, nr) of the channels-last padded input: output
    rows r..r+nr of samples b..b+nb, columns ordered (i, j, c)."""
    (b, nb, r, nr), c = block, xlast.shape[3]
    (kh, kw), (sh, sw), (dh, dw) = ksize, stride, dilation
    s0, s1, s2, s3 = xlast.strides
    view = xp.lib.stride_tricks.as_strided(xlast[b:, r * sh:], (nb, nr, wo, kh, kw, c),
                                           (s0, s1 * sh, s2 * sw, s1 * dh, s2 * dw, s3))
    cols = buf[:view.size].reshape(view.shape)
    xp.copyto(cols, view)
    return cols.reshape(nb * nr * wo, kh * kw * c)


def _last_conv(xp, xlast, w, stride, dilation, out_hw, bias=None):
    """The convolution of the channels-last padded input ``xlast`` (N, Hp, Wp, C) by ``w`` (+ ``bias``):
    (N, O, Ho, Wo), one GEMM (pixels, kh·kw·C) @ (kh·kw·C, O) per block of samples or of a sample's rows."""
    n, c = xlast.shape[0], xlast.shape[3]
    (o, _, kh, kw), (ho, wo) = w.shape, out_hw
    wk = xp.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(kh * kw * c, o)         # rows (i, j, c)
    y = xp.empty((n, o, ho * wo), w.dtype)
    per_sample = ho * wo * kh * kw * c

    def work(blocks):
        most = max(nb * nr for _, nb, _, nr in blocks) * wo
        buf, prod = xp.empty(most * kh * kw * c, w.dtype), xp.empty((most, o), w.dtype)
        for block in blocks:
            b, nb, r, nr = block
            out = prod[:nb * nr * wo]
            xp.matmul(_last_columns(xp, xlast, block, (kh, kw), stride, dilation, wo, buf), wk, out=out)
            if bias is not None:
                out += bias
            y[b:b + nb, :, r * wo:(r + nr) * wo] = out.reshape(nb, nr * wo, o).transpose(0, 2, 1)

    parallel(work, _last_blocks(n, ho, per_sample * xlast.itemsize))
    return y.reshape(n, o, ho, wo)


def _last_weight_grad(xp, xlast, gy, wshape, stride, dilation):
    """dL/dw of the convolution of the channels-last padded input ``xlast`` for the output gradient ``gy``:
    per block of samples, (kh·kw·C, pixels) @ (pixels, O) with gy transposed to channels-last in cache."""
    n, c = xlast.shape[0], xlast.shape[3]
    (o, _, kh, kw), (ho, wo) = wshape, gy.shape[2:]
    per_sample = ho * wo * kh * kw * c
    g3 = gy.reshape(n, o, ho * wo)

    def work(blocks):
        most = max(nb * nr for _, nb, _, nr in blocks) * wo
        buf, glast = xp.empty(most * kh * kw * c, gy.dtype), xp.empty((most, o), gy.dtype)
        gwt = xp.zeros((kh * kw * c, o), gy.dtype)
        for block in blocks:
            b, nb, r, nr = block
            cols = _last_columns(xp, xlast, block, (kh, kw), stride, dilation, wo, buf)
            g = glast[:nb * nr * wo]
            g.reshape(nb, nr * wo, o)[...] = g3[b:b + nb, :, r * wo:(r + nr) * wo].transpose(0, 2, 1)
            gwt += xp.matmul(cols.T, g)
        return gwt

    gwt = sum(parallel(work, _last_blocks(n, ho, per_sample * xlast.itemsize)))           # (kh·kw·C, O)
    return xp.ascontiguousarray(gwt.reshape(kh, kw, c, o).transpose(3, 2, 0, 1))


# Use the convolution form of the adjoint at stride 1 when O <= this × C: it writes O·kh·kw columns per
# pixel where col2im writes C·kh·kw and then reads and rewrites the input gradient kh·kw times.
_ADJOINT_AS_CONV = 3


def _input_grad(xp, gy, w, in_hw, stride, pads, dilation, groups):
    """The adjoint of the convolution in x: gy (N, O, Ho, Wo) -> (N, C, H, W), H, W = ``in_hw``."""
    (kh, kw), (dh, dw), (ho, wo) = w.shape[2:], dilation, gy.shape[2:]
    (h, wd), g, o, cg = in_hw, groups, w.shape[0], w.shape[1]
    if stride == (1, 1) and o <= _ADJOINT_AS_CONV * cg * g:
        # gx = gy (zero-extended by the dilated kernel) correlated with w flipped, channels swapped
        wf = w.reshape(g, o // g, cg, kh, kw).swapaxes(1, 2)[..., ::-1, ::-1].reshape(cg * g, o // g, kh, kw)
        top, left = dh * (kh - 1) - pads[0][0], dw * (kw - 1) - pads[1][0]
        fpads = ((top, h + dh * (kh - 1) - ho - top), (left, wd + dw * (kw - 1) - wo - left))
        wf = xp.ascontiguousarray(wf)
        if _last_ok(xp, gy, wf, (1, 1), groups) and gy.shape[0]:
            return _last_conv(xp, _pad_last(xp, gy, fpads), wf, (1, 1), dilation, in_hw)
        return _conv(xp, _pad(xp, gy, fpads), wf, (1, 1), dilation, groups, in_hw)
    return _col2im(xp, gy, w, in_hw, stride, pads, dilation, groups)


@accel.jit
def _fold(gcols, gx, first, top, sh, sw, dh, dw):
    """col2im of one tile in one pass: gcols (nb, C, kh, kw, rows, Wo) added onto the padded gx (N, C, Hp, Wp)
    at samples first.., rows top + i·dh + r·sh, columns j·dw + t·sw, offsets in numpy's order (the same sums)."""
    nb, c, kh, kw, nr, wo = gcols.shape
    for b in range(nb):
        for q in range(c):
            plane = gx[first + b, q]
            for i in range(kh):
                for r in range(nr):
                    row = plane[top + i * dh + r * sh]
                    for j in range(kw):
                        src = gcols[b, q, i, j, r]
                        for t in range(wo):
                            row[j * dw + t * sw] += src[t]


def _col2im(xp, gy, w, in_hw, stride, pads, dilation, groups):
    """The adjoint by columns: per tile, column gradients w^T @ gy, each kernel offset's slab added back
    onto the padded input gradient (one vectorised add per offset); the padding is cropped at the end.
    Where numba is installed (``hpcai.accel``) the kh·kw adds are one compiled pass over the tile
    (``_fold``), which reads and writes gx once instead of kh·kw times: dL/dx of the CBED network's strided
    layers, 16 -> 32 and 32 -> 64 3x3 stride 2, 2.5 -> 1.7 ms and 1.9 -> 1.3 ms (one thread, batch 32, CPU time)."""
    n, (ho, wo), g, (o, cg, kh, kw) = gy.shape[0], gy.shape[2:], groups, w.shape
    (sh, sw), (dh, dw), ((t, b), (l, r)) = stride, dilation, pads
    gx = xp.zeros((n, g * cg, in_hw[0] + t + b, in_hw[1] + l + r), gy.dtype)
    wt = xp.ascontiguousarray(w.reshape(g, o // g, -1).swapaxes(1, 2))              # (G, K/G, O/G)
    gy = gy.reshape(n, g, o // g, ho * wo)

    compiled = xp is np and _fold.available

    def work(run):
        for bs, rs in run:
            nr, top = rs.stop - rs.start, rs.start * sh
            gcols = xp.matmul(wt, gy[bs, :, :, rs.start * wo:rs.stop * wo]).reshape(-1, g * cg, kh, kw, nr, wo)
            if compiled:
                _fold(gcols, gx, bs.start, top, sh, sw, dh, dw)
                continue
            for i in range(kh):
                for j in range(kw):
                    gx[bs, :, top + i * dh:top + i * dh + sh * (nr - 1) + 1:sh,
                       j * dw:j * dw + sw * (wo - 1) + 1:sw] += gcols[:, :, i, j]

    _run(xp, work, _tiles(xp, n, ho, g * cg * kh * kw * wo * gy.itemsize))
    return gx[:, :, t:t + in_hw[0], l:l + in_hw[1]]


def _bias_grad(xp, gy):
    """dL/db: gy summed over all but its channel axis (on the CPU each thread sums its share of the batch, as
    products with a vector of ones where BLAS takes the dtype: 3x less time than numpy's sum over axes
    (0, 2, 3) on the CBED network's 32x16x64x64 gradient)."""
    if xp is not np:
        return gy.sum(axis=(0, 2, 3))
    if gy.dtype not in (np.float32, np.float64) or gy.size == 0:
        return sum(parallel(lambda s: gy[s].sum(axis=(0, 2, 3)), batch_parts(gy.shape[0], gy.size)))
    (n, o, h, w), ones = gy.shape, np.ones((gy.shape[2] * gy.shape[3], 1), gy.dtype)
    return sum(parallel(lambda s: np.matmul(gy[s].reshape(-1, o, h * w), ones).sum(axis=0)[:, 0],
                        batch_parts(n, gy.size)))


# -- the two ops --------------------------------------------------------------------------------------
class Conv2d(Function):
    """y = conv(x, w) + b. Keeps the padded x for the weight gradient and w for the input gradient."""

    def forward(self, x, w, b=None):
        xp = self.xp
        self.w, self.in_hw = w, x.shape[2:]
        self.last = _last_ok(xp, x, w, self.stride, self.groups) and x.shape[0] > 0
        if self.last:  # the channels-last padded input, kept for dL/dw
            self.xpad = _pad_last(xp, x, self.pads)
            return _last_conv(xp, self.xpad, w, self.stride, self.dilation, self.out_hw, bias=b)
        self.xpad = _pad(xp, x, self.pads)
        return _conv(xp, self.xpad, w, self.stride, self.dilation, self.groups, self.out_hw, bias=b)

    def backward(self, gy):
        xp, need = self.xp, self.needs_input_grad
        gx = _input_grad(xp, gy, self.w, self.in_hw, self.stride, self.pads, self.dilation,
                         self.groups) if need[0] else None
        gw = None
        if need[1] and self.last:
            gw = _last_weight_grad(xp, self.xpad, gy, self.w.shape, self.stride, self.dilation)
        elif need[1] and _narrow_ok(xp, self.xpad, self.w, self.stride, self.groups) and gy.shape[0]:
            gw = _narrow_weight_grad(xp, self.xpad, gy, self.w.shape, self.dilation)
        elif need[1] and _flat_ok(xp, self.xpad, self.w, self.stride, self.groups) and gy.shape[0]:
            gw = _flat_weight_grad(xp, self.xpad, gy, self.w.shape, self.dilation)
        elif need[1]:
            gw = _conv_pass(xp, self.xpad, self.w, self.stride, self.dilation, self.groups, self.out_hw, gy=gy)
        gb = _bias_grad(xp, gy) if need[2] else None
        return gx, gw, gb


class ConvTranspose2d(Function):
    """y = conv^T(x, w) + b, the input gradient of a convolution; its backward is that convolution."""

    def forward(self, x, w, b=None):
        xp = self.xp
        self.x, self.w = x, w
        y = _input_grad(xp, x, w, self.out_hw, self.stride, self.pads, self.dilation, self.groups)
        return y + b.reshape(1, -1, 1, 1) if b is not None else xp.ascontiguousarray(y)

    def backward(self, gy):
        xp, need = self.xp, self.needs_input_grad
        n, c, h, w = self.x.shape
        gx = xp.empty((n, self.groups, c // self.groups, h * w), gy.dtype) if need[0] else None
        gw = _conv_pass(xp, _pad(xp, gy, self.pads), self.w, self.stride, self.dilation, self.groups, (h, w),
                        y=gx, gy=self.x if need[1] else None) if need[0] or need[1] else None
        gb = _bias_grad(xp, gy) if need[2] else None
        return (gx.reshape(self.x.shape) if need[0] else None), gw, gb


# -- argument checks ----------------------------------------------------------------------------------
def _pair(v, name, op, minimum):
    """``v`` (an int or a pair of ints, each >= minimum) as a pair; a ValueError naming ``name`` otherwise."""
    pair = (v, v) if isinstance(v, numbers.Integral) else tuple(v) if isinstance(v, (tuple, list)) else None
    if (pair is None or len(pair) != 2 or
            any(isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < minimum for k in pair)):
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{op}: {name} must be a {what} int or a pair of them, got {v!r}")
    return int(pair[0]), int(pair[1])


def _check_operands(op, x, weight, bias, groups, x_channels_axis_of_w):
    """Shapes and dtypes shared by both ops; returns groups as an int."""
    expect_ndim(x, 4, "x", op, "N, C, H, W")
    expect_ndim(weight, 4, "weight", op, "O, C/groups, kh, kw" if x_channels_axis_of_w else
                "C_in, C_out/groups, kh, kw")
    expect_float(x, "x", op)
    expect_float(weight, "weight", op)
    if x.dtype != weight.dtype:
        raise TypeError(f"{op}: x and weight must have the same dtype, got {x.dtype} and {weight.dtype}")
    groups = checks.integer(f"{op}: groups", groups, 1)
    c = x.shape[1]
    if c % groups:
        raise ValueError(f"{op}: x's {c} channels are not divisible by groups={groups}")
    if x_channels_axis_of_w:
        if weight.shape[0] % groups:
            raise ValueError(f"{op}: weight's {weight.shape[0]} output channels are not divisible by "
                             f"groups={groups}")
        expected, out = weight.shape[1] * groups, weight.shape[0]
    else:
        expected, out = weight.shape[0], weight.shape[1] * groups
    if c != expected:
        raise ValueError(f"{op}: x has {c} channels but weight expects {expected} "
                         f"(weight shape {tuple(weight.shape)}, groups={groups})")
    if bias is not None:
        if tuple(bias.shape) != (out,):
            raise ValueError(f"{op}: bias must have shape ({out},), one value per output channel, "
                             f"got {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"{op}: bias must have x's dtype {x.dtype}, got {bias.dtype}")
    return groups


def _out_size(op, in_hw, ksize, stride, pads, dilation, what):
    """Ho, Wo of a convolution, or a ValueError when the dilated kernel overhangs the padded input."""
    out = []
    for n, k, s, (lo, hi), d in zip(in_hw, ksize, stride, pads, dilation):
        extent, padded = d * (k - 1) + 1, n + lo + hi
        if extent > padded:
            raise ValueError(f"{op}: the kernel {tuple(ksize)} (extent {extent} with dilation {d}) is larger than "
                             f"the padded {what} ({n} + {lo + hi} padding = {padded}); pad more or use a "
                             f"smaller kernel")
        out.append((padded - extent) // s + 1)
    return tuple(out)


# -- public functions ---------------------------------------------------------------------------------
def _conv2d_samples(rng):
    n = rng.standard_normal
    return [Sample((n((2, 3, 5, 5)), n((4, 3, 3, 3)), n(4)), {"padding": 1}),
            Sample((n((2, 2, 7, 6)), n((3, 2, 2, 3))), {"stride": 2, "padding": (1, 2)}),   # non-square kernel
            Sample((n((1, 2, 7, 7)), n((2, 2, 3, 3)), n(2)), {"dilation": 2, "padding": 1}),
            Sample((n((2, 4, 5, 6)), n((6, 2, 3, 3)), n(6)), {"groups": 2, "stride": (2, 1)}),
            Sample((n((1, 3, 5, 5)), n((6, 1, 3, 3))), {"groups": 3, "padding": 1}),          # depthwise
            Sample((n((2, 4, 3, 3)), n((5, 4, 1, 1)), n(5)), {"padding": 1}),                 # 1x1, pad > kernel
            Sample((n((1, 2, 5, 6)), n((3, 2, 2, 4))), {"padding": "same", "dilation": (1, 2)}),
            Sample((n((1, 2, 4, 4)), n((8, 2, 3, 3))), {"padding": "valid"})]                 # O > 3C: col2im


@register("conv2d", _conv2d_samples,
          torch=lambda *a, **k: __import__("torch").nn.functional.conv2d(*a, **k))
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-d cross-correlation of x (N, C, H, W) with weight (O, C/groups, kh, kw), plus bias (O,).

    stride and dilation are positive ints or pairs; padding is a non-negative int or pair of zeros
    added on both sides, or "valid" (none) or "same" (output size = input size; stride 1 only; an odd
    total goes one more on the bottom/right, as in PyTorch).
    """
    op = "conv2d"
    groups = _check_operands(op, x, weight, bias, groups, x_channels_axis_of_w=True)
    stride, dilation = _pair(stride, "stride", op, 1), _pair(dilation, "dilation", op, 1)
    ksize = tuple(weight.shape[2:])
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"{op}: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        if padding == "same" and stride != (1, 1):
            raise ValueError(f"{op}: padding='same' needs stride 1, got stride={stride}")
        total = [d * (k - 1) if padding == "same" else 0 for k, d in zip(ksize, dilation)]
        pads = tuple((t // 2, t - t // 2) for t in total)
    else:
        pads = tuple((p, p) for p in _pair(padding, "padding", op, 0))
    out_hw = _out_size(op, x.shape[2:], ksize, stride, pads, dilation, "input")
    return Conv2d.apply(x, weight, bias, stride=stride, pads=pads, dilation=dilation, groups=groups,
                        out_hw=out_hw)


def _conv_transpose2d_samples(rng):
    n = rng.standard_normal
    return [Sample((n((2, 3, 4, 4)), n((3, 2, 3, 3)), n(2)), {"stride": 2, "padding": 1, "output_padding": 1}),
            Sample((n((1, 2, 4, 5)), n((2, 3, 2, 3)))),                                        # stride 1
            Sample((n((1, 4, 3, 3)), n((4, 1, 3, 2)), n(2)),
                   {"stride": (2, 3), "dilation": 2, "groups": 2, "output_padding": (1, 0)}),
            Sample((n((1, 2, 3, 3)), n((2, 1, 3, 3))), {"dilation": 2, "output_padding": 1}),  # op < dilation
            Sample((n((2, 6, 3, 3)), n((6, 1, 2, 2))), {"padding": 1})]                        # C_in > 3 C_out


@register("conv_transpose2d", _conv_transpose2d_samples,
          torch=lambda *a, **k: __import__("torch").nn.functional.conv_transpose2d(*a, **k))
def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """The adjoint of conv2d in its input: x (N, C_in, H, W), weight (C_in, C_out/groups, kh, kw) -> y
    (N, C_out, (H-1)·stride - 2·padding + dilation·(k-1) + output_padding + 1, ...), plus bias (C_out,).

    ``padding`` removes that many rows and columns from each border of the full output; ``output_padding``
    adds them back on the bottom/right only (to pick one of the sizes a strided conv2d maps to the same
    size); it must be smaller than stride or dilation.
    """
    op = "conv_transpose2d"
    groups = _check_operands(op, x, weight, bias, groups, x_channels_axis_of_w=False)
    stride, dilation = _pair(stride, "stride", op, 1), _pair(dilation, "dilation", op, 1)
    padding, out_pad = _pair(padding, "padding", op, 0), _pair(output_padding, "output_padding", op, 0)
    for o, s, d in zip(out_pad, stride, dilation):
        if o >= s and o >= d:
            raise ValueError(f"{op}: output_padding must be smaller than stride or dilation, got "
                             f"output_padding={out_pad}, stride={stride}, dilation={dilation}")
    ksize = tuple(weight.shape[2:])
    out_hw = tuple((n - 1) * s - 2 * p + d * (k - 1) + o + 1
                   for n, s, p, d, k, o in zip(x.shape[2:], stride, padding, dilation, ksize, out_pad))
    if min(out_hw) < 1:
        raise ValueError(f"{op}: padding={padding} removes the whole output of x {tuple(x.shape)} with kernel "
                         f"{ksize}, stride={stride}, dilation={dilation} (size {out_hw})")
    pads = tuple((p, p) for p in padding)
    return ConvTranspose2d.apply(x, weight, bias, stride=stride, pads=pads, dilation=dilation, groups=groups,
                                 out_hw=out_hw)
