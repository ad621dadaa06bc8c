"""Pooling and resampling over NCHW tensors: ``max_pool2d``, ``avg_pool2d``, ``pixel_shuffle``.

Pooling loops over the kh·kw kernel offsets, each step one vectorised operation on a strided slab
(N, C, Ho, Wo) of the input; no window array is ever built. Max pooling, a string of such passes,
shares the batch among threads on the CPU (``threads.over_batch``). Max pooling sends each window's gradient
to exactly one input, the first maximum in row-major window order (PyTorch's choice on ties, common
after a ReLU); a window holding only -inf sends it to its first cell inside the input, never to the
padding (PyTorch again); a window holding a NaN outputs NaN and passes no gradient. Without padding, forward
also keeps the offset of each window's first maximum (uint8) when a backward can run (not under no_grad,
nor for an input that needs no gradient), so backward routes gy in two passes per offset
instead of finding the maxima again (pooling forward + backward 15-20 % faster); with padding or a NaN
window, backward finds them again. Where numba is installed (``hpcai.accel``), 2x2 max pooling at stride 2
(the common case) runs as one compiled pass each way instead of some ten numpy passes (forward: the maximum
and its first offset; backward: gy written to that offset, zeros elsewhere): 2x2 pooling of a small CNN's
maps (64x16x64x64 and 64x32x32x32, forward + backward, one thread) took 3-4x less time. numpy cannot fuse
those passes; they stay the reference the tests compare with.
"""
from __future__ import annotations


import numpy as np

from .. import accel, checks
from ..autograd.function import Function, is_grad_enabled
from ..autograd.tensor import Tensor
from .common import expect_float, expect_ndim
from .conv import _pair
from .registry import Sample, register
from .threads import over_batch


def _slab(a, i, j, stride, out_hw):
    """The (N, C, Ho, Wo) view of ``a`` seen by kernel offset (i, j)."""
    (sh, sw), (ho, wo) = stride, out_hw
    return a[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]


def _route(xp, g, hit, target, tmp, finite: bool) -> None:
    """Add ``g`` where ``hit`` into ``target`` (written directly when ``tmp`` is None: windows that do not
    overlap own their cells); ``finite``: ``g`` holds no inf, so a product with the mask is exact."""
    routed = target if tmp is None else tmp
    if finite:
        xp.multiply(g, hit, out=routed)
    else:
        routed[...] = 0
        xp.copyto(routed, g, where=hit)
    if tmp is not None:
        target += tmp


def _padded(xp, x, padding, value):
    ph, pw = padding
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value) if ph or pw else x


def _unpad(g, padding, in_hw):
    (ph, pw), (h, w) = padding, in_hw
    return g[:, :, ph:ph + h, pw:pw + w]


def _first_max(xp, slabs, out, index, moved=None) -> None:
    """``out`` = the elementwise maximum of ``slabs`` (NaN wins) and, when given, ``index`` (uint8) = the
    position of the first slab holding it (strictly greater replaces it); ``moved(k, more)`` is told
    where slab k replaced the maximum (``more`` as uint8 0/1)."""
    if len(slabs) == 1:
        out[...] = slabs[0]
        if index is not None:
            index[...] = 0
        return
    more = None if index is None else xp.empty(out.shape, bool)
    prev = slabs[0]
    for k in range(1, len(slabs)):
        if index is not None:
            xp.greater(slabs[k], prev, out=more)
            step = more.view(np.uint8)
            if moved is not None:
                moved(k, step)
            if k == 1:
                index[...] = step
            else:  # k exceeds every earlier index: max(index, more·k) sets it
                xp.multiply(step, np.uint8(k), out=step)
                xp.maximum(index, step, out=index)
        xp.maximum(prev, slabs[k], out=out)
        prev = out


@accel.jit
def _max_pool_2x2(x, out, index, keep):
    """2x2 windows, stride 2, on (M, H, W): out = each window's maximum (NaN if it holds one); index (uint8,
    when ``keep``) = the row-major offset of its first maximum. Branch-free selects: the comparisons are
    unpredictable, and a NaN wins because nothing is greater than it afterwards."""
    m, ho, wo = out.shape
    for p in range(m):
        for i in range(ho):
            a, b = x[p, 2 * i], x[p, 2 * i + 1]
            for j in range(wo):
                v0, v1, v2, v3 = a[2 * j], a[2 * j + 1], b[2 * j], b[2 * j + 1]
                t1 = (v1 > v0) | (v1 != v1)
                m1, i1 = (v1 if t1 else v0), (1 if t1 else 0)
                t2 = (v2 > m1) | (v2 != v2)
                m2, i2 = (v2 if t2 else m1), (2 if t2 else i1)
                t3 = (v3 > m2) | (v3 != v3)
                out[p, i, j] = v3 if t3 else m2
                if keep:
                    index[p, i, j] = 3 if t3 else i2


