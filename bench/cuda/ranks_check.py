#!/usr/bin/env python3
"""ranks_check.py: tensor parallelism on GPUs (`mpirun -np 2 mixatt logits --tp 2 --device cuda`, NCCL) against
one GPU, the CPU in fp32 and Hugging Face transformers' logits, on the tiny HF fixtures (Llama: GQA, KV heads
divided; Mixtral: experts split; DeepSeek-V2: MLA heads split, experts split), in prefill and token-by-token
decode (the decode steps run through the CUDA graphs, split at every NCCL collective).

Bounds: 2 GPUs against 1 GPU and against the fp32 references, relative L2 <= 3e-2 per position and top-1
agreement >= 90%: both GPU runs keep weights and the KV cache in bf16 (8 significant bits), the bound of
tests/cuda/check_models_gpu.py; the sums over ranks only change the order of fp32 additions. Run by
bench/cuda/ranks_run.sh with MIXATT (a wrapper of the binary) and MPIRUN (the launcher line, ranks included).
Exit status 0 when every case is within bounds."""
import json
import os
import shlex
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HF = os.path.join(ROOT, "tests", "fixtures", "hf")
BOUND, TOP1 = 3e-2, 0.9
NAMES = ["llama", "mixtral", "deepseek_v2"]


def logits(cmd, out, n):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {(r.stdout + r.stderr).strip()[-600:]}")
    return np.fromfile(out, dtype="<f4").reshape(n, -1).astype(np.float64)


def compare(ours, ref):
    err = np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)
    return err.max(), (ours.argmax(1) == ref.argmax(1)).mean()


def main():
    binary = os.environ["MIXATT"]
    dev = os.environ.get("DEVICE", "cuda")  # cpu: a dry run of the script's logic without GPUs
    mpirun = shlex.split(os.environ["MPIRUN"])
    failed, rows = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        for name in NAMES:
            d = os.path.join(HF, name)
            ids = json.load(open(os.path.join(d, "reference.json")))["ids"]
            hf = np.load(os.path.join(d, "logits.npy")).astype(np.float64)
            base = ["logits", "-m", d, "--ids", " ".join(map(str, ids))]
            for mode in ([], ["--decode"]):
                label = f"{name:12s} {'decode' if mode else 'prefill':8s}"
                o = {k: os.path.join(tmp, k + ".f32") for k in ("cpu", "gpu1", "gpu2", "cpu2")}
                try:
                    cpu = logits([binary, *base, "--exact", "-o", o["cpu"], *mode], o["cpu"], len(ids))
                    gpu1 = logits([binary, *base, "--device", dev, "-o", o["gpu1"], *mode], o["gpu1"], len(ids))
                    gpu2 = logits([*mpirun, binary, *base, "--tp", os.environ.get("NP", "2"), "--device", dev, "-o", o["gpu2"], *mode],
                                  o["gpu2"], len(ids))
                except RuntimeError as e:
                    print(f"FAIL {label} {e}", flush=True)
                    failed += 1
                    continue
                res = {"case": name, "mode": "decode" if mode else "prefill"}
                ok = True
                for ref_name, ref in (("gpu1", gpu1), ("cpu_fp32", cpu), ("hf", hf)):
                    e, t = compare(gpu2, ref)
                    res[f"vs_{ref_name}"] = {"rel_l2_max": float(e), "top1": float(t)}
                    ok = ok and e <= BOUND and t >= TOP1
                e1, _ = compare(gpu1, cpu)
                res["gpu1_vs_cpu_rel_l2_max"] = float(e1)
                failed += not ok
                rows.append(res)
                print(f"{'ok  ' if ok else 'FAIL'} {label} 2 GPUs vs 1 GPU: rel L2 max "
                      f"{res['vs_gpu1']['rel_l2_max']:.2e} top-1 {res['vs_gpu1']['top1']:.3f}; vs CPU fp32 "
                      f"{res['vs_cpu_fp32']['rel_l2_max']:.2e}; vs HF {res['vs_hf']['rel_l2_max']:.2e}; "
                      f"(1 GPU vs CPU fp32 {e1:.2e})", flush=True)
    out = os.environ.get("OUTD")
    if out:
        json.dump(rows, open(os.path.join(out, "ranks_check.json"), "w"), indent=1)
    print(f"{failed} failed of {len(NAMES) * 2}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
