"""Tuple space: a bounded store of (key, value) tuples that ranks put into and take out of by key pattern.

The store-and-move half of an openDIEL-style workflow (Linda's ``out``/``in``/``rd``: Gelernter 1985,
"Generative communication in Linda"): producers :meth:`put` keyed values; consumers :meth:`get` (take) or
:meth:`read` (copy) the oldest tuple whose key matches an ``fnmatch`` glob (``"batch/*"``, ``"*"``, an exact
key; case-sensitive), waiting until one exists. Values are numpy arrays (bool, int, float incl. float16 and
bfloat16; any shape) or small JSON values; over MPI they travel as :mod:`.messages` (bytes, never pickled).

Memory is bounded: the tuples held never exceed ``max_bytes`` (a tuple's size: its array's bytes or its
JSON text, plus its key). A put that does not fit waits (back-pressure) until gets free room, unless a
waiting get takes the tuple at once; a tuple larger than ``max_bytes`` is refused. One engine
(:class:`_Space`) decides everything, so the two implementations behave alike:

* :func:`serve` on a dedicated server rank, and a :class:`TupleSpace` client on each other rank (MPI);
* :class:`LocalTupleSpace`, shared by the threads of one process (a workflow on one rank).

Protocol (each message is a :mod:`.messages` header, its array payload on the next tag)::

    client -> server  REQUEST 31000 (payload 31001)  meta {"op", "id", ...}
        hello                   -> ok + {"max_bytes"}        (the constructor)
        put    key  + value     -> ok | error                (deferred while the space is full)
        get    pattern, block   -> ok + key, value | none    (block=False: try_get; blocks otherwise)
        read   pattern, block   -> ok + key, value | none
        cancel id               (no reply of its own: request ``id``, if still waiting, is answered "cancelled")
        close                   -> ok                        (the server returns once every client closed)
    server -> client  REPLY   31002 (payload 31003)  meta {"id", "status", "key", "error"}

Every request gets exactly one reply. A client whose blocking call times out sends CANCEL and still waits
for that reply: "cancelled" (it raises TimeoutError), or the data or acknowledgement the server sent before
the cancel arrived (the call succeeds). MPI's non-overtaking order (one sender, one tag, one communicator)
shows the server a cancel after the request it names. So no tuple is lost or delivered twice. The server
receives a deferred put's payload only when there is room for it, so the sender keeps its bytes meanwhile.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import itertools
import json
import math
import re
import threading
import time
from collections import OrderedDict, deque


from .. import backend, checks
from . import messages

REQUEST, REPLY = 31000, 31002  # header tags; payloads on the next ones. Far from user tags (0..99) and others'
DEFAULT_MAX_BYTES = 256 * 2 ** 20
MAX_KEY = 1024                 # characters in a key
MAX_JSON = messages.MAX_HEADER // 2  # bytes of a JSON value's text; larger data travels as an array
OK, NONE, CANCELLED, ERROR = "ok", "none", "cancelled", "error"
_GLOB = frozenset("*?[]")

__all__ = ["DEFAULT_MAX_BYTES", "REPLY", "REQUEST", "LocalTupleSpace", "SpaceStats", "TupleSpace", "serve"]


@dataclasses.dataclass
class SpaceStats:
    """What a space did: puts, gets and reads completed, requests cancelled, puts that waited for room,
    the most bytes held at once, and the tuples left in it."""

    puts: int = 0
    gets: int = 0
    reads: int = 0
    cancelled: int = 0
    waited: int = 0
    peak_bytes: int = 0
    left: int = 0


# -- arguments -------------------------------------------------------------------------------------------
def _check_key(key) -> str:
    if not isinstance(key, str):
        raise TypeError(f"key: expected a str, got {type(key).__name__}")
    if not key or len(key) > MAX_KEY or not _GLOB.isdisjoint(key):
        raise ValueError(f"key: expected 1 to {MAX_KEY} characters without the glob characters *?[], got {key!r}")
    return key


def _check_pattern(pattern) -> str:
    if not isinstance(pattern, str):
        raise TypeError(f"pattern: expected a str (a key or an fnmatch glob), got {type(pattern).__name__}")
    if not pattern or len(pattern) > MAX_KEY:
        raise ValueError(f"pattern: expected 1 to {MAX_KEY} characters, got {pattern!r}")
    return pattern


def _value_bytes(value):
    """(value, bytes): what :func:`messages.travelling` accepts, checked, and its size in the space."""
    value = messages.travelling(value)
    if backend.is_array(value):
        return value, value.nbytes
    text = json.dumps(value, allow_nan=False)
    if len(text) > MAX_JSON:
        raise ValueError(f"value: a JSON value of {len(text)} bytes exceeds {MAX_JSON}; put large data as an array")
    return value, len(text.encode())


def _copy(value):
    """An independent copy: what a receiver gets over MPI (JSON tuples become lists, as they would there)."""
    return value.copy() if backend.is_array(value) else json.loads(json.dumps(value))


@functools.lru_cache(maxsize=1024)
def _matcher(pattern: str):
    """A predicate on keys: equality for a plain key, else fnmatch's glob (case-sensitive on every OS)."""
    if _GLOB.isdisjoint(pattern):
        return pattern.__eq__
    return re.compile(fnmatch.translate(pattern)).match


