#!/usr/bin/env python3
"""ranks_model.py: a random-weight Llama-shaped checkpoint for the tensor-parallel benchmark
(bench/cuda/ranks_run.sh), written as a Hugging Face directory (config.json + bf16 safetensors) that mixatt reads.
transformers' LlamaForCausalLM(config) with its own random initialization, built on the GPU in bf16 (seconds,
where a CPU initialization of billions of parameters takes minutes), then save_pretrained into DIR.

    python3 ranks_model.py DIR --shape 3b      (Llama-3.2-3B's shape: d 3072, 28 layers, 24/8 heads, ff 8192)
    python3 ranks_model.py DIR --shape 1b      (Llama-3.2-1B's: d 2048, 16 layers, 32/8 heads, ff 8192)
    python3 ranks_model.py DIR --shape 8b      (Llama-3-8B's: d 4096, 32 layers, 32/8 heads, ff 14336)
The vocabulary is Llama 3's 128256 rows, untied. Throughput does not depend on the values, only the shapes.
    --max-pos N   the context the config allows (default 16384; the Star benchmark asks for 128K + 1)
    --layers N    fewer (or more) layers than the shape's"""
import argparse
import json
import os
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192),
    "3b": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
               intermediate_size=8192),
    "tiny": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
                 intermediate_size=512),  # a dry run of bench/cuda/ranks_run.sh on the CPU
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    ap.add_argument("--max-pos", type=int, default=16384)
    ap.add_argument("--layers", type=int, default=0)
    a = ap.parse_args()
    shape = dict(SHAPES[a.shape])
    if a.layers:
        shape["num_hidden_layers"] = a.layers
    t0 = time.time()
    cfg = LlamaConfig(vocab_size=128256 if a.shape != "tiny" else 4096, max_position_embeddings=a.max_pos,
                      rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False, **shape)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(a.dir, max_shard_size="100GB", safe_serialization=True)
    size = sum(os.path.getsize(os.path.join(a.dir, f)) for f in os.listdir(a.dir))
    print(json.dumps({"shape": a.shape, "params": n, "bytes": size, "seconds": round(time.time() - t0, 1),
                      **shape}))


if __name__ == "__main__":
    main()
