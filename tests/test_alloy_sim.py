"""Alloy lattice Monte Carlo: exact shells, local swap energies, the Ising mapping, detailed balance by
enumeration, the Ising limit, statistics, ASE references, and clear errors for bad input."""
import contextlib
import itertools
import types

import numpy as np
import pytest
import scipy.optimize
import scipy.signal
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcai import accel
from hpcai.sim import alloy as A

EXPECTED_SHELLS = {"sc": (6, 12, 8), "bcc": (8, 6, 12), "fcc": (12, 6, 24)}


def min_image_distances(lattice):
    """All pairwise minimum-image distances (units of a), by brute force."""
    d = lattice.positions[:, None] - lattice.positions[None]
    d -= lattice.size * np.round(d / lattice.size)
    return np.linalg.norm(d, axis=-1)


def symmetric(rng, shells, n_species):
    e = rng.normal(size=(shells, n_species, n_species))
    return e + e.transpose(0, 2, 1)


# ------------------------------------------------------------------------------------------- lattices
@pytest.mark.parametrize("kind", sorted(EXPECTED_SHELLS))
def test_neighbour_shells_are_the_exact_distance_shells(kind):
    lattice = A.Lattice(kind, 4, shells=3)
    assert lattice.coordination == EXPECTED_SHELLS[kind]
    dist = min_image_distances(lattice)
    radii = np.unique(np.round(dist, 9))[1:4]
    np.testing.assert_allclose(lattice.shell_distances, radii)
    for s, nbr in enumerate(lattice.neighbors):
        for i in (0, 1, lattice.n_sites - 1):
            expected = np.flatnonzero(np.isclose(dist[i], radii[s]))
            np.testing.assert_array_equal(np.sort(nbr[i]), expected)


def test_small_cells_list_periodic_images_and_refuse_self_neighbours():
    sc2 = A.Lattice("sc", 2)
    assert sc2.coordination == (6,) and all(np.bincount(row).max() == 2 for row in sc2.neighbors[0])
    with pytest.raises(ValueError, match="size: L=1 is too small for 2 shells of bcc"):
        A.Lattice("bcc", 1, shells=2)


@pytest.mark.parametrize("kind, structure, composition", [
    ("bcc", "B2", (0.5, 0.5)), ("sc", "B2", (0.5, 0.5)), ("fcc", "L1_0", (0.5, 0.5)), ("fcc", "L1_2", (0.75, 0.25))])
def test_order_parameter_and_sro_of_ordered_and_random_cells(kind, structure, composition):
    lattice = A.Lattice(kind, 4)
    ordered = A.ordered_occupation(lattice, structure)
    assert np.bincount(ordered).tolist() == [round(c * lattice.n_sites) for c in composition]
    assert A.order_parameter(ordered, lattice, structure) == pytest.approx(1.0)
    assert A.order_parameter(1 - ordered, lattice, structure) == pytest.approx(1.0)
    randoms = A.random_occupation(lattice, composition, 400, seed=0)
    assert A.order_parameter(randoms, lattice, structure).mean() < 0.15
    alpha = A.warren_cowley(randoms, lattice)[:, 0, 0, 1]
    assert abs(alpha.mean()) < 4 * alpha.std() / np.sqrt(len(alpha)) + 0.01
    sro = A.warren_cowley(ordered, lattice)[0]                      # unlike neighbours: alpha_01 < 0
    z, n_b = lattice.coordination[0], np.bincount(ordered)[1]
    unlike = (ordered[lattice.neighbors[0]] != ordered[:, None])[ordered == 0].sum() / (np.sum(ordered == 0) * z)
    assert sro[0, 1] == pytest.approx(1 - unlike / (n_b / lattice.n_sites)) and sro[0, 1] < 0


def test_random_occupation_has_the_exact_composition():
    lattice = A.Lattice("fcc", 2)
    occ = A.random_occupation(lattice, (0.25, 0.5, 0.25), (3, 5), seed=1)
    assert occ.shape == (3, 5, 32) and occ.dtype == np.int8
    assert (np.stack([(occ == s).sum(-1) for s in range(3)], -1) == [8, 16, 8]).all()
    assert len({row.tobytes() for row in occ.reshape(-1, 32)}) == 15


# -------------------------------------------------------------------------------------------- energies
@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["sc", "bcc", "fcc"]), size=st.integers(2, 3), shells=st.integers(1, 3),
       n_species=st.integers(2, 3), seed=st.integers(0, 2 ** 32 - 1))
def test_local_swap_energy_equals_difference_of_full_energies(kind, size, shells, n_species, seed):
    lattice = A.Lattice(kind, size, shells=shells)
    rng = np.random.default_rng(seed)
    occ = rng.integers(0, n_species, (6, lattice.n_sites)).astype(np.int8)
    pair = A.PairModel(lattice, symmetric(rng, shells, n_species))
    w = rng.normal(size=pair.n_features)
    nonlinear = A.SiteEnergyModel(lattice, n_species, lambda f: np.sin(f @ w) + 0.1 * (f @ w) ** 2)
    generic_pair = A.SiteEnergyModel(lattice, n_species, pair.site_energies)
    with_triplets = A.SiteEnergyModel(lattice, n_species, lambda f: np.tanh(f @ v), triplets=shells)
    v = rng.normal(size=with_triplets.n_features) / 10
    plain_triplets = A.SiteEnergyModel(lattice, n_species, lambda f: np.tanh(f @ v), triplets=shells, tabulate=False)
    for model in (pair, nonlinear, generic_pair, with_triplets, plain_triplets):
        assert A.swap_delta_mismatch(model, occ, seed=seed) < 1e-9 * (1 + np.abs(model.energies(occ)).max())
    assert with_triplets.memoised == A.EnvironmentKeys(with_triplets).fits and not plain_triplets.memoised
    np.testing.assert_allclose(with_triplets.energies(occ), plain_triplets.energies(occ), atol=1e-12)
    np.testing.assert_allclose(generic_pair.energies(occ), pair.energies(occ), atol=1e-10)
    i, j = rng.integers(0, lattice.n_sites, (2, len(occ)))
    np.testing.assert_allclose(generic_pair.swap_deltas(occ, i, j), pair.swap_deltas(occ, i, j), atol=1e-10)


