"""Climate SR speed (prints numbers; asserts nothing): what in situ restoration costs next to the simulation.

  python benchmarks/climate.py            # everything, about 6-8 minutes on 2 idle cores
  python benchmarks/climate.py --quick    # 2 model days instead of 6, shorter solver runs (about 2 minutes)

Sections:

- ``solver``: ``benchmarks/climate_sim.py``'s ``run(report)``: model days per wall-clock second at T42, T85
  and T170, the share of a step spent in the spectral transforms and their time against a textbook numpy
  peer, the 6-day Galewsky run at T85.
- ``simulation alone``: the application's simulation (T85, output every 3 h) without any training, with
  and without compressing each output step: the reference for the overheads below.
- ``serial``: the default application run on one rank (simulation and training interleave): wall time,
  its shares in transforms, the rest of the simulation, compression and training, the in situ overhead
  (the simulation loop's wall time with interleaved training over the simulation alone) and the errors.
- ``coupled``: the same run on 2 MPI ranks (``mpiexec -n 2``, one thread per rank): rank 0's simulation
  loop wall time over the simulation alone (the goal is ~1: the simulation never waits for training).

One thread per process throughout (on 2 shared cores, 2 BLAS threads make this network's small GEMMs
slower, not faster). Timings on a shared machine are noisy.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import climate_sim  # noqa: E402
from _common import find_mpiexec, mpi_run, report  # noqa: E402

from hpcai import backend  # noqa: E402
from hpcai.apps import climate_sr  # noqa: E402
from hpcai.sim import compression  # noqa: E402
from hpcai.sim.shallow_water import ShallowWater  # noqa: E402
from hpcai.sim.spharm import SphericalHarmonics  # noqa: E402


@contextlib.contextmanager
def timed_transforms(totals: dict):
    """Accumulate the wall time of every spectral transform kernel (all instances) in ``totals['transforms']``."""
    originals = {name: getattr(SphericalHarmonics, name) for name in climate_sim.TRANSFORMS}

    def wrap(fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals["transforms"] += time.perf_counter() - t
        return timed
    for name, fn in originals.items():
        setattr(SphericalHarmonics, name, wrap(fn))
    try:
        yield totals
    finally:
        for name, fn in originals.items():
            setattr(SphericalHarmonics, name, fn)


def simulation_alone(report, days: float) -> dict:
    """Wall time of the application's simulation without training: bare, and compressing every output."""
    config = climate_sr.Config(days=days).validate()
    first = ShallowWater(config.nlon, config.nlat).initial_condition(config.initial_condition)
    # the application's codec, one step for the run (the application tunes it to each step: ~20 tries)
    codec = compression.for_ratio(config.codec, [backend.to_host(first.vorticity())], config.ratio)
    seconds = {}
    for name, callback in (("bare", None),
                           ("compressing", lambda m: compression.decompress(codec.compress(
                               backend.to_host(m.vorticity()))))):
        model = ShallowWater(config.nlon, config.nlat).initial_condition(config.initial_condition)
        start = time.perf_counter()
        model.run(days, output_hours=config.output_hours, callback=callback)
        seconds[name] = time.perf_counter() - start
    report(f"simulation alone, T85 {days:g} days: wall s", seconds["bare"], "no output callback")
    report("  with compression of every output: wall s", seconds["compressing"], "output every 3 h")
    return seconds


def serial(report, days: float, alone: dict) -> dict:
    totals = {"transforms": 0.0}
    with timed_transforms(totals):
        m = climate_sr.run(days=days, verbose=0).metrics
    wall = m["seconds_total"]
    report(f"serial run, T85 {days:g} days: wall s", wall, f"{m['training_iterations']} training iterations")
    for name, seconds in (("transforms", totals["transforms"]),
                          ("rest of the simulation", m["seconds_simulation"] - totals["transforms"]),
                          ("compression", m["seconds_compression"]), ("training", m["seconds_training"])):
        report(f"  share in {name} (%)", 100 * seconds / wall)
    report("  in situ overhead: simulation loop / alone", m["seconds_simulation_wall"] / alone["bare"],
           f"loop {m['seconds_simulation_wall']:.1f} s incl. interleaved training; whole run / alone "
           f"{wall / alone['bare']:.0f}x")
    _errors(report, m)
    return m


def coupled(report, days: float, alone: dict) -> dict | None:
    if find_mpiexec() is None:
        print("  coupled run skipped: no mpiexec next to this Python or on PATH")
        return None
    code = (f"import sys; sys.path.insert(0, {HERE!r}); from _common import print_result; "
            "from hpcai.apps import climate_sr; from hpcai.parallel.comm import world; "
            f"m = climate_sr.run(days={days!r}, verbose=0).metrics; world().rank == 0 and print_result(m)")
    try:
        m = mpi_run(2, ["-c", code], needed_by="climate.py", timeout=900, cwd=os.path.dirname(HERE))
    except RuntimeError as e:
        print(f"  coupled run failed: {str(e)[-2000:]}")
        return None
    report(f"coupled run, 2 ranks, T85 {days:g} days: wall s", m["seconds_total"],
           f"{m['training_iterations']} training iterations on rank 1")
    report("  rank 0 simulation loop / simulation alone", m["seconds_simulation_wall"] / alone["bare"],
           f"loop {m['seconds_simulation_wall']:.2f} s (compression {m['seconds_compression']:.2f} s, "
           f"sends {m['seconds_sends']:.3f} s)")
    _errors(report, m)
    return m


def _errors(report, m: dict) -> None:
    report("  held-out L2 error, codec alone", m["l2_compressed"], f"x{m['compression_ratio']:.0f} in bytes")
    report("  held-out L2 error, restored", m["l2_restored"], f"{m['l2_improvement']:.2f}x smaller "
           f"(max error {m['max_improvement']:.1f}x); x{m['compression_ratio_total']:.1f} counting weights and "
           f"corrections (held-out window x{m['compression_ratio_held_out']:.1f})")
    report("  SZ3 at the same bytes, L2", m["l2_sz3"], f"max {m['max_sz3']:.3g} (restored: {m['max_restored']:.3g})")


def run(report=report, quick: bool = False) -> None:
    """All sections (what ``hpcai`` benchmark runners call)."""
    print("solver (benchmarks/climate_sim.py)")
    climate_sim.run(report, quick=quick)
    days = 2.0 if quick else 6.0
    print("climate SR application (T85 256x128, defaults: block codec + residual network + corrections, ratio 50, "
          "bound 0.5 %)")
    alone = simulation_alone(report, days)
    serial(report, days, alone)
    coupled(report, days, alone)


if __name__ == "__main__":
    import numpy as np
    print(f"numpy {np.__version__}; cpus {os.cpu_count()}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    run(report, quick="--quick" in sys.argv[1:])
