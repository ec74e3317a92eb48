#!/usr/bin/env python3
"""fixtures_train.py: generates tests/fixtures/train/ for `mixatt train` (tests/e2e/test_train.py).

Tiny random models built with Hugging Face transformers (vocab 128, width 64, 2 layers, 4 heads, MLP 128,
batch 2 x 16 tokens), one directory per case:
  - gpt2:    GPT2LMHeadModel (LayerNorm with biases, learned positions, gelu_new, tied embeddings).
  - llama:   LlamaForCausalLM with GQA (2 KV heads), RoPE (rotate-half), SwiGLU, untied output head.
  - mistral: MistralForCausalLM with MQA (1 KV head) and a sliding window of 6 keys on every layer (plan S,S).
  - mixtral: MixtralForCausalLM with GQA and 4 SwiGLU experts, top-2 with renormalized weights, and the
             router's load-balancing loss: the objective is cross-entropy + 0.1 x transformers'
             load_balancing_loss_func (E x sum_e f_e P_e over every layer's rows pooled, f_e counting top-k
             choices), which mixatt's moe_aux_weight reproduces. Router weights are scaled up (std 0.2) so
             that no top-2 choice is a near tie that fp32 and fp64 could break differently.
Each directory holds:
  config.json       the mixatt train config (the test sets init and train_data to the files below)
  init.safetensors  the fp32 weights in mixatt's names and [out, in] layout
  batch.bin         a uint16 token shard of B*T + 1 tokens: inputs tokens[0:32] and targets tokens[1:33] as
                    (2, 16), which mixatt's loader returns at every step
  ref.safetensors   PyTorch's gradient of every parameter after one forward/backward (F32 of the float64
                    result, mixatt names), the loss and the losses of 10 AdamW steps in __metadata__ (JSON)
The references run in float64 on the fp32 weights. The 10 steps use torch.optim.AdamW with the config's
hyper-parameters: decay on matrices (not embeddings, norms or biases), the linear-warmup + cosine schedule of
src/train/optim.c, and torch.nn.utils.clip_grad_norm_. Norm weights and biases are perturbed away from 1 and 0
so their gradients are exercised. Needs torch, transformers, safetensors; run: python3 scripts/fixtures_train.py
[CASE ...] (default: every case).
"""
import json
import math
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "train")
VOCAB, C, LAYERS, HEADS, FF, B, T, CTX = 128, 64, 2, 4, 128, 2, 16, 32
EXPERTS, TOP_K, AUX = 4, 2, 0.1
CASES = ("gpt2", "llama", "mistral", "mixtral")
TRAIN = dict(steps=10, warmup=2, lr=1e-2, min_lr=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.95, adam_eps=1e-8,
             grad_clip=0.5)


def hf_model(case):
    import torch
    import transformers as tf
    common = dict(vocab_size=VOCAB, hidden_size=C, intermediate_size=FF, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, max_position_embeddings=CTX, rms_norm_eps=1e-5, rope_theta=10000.0,
                  tie_word_embeddings=False)
    if case == "gpt2":
        cfg = tf.GPT2Config(vocab_size=VOCAB, n_positions=CTX, n_embd=C, n_layer=LAYERS, n_head=HEADS, n_inner=FF,
                            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=0,
                            eos_token_id=0)
        cls = tf.GPT2LMHeadModel
    elif case == "llama":
        cfg = tf.LlamaConfig(num_key_value_heads=2, **common)
        cls = tf.LlamaForCausalLM
    elif case == "mixtral":
        cfg = tf.MixtralConfig(num_key_value_heads=2, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K,
                               router_aux_loss_coef=AUX, router_jitter_noise=0.0, **common)
        cls = tf.MixtralForCausalLM
    else:
        cfg = tf.MistralConfig(num_key_value_heads=1, sliding_window=6, **common)
        cls = tf.MistralForCausalLM
    cfg._attn_implementation = "eager"
    if case == "mixtral":
        cfg._experts_implementation = "eager"  # the per-expert loop (grouped_mm has no float64)
    torch.manual_seed({"gpt2": 1, "llama": 2, "mistral": 3, "mixtral": 4}[case])
    model = cls(cfg).float().eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms around 1, biases around 0
                base = 1.0 if ("ln" in name or "norm" in name) and name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("mlp.gate.weight"):  # the router: clear top-2 margins
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def mixatt_config(case):
    llama = case != "gpt2"
    cfg = dict(arch="llama" if llama else "gpt2", vocab=VOCAB, d_model=C, n_layer=LAYERS, n_head=HEADS,
               n_kv_head={"gpt2": HEADS, "llama": 2, "mistral": 1, "mixtral": 2}[case], d_ff=FF, max_ctx=CTX,
               norm_eps=1e-5,
               rope_theta=10000.0, tied_embeddings=not llama, plan="S,S" if case == "mistral" else "",
               window=6, batch=B, seq=T, grad_accum=1, val_batches=0, ckpt_every=0, log_every=1, **TRAIN)
    if case == "mixtral":
        cfg.update(n_expert=EXPERTS, n_expert_used=TOP_K, expert_norm_topk=True, moe_aux_weight=AUX)
    return cfg


