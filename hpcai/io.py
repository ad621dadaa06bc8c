"""Array files that cannot be half-written or silently corrupted: npz or HDF5, checksummed, atomic.

Every file carries a SHA-256 over its arrays' names, dtypes, shapes and bytes and over its JSON meta;
loading recomputes it and refuses a file that does not match. Before anything is allocated, each array's
size is checked against what the file can hold (uncompressed npz members, contiguous HDF5 datasets whose
bytes are in the file), so a crafted file cannot make a small file expand into gigabytes. Every way a
file can fail to load is a :class:`CorruptFileError` naming it. Writes go to a temporary file in the same
folder that is then renamed over the target, so a crash leaves either the old file or the new one, never
a mix; temporary files that a killed write left behind are removed by the next write or load in that
folder. Nothing is ever pickled: npz members of object dtype are refused.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import socket
import stat
import time
import zipfile

import numpy as np

CHECKSUM_KEY = "__sha256__"
META_KEY = "__meta__"
TEMP_PREFIX = ".tmp-"
STALE_SECONDS = 3600      # a temporary file untouched this long is stale even if its writer cannot be checked
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_FULL = (errno.ENOSPC, errno.EDQUOT)


class CorruptFileError(ValueError):
    """A file is truncated, unreadable, or its contents do not match its checksum."""


class DiskFullError(OSError):
    """A write ran out of space (or quota); the message names the file and the space it needed."""

    def __str__(self) -> str:
        return self.strerror


def checksum(arrays: dict, meta_json: str | None = None) -> str:
    """SHA-256 over the arrays in name order (names, dtypes, shapes and bytes all count), then ``meta_json``."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    if meta_json is not None:
        h.update(b"meta|" + meta_json.encode())
    return h.hexdigest()


# -- atomic writes -------------------------------------------------------------------------------------
def _create_temp(folder: str, suffix: str) -> str:
    """A new empty file in ``folder``, created as ``open(path, "w")`` would (mode 0o666 less the umask,
    the folder's default ACL applied) rather than owner-only like ``tempfile.mkstemp``. Its name holds this
    host and process, so :func:`remove_stale_temps` can tell a killed writer's file from a live one's."""
    for _ in range(100):
        tmp = os.path.join(folder, f"{TEMP_PREFIX}{_HOST}-{os.getpid()}-{os.urandom(6).hex()}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"atomic_write: could not create a temporary file in {folder!r}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True       # someone else's process: alive
    return True


def remove_stale_temps(folder) -> list:
    """Remove the temporary files of writes that were killed in ``folder``; the paths removed.

    A temporary file is stale when its writer, a process on this host, is gone, or when nothing has touched
    it for :data:`STALE_SECONDS` (a writer on another host, or one named the old way). Live writers' files stay.
    """
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(TEMP_PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        parts = entry.name[len(TEMP_PREFIX):].split("-")
        try:
            mine = len(parts) == 3 and parts[0] == _HOST and parts[1].isdigit()
            if (mine and not _alive(int(parts[1]))) or time.time() - entry.stat().st_mtime > STALE_SECONDS:
                os.unlink(entry.path)
                removed.append(entry.path)
        except OSError:
            continue      # gone already, or not ours to remove
    return removed


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it came from) is a full disk or quota, however the library wrapped it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return True
        if any(word in str(exc) for word in ("No space left", "Disk quota exceeded", "errno = 28")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _disk_full_error(path: str, written: int, needed: int | None) -> DiskFullError:
    folder = os.path.dirname(path)
    try:
        free = f"{shutil.disk_usage(folder).free:,} bytes free"
    except OSError:
        free = "free space unknown"
    need = f"about {needed:,} bytes" if needed else f"more than the {written:,} bytes written before it filled"
    error = DiskFullError(errno.ENOSPC, f"{path}: no space left on device: the new file needs {need} ({free} "
                          f"in {folder}); the old file is kept. Free some space (a rewrite needs room for the old "
                          "and the new file at once) or write elsewhere.")
    error.filename = path
    return error


def atomic_write(path, write, size: int | None = None) -> None:
    """Call ``write(tmp_path)`` and rename the result over ``path`` only if it succeeded.

    The new file is written beside the old one, which stays intact until the rename: rewriting a file needs
    free space for both, about twice its size. A full disk (or quota) ends in one :class:`DiskFullError`
    naming ``path`` and the space needed (``size``, the expected bytes, when the caller knows it; checked
    before writing). After the rename the folder is fsynced, so the new name survives a power cut. The new
    file gets the permissions a plain ``open(path, "w")`` would give it: an existing file's mode is kept, a
    new one follows the umask. Stale temporary files of killed writes in the folder are removed first.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(folder)
    if size is not None and shutil.disk_usage(folder).free < size:
        raise _disk_full_error(path, 0, size)
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
    except BaseException as e:
        written = 0
        if os.path.exists(tmp):
            written = os.stat(tmp).st_blocks * 512  # what reached the disk (an HDF5 file can be sparse)
            os.unlink(tmp)
        if isinstance(e, Exception) and _disk_full(e):
            raise _disk_full_error(path, written, size) from None
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno in _FULL:
            raise
    finally:
        os.close(fd)


def json_default(value):
    """How JSON writes what it does not know: numpy scalars and arrays as plain numbers and lists, else str."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically (numbers that numpy made are written as plain numbers)."""
    text = json.dumps(obj, indent=2, default=json_default)

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write, size=len(text.encode()))


# -- checksummed array files ---------------------------------------------------------------------------
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
    """Write named host arrays (and JSON-able ``meta``) to ``path`` (.npz or .h5), atomically.

    The checksum covers the arrays and the meta; npz members are stored uncompressed and HDF5 datasets
    contiguously, which is what :func:`load_arrays` accepts.
    """
    arrays = {str(k): np.asarray(v) for k, v in arrays.items()}
    bad = [k for k, v in arrays.items() if v.dtype.kind not in "biuf" or k.startswith("__")]
    if bad:
        raise ValueError(f"arrays: names must not start with '__' and values must be numeric, got {bad}")
    meta_json = json.dumps(meta or {}, sort_keys=True)  # ASCII: other characters are escaped
    digest = checksum(arrays, meta_json)
    size = sum(a.nbytes for a in arrays.values()) + 4 * len(meta_json) + 4096 * (len(arrays) + 2)
    if _format(path) == "npz":
        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays, **{CHECKSUM_KEY: np.array(digest), META_KEY: np.array(meta_json)})
    else:
        h5py = _h5py()

        def write(tmp):
            with h5py.File(tmp, "w") as f:
                for k, v in {**arrays, **_text_arrays(digest, meta_json)}.items():
                    f.create_dataset(k, data=v)
    atomic_write(path, write, size=size)