@pytest.mark.parametrize("kind", ["sc", "bcc", "fcc"])
def test_triplet_features_count_neighbour_pairs_found_by_distance(kind):
    """Independent of the column bookkeeping: for every site, the pairs of its nearest neighbours whose
    minimum-image distance is a shell distance, counted by species, from the positions alone."""
    lattice = A.Lattice(kind, 4, shells=2)
    model = A.SiteEnergyModel(lattice, 2, lambda f: f[:, 0], triplets=1)
    occ = A.random_occupation(lattice, (0.5, 0.5), seed=7)
    features = model.site_features(occ)
    names = model.feature_names
    pos, L = lattice.positions, lattice.size

    def distance(p, q):
        d = (p - q + L / 2) % L - L / 2
        return np.sqrt((d ** 2).sum(-1))
    for site in range(0, lattice.n_sites, 17):
        near = np.nonzero(np.isclose(distance(pos, pos[site]), lattice.shell_distances[0]))[0]
        for s, radius in enumerate(lattice.shell_distances):
            counts = {}
            for a, b in itertools.combinations(near, 2):
                if np.isclose(distance(pos[a], pos[b]), radius):
                    key = tuple(sorted((int(occ[a]), int(occ[b]))))
                    counts[key] = counts.get(key, 0) + 1
            for t, u in [(0, 0), (0, 1), (1, 1)]:
                name = f"pairs11@{s + 1}:{t}{u}"
                got = features[site, names.index(name)] if name in names else 0
                assert got == counts.get((t, u), 0), (site, name)


def test_pair_model_is_the_ising_model_of_science_md():
    lattice = A.Lattice("bcc", 3)                                    # no periodic images at L = 3
    e_aa, e_bb, e_ab = -0.31, -0.12, -0.40
    model = A.PairModel.from_bonds(lattice, e_aa, e_bb, e_ab)
    J, h = (2 * e_ab - e_aa - e_bb) / 4, -8 * (e_aa - e_bb) / 4
    i, j = np.nonzero(np.triu(np.isclose(min_image_distances(lattice), np.sqrt(3) / 2)))
    assert len(i) == lattice.n_sites * 8 // 2
    occ = np.concatenate([A.random_occupation(lattice, (c, 1 - c), 5, seed=2) for c in (1 / 3, 0.5, 2 / 3)])
    s = 1 - 2 * occ.astype(float)                                    # A (species 0) = +1
    ising = -J * (s[:, i] * s[:, j]).sum(1) - h * s.sum(1)
    offset = model.energies(occ) - ising
    np.testing.assert_allclose(offset, offset[0], atol=1e-10)
    coupling = model.ising()
    assert coupling.J[0] == pytest.approx(J) and coupling.h == pytest.approx(h)
    assert coupling.constant == pytest.approx(offset[0])
    assert model.ordering_energy[0] == pytest.approx(e_aa + e_bb - 2 * e_ab)


# ------------------------------------------------------------------------------------ detailed balance
def enumerate_states(n_sites, counts):
    """Every arrangement of the species multiset ``counts`` on ``n_sites`` sites, as rows."""
    states = set(itertools.permutations(np.repeat(np.arange(len(counts)), counts)))
    return np.array(sorted(states), dtype=np.int8)


def state_codes(occ, n_species):
    return (occ.astype(np.int64) * n_species ** np.arange(occ.shape[-1])).sum(-1)


def chi_square_p(observed_codes, state_codes_, probabilities):
    """p-value of the sampled states against ``probabilities``; states expected fewer than 5 times are pooled."""
    order = np.argsort(state_codes_)
    index = np.searchsorted(state_codes_[order], observed_codes)
    assert (state_codes_[order][np.minimum(index, len(order) - 1)] == observed_codes).all()  # valid states only
    counts = np.bincount(order[index], minlength=len(probabilities))
    expected = probabilities * len(observed_codes)
    rare = expected < 5
    counts = np.append(counts[~rare], counts[rare].sum())
    expected = np.append(expected[~rare], expected[rare].sum())
    stat = ((counts - expected) ** 2 / np.maximum(expected, 1e-300)).sum()
    return scipy.stats.chi2.sf(stat, len(counts) - 1 - (not rare.any()))


def boltzmann(energies, kT):
    w = np.exp(-(energies - energies.min()) / kT)
    return w / w.sum()