# -- the engine: one store, one set of rules for both implementations ----------------------------------------
class _Request:
    """A put, get or read as the engine sees it. ``reply(status, key, value)`` answers it, exactly once;
    ``load()`` gives a put's value (the server receives a deferred payload only then)."""

    __slots__ = ("block", "key", "load", "match", "op", "reply", "size")

    def __init__(self, op, key, reply, block=True, size=0, load=None):
        self.op, self.key, self.reply, self.block, self.size, self.load = op, key, reply, block, size, load
        self.match = None if op == "put" else _matcher(key)


class _Space:
    """Tuples in arrival order, the gets and reads waiting for one, and the puts waiting for room.

    Invariants: no waiting get or read matches a stored tuple; no waiting get matches a waiting put. A put
    is stored if it fits and no earlier put waits; otherwise it waits, unless a waiting get takes it at once.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self._tuples = OrderedDict()  # arrival number -> (key, value, size), oldest first
        self._by_key = {}             # key -> deque of arrival numbers
        self._arrivals = itertools.count()
        self._waiting = []            # blocked gets and reads, oldest first
        self._deferred = []           # puts waiting for room, oldest first
        self.stats = SpaceStats()

    def submit(self, req: _Request) -> None:
        """Act on a new request: answer it now, or keep it until a put or get lets it proceed."""
        if req.op == "put":
            if req.size > self.max_bytes:
                req.load()  # taken off the wire and dropped
                req.reply(ERROR, None, f"value: a tuple of {req.size} bytes exceeds max_bytes={self.max_bytes}")
            elif (self._deferred or self.bytes + req.size > self.max_bytes) and not self._getter_for(req.key):
                self.stats.waited += 1
                self._deferred.append(req)
            else:
                self._accept(req)
            return
        found = self._find(req.key, req.match)
        if found is not None:
            key, value, _ = self._tuples[found]
            if req.op == "get":
                self._remove(found)
            self._answer(req, key, value)
            self._admit()
            return
        put = next((p for p in self._deferred if req.match(p.key)), None) if req.op == "get" else None
        if put is not None:  # room never came for it, but this get takes it directly
            self._deferred.remove(put)
            self._waiting.append(req)
            self._accept(put)
            self._admit()
        elif req.block:
            self._waiting.append(req)
        else:
            req.reply(NONE, None, None)

    def cancel(self, req: _Request) -> bool:
        """Withdraw a waiting request, answering it "cancelled"; False if it was answered already."""
        for queue in (self._waiting, self._deferred):
            if any(r is req for r in queue):
                queue.remove(req)
                if req.op == "put":
                    req.load()  # taken off the wire and dropped
                self.stats.cancelled += 1
                req.reply(CANCELLED, None, None)
                self._admit()
                return True
        return False

    def pending(self) -> list:
        return self._waiting + self._deferred

    def _getter_for(self, key):
        return next((w for w in self._waiting if w.op == "get" and w.match(key)), None)

    def _find(self, pattern, match):
        """The arrival number of the oldest tuple matching, or None."""
        if _GLOB.isdisjoint(pattern):
            numbers = self._by_key.get(pattern)
            return numbers[0] if numbers else None
        if 4 * len(self._by_key) < len(self._tuples):  # many tuples under few keys: look at the keys
            return min((n[0] for k, n in self._by_key.items() if match(k)), default=None)
        return next((n for n, (k, _, _) in self._tuples.items() if match(k)), None)

    def _answer(self, req, key, value):
        if req.op == "get":
            self.stats.gets += 1
        else:
            self.stats.reads += 1
        req.reply(OK, key, value)

    def _accept(self, put):
        """Complete a put: acknowledge it, then hand the tuple to waiting readers and the first waiting get."""
        value = put.load()
        self.stats.puts += 1
        put.reply(OK, None, None)
        waiting, taken = [], False
        for w in self._waiting:
            if taken or not w.match(put.key):
                waiting.append(w)
            else:
                self._answer(w, put.key, value)
                taken = w.op == "get"
        self._waiting = waiting
        if not taken:
            number = next(self._arrivals)
            self._tuples[number] = (put.key, value, put.size)
            self._by_key.setdefault(put.key, deque()).append(number)
            self.bytes += put.size
            self.stats.peak_bytes = max(self.stats.peak_bytes, self.bytes)

    def _remove(self, number):
        key, _, size = self._tuples.pop(number)
        numbers = self._by_key[key]
        numbers.popleft()  # the oldest of its key: gets always take the oldest match
        if not numbers:
            del self._by_key[key]
        self.bytes -= size

    def _admit(self):
        """Store the waiting puts that now fit, oldest first (a large one is never overtaken)."""
        while self._deferred and self.bytes + self._deferred[0].size <= self.max_bytes:
            self._accept(self._deferred.pop(0))

    def snapshot(self) -> SpaceStats:
        return dataclasses.replace(self.stats, left=len(self._tuples))


# -- the client API, shared ------------------------------------------------------------------------------
class _Client:
    """The operations, checked here; subclasses move them (``_call``) and end them (``_close``)."""

    max_bytes: int
    _closed = False

    def put(self, key: str, value, timeout: float | None = None) -> None:
        """Add the tuple (``key``, ``value``); waits while the space is full, TimeoutError after ``timeout`` s
        (the tuple is then not in the space). ValueError if it alone exceeds ``max_bytes``."""
        key, timeout = _check_key(key), checks.timeout("timeout", timeout)
        value, nbytes = _value_bytes(value)
        self._check_open("put")
        size = nbytes + len(key.encode())
        if size > self.max_bytes:
            raise ValueError(f"value: a tuple of {size} bytes exceeds the space's max_bytes={self.max_bytes}")
        if self._call("put", key, value, size, True, timeout)[0] == CANCELLED:
            raise TimeoutError(f"put({key!r}): the tuple space stayed full for {timeout} s")

    def get(self, pattern: str, timeout: float | None = None) -> tuple:
        """Take the oldest tuple whose key matches ``pattern``: (key, value); waits until one exists,
        TimeoutError after ``timeout`` seconds."""
        return self._take("get", pattern, True, timeout)

    def read(self, pattern: str, timeout: float | None = None) -> tuple:
        """Like :meth:`get`, but a copy: the tuple stays in the space."""
        return self._take("read", pattern, True, timeout)

    def try_get(self, pattern: str):
        """(key, value) taken as by :meth:`get`, or None at once when nothing matches."""
        return self._take("get", pattern, False, None)

    def try_read(self, pattern: str):
        """(key, value) copied as by :meth:`read`, or None at once when nothing matches."""
        return self._take("read", pattern, False, None)

    def close(self) -> None:
        """End this client (idempotent); later operations raise RuntimeError."""
        if not self._closed:
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _take(self, op, pattern, block, timeout):
        pattern, timeout = _check_pattern(pattern), checks.timeout("timeout", timeout)
        self._check_open(op)
        status, key, value = self._call(op, pattern, None, 0, block, timeout)
        if status == OK:
            return key, value
        if status == NONE:
            return None
        raise TimeoutError(f"{op}({pattern!r}): no tuple matched within {timeout} s")

    def _check_open(self, op):
        if self._closed:
            raise RuntimeError(f"{op}: this tuple space is closed")


# -- over MPI --------------------------------------------------------------------------------------------
def _check_comm(comm):
    if not hasattr(comm, "probe") or not hasattr(comm, "size"):
        raise TypeError(f"comm: expected an hpcai Communicator, got {type(comm).__name__}")
    if comm.size < 2:
        raise ValueError("comm: a tuple space over MPI needs 2 or more ranks (a server and clients); "
                         "on one rank use LocalTupleSpace")


class TupleSpace(_Client):
    """A client of the tuple space served by rank ``server`` of ``comm`` (see :func:`serve`).

    ``comm`` holds the server and its clients; pass a ``dup()`` of your communicator so that tuple-space
    messages never meet others. One client per rank, used by one thread at a time (another thread's call
    meanwhile raises: use :class:`LocalTupleSpace` between threads). Connecting waits for the server.
    Values come back as numpy arrays or JSON values.
    """

    def __init__(self, comm, server: int):
        _check_comm(comm)
        server = checks.rank("server", server, comm.size)
        if server == comm.rank:
            raise ValueError(f"server: rank {server} is this rank; the server rank runs serve(), not a client")
        self.comm, self.server = comm, server
        self._ids, self._busy = itertools.count(), threading.Lock()
        self.max_bytes = int(self._request({"op": "hello"})[2]["max_bytes"])

    def _call(self, op, key, value, size, block, timeout):
        meta = {"op": op, "key": key} if op == "put" else {"op": op, "pattern": key, "block": block}
        status, value, reply = self._request(meta, value, timeout)
        return status, reply.get("key"), value

    def _close(self):
        self._request({"op": "close"})
        self._closed = True

    def _request(self, meta, value=None, timeout=None):
        """Send one request and return (status, value, reply meta): its one reply, after a cancel if
        ``timeout`` passes first."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("TupleSpace: another thread is in a call on this client; a client serves one "
                               "thread at a time (LocalTupleSpace is shared by threads)")
        try:
            meta["id"] = rid = next(self._ids)
            sends = messages.isend(self.comm, value, self.server, REQUEST, meta)
            got = messages.recv(self.comm, self.server, REPLY, timeout=timeout)
            if got is None:
                messages.send(self.comm, None, self.server, REQUEST, {"op": "cancel", "id": rid})
                got = messages.recv(self.comm, self.server, REPLY)
            messages.wait_all(self.comm, sends)  # a deferred put's payload: received, or drained on cancel
        finally:
            self._busy.release()
        value, reply, _ = got
        if reply.get("id") != rid:
            raise RuntimeError(f"TupleSpace: the reply to request {reply.get('id')} arrived for request {rid}")
        if reply["status"] == ERROR:
            raise ValueError(reply["error"])
        return reply["status"], value, reply

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"max_bytes={self.max_bytes}"
        return f"TupleSpace(rank {self.comm.rank} -> server {self.server}, {state})"


