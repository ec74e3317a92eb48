#!/usr/bin/env python3
"""study.py: the attention-variant study (issue 4), reproducible with one command (`make study`).

Trains the same small Llama-shaped model with each attention variant for the same number of tokens, with the
same seed, on two data sets, and reports held-out loss, task accuracy, training tok/s and KV bytes per token:
  farcopy  copy at a distance (src/train/synthetic.h): a span, filler, the span again; accuracy = the copied
           tokens predicted (argmax).
  recall   the synthetic associative-recall task (src/train/synthetic.h): key/value pairs placed far back,
           one key asked at the end; accuracy = the value predicted (argmax) at the answer position.
  pydoc    Debian's python3.11-doc reStructuredText sources, tokenized with SmolLM2's tokenizer, split into
           train and held-out validation shards by `mixatt tokenize --val-fraction`.
Variants: MHA, GQA, MQA, MLA, MKA, FastMKA, MA, MA-Offset, MA-Pairs (MixAttention plans on GQA).
Everything is causal, validation data is held out, the seed and token budget are the same for every run.

  python3 scripts/study.py [--out study] [--steps N] [--only recall|pydoc] [--variants a,b] [--quick]
Writes OUT/<dataset>-<variant>/ (mixatt run directories), OUT/results.md (the table) and OUT/loss-*.png."""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIXATT = os.environ.get("MIXATT", os.path.join(ROOT, "build", "mixatt"))
PYDOC = "/usr/share/doc/python3.11/html/_sources"

# The model: 8 layers so the MixAttention presets place full-attention layers at quarter boundaries.
BASE = {
    "arch": "llama", "d_model": 128, "n_layer": 8, "n_head": 8, "n_kv_head": 8, "d_ff": 384,
    "norm_eps": 1e-5, "rope_theta": 10000, "tied_embeddings": True, "seed": 1234, "init_std": 0.02,
    "batch": 8, "warmup": 30, "lr": 2e-3, "min_lr": 2e-4, "weight_decay": 0.1, "grad_clip": 1.0,
    "val_batches": 4, "ckpt_every": 0, "log_every": 10,
}

# Each variant: config overrides (attention kind, KV heads, plan). MA plans keep GQA's 2 KV heads.
VARIANTS = {
    "MHA": {"n_kv_head": 8},
    "GQA": {"n_kv_head": 2},
    "MQA": {"n_kv_head": 1},
    "MLA": {"attn": "mla", "mla_kv_rank": 32, "mla_q_rank": 0, "mla_rope_dim": 8, "mla_nope_dim": 16,
            "mla_v_dim": 16},
    "MKA": {"attn": "mka"},
    "FastMKA": {"attn": "fastmka"},
    "MA": {"n_kv_head": 2, "plan": "ma"},
    "MA-Offset": {"n_kv_head": 2, "plan": "ma-offset"},
    "MA-Pairs": {"n_kv_head": 2, "plan": "ma-pairs"},
}

DATASETS = {
    # vocab 64 synthetic tokens; 128-token documents with a 16-key window, so window layers cannot see the pairs
    "recall": {"vocab": 64, "seq": 128, "max_ctx": 128, "window": 16, "train_data": "synthetic:recall"},
    # copy at a distance: a 15-token span, ~96 filler tokens, the span again (past every 16-key window)
    "farcopy": {"vocab": 64, "seq": 128, "max_ctx": 128, "window": 16, "train_data": "synthetic:farcopy"},
    # SmolLM2's vocabulary; the window is a quarter of the sequence
    "pydoc": {"vocab": 49152, "seq": 128, "max_ctx": 128, "window": 32},
}


def sh(*args, **kw):
    # passive OpenMP waiting: spinning threads cost several-fold when anything else shares the cores
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"study: {' '.join(map(str, args))[:300]} failed:\n{r.stderr[-2000:]}")
    return r


def pydoc_shards(out):
    """Tokenizes the python3.11-doc sources once into OUT/pydoc-data/ (train and held-out val shards)."""
    prefix = os.path.join(out, "pydoc-data", "pydoc")
    if glob.glob(prefix + "_train_*.bin"):
        return prefix
    if not os.path.isdir(PYDOC):
        sys.exit(f"study: {PYDOC} is missing (apt-get install python3.11-doc)")
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    # each file one document: the top-level files and each sub-directory (its files, sorted)
    files = sorted(glob.glob(os.path.join(PYDOC, "*.txt")) + [d for d in glob.glob(os.path.join(PYDOC, "*"))
                                                              if os.path.isdir(d)])
    sh(MIXATT, "tokenize", *[x for p in files for x in ("-f", p)], "-o", prefix, "--val-fraction", "0.05", "-q")
    return prefix