def test_detailed_balance_binary_with_replica_exchange():
    """sc L=2 (8 sites, 3 A + 5 B: 56 states), two shells, two temperatures exchanging: the final states of
    many independent chains follow the exact Boltzmann weights at each temperature."""
    lattice = A.Lattice("sc", 2, shells=2)
    model = A.PairModel(lattice, symmetric(np.random.default_rng(3), 2, 2) * 0.5)
    states = enumerate_states(8, (3, 5))
    energies = model.energies(states)
    chains, kT = 12000, np.array([0.5, 2.0])
    start = A.random_occupation(lattice, (3 / 8, 5 / 8), (chains, 2), seed=4)
    mc = A.MonteCarlo(model, start, np.broadcast_to(kT, (chains, 2)), seed=5)
    for _ in range(20):
        mc.step(10)
        mc.exchange()
    assert 0.05 < mc.exchange_accepted.sum() / mc.exchange_trials.sum() < 0.99
    assert mc.refresh_energies() < 1e-9
    codes = state_codes(states, 2)
    for k in range(2):
        p = boltzmann(energies, kT[k])
        assert chi_square_p(state_codes(mc.occupation[:, k], 2), codes, p) > 1e-3
        uniform = np.full(len(states), 1 / len(states))              # the test can fail: T = infinity is rejected
        assert chi_square_p(state_codes(mc.occupation[:, k], 2), codes, uniform) < 1e-6


def test_detailed_balance_ternary_with_a_nonlinear_site_model():
    lattice = A.Lattice("sc", 2)
    w = np.random.default_rng(6).normal(size=6) * 0.3
    model = A.SiteEnergyModel(lattice, 3, lambda f: np.cos(f @ w))
    states = enumerate_states(8, (2, 3, 3))
    p = boltzmann(model.energies(states), 0.5)
    mc = A.MonteCarlo(model, A.random_occupation(lattice, (2 / 8, 3 / 8, 3 / 8), 5000, seed=7),
                      np.full(5000, 0.5), seed=8)
    mc.step(100)
    codes = state_codes(states, 3)
    assert chi_square_p(state_codes(mc.occupation, 3), codes, p) > 1e-3
    assert chi_square_p(state_codes(mc.occupation, 3), codes, np.full(len(p), 1 / len(p))) < 1e-6


def test_energy_levels_of_bcc_cell_follow_boltzmann():
    """bcc L=2 (16 sites, 8/8: 12870 states) nearest-neighbour ordering model: sampled energy levels
    against the exact density of states times the Boltzmann factor."""
    lattice = A.Lattice("bcc", 2)
    model = A.PairModel.from_bonds(lattice, 0.0, 0.0, -0.25)
    states = np.zeros((12870, 16), dtype=np.int8)
    for k, ones in enumerate(itertools.combinations(range(16), 8)):
        states[k, list(ones)] = 1
    levels, degeneracy = np.unique(np.round(model.energies(states), 9), return_counts=True)
    kT = 1.2
    p = degeneracy * np.exp(-(levels - levels.min()) / kT)
    p /= p.sum()
    mc = A.MonteCarlo(model, A.random_occupation(lattice, (0.5, 0.5), 6000, seed=9), np.full(6000, kT), seed=10)
    mc.step(200)
    assert chi_square_p(np.round(mc.energies, 9), levels, p) > 1e-3
    assert chi_square_p(np.round(mc.energies, 9), levels, degeneracy / degeneracy.sum()) < 1e-6


def paths():
    """Both ways a swap state runs the trials: compiled where numba is installed, and numpy."""
    return [pytest.param(True, id="compiled", marks=pytest.mark.skipif(not accel.numba_installed(),
                                                                       reason="numba not installed")),
            pytest.param(False, id="numpy")]


def stepping(compiled: bool):
    """A context in which the Monte Carlo takes the compiled path (``True``) or the numpy one."""
    return contextlib.nullcontext() if compiled else accel.disabled()


def _side_by_side(fast, numpy, slow, chains):
    """Six rounds of 500 trials (then replica exchange) on the compiled path, the numpy path and the general
    route; the first two must end in the general route's configurations."""
    for _ in range(6):
        for mc in (fast, numpy, slow):
            with stepping(mc is not numpy):
                mc.step(500)
            if chains > 1:
                mc.exchange()
    np.testing.assert_array_equal(fast.occupation, slow.occupation)
    np.testing.assert_array_equal(numpy.occupation, slow.occupation)


@pytest.mark.parametrize("triplets", [0, 1])
def test_one_chain_detailed_balance_through_the_swap_state(triplets):
    """A single chain priced by the swap state (table or, with triplets, memo; compiled where numba is, whose
    trajectories equal the numpy path's in the tests below): its thinned trajectory on sc L=2 (8 sites,
    ternary, 560 states) follows the exact Boltzmann weights."""
    lattice = A.Lattice("sc", 2)
    model = A.SiteEnergyModel(lattice, 3, lambda f: np.cos(f @ w), triplets=triplets)
    w = np.random.default_rng(16).normal(size=model.n_features) * 0.3
    assert model.swap_state(np.arange(8, dtype=np.int8)[None] % 3) is not None or triplets
    states = enumerate_states(8, (2, 3, 3))
    p = boltzmann(model.energies(states), 0.5)
    mc = A.MonteCarlo(model, A.random_occupation(lattice, (2 / 8, 3 / 8, 3 / 8), seed=17), 0.5, seed=18)
    samples = []
    mc.step(200)
    for _ in range(3000):
        mc.step(25)
        samples.append(mc.occupation.copy())
    codes = state_codes(states, 3)
    assert chi_square_p(state_codes(np.array(samples), 3), codes, p) > 1e-3
    assert chi_square_p(state_codes(np.array(samples), 3), codes, np.full(len(p), 1 / len(p))) < 1e-6
    assert abs(mc.refresh_energies()) < 1e-9


