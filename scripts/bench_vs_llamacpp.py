#!/usr/bin/env python3
"""bench_vs_llamacpp.py: mixatt vs llama.cpp on the same GGUF file, same thread count, same machine, same run.

llama.cpp is driven through PyPI's llama-cpp-python (`pip install llama-cpp-python`, which compiles
llama.cpp from source; CMAKE_ARGS="-DGGML_NATIVE=ON" for this machine's instruction set). The tests mirror
llama-bench's:
  pp N  one llama_decode of N random tokens from an empty KV cache (n_batch = n_ubatch >= N, so a single
        ubatch), logits for the last token only (llama_batch_get_one); timed to llama_synchronize.
  tg N  N single-token llama_decode calls from an empty KV cache, each on a fresh random token.
One warm-up run of each test, then --reps repetitions, interleaved with mixatt's so that both engines see
the same machine state; mixatt's come from `mixatt bench -r 1 --json` (same definitions, src/cli/bench.c;
it does its own warm-up). Prints mean ± sd and the best repetition of each (on a shared machine the best is
the cleaner estimate of the uncontended speed).

Not part of CI. Usage:
  python3 scripts/bench_vs_llamacpp.py [--model FILE] [--threads 2] [--reps 5] [-p 512] [-n 128]
                                       [--mixatt-flags=--exact] [--skip-llamacpp]
"""
import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mean_sd(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


class LlamaCpp:
    """The minimum of llama.cpp's C API (through llama_cpp's ctypes bindings) that llama-bench uses."""

    def __init__(self, model, threads, n_ctx, n_batch):
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        self._log_cb = L.llama_log_callback(lambda level, text, user: None)  # kept alive: C holds it
        L.llama_log_set(self._log_cb, None)
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = L.llama_model_load_from_file(model.encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model}")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.rng = random.Random(1234)

    def _clear(self):
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def _decode(self, toks):
        L = self.L
        arr = (L.llama_token * len(toks))(*toks)
        if L.llama_decode(self.ctx, L.llama_batch_get_one(arr, len(toks))) != 0:
            raise RuntimeError("llama_decode failed")

    def pp(self, n):
        toks = [self.rng.randrange(self.n_vocab) for _ in range(n)]
        self._clear()
        t0 = time.perf_counter()
        self._decode(toks)
        self.L.llama_synchronize(self.ctx)
        return n / (time.perf_counter() - t0)

    def tg(self, n):
        self._clear()
        tok = self.rng.randrange(self.n_vocab)
        t0 = time.perf_counter()
        for _ in range(n):
            self._decode([tok])
            self.L.llama_synchronize(self.ctx)
            tok = self.rng.randrange(self.n_vocab)
        return n / (time.perf_counter() - t0)

    def close(self):
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def mixatt_once(args, test, n):
    """One repetition (after mixatt's own warm-up) of one test through `mixatt bench --json`."""
    p, g = (n, 0) if test == "pp" else (0, n)
    cmd = [args.mixatt, "bench", "-m", args.model, "-t", str(args.threads), "-p", str(p), "-n", str(g), "-r", "1",
           "--json"] + shlex.split(args.mixatt_flags)
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    for line in res.stderr.splitlines():
        if line.startswith("{"):
            return json.loads(line)["tok_s"]
    raise RuntimeError(f"no JSON line from: {' '.join(cmd)}\n{res.stderr}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--mixatt", default=os.path.join(ROOT, "build/mixatt"))
    ap.add_argument("--mixatt-flags", default="", help="extra flags for mixatt bench, e.g. --mixatt-flags=--exact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--skip-llamacpp", action="store_true")
    args = ap.parse_args()

    tests = [(t, n) for t, n in (("pp", args.p), ("tg", args.n)) if n > 0]
    lc = None if args.skip_llamacpp else LlamaCpp(args.model, args.threads, max(args.p + args.n, 16),
                                                   max(args.p, 512))
    runs = {(eng, t): [] for eng in ("llama.cpp", "mixatt") for t, _ in tests}
    if lc:
        for t, n in tests:  # warm-up
            getattr(lc, t)(n)
    # Interleaved repetitions: both engines see the same machine state (other load, clocks).
    for _ in range(args.reps):
        for t, n in tests:
            if lc:
                runs[("llama.cpp", t)].append(getattr(lc, t)(n))
            runs[("mixatt", t)].append(mixatt_once(args, t, n))
    if lc:
        lc.close()

    print(f"model: {os.path.basename(args.model)}, threads: {args.threads}, {args.reps} interleaved reps "
          f"(after a warm-up); mean ± sd, and the best rep")
    print(f"| {'test':6} | {'llama.cpp tok/s':>16} | {'best':>6} | {'mixatt tok/s':>16} | {'best':>6} |"
          f" {'ratio (mean)':>12} | {'ratio (best)':>12} |")
    print(f"| {'-' * 6} | {'-' * 15}:| {'-' * 5}:| {'-' * 15}:| {'-' * 5}:| {'-' * 11}:| {'-' * 11}:|")
    for t, n in tests:
        name = f"{t}{n}"
        m, msd = mean_sd(runs[("mixatt", t)])
        mb = max(runs[("mixatt", t)])
        if lc:
            l, lsd = mean_sd(runs[("llama.cpp", t)])
            lb = max(runs[("llama.cpp", t)])
            print(f"| {name:6} | {l:7.1f} ± {lsd:5.1f} | {lb:6.1f} | {m:7.1f} ± {msd:5.1f} | {mb:6.1f} |"
                  f" {m / l:12.2f} | {mb / lb:12.2f} |")
        else:
            print(f"| {name:6} | {'-':>16} | {'-':>6} | {m:7.1f} ± {msd:5.1f} | {mb:6.1f} | {'-':>12} | {'-':>12} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
