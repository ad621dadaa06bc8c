"""CBED simulator and data set, against independent truth.

Geometry is recomputed here from ASE's cell construction in a randomly rotated frame; extinctions are the
textbook rules of each structure; the scattering-factor table is checked against an independent published
fit (Peng et al. 1996, International Tables Vol. C Table 4.3.2.2); the relativistic wavelength against
its textbook value; random crystals against spglib's own space-group finder; data set files against plain
h5py. pymatgen's TEMCalculator, when installed, is a second kinematic simulator to agree with.
"""
import math
import os
import re

import numpy as np
import pytest

from hpcai.sim import cbed

pytestmark = pytest.mark.filterwarnings("ignore:.*OLD_ERROR_HANDLING:DeprecationWarning")

# CODATA 2018, typed independently of the module
H, E, ME, C = 6.62607015e-34, 1.602176634e-19, 9.1093837015e-31, 299792458.0

# Peng, Ren, Dudarev & Whelan (1996) = International Tables Vol. C (2006) Table 4.3.2.2: f_e(s) = sum a_i
# exp(-b_i s^2), s = sin(theta)/lambda <= 2 1/A. Columns: a1..a5, b1..b5.
PENG_1996 = {
    "O": [0.0974, 0.2921, 0.6910, 0.6990, 0.2039, 0.2067, 1.3815, 4.6943, 12.7105, 32.4726],
    "Na": [0.2142, 0.6853, 0.7692, 1.6589, 1.4482, 0.3334, 2.3446, 10.0830, 48.3037, 138.2700],
    "Mg": [0.2314, 0.6866, 0.9677, 2.1882, 1.1339, 0.3278, 2.2720, 10.9241, 39.2898, 101.9748],
    "Si": [0.2519, 0.6372, 1.3795, 2.5082, 1.0500, 0.3075, 2.0174, 9.6746, 29.3744, 80.4732],
    "Cl": [0.2443, 0.5397, 1.3919, 2.0197, 0.6621, 0.2468, 1.5242, 6.1537, 16.6687, 42.3086],
    "Ti": [0.3825, 1.2598, 2.0008, 3.0617, 2.0694, 0.3040, 2.4863, 9.2783, 39.0751, 109.4583],
    "Fe": [0.3946, 1.2725, 1.7031, 2.3140, 1.4795, 0.2717, 2.0443, 7.6007, 29.9714, 86.2265],
    "Cu": [0.4314, 1.3208, 1.5236, 1.4671, 0.8562, 0.2694, 1.9223, 7.3474, 28.9892, 90.6246],
    "Au": [0.9674, 1.8916, 3.3993, 3.0524, 1.2607, 0.2358, 1.4712, 5.6758, 18.7119, 61.5286],
}

SMALL = cbed.PatternSettings(pixels=256)  # geometry tests need no 512 x 512 detector


def bulk(*args, **kwargs):
    """ase.build.bulk (the test skips without ase)."""
    return pytest.importorskip("ase.build").bulk(*args, **kwargs)


def cellpar_to_cell(cellpar):
    """ASE's own cell construction: a along x, b in the xy plane."""
    return pytest.importorskip("ase.geometry").cellpar_to_cell(cellpar)


def from_ase(atoms):
    pytest.importorskip("spglib")
    return cbed.crystal_from_atoms(atoms, conventional=False)


def rutile_atoms():
    return pytest.importorskip("ase.spacegroup").crystal(
        ["Ti", "O"], basis=[(0, 0, 0), (0.3049, 0.3049, 0)], spacegroup=136, cellpar=[4.594, 4.594, 2.959, 90, 90, 90])


def cu():
    return from_ase(bulk("Cu", "fcc", a=3.615, cubic=True))


def rutile():
    return from_ase(rutile_atoms())


def random_crystal(*args, **kwargs):
    pytest.importorskip("spglib")
    return cbed.random_crystal(*args, **kwargs)


def relative_f(crystal, hkl):
    """|F| over the sum of the atoms' |f|: 1 when every atom scatters in phase, 0 when extinct."""
    q = np.linalg.norm(np.asarray(hkl) @ np.linalg.inv(cellpar_to_cell(crystal.cellpar)).T, axis=1)
    bound = sum(cbed.electron_scattering_factor(z, q) * np.exp(-0.5 * q * q / 4) for z in crystal.numbers)
    return np.abs(cbed.structure_factors(crystal, hkl, 0.5)) / bound


# ---------------------------------------------------------------------------------------------- physics

