"""XAttention (`--attn xattn`, `--attn star+xattn`; src/attention/xattn.c, src/backend/cpu/cpu_xattn.c) end to
end on SmolLM2 (the op itself is checked against numpy in tests/unit/test_xattn.c):
- τ = 1 takes the block-sparse path and its logits equal dense `mixatt logits` exactly;
- τ < 1 attends fewer blocks (run prints the measured density below 1) and changes the logits a little;
- Star + XAttention with τ = 1 equals Star exactly (phase 1 is the only part XAttention touches);
- bad values and XAttention flags without --attn xattn fail with messages that say why."""
import re

import numpy as np
import pytest

from conftest import run

IDS = " ".join(str((i * 7919) % 40000 + 100) for i in range(280))  # 3 blocks of 128 (the last 24 tokens)


def logits(binary, model, tmp_path, *extra, name="out"):
    out = tmp_path / f"{name}.f32"
    r = run(binary, "logits", "-m", model, "--ids", IDS, "-o", out, "--exact", *extra)
    assert r.returncode == 0, r.stderr
    return np.fromfile(out, dtype="<f4")


def test_tau_one_equals_dense_exactly(mixatt, model, tmp_path):
    dense = logits(mixatt, model, tmp_path, name="dense")
    x1 = logits(mixatt, model, tmp_path, "--attn", "xattn", "--xattn-threshold", "1", name="x1")
    assert np.array_equal(dense, x1)
    xs = logits(mixatt, model, tmp_path, "--attn", "xattn", "--xattn-threshold", "0.3", "--xattn-stride", "16",
                name="xs")
    rel = np.linalg.norm(xs - dense) / np.linalg.norm(dense)
    assert 0 < rel < 0.5, rel


def test_run_prints_density(mixatt, model):
    r = run(mixatt, "run", "-m", model, "--ids", IDS, "-n", "2", "--attn", "xattn", "--xattn-threshold", "0.3")
    assert r.returncode == 0, r.stderr
    m = re.search(r"\[xattn: stride 8, threshold 0.3: density ([0-9.]+) of the causal blocks\]", r.stderr)
    assert m, r.stderr
    assert 0 < float(m.group(1)) < 1


def test_star_xattn_tau_one_equals_star(mixatt, model, tmp_path):
    star = ["--block", "128", "--anchor", "64", "--query", "20"]
    a = logits(mixatt, model, tmp_path, "--attn", "star", *star, name="star")
    b = logits(mixatt, model, tmp_path, "--attn", "star+xattn", "--xattn-threshold", "1", *star, name="sx")
    assert np.array_equal(a, b)


def test_under_asan(mixatt_asan, model):
    """Attaching and freeing the state, with Star's scratch sessions too (short: ASan is slow; the op's
    selection and sparse attention run under ASan in test_unit)."""
    ids = " ".join(IDS.split()[:140])
    for extra in (["--attn", "xattn"], ["--attn", "star+xattn", "--block", "128", "--query", "4"]):
        r = run(mixatt_asan, "run", "-m", model, "--ids", ids, "-n", "1", "--xattn-threshold", "0.5", *extra)
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args,message", [
    (["--attn", "xattn", "--xattn-threshold", "0"], "--xattn-threshold 0 is outside (0, 1]"),
    (["--attn", "xattn", "--xattn-threshold", "1.5"], "--xattn-threshold 1.5 is outside (0, 1]"),
    (["--attn", "xattn", "--xattn-stride", "7"], "--xattn-stride 7 does not divide the block of 128"),
    (["--attn", "xattn", "--xattn-stride", "0"], "--xattn-stride expects an integer in 1..128"),
    (["--xattn-stride", "8"], "XAttention options: add --attn xattn"),
])
def test_refusals(mixatt, model, tmp_path, args, message):
    r = run(mixatt, "run", "-m", model, "-p", "hello", "-n", "1", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
