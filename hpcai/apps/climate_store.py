"""The climate SR output file: compressed steps, the network's weights and the corrections that keep the
point-wise bound, in one HDF5 file that xarray reads.

The codec's part opens without hpcai: block DCT steps are the integer coefficients as a bzip2-filtered
dataset (the codec's bzip2 stream is the chunk), so after ``import hdf5plugin``
``xarray.open_dataset(path, engine="h5netcdf")`` gives ``<field>_dct`` (time, ky, kx, block_lat, block_lon)
and ``quantiser_step`` (time), and a field is the inverse DCT-II of each block of
``q * step * (1 + slope (ky + kx))`` (:func:`block_fields`, a few lines of scipy); SZ3 and ZFP steps are
filter chunks of the field itself. Restoring
needs hpcai: the network (group ``residual``, or ``restorer`` for the U-Net) and the corrections
(``corrections``, ``bound``), both checksummed.
"""
from __future__ import annotations

import dataclasses
import bz2
import json
import os
import zlib

import numpy as np

from .. import amp, io
from ..sim import compression as _codec
from .climate_net import Restorer, position_channels, restore as _apply
from .climate_residual import ResidualNet, restore as _apply_residual

FIELDS = {"vorticity": "1/s", "h": "m"}


def _block_chunks(stored):
    """(integer dtype, bzip2 streams of the frequency-major coefficients) of block-codec steps, all in the
    widest integer type any of them needed (nearly always int16: then the streams are the counted bytes)."""
    wide = max((np.dtype(c.params["int"]) for c in stored), key=lambda t: t.itemsize)
    streams = []
    for c in stored:
        if np.dtype(c.params["int"]) == wide and "bz2" in c.arrays:
            streams.append(c.arrays["bz2"].tobytes())
        else:
            q = np.ascontiguousarray(_codec.Block.quantised(c).transpose(2, 3, 0, 1), wide)
            streams.append(bz2.compress(q.tobytes(), 9))
    return wide, streams


def _streams_checksum(streams) -> str:
    """SHA-256 of the chunks as stored (the codecs' own bytes, before any HDF5 filter decodes them)."""
    return io.checksum({f"{i:08d}": np.frombuffer(b, np.uint8) for i, b in enumerate(streams)})


def _verify(path, f, name: str, value=None) -> None:
    """Dataset ``name`` of ``f`` against its ``sha256`` (files of earlier versions have none): its stored
    chunks, or ``value``, the array read; CorruptFileError naming the file and the dataset otherwise."""
    d = f[name]
    expected = d.attrs.get("sha256")
    if expected is None:
        return
    if value is None:
        streams = [d.id.read_direct_chunk((i,) + (0,) * (d.ndim - 1))[1] for i in range(d.shape[0])]
        got = _streams_checksum(streams)
    else:
        got = io.checksum({name: value})
    if got != expected:
        raise io.CorruptFileError(f"path: the {name!r} data in {os.fspath(path)!r} do not match their checksum")


def block_fields(q, steps, slope: float, shape) -> np.ndarray:
    """Fields (time, nlat, nlon) from a file's block coefficients ``q`` (time, ky, kx, block_lat, block_lon)
    and quantiser ``steps`` (time): what xarray reads, decoded with scipy.fft alone."""
    return np.stack([_codec.Block.reconstruct(np.asarray(qk).transpose(2, 3, 0, 1), float(s), slope, shape)
                     for qk, s in zip(q, steps)])


