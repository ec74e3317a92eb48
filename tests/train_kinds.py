"""train_kinds.py: the tiny training configs of every block kind (MHA with windows and shared KV, MLA, MKA, FastMKA,
experts, muP), shared by the CPU's end-to-end tests (tests/e2e/test_train_blocks.py) and the GPU's check against
the CPU (tests/cuda/check_train_gpu.py). BASE is a 2-layer Llama of width 32 on the synthetic copy task; each
kind overrides some of its keys."""
BASE = {"arch": "llama", "vocab": 32, "d_model": 32, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_ff": 48,
        "max_ctx": 32, "tied_embeddings": False, "window": 6, "train_data": "synthetic:copy", "batch": 8,
        "seq": 16, "steps": 60, "warmup": 2, "lr": 1e-2, "min_lr": 1e-3, "val_every": 0, "log_every": 0,
        "init_std": 0.05}

KINDS = {
    "gpt2_window": {"arch": "gpt2", "n_kv_head": 4, "tied_embeddings": True, "plan": "S,G"},
    "llama_shared_kv": {"plan": "G,G@0"},
    "mla": {"attn": "mla", "mla_kv_rank": 12, "mla_q_rank": 8, "mla_rope_dim": 4, "mla_nope_dim": 4,
            "mla_v_dim": 6, "plan": "S,G"},
    "mla_direct_q": {"attn": "mla", "mla_kv_rank": 12, "mla_q_rank": 0, "mla_rope_dim": 4, "mla_nope_dim": 8,
                     "mla_v_dim": 8},
    "mka": {"attn": "mka"},
    "mka_gpt2": {"arch": "gpt2", "n_kv_head": 4, "attn": "mka", "plan": "G,S"},
    "fastmka": {"attn": "fastmka", "plan": "S,G"},
    "fastmka_gpt2": {"arch": "gpt2", "n_kv_head": 4, "attn": "fastmka", "tied_embeddings": True},
    "moe": {"n_expert": 4, "n_expert_used": 2, "moe_aux_weight": 0.01},
    "moe_top1_raw": {"n_expert": 3, "n_expert_used": 1, "expert_norm_topk": False},
    "mup": {"mup": True, "mup_base_width": 16},
    "mup_gpt2_tied": {"arch": "gpt2", "n_kv_head": 4, "tied_embeddings": True, "mup": True, "mup_base_width": 16},
    "mup_mla_moe": {"mup": True, "mup_base_width": 8, "attn": "mla", "mla_kv_rank": 12, "mla_q_rank": 0,
                    "mla_rope_dim": 4, "mla_nope_dim": 4, "mla_v_dim": 6, "n_expert": 3, "n_expert_used": 2},
}
