"""Gradient codecs: float32 buckets packed into 2-byte words and unpacked again, at memory speed.

A :class:`Codec` converts in place between a float32 array and preallocated ``uint16`` words holding the
fp16 or bf16 bits of its values (round to nearest, ties to even: bitwise what numpy's float16 cast and
ml_dtypes' bfloat16 cast give). It works in cache-sized chunks, so each of its few integer passes runs from
L1/L2 rather than main memory. Registered in :data:`CODECS`; tests iterate them.

Conversions use integer arithmetic on the float32 bit patterns (numpy's own float16 cast is a scalar
loop, about 0.7 GB/s):

* bf16 is the top half of a float32: add ``0x7FFF`` plus the lowest kept bit (ties to even), keep the high
  16 bits; carries run into the exponent, up to inf. NaNs become the quiet NaN ``0x7FC0`` with their sign.
* fp16 of ``x * 2**k`` (``k``: the exponent of a power-of-two scale): add to ``|x|`` the power of two
  whose float32 ulp is fp16's ulp at ``|x| * 2**k`` (at least fp16's subnormal spacing), so the float adder
  rounds (the "magic number" step, per element); the sum's low bits count ulps, and the power's exponent
  gives fp16's exponent field; the sign comes from the float32's high half. Inputs must be finite and
  ``|x * 2**k|`` below fp16's overflow threshold; :meth:`Codec.pack` falls back to an exact numpy cast
  otherwise.
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

__all__ = ["Codec", "CODECS", "get_codec", "CHUNK"]

CHUNK = 1 << 16  # elements per pass: two uint32 temporaries (512 KiB) stay in a core's L2
_F16_LIMIT = 65520.0  # |x| from here on rounds to inf in fp16 (max 65504 plus half an ulp)


class _Scratch:
    """Chunk-sized temporaries, allocated once per codec object."""

    def __init__(self, n: int = CHUNK):
        self.a, self.b = np.empty(n, np.uint32), np.empty(n, np.uint32)
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
    def pack(self, src, out, scale: float = 1.0):
        """``out[:] = bits of round(src * scale)``: ``src`` float32, ``out`` uint16 (or this codec's dtype)
        of the same size, ``scale`` a power of two. Returns ``out``."""
        words = out.view(np.uint16)
        if (src.dtype != np.float32 or not _power_of_two(scale) or src.size != words.size
                or not (src.flags.c_contiguous and words.flags.c_contiguous)):
            return self._pack_reference(src, words, scale)
        src, words = src.reshape(-1), words.reshape(-1)  # views
        k = math.frexp(scale)[1] - 1
        if self.name == "bf16":
            if k:
                return self._pack_reference(src, words, scale)
            for lo in range(0, src.size, CHUNK):
                self._bf16_chunk(src[lo:lo + CHUNK], words[lo:lo + CHUNK])
            return out
        if src.size and not (float(np.max(src)) * scale < _F16_LIMIT and float(np.min(src)) * scale > -_F16_LIMIT):
            return self._pack_reference(src, words, scale)  # NaN, inf or overflow: the exact cast handles them
        if not -100 < k < 100 or not np.little_endian:
            return self._pack_reference(src, words, scale)
        for lo in range(0, src.size, CHUNK):
            self._fp16_chunk(src[lo:lo + CHUNK], words[lo:lo + CHUNK], k)
        return out

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
        if self.name == "bf16" and out.dtype == np.float32 and out.size == words.size:  # one row: ml_dtypes'
            np.copyto(out, words.view(self.dtype).reshape(out.shape), casting="unsafe")  # cast is one pass
            if factor != 1.0:
                out *= np.float32(factor)
            return out
        return self.unpack_sum(words.reshape(1, -1), out, factor)

    @np.errstate(over="ignore", invalid="ignore")  # inf words stay inf; inf + -inf is NaN, as in float32
    def unpack_sum(self, rows, out, factor: float = 1.0):
        """``out[:] = (value(rows[0]) + value(rows[1]) + ...) * factor``: several ranks' words summed in
        ``out``'s dtype, in row order (so every rank that sums the same rows gets the same bits)."""
        rows = [r.view(np.uint16) for r in rows]
        if out.dtype != np.float32 or not out.flags.c_contiguous or any(r.size != out.size for r in rows):
            total = rows[0].view(self.dtype).astype(out.dtype)
            for r in rows[1:]:
                total += r.view(self.dtype).astype(out.dtype)
            out[...] = (total * factor if factor != 1.0 else total).reshape(out.shape)
            return out
        flat, rows = out.reshape(-1), [r.reshape(-1) for r in rows]
        for lo in range(0, flat.size, CHUNK):
            acc = self._decode(rows[0][lo:lo + CHUNK], self._s.a)
            for r in rows[1:]:
                acc += self._decode(r[lo:lo + CHUNK], self._s.b)
            if factor != 1.0:
                np.multiply(acc, np.float32(factor), out=flat[lo:lo + CHUNK])
            else:
                np.copyto(flat[lo:lo + CHUNK], acc)
        return out

    def _decode(self, w, scratch):
        """The float32 values of words ``w``, in ``scratch`` (a float32 view of it)."""
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
        v *= np.float32(2.0 ** 112)  # the value, exactly (it was times 2**-112) ...
        if not (np.max(v) < 65536 and np.min(v) > -65536):
            np.copyto(v, w.view(np.float16), casting="unsafe")  # ... but an inf/NaN word made +-65536
        return v


def _power_of_two(s) -> bool:
    return isinstance(s, (int, float, np.floating)) and s > 0 and math.isfinite(s) and math.frexp(s)[0] == 0.5


CODECS: dict[str, Callable[[], Codec]] = {name: functools.partial(Codec, name) for name in ("fp16", "bf16")}


def get_codec(name: str) -> Codec:
    """A new codec object (with its own scratch buffers) for ``name`` in :data:`CODECS`."""
    if name not in CODECS:
        raise ValueError(f"codec: expected one of {sorted(CODECS)}, got {name!r}")
    return CODECS[name]()