def write_compressed(path, config, stored, hours, lat, lon, state=None, norm=None, corrections=None,
                     bounds=None) -> str:
    """Write the compressed steps (truncate: DCT coefficients (time, ky, kx); block: integer block
    coefficients, bzip2 chunks; sz3, zfp: the field (time, lat, lon) as HDF5-filter chunks, which xarray
    reads after ``import hdf5plugin``) with dimension names, coordinates and units; the network's weights
    (group ``residual`` for the bounded pipeline, ``restorer`` for the U-Net, SHA-256 checksummed) and the
    corrections with each step's absolute bound; atomically."""
    import h5py

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            pipeline = getattr(config, "pipeline", "unet")
            f.attrs.update({"title": f"hpcai climate SR: {config.codec}-compressed shallow-water output",
                            "field": config.field, "units": FIELDS[config.field], "codec": config.codec,
                            "pipeline": pipeline, "grid_shape": (config.nlat, config.nlon),
                            "config": json.dumps(dataclasses.asdict(config))})
            for name, values, units, long_name in (
                    ("time", hours, "hours", "model time since the initial condition"),
                    ("lat", lat, "degrees_north", "latitude (Gaussian grid)"),
                    ("lon", lon, "degrees_east", "longitude")):
                d = f.create_dataset(name, data=np.asarray(values, float))
                d.attrs.update(units=units, long_name=long_name)
                d.make_scale(name)
            if config.codec == "truncate":
                coef = np.stack([c.arrays["coef"] for c in stored])
                for name, n, axis in (("ky", coef.shape[1], "latitude"), ("kx", coef.shape[2], "longitude")):
                    d = f.create_dataset(name, data=np.arange(n))
                    d.attrs.update(units="1", long_name=f"DCT-II index along {axis}")
                    d.make_scale(name)
                d = f.create_dataset("coef", data=coef)
                d.attrs.update(long_name=f"lowest DCT-II (ortho) coefficients of {config.field}",
                               units=FIELDS[config.field], sha256=io.checksum({"coef": coef}))
                for axis, name in enumerate(("time", "ky", "kx")):
                    d.dims[axis].attach_scale(f[name])
            elif config.codec in ("sz3", "zfp"):  # HDF5-filter chunks: any reader with hdf5plugin decodes them
                d = f.create_dataset(config.field, (len(stored),) + tuple(stored[0].shape), "<f8",
                                     chunks=(1,) + tuple(stored[0].shape), **_codec.filter_options(stored[0]))
                streams = [c.arrays["stream"].tobytes() for c in stored]
                for i, stream in enumerate(streams):
                    d.id.write_direct_chunk((i, 0, 0), stream, 0)
                d.attrs.update(units=FIELDS[config.field], long_name=f"{config.field}, {config.codec}-compressed",
                               params=json.dumps([c.params for c in stored]), sha256=_streams_checksum(streams))
                for axis, name in enumerate(("time", "lat", "lon")):
                    d.dims[axis].attach_scale(f[name])
            else:  # block: the integer coefficients, each step's bzip2 stream a chunk of hdf5plugin's filter
                p = stored[0].params
                grid, b = tuple(p["grid"]), int(p["block"])
                wide, streams = _block_chunks(stored)
                shape = (len(stored), b, b) + grid
                _, plugin = _codec.hdf5_filters()
                d = f.create_dataset(f"{config.field}_dct", shape, wide, chunks=(1,) + shape[1:],
                                     **plugin.BZip2(blocksize=9))
                for i, stream in enumerate(streams):
                    d.id.write_direct_chunk((i, 0, 0, 0, 0), stream, 0)
                d.attrs["sha256"] = _streams_checksum(streams)
                d.attrs.update(units="1", slope=float(p["slope"]), block=b, long_name=(
                    f"quantised 8x8 block DCT-II (ortho) coefficients of {config.field}: a block is "
                    "idctn(q * quantiser_step * (1 + slope * (ky + kx)), norm='ortho'); blocks side by side, "
                    f"cropped to {config.nlat} x {config.nlon}"))
                for name, n in (("ky", b), ("kx", b), ("block_lat", grid[0]), ("block_lon", grid[1])):
                    s = f.create_dataset(name, data=np.arange(n))
                    s.attrs.update(units="1", long_name=f"{name.replace('_', ' ')} index")
                    s.make_scale(name)
                q_steps = np.array([c.params["step"] for c in stored])
                steps = f.create_dataset("quantiser_step", data=q_steps)
                steps.attrs.update(units=FIELDS[config.field], long_name="quantiser step of the block codec",
                                   sha256=io.checksum({"quantiser_step": q_steps}))
                steps.dims[0].attach_scale(f["time"])
                for axis, name in enumerate(("time", "ky", "kx", "block_lat", "block_lon")):
                    d.dims[axis].attach_scale(f[name])
            if state is not None and pipeline == "bounded":
                g = f.create_group("residual")
                g.attrs.update(sha256=io.checksum(state), scale=float(norm[0]), residual_scale=float(norm[1]),
                               channels=config.channels, layers=config.layers, precision=config.precision)
                for name, a in state.items():
                    g.create_dataset(name, data=a)
            elif state is not None:
                g = f.create_group("restorer")
                g.attrs.update(sha256=io.checksum(state), norm=np.asarray(norm, float),
                               channels=config.channels, blocks=config.blocks, precision=config.precision)
                for name, a in state.items():
                    g.create_dataset(name, data=a)
            if corrections is not None and bounds is not None:
                d = f.create_dataset("corrections", (len(corrections),), dtype=h5py.vlen_dtype(np.uint8))
                for i, c in enumerate(corrections):
                    d[i] = np.asarray(c, np.uint8)
                d.attrs.update(long_name="LZMA-coded field of multiples of twice the bound, non-zero where the "
                               "restored field errs beyond the bound (hpcai.sim.compression.guard)",
                               sha256=io.checksum({str(i): np.asarray(c, np.uint8) for i, c in enumerate(corrections)}))
                d.dims[0].attach_scale(f["time"])
                b = f.create_dataset("bound", data=np.asarray(bounds, float))
                b.attrs.update(units=FIELDS[config.field], long_name="point-wise bound on |restored - original|")
                b.dims[0].attach_scale(f["time"])
    io.atomic_write(path, write)
    return os.fspath(path)