class GeneralRoute:
    """Only ``energies`` and ``swap_deltas`` of a model: the Monte Carlo cannot keep a swap state for it."""

    def __init__(self, model):
        self.model, self.lattice, self.n_species = model, model.lattice, model.n_species

    def energies(self, occupation):
        return self.model.energies(occupation)

    def swap_deltas(self, occupation, i, j):
        return self.model.swap_deltas(occupation, i, j)


@pytest.mark.parametrize("kind, size, shells, n_species, chains", [
    ("fcc", 4, 1, 2, 1), ("fcc", 4, 1, 2, 4), ("fcc", 2, 2, 2, 1), ("bcc", 4, 2, 2, 3), ("sc", 4, 2, 3, 1),
    ("sc", 4, 2, 3, 4)])
def test_swap_state_stays_exact_after_many_accepted_swaps(kind, size, shells, n_species, chains):
    """The per-chain environment keys (table indices), updated on every accepted swap (compiled and numpy,
    with replica exchange reordering them), equal keys computed afresh; the Monte Carlo takes the very same
    trajectory on both paths and on the general route (features gathered per trial); its local energy
    changes equal differences of full energies after thousands of accepted swaps."""
    lattice = A.Lattice(kind, size, shells=shells)
    rng = np.random.default_rng(size * 10 + n_species)
    w = rng.normal(size=n_species * (1 + shells)) * 0.4
    function = lambda f: np.tanh(f @ w) + 0.05 * (f @ w) ** 2  # noqa: E731
    model = A.SiteEnergyModel(lattice, n_species, function)
    plain = A.SiteEnergyModel(lattice, n_species, function, tabulate=False)
    assert model.tabulated and not plain.tabulated and plain.swap_state(np.zeros((1, lattice.n_sites))) is None
    composition = np.full(n_species, 1 / n_species) if lattice.n_sites % n_species == 0 else (0.25, 0.25, 0.5)
    start = A.random_occupation(lattice, composition, (chains,), seed=1)
    kT = np.linspace(0.6, 1.2, chains)
    fast, numpy, slow = (A.MonteCarlo(m, start, kT, seed=2) for m in (model, model, GeneralRoute(plain)))
    assert isinstance(fast._state, A.SwapState) and fast._state.table and slow._state is None
    _side_by_side(fast, numpy, slow, chains)
    assert (fast.acceptance > 0.1).all()  # thousands of accepted swaps
    np.testing.assert_array_equal(fast.acceptance, numpy.acceptance)
    np.testing.assert_allclose(fast.energies, numpy.energies, atol=1e-10)
    state = fast._state
    for mc in (fast, numpy):
        np.testing.assert_array_equal(mc._state.keys, model.site_table_geometry.index(mc._occ))
        np.testing.assert_array_equal(mc._state.energy, model.site_table()[mc._state.keys])
    np.testing.assert_allclose(fast.energies, model.energies(fast.occupation), atol=1e-9)
    occ = fast._occ
    for _ in range(5):
        i, j = rng.integers(0, lattice.n_sites, (2, chains))
        after = occ.copy()
        rows = np.arange(chains)
        after[rows, i], after[rows, j] = occ[rows, j], occ[rows, i]
        np.testing.assert_allclose(state.deltas(occ, i, j), model.energies(after) - model.energies(occ), atol=1e-10)
        np.testing.assert_allclose(model.swap_deltas(occ, i, j), plain.swap_deltas(occ, i, j), atol=1e-10)


@pytest.mark.parametrize("kind, size, shells, triplets, n_species", [
    ("fcc", 4, 4, 1, 2), ("fcc", 2, 2, 1, 2), ("sc", 2, 1, 1, 3), ("bcc", 3, 3, 2, 2), ("sc", 4, 2, 1, 3)])
def test_environment_keys_encode_every_feature_row_exactly(kind, size, shells, triplets, n_species):
    """A site's key decodes to its feature row (periodic images included), and the key change of a swap that
    the swap state adds up (counts linear, neighbour pairs from the partners' species) gives the swapped keys."""
    lattice = A.Lattice(kind, size, shells=shells)
    model = A.SiteEnergyModel(lattice, n_species, lambda f: f.sum(1), triplets=triplets)
    assert model.memoised and not model.tabulated
    occ = np.random.default_rng(size).integers(0, n_species, (7, lattice.n_sites)).astype(np.int8)
    keys = model.site_keys(occ)
    geometry = model.environment_keys
    features = model.site_features(occ).reshape(-1, model.n_features)
    np.testing.assert_array_equal(geometry.decode(keys.reshape(-1)), features)
    assert len(np.unique(keys)) > 5
    rng, rows = np.random.default_rng(1), np.arange(len(occ))
    for _ in range(30):
        i, j = rng.integers(0, lattice.n_sites, (2, len(occ)))
        sites, change = geometry.changes(occ, i, j)
        total = np.zeros_like(keys)
        np.add.at(total, (rows[:, None], sites), change)
        after = occ.copy()
        after[rows, i], after[rows, j] = occ[rows, j], occ[rows, i]
        np.testing.assert_array_equal(keys + total, model.site_keys(after))


