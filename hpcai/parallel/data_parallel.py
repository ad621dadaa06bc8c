"""Synchronous data parallelism with Horovod's names: ``init``, ``rank``, ``size``, ``DistributedOptimizer``,
``broadcast_parameters``, ``broadcast_optimizer_state``.

Every rank holds the whole model and trains on its 1/size share of each global batch. After backward,
:class:`DistributedOptimizer` averages the gradients over ranks, so every rank takes the same step from the
same weights: one process training on the global batch, up to rounding.

Gradients travel in *buckets*: the gradients of consecutive parameters packed into one flat buffer of at
most ``bucket_bytes`` (a larger parameter gets a bucket of its own), one Allreduce per bucket, unpacked.
Few large messages instead of one per parameter, since each message pays the latency (Horovod's "tensor
fusion", Sergeev & Del Balso 2018; PyTorch DDP's buckets, Li et al. 2020, sec. 3.2.3). One small extra
Allreduce per step tells every rank which parameters have a gradient on any rank: a gradient that is None
on some ranks counts as zeros there, one None on all ranks stays None (the optimizer skips it, as in serial
training), and the sequence of collectives never depends on what a rank's backward produced.

Compression ``"fp16"``/``"bf16"`` sends each bucket in that 2-byte format (half the bytes), packed and
unpacked in preallocated per-bucket words by :mod:`.compression`'s codecs (integer kernels, several GB/s).
For fp16 the bucket is first multiplied by the power of two ``s = 2**floor(log2(65504 / (2 N M)))``, ``M``
the largest ``|g|`` in the bucket over all ``N`` ranks: neither the values nor their sum can overflow, and
small values stay above the subnormals. bf16 has float32's range and needs no scale. Up to
:data:`GATHER_RANKS` ranks the words are allgathered (no more bytes than a float32 ring allreduce) and
every rank sums them in its bucket's dtype, in rank order: one rounding per value, and the same result on
every rank. Beyond, MPI reduces them in the 2-byte format: N roundings (one to send, one per addition).
Each rounding is a relative error of at most the unit roundoff ``u`` (2**-11 fp16, 2**-8 bf16), so by the
summation bound (Higham 2002, Lemma 3.1, eq. 4.4) every element of the averaged gradient satisfies::

    |g_exchanged - g_mean| <= gamma_N * mean_r |g_r| + N * M * 2**-38  (+ 2 ulp of g_mean in its dtype)

with ``gamma_N = N u / (1 - N u)``; the middle term covers fp16's subnormal spacing after scaling (bf16:
``2**-134``). Relative to the gradient: about N * 0.05 % (fp16) or N * 0.4 % (bf16).

``error_feedback=True`` keeps each rank's rounding error ``e = (g + e) - Q(g + e)`` per bucket element and
adds it to the next step's gradient (error feedback, Seide et al. 2014; Karimireddy et al. 2019, Alg. 2):
no part of a gradient is lost for good, only delayed, so compressed SGD follows the uncompressed one. Only
the rounding to send is fed back: beyond :data:`GATHER_RANKS` ranks the roundings of MPI's 2-byte sum are
not, and a step with an inf or NaN anywhere clears the errors kept. The errors are in the units of the
gradients exchanged: under loss scaling (mixed precision) those are times the loss scale ``S``. Pass the
:class:`~hpcai.amp.DynamicLossScaler` as ``loss_scaler=`` and the errors kept at scale ``S`` are multiplied
by ``S' / S`` (a power of two: exact) when the next exchange runs at ``S'``. Without it they are fed back
as they were kept: after the scaler grows its scale (x2 every ``growth_interval`` steps) one step's errors
count half, and after an overflow (the scale halved) there are none to feed back, the step having held
an inf or NaN; so no more than one step's rounding error (a relative ``u`` of a gradient) is lost per change
of scale.

Buffers are kept across steps: each bucket's float32 buffer (the averaged gradients are views of it until
the next step's exchange starts, as with PyTorch DDP's ``gradient_as_bucket_view``), its 2-byte words and,
up to :data:`GATHER_RANKS` ranks, the (ranks, numel) buffer the words are gathered into, whose own row each
rank packs into directly (an in-place allgather). Compressed, an exchange is three passes over the bucket:
the last backward pass's gradients go into it with the kept errors added and its largest ``|g|`` found
on the way, packing reads it, and the gathered rows are unpacked and summed into it; bf16 (no scale to
wait for) after a single backward pass packs the gradients and errors straight into the words instead of
the first two (with numba, :mod:`hpcai.accel`, each pass is one compiled loop; numpy takes a few). Packing, exchanging and
unpacking are not overlapped: MPI moves a nonblocking collective's bytes in shared memory only inside a
Test or Wait (no progress thread), so packing the next piece of a bucket while this one is "in flight"
gains nothing there (measured: ``Iallgather``, then computing, then ``Wait`` took as long as the two one
after the other).

Run ``mpiexec -n 4 python -m hpcai.parallel.data_parallel --epochs 10`` to train the digits MLP on 4 ranks.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time

import numpy as np

from .. import accel, backend
from .. import precision as _precision
from ..autograd.tensor import Tensor
from ..nn.module import Module
from ..optim.optimizer import Optimizer
from .comm import install_abort_hook, stall_setting, world
from .compression import get_codec

COMPRESSIONS = ("none", "fp16", "bf16")
REDUCE_OPS = ("average", "sum")
UNIT_ROUNDOFF = {"fp16": 2.0 ** -11, "bf16": 2.0 ** -8}
GATHER_RANKS = 4  # compressed words are allgathered up to this many ranks: (N-1) * 2 bytes <= 8 (N-1) / N
_DEFAULT_COMM = None


# -- Horovod's module-level API ------------------------------------------------------------------------
def init(comm=None, abort_on_error: bool = True, stall_warning: float | None = None,
         stall_timeout: float | None = None):
    """Set the communicator that ``rank()``, ``size()`` and every ``comm=None`` default use (MPI's world by
    default; any Communicator, e.g. a ``split`` one); returns it.

    ``abort_on_error`` (the safe default, as in ChainerMN): an exception no code catches, on
    any rank, prints that rank's traceback and ends the whole job (MPI_Abort) instead of leaving the other
    ranks waiting for it in a collective for ever; ``False`` keeps Python's own handling. In an IPython kernel
    (ipyparallel engines) nothing is installed: there :mod:`hpcai.cluster`'s watchdog ends a job that a
    failing rank would leave waiting.

    ``stall_warning``: seconds a rank may wait in one collective before a StallWarning names the ranks that
    have not arrived (None: ``HPCAI_STALL_WARNING``, else 60; 0: never). ``stall_timeout``: seconds after
    which such a wait ends the job, naming them (None: ``HPCAI_STALL_TIMEOUT``, else never; 0: never).
    """
    global _DEFAULT_COMM
    if not isinstance(abort_on_error, bool):
        raise TypeError(f"abort_on_error: expected True or False, got {abort_on_error!r}")
    _DEFAULT_COMM = comm if comm is not None else world()
    for name, value in (("stall_warning", stall_warning), ("stall_timeout", stall_timeout)):
        if value is not None and hasattr(_DEFAULT_COMM, name):  # the serial stand-in never waits
            setattr(_DEFAULT_COMM, name, stall_setting(name, value))
    if abort_on_error and not _in_ipython():
        install_abort_hook(_DEFAULT_COMM)
    return _DEFAULT_COMM


def _in_ipython() -> bool:
    """Whether this process is an IPython kernel or shell (a notebook, an ipyparallel engine)."""
    ipython = sys.modules.get("IPython")
    return ipython is not None and getattr(ipython, "get_ipython", lambda: None)() is not None


def _comm(comm=None):
    if comm is not None:
        return comm
    return _DEFAULT_COMM if _DEFAULT_COMM is not None else init(abort_on_error=False)


def rank() -> int:
    """This process's rank in the default communicator."""
    return _comm().rank


