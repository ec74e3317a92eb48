"""Tensor parallelism (`--tp N` under `mpirun -np N`, src/model/tp.c): the logits of every position equal the
one-rank logits (relative L2 <= 1e-5 with --exact: only the order of the fp32 sums changes) and, where a
reference exists, Hugging Face transformers' / the block references' (<= 1e-4), through one prefill and
token-by-token decode, for Llama (GQA: KV heads divided with 2 ranks, replicated with 4), Mixtral (experts split),
DeepSeek-V2/V2-noq (MLA heads split, experts split unevenly), MKA/FastMKA, GPT-2 (biases once, tied head split
by vocabulary, 4 heads over 3 ranks; random non-zero biases) and a MixAttention plan with window and shared-cache layers. A quantized
Q8_0 model checks both column-slice paths (whole blocks with 2 ranks; per-rank fp32 copies with 4, where 16-wide
heads split 32-wide blocks); SmolLM2 (Q4_1, 9 query / 3 KV heads) gives the same greedy text on 2 ranks, whose
KV heads split 1/2. Counts that do not split, and --tp without mpirun, fail with messages that say why."""
import json
import os

import gguf
import numpy as np
import pytest
from gguf import quants

from conftest import FIXTURES, run
from mpijob import mpirun

HF = os.path.join(FIXTURES, "hf")
BLOCKS = os.path.join(FIXTURES, "blocks")
BLOCK_CASES = {c["name"]: c for c in json.load(open(os.path.join(BLOCKS, "cases.json")))["cases"]}
MODES = {"prefill": [], "decode": ["--decode"]}
_one_rank = {}


def rel_l2(a, b):
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def read_logits(path, n):
    return np.fromfile(path, dtype="<f4").reshape(n, -1).astype(np.float64)


def one_rank(binary, model, ids, tmp_path, *extra):
    """The single-process logits (cached per model and flags: the reference of every rank count)."""
    key = (binary, model, " ".join(map(str, ids)), extra)
    if key not in _one_rank:
        out = tmp_path / "one.f32"
        r = run(binary, "logits", "-m", model, "--ids", " ".join(map(str, ids)), "-o", out, "--exact", "-t", 1,
                *extra)
        assert r.returncode == 0, r.stderr
        _one_rank[key] = read_logits(out, len(ids))
    return _one_rank[key]


