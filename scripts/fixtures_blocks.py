#!/usr/bin/env python3
"""fixtures_blocks.py: generates tests/fixtures/blocks/ for the MoE, MLA and MKA blocks.

Tiny random models written as GGUF files with the `gguf` package, each with reference logits for a fixed
token sequence (float32 [T, vocab] in NAME.logits.f32; the ids in NAME.ids, space-separated; all in
cases.json):
  - mixtral:       Hugging Face MixtralForCausalLM (top-2 of 4 experts), architecture "llama" with
                   mixatt.rope_half = 1 (HF's rotate-half layout, no Q/K permutation).
  - deepseek2:     DeepseekV2ForCausalLM with a query latent (q_lora_rank), MLA, a dense first layer, then MoE
                   (top-2 of 4, one shared expert, routed_scaling_factor 1.5, no top-k renormalization).
  - deepseek2_noq: the same family without a query latent, top-3 of 6 experts, two shared experts.
  - mka, fastmka:  one random llama-style GGUF with mka_router tensors (mka.gguf); references from the
                   independent numpy implementation in scripts/mka_reference.py (docs/attention.md, "MKA and FastMKA").
The transformers references run in float64 on the fp32 weights written to the file. DeepSeek's rotary pairs
are adjacent (2i, 2i+1); the rope rows of q and k_rope are permuted to the rotate-half layout in the file
(and mixatt.rope_half = 1 says so); q·k is unchanged by the common permutation. Each MoE fixture is reseeded
until every token's k-th and (k+1)-th routing probabilities differ by > 1e-3, so that fp32 rounding cannot
change which experts are picked. Needs torch + transformers + gguf; run: python3 scripts/fixtures_blocks.py
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mka_reference  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "blocks")
VOCAB, T = 96, 20


def tokenizer(w, vocab):
    """A minimal byte-level BPE vocabulary (mixatt requires one in every GGUF; the tests pass ids)."""
    toks = [chr(33 + i) for i in range(vocab - 1)] + ["!\""]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(toks)
    w.add_token_merges(["! \""])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)


def perturb(model, seed):
    """Replaces the default init (std 0.02, norms = 1) by larger random weights so that attention patterns,
    norms and routing are far from uniform."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def np32(t):
    return t.detach().to("cpu").float().numpy().astype(np.float32)


def half_perm(r):
    """Row order turning adjacent rotary pairs (2i, 2i+1) into rotate-half pairs (i, i + r/2)."""
    return np.concatenate([np.arange(0, r, 2), np.arange(1, r, 2)])


def hf_logits(model, ids):
    """float64 logits of the fp32 weights, plus the router logits of every MoE layer (hooked)."""
    import torch
    routers = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: routers.append(out[0].detach().double().numpy()))
             for name, m in model.named_modules() if type(m).__name__.endswith("TopkRouter")
             or type(m).__name__.endswith("TopKRouter")]
    model = model.to(torch.float64)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    for h in hooks:
        h.remove()
    model.to(torch.float32)
    return logits, routers


def routing_margin(routers, k):
    """Smallest gap between the k-th and (k+1)-th softmax probability over tokens and layers."""
    gap = np.inf
    for z in routers:
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        s = -np.sort(-p, axis=-1)
        gap = min(gap, (s[:, k - 1] - s[:, k]).min())
    return gap


def moe_model(make, k, ids, seed0):
    """A model from make() with perturbed weights whose routing margin exceeds 1e-3 (reseeding)."""
    for seed in range(seed0, seed0 + 100):
        model = make()
        perturb(model, seed)
        logits, routers = hf_logits(model, ids)
        if routing_margin(routers, k) > 1e-3:
            return model, logits
    raise RuntimeError("no seed gives a routing margin > 1e-3")


def llama_keys(w, c, arch="llama"):
    w.add_uint32(f"{arch}.context_length", 64)
    w.add_uint32(f"{arch}.embedding_length", c["C"])
    w.add_uint32(f"{arch}.block_count", c["n_layer"])
    w.add_uint32(f"{arch}.feed_forward_length", c["F"])
    w.add_uint32(f"{arch}.attention.head_count", c["H"])
    w.add_uint32(f"{arch}.attention.head_count_kv", c["G"])
    w.add_float32(f"{arch}.rope.freq_base", c["theta"])
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c["eps"])
    w.add_uint32("mixatt.rope_half", 1)


