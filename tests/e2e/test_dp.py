"""Data-parallel training, `mpirun -np N mixatt train --dp [--zero1]`, against one process training the same
global batch: the same logged losses and validation losses, the same final weights and AdamW moments, up to the
order of fp32 sums (the ranks' gradients are summed by MPI, one process sums them in its backward pass). Then
--resume across a change of rank count and optimizer sharding, bad use, a rank whose data goes bad in the middle
of a run, a rank killed while training, and the dp path under AddressSanitizer."""
import json
import os
import signal
import subprocess
import struct
import time

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from conftest import ROOT, run
from mpijob import argv, env, mpirun

# 20 steps of a tiny model; 8 sequences a micro-batch, 2 micro-batches a step, validation and checkpoints
SMALL = ["--set", "steps=20", "--set", "d_model=32", "--set", "d_ff=64", "--set", "seq=32", "--set", "batch=8",
         "--set", "grad_accum=2", "--set", "val_every=10", "--set", "val_batches=2", "--set", "ckpt_every=10"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}  # as every rank runs (mpijob.env)


def config(arch):
    return os.path.join(ROOT, "configs", f"train-tiny-{arch}.json")


def train_args(arch, out, *extra, quiet=True):
    return ["train", "-c", config(arch), *SMALL, "-o", out, *extra, *(["-q"] if quiet else [])]


