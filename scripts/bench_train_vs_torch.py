#!/usr/bin/env python3
"""bench_train_vs_torch.py: training speed of `mixatt train` against PyTorch on the CPU (not run in CI).

Both train the same GPT-2-shaped model (learned positions, pre-LayerNorm with biases, tanh GELU MLP, tied
embeddings, full causal attention) in fp32 with AdamW on the same random token shard, with the same thread
count, for --steps steps; prints the median tokens/s of each (the first --skip steps, warm-up, left out)
and mixatt's speed over PyTorch's, with the date, the CPU and the machine's load average (1 min) before each
run and at the end: figures are only comparable on a quiet machine (load < 1.5 before the runs); --wait-load
waits for that first.

    python3 scripts/bench_train_vs_torch.py [--mixatt build/mixatt] [--steps 20] [--threads 2] [--wait-load 1.5]
"""
import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Block(nn.Module):
    def __init__(self, c, h, ff):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.up, self.down = nn.Linear(c, ff), nn.Linear(ff, c)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(a)
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, ctx, c, layers, h, ff):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, c), nn.Embedding(ctx, c)
        self.blocks = nn.ModuleList(Block(c, h, ff) for _ in range(layers))
        self.lnf = nn.LayerNorm(c)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        logits = self.lnf(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def write_shard(path, tokens):
    hdr = struct.pack("<256i", 20240520, 1, len(tokens), *([0] * 253))
    with open(path, "wb") as f:
        f.write(hdr + tokens.astype("<u2").tobytes())


def bench_mixatt(a, shard, work):
    sets = {"arch": "gpt2", "vocab": a.vocab, "d_model": a.width, "n_layer": a.layers, "n_head": a.heads,
            "n_kv_head": a.heads, "d_ff": 4 * a.width, "max_ctx": a.seq, "seq": a.seq, "batch": a.batch,
            "steps": a.steps, "warmup": 2, "train_data": shard, "val_every": 0, "ckpt_every": 0,
            "tied_embeddings": "true", "plan": ""}
    args = [a.mixatt, "train", "-c", os.path.join(ROOT, "configs", "train-tiny-gpt2.json"), "-q",
            "-t", str(a.threads), "-o", os.path.join(work, "run")]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads))
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"mixatt train failed:\n{r.stderr}")
    with open(os.path.join(work, "run", "log.jsonl")) as f:
        rates = [json.loads(line)["tok_per_s"] for line in f if '"loss"' in line]
    return statistics.median(rates[a.skip:])


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def load1():
    return os.getloadavg()[0]


def wait_for_load(limit):
    """Sleeps until the 1-minute load average is below limit (0: does not wait)."""
    while limit > 0 and load1() >= limit:
        print(f"load average {load1():.2f} >= {limit}: waiting", file=sys.stderr)
        time.sleep(30)


def bench_torch(a, tokens):
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    m = GPT(a.vocab, a.seq, a.width, a.layers, a.heads, 4 * a.width)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    data, n, rates = torch.from_numpy(tokens.astype(np.int64)), a.batch * a.seq, []
    for step in range(a.steps):
        chunk = data[step * n:(step + 1) * n + 1]
        x, y = chunk[:-1].view(a.batch, a.seq), chunk[1:].view(a.batch, a.seq)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = m(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates[a.skip:])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mixatt", default=os.path.join(ROOT, "build", "mixatt"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the median")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--wait-load", type=float, default=0.0, help="wait until the 1-min load average is below this")
    a = p.parse_args()
    tokens = np.random.default_rng(0).integers(0, a.vocab, a.batch * a.seq * (a.steps + 1) + 1)
    wait_for_load(a.wait_load)
    loads = [load1()]
    with tempfile.TemporaryDirectory() as work:
        shard = os.path.join(work, "train.bin")
        write_shard(shard, tokens)
        mx = bench_mixatt(a, shard, work)
    loads.append(load1())
    pt = bench_torch(a, tokens)
    loads.append(load1())
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {cpu_model()}, {os.cpu_count()} CPUs; load average (1 min) "
          f"before mixatt {loads[0]:.2f}, before PyTorch {loads[1]:.2f}, at the end {loads[2]:.2f}")
    print(f"GPT-2 shape: width {a.width}, {a.layers} layers, {a.heads} heads, T {a.seq}, batch {a.batch}, "
          f"vocab {a.vocab}, fp32, AdamW, {a.threads} threads, median of steps {a.skip + 1}..{a.steps}")
    print(f"mixatt train: {mx:.0f} tok/s")
    print(f"PyTorch {torch.__version__}: {pt:.0f} tok/s")
    print(f"mixatt / PyTorch: {mx / pt:.2f}x")


if __name__ == "__main__":
    main()
