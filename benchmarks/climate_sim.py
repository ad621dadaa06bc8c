"""Shallow-water model speed next to a textbook-numpy transform peer (prints ratios; asserts nothing).

Model days per wall-clock second at T42/T85/T170, the share of a step in the spectral transforms and their
time against the peer's, and the 6-day Galewsky et al. (2004) run at T85 (goal: <= 60 s on 2 cores; Dedalus
needs about 60 s for it with dt = 600 s).

  python benchmarks/climate_sim.py            # numpy, about 1-2 minutes on 2 idle cores
  python benchmarks/climate_sim.py --gpu      # cupy on the first GPU
  python benchmarks/climate_sim.py --quick    # shorter runs (T170 and the 6-day run skipped)

The peer, measured in the same run on the same grids: the spectral transforms of one model step (6
Legendre syntheses, 4 inverse and 5 forward FFTs, 7 Legendre analyses) written as a textbook does with
plain numpy -- dense [m, n - m, latitude] tables over the whole grid, no equatorial symmetry, no blocking
by m, ``numpy.fft`` (with ``--gpu``, the same code on cupy). Its grids are checked against the model's.
Reported per grid: hpcai's transform time per step over the peer's, and the whole model step over the
peer's transforms alone, timed in alternating rounds.

The transform alone against ducc0, an established spherical-harmonic library: ``benchmarks/spharm.py``.

Each row: name, value, note. Timings are wall-clock; on a shared machine they are noisy (the notes give
the CPU time used by this process, which is not).
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _common import blas_threads, report  # noqa: E402

from hpcai import backend  # noqa: E402
from hpcai.sim import ShallowWater  # noqa: E402
from hpcai.sim.spharm import gaussian_latitudes, legendre_functions  # noqa: E402

GRIDS = {"T42": (128, 64), "T85": (256, 128), "T170": (512, 256)}
TRANSFORMS = ("_fourier", "_grids", "_analyse", "_synthesise")


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


class TextbookTransforms:
    """The peer: spherical-harmonic transforms as plain numpy writes them, same conventions as the model.

    A spectral field is ``(T+1 [m], T+1 [n - m], k)`` complex; a grid ``(k, nlat, nlon)``. Synthesis is a
    matmul with the dense table ``P[m, lat, n - m]`` per m, then an inverse real FFT; analysis is a forward
    real FFT, then a matmul with ``P * w / nlon``. Legendre tables come from :mod:`hpcai.sim.spharm`
    (building them is not timed); the transforms themselves use none of its kernels.
    """

    def __init__(self, nlon: int, nlat: int, T: int, xp=np):
        mu, w = gaussian_latitudes(nlat)
        P = legendre_functions(T, mu)[0]  # (M, T+1, nlat), whole grid
        self.xp, self.nlon, self.nlat, self.M = xp, nlon, nlat, T + 1
        self.synth = xp.asarray(np.ascontiguousarray(P.transpose(0, 2, 1)))  # (M, nlat, T+1)
        self.anal = xp.asarray(P * (w / nlon))  # (M, T+1, nlat)

    def legendre_synthesis(self, spec):
        """``(M, T+1, k)`` -> Fourier coefficients ``(M, nlat, k)`` (complex, as real pairs through the matmul)."""
        xp = self.xp
        return xp.matmul(self.synth, xp.ascontiguousarray(spec).view(xp.float64)).view(xp.complex128)

    def to_grids(self, F):
        """Fourier ``(M, nlat, k)`` -> grids ``(k, nlat, nlon)``."""
        xp = self.xp
        full = xp.zeros((F.shape[-1], self.nlat, self.nlon // 2 + 1), xp.complex128)
        full[:, :, :self.M] = F.transpose(2, 1, 0)
        return xp.fft.irfft(full, n=self.nlon, axis=-1) * self.nlon

    def fourier(self, grids):
        """Grids ``(k, nlat, nlon)`` -> Fourier ``(M, nlat, k)``."""
        xp = self.xp
        return xp.ascontiguousarray(xp.fft.rfft(grids, axis=-1)[..., :self.M].transpose(2, 1, 0))

    def legendre_analysis(self, F):
        """Fourier ``(M, nlat, k)`` -> spectral ``(M, T+1, k)``."""
        xp = self.xp
        return xp.matmul(self.anal, xp.ascontiguousarray(F).view(xp.float64)).view(xp.complex128)

    def model_step(self, spec6, grids5):
        """The transforms of one shallow-water step: synthesise 6 fields (4 P-type, 2 H-type, the latter
        added to two of the former in Fourier space), 4 grids out; 5 grids in, analysed as 3 + 4 fields."""
        F = self.legendre_synthesis(spec6)
        F4 = F[..., :4].copy()
        F4[..., 2:] += F[..., 4:]
        self.to_grids(F4)
        G = self.fourier(grids5)
        return self.legendre_analysis(G[..., :3]), self.legendre_analysis(G[..., 1:])


def _textbook_peer(model, rng):
    """The peer for ``model``'s grid, random step inputs for it, and the largest relative difference of its
    synthesised grid from the model's for the same spectrum (round-off: it computes the same transform)."""
    sh, xp = model.sh, model.xp
    peer = TextbookTransforms(sh.nlon, sh.nlat, sh.T, xp)
    spec = (rng.standard_normal(sh.spectral_shape) + 1j * rng.standard_normal(sh.spectral_shape)) * sh._valid_host
    spec[:, 0] = spec[:, 0].real
    tri = backend.to_host(sh.to_triangle(xp.asarray(spec)))  # [m, n] -> the peer's [m, n - m]
    m, l = np.meshgrid(np.arange(sh.T + 1), np.arange(sh.T + 1), indexing="ij")
    ours = np.where(m + l <= sh.T, tri[m, np.minimum(m + l, sh.T)], 0)[..., None]
    theirs = backend.to_host(peer.to_grids(peer.legendre_synthesis(xp.asarray(ours))))[0]
    want = backend.to_host(sh.spec_to_grid(xp.asarray(spec)))
    diff = float(np.abs(theirs - want).max() / np.abs(want).max())
    inputs = (xp.asarray(np.repeat(ours, 6, axis=-1)), xp.asarray(rng.standard_normal((5, sh.nlat, sh.nlon))))
    return peer, inputs, diff


