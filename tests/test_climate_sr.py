"""Climate SR application: parameter checks, the output file, the figures, restoration on held-out steps, and
the coupled run as a workflow on 2 and 3 MPI ranks (same stored data as the serial run; every rank the same Result; no
hang when a rank fails). About a minute on 2 cores; the MPI tests skip without mpi4py or mpiexec."""
import importlib.util
import json
import os
import sys
import textwrap

import numpy as np
import pytest

from hpcai.apps import climate_sr

from mpijob import MPIEXEC, mpirun
# 1.5 model days at T42, output every 3 h: 13 steps, 3 held out (days 0.375, 0.875, 1.375), 10 training pairs
SMALL = dict(days=1.5, iters_per_output=4, final_epochs=40, verbose=0)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("climate_sr")
    try:  # one BLAS thread: on 2 shared cores, 2 spinning OpenBLAS threads make this run ~8x slower, not faster
        from threadpoolctl import threadpool_limits
    except ImportError:
        return climate_sr.run(output_dir=str(out), **SMALL), out
    with threadpool_limits(1, user_api="blas"):
        return climate_sr.run(output_dir=str(out), **SMALL), out


@pytest.mark.parametrize("overrides, name", [
    ({"days": -1}, "days"),
    ({"days": 0.2}, "days"),  # too short for a single held-out step
    ({"initial_condition": "no-such-case"}, "initial_condition"),
    ({"dt": 3600}, "dt"),  # the solver's stability check: T42 with an 80 m/s jet needs dt <= ~1300 s
    ({"dt": 1000}, "output_hours"),  # 3 h is not a whole number of 1000 s steps
    ({"ratio": 1e6}, "ratio"),  # the truncation would keep no coefficient
    ({"codec": "block", "ratio": 1e7}, "ratio"),
    ({"codec": "jpeg2000"}, "codec"),
    ({"field": "temperature"}, "field"),
    ({"nlon": 130}, "nlon"),
    ({"holdout_every": 1}, "holdout_every"),
    ({"final_epochs": -1}, "final_epochs"),
])
def test_bad_parameters_raise_errors_naming_them(overrides, name):
    with pytest.raises(ValueError, match=rf"^{name}: "):
        climate_sr.run(verbose=0, **overrides)


def test_restored_error_is_well_below_the_compressed_error_on_held_out_steps(small_run):
    m = small_run[0].metrics
    assert m["compression_ratio"] >= 100 and m["held_out_steps"] == 3 and m["training_steps"] == 10
    # The x111 truncation leaves ~79 % L2 error (the jet's fronts are narrower than the 12 kept modes). After
    # 140 iterations the network restores these early, nearly zonal steps 25x better (seeds 0 and 1); 8x
    # leaves a 3x margin for BLAS and platform differences and still fails a network that learns little.
    assert m["l2_compressed"] > 0.7
    assert m["l2_restored"] * 8 < m["l2_compressed"], m
    assert m["max_restored"] < m["max_compressed"], m
    assert m["bytes_saved"] == m["bytes_raw"] - m["bytes_stored"] - m["bytes_weights"]


def test_output_file_round_trips_and_restores_like_the_run(small_run):
    result, out = small_run
    fields, attrs = climate_sr.read_compressed(result.files["data"])
    assert fields.shape == (13, 64, 128) and attrs["field"] == "vorticity" and attrs["units"] == "1/s"
    k = int(round(result.arrays["day"] * 8))  # the figure's step (output every 3 h)
    np.testing.assert_array_equal(fields[k], result.arrays["compressed"])
    restored, _ = climate_sr.read_compressed(result.files["data"], restore=True)
    np.testing.assert_allclose(restored[k], result.arrays["restored"], rtol=0, atol=1e-6 * np.abs(fields).max())
    saved = json.loads(open(result.files["metrics"]).read())
    assert saved["config"]["days"] == 1.5 and saved["metrics"]["l2_restored"] == result.metrics["l2_restored"]


def test_output_file_is_readable_by_xarray_with_coordinates_and_units(small_run):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    with xr.open_dataset(small_run[0].files["data"], engine="h5netcdf") as ds:
        assert ds["coef"].dims == ("time", "ky", "kx") and ds["coef"].attrs["units"] == "1/s"
        np.testing.assert_allclose(ds["time"].values, np.arange(13) * 3.0)
        assert ds["lat"].attrs["units"] == "degrees_north" and ds["lon"].attrs["units"] == "degrees_east"
        assert ds.sizes["lat"] == 64 and ds.sizes["lon"] == 128


