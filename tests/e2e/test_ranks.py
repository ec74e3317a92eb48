"""A rank that stops or dies in a real job (issue 15): 2 ranks under mpirun, `run --tp 2` on the default model and
`train --dp` on a tiny config. One rank is sent SIGSTOP (it hangs: the others wait in a collective) or SIGKILL.

SIGSTOP: with MIXATT_COMM_TIMEOUT=5 the waiting rank gives up after 5 s with a mixatt message naming itself and
the MPI operation, and the job ends within the timeout + 5 s of the stop. SIGKILL: mpirun ends the job, and the
survivor says in mixatt's words why it ends. Every rank process is gone afterwards."""
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import ROOT
from mpijob import argv, env

TIMEOUT = 5
TRAIN = ["train", "-c", os.path.join(ROOT, "configs", "train-tiny-llama.json"), "--set", "steps=1000000",
         "--set", "val_every=0", "--set", "ckpt_every=0", "--set", "log_every=0", "--dp", "-q"]


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(d))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def rank_of(pid):
    """The MPI rank of process pid, or None while it has none: a child that mpirun has forked but not yet exec'd
    carries mpirun's own command line (which names mixatt) and no OMPI_COMM_WORLD_RANK."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for kv in f.read().split(b"\0"):
                if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                    return int(kv.split(b"=")[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def wait_for(pred, seconds, what):
    deadline = time.time() + seconds
    while not pred():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start(cmd, ready, tmp_path):
    """Starts the 2-rank job; returns it and {rank: pid} once ready(pids) holds (both past MPI_Init and working)."""
    job = subprocess.Popen(argv(2, *cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                           env=env({"MIXATT_COMM_TIMEOUT": str(TIMEOUT), "ASAN_OPTIONS": "detect_leaks=0"}))
    pids = {}

    def started():
        ranks = {rank_of(p): p for p in children(job.pid)}
        ranks.pop(None, None)
        if len(ranks) == 2:
            pids.update(ranks)
        return len(pids) == 2 and ready(pids)

    try:
        wait_for(started, 60, "both ranks to start working")
    except BaseException:
        job.kill()
        job.communicate()
        raise
    return job, pids


def mapped(path):
    def ready(pids):
        def has(p):
            with open(f"/proc/{p}/maps") as f:
                return path in f.read()
        return all(has(p) for p in pids.values())
    return ready


def logged(run_dir):
    log = os.path.join(run_dir, "log.jsonl")
    return lambda pids: os.path.exists(log) and os.path.getsize(log) > 0


def jobs(mixatt, model, tmp_path):
    return {
        "run --tp 2": ([mixatt, "run", "--tp", 2, "-m", model, "-p", "Once upon a time", "-n", 100000, "-t", 1],
                       mapped(os.path.realpath(model))),
        "train --dp": ([mixatt, *TRAIN, "-o", tmp_path / "run"], logged(tmp_path / "run")),
    }


def finish(job, pids, seconds):
    try:
        out, err = job.communicate(timeout=seconds)
    finally:
        if job.poll() is None:
            for p in pids.values():
                if alive(p):
                    os.kill(p, signal.SIGKILL)
            job.kill()
            job.communicate()
    wait_for(lambda: not any(alive(p) for p in pids.values()), 10, "every rank to be gone")
    return out, err


@pytest.mark.parametrize("which,victim", [("run --tp 2", 1), ("run --tp 2", 0), ("train --dp", 1)])
def test_stopped_rank_ends_the_job_after_the_timeout(mixatt, model, tmp_path, which, victim):
    cmd, ready = jobs(mixatt, model, tmp_path)[which]
    job, pids = start(cmd, ready, tmp_path)
    time.sleep(0.5)
    assert job.poll() is None, "the job ended before the stop"
    t0 = time.time()
    os.kill(pids[victim], signal.SIGSTOP)
    out, err = finish(job, pids, TIMEOUT + 10)
    took = time.time() - t0
    assert job.returncode != 0
    waiter = 1 - victim
    assert re.search(rf"^mixatt: rank {waiter}: MPI \w+ did not complete within {TIMEOUT} s \(MIXATT_COMM_TIMEOUT\)",
                     err, re.M), err
    assert took < TIMEOUT + 5, f"the job took {took:.1f} s to end after the stop (timeout {TIMEOUT} s)"


@pytest.mark.parametrize("which,victim", [("run --tp 2", 1), ("train --dp", 0)])
def test_killed_rank_gets_a_mixatt_line_on_the_survivor(mixatt, model, tmp_path, which, victim):
    cmd, ready = jobs(mixatt, model, tmp_path)[which]
    job, pids = start(cmd, ready, tmp_path)
    time.sleep(0.5)
    t0 = time.time()
    os.kill(pids[victim], signal.SIGKILL)
    out, err = finish(job, pids, 20)
    assert time.time() - t0 < 10, "the job took more than 10 s to end after the kill"
    assert job.returncode != 0
    survivor = 1 - victim
    assert re.search(rf"^mixatt: rank {survivor}: ended by mpirun \(SIGTERM\)", err, re.M), err