def size() -> int:
    """The number of ranks in the default communicator."""
    return _comm().size


def local_rank() -> int:
    """This process's rank among the ranks on its node (which GPU to use)."""
    return _comm().local_rank


# -- broadcasts ----------------------------------------------------------------------------------------
def _bcast_arrays(arrays: list, root: int, comm) -> None:
    """Broadcast ``arrays`` in place from ``root``: one flat host buffer and one Bcast per dtype."""
    by_dtype: dict = {}
    for a in arrays:
        by_dtype.setdefault(a.dtype, []).append(a)
    for dtype, group in by_dtype.items():
        flat = np.concatenate([backend.to_host(a).reshape(-1) for a in group]) if comm.rank == root else \
            np.empty(sum(a.size for a in group), dtype)
        comm.bcast_(flat, root)
        start = 0
        for a in group:
            a[...] = backend.to_device(flat[start:start + a.size].reshape(a.shape), backend.device_of(a))
            start += a.size


def broadcast_parameters(model_or_params, root: int = 0, comm=None) -> None:
    """Give every rank rank ``root``'s values, in place: a Module's parameters and buffers, or Parameters /
    arrays (an iterable, or a dict such as ``dict(model.named_parameters())``). Call it before training, so
    all ranks start from the same weights (data parallelism keeps them equal, it does not make them so)."""
    if isinstance(model_or_params, Module):
        items = model_or_params.parameters() + [b for _, b in model_or_params.named_buffers() if b is not None]
    elif isinstance(model_or_params, dict):
        items = list(model_or_params.values())
    else:
        items = list(model_or_params)
    _bcast_arrays([x.data if isinstance(x, Tensor) else x for x in items], root, _comm(comm))