def serve(comm, server: int | None = None, clients=None, max_bytes: int = DEFAULT_MAX_BYTES):
    """Serve a tuple space of at most ``max_bytes`` until every client has closed; returns its SpaceStats.

    Call on the ``server`` rank of ``comm`` (default: this rank), with every other rank of ``comm`` (or
    just ``clients``) opening a :class:`TupleSpace` on it. On another rank (a spare server) it connects and
    closes at once, returning None, so with the default ``clients`` every server rank may call it alike.
    Waits by polling, yielding the core; every client must close for it to return.
    """
    _check_comm(comm)
    server = comm.rank if server is None else checks.rank("server", server, comm.size)
    max_bytes = checks.integer("max_bytes", max_bytes, 1)
    if comm.rank != server:
        TupleSpace(comm, server).close()
        return None
    members = [r for r in range(comm.size) if r != server] if clients is None else \
        sorted({checks.rank("clients", r, comm.size) for r in clients} - {server})
    if not members:
        raise ValueError(f"clients: expected ranks of comm other than the server {server}, got {clients!r}")
    space, open_, pending = _Space(max_bytes), set(members), {}

    def reply_to(source, rid):
        def reply(status, key=None, value=None, **extra):
            pending.pop((source, rid), None)
            meta = {"id": rid, "status": status, "key": key, **extra}
            if status == ERROR:
                meta["error"], value = value, None
            messages.wait_all(comm, messages.isend(comm, value, source, REPLY, meta))
        return reply

    while open_:
        source, _, nbytes = comm.probe(None, REQUEST)
        header = messages.recv_header(comm, source, REQUEST, nbytes)
        meta = header["meta"]
        op, rid = meta.get("op"), meta.get("id")
        reply = reply_to(source, rid)
        if op == "cancel":
            if (source, rid) in pending:
                space.cancel(pending[(source, rid)])
        elif source not in open_ or op not in ("hello", "close", "put", "get", "read"):
            messages.recv_payload(comm, source, REQUEST, header)  # dropped
            reply(ERROR, None, f"tuple space server {server}: refused {op!r} from rank {source} "
                               f"({'not an open client' if source not in open_ else 'unknown operation'})")
        elif op == "hello":
            reply(OK, None, None, max_bytes=max_bytes)
        elif op == "close":
            open_.discard(source)
            reply(OK)
        elif op == "put":
            key = meta["key"]
            size = len(key.encode()) + (math.prod(header["shape"]) * header["dtype"].itemsize
                                        if header["kind"] == "array" else _value_bytes(header["value"])[1])
            load = functools.partial(messages.recv_payload, comm, source, REQUEST, header)
            pending[(source, rid)] = req = _Request("put", key, reply, size=size, load=load)
            space.submit(req)
        else:
            pending[(source, rid)] = req = _Request(op, meta["pattern"], reply, block=bool(meta["block"]))
            space.submit(req)
    return space.snapshot()