def mixatt_tensors(model, case, grads=False):
    """name -> numpy array (weights, or their .grad) in mixatt's names and [out, in] layout."""
    p = dict(model.named_parameters())

    def get(name):
        t = p[name].grad if grads else p[name]
        return t.detach().cpu().double().numpy()

    out = {}
    if case == "gpt2":
        out["token_embd.weight"] = get("transformer.wte.weight")
        out["position_embd.weight"] = get("transformer.wpe.weight")
        for i in range(LAYERS):
            h = f"transformer.h.{i}."
            blk = f"blk.{i}."
            w, b = get(h + "attn.c_attn.weight").T, get(h + "attn.c_attn.bias")  # Conv1D: [in, out]
            for j, n in enumerate("qkv"):
                out[blk + f"attn_{n}.weight"] = w[j * C:(j + 1) * C]
                out[blk + f"attn_{n}.bias"] = b[j * C:(j + 1) * C]
            out[blk + "attn_output.weight"] = get(h + "attn.c_proj.weight").T
            out[blk + "attn_output.bias"] = get(h + "attn.c_proj.bias")
            out[blk + "ffn_up.weight"] = get(h + "mlp.c_fc.weight").T
            out[blk + "ffn_up.bias"] = get(h + "mlp.c_fc.bias")
            out[blk + "ffn_down.weight"] = get(h + "mlp.c_proj.weight").T
            out[blk + "ffn_down.bias"] = get(h + "mlp.c_proj.bias")
            for src, dst in (("ln_1", "attn_norm"), ("ln_2", "ffn_norm")):
                out[blk + dst + ".weight"] = get(h + src + ".weight")
                out[blk + dst + ".bias"] = get(h + src + ".bias")
        out["output_norm.weight"] = get("transformer.ln_f.weight")
        out["output_norm.bias"] = get("transformer.ln_f.bias")
    else:
        out["token_embd.weight"] = get("model.embed_tokens.weight")
        for i in range(LAYERS):
            h = f"model.layers.{i}."
            blk = f"blk.{i}."
            names = [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                     ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
                     ("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm")]
            if case == "mixtral":  # experts stacked: gate/up (E*F, C), down (E*C, F)
                names.append(("mlp.gate", "ffn_gate_inp"))
                gate_up = get(h + "mlp.experts.gate_up_proj")  # (E, 2F, C): gate rows, then up rows
                out[blk + "ffn_gate_exps.weight"] = gate_up[:, :FF].reshape(EXPERTS * FF, C)
                out[blk + "ffn_up_exps.weight"] = gate_up[:, FF:].reshape(EXPERTS * FF, C)
                out[blk + "ffn_down_exps.weight"] = get(h + "mlp.experts.down_proj").reshape(EXPERTS * C, FF)
            else:
                names += [("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")]
            for src, dst in names:
                out[blk + dst + ".weight"] = get(h + src + ".weight")
        out["output_norm.weight"] = get("model.norm.weight")
        out["output.weight"] = get("lm_head.weight")
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def lr_at(step):
    s = TRAIN
    if step < s["warmup"]:
        return s["lr"] * (step + 1) / s["warmup"]
    progress = min(1.0, (step - s["warmup"]) / max(1, s["steps"] - s["warmup"]))
    return s["min_lr"] + 0.5 * (s["lr"] - s["min_lr"]) * (1 + math.cos(math.pi * progress))


def loss_of(model, x, y):
    import torch.nn.functional as F
    if not hasattr(model.config, "num_local_experts"):
        return F.cross_entropy(model(x).logits.reshape(-1, VOCAB), y.reshape(-1))
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    out = model(x, output_router_logits=True)
    aux = load_balancing_loss_func(out.router_logits, EXPERTS, TOP_K)
    return F.cross_entropy(out.logits.reshape(-1, VOCAB), y.reshape(-1)) + AUX * aux


