"""`mixatt train` end to end: gradients and AdamW steps against PyTorch, resume, and bad input.

The references are tests/fixtures/train/ (scripts/fixtures_train.py): tiny GPT-2 (tied embeddings, learned
positions), Llama (GQA), Mistral (MQA, sliding window) and Mixtral (top-2 of 4 experts, with the router's
load-balancing loss as transformers computes it) models from Hugging Face transformers, a fixed batch
as a token shard and PyTorch's gradients and 10 AdamW losses in float64. mixatt runs with the fixture's
weights (init) and shard (train_data); the hidden --dump-grads FILE writes the first step's gradients.
Gradients: ||mixatt - torch|| <= 1e-4 ||torch|| per tensor, plus 1e-8 of the whole gradient's norm for
tensors whose exact gradient is zero (a key bias: softmax ignores a shift shared by every score)."""
import json
import os
import struct

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from conftest import FIXTURES, ROOT, run

TRAIN = os.path.join(FIXTURES, "train")
CASES = ["gpt2", "llama", "mistral", "mixtral"]


def fixture_args(case):
    d = os.path.join(TRAIN, case)
    return ["-c", os.path.join(d, "config.json"), "--set", f"init={d}/init.safetensors",
            "--set", f"train_data={d}/batch.bin"]


def log_lines(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def metadata(path):
    with safe_open(path, "np") as f:
        return f.metadata()


def assert_grads_close(got, ref):
    total = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in ref.values()))
    assert sorted(got) == sorted(ref)
    for name, r in ref.items():
        g = got[name].astype(np.float64)
        assert g.shape == r.shape, name
        err = np.linalg.norm(g - r)
        assert err <= 1e-4 * np.linalg.norm(r) + 1e-8 * total, \
            f"{name}: |diff| {err:.3e}, |torch| {np.linalg.norm(r):.3e}"


@pytest.mark.parametrize("case", CASES)
def test_gradients_and_steps_match_pytorch(mixatt, tmp_path, case):
    grads = tmp_path / "grads.safetensors"
    r = run(mixatt, "train", *fixture_args(case), "-o", tmp_path / "run", "--dump-grads", grads, "-q")
    assert r.returncode == 0, r.stderr
    ref_path = os.path.join(TRAIN, case, "ref.safetensors")
    ref_meta = metadata(ref_path)
    loss = float(metadata(grads)["loss"])
    assert abs(loss - float(ref_meta["loss"])) <= 1e-4 * float(ref_meta["loss"])
    assert_grads_close(load_file(grads), load_file(ref_path))
    losses = [line["loss"] for line in log_lines(tmp_path / "run") if "loss" in line]
    ref_losses = json.loads(ref_meta["losses"])
    assert len(losses) == len(ref_losses) == 10
    for step, (a, b) in enumerate(zip(losses, ref_losses)):
        assert abs(a - b) <= 1e-4 * b, f"step {step + 1}: mixatt {a}, torch {b}"


def test_gradient_accumulation_equals_the_full_batch(mixatt, tmp_path):
    """batch 1 x 2 accumulated reads the same two rows as batch 2 (the loader walks the shard in order)."""
    full, accum = tmp_path / "full.safetensors", tmp_path / "accum.safetensors"
    args = [*fixture_args("llama"), "--set", "steps=1", "-q"]
    assert run(mixatt, "train", *args, "-o", tmp_path / "a", "--dump-grads", full).returncode == 0
    r = run(mixatt, "train", *args, "--set", "batch=1", "--set", "grad_accum=2", "-o", tmp_path / "b",
            "--dump-grads", accum)
    assert r.returncode == 0, r.stderr
    assert abs(float(metadata(full)["loss"]) - float(metadata(accum)["loss"])) < 1e-6
    a, b = load_file(full), load_file(accum)
    for name in a:
        assert np.linalg.norm(a[name] - b[name]) <= 1e-5 * np.linalg.norm(a[name]) + 1e-9, name