def tp_logits(binary, n, model, ids, tmp_path, *extra, env=None):
    out = tmp_path / f"tp{n}.f32"
    r = mpirun(n, binary, "logits", "--tp", n, "-m", model, "--ids", " ".join(map(str, ids)), "-o", out, "--exact",
               "-t", 1, *extra, extra_env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return read_logits(out, len(ids))


def check(binary, n, model, ids, tmp_path, *extra, reference=None):
    ours = tp_logits(binary, n, model, ids, tmp_path, *extra)
    err = rel_l2(ours, one_rank(binary, model, ids, tmp_path, *extra))
    assert err.max() <= 1e-5, f"--tp {n} vs one rank: max relative L2 {err.max():.2e} at position {err.argmax()}"
    if reference is not None:
        ref = rel_l2(ours, reference)
        assert ref.max() <= 1e-4, f"--tp {n} vs the reference: max relative L2 {ref.max():.2e}"


def hf_case(name):
    ref = json.load(open(os.path.join(HF, name, "reference.json")))
    return os.path.join(HF, name), ref["ids"], np.load(os.path.join(HF, name, "logits.npy")).astype(np.float64)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("name", ["llama", "mixtral", "deepseek_v2", "gpt2"])
def test_hf_logits_equal_one_rank(mixatt, tmp_path, name, n, mode):
    model, ids, ref = hf_case(name)
    check(mixatt, n, model, ids, tmp_path, *MODES[mode], reference=ref)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("n", [2, 4])
def test_mixattention_plan_equals_one_rank(mixatt, tmp_path, n, mode):
    """Full, window and shared-cache layers: the reader (layer 2) reads the local heads of layer 1's ring."""
    model, ids, _ = hf_case("llama")
    check(mixatt, n, model, ids, tmp_path, "--plan", "G,S4,S4@1", *MODES[mode])


@pytest.mark.parametrize("name,n", [("mka", 2), ("fastmka", 2), ("deepseek2_noq", 4)])
def test_blocks_equal_one_rank_and_reference(mixatt, tmp_path, name, n):
    """MKA/FastMKA (router and prefix sums replicated, heads split); MLA without a query latent with 6 experts
    over 4 ranks (1, 2, 1, 2 experts), in chunked prefills that mix both MLA forms."""
    case = BLOCK_CASES[name]
    ref = np.fromfile(os.path.join(BLOCKS, name + ".logits.f32"), dtype="<f4").reshape(len(case["ids"]), -1)
    attn = ["--attn", case["attn"]] if "attn" in case else []
    check(mixatt, n, os.path.join(BLOCKS, case["gguf"]), case["ids"], tmp_path, *attn, "--chunk", 7,
          reference=ref.astype(np.float64))


def gpt2_with_biases(tmp_path):
    """The GPT-2 fixture with random non-zero biases (the fixture's are zero, as transformers initializes them):
    a bias added on every rank instead of once would show."""
    from safetensors.numpy import load_file, save_file
    d = tmp_path / "gpt2-biases"
    d.mkdir()
    for f in ("config.json", "generation_config.json"):
        (d / f).write_bytes(open(os.path.join(HF, "gpt2", f), "rb").read())
    tensors = load_file(os.path.join(HF, "gpt2", "model.safetensors"))
    rng = np.random.default_rng(5)
    for k, v in tensors.items():
        if k.endswith(".bias") and v.dtype == np.float32:
            tensors[k] = (rng.standard_normal(v.shape) * 0.1).astype(np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    return str(d)


@pytest.mark.parametrize("n", [2, 3])
def test_gpt2_biases_once_uneven_heads_and_vocabulary(mixatt, tmp_path, n):
    """GPT-2 with non-zero biases; with 3 ranks its 4 heads split 1, 1, 2 and its 256 vocabulary rows 85, 85,
    86."""
    model, ids, _ = hf_case("gpt2")
    model = gpt2_with_biases(tmp_path)
    check(mixatt, n, model, ids, tmp_path, "--decode")


def q8_model(path):
    """A tiny random Llama GGUF in Q8_0 (32-wide blocks): 4 heads of 16 over 2 KV heads, MLP 96, vocab 96."""
    C, F, V, L, H, G, D = 64, 96, 96, 2, 4, 2, 16
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(C)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(G)
    w.add_rope_dimension_count(D)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    rng = np.random.default_rng(3)
    shapes = {"token_embd.weight": (V, C), "output_norm.weight": (C,), "output.weight": (V, C)}
    for l in range(L):
        shapes.update({f"blk.{l}.attn_norm.weight": (C,), f"blk.{l}.attn_q.weight": (H * D, C),
                       f"blk.{l}.attn_k.weight": (G * D, C), f"blk.{l}.attn_v.weight": (G * D, C),
                       f"blk.{l}.attn_output.weight": (C, H * D), f"blk.{l}.ffn_norm.weight": (C,),
                       f"blk.{l}.ffn_gate.weight": (F, C), f"blk.{l}.ffn_up.weight": (F, C),
                       f"blk.{l}.ffn_down.weight": (C, F)})
    for name, shape in shapes.items():
        x = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if len(shape) == 1:
            w.add_tensor(name, 1 + x * 0.1)
        else:
            w.add_tensor(name, quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.mark.parametrize("n,f32_copies", [(2, 0), (4, 4)])
def test_quantized_column_slices(mixatt, tmp_path, n, f32_copies):
    """2 ranks: Wo and W_down columns split on 32-wide block boundaries (blocks copied). 4 ranks: heads of 16
    and MLP slices of 24 split blocks, so Wo and W_down of both layers become per-rank fp32 copies."""
    model = q8_model(tmp_path / "q8.gguf")
    ids = list(range(3, 40, 3))
    for mode in MODES.values():
        check(mixatt, n, model, ids, tmp_path, *mode)
    r = mpirun(n, mixatt, "info", "--tp", n, "-m", model, "-t", 1)
    assert r.returncode == 0, r.stderr
    assert f"{f32_copies} column slices kept as fp32" in r.stdout, r.stdout


def test_smollm2_greedy_text_equals_one_rank(mixatt, model):
    """9 query / 3 KV heads over 2 ranks: rank 0 holds 1 KV head (3 query heads), rank 1 the other 2 (6)."""
    args = ["run", "-m", model, "-p", "The capital of France is", "-n", 16, "--exact", "-t", 1]
    one = run(mixatt, *args)
    assert one.returncode == 0, one.stderr
    two = mpirun(2, mixatt, *args, "--tp", 2)
    assert two.returncode == 0, two.stderr
    assert two.stdout == one.stdout and "Paris" in one.stdout
    info = mpirun(2, mixatt, "info", "-m", model, "--tp", 2, "-t", 1)
    assert info.returncode == 0, info.stderr
    assert "rank 0 of 2 holds query heads 0..2 of 9, KV heads 0..0 of 3" in info.stdout
    # 30 layers x K and V x 1 KV head x 64 x 4 bytes on rank 0 (one rank: 3 KV heads, 46080 bytes)
    assert "per token:    15360 bytes fp32" in info.stdout


def test_kv_heads_that_do_not_split_are_refused(mixatt):
    r = mpirun(3, mixatt, "logits", "--tp", 3, "-m", os.path.join(HF, "llama"), "--ids", "1 2 3", "-o",
               "/dev/null")
    assert r.returncode != 0
    assert "--tp 3: the model has 2 KV heads" in r.stderr and "divides 2 or is a multiple of it" in r.stderr


def test_tp_without_mpirun_says_how_to_launch(mixatt):
    r = run(mixatt, "logits", "--tp", 2, "-m", os.path.join(HF, "llama"), "--ids", "1 2 3", "-o", "/dev/null")
    assert r.returncode == 1
    assert "--tp 2 needs 2 ranks" in r.stderr and "mpirun -np 2" in r.stderr


def test_tp_must_equal_the_ranks(mixatt):
    r = mpirun(2, mixatt, "logits", "--tp", 4, "-m", os.path.join(HF, "llama"), "--ids", "1 2 3", "-o", "/dev/null")
    assert r.returncode != 0
    assert "--tp 4, but this job has 2 ranks" in r.stderr


def test_chat_refuses_tp(mixatt):
    r = run(mixatt, "chat", "--tp", 2)
    assert r.returncode == 2 and "--tp is for run, logits, perplexity, bench and info" in r.stderr


def test_tp_clean_under_asan(mixatt_asan, tmp_path):
    """Slicing, the gather of the head and chunked prefills under AddressSanitizer (leak checks off: Open MPI's
    own allocations at exit are reported from unloaded components and cannot be suppressed by name)."""
    model, ids, ref = hf_case("mixtral")
    ours = tp_logits(mixatt_asan, 2, model, ids, tmp_path, "--chunk", 7, env={"ASAN_OPTIONS": "detect_leaks=0"})
    assert rel_l2(ours, ref).max() <= 1e-4
