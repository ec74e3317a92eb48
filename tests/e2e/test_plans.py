"""Attention plans on the real model: for every preset (windows shorter than the prompt, shared caches),
decoding token by token and prefilling in chunks give the prefill's logits; a plan in which every layer reads
its own cache is the standard model bit for bit; applying a plan says the model was not trained with it."""
import json
import os

import numpy as np
import pytest

from conftest import FIXTURES, run

IDS = json.load(open(os.path.join(FIXTURES, "smollm2_logits.json")))["cases"][1]["ids"]  # 80 tokens
PRESETS = ["standard", "ma", "ma-endslide", "ma-offset", "ma-pairs", "ma-offset-slideshare"]


def logits(binary, model, tmp_path, *args):
    out = tmp_path / "l.f32"
    r = run(binary, "logits", "-m", model, "--ids", " ".join(map(str, IDS)), "-o", out, "--exact", *args)
    assert r.returncode == 0, r.stderr
    return np.fromfile(out, dtype="<f4").reshape(len(IDS), -1).astype(np.float64), r.stderr


def rel(a, b):
    return (np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)).max()


@pytest.mark.parametrize("plan", PRESETS)
def test_decode_and_chunks_equal_prefill(mixatt, model, tmp_path, plan):
    args = ("--plan", plan, "--window", 12)  # windows of 12 keys: the 80-token prompt runs far past them
    prefill, _ = logits(mixatt, model, tmp_path, *args)
    decode, _ = logits(mixatt, model, tmp_path, *args, "--decode")
    chunked, _ = logits(mixatt, model, tmp_path, *args, "--chunk", 5)
    # decode (fp32 GEMV) and prefill (sgemm) sum in different orders; a model far off its training plan (windows
    # of 12) amplifies that rounding to ~2e-4. A wrong window, slot or shared cache moves logits by ~1e-1.
    assert rel(decode, prefill) <= 1e-3
    assert rel(chunked, prefill) <= 1e-3


def test_windows_change_the_result_only_past_the_window(mixatt, model, tmp_path):
    full, _ = logits(mixatt, model, tmp_path)
    windowed, note = logits(mixatt, model, tmp_path, "--plan", "S*30", "--window", 16)
    assert "not trained with" in note
    per_pos = np.linalg.norm(windowed - full, axis=1) / np.linalg.norm(full, axis=1)
    assert per_pos[:16].max() <= 1e-5, "positions inside the window see every key: identical"
    assert per_pos[16:].max() > 1e-3, "positions past the window lose keys"


def test_own_cache_plan_is_the_standard_model_bit_for_bit(mixatt, model, tmp_path):
    standard, note = logits(mixatt, model, tmp_path)
    explicit, note2 = logits(mixatt, model, tmp_path, "--plan", "G*30")
    assert (standard == explicit).all()
    assert "not trained with" not in note + note2


def test_shared_cache_reads_the_writer(mixatt, model, tmp_path):
    # layer 1 reading layer 0's cache differs from the model, but sharing never looks at positions ahead
    shared, _ = logits(mixatt, model, tmp_path, "--plan", "G,G@0," + ",".join(["G"] * 28))
    decode, _ = logits(mixatt, model, tmp_path, "--plan", "G,G@0," + ",".join(["G"] * 28), "--decode")
    assert rel(decode, shared) <= 1e-3


@pytest.mark.parametrize("plan,words", [
    ("G*29", "names 29 layers, the model has 30"),
    ("G,G@5," + ",".join(["G"] * 28), "layer 1 reads layer 5's cache, which is written later"),
    ("nope-preset", "unknown preset 'nope-preset'"),
])
def test_bad_plans_fail_before_any_work(mixatt, model, plan, words):
    r = run(mixatt, "run", "-m", model, "-p", "hi", "--plan", plan)
    assert r.returncode == 1 and words in r.stderr, r.stderr


def test_window_larger_than_context(mixatt, model):
    r = run(mixatt, "run", "-m", model, "-p", "hi", "--plan", "S*30", "--window", 100000)
    assert r.returncode == 1 and "larger than the context" in r.stderr, r.stderr


def test_plan_stored_by_convert_is_read_back(mixatt, model, tmp_path):
    out = tmp_path / "ma.gguf"
    r = run(mixatt, "convert", "-m", model, "--plan", "ma-offset", "--window", 24, "-o", out)
    assert r.returncode == 0, r.stderr
    applied, note = logits(mixatt, model, tmp_path, "--plan", "ma-offset", "--window", 24)
    stored, note2 = logits(mixatt, out, tmp_path)
    assert "not trained with" in note and "not trained with" not in note2
    assert (applied == stored).all()
    info = run(mixatt, "info", "-m", out)
    assert "S24,S24@0" in info.stdout and "G@6" in info.stdout