def test_figures_are_written(small_run):
    result, out = small_run
    assert set(result.figures) == {"fields", "errors"}
    for path in result.figures.values():
        assert os.path.dirname(path) == str(out)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# -- MPI ranks ----------------------------------------------------------------------------------------------
mpi_only = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or not os.access(MPIEXEC, os.X_OK)
    or int(os.environ.get("PMI_SIZE", "1")) > 1,
    reason=f"needs mpi4py and an mpiexec next to {sys.executable} (and not to run under mpiexec already)")


def run_script(script, *args, n=2, timeout=120):
    """``mpiexec -n n python script *args``: (returncode or None on timeout, stdout, stderr, seconds)."""
    return mpirun(n, [script, *args], timeout)


def _script(tmp_path, body):
    path = tmp_path / "job.py"
    path.write_text("import json, sys\nfrom hpcai.apps import climate_sr\nfrom hpcai.parallel.comm import world\n"
                    "from hpcai.runner import run_app\ncomm = world()\n" + textwrap.dedent(body))
    return path


@mpi_only
@pytest.mark.parametrize("ranks", [2, 3])  # 3: two learners train data-parallel
def test_coupled_run_stores_the_serial_runs_data_and_every_rank_returns_the_same_result(small_run, tmp_path, ranks):
    script = _script(tmp_path, """
        overrides = dict(days=1.5, iters_per_output=1, final_epochs=2, output_dir=sys.argv[1])
        r = run_app("climate_sr", overrides, verbose=1)  # on several ranks: the application's workflow
        with open(f"{sys.argv[1]}.rank{comm.rank}.json", "w") as f:
            json.dump({**r.metrics, "files": r.files}, f)
    """)
    code, out, err, seconds = run_script(script, tmp_path / "out", n=ranks)
    assert code == 0, f"exit {code} after {seconds:.0f} s\n{out[-3000:]}\n{err[-3000:]}"
    results = [json.loads((tmp_path / f"out.rank{rank}.json").read_text()) for rank in range(ranks)]
    assert all(r == results[0] for r in results)
    assert results[0]["ranks"] == ranks and results[0]["output_steps"] == 13
    assert results[0]["l2_restored"] < results[0]["l2_compressed"]
    assert out.count("held-out L2 error") == 1  # only rank 0 prints
    import h5py
    with h5py.File(small_run[0].files["data"], "r") as serial, h5py.File(results[0]["files"]["data"], "r") as coupled:
        assert serial["coef"][()].tobytes() == coupled["coef"][()].tobytes()
        np.testing.assert_array_equal(serial["time"][()], coupled["time"][()])


@mpi_only
def test_a_bad_parameter_found_on_rank_0_raises_on_every_rank(tmp_path):
    script = _script(tmp_path, """
        try:
            run_app("climate_sr", verbose=0, dt=3600)
        except ValueError as exc:
            open(f"{sys.argv[1]}.rank{comm.rank}", "w").write(str(exc))
    """)
    code, out, err, seconds = run_script(script, tmp_path / "error", timeout=60)
    assert code == 0, f"exit {code}\n{out}\n{err}"
    for rank in (0, 1):
        assert (tmp_path / f"error.rank{rank}").read_text().startswith("dt: 3600 s exceeds the stable limit")


@mpi_only
@pytest.mark.parametrize("failing", ["learner", "producer"])
def test_an_exception_on_one_rank_ends_the_job_instead_of_hanging(tmp_path, failing):
    patch = {"learner": "climate_sr._Learner.train = lambda self, *a, **k: 1 / 0",
             "producer": "climate_sr._Producer.report = lambda self, k, *a: 1 / 0 if k == 3 else None"}[failing]
    script = _script(tmp_path, patch + "\nrun_app('climate_sr', days=1, final_epochs=1)\nprint('NOT REACHED')\n")
    code, out, err, seconds = run_script(script, timeout=45)  # the hang guard: kills the job at 45 s
    assert code is not None, f"the job still ran after 45 s: a rank hung instead of ending the job\n{out}\n{err}"
    assert code != 0, f"exit {code} after {seconds:.0f} s\n{out}\n{err}"
    module, rank = ("learn", 1) if failing == "learner" else ("simulate", 0)
    assert f"[hpcai workflow 'climate_sr'] module '{module}' (rank 0 of 1, job rank {rank}) failed" in err, err
    assert "ZeroDivisionError" in err, err
    assert "NOT REACHED" not in out
