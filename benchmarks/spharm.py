"""hpcai's spherical-harmonic transform next to ducc0's (prints ratios and agreement; asserts nothing).

On the shallow-water model's Gaussian grids (T85: 256 x 128, T170: 512 x 256), with 1 and 2 threads
(``scipy.fft.set_workers``, which hpcai's compiled Legendre sums and FFTs follow, and BLAS threads for its numpy
paths; ``nthreads`` for ducc0), hpcai and ducc0 are timed in alternating rounds; each row gives the median time
of hpcai over the median time of ducc0 (goal: <= 1.5) and the largest difference of the results relative to
the largest value.

  python benchmarks/spharm.py            # about 10 s on 2 cores; needs `pip install ducc0`
  python benchmarks/spharm.py --quick    # fewer rounds
  python benchmarks/spharm.py --path numpy   # hpcai without numba: the numpy table and factored paths

Each row: the ratio of median wall times; the note gives both medians, the ratio of median CPU times of this
process (with one thread the cleaner figure on a busy machine), the ratio of the fastest rounds (nearest to
an idle machine) and the agreement. With numba installed hpcai takes its compiled path (the functions by
their recurrence, in cache, like ducc0); ``--path numpy`` switches it off (``hpcai.accel.disabled``): a single
scalar or wind field then takes the factored Legendre path (1.3 MB of bases and coefficients at T85, 8.6 MB
at T170), the model step's batched fields the table path (2.1 and 15 MB); ``--path table`` or ``--path
factored`` forces one numpy path for every row.

Transforms (those the model uses every step):
  scalar analysis     grid -> spectrum (one field)
  scalar synthesis    spectrum -> grid (one field)
  vector analysis     winds (u, v) -> vorticity, divergence spectra
  vector synthesis    vorticity, divergence spectra -> winds (u, v)
  model step          the transforms of one shallow-water step: 2 scalar + 1 vector synthesis,
                      1 scalar + 2 vector analyses (hpcai batches them; ducc0 does them one by one)

Conventions. hpcai's coefficients :math:`f_n^m` multiply :math:`\\bar P_n^m(\\mu) e^{im\\lambda}` with
:math:`\\int_{-1}^1 \\bar P^2 d\\mu = 1` and no Condon--Shortley phase; ducc0's :math:`a_{lm}` multiply
orthonormal :math:`Y_l^m` (:math:`\\int |Y|^2 d\\Omega = 1`) with the phase, in healpy order
(index ``m (2 lmax + 1 - m) / 2 + l``). Hence

  a_lm = sqrt(2 pi) (-1)^m f_l^m                                   (scalars)
  E_lm = -sqrt(2 pi) (-1)^m a delta_l^m / sqrt(l (l+1)),  B_lm = same with zeta   (spin 1, l >= 1)

with the spin-1 maps ``(theta, phi)`` components ``(-v, u)``; both use Gauss--Legendre rings from north to
south and the first longitude at 0.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import scipy.fft  # noqa: E402
from _common import report  # noqa: E402

from hpcai import accel  # noqa: E402
from hpcai.sim.spharm import SphericalHarmonics  # noqa: E402

GRIDS = {"T85": (256, 128), "T170": (512, 256)}


class DuccTransforms:
    """ducc0's transforms in hpcai's layout and units (conversions outside the timed calls)."""

    def __init__(self, sh: SphericalHarmonics):
        import ducc0
        self.sht, self.sh, T = ducc0.sht.experimental, sh, sh.T
        self.nthreads = 1
        p, m, l = np.nonzero(sh._valid_host)
        n = sh._n_host[p, m, l]
        self.src = (p, m, l)
        self.dst = m * (2 * T + 1 - m) // 2 + n  # healpy packing
        self.nalm = (T + 1) * (T + 2) // 2
        self.scale = np.sqrt(2 * np.pi) * (-1.0) ** m
        self.vscale = np.where(n > 0, -self.scale * sh.radius / np.sqrt(np.maximum(n * (n + 1), 1)), 0.0)

    def pack(self, spec, scale):
        alm = np.zeros(self.nalm, complex)
        alm[self.dst] = spec[self.src] * scale
        return alm

    def unpack(self, alm, scale):
        spec = np.zeros(self.sh.spectral_shape, complex)
        spec[self.src] = np.divide(alm[self.dst], scale, out=np.zeros(len(self.dst), complex), where=scale != 0)
        return spec

    # timed kernels (ducc0's own layout)
    def analysis(self, maps, spin):
        return self.sht.analysis_2d(map=maps, spin=spin, lmax=self.sh.T, geometry="GL", nthreads=self.nthreads)

    def synthesis(self, alm, spin):
        return self.sht.synthesis_2d(alm=alm, spin=spin, lmax=self.sh.T, geometry="GL", ntheta=self.sh.nlat,
                                     nphi=self.sh.nlon, nthreads=self.nthreads)


def median_pair(f, g, rounds):
    """Median (wall, CPU) times and the fastest wall time of ``f`` and ``g``, called in alternating order."""
    tf, tg = [], []
    for r in range(rounds):
        for fn, acc in ((f, tf), (g, tg)) if r % 2 == 0 else ((g, tg), (f, tf)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            acc.append((time.perf_counter() - t0, time.process_time() - c0))
    return [(*np.median(t, axis=0), np.min(t, axis=0)[0]) for t in (tf, tg)]


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def run_grid(name, nlon, nlat, threads, rounds, rng, path="auto"):
    from threadpoolctl import threadpool_limits
    sh = SphericalHarmonics(nlon, nlat)
    if path in ("table", "factored"):
        sh.factored_columns = 0 if path == "table" else 10 ** 6
    dt = DuccTransforms(sh)
    dt.nthreads = threads

    def spectrum():
        s = (rng.standard_normal(sh.spectral_shape) + 1j * rng.standard_normal(sh.spectral_shape)) * sh._valid_host
        s[:, 0] = s[:, 0].real
        s[sh.index(0, 0)] = 0.0
        return s / sh.radius ** 2 * 1e6  # vorticity-like magnitudes

    vrt, div, phi = spectrum(), spectrum(), spectrum()
    grid = sh.spec_to_grid(phi)
    u, v = sh.uv(vrt, div)
    alm = dt.pack(phi, dt.scale)[None]
    alm_v = np.stack([dt.pack(div, dt.vscale), dt.pack(vrt, dt.vscale)])
    map_v = np.stack([-v, u])
    # the model's step: grids (zeta, Phi, u, v) from spectra; then spectra from 5 product grids
    products = np.stack([grid * v, grid * u, u * u, u * v, v * v])

    psi, chi = vrt * sh.inverse_laplacian, div * sh.inverse_laplacian
    step_products = np.stack([products[0], products[1], products[3], products[4], products[2]])

    def hp_step():  # as ShallowWater._tendencies: one batched synthesis, one batched analysis
        winds = sh._wind_coefficients(psi[..., None], chi[..., None])
        coef = np.concatenate([sh._pad(np.stack([vrt, phi], axis=-1)), winds], axis=-1)
        sh._grids(sh._synthesise(coef))
        Q = sh._analyse(sh._fourier(step_products), sh.T + 1)
        sh._h_sums(Q[..., 0:3])

    def dc_step():
        dt.synthesis(alm, 0)
        dt.synthesis(alm, 0)
        dt.synthesis(alm_v, 1)
        dt.analysis(products[2][None], 0)
        dt.analysis(np.stack([-products[1], products[0]]), 1)
        dt.analysis(np.stack([-products[4], products[3]]), 1)

    cases = [
        ("scalar analysis", lambda: sh.grid_to_spec(grid), lambda: dt.analysis(grid[None], 0)),
        ("scalar synthesis", lambda: sh.spec_to_grid(phi), lambda: dt.synthesis(alm, 0)),
        ("vector analysis", lambda: sh.vrtdiv(u, v), lambda: dt.analysis(map_v, 1)),
        ("vector synthesis", lambda: sh.uv(vrt, div), lambda: dt.synthesis(alm_v, 1)),
        ("model step", hp_step, dc_step),
    ]
    # agreement (untimed)
    agree = {
        "scalar analysis": rel(dt.unpack(dt.analysis(grid[None], 0)[0], dt.scale), sh.grid_to_spec(grid)),
        "scalar synthesis": rel(dt.synthesis(alm, 0)[0], sh.spec_to_grid(phi)),
    }
    E, B = dt.analysis(map_v, 1)
    z, d = sh.vrtdiv(u, v)
    agree["vector analysis"] = max(rel(dt.unpack(B, dt.vscale), z), rel(dt.unpack(E, dt.vscale), d))
    mv = dt.synthesis(alm_v, 1)
    agree["vector synthesis"] = max(rel(mv[1], u), rel(-mv[0], v))
    agree["model step"] = max(agree.values())
    with threadpool_limits(threads), scipy.fft.set_workers(threads):
        for case, f, g in cases:
            f(), g()  # warm up
            (th, ch, bh), (td, cd, bd) = median_pair(f, g, rounds)
            report(f"{name} {threads} thr {case}", th / td,
                   f"hpcai {th * 1e3:.3g} ms, ducc0 {td * 1e3:.3g} ms; CPU {ch / cd:.2f}; "
                   f"fastest {bh / bd:.2f}; agree {agree[case]:.1e}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--grids", default="T85,T170", help="comma-separated, from " + ",".join(GRIDS))
    ap.add_argument("--path", default="auto", choices=("auto", "table", "factored", "numpy"),
                    help="hpcai's Legendre path (auto: the compiled recurrence where numba is installed, else "
                         "numpy's; numpy: factored for one field, table for several; table, factored: forced)")
    args = ap.parse_args(argv)
    try:
        import ducc0
    except ImportError:
        print("ducc0 is not installed (pip install ducc0); nothing to compare with")
        return
    rng = np.random.default_rng(0)
    print(f"hpcai SphericalHarmonics vs ducc0 {ducc0.__version__}: time ratio hpcai/ducc0 (goal <= 1.5), "
          f"max relative difference; hpcai's Legendre path: {args.path}")
    with accel.disabled() if args.path != "auto" else contextlib.nullcontext():
        for name in args.grids.split(","):
            nlon, nlat = GRIDS[name]
            for threads in (1, 2):
                rounds = (7 if name == "T85" else 5) if args.quick else (31 if name == "T85" else 15)
                run_grid(name, nlon, nlat, threads, rounds, rng, args.path)


if __name__ == "__main__":
    main()
