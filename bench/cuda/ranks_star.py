#!/usr/bin/env python3
"""ranks_star.py: Star Attention (`--attn star`) on GPUs, run by bench/cuda/ranks_run.sh's `star` mode with
MIXATT (a wrapper of the binary) and MPIRUN (the launcher line, ranks included) in the environment.

    python3 ranks_star.py check            correctness on the tiny HF Llama fixture
    python3 ranks_star.py bench DIR N...   phase-1 prefill timings of the model in DIR for contexts N...

check: dense `mixatt logits` on 1 GPU against Star on 2 GPUs (mpirun -np 2, NCCL) in the exact settings, (a) one
block covering the context (it sits on rank 1; rank 0 holds no context), (b) two blocks with anchor = block (block
1 sees all of block 0); and Star on 1 GPU (one process, two blocks). The query's logits must agree within the
bf16 bound of ranks_check.py (relative L2 <= 3e-2 per position, top-1 >= 90%), and with the CPU's Star in fp32.

bench: for each context n, `mixatt bench -p n -n 0` on 1 GPU (dense prefill) and `mpirun -np 2 mixatt bench
--attn star -p n -n 0` on 2 GPUs with block B = n/2 and anchor A = B, then A = B/4 (phase 1: from a barrier to
the slowest rank's end). Printed beside each: the ideal speedup from token counts (see ideal()). A context
starts only while fewer than $STAR_BUDGET seconds (default 300) have passed since the script began, and only
when the estimate of its three benchmarks (the last context's compute grown quadratically, plus its loading and
start-up time) fits what is left. $STAR_REPS repetitions (default 2) after one warm-up.
Exit status 0 when every check is within bounds and every started benchmark ran."""
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LLAMA = os.path.join(ROOT, "tests", "fixtures", "hf", "llama")
BOUND, TOP1 = 3e-2, 0.9


def sh(cmd, timeout=300):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: exit {r.returncode}: {(r.stdout + r.stderr).strip()[-800:]}")
    return r


def logits(cmd, out, rows):
    sh(cmd)
    return np.fromfile(out, dtype="<f4").reshape(rows, -1).astype(np.float64)


def compare(ours, ref):
    err = np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)
    return float(err.max()), float((ours.argmax(1) == ref.argmax(1)).mean())