# -- in one process --------------------------------------------------------------------------------------
class LocalTupleSpace(_Client):
    """The tuple space in this process, shared by its threads: the same API and rules as over MPI.

    Values are copied in and out (a reader never shares memory with the space), so threads behave as ranks
    would; arrays keep their backend (numpy or cupy). :meth:`close` ends the space for every thread: calls
    still waiting raise RuntimeError.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = checks.integer("max_bytes", max_bytes, 1)
        self._space, self._lock = _Space(self.max_bytes), threading.Lock()

    @property
    def stats(self) -> SpaceStats:
        """What the space has done so far (a snapshot)."""
        with self._lock:
            return self._space.snapshot()

    def _call(self, op, key, value, size, block, timeout):
        if op == "put":
            value = _copy(value)
        result, done = [], threading.Condition(self._lock)

        def reply(status, k, v):  # under the lock, from whichever thread completes the request
            result.append((status, k, _copy(v) if op == "read" and status == OK else v))
            done.notify()

        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._check_open(op)
            req = _Request(op, key, reply, block, size, lambda: value)
            self._space.submit(req)
            while not result:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._space.cancel(req)  # still waiting: nothing else answers while we hold the lock
                    break
                done.wait(left)
            if result[0][0] == CANCELLED and self._closed:
                raise RuntimeError(f"{op}: the tuple space was closed while this call waited")
        return result[0]

    def _close(self):
        with self._lock:
            self._closed = True
            for req in self._space.pending():
                self._space.cancel(req)

    def __repr__(self) -> str:
        return f"LocalTupleSpace(max_bytes={self.max_bytes}{', closed' if self._closed else ''})"