def _text_arrays(digest: str, meta_json: str) -> dict:
    """The checksum and the meta as HDF5 datasets of bytes: plain contiguous data that :func:`_read_hdf5`
    size-checks like the arrays (variable-length strings live in HDF5's global heap, where a flipped length
    can make the library loop for ever)."""
    return {CHECKSUM_KEY: np.frombuffer(digest.encode(), np.uint8),
            META_KEY: np.frombuffer(meta_json.encode(), np.uint8)}


def _read_npz(path: str, limit: int) -> tuple[dict, str, str]:
    """(arrays, digest, meta JSON) of an npz file; every member's size checked before it is read."""
    data = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else None
            if name is None or name in data:
                raise ValueError(f"unexpected member {info.filename!r}")
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size \
                    or info.file_size > limit:
                raise ValueError(f"member {info.filename!r}: {info.file_size} bytes stored in "
                                 f"{info.compress_size} (method {info.compress_type}); hpcai writes them uncompressed")
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"member {info.filename!r}: npy format version {version}")
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f, max_header_size=1000)
                if dtype.hasobject or dtype.kind not in ("U" if name in (CHECKSUM_KEY, META_KEY) else "biuf"):
                    raise ValueError(f"member {info.filename!r}: dtype {dtype}")
                nbytes = math.prod(shape) * dtype.itemsize
                if f.tell() + nbytes != info.file_size:
                    raise ValueError(f"member {info.filename!r}: shape {shape} of {dtype} does not fit its "
                                     f"{info.file_size} bytes")
                raw = np.empty(nbytes, np.uint8)
                if f.readinto(raw) != nbytes or f.read(1):  # reading to the end checks the member's CRC-32
                    raise ValueError(f"member {info.filename!r}: truncated")
            data[name] = raw.view(dtype).reshape(shape, order="F" if fortran else "C")
    return data, str(data.pop(CHECKSUM_KEY)[()]), str(data.pop(META_KEY)[()])


def _read_hdf5(path: str, limit: int) -> tuple[dict, str, str]:
    """(arrays, digest, meta JSON) of an HDF5 file; every dataset's bytes checked to be in the file first."""
    h5py = _h5py()
    data = {}
    with h5py.File(path, "r") as f:
        for name in f:
            d = f[name]
            if not isinstance(name, str) or not isinstance(d, h5py.Dataset) or d.dtype.kind not in "biuf":
                raise ValueError(f"{name!r} is not a numeric dataset")
            nbytes = math.prod(d.shape) * d.dtype.itemsize
            if d.chunks is not None or d.is_virtual or d.external or d.id.get_storage_size() != nbytes \
                    or nbytes > limit or (nbytes and d.id.get_offset() is None) \
                    or (nbytes and d.id.get_offset() + nbytes > limit):
                raise ValueError(f"dataset {name!r}: {d.shape} of {d.dtype} is not stored contiguously in the file")
            data[name] = d[()]
    digest, meta_json = (data.pop(k).tobytes().decode("ascii") for k in (CHECKSUM_KEY, META_KEY))
    return data, digest, meta_json


def load_arrays(path) -> tuple[dict, dict]:
    """Read ``(arrays, meta)`` written by :func:`save_arrays`, verifying sizes, then the checksum.

    Any damage -- truncation, flipped bits, a crafted member or dataset larger than the file -- raises
    :class:`CorruptFileError` naming the file; nothing larger than the file is allocated.
    """
    path = os.fspath(path)
    fmt = _format(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no such file {path!r}")
    if fmt == "hdf5":
        _h5py()
    remove_stale_temps(os.path.dirname(os.path.abspath(path)))
    try:
        limit = os.path.getsize(path)
        data, digest, meta_json = (_read_npz if fmt == "npz" else _read_hdf5)(path, limit)
        intact = checksum(data, meta_json) == digest
    except Exception as e:  # noqa: BLE001 - whatever the parser met in a damaged file, it is a damaged file
        raise CorruptFileError(f"{path}: not a complete hpcai {fmt} file ({type(e).__name__}: {e})") from None
    if not intact:
        raise CorruptFileError(f"{path}: checksum mismatch, the file is corrupted")
    try:
        meta = json.loads(meta_json)
        if not isinstance(meta, dict):
            raise TypeError(f"meta is a {type(meta).__name__}")
    except (ValueError, TypeError, RecursionError) as e:
        raise CorruptFileError(f"{path}: its meta is not a JSON object ({type(e).__name__}: {e})") from None
    return data, meta
