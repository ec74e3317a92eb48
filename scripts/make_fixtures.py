#!/usr/bin/env python3
"""make_fixtures.py: generates tests/fixtures/ from Hugging Face transformers (the independent reference).

For the default model (SmolLM2-135M-Instruct Q4_1 GGUF), transformers' LlamaForCausalLM loads the same GGUF
(dequantized to fp32 by the gguf package, Q/K permutation undone by transformers' loader) and runs:
  - 3 prompts of >= 64 tokens (ids from transformers' tokenizer built from the same GGUF);
  - the final normed hidden state at every position (fp32, [T, 576]): logits = hidden · Eᵀ with E the
    dequantized tied embedding. Storing hidden states instead of [T, 49152] logits keeps the fixture small;
    the test rebuilds the reference logits in float64 with numpy from the GGUF. This script checks that the
    rebuilt logits equal transformers' own logits (rel. L2 < 1e-5) before writing anything.
  - greedy continuations of 32 tokens (transformers' generate, do_sample=False).
Needs torch + transformers + gguf (not needed by the tests themselves). Run: make fixtures.
"""
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(ROOT, "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = os.path.join(ROOT, "tests", "fixtures")

PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based inks and a wooden press adapted from wine making. Within fifty years, "
    "printing shops had spread across Europe, and the number of books in circulation grew from a few "
    "thousand hand-copied manuscripts to many millions of printed volumes. Scholars, merchants and reformers "
    "quickly understood that",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number using an iterative loop.\"\"\"\n"
    "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\n"
    "def is_prime(n):\n    \"\"\"Return True when n is a prime number.\"\"\"\n    if n < 2:\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nExplain in two sentences why the sky looks blue during the day and red at sunset, "
    "and mention the name of the physical effect involved. Keep the answer short and suitable for a curious "
    "ten-year-old who likes astronomy.<|im_end|>\n<|im_start|>assistant\n",
]
N_GEN = 32


def main():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF, torch_dtype=torch.float32)
    model.eval()
    emb = model.get_input_embeddings().weight.detach().double().numpy()
    cases = []
    hidden_all = []
    for i, text in enumerate(PROMPTS):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) >= 64, (i, len(ids))
        x = torch.tensor([ids])
        with torch.no_grad():
            out = model(x, output_hidden_states=True)
        hidden = out.hidden_states[-1][0].float().numpy()  # after the final norm
        logits = out.logits[0].double().numpy()
        rebuilt = hidden.astype(np.float64) @ emb.T
        rel = np.linalg.norm(rebuilt - logits, axis=1) / np.linalg.norm(logits, axis=1)
        assert rel.max() < 1e-5, f"rebuilt logits differ from transformers' by {rel.max()}"
        with torch.no_grad():
            gen = model.generate(x, max_new_tokens=N_GEN, do_sample=False, min_new_tokens=N_GEN)
        cont = gen[0, len(ids):].tolist()
        cases.append({"text": text, "ids": ids, "greedy": cont, "hidden_offset": sum(len(c["ids"]) for c in cases)})
        hidden_all.append(hidden)
        print(f"prompt {i}: {len(ids)} tokens, greedy: {tok.decode(cont)!r}")
    os.makedirs(OUT, exist_ok=True)
    np.concatenate(hidden_all).astype("<f4").tofile(os.path.join(OUT, "smollm2_hidden.f32"))
    meta = {"model": GGUF, "reference": f"transformers {__import__('transformers').__version__} "
            f"LlamaForCausalLM fp32 from the GGUF", "hidden_dim": int(hidden_all[0].shape[1]), "cases": cases}
    with open(os.path.join(OUT, "smollm2_logits.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    sys.exit(main())
