"""`mixatt train` with MLA, MKA/FastMKA, mixtures of experts and muP, end to end; its checkpoints under
`mixatt run` / `mixatt logits`; the muP coordinate check.

The gradients themselves are checked against finite differences in tests/unit/test_train_grad.c. Here:
- every kind trains (the loss falls) and runs under ASan;
- a trained checkpoint loads as an inference model (src/model/load_ckpt.c) whose logits, computed by the
  independent inference forward pass (src/model, src/attention), give the same cross-entropy on a sequence
  as the training forward pass reports for it (--dump-grads' loss), within 1e-4: config, plan, tensor
  layout, RoPE layout, the expert stacking and the folding of muP's scales all have to agree;
- `mixatt run` on a run directory takes --ids and streams ids; a prompt without a tokenizer is an error;
- muP's coordinate check: the RMS of the last layer's output grows with width under the standard
  parameterization and stays flat under muP (scripts/coord_check.py)."""
import json
import os
import re as re_mod
import struct
import sys

import numpy as np
import pytest
from safetensors import safe_open

from conftest import ROOT, run

sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import coord_check  # noqa: E402
from train_kinds import BASE, KINDS  # noqa: E402


def write_config(tmp_path, kind, **over):
    cfg = dict(BASE, **KINDS[kind], **over)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def write_shard(path, tokens):
    path.write_bytes(struct.pack("<256i", 20240520, 1, len(tokens), *[0] * 253) +
                     np.asarray(tokens, dtype="<u2").tobytes())


def losses(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(x) for x in f if '"loss"' in x]


