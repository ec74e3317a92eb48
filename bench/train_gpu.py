"""train_gpu.py: GPU training speed of `mixatt train --device cuda` beside PyTorch's torch.compile in the same run.

Setup (issue 11): GPT-2 124M (12 layers, d 768, 12 heads, vocab 50257), T 1024, B 16, from scratch, random tokens
(speed does not depend on the data). The peer is a GPT-2 written here in the peers' style: bf16 autocast,
scaled_dot_product_attention (causal), fused AdamW, torch.compile. Printed per run: tok/s (median of the steady
steps), MFU against the measured bf16 GEMM ceiling of this GPU (8192^3 torch.matmul), and peak GPU memory (the
process's, polled from nvidia-smi every 50 ms, the same way for both). Variants of mixatt: the attention kinds and
plans of the variant study (MA-Offset, MA-Pairs, GQA, MQA, MLA, MKA, FastMKA).

    MIXATT=path/to/mixatt python3 bench/train_gpu.py [--steps 12] [--variants] [--recompute] [--out DIR]
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V, L, C, H, T, B = 50257, 12, 768, 12, 1024, 16


def flops_per_token(n_params, layers=L, width=C, seq=T):
    """PaLM's estimate: 6 N for the matmuls plus 12 L T C for attention (forward + backward)."""
    return 6 * n_params + 12 * layers * seq * width


def gemm_ceiling():
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192 ** 3 * 20 / (time.perf_counter() - t0)


class PeakMemory:
    """Polls nvidia-smi for the used memory of one process (its pid) and keeps the maximum, in MiB."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 2 and parts[0] == str(self.pid):
                    self.peak = max(self.peak, int(parts[1]))
            time.sleep(0.05)

    def done(self):
        self.stop = True
        self.t.join()
        return self.peak


def write_shard(path, n_tokens, seed=0):
    """llm.c's token shard: a 256-int header (magic 20240520, version 1, count) and uint16 tokens."""
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, V, size=n_tokens, dtype=np.uint16)
    hdr = np.zeros(256, dtype=np.int32)
    hdr[0], hdr[1], hdr[2] = 20240520, 1, n_tokens
    with open(path, "wb") as f:
        f.write(hdr.tobytes())
        f.write(toks.tobytes())


