"""End-to-end checks of the MoE, MLA and MKA blocks through `mixatt logits` on the tiny models of
tests/fixtures/blocks (scripts/fixtures_blocks.py): every position against Hugging Face transformers (Mixtral,
DeepSeek-V2) or scripts/mka_reference.py (MKA, FastMKA, chosen with --attn), relative L2 <= 1e-4, through one
prefill, token-by-token decode and chunked prefills; MLA's absorbed form equal to its explicit form (--mla).
The same checks run through the C API in tests/unit/test_blocks.c, which also counts routed tokens."""
import json
import os

import numpy as np
import pytest

from conftest import FIXTURES, run

BLOCKS = os.path.join(FIXTURES, "blocks")
CASES = {c["name"]: c for c in json.load(open(os.path.join(BLOCKS, "cases.json")))["cases"]}
MODES = {"prefill": [], "decode": ["--decode"], "chunked": ["--chunk", "7"]}


def logits(binary, case, tmp_path, *extra):
    out = tmp_path / "logits.f32"
    attn = ["--attn", case["attn"]] if "attn" in case else []
    r = run(binary, "logits", "-m", os.path.join(BLOCKS, case["gguf"]), "--ids", " ".join(map(str, case["ids"])),
            "-o", out, "--exact", *attn, *extra)
    assert r.returncode == 0, r.stderr
    return np.fromfile(out, dtype="<f4").reshape(len(case["ids"]), -1).astype(np.float64)


def reference(case):
    ref = np.fromfile(os.path.join(BLOCKS, case["name"] + ".logits.f32"), dtype="<f4")
    return ref.reshape(len(case["ids"]), -1).astype(np.float64)


def rel_l2(a, b):
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", ["mixtral", "deepseek2", "deepseek2_noq", "mka", "fastmka"])
def test_logits_match_reference(mixatt, tmp_path, name, mode):
    case = CASES[name]
    err = rel_l2(logits(mixatt, case, tmp_path, *MODES[mode]), reference(case))
    assert err.max() <= 1e-4, f"{name} {mode}: relative L2 per position: max {err.max():.2e} at {err.argmax()}"


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", ["deepseek2", "deepseek2_noq"])
def test_mla_absorbed_equals_explicit(mixatt, tmp_path, name, mode):
    case = CASES[name]
    explicit = logits(mixatt, case, tmp_path, "--mla", "explicit", *MODES[mode])
    absorbed = logits(mixatt, case, tmp_path, "--mla", "absorbed", *MODES[mode])
    assert rel_l2(absorbed, explicit).max() <= 1e-5
    assert rel_l2(explicit, reference(case)).max() <= 1e-4


@pytest.mark.parametrize("name", ["mixtral", "deepseek2", "mka"])
def test_blocks_clean_under_asan(mixatt_asan, tmp_path, name):
    case = CASES[name]
    err = rel_l2(logits(mixatt_asan, case, tmp_path, "--chunk", "7"), reference(case))
    assert err.max() <= 1e-4