def broadcast_optimizer_state(optimizer, root: int = 0, comm=None) -> None:
    """Give every rank rank ``root``'s optimizer state: hyperparameters, step counts and state arrays (e.g.
    after rank 0 alone loaded a checkpoint). Ranks other than ``root`` load it with ``load_state_dict``."""
    comm = _comm(comm)
    sd = optimizer.state_dict() if comm.rank == root else None
    layout = (sd["meta"], [(k, v.shape, v.dtype) for k, v in sd["arrays"].items()]) if sd is not None else None
    meta, specs = comm.bcast_obj(layout, root)
    arrays = sd["arrays"] if sd is not None else {k: np.empty(shape, dtype) for k, shape, dtype in specs}
    _bcast_arrays([arrays[k] for k, _, _ in specs], root, comm)
    if comm.rank != root:
        optimizer.load_state_dict({"arrays": arrays, "meta": meta})


# -- the optimizer ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Bucket:
    """Consecutive parameters of one dtype whose gradients share a flat buffer: (index, start, stop) each."""

    dtype: np.dtype
    xp: object
    entries: list
    numel: int = 0


def plan_buckets(params, bucket_bytes: int) -> list:
    """Parameters in order, cut into buckets of at most ``bucket_bytes`` (or one parameter) and one dtype."""
    buckets: list = []
    for i, p in enumerate(params):
        b = buckets[-1] if buckets else None
        if b is None or b.dtype != p.dtype or (b.numel + p.size) * p.dtype.itemsize > bucket_bytes:
            b = Bucket(p.dtype, backend.get_array_module(p.data), [])
            buckets.append(b)
        b.entries.append((i, b.numel, b.numel + p.size))
        b.numel += p.size
    return buckets


def _fp16_scale(max_abs: float, n: int, dtype) -> float:
    """The power of two that puts the sum of ``n`` values of size up to ``max_abs`` at most at fp16's max / 2."""
    if not (math.isfinite(max_abs) and max_abs > 0):
        return 1.0
    _, e = math.frexp(_precision.PRECISIONS["fp16"].max / (2 * n * max_abs))  # value = m * 2**e, m in [.5, 1)
    info = np.finfo(dtype)
    return math.ldexp(1.0, min(max(e - 1, info.minexp), info.maxexp - 1))


@accel.jit
def _max_abs_bits(x):
    """The largest ``|x|`` of float32 ``x`` as the bits of a float32 (NaN's exceed inf's): an integer max,
    which LLVM vectorises where a float max with NaN semantics is not."""
    m = np.int32(0)
    for i in range(x.size):
        m = max(m, np.int32(np.float32(x[i]).view(np.int32) & 0x7FFFFFFF))
    return m


