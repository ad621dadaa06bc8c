"""Figures of the alloy surrogate application: thermodynamics against temperature, parity, learning curve."""
from __future__ import annotations

import os

import numpy as np

from ..train.plot import new_figure, save_png

PANELS = (("energy", "energy (eV/atom)"), ("heat_capacity", "C_v (k_B/atom)"), ("order", "order parameter"),
          ("sro1", "Warren-Cowley alpha_1 (A-B)"))


def thermodynamics(result):
    """E(T), C_v(T), order parameter(T) and first-shell SRO(T) for every scanned size, surrogate (lines) and
    reference (dashed, when it was scanned), with T_c marked."""
    a, m = result.arrays, result.metrics
    t = a["temperature_k"]
    fig = new_figure(figsize=(11, 7), layout="constrained")
    for ax, (name, label) in zip(fig.subplots(2, 2).flat, PANELS):
        for L in m["sizes"]:
            for which, style in (("surrogate", "-o"), ("reference", "--")):
                key = f"{which}_L{L}_{name}"
                if key in a:
                    err = a.get(f"{which}_L{L}_{name}_error")
                    ax.errorbar(t, a[key], yerr=err, fmt=style, ms=3, label=f"{which} L={L}")
        if np.isfinite(m["tc"]):
            ax.axvline(m["tc"], color="k", lw=0.8, ls=":")
        ax.set_xlabel("T (K)")
        ax.set_ylabel(label)
    ax.legend(fontsize=7)
    exact = f", exact Ising {m['tc_exact']:.0f} K" if "tc_exact" in m else ""
    fig.suptitle(f"{m['structure']} order: T_c = {m['tc']:.0f} +- {m['tc_error']:.0f} K from the surrogate{exact}")
    return fig


def parity(result):
    """Surrogate against reference energy per atom for every labelled configuration."""
    a = result.arrays
    x, y = a["parity_reference_ev_per_atom"] * 1000, a["parity_surrogate_ev_per_atom"] * 1000
    fig = new_figure(figsize=(5, 5), layout="constrained")
    ax = fig.subplots()
    ax.plot(x, y, ".", ms=4)
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set_xlabel("reference (meV/atom)")
    ax.set_ylabel("surrogate (meV/atom)")
    ax.set_title(f"training set: MAE {result.metrics['train_mae_mev']:.3g} meV/atom")
    return fig


def learning_curve(result):
    """Error on fresh Monte Carlo samples (never trained on) against the reference calls spent."""
    a = result.arrays
    fig = new_figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    if len(a["learning_calls"]):
        ax.semilogy(a["learning_calls"], a["learning_mae_mev"], "-o", label="MAE")
        ax.semilogy(a["learning_calls"], a["learning_rmse_mev"], "-s", label="RMSE")
        ax.legend()
    ax.set_xlabel("reference energies computed")
    ax.set_ylabel("error on fresh MC samples (meV/atom)")
    return fig


def save_figures(result, folder: str) -> dict:
    """Every figure as a PNG in ``folder``; {name: path}."""
    figures = {"thermodynamics": thermodynamics, "parity": parity, "learning_curve": learning_curve}
    return {name: save_png(make(result), os.path.join(folder, f"{name}.png")) for name, make in figures.items()}