def test_energy_memo_evaluates_each_environment_once_through_growth_collisions_and_restarts():
    calls = []

    def reference(rows):
        return np.sin(rows[:, 0]) + rows[:, 0] ** 0.5

    def function(rows):
        calls.append(len(rows))
        return reference(rows)

    decode = lambda keys: keys[:, None].astype(np.float64)  # noqa: E731
    memo = A.EnergyMemo(function, decode, limit=5000)
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 3000, (40, 70)) * 7919          # repeats, and many keys sharing home slots
    np.testing.assert_array_equal(memo(keys), reference(decode(keys.reshape(-1))).reshape(keys.shape))
    assert calls == [len(np.unique(keys))] and len(memo) == memo.evaluated == calls[0]
    np.testing.assert_array_equal(memo(keys[::-1]), memo(keys)[::-1])
    assert len(calls) == 1                                 # everything found, nothing evaluated again
    more = rng.permutation(np.arange(3000, 9000))[:4000] * 7919    # past the limit: the memo starts afresh
    np.testing.assert_array_equal(memo(more), reference(decode(more)))
    assert len(calls) == 2 and len(memo) == calls[1] == len(np.unique(more)) and memo.evaluated == sum(calls)
    np.testing.assert_array_equal(memo(keys), reference(decode(keys.reshape(-1))).reshape(keys.shape))
    assert len(calls) == 3 and len(memo) <= 5000


@pytest.mark.parametrize("kind, size, shells, triplets, n_species, chains", [
    ("fcc", 3, 2, 1, 2, 4), ("fcc", 2, 2, 1, 2, 3), ("sc", 4, 2, 1, 3, 4), ("bcc", 4, 3, 2, 2, 1),
    ("fcc", 4, 4, 1, 2, 1)])
def test_triplet_swap_state_stays_exact_after_many_accepted_swaps(kind, size, shells, triplets, n_species, chains):
    """With neighbour-pair features the Monte Carlo keeps every chain's environment keys and site energies
    (through the memo, which starts empty: the compiled path stops at every new environment): after thousands
    of accepted swaps and replica exchanges they equal keys and energies computed afresh, the trajectory is the
    very same on the compiled and the numpy path and on the general route (features gathered and the function
    evaluated per trial), and the state's energy changes equal differences of full energies. The last case is
    the benchmark's surrogate geometry (fcc, 4 shells, nearest-neighbour pairs)."""
    lattice = A.Lattice(kind, size, shells=shells)
    rng = np.random.default_rng(size * 10 + n_species)
    model = A.SiteEnergyModel(lattice, n_species, lambda f: np.tanh(f @ w) + 0.05 * (f @ w) ** 2, triplets=triplets)
    w = rng.normal(size=model.n_features) * 0.3 / np.concatenate([np.ones(n_species), model.feature_scale])
    plain = A.SiteEnergyModel(lattice, n_species, model.function, triplets=triplets, tabulate=False)
    composition = np.full(n_species, 1 / n_species) if lattice.n_sites % n_species == 0 else (0.25, 0.25, 0.5)
    start = A.random_occupation(lattice, composition, (chains,), seed=1)
    kT = np.linspace(0.6, 1.2, chains)
    twin = A.SiteEnergyModel(lattice, n_species, model.function, triplets=triplets)     # a memo of its own
    fast, numpy, slow = (A.MonteCarlo(m, start, kT, seed=2) for m in (model, twin, GeneralRoute(plain)))
    assert isinstance(fast._state, A.SwapState) and not fast._state.table and slow._state is None
    _side_by_side(fast, numpy, slow, chains)
    assert (fast.acceptance > 0.3).all()  # about a thousand accepted swaps per chain at least
    np.testing.assert_allclose(fast.energies, numpy.energies, atol=1e-10)
    np.testing.assert_array_equal(numpy._state.keys, model.site_keys(numpy._occ))
    state, occ = fast._state, fast._occ
    np.testing.assert_array_equal(state.keys, model.site_keys(occ))
    features = plain.site_features(occ)
    np.testing.assert_allclose(state.energy, plain.site_energies(features.reshape(-1, model.n_features))
                               .reshape(occ.shape), atol=1e-12)
    np.testing.assert_allclose(fast.energies, plain.energies(fast.occupation), atol=1e-9)
    np.testing.assert_allclose(fast.energies, slow.energies, atol=1e-9)
    rows = np.arange(chains)
    for _ in range(5):
        i, j = rng.integers(0, lattice.n_sites, (2, chains))
        after = occ.copy()
        after[rows, i], after[rows, j] = occ[rows, j], occ[rows, i]
        np.testing.assert_allclose(state.deltas(occ, i, j), plain.energies(after) - plain.energies(occ), atol=1e-10)
        np.testing.assert_allclose(model.swap_deltas(occ, i, j), plain.swap_deltas(occ, i, j), atol=1e-10)


