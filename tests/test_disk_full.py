"""A full disk ends every write with one DiskFullError naming the file and the space it needed, keeps the old
file and leaves no temporary behind; temporaries of killed writes are removed by the next write or load.

The full disk is a 1 MiB tmpfs (skipped where mounting is not allowed); nothing fills the real disk.
"""
import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hpcai import io

MB = 1 << 20


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted on a fresh folder, unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def _only(folder, *names):
    assert sorted(os.listdir(folder)) == sorted(names)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_arrays_too_large_for_the_disk(small_disk, suffix):
    if suffix == ".h5":
        pytest.importorskip("h5py")
    path = small_disk / f"ckpt{suffix}"
    io.save_arrays(path, {"w": np.ones(1000)})
    with pytest.raises(io.DiskFullError, match=rf"ckpt\{suffix}: no space left on device.*needs about "
                                               r"2,\d\d\d,\d\d\d bytes.*old file is kept") as e:
        io.save_arrays(path, {"w": np.ones(2 * MB // 8)})
    assert e.value.errno == errno.ENOSPC
    assert io.load_arrays(path)[0]["w"].shape == (1000,)
    _only(small_disk, f"ckpt{suffix}")


def test_write_that_fills_the_disk_midway(small_disk):
    """Size unknown in advance (a figure, a library's own writer): the error comes from the write itself."""
    path = small_disk / "big.bin"

    def write(tmp):
        with open(tmp, "wb") as f:
            for _ in range(4):
                f.write(bytes(MB // 2))
    with pytest.raises(io.DiskFullError, match=r"big.bin: no space left.*more than the [\d,]+ bytes written"):
        io.atomic_write(path, write)
    _only(small_disk)


def test_png_on_a_full_disk_is_one_clear_error(small_disk):
    """matplotlib/PIL's OSError becomes a DiskFullError naming the figure, with no PIL traceback chained."""
    pytest.importorskip("matplotlib")
    from hpcai.train.plot import new_figure, save_png
    (small_disk / "filler").write_bytes(bytes(MB - 8192))
    fig = new_figure(figsize=(8, 8))
    fig.add_subplot().imshow(np.random.default_rng(0).random((400, 400)))
    with pytest.raises(io.DiskFullError, match="loss.png: no space left") as e:
        save_png(fig, small_disk / "loss.png")
    assert e.value.__cause__ is None and e.value.__suppress_context__
    _only(small_disk, "filler")


def test_hdf5_writer_on_a_full_disk_ends_cleanly(small_disk):
    """An application's own h5py writer (climate_sr, alloy, cbed) inside atomic_write: one message, exit 1,
    no crash at exit from a file h5py left open (the probe saw a segfault after 96 lines of tracebacks)."""
    pytest.importorskip("h5py")
    script = textwrap.dedent(f"""
        import h5py, numpy as np
        from hpcai import io
        def write(tmp):  # variable-length data and attributes, as climate_sr writes
            with h5py.File(tmp, "w") as f:
                for i in range(40):
                    d = f.create_dataset(f"p{{i}}", (50,), dtype=h5py.vlen_dtype(np.uint8))
                    for j in range(50):
                        d[j] = np.ones(500, np.uint8)
                    d.attrs["units"] = "m" * 100
        try:
            io.atomic_write({str(small_disk / "out.h5")!r}, write)
        except io.DiskFullError as e:
            raise SystemExit(f"error: {{e}}")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("error: ") and "out.h5: no space left" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr
    _only(small_disk)


def test_digits_on_a_full_disk_names_the_file(small_disk, monkeypatch):
    from hpcai.apps import digits
    (small_disk / "filler").write_bytes(bytes(MB - 4096))
    with pytest.raises(io.DiskFullError, match=r"(metrics.json|loss.png|confusion.png): no space left"):
        digits.run(digits.Config(epochs=1, hidden=8, output_dir=str(small_disk / "out")), verbose=0)


def test_rename_is_made_durable_by_fsyncing_the_folder(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_mode), fsync(fd)))
    io.write_json(tmp_path / "a.json", {"x": 1})
    assert any(os.path.stat.S_ISDIR(m) for m in synced) and any(os.path.stat.S_ISREG(m) for m in synced)


def _killed_write(path) -> None:
    """A process that dies (SIGKILL) in the middle of writing ``path``."""
    script = textwrap.dedent(f"""
        import os, signal
        from hpcai import io
        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(bytes(100000))
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        io.atomic_write({str(path)!r}, write)
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == -signal.SIGKILL


@pytest.mark.parametrize("then", ["write", "load"])
def test_temporaries_of_killed_writes_are_removed_next_time(tmp_path, then):
    io.save_arrays(tmp_path / "c.npz", {"w": np.arange(3)})
    _killed_write(tmp_path / "c.npz")
    live = tmp_path / f"{io.TEMP_PREFIX}{io._HOST}-{os.getpid()}-000000000000.npz"  # a write of this process
    live.write_bytes(b"in progress")
    old_style = tmp_path / f"{io.TEMP_PREFIX}0123456789ab.json"  # untouched for two hours
    old_style.write_bytes(b"x")
    os.utime(old_style, (os.path.getmtime(old_style) - 7200,) * 2)
    assert len([n for n in os.listdir(tmp_path) if n.startswith(io.TEMP_PREFIX)]) == 3
    if then == "write":
        io.write_json(tmp_path / "m.json", {})
    else:
        io.load_arrays(tmp_path / "c.npz")
    assert sorted(os.listdir(tmp_path)) == sorted(["c.npz", live.name] + (["m.json"] if then == "write" else []))
