"""The MPI tests on 2 and 4 ranks: runs ``mpiexec -n N python -m pytest tests/mpi`` as a subprocess (so plain
pytest, e.g. in CI, covers real multi-rank runs), checks that an exception on one rank aborts the whole job
instead of leaving the other ranks waiting, and runs the data-parallel batch script.

Uses the mpiexec next to the Python running the tests (the ``mpich`` wheel puts it in the venv's bin/);
skips without mpi4py or mpiexec, and when these tests already run under mpiexec.
"""
import importlib.util
import os
import sys
import textwrap

import pytest

from mpijob import MPIEXEC, mpirun

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="mpi4py is not installed"),
    pytest.mark.skipif(not os.access(MPIEXEC, os.X_OK), reason=f"no mpiexec next to {sys.executable}"),
    pytest.mark.skipif(int(os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))) > 1,
                       reason="already running under mpiexec"),
]


def _show(out: str, err: str) -> str:
    return f"\n--- stdout ---\n{out[-20000:]}\n--- stderr ---\n{err[-20000:]}"


@pytest.mark.parametrize("n", [2, 4])
def test_mpi_suite_passes_on_n_ranks(n):
    code, out, err, seconds = mpirun(n, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/mpi"], timeout=240)
    assert code is not None, f"tests/mpi on {n} ranks did not finish in 240 s (hung in a collective?)" + _show(out, err)
    assert code == 0, f"tests/mpi on {n} ranks failed (exit {code}, {seconds:.0f} s)" + _show(out, err)


def test_an_exception_on_one_rank_aborts_the_job_instead_of_hanging(tmp_path):
    script = tmp_path / "fail_on_rank_one.py"
    script.write_text(textwrap.dedent("""
        from hpcai.parallel.comm import install_abort_hook, world
        comm = world()
        install_abort_hook(comm)
        if comm.rank == 1:
            raise RuntimeError("rank one failed on purpose")
        comm.barrier()  # rank 0 would wait here forever without the abort
    """))
    code, out, err, _ = mpirun(2, [str(script)], timeout=60)
    assert code is not None, "the job still ran after 60 s: rank 0 hung in the barrier instead of the abort " \
                             "ending the job" + _show(out, err)
    assert code != 0, "the job exited 0 although rank 1 raised" + _show(out, err)
    assert "[hpcai rank 1/2]" in err and "RuntimeError: rank one failed on purpose" in err, _show(out, err)


def test_data_parallel_batch_script_trains_and_only_rank_0_prints():
    args = ["-m", "hpcai.parallel.data_parallel", "--epochs", "5", "--hidden", "32", "--lr", "0.01"]
    code, out, err, _ = mpirun(2, args, timeout=120)
    assert code == 0, _show(out, err)
    assert out.count("data parallel over 2 rank(s)") == 1 and out.count("test accuracy") == 1, _show(out, err)
    assert [out.count(f"epoch {e}/5 ") for e in range(1, 6)] == [1] * 5, _show(out, err)
    accuracy = float(out.split("test accuracy")[1].split()[0])
    assert accuracy >= 0.9, _show(out, err)