def test_exchange_permutation_accepts_with_the_metropolis_ratio():
    rng = np.random.default_rng(11)
    E = np.broadcast_to([-10.0, -9.0, -9.5], (20000, 3))
    kT = np.broadcast_to([1.0, 2.0, 4.0], (20000, 3))
    perm, accepted = A.exchange_permutation(E, kT, rng, parity=0)
    expected = min(1.0, np.exp((1 / 1.0 - 1 / 2.0) * (-10.0 + 9.0)))
    assert accepted.shape == (20000, 1)
    assert accepted.mean() == pytest.approx(expected, abs=4 * np.sqrt(expected * (1 - expected) / 20000))
    assert (perm[accepted[:, 0], :2] == [1, 0]).all() and (perm[:, 2] == 2).all()
    perm, accepted = A.exchange_permutation(E, kT, rng, parity=1)
    assert accepted.all() and (perm == [0, 2, 1]).all()               # E falls with T: always accepted


def test_monte_carlo_is_reproducible_from_the_seed():
    lattice = A.Lattice("bcc", 3)
    model = A.PairModel.from_bonds(lattice, 0.0, 0.0, -1.0)
    start = A.random_occupation(lattice, (0.5, 0.5), seed=0)
    runs = []
    for seed in (1, 1, 2):
        mc = A.MonteCarlo(model, start, [2.0, 3.0], seed=seed)
        mc.sweep(3)
        runs.append(mc.occupation.copy())
    assert (runs[0] == runs[1]).all() and not (runs[0] == runs[2]).all()
    assert (np.sort(runs[2], -1) == np.sort(start)).all()            # canonical: composition kept


# ------------------------------------------------------------------------------------------ Ising limit
def test_b2_order_appears_below_the_exact_ising_tc():
    lattice = A.Lattice("bcc", 4)
    model = A.PairModel.from_bonds(lattice, 0.0, 0.0, -0.5)          # V = 1 > 0: B2 ordering
    tc = A.ising_critical_temperature(model)
    assert tc == pytest.approx(6.35435 * 1.0 / 4, rel=1e-5)
    mc = A.MonteCarlo(model, A.random_occupation(lattice, (0.5, 0.5), (8, 2), seed=12),
                      np.broadcast_to([0.6 * tc, 1.5 * tc], (8, 2)), seed=13)
    mc.sweep(150)
    eta = A.order_parameter(mc.occupation, lattice, "B2")
    assert eta[:, 0].min() > 0.8 and eta[:, 1].max() < 0.3
    annealed = A.MonteCarlo(model, mc.occupation[:, 1], np.full(8, 1.5 * tc), seed=14)
    energies = annealed.anneal(np.linspace(1.5, 0.3, 13) * tc, sweeps=10)
    assert energies.shape == (13, 8) and energies[-1].mean() < energies[0].mean()
    ground = model.energies(A.ordered_occupation(lattice, "B2"))
    assert np.mean(annealed.energies <= ground + 4 * 1.0) > 0.5     # most chains within two broken bonds


def test_binder_crossing_of_two_small_bcc_cells_lands_near_the_exact_tc():
    scans = []
    for L in (4, 6):
        model = A.PairModel.from_bonds(A.Lattice("bcc", L), 0.0, 0.0, -0.5)
        tc = A.ising_critical_temperature(model)
        scans.append(A.temperature_scan(model, tc * np.linspace(0.94, 1.06, 7), composition=(0.5, 0.5),
                                        structure="B2", replicas=12, sweeps=150, equilibration=150, seed=L))
    assert scans[1].binder.value[0] > 0.55 and scans[1].binder.value[-1] < 0.45
    crossing = A.critical_temperature(scans)
    assert crossing.error < 0.01 * tc
    assert crossing.tc == pytest.approx(tc, rel=0.03)
    heat = scans[1].heat_capacity
    assert heat.value.max() > heat.value[-1] + 2 * heat.error[-1] > 0
    smooth = A.reweight_scan(scans[1], scans[1].temperatures)      # reweighted curves pass through the data
    for name in ("energy", "binder", "heat_capacity"):
        direct = getattr(scans[1], name)
        assert (abs(smooth[name].value - direct.value) < 3 * np.hypot(smooth[name].error, direct.error)).all()


# ----------------------------------------------------------------------------------------- statistics
def test_binder_crossing_recovers_tc_of_synthetic_scaling_curves():
    tc, rng = 2.5, np.random.default_rng(15)
    T = np.linspace(2.3, 2.7, 9)
    curves = [0.47 - 0.25 * np.tanh((T - tc) / tc * L ** 1.6) + 0.002 * rng.standard_normal(9) for L in (8, 16)]
    crossing = A.binder_crossing([8, 16], T, curves, [np.full(9, 0.002)] * 2)
    assert abs(crossing.tc - tc) < max(4 * crossing.error, 0.005) and crossing.error < 0.02
    with pytest.raises(ValueError, match="do not cross"):
        A.binder_crossing([8, 16], T, [curves[0], curves[0] + 0.1], [np.full(9, 0.002)] * 2)


def test_reweighting_recovers_exact_averages_between_temperatures():
    """N independent two-level sites (energies 0 and 1): E is binomial with p = 1/(1 + e^beta) at each
    temperature, so the reweighted mean and variance at temperatures never simulated are known exactly."""
    n_sites, kT = 400, np.array([0.8, 1.0, 1.25, 1.6])
    p = 1 / (1 + np.exp(1 / kT))
    energies = np.random.default_rng(18).binomial(n_sites, p, size=(3000, 4)).astype(float)
    rw = A.Reweighting(energies, kT)
    target = np.array([0.9, 1.1, 1.4])
    q = 1 / (1 + np.exp(1 / target))
    mean, var = rw.energy_moments(target)
    np.testing.assert_allclose(mean, n_sites * q, rtol=0.01)
    np.testing.assert_allclose(var, n_sites * q * (1 - q), rtol=0.1)
    np.testing.assert_allclose(rw.mean(energies, kT), energies.mean(0), rtol=0.01)
    np.testing.assert_allclose(rw.mean(energies ** 2, target) - mean ** 2, var, rtol=1e-6)


