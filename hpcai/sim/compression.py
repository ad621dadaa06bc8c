"""Lossy compression of 2-d fields, with the compression ratio counted in bytes actually stored.

Four codecs, registered in :data:`CODECS` (one interface: ``compress(field) -> Compressed`` and
``decompress(compressed, xp)``; :func:`for_ratio` tunes any of them to a total ratio over many fields):

``truncate``
    Keep the lowest ``k`` x ``k`` coefficients of the orthonormal 2-d DCT-II of the whole field
    (stored as float32). Smooth fields survive; sharp fronts ring (Gibbs) and the even extension of
    the DCT breaks periodicity at the longitude edges -- the errors a learned restoration can remove.
``block``
    JPEG-like: 8 x 8 blocks, DCT-II per block, uniform quantisation with a step that grows with
    frequency, then lossless bzip2 coding of the integer coefficients, frequency by frequency (all blocks'
    coefficient (0, 0), then (0, 1), ...: the high frequencies' long runs of zeros sit together; about 0.65-0.8x
    the bytes of zlib in block order). Its size is what bzip2 returns, and the stream is an HDF5 chunk of the
    hdf5plugin ``BZip2`` filter.

References: Ahmed, Natarajan & Rao (1974), "Discrete Cosine Transform", IEEE Trans. Comput. C-23;
Wallace (1992), "The JPEG still picture compression standard", IEEE Trans. Consum. Electron. 38.
"""
from __future__ import annotations

import bz2
import dataclasses
import io
import lzma
import math
import zlib

import numpy as np

from .. import backend, checks


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
        """The square truncation whose stored size, its 16-byte header included, gives at least ``ratio``
        for a field of ``shape``."""
        budget = (np.prod(shape) * np.dtype(dtype).itemsize / ratio - 16) / 4  # float32 coefficients
        k = int(np.sqrt(budget)) if budget >= 1 else 0
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
    """JPEG-like blockwise DCT with frequency-weighted uniform quantisation and bzip2 coding.

    The quantiser step for coefficient (i, j) of a block is ``step * (1 + slope * (i + j))``; the
    integer coefficients, laid out frequency-major (i, j, block row, block column), are stored in the
    narrowest of int16, int32 and int64 that holds them all and compressed losslessly with bzip2. A step so
    small that a coefficient exceeds int64 is refused (a ``ValueError`` naming ``step``) rather than wrapped
    around.
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
        by_frequency = np.ascontiguousarray(q.transpose(2, 3, 0, 1), dtype=dtype)
        packed = np.frombuffer(bz2.compress(by_frequency.tobytes(), 9), dtype=np.uint8)
        return Compressed(self.name, field.shape, field.dtype.str, {"bz2": packed},
                          {"step": self.step, "block": self.block, "slope": self.slope,
                           "grid": q.shape[:2], "int": np.dtype(dtype).str})

    @staticmethod
    def quantised(c: Compressed) -> np.ndarray:
        """The integer coefficients of ``c``: (block rows, block columns, block, block). Streams of earlier
        versions (``zlib``, in block order) decode too."""
        p = c.params
        if "zlib" in c.arrays:
            q = np.frombuffer(zlib.decompress(c.arrays["zlib"].tobytes()), dtype=p["int"])
            return q.reshape(*p["grid"], p["block"], p["block"])
        q = np.frombuffer(bz2.decompress(c.arrays["bz2"].tobytes()), dtype=p["int"])
        return q.reshape(p["block"], p["block"], *p["grid"]).transpose(2, 3, 0, 1)

    @staticmethod
    def reconstruct(q, step: float, slope: float, shape, xp=np):
        """The field of ``shape`` from integer coefficients ``q`` (block rows, block columns, b, b): each
        block's inverse DCT-II (ortho) of ``q * step * (1 + slope * (i + j))``, blocks side by side, cropped."""
        b = q.shape[-1]
        steps = Block(step, b, slope)._steps()
        blocks = _fft(xp).idctn(xp.asarray(q, dtype=np.float64) * xp.asarray(steps), type=2, norm="ortho",
                                axes=(2, 3))
        full = blocks.transpose(0, 2, 1, 3).reshape(q.shape[0] * b, q.shape[1] * b)
        return full[:shape[0], :shape[1]]

    @staticmethod
    def decompress(c: Compressed, xp=np):
        p = c.params
        return Block.reconstruct(Block.quantised(c), p["step"], p["slope"], c.shape, xp).astype(c.dtype)


def hdf5_filters():
    """h5py and hdf5plugin, imported on first use of an HDF5-filter codec."""
    try:
        import h5py
        import hdf5plugin
    except ImportError as e:
        raise ImportError("the sz3 and zfp codecs need h5py and hdf5plugin: pip install 'hpcai[io]'") from e
    return h5py, hdf5plugin


