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

--device cuda (`make study-gpu`) trains on the GPU at the scale of issue 11: an 8-layer Llama of width 512 (8 heads
of 64, SwiGLU 1024; 21M parameters on the synthetic tasks, 46M with SmolLM2's vocabulary), 64 x 256 tokens a
step, 50M tokens per run (--tokens), windows of 32 keys, in bf16, and its text is larger:
  docs     python3.11-doc and linux-doc-6.1's reStructuredText sources (about 10M tokens; 5% held out by document)
           in place of pydoc, windows of 64 keys.

  python3 scripts/study.py [--out study] [--device cpu|cuda] [--steps N | --tokens N]
                           [--only recall|farcopy|pydoc|docs]
                           [--variants a,b] [--quick] [--time-budget S] [--report-only]
Writes OUT/<dataset>-<variant>/ (mixatt run directories, each with summary.json: its `mixatt compare` row, task
accuracy and training time), OUT/results.md (the table) and OUT/loss-*.png (when gnuplot is there).
--time-budget S starts no run that the runs so far say would end after S seconds (the rest are left for a later
call with the same OUT); --report-only writes results.md and the plots from the summaries already in OUT."""
import argparse
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIXATT = os.environ.get("MIXATT", os.path.join(ROOT, "build", "mixatt"))
PYDOC = ("/usr/share/doc/python3.11/html/_sources", "python3.11-doc")
KDOC = ("/usr/share/doc/linux-doc-6.1/html/_sources", "linux-doc-6.1")

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

# The GPU profile (--device cuda): the same study at the scale issue 11 asks for (20M-124M parameters, 50M tokens a
# run). Head dim 64 as in the models people train; MLA keeps the CPU study's proportions (latent 1/4 of the width).
BASE_GPU = dict(BASE, d_model=512, n_head=8, n_kv_head=8, d_ff=1024, batch=64, warmup=200, lr=1.5e-3, min_lr=1.5e-4,
                val_batches=8, log_every=50)
VARIANTS_GPU = dict(VARIANTS, MLA={"attn": "mla", "mla_kv_rank": 128, "mla_q_rank": 0, "mla_rope_dim": 32,
                                   "mla_nope_dim": 32, "mla_v_dim": 64})
DATASETS_GPU = {
    "recall": {"vocab": 64, "seq": 256, "max_ctx": 256, "window": 32, "train_data": "synthetic:recall"},
    "docs": {"vocab": 49152, "seq": 256, "max_ctx": 256, "window": 64},
    "farcopy": {"vocab": 64, "seq": 256, "max_ctx": 256, "window": 32, "train_data": "synthetic:farcopy"},
}
TEXT_ROOTS = {"pydoc": [PYDOC], "docs": [PYDOC, KDOC]}
GPU_TOKENS = 50_000_000

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


def doc_shards(out, name, roots):
    """Tokenizes the reStructuredText sources under roots (every file at any depth is one document) once into
    OUT/<name>-data/, train and held-out val shards. `mixatt tokenize` takes a directory for the files directly in
    it, so the files are linked into one flat directory first, named in order."""
    prefix = os.path.join(out, f"{name}-data", name)
    if glob.glob(prefix + "_train_*.bin"):
        return prefix
    for root, package in roots:
        if not os.path.isdir(root):
            sys.exit(f"study: {root} is missing (apt-get install {package})")
    flat = os.path.join(out, f"{name}-data", "sources")
    os.makedirs(flat, exist_ok=True)
    files = [os.path.join(d, f) for root, _ in roots for d, _, names in sorted(os.walk(root)) for f in sorted(names)]
    for i, f in enumerate(files):
        link = os.path.join(flat, f"{i:06d}.txt")
        if not os.path.lexists(link):
            os.symlink(f, link)
    sh(MIXATT, "tokenize", "-f", flat, "-o", prefix, "--val-fraction", "0.05", "-q")
    return prefix


def train(out, name, cfg, steps, device):
    run = os.path.join(out, name)
    cfg = dict(cfg, steps=steps, val_every=max(steps // (10 if device == "cuda" else 5), 1))
    os.makedirs(run, exist_ok=True)
    path = os.path.join(run, "config.json")
    json.dump(cfg, open(path, "w"), indent=1)
    if os.path.exists(os.path.join(run, "checkpoint.safetensors")):
        return run, None
    t = time.time()
    tokens = steps * cfg["batch"] * cfg["seq"]
    print(f"study: training {name} ({steps} steps, {tokens / 1e6:.1f}M tokens, {device})", flush=True)
    sh(MIXATT, "train", "-c", path, "-o", run, "-q", "--device", device)
    took = time.time() - t
    print(f"study: {name} done in {took:.0f} s", flush=True)
    return run, took


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


def summarize(run, ds, variant, acc, took):
    """OUT/<run>/summary.json: the run's `mixatt compare` row, its task accuracy and training seconds, so that a
    report can be written later without the checkpoints (--report-only)."""
    row = [x for x in sh(MIXATT, "compare", run).stdout.splitlines() if x.startswith("| ") and "---" not in x][-1]
    json.dump({"dataset": ds, "variant": variant, "row": row, "accuracy": acc, "seconds": took},
              open(os.path.join(run, "summary.json"), "w"), indent=1)


def report(out, order):
    """results.md from the summaries under out, in the order of (dataset, variant) pairs, and the loss plots."""
    sums = []
    for ds, v in order:
        p = os.path.join(out, f"{ds}-{v}", "summary.json")
        if os.path.exists(p):
            sums.append(json.load(open(p)))
    if not sums:
        sys.exit(f"study: no summary.json under {out}")
    table = "| run | plan | params | val final | val best | train final | tokens | tok/s | KV B/tok |\n" \
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n" + "\n".join(s["row"] for s in sums)
    acc = "\n".join(f"| {s['dataset']} | {s['variant']} | {s['accuracy']:.3f} |" for s in sums
                    if s["accuracy"] is not None)
    md = (f"{table}\n\nTask accuracy (recall: the answer token; farcopy: the copied span's tokens; argmax, 32 "
          f"held-out documents):\n\n| data | variant | accuracy |\n| --- | --- | ---: |\n{acc}\n")
    open(os.path.join(out, "results.md"), "w").write(md)
    print(md)
    if not (os.environ.get("GNUPLOT") or shutil.which("gnuplot")):
        print("study: no gnuplot here: the loss plots are left for `python3 scripts/study.py --report-only` "
              "on a machine with gnuplot-nox", flush=True)
        return
    for ds in dict.fromkeys(s["dataset"] for s in sums):
        runs = [os.path.join(out, f"{s['dataset']}-{s['variant']}") for s in sums if s["dataset"] == ds]
        sh(MIXATT, "plot", *runs, "-o", os.path.join(out, f"loss-{ds}.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "study"))
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--steps", type=int, help="steps per run (CPU default 200)")
    ap.add_argument("--tokens", type=int, help=f"tokens per run instead of --steps (GPU default {GPU_TOKENS})")
    ap.add_argument("--only", choices=sorted(set(DATASETS) | set(DATASETS_GPU)))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="a smoke run: 10 steps, 2 variants")
    ap.add_argument("--time-budget", type=float, help="start no run expected to end after this many seconds")
    ap.add_argument("--report-only", action="store_true", help="write results.md and plots from OUT's summaries")
    a = ap.parse_args()
    gpu = a.device == "cuda"
    base, variants, datasets = (BASE_GPU, VARIANTS_GPU, DATASETS_GPU) if gpu else (BASE, VARIANTS, DATASETS)
    names = ["MHA", "MA"] if a.quick else a.variants.split(",")
    for v in names:
        if v not in variants:
            sys.exit(f"study: unknown variant '{v}' (one of {', '.join(variants)})")
    if a.only and a.only not in datasets:
        sys.exit(f"study: --only {a.only} is not a data set of the {a.device} study ({', '.join(datasets)})")
    order = [(ds, v) for ds in ([a.only] if a.only else list(datasets)) for v in names]
    os.makedirs(a.out, exist_ok=True)
    if a.report_only:
        return report(a.out, order)
    start, longest = time.time(), 0.0
    for ds, v in order:
        data = dict(datasets[ds])
        if ds in TEXT_ROOTS:
            prefix = doc_shards(a.out, ds, TEXT_ROOTS[ds])
            data["train_data"] = prefix + "_train_*.bin"
            data["val_data"] = prefix + "_val_*.bin"
        cfg = dict(base, **data, **variants[v])
        if a.quick:
            steps = 10
        elif a.tokens or (gpu and not a.steps):
            steps = math.ceil((a.tokens or GPU_TOKENS) / (cfg["batch"] * cfg["seq"]))
        else:
            steps = a.steps or 200
        done = os.path.exists(os.path.join(a.out, f"{ds}-{v}", "summary.json"))
        if a.time_budget and not done and time.time() - start + longest * 1.15 > a.time_budget:
            print(f"study: {ds}-{v} left for a later call (time budget)", flush=True)
            continue
        t = time.time()
        run, took = train(a.out, f"{ds}-{v}", cfg, steps, a.device)
        acc = recall_accuracy(run, cfg) if ds == "recall" else farcopy_accuracy(run, cfg) if ds == "farcopy" \
            else None
        if took is not None or not os.path.exists(os.path.join(run, "summary.json")):
            summarize(run, ds, v, acc, took)
        longest = max(longest, time.time() - t)
    report(a.out, order)


if __name__ == "__main__":
    main()
