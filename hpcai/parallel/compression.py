"""Gradient codecs: float32 buckets packed into 2-byte words and unpacked again, at memory speed.

A :class:`Codec` converts in place between a float32 array and preallocated ``uint16`` words holding the
fp16 or bf16 bits of its values (round to nearest, ties to even: bitwise what numpy's float16 cast and
ml_dtypes' bfloat16 cast give). Registered in :data:`CODECS`; tests iterate them.

Two paths give the same bits. Where numba is installed (:mod:`hpcai.accel`), each conversion is one
compiled loop over the array, one element at a time in 32-bit integer and float lanes that LLVM
vectorises: packing (with the scale and the error-feedback residual), unpacking and the sum of several
ranks' rows each read and write memory once (12-28 GB/s on one core for 4 MiB buckets, 4-5x the numpy
path: numpy cannot fuse its passes, and its own float16 cast is a scalar loop, about 0.7 GB/s). Without
numba, numpy passes over cache-sized chunks (so each of the few integer passes runs from L1/L2) do the
same arithmetic.

The compiled loops (fp16 of ``x * 2**k``, ``k`` the exponent of the power-of-two scale):

* fp16, the "magic number" rounding for every finite value at once: add to ``|x|`` the power of two
  ``P = 2**(e + 13)`` (``e`` the exponent of ``|x|``, at least fp16's smallest normal over ``2**k``), whose
  float32 ulp is fp16's ulp at ``|x| * 2**k``: the float adder rounds, ties to even; the sum's bits minus
  ``P``'s count fp16 ulps and ``P``'s exponent gives fp16's exponent field. ``|x| * 2**k >= 2**16`` and inf
  become inf, NaN keeps its top payload bits as numpy's casts do (quiet when scaled: that cast goes through
  float64). The residual ``x - value / 2**k`` is ``x - (sum - P)`` with ``x``'s sign, exact.
* bf16 as below, per element; unpacking as below, the inf/NaN words told by ``|value| >= 65536``; the
  rows of an unpack-and-sum added in row order in cache-sized blocks of ``out``.

The numpy chunks:

* bf16 is the top half of a float32: add ``0x7FFF`` plus the lowest kept bit (ties to even), keep the high
  16 bits; carries run into the exponent, up to inf. NaNs become the quiet NaN ``0x7FC0`` with their sign.
* fp16 of ``x * 2**k`` (``k``: the exponent of a power-of-two scale), the fast path: ``a = x * 2**(k-112)``
  (exact), then Veltkamp's splitting ``c = 8193 a; hi = c - (c - a)`` rounds ``a`` to 11 significant bits,
  to nearest (Dekker 1971, sec. 5; Boldo 2006), ties to even (a test compares every float32 of a binade
  with numpy's cast; the splitting commutes with powers of two). For fp16's normal range ``hi`` is fp16's
  value times ``2**-112``: a float32 whose exponent field is fp16's and whose top 10 mantissa bits are
  fp16's, so ``hi``'s bits shifted right by 13 are the word; the sign comes from the float32's high half.
  Three float passes and a shift instead of a dozen integer ones. Each chunk's high halves say, with two
  16-bit reductions, whether a value is too large (``|x * 2**k| >= 2**16``, inf, NaN: the exact cast takes
  that chunk) or, being non-zero, below fp16's smallest normal ``2**-14`` (those few are redone exactly:
  numpy's cast, or the general kernel below; the rest keep the fast result).
* fp16, the general kernel (any finite ``|x * 2**k|`` below fp16's overflow threshold, subnormals
  included): add to ``|x|`` the power of two whose float32 ulp is fp16's ulp at ``|x| * 2**k`` (at least
  fp16's subnormal spacing), so the float adder rounds (the "magic number" step, per element); the sum's
  low bits count ulps, and the power's exponent gives fp16's exponent field; the sign comes from the
  float32's high half.
* unpacking is exact: bf16 words shifted into the top half; fp16 words sign-extended and shifted so that
  exponent and mantissa sit where float32 keeps them, then multiplied by ``2**112`` (the exponent bias
  difference; fp16 subnormals become float32 normals by the same product).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import ml_dtypes
import numpy as np

from .. import accel

__all__ = ["Codec", "CODECS", "get_codec", "CHUNK"]

CHUNK = 1 << 16  # elements per pass: its temporaries (two uint32, two uint16: 768 KiB) stay in a core's L2
_VELTKAMP = np.float32(2 ** 13 + 1)  # splits a float32 (24 bits) into 11 + 13: fp16's significand
_NO_RESIDUAL = np.empty(0, np.float32)


# -- compiled loops (numba widens integer arithmetic to 64 bits: np.int32 around each step keeps 32-bit lanes)
@accel.jit
def _pack_fp16_kernel(x, w, k, res):
    """``w[i]`` = fp16 bits of ``x[i] * 2**k`` (``-37 <= k < 100``); ``res[i] = x[i] - value / 2**k`` if
    ``res`` is not empty."""
    keep = res.size != 0
    quiet = 0x400000 if k != 0 else 0  # the reference cast of a scaled NaN goes through float64: quiet
    floor = np.int32((113 - k) << 23)  # 2**(-14 - k): fp16's smallest normal, unscaled
    over = np.float32(2.0 ** (16 - k))  # from here on: inf
    bias = np.int32((126 - k) << 10)  # exponent fields: float32's of P (e + 13) to fp16's (e + k + 15)
    inf = np.float32(np.inf)
    for i in range(x.size):
        v = x[i]
        b = np.int32(np.float32(v).view(np.int32))
        p = np.int32(max(np.int32(b & 0x7F800000), floor) + np.int32(13 << 23))  # P's bits
        pf = np.int32(p).view(np.float32)
        f = abs(v) + pf  # rounds |x| to fp16's ulp
        h = np.int32(np.int32(np.float32(f).view(np.int32)) - p)  # ulps: 1024 + mantissa (subnormal: mantissa)
        h = np.int32(np.int32(h + np.int32(p >> 13)) - bias)  # plus fp16's exponent field
        if abs(v) >= over:
            h = np.int32(0x7C00)
        if v != v:
            h = np.int32(0x7C00 | max(np.int32((np.int32(b | quiet) & 0x7FFFFF) >> 13), 1))
        w[i] = np.uint16(np.int32(h | np.int32(np.int32(b >> 16) & 0x8000)))
        if keep:
            r = f - pf  # |value| / 2**k, exact
            if h >= 0x7C00:
                r = inf
            res[i] = v - (-r if b < 0 else r)


@accel.jit
def _pack_bf16_kernel(x, w, res, feed, ratio):
    """``w[i]`` = bf16 bits of ``v = x[i]`` (``feed``: ``v = x[i] + res[i] * ratio``, the product skipped
    when ``ratio`` is 1); ``res[i] = v - value`` if ``res`` is not empty. Returns the largest ``|v|``'s
    float32 bits (a NaN's exceed inf's)."""
    keep, scaled = res.size != 0, ratio != 1
    m = np.int32(0)
    for i in range(x.size):
        v = x[i]
        if feed:
            e = res[i]
            if scaled:
                e *= ratio
            v += e
        m = max(m, np.int32(np.float32(v).view(np.int32) & 0x7FFFFFFF))
        b = np.uint32(np.float32(v).view(np.uint32))
        r = np.uint32(np.uint32(b + np.uint32(0x7FFF) + np.uint32(np.uint32(b >> 16) & 1)) >> 16)
        if v != v:
            r = np.uint32(np.uint32(np.uint32(b >> 16) & 0x8000) | 0x7FC0)
        w[i] = np.uint16(r)
        if keep:
            res[i] = v - np.uint32(r << 16).view(np.float32)
    return m


@accel.jit
def _unpack_fp16_kernel(rows, out, each, scaled, after, scale_after):
    """``out = (value(rows[0]) * each + value(rows[1]) * each + ...) * after``; ``rows`` int16 (n_rows, n)."""
    big, lim = np.float32(2.0 ** 112) * each, np.float32(65536.0) * each
    for lo in range(0, out.size, 2048):
        o = out[lo:lo + 2048]  # in L1 while every row adds into it
        for r in range(rows.shape[0]):
            row = rows[r, lo:lo + 2048]
            for i in range(o.size):
                bits = np.int32(np.int32(np.int32(row[i]) << 13) & np.int32(-0x70000001))  # sign-extended
                f = np.int32(bits).view(np.float32) * big  # exact; inf/NaN words come out +-65536 each
                if abs(f) >= lim:
                    f = np.int32(bits | 0x70000000).view(np.float32)
                    if scaled:
                        f *= each
                if r == 0:
                    o[i] = f
                else:
                    acc = o[i]
                    total = acc + f
                    if acc != acc:  # NaN + NaN: the first one's payload, as numpy's adds give it
                        total = acc + acc
                    o[i] = total
        if scale_after:
            for i in range(o.size):
                o[i] *= after


@accel.jit
def _unpack_bf16_kernel(rows, out, after, scale_after):
    """``out = (value(rows[0]) + value(rows[1]) + ...) * after``; ``rows`` uint16 (n_rows, n)."""
    for lo in range(0, out.size, 2048):
        o = out[lo:lo + 2048]
        for r in range(rows.shape[0]):
            row = rows[r, lo:lo + 2048]
            for i in range(o.size):
                f = np.uint32(np.uint32(row[i]) << 16).view(np.float32)
                if r == 0:
                    o[i] = f
                else:
                    acc = o[i]
                    total = acc + f
                    if acc != acc:
                        total = acc + acc
                    o[i] = total
        if scale_after:
            for i in range(o.size):
                o[i] *= after


class _Scratch:
    """Chunk-sized temporaries, allocated once per codec object."""

    def __init__(self, n: int = CHUNK):
        self.a, self.b = np.empty(n, np.uint32), np.empty(n, np.uint32)
        self.h, self.g = np.empty(n, np.uint16), np.empty(n, np.uint16)
        self.mask = np.empty(n, bool)


class Codec:
    """fp16 or bf16 words from float32 values and back; every method writes into arrays it is given."""

    def __init__(self, name: str):
        if name not in ("fp16", "bf16"):
            raise ValueError(f"codec: expected 'fp16' or 'bf16', got {name!r}")
        self.name = name
        self.dtype = np.dtype(np.float16 if name == "fp16" else ml_dtypes.bfloat16)
        self._s = _Scratch()

    def __repr__(self) -> str:
        return f"Codec({self.name!r})"

    # -- packing ---------------------------------------------------------------------------------------
    @np.errstate(invalid="ignore")  # an inf packed leaves inf - inf, NaN, as residual: as float32 has it
    def pack(self, src, out, scale: float = 1.0, residual=None):
        """``out[:] = bits of round(src * scale)``: ``src`` float32, ``out`` uint16 (or this codec's dtype)
        of the same size, ``scale`` a power of two. Returns ``out``.

        ``residual``: an array of ``src``'s size and dtype that receives the rounding error ``src -
        value(out) / scale`` (error feedback), made chunk by chunk while the chunk is still in cache."""
        words = out.view(np.uint16)
        if (src.dtype != np.float32 or not _power_of_two(scale) or src.size != words.size
                or not (src.flags.c_contiguous and words.flags.c_contiguous) or not np.little_endian
                or (residual is not None and not (residual.dtype == np.float32 and residual.size == src.size
                                                  and residual.flags.c_contiguous))):
            self._pack_slowly(src, words, scale, residual)
            return out
        src, words = src.reshape(-1), words.reshape(-1)  # views
        res = residual.reshape(-1) if residual is not None else None
        k = math.frexp(scale)[1] - 1
        if k != 0 if self.name == "bf16" else not -37 <= k < 100:  # (fp16: 2**(k - 112) must be a float32)
            self._pack_slowly(src, words, scale, residual)
            return out
        if _pack_fp16_kernel.available:
            r = res if res is not None else _NO_RESIDUAL
            if self.name == "bf16":
                _pack_bf16_kernel(src, words, r, False, np.float32(1))
            else:
                _pack_fp16_kernel(src, words, k, r)
            return out
        unscale = 1.0 / scale  # folded into fp16's decoding product while 2**112 times it is a float32
        for lo in range(0, src.size, CHUNK):
            x, w = src[lo:lo + CHUNK], words[lo:lo + CHUNK]
            if self.name == "bf16":
                self._bf16_chunk(x, w)
            elif not self._fp16_fast_chunk(x, w, k):  # a value at or past 2**16 (after scaling), inf or NaN
                self._pack_reference(x, w, scale)
            if res is not None:
                v = self._decode(w, res[lo:lo + CHUNK].view(np.uint32), unscale if unscale <= 2 ** 12 else 1.0)
                if unscale > 2 ** 12:
                    v *= np.float32(unscale)
                np.subtract(x, v, out=v)
        return out

    def pack_fed_back(self, src, out, residual, ratio: float = 1.0) -> float:
        """Error feedback's pack in one pass: ``out[:] = bits of round(v)``, ``v = src + residual * ratio``
        (the rounding errors kept, brought to this step's loss scale; ``src`` is not written), then
        ``residual[:] = v - value(out)``. Scale 1 (bf16's; fp16 has its scale from the largest value over
        all ranks, known only after this rank's values are). Returns the largest ``|v|`` (inf for an inf or
        a NaN), whose ranks' maximum tells whether the errors may be kept. Compiled for bf16 float32."""
        words = out.view(np.uint16)
        if (self.name == "bf16" and _pack_bf16_kernel.available and src.dtype == residual.dtype == np.float32
                and src.size == words.size == residual.size and np.little_endian
                and src.flags.c_contiguous and words.flags.c_contiguous and residual.flags.c_contiguous):
            m = int(_pack_bf16_kernel(src.reshape(-1), words.reshape(-1), residual.reshape(-1), True,
                                      np.float32(ratio)))
            return math.inf if m >= 0x7F800000 else float(np.int32(m).view(np.float32))
        with np.errstate(over="ignore", invalid="ignore"):
            v = src + (residual * ratio if ratio != 1.0 else residual)  # (numpy: float32 times a weak float)
        self.pack(v, out, 1.0, residual=residual)
        m = max(float(v.max()), -float(v.min())) if v.size else 0.0
        return math.inf if math.isnan(m) else m

    def _pack_slowly(self, src, words, scale, residual):
        """:meth:`pack` through the exact cast, for what the kernels do not take."""
        self._pack_reference(src, words, scale)
        if residual is not None:
            with np.errstate(over="ignore", invalid="ignore"):
                value = words.view(self.dtype).astype(residual.dtype) * (1.0 / scale)  # exact
                residual[...] = (np.asarray(src, residual.dtype) - value.reshape(np.shape(src))).reshape(
                    residual.shape)

    def _pack_reference(self, src, words, scale):
        """The exact casts (numpy float16; ml_dtypes bfloat16, through float64 done in one rounding)."""
        from .. import precision
        x = np.asarray(src)
        if scale != 1.0 or x.dtype not in (np.float32, np.float64):
            with np.errstate(over="ignore", invalid="ignore"):
                x = x.astype(np.float64) * scale  # exact, then one rounding
        words[...] = precision.cast(x, self.name).view(np.uint16).reshape(words.shape)
        return words

    def _bf16_chunk(self, x, w) -> None:
        n = x.size
        u, t, m = x.view(np.uint32), self._s.a[:n], self._s.mask[:n]
        np.right_shift(u, 16, out=t)
        np.bitwise_and(t, 1, out=t)
        t += 0x7FFF
        t += u
        t >>= 16
        np.copyto(w, t, casting="unsafe")
        if np.isnan(np.max(x)):  # rare: NaN -> the quiet NaN, sign kept
            np.isnan(x, out=m)
            w[m] = (u[m] >> 16).astype(np.uint16) & 0x8000 | 0x7FC0

    def _fp16_fast_chunk(self, x, w, k: int) -> bool:
        """Pack chunk ``x`` (times ``2**k``) into ``w``; False (``w`` unspecified) if a value is not below
        ``2**16`` after scaling, inf or NaN. Non-zero values below fp16's normal range are redone exactly."""
        n = x.size
        au, bu, h, g = self._s.a[:n], self._s.b[:n], self._s.h[:n], self._s.g[:n]
        a, b = au.view(np.float32), bu.view(np.float32)
        np.right_shift(x.view(np.uint32), 16, out=au)  # (a shift in place and a narrowing copy: faster
        np.copyto(h, au, casting="unsafe")              # than one shift into uint16) high halves: sign, exponent
        np.add(h, h, out=g)  # ... without the sign, doubled: 0 for +-0
        top = int(np.max(g))
        if top >= (143 - k) << 8:  # |x| >= 2**(16 - k), inf or NaN
            return False
        np.multiply(x, np.float32(2.0 ** (k - 112)), out=a)  # exact for fp16's normal range
        np.multiply(a, _VELTKAMP, out=b)  # c = (2**13 + 1) a
        np.subtract(b, a, out=a)  # c - a
        np.subtract(b, a, out=b)  # c - (c - a): a rounded to 11 significant bits, ties to even
        np.right_shift(bu, 13, out=bu)  # fp16's exponent (5 bits) and 10 mantissa bits, above the sign bit
        np.copyto(w, bu, casting="unsafe")
        np.bitwise_and(h, 0x8000, out=h)
        w |= h
        g -= 2  # +-0 wrap to the top
        small = ((113 - k) << 8) - 2  # g below it: 0 < |x| < 2**(-14 - k), fp16's subnormals
        if int(np.min(g)) < small:
            idx = np.flatnonzero(g < small)
            if idx.size > n // 8 and top < (142 - k) << 8:  # many: the general kernel (up to 2**15) for all
                self._fp16_chunk(x, w, k)
            elif idx.size <= 64:  # a few: numpy's cast (one rounding from the exact float64 product)
                w[idx] = (x[idx].astype(np.float64) * 2.0 ** k).astype(np.float16).view(np.uint16)
            else:
                sub = np.empty(idx.size, np.uint16)
                self._fp16_chunk(x[idx], sub, k)
                w[idx] = sub
        return True

    def _fp16_chunk(self, x, w, k: int) -> None:
        n = x.size
        u, a, b = x.view(np.uint32), self._s.a[:n], self._s.b[:n]
        np.bitwise_and(u, 0x7FFFFFFF, out=a)  # |x|
        np.bitwise_and(u, 0x7F800000, out=b)  # 2**e, e the exponent of |x|, no lower than fp16's 2**-14 / 2**k
        np.maximum(b, np.uint32((113 - k) << 23), out=b)
        b += np.uint32(13 << 23)  # 2**(e + 13): its float32 ulp is fp16's ulp of |x| (over 2**k)
        fa = a.view(np.float32)
        np.add(fa, b.view(np.float32), out=fa)  # the float adder rounds |x| to that ulp (ties to even)
        a -= b  # |x| rounded, in ulps: 1024 + mantissa (subnormals: the mantissa)
        b >>= 13
        a += b  # plus the exponent field of 2**(e + 13) ...
        a -= np.uint32((126 - k) << 10)  # ... made fp16's: e + k + 15 (0 for subnormals)
        np.copyto(w, a, casting="unsafe")
        sign = b.view(np.uint16)[:n]
        np.bitwise_and(x.view(np.uint16)[1::2], 0x8000, out=sign)  # the high halves of the float32s
        w |= sign

    # -- unpacking -------------------------------------------------------------------------------------
    @np.errstate(over="ignore", invalid="ignore")  # as in unpack_sum
    def unpack(self, words, out, factor: float = 1.0):
        """``out[:] = value(words) * factor`` (``out`` float32, or any float dtype the slow way). Returns ``out``."""
        if (self.name == "bf16" and out.dtype == np.float32 and out.size == words.size  # one row: ml_dtypes'
                and not _unpack_bf16_kernel.available):
            np.copyto(out, words.view(self.dtype).reshape(out.shape), casting="unsafe")  # cast is one pass
            if factor != 1.0:
                out *= np.float32(factor)
            return out
        return self.unpack_sum(words.reshape(1, -1), out, factor)

    @np.errstate(over="ignore", invalid="ignore")  # inf words stay inf; inf + -inf is NaN, as in float32
    def unpack_sum(self, rows, out, factor: float = 1.0, finite: bool = False):
        """``out[:] = (value(rows[0]) + value(rows[1]) + ...) * factor``: several ranks' words summed in
        ``out``'s dtype, in row order (so every rank that sums the same rows gets the same bits).

        ``finite=True`` promises that no word is inf or NaN (the caller knows the largest value packed), so
        fp16 words skip the check for them; a power-of-two ``factor`` is folded into fp16's decoding product
        (exact: scaling by a power of two commutes with each rounding of the sum while nothing underflows).
        """
        table, rows = rows, [r.view(np.uint16) for r in rows]
        if out.dtype != np.float32 or not out.flags.c_contiguous or any(r.size != out.size for r in rows):
            total = rows[0].view(self.dtype).astype(out.dtype)
            for r in rows[1:]:
                total += r.view(self.dtype).astype(out.dtype)
            out[...] = (total * factor if factor != 1.0 else total).reshape(out.shape)
            return out
        fold = self.name == "fp16" and _power_of_two(factor) and 2.0 ** -100 <= factor <= 2.0 ** 12
        scale = float(factor) if fold else 1.0
        if _unpack_fp16_kernel.available and np.little_endian:  # one pass over out, from the rows as they are
            if not (isinstance(table, np.ndarray) and table.ndim == 2 and table.flags.c_contiguous):
                table = np.stack([r.reshape(-1) for r in rows])
            table = table.view(np.uint16)
            after = np.float32(1.0 if fold else factor)
            if self.name == "bf16":
                _unpack_bf16_kernel(table, out.reshape(-1), after, factor != 1.0)
            else:
                _unpack_fp16_kernel(table.view(np.int16), out.reshape(-1), np.float32(scale), scale != 1.0, after,
                                    not fold and factor != 1.0)
            return out
        flat, rows = out.reshape(-1), [r.reshape(-1) for r in rows]
        for lo in range(0, flat.size, CHUNK):
            acc = self._decode(rows[0][lo:lo + CHUNK], flat[lo:lo + CHUNK].view(np.uint32), scale, finite)
            for r in rows[1:]:
                acc += self._decode(r[lo:lo + CHUNK], self._s.b, scale, finite)
            if factor != 1.0 and not fold:
                acc *= np.float32(factor)
        return out

    def _decode(self, w, scratch, scale: float = 1.0, finite: bool = False):
        """The float32 values of words ``w`` (fp16: times ``scale``, a power of two), in ``scratch`` (a
        uint32 array; the float32 view of it is returned)."""
        t = scratch[:w.size]
        if self.name == "bf16":
            np.copyto(t, w, casting="unsafe")
            t <<= 16
            return t.view(np.float32)
        i = t.view(np.int32)
        np.copyto(i, w.view(np.int16), casting="unsafe")  # sign-extended
        i <<= 13
        i &= np.int32(-0x70000001)  # 0x8FFFFFFF: sign at bit 31, exponent and mantissa at bits 27..13
        v = t.view(np.float32)
        v *= np.float32(2.0 ** 112 * scale)  # the value, exactly (it was times 2**-112) ...
        if not finite and not (np.max(v) < 65536 * scale and np.min(v) > -65536 * scale):
            np.copyto(v, w.view(np.float16), casting="unsafe")  # ... but an inf/NaN word made +-65536
            if scale != 1.0:
                v *= np.float32(scale)
        return v


def _power_of_two(s) -> bool:
    return isinstance(s, (int, float, np.floating)) and s > 0 and math.isfinite(s) and math.frexp(s)[0] == 0.5


CODECS: dict[str, Callable[[], Codec]] = {name: functools.partial(Codec, name) for name in ("fp16", "bf16")}


def get_codec(name: str) -> Codec:
    """A new codec object (with its own scratch buffers) for ``name`` in :data:`CODECS`."""
    if name not in CODECS:
        raise ValueError(f"codec: expected one of {sorted(CODECS)}, got {name!r}")
    return CODECS[name]()
