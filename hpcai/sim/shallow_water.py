r"""Global nonlinear shallow-water model on the rotating sphere (spectral transform, semi-implicit leapfrog).

Equations, in vorticity–divergence–geopotential form [Hack & Jakob 1992, sec. 2b], with absolute
vorticity :math:`\eta = \zeta + f`, geopotential :math:`\Phi = g h` and :math:`K = (u^2+v^2)/2`:

.. math::
    \partial_t\zeta = -\nabla\cdot(\eta\mathbf v), \qquad
    \partial_t\delta = \mathbf k\cdot\nabla\times(\eta\mathbf v) - \nabla^2(\Phi + K), \qquad
    \partial_t\Phi = -\nabla\cdot(\Phi\mathbf v).

The state is kept as spherical-harmonic coefficients (:mod:`hpcai.sim.spharm`); nonlinear products are
formed on the Gaussian grid. Time stepping is the semi-implicit leapfrog of Hack & Jakob (1992, sec. 5c):
the gravity-wave terms :math:`-\nabla^2\Phi` and :math:`-\bar\Phi\delta` are averaged over the levels
:math:`n\pm1`, which removes the gravity-wave time-step limit; advection and Coriolis terms are explicit,
so the stable step is set by the wind (:meth:`ShallowWater.stable_dt`). A Robert–Asselin filter (with the
optional Williams 2009 correction) damps the computational mode; :math:`\nabla^2` or hyper-diffusion is
applied spectrally as an exact integrating factor :math:`e^{-2\Delta t\,\kappa_n}`.

Grids are ``(nlat, nlon)`` with latitude north to south (``model.lat[0] > 0``), longitude east from 0;
coordinates in degrees. Everything runs on ``xp`` (numpy or cupy).

References
----------
Galewsky, J., Scott, R. K. and Polvani, L. M. (2004). An initial-value problem for testing numerical models of
the global shallow-water equations. Tellus 56A, 429-440.
Williamson, D. L., Drake, J. B., Hack, J. J., Jakob, R. and Swarztrauber, P. N. (1992). A standard test set for
numerical approximations to the shallow water equations in spherical geometry. J. Comput. Phys. 102, 211-224.
Hack, J. J. and Jakob, R. (1992). Description of a global shallow water model based on the spectral transform
method. NCAR/TN-343+STR.
Williams, P. D. (2009). A proposed modification to the Robert–Asselin time filter. Mon. Wea. Rev. 137, 2538.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..backend import to_host
from .spharm import SphericalHarmonics

__all__ = ["GRAVITY", "INITIAL_CONDITIONS", "OMEGA", "RADIUS", "History", "ShallowWater", "error_norms",
           "galewsky_balanced_height", "galewsky_jet", "galewsky_perturbation", "leapfrog_limit",
           "register_initial_condition", "williamson2_fields"]

RADIUS, OMEGA, GRAVITY = 6.37122e6, 7.292e-5, 9.80616  # [Williamson et al. 1992, Table I; Galewsky 2004]
MAX_WIND = 1000.0  # m/s: beyond this (3x the 10 km gravity-wave speed) a state counts as blown up
NICE_STEPS = tuple(d for d in range(3600, 0, -1) if 3600 % d == 0)  # hourly output falls on a step


def _real(name: str, value, positive: bool = False) -> float:
    """``value`` as a float if it is a finite real number (and > 0 if ``positive``); else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name}: expected a finite {'positive ' if positive else ''}number, got {value!r}")
    return float(value)


def leapfrog_limit(robert: float, williams: float = 1.0) -> float:
    r"""Largest :math:`\omega\Delta t` for which filtered leapfrog is stable on :math:`x' = i\omega x`.

    The amplification matrix of leapfrog plus the Robert–Asselin–Williams filter [Williams 2009]
    acting on (filtered :math:`x_{n-1}`, :math:`x_n`) is bisected for the first :math:`\omega\Delta t` whose
    spectral radius exceeds one. 1 for the plain leapfrog; 0.976 for ``robert=0.05``.
    """
    def radius(wdt):
        M = np.zeros((2, 2), complex)
        for k, (xb, x) in enumerate(np.eye(2)):
            xn = xb + 2j * wdt * x
            d = 0.5 * robert * (xb - 2 * x + xn)
            M[:, k] = [x + williams * d, xn - (1 - williams) * d]
        return np.abs(np.linalg.eigvals(M)).max()
    lo, hi = 1e-3, 1.5
    if radius(lo) > 1 + 1e-9:
        raise ValueError(f"williams: the filter (robert={robert}, williams={williams}) amplifies even slow modes")
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if radius(mid) <= 1 + 1e-9 else (lo, mid)
    return lo


