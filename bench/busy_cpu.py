#!/usr/bin/env python3
"""busy_cpu.py: mixatt and llama.cpp on a quiet CPU and on a busy one, in the same run.

Two conditions, one after the other: quiet (nothing started by this script), then loaded: --load processes
(default 2, one per core here), each a Python busy loop at the default priority, started by this script and
killed by it when done (also on an error or ^C). In each condition every configuration below runs --reps
repetitions of pp P and tg N (llama-bench's tests, as scripts/bench_vs_llamacpp.py defines them), interleaved
so that all see the same machine state:
  mixatt          `mixatt bench` as a user gets it: default threads (all cores), no OMP_* or MIXATT_* variables
  mixatt -t 1     one thread
  NAME            each --variant 'NAME=[@BINARY] [VAR=VALUE ...] [-- FLAGS]': another binary (a baseline build)
                  and/or environment and flags, e.g. --variant 'base=@/tmp/base/mixatt' --variant 'spin0=MIXATT_SPIN_US=0'
  llama.cpp       through llama-cpp-python (.venv-bench: `bash scripts/install-deps.sh --bench`) at its default
                  thread count (the cores), and at -t 1 with --llama-t1
Prints one table per condition: median tok/s, min-max over the repetitions, and each configuration's median
over mixatt -t 1's and over llama.cpp's. On a machine other programs also use, the spread is the honest part of
the figure: repeat the run and report the range.

Usage: .venv-bench/bin/python bench/busy_cpu.py [--reps 5] [-p 128] [-n 64] [--load 2] [--skip-quiet]
                                                [--variant ...] [--skip-llamacpp] [--json FILE]
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

CLEAN_ENV_PREFIXES = ("OMP_", "GOMP_", "MIXATT_", "KMP_")


def clean_env(extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLEAN_ENV_PREFIXES)}
    env.update(extra)
    return env


class Mixatt:
    """One mixatt configuration: binary, environment and flags."""

    def __init__(self, name, binary, model, env=None, flags=()):
        self.name, self.binary, self.model = name, binary, model
        self.env, self.flags = clean_env(env or {}), list(flags)

    def run(self, test, n):
        p, g = (n, 0) if test == "pp" else (0, n)
        cmd = [self.binary, "bench", "-m", self.model, "-p", str(p), "-n", str(g), "-r", "1", "--json"] + self.flags
        res = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=900)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr}")
        for line in res.stderr.splitlines():
            if line.startswith("{"):
                return json.loads(line)["tok_s"]
        raise RuntimeError(f"no JSON line from: {' '.join(cmd)}\n{res.stderr}")


class Llama:
    def __init__(self, name, model, threads, p, n):
        from bench_vs_llamacpp import LlamaCpp

        self.name = name
        self.lc = LlamaCpp(model, threads, max(p + n, 16), max(p, 512))
        self.lc.pp(min(p, 32))  # warm-up
        self.lc.tg(4)

    def run(self, test, n):
        return getattr(self.lc, test)(n)


def parse_variant(spec, default_binary, model):
    name, _, rest = spec.partition("=")
    words = shlex.split(rest)
    flags = []
    if "--" in words:
        i = words.index("--")
        words, flags = words[:i], words[i + 1:]
    binary, env = default_binary, {}
    for w in words:
        if w.startswith("@"):
            binary = w[1:]
        elif "=" in w:
            k, _, v = w.partition("=")
            env[k] = v
        else:
            raise SystemExit(f"--variant {spec}: '{w}' is neither @BINARY nor VAR=VALUE")
    return Mixatt(name, binary, model, env, flags)


def start_load(n):
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(1.0)  # let the scheduler see them as CPU hogs
    return procs


def stop_load(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def measure(configs, tests, reps):
    runs = {(c.name, t): [] for c in configs for t, _ in tests}
    for _ in range(reps):
        for t, n in tests:
            for c in configs:
                runs[(c.name, t)].append(c.run(t, n))
    return runs


def table(title, configs, tests, runs, ref_names):
    print(f"\n### {title}")
    head = "| config | " + " | ".join(f"{t}{n} tok/s (min-max)" for t, n in tests)
    for r in ref_names:
        head += " | " + " | ".join(f"{t} / {r}" for t, _ in tests)
    print(head + " |")
    print("|" + " --- |" * (1 + len(tests) * (1 + len(ref_names))))
    for c in configs:
        row = f"| {c.name} |"
        for t, _ in tests:
            xs = runs[(c.name, t)]
            row += f" {statistics.median(xs):7.1f} ({min(xs):.1f}-{max(xs):.1f}) |"
        for r in ref_names:
            for t, _ in tests:
                row += f" {statistics.median(runs[(c.name, t)]) / statistics.median(runs[(r, t)]):5.2f} |"
        print(row)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--mixatt", default=os.path.join(ROOT, "build/mixatt"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--load", type=int, default=2, help="busy processes for the loaded condition")
    ap.add_argument("--skip-quiet", action="store_true")
    ap.add_argument("--skip-loaded", action="store_true")
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--llama-t1", action="store_true", help="also llama.cpp with 1 thread")
    ap.add_argument("--json", help="write every repetition here")
    args = ap.parse_args()

    tests = [(t, n) for t, n in (("pp", args.p), ("tg", args.n)) if n > 0]
    configs = [Mixatt("mixatt", args.mixatt, args.model), Mixatt("mixatt -t 1", args.mixatt, args.model, flags=["-t", "1"])]
    configs += [parse_variant(v, args.mixatt, args.model) for v in args.variant]
    refs = ["mixatt -t 1"]
    if not args.skip_llamacpp:
        nc = os.cpu_count()
        configs.append(Llama(f"llama.cpp -t {nc}", args.model, nc, args.p, args.n))
        refs.append(f"llama.cpp -t {nc}")
        if args.llama_t1:
            configs.append(Llama("llama.cpp -t 1", args.model, 1, args.p, args.n))

    print(f"busy_cpu.py: {os.path.basename(args.model)}, {os.cpu_count()} cores, {args.reps} interleaved reps, "
          f"load = {args.load} busy processes; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"load average before: {os.getloadavg()[0]:.2f} (other programs on this machine count too)")
    out = {}
    if not args.skip_quiet:
        out["quiet"] = measure(configs, tests, args.reps)
        table("quiet", configs, tests, out["quiet"], refs)
    if not args.skip_loaded:
        procs = start_load(args.load)
        try:
            out["loaded"] = measure(configs, tests, args.reps)
        finally:
            stop_load(procs)
        table(f"loaded: {args.load} busy processes", configs, tests, out["loaded"], refs)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({cond: {f"{k[0]}|{k[1]}": v for k, v in r.items()} for cond, r in out.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
