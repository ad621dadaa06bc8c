"""The climate SR output file: compressed steps and the restorer's weights in one HDF5 file that xarray reads."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from .. import amp, io
from ..sim import compression as _codec
from .climate_net import Restorer, position_channels, restore as _apply

FIELDS = {"vorticity": "1/s", "h": "m"}


def write_compressed(path, config, stored, hours, lat, lon, state=None, norm=None) -> str:
    """Write the compressed steps (truncate: DCT coefficients (time, ky, kx); sz3, zfp: the field (time, lat,
    lon) as HDF5-filter chunks, which xarray reads after ``import hdf5plugin``) with dimension names,
    coordinates and units, and the restorer's weights (group ``restorer``, SHA-256 checksummed), atomically."""
    import h5py

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"title": f"hpcai climate SR: {config.codec}-compressed shallow-water output",
                            "field": config.field, "units": FIELDS[config.field], "codec": config.codec,
                            "grid_shape": (config.nlat, config.nlon), "config": json.dumps(dataclasses.asdict(config))})
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
                               units=FIELDS[config.field])
                for axis, name in enumerate(("time", "ky", "kx")):
                    d.dims[axis].attach_scale(f[name])
            elif config.codec in ("sz3", "zfp"):  # HDF5-filter chunks: any reader with hdf5plugin decodes them
                d = f.create_dataset(config.field, (len(stored),) + tuple(stored[0].shape), "<f8",
                                     chunks=(1,) + tuple(stored[0].shape), **_codec.filter_options(stored[0]))
                for i, c in enumerate(stored):
                    d.id.write_direct_chunk((i, 0, 0), c.arrays["stream"].tobytes(), 0)
                d.attrs.update(units=FIELDS[config.field], long_name=f"{config.field}, {config.codec}-compressed",
                               params=json.dumps([c.params for c in stored]))
                for axis, name in enumerate(("time", "lat", "lon")):
                    d.dims[axis].attach_scale(f[name])
            else:
                d = f.create_dataset("payload", (len(stored),), dtype=h5py.vlen_dtype(np.uint8))
                for i, c in enumerate(stored):
                    d[i] = c.arrays["zlib"]
                d.attrs["params"] = json.dumps([c.params for c in stored])  # a quantiser step per field
                d.dims[0].attach_scale(f["time"])
            if state is not None:
                g = f.create_group("restorer")
                g.attrs.update(sha256=io.checksum(state), norm=np.asarray(norm, float),
                               channels=config.channels, blocks=config.blocks, precision=config.precision)
                for name, a in state.items():
                    g.create_dataset(name, data=a)
    io.atomic_write(path, write)
    return os.fspath(path)


def read_compressed(path, restore: bool = False):
    """``(fields (time, nlat, nlon), attrs)`` of a file from :func:`write_compressed`: the decompressed steps,
    or with ``restore`` the restored ones (the stored network applied; its checksum is verified first)."""
    import h5py
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        shape = tuple(int(n) for n in attrs["grid_shape"])
        if "coef" in f:
            parts = [_codec.Compressed("truncate", shape, "<f8", {"coef": c}, {}) for c in f["coef"][()]]
            fields = np.stack([_codec.decompress(p) for p in parts])
        elif "payload" in f:
            params = json.loads(f["payload"].attrs["params"])
            parts = [_codec.Compressed("block", shape, "<f8", {"zlib": p}, q) for p, q in zip(f["payload"][()], params)]
            fields = np.stack([_codec.decompress(p) for p in parts])
        else:
            _codec.hdf5_filters()  # registers the SZ3/ZFP filters with HDF5
            fields = f[attrs["field"]][()]
        if not restore:
            return fields, attrs
        if "restorer" not in f:
            raise ValueError(f"path: {os.fspath(path)!r} holds no restorer weights")
        g = f["restorer"]
        state = {name: g[name][()] for name in g}
        if io.checksum(state) != g.attrs["sha256"]:
            raise io.CorruptFileError(f"path: the restorer weights in {os.fspath(path)!r} do not match their checksum")
        model = Restorer(int(g.attrs["channels"]), int(g.attrs["blocks"]))
        policy = amp.get_policy(str(g.attrs["precision"]))
        policy.prepare(model)
        model.load_state_dict(state)
        norm, pos = tuple(float(v) for v in g.attrs["norm"]), position_channels(f["lat"][()], f["lon"][()])
    return np.stack([_apply(model, policy, norm, pos, c) for c in fields]), attrs