@dataclasses.dataclass
class History:
    r"""Lat-lon snapshots and diagnostics recorded by :meth:`ShallowWater.run` (host numpy arrays).

    ``u, v, h, vorticity`` have shape ``(ntimes, nlat, nlon)`` (m/s, m/s, m, 1/s), latitude north to south;
    ``time`` is in seconds since the initial condition; ``mass`` (:math:`\int h\,dA`, m^3, i.e. mass over
    density), ``energy`` (:math:`\int \frac12 h|\mathbf v|^2 + \frac12 g h^2 dA`, m^5/s^2) and
    ``max_wind`` (m/s) have shape ``(ntimes,)``.
    """

    time: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    u: np.ndarray
    v: np.ndarray
    h: np.ndarray
    vorticity: np.ndarray
    mass: np.ndarray
    energy: np.ndarray
    max_wind: np.ndarray
    dt: float
    steps: int

    @property
    def days(self) -> np.ndarray:
        """Snapshot times in days."""
        return self.time / 86400.0


class ShallowWater:
    r"""Spectral-transform shallow-water model on a Gaussian grid.

    Parameters
    ----------
    nlon, nlat : int
        Gaussian grid (e.g. 256 x 128 for T85); see :class:`~hpcai.sim.spharm.SphericalHarmonics`.
    truncation : int, optional
        Triangular truncation T, default the largest alias-free one (T85 on 256 x 128); must satisfy
        ``nlon >= 3T+1`` and ``nlat >= (3T+1)/2``.
    dt : float, optional
        Time step in s; ``None`` picks the largest divisor of 3600 s within :meth:`stable_dt` at each run.
    diffusion : None, float or tuple
        ``None``: none. A float ``nu``: :math:`\nu\nabla^2` (m^2/s), :math:`\kappa_n = \nu n(n+1)/a^2`.
        ``("hyper", order, efold_hours)``: :math:`\nabla^{order}` scaled so the truncation wavenumber decays
        with the given e-folding time, :math:`\kappa_n = [n(n+1)/T(T+1)]^{order/2}/\tau` (the implicit
        :math:`\nabla^8`, 3 h filter of pyspharm-style codes is the default). Applied to
        :math:`\zeta, \delta, \Phi`; the global mean (n = 0) is never touched, so mass is conserved.
    radius, omega, gravity : float
        Planet constants (defaults from Galewsky et al. 2004 / Williamson et al. 1992).
    robert, williams : float
        Robert–Asselin filter coefficient and Williams' (2009) alpha (1 = classic filter).
    check_every : int
        Steps between blow-up checks (non-finite or absurd h or wind raise :class:`FloatingPointError`).
    xp : module
        numpy or cupy.
    """

    def __init__(self, nlon: int = 256, nlat: int = 128, truncation: int | None = None, dt: float | None = None,
                 diffusion=("hyper", 8, 3.0), radius: float = RADIUS, omega: float = OMEGA,
                 gravity: float = GRAVITY, robert: float = 0.05, williams: float = 1.0, check_every: int = 10,
                 xp=np):
        radius, gravity = _real("radius", radius, positive=True), _real("gravity", gravity, positive=True)
        omega, williams = _real("omega", omega), _real("williams", williams)
        if not (isinstance(robert, (int, float)) and 0 <= robert < 0.5):
            raise ValueError(f"robert: expected 0 <= robert < 0.5, got {robert!r}")
        if not (isinstance(check_every, (int, np.integer)) and check_every >= 1):
            raise ValueError(f"check_every: expected a positive integer, got {check_every!r}")
        self.sh = SphericalHarmonics(nlon, nlat, truncation, radius, xp)
        self.xp, self.nlon, self.nlat, self.T = xp, nlon, nlat, self.sh.T
        self.radius, self.omega, self.gravity = float(radius), float(omega), float(gravity)
        self.robert, self.williams, self.check_every = float(robert), float(williams), int(check_every)
        self.courant = leapfrog_limit(self.robert, self.williams)
        self.dt = self._check_dt(dt) if dt is not None else None
        self.kappa = self._diffusion_rates(diffusion)
        self.diffusion = diffusion
        self.lat, self.lon = self.sh.lat, self.sh.lon
        self.coriolis = xp.asarray(np.broadcast_to((2 * omega * self.sh.mu)[:, None], (nlat, nlon)).copy())
        self._now = self._old = None
        self.time, self.steps, self.phibar, self.dt_used = 0.0, 0, None, None

    # ----------------------------------------------------------------- configuration
    @staticmethod
    def _check_dt(dt) -> float:
        if not (isinstance(dt, (int, float, np.floating)) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt: expected a positive number of seconds, got {dt!r}")
        return float(dt)

    def _diffusion_rates(self, diffusion):
        n = self.sh.n.astype(self.xp.float64) * self.sh.valid
        nn = n * (n + 1)
        if diffusion is None or (isinstance(diffusion, (int, float)) and diffusion == 0):
            return None
        if isinstance(diffusion, (int, float)) and math.isfinite(diffusion) and diffusion > 0:
            return float(diffusion) * nn / self.radius ** 2
        if (isinstance(diffusion, tuple) and len(diffusion) == 3 and diffusion[0] == "hyper"
                and isinstance(diffusion[1], int) and diffusion[1] >= 2 and diffusion[1] % 2 == 0
                and isinstance(diffusion[2], (int, float)) and diffusion[2] > 0):
            order, hours = diffusion[1], float(diffusion[2])
            return (nn / (self.T * (self.T + 1.0))) ** (order // 2) / (hours * 3600.0)
        raise ValueError(f"diffusion: expected None, a viscosity nu > 0 (m^2/s) or ('hyper', even order >= 2, "
                         f"efold_hours > 0), got {diffusion!r}")

    # ----------------------------------------------------------------- state
    def initial_condition(self, name: str, **params) -> "ShallowWater":
        """Set the state from a registered initial condition (see ``INITIAL_CONDITIONS``); resets the clock."""
        if name not in INITIAL_CONDITIONS:
            raise ValueError(f"initial condition: unknown name {name!r}; choose from {sorted(INITIAL_CONDITIONS)}")
        INITIAL_CONDITIONS[name](self, **params)
        return self

    def _grid(self, name: str, a):
        """``a`` as a finite float64 ``(nlat, nlon)`` grid on ``xp`` (a number, a (nlat, 1) column or a
        (nlon,) row are broadcast); else a ValueError naming ``name`` and what was expected."""
        xp, shape = self.xp, (self.nlat, self.nlon)
        what = f"finite real numbers broadcastable to (nlat, nlon) = {shape}"
        try:
            arr = xp.asarray(a)
            if arr.dtype.kind not in "iuf":
                raise TypeError
        except (TypeError, ValueError):
            kind = type(a).__name__ if type(a).__module__ == "builtins" else \
                f"{type(a).__module__.split('.')[0]}.{type(a).__name__} {getattr(a, 'dtype', '')}".rstrip()
            raise ValueError(f"{name}: expected {what} on {xp.__name__}, got {kind}") from None
        if arr.ndim > 2 or not all(n in (1, m) for n, m in zip(arr.shape[::-1], shape[::-1])):
            raise ValueError(f"{name}: expected {what}, got shape {arr.shape}")
        bad = int((~xp.isfinite(arr)).sum())
        if bad:
            raise ValueError(f"{name}: expected {what}, got {bad} NaN or infinite values")
        return xp.broadcast_to(arr.astype(xp.float64), shape)

    def set_state(self, u, v, h) -> None:
        """Set the state from grid winds (m/s) and depth (m), each an (nlat, nlon) grid or anything that
        broadcasts to it (a number, a zonal (nlat, 1) column); resets the clock."""
        xp = self.xp
        vrt, div = self.sh.vrtdiv(self._grid("u", u), self._grid("v", v))
        h = self._grid("h", h)
        self._now = xp.stack([vrt, div, self.gravity * self.sh.grid_to_spec(h)], axis=-1)
        self._old, self.time, self.steps, self.phibar = None, 0.0, 0, None

    def _require_state(self):
        if self._now is None:
            raise RuntimeError("no state yet: call initial_condition(name, ...) or set_state(u, v, h) first")
        return self._now

    def add_height(self, h) -> None:
        """Add a grid height field (m) to the current state, e.g. a perturbation."""
        s = self._require_state()
        s[..., 2] += self.gravity * self.sh.grid_to_spec(self._grid("h", h))
        self._old = None

    def balance_height(self, mean_depth: float) -> None:
        r"""Replace h by the one that makes the divergence tendency vanish for the current winds.

        Solves :math:`\nabla^2(\Phi + K) = \mathbf k\cdot\nabla\times(\eta\mathbf v)` spectrally with
        the model's own transforms, so a zonal flow is a steady state of the discrete model to round-off
        (the continuous counterpart is the balance equation of Galewsky et al. 2004); the n = 0
        coefficient is set so that the area-mean depth is ``mean_depth``.
        """
        mean_depth = _real("mean_depth", mean_depth, positive=True)
        s = self._require_state()
        s[..., 2] = 0.0
        N = self._tendencies(s, phibar=0.0)[0]
        s[..., 2] = N[..., 1] * self.sh.inverse_laplacian  # N_delta = curl(eta v) - lap K
        s[self.sh.index(0, 0) + (2,)] = self.gravity * mean_depth * math.sqrt(2.0)
        self._old = None

    # ----------------------------------------------------------------- the right-hand side
    def _tendencies(self, s, phibar):
        r"""Explicit tendencies ``(2, M, L, 3)`` of (zeta, delta, Phi) and the grids (zeta, Phi, u, v).

        The semi-implicit parts :math:`-\nabla^2\Phi` (delta) and :math:`-\bar\Phi\delta` (Phi) are left out.
        """
        sh, xp = self.sh, self.xp
        im, rc = sh._im, sh._rcos
        psi, chi = s[..., 0] * sh.inverse_laplacian, s[..., 1] * sh.inverse_laplacian
        # one Legendre synthesis of (zeta, Phi, a u cos, a v cos), the winds as P-sums one degree higher
        coef = xp.concatenate([sh._pad(s[..., [0, 2]]), sh._wind_coefficients(psi[..., None], chi[..., None])],
                              axis=-1)
        g = sh._grids(sh._synthesise(coef))
        zeta, phi, u, v = g[0], g[1], g[2] * rc, g[3] * rc
        eta = zeta + self.coriolis
        # Fields in the order [Phi v, eta u, eta v, Phi u, K]: H-sums of the first three, P-sums of the last four.
        S = sh._fourier(xp.stack([phi * v * rc, eta * u * rc, eta * v * rc, phi * u * rc, 0.5 * (u * u + v * v)]))
        Q = sh._analyse(S, sh.T + 1)         # one Legendre analysis of all five, up to degree T+1
        aH = sh._h_sums(Q[..., 0:3])         # H-quadrature of Phi v, eta u, eta v
        aP = Q[:, :, :sh.L, 1:5]             # P-quadrature of eta u, eta v, Phi u, K (n > T: times 0 below)
        N = xp.stack([
            -(im * aP[..., 0] - aH[..., 2]),                                  # -div(eta v)
            im * aP[..., 1] + aH[..., 1] - sh.laplacian_eigenvalues * aP[..., 3],  # curl(eta v) - lap K
            -(im * aP[..., 2] - aH[..., 0]) + phibar * s[..., 1],             # -div(Phi v) + Phibar delta
        ], axis=-1)
        return N, (zeta, phi, u, v)

    def _step(self, dt: float) -> tuple:
        """One semi-implicit leapfrog step [Hack & Jakob 1992, sec. 5c]; a forward step to start."""
        xp, sh = self.xp, self.sh
        now = self._now
        N, grids = self._tendencies(now, self.phibar)
        old, tau = (now, dt) if self._old is None else (self._old, 2 * dt)
        lap = -sh.laplacian_eigenvalues  # n(n+1)/a^2 >= 0
        h, pb = 0.5 * tau, self.phibar
        A = old[..., 1] + tau * N[..., 1] + h * lap * old[..., 2]
        B = old[..., 2] + tau * N[..., 2] - h * pb * old[..., 1]
        phi = (B - h * pb * A) / (1.0 + h * h * pb * lap)
        new = xp.stack([old[..., 0] + tau * N[..., 0], A + h * lap * phi, phi], axis=-1)
        if self.kappa is not None:
            new *= xp.exp(-tau * self.kappa)[..., None]
        if self._old is not None:  # Robert–Asselin(–Williams) filter [Williams 2009]
            d = 0.5 * self.robert * (self._old - 2.0 * now + new)
            now = now + self.williams * d
            new -= (1.0 - self.williams) * d
        self._old, self._now = now, new
        self.time += dt
        self.steps += 1
        return grids

    # ----------------------------------------------------------------- stability
    def max_wind(self) -> float:
        """Largest wind speed on the grid now (m/s)."""
        u, v = self.sh.uv(self._require_state()[..., 0], self._now[..., 1])
        return float(self.xp.sqrt(u * u + v * v).max())

    def stable_dt(self) -> float:
        r"""Largest stable step (s) for the current state: :math:`\Delta t \le C/\omega_{max}`.

        :math:`\omega_{max} = |\mathbf v|_{max}\sqrt{T(T+1)}/a + 2\Omega` bounds the frequency of the
        explicit terms (advection of the shortest retained wave, degree T, plus inertial oscillation);
        gravity waves are implicit and do not enter [Hack & Jakob 1992, sec. 5c]. :math:`C` is the
        filtered-leapfrog limit :func:`leapfrog_limit` (0.976 for ``robert=0.05``) times 0.9 for the
        nonlinear margin. Example: T85 with an 80 m/s jet gives about 750 s.
        """
        speed = max(self.max_wind(), 1.0)
        omega = speed * math.sqrt(self.T * (self.T + 1.0)) / self.radius + 2 * abs(self.omega)
        return 0.9 * self.courant / omega

    # ----------------------------------------------------------------- diagnostics
    def fields(self) -> dict:
        """Grids (xp arrays) ``u, v, h, vorticity`` of the current state."""
        s = self._require_state()
        u, v = self.sh.uv(s[..., 0], s[..., 1])
        zeta, phi = self.sh.spec_to_grid(self.xp.moveaxis(s[..., [0, 2]], -1, 0))
        return {"u": u, "v": v, "h": phi / self.gravity, "vorticity": zeta}

    def vorticity(self):
        r"""Relative vorticity :math:`\zeta` on the grid (1/s, xp array)."""
        return self.sh.spec_to_grid(self._require_state()[..., 0])

    def diagnostics(self, fields: dict | None = None) -> dict:
        """``time`` (s), ``mass`` (m^3), ``energy`` (m^5/s^2) and ``max_wind`` (m/s) of the current state."""
        f = self.fields() if fields is None else fields
        u, v, h = f["u"], f["v"], f["h"]
        ke = u * u + v * v
        return {"time": self.time, "mass": self.sh.integrate(h),
                "energy": self.sh.integrate(0.5 * h * ke + 0.5 * self.gravity * h * h),
                "max_wind": float(self.xp.sqrt(ke.max()))}

    def _check_finite(self, grids) -> None:
        zeta, phi, u, v = grids
        hmax = float(self.xp.abs(phi).max()) / self.gravity
        wind = float(self.xp.sqrt((u * u + v * v).max()))
        depth = self.phibar / self.gravity
        if not (math.isfinite(hmax) and math.isfinite(wind)) or hmax > 10 * depth or wind > MAX_WIND:
            raise FloatingPointError(
                f"shallow-water model blew up at model time {self.time / 86400:.4f} days (step {self.steps}, "
                f"dt = {self.dt_used:g} s): max |h| = {hmax:.4g} m, max wind = {wind:.4g} m/s; reduce dt "
                f"(check stable_dt()) or increase diffusion")

    # ----------------------------------------------------------------- driver
    def run(self, days: float, output_every: int | None = None, output_hours: float | None = None,
            callback=None, check_stability: bool = True) -> History:
        """Integrate ``days`` model days and return the recorded :class:`History`.

        Parameters
        ----------
        days : float
            Length (>= 0); the run takes ``ceil(days * 86400 / dt)`` steps.
        output_every : int, optional
            Record a snapshot every this many steps. Or:
        output_hours : float, optional
            Record every this many model hours (must be a multiple of dt). With neither, only the start and
            end are recorded. The end is always recorded.
        callback : callable, optional
            ``callback(model)`` after each recorded snapshot.
        check_stability : bool
            Refuse a dt above :meth:`stable_dt` (``ValueError`` with the suggestion). Turn off only to
            experiment; blow-up is still caught (``FloatingPointError`` naming the model time).
        """
        if isinstance(days, bool) or not isinstance(days, (int, float, np.integer, np.floating)) \
                or not math.isfinite(days) or days < 0:
            raise ValueError(f"days: expected a finite number >= 0, got {days!r}")
        self._require_state()
        limit = self.stable_dt()
        dt = self.dt if self.dt is not None else next((s for s in NICE_STEPS if s <= limit), limit)
        if check_stability and dt > limit:
            raise ValueError(f"dt: {dt:g} s exceeds the stable limit {limit:.0f} s for T{self.T} with max wind "
                             f"{self.max_wind():.0f} m/s; use dt <= {math.floor(limit)}")
        if self._old is not None and dt != self.dt_used:
            self._old = None  # a new step size restarts leapfrog with a forward step
        self.dt_used = dt
        if self.phibar is None:  # reference geopotential: the global mean
            self.phibar = float(self._now[self.sh.index(0, 0) + (2,)].real) / math.sqrt(2.0)
        every = self._output_interval(output_every, output_hours, dt)
        nsteps = int(math.ceil(days * 86400.0 / dt - 1e-9))
        rec = {k: [] for k in ("time", "u", "v", "h", "vorticity", "mass", "energy", "max_wind")}

        def record():
            f = self.fields()
            self._check_finite((f["vorticity"], f["h"] * self.gravity, f["u"], f["v"]))
            for k, val in {**f, **self.diagnostics(f)}.items():
                rec[k].append(to_host(val) if k in f else val)
            if callback is not None:
                callback(self)

        record()
        with np.errstate(over="ignore", invalid="ignore"):  # a blow-up is reported by _check_finite
            for k in range(1, nsteps + 1):
                grids = self._step(dt)
                if k % self.check_every == 0:
                    self._check_finite(grids)
                if (every and k % every == 0) or k == nsteps:
                    record()
        return History(time=np.array(rec["time"]), lat=self.lat.copy(), lon=self.lon.copy(),
                       **{k: np.stack(rec[k]) for k in ("u", "v", "h", "vorticity")},
                       **{k: np.array(rec[k]) for k in ("mass", "energy", "max_wind")}, dt=dt, steps=nsteps)

    @staticmethod
    def _output_interval(output_every, output_hours, dt) -> int:
        if output_every is not None and output_hours is not None:
            raise ValueError("output_every, output_hours: give one of them, not both")
        if output_every is not None:
            if isinstance(output_every, bool) or not isinstance(output_every, (int, np.integer)) \
                    or output_every < 1:
                raise ValueError(f"output_every: expected a positive number of steps, got {output_every!r}")
            return int(output_every)
        if output_hours is not None:
            if not isinstance(output_hours, (int, float)) or not output_hours > 0:
                raise ValueError(f"output_hours: expected a positive number, got {output_hours!r}")
            steps = output_hours * 3600.0 / dt
            if abs(steps - round(steps)) > 1e-9 * steps or round(steps) < 1:
                raise ValueError(f"output_hours: {output_hours} h is not a whole number of {dt:g} s steps")
            return int(round(steps))
        return 0


# ===================================================================== initial conditions
INITIAL_CONDITIONS: dict = {}


def register_initial_condition(name: str):
    """Decorator: add ``fn(model, **params)`` to ``INITIAL_CONDITIONS`` under ``name``."""
    def deco(fn):
        INITIAL_CONDITIONS[name] = fn
        return fn
    return deco


def williamson2_fields(lat, lon, alpha=0.0, radius=RADIUS, omega=OMEGA, gravity=GRAVITY, u0=None, gh0=2.94e4):
    r"""Williamson et al. (1992) case 2, steady zonal geostrophic flow about an axis tilted by ``alpha``.

    As stated in the paper: :math:`u = u_0(\cos\theta\cos\alpha + \cos\lambda\sin\theta\sin\alpha)`,
    :math:`v = -u_0\sin\lambda\sin\alpha`,
    :math:`gh = gh_0 - (a\Omega u_0 + u_0^2/2)(-\cos\lambda\cos\theta\sin\alpha + \sin\theta\cos\alpha)^2`
    with :math:`u_0 = 2\pi a/12` days, :math:`gh_0 = 2.94\times10^4` m^2/s^2, and the Coriolis parameter
    rotated with the flow, :math:`f = 2\Omega(-\cos\lambda\cos\theta\sin\alpha + \sin\theta\cos\alpha)`,
    which makes it an exact steady state. ``lat``, ``lon`` in degrees (1-d); returns host grids
    ``u, v, h, f`` of shape ``(len(lat), len(lon))``.
    """
    th, lam = np.radians(np.asarray(lat, float))[:, None], np.radians(np.asarray(lon, float))[None, :]
    u0 = 2 * np.pi * radius / (12 * 86400.0) if u0 is None else u0
    ca, sa = np.cos(alpha), np.sin(alpha)
    rot = -np.cos(lam) * np.cos(th) * sa + np.sin(th) * ca
    u = u0 * (np.cos(th) * ca + np.cos(lam) * np.sin(th) * sa)
    v = -u0 * np.sin(lam) * sa * np.ones_like(th)
    h = (gh0 - (radius * omega * u0 + 0.5 * u0 * u0) * rot ** 2) / gravity
    return u, v, h, 2 * omega * rot


@register_initial_condition("williamson2")
def _williamson2(model, alpha: float = 0.0, u0: float | None = None, gh0: float = 2.94e4):
    """Williamson case 2 at rotation angle ``alpha`` (radians); also rotates ``model.coriolis``."""
    u, v, h, f = williamson2_fields(model.lat, model.lon, alpha, model.radius, model.omega, model.gravity, u0, gh0)
    model.coriolis = model.xp.asarray(f)
    model.set_state(u, v, h)


def galewsky_jet(lat, u_max=80.0, phi0=np.pi / 7, phi1=np.pi / 2 - np.pi / 7):
    r"""Zonal jet of Galewsky et al. (2004): :math:`u = (u_{max}/e_n)\exp[1/((\varphi-\varphi_0)
    (\varphi-\varphi_1))]` on :math:`\varphi_0<\varphi<\varphi_1`, zero elsewhere; ``lat`` in radians."""
    lat = np.asarray(lat, float)
    e_n = np.exp(-4.0 / (phi1 - phi0) ** 2)
    inside = (lat > phi0) & (lat < phi1)
    x = np.where(inside, (lat - phi0) * (lat - phi1), -1.0)
    return np.where(inside, u_max / e_n * np.exp(1.0 / x), 0.0)


def galewsky_balanced_height(lat, mean_depth=1.0e4, u_max=80.0, radius=RADIUS, omega=OMEGA, gravity=GRAVITY,
                             nodes=256):
    r"""Height in balance with :func:`galewsky_jet` by quadrature (Galewsky et al. 2004).

    :math:`gh(\varphi) = gh_0 - \int_{-\pi/2}^{\varphi} a u(\varphi')[f + u\tan\varphi'/a]d\varphi'`, with
    :math:`h_0` fixed so the area mean of h is ``mean_depth``. Gauss–Legendre quadrature with ``nodes``
    points on the jet interval (nested for the area mean); the integrand is smooth, so 256 nodes give
    round-off accuracy. Independent of the spectral model: a reference for its balanced state.
    Returns ``h`` at ``lat`` (radians) and ``h0`` (the depth south of the jet).
    """
    phi0, phi1 = np.pi / 7, np.pi / 2 - np.pi / 7
    x, w = np.polynomial.legendre.leggauss(nodes)

    def G(upper):  # integral from phi0 to upper (clipped to the jet)
        up = np.clip(np.asarray(upper, float), phi0, phi1)[..., None]
        p = phi0 + (up - phi0) * (x + 1) / 2
        u = galewsky_jet(p, u_max)
        return ((up[..., 0] - phi0) / 2) * ((radius * u * (2 * omega * np.sin(p) + u * np.tan(p) / radius)) @ w)

    p = phi0 + (phi1 - phi0) * (x + 1) / 2
    mean_G = 0.5 * ((phi1 - phi0) / 2 * (G(p) * np.cos(p)) @ w + G(phi1) * (1 - np.sin(phi1)))
    h0 = mean_depth + mean_G / gravity
    return h0 - G(lat) / gravity, float(h0)


def galewsky_perturbation(lat, lon, h_hat=120.0, alpha=1.0 / 3, beta=1.0 / 15, phi2=np.pi / 4):
    r"""Height bump of Galewsky et al. (2004), lat/lon in degrees (1-d), longitude taken in (-pi, pi].

    :math:`h' = \hat h\cos\varphi\,e^{-(\lambda/\alpha)^2}e^{-((\varphi_2-\varphi)/\beta)^2}`; note
    :math:`\beta^2` in the last exponent (several public codes divide by :math:`\beta`: a bug).
    """
    phi = np.radians(np.asarray(lat, float))[:, None]
    lam = np.radians(np.asarray(lon, float))[None, :]
    lam = np.where(lam > np.pi, lam - 2 * np.pi, lam)
    return h_hat * np.cos(phi) * np.exp(-(lam / alpha) ** 2) * np.exp(-((phi2 - phi) / beta) ** 2)


@register_initial_condition("galewsky")
def _galewsky(model, perturbation: bool = True, u_max: float = 80.0, mean_depth: float = 1.0e4,
              h_hat: float = 120.0, balance: str = "spectral"):
    """Galewsky et al. (2004) barotropically unstable jet; ``perturbation=False`` leaves the steady jet.

    ``balance="spectral"`` (default) makes the height balance the truncated jet exactly in the discrete
    model (:meth:`ShallowWater.balance_height`), so the unperturbed jet is steady to round-off;
    ``"quadrature"`` uses :func:`galewsky_balanced_height` on the grid, as in the paper.
    """
    if balance not in ("spectral", "quadrature"):
        raise ValueError(f"balance: expected 'spectral' or 'quadrature', got {balance!r}")
    lat = np.radians(model.lat)
    model.coriolis = model.xp.asarray(np.broadcast_to((2 * model.omega * np.sin(lat))[:, None],
                                                      (model.nlat, model.nlon)).copy())
    u = np.broadcast_to(galewsky_jet(lat, u_max)[:, None], (model.nlat, model.nlon))
    h = galewsky_balanced_height(lat, mean_depth, u_max, model.radius, model.omega, model.gravity)[0]
    model.set_state(u, np.zeros_like(u), np.broadcast_to(h[:, None], u.shape))
    if balance == "spectral":
        model.balance_height(mean_depth)
    if perturbation:
        model.add_height(galewsky_perturbation(model.lat, model.lon, h_hat))


def error_norms(model, h, h_true) -> dict:
    """Williamson et al. (1992) normalised errors ``l1, l2, linf`` of ``h`` against ``h_true``.

    Area integrals use the Gaussian quadrature of ``model`` (exact for band-limited fields).
    """
    xp = model.xp
    h, h_true = xp.asarray(h), xp.asarray(h_true)
    I = model.sh.integrate
    err = h - h_true
    return {"l1": I(xp.abs(err)) / I(xp.abs(h_true)), "l2": math.sqrt(I(err * err) / I(h_true * h_true)),
            "linf": float(xp.abs(err).max() / xp.abs(h_true).max())}