def train(out, name, cfg, steps):
    run = os.path.join(out, name)
    cfg = dict(cfg, steps=steps, val_every=max(steps // 5, 1))
    os.makedirs(run, exist_ok=True)
    path = os.path.join(run, "config.json")
    json.dump(cfg, open(path, "w"), indent=1)
    if os.path.exists(os.path.join(run, "checkpoint.safetensors")):
        return run
    t = time.time()
    print(f"study: training {name} ({steps} steps)", flush=True)
    sh(MIXATT, "train", "-c", path, "-o", run, "-q")
    print(f"study: {name} done in {time.time() - t:.0f} s", flush=True)
    return run


def recall_accuracy(run, cfg):
    """Fraction of held-out recall documents whose final value token is predicted (argmax) from the question.
    Reads the run's validation shard and the trained checkpoint's logits (`mixatt logits`)."""
    val = os.path.join(run, "data", "val_000.bin")
    toks = np.fromfile(val, dtype="<u2", offset=1024)
    seq, hits, n = cfg["seq"], 0, 0
    for d in range(min(len(toks) // seq, 32)):
        doc = toks[d * seq:(d + 1) * seq]
        q = int(np.where(doc == 2)[0][-1])  # token 2 asks: "2 key value"
        ids = " ".join(map(str, doc[:q + 2]))
        o = os.path.join(run, "acc.f32")
        sh(MIXATT, "logits", "-m", os.path.join(run, "checkpoint.safetensors"), "--ids", ids, "-o", o, "--exact")
        lg = np.fromfile(o, dtype="<f4").reshape(q + 2, -1)
        hits += int(np.argmax(lg[q + 1]) == doc[q + 2])
        n += 1
    return hits / max(n, 1)


def farcopy_accuracy(run, cfg):
    """Fraction of the copied span's tokens predicted (argmax) on 32 held-out farcopy documents."""
    toks = np.fromfile(os.path.join(run, "data", "val_000.bin"), dtype="<u2", offset=1024)
    seq, hits, n = cfg["seq"], 0, 0
    for d in range(min(len(toks) // seq, 32)):
        doc = toks[d * seq:(d + 1) * seq]
        sep = int(np.where(doc == 1)[0][0])
        o = os.path.join(run, "acc.f32")
        sh(MIXATT, "logits", "-m", os.path.join(run, "checkpoint.safetensors"), "--ids",
           " ".join(map(str, doc[:-1])), "-o", o, "--exact")
        pred = np.argmax(np.fromfile(o, dtype="<f4").reshape(seq - 1, -1), axis=1)
        hits += int(np.sum(pred[sep:] == doc[sep + 1:]))
        n += seq - 1 - sep
    return hits / max(n, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "study"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--only", choices=list(DATASETS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="a smoke run: 10 steps, 2 variants")
    a = ap.parse_args()
    steps = 10 if a.quick else a.steps
    names = ["MHA", "MA"] if a.quick else a.variants.split(",")
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for ds in [a.only] if a.only else list(DATASETS):
        data = dict(DATASETS[ds])
        if ds == "pydoc":
            prefix = pydoc_shards(a.out)
            data["train_data"] = prefix + "_train_*.bin"
            data["val_data"] = prefix + "_val_*.bin"
        runs = []
        for v in names:
            cfg = dict(BASE, **data, **VARIANTS[v])
            run = train(a.out, f"{ds}-{v}", cfg, steps)
            runs.append(run)
            acc = recall_accuracy(run, cfg) if ds == "recall" else farcopy_accuracy(run, cfg) if ds == "farcopy" \
                else None
            rows.append((ds, v, run, acc))
        sh(MIXATT, "plot", *runs, "-o", os.path.join(a.out, f"loss-{ds}.png"))
    table = sh(MIXATT, "compare", *[r[2] for r in rows]).stdout
    acc = "\n".join(f"| {d} | {v} | {x:.3f} |" for d, v, _, x in rows if x is not None)
    md = (f"{table}\nTask accuracy (recall: the answer token; farcopy: the copied span's tokens; argmax, 32 held-out "
          f"documents):\n\n"
          f"| data | variant | accuracy |\n| --- | --- | ---: |\n{acc}\n")
    open(os.path.join(a.out, "results.md"), "w").write(md)
    print(md)


if __name__ == "__main__":
    main()
