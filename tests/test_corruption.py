"""Damaged and crafted array files: every single-bit flip of a checkpoint loads bit-identical or raises
CorruptFileError (the checksum covers the meta too), and a file whose header promises more than it holds is
refused before anything that size is allocated.

The sweep is exhaustive over every bit of the bytes that carry information (every non-zero byte outside the
array data: HDF5 object headers, B-trees, heaps, ZIP headers) and samples the rest (zero padding and the
array bytes); ``HPCAI_EXHAUSTIVE_FLIPS=1`` flips every bit of the whole file (about 35,000 loads, 80 s).
"""
import os
import tracemalloc
import zipfile

import numpy as np
import pytest

from hpcai import io

ARRAYS = {"model:w": np.arange(6, dtype=np.float32).reshape(2, 3), "optimizer:0": np.array([3], np.int64)}
META = {"format": "hpcai-checkpoint", "optimizer": {"lr": 0.001, "betas": [0.9, 0.999]}, "epoch": 2}


def _flips(blob: bytes, data_spans, seed: int, sampled: int):
    """(byte, bit) pairs: every bit of every informative byte, and ``sampled`` bits elsewhere."""
    in_data = np.zeros(len(blob), bool)
    for start, stop in data_spans:
        in_data[start:stop] = True
    informative = [i for i, b in enumerate(blob) if b and not in_data[i]]
    rest = [i for i in range(len(blob)) if not (blob[i] and not in_data[i])]
    if os.environ.get("HPCAI_EXHAUSTIVE_FLIPS"):
        informative, rest = list(range(len(blob))), []
    rng = np.random.default_rng(seed)
    picked = rng.choice(rest, size=min(sampled, len(rest)), replace=False) if rest else []
    return [(i, b) for i in informative for b in range(8)] + [(int(i), int(rng.integers(8))) for i in picked]


def _data_spans(path):
    if path.suffix == ".npz":
        with zipfile.ZipFile(path) as z:  # a stored member's bytes follow its local header
            return [(i.header_offset + 30 + len(i.filename.encode()) + len(i.extra), i.header_offset + 30
                     + len(i.filename.encode()) + len(i.extra) + i.compress_size) for i in z.infolist()]
    import h5py
    with h5py.File(path, "r") as f:
        return [(f[k].id.get_offset(), f[k].id.get_offset() + f[k].id.get_storage_size()) for k in f]


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_every_single_bit_flip_loads_identical_or_is_refused(tmp_path, suffix):
    if suffix == ".h5":
        pytest.importorskip("h5py")
    path = tmp_path / f"ckpt{suffix}"
    io.save_arrays(path, ARRAYS, META)
    blob = path.read_bytes()
    flips = _flips(blob, _data_spans(path), seed=len(blob), sampled=300)
    assert len(flips) > 1500
    bad, outcomes = tmp_path / f"bad{suffix}", {"identical": 0, "refused": 0}
    for i, bit in flips:
        damaged = bytearray(blob)
        damaged[i] ^= 1 << bit
        bad.write_bytes(damaged)
        try:
            arrays, meta = io.load_arrays(bad)
        except io.CorruptFileError as e:
            assert str(bad) in str(e)
            outcomes["refused"] += 1
            continue
        assert meta == META and arrays.keys() == ARRAYS.keys(), (i, bit)
        for k, a in ARRAYS.items():
            assert arrays[k].dtype == a.dtype and arrays[k].tobytes() == a.tobytes(), (i, bit)
        outcomes["identical"] += 1
    assert outcomes["refused"] > 0 and outcomes["identical"] > 0


def test_flipped_learning_rate_in_the_meta_is_refused(tmp_path):
    """The probe's case: lr 0.001 -> 0.003 in the HDF5 meta used to resume silently."""
    pytest.importorskip("h5py")
    path = tmp_path / "c.h5"
    io.save_arrays(path, ARRAYS, META)
    blob = path.read_bytes()
    at = blob.index(b'"lr": 0.001') + len('"lr": 0.00')
    path.write_bytes(blob[:at] + b"3" + blob[at + 1:])
    with pytest.raises(io.CorruptFileError, match="checksum mismatch"):
        io.load_arrays(path)


def _refused_with_peak(path) -> tuple[str, int]:
    """(the CorruptFileError's message, the peak bytes allocated while loading ``path``)."""
    tracemalloc.start()
    try:
        with pytest.raises(io.CorruptFileError) as error:
            io.load_arrays(path)
        return str(error.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_npz_bomb_is_refused_without_allocating(tmp_path):
    """400 M int8 zeros deflated to well under a MB: the header promises 400 MB."""
    path = tmp_path / "bomb.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.int8))
    header["shape"] = (400_000_000,)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("model:w.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            chunk = bytes(8 << 20)
            for _ in range(400_000_000 // len(chunk)):
                f.write(chunk)
        z.writestr(io.CHECKSUM_KEY + ".npy", b"")
    assert path.stat().st_size < 3e6
    message, peak = _refused_with_peak(path)
    assert "bomb.npz" in message and "uncompressed" in message and peak < 50e6


def test_npz_member_larger_than_its_bytes_is_refused(tmp_path):
    """A stored member whose npy header claims 400 M elements but holds 8 bytes."""
    path = tmp_path / "short.npz"
    io.save_arrays(path, {"w": np.zeros(1)})
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = (400_000_000,)
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            if name == "w.npy":
                f = __import__("io").BytesIO()
                np.lib.format.write_array_header_1_0(f, header)
                raw = f.getvalue() + bytes(8)
            z.writestr(name, raw)
    message, peak = _refused_with_peak(path)
    assert "short.npz" in message and "does not fit" in message and peak < 50e6


@pytest.mark.parametrize("layout", ["fill_value", "chunked"])
def test_hdf5_bomb_is_refused_without_allocating(tmp_path, layout):
    """A few kB of HDF5 whose dataset is 400 M elements of its fill value (never written, or chunked)."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        kw = {"chunks": (1 << 20,), "compression": "gzip"} if layout == "chunked" else {}
        f.create_dataset("w", shape=(400_000_000,), dtype="f8", fillvalue=1.5, **kw)
        for k, v in io._text_arrays("0" * 64, "{}").items():
            f.create_dataset(k, data=v)
    assert path.stat().st_size < 1e5
    message, peak = _refused_with_peak(path)
    assert "bomb.h5" in message and "not stored contiguously" in message and peak < 50e6


@pytest.mark.parametrize("meta_json", ["[1, 2]", "{" * 100_000 + "}" * 100_000, '{"a": NaN', "\u00e9"])
def test_malformed_meta_with_a_valid_checksum_is_corrupt(tmp_path, meta_json):
    """A crafted file can carry a matching checksum over nonsense meta: still CorruptFileError, naming it."""
    path = tmp_path / "m.npz"
    arrays = {"w": np.zeros(2)}
    np.savez(path, **arrays, **{io.CHECKSUM_KEY: np.array(io.checksum(arrays, meta_json)),
                                io.META_KEY: np.array(meta_json)})
    with pytest.raises(io.CorruptFileError, match="m.npz"):
        io.load_arrays(path)
