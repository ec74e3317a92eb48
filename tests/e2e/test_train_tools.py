"""The training tools around `mixatt train`: `mixatt tokenize -o` (text files to llm.c token shards, checked
against `mixatt tokenize --ids`), `mixatt compare` (a table of runs) and `mixatt plot` (loss curves as a PNG
through gnuplot), on a few tiny training runs of a few steps."""
import glob
import os
import re
import struct

import numpy as np
import pytest

from conftest import ROOT, run

DOCS = ["The quick brown fox jumps over the lazy dog.\n" * 3,
        "Pack my box with five dozen liquor jugs. 12345 — café\n",
        "Sphinx of black quartz, judge my vow!\n" * 5,
        "How vexingly quick daft zebras jump.\n" * 2,
        "<|im_start|>user\nhello<|im_end|>\n"]


def read_shard(path):
    raw = open(path, "rb").read()
    magic, version, n = struct.unpack("<3i", raw[:12])
    assert (magic, version) in ((20240520, 1), (20240801, 7)), (path, magic, version)
    dt = "<u2" if magic == 20240520 else "<u4"
    assert len(raw) == 1024 + n * np.dtype(dt).itemsize, path
    return magic, np.frombuffer(raw[1024:], dtype=dt).astype(np.int64)


def ids(mixatt, model, path):
    r = run(mixatt, "tokenize", "-m", model, "-f", path, "--ids")
    assert r.returncode == 0, r.stderr
    return [int(t) for t in r.stdout.split()]


def eos_of(mixatt, model):
    r = run(mixatt, "tokenize", "-m", model, "-p", "<|im_end|>")  # SmolLM2's EOS
    return int(r.stdout.split()[0])