class _Filter:
    """An error-bounded compressor run as an HDF5 filter on one chunk holding the whole field.

    The stored bytes are the filter's output (``read_direct_chunk``), decompressed by writing them back as a
    raw chunk of a dataset with the same filter and reading it (``write_direct_chunk``): exactly what an
    HDF5 reader does with the chunks of a file (:func:`filter_options` gives the dataset's filter).
    """

    name, modes = "", ()

    def __init__(self, bound: float, mode: str = "absolute"):
        self.mode = checks.choice("mode", mode, self.modes)
        self.bound = checks.number("bound", bound, 0, low_open=True)

    def absolute(self, field) -> float:
        """The bound handed to the filter: ``relative`` scales ``bound`` by the field's value range."""
        if self.mode != "relative":
            return self.bound
        span = float(field.max() - field.min())
        return self.bound * span if span > 0 else self.bound

    def compress(self, field) -> Compressed:
        field = backend.to_host(_check_field(field))
        h5py, _ = hdf5_filters()
        bound = self.absolute(field)
        with h5py.File(io.BytesIO(), "w") as f:
            d = f.create_dataset("x", data=field, chunks=field.shape, **self._filter(self.mode, bound))
            stream = d.id.read_direct_chunk((0,) * field.ndim)[1]
        return Compressed(self.name, field.shape, field.dtype.str, {"stream": np.frombuffer(stream, np.uint8)},
                          {"mode": self.mode, "bound": bound})

    @classmethod
    def decompress(cls, c: Compressed, xp=np):
        h5py, _ = hdf5_filters()
        with h5py.File(io.BytesIO(), "w") as f:
            d = f.create_dataset("x", c.shape, c.dtype, chunks=c.shape, **filter_options(c))
            d.id.write_direct_chunk((0,) * len(c.shape), c.arrays["stream"].tobytes(), 0)
            return xp.asarray(d[()])


class Sz3(_Filter):
    """SZ3 (prediction + quantisation + entropy coding) with a point-wise error bound; ``pointwise`` is SZ2's
    point-wise relative mode (|error| <= bound |value| at every point)."""

    name, modes = "sz3", ("absolute", "relative", "pointwise")

    @staticmethod
    def _filter(mode, bound):
        _, plugin = hdf5_filters()
        if mode == "pointwise":
            return dict(plugin.SZ(pointwise_relative=bound))
        return dict(plugin.SZ3(absolute=bound))


class Zfp(_Filter):
    """ZFP (block transform + embedded coding): fixed accuracy (``absolute``/``relative``: |error| <= bound
    point-wise), fixed ``rate`` (bits per value) or fixed ``precision`` (bit planes)."""

    name, modes = "zfp", ("absolute", "relative", "rate", "precision")

    @staticmethod
    def _filter(mode, bound):
        _, plugin = hdf5_filters()
        key = {"rate": "rate", "precision": "precision"}.get(mode, "accuracy")
        return dict(plugin.Zfp(**{key: bound}))


def filter_options(c: Compressed) -> dict:
    """``create_dataset`` keywords of an HDF5 dataset whose chunks are streams like ``c``'s (sz3, zfp)."""
    return CODECS[c.codec]._filter(c.params["mode"], c.params["bound"])


CODECS = {"truncate": Truncate, "block": Block, "sz3": Sz3, "zfp": Zfp}
_KNOB = {"block": "step", "sz3": "bound", "zfp": "bound"}  # the parameter for_ratio tunes (larger: fewer bytes)


def for_ratio(name: str, fields, ratio: float, iterations: int = 30, **params):
    """The codec ``name`` whose stored bytes over all ``fields`` together give a ratio of at least ``ratio``.

    ``truncate``: the largest k x k (:meth:`Truncate.for_ratio`); ``zfp`` with ``mode="rate"`` or
    ``"precision"``: the largest rate (bits per value) or precision; the others: their step or absolute
    bound, bisected in log between 1e-9 and 10 times the largest |value| (stored sizes grow as it falls).
    """
    checks.choice("codec", name, CODECS)
    ratio = checks.number("ratio", ratio, 1, low_open=True)
    fields = [_check_field(f) for f in fields]
    if name == "truncate":
        return Truncate.for_ratio(fields[0].shape, ratio, fields[0].dtype)
    raw = sum(f.nbytes for f in fields)
    make = lambda x: CODECS[name](**{_KNOB[name]: x, **params})  # noqa: E731
    reaches = lambda x: raw / sum(make(x).compress(f).nbytes for f in fields) >= ratio  # noqa: E731
    if params.get("mode") in ("rate", "precision"):  # more bits, more bytes: the largest that reaches
        lo, hi = 1 / 64, 64.0
        if not reaches(lo):
            raise ValueError(f"ratio: the {name} codec cannot reach {ratio} on these fields")
        for _ in range(iterations):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if reaches(mid) else (lo, mid)
        return make(lo)
    top = 10 * max(float(abs(f).max()) for f in fields) or 1.0
    if not reaches(top):
        raise ValueError(f"ratio: the {name} codec cannot reach {ratio} on these fields")
    lo, hi = 1e-9 * top, top
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if not reaches(mid) else (lo, mid)
    return make(hi)


