"""Exercises of notebook 06, the alloy surrogate: T_c from the Ising mapping, the Binder cumulant, a many-body energy."""
from __future__ import annotations

from . import Wrong, answer, judge

answer("06.tc", "the exact T_c of a bcc alloy with V = 0.06 eV", "354ea9320ee590be", sig=3,
       hint="V = e_AA + e_BB - 2 e_AB; on the bcc lattice k_B T_c = 6.35435 |V| / 4, and "
            "k_B = 8.617e-5 eV/K (hpcai.sim.alloy.KB_EV). Answer in kelvin.",
       mistakes={"3a13a876279225b6": "the Ising coupling is J = -V/4: divide |V| by 4.",
                 "87bd99a04c10445e": "V = e_AA + e_BB - 2 e_AB counts the unlike bond twice."},
       about="T_c is proportional to |V|: a stronger ordering energy needs more heat to undo.")

answer("06.binder", "the Binder cumulant of a perfectly ordered alloy", "0eb2f4a30d71948f", sig=3,
       hint="U = 1 - <m^4> / (3 <m^2>^2); in a perfectly ordered state m is +1 or -1 in every sample.",
       mistakes={"fbe9a77376b9e56f": "0 is the cumulant of a Gaussian m, deep in the disordered phase.",
                 "21a6db9db37f5d47": "that is <m^4> / (3 <m^2>^2); U is 1 minus it."},
       about="U goes from 0 (disordered) to 2/3 (ordered), and curves of different sizes cross at T_c.")


@judge("06.many_body", "a many-body site energy",
       hint="a site of species A (column 0 is 1) counts its B neighbours (column 3), a B site its A neighbours "
            "(column 2): np.where(own_a, features[:, 3], features[:, 2]).")
def _many_body(many_body):
    import numpy as np
    from hpcai.apps.alloy_model import Surrogate
    from hpcai.sim import alloy
    cell = alloy.Lattice("bcc", 3)  # 54 sites: a few seconds, whatever size the notebook studies
    model = alloy.SiteEnergyModel(cell, 2, many_body)
    mc = alloy.MonteCarlo(model, alloy.random_occupation(cell, (0.5, 0.5), (40,), seed=2),
                          np.linspace(0.01, 0.1, 40), seed=3)
    mc.sweep(10)  # partly ordered configurations, as the Monte Carlo visits them
    x = np.concatenate([alloy.random_occupation(cell, (0.5, 0.5), (80,), seed=4), mc.occupation])
    e = model.energies(x)
    if np.ptp(e) == 0:
        raise Wrong("many_body gives every configuration the same energy.")
    nb = cell.coordination[0]
    features = np.zeros((nb + 1, 4))
    features[:, 0], features[:, 2], features[:, 3] = 1, nb - np.arange(nb + 1), np.arange(nb + 1)
    if not np.allclose(many_body(features), -0.01 * np.tanh(np.arange(nb + 1) - 4.0)):
        raise Wrong("an A site with u B neighbours should have energy -0.01 tanh(u - 4).")
    s = Surrogate(cell, 2, hidden=16, ensemble=2)
    s.fit(x[:90], e[:90], epochs=300)
    pair_only = np.abs(s.inputs(x[90:]).mean(axis=1, dtype=np.float64) @ s.w * cell.n_sites - e[90:]).mean()
    full = np.abs(s.energies(x[90:]) - e[90:]).mean()
    if full > 0.75 * pair_only:
        raise Wrong(f"the networks should beat the pair part: {full:.2e} vs {pair_only:.2e} eV")
    return (f"held-out error {full / cell.n_sites * 1000:.3f} meV/atom with the networks, "
            f"{pair_only / cell.n_sites * 1000:.3f} with pairs only.")
