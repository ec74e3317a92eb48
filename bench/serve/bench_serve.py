#!/usr/bin/env python3
"""bench_serve.py: mixatt serve under concurrent streaming clients, beside llama.cpp's server in the same run.

For each server and each concurrency C (default 1, 4, 16, 64) it starts C client threads at once; each sends
--requests streaming /v1/completions requests one after another (greedy, --tokens tokens each, a prompt of
its own) and records when each SSE chunk arrives. Printed per C:
  agg tok/s   tokens received by all clients / wall time from the first request to the last chunk
  TTFT        request sent -> first token, p50 and p99 over the requests
  ITL         gap between consecutive tokens of one stream, p50 and p99 over all gaps
mixatt runs with its own OpenMP wait default (a short spin, then sleep: docs/PERFORMANCE.md) unless the
environment sets OMP_WAIT_POLICY or GOMP_SPINCOUNT. Tokens are counted as content chunks (one per token on both servers for the ASCII text these prompts give).

The peer is llama-cpp-python's OpenAI server (`pip install 'llama-cpp-python[server]'`, which compiles
llama.cpp), on the same GGUF with the same threads: python -m llama_cpp.server --n_threads T --n_ctx ctx
--interrupt_requests False ... It serves one request at a time per model (no continuous batching in
llama-cpp-python's server), which is what the figures show; by default it would cut a running stream short
whenever another request arrives, so the bench makes it queue them instead. With --skip-peer only mixatt runs.

Not part of CI. Usage:
  python3 bench/serve/bench_serve.py [--model FILE] [--threads 2] [--concurrency 1,4,16,64] [--tokens 32]
                                     [--requests 2] [--ctx 512] [--skip-peer] [--mixatt-flags "..."]
                                     [--plot FILE.png]   (gnuplot: aggregate tok/s against streams, per server)
"""
import argparse
import http.client
import json
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ["apple", "river", "music", "stone", "cloud", "tiger", "bread", "light", "paper", "ocean", "glass",
         "horse", "money", "green", "table", "dream"]


def prompt_for(i):
    # an unfinished sentence, so that neither server meets EOS early (both count the tokens they sent)
    return f"Chapter {i}. The {WORDS[i % len(WORDS)]} and the {WORDS[(i * 7 + 3) % len(WORDS)]} walked along the"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def server_log(name):
    """A file for a server's stderr (a pipe nobody reads would fill and stop a chatty server, as llama.cpp's)."""
    return open(os.path.join("/tmp", f"bench_serve.{name}.{os.getpid()}.log"), "w+")


def log_tail(proc):
    proc.log.seek(0)
    return proc.log.read()[-2000:]


def wait_ready(port, path, proc, timeout=600):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log_tail(proc)}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server did not come up in {timeout} s: {log_tail(proc)}")