TINY = ["--set", "arch=llama", "--set", "vocab=32", "--set", "d_model=32", "--set", "n_layer=3",
        "--set", "n_head=4", "--set", "n_kv_head=2", "--set", "d_ff=64", "--set", "max_ctx=32", "--set", "seq=16",
        "--set", "batch=2", "--set", "plan=G,S,S@1", "--set", "window=6", "--set", "train_data=synthetic:recall",
        "--set", "val_every=2", "--set", "val_batches=2", "--set", "steps=6", "--set", "warmup=2"]


def test_resume_is_bit_identical(mixatt, tmp_path):
    cfg = os.path.join(ROOT, "configs", "train-tiny-llama.json")
    straight, split = tmp_path / "straight", tmp_path / "split"
    r = run(mixatt, "train", "-c", cfg, *TINY, "-o", straight, "-q")
    assert r.returncode == 0, r.stderr
    r = run(mixatt, "train", "-c", cfg, *TINY, "-o", split, "--max-steps", "3", "-q")
    assert r.returncode == 0, r.stderr
    assert metadata(split / "checkpoint.safetensors")["step"] == "3"
    r = run(mixatt, "train", "--resume", split, "-o", split, "-q")
    assert r.returncode == 0, r.stderr
    a = (straight / "checkpoint.safetensors").read_bytes()
    b = (split / "checkpoint.safetensors").read_bytes()
    assert a == b, "the resumed run's weights or optimizer state differ"
    def results(d):  # every logged value but the speed
        return [{k: v for k, v in line.items() if k != "tok_per_s"} for line in log_lines(d)]
    assert results(straight) == results(split)
    assert any("val_loss" in line for line in log_lines(straight))
    assert metadata(split / "checkpoint.safetensors")["plan"] == "G,S6,S6@1"


def test_example_configs_run(mixatt, tmp_path):
    for name in ("train-tiny-gpt2.json", "train-tiny-llama.json"):
        out = tmp_path / name
        r = run(mixatt, "train", "-c", os.path.join(ROOT, "configs", name), "--set", "steps=2",
                "--set", "val_every=2", "--set", "batch=2", "-o", out)
        assert r.returncode == 0, r.stderr
        assert "step 2/2" in r.stderr and "ETA" in r.stderr and "tok/s" in r.stderr
        lines = log_lines(out)
        assert [line["step"] for line in lines if "loss" in line] == [1, 2]
        assert any("val_loss" in line for line in lines)


def write_shard(path, tokens, magic=20240520, version=1, count=None):
    hdr = [magic, version, len(tokens) if count is None else count] + [0] * 253
    dt = "<u2" if magic == 20240520 else "<u4"
    path.write_bytes(struct.pack("<256i", *hdr) + np.asarray(tokens, dtype=dt).tobytes())


def train_on(binary, tmp_path, shard, *extra):
    return run(binary, "train", *fixture_args("gpt2"), "--set", f"train_data={shard}", "--set", "steps=1",
               *extra, "-o", tmp_path / "run", "-q")


def test_bad_shards_are_named(mixatt_asan, tmp_path):
    bad = tmp_path / "bad.bin"
    write_shard(bad, range(40), magic=12345)
    r = train_on(mixatt_asan, tmp_path, bad)
    assert r.returncode == 1 and str(bad) in r.stderr and "bad magic 12345" in r.stderr, r.stderr

    big = tmp_path / "big.bin"
    write_shard(big, [1] * 20 + [500] + [1] * 20)  # vocab 128
    r = train_on(mixatt_asan, tmp_path, big)
    assert r.returncode == 1 and str(big) in r.stderr, r.stderr
    assert "token 500 at index 20 (byte offset 1064)" in r.stderr and "vocabulary" in r.stderr

    short = tmp_path / "short.bin"
    write_shard(short, range(40), count=50)
    r = train_on(mixatt_asan, tmp_path, short)
    assert r.returncode == 1 and "announces 50 tokens" in r.stderr, r.stderr

    wide = tmp_path / "wide.bin"  # uint32 tokens (llm.c's Llama-3 shards) are read too
    write_shard(wide, list(range(40)), magic=20240801, version=7)
    r = train_on(mixatt_asan, tmp_path, wide)
    assert r.returncode == 0, r.stderr

    r = train_on(mixatt_asan, tmp_path, tmp_path / "none*.bin")
    assert r.returncode == 1 and "no token shard matches" in r.stderr, r.stderr