def log_lines(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def ckpt(run_dir):
    path = os.path.join(run_dir, "checkpoint.safetensors")
    with safe_open(path, "np") as f:
        meta = f.metadata()
    return load_file(path), meta


@pytest.fixture(scope="module")
def single(mixatt, tmp_path_factory):
    """The reference: one process, no --dp (a run per architecture, made once)."""
    runs = {}

    def get(arch):
        if arch not in runs:
            out = tmp_path_factory.mktemp(f"single-{arch}") / "run"
            r = run(mixatt, *train_args(arch, out), env=ONE_THREAD)
            assert r.returncode == 0, r.stderr
            runs[arch] = out
        return runs[arch]
    return get


def assert_same_training(got_dir, ref_dir):
    got, ref = log_lines(got_dir), log_lines(ref_dir)
    assert [sorted(line) for line in got] == [sorted(line) for line in ref], "not the same log lines"
    for a, b in zip(got, ref):
        assert a["step"] == b["step"]
        for key in ("loss", "val_loss", "grad_norm", "lr"):
            if key in b:
                assert abs(a[key] - b[key]) <= 1e-5 * abs(b[key]) + 1e-7, f"step {b['step']} {key}: {a[key]} vs {b[key]}"
    (tg, mg), (tr, mr) = ckpt(got_dir), ckpt(ref_dir)
    assert mg["step"] == mr["step"] and mg["config"] == mr["config"]
    assert sorted(tg) == sorted(tr)
    # the parameters and the AdamW moments (optim.m.*, optim.v.*): 1e-4 of each tensor, plus 1e-6 of its kind's
    # whole norm for tensors whose exact gradient is zero (a key bias: softmax ignores a shift of every score)
    kind = lambda name: name.split(".")[1] if name.startswith("optim.") else "w"  # noqa: E731
    total = {}
    for name, r in tr.items():
        total[kind(name)] = total.get(kind(name), 0.0) + float(np.sum(r.astype(np.float64) ** 2))
    for name, r in tr.items():
        err = np.linalg.norm(tg[name].astype(np.float64) - r)
        tol = 1e-4 * np.linalg.norm(r) + 1e-6 * np.sqrt(total[kind(name)])
        assert err <= tol, f"{name}: |diff| {err:.3e}, |ref| {np.linalg.norm(r):.3e}"


@pytest.mark.parametrize("n,arch,zero1", [(2, "gpt2", False), (4, "gpt2", False), (2, "llama", True),
                                          (4, "gpt2", True)])
def test_dp_equals_one_process(mixatt, single, tmp_path, n, arch, zero1):
    out = tmp_path / "run"
    r = mpirun(n, mixatt, *train_args(arch, out, "--dp", *(["--zero1"] if zero1 else [])))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_training(out, single(arch))


def test_dp_resume_with_other_ranks_and_sharding(mixatt, single, tmp_path):
    """10 steps on 4 ranks with ZeRO-1, then the rest on 2 ranks without: the uninterrupted run's results."""
    out = tmp_path / "run"
    r = mpirun(4, mixatt, *train_args("gpt2", out, "--dp", "--zero1", "--max-steps", "10"))
    assert r.returncode == 0, r.stderr
    assert ckpt(out)[1]["step"] == "10"
    r = mpirun(2, mixatt, "train", "--resume", out, "-o", out, "--dp", "-q")
    assert r.returncode == 0, r.stderr
    assert_same_training(out, single("gpt2"))


def test_dp_in_one_process_is_plain_training(mixatt, single, tmp_path):
    out = tmp_path / "run"
    r = run(mixatt, *train_args("gpt2", out, "--dp", "--zero1", quiet=False), env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert "--dp in a single process" in r.stderr and "mpirun -np N" in r.stderr
    drop = lambda lines: [{k: v for k, v in line.items() if k != "tok_per_s"} for line in lines]  # noqa: E731
    assert drop(log_lines(out)) == drop(log_lines(single("gpt2")))  # bit for bit


def errors(r):
    return [line for line in r.stderr.splitlines() if line.startswith("mixatt")]


def test_dp_bad_use(mixatt, tmp_path):
    r = mpirun(4, mixatt, *train_args("gpt2", tmp_path / "a", "--dp", "--set", "batch=6"), timeout=60)
    assert r.returncode == 2
    e = errors(r)
    assert len(e) == 1 and "--dp over 4 ranks: the global batch (batch = 6" in e[0] and "divisible" in e[0], r.stderr
    r = mpirun(2, mixatt, *train_args("gpt2", tmp_path / "b"), timeout=60)
    assert r.returncode == 2
    assert errors(r) == ["mixatt train: this job has 2 ranks (mpirun -np 2): add --dp to train data-parallel "
                         "(without it every rank would train the same model alone into the same files)"], r.stderr
    r = run(mixatt, *train_args("gpt2", tmp_path / "c", "--zero1"), env=ONE_THREAD)
    assert r.returncode == 2 and "--zero1 shards the optimizer of --dp training: add --dp" in r.stderr


def write_shard(path, tokens):
    path.write_bytes(struct.pack("<256i", 20240520, 1, len(tokens), *[0] * 253) +
                     np.asarray(tokens, dtype=np.uint16).tobytes())


def test_bad_data_on_one_rank_stops_every_rank(mixatt, tmp_path):
    """Each rank's data: two shards of 3 steps each (8 x 32 x 2 tokens a step); rank 1's second shard holds a
    token outside the vocabulary (64). Step 4 fails on rank 1: every rank stops with its message."""
    rng = np.random.default_rng(0)
    for name, bad in (("good", False), ("bad", True)):
        d = tmp_path / name
        d.mkdir()
        write_shard(d / "a.bin", rng.integers(0, 64, 3 * 512 + 1))
        second = rng.integers(0, 64, 3 * 512 + 1)
        if bad:
            second[100] = 1000
        write_shard(d / "b.bin", second)
    apps = [[mixatt, *train_args("gpt2", tmp_path / "run", "--dp", "--set", f"train_data={tmp_path / d}/*.bin")]
            for d in ("good", "bad")]
    r = mpirun(apps, timeout=60)
    assert r.returncode == 1
    want = (f"mixatt train: rank 1: {tmp_path}/bad/b.bin: token 1000 at index 100 (byte offset 1224) is outside "
            "the vocabulary (64)")
    assert errors(r) == [want], r.stderr
    assert [line["step"] for line in log_lines(tmp_path / "run")] == [1, 2, 3]


def rank_pids(mpirun_pid):
    """{rank: pid} of the processes mpirun started (its children, by OMPI_COMM_WORLD_RANK)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != mpirun_pid:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                for var in f.read().split(b"\0"):
                    if var.startswith(b"OMPI_COMM_WORLD_RANK="):
                        found[int(var.split(b"=")[1])] = int(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def test_killed_rank_ends_training(mixatt, tmp_path):
    out = tmp_path / "run"
    job = subprocess.Popen(argv(2, mixatt, *train_args("gpt2", out, "--dp", "--set", "steps=100000")),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        deadline = time.time() + 60
        while not (os.path.exists(out / "log.jsonl") and len(log_lines(out)) >= 3):
            assert time.time() < deadline and job.poll() is None, "training did not start"
            time.sleep(0.05)
        pids = rank_pids(job.pid)
        assert sorted(pids) == [0, 1], pids
        t0 = time.time()
        os.kill(pids[1], signal.SIGKILL)
        out_text, err_text = job.communicate(timeout=20)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert time.time() - t0 < 10
    assert job.returncode != 0
    assert "exited on signal 9" in out_text + err_text


def test_dp_zero1_under_asan(mixatt_asan, tmp_path):
    out = tmp_path / "run"
    args = train_args("gpt2", out, "--dp", "--zero1", "--set", "steps=4", "--set", "ckpt_every=2")
    r = mpirun(2, "-x", "ASAN_OPTIONS", mixatt_asan, *args, extra_env={"ASAN_OPTIONS": "detect_leaks=0"})
    assert r.returncode == 0, r.stderr  # Open MPI's own allocations would be reported as leaks
    assert "ERROR: AddressSanitizer" not in r.stderr
    assert [line["step"] for line in log_lines(out) if "loss" in line] == [1, 2, 3, 4]
