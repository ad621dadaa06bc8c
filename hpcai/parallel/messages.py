"""Self-describing messages between ranks: numpy/cupy arrays as raw bytes, small values as JSON, never pickled.

A message is a header (UTF-8 JSON, sent as bytes) followed, for an array, by the array's own buffer. The
header carries the kind, dtype, shape and the sender's metadata, so the receiver allocates exactly what
arrives and checks what it expects (dtype, shape) before use. Two tags per message kind keep header and
payload apart; MPI's non-overtaking rule keeps them paired per sender. Used by the tuple space and the
workflow's channels. :func:`recv` takes a whole message; a server that decides from the header whether and
when to take the payload (the tuple space) probes, then calls :func:`recv_header` and :func:`recv_payload`.
"""
from __future__ import annotations

import functools
import json

import ml_dtypes
import numpy as np

from .. import backend

MAX_HEADER = 1 << 20  # a header (metadata or a JSON value) larger than this is refused
_HALF_NAMES = {"bfloat16": ml_dtypes.bfloat16}  # dtypes numpy cannot name by itself


class MessageError(ValueError):
    """A message that is not what the receiver expected (kind, dtype, shape) or is malformed."""


def _dtype(name: str) -> np.dtype:
    return np.dtype(_HALF_NAMES.get(name, name))


@functools.lru_cache(maxsize=None)
def _name(dtype: np.dtype) -> str:
    return dtype.name  # numpy builds the name anew at each access (~2 us, much of a small message's cost)


def travelling(value):
    """``value`` as a message carries it: an array of booleans, integers or floats (a numpy scalar becomes a
    0-d array of its dtype) or a JSON value; anything else is a TypeError naming ``value``."""
    if isinstance(value, np.generic) and not isinstance(value, np.str_):
        value = np.asarray(value)
    if backend.is_array(value):
        if value.dtype.kind not in "biuf" and value.dtype.name not in _HALF_NAMES:
            raise TypeError(f"value: arrays of booleans, integers or floats travel; got dtype {value.dtype}")
        return value
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"value: expected an array or a JSON value (dict, list, str, finite number, bool, "
                        f"None), got {type(value).__name__}: {e}") from None
    return value


def encode(value, meta: dict | None = None) -> tuple[bytes, object]:
    """(header bytes, payload array or None) for an array or a JSON value, with ``meta`` in the header."""
    meta, value = dict(meta or {}), travelling(value)
    if backend.is_array(value):
        header = {"kind": "array", "dtype": _name(value.dtype), "shape": list(value.shape), "meta": meta}
        payload = value if value.flags.c_contiguous else backend.get_array_module(value).ascontiguousarray(value)
    else:
        header, payload = {"kind": "json", "value": value, "meta": meta}, None
    try:
        raw = json.dumps(header, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise TypeError(f"meta: expected a dict of JSON values, got {meta!r}: {e}") from None
    if len(raw) > MAX_HEADER:
        raise ValueError(f"value: a JSON value or metadata of {len(raw)} bytes exceeds {MAX_HEADER}; send an array")
    return raw, payload


def decode_header(raw) -> dict:
    try:
        header = json.loads(bytes(raw).decode())
        if header.get("kind") not in ("array", "json") or not isinstance(header.get("meta"), dict):
            raise ValueError("no kind or meta")
        if header["kind"] == "array":
            header["dtype"], header["shape"] = _dtype(header["dtype"]), tuple(int(n) for n in header["shape"])
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
        raise MessageError(f"a malformed message header arrived: {e}") from None
    return header


def check(header: dict, dtype=None, shape=None, what: str = "message") -> None:
    """Raise :class:`MessageError` unless the header's array has ``dtype`` and ``shape`` (None: any)."""
    if dtype is None and shape is None:
        return
    if header["kind"] != "array":
        raise MessageError(f"{what}: expected an array, a JSON value arrived")
    if dtype is not None and header["dtype"] != np.dtype(dtype):
        raise MessageError(f"{what}: expected dtype {np.dtype(dtype)}, got {header['dtype']}")
    if shape is not None and header["shape"] != tuple(shape):
        raise MessageError(f"{what}: expected shape {tuple(shape)}, got {header['shape']}")


def send(comm, value, dest: int, tag: int, meta: dict | None = None) -> None:
    """Send ``value`` (array or JSON value) to ``dest``: header on ``tag``, payload on ``tag + 1``."""
    raw, payload = encode(value, meta)
    comm.send_(np.frombuffer(raw, np.uint8), dest, tag)
    if payload is not None:
        comm.send_(payload, dest, tag + 1)


def isend(comm, value, dest: int, tag: int, meta: dict | None = None) -> list:
    """Start sending ``value``; returns the requests to :func:`wait_all` (``value`` unchanged until then)."""
    raw, payload = encode(value, meta)
    requests = [comm.isend_(np.frombuffer(raw, np.uint8).copy(), dest, tag)]
    if payload is not None:
        requests.append(comm.isend_(payload, dest, tag + 1))
    return requests


def wait_all(comm, requests) -> None:
    for request in requests:
        comm.wait(request)


def recv_header(comm, source: int, tag: int, nbytes: int) -> dict:
    """Receive the header of the message that :meth:`~.comm.Communicator.probe` found from ``source`` on
    ``tag`` (``nbytes``: its size); the payload, if any, stays on the wire until :func:`recv_payload`.
    A header over MAX_HEADER is refused (:class:`MessageError`) and left unreceived."""
    if nbytes > MAX_HEADER:
        raise MessageError(f"a header of {nbytes} bytes from rank {source} exceeds {MAX_HEADER}")
    raw = np.empty(nbytes, np.uint8)
    comm.recv_(raw, source, tag)
    return decode_header(raw)


def recv_payload(comm, source: int, tag: int, header: dict, xp=np, out=None):
    """The value of the message whose ``header`` came on ``tag``: its JSON value, or its array received now
    from ``source`` on ``tag + 1``: into ``out`` (and returned) when that array has the header's dtype and
    shape, else into a new ``xp`` array (``out`` left untouched)."""
    if header["kind"] == "json":
        return header["value"]
    if out is None or out.dtype != header["dtype"] or out.shape != header["shape"]:
        out = xp.empty(header["shape"], header["dtype"])
    comm.recv_(out, source, tag + 1)
    return out


def recv(comm, source: int | None, tag: int, dtype=None, shape=None, timeout: float | None = None, xp=np,
         out=None):
    """Receive one message sent by :func:`send` on ``tag``: (value, meta, source), or None after ``timeout``.

    ``dtype``/``shape`` are checked before the payload is received (a refused payload is then received and
    dropped, so it never blocks the next message, and :class:`MessageError` raised). Arrays land in a new
    ``xp`` array (numpy, or cupy for a device array), or in ``out`` when it has the arriving dtype and shape:
    a large array then skips allocating and first touching fresh memory, as a raw ``Recv`` into a reused
    buffer does (at 64 MiB that costs as much as the transfer itself).
    """
    probed = comm.probe(source, tag, timeout)
    if probed is None:
        return None
    src, _, nbytes = probed
    header = recv_header(comm, src, tag, nbytes)
    try:
        check(header, dtype, shape, f"message from rank {src}")
    except MessageError:
        recv_payload(comm, src, tag, header, xp)
        raise
    return recv_payload(comm, src, tag, header, xp, out), header["meta"], src
