"""What a workflow module sees: its own communicator, its parameters, its channels, the tuple space, a log.

A module is a function ``main(ctx)``. ``ctx.comm`` holds the module's ranks only (never MPI's world), so a
module written for one job runs unchanged beside others. ``ctx.channel(name)`` is a point-to-point link to
the module at its other end; ``ctx.space`` the tuple space shared by every module of the workflow.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from .. import backend
from ..apps.progress import Progress
from ..parallel import messages

_ARRAY = "__array__"  # in a tree's JSON message: {"__array__": i} stands for the tree's i-th array
CHANNEL_TAG0 = 1000  # channel k, direction d: header on CHANNEL_TAG0 + 4k + 2d, payload on the next tag


@dataclasses.dataclass(frozen=True)
class Received:
    """One message from a channel: the value, the sender's metadata and the sender's rank in its module."""

    value: object
    meta: dict
    rank: int


class Channel:
    """A link between this module and the module at the channel's other end, in either direction.

    Arrays travel as their own bytes with dtype and shape in a header (never pickled); small JSON values
    too. Ranks are the other module's own ranks (0 .. its size - 1).
    """

    def __init__(self, name, links, tag, peer, peer_ranks):
        self.name, self._links, self._tag = name, links, tag
        self.peer, self._peer_ranks = peer, peer_ranks  # the other module's name and world ranks (in order)

    def _dest(self, rank: int) -> int:
        if not isinstance(rank, int) or not 0 <= rank < len(self._peer_ranks):
            raise ValueError(f"rank: channel {self.name!r} leads to module {self.peer!r} with "
                             f"{len(self._peer_ranks)} rank(s); expected 0..{len(self._peer_ranks) - 1}, got {rank!r}")
        return self._peer_ranks[rank]

    def send(self, value, rank: int = 0, meta: dict | None = None) -> None:
        """Send an array or JSON value to rank ``rank`` of the other module (blocking for large arrays)."""
        messages.send(self._links, value, self._dest(rank), self._tag[0], meta)

    def isend(self, value, rank: int = 0, meta: dict | None = None):
        """Start sending; returns a handle whose ``wait()`` completes it (``value`` unchanged until then)."""
        requests = messages.isend(self._links, value, self._dest(rank), self._tag[0], meta)
        return _Pending(self._links, requests)

    def send_tree(self, tree: dict, rank: int = 0) -> None:
        """Send a dict of JSON values and numpy/cupy arrays (nested dicts too): one JSON message holding the
        dict with each array replaced by its index, then the arrays, each as its own bytes."""
        arrays = []

        def skeleton(value):
            if isinstance(value, dict):
                return {str(k): skeleton(v) for k, v in value.items()}
            if backend.is_array(value):
                arrays.append(value)
                return {_ARRAY: len(arrays) - 1}
            return value.tolist() if isinstance(value, np.generic) else value
        self.send({"tree": skeleton(tree), "arrays": len(arrays)}, rank, meta={"kind": "tree"})
        for a in arrays:
            self.send(a, rank)

    def recv_tree(self, rank: int | None = None, header: Received | None = None) -> dict:
        """What :meth:`send_tree` sent; ``header``: its first message, when already received (a loop that
        reads other messages first)."""
        header = header if header is not None else self.recv(rank)
        if header.meta.get("kind") != "tree" or not isinstance(header.value, dict):
            raise messages.MessageError(f"channel {self.name!r}: expected a tree of arrays (send_tree) from "
                                        f"module {self.peer!r}, got a {header.meta.get('kind', 'plain')!r} message")
        arrays = [self.recv(header.rank).value for _ in range(header.value["arrays"])]

        def fill(value):
            if isinstance(value, dict):
                return arrays[value[_ARRAY]] if set(value) == {_ARRAY} else {k: fill(v) for k, v in value.items()}
            return value
        return fill(header.value["tree"])

    @property
    def peer_size(self) -> int:
        """How many ranks the module at the other end has."""
        return len(self._peer_ranks)

    def recv(self, rank: int | None = None, dtype=None, shape=None, timeout: float | None = None,
             out=None) -> Received:
        """The next message from the other module (from its rank ``rank``, or any); ``dtype``/``shape`` are
        checked on receipt. An array lands in ``out`` when it has the arriving dtype and shape (a reused
        buffer: large arrays then move at raw MPI's bandwidth). TimeoutError after ``timeout`` seconds."""
        got = self._recv(rank, dtype, shape, timeout, out)
        if got is None:
            raise TimeoutError(f"channel {self.name!r}: nothing from module {self.peer!r} within {timeout} s")
        return got

    def poll(self, rank: int | None = None, dtype=None, shape=None) -> Received | None:
        """The next message if one has arrived, else None at once (a loop that trains between looks)."""
        return self._recv(rank, dtype, shape, 0)

    def _recv(self, rank, dtype, shape, timeout, out=None):
        source = None if rank is None else self._dest(rank)
        got = messages.recv(self._links, source, self._tag[1], dtype=dtype, shape=shape, timeout=timeout, out=out)
        if got is None:
            return None
        value, meta, world_rank = got
        return Received(value, meta, self._peer_ranks.index(world_rank))

    def __repr__(self) -> str:
        return f"Channel({self.name!r} to {self.peer!r}, {len(self._peer_ranks)} rank(s))"


class _Pending:
    def __init__(self, comm, requests):
        self._comm, self._requests = comm, requests

    def done(self) -> bool:
        """Whether the send has completed (it is not waited for)."""
        self._requests = [r for r in self._requests if not self._comm.test(r)]
        return not self._requests

    def wait(self) -> None:
        messages.wait_all(self._comm, self._requests)
        self._requests = []


@dataclasses.dataclass
class Context:
    """A module's view of the workflow; see the module docstring.

    ``iteration`` counts the rounds of the workflow's loop (0 outside it); ``params`` are the module's
    parameters from the control file; ``progress`` reaches the control panel like an application's.
    """

    name: str
    comm: object
    params: dict
    space: object
    progress: Progress
    log: logging.Logger
    iteration: int = 0
    channels: dict = dataclasses.field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    def channel(self, name: str) -> Channel:
        """The channel ``name`` from the control file, seen from this module."""
        if name not in self.channels:
            raise KeyError(f"channel: module {self.name!r} has no channel {name!r}; it has {sorted(self.channels)}")
        return self.channels[name]