def read_compressed(path, restore: bool = False):
    """``(fields (time, nlat, nlon), attrs)`` of a file from :func:`write_compressed`: the decompressed steps,
    or with ``restore`` the restored ones (the stored network applied and, for the bounded pipeline, the
    corrections added; checksums verified first)."""
    import h5py
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no such file {os.fspath(path)!r}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:  # truncated, or not HDF5 at all
        raise io.CorruptFileError(f"path: {os.fspath(path)!r} is not a readable HDF5 file: {e}") from None
    with f:
        try:
            fields, attrs = _read_steps(path, f)
        except (OSError, KeyError, zlib.error) as e:  # a truncated or damaged chunk, a dataset missing
            raise io.CorruptFileError(f"path: the compressed steps in {os.fspath(path)!r} cannot be read: "
                                      f"{type(e).__name__}: {e}") from None
        if not restore:
            return fields, attrs
        return _restored(path, f, fields, attrs)


def _read_steps(path, f):
    """The decompressed steps of an open file and its attributes, every checksum verified first."""
    attrs = dict(f.attrs)
    shape = tuple(int(n) for n in attrs["grid_shape"])
    dct = f"{attrs['field']}_dct"
    if "coef" in f:
        coef = f["coef"][()]
        _verify(path, f, "coef", coef)
        parts = [_codec.Compressed("truncate", shape, "<f8", {"coef": c}, {}) for c in coef]
        fields = np.stack([_codec.decompress(p) for p in parts])
    elif dct in f:
        _verify(path, f, dct)
        steps = f["quantiser_step"][()]
        _verify(path, f, "quantiser_step", steps)
        _codec.hdf5_filters()  # registers the bzip2 filter with HDF5
        q = f[dct][()]
        if f[dct].compression == "gzip":  # files of earlier versions: deflate, (time, block_lat, block_lon, ky, kx)
            q = q.transpose(0, 3, 4, 1, 2)
        fields = block_fields(q, steps, float(f[dct].attrs["slope"]), shape)
    elif "payload" in f:  # files of earlier versions: the block codec's zlib streams
        params = json.loads(f["payload"].attrs["params"])
        parts = [_codec.Compressed("block", shape, "<f8", {"zlib": p}, q) for p, q in zip(f["payload"][()], params)]
        fields = np.stack([_codec.decompress(p) for p in parts])
    else:
        _verify(path, f, attrs["field"])
        _codec.hdf5_filters()  # registers the SZ3/ZFP filters with HDF5
        fields = f[attrs["field"]][()]
    return fields, attrs


def _restored(path, f, fields, attrs):
    """The restored steps: the stored network applied to ``fields`` and the corrections added."""
    dct = f"{attrs['field']}_dct"
    name = "residual" if "residual" in f else "restorer"
    if name not in f:
        raise ValueError(f"path: {os.fspath(path)!r} holds no restorer weights")
    g = f[name]
    state = {k: g[k][()] for k in g}
    if io.checksum(state) != g.attrs["sha256"]:
        raise io.CorruptFileError(f"path: the restorer weights in {os.fspath(path)!r} do not match their checksum")
    policy = amp.get_policy(str(g.attrs["precision"]))
    if name == "residual":
        model = ResidualNet(int(g.attrs["channels"]), int(g.attrs["layers"]))
        policy.prepare(model)
        model.load_state_dict(state)
        sinlat = np.sin(np.radians(f["lat"][()]))
        scale = float(g.attrs["scale"])
        if dct in f:  # the residual's unit of each step: the codec's quantiser step, or its bound
            units = f["quantiser_step"][()]
        elif attrs["field"] in f and "params" in f[attrs["field"]].attrs:
            units = [p["bound"] for p in json.loads(f[attrs["field"]].attrs["params"])]
        else:
            units = [float(g.attrs["residual_scale"])] * len(fields)
        restored = np.stack([_apply_residual(model, c, scale, float(u), sinlat, policy)
                             for c, u in zip(fields, units)])
        if "corrections" in f:
            corrections = [np.asarray(c, np.uint8) for c in f["corrections"][()]]
            expected = f["corrections"].attrs["sha256"]
            if io.checksum({str(i): c for i, c in enumerate(corrections)}) != expected:
                raise io.CorruptFileError(f"path: the corrections in {os.fspath(path)!r} do not match their "
                                          "checksum")
            restored = np.stack([_codec.apply_guard(r, c, b)
                                 for r, c, b in zip(restored, corrections, f["bound"][()])])
        return restored, attrs
    model = Restorer(int(g.attrs["channels"]), int(g.attrs["blocks"]))
    policy.prepare(model)
    model.load_state_dict(state)
    norm, pos = tuple(float(v) for v in g.attrs["norm"]), position_channels(f["lat"][()], f["lon"][()])
    return np.stack([_apply(model, policy, norm, pos, c) for c in fields]), attrs
