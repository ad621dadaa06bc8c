"""Lossy DCT compression of 2-d fields, with the compression ratio counted in bytes actually stored.

Two codecs, registered in :data:`CODECS`:

``truncate``
    Keep the lowest ``k`` x ``k`` coefficients of the orthonormal 2-d DCT-II of the whole field
    (stored as float32). Smooth fields survive; sharp fronts ring (Gibbs) and the even extension of
    the DCT breaks periodicity at the longitude edges -- the errors a learned restoration can remove.
``block``
    JPEG-like: 8 x 8 blocks, DCT-II per block, uniform quantisation with a step that grows with
    frequency, then lossless zlib coding of the integer coefficients. Its size is what zlib returns.

References: Ahmed, Natarajan & Rao (1974), "Discrete Cosine Transform", IEEE Trans. Comput. C-23;
Wallace (1992), "The JPEG still picture compression standard", IEEE Trans. Consum. Electron. 38.
"""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from .. import backend


def _fft(xp):
    if xp is np:
        import scipy.fft
        return scipy.fft
    import cupyx.scipy.fft
    return cupyx.scipy.fft


@dataclasses.dataclass
class Compressed:
    """A compressed field: what a codec stores, and enough to decompress it.

    Attributes
    ----------
    codec : str
        Name in :data:`CODECS`.
    shape : tuple
        Shape of the original field.
    dtype : str
        Dtype of the original field (its size is the reference for the ratio).
    arrays : dict
        The stored numeric payload (host arrays); ``nbytes`` counts exactly these.
    params : dict
        Small codec parameters (k, block size, quantiser step); counted as 16 bytes.
    """

    codec: str
    shape: tuple
    dtype: str
    arrays: dict
    params: dict

    @property
    def nbytes(self) -> int:
        """Bytes stored: the payload arrays plus a 16-byte header for shape and parameters."""
        return int(sum(a.nbytes for a in self.arrays.values())) + 16

    @property
    def ratio(self) -> float:
        """Original bytes over stored bytes."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize / self.nbytes


def _check_field(field):
    """The field as a 2-d float array; NaN or inf would spread over every coefficient, so they are refused."""
    if backend.get_array_module(field) is np:
        field = np.asarray(field)
    if field.ndim != 2 or field.dtype.kind != "f":
        raise ValueError(f"field: expected a 2-d floating-point array, got shape {field.shape} dtype {field.dtype}")
    bad = int((~backend.get_array_module(field).isfinite(field)).sum())
    if bad:
        raise ValueError(f"field: expected finite values, got {bad} NaN or infinite of {field.size}")
    return field


class Truncate:
    """Global DCT truncation to the lowest ``k`` x ``k`` coefficients (``k`` an int or a (ky, kx) pair)."""

    name = "truncate"

    def __init__(self, k):
        ky, kx = (k, k) if np.isscalar(k) else k
        if int(ky) < 1 or int(kx) < 1:
            raise ValueError(f"k: the codec must keep at least one coefficient per axis, got {k!r}")
        self.k = (int(ky), int(kx))

    @classmethod
    def for_ratio(cls, shape, ratio: float, dtype=np.float64):
        """The square truncation whose stored size gives at least ``ratio`` for a field of ``shape``."""
        k = int(np.sqrt(np.prod(shape) * np.dtype(dtype).itemsize / ratio / 4))  # float32 coefficients
        if k < 1:
            raise ValueError(f"ratio: {ratio} would keep no coefficient of a {shape} field")
        return cls(k)

    def compress(self, field) -> Compressed:
        field = _check_field(field)
        ky, kx = self.k
        if ky > field.shape[0] or kx > field.shape[1]:
            raise ValueError(f"k: {self.k} exceeds the field's shape {field.shape}")
        xp = backend.get_array_module(field)
        coef = _fft(xp).dctn(field, type=2, norm="ortho")[:ky, :kx]
        return Compressed(self.name, field.shape, field.dtype.str, {"coef": backend.to_host(coef).astype(np.float32)},
                          {"k": self.k})

    @staticmethod
    def decompress(c: Compressed, xp=np):
        full = xp.zeros(c.shape, np.float64)
        coef = xp.asarray(c.arrays["coef"], dtype=np.float64)
        full[:coef.shape[0], :coef.shape[1]] = coef
        return _fft(xp).idctn(full, type=2, norm="ortho").astype(c.dtype)


class Block:
    """JPEG-like blockwise DCT with frequency-weighted uniform quantisation and zlib coding.

    The quantiser step for coefficient (i, j) of a block is ``step * (1 + slope * (i + j))``; the
    integer coefficients are stored in the narrowest of int16, int32 and int64 that holds them all and
    compressed losslessly with zlib. A step so small that a coefficient exceeds int64 is refused (a
    ``ValueError`` naming ``step``) rather than wrapped around.
    """

    name = "block"

    def __init__(self, step: float, block: int = 8, slope: float = 1.0):
        if not (isinstance(step, (int, float, np.integer, np.floating)) and not isinstance(step, bool)
                and np.isfinite(step) and step > 0):
            raise ValueError(f"step: expected a positive finite quantiser step, got {step!r}")
        if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 2:
            raise ValueError(f"block: expected an integer block size of at least 2, got {block!r}")
        if not (isinstance(slope, (int, float, np.integer, np.floating)) and not isinstance(slope, bool)
                and np.isfinite(slope) and 1 + slope * 2 * (block - 1) > 0):
            raise ValueError(f"slope: expected a finite number keeping every step positive "
                             f"(> {-1 / (2 * (block - 1)):.3g} for block={block}), got {slope!r}")
        self.step, self.block, self.slope = float(step), int(block), float(slope)

    def _steps(self):
        i = np.arange(self.block)
        return self.step * (1 + self.slope * (i[:, None] + i[None, :]))

    def _blocks(self, a, xp):
        b = self.block
        ny, nx = -(-a.shape[0] // b) * b, -(-a.shape[1] // b) * b
        a = xp.pad(a, ((0, ny - a.shape[0]), (0, nx - a.shape[1])), mode="edge")
        return a.reshape(ny // b, b, nx // b, b).transpose(0, 2, 1, 3)

    def compress(self, field) -> Compressed:
        field = _check_field(field)
        xp = backend.get_array_module(field)
        coef = _fft(xp).dctn(self._blocks(field.astype(np.float64), xp), type=2, norm="ortho", axes=(2, 3))
        with np.errstate(over="ignore"):  # a tiny step overflows to inf: refused below
            q = backend.to_host(xp.rint(coef / xp.asarray(self._steps())))
        qmax = float(np.abs(q).max(initial=0))
        dtype = next((t for t in (np.int16, np.int32, np.int64) if qmax <= np.iinfo(t).max), None)
        if dtype is None:
            cmax = float(xp.abs(coef).max())
            if not np.isfinite(cmax):
                raise ValueError("field: values too large for the DCT (a coefficient overflows float64)")
            raise ValueError(f"step: {self.step!r} quantises a coefficient of {cmax:.3g} to {qmax:.3g}, beyond "
                             f"int64; use a step of at least {cmax / 2.0 ** 62:.3g}")
        packed = np.frombuffer(zlib.compress(q.astype(dtype).tobytes(), 9), dtype=np.uint8)
        return Compressed(self.name, field.shape, field.dtype.str, {"zlib": packed},
                          {"step": self.step, "block": self.block, "slope": self.slope,
                           "grid": q.shape[:2], "int": np.dtype(dtype).str})

    @staticmethod
    def decompress(c: Compressed, xp=np):
        p = c.params
        codec = Block(p["step"], p["block"], p["slope"])
        q = np.frombuffer(zlib.decompress(c.arrays["zlib"].tobytes()), dtype=p["int"])
        q = xp.asarray(q.reshape(*p["grid"], p["block"], p["block"]).astype(np.float64))
        blocks = _fft(xp).idctn(q * xp.asarray(codec._steps()), type=2, norm="ortho", axes=(2, 3))
        b = p["block"]
        full = blocks.transpose(0, 2, 1, 3).reshape(p["grid"][0] * b, p["grid"][1] * b)
        return full[:c.shape[0], :c.shape[1]].astype(c.dtype)


CODECS = {"truncate": Truncate, "block": Block}


def get_codec(name: str, **params):
    """A codec instance by name (``"truncate"`` with ``k=``, ``"block"`` with ``step=``)."""
    if name not in CODECS:
        raise ValueError(f"codec: expected one of {list(CODECS)}, got {name!r}")
    return CODECS[name](**params)


def decompress(c: Compressed, xp=np):
    """The field a :class:`Compressed` stands for, on backend ``xp``."""
    return CODECS[c.codec].decompress(c, xp)


def relative_errors(approx, exact, weights=None) -> tuple[float, float]:
    """(relative L2, relative max) error of ``approx``; ``weights`` (e.g. cos latitude, broadcastable)
    weight the L2 norm by area."""
    xp = backend.get_array_module(approx, exact)
    w = xp.ones_like(exact) if weights is None else xp.broadcast_to(xp.asarray(weights), exact.shape)
    diff = approx - exact
    l2 = float(xp.sqrt((w * diff ** 2).sum() / (w * exact ** 2).sum()))
    return l2, float(xp.abs(diff).max() / xp.abs(exact).max())