@accel.jit
def _last_pass_bits(dst, g, first, res, ratio):
    """:func:`_last_pass` in one pass over float32 arrays (``res`` empty: no error feedback; not written:
    the packing that follows overwrites it); returns the largest ``|dst|`` as :func:`_max_abs_bits` does."""
    m = np.int32(0)
    feed, scaled = res.size != 0, ratio != 1
    for i in range(dst.size):
        v = g[i] if first else dst[i] + g[i]
        if feed:
            r = res[i]
            if scaled:
                r *= ratio
            v += r
        dst[i] = v
        m = max(m, np.int32(np.float32(v).view(np.int32) & 0x7FFFFFFF))
    return m


_NO_RESIDUAL = np.empty(0, np.float32)


def _float_of_bits(m) -> float:
    """:func:`_max_abs_bits`' result as a float: inf for an inf or a NaN (no error feedback carries them)."""
    return math.inf if m >= 0x7F800000 else float(np.int32(m).view(np.float32))


def _max_abs(buf) -> float:
    """The largest ``|buf|`` (inf if buf holds an inf or a NaN; 0 if empty)."""
    if not buf.size:
        return 0.0
    if type(buf) is np.ndarray and buf.dtype == np.float32 and buf.flags.c_contiguous and _max_abs_bits.available:
        return _float_of_bits(_max_abs_bits(buf.reshape(-1)))
    m = max(float(buf.max()), -float(buf.min()))  # NaN propagates
    return math.inf if math.isnan(m) else m


def _last_pass(dst, g, first: bool, res=None, ratio: float = 1.0) -> float:
    """The last backward pass's part of a bucket: ``dst = g`` (first pass; None: zeros) or ``dst += g``, then
    with error feedback ``dst += res * ratio``; returns the largest ``|dst|`` (inf for an inf or NaN).
    ``dst``, ``res``: flat segments of a bucket; ``g`` a gradient of ``dst``'s size. ``res`` is spent: the
    packing that follows overwrites it with this step's rounding errors (so it may be left scaled, or not)."""
    if (g is not None and type(dst) is np.ndarray and type(g) is np.ndarray and dst.dtype == g.dtype == np.float32
            and g.size == dst.size and g.flags.c_contiguous and dst.flags.c_contiguous and _last_pass_bits.available):
        return _float_of_bits(_last_pass_bits(dst, g.reshape(-1), first, _NO_RESIDUAL if res is None else res,
                                              np.float32(ratio)))
    if g is not None:
        view = dst.reshape(g.shape)  # (g may be a strided view)
        if first:
            view[...] = g
        else:
            view += g
    elif first:
        dst[...] = 0
    if res is not None:
        if ratio != 1.0:
            res *= ratio  # a power of two for DynamicLossScaler's factors: exact
        dst += res
    return _max_abs(dst)


