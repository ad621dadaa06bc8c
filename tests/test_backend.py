"""Backend selection, devices, transfers and the mirrored memory manager."""
import numpy as np
import pytest

from hpcai import backend
from hpcai.backend import Device, DeviceError, MemoryManager, StaleMirrorError


def test_get_array_module_follows_the_data(xp):
    a = xp.ones(3)
    assert backend.get_array_module(a) is xp
    assert backend.get_array_module(np.ones(2), a) is xp  # any cupy array selects cupy
    assert backend.get_array_module() is np


@pytest.mark.parametrize("text, expected", [("cpu", Device("cpu")), ("CPU", Device("cpu")), (None, Device("cpu"))])
def test_as_device_parses(text, expected):
    assert backend.as_device(text) == expected


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "cuda:-1", 3])
def test_as_device_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="device: expected 'cpu', 'cuda' or 'cuda:N'"):
        backend.as_device(bad)


@pytest.mark.skipif(backend.GPU_AVAILABLE, reason="needs a machine without a usable GPU")
def test_asking_for_a_missing_gpu_is_a_clear_error():
    with pytest.raises(DeviceError, match="needs a GPU"):
        backend.as_device("cuda:0")
    with pytest.raises(DeviceError, match="needs a GPU"):
        backend.to_device(np.ones(3), "cuda")


@pytest.mark.skipif(not backend.GPU_AVAILABLE, reason="needs a GPU")
def test_gpu_index_out_of_range_is_a_clear_error():
    with pytest.raises(DeviceError, match="CUDA device"):
        backend.as_device("cuda:99")


def test_round_trip_to_device_and_host(xp, rng):
    a = rng.standard_normal((4, 5)).astype(np.float32)
    dev = "cpu" if xp is np else "cuda:0"
    on = backend.to_device(a, dev)
    assert backend.get_array_module(on) is xp and backend.device_of(on) == backend.as_device(dev)
    back = backend.to_host(on)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    np.testing.assert_array_equal(back, a)
    assert backend.to_device(on, dev) is on  # already there: no copy


def _mirror_device(xp):
    return "cpu" if xp is np else "cuda:0"


def test_mirror_syncs_explicitly_and_refuses_stale_reads(xp):
    m = MemoryManager((2, 3), np.float64, kind="mirrored", device=_mirror_device(xp))
    assert m.dirty is None and m.nbytes == 2 * 6 * 8
    with m.write("host") as h:
        h[...] = 7.0
    assert m.dirty == "host"
    with pytest.raises(StaleMirrorError, match="device copy is stale"):
        m.device_array
    m.sync()
    assert m.dirty is None
    np.testing.assert_array_equal(backend.to_host(m.device_array), np.full((2, 3), 7.0))
    with m.write("device") as d:
        d += 1
    with pytest.raises(StaleMirrorError, match="host copy is stale"):
        m.host
    m.sync()
    np.testing.assert_array_equal(m.host, np.full((2, 3), 8.0))


def test_mirror_sides_are_separate_buffers(xp):
    m = MemoryManager.from_array(np.arange(6.0).reshape(2, 3), device=_mirror_device(xp))
    with m.write("host") as h:
        h[0, 0] = -1
    assert float(m._dev[0, 0]) == 0.0  # the device copy is untouched until sync
    m.sync()
    assert float(m.device_array[0, 0]) == -1.0


def test_host_and_device_kinds():
    h = MemoryManager(4, np.float32, kind="host")
    assert h.host.shape == (4,) and h.host.dtype == np.float32
    with pytest.raises(DeviceError, match="no device side"):
        h.device_array
    with pytest.raises(ValueError, match="kind: expected one of"):
        MemoryManager(4, kind="managed")
    if not backend.GPU_AVAILABLE:
        with pytest.raises(DeviceError):
            MemoryManager(4, kind="device", device="cuda:0")
    with pytest.raises(DeviceError, match="kind='device' needs a CUDA device"):
        MemoryManager(4, kind="device", device="cpu")
