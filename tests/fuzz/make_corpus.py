#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/TARGET/), small valid inputs of each kind:
  gguf         tiny GGUF files made with the `gguf` package's GGUFWriter (every metadata value type, nested
               arrays, several tensor types);
  safetensors  files laid out by hand per the format (dtypes, scalar and 4-D shapes, metadata, no tensors);
  hf           the config.json of every committed Hugging Face fixture (tests/fixtures/hf/*);
  tokenizer    GGUFs holding only a tokenizer: a byte-level BPE vocabulary (the 256 GPT-2 byte symbols, a few
               merges, ChatML special tokens) with a ChatML chat template, under each supported pre-tokenizer;
  shards       llm.c token shards (uint16 and uint32 tokens, an empty one);
  ckpt         real checkpoints of `mixatt train` (tiny dense, MoE and GPT-2 configs; needs build/mixatt);
  serve        request bodies of /v1/completions (first byte even) and /v1/chat/completions (odd) with every
               field the server reads;
  ruler        a byte picking the task and length, then a haystack text: prose with sentence ends, one long
               sentence, a few words.
Run from anywhere: python3 tests/fuzz/make_corpus.py"""
import json
import struct
import subprocess
import tempfile
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

CORPUS = Path(__file__).resolve().parent / "corpus"
ROOT = CORPUS.parent.parent.parent
OUT = CORPUS / "gguf"


def write(name, fill):
    w = gguf.GGUFWriter(str(OUT / name), arch="llama")
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def metadata(w):
    w.add_uint32("a.u32", 1)
    w.add_int32("a.i32", -1)
    w.add_float32("a.f32", 0.5)
    w.add_bool("a.b", True)
    w.add_string("a.s", "x")
    w.add_array("a.arr", [1, 2, 3])
    w.add_array("a.strs", ["p", "q"])
    w.add_key_value("a.u64", 5, gguf.GGUFValueType.UINT64)
    w.add_key_value("a.f64", 0.25, gguf.GGUFValueType.FLOAT64)
    w.add_key_value("a.nested", [[1, 2], [3]], gguf.GGUFValueType.ARRAY)
    w.add_key_value("a.u8", 3, gguf.GGUFValueType.UINT8)
    w.add_key_value("a.i16", -3, gguf.GGUFValueType.INT16)


def tensors(w):
    rng = np.random.default_rng(0)
    w.add_tensor("f32", rng.standard_normal((2, 8)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((8,)).astype(np.float16))
    w.add_tensor("q8", gguf.quants.quantize(rng.standard_normal((1, 32)).astype(np.float32), QT.Q8_0),
                 raw_dtype=QT.Q8_0)
    w.add_tensor("q4", gguf.quants.quantize(rng.standard_normal((1, 32)).astype(np.float32), QT.Q4_1),
                 raw_dtype=QT.Q4_1)


def safetensors_file(path, tensors, meta=None):
    """tensors: name -> (dtype string, shape, raw bytes); laid out in order."""
    header, off, blob = {}, 0, b""
    if meta is not None:
        header["__metadata__"] = meta
    for name, (dt, shape, raw) in tensors.items():
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blob += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + blob)


def safetensors_seeds():
    d = CORPUS / "safetensors"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    f32 = rng.standard_normal((2, 3)).astype(np.float32)
    safetensors_file(d / "mixed.safetensors", {
        "a.weight": ("F32", [2, 3], f32.tobytes()),
        "b.bias": ("F16", [4], np.ones(4, np.float16).tobytes()),
        "c": ("BF16", [1, 2, 1, 2], b"\x80\x3f" * 4),
        "ids": ("I64", [2], np.arange(2, dtype=np.int64).tobytes()),
        "scalar": ("F32", [], np.float32(1).tobytes()),
        "empty": ("F32", [0, 5], b""),
    }, {"format": "pt", "note": "seed"})
    safetensors_file(d / "meta_only.safetensors", {}, {"format": "mixatt-train-1", "step": "3",
                                                     "checksum": "crc32:00000000"})
    safetensors_file(d / "none.safetensors", {})


def hf_seeds():
    d = CORPUS / "hf"
    d.mkdir(parents=True, exist_ok=True)
    for cfg in sorted((ROOT / "tests" / "fixtures" / "hf").glob("*/config.json")):
        (d / f"{cfg.parent.name}.json").write_bytes(cfg.read_bytes())


def byte_symbols():
    """GPT-2's byte -> printable symbol map (bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(cs[bs.index(b)]) for b in range(256)]


CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def tokenizer_seeds():
    d = CORPUS / "tokenizer"
    d.mkdir(parents=True, exist_ok=True)
    sym = byte_symbols()
    merges = ["\u0120 t", "h e", "\u0120t he", "i n", "e r", "\u0120 a", "o n", "\u0120 w", "r e", "l l"]
    merged = ["".join(m.split(" ")) for m in merges]
    tokens = sym + merged + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * (len(tokens) - 3) + [3, 3, 3]
    for pre in ["smollm", "gpt2", None]:
        w = gguf.GGUFWriter(str(d / f"bpe_{pre or 'nopre'}.gguf"), arch="llama")
        w.add_string("tokenizer.ggml.model", "gpt2")
        if pre:
            w.add_string("tokenizer.ggml.pre", pre)
        w.add_array("tokenizer.ggml.tokens", tokens)
        w.add_array("tokenizer.ggml.token_type", types)
        w.add_array("tokenizer.ggml.merges", merges)
        w.add_uint32("tokenizer.ggml.bos_token_id", len(tokens) - 2)
        w.add_uint32("tokenizer.ggml.eos_token_id", len(tokens) - 1)
        w.add_bool("tokenizer.ggml.add_bos_token", False)
        w.add_string("tokenizer.chat_template", CHATML)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def shard(path, tokens, wide):
    hdr = [20240801 if wide else 20240520, 7 if wide else 1, len(tokens)] + [0] * 253
    path.write_bytes(struct.pack("<256i", *hdr) + np.asarray(tokens, dtype="<u4" if wide else "<u2").tobytes())


def shard_seeds():
    d = CORPUS / "shards"
    d.mkdir(parents=True, exist_ok=True)
    shard(d / "u16.bin", list(range(40)), False)
    shard(d / "u32.bin", [i * 7 % 300 for i in range(25)], True)
    shard(d / "empty.bin", [], False)


TINY = {"vocab": 16, "d_model": 8, "n_layer": 2, "n_head": 2, "n_kv_head": 1, "d_ff": 16, "max_ctx": 8, "seq": 8,
        "batch": 1, "steps": 2, "warmup": 0, "val_every": 0, "log_every": 0, "train_data": "synthetic:copy"}


def ckpt_seeds():
    d = CORPUS / "ckpt"
    d.mkdir(parents=True, exist_ok=True)
    mixatt = ROOT / "build" / "mixatt"
    assert mixatt.exists(), f"{mixatt} missing: make it first (the checkpoint seeds are written by mixatt train)"
    variants = {"llama": {"arch": "llama"}, "gpt2": {"arch": "gpt2", "n_kv_head": 2},
                "moe": {"arch": "llama", "n_expert": 2, "n_expert_used": 1},
                "plan": {"arch": "llama", "plan": "G,S@0", "window": 2}}
    for name, extra in variants.items():
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "c.json"
            cfg.write_text(json.dumps({**TINY, **extra}))
            subprocess.run([str(mixatt), "train", "-c", str(cfg), "-o", str(Path(tmp) / "run"), "-q"], check=True)
            (d / f"{name}.safetensors").write_bytes((Path(tmp) / "run" / "checkpoint.safetensors").read_bytes())


SERVE = [
    {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "stop": ["\n", "The"], "seed": 3},
    {"prompt": [1, 2, 3], "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True},
     "top_k": 5, "top_p": 0.9, "min_p": 0.05, "presence_penalty": 0.5, "frequency_penalty": -0.5},
    {"prompt": [[5, 6]], "logprobs": None, "n": 1, "echo": False, "user": "u", "model": "m"},
]
CHAT = [
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
     "max_completion_tokens": 16, "stop": "<|im_end|>", "temperature": 0.7},
    {"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                  {"role": "user", "content": None}, {"role": "assistant", "content": "ok"}],
     "stream": True, "seed": -1, "response_format": {"type": "text"}},
]


def serve_seeds():
    d = CORPUS / "serve"
    d.mkdir(parents=True, exist_ok=True)
    for i, body in enumerate(SERVE):
        (d / f"completions_{i}.bin").write_bytes(b"\x00" + json.dumps(body).encode())
    for i, body in enumerate(CHAT):
        (d / f"chat_{i}.bin").write_bytes(b"\x01" + json.dumps(body).encode())


def ruler_seeds():
    d = CORPUS / "ruler"
    d.mkdir(parents=True, exist_ok=True)
    prose = ("The river ran past the old mill. Nobody had worked there for years, and the wheel was still! "
             "Children said it turned at night? Their parents laughed.\n\nIn spring the water rose. ") * 12
    texts = {"prose": prose, "one_sentence": " ".join(f"word{i % 50}" for i in range(900)),
             "few_words": "Too short. Far too short."}
    for name, text in texts.items():  # first byte: the task (mod 5) and the length (div 5, mod 4)
        for pick in (0, 6, 12, 18, 9):
            (d / f"{name}_{pick}.bin").write_bytes(bytes([pick]) + text.encode())


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    write("metadata_only.gguf", metadata)
    write("tensors_only.gguf", tensors)
    write("both.gguf", lambda w: (metadata(w), tensors(w)))
    write("empty.gguf", lambda w: None)
    safetensors_seeds()
    hf_seeds()
    tokenizer_seeds()
    shard_seeds()
    ckpt_seeds()
    serve_seeds()
    ruler_seeds()


if __name__ == "__main__":
    main()
