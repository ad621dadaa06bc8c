"""Fixtures for tests that run unchanged on 1 rank (plain pytest) and on N ranks:

    mpiexec -n 4 python -m pytest -q -p no:cacheprovider tests/mpi

Every test must issue the same collectives in the same order on every rank, skips included (skip on
conditions every rank agrees on, such as ``comm.size``), and assert only after its last collective: a
rank that fails an assertion leaves the test, and must not leave the others waiting in a collective.
"""
import pathlib
import sys

import pytest

from hpcai.parallel.comm import world

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/: the shared problems module


@pytest.fixture(scope="session")
def comm():
    """MPI's world communicator (one rank under plain pytest; the serial stand-in without mpi4py)."""
    return world()


def pytest_report_header(config):
    c = world()
    return f"hpcai MPI tests: rank {c.rank} of {c.size} ({c!r})"