def train(binary, tmp_path, kind, **over):
    out = tmp_path / "run"
    r = run(binary, "train", "-c", write_config(tmp_path, kind, **over), "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_trains(mixatt, tmp_path, kind):
    out = train(mixatt, tmp_path, kind, steps=100)
    lines = losses(out)
    first, last = np.mean([x["loss"] for x in lines[:5]]), np.mean([x["loss"] for x in lines[-5:]])
    assert last < first - 0.15, f"loss {first:.3f} → {last:.3f}"
    if "n_expert" in KINDS[kind]:  # E Σ f_e P_e with Σ f_e = k, f_e <= 1, Σ P_e = 1: in (0, E]
        assert all(0 < x["aux"] <= KINDS[kind]["n_expert"] for x in lines), [x["aux"] for x in lines]


@pytest.mark.parametrize("kind", ["mla", "mka_gpt2", "fastmka", "moe", "mup_mla_moe"])
def test_kind_under_asan(mixatt_asan, tmp_path, kind):
    out = train(mixatt_asan, tmp_path, kind, steps=2, seq=16, batch=2, val_every=1, val_batches=1)
    assert len(losses(out)) == 2


@pytest.mark.parametrize("kind", list(KINDS))
def test_checkpoint_runs_as_trained(mixatt, tmp_path, kind):
    """The inference model's cross-entropy on a sequence equals the training forward's loss on it."""
    out = train(mixatt, tmp_path, kind, steps=6)
    rng = np.random.default_rng(3)
    T = 24
    seq = rng.integers(0, BASE["vocab"], T + 1)
    write_shard(tmp_path / "seq.bin", seq)
    grads = tmp_path / "grads.safetensors"
    r = run(mixatt, "train", "-c", write_config(tmp_path, kind), "--set",
            f"init={out}/checkpoint.safetensors", "--set", f"train_data={tmp_path}/seq.bin", "--set", "batch=1",
            "--set", f"seq={T}", "--set", "steps=1", "--set", "moe_aux_weight=0", "--dump-grads", grads,
            "-o", tmp_path / "eval", "-q")
    assert r.returncode == 0, r.stderr
    with safe_open(str(grads), "np") as f:
        train_loss = float(f.metadata()["loss"])
    r = run(mixatt, "logits", "-m", out, "--ids", " ".join(map(str, seq[:T])), "-o", tmp_path / "l.f32")
    assert r.returncode == 0, r.stderr
    logits = np.fromfile(tmp_path / "l.f32", dtype=np.float32).astype(np.float64).reshape(T, BASE["vocab"])
    mx = logits.max(axis=1, keepdims=True)
    logp = logits - mx - np.log(np.exp(logits - mx).sum(axis=1, keepdims=True))
    ce = -logp[np.arange(T), seq[1:]].mean()
    assert abs(ce - train_loss) <= 1e-4 * train_loss, f"inference {ce:.7f}, training {train_loss:.7f}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_recompute_gives_the_same_bits(mixatt, tmp_path, kind):
    """--recompute runs each layer's forward again in the backward with the same ops on the same inputs: the first
    step's gradients, every loss and the checkpoint after 3 AdamW steps are byte for byte those of the run that
    kept every activation."""
    outs, mib = {}, {}
    for flags in ((), ("--recompute",)):
        out = tmp_path / ("re" if flags else "keep")
        r = run(mixatt, "train", "-c", write_config(tmp_path, kind), "--set", "steps=3", "--set", "batch=2",
                "-o", out, "--dump-grads", f"{out}.grads", *flags)
        assert r.returncode == 0, r.stderr
        outs[bool(flags)] = out
        mib[bool(flags)] = float(re_mod.search(r"activations ([0-9.]+) MiB", r.stderr).group(1))
    assert mib[True] < mib[False], f"activations: {mib[True]} MiB with --recompute, {mib[False]} without"
    keep, re = outs[False], outs[True]
    assert (tmp_path / "keep.grads").read_bytes() == (tmp_path / "re.grads").read_bytes()
    assert [x["loss"] for x in losses(keep)] == [x["loss"] for x in losses(re)]
    with safe_open(str(re / "checkpoint.safetensors"), "np") as f:
        assert json.loads(f.metadata()["config"])["recompute"] is True
    with safe_open(str(keep / "checkpoint.safetensors"), "np") as a, \
            safe_open(str(re / "checkpoint.safetensors"), "np") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for name in a.keys():
            assert a.get_tensor(name).tobytes() == b.get_tensor(name).tobytes(), name


def test_run_directory_with_ids(mixatt, model, tmp_path):
    out = train(mixatt, tmp_path, "moe", steps=3)
    r = run(mixatt, "run", "-m", out, "--ids", "1 2 3 4", "-n", "5", "-q")
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    assert len(ids) == 5 and all(0 <= int(x) < BASE["vocab"] for x in ids), r.stdout
    r2 = run(mixatt, "run", "-m", out / "checkpoint.safetensors", "--ids", "1,2,3,4", "-n", "5", "-q")
    assert r2.returncode == 0 and r2.stdout == r.stdout, r2.stderr  # greedy: the same ids
    r = run(mixatt, "run", "-m", out, "-p", "hello", "-n", "2")
    assert r.returncode != 0 and "no tokenizer" in r.stderr
    r = run(mixatt, "run", "-m", out, "--ids", "1 32", "-n", "2")
    assert r.returncode != 0 and "not a token id" in r.stderr
    r = run(mixatt, "run", "-m", out, "--tokenizer", model, "-p", "hello", "-n", "2")
    assert r.returncode != 0 and "49152 tokens" in r.stderr
    from safetensors.numpy import save_file
    save_file({"w": np.zeros(4, np.float32)}, str(tmp_path / "other.safetensors"))
    r = run(mixatt, "run", "-m", tmp_path / "other.safetensors", "--ids", "1", "-n", "1")
    assert r.returncode != 0 and "not a mixatt training checkpoint" in r.stderr


def test_run_with_a_gguf_tokenizer(mixatt, model, tmp_path):
    """A model trained on SmolLM2-tokenized ids (vocab 49152) runs from text with --tokenizer."""
    out = train(mixatt, tmp_path, "llama_shared_kv", vocab=49152, steps=1)
    r = run(mixatt, "run", "-m", out, "--tokenizer", model, "-p", "The capital of France is", "-n", "4",
            "--print-ids")
    assert r.returncode == 0, r.stderr
    ids = r.stderr.split("ids:")[1].split("\n")[0].split()
    assert len(ids) == 5 + 4, r.stderr  # 5 prompt tokens (SmolLM2's tokenizer), 4 generated


def test_bad_block_configs(mixatt, tmp_path):
    cases = [({"arch": "gpt2", "n_kv_head": 4, "attn": "mla"}, "mla trains with arch llama"),
             ({"n_expert": 2, "n_expert_used": 3}, "n_expert_used must be in 1..n_expert"),
             ({"attn": "mka", "plan": "G,G@0"}, "training shares K/V between mha layers only"),
             ({"attn": "gqa"}, "config key 'attn' expects"),
             ({"mup": True, "mup_base_width": 0}, "mup_base_width must be positive")]
    for over, msg in cases:
        cfg = tmp_path / "bad.json"
        cfg.write_text(json.dumps(dict(BASE, **over)))
        r = run(mixatt, "train", "-c", cfg, "-o", tmp_path / "run", "-q")
        assert r.returncode != 0 and msg in r.stderr, (over, r.stderr)


def test_mup_coordinate_check(mixatt):
    """After a few Adam steps at a fixed learning rate, log RMS(width) has slope >= 1 under SP, ~0 under muP."""
    res = coord_check.check(mixatt, [32, 64, 128, 256], steps=4, lr=1e-2)
    sp, mup = res["sp"]["slope"], res["mup"]["slope"]
    assert sp > 1.0, res
    assert abs(mup) < 0.3 and abs(mup) < sp / 5, res