def test_transition_temperatures_of_a_two_state_system_with_a_sharp_first_order_jump():
    """A cell that is either ordered (E = 0) or disordered (E = D, e^40 times as many states): the disordered
    probability is 1 / (1 + e^(D/kT - 40)), so the C_v peak and the energy midpoint have exact values near
    kT = D / 40, found here by dense evaluation and root finding."""
    D, log_g, kT = 20.0, 40.0, np.linspace(0.44, 0.56, 9)

    def disordered(t):
        return 1 / (1 + np.exp(D / t - log_g))
    fine = np.linspace(kT[0], kT[-1], 200001)
    peak = fine[np.argmax(disordered(fine) * (1 - disordered(fine)) / fine ** 2)]
    half = (disordered(kT[0]) + disordered(kT[-1])) / 2
    middle = scipy.optimize.brentq(lambda t: disordered(t) - half, kT[0], kT[-1])
    energies = D * (np.random.default_rng(19).random((300, 2, len(kT))) < disordered(kT))
    found = A.transition_temperatures(types.SimpleNamespace(samples={"energy": energies}, temperatures=kT))
    for name, exact in (("heat_capacity_peak", peak), ("energy_midpoint", middle)):
        value, error = found[name]
        assert value == pytest.approx(exact, abs=0.002) and 0 < error < 0.002, (name, value, error, exact)
        assert abs(value - exact) < 4 * error, (name, value, error, exact)


def test_error_estimates_of_a_correlated_series():
    phi, n = 0.8, 2 ** 16
    x = scipy.signal.lfilter([1.0], [1.0, -phi], np.random.default_rng(16).standard_normal(n))
    tau = (1 + phi) / (2 * (1 - phi))
    assert A.autocorrelation_time(x) == pytest.approx(tau, rel=0.15)
    true_error = np.sqrt(x.var() * 2 * tau / n)
    assert A.blocking_error(x) == pytest.approx(true_error, rel=0.3)
    means = A.block_means(x, 32)
    mean = A.jackknife(lambda a: a, means)
    assert mean.value == pytest.approx(x.mean()) and mean.error == pytest.approx(means.std(ddof=1) / np.sqrt(32))
    assert A.binder_cumulant(np.random.default_rng(17).standard_normal(200000)) == pytest.approx(0, abs=0.02)
    assert A.binder_cumulant(np.tile([-0.7, 0.7], 50)) == pytest.approx(2 / 3)
    assert A.heat_capacity(np.array([1.0, 3.0]), 2.0, n_sites=4) == pytest.approx(1.0 / 4 / 4)


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, error, match", [
    (lambda: A.Lattice("hcp", 4), ValueError, "kind: expected one of 'sc', 'bcc', 'fcc'"),
    (lambda: A.Lattice("bcc", 0), ValueError, "size: expected an integer >= 1"),
    (lambda: A.random_occupation(A.Lattice("bcc", 2), (0.3, 0.7)), ValueError,
     r"composition: \(0.3, 0.7\) does not fit a cell of 16 sites"),
    (lambda: A.species_counts(16, (0.5, 0.6)), ValueError, "composition: expected fractions summing to 1"),
    (lambda: A.MonteCarlo(A.PairModel.from_bonds(A.Lattice("sc", 2), 0, 0, 1), np.arange(8) % 2, [1.0, -2.0]),
     ValueError, r"temperatures\[1\]: expected a finite number > 0, got -2.0"),
    (lambda: A.temperature_scan(A.PairModel.from_bonds(A.Lattice("sc", 2), 0, 0, 1), [-1.0, 1.0],
                                composition=(0.5, 0.5)),
     ValueError, r"temperatures\[0\]: expected a finite number > 0"),
    (lambda: A.MonteCarlo(A.PairModel.from_bonds(A.Lattice("sc", 2), 0, 0, 1), np.zeros(8, int), 1.0),
     ValueError, "occupation: chain 0 holds a single species"),
    (lambda: A.MonteCarlo(A.PairModel.from_bonds(A.Lattice("sc", 2), 0, 0, 1), np.arange(9) % 2, 1.0),
     ValueError, r"occupation: expected an array \(..., 8\)"),
    (lambda: A.MonteCarlo(object(), np.arange(8) % 2, 1.0), TypeError, "model: expected an EnergyModel"),
    (lambda: A.PairModel(A.Lattice("sc", 2), [[0, 1], [2, 0]]), ValueError, r"interactions: .*not symmetric"),
    (lambda: A.PairModel(A.Lattice("sc", 2), np.zeros((2, 2, 2))), ValueError, "interactions: 2 shells given"),
    (lambda: A.order_parameter(np.zeros(16, int), A.Lattice("bcc", 2), "L1_2"), ValueError,
     "structure: L1_2 order is defined on fcc"),
    (lambda: A.sublattices(A.Lattice("sc", 3), "B2"), ValueError, "size: the B2 .* needs an even L"),
    (lambda: A.ising_critical_temperature(A.PairModel.from_bonds(A.Lattice("fcc", 2), 0, 0, -1)), ValueError,
     "model: no exact Ising T_c"),
])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_model_that_returns_nan_stops_the_monte_carlo():
    lattice = A.Lattice("sc", 2)
    start = np.arange(8) % 2
    with pytest.raises(FloatingPointError, match="model: energy nan for chain 0"):
        A.MonteCarlo(A.SiteEnergyModel(lattice, 2, lambda f: np.full(len(f), np.nan)), start, 1.0)

    class Broken(A.PairModel):
        def swap_deltas(self, occupation, i, j):
            return np.where(np.arange(len(i)) == 1, np.nan, super().swap_deltas(occupation, i, j))

    mc = A.MonteCarlo(Broken.from_bonds(lattice, 0, 0, 1), start, [1.0, 2.0])
    with pytest.raises(FloatingPointError, match=r"model: swap_deltas gave nan for chain 1 \(sites"):
        mc.step()