def run_mixatt(mixatt, work, steps, name, sets, precision="bf16"):
    run_dir = os.path.join(work, "run-" + name)
    cmd = [mixatt, "train", "-c", os.path.join(ROOT, "configs", "train-gpt2-124m.json"), "--device", "cuda",
           "--precision", precision, "-o", run_dir, "-q", "--set", f"steps={steps}",
           "--set", f"train_data={os.path.join(work, 'train.bin')}"]
    for s in sets:
        cmd += ["--set", s]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mem = PeakMemory(p.pid)
    out, err = p.communicate()
    peak = mem.done()
    if p.returncode != 0:
        print(f"mixatt {name}: failed (rc {p.returncode}): {err.strip()[-400:]}")
        return None
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        lines = [json.loads(x) for x in f if '"tok_per_s"' in x]
    tps = sorted(x["tok_per_s"] for x in lines[2:]) or [lines[-1]["tok_per_s"]]
    return {"tok_s": tps[len(tps) // 2], "peak_mib": peak, "loss": lines[-1]["loss"], "steps": len(lines)}


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.out = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (z.view(b, t, H, C // H).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, C)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.lnf = nn.LayerNorm(C)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.lnf(x) @ self.wte.weight.t()  # tied head
        return F.cross_entropy(logits.float().view(-1, V), targets.view(-1))


def run_torch(steps):
    torch.manual_seed(0)
    model = GPT().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    step = torch.compile(model)
    x = torch.randint(0, V, (B, T), device="cuda")
    y = torch.randint(0, V, (B, T), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    steady = sorted(times[3:])
    n_params = sum(p.numel() for p in model.parameters()) - T * C  # as mixatt counts: positions included
    return {"tok_s": B * T / steady[len(steady) // 2], "peak_alloc_mib": torch.cuda.max_memory_allocated() / 2 ** 20,
            "n_params": sum(p.numel() for p in model.parameters()), "n_params_no_pos": n_params}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--recompute", action="store_true", help="also MHA with --recompute (recompute=true)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    mixatt = os.environ.get("MIXATT", os.path.join(ROOT, "build", "mixatt"))
    work = a.out or tempfile.mkdtemp()
    os.makedirs(work, exist_ok=True)
    write_shard(os.path.join(work, "train.bin"), B * T * (a.steps + 2) + 1)
    print(f"train_gpu: {torch.cuda.get_device_name(0)}, GPT-2 124M, B {B} x T {T}, {a.steps} steps")
    ceiling = gemm_ceiling()
    print(f"ceiling: bf16 GEMM 8192^3 (torch.matmul) {ceiling / 1e12:.0f} TFLOP/s")
    results = {}
    if os.environ.get("SKIP_TORCH") != "1":
        # torch.compile runs in a child so that its memory is measured alone, the same way as mixatt's
        code = ("import json,sys; sys.path.insert(0, %r); import train_gpu as m; print('RESULT', json.dumps(m.run_torch(%d)))"
                % (os.path.dirname(os.path.abspath(__file__)), a.steps + 3))
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        mem = PeakMemory(p.pid)
        out, err = p.communicate()
        peak = mem.done()
        line = [x for x in out.splitlines() if x.startswith("RESULT")]
        if p.returncode or not line:
            print("torch.compile: failed:", err[-600:])
        else:
            r = json.loads(line[0][7:])
            r["peak_mib"] = peak
            results["torch.compile"] = r
    n_params = 124_475_904  # GPT-2 124M with tied embeddings, positions included (mixatt's count)
    fpt = flops_per_token(n_params)
    runs = [("mha", [])]
    if a.variants:
        # GPT-2 keeps n_kv_head == n_head; the KV-sharing variants run as Llama blocks of the same shape
        # (RMSNorm, RoPE, SwiGLU with d_ff 2048: about the parameters of the GELU MLP), beside Llama MHA
        llama = ["arch=llama", "d_ff=2048"]
        runs += [("ma-offset", ["plan=ma-offset"]), ("ma-pairs", ["plan=ma-pairs"]), ("llama-mha", llama),
                 ("llama-gqa", llama + ["n_kv_head=4"]), ("llama-mqa", llama + ["n_kv_head=1"]),
                 # MLA with the config's latent (rank 256, q/k heads of 32 + 32 RoPE dims, values of 64), MKA and
                 # FastMKA with their router: the same Llama blocks otherwise
                 ("llama-mla", llama + ["attn=mla"]), ("llama-mka", llama + ["attn=mka"]),
                 ("llama-fastmka", llama + ["attn=fastmka"])]
    if a.recompute:
        runs.append(("mha-recompute", ["recompute=true"]))
    for name, sets in runs:
        r = run_mixatt(mixatt, work, a.steps, name, sets)
        if r:
            results["mixatt " + name] = r
    if os.environ.get("FP32") == "1":
        r = run_mixatt(mixatt, work, a.steps, "mha-fp32", [], precision="fp32")
        if r:
            results["mixatt mha fp32"] = r
    print(f"{'run':<22} {'tok/s':>10} {'MFU':>6} {'peak MiB':>9}  vs torch.compile")
    peer = results.get("torch.compile", {}).get("tok_s")
    for k, r in results.items():
        mfu = r["tok_s"] * fpt / ceiling
        rel = f"{r['tok_s'] / peer:.2f}x" if peer else "-"
        print(f"{k:<22} {r['tok_s']:>10.0f} {100 * mfu:>5.1f}% {r['peak_mib']:>9}  {rel}")
    with open(os.path.join(work, "train_gpu.json"), "w") as f:
        json.dump({"ceiling_flops": ceiling, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
