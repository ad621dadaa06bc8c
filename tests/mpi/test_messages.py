"""Self-describing messages between two ranks: into a caller's buffer, refused dtype/shape, JSON values.

Runs on every rank count: ranks 0 and 1 exchange, the others only join the final barrier (all ranks agree
on the skip when there is one rank)."""
import numpy as np
import pytest

from hpcai.parallel import messages

TAG = 40


def test_recv_into_a_reused_buffer_and_refusals(comm):
    if comm.size < 2:
        pytest.skip("needs two ranks")
    seen = {}
    if comm.rank == 0:
        for k in range(3):
            messages.send(comm, np.full((4, 5), k, np.float32), 1, TAG, {"k": k})
        messages.send(comm, np.ones(3), 1, TAG)            # refused by dtype, then drained
        messages.send(comm, {"after": "refusal"}, 1, TAG)  # still arrives in order
    elif comm.rank == 1:
        buf = np.empty((4, 5), np.float32)
        for k in range(3):
            value, meta, source = messages.recv(comm, 0, TAG, out=buf)
            seen[k] = (value is buf, float(buf[0, 0]), meta["k"], source)
        try:
            messages.recv(comm, 0, TAG, dtype=np.float32, out=buf)
        except messages.MessageError as e:
            seen["refused"] = str(e)
        seen["buf_kept"] = float(buf[0, 0])
        seen["json"] = messages.recv(comm, 0, TAG)[0]
    comm.barrier()
    if comm.rank == 1:
        assert [seen[k] for k in range(3)] == [(True, float(k), k, 0) for k in range(3)]
        assert "expected dtype float32, got float64" in seen["refused"]
        assert seen["buf_kept"] == 2.0  # a refused payload never lands in the caller's buffer
        assert seen["json"] == {"after": "refusal"}
