"""Runs jobs under Open MPI's mpirun for the multi-rank tests (test_dist.py, test_dp.py).

mpirun runs as root in CI and containers (--allow-run-as-root), oversubscribes the 2 cores of CI with 4 ranks
(--oversubscribe, no binding) and uses shared memory between ranks without ptrace (containers forbid the CMA
single-copy mechanism)."""
import os
import shutil
import subprocess

MPIRUN = shutil.which("mpirun")
FLAGS = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]


def env(extra=None):
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "1")
    e.setdefault("OPENBLAS_NUM_THREADS", "1")
    e["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none"
    e["OMPI_MCA_rmaps_base_oversubscribe"] = "1"
    if extra:
        e.update(extra)
    return e


def argv(np_or_apps, *args):
    """mpirun's argv: np_or_apps is a rank count (every rank runs args) or a list of argv lists, one rank each
    (MPMD: `mpirun -np 1 A : -np 1 B`)."""
    assert MPIRUN, "mpirun not found: install Open MPI (make deps)"
    cmd = [MPIRUN, *FLAGS]
    if isinstance(np_or_apps, int):
        return cmd + ["-np", str(np_or_apps), *map(str, args)]
    for i, app in enumerate(np_or_apps):
        cmd += ([":"] if i else []) + ["-np", "1", *map(str, app)]
    return cmd


def mpirun(np_or_apps, *args, timeout=120, extra_env=None, cwd=None):
    """Runs the job to its end (text output); a job that outlives timeout fails the test (no hang)."""
    return subprocess.run(argv(np_or_apps, *args), capture_output=True, text=True, timeout=timeout,
                          env=env(extra_env), cwd=cwd)
