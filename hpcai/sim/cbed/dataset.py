"""CBED data sets in the layout of the ORNL data set: parallel generation, validation and lazy reading.

Layout [Laanait et al. 2019; doi:10.13139/OLCF/1510313]: HDF5 files ``batch_train_*.h5``,
``batch_dev_*.h5`` and ``batch_test_*.h5``; in each, groups ``sample_<i>_<j>`` holding a dataset
``cbed_stack`` of shape (3, 512, 512), float32 (three zone axes), and the attributes of :data:`LABELS`.
Materials, not patterns, are split between train, dev and test, so a test score is for unseen crystals.

Generation is a list of :class:`WorkItem` (one material each) that any number of ranks share: rank r of
``size`` takes items r, r + size, ... and writes its own files ``batch_<split>_<r>_<k>.h5`` with groups
``sample_<r>_<n>`` (n counts that rank's samples), each file written to a temporary file in the same folder
and renamed into place (:func:`hpcai.io.atomic_write`), so a crash never leaves a half-written batch.
Every item carries its own seed, so a sample does not depend on how many ranks made it. ``cbed_stack`` is
stored in one chunk per pattern with a Fletcher-32 checksum: damaged data is detected when it is read.

:class:`CBEDFiles` reads ours or ORNL's files lazily (one sample at a time; only the group names are
listed up front), optionally one rank's shard and with a transform such as
:func:`~.pattern.preprocess`; a damaged file raises :class:`CBEDFileError` naming the file and the sample.

h5py is optional (``pip install 'hpcai[cbed]'``) and imported when a file is opened.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re

import numpy as np

from ... import checks
from ...io import atomic_write
from .crystal import random_crystal, read_crystal
from .pattern import PatternSettings, simulate_stack

__all__ = ["LABELS", "SPLITS", "STACK", "CBEDFileError", "CBEDFiles", "WorkItem", "check_file", "dataset_files",
           "generate_dataset", "make_crystal", "plan_files", "plan_materials", "read_sample", "sample_labels"]

SPLITS = ("train", "dev", "test")
STACK = "cbed_stack"
LABELS = {  # attribute of every sample group -> (shape, what it holds)
    "space_group": ((), "international space group number, 1-230"),
    "material": ((), "material identifier"),
    "energy_keV": ((), "beam energy, keV"),
    "z_dirs": ((3, 3), "zone axes [uvw] (the beam direction, towards the source), one row per pattern"),
    "y_dirs": ((3, 3), "crystal direction along the pattern's +y axis, perpendicular to the zone axis, as "
                       "direct-lattice components (real-valued, largest 1), one row per pattern"),
    "semi_angles_rad": ((3,), "convergence semi-angle lambda / (4 d_hkl) per pattern, rad"),
    "d_hkls_angstrom": ((3,), "largest visible lattice spacing per pattern, Angstrom"),
    "abc_angstrom": ((3,), "cell lengths a, b, c, Angstrom"),
    "angles_degree": ((3,), "cell angles alpha, beta, gamma, degrees"),
    "formula": ((), "reduced chemical formula"),
}
_TEXT = ("material", "formula")


class CBEDFileError(ValueError):
    """A data set file that is unreadable, truncated, or not in the expected layout."""


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("CBED data set files need h5py: pip install 'hpcai[cbed]'") from None
    return h5py


# ---------------------------------------------------------------------------------------------- planning

@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One material to simulate: a random crystal of ``space_group`` drawn with ``seed``, or the crystal in
    the structure file ``source`` (``space_group`` None: spglib decides; a number: checked against it)."""

    material: str
    split: str
    space_group: int | None
    seed: int = 0
    source: str | None = None

    def __post_init__(self):
        checks.text("material", self.material)
        checks.choice("split", self.split, SPLITS)
        if self.space_group is not None or self.source is None:
            checks.integer("space_group", self.space_group, 1, 230)
        checks.integer("seed", self.seed, 0)
        if self.source is not None:
            checks.text("source", self.source)


def _splits(n: int, seed: int, fractions) -> list:
    """Split names for n materials: a seeded random permutation cut at ``fractions`` (train, dev, test)."""
    fractions = [checks.number("fractions", f, 0.0) for f in fractions]
    if len(fractions) != 3 or sum(fractions) <= 0:
        raise ValueError(f"fractions: expected three non-negative numbers (train, dev, test), got {fractions}")
    cuts = np.round(np.cumsum(fractions) / sum(fractions) * n).astype(int)
    position = np.random.default_rng(seed).permutation(n)
    return [SPLITS[int(np.searchsorted(cuts, p, side="right"))] for p in position]


