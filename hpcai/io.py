"""Array files that cannot be half-written or silently corrupted: npz or HDF5, checksummed, atomic.

Every file carries a SHA-256 over its arrays' names, dtypes, shapes and bytes; loading recomputes it
and refuses a file that does not match. Writes go to a temporary file in the same folder that is then
renamed over the target, so a crash leaves either the old file or the new one, never a mix. Nothing
is ever pickled: npz files are read with ``allow_pickle=False``.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile

import numpy as np

CHECKSUM_KEY = "__sha256__"
META_KEY = "__meta__"


class CorruptFileError(ValueError):
    """A file is truncated, unreadable, or its contents do not match its checksum."""


def checksum(arrays: dict) -> str:
    """SHA-256 over the arrays in name order (names, dtypes, shapes and bytes all count)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _create_temp(folder: str, suffix: str) -> str:
    """A new empty file in ``folder``, created as ``open(path, "w")`` would (mode 0o666 less the umask,
    the folder's default ACL applied) rather than owner-only like ``tempfile.mkstemp``."""
    for _ in range(100):
        tmp = os.path.join(folder, f".tmp-{os.urandom(6).hex()}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"atomic_write: could not create a temporary file in {folder!r}")


def atomic_write(path, write) -> None:
    """Call ``write(tmp_path)`` and rename the result over ``path`` only if it succeeded.

    The new file gets the permissions a plain ``open(path, "w")`` would give it: an existing file's mode
    is kept, a new one follows the umask.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _create_temp(folder, os.path.splitext(path)[1])
    try:
        write(tmp)
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:
            pass
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_default(value):
    """How JSON writes what it does not know: numpy scalars and arrays as plain numbers and lists, else str."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically (numbers that numpy made are written as plain numbers)."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=json_default)
    atomic_write(path, write)


def _format(path) -> str:
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".npz":
        return "npz"
    if ext in (".h5", ".hdf5"):
        return "hdf5"
    raise ValueError(f"path: expected a file name ending in .npz, .h5 or .hdf5, got {os.fspath(path)!r}")


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("HDF5 files need h5py: pip install 'hpcai[io]'") from None
    return h5py


def save_arrays(path, arrays: dict, meta: dict | None = None) -> None:
    """Write named host arrays (and JSON-able ``meta``) to ``path`` (.npz or .h5), atomically."""
    arrays = {str(k): np.asarray(v) for k, v in arrays.items()}
    bad = [k for k, v in arrays.items() if v.dtype.kind not in "biuf" or k.startswith("__")]
    if bad:
        raise ValueError(f"arrays: names must not start with '__' and values must be numeric, got {bad}")
    digest, meta_json = checksum(arrays), json.dumps(meta or {}, sort_keys=True)
    if _format(path) == "npz":
        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays, **{CHECKSUM_KEY: np.array(digest), META_KEY: np.array(meta_json)})
    else:
        h5py = _h5py()

        def write(tmp):
            with h5py.File(tmp, "w") as f:
                for k, v in arrays.items():
                    f.create_dataset(k, data=v)
                f.attrs[CHECKSUM_KEY], f.attrs[META_KEY] = digest, meta_json
    atomic_write(path, write)


def load_arrays(path) -> tuple[dict, dict]:
    """Read ``(arrays, meta)`` written by :func:`save_arrays`, verifying the checksum."""
    path = os.fspath(path)
    fmt = _format(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no such file {path!r}")
    try:
        if fmt == "npz":
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            digest, meta_json = str(data.pop(CHECKSUM_KEY)), str(data.pop(META_KEY))
        else:
            with _h5py().File(path, "r") as f:
                data = {k: f[k][()] for k in f.keys()}
                digest, meta_json = str(f.attrs[CHECKSUM_KEY]), str(f.attrs[META_KEY])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CorruptFileError(f"{path}: not a complete hpcai {fmt} file ({type(e).__name__}: {e})") from None
    if checksum(data) != digest:
        raise CorruptFileError(f"{path}: checksum mismatch, the file is corrupted")
    return data, json.loads(meta_json)