def test_wavelength_is_relativistic():
    assert cbed.electron_wavelength(100) == pytest.approx(0.037014, abs=5e-7)
    for kv in (80, 200, 300):  # lambda = h c / sqrt(E (E + 2 m c^2)), E kinetic energy
        ev = E * kv * 1e3
        assert cbed.electron_wavelength(kv) == pytest.approx(H * C / math.sqrt(ev * (ev + 2 * ME * C * C)) * 1e10,
                                                             rel=1e-12)
    assert cbed.electron_wavelength(300) == pytest.approx(0.019687, abs=5e-7)


def test_lattices_match_ase_and_are_reciprocal(rng):
    for _ in range(5):
        cellpar = [*rng.uniform(2, 12, 3), *rng.uniform(70, 110, 3)]
        A = cbed.direct_lattice(*cellpar)
        np.testing.assert_allclose(A, cellpar_to_cell(cellpar), atol=1e-12)
        np.testing.assert_allclose(cbed.reciprocal_lattice(A) @ A.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(cbed.cell_parameters(A), cellpar, rtol=1e-12)


def test_kirkland_table_agrees_with_an_independent_fit():
    """Two fits to Hartree-Fock factors (Kirkland 2010; Peng et al. 1996) agree to 1 % of f(0) for q <= 4."""
    table = cbed.scattering_table()
    assert table["parameters"].shape == (103, 12) and cbed.SYMBOLS[28] == "Cu"
    q = np.linspace(0, 4, 81)
    for symbol, coef in PENG_1996.items():
        peng = sum(a * np.exp(-b * (q / 2) ** 2) for a, b in zip(coef[:5], coef[5:]))
        ours = cbed.electron_scattering_factor(cbed.ELEMENTS[symbol], q)
        assert np.abs(ours - peng).max() < 0.01 * peng[0], symbol


@pytest.mark.parametrize("build, absent, present", [
    (cu, [(1, 0, 0), (1, 1, 0), (2, 1, 0), (2, 1, 1), (3, 1, 0)], [(1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1)]),
    (lambda: from_ase(bulk("Fe", "bcc", a=2.866, cubic=True)),
     [(1, 0, 0), (1, 1, 1), (2, 1, 0), (3, 0, 0)], [(1, 1, 0), (2, 0, 0), (2, 1, 1), (2, 2, 0)]),
    (lambda: from_ase(bulk("Si", "diamond", a=5.431, cubic=True)),
     [(2, 0, 0), (2, 2, 2), (1, 1, 0), (4, 2, 0)], [(1, 1, 1), (2, 2, 0), (3, 1, 1), (4, 0, 0)]),
    (lambda: from_ase(bulk("NaCl", "rocksalt", a=5.64, cubic=True)),
     [(1, 0, 0), (1, 1, 0), (2, 1, 0), (2, 2, 1)], [(1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1)]),
    (lambda: from_ase(bulk("Mg", "hcp", a=3.21, c=5.21)),
     [(0, 0, 1), (0, 0, 3), (1, 1, 1), (1, 1, 3)], [(0, 0, 2), (1, 0, 0), (1, 0, 1), (1, 1, 0)]),
    (rutile, [(0, 0, 1), (0, 0, 3), (1, 0, 0), (3, 0, 0), (0, 1, 2)], [(0, 0, 2), (1, 1, 0), (0, 1, 1), (1, 2, 0)]),
])
def test_systematic_absences_come_out_of_the_structure_factor(build, absent, present):
    crystal = build()
    assert relative_f(crystal, absent).max() < 1e-12
    assert relative_f(crystal, present).min() > 0.05


def test_rocksalt_even_reflections_strong_and_odd_weak():
    nacl = from_ase(bulk("NaCl", "rocksalt", a=5.64, cubic=True))
    hkl = np.array([(1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1), (2, 2, 2), (3, 3, 1), (4, 0, 0)])
    q = np.linalg.norm(hkl, axis=1) / 5.64
    f_na, f_cl = (cbed.electron_scattering_factor(cbed.ELEMENTS[s], q) * np.exp(-0.5 * q * q / 4) for s in ("Na", "Cl"))
    even = (hkl % 2 == 0).all(1)
    expected = np.where(even, 4 * (f_na + f_cl), 4 * np.abs(f_na - f_cl))
    np.testing.assert_allclose(np.abs(cbed.structure_factors(nacl, hkl, 0.5)), expected, rtol=1e-10)
    odd = np.flatnonzero(~even)
    assert (expected[odd] < 0.5 * expected[odd + 1]).all()  # weaker than the next, farther, even reflection


def test_extinct_reflections_are_not_drawn():
    pattern = cbed.simulate_pattern(cu(), cbed.zone_axis(cu().lattice, (0, 0, 1)), SMALL)
    assert len(pattern.hkl) and ((pattern.hkl % 2 == 0).all(1) | (pattern.hkl % 2 == 1).all(1)).all()
    col, row = np.rint(pattern.to_pixels([[1 / 3.615, 0], [1 / 3.615, 1 / 3.615], [2 / 3.615, 0]])).astype(int).T
    image = pattern.image
    assert image[row[0], col[0]] == 0 and image[row[1], col[1]] == 0 and image[row[2], col[2]] > 0
    assert pattern.d_hkl == pytest.approx(3.615 / 2)  # the largest visible spacing is d_200, not d_100
    assert pattern.semi_angle == pytest.approx(cbed.electron_wavelength(100) / (4 * 3.615 / 2))


# ---------------------------------------------------------------------------------------------- geometry

def rotation(rng):
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)