def test_tokenize_writes_shards_equal_to_the_ids(mixatt_asan, mixatt, model, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(DOCS):
        (docs / f"doc{i}.txt").write_text(text)
    (docs / ".hidden").write_text("skipped")
    out = tmp_path / "out"
    out.mkdir()
    r = run(mixatt_asan, "tokenize", "-m", model, "-f", docs, "-o", out / "tiny", "--val-fraction", "0.3",
            "--shard-tokens", "40")
    assert r.returncode == 0, r.stderr
    assert "tok/s" in r.stderr and "ETA" in r.stderr and "100.0%" in r.stderr, r.stderr
    train = sorted(glob.glob(str(out / "tiny_train_*.bin")))
    val = sorted(glob.glob(str(out / "tiny_val_*.bin")))
    assert train and val and os.path.basename(train[0]) == "tiny_train_000000.bin"
    assert os.path.basename(val[0]) == "tiny_val_000000.bin"

    def tokens(paths):
        shards = [read_shard(p) for p in paths]
        assert all(m == 20240520 for m, _ in shards)  # a 49152-token vocabulary fits uint16
        assert all(len(t) == 40 for _, t in shards[:-1]) and 0 < len(shards[-1][1]) <= 40
        return list(np.concatenate([t for _, t in shards]))

    eos = eos_of(mixatt, model)
    expect = [[eos] + ids(mixatt, model, docs / f"doc{i}.txt") for i in range(len(DOCS))]
    got_train, got_val = tokens(train), tokens(val)
    # every document lands whole in exactly one split, in order, and the two splits together are all of them
    rest_train, rest_val = got_train, got_val
    in_val = []
    for doc in expect:
        if rest_val[:len(doc)] == doc:
            rest_val, in_val = rest_val[len(doc):], in_val + [True]
        else:
            assert rest_train[:len(doc)] == doc, "a document's tokens differ from `mixatt tokenize --ids`"
            rest_train, in_val = rest_train[len(doc):], in_val + [False]
    assert rest_train == [] and rest_val == []
    assert any(in_val) and not all(in_val)  # disjoint: some documents held out, the others trained on
    share = len(got_val) / (len(got_val) + len(got_train))
    assert 0.1 < share < 0.5, share


def test_tokenize_shard_errors_and_id_mode(mixatt, model, tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello world")
    r = run(mixatt, "tokenize", "-m", model, "-f", f, "-o", tmp_path / "missing" / "x")
    assert r.returncode == 1 and "missing" in r.stderr and "does not exist" in r.stderr, r.stderr
    r = run(mixatt, "tokenize", "-m", model, "-f", f, "-o", tmp_path / "x", "--val-fraction", "1.5")
    assert r.returncode == 2 and "--val-fraction" in r.stderr
    r = run(mixatt, "tokenize", "-m", model, "-f", tmp_path / "nope.txt", "-o", tmp_path / "x")
    assert r.returncode == 1 and "nope.txt" in r.stderr
    r = run(mixatt, "tokenize", "-m", model, "-f", f, "-f", f)  # several files need -o
    assert r.returncode == 2 and "-o" in r.stderr
    r = run(mixatt, "tokenize", "-m", model, "-f", f)  # the id-printing mode is unchanged
    assert r.returncode == 0 and re.fullmatch(r"\d+( \d+)*\n", r.stdout), r.stdout
    r = run(mixatt, "tokenize", "--help")
    assert r.returncode == 0 and "--val-fraction" in r.stdout and "--shard-tokens" in r.stdout


def test_tokenized_shards_train(mixatt, model, tmp_path):
    """The shards feed `mixatt train` (vocab = the tokenizer's, read as train_data / val_data globs)."""
    text = tmp_path / "t.txt"
    text.write_text("".join(DOCS) * 4)
    r = run(mixatt, "tokenize", "-m", model, "-f", text, "--doc-sep", "\n", "-o", tmp_path / "d", "-q")
    assert r.returncode == 0, r.stderr
    r = run(mixatt, "train", "-c", os.path.join(ROOT, "configs", "train-tiny-gpt2.json"), "--set", "vocab=49152",
            "--set", "d_model=16", "--set", "n_head=2", "--set", "n_kv_head=2", "--set", "d_ff=32",
            "--set", "seq=8", "--set", "batch=2", "--set", "steps=2", "--set", "val_every=2",
            "--set", "val_batches=1", "--set", f"train_data={tmp_path}/d_train_*.bin",
            "--set", f"val_data={tmp_path}/d_val_*.bin", "-o", tmp_path / "run", "-q")
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def runs(mixatt, tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    out = []
    for name in ("gpt2", "llama"):
        run_dir = d / f"tiny-{name}"
        r = run(mixatt, "train", "-c", os.path.join(ROOT, "configs", f"train-tiny-{name}.json"),
                "--set", "steps=4", "--set", "val_every=2", "--set", "batch=2", "-o", run_dir, "-q")
        assert r.returncode == 0, r.stderr
        out.append(run_dir)
    return out


def test_compare_tables_the_runs(mixatt_asan, runs):
    r = run(mixatt_asan, "compare", *runs)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("| run | plan | params |") and len(lines) == 4, r.stdout
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    gpt2, llama = rows["tiny-gpt2"], rows["tiny-llama"]
    assert gpt2[1] == "G,G" and llama[1] == "G,S16,S16@1,G"
    for row in (gpt2, llama):
        assert all(float(row[i]) > 0 for i in (3, 4, 5)) and row[6] == "512"  # 4 steps x 2 x 64 tokens
    # KV bytes per token, fp32 at max_ctx 64: GPT-2 2 layers x 2 x 64; Llama G + S16 ring (16/64) + reader + G
    assert gpt2[8] == str(2 * 2 * 64 * 4)
    assert llama[8] == str(int((1 + 16 / 64 + 0 + 1) * 2 * 2 * 16 * 4))
    r = run(mixatt_asan, "compare", runs[0], runs[0].parent / "nope")
    assert r.returncode == 1 and "nope" in r.stderr


def test_plot_writes_a_png(mixatt_asan, runs, tmp_path):
    png = tmp_path / "loss.png"
    r = run(mixatt_asan, "plot", *runs, "-o", png, "--title", "tiny 'runs'")
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run(mixatt_asan, "plot", *runs, "-o", tmp_path / "x.png", env={"PATH": str(tmp_path)})
    assert r.returncode == 1 and "gnuplot-nox" in r.stderr, r.stderr