@accel.jit
def _max_unpool_2x2(gy, index, gx):
    """The backward of ``_max_pool_2x2``: each window's four cells of gx get gy at its index, 0 elsewhere. The
    windows' cells are zeroed row by row (a vectorised fill), then each gy written to its one cell: 2x less time
    than a select per cell, which does not vectorise (32x16x64x64, one thread)."""
    m, ho, wo = gy.shape
    for p in range(m):
        plane = gx[p]
        for i in range(2 * ho):
            row = plane[i]
            for t in range(2 * wo):
                row[t] = 0.0
        for i in range(ho):
            g, k = gy[p, i], index[p, i]
            for j in range(wo):
                at = k[j]
                plane[2 * i + (at >> 1), 2 * j + (at & 1)] = g[j]


class MaxPool2d(Function):
    """Forward is separable: a running maximum over each window row's kw columns (at 2x2, contiguous rows
    of half the input; 1.15-1.4x faster than strided 2-d slabs on 32x128x128 maps, even on small ones),
    then over the window's kh rows; without padding, the offset of the first maximum comes along (the
    first row holding the window's maximum, at that row's first maximum). Backward walks the offsets in order, routing gy to the first input equal
    to its window's maximum (the first one wins ties, as in PyTorch).

    Backward turns the -inf padding into NaN, which equals nothing: a window whose maximum is -inf then
    matches its first -inf inside the input, where PyTorch sends the gradient too, not a padding cell
    whose gradient would be cut off. Only the border is rewritten, so the cost is negligible.

    ``keep_index`` (set by ``max_pool2d`` when a backward can run) asks forward for the indices."""

    keep_index = True

    def forward(self, x):
        xp, (kh, kw) = self.xp, self.kernel
        self.xpad = _padded(xp, x, self.padding, -np.inf)
        self.in_hw = x.shape[2:]
        self.out = xp.empty(x.shape[:2] + tuple(self.out_hw), x.dtype)
        # without padding, the index of each window's first maximum is kept for backward (see _routed)
        keep = self.keep_index and self.padding == (0, 0) and kh * kw < 256
        self.index = xp.empty(self.out.shape, np.uint8) if keep else None
        (sh, sw), (ho, wo) = self.stride, self.out_hw
        if self._compiled(x):
            index = self.index if keep else xp.empty((1, 1, 1), np.uint8)
            flat = (lambda a: a.reshape((-1,) + a.shape[2:]))

            def compiled(s):
                _max_pool_2x2(flat(x[s]), flat(self.out[s]), flat(index[s]) if keep else index, keep)

            over_batch(xp, compiled, x.shape[0], x.size)
            return self.out

        def part(s):  # samples s: the maximum over each window row's columns, then over the window's rows
            xpad, out = self.xpad[s], self.out[s]
            rows = xp.empty(out.shape[:2] + (xpad.shape[2], wo), x.dtype)
            at = None if self.index is None else xp.empty(rows.shape, np.uint8)   # column of each row's maximum
            _first_max(xp, [xpad[..., j:j + sw * (wo - 1) + 1:sw] for j in range(kw)], rows, at)
            row_slabs = [rows[:, :, i:i + sh * (ho - 1) + 1:sh] for i in range(kh)]
            if self.index is None:
                return _first_max(xp, row_slabs, out, None)
            # the first maximum in row-major order: the first row holding the maximum, at that row's first
            index, col, tmp = self.index[s], xp.empty(out.shape, np.uint8), xp.empty(out.shape, np.uint8)
            col[...] = at[:, :, 0:sh * (ho - 1) + 1:sh]

            def moved(i, more):  # row i holds a new maximum where ``more``: take its column there
                xp.bitwise_xor(col, at[:, :, i:i + sh * (ho - 1) + 1:sh], out=tmp)
                xp.multiply(tmp, more, out=tmp)
                xp.bitwise_xor(col, tmp, out=col)

            _first_max(xp, row_slabs, out, index, moved)
            xp.multiply(index, np.uint8(kw), out=index)
            xp.add(index, col, out=index)

        over_batch(xp, part, x.shape[0], x.size)
        return self.out

    def backward(self, gy):
        xp, (kh, kw), (ph, pw), (sh, sw) = self.xp, self.kernel, self.padding, self.stride
        (h, w), n = self.in_hw, kh * kw
        if self.index is not None and not bool(xp.isnan(self.out).any()):
            return self._routed(gy)
        if ph or pw:  # self.xpad is our own padded copy: its border may change now forward is done
            xpad = self.xpad
            xpad[:, :, :ph] = xpad[:, :, ph + h:] = np.nan
            xpad[..., :pw] = xpad[..., pw + w:] = np.nan
        # windows that tile the input without overlap write disjoint slabs: assigned, not accumulated
        disjoint = (sh, sw) == (kh, kw) and (ph, pw) == (0, 0)
        tiled = disjoint and h % kh == 0 and w % kw == 0
        gx = (xp.empty if tiled else xp.zeros)(gy.shape[:2] + (h + 2 * ph, w + 2 * pw), gy.dtype)
        finite = bool(xp.isfinite(gy).all())  # else inf * False = NaN would reach the windows' other cells

        def part(s):  # samples s; free: the window's maximum is not found yet
            xpad, out, g, grad = self.xpad[s], self.out[s], gy[s], gx[s]
            hit, free = xp.empty(g.shape, bool), xp.empty(g.shape, bool)
            tmp = None if disjoint else xp.empty(g.shape, g.dtype)
            for k in range(n):  # the first maximum in row-major window order wins; a NaN window matches none
                xp.equal(_slab(xpad, k // kw, k % kw, self.stride, self.out_hw), out, out=hit)
                if k == 0:  # every window is free before its first offset
                    xp.logical_not(hit, out=free)
                else:
                    xp.logical_and(hit, free, out=hit)
                    if k < n - 1:  # no window needs it after the last
                        xp.logical_xor(free, hit, out=free)
                _route(xp, g, hit, _slab(grad, k // kw, k % kw, self.stride, self.out_hw), tmp, finite)

        over_batch(xp, part, gy.shape[0], gx.size)
        return _unpad(gx, self.padding, self.in_hw)

    def _compiled(self, x):
        """Whether the numba kernels run: 2x2 windows at stride 2 without padding on the CPU, a float dtype,
        C-ordered x, numba available."""
        return (self.xp is np and self.kernel == (2, 2) and self.stride == (2, 2) and self.padding == (0, 0)
                and x.dtype in (np.float32, np.float64) and x.flags.c_contiguous and _max_pool_2x2.available)

    def _routed(self, gy):
        """Backward from the forward's indices (no padding, no NaN window): offset k's slab of the input
        gradient is gy where the index is k, two passes per offset instead of the four that find the
        first maximum again (one compiled pass with numba)."""
        xp, (kh, kw), (sh, sw) = self.xp, self.kernel, self.stride
        (h, w), n = self.in_hw, kh * kw
        disjoint = (sh, sw) == (kh, kw)
        tiled = disjoint and h % kh == 0 and w % kw == 0
        gx = (xp.empty if tiled else xp.zeros)(gy.shape[:2] + (h, w), gy.dtype)
        if self._compiled(gx) and gy.dtype == gx.dtype:
            flat = (lambda a: a.reshape((-1,) + a.shape[2:]))
            over_batch(xp, lambda s: _max_unpool_2x2(flat(xp.ascontiguousarray(gy[s])), flat(self.index[s]),
                                                     flat(gx[s])), gy.shape[0], gx.size)
            return gx
        finite = bool(xp.isfinite(gy).all())  # else inf * False = NaN would reach the windows' other cells

        def part(s):
            index, g, grad = self.index[s], gy[s], gx[s]
            hit = xp.empty(g.shape, bool)
            tmp = None if disjoint else xp.empty(g.shape, g.dtype)
            for k in range(n):
                xp.equal(index, k, out=hit)
                _route(xp, g, hit, _slab(grad, k // kw, k % kw, self.stride, self.out_hw), tmp, finite)

        over_batch(xp, part, gy.shape[0], gx.size)
        return gx


class AvgPool2d(Function):
    """The mean over each window, padding zeros included in the count (PyTorch's count_include_pad)."""

    def forward(self, x):
        (kh, kw) = self.kernel
        xp_ = _padded(self.xp, x, self.padding, 0)
        self.in_hw = x.shape[2:]
        out = _slab(xp_, 0, 0, self.stride, self.out_hw).copy()
        for k in range(1, kh * kw):
            out += _slab(xp_, k // kw, k % kw, self.stride, self.out_hw)
        out *= out.dtype.type(1.0 / (kh * kw))
        return out

    def backward(self, gy):
        xp, (kh, kw), (ph, pw) = self.xp, self.kernel, self.padding
        h, w = self.in_hw
        g = gy * gy.dtype.type(1.0 / (kh * kw))
        gx = xp.zeros(gy.shape[:2] + (h + 2 * ph, w + 2 * pw), gy.dtype)
        for k in range(kh * kw):
            _slab(gx, k // kw, k % kw, self.stride, self.out_hw)[...] += g
        return _unpad(gx, self.padding, self.in_hw)


class PixelShuffle(Function):
    """(N, C·r², H, W) -> (N, C, H·r, W·r): a reshape and a transpose, so backward is the inverse pair."""

    def forward(self, x):
        n, c, h, w = x.shape
        r = self.r
        return x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(
            n, c // (r * r), h * r, w * r)

    def backward(self, gy):
        n, c, hr, wr = gy.shape
        r = self.r
        return gy.reshape(n, c, hr // r, r, wr // r, r).transpose(0, 1, 3, 5, 2, 4).reshape(
            n, c * r * r, hr // r, wr // r)


# -- argument checks ----------------------------------------------------------------------------------
def _pool_args(op, x, kernel_size, stride, padding):
    """Validated (kernel, stride, padding, out_hw) of a pooling call."""
    expect_ndim(x, 4, "x", op, "N, C, H, W")
    expect_float(x, "x", op)
    kernel = _pair(kernel_size, "kernel_size", op, 1)
    stride = kernel if stride is None else _pair(stride, "stride", op, 1)
    padding = _pair(padding, "padding", op, 0)
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise ValueError(f"{op}: padding must be at most half the kernel size, got padding={padding} "
                         f"for kernel_size={kernel}")
    out_hw = []
    for n, k, s, p in zip(x.shape[2:], kernel, stride, padding):
        if k > n + 2 * p:
            raise ValueError(f"{op}: kernel_size {kernel} is larger than the padded input "
                             f"({tuple(x.shape[2:])} + 2×{padding}) of x with shape {tuple(x.shape)}")
        out_hw.append((n + 2 * p - k) // s + 1)
    return kernel, stride, padding, tuple(out_hw)


# -- public functions ---------------------------------------------------------------------------------
def _pool_samples(rng):
    # continuous random data: no ties inside a window, so max pooling is differentiable at the samples
    n = rng.standard_normal
    return [Sample((n((2, 3, 6, 6)),), {"kernel_size": 2}),
            Sample((n((1, 2, 7, 8)),), {"kernel_size": 3, "stride": 2, "padding": 1}),      # overlapping
            Sample((n((2, 2, 5, 7)),), {"kernel_size": (2, 3), "stride": (1, 2)}),
            Sample((n((1, 1, 5, 5)),), {"kernel_size": (3, 2), "stride": (3, 1), "padding": (1, 1)})]


def _torch_pool(name):
    def ref(x, kernel_size, stride=None, padding=0):
        return getattr(__import__("torch").nn.functional, name)(x, kernel_size, stride, padding)
    return ref


@register("max_pool2d", _pool_samples, torch=_torch_pool("max_pool2d"))
def max_pool2d(x, kernel_size, stride=None, padding=0):
    """The maximum over each kh×kw window of x (N, C, H, W); stride defaults to the kernel size and
    padding (at most half the kernel) is -inf, so it never wins. The gradient goes to the first maximum.
    """
    kernel, stride, padding, out_hw = _pool_args("max_pool2d", x, kernel_size, stride, padding)
    grad = is_grad_enabled() and isinstance(x, Tensor) and x.requires_grad  # no backward: no indices
    return MaxPool2d.apply(x, kernel=kernel, stride=stride, padding=padding, out_hw=out_hw, keep_index=grad)


@register("avg_pool2d", _pool_samples, torch=_torch_pool("avg_pool2d"))
def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """The mean over each kh×kw window of x (N, C, H, W), zero padding counted (PyTorch's default)."""
    kernel, stride, padding, out_hw = _pool_args("avg_pool2d", x, kernel_size, stride, padding)
    return AvgPool2d.apply(x, kernel=kernel, stride=stride, padding=padding, out_hw=out_hw)


@register("pixel_shuffle", lambda rng: [Sample((rng.standard_normal((2, 8, 3, 2)),), {"upscale_factor": 2}),
                                        Sample((rng.standard_normal((1, 9, 2, 3)),), {"upscale_factor": 3})],
          torch=lambda x, upscale_factor: __import__("torch").nn.functional.pixel_shuffle(x, upscale_factor))
def pixel_shuffle(x, upscale_factor):
    """Sub-pixel upsampling [Shi et al. 2016]: (N, C·r², H, W) -> (N, C, H·r, W·r), r = upscale_factor;
    output pixel (h·r + i, w·r + j) of channel c is input channel c·r² + i·r + j at (h, w).
    """
    op = "pixel_shuffle"
    expect_ndim(x, 4, "x", op, "N, C·r², H, W")
    r = upscale_factor
    r = checks.integer(f"{op}: upscale_factor", r, 1)
    if x.shape[1] % (r * r):
        raise ValueError(f"{op}: x's {x.shape[1]} channels are not divisible by upscale_factor² = {r * r}")
    return PixelShuffle.apply(x, r=r)