def test_unknown_config_key_is_named(mixatt, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"arch": "gpt2", "learning_rate": 0.1}))
    r = run(mixatt, "train", "-c", cfg, "-o", tmp_path / "run")
    assert r.returncode == 2 and "unknown config key 'learning_rate'" in r.stderr and str(cfg) in r.stderr
    r = run(mixatt, "train", *fixture_args("gpt2"), "--set", "lr_max=3", "-o", tmp_path / "run")
    assert r.returncode == 2 and "unknown config key 'lr_max'" in r.stderr
    r = run(mixatt, "train", *fixture_args("gpt2"), "--set", "batch=two", "-o", tmp_path / "run")
    assert r.returncode == 2 and "'batch' expects a number" in r.stderr
    r = run(mixatt, "train", *fixture_args("gpt2"), "--set", "plan=G,G@3", "-o", tmp_path / "run")
    assert r.returncode == 2 and "layer 1 reads layer 3" in r.stderr, r.stderr
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(mixatt, tmp_path):
    out = tmp_path / "run"
    r = run(mixatt, "train", *fixture_args("gpt2"), "--set", "lr=1e30", "--set", "warmup=0",
            "--set", "ckpt_every=1", "-o", out, "-q")
    assert r.returncode == 1, r.stderr
    assert "stopping" in r.stderr and "last good checkpoint" in r.stderr, r.stderr
    good = int(metadata(out / "checkpoint.safetensors")["step"])
    steps = [line["step"] for line in log_lines(out) if "loss" in line]
    assert good >= 1 and steps[-1] == good  # nothing logged or saved past the last finite step
    assert f"(step {good})" in r.stderr


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(mixatt, tmp_path):
    """The file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored so writes fail with EFBIG as on a full disk) lets
    the log grow but not a new checkpoint: the run stops with a message, the previous checkpoint is untouched and
    no temporary file is left behind."""
    import resource
    import signal
    import subprocess
    cfg = os.path.join(ROOT, "configs", "train-tiny-llama.json")
    out = tmp_path / "run"
    r = run(mixatt, "train", "-c", cfg, *TINY, "-o", out, "--max-steps", "3", "-q")
    assert r.returncode == 0, r.stderr
    ckpt = out / "checkpoint.safetensors"
    before = ckpt.read_bytes()
    limit = len(before) // 2

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run([mixatt, "train", "--resume", str(out), "-o", str(out), "-q"], capture_output=True,
                       text=True, timeout=600, env=env, preexec_fn=small_disk)
    assert r.returncode != 0, "the checkpoint write should have failed"
    assert f"{ckpt}: write failed" in r.stderr, r.stderr
    assert ckpt.read_bytes() == before, "the previous checkpoint changed"
    assert sorted(p.name for p in out.iterdir() if "tmp" in p.name) == [], list(out.iterdir())
    assert metadata(ckpt)["step"] == "3"