def write_mixtral(ids):
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM
    c = dict(C=32, n_layer=2, H=4, G=2, F=48, E=4, k=2, theta=10000.0, eps=1e-5)
    cfg = MixtralConfig(vocab_size=VOCAB, hidden_size=c["C"], intermediate_size=c["F"],
                        num_hidden_layers=c["n_layer"], num_attention_heads=c["H"], num_key_value_heads=c["G"],
                        num_local_experts=c["E"], num_experts_per_tok=c["k"], max_position_embeddings=64,
                        rope_theta=c["theta"], rms_norm_eps=c["eps"], tie_word_embeddings=False,
                        sliding_window=None, attn_implementation="eager", experts_implementation="eager")
    torch.manual_seed(0)
    model, logits = moe_model(lambda: MixtralForCausalLM(cfg).eval(), c["k"], ids, 1)
    sd = {n: np32(p) for n, p in model.state_dict().items()}
    import gguf
    w = gguf.GGUFWriter(os.path.join(OUT, "mixtral.gguf"), "llama")
    w.add_name("mixatt-blocks-mixtral")
    llama_keys(w, c)
    w.add_uint32("llama.expert_count", c["E"])
    w.add_uint32("llama.expert_used_count", c["k"])
    tokenizer(w, VOCAB)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    F = c["F"]
    for l in range(c["n_layer"]):
        p = f"model.layers.{l}."
        b = f"blk.{l}."
        w.add_tensor(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        for ours, theirs in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"),
                             ("attn_output", "o_proj")):
            w.add_tensor(b + ours + ".weight", sd[p + "self_attn." + theirs + ".weight"])
        w.add_tensor(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(b + "ffn_gate_inp.weight", sd[p + "mlp.gate.weight"])
        gu = sd[p + "mlp.experts.gate_up_proj"]  # (E, 2F, C)
        w.add_tensor(b + "ffn_gate_exps.weight", np.ascontiguousarray(gu[:, :F, :]))
        w.add_tensor(b + "ffn_up_exps.weight", np.ascontiguousarray(gu[:, F:, :]))
        w.add_tensor(b + "ffn_down_exps.weight", sd[p + "mlp.experts.down_proj"])  # (E, C, F)
    finish(w)
    return {"name": "mixtral", "gguf": "mixtral.gguf", "n_layer": c["n_layer"], "n_expert": c["E"],
            "n_expert_used": c["k"], "moe_layers": c["n_layer"]}, logits


def write_deepseek2(name, ids, q_rank, E, k, n_shared, first_dense, seed0):
    import torch
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM
    c = dict(C=32, n_layer=2, H=4, F=48, Fe=16, R=16, r=4, n=8, v=12, theta=10000.0, eps=1e-6, scale=1.5)
    cfg = DeepseekV2Config(vocab_size=VOCAB, hidden_size=c["C"], intermediate_size=c["F"],
                           moe_intermediate_size=c["Fe"], num_hidden_layers=c["n_layer"],
                           num_attention_heads=c["H"], num_key_value_heads=c["H"], q_lora_rank=q_rank,
                           kv_lora_rank=c["R"], qk_nope_head_dim=c["n"], qk_rope_head_dim=c["r"],
                           v_head_dim=c["v"], n_routed_experts=E, num_experts_per_tok=k,
                           n_shared_experts=n_shared, first_k_dense_replace=first_dense,
                           routed_scaling_factor=c["scale"], topk_method="greedy", max_position_embeddings=64,
                           rope_theta=c["theta"], rms_norm_eps=c["eps"], tie_word_embeddings=False,
                           attn_implementation="eager", experts_implementation="eager")
    torch.manual_seed(0)
    model, logits = moe_model(lambda: DeepseekV2ForCausalLM(cfg).eval(), k, ids, seed0)
    sd = {n: np32(p) for n, p in model.state_dict().items()}
    import gguf
    a = "deepseek2"
    w = gguf.GGUFWriter(os.path.join(OUT, name + ".gguf"), a)
    w.add_name("mixatt-blocks-" + name)
    llama_keys(w, dict(c, G=c["H"]), a)
    if q_rank:
        w.add_uint32(f"{a}.attention.q_lora_rank", q_rank)
    w.add_uint32(f"{a}.attention.kv_lora_rank", c["R"])
    w.add_uint32(f"{a}.attention.key_length", c["n"] + c["r"])
    w.add_uint32(f"{a}.attention.value_length", c["v"])
    w.add_uint32(f"{a}.rope.dimension_count", c["r"])
    w.add_uint32(f"{a}.leading_dense_block_count", first_dense)
    w.add_uint32(f"{a}.expert_feed_forward_length", c["Fe"])
    w.add_uint32(f"{a}.expert_count", E)
    w.add_uint32(f"{a}.expert_used_count", k)
    w.add_uint32(f"{a}.expert_shared_count", n_shared)
    w.add_float32(f"{a}.expert_weights_scale", c["scale"])
    w.add_bool(f"{a}.expert_weights_norm", False)
    tokenizer(w, VOCAB)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    H, n, r, R, Fe = c["H"], c["n"], c["r"], c["R"], c["Fe"]
    perm = half_perm(r)
    for l in range(c["n_layer"]):
        p = f"model.layers.{l}."
        b = f"blk.{l}."
        at = p + "self_attn."
        w.add_tensor(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        qw = sd[at + ("q_b_proj" if q_rank else "q_proj") + ".weight"]  # (H*(n+r), in)
        qw = qw.reshape(H, n + r, -1)
        qw = np.concatenate([qw[:, :n], qw[:, n:][:, perm]], axis=1).reshape(H * (n + r), -1)
        if q_rank:
            w.add_tensor(b + "attn_q_a.weight", sd[at + "q_a_proj.weight"])
            w.add_tensor(b + "attn_q_a_norm.weight", sd[at + "q_a_layernorm.weight"])
            w.add_tensor(b + "attn_q_b.weight", np.ascontiguousarray(qw))
        else:
            w.add_tensor(b + "attn_q.weight", np.ascontiguousarray(qw))
        kva = sd[at + "kv_a_proj_with_mqa.weight"]  # (R + r, C)
        w.add_tensor(b + "attn_kv_a_mqa.weight", np.ascontiguousarray(np.concatenate([kva[:R], kva[R:][perm]])))
        w.add_tensor(b + "attn_kv_a_norm.weight", sd[at + "kv_a_layernorm.weight"])
        w.add_tensor(b + "attn_kv_b.weight", sd[at + "kv_b_proj.weight"])
        w.add_tensor(b + "attn_output.weight", sd[at + "o_proj.weight"])
        w.add_tensor(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        if l < first_dense:
            for ours, theirs in (("ffn_gate", "gate_proj"), ("ffn_up", "up_proj"), ("ffn_down", "down_proj")):
                w.add_tensor(b + ours + ".weight", sd[p + "mlp." + theirs + ".weight"])
            continue
        w.add_tensor(b + "ffn_gate_inp.weight", sd[p + "mlp.gate.weight"])
        gu = sd[p + "mlp.experts.gate_up_proj"]  # (E, 2Fe, C)
        w.add_tensor(b + "ffn_gate_exps.weight", np.ascontiguousarray(gu[:, :Fe, :]))
        w.add_tensor(b + "ffn_up_exps.weight", np.ascontiguousarray(gu[:, Fe:, :]))
        w.add_tensor(b + "ffn_down_exps.weight", sd[p + "mlp.experts.down_proj"])
        for ours, theirs in (("ffn_gate_shexp", "gate_proj"), ("ffn_up_shexp", "up_proj"),
                             ("ffn_down_shexp", "down_proj")):
            w.add_tensor(b + ours + ".weight", sd[p + "mlp.shared_experts." + theirs + ".weight"])
    finish(w)
    return {"name": name, "gguf": name + ".gguf", "n_layer": c["n_layer"], "n_expert": E, "n_expert_used": k,
            "moe_layers": c["n_layer"] - first_dense}, logits


def write_mka(ids):
    """One llama-style GGUF with MKA router tensors; references for MKA and FastMKA from mka_reference."""
    import gguf
    c = dict(C=32, n_layer=2, H=4, G=2, F=48, theta=10000.0, eps=1e-5)
    C, H, G, F = c["C"], c["H"], c["G"], c["F"]
    D = C // H
    rng = np.random.default_rng(7)
    f32 = lambda *shape, s=0.15: rng.normal(0, s, shape).astype(np.float32)  # noqa: E731
    W = {"token_embd.weight": f32(VOCAB, C, s=1.0), "output_norm.weight": 1 + f32(C, s=0.1),
         "output.weight": f32(VOCAB, C, s=0.3)}
    for l in range(c["n_layer"]):
        b = f"blk.{l}."
        W.update({b + "attn_norm.weight": 1 + f32(C, s=0.1), b + "attn_q.weight": f32(H * D, C, s=0.3),
                  b + "attn_k.weight": f32(G * D, C, s=0.3), b + "attn_v.weight": f32(G * D, C, s=0.3),
                  b + "attn_output.weight": f32(C, H * D, s=0.3), b + "ffn_norm.weight": 1 + f32(C, s=0.1),
                  b + "ffn_gate.weight": f32(F, C, s=0.3), b + "ffn_up.weight": f32(F, C, s=0.3),
                  b + "ffn_down.weight": f32(C, F, s=0.3), b + "mka_router1.weight": f32(C, C, s=0.4),
                  b + "mka_router1.bias": f32(C, s=0.3), b + "mka_router2.weight": f32(3, C, s=0.8),
                  b + "mka_router2.bias": f32(3, s=0.5)})
    w = gguf.GGUFWriter(os.path.join(OUT, "mka.gguf"), "llama")
    w.add_name("mixatt-blocks-mka")
    llama_keys(w, c)
    tokenizer(w, VOCAB)
    for name, t in W.items():
        w.add_tensor(name, t)
    finish(w)
    cfg = {"n_layer": c["n_layer"], "n_head": H, "n_kv_head": G, "eps": c["eps"], "rope_theta": c["theta"]}
    W64 = {k: v.astype(np.float64) for k, v in W.items()}
    out = []
    for kind in ("mka", "fastmka"):
        logits = mka_reference.forward(np.array(ids), W64, cfg, fast=kind == "fastmka")
        out.append(({"name": kind, "gguf": "mka.gguf", "attn": kind, "n_layer": c["n_layer"]}, logits))
    return out


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    os.makedirs(OUT, exist_ok=True)
    ids = [int(i) for i in np.random.default_rng(1).integers(0, VOCAB, T)]
    made = [write_mixtral(ids),
            write_deepseek2("deepseek2", ids, q_rank=24, E=4, k=2, n_shared=1, first_dense=1, seed0=1),
            write_deepseek2("deepseek2_noq", ids, q_rank=None, E=6, k=3, n_shared=2, first_dense=0, seed0=50)]
    made += write_mka(ids)
    cases = []
    for meta, logits in made:
        np.asarray(logits, dtype="<f4").tofile(os.path.join(OUT, meta["name"] + ".logits.f32"))
        with open(os.path.join(OUT, meta["name"] + ".ids"), "w") as f:
            f.write(" ".join(map(str, ids)) + "\n")
        cases.append(dict(meta, ids=ids, vocab=VOCAB))
        print(f"{meta['name']}: {len(ids)} tokens, logits std {np.std(logits):.3f}")
    import transformers
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"reference": f"transformers {transformers.__version__} (float64 on fp32 weights); "
                   "scripts/mka_reference.py for mka/fastmka", "cases": cases}, f, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    assert total < 2 << 20, f"fixtures are {total} bytes (limit 2 MB)"
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    sys.exit(main())