def _interleaved(model, peer, inputs, rounds: int = 5, steps: int = 5) -> dict:
    """Median seconds per step of the model, of its transforms, and of the peer's transforms, timed in
    alternating rounds of ``steps`` steps, so that load on a shared machine hits both alike."""
    totals = {"transforms": 0.0}
    _instrument(model, totals)
    xp, dt, times = model.xp, model.dt_used, {"step": [], "transforms": [], "peer": []}
    for r in range(rounds + 1):  # round 0 warms the peer up
        totals["transforms"] = 0.0
        with _Clock(xp) as c:
            for _ in range(steps):
                model._step(dt)
        with _Clock(xp) as p:
            for _ in range(steps):
                peer.model_step(*inputs)
        if r:
            for k, v in (("step", c.wall), ("transforms", totals["transforms"]), ("peer", p.wall)):
                times[k].append(v / steps)
    return {k: float(np.median(v)) for k, v in times.items()}


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
    print(f"throughput on the Galewsky jet ({'cupy' if xp is not np else 'numpy'}, largest stable dt), next to "
          "the same step's transforms in textbook numpy")
    rng = np.random.default_rng(0)
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
        peer, inputs, diff = _textbook_peer(model, rng)
        model.initial_condition("galewsky").run(0)  # a fresh state, stepped below
        t = _interleaved(model, peer, inputs)
        report(f"{name}: share of time in transforms (%)", 100 * t["transforms"] / t["step"],
               "FFTs + Legendre matmuls (+ their layout copies)")
        report(f"{name}: transforms, hpcai / textbook numpy", t["transforms"] / t["peer"],
               f"{1e3 * t['transforms']:.2f} vs {1e3 * t['peer']:.2f} ms per step; textbook grids agree to "
               f"{diff:.1e}")
        report(f"{name}: model step / textbook transforms alone", t["step"] / t["peer"],
               f"the whole step (nonlinear terms, time stepping) at {1e3 * t['step']:.2f} ms")


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
    print(f"numpy {np.__version__}; BLAS threads {blas_threads()}; cpus {os.cpu_count()}")
    run(report, xp, quick="--quick" in args)
