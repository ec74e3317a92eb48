"""Shared pytest fixtures: the mixatt binaries (release and ASan builds, from $MIXATT / $MIXATT_ASAN as set by
`make e2e`) and the default model. A missing binary or model fails the test; nothing is skipped."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def _binary(var, default):
    path = os.environ.get(var) or os.path.join(ROOT, default)
    assert os.path.exists(path), f"{path} missing: run the tests with `make test` ({var})"
    return os.path.abspath(path)


@pytest.fixture(scope="session")
def mixatt():
    return _binary("MIXATT", "build/mixatt")


@pytest.fixture(scope="session")
def mixatt_asan():
    return _binary("MIXATT_ASAN", "build/asan/mixatt")


@pytest.fixture(scope="session")
def model():
    assert os.path.exists(MODEL), f"{MODEL} missing: run `make model`"
    return MODEL


def run(binary, *args, timeout=600, input=None, env=None, cwd=None, exe_copy=False):
    """Runs the binary, returns CompletedProcess with text output. exe_copy runs a copy of the binary placed
    in cwd (so it cannot find the repository's models/ next to itself)."""
    if exe_copy:
        import shutil
        binary = shutil.copy(binary, os.path.join(cwd, "mixatt"))
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "2")
    e.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    if env:
        e.update(env)
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=timeout, input=input,
                          env=e, cwd=cwd)
