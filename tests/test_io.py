"""Atomic writes: the finished file has the permissions a plain open() would give it, and a failed
write leaves the old file and no temporary behind."""
import json
import os
import stat

import numpy as np
import pytest

from hpcai import io


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o077, 0o027, 0o002], ids=oct)
def test_new_file_follows_the_umask_like_open(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain.txt", "w"):
        pass
    io.write_json(tmp_path / "a.json", {"x": 1})
    io.save_arrays(tmp_path / "b.npz", {"x": np.arange(3)})
    assert mode(tmp_path / "a.json") == mode(tmp_path / "b.npz") == mode(tmp_path / "plain.txt") == 0o666 & ~mask


def test_rewriting_keeps_the_existing_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "a.json"
    io.write_json(path, {"x": 1})
    os.chmod(path, 0o600)
    io.write_json(path, {"x": 2})
    assert mode(path) == 0o600 and path.read_text().count("2") == 1


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    io.write_json(path, {"x": 1})

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        io.atomic_write(path, broken)
    assert os.listdir(tmp_path) == ["a.json"] and '"x": 1' in path.read_text()


def test_write_json_writes_numpy_values_as_plain_json(tmp_path):
    path = tmp_path / "m.json"
    io.write_json(path, {"a": np.float32(1.5), "b": np.arange(3), "c": np.int64(7), "d": tmp_path})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": 7, "d": str(tmp_path)}
