#!/usr/bin/env python3
"""fixtures_xattn.py: generates tests/fixtures/xattn/ for XAttention (src/attention/xattn.h) with numpy.

An independent reference of the scoring and selection, written the way the paper computes them (one GEMM
after regrouping rows) rather than as mixatt's loops:
  - the call's queries sit at positions p0 .. p0+T-1, the keys at 0 .. kv_hi (causal prefill: kv_hi =
    p0+T-1); rows outside them are zero;
  - Qr[a] = concat_t q[aS+S-1-t], Kr[b] = concat_t k[bS+t] (t < S), A = Qr Krᵀ · scale / S;
  - a softmax (float64) per query tile over key tiles b <= a, summed into block masses M(i, j);
  - per head and query block i: keep block 0 and the diagonal min(i, last key block), then the others by
    descending mass (ties: lower block) while the kept mass is below tau · the row total; tau = 1 keeps all;
  - the output of exact causal attention restricted to the kept blocks (float64).
Each case is reseeded until no decision is near a tie (kept mass vs. the threshold and neighbouring masses
differ by > 1e-4 relative), so fp32 rounding in mixatt cannot flip a choice.
Writes cases.json (parameters, kept lists) and per case NAME.q/.k/.v/.mass/.out.f32 (little-endian fp32):
q (T, H, D), k and v (kv_hi+1, G, D), mass (H, n_qb, n_kb), out (T, H, D).
Run: python3 scripts/fixtures_xattn.py
"""
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "xattn")

CASES = [
    # name, p0, T, H, G, D, B, S, tau, q scale
    ("aligned", 0, 1024, 4, 2, 16, 128, 8, 0.8, 1.0),
    ("chunk_unaligned", 700, 300, 4, 2, 16, 128, 16, 0.7, 1.0),
    ("small_blocks_mqa", 64, 250, 3, 1, 8, 32, 4, 0.5, 1.0),
    ("tau_one", 0, 300, 2, 2, 16, 128, 8, 1.0, 1.0),
]


def block_masses(q, k, p0, S, B, scale):
    """q (T, H, D) at positions p0..; k (N, G, D) at 0..N-1. Returns mass (H, n_qb, n_kb) and qb0."""
    T, H, D = q.shape
    N, G, _ = k.shape
    qt0, qt1 = p0 // S, (p0 + T - 1) // S
    nkt = (N - 1) // S + 1
    qb0 = p0 // B
    n_qb = (p0 + T - 1) // B - qb0 + 1
    n_kb = (N - 1) // B + 1
    qpad = np.zeros(((qt1 + 1) * S, H, D))
    qpad[p0:p0 + T] = q
    kpad = np.zeros((nkt * S, G, D))
    kpad[:N] = k
    mass = np.zeros((H, n_qb, n_kb))
    for h in range(H):
        g = h // (H // G)
        qa = qpad[qt0 * S:, h].reshape(qt1 - qt0 + 1, S, D)[:, ::-1, :].reshape(qt1 - qt0 + 1, S * D)
        kb = kpad[:, g].reshape(nkt, S * D)
        A = qa @ kb.T * scale / S  # (n_qt, n_kt)
        for r, a in enumerate(range(qt0, qt1 + 1)):
            last = min(a, nkt - 1)
            row = A[r, :last + 1]
            p = np.exp(row - row.max())
            p /= p.sum()
            i = a * S // B - qb0
            np.add.at(mass[h, i], (np.arange(last + 1) * S) // B, p)
    return mass, qb0


def select(mass_row, i, j_last, tau):
    """Kept key blocks (ascending) and the smallest decision margin of one (head, query block) row."""
    j1 = min(i, j_last)
    if tau >= 1.0:
        return list(range(j1 + 1)), np.inf
    total = mass_row[:j1 + 1].sum()
    kept_set = {0, j1}
    kept = mass_row[0] + (mass_row[j1] if j1 != 0 else 0.0)
    rest = sorted(range(1, j1), key=lambda j: (-mass_row[j], j))
    margin = np.inf
    for n, j in enumerate(rest):
        margin = min(margin, abs(kept - tau * total) / total)
        if n + 1 < len(rest):
            margin = min(margin, abs(mass_row[j] - mass_row[rest[n + 1]]) / total)
        if kept >= tau * total:
            break
        kept_set.add(j)
        kept += mass_row[j]
    return sorted(kept_set), margin


def masked_attention(q, k, v, p0, B, kept, qb0, scale):
    T, H, D = q.shape
    G = k.shape[1]
    out = np.zeros((T, H, v.shape[2]))
    for t in range(T):
        pos = p0 + t
        for h in range(H):
            g = h // (H // G)
            keys = [p for j in kept[h][pos // B - qb0] for p in range(j * B, min((j + 1) * B, pos + 1))]
            s = k[keys, g] @ q[t, h] * scale
            w = np.exp(s - s.max())
            out[t, h] = (w / w.sum()) @ v[keys, g]
    return out


def make_case(name, p0, T, H, G, D, B, S, tau, qs):
    N = p0 + T
    for seed in range(1000):
        rng = np.random.default_rng(1000 * len(name) + seed)
        # structure, so that selection has something to find: a direction per KV head shared by the queries
        # and by the keys of random "hot" blocks (scaled per block)
        u = rng.standard_normal((G, D)) / np.sqrt(D)
        hot = rng.random((N - 1) // B + 1) * (rng.random((N - 1) // B + 1) < 0.4) * 6
        q = qs * rng.standard_normal((T, H, D)) + 2 * np.repeat(u, H // G, axis=0)[None]
        k = rng.standard_normal((N, G, D)) + hot[np.arange(N) // B][:, None, None] * u[None]
        q, k = q.astype(np.float32), k.astype(np.float32)
        v = rng.standard_normal((N, G, D)).astype(np.float32)
        scale = np.float32(1.0 / np.sqrt(D))
        mass, qb0 = block_masses(q.astype(np.float64), k.astype(np.float64), p0, S, B, float(scale))
        n_qb, j_last = mass.shape[1], (N - 1) // B
        kept, margin = [], np.inf
        for h in range(H):
            rows = []
            for i in range(n_qb):
                ks, m = select(mass[h, i], qb0 + i, j_last, tau)
                rows.append(ks)
                margin = min(margin, m)
            kept.append(rows)
        if margin > 1e-4:
            break
    else:
        raise SystemExit(f"{name}: no seed without near ties")
    out = masked_attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), p0, B, kept, qb0,
                           float(scale))
    for ext, arr in (("q", q), ("k", k), ("v", v), ("mass", mass), ("out", out)):
        arr.astype("<f4").tofile(os.path.join(OUT, f"{name}.{ext}.f32"))
    n_kept = sum(len(r) for rows in kept for r in rows)
    n_vis = sum(min(qb0 + i, j_last) + 1 for i in range(n_qb)) * H
    return {"name": name, "p0": p0, "T": T, "H": H, "G": G, "D": D, "B": B, "S": S, "tau": tau,
            "kv_hi": N - 1, "qb0": qb0, "n_qb": n_qb, "n_kb": j_last + 1, "seed": seed, "kept": kept,
            "density": n_kept / n_vis}


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = [make_case(*c) for c in CASES]
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    for c in cases:
        print(f"{c['name']}: density {c['density']:.3f} (seed {c['seed']})")


if __name__ == "__main__":
    main()
