#!/usr/bin/env python3
"""Writes tests/fixtures/hf/<name>/: tiny random Hugging Face checkpoints (config.json + safetensors) and the
logits transformers computes for them, the reference for `mixatt logits -m DIR` (tests/e2e/test_hf_models.py).

Each model is built from a seeded random config with transformers' own classes (eager attention, fp32), saved
with save_pretrained, and run once on seeded random token ids: reference.json holds the ids, logits.npy the
fp32 logits at every position [T, vocab]. Weight dtypes vary on purpose (F32, BF16, F16) and one checkpoint is
sharded (model.safetensors.index.json); models stored in 16 bits are evaluated with the 16-bit values upcast,
exactly what mixatt reads. For mixture-of-experts models the script checks that no token's top-k choice is
a near tie (so fp32 rounding cannot flip a routing decision) and reseeds otherwise.

Usage: python3 scripts/fixtures_hf.py [--out tests/fixtures/hf]   (needs torch + transformers)
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
import transformers as T

SEQ = 24          # tokens per reference sequence
MIN_GAP = 1e-3    # smallest allowed gap between the k-th and (k+1)-th routing probability


def configs():
    common = dict(vocab_size=256, hidden_size=64, num_attention_heads=4, initializer_range=0.1,
                  max_position_embeddings=128, tie_word_embeddings=False)
    return {
        "gpt2": (T.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=64,
                              initializer_range=0.1, bos_token_id=0, eos_token_id=0), torch.float32, None),
        "llama": (T.LlamaConfig(**common, num_hidden_layers=3, num_key_value_heads=2, intermediate_size=128,
                                rope_theta=10000.0), torch.bfloat16, None),
        "mistral": (T.MistralConfig(**common, num_hidden_layers=2, num_key_value_heads=2, intermediate_size=128,
                                    sliding_window=8), torch.float16, None),
        "mixtral": (T.MixtralConfig(**common, num_hidden_layers=2, num_key_value_heads=2, intermediate_size=32,
                                    num_local_experts=8, num_experts_per_tok=2), torch.float32, "150KB"),
        "deepseek_v2": (T.DeepseekV2Config(**common, num_hidden_layers=2, intermediate_size=128, q_lora_rank=32,
                                           kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
                                           first_k_dense_replace=1, n_routed_experts=4, num_experts_per_tok=2,
                                           n_shared_experts=1, moe_intermediate_size=32, routed_scaling_factor=1.5,
                                           topk_method="greedy", norm_topk_prob=False), torch.float32, None),
        # dense layers only (V3's sigmoid routing is not in mixatt yet), no query latent, interleaved RoPE
        "deepseek_v3": (T.DeepseekV3Config(**common, num_hidden_layers=2, num_key_value_heads=4, intermediate_size=96,
                                           q_lora_rank=None,
                                           kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
                                           first_k_dense_replace=2, n_routed_experts=4, num_experts_per_tok=2,
                                           moe_intermediate_size=32, n_group=1, topk_group=1,
                                           rope_interleave=True), torch.bfloat16, None),
    }


def router_gaps(model, ids):
    """Smallest gap between the k-th and (k+1)-th routing probabilities over every MoE layer and token."""
    gaps, hooks = [], []
    k = getattr(model.config, "num_experts_per_tok", 0)

    def hook(_module, _inputs, out):
        logits = out[0] if isinstance(out, tuple) else out
        p = torch.softmax(logits.float().reshape(-1, logits.shape[-1]), dim=-1)
        top = torch.topk(p, k + 1, dim=-1).values
        gaps.append((top[:, k - 1] - top[:, k]).min().item())

    for name, module in model.named_modules():
        if name.endswith(".gate") and ("block_sparse_moe" in name or ".mlp." in name):
            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return min(gaps) if gaps else float("inf")


def build(name, cfg, dtype, seed):
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # round the weights (not buffers such as RoPE's inv_freq) to the stored precision
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (1, SEQ), generator=gen)
    return model, ids


def write(out, name, cfg, dtype, shard):
    for seed in range(1, 50):
        model, ids = build(name, cfg, dtype, seed)
        gap = router_gaps(model, ids)
        if gap > MIN_GAP:
            break
    else:
        raise SystemExit(f"{name}: no seed without routing near-ties")
    d = os.path.join(out, name)
    shutil.rmtree(d, ignore_errors=True)
    with torch.no_grad():
        logits = model(ids).logits[0].float().numpy()
    kw = {"max_shard_size": shard} if shard else {}
    model.to(dtype).save_pretrained(d, **kw)
    np.save(os.path.join(d, "logits.npy"), logits.astype(np.float32))
    ref = {"model_type": cfg.model_type, "dtype": str(dtype).replace("torch.", ""), "seed": seed,
           "ids": ids[0].tolist(), "vocab": cfg.vocab_size, "transformers": T.__version__,
           "sharded": bool(shard), "min_routing_gap": gap if gap != float("inf") else None}
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {size / 1e3:.0f} kB, seed {seed}, dtype {ref['dtype']}, files {sorted(os.listdir(d))}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "hf"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    for name, (cfg, dtype, shard) in configs().items():
        write(args.out, name, cfg, dtype, shard)


if __name__ == "__main__":
    main()
