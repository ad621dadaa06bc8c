"""The alloy surrogate application: the surrogate against exact energies, active learning as a workflow (in
this process and under mpiexec), its files, and bad input."""
import dataclasses
import json
import os
import sys

import numpy as np
import pytest

from hpcai.apps import alloy_surrogate as app
from hpcai.apps.alloy_model import Surrogate
from hpcai.runner import run_app
from hpcai.sim import alloy

from mpijob import MPIEXEC, mpirun

TINY = dict(rounds=3, initial=16, per_round=10, epochs=40, explore_sweeps=6, scan_sweeps=24, temperatures=5,
            tc_sizes="2,4", ensemble=2, hidden=8)


def three_body(lattice):
    """A many-body energy no pair model has: each site's energy is nonlinear in its neighbours' species."""
    def site(features):
        own_a, unlike = features[:, 0], np.where(features[:, 0] == 1, features[:, 3], features[:, 2])
        return -0.01 * np.tanh(unlike - 4.0) * (1 + 0.5 * own_a) + 0.002 * (unlike - 4.0) ** 2
    return alloy.SiteEnergyModel(lattice, 2, site)


def labelled(model, n, seed):
    lattice = model.lattice
    occupation = alloy.random_occupation(lattice, (0.5, 0.5), (n // 2,), seed=seed)
    mc = alloy.MonteCarlo(model, alloy.random_occupation(lattice, (0.5, 0.5), (n - n // 2,), seed=seed + 1),
                          np.linspace(0.01, 0.1, n - n // 2), seed=seed + 2)
    mc.sweep(15)  # partly ordered configurations too, as the Monte Carlo visits them
    occupation = np.concatenate([occupation, mc.occupation])
    return occupation, model.energies(occupation)


def test_surrogate_learns_a_pair_model_exactly_and_its_swaps_are_local():
    lattice = alloy.Lattice("bcc", 3)
    reference = alloy.PairModel.from_bonds(lattice, 0.0, 0.0, -0.02)
    x, e = labelled(reference, 60, 0)
    surrogate = Surrogate(lattice, 2, hidden=8, ensemble=2, seed=1)
    surrogate.fit(x[:40], e[:40], epochs=30)
    held = (surrogate.energies(x[40:]) - e[40:]) / lattice.n_sites
    assert np.abs(held).max() < 1e-6  # eV/atom: the least-squares part is a pair cluster expansion
    assert alloy.swap_delta_mismatch(surrogate.features, x[40:44], seed=0) < 1e-10
    assert surrogate.predict(x[:3]).shape == (2, 3)


def test_surrogate_learns_what_pairs_cannot():
    """On a many-body energy the networks reduce the held-out error of the least-squares (pair) part."""
    lattice = alloy.Lattice("bcc", 3)
    reference = three_body(lattice)
    x, e = labelled(reference, 160, 3)
    surrogate = Surrogate(lattice, 2, hidden=16, ensemble=2, seed=0)
    surrogate.fit(x[:120], e[:120], epochs=300, lr=0.01)
    test_x, test_e = x[120:], e[120:]
    inputs = surrogate.inputs(test_x).mean(axis=1, dtype=np.float64)
    pair_error = np.abs(inputs @ surrogate.w * lattice.n_sites - test_e).mean()
    full_error = np.abs(surrogate.energies(test_x) - test_e).mean()
    assert full_error < 0.6 * pair_error, (full_error, pair_error)
    assert surrogate.spread(test_x).shape == (40,) and np.all(surrogate.spread(test_x) >= 0)


def test_triplet_features_make_a_three_site_cluster_energy_exact():
    """An energy of nearest-neighbour triangles (a three-site cluster expansion term): linear in the surrogate's
    neighbour-pair features, so with ``triplets=1`` its least-squares part is exact; counts alone are not."""
    lattice = alloy.Lattice("fcc", 3)
    probe = alloy.SiteEnergyModel(lattice, 2, lambda f: f[:, 0], triplets=1)
    aa, ab = probe.feature_names.index("pairs11@1:00"), probe.feature_names.index("pairs11@1:01")
    reference = alloy.SiteEnergyModel(lattice, 2, lambda f: 0.004 * f[:, 0] * f[:, aa] - 0.003 * f[:, 1] * f[:, ab],
                                      triplets=1)
    x, e = labelled(reference, 80, 5)
    errors = {}
    for triplets in (0, 1):
        surrogate = Surrogate(lattice, 2, hidden=4, ensemble=1, seed=0, triplets=triplets)
        surrogate.fit(x[:60], e[:60], epochs=1)
        linear = surrogate.inputs(x[60:]).mean(axis=1, dtype=np.float64) @ surrogate.w * lattice.n_sites
        errors[triplets] = np.abs(linear - e[60:]).max() / lattice.n_sites
    assert errors[1] < 1e-6 < 1e-4 < errors[0], errors
    assert alloy.swap_delta_mismatch(surrogate.features, x[60:64], seed=0) < 1e-10


def test_the_monte_carlo_table_follows_training_and_loaded_weights():
    """The environment table the Monte Carlo looks up is rebuilt after every fit and load_vector: the model
    the Monte Carlo sees always gives the ensemble's current energies."""
    lattice = alloy.Lattice("bcc", 3)
    x, e = labelled(three_body(lattice), 40, 11)
    surrogate = Surrogate(lattice, 2, hidden=8, ensemble=2, seed=0)
    surrogate.fit(x[:20], e[:20], epochs=2)
    before = surrogate.features.energies(x[30:])
    assert surrogate.features.tabulated and surrogate.features.site_table_geometry.size == 18
    surrogate.fit(x[:30], e[:30], epochs=30, lr=0.01)
    after = surrogate.features.energies(x[30:])
    assert np.abs(after - before).max() > 1e-4
    np.testing.assert_allclose(after, surrogate.energies(x[30:]), atol=1e-6)
    other = Surrogate(lattice, 2, hidden=8, ensemble=2, seed=5)
    other.features.energies(x[30:])                          # builds the untrained table
    other.load_vector(surrogate.vector())
    np.testing.assert_allclose(other.features.energies(x[30:]), after, atol=1e-9)


def test_the_triplet_memo_follows_training_and_a_running_monte_carlo_prices_by_it():
    """With neighbour-pair features the Monte Carlo's energies come from the memo of environment keys: they equal
    the ensemble's, follow every fit (also inside a swap state made before it), and the swap state's energy
    changes equal differences of the ensemble's whole-cell energies."""
    lattice = alloy.Lattice("fcc", 3, shells=2)
    x, e = labelled(alloy.PairModel.from_bonds(lattice, 0.0, 0.0, -0.02), 40, 13)
    surrogate = Surrogate(lattice, 2, hidden=8, ensemble=2, seed=0, triplets=1)
    surrogate.fit(x[:20], e[:20], epochs=2)
    model = surrogate.features
    assert model.memoised and not model.tabulated
    np.testing.assert_allclose(model.energies(x[30:]), surrogate.energies(x[30:]), atol=1e-6)
    state = model.swap_state(x[30:34].copy())
    before = len(model.memo())
    surrogate.fit(x[:30], e[:30], epochs=20, lr=0.01)
    assert len(model.memo()) == 0 < before                  # forgotten: the networks changed
    rows, i, j = np.arange(4), np.array([0, 5, 9, 20]), np.array([40, 41, 77, 3])
    after = x[30:34].copy()
    after[rows, i], after[rows, j] = x[30:34][rows, j], x[30:34][rows, i]
    np.testing.assert_allclose(state.deltas(x[30:34], i, j), surrogate.energies(after) - surrogate.energies(x[30:34]),
                               atol=1e-5)
    assert alloy.swap_delta_mismatch(model, x[34:], seed=1) < 1e-9


def test_weights_round_trip_through_one_vector_for_any_cell_size():
    lattice = alloy.Lattice("bcc", 3)
    x, e = labelled(alloy.PairModel.from_bonds(lattice, 0.0, 0.0, -0.02), 20, 5)
    a = Surrogate(lattice, 2, hidden=8, ensemble=2, seed=0)
    a.fit(x, e, epochs=5)
    b = Surrogate(alloy.Lattice("bcc", 4), 2, hidden=8, ensemble=2, seed=9).load_vector(a.vector())
    big = alloy.random_occupation(b.lattice, (0.5, 0.5), (3,), seed=0)
    per_site = lambda s, occ: s.energies(occ) / s.lattice.n_sites  # noqa: E731
    # the same local model on a bigger cell: the energy of a random 4^3 cell per site is close to the 3^3 one's
    assert np.allclose(per_site(b, big).mean(), per_site(a, alloy.random_occupation(lattice, (0.5, 0.5), (50,),
                                                                                   seed=1)).mean(), atol=3e-3)
    with pytest.raises(ValueError, match="vector: expected"):
        Surrogate(lattice, 2, hidden=9, ensemble=2).load_vector(a.vector())


def test_scans_on_the_surrogate_follow_the_reference():
    """A surrogate of a pair model, fitted exactly, runs the same Monte Carlo as the pair model itself."""
    lattice = alloy.Lattice("bcc", 2)
    reference = alloy.PairModel.from_bonds(lattice, 0.0, 0.0, -0.02)
    x, e = labelled(reference, 40, 7)
    surrogate = Surrogate(lattice, 2, hidden=4, ensemble=1)
    surrogate.fit(x, e, epochs=5)
    kT = alloy.KB_EV * np.array([500.0, 800.0, 1100.0])
    scans = [alloy.temperature_scan(model, kT, composition=(0.5, 0.5), structure="B2", replicas=2, sweeps=40, seed=3)
             for model in (reference, surrogate.features)]
    np.testing.assert_allclose(scans[0].energy.value, scans[1].energy.value, atol=1e-6)
    np.testing.assert_array_equal(scans[0].order.value, scans[1].order.value)


def test_active_learning_runs_as_a_workflow_and_writes_what_users_open(tmp_path):
    result = run_app("alloy_surrogate", app.Config(**TINY, output_dir=str(tmp_path)), verbose=0)
    m = result.metrics
    assert m["reference_calls"] == TINY["initial"] + TINY["per_round"] * (m["rounds"] - 1)
    assert m["final_mae_mev"] < 0.01 and m["train_mae_mev"] < 0.01  # a pair reference is learned exactly
    assert m["tc_exact"] == pytest.approx(6.35435 * 0.04 / 4 / alloy.KB_EV, rel=1e-5)
    for key in ("tc", "tc_reference"):
        assert 0.5 * m["tc_exact"] < m[key] < 1.5 * m["tc_exact"] or np.isnan(m[key]), (key, m[key])
    assert len(result.arrays["learning_mae_mev"]) == m["rounds"] - 1
    order = result.arrays["surrogate_L4_order"]
    assert order[0] > order[-1] + 0.2  # ordered at 450 K, disordered at 1050 K
    xarray = pytest.importorskip("xarray")
    with xarray.open_dataset(result.files["data"], engine="h5netcdf") as ds:
        assert ds["surrogate_L4_energy"].dims == ("temperature",)
        assert ds["temperature"].attrs["units"] == "K"
    ase_io = pytest.importorskip("ase.io")
    frames = ase_io.read(result.files["configurations"], index=":", parallel=False)
    assert len(frames) == m["reference_calls"] and set(frames[0].get_chemical_symbols()) == {"Cu", "Zn"}
    assert all(os.path.exists(p) for p in result.figures.values()) and len(result.figures) == 3
    assert json.loads(open(result.files["metrics"]).read())["metrics"]["reference_calls"] == m["reference_calls"]
    # every round's surrogate is kept: on the random picks each next round measured it on (the first rows that
    # round added, read back from the trajectory), it gives the learning curve's errors again
    calls, weights = result.arrays["round_training_calls"], result.arrays["round_surrogate_weights"]
    assert calls.tolist() == [TINY["initial"] + TINY["per_round"] * k for k in range(m["rounds"])]
    np.testing.assert_array_equal(weights[-1], result.arrays["surrogate_weights"])
    picks = max(1, round(TINY["per_round"] * app.Config.random_fraction))
    for k, error in enumerate(result.arrays["learning_mae_mev"]):
        rows = frames[int(calls[k]):int(calls[k]) + picks]
        occupation = np.stack([alloy.from_atoms(f, elements=("Cu", "Zn"))[1] for f in rows])
        energies = np.array([f.info["energy_ev"] for f in rows])
        surrogate = app.Config(**TINY).surrogate().load_vector(weights[k])
        mae = np.abs(surrogate.energies(occupation) - energies).mean() / surrogate.lattice.n_sites * 1000
        assert mae == pytest.approx(error, rel=1e-6, abs=1e-9)


def test_every_rounds_surrogate_is_kept_even_when_their_weights_outgrow_a_json_value():
    # 4 networks of width 128 over 3 rounds: ~200,000 weights, more than the tuple space carries as JSON text
    config = app.Config(**{**TINY, "hidden": 128, "ensemble": 4, "epochs": 2, "scan_sweeps": 8, "tc_sizes": "2,3"},
                        tolerance=1e-9)
    result = run_app("alloy_surrogate", config, verbose=0)
    weights = result.arrays["round_surrogate_weights"]
    assert weights.shape == (3, len(result.arrays["surrogate_weights"])) and weights.size > 100_000
    np.testing.assert_array_equal(weights[-1], result.arrays["surrogate_weights"])
    assert not np.array_equal(weights[0], weights[1])  # each row is its own round's training


def test_tc_is_refined_by_reweighting_a_second_scan_to_within_a_few_percent_of_exact_ising():
    # the first scan's grid steps 86 K; the reweighted second scan finds T_c within a few percent of exact
    config = app.Config(**{**TINY, "scan_sweeps": 120, "tc_sizes": "4,6", "temperatures": 8}, seed=1)
    m = run_app("alloy_surrogate", config, verbose=0).metrics
    exact = m["tc_exact"]
    for name in ("tc", "tc_reference"):
        assert m[f"{name}_method"] == "Binder crossing", m
        assert abs(m[name] / exact - 1) < 0.04 and m[f"{name}_error"] < 0.03 * exact, m
        assert abs(m[f"{name}_first"] - exact) < 86, m
    assert app.Config(refine=0).validate().refine == 0


def test_a_first_order_transition_is_located_by_the_heat_capacity_peak_of_the_largest_cell():
    # fcc 3:1 (L1_2) orders first-order and has no exact Ising value: the surrogate and the pair model itself,
    # through the same second scan, must agree; the first scan's C_v peaks at its lowest point, 200 K
    settings = {**TINY, "scan_sweeps": 120, "tc_sizes": "2,3", "temperatures": 8, "lattice": "fcc",
                "composition": 0.75, "t_min": 200.0, "t_max": 1000.0}
    m = run_app("alloy_surrogate", app.Config(**settings, seed=1), verbose=0).metrics
    assert m["tc_method"] == m["tc_reference_method"] == "heat-capacity peak, L=3" and "tc_exact" not in m, m
    assert 200 < m["tc"] < 314 and 200 < m["tc_reference"] < 314, m
    assert abs(m["tc"] - m["tc_reference"]) < 3 * np.hypot(m["tc_error"], m["tc_reference_error"]) + 5, m


def test_the_first_tc_estimate_takes_the_crossing_at_the_heat_capacity_peak_not_noise_far_above():
    kT = np.linspace(0.04, 0.09, 11)
    small, big = 0.33 * (1 - np.tanh((kT - 0.06) / 0.006)), 0.33 * (1 - np.tanh((kT - 0.06) / 0.004))
    big[-3:] += [0.02, -0.02, 0.02]                    # far above T_c the cumulants cross again by noise
    rows = np.zeros((2, 9, len(kT)))
    rows[0, 6], rows[1, 6] = small, big
    rows[1, 2] = np.exp(-((kT - 0.061) / 0.005) ** 2)  # the heat-capacity peak of the largest size
    tc, resolution = app._grid_estimate(kT, rows)
    assert tc * alloy.KB_EV == pytest.approx(0.06, abs=0.003) and resolution * alloy.KB_EV == pytest.approx(0.0025)
    rows[1, 6] = small - 0.01                          # no crossing on the grid: the peak itself
    assert app._grid_estimate(kT, rows)[0] * alloy.KB_EV == pytest.approx(0.06)


def test_random_selection_is_the_baseline_it_claims():
    config = app.Config(**{**TINY, "rounds": 2, "tc_sizes": "3,4"}, selection="random", shells=2, tolerance=1e-9)
    result = run_app("alloy_surrogate", config, verbose=0)
    assert result.metrics["reference_calls"] == TINY["initial"] + TINY["per_round"]
    assert result.metrics["final_mae_mev"] < 0.01  # two shells see the first-shell pair model too


def test_random_structures_are_labelled_without_monte_carlo():
    # below T_c the Monte Carlo visits ordered, low-energy configurations; random structures stay disordered
    settings = {**TINY, "rounds": 2, "t_min": 200.0, "t_max": 300.0, "tc_sizes": "2,4"}
    added = {}
    for selection in ("random", "structures"):
        result = run_app("alloy_surrogate", app.Config(**settings, selection=selection, tolerance=1e-9), verbose=0)
        assert result.metrics["reference_calls"] == TINY["initial"] + TINY["per_round"]
        added[selection] = result.arrays["parity_reference_ev_per_atom"][TINY["initial"]:]
    lattice = app.Config(**settings).cell()
    disordered = app.Config(**settings).reference_model().energies(
        alloy.random_occupation(lattice, (0.5, 0.5), (400,), seed=7)) / lattice.n_sites
    assert abs(added["structures"].mean() - disordered.mean()) < 3 * disordered.std() / np.sqrt(TINY["per_round"])
    assert added["random"].max() < disordered.mean() - 3 * disordered.std()
    initial = result.arrays["parity_reference_ev_per_atom"][:TINY["initial"]]
    assert not np.array_equal(added["structures"], initial[:TINY["per_round"]])  # new ones, not the initial again


@pytest.mark.skipif(not os.access(MPIEXEC, os.X_OK) or os.environ.get("PMI_SIZE", "1") != "1",
                    reason=f"needs an mpiexec next to {sys.executable}")
def test_the_same_application_under_mpiexec_on_three_ranks(tmp_path):
    options = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()] + [f"--output-dir={tmp_path}",
                                                                         "--tolerance=1e-9"]  # every round runs
    code, out, err, _ = mpirun(3, ["-m", "hpcai", "run", "alloy_surrogate", *options], timeout=300)
    assert code == 0, err[-3000:]
    assert out.count("T_c = ") == 1 and "after 36 reference energies" in out, out[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["reference_calls"] == 36 and metrics["final_mae_mev"] < 0.01


@pytest.mark.parametrize("bad, match", [
    ({"composition": 0.3, "size": 2}, "composition: .* does not fit a cell of 16 sites"),
    ({"t_min": -5.0}, "t_min: expected a number in \\(0, 100000\\]"),
    ({"t_max": 400.0}, "t_max: expected a temperature above t_min"),
    ({"lattice": "hcp"}, "lattice: expected one of"),
    ({"elements": "Cu"}, "elements: expected two different chemical symbols"),
    ({"tc_sizes": "4"}, "tc_sizes: expected two or more different sizes"),
    ({"reference": "emt", "elements": "Cu,Zn"}, r"elements: EMT has no parameters for \['Zn'\]"),
    ({"rounds": 0}, "rounds: expected an integer in \\[1, 1000\\]"),
    ({"triplets": 2, "shells": 1}, "triplets: expected at most shells = 1"),
    ({"refine": 2}, "refine: expected 0 \\(no second scan\\) or at least 3 temperatures"),
])
def test_bad_input_names_the_field(bad, match):
    if bad.get("reference") == "emt":
        pytest.importorskip("ase")
    with pytest.raises(ValueError, match=match):
        app.Config(**bad).validate()


def test_a_failing_reference_is_reported_with_its_module(monkeypatch):
    from hpcai.workflow import ModuleFailed

    class Broken(alloy.PairModel):
        def energies(self, occupation):
            raise RuntimeError("the reference calculation did not converge")
    monkeypatch.setattr(app.Config, "reference_model",
                        lambda self, size=None: Broken.from_bonds(self.cell(size), 0.0, 0.0, -0.02))
    with pytest.raises(ModuleFailed, match="module 'label' .*did not converge"):
        run_app("alloy_surrogate", app.Config(**TINY), verbose=0)


def test_config_is_a_plain_dataclass_the_panel_and_cli_read():
    fields = {f.name for f in dataclasses.fields(app.Config)}
    assert {"lattice", "reference", "selection", "precision", "optimizer", "tc_sizes"} <= fields


def test_a_workflow_application_is_not_a_module_of_another_workflow():
    from hpcai.workflow import SpecError, load
    with pytest.raises(SpecError, match="modules.al.app: 'alloy_surrogate' is itself a workflow"):
        load({"modules": {"al": {"app": "alloy_surrogate"}}})


def test_every_round_measures_its_error_on_random_picks():
    """A round always labels at least one random pick, so the error on fresh samples is always measured."""
    config = app.Config(**{**TINY, "rounds": 2, "per_round": 2}, random_fraction=0.1, tolerance=1e-9)
    result = run_app("alloy_surrogate", config, verbose=0)
    assert len(result.arrays["learning_mae_mev"]) == 1 and np.isfinite(result.arrays["learning_mae_mev"]).all()
    with pytest.raises(ValueError, match="random_fraction: expected a number in \\(0, 1\\]"):
        app.Config(random_fraction=0.0).validate()
