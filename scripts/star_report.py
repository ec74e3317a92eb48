#!/usr/bin/env python3
"""star_report.py: how far Star Attention (`mixatt logits --attn star`) is from dense attention on real prompts,
for several block and anchor sizes, on SmolLM2-135M-Instruct (or -m MODEL). Prints a Markdown table.

Tasks (each sample: a context of --ctx tokens, then a query of --query tokens whose logits are compared):
  prose  windows of the Python tutorial that Debian's python3.11-doc installs; the query is the text that follows
         the context, so its logits also say how well each setting predicts the real next token;
  niah   RULER's niah_single_1 recipe (noise haystack `The grass is green. ...`, one 7-digit needle at a random
         depth); the query is the question, the answer prefix and the answer itself (teacher forcing), so the
         needle's digits must be retrieved from a block far from the query.
The dense reference is the same command with the whole context in one block, which equals dense attention to
~1e-6 (tests/e2e/test_star.py checks it against `mixatt logits` without Star); it writes only the query's rows.
Metrics over the query positions: top-1 agreement with dense, relative L2 error of the logits (mean over
positions), max |Δlogit|, mean KL(dense || star) in nats, and top-1 accuracy on the actual next tokens
(all query tokens for prose, the needle's digit tokens for niah) for dense and for Star.

Usage: python3 scripts/star_report.py [--ctx 2048] [--query 48] [--samples 3] [--configs 512:512,256:0]
       [--ranks N]  (N > 1 runs Star under mpirun -np N --oversubscribe; every figure should then be the same)"""
import argparse
import glob
import os
import random
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIAL = "/usr/share/doc/python3.11/html/_sources/tutorial"
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
WORDS = ["ancient", "bright", "calm", "daring", "eager", "fancy", "gentle", "hollow", "icy", "jolly"]
NOUNS = ["anchor", "bridge", "candle", "dragon", "engine", "forest", "garden", "harbor", "island", "jungle"]


def sh(cmd, env=None):
    e = dict(os.environ, **(env or {}))
    r = subprocess.run(cmd, capture_output=True, text=True, env=e)
    if r.returncode:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{r.stderr}")
    return r.stdout


def tokenize(a, text):
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write(text)
        f.flush()
        return [int(t) for t in sh([a.binary, "tokenize", "-m", a.model, "-f", f.name, "--no-special"]).split()]


def query_logits(a, ids, n_query, block, anchor, ranks=0):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "q.f32")
        cmd = [a.binary, "logits", "-m", a.model, "--ids", " ".join(map(str, ids)), "-o", out, "--exact",
               "--attn", "star", "--block", str(block), "--anchor", str(anchor), "--query", str(n_query)]
        env = None
        if ranks > 1:
            cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(ranks)] + cmd
            env = {"OMP_NUM_THREADS": "1", "OMPI_MCA_mpi_yield_when_idle": "1"}
        sh(cmd, env)
        return np.fromfile(out, dtype="<f4").astype(np.float64).reshape(n_query, -1)


def prose_samples(a, rng):
    files = sorted(glob.glob(os.path.join(TUTORIAL, "*.rst.txt")))
    if not files:
        sys.exit(f"the prose task needs {TUTORIAL} (apt-get install python3.11-doc)")
    ids = tokenize(a, "".join(open(f).read() for f in files))
    n = a.ctx + a.query
    for _ in range(a.samples):
        start = rng.randrange(0, len(ids) - n)
        s = ids[start:start + n]
        yield s, list(range(a.query - 1)), s  # score every next query token that is inside the sample


def niah_samples(a, rng):
    for _ in range(a.samples):
        key = f"{rng.choice(WORDS)}-{rng.choice(NOUNS)}"
        value = str(rng.randrange(1000000, 10000000))
        needle = f"One of the special magic numbers for {key} is: {value}."
        head = ("A special magic number is hidden within the following text. Make sure to memorize it. I will "
                "quiz you about the number afterwards.\n")
        question = (f"\nWhat is the special magic number for {key} mentioned in the provided text? The special "
                    f"magic number for {key} mentioned in the provided text is")
        answer = tokenize(a, " " + value)
        prefix = tokenize(a, question)
        per_line = len(tokenize(a, NOISE + "\n"))
        n_lines = (a.ctx - len(tokenize(a, head + needle))) // per_line + 1
        while True:  # the haystack as long as fits in the context
            body = [NOISE] * n_lines
            body.insert(rng.randrange(n_lines // 10, n_lines + 1), needle)  # depth 10%..100%
            ctx_ids = tokenize(a, head + "\n".join(body))
            if len(ctx_ids) <= a.ctx:
                break
            n_lines -= 1
        q = (prefix + answer)[-a.query:]
        ids = ctx_ids + q
        first = len(q) - len(answer) - 1  # row predicting the first answer token
        yield ids, list(range(first, len(q) - 1)), ids


def metrics(dense, star, ids, scored, n_query):
    top_d, top_s = dense.argmax(1), star.argmax(1)
    rel = np.linalg.norm(star - dense, axis=1) / np.linalg.norm(dense, axis=1)

    def logp(x):
        m = x.max(1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(1, keepdims=True))

    pd, ps = logp(dense), logp(star)
    kl = (np.exp(pd) * (pd - ps)).sum(1)
    nxt = np.array(ids[-n_query:][1:] + [-1])
    return {"agree": float((top_d == top_s).mean()), "rel": float(rel.mean()),
            "maxabs": float(np.abs(star - dense).max()), "kl": float(kl.mean()),
            "acc_d": float((top_d[scored] == nxt[scored]).mean()), "acc_s": float((top_s[scored] == nxt[scored]).mean())}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--binary", default=os.path.join(ROOT, "build", "mixatt"))
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--query", type=int, default=48)
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--configs", default="1024:1024,512:512,256:256,128:128,256:64,256:16,256:0")
    p.add_argument("--ranks", type=int, default=0)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    tmp = tempfile.mkdtemp()  # a private copy: a rebuild of build/mixatt during the run cannot break it
    a.binary = shutil.copy(a.binary, os.path.join(tmp, "mixatt"))
    configs = [tuple(map(int, c.split(":"))) for c in a.configs.split(",")]
    rows = {c: {"prose": [], "niah": []} for c in configs}
    rng = random.Random(a.seed)
    for task, gen in (("prose", prose_samples), ("niah", niah_samples)):
        for ids, scored, _ in gen(a, rng):
            n_ctx = len(ids) - a.query
            dense = query_logits(a, ids, a.query, n_ctx, n_ctx)
            for block, anchor in configs:
                star = query_logits(a, ids, a.query, block, min(anchor, block), a.ranks)
                rows[(block, anchor)][task].append(metrics(dense, star, ids, scored, a.query))
            print(f"  {task} sample of {n_ctx} + {a.query} tokens done", file=sys.stderr)
    print(f"| task | block B | anchor A | blocks | top-1 agree | rel L2 (mean) | max abs Δlogit | KL nats | "
          f"next-token acc dense | Star |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for task in ("prose", "niah"):
        for block, anchor in configs:
            ms = rows[(block, anchor)][task]
            avg = {k: np.mean([m[k] for m in ms]) for k in ms[0]}
            mx = max(m["maxabs"] for m in ms)
            print(f"| {task} | {block} | {anchor} | {-(-a.ctx // block)} | {avg['agree'] * 100:.1f}% | "
                  f"{avg['rel']:.2e} | {mx:.2f} | {avg['kl']:.4f} | {avg['acc_d'] * 100:.1f}% | "
                  f"{avg['acc_s'] * 100:.1f}% |")


if __name__ == "__main__":
    main()