@pytest.mark.parametrize("compiled", paths())
@pytest.mark.parametrize("triplets", [0, 1])
def test_a_site_energy_that_turns_nan_later_stops_the_swap_state(compiled, triplets):
    """Finite at the start (a checkerboard: no like nearest neighbours), NaN for a species-1 site with three or
    more species-1 neighbours: the first trial that makes one stops the chain, naming it and the sites."""
    lattice = A.Lattice("sc", 4)
    model = A.SiteEnergyModel(lattice, 2, lambda f: np.where((f[:, 1] > 0) & (f[:, 3] >= 3), np.nan, f[:, 3]),
                              triplets=triplets)
    start = (np.rint(lattice.positions).sum(1) % 2).astype(np.int8)
    mc = A.MonteCarlo(model, start, 10.0, seed=0)
    assert mc._state is not None
    with stepping(compiled), pytest.raises(FloatingPointError, match=r"swap_deltas gave nan for chain 0 \(sites \d+, \d"):
        mc.step(2000)


# ------------------------------------------------------------------------------------------------- ASE
def test_atoms_round_trip_in_any_site_order():
    pytest.importorskip("ase")
    lattice = A.Lattice("fcc", 2)
    occ = A.random_occupation(lattice, (0.75, 0.25), seed=18)
    atoms = A.to_atoms(lattice, occ, ("Cu", "Au"), 3.75)
    assert atoms.get_chemical_symbols().count("Au") == 8 and atoms.cell[0, 0] == pytest.approx(7.5)
    shuffled = atoms[np.random.default_rng(19).permutation(len(atoms))]
    back, occ_back, elements, a = A.from_atoms(shuffled, elements=("Cu", "Au"))
    assert (back.kind, back.size, elements, a) == ("fcc", 2, ("Cu", "Au"), pytest.approx(3.75))
    assert (occ_back == occ).all()
    with pytest.raises(ValueError, match="atoms: 5 atoms is not an sc, bcc or fcc"):
        A.from_atoms(atoms[:5])


def test_emt_reference_orders_cu3au_and_runs_inside_the_monte_carlo():
    pytest.importorskip("ase")
    lattice = A.Lattice("fcc", 2)
    reference = A.AseReference(lattice, ("Cu", "Au"))
    ordered = reference.energies(A.ordered_occupation(lattice, "L1_2"))
    random = reference.energies(A.random_occupation(lattice, (0.75, 0.25), 6, seed=20))
    gain = (random.mean() - ordered) / lattice.n_sites * 1000       # meV/atom; SCIENCE.md: 31-39
    assert 20 < gain < 60
    calls = reference.calls
    mc = A.MonteCarlo(reference, A.random_occupation(lattice, (0.75, 0.25), 2, seed=21), [0.05, 0.05], seed=22)
    mc.step(3)
    assert reference.calls <= calls + 2 + 2 * 3                       # the state before a swap is cached
    assert mc.refresh_energies() < 1e-9


def test_reference_errors_name_the_element_or_the_configuration():
    pytest.importorskip("ase")
    from ase.calculators.calculator import Calculator, all_changes

    class Flaky(Calculator):
        implemented_properties = ("energy",)

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            symbols = self.atoms.get_chemical_symbols()
            if symbols.count("Au") == 3:
                raise RuntimeError("SCF did not converge")
            self.results["energy"] = np.nan if symbols[0] == "Au" else -1.0

    lattice = A.Lattice("fcc", 1)
    with pytest.raises(ValueError, match=r"elements: EMT has no parameters for \['Fe'\]"):
        A.AseReference(lattice, ("Cu", "Fe"))
    with pytest.raises(ValueError, match="elements: expected distinct chemical symbols"):
        A.AseReference(lattice, ("Cu", "Xx"), calculator=Flaky())
    reference = A.AseReference(lattice, ("Cu", "Au"), 3.7, calculator=Flaky())
    occ = np.array([[0, 0, 0, 1], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=np.int8)
    with pytest.raises(A.CalculatorError, match=r"calculator: Flaky raised RuntimeError: SCF did not converge "
                                                r"on configuration 1 of 3") as info:
        reference.energies(occ)
    assert info.value.index == 1
    with pytest.raises(A.CalculatorError, match="calculator: Flaky returned nan eV for configuration 2 of 3"):
        reference.energies(np.array([[0, 0, 0, 1], [0, 0, 1, 1], [1, 0, 0, 0]], dtype=np.int8))
