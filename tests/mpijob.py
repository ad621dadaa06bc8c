"""Start a real ``mpiexec`` job from a test: the environment's own mpiexec, one BLAS thread per rank,
a timeout that kills the whole process group, and the job's output for the assertion message."""
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")


def mpirun(n: int, args: list, timeout: float) -> tuple:
    """Run ``mpiexec -n n python *args`` in the repository root; (returncode or None on timeout, stdout,
    stderr, seconds). Variables of an enclosing MPI job are dropped, so this works under mpiexec too."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    proc = subprocess.Popen([MPIEXEC, "-n", str(n), sys.executable, *map(str, args)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    return code, out, err, time.perf_counter() - start