def plan_materials(space_groups, per_group: int = 1, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> list:
    """Work items for ``per_group`` random materials of every group in ``space_groups``, split by material.

    Each item's seed comes from ``(seed, item index)``, so the plan is the same on every rank.
    """
    groups = [checks.integer("space_groups", g, 1, 230) for g in space_groups]
    per_group = checks.integer("per_group", per_group, 1)
    seed = checks.integer("seed", seed, 0)
    splits = _splits(len(groups) * per_group, seed, fractions)
    items = []
    for index, split in enumerate(splits):
        group = groups[index // per_group]
        item_seed = int(np.random.SeedSequence((seed, index)).generate_state(1)[0])
        items.append(WorkItem(f"sg{group:03d}-{index:06d}", split, group, item_seed))
    return items


def plan_files(paths, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> list:
    """Work items for a user's own structure files (CIF, ...), one material each, named by the file stem."""
    paths = [checks.text("paths", os.fspath(p)) for p in paths]
    splits = _splits(len(paths), checks.integer("seed", seed, 0), fractions)
    return [WorkItem(os.path.splitext(os.path.basename(p))[0], split, None, 0, p) for p, split in zip(paths, splits)]


def make_crystal(item: WorkItem, **options):
    """The crystal of ``item``: read from ``item.source`` or drawn by :func:`random_crystal` (``options``)."""
    if item.source is not None:
        crystal = read_crystal(item.source, item.material)
        if item.space_group is not None and crystal.space_group != item.space_group:
            raise ValueError(f"space_group: {item.source} has space group {crystal.space_group} (spglib), "
                             f"the work item says {item.space_group}")
        return crystal
    return random_crystal(item.space_group, np.random.default_rng((item.seed, 0)), name=item.material, **options)


def sample_labels(crystal, stack, settings: PatternSettings) -> dict:
    """The attributes of :data:`LABELS` for ``crystal`` and its simulated ``stack``.

    ``z_dirs`` and ``y_dirs`` follow the ORNL files' meaning: ORNL's generator (NAMSA, Laanait et al.) builds
    for each pattern a slab whose z axis is ``z_dirs[k]`` (the beam direction) and whose y axis is
    ``y_dirs[k]``, a real-space direction perpendicular to it (found numerically, so real-valued) - the
    direction of the crystal that appears along the pattern's y axis. Here ``y_dirs[k]`` is
    :attr:`~.geometry.ZoneAxis.y_direction`: the real-space direction along the detector's +y (the disk of the
    reference reflection ``zone.y_hkl`` lies on +y), as components on the cell vectors a, b, c - not the
    reflection's Miller indices, which are parallel to it only in cubic cells. Two differences in form, not
    in meaning: ORNL writes both as ``numpy.dstack`` of the three vectors, shape (1, 3, 3) with one vector
    per *column* (:func:`read_sample` accepts that and returns rows), and NAMSA's components are on the unit
    vectors along a, b, c (multiply ours by a, b, c and rescale to compare).
    """
    patterns = stack.patterns
    return {
        "space_group": np.int64(crystal.space_group),
        "material": crystal.name,
        "energy_keV": np.float64(settings.voltage_kV),
        "z_dirs": np.array([p.zone.uvw for p in patterns], np.int64),
        "y_dirs": np.array([p.zone.y_direction for p in patterns], np.float64),
        "semi_angles_rad": np.array([p.semi_angle for p in patterns]),
        "d_hkls_angstrom": np.array([p.d_hkl for p in patterns]),
        "abc_angstrom": crystal.abc,
        "angles_degree": crystal.angles,
        "formula": crystal.formula,
    }


# ---------------------------------------------------------------------------------------------- writing

def generate_dataset(items, folder, rank: int = 0, size: int = 1, settings: PatternSettings | None = None,
                     samples_per_file: int = 64, progress=None, crystal_options: dict | None = None,
                     compression: str | None = None) -> list:
    """Simulate this rank's share of ``items`` and write it to ``folder``; returns the paths written.

    Parameters
    ----------
    items : list of WorkItem
        The whole plan (the same list on every rank); rank ``rank`` of ``size`` takes every size-th item.
    folder : str or path
        Output folder (created if needed).
    settings : PatternSettings
        Microscope and detector (default 100 kV, 512 x 512).
    samples_per_file : int
        Samples per ``batch_<split>_<rank>_<k>.h5`` file.
    progress : callable or None
        Called as ``progress(done, total)`` after every sample of this rank.
    crystal_options : dict
        Keyword arguments of :func:`random_crystal` (e.g. ``max_atoms``, ``elements``).
    compression : str or None
        HDF5 compression of ``cbed_stack`` (e.g. ``"gzip"``); none by default, like the ORNL files.
    """
    size = checks.integer("size", size, 1)
    rank = checks.rank("rank", rank, size)
    samples_per_file = checks.integer("samples_per_file", samples_per_file, 1)
    settings = PatternSettings() if settings is None else settings
    if compression is not None:
        checks.choice("compression", compression, ("gzip", "lzf"))
    if progress is not None and not callable(progress):
        raise TypeError(f"progress: expected a callable progress(done, total) or None, got {progress!r}")
    items = list(items)
    bad = [type(x).__name__ for x in items if not isinstance(x, WorkItem)]
    if bad:
        raise TypeError(f"items: expected WorkItem objects, got {bad[0]}")
    mine = items[rank::size]
    h5py = _h5py()
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    counter = {"done": 0}

    def write_batch(tmp, batch):
        with h5py.File(tmp, "w") as f:
            for item in batch:
                crystal = make_crystal(item, **(crystal_options or {}))
                stack = simulate_stack(crystal, settings, np.random.default_rng((item.seed, 1)))
                group = f.create_group(f"sample_{rank}_{counter['done']}")
                group.create_dataset(STACK, data=stack.data.astype(np.float32),
                                     chunks=(1,) + stack.data.shape[1:], fletcher32=True, compression=compression)
                for name, value in sample_labels(crystal, stack, settings).items():
                    group.attrs[name] = value
                counter["done"] += 1
                if progress is not None:
                    progress(counter["done"], len(mine))

    written = []
    for split in SPLITS:
        share = [item for item in mine if item.split == split]
        for k, start in enumerate(range(0, len(share), samples_per_file)):
            path = os.path.join(folder, f"batch_{split}_{rank}_{k}.h5")
            atomic_write(path, lambda tmp, batch=share[start:start + samples_per_file]: write_batch(tmp, batch))
            written.append(path)
    return written


# ---------------------------------------------------------------------------------------------- reading

def _natural(text: str):
    """Sort key that orders the numbers inside names numerically (sample_2 before sample_10)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def dataset_files(folder, split: str | None = None) -> list:
    """The ``batch_<split>_*.h5`` files in ``folder`` (every split if ``split`` is None), in natural order."""
    if split is not None:
        checks.choice("split", split, SPLITS)
    names = glob.glob(os.path.join(os.fspath(folder), f"batch_{split or '*'}_*.h5"))
    return sorted(names, key=lambda p: _natural(os.path.basename(p)))


def _open(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"paths: no such file {path!r}")
    try:
        return _h5py().File(path, "r")
    except OSError as e:
        raise CBEDFileError(f"{path}: not a readable HDF5 file, truncated or damaged ({e})") from None


def _sample_names(handle) -> list:
    return sorted((name for name in handle if name.startswith("sample_")), key=_natural)


def _label(value, name: str, shape: tuple, where: str):
    if name in _TEXT:
        value = np.asarray(value).ravel()
        if value.size != 1:
            raise CBEDFileError(f"{where}: attribute {name!r} should be one string, got shape {value.shape}")
        value = value[0]
        return value.decode() if isinstance(value, (bytes, np.bytes_)) else str(value)
    array = np.asarray(value)
    if array.dtype.kind in "SU" and array.size == 1 and shape == ():  # ORNL writes space_group as text, b"225"
        text = array.ravel()[0]
        text = (text.decode(errors="replace") if isinstance(text, bytes) else str(text)).strip()
        try:
            array = np.asarray(int(text) if name == "space_group" else float(text))
        except ValueError:
            raise CBEDFileError(f"{where}: attribute {name!r} should be {LABELS[name][1]}, got the text "
                                f"{text!r}") from None
    if array.dtype.kind not in "iuf" or array.size != int(np.prod(shape, dtype=int)):
        raise CBEDFileError(f"{where}: attribute {name!r} should be {LABELS[name][1]} of shape {shape}, "
                            f"got {array.dtype} of shape {array.shape}")
    if shape == (3, 3) and array.shape == (1, 3, 3):
        array = array[0].T  # ORNL's numpy.dstack of three vectors: one vector per column
    array = array.reshape(shape)
    if name == "space_group":
        return int(array)
    return float(array) if shape == () else array


def read_sample(handle, name: str, shape=None) -> tuple:
    """``(stack float32, labels)`` of group ``name`` of an open file; CBEDFileError if anything is off."""
    where = f"{handle.filename}: {name}"
    group = handle.get(name)
    if group is None or STACK not in group:
        raise CBEDFileError(f"{where}: no dataset {STACK!r}")
    dataset = group[STACK]
    if shape is None:
        ok = dataset.ndim == 3 and dataset.shape[0] == 3 and dataset.shape[1] == dataset.shape[2] > 0
        want = "(3, N, N)"
    else:
        ok, want = dataset.shape == tuple(shape), str(tuple(shape))
    if not ok or dataset.dtype.kind != "f":
        raise CBEDFileError(f"{where}: {STACK} has shape {dataset.shape} and dtype {dataset.dtype}, expected "
                            f"floats of shape {want} (a truncated or foreign dataset)")
    missing = [label for label in LABELS if label not in group.attrs]
    if missing:
        raise CBEDFileError(f"{where}: missing attribute(s) {', '.join(map(repr, missing))}")
    labels = {label: _label(group.attrs[label], label, spec[0], where) for label, spec in LABELS.items()}
    try:
        stack = dataset[()].astype(np.float32, copy=False)
    except (OSError, ValueError) as e:
        raise CBEDFileError(f"{where}: {STACK} cannot be read, the data is truncated or damaged ({e})") from None
    return stack, labels


def check_file(path, shape=None) -> int:
    """Read every sample of ``path`` completely (data and labels); the number of samples, or CBEDFileError.

    ``shape`` is the expected ``cbed_stack`` shape, e.g. (3, 512, 512); None accepts any (3, N, N).
    """
    with _open(path) as handle:
        names = _sample_names(handle)
        if not names:
            raise CBEDFileError(f"{os.fspath(path)}: no sample_* groups")
        for name in names:
            read_sample(handle, name, shape)
    return len(names)


class CBEDFiles:
    """The samples of a set of data set files, read lazily; iterate for ``(stack, labels)`` pairs.

    Parameters
    ----------
    paths : list of str
        Files in the ORNL layout (ours or ORNL's); see :func:`dataset_files`.
    rank, size : int
        Keep only shard ``rank`` of ``size``: every size-th sample of all files in natural order, so the
        shards are disjoint and together hold every sample exactly once.
    transform : callable or None
        Applied to each stack as it is read (e.g. :func:`~.pattern.preprocess`).
    shape : tuple or None
        Expected ``cbed_stack`` shape; None accepts any (3, N, N).
    """

    def __init__(self, paths, *, rank: int = 0, size: int = 1, transform=None, shape=None):
        size = checks.integer("size", size, 1)
        self.rank, self.size = checks.rank("rank", rank, size), size
        if transform is not None and not callable(transform):
            raise TypeError(f"transform: expected a callable or None, got {transform!r}")
        self.transform, self.shape = transform, shape
        paths = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        if not paths:
            raise ValueError("paths: expected at least one file")
        entries = []
        for path in sorted(paths, key=lambda p: _natural(os.path.basename(p))):
            with _open(path) as handle:
                entries += [(path, name) for name in _sample_names(handle)]
        self.entries = entries[self.rank::self.size]

    def __len__(self) -> int:
        return len(self.entries)

    def _walk(self):
        """(open file, group name) for every sample of the shard, each file opened once per run of samples."""
        handle = None
        try:
            for path, name in self.entries:
                if handle is None or handle.filename != path:
                    if handle is not None:
                        handle.close()
                    handle = _open(path)
                yield handle, name
        finally:
            if handle is not None:
                handle.close()

    def __iter__(self):
        for handle, name in self._walk():
            yield self._finish(*read_sample(handle, name, self.shape))

    def __getitem__(self, index: int) -> tuple:
        index = checks.integer("index", index, -len(self), len(self) - 1)
        path, name = self.entries[index]
        with _open(path) as handle:
            return self._finish(*read_sample(handle, name, self.shape))

    def _finish(self, stack, labels):
        return (stack if self.transform is None else self.transform(stack)), labels

    def labels(self, name: str) -> np.ndarray:
        """One label of every sample of this shard, in order, reading attributes only (no pattern data)."""
        checks.choice("name", name, tuple(LABELS))
        values = []
        for handle, group in self._walk():
            where = f"{handle.filename}: {group}"
            if name not in handle[group].attrs:
                raise CBEDFileError(f"{where}: missing attribute {name!r}")
            values.append(_label(handle[group].attrs[name], name, LABELS[name][0], where))
        return np.array(values)

    def __repr__(self) -> str:
        files = len({path for path, _ in self.entries})
        shard = f", shard {self.rank}/{self.size}" if self.size > 1 else ""
        return f"CBEDFiles({len(self)} samples in {files} files{shard})"
