"""Shallow-water model speed: model days per wall-clock second at T42/T85/T170, the share of time spent in
the spectral transforms, and the 6-day Galewsky et al. (2004) run at T85 (goal: <= 60 s on 2 cores;
Dedalus needs about 60 s for it with dt = 600 s).

  python benchmarks/climate_sim.py            # numpy, about 1-2 minutes on 2 idle cores
  python benchmarks/climate_sim.py --gpu      # cupy on the first GPU
  python benchmarks/climate_sim.py --quick    # shorter runs (T170 and the 6-day run skipped)

Each row: name, value, note. Timings are wall-clock; on a shared machine they are noisy (the notes give
the CPU time used by this process, which is not).
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from hpcai import backend  # noqa: E402
from hpcai.sim import ShallowWater  # noqa: E402

GRIDS = {"T42": (128, 64), "T85": (256, 128), "T170": (512, 256)}
TRANSFORMS = ("_fourier", "_grids", "_analyse", "_synthesise")


def report(name: str, value: float, note: str = "") -> None:
    print(f"  {name:<46} {value:>10.3f}  {note}", flush=True)


class _Clock:
    """Wall and process-CPU time of a block, synchronising the GPU at both ends."""

    def __init__(self, xp):
        self.xp = xp

    def __enter__(self):
        self._sync()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def _sync(self):
        if self.xp is not np:
            backend.synchronize()


def _instrument(model, totals: dict) -> None:
    """Wrap the transform kernels of ``model.sh`` so their wall time accumulates in ``totals``."""
    sh, xp = model.sh, model.xp
    for name in TRANSFORMS:
        fn = getattr(sh, name)

        def timed(*args, _fn=fn, **kwargs):
            if xp is not np:
                backend.synchronize()
            t = time.perf_counter()
            out = _fn(*args, **kwargs)
            if xp is not np:
                backend.synchronize()
            totals["transforms"] += time.perf_counter() - t
            return out
        setattr(sh, name, timed)


def throughput(report=report, xp=np, days=1.0, grids=("T42", "T85", "T170")) -> None:
    """Model days per second on the Galewsky jet, and the share of the step spent in transforms."""
    print(f"throughput on the Galewsky jet ({'cupy' if xp is not np else 'numpy'}, largest stable dt)")
    for name in grids:
        nlon, nlat = GRIDS[name]
        model = ShallowWater(nlon, nlat, xp=xp).initial_condition("galewsky")
        model.run(0.05)  # warm-up: tables, FFT plans, GPU kernels
        model.initial_condition("galewsky")
        with _Clock(xp) as c:
            hist = model.run(days)
        step_ms = 1e3 * c.wall / hist.steps
        report(f"{name} ({nlon}x{nlat}): model days / s", days / c.wall,
               f"dt {hist.dt:g} s, {step_ms:.2f} ms/step, cpu {c.cpu:.1f} s for {c.wall:.1f} s wall")
        totals = {"transforms": 0.0}
        _instrument(model, totals)
        model.initial_condition("galewsky")
        with _Clock(xp) as c:
            hist = model.run(min(days, 0.5))
        report(f"{name}: share of time in transforms (%)", 100 * totals["transforms"] / c.wall,
               "FFTs + Legendre matmuls (+ their layout copies)")


def galewsky6(report=report, xp=np, dt=None) -> float:
    """Wall time of the 6-day Galewsky run at T85 (256x128), diagnostics every 24 h."""
    model = ShallowWater(256, 128, dt=dt, xp=xp).initial_condition("galewsky")
    with _Clock(xp) as c:
        hist = model.run(6, output_hours=24)
    zeta = hist.vorticity[-1]
    report(f"Galewsky 6 days T85, dt {hist.dt:g} s: wall s", c.wall,
           f"goal <= 60 s; cpu {c.cpu:.1f} s; {hist.steps} steps; day-6 max|zeta| {abs(zeta).max():.3e}; "
           f"mass drift {hist.mass[-1] / hist.mass[0] - 1:.1e}, energy {hist.energy[-1] / hist.energy[0] - 1:.1e}")
    return c.wall


def run(report=report, xp=np, quick=False) -> None:
    """All sections (what ``hpcai`` benchmark runners call)."""
    throughput(report, xp, days=0.5 if quick else 1.0, grids=("T42", "T85") if quick else tuple(GRIDS))
    if not quick:
        galewsky6(report, xp)
        galewsky6(report, xp, dt=600)


if __name__ == "__main__":
    args = sys.argv[1:]
    xp = np
    if "--gpu" in args:
        xp = backend.as_device("cuda").xp
    try:
        import threadpoolctl
        threads = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    except ImportError:
        threads = "?"
    print(f"numpy {np.__version__}; BLAS threads {threads}; cpus {os.cpu_count()}")
    run(report, xp, quick="--quick" in args)