def get_codec(name: str, **params):
    """A codec instance by name (``"truncate"`` with ``k=``, ``"block"`` with ``step=``, ``"sz3"`` and ``"zfp"``
    with ``bound=`` and ``mode=``)."""
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


def clamp(restored, decompressed, bound: float):
    """``restored`` moved into [decompressed - bound, decompressed + bound]: where an absolute-bound codec
    guarantees |decompressed - original| <= bound, the original lies there, so clamping never adds error
    and bounds |restored - original| by 2 bound (free: nothing is stored)."""
    xp = backend.get_array_module(restored, decompressed)
    return xp.clip(restored, decompressed - bound, decompressed + bound)


_GAP_TYPES = (np.uint8, np.uint16, np.uint32, np.uint64)  # the sparse layouts of earlier versions
_STEP_TYPES = (np.int8, np.int16, np.int32)
GUARD_UNIT = 1.98  # a correction is a multiple of GUARD_UNIT * bound: at most 0.99 bound is left, round-off too
_LZMA = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 0, "lp": 0, "pb": 0}]


def guard(restored, original, bound: float) -> np.ndarray:
    """Stored corrections that make any restoration keep the point-wise bound ``bound``.

    At the points where |restored - original| > bound the correction ``round((original - restored) / u)``,
    a multiple of the unit ``u = GUARD_UNIT * bound`` (so at most u / 2 < bound is left), is kept; the others
    are zero. The whole field of multiples, in the narrowest integer type that holds them (int8 nearly
    always), is LZMA-coded (raw LZMA2, no container) behind one byte naming the type: with 10-25 % of the
    points corrected, as at ratio 20, a dense field costs 0.75-0.9x a bitmap plus the values. Nothing to
    correct: one byte. :func:`apply_guard` adds them back; their bytes count with the data.
    """
    bound = checks.number("bound", bound, 0, low_open=True)
    diff = backend.to_host(original - restored)
    over = np.abs(diff) > bound
    if not over.any():
        return np.array([2], np.uint8)
    q = np.where(over, np.rint(diff / (GUARD_UNIT * bound)), 0)
    if np.abs(q).max() >= 2 ** 31:
        raise ValueError(f"bound: {bound!r} is too small for corrections of {np.abs(diff).max():.3g} in int32")
    k = next(i for i, t in enumerate(_STEP_TYPES) if np.abs(q).max() <= np.iinfo(t).max)
    stream = lzma.compress(q.astype(_STEP_TYPES[k]).tobytes(), format=lzma.FORMAT_RAW, filters=_LZMA)
    corrections = np.frombuffer(bytes([2 + k]) + stream, np.uint8)
    left = float(np.abs(backend.to_host(apply_guard(restored, corrections, bound)) - backend.to_host(original)).max())
    if left > bound:  # only where the values are ~1e14 bounds: round-off beyond the bound
        raise ValueError(f"bound: {bound!r} is below float64 round-off of the field's values ({left:.3g} left)")
    return corrections


def apply_guard(restored, corrections, bound: float):
    """``restored`` with the corrections of :func:`guard` (made with the same ``bound``) added; the sparse
    layouts of earlier versions (gaps or a bitmap, multiples of ``bound``) decode too."""
    xp = backend.get_array_module(restored)
    data = np.asarray(corrections, np.uint8).tobytes()
    out = restored.copy()
    if data[0] >= 2:  # the dense field of multiples of GUARD_UNIT * bound
        if len(data) > 1:
            q = np.frombuffer(lzma.decompress(data[1:], format=lzma.FORMAT_RAW, filters=_LZMA),
                              _STEP_TYPES[data[0] - 2])
            out += xp.asarray(q.reshape(restored.shape) * (GUARD_UNIT * float(bound)))
        return out
    if data[0] == 0:  # gaps between the corrected points
        payload = zlib.decompress(data[1:])
        gap_type, step_type = _GAP_TYPES[payload[0] // 4], _STEP_TYPES[payload[0] % 4]
        n = (len(payload) - 1) // (np.dtype(gap_type).itemsize + np.dtype(step_type).itemsize)
        idx = np.cumsum(np.frombuffer(payload, gap_type, n, 1), dtype=np.int64)
        q = np.frombuffer(payload, step_type, n, 1 + n * np.dtype(gap_type).itemsize)
    else:  # a bitmap of the corrected points
        size = int.from_bytes(data[1:5], "little")
        mask = np.unpackbits(np.frombuffer(zlib.decompress(data[5:5 + size]), np.uint8), count=restored.size)
        idx = np.flatnonzero(mask)
        payload = zlib.decompress(data[5 + size:])
        q = np.frombuffer(payload, _STEP_TYPES[payload[0]], len(idx), 1)
    out.reshape(-1)[xp.asarray(idx)] += xp.asarray(q * float(bound))
    return out