@pytest.mark.parametrize("task", ["copy", "reverse", "farcopy", "recall"])
def test_synthetic_tasks_are_what_they_say(mixatt, tmp_path, task):
    """The shards of synthetic:TASK, read back with numpy, hold documents whose answer follows from the rule:
    the copy equals the span, reversed for reverse, after filler for farcopy; the recalled value is the one
    stored with the asked key."""
    seq, out = 64, tmp_path / "run"
    r = run(mixatt, "train", "-c", os.path.join(ROOT, "configs", "train-tiny-llama.json"), "--set", f"seq={seq}",
            "--set", f"train_data=synthetic:{task}", "--set", "steps=2", "--set", "batch=4", "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    shard = sorted((out / "data").glob("train_*.bin"))[0]
    toks = np.fromfile(shard, dtype="<u2", offset=1024)
    docs = [toks[i:i + seq] for i in range(0, len(toks) - seq + 1, seq)]
    assert len(docs) >= 4
    for d in docs:
        assert d[0] == 0
        if task in ("copy", "reverse", "farcopy"):
            sep = int(np.where(d == 1)[0][0])
            n = seq - 1 - sep
            span = d[1:1 + n]
            want = span[::-1] if task == "reverse" else span
            assert np.array_equal(d[sep + 1:], want), d
            assert (span >= 4).all()
            if task == "farcopy":
                assert n == (seq - 2) // 8 and (d[1 + n:sep] == 3).all() and sep - n > seq // 2
            else:
                assert sep == 1 + n
        else:
            q = int(np.where(d == 2)[0][-1])
            key, val = d[q + 1], d[q + 2]
            pairs = d[1:q]
            pairs = pairs[pairs != 3].reshape(-1, 2)
            assert list(pairs[:, 0]).count(key) == 1 and pairs[list(pairs[:, 0]).index(key), 1] == val


def test_device_and_precision_flags_are_checked(mixatt, tmp_path):
    """--device and --precision: bad values and impossible combinations are refused before any work (the GPU
    path itself is checked on a GPU machine by tests/cuda/check_train_gpu.py)."""
    r = run(mixatt, "train", *fixture_args("gpt2"), "-o", tmp_path / "a", "--device", "tpu")
    assert r.returncode == 2 and "--device is cpu or cuda" in r.stderr
    r = run(mixatt, "train", *fixture_args("gpt2"), "-o", tmp_path / "b", "--precision", "fp8")
    assert r.returncode == 2 and "--precision is bf16 or fp32" in r.stderr
    r = run(mixatt, "train", *fixture_args("gpt2"), "-o", tmp_path / "c", "--precision", "bf16")
    assert r.returncode != 0 and "needs --device cuda" in r.stderr
    r = run(mixatt, "train", *fixture_args("gpt2"), "-o", tmp_path / "d", "--zero1")
    assert r.returncode == 2 and "add --dp" in r.stderr


def test_profile_prints_where_the_time_goes(mixatt, tmp_path):
    """--profile: a table of the training ops a step calls, their calls per step and time, after the run; the
    losses are those of the same run without it (timing only syncs, it changes no result)."""
    cfg = os.path.join(ROOT, "configs", "train-tiny-llama.json")
    args = ["-c", cfg, *TINY, "--set", "steps=3"]
    r = run(mixatt, "train", *args, "-o", tmp_path / "p", "-q", "--profile")
    assert r.returncode == 0, r.stderr
    assert "profile over 2 steps (the first left out)" in r.stderr
    rows = {}
    for ln in r.stderr.splitlines():
        f = ln.split()
        if ln.startswith("  ") and len(f) == 4 and f[3].endswith("%"):
            rows[f[0]] = (float(f[1]), float(f[2]), float(f[3][:-1]))
    # TINY's llama blocks: rmsnorm, rope, attention, matmuls and swiglu, forward and backward; AdamW once a step
    for op in ("rmsnorm_fwd", "rope", "attn_fwd", "matmul_fwd", "swiglu_fwd", "head_xent", "attn_bwd",
               "matmul_bwd", "adamw"):
        assert op in rows, (op, r.stderr)
    assert rows["adamw"][0] == 1.0 and rows["head_xent"][0] == 1.0
    assert rows["attn_fwd"][0] == 3 and rows["attn_bwd"][0] == 3  # n_layer=3, validation passes not counted
    assert abs(sum(v[2] for v in rows.values()) - 100.0) < 1.0
    plain = run(mixatt, "train", *args, "-o", tmp_path / "q", "-q")
    assert plain.returncode == 0, plain.stderr
    loss = lambda d: [x.get("loss", x.get("val_loss")) for x in log_lines(d)]
    assert loss(tmp_path / "p") == loss(tmp_path / "q")