class DistributedOptimizer(Optimizer):
    """Wrap any hpcai Optimizer so that ``step()`` first averages the gradients over ranks (Horovod's name).

    Args:
        optimizer: the Optimizer that applies the averaged gradients (its groups, state and state dict are
            this one's: schedules, checkpoints and ``fit`` see through the wrapper).
        comm: a Communicator (default: the one from :func:`init`, or MPI's world).
        compression: "none", "fp16" or "bf16": the format gradients are exchanged in (see the module
            docstring for the error bound).
        bucket_bytes: the most bytes of gradients per Allreduce (25 MiB, as PyTorch DDP).
        backward_passes_per_step: k: every call of ``step()`` adds this pass's gradients to a buffer of its
            own (and clears ``p.grad``); every k-th call exchanges them and steps. With mean losses the result
            is one step on a batch k times larger.
        op: "average" (the mean over ranks and passes: the gradient of the global batch) or "sum".
        error_feedback: with compression, carry each rank's rounding error into its next step's gradient.
        loss_scaler: the DynamicLossScaler whose scale the gradients carry (mixed precision); with error
            feedback the errors kept are rescaled when that scale changes (see the module docstring).

    Call ``zero_grad()`` before each backward (as ``fit`` does). ``scaler.step(optimizer)`` synchronizes
    first, so every rank checks the same exchanged gradients for overflow (an inf or NaN on any rank reaches
    all), and all ranks skip or step together.
    """

    def __init__(self, optimizer, comm=None, compression: str = "none", bucket_bytes: int = 25 * 2 ** 20,
                 backward_passes_per_step: int = 1, op: str = "average", error_feedback: bool = False,
                 loss_scaler=None):
        if not isinstance(optimizer, Optimizer) or isinstance(optimizer, DistributedOptimizer):
            raise TypeError(f"optimizer: expected an hpcai Optimizer (not yet distributed), got "
                            f"{type(optimizer).__name__}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression: expected one of {COMPRESSIONS}, got {compression!r}")
        if not isinstance(error_feedback, bool):
            raise TypeError(f"error_feedback: expected True or False, got {error_feedback!r}")
        if loss_scaler is not None and not isinstance(getattr(loss_scaler, "scale", None), (int, float)):
            raise TypeError(f"loss_scaler: expected a DynamicLossScaler (with a numeric .scale), got "
                            f"{type(loss_scaler).__name__}")
        if op not in REDUCE_OPS:
            raise ValueError(f"op: expected one of {REDUCE_OPS}, got {op!r}")
        for name, value in (("bucket_bytes", bucket_bytes), ("backward_passes_per_step", backward_passes_per_step)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        self.optimizer, self.comm = optimizer, _comm(comm)
        self.compression, self.op = compression, op
        self.bucket_bytes, self.backward_passes_per_step = int(bucket_bytes), int(backward_passes_per_step)
        self.error_feedback = error_feedback and compression != "none"
        self.codec = get_codec(compression) if compression != "none" else None
        self.loss_scaler = loss_scaler
        self.buckets: list = []
        self._key, self._bufs, self._seen, self._passes, self._ready = None, None, None, 0, False
        self._largest = None  # per bucket, made by the last pass before an exchange that needs it
        self._words, self._residuals = [], []  # per bucket: reusable 2-byte words; rounding errors kept
        self._gathered = []  # per bucket: every rank's words, (size, numel), reused
        self._packed = []  # per bucket: words already packed by this step's (only) backward pass
        self._residual_scale = None  # the loss scale the errors kept were made at

    # the wrapped optimizer's groups, state and defaults are this one's
    param_groups = property(lambda self: self.optimizer.param_groups)
    state = property(lambda self: self.optimizer.state)
    defaults = property(lambda self: self.optimizer.defaults)

    def add_param_group(self, group: dict) -> None:
        self.optimizer.add_param_group(group)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._ready = False
        self.optimizer.zero_grad(set_to_none)

    # -- the exchange ----------------------------------------------------------------------------------
    def _layout(self) -> list:
        """The parameters, re-planning the buckets whenever they (or their shapes or dtypes) changed."""
        params = self._params()
        key = tuple((id(p), p.shape, p.dtype) for p in params)
        if key != self._key:
            self._key, self.buckets = key, plan_buckets(params, self.bucket_bytes)
            self._bufs, self._passes = [b.xp.empty(b.numel, b.dtype) for b in self.buckets], 0
            self._words = [None] * len(self.buckets)  # made on first use: gathered ranks pack into _gathered
            self._residuals = [b.xp.zeros(b.numel, b.dtype) for b in self.buckets] if self.error_feedback else []
            self._gathered = [None] * len(self.buckets)
            self._packed = [False] * len(self.buckets)
        return params

    def _accumulate(self, params) -> None:
        """Add every parameter's gradient (None: zeros) into the bucket buffers (kept across steps: last
        step's averaged gradients, views of them, are overwritten now), and clear it.

        The pass before an exchange that needs each bucket's largest ``|g|`` (fp16's scale; error feedback's
        inf/NaN check) also adds the errors kept and finds it, in the same pass over the bucket; bf16 after
        a single pass packs the words here instead (:meth:`_pack_segment`)."""
        first = self._passes == 0
        if first:
            self._seen = np.zeros(len(params), bool)
        last = self._passes + 1 >= self.backward_passes_per_step
        fold = last and (self.compression == "fp16" or self.error_feedback)
        ratio = self._residual_ratio() if fold and self.error_feedback else 1.0
        self._largest = [] if fold else None
        for j, (b, buf) in enumerate(zip(self.buckets, self._bufs)):
            res, largest = self._residuals[j] if fold and self.error_feedback else None, 0.0
            # bf16 needs no scale: one pass packs the gradients (and errors) straight into the words
            self._packed[j] = first and last and self.compression == "bf16" and type(buf) is np.ndarray
            words = self._words_of(j, buf.size) if self._packed[j] else None
            for i, lo, hi in b.entries:
                g = params[i].grad
                if g is not None:
                    self._seen[i] = True
                    params[i].grad = None
                if words is not None:
                    largest = max(largest, self._pack_segment(buf[lo:hi], g, words[lo:hi],
                                                              None if res is None else res[lo:hi], ratio))
                    continue
                if fold:
                    largest = max(largest, _last_pass(buf[lo:hi], g, first, None if res is None else res[lo:hi],
                                                      ratio))
                    continue
                view = buf[lo:hi].reshape(params[i].shape)  # (g may be a strided view)
                if g is None:
                    if first:
                        view[...] = 0
                elif first:
                    view[...] = g
                else:
                    view += g
            if fold:
                self._largest.append(largest)
        self._passes += 1

    def _pack_segment(self, dst, g, words, res, ratio: float) -> float:
        """bf16, a single backward pass: pack gradient ``g`` (plus the errors kept, ``res * ratio``) into
        ``words``, keeping the new errors in ``res``, without writing the bucket segment ``dst`` (unless
        ``g`` is None or unusual: then through ``dst``). Returns the largest ``|g + e|`` (0 if not needed)."""
        if type(g) is np.ndarray and g.dtype == dst.dtype == np.float32 and g.size == dst.size and g.flags.c_contiguous:
            if res is not None:
                return self.codec.pack_fed_back(g.reshape(-1), words, res, ratio)
            self.codec.pack(g.reshape(-1), words)
            return 0.0
        largest = _last_pass(dst, g, True, res, ratio)
        self.codec.pack(dst, words, 1.0, residual=res)
        return largest

    def _allreduce_bucket(self, buf, max_abs: float, j: int = 0, divisor: int = 1) -> None:
        """Sum bucket ``j``'s buffer over ranks, in place, and divide it by ``divisor``."""
        if self.compression == "none":
            self.comm.allreduce_(buf, "sum")
        elif backend.get_array_module(buf) is not np:  # cupy: round on the device, exchange in the 2-byte dtype
            s = _fp16_scale(max_abs, self.comm.size, buf.dtype) if self.compression == "fp16" else 1.0
            low = _precision.cast(buf * s if s != 1.0 else buf, self.compression)
            if self.error_feedback:
                self._residuals[j][...] = buf - low.astype(buf.dtype) * (1.0 / s) if math.isfinite(max_abs) else 0
            self.comm.allreduce_(low, "sum")
            buf[...] = low  # exact: every fp16/bf16 value is a float32 value
            if s != 1.0:
                buf *= 1.0 / s  # exact: a power of two
        else:
            s, rows = self._send_words(buf, max_abs, j)
            finite = self.compression == "fp16" and math.isfinite(max_abs)  # scaled: no word overflowed
            return self._finish(buf, s, rows, divisor, finite)
        if divisor != 1:
            buf /= divisor

    def _send_words(self, buf, max_abs: float, j: int):
        """Pack bucket ``j`` into its words (keeping the rounding error) and exchange them; returns the scale
        and the words to sum, one row per rank (or one row MPI already summed)."""
        s = _fp16_scale(max_abs, self.comm.size, buf.dtype) if self.compression == "fp16" else 1.0
        # error feedback: e = g - Q(g), in the bucket's units, made as it packs; no inf/NaN is carried on
        res = self._residuals[j] if self.error_feedback else None
        words = self._words_of(j, buf.size)
        if not self._packed[j]:  # (bf16 from one backward pass: packed as the gradients came in)
            self.codec.pack(buf, words, s, residual=res if math.isfinite(max_abs) else None)
        if res is not None and not math.isfinite(max_abs):
            res[...] = 0
        if 1 < self.comm.size <= GATHER_RANKS:  # in place: this rank's row is where the gathered words go
            return s, self.comm.allgather(words, out=self._gathered[j])
        if self.comm.size > 1:
            self.comm.allreduce_(words.view(self.codec.dtype), "sum")
        return s, words[None]

    def _words_of(self, j: int, numel: int):
        """Where bucket ``j``'s words are packed: this rank's row of the gathered buffer, or words of its own."""
        if 1 < self.comm.size <= GATHER_RANKS:
            return self._gathered_rows(j, numel)[self.comm.rank]
        return self._own_words(j, numel)

    def _gathered_rows(self, j: int, numel: int):
        """The buffer kept for bucket ``j``'s gathered words: (ranks, numel) uint16, one row per rank."""
        out = self._gathered[j]
        if out is None or out.shape != (self.comm.size, numel):
            out = self._gathered[j] = np.empty((self.comm.size, numel), np.uint16)
        return out

    def _own_words(self, j: int, numel: int):
        """Bucket ``j``'s words when they are not gathered (1 rank, or MPI sums them), kept across steps."""
        if self._words[j] is None or self._words[j].size != numel:
            self._words[j] = np.empty(numel, np.uint16)
        return self._words[j]

    def _finish(self, buf, s: float, rows, divisor: int, finite: bool = False) -> None:
        """``buf = sum of rows / (s * divisor)``, summed in buf's dtype in rank order (the same on all ranks).
        ``finite``: no word is inf or NaN (fp16 scaled from a finite largest value: nothing overflows)."""
        exact = divisor & (divisor - 1) == 0  # a power of two: folded into the factor without a rounding
        self.codec.unpack_sum(rows, buf, 1.0 / (s * divisor) if exact else 1.0 / s, finite=finite)
        if not exact:
            buf /= divisor

    def _residual_ratio(self) -> float:
        """The factor that brings the errors kept to this step's loss scale (1 without a loss scaler)."""
        now = float(self.loss_scaler.scale) if self.loss_scaler is not None else None
        ratio = now / self._residual_scale if now is not None and self._residual_scale else 1.0
        self._residual_scale = now
        return ratio

    def _exchange(self, params) -> None:
        n, scaled = len(params), self.compression != "none"
        meta = np.zeros(n + scaled * len(self.buckets))  # [has a gradient, per parameter; max |g|, per bucket]
        meta[:n] = self._seen
        if self._largest is not None:  # max |g| (errors fed back): fp16's scale; an inf/NaN error feedback drops
            meta[n:] = self._largest
        self.comm.allreduce_(meta, "max")
        divisor = self._passes * (self.comm.size if self.op == "average" else 1)
        for j, (b, buf) in enumerate(zip(self.buckets, self._bufs)):
            self._allreduce_bucket(buf, meta[n + j] if scaled else 0.0, j, divisor)
            for i, lo, hi in b.entries:  # gradients become views of the bucket buffer, until the next step
                params[i].grad = buf[lo:hi].reshape(params[i].shape) if meta[i] > 0 else None
        self._passes = 0

    def synchronize(self) -> bool:
        """Add this pass's gradients; on every k-th pass exchange them, leaving the averaged gradients in
        ``p.grad`` on every rank. Returns True when they are there (then ``step()`` steps at once).

        Calling it again for the same backward pass changes nothing (``scaler.step`` and ``step`` call it
        too): accumulating clears ``p.grad``, so a pass without any gradient is not a new pass.
        """
        if self._ready:
            return True
        params = self._layout()
        if self._passes and all(p.grad is None for p in params):
            return False
        self._accumulate(params)
        if self._passes < self.backward_passes_per_step:
            return False
        self._exchange(params)
        self._ready = True
        return True

    def step(self, closure=None):
        """Synchronize, then step the wrapped optimizer if this call completes a step; returns ``closure()``."""
        loss = closure() if closure is not None else None
        if self.synchronize():
            self._ready = False
            self.optimizer.step()
        return loss

    def __repr__(self) -> str:
        return (f"DistributedOptimizer({type(self.optimizer).__name__}, size={self.comm.size}, "
                f"compression={self.compression!r}, buckets={len(self.buckets)}, "
                f"backward_passes_per_step={self.backward_passes_per_step}, op={self.op!r}"
                f"{', error_feedback=True' if self.error_feedback else ''}"
                f"{', loss_scaler=' + type(self.loss_scaler).__name__ if self.loss_scaler is not None else ''})")


# -- a batch job -----------------------------------------------------------------------------------------
def train_digits(epochs: int = 10, batch_size: int = 32, precision: str = "fp32", optimizer: str = "adam",
                 lr: float = 3e-3, compression: str = "none", hidden: int = 128, seed: int = 0, verbose: int = 2,
                 comm=None, error_feedback: bool = False) -> dict:
    """Train an MLP 64-hidden-10 on scikit-learn's digits over all ranks of ``comm``; every rank returns
    ``{"accuracy", "history", "seconds", "size"}`` (test accuracy of the shared weights).

    ``batch_size`` is per rank (Horovod's convention): the global batch is ``batch_size * size``.
    """
    from .. import datasets, nn, optim
    from ..train import evaluate, fit
    comm = _comm(comm)
    (xtr, ytr), (xte, yte) = datasets.digits(flat=True)
    # each rank draws its own initial weights on purpose: broadcast_parameters makes them rank 0's
    model = nn.Sequential(nn.Linear(64, hidden, rng=seed + 2 * comm.rank), nn.ReLU(),
                          nn.Linear(hidden, 10, rng=seed + 2 * comm.rank + 1))
    opt = DistributedOptimizer(optim.get_optimizer(optimizer, model.parameters(), lr=lr), comm=comm,
                               compression=compression, error_feedback=error_feedback)
    broadcast_parameters(model, 0, comm)
    broadcast_optimizer_state(opt, 0, comm)
    start = time.perf_counter()
    history = fit(model, (xtr, ytr), "cross_entropy", opt, epochs=epochs, batch_size=batch_size,
                  validation=(xte, yte), metrics=["accuracy"], verbose=verbose, precision=precision, seed=seed,
                  comm=comm)
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, (xte, yte), metrics=["accuracy"])["accuracy"]
    return {"accuracy": accuracy, "history": dict(history), "seconds": seconds, "size": comm.size}


