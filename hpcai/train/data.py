"""In-memory data: a Dataset of equal-length arrays and a DataLoader that batches and shuffles it.

Shuffling draws from the loader's own seeded numpy Generator (``loader.rng``), whose state a checkpoint
saves, so a resumed run sees the same batches as an uninterrupted one. ``shard(rank, size)`` gives each
data-parallel rank a disjoint, equally long part of every epoch: all ranks draw the same permutation
(same seed) and rank r takes every size-th index from position r.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend


class Dataset:
    """Arrays (numpy or cupy) indexed together along their first axis: ``Dataset(x, y)``."""

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("Dataset: expected at least one array")
        arrays = tuple(a if backend.is_array(a) else np.asarray(a) for a in arrays)
        if any(a.ndim == 0 for a in arrays):
            raise ValueError(f"Dataset: every array needs a first (sample) axis, got shapes "
                             f"{[tuple(a.shape) for a in arrays]}")
        lengths = [len(a) for a in arrays]
        if len(set(lengths)) != 1:
            raise ValueError(f"Dataset: all arrays must have the same length (first axis), got lengths {lengths}")
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)

    def __repr__(self) -> str:
        return f"Dataset({', '.join(f'{tuple(a.shape)} {a.dtype}' for a in self.arrays)})"


def as_dataset(data) -> Dataset:
    """``data`` as a Dataset: a Dataset passes through, a tuple/list of arrays is wrapped."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)):
        return Dataset(*data)
    if backend.is_array(data):
        return Dataset(data)
    raise TypeError(f"data: expected a Dataset, a DataLoader or a tuple of arrays (x, y), got {type(data).__name__}")


class DataLoader:
    """Batches of a Dataset, reshuffled every epoch from ``rng`` (a Generator or an int seed).

    Iterating yields tuples of arrays (one per dataset array). ``drop_last`` drops a final short batch.
    """

    def __init__(self, dataset, batch_size: int = 32, shuffle: bool = True, drop_last: bool = False, seed=0):
        self.dataset = as_dataset(dataset)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.rank, self.size = 0, 1

    def shard(self, rank: int, size: int) -> "DataLoader":
        """Make this loader yield only rank ``rank``'s part of ``size`` disjoint, equal parts; returns self.

        Each part holds ``len(dataset) // size`` samples per epoch (up to size - 1 samples, different ones
        each epoch when shuffling, are left out so that every rank runs the same number of steps). All ranks
        must use the same seed.
        """
        if not (isinstance(size, (int, np.integer)) and size >= 1 and isinstance(rank, (int, np.integer))
                and 0 <= rank < size):
            raise ValueError(f"shard: expected 0 <= rank < size, got rank={rank!r}, size={size!r}")
        if len(self.dataset) < size:
            raise ValueError(f"shard: {len(self.dataset)} samples cannot be split over {size} ranks")
        self.rank, self.size = int(rank), int(size)
        return self

    @property
    def num_samples(self) -> int:
        """Samples this loader (this rank) yields per epoch before dropping a short last batch."""
        return len(self.dataset) // self.size

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def indices(self) -> np.ndarray:
        """This epoch's sample indices for this rank (draws a new permutation when shuffling)."""
        n = len(self.dataset)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        return order[self.rank:self.size * self.num_samples:self.size]

    def __iter__(self):
        idx = self.indices()
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, len(idx)), self.batch_size):
            yield self.dataset[idx[start:start + self.batch_size]]

    def state_dict(self) -> dict:
        """The shuffling Generator's state (JSON-able)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def __repr__(self) -> str:
        shard = f", shard {self.rank}/{self.size}" if self.size > 1 else ""
        return (f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}{shard})")


def as_loader(data, batch_size: int = 32, shuffle: bool = True, drop_last: bool = False, seed=0) -> DataLoader:
    """``data`` as a DataLoader: a DataLoader passes through unchanged, anything else is wrapped."""
    if isinstance(data, DataLoader):
        return data
    return DataLoader(as_dataset(data), batch_size, shuffle, drop_last, seed)
