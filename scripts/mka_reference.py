#!/usr/bin/env python3
"""mka_reference.py: an independent numpy (float64) implementation of MKA and FastMKA, written from
docs/attention.md, "MKA and FastMKA", for a whole llama-style model (RMSNorm, RoPE in the rotate-half layout, GQA, SwiGLU).

Weights are a dict of numpy arrays named as in GGUF ("blk.0.attn_q.weight") with numpy shapes (n_out, n_in);
`cfg` holds n_layer, n_head, n_kv_head, eps, rope_theta. Used by scripts/fixtures_blocks.py to write the
reference logits of tests/fixtures/blocks/mka*.f32; importable and runnable on its own (prints a self-check).
"""
import numpy as np


def rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope_half(x, pos, theta):
    """x (T, heads, D), rotated in pairs (i, i + D/2) by angle pos * theta^(-2i/D)."""
    D = x.shape[-1]
    half = D // 2
    inv = 1.0 / theta ** (np.arange(half, dtype=np.float64) * 2 / D)
    ang = pos[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def causal_attention(q, k, v, n_kv_head):
    """q (T, H, D), k/v (T, G, D): out (T, H, D), keys s <= t, scale 1/sqrt(D)."""
    T, H, D = q.shape
    group = H // n_kv_head
    out = np.zeros_like(q)
    for h in range(H):
        g = h // group
        s = q[:, h, :] @ k[:, g, :].T / np.sqrt(D)
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, h, :] = p @ v[:, g, :]
    return out


def router(x, W, l):
    """r(t) = softmax(W2 tanh(W1 x + b1) + b2), (T, 3)."""
    a = np.tanh(x @ W[f"blk.{l}.mka_router1.weight"].T + W[f"blk.{l}.mka_router1.bias"])
    z = a @ W[f"blk.{l}.mka_router2.weight"].T + W[f"blk.{l}.mka_router2.bias"]
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def mka_attention(x, W, l, cfg, fast):
    """One layer's MKA (fast=False) or FastMKA (fast=True) on x (T, C), the normed layer input."""
    T, C = x.shape
    H, G = cfg["n_head"], cfg["n_kv_head"]
    D = C // H if "head_dim" not in cfg else cfg["head_dim"]
    pos = np.arange(T, dtype=np.float64)
    Wq, Wk, Wv, Wo = (W[f"blk.{l}.attn_{n}.weight"] for n in ("q", "k", "v", "output"))
    bk = np.zeros(G * D)  # llama-style layers have no biases: L3's K/V are zero
    bv = np.zeros(G * D)
    r = router(x, W, l)
    L1 = x
    L2 = np.cumsum(x, axis=0) / (np.arange(T)[:, None] + 1.0)  # causal running mean
    L3 = np.zeros_like(x)
    q = rope_half((x @ Wq.T).reshape(T, H, D), pos, cfg["rope_theta"])

    def kv_of(mem):
        k = rope_half((mem @ Wk.T + bk).reshape(T, G, D), pos, cfg["rope_theta"])
        v = (mem @ Wv.T + bv).reshape(T, G, D)
        return k, v

    if fast:
        mem = r[:, 0:1] * L1 + r[:, 1:2] * L2 + r[:, 2:3] * L3
        o = causal_attention(q, *kv_of(mem), G)
    else:
        o = sum(r[:, i, None, None] * causal_attention(q, *kv_of(L), G) for i, L in enumerate((L1, L2, L3)))
    return o.reshape(T, H * D) @ Wo.T


def forward(ids, W, cfg, fast):
    """Logits (T, vocab) of a llama-style model whose every layer is MKA / FastMKA."""
    eps = cfg["eps"]
    x = W["token_embd.weight"][ids].astype(np.float64)
    for l in range(cfg["n_layer"]):
        h = rmsnorm(x, W[f"blk.{l}.attn_norm.weight"], eps)
        x = x + mka_attention(h, W, l, cfg, fast)
        h = rmsnorm(x, W[f"blk.{l}.ffn_norm.weight"], eps)
        g = h @ W[f"blk.{l}.ffn_gate.weight"].T
        u = h @ W[f"blk.{l}.ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ W[f"blk.{l}.ffn_down.weight"].T
    x = rmsnorm(x, W["output_norm.weight"], eps)
    return x @ W["output.weight"].T


def _self_check():
    """Causality: the logits of a prefix do not depend on later tokens (the published code fails this)."""
    rng = np.random.default_rng(0)
    C, H, G, F, V, n_layer = 16, 4, 2, 24, 32, 2
    W = {"token_embd.weight": rng.normal(0, 1, (V, C)), "output_norm.weight": np.ones(C),
         "output.weight": rng.normal(0, 0.3, (V, C))}
    for l in range(n_layer):
        for n, shape in (("attn_q", (C, C)), ("attn_k", (G * C // H, C)), ("attn_v", (G * C // H, C)),
                         ("attn_output", (C, C)), ("ffn_gate", (F, C)), ("ffn_up", (F, C)), ("ffn_down", (C, F)),
                         ("mka_router1", (C, C)), ("mka_router2", (3, C))):
            W[f"blk.{l}.{n}.weight"] = rng.normal(0, 0.3, shape)
        W[f"blk.{l}.mka_router1.bias"] = rng.normal(0, 0.3, C)
        W[f"blk.{l}.mka_router2.bias"] = rng.normal(0, 0.3, 3)
        W[f"blk.{l}.attn_norm.weight"] = np.ones(C)
        W[f"blk.{l}.ffn_norm.weight"] = np.ones(C)
    cfg = {"n_layer": n_layer, "n_head": H, "n_kv_head": G, "eps": 1e-5, "rope_theta": 10000.0}
    ids = rng.integers(0, V, 12)
    for fast in (False, True):
        full = forward(ids, W, cfg, fast)
        part = forward(ids[:7], W, cfg, fast)
        assert np.allclose(full[:7], part, rtol=1e-12, atol=1e-12), "not causal"
    print("mka_reference: causal self-check passed")


if __name__ == "__main__":
    _self_check()
