"""The communicator (src/dist) and the failure model of multi-rank jobs, under mpirun.

tests/dist/test_comm.c checks every collective of the communicator (one rank, and Open MPI with 2 and 4 ranks)
against closed-form sums, and that agree() hands every rank the lowest failing rank's message. The failure tests
start real jobs in which one rank alone fails (a missing or corrupt model file, too little memory) or is killed
with SIGKILL while the others wait in a collective: every rank must end, with one message, within seconds."""
import os
import signal
import subprocess
import time

import pytest

from conftest import FIXTURES, ROOT
from mpijob import argv, env, mpirun

TEST_COMM = os.path.join(ROOT, "build", "dist", "test_comm")
HF_MODEL = os.path.join(FIXTURES, "hf", "llama")
CHECKS = 22  # per rank: 3 sizes x 7 collective checks + one agree


@pytest.fixture(scope="module")
def test_comm():
    assert os.path.exists(TEST_COMM), f"{TEST_COMM} missing: make build/dist/test_comm (make test builds it)"
    return TEST_COMM


def test_single_rank_communicator(test_comm):
    r = subprocess.run([test_comm, "all"], capture_output=True, text=True, timeout=60, env=env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == f"rank 0/1: {CHECKS} checks passed (one)"


@pytest.mark.parametrize("n", [2, 4])
def test_mpi_collectives(test_comm, n):
    r = mpirun(n, test_comm, "all", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    passed = sorted(line for line in r.stdout.splitlines() if "checks passed" in line)
    assert passed == [f"rank {i}/{n}: {CHECKS} checks passed (mpi)" for i in range(n)], r.stdout


@pytest.mark.parametrize("n,failing", [(2, []), (2, [1]), (4, [3, 1]), (4, [0, 2, 3])])
def test_agree_gives_every_rank_the_lowest_failing_message(test_comm, n, failing):
    r = mpirun(n, test_comm, "agree", ",".join(map(str, failing)) or "none", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    got = sorted(line for line in r.stdout.splitlines() if "agreed" in line)
    if failing:
        f = min(failing)
        want = [f"rank {i}: agreed: i/o error rank {f}: failure on rank {f}" for i in range(n)]
    else:
        want = [f"rank {i}: agreed: ok" for i in range(n)]
    assert got == want


def wait_for(pred, seconds, what):
    deadline = time.time() + seconds
    while not pred():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("victim", ["in the collective", "awaited"])
def test_killed_rank_ends_the_job(test_comm, tmp_path, victim):
    """Ranks 0..2 wait in an allreduce for rank 3, which sleeps; SIGKILL one of them: mpirun ends them all."""
    n = 4
    job = subprocess.Popen(argv(n, test_comm, "hang", tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env())
    try:
        wait_for(lambda: len(list(tmp_path.glob("rank.*.pid"))) == n, 30, "every rank to start")
        pids = {r: int((tmp_path / f"rank.{r}.pid").read_text()) for r in range(n)}
        time.sleep(0.5)  # the waiting ranks are in the allreduce by now
        assert job.poll() is None, "the job ended before the kill"
        t0 = time.time()
        os.kill(pids[0 if victim == "in the collective" else n - 1], signal.SIGKILL)
        out, err = job.communicate(timeout=20)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert time.time() - t0 < 10, "the job took more than 10 s to end after the kill"
    assert job.returncode != 0
    assert "exited on signal 9" in out + err, out + err
    wait_for(lambda: not any(alive(p) for p in pids.values()), 10, "every rank to be gone")


def mixatt_errors(r, prefix):
    return [line for line in r.stderr.splitlines() if line.startswith(prefix)]


def test_model_missing_on_one_rank(mixatt):
    r = mpirun([[mixatt, "info", "-m", HF_MODEL], [mixatt, "info", "-m", "/nonexistent/model.gguf"]], timeout=60)
    assert r.returncode != 0
    assert mixatt_errors(r, "mixatt:") == ["mixatt: rank 1: model not found: /nonexistent/model.gguf"], r.stderr
    assert "parameters" not in r.stdout  # rank 0 loaded its model but stopped with the job


def test_corrupt_model_on_one_rank(mixatt, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    r = mpirun([[mixatt, "info", "-m", bad], [mixatt, "info", "-m", HF_MODEL]], timeout=60)
    assert r.returncode != 0
    errors = mixatt_errors(r, "mixatt:")
    assert len(errors) == 1 and errors[0].startswith(f"mixatt: rank 0: cannot load model: {bad}"), r.stderr


def activation_mib(rows, L=2, C=64, H=4, F=256):
    """The activations mx_tacts holds for configs/train-tiny-gpt2.json (GPT-2, MHA, no shared K/V) at `rows` rows,
    buffer by buffer as src/train/model_train.h lists them: per layer x, xm, ln1, ln2, q, k, v, att (C each),
    pre (F), 4 norm statistics and lse (H); then x[L], lnf and its 2 statistics, and the backward scratch dx, dln,
    dq, datt, one dk/dv slot, dpre, dup, dact and tmp. GPT-2 keeps no up projection and no ffn_down input."""
    per_row = L * (8 * C + F + 4 + H) + C + C + 2 + 4 * C + 2 * C + 3 * F + C
    return per_row * rows * 4 / 2 ** 20


def test_out_of_memory_on_one_rank(mixatt, tmp_path):
    """Rank 1 runs under a 700 MB data limit (ulimit -d) and cannot allocate the activations of its 128 x 1024
    rows (~1.3 GB); rank 0 can (calloc'd, never touched)."""
    args = ["train", "-c", os.path.join(ROOT, "configs", "train-tiny-gpt2.json"), "--set", "steps=2",
            "--set", "max_ctx=1024", "--set", "seq=1024", "--set", "batch=256", "-o", tmp_path / "run", "--dp", "-q"]
    limited = " ".join(map(str, [mixatt, *args]))
    r = mpirun([[mixatt, *args], ["sh", "-c", f"ulimit -d 700000 && exec {limited}"]], timeout=60)
    assert r.returncode != 0
    assert mixatt_errors(r, "mixatt") == [
        "mixatt train: rank 1: out of memory for the activations of batch 128 x 1024 "
        f"({activation_mib(rows=128 * 1024):.1f} MiB of host memory in all; use a smaller batch)"], r.stderr