def main(argv=None) -> dict:
    from ..amp.policy import POLICIES
    from ..optim import OPTIMIZERS
    parser = argparse.ArgumentParser(prog="python -m hpcai.parallel.data_parallel",
                                     description="Data-parallel training of a digits MLP; run under mpiexec -n N.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank (global batch = this * ranks)")
    parser.add_argument("--precision", default="fp32", choices=list(POLICIES))
    parser.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS))
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--compression", default="none", choices=COMPRESSIONS)
    parser.add_argument("--error-feedback", action="store_true", help="carry compression's rounding errors forward")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    comm = init()  # with the abort hook: an error on one rank ends the job, never a hang
    if comm.rank == 0:
        print(f"data parallel over {comm.size} rank(s): digits MLP 64-{args.hidden}-10, {args.optimizer} "
              f"lr {args.lr:g}, global batch {args.batch_size * comm.size}, precision {args.precision}, "
              f"compression {args.compression}", flush=True)
    result = train_digits(args.epochs, args.batch_size, args.precision, args.optimizer, args.lr, args.compression,
                          args.hidden, args.seed, verbose=2, comm=comm, error_feedback=args.error_feedback)
    if comm.rank == 0:
        print(f"test accuracy {result['accuracy']:.4f} after {args.epochs} epochs in {result['seconds']:.2f} s",
              flush=True)
    return result


if __name__ == "__main__":
    main()