def stream_one(port, model, prompt, n_tokens, out):
    """One streaming request; appends (t_sent, [chunk times]) to out."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": n_tokens, "temperature": 0,
                       "stream": True}).encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]}")
    times, buf = [], b""
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        ch = json.loads(data)
        if ch.get("choices") and ch["choices"][0].get("text"):
            times.append(time.perf_counter())
    c.close()
    out.append((t0, times))


def run_level(port, model, conc, n_req, n_tokens):
    results, threads, lock = [], [], threading.Lock()

    def client(k):
        mine = []
        for j in range(n_req):
            stream_one(port, model, prompt_for(k * n_req + j), n_tokens, mine)
        with lock:
            results.extend(mine)

    t0 = time.perf_counter()
    for k in range(conc):
        threads.append(threading.Thread(target=client, args=(k,)))
        threads[-1].start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    toks = sum(len(ts) for _, ts in results)
    ttft = [ts[0] - t_sent for t_sent, ts in results if ts]
    itl = [b - a for _, ts in results for a, b in zip(ts, ts[1:])]
    return {"conc": conc, "tokens": toks, "wall": wall, "agg": toks / wall, "ttft": ttft, "itl": itl}


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def start_mixatt(args, port, conc_max):
    binary = os.path.join(ROOT, "build", "mixatt")
    cmd = [binary, "serve", "-m", args.model, "--port", str(port), "-t", str(args.threads), "--ctx",
           str(args.ctx), "--parallel", str(conc_max), *shlex.split(args.mixatt_flags)]
    log = server_log("mixatt")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    proc.log = log
    wait_ready(port, "/health", proc)
    return proc


def start_peer(args, port, conc_max):
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", args.model, "--host", "127.0.0.1", "--port",
           str(port), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads), "--n_ctx",
           str(args.ctx), "--n_batch", "512", "--interrupt_requests", "False"]  # queue, not cut, concurrent ones
    log = server_log("llama.cpp")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    proc.log = log
    wait_ready(port, "/v1/models", proc)
    return proc


def bench(name, start, args, levels):
    port = free_port()
    proc = start(args, port, max(levels))
    rows = []
    try:
        stream_one(port, "m", "Warm up.", 4, [])  # warm-up (page in the weights)
        for conc in levels:
            r = run_level(port, "m", conc, args.requests, args.tokens)
            r["name"] = name
            rows.append(r)
            print(f"  {name:10s} {conc:4d} streams: {r['agg']:8.1f} tok/s aggregate, TTFT p50 "
                  f"{pct(r['ttft'], 50) * 1e3:8.1f} ms p99 {pct(r['ttft'], 99) * 1e3:8.1f} ms, ITL p50 "
                  f"{pct(r['itl'], 50) * 1e3:7.1f} ms p99 {pct(r['itl'], 99) * 1e3:7.1f} ms "
                  f"({r['tokens']} tokens in {r['wall']:.1f} s)", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            return m.group(1) if m else platform.processor()
    except OSError:
        return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--mixatt-flags", default="")
    ap.add_argument("--plot", help="write a PNG of aggregate tok/s against concurrent streams (gnuplot)")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    print(f"# mixatt serve vs llama.cpp server: {os.path.basename(args.model)}, {args.threads} threads, "
          f"{args.tokens} tokens x {args.requests} requests per client, greedy, streaming")
    print(f"# {cpu_name()}, {os.cpu_count()} logical CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    load = os.getloadavg()
    print(f"# load average at start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (other processes share this CPU)")
    rows = bench("mixatt", start_mixatt, args, levels)
    if not args.skip_peer:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            sys.exit("llama-cpp-python is not installed: pip install 'llama-cpp-python[server]' (or --skip-peer)")
        rows += bench("llama.cpp", start_peer, args, levels)
        by = {(r["name"], r["conc"]): r for r in rows}
        print("\n| streams | mixatt tok/s | llama.cpp tok/s | ratio | mixatt ITL p99 ms | llama.cpp ITL p99 ms |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for c in levels:
            a, b = by[("mixatt", c)], by[("llama.cpp", c)]
            print(f"| {c} | {a['agg']:.1f} | {b['agg']:.1f} | {a['agg'] / b['agg']:.2f}x | "
                  f"{pct(a['itl'], 99) * 1e3:.1f} | {pct(b['itl'], 99) * 1e3:.1f} |")
    print(f"# load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.plot:
        plot(rows, levels, args.plot)


def plot(rows, levels, path):
    """Aggregate tok/s against streams, one line per server, through gnuplot (Debian's gnuplot-nox)."""
    names = sorted({r["name"] for r in rows}, key=lambda n: n != "mixatt")
    data = "".join(f"{c} " + " ".join(f"{next(r['agg'] for r in rows if r['name'] == n and r['conc'] == c):.2f}"
                                      for n in names) + "\n" for c in levels)
    lines = ", ".join(f"$d using 1:{i + 2} with linespoints lw 2 title '{n}'" for i, n in enumerate(names))
    script = (f"$d << EOD\n{data}EOD\nset terminal pngcairo size 800,500\nset output '{path}'\n"
              "set logscale x 2\nset xlabel 'concurrent streams'\nset ylabel 'aggregate tok/s'\n"
              f"set title 'mixatt serve, greedy streaming ({cpu_name()})'\nset key top left\nset grid\n"
              f"plot {lines}\n")
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    print(f"# plot: {path}")


if __name__ == "__main__":
    main()
