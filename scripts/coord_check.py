#!/usr/bin/env python3
"""muP coordinate check: trains the same small Llama-shaped model at several widths for a few steps, with and
without muP, through `mixatt train --log-act-rms`, and reports the RMS of the residual stream leaving the last
layer at the last step. Under the standard parameterization (SP) at a fixed learning rate the updates grow
with width and so does the RMS; under muP (docs/training.md) it stays O(1). The slope of log(RMS) against
log(width) sums this up: about 1 for SP after a few Adam steps, about 0 for muP.

    scripts/coord_check.py [--mixatt build/mixatt] [--widths 64,128,256,512] [--steps 5] [--lr 1e-2]
                           [--json]

Every width keeps 4 heads (the head dim grows), 2 layers and d_ff = 4 x width; muP's base width is the first
width. The learning rate is constant (no warmup, no decay, no clipping) so that the steps are comparable."""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(width, base, mup, steps, lr):
    return {
        "arch": "llama", "vocab": 256, "d_model": width, "n_layer": 2, "n_head": 4, "n_kv_head": 4,
        "d_ff": 4 * width, "max_ctx": 32, "tied_embeddings": False, "seed": 7, "init_std": 0.02,
        "train_data": "synthetic:copy", "batch": 4, "seq": 32, "steps": steps, "warmup": 0, "lr": lr,
        "min_lr": lr, "weight_decay": 0.0, "grad_clip": 0.0, "val_every": 0, "log_every": 0,
        "mup": mup, "mup_base_width": base,
    }


def run_one(mixatt, width, base, mup, steps, lr, threads):
    """The act_rms list of every step of one run."""
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "config.json")
        with open(cfg, "w") as f:
            json.dump(config(width, base, mup, steps, lr), f)
        out = os.path.join(d, "run")
        r = subprocess.run([mixatt, "train", "-c", cfg, "-o", out, "-q", "--log-act-rms", "-t", str(threads)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"coord_check: mixatt train failed at width {width}: {r.stderr}")
        with open(os.path.join(out, "log.jsonl")) as f:
            lines = [json.loads(x) for x in f if x.strip()]
    return [x["act_rms"] for x in lines if "act_rms" in x]


def slope(xs, ys):
    """Least-squares slope of log(ys) against log(xs)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def check(mixatt, widths, steps, lr, threads=2):
    res = {"widths": widths, "steps": steps, "lr": lr}
    for name, mup in (("sp", False), ("mup", True)):
        runs = [run_one(mixatt, w, widths[0], mup, steps, lr, threads) for w in widths]
        res[name] = {"first": [r[0][-1] for r in runs], "last": [r[-1][-1] for r in runs],
                     "layers_last": [r[-1] for r in runs]}
        res[name]["slope"] = slope(widths, res[name]["last"])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixatt", default=os.environ.get("MIXATT", os.path.join(ROOT, "build", "mixatt")))
    ap.add_argument("--widths", default="64,128,256,512")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args()
    widths = [int(x) for x in a.widths.split(",")]
    res = check(a.mixatt, widths, a.steps, a.lr, a.threads)
    if a.json:
        print(json.dumps(res))
        return
    print(f"coordinate check: RMS of the residual stream leaving the last layer, step 1 and step {a.steps} "
          f"(lr {a.lr}, Adam, base width {widths[0]})\n")
    print("| width | SP step 1 | SP step %d | muP step 1 | muP step %d |" % (a.steps, a.steps))
    print("| ---: | ---: | ---: | ---: | ---: |")
    for i, w in enumerate(widths):
        print(f"| {w} | {res['sp']['first'][i]:.4g} | {res['sp']['last'][i]:.4g} | {res['mup']['first'][i]:.4g} "
              f"| {res['mup']['last'][i]:.4g} |")
    print(f"\nslope of log RMS vs log width at step {a.steps}: SP {res['sp']['slope']:.3f}, "
          f"muP {res['mup']['slope']:.3f}")


if __name__ == "__main__":
    main()