def write_shard(path, tokens):
    hdr = np.zeros(256, dtype=np.int32)
    hdr[:3] = [20240520, 1, len(tokens)]
    with open(path, "wb") as f:
        f.write(hdr.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16).tobytes())


def case_tokens(case):
    """The B*T + 1 tokens of a case's batch (batch.bin) and its inputs and targets as (B, T) tensors."""
    import torch
    rng = np.random.default_rng({"gpt2": 11, "llama": 12, "mistral": 13, "mixtral": 14}[case])
    tokens = rng.integers(0, VOCAB, B * T + 1)
    return tokens, torch.tensor(tokens[:-1].reshape(B, T)), torch.tensor(tokens[1:].reshape(B, T))


def train_reference(model, case, x, y, autocast=None):
    """One forward/backward (the loss and every gradient in mixatt's names), then the losses of TRAIN's AdamW
    steps from the same weights. autocast: a torch.autocast context for the forward passes (bf16 on the GPU,
    the peer check_train_gpu.py measures its band against), else none."""
    import contextlib

    import torch
    ctx = autocast or contextlib.nullcontext
    with ctx():
        loss = loss_of(model, x, y)
    loss.backward()
    grads = mixatt_tensors(model, case, grads=True)
    first = loss.item()

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n
             and "embed_tokens" not in n]
    other = [p for n, p in model.named_parameters() if not any(p is q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": TRAIN["weight_decay"]},
                             {"params": other, "weight_decay": 0.0}], lr=TRAIN["lr"],
                            betas=(TRAIN["beta1"], TRAIN["beta2"]), eps=TRAIN["adam_eps"])
    losses = []
    model.zero_grad()
    for step in range(TRAIN["steps"]):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad()
        with ctx():
            loss = loss_of(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TRAIN["grad_clip"])
        opt.step()
        losses.append(loss.item())
    return first, grads, losses


def autocast_reference(case, model=None):
    """PyTorch's own mixed precision on this case: fp32 weights on the GPU, the forward under bf16 autocast.
    Returns (loss, gradients, the AdamW losses) as train_reference. model: another start than the fixture's
    weights (jittered_model)."""
    import torch
    model = (model or hf_model(case)).cuda().train()
    _, x, y = case_tokens(case)
    return train_reference(model, case, x.cuda(), y.cuda(),
                           autocast=lambda: torch.autocast("cuda", dtype=torch.bfloat16))


def jittered_model(case, seed, rel=2.0 ** -8):
    """The case's model with every weight scaled by 1 + rel * u, u uniform in [-1, 1) from seed: a start near
    the fixture's (rel 2^-8 is one bf16 ulp) whose bf16 roundings differ from it, for sampling how far bf16
    rounding moves a 10-step trajectory from its own float64 trajectory."""
    import torch
    model = hf_model(case)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.0 + rel * (2.0 * torch.rand(p.shape, generator=g) - 1.0))
    return model


def trajectory_sample(case, seed):
    """One start for the trajectory band: (mixatt init tensors fp32, float64 AdamW losses, PyTorch bf16 autocast
    AdamW losses) from jittered_model(case, seed)."""
    import copy
    model = jittered_model(case, seed)
    init = {k: v.astype(np.float32) for k, v in mixatt_tensors(model, case).items()}
    _, x, y = case_tokens(case)
    f64 = train_reference(copy.deepcopy(model).double().train(), case, x, y)[2]
    amp = autocast_reference(case, model)[2]
    return init, f64, amp


def make_case(case):
    from safetensors.numpy import save_file
    d = os.path.join(OUT, case)
    os.makedirs(d, exist_ok=True)
    model = hf_model(case)
    save_file({k: v.astype(np.float32) for k, v in mixatt_tensors(model, case).items()},
              os.path.join(d, "init.safetensors"))
    tokens, x, y = case_tokens(case)
    write_shard(os.path.join(d, "batch.bin"), tokens)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(mixatt_config(case), f, indent=1)
    first, grads, losses = train_reference(model.double().train(), case, x, y)
    save_file({k: v.astype(np.float32) for k, v in grads.items()}, os.path.join(d, "ref.safetensors"),
              metadata={"loss": repr(first), "losses": json.dumps(losses)})
    print(f"{case}: loss {first:.6f}, after 10 steps {losses[-1]:.6f}, {len(grads)} gradients")


def main():
    import sys
    for case in sys.argv[1:] or CASES:
        make_case(case)


if __name__ == "__main__":
    main()