@pytest.mark.parametrize("space_group", [None, 2, 14, 194])
def test_disk_centres_are_the_projected_reciprocal_lattice_vectors(space_group, rng):
    crystal = cu() if space_group is None else random_crystal(space_group, rng, max_atoms=24)
    A = cellpar_to_cell(crystal.cellpar) @ rotation(rng).T  # the same crystal in another frame
    B = np.linalg.inv(A).T
    for pattern in cbed.simulate_stack(crystal, SMALL).patterns:
        uvw, hkl = pattern.zone.uvw, pattern.hkl
        z = uvw @ A / np.linalg.norm(uvw @ A)
        y = pattern.zone.y_hkl @ B / np.linalg.norm(pattern.zone.y_hkl @ B)
        assert abs(y @ z) < 1e-12
        g = hkl @ B
        np.testing.assert_allclose(pattern.centres, np.stack([g @ np.cross(y, z), g @ y], 1), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(pattern.laue_order, hkl @ uvw)
        np.testing.assert_allclose(g @ z, (hkl @ uvw) / np.linalg.norm(uvw @ A), atol=1e-9)
        # every ZOLZ reflection on the detector that was left out is extinct
        box = np.array(np.meshgrid(*[np.arange(-12, 13)] * 3, indexing="ij")).reshape(3, -1).T
        box = box[(box @ uvw == 0) & (np.abs(box).sum(1) > 0)]
        box = box[np.linalg.norm(box @ B, axis=1) < SMALL.half_width]
        drawn = {tuple(h) for h in hkl}
        left_out = np.array([h for h in box if tuple(h) not in drawn] or np.zeros((0, 3), int))
        if len(left_out):
            assert relative_f(crystal, left_out).max() < 1e-6


def test_disks_are_drawn_where_the_centres_say(rng):
    from scipy.spatial import cKDTree
    crystal = random_crystal(62, rng, max_atoms=24)
    pattern = cbed.simulate_stack(crystal, SMALL).patterns[0]
    centres = pattern.to_pixels(np.vstack([[0.0, 0.0], pattern.centres]))
    radius = pattern.disk_radius / SMALL.pixel_size
    rows, cols = np.indices(pattern.image.shape)
    distance, _ = cKDTree(centres).query(np.stack([cols.ravel(), rows.ravel()], 1))
    distance = distance.reshape(pattern.image.shape)
    assert radius > 3
    assert (pattern.image[distance < radius - 0.5] > 0).all()
    assert (pattern.image[distance > radius + 0.5] == 0).all()


def test_cubic_crystal_along_001_is_invariant_under_90_degree_rotation():
    image = cbed.simulate_pattern(cu(), cbed.zone_axis(cu().lattice, (0, 0, 1)), SMALL).image
    np.testing.assert_allclose(image, np.rot90(image), rtol=1e-5, atol=1e-7 * image.max())
    tetragonal = from_ase(bulk("Cu", "fcc", a=3.615, cubic=True))
    tetragonal = cbed.Crystal([3.615, 3.615, 3.9, 90, 90, 90], tetragonal.positions, tetragonal.numbers, 139,
                              tetragonal.rotations)
    image = cbed.simulate_pattern(tetragonal, cbed.zone_axis(tetragonal.lattice, (1, 0, 0)), SMALL).image
    assert not np.allclose(image, np.rot90(image), rtol=1e-3, atol=1e-4 * image.max())


def test_zone_axes_are_low_index_and_inequivalent():
    assert [z.uvw.tolist() for z in cbed.zone_axes(cu())] == [[0, 0, 1], [0, 1, 1], [1, 1, 1]]
    mg = cbed.zone_axes(from_ase(bulk("Mg", "hcp", a=3.21, c=5.21)))
    uvws = np.array([z.uvw for z in mg])
    assert round(abs(np.linalg.det(uvws))) > 0 and [0, 0, 1] in uvws.tolist()
    for zone in mg:
        assert zone.y_hkl @ zone.uvw == 0 and zone.folz_offset @ zone.uvw == 1


def test_intensity_follows_the_kinematic_formula_inside_a_disk():
    crystal, settings = cu(), cbed.PatternSettings(pixels=256, thickness=250.0)
    pattern = cbed.simulate_pattern(crystal, cbed.zone_axis(crystal.lattice, (0, 0, 1)), settings)
    k = int(np.argmin(np.linalg.norm(pattern.hkl - [2, 0, 0], axis=1)))
    assert pattern.hkl[k].tolist() == [2, 0, 0]
    lam = H / math.sqrt(2 * ME * E * 1e5 * (1 + E * 1e5 / (2 * ME * C * C))) * 1e10
    gamma, volume = 1 + E * 1e5 / (ME * C * C), 3.615 ** 3
    F = abs(cbed.structure_factors(crystal, [[2, 0, 0]], 0.5)[0])
    g = pattern.centres[k]
    col, row = np.rint(pattern.to_pixels(g)).astype(int)
    values = []
    for dr, dc in [(0, 0), (3, 0), (0, -4), (-5, 5), (7, 2)]:
        K = (np.array([col + dc, row + dr]) - (settings.pixels - 1) / 2) * settings.pixel_size - g
        s = -(2 * K @ g + g @ g) * lam / 2
        expected = (lam * gamma * F / volume) ** 2 * math.sin(math.pi * 250 * s) ** 2 / (math.pi * s) ** 2
        assert pattern.image[row + dr, col + dc] == pytest.approx(expected, rel=2e-3)
        values.append(expected)
    assert np.std(values) > 0.05 * np.mean(values)  # thickness fringes: disks are not flat
    thicker = cbed.simulate_pattern(crystal, pattern.zone, cbed.PatternSettings(pixels=256, thickness=400.0))
    inside = pattern.image > 0
    ratio = thicker.image[inside] / pattern.image[inside]
    assert ratio.std() > 0.1 * ratio.mean()


def test_first_order_laue_zone_lights_up_on_a_ring():
    long_c = cbed.Crystal([3.0, 3.0, 40.0, 90, 90, 90], [[0, 0, 0], [0.5, 0.5, 0.3]], [29, 8], 123,
                          np.eye(3, dtype=int)[None])
    settings = cbed.PatternSettings(pixels=256, half_width=2.0)
    pattern = cbed.simulate_pattern(long_c, cbed.zone_axis(long_c.lattice, (0, 0, 1)), settings)
    holz = pattern.laue_order == 1
    radius = np.linalg.norm(pattern.centres[holz], axis=1)
    k, H = 1 / settings.wavelength, 1 / 40.0
    ring = math.sqrt(2 * k * H - H * H)  # where the Ewald sphere cuts the first-order Laue zone
    # drawn: reflections whose excitation error comes within 2 / t of zero somewhere in their disk
    width = (2 / settings.thickness) * k / ring + 2 * pattern.disk_radius
    assert holz.sum() >= 8 and np.abs(radius - ring).max() < width and np.abs(radius - ring).min() < 0.05 * ring


# ---------------------------------------------------------------------------------------------- crystals

@pytest.mark.parametrize("space_group", [1, 2, 5, 14, 19, 62, 70, 76, 122, 141, 146, 148, 160, 167, 168, 186,
                                         194, 198, 205, 216, 225, 227, 230])
def test_random_crystals_have_the_requested_space_group(space_group):
    spglib = pytest.importorskip("spglib")
    crystal = random_crystal(space_group, space_group)
    found = spglib.get_spacegroup((crystal.lattice, crystal.positions, crystal.numbers), symprec=1e-3)
    assert found.endswith(f"({space_group})")
    system = crystal.crystal_system
    lo, hi = cbed.CRYSTAL_SYSTEMS[system]
    assert lo <= space_group <= hi
    a, b, c, alpha, beta, gamma = crystal.cellpar
    if system in ("tetragonal", "trigonal", "hexagonal", "cubic"):
        assert a == pytest.approx(b)
    if system == "cubic":
        assert b == pytest.approx(c)
    if system in ("trigonal", "hexagonal"):
        assert (alpha, beta, gamma) == pytest.approx((90, 90, 120))
    elif system != "triclinic":
        assert (alpha, gamma) == pytest.approx((90, 90)) and (system == "monoclinic" or beta == pytest.approx(90))
    atoms = pytest.importorskip("ase").Atoms(numbers=crystal.numbers, scaled_positions=crystal.positions,
                                             cell=crystal.lattice, pbc=True)
    pairs = atoms.repeat(2).get_all_distances(mic=True)  # the 2x2x2 supercell also holds each atom's images
    assert pairs[~np.eye(len(pairs), dtype=bool)].min() >= 2.0 - 1e-9
    again = cbed.random_crystal(space_group, space_group)
    np.testing.assert_array_equal(again.positions, crystal.positions)


def test_crystal_from_cif_file(tmp_path):
    path = tmp_path / "rutile.cif"
    pytest.importorskip("ase.io").write(path, rutile_atoms())
    tio2 = cbed.read_crystal(path)
    assert (tio2.space_group, tio2.formula, tio2.name, tio2.crystal_system) == (136, "O2Ti", "rutile", "tetragonal")
    np.testing.assert_allclose(tio2.abc, [4.594, 4.594, 2.959], rtol=1e-6)
    primitive = cbed.crystal_from_atoms(bulk("Cu", "fcc", a=3.615))  # primitive cell in, cubic cell out
    assert len(primitive.numbers) == 4 and primitive.abc == pytest.approx([3.615] * 3)


# ---------------------------------------------------------------------------------------------- patterns

def test_dose_noise_is_seeded_and_unbiased():
    crystal = cu()
    settings = cbed.PatternSettings(pixels=128, dose=1e7)
    one, two = (cbed.simulate_stack(crystal, settings, rng=7).data for _ in range(2))
    np.testing.assert_array_equal(one, two)
    clean = cbed.simulate_stack(crystal, cbed.PatternSettings(pixels=128)).data
    assert not np.array_equal(one, clean)
    assert one.sum() == pytest.approx(clean.sum(), rel=0.01)
    assert one.dtype == np.float32 and one.shape == (3, 128, 128)
    with pytest.raises(ValueError, match="rng"):
        cbed.simulate_stack(crystal, settings)


def test_preprocess_is_log_clip_resize():
    stack = cbed.simulate_stack(cu(), SMALL).data
    x = cbed.preprocess(stack, size=64, decades=5)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() == pytest.approx(1.0)
    np.testing.assert_allclose(cbed.preprocess(stack * 1000, 64), x, atol=1e-6)  # scale-free: max-normalised
    tiny = np.full((1, 8, 8), 1e-9, np.float32)
    tiny[0, 0, 0] = 1
    np.testing.assert_allclose(cbed.preprocess(tiny, 8, decades=5)[0].ravel()[1:], 0)
    assert cbed.preprocess(stack, size=100).shape == (3, 100, 100)


def test_y_direction_is_the_plane_normal_by_the_textbook_formulas():
    """The real-space direction along the detector's +y is the normal of the reference plane (hkl): in a
    hexagonal cell [2h + k, h + 2k, 3 a^2 l / (2 c^2)] (its reciprocal metric tensor written out), in a cubic
    one [hkl]."""
    a, c = 3.21, 5.21
    hexagonal = cellpar_to_cell([a, a, c, 90, 90, 120])
    for uvw, (h, k, l) in [((0, 0, 1), (1, 0, 0)), ((0, 0, 1), (1, 1, 0)), ((1, 0, 0), (0, 1, 1)),
                           ((1, -1, 0), (1, 1, 2))]:
        expected = np.array([2 * h + k, h + 2 * k, 3 * a * a * l / (2 * c * c)], float)
        got = cbed.zone_axis(hexagonal, uvw, y_hkl=(h, k, l)).y_direction
        np.testing.assert_allclose(got, expected / np.abs(expected).max(), rtol=0, atol=1e-12)
    cubic = cellpar_to_cell([4.05, 4.05, 4.05, 90, 90, 90])
    for uvw, hkl in [((0, 0, 1), (0, 1, 0)), ((1, 1, 1), (1, -1, 0)), ((0, 1, 1), (2, 1, -1))]:
        np.testing.assert_allclose(cbed.zone_axis(cubic, uvw, y_hkl=hkl).y_direction,
                                   np.array(hkl) / np.abs(hkl).max(), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- data set

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("spglib")
    folder = tmp_path_factory.mktemp("cbed")
    items = cbed.plan_materials([2, 14, 62, 129, 160, 191, 221], seed=5, fractions=(0.6, 0.2, 0.2))
    calls = []
    files = []
    for rank in range(2):
        files += cbed.generate_dataset(items, folder, rank, 2, samples_per_file=2,
                                       progress=lambda done, total, r=rank: calls.append((r, done, total)),
                                       crystal_options={"max_atoms": 32})
    return h5py, folder, items, files, calls


def test_generated_files_open_with_plain_h5py_in_the_ornl_layout(dataset):
    h5py, folder, items, files, calls = dataset
    assert sorted(os.listdir(folder)) == sorted(os.path.basename(f) for f in files)
    split_of = {item.material: item.split for item in items}
    seen = []
    for path in files:
        split = re.fullmatch(r"batch_(train|dev|test)_(\d+)_(\d+)\.h5", os.path.basename(path)).group(1)
        with h5py.File(path, "r") as f:
            for name, group in f.items():
                assert re.fullmatch(r"sample_\d+_\d+", name)
                stack = group["cbed_stack"]
                assert stack.shape == (3, 512, 512) and stack.dtype == np.float32
                assert set(group.attrs) == set(cbed.LABELS)
                for label, (shape, _) in cbed.LABELS.items():
                    assert np.shape(group.attrs[label]) == shape, label
                material = group.attrs["material"]
                assert split_of[material] == split
                crystal = cbed.make_crystal(next(i for i in items if i.material == material), max_atoms=32)
                assert group.attrs["space_group"] == crystal.space_group
                assert group.attrs["formula"] == crystal.formula and group.attrs["energy_keV"] == 100
                np.testing.assert_allclose(group.attrs["abc_angstrom"], crystal.abc)
                lam = cbed.electron_wavelength(100)
                np.testing.assert_allclose(group.attrs["semi_angles_rad"], lam / (4 * group.attrs["d_hkls_angstrom"]))
                np.testing.assert_array_equal(stack[:, 254:258, 254:258], 1)  # the direct disk
                seen.append(material)
    assert sorted(seen) == sorted(split_of)  # every material exactly once
    assert {split for split in split_of.values()} == {"train", "dev", "test"}
    assert sorted(done for r, done, total in calls if r == 0) == list(range(1, 5))
    assert all(total == (4 if r == 0 else 3) for r, done, total in calls)


def test_samples_do_not_depend_on_the_number_of_ranks(dataset, tmp_path):
    h5py, folder, items, files, calls = dataset
    alone = cbed.generate_dataset(items[:2], tmp_path, 0, 1, crystal_options={"max_atoms": 32})
    mine = {labels["material"]: stack for stack, labels in cbed.CBEDFiles(alone)}
    for stack, labels in cbed.CBEDFiles(files):
        if labels["material"] in mine:
            np.testing.assert_array_equal(stack, mine.pop(labels["material"]))
    assert not mine


def test_written_y_dirs_point_along_the_patterns_y_axis(dataset):
    """ORNL's meaning of y_dirs: the crystal direction (real space) that lies along the pattern's y axis,
    perpendicular to the zone axis z_dirs. Checked in ASE's cell built from the written cell parameters: the
    reflections drawn on the +y axis of each pattern are parallel to y_dirs, and y_dirs is perpendicular to
    z_dirs (a reflection's Miller indices, the old attribute, fail both in the non-cubic cells here)."""
    h5py, folder, items, files, calls = dataset
    checked = 0
    for stack, labels in cbed.CBEDFiles(files):
        A = cellpar_to_cell([*labels["abc_angstrom"], *labels["angles_degree"]])
        B = np.linalg.inv(A).T
        crystal = cbed.make_crystal(next(i for i in items if i.material == labels["material"]), max_atoms=32)
        patterns = cbed.simulate_stack(crystal, SMALL).patterns
        for k, pattern in enumerate(patterns):
            y, z = labels["y_dirs"][k] @ A, labels["z_dirs"][k] @ A
            assert np.abs(labels["y_dirs"][k]).max() == pytest.approx(1.0)
            assert abs(y @ z) < 1e-9 * np.linalg.norm(y) * np.linalg.norm(z)
            on_y = pattern.hkl[(np.abs(pattern.centres[:, 0]) < 1e-9) & (pattern.centres[:, 1] > 0)]
            assert len(on_y), f"{labels['material']}: no disk on the pattern's +y axis"
            for g in on_y @ B:
                cosine = g @ y / (np.linalg.norm(g) * np.linalg.norm(y))
                assert cosine == pytest.approx(1.0, abs=1e-9)
            checked += 1
    assert checked == 3 * len(items)


def test_reader_accepts_the_ornl_files_own_attribute_forms(tmp_path):
    """ORNL's generator writes z_dirs / y_dirs as numpy.dstack of the three vectors (shape (1, 3, 3), one
    vector per column) and space_group as text; the reader returns one vector per row and an integer."""
    h5py = pytest.importorskip("h5py")
    z_dirs = [np.array([0, 0, 1]), np.array([1, 1, 0]), np.array([1, 1, 1])]
    y_dirs = [np.array([1.0, 0.0, 0.0]), np.array([-0.5, 0.5, 0.0]), np.array([1.0, -1.0, 0.0])]
    path = tmp_path / "batch_train_0.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("sample_0_0")
        g.create_dataset("cbed_stack", data=np.ones((3, 16, 16), np.float32))
        g.attrs["space_group"] = np.bytes_("225")
        g.attrs["material"] = np.bytes_("mp-30")
        g.attrs["energy_keV"] = 100
        g.attrs["z_dirs"], g.attrs["y_dirs"] = np.dstack(z_dirs), np.dstack(y_dirs)
        for name in ("semi_angles_rad", "d_hkls_angstrom", "abc_angstrom", "angles_degree"):
            g.attrs[name] = np.ones(3)
        g.attrs["formula"] = "Cu4"
    [(stack, labels)] = list(cbed.CBEDFiles([path]))
    assert labels["space_group"] == 225 and labels["material"] == "mp-30"
    np.testing.assert_array_equal(labels["z_dirs"], np.array(z_dirs))
    np.testing.assert_array_equal(labels["y_dirs"], np.array(y_dirs))
    with h5py.File(path, "r+") as f:
        f["sample_0_0"].attrs["space_group"] = np.bytes_("Fm-3m")
    with pytest.raises(cbed.CBEDFileError, match="sample_0_0: attribute 'space_group' should be .* text 'Fm-3m'"):
        list(cbed.CBEDFiles([path]))


def test_reader_streams_shards_that_cover_every_sample_once(dataset):
    h5py, folder, items, files, calls = dataset
    everything = cbed.CBEDFiles(cbed.dataset_files(folder))
    assert len(everything) == len(items)
    shards = [cbed.CBEDFiles(cbed.dataset_files(folder), rank=r, size=3, transform=cbed.preprocess)
              for r in range(3)]
    entries = [e for shard in shards for e in shard.entries]
    assert sorted(entries) == sorted(everything.entries) and len(set(entries)) == len(entries)
    for shard in shards:
        for x, labels in shard:
            assert x.shape == (3, 128, 128) and x.dtype == np.float32 and 1 <= labels["space_group"] <= 230
            assert labels["z_dirs"].shape == (3, 3) and isinstance(labels["formula"], str)
    with h5py.File(everything.entries[0][0], "r") as f:
        raw = f[everything.entries[0][1]]["cbed_stack"][()]
    np.testing.assert_array_equal(everything[0][0], raw)
    assert sorted(everything.labels("material")) == sorted(i.material for i in items)
    tests = cbed.CBEDFiles(cbed.dataset_files(folder, "test"))
    assert {labels["material"] for _, labels in tests} == {i.material for i in items if i.split == "test"}


def test_users_own_structure_files_become_samples(tmp_path):
    pytest.importorskip("h5py")
    cif = tmp_path / "rutile.cif"
    pytest.importorskip("ase.io").write(cif, rutile_atoms())
    items = cbed.plan_files([cif], fractions=(0, 0, 1))
    files = cbed.generate_dataset(items, tmp_path / "out", settings=cbed.PatternSettings(pixels=64))
    [(stack, labels)] = list(cbed.CBEDFiles(files))
    assert os.path.basename(files[0]).startswith("batch_test_") and stack.shape == (3, 64, 64)
    assert (labels["material"], labels["space_group"], labels["formula"]) == ("rutile", 136, "O2Ti")
    with pytest.raises(ValueError, match="space_group: .*rutile.cif has space group 136"):
        cbed.make_crystal(cbed.WorkItem("rutile", "train", 135, 0, str(cif)))


def damaged_copy(dataset, tmp_path, damage):
    """A copy of one generated file, damaged by ``damage(h5py_file, sample_name)``; returns (path, sample)."""
    h5py, folder, items, files, calls = dataset
    source = next(f for f in files if "train" in f)
    path = tmp_path / os.path.basename(source)
    path.write_bytes(open(source, "rb").read())
    with h5py.File(path, "r+") as f:
        sample = sorted(f)[-1]
        damage(f, sample)
    return str(path), sample


@pytest.mark.parametrize("damage, match", [
    (lambda f, s: f[s].attrs.__delitem__("space_group"), "missing attribute.*'space_group'"),
    (lambda f, s: f[s].attrs.__setitem__("z_dirs", [1, 0, 0]), "attribute 'z_dirs' should be"),
    (lambda f, s: (f[s].__delitem__("cbed_stack"), f[s].create_dataset("cbed_stack", data=np.zeros((3, 512, 500),
                                                                                              np.float32))),
     r"cbed_stack has shape \(3, 512, 500\)"),
    (lambda f, s: (f[s].__delitem__("cbed_stack"), f[s].create_dataset("cbed_stack", shape=(2, 512, 512),
                                                                       maxshape=(3, 512, 512), dtype=np.float32)),
     r"shape \(2, 512, 512\).*truncated"),
    (lambda f, s: f[s].__delitem__("cbed_stack"), "no dataset 'cbed_stack'"),
])
def test_damaged_samples_get_errors_naming_file_and_sample(dataset, tmp_path, damage, match):
    path, sample = damaged_copy(dataset, tmp_path, damage)
    for read in (lambda: cbed.check_file(path), lambda: list(cbed.CBEDFiles([path]))):
        with pytest.raises(cbed.CBEDFileError, match=match) as error:
            read()
        assert str(error.value).startswith(f"{path}: {sample}: ")


def test_truncated_data_and_truncated_files_are_caught(dataset, tmp_path):
    def offset(f, s):
        offset.at = f[s]["cbed_stack"].id.get_chunk_info(2).byte_offset
    path, sample = damaged_copy(dataset, tmp_path, offset)
    with open(path, "r+b") as f:  # the tail of the last pattern never reached the disk
        f.seek(offset.at + 1000)
        f.write(bytes(5000))
    with pytest.raises(cbed.CBEDFileError, match=f"^{re.escape(path)}: {sample}: cbed_stack cannot be read"):
        cbed.check_file(path)
    size = os.path.getsize(path)
    os.truncate(path, size // 2)
    with pytest.raises(cbed.CBEDFileError, match=f"^{re.escape(path)}: not a readable HDF5 file, truncated"):
        cbed.check_file(path)


# ---------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, match", [
    (lambda: cbed.random_crystal(0), "space_group: expected an integer in \\[1, 230\\], got 0"),
    (lambda: cbed.random_crystal(231), "space_group: expected an integer in \\[1, 230\\], got 231"),
    (lambda: cbed.random_crystal(225, elements=["Cu", "Xx"]), "elements: expected an element symbol"),
    (lambda: cbed.electron_wavelength(-100), "voltage_kV: expected a finite number > 0"),
    (lambda: cbed.PatternSettings(voltage_kV=-1), "voltage_kV: expected a finite number > 0"),
    (lambda: cbed.PatternSettings(thickness=0), "thickness: expected a finite number > 0"),
    (lambda: cbed.atomic_number("Xx"), "element: expected an element symbol"),
    (lambda: cbed.Crystal([3, 3, 3, 90, 90, 90], [[0, 0, 0]], [0], 1, np.eye(3, dtype=int)[None]),
     "numbers: expected an integer in \\[1, 103\\]"),
    (lambda: cbed.Crystal([3, 3, 3, 90, 90, 190], [[0, 0, 0]], [6], 1, np.eye(3, dtype=int)[None]), "gamma"),
    (lambda: cbed.zone_axis(np.eye(3), (0, 0, 0)), "uvw: expected three integers"),
    (lambda: cbed.zone_axis(np.eye(3), (0, 0, 1), y_hkl=(0, 0, 1)), "y_hkl: expected a reflection of the zero"),
    (lambda: cbed.generate_dataset([], ".", rank=2, size=2), "rank: expected a rank in \\[0, 2\\)"),
    (lambda: cbed.WorkItem("m", "validation", 1, 0), "split: expected one of"),
    (lambda: cbed.plan_materials([0]), "space_groups: expected an integer"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------- a peer

def test_agrees_with_pymatgen_tem_calculator():
    tem = pytest.importorskip("pymatgen.analysis.diffraction.tem")
    adaptor = pytest.importorskip("pymatgen.io.ase").AseAtomsAdaptor
    cases = [(bulk("Si", "diamond", a=5.431, cubic=True), (0, 1, 1)),
             (bulk("NaCl", "rocksalt", a=5.64, cubic=True), (0, 0, 1)),
             (bulk("Mg", "hcp", a=3.21, c=5.21), (0, 0, 1))]
    for atoms, uvw in cases:
        structure, crystal = adaptor.get_structure(atoms), from_ase(atoms)
        calc = tem.TEMCalculator(voltage=100, beam_direction=uvw)
        points = [p for p in calc.zone_axis_filter(calc.generate_points(-3, 3)) if p != (0, 0, 0)]
        factors = calc.cell_scattering_factors(structure, calc.bragg_angles(
            calc.get_interplanar_spacings(structure, points)))
        hkl = np.array(list(factors))
        theirs = np.abs(np.array([factors[tuple(h)] for h in hkl])) ** 2
        ours = np.abs(cbed.structure_factors(crystal, hkl, 0.0)) ** 2  # Mott-Bethe there, no Debye-Waller
        visible = theirs > 1e-8 * theirs.max()
        np.testing.assert_array_equal(ours > 1e-8 * ours.max(), visible)
        np.testing.assert_allclose(ours[visible] / ours.max(), theirs[visible] / theirs.max(), rtol=0.08)
        # spot positions: pymatgen's screen coordinates (cm) over lambda * camera length are 1/A; compare the
        # Gram matrix (rotation- and mirror-free) with ours
        zone = cbed.zone_axis(crystal.lattice, uvw)
        spots = [tuple(h) for h in hkl[visible]]
        screen = calc.get_positions(structure, spots + [(0, 0, 0)])
        theirs_xy = np.array([screen[h] for h in spots]) / (calc.wavelength_rel() * calc.camera_length)
        ours_xy = zone.project(np.array(spots))[:, :2]
        np.testing.assert_allclose(ours_xy @ ours_xy.T, theirs_xy @ theirs_xy.T, atol=1e-6)