def check(binary, mpirun, dev):
    rng = np.random.default_rng(7)
    n, q = 52, 16  # 36 context tokens, 16 query tokens
    ids = " ".join(map(str, rng.integers(1, 250, n)))
    base = ["logits", "-m", LLAMA, "--ids", ids]
    star = ["--attn", "star", "--query", q]
    failed, rows = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        o = lambda k: os.path.join(tmp, k + ".f32")
        dense = logits([binary, *base, "--device", dev, "-o", o("dense")], o("dense"), n)[n - q:]
        cpu = logits([binary, *base, *star, "--exact", "-o", o("cpu")], o("cpu"), q)
        cpu_dense = logits([binary, *base, "--exact", "-o", o("cpud")], o("cpud"), n)[n - q:]
        e0, t0 = compare(dense, cpu_dense)
        rows.append({"case": "dense 1 GPU vs dense CPU fp32", "rel_l2_max": e0, "top1": t0})
        print(f"     dense 1 GPU vs dense CPU fp32 (the bf16 floor): rel L2 max {e0:.2e} top-1 {t0:.2f}", flush=True)
        cases = [("N GPUs, one block of 36 (on the last rank)", [*mpirun, binary, *base, *star, "--block", n - q]),
                 ("N GPUs, two blocks of 18, anchor 18", [*mpirun, binary, *base, *star, "--block", (n - q) // 2]),
                 ("1 GPU, two blocks of 18, anchor 18", [binary, *base, *star, "--block", (n - q) // 2])]
        for label, cmd in cases:
            try:
                got = logits([*cmd, "--device", dev, "-o", o("star")], o("star"), q)
            except RuntimeError as e:
                print(f"FAIL {label}: {e}", flush=True)
                failed += 1
                continue
            e1, t1 = compare(got, dense)
            e2, t2 = compare(got, cpu)
            ok = e1 <= BOUND and t1 >= TOP1 and e2 <= BOUND and t2 >= TOP1
            failed += not ok
            rows.append({"case": label, "vs_dense_1gpu": [e1, t1], "vs_cpu_star_fp32": [e2, t2]})
            print(f"{'ok  ' if ok else 'FAIL'} Star {label}: vs dense 1 GPU rel L2 max {e1:.2e} top-1 {t1:.2f}; "
                  f"vs CPU Star fp32 {e2:.2e} top-1 {t2:.2f}", flush=True)
    return failed, rows


def rank_work(n, B, A, R):
    """Per rank: (tokens evaluated, query-key pairs attended) of phase 1, as run/star_pipeline.c does it: rank r owns
    blocks [r*nb/R, (r+1)*nb/R); a rank without block 0 evaluates the anchor once (A tokens, causal), and each
    block b > 0 of len tokens after it (len*A + len(len+1)/2 pairs); block 0 alone is causal."""
    nb = -(-n // B)
    out = []
    for r in range(R):
        b0, b1 = r * nb // R, (r + 1) * nb // R
        tok = pairs = 0
        if b1 > b0 > 0:  # with block 0, its first A tokens are the anchor
            tok += A
            pairs += A * (A + 1) // 2
        for b in range(b0, b1):
            ln = min(B, n - b * B)
            keep = A if b > 0 else 0
            tok += ln
            pairs += ln * keep + ln * (ln + 1) // 2
        out.append((tok, pairs))
    return out


def ideal(cfg, n, B, A, R):
    """Ideal speedup of Star's phase 1 over dense prefill of n tokens: dense work / the busiest rank's work, for
    the linear layers (tokens), for attention (query-key pairs), and for both weighted by FLOPs (per token
    2 * the layers' parameters, per pair 4 * layers * heads * head_dim: QK^T and PV)."""
    L, C, H = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]
    G, F = cfg["num_key_value_heads"], cfg["intermediate_size"]
    D = C // H
    lin = 2 * L * (C * H * D + 2 * C * G * D + H * D * C + 3 * C * F)
    att = 4 * L * H * D
    dense_tok, dense_pairs = n, n * (n + 1) // 2
    w = rank_work(n, B, A, R)
    tok, pairs = max(t for t, _ in w), max(p for _, p in w)
    flops = max(lin * t + att * p for t, p in w)
    return {"linear": dense_tok / tok, "attention": dense_pairs / pairs,
            "flops": (lin * dense_tok + att * dense_pairs) / flops, "rank_work": w}


def bench_json(cmd, timeout):
    r = sh(cmd, timeout=timeout)
    lines = [json.loads(l) for l in r.stderr.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"no --json line: {r.stderr[-400:]}")
    return lines[0]


def bench(binary, mpirun, dev, model, ctxs):
    t_start, budget = time.time(), float(os.environ.get("STAR_BUDGET", "300"))
    cfg = json.load(open(os.path.join(model, "config.json")))
    reps = os.environ.get("STAR_REPS", "2")
    runs = int(reps) + 1  # with the warm-up
    failed, rows, last = 0, [], None  # last: (n, compute seconds of its runs, the rest of its wall time)
    for n in ctxs:
        left = budget - (time.time() - t_start)
        est = None if last is None else last[2] + last[1] * (n / last[0]) ** 2  # the rest + compute, quadratic
        if left <= 0 or (est is not None and est > left):
            print(f"== star bench {n}: skipped ({left:.0f} s left of {budget:.0f}, estimate "
                  f"{'-' if est is None else f'{est:.0f} s'})", flush=True)
            continue
        t0 = time.time()
        R = int(os.environ.get("NP", "2"))  # ranks = GPUs
        B = n // R
        common = ["bench", "-m", model, "--device", dev, "-p", n, "-n", 0, "-r", reps, "--json"]
        try:
            d = bench_json([binary, *common], 300)
            res = {"n": n, "dense_1gpu_tok_s": d["tok_s"], "dense_sd": d["sd"], "star": []}
            print(f"== n {n}: dense prefill, 1 GPU: {d['tok_s']:.0f} tok/s ({n / d['tok_s']:.2f} s)", flush=True)
            for A in (B, B // 4):
                s = bench_json([*mpirun, binary, *common, "--attn", "star", "--block", B, "--anchor", A], 300)
                ide = ideal(cfg, n, B, A, R)
                sp = s["tok_s"] / d["tok_s"]
                res["star"].append({"block": B, "anchor": A, "tok_s": s["tok_s"], "sd": s["sd"], "speedup": sp,
                                    "ideal": ide})
                print(f"   Star {R} GPUs, block {B}, anchor {A}: phase 1 {s['tok_s']:.0f} tok/s ({n / s['tok_s']:.2f}"
                      f" s): {sp:.2f}x dense; ideal {ide['flops']:.2f}x (FLOPs; linear {ide['linear']:.2f}x, "
                      f"attention {ide['attention']:.2f}x; busiest rank {max(ide['rank_work'])})", flush=True)
            rows.append(res)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"FAIL star bench {n}: {e}", flush=True)
            failed += 1
            break
        compute = runs * n * (1 / d["tok_s"] + sum(1 / x["tok_s"] for x in res["star"]))
        last = (n, compute, time.time() - t0 - compute)
    return failed, rows


def main():
    binary = os.environ["MIXATT"]
    dev = os.environ.get("DEVICE", "cuda")  # cpu: a dry run of the script's logic without GPUs
    mpirun = shlex.split(os.environ["MPIRUN"])
    what = sys.argv[1]
    if what == "check":
        failed, rows = check(binary, mpirun, dev)
    else:
        failed, rows = bench(binary, mpirun, dev, sys.argv[2], [int(x) for x in sys.argv[3:]])
    out = os.environ.get("OUTD")
    if out:
        json.dump(rows, open(os.path.join(out, f"star_{what}.json"), "w"), indent=1)
    print(f"star {what}: {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
