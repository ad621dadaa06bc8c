"""Exercises of notebook 07, CBED: the electron wavelength, systematic absences, the data set's files."""
from __future__ import annotations

from . import Wrong, answer, judge


@judge("07.wavelength", "the relativistic electron wavelength",
       hint="lambda = h / sqrt(2 m0 e V (1 + e V / (2 m0 c^2))), in angstrom (1e10 per metre); at 100 kV it is "
            "0.037014 A. Without the relativistic factor it is several per cent too long at 200 kV.")
def _wavelength(fn):
    import math

    from hpcai.sim.cbed import electron_wavelength
    h, m0, e = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19
    for kv in (60.0, 100.0, 200.0, 300.0):
        got, want = float(fn(kv)), electron_wavelength(kv)
        classical = h / math.sqrt(2 * m0 * e * kv * 1e3) * 1e10
        if math.isclose(got, classical, rel_tol=1e-4):
            raise Wrong(f"at {kv:g} kV you have {got:.6f} A, the non-relativistic wavelength.")
        if math.isclose(got, want * 1e-10, rel_tol=1e-4):
            raise Wrong("that is in metres: the answer is in angstrom.")
        if not math.isclose(got, want, rel_tol=1e-4):
            raise Wrong(f"at {kv:g} kV you have {got:.6g} A.")
    return f"{fn(200.0):.5f} A at 200 kV, {fn(300.0):.5f} A at 300 kV."


answer("07.bcc_absent", "the reflections a bcc crystal lacks", "132211117f08a25f",
       hint="a body-centred cell has atoms at r and r + (1/2, 1/2, 1/2): the structure factor gets a factor "
            "1 + exp(i pi (h + k + l)). Answer with a set of (h, k, l) tuples.",
       mistakes={"a606031d7a66b678": "the other way round: those are the reflections that appear (h + k + l even).",
                 "edfed5891c1069e6": "that is the face-centred rule (mixed parity); bcc's depends on h + k + l."},
       about="h + k + l odd: the two atoms of the cell scatter in opposite phase.")


@judge("07.read_sample", "one sample read back with h5py", given=("path",),
       hint="next(iter(f)) is the first group's name; f[name]['cbed_stack'].shape and "
            "f[name].attrs['space_group'].")
def _read_sample(values, path):
    import h5py
    try:
        group_name, shape, space_group = values
    except (TypeError, ValueError):
        raise Wrong("give the three values: (group_name, shape, space_group)") from None
    with h5py.File(path, "r") as f:
        first = next(iter(f))
        want = (first, tuple(f[first]["cbed_stack"].shape), int(f[first].attrs["space_group"]))
    if group_name != want[0]:
        raise Wrong(f"group_name is {group_name!r}: the first group of the file is not that one.")
    if tuple(shape or ()) != want[1]:
        raise Wrong(f"shape is {shape}: read it from the group's cbed_stack dataset.")
    if space_group != want[2]:
        raise Wrong(f"space_group is {space_group}: it is an attribute of the group.")
    return f"{group_name} is a {want[1]} stack of space group {want[2]}."
