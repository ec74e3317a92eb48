"""Star Attention (`--attn star`, src/run/star_pipeline.c, src/attention/star_attend.c, src/cli/star_cli.c) end to end, on one process and under
`mpirun -np 2` and `-np 4 --oversubscribe`:
- exact cases equal dense `mixatt logits` of the query positions (relative L2 <= 1e-5 with --exact): the context in
  one block, or two blocks with the anchor = block 0 (block 1 then sees all of block 0, as dense does); on the
  tiny HF Llama and GPT-2 fixtures and on SmolLM2;
- approximate cases (several blocks, short anchor) equal an independent numpy implementation of the algorithm
  (tests/fixtures/hf/llama read from its safetensors: anchor at positions 0..A-1, block at its own positions,
  the query attending densely to every block's KV and causally to itself);
- one process with several blocks equals N ranks with the same blocks;
- `mixatt run --attn star` generates what dense greedy generation does when Star is exact;
- unsupported models and bad flags fail with messages that say why."""
import json
import os
import shutil
import struct

import numpy as np
import pytest

from conftest import FIXTURES, run

HF = os.path.join(FIXTURES, "hf")
LLAMA = os.path.join(HF, "llama")
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1",
           "OMPI_MCA_btl": "self,vader", "OMPI_MCA_rmaps_base_oversubscribe": "1",
           "OMPI_MCA_mpi_yield_when_idle": "1"}  # waiting ranks give the 2 cores of CI to the working ones


def mpirun(binary, np_, *args, **kw):
    assert shutil.which("mpirun"), "mpirun missing: run `make deps` (Open MPI)"
    e = dict(MPI_ENV)
    e.update(kw.pop("env", {}) or {})
    return run("mpirun", "--allow-run-as-root", "--oversubscribe", "-np", np_, binary, *args, env=e, **kw)


def logits(binary, model, ids, tmp_path, *extra, ranks=0, name="out"):
    """The logits mixatt writes (rows, vocab); ranks > 0 launches under mpirun."""
    out = tmp_path / f"{name}.f32"
    args = ["logits", "-m", model, "--ids", " ".join(map(str, ids)), "-o", out, "--exact", *extra]
    r = mpirun(binary, ranks, *args) if ranks else run(binary, *args, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    rows = int(extra[extra.index("--query") + 1]) if "--query" in extra else len(ids)
    return np.fromfile(out, dtype="<f4").astype(np.float64).reshape(rows, -1)


_DENSE = {}


def dense_logits(binary, model, ids, tmp_path):
    """Dense logits of every position, computed once per (model, ids) in this module."""
    key = (model, tuple(ids))
    if key not in _DENSE:
        _DENSE[key] = logits(binary, model, ids, tmp_path, name="dense")
    return _DENSE[key]


def rel_err(ours, ref):
    return float((np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)).max())


def random_ids(n, vocab, seed):
    return np.random.default_rng(seed).integers(0, vocab, n).tolist()


# ---- an independent Star Attention for the tiny Llama fixture, in numpy (float64) ----

def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        raw = data[t["data_offsets"][0]:t["data_offsets"][1]]
        if t["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, dtype={"F32": "<f4", "F16": "<f2"}[t["dtype"]])
        out[name] = a.astype(np.float64).reshape(t["shape"])
    return out


class TinyLlama:
    def __init__(self, path):
        self.cfg = json.load(open(os.path.join(path, "config.json")))
        self.w = load_safetensors(os.path.join(path, "model.safetensors"))
        c = self.cfg
        self.H, self.G, self.D = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        self.eps, self.theta = c["rms_norm_eps"], c["rope_parameters"]["rope_theta"]

    def norm(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):  # x (T, heads, D), Hugging Face rotate_half
        half = self.D // 2
        inv = self.theta ** (-np.arange(half) * 2.0 / self.D)
        ang = np.asarray(pos, dtype=np.float64)[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def forward(self, ids, pos, past=None):
        """Tokens ids at positions pos, attending to every key of `past` (per layer (K, V), all visible) and
        causally to themselves. Returns logits (T, vocab) and the new tokens' (K, V) per layer."""
        w, H, G, D = self.w, self.H, self.G, self.D
        x = w["model.embed_tokens.weight"][ids]
        T, kvs = len(ids), []
        for l in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{l}."
            h = self.norm(x, w[p + "input_layernorm.weight"])
            q = self.rope((h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, H, D), pos)
            k = self.rope((h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, G, D), pos)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, G, D)
            kvs.append((k, v))
            P = 0 if past is None else past[l][0].shape[0]
            K = k if past is None else np.concatenate([past[l][0], k])
            V = v if past is None else np.concatenate([past[l][1], v])
            visible = np.ones((T, P + T), dtype=bool)
            visible[:, P:] = np.tril(np.ones((T, T), dtype=bool))
            att = np.empty((T, H, D))
            for hh in range(H):
                s = q[:, hh] @ K[:, hh // (H // G)].T / np.sqrt(D)
                s = np.where(visible, s, -np.inf)
                e = np.exp(s - s.max(-1, keepdims=True))
                att[:, hh] = (e / e.sum(-1, keepdims=True)) @ V[:, hh // (H // G)]
            x = x + att.reshape(T, H * D) @ w[p + "self_attn.o_proj.weight"].T
            h = self.norm(x, w[p + "post_attention_layernorm.weight"])
            g = h @ w[p + "mlp.gate_proj.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        return self.norm(x, w["model.norm.weight"]) @ w["lm_head.weight"].T, kvs

    def star(self, ids, n_query, B, A):
        """Star Attention's logits of the query (the last n_query ids)."""
        ctx, query, n = ids[:-n_query], ids[-n_query:], len(ids) - n_query
        blocks = []
        for start in range(0, n, B):
            block = ctx[start:start + B]
            anchor = ctx[:A] if start > 0 else []
            pos = list(range(len(anchor))) + list(range(start, start + len(block)))
            _, kvs = self.forward(anchor + block, pos)
            blocks.append([(k[len(anchor):], v[len(anchor):]) for k, v in kvs])
        past = [(np.concatenate([b[l][0] for b in blocks]), np.concatenate([b[l][1] for b in blocks]))
                for l in range(len(blocks[0]))]
        out, _ = self.forward(query, list(range(n, n + n_query)), past)
        return out


@pytest.fixture(scope="module")
def tiny():
    return TinyLlama(LLAMA)


def test_numpy_reference_is_the_dense_model(mixatt, tiny, tmp_path):
    """The reference itself: one block is dense attention, which mixatt's dense logits equal."""
    ids = random_ids(30, 256, 1)
    dense = dense_logits(mixatt, LLAMA, ids, tmp_path)
    assert rel_err(tiny.star(ids, 6, 64, 64), dense[-6:]) <= 1e-5


@pytest.mark.parametrize("ranks", [0, 2, 4])
@pytest.mark.parametrize("block,anchor", [(40, 40), (17, 17)])
def test_exact_cases_equal_dense(mixatt, tmp_path, ranks, block, anchor):
    """40 tokens, the last 6 the query: one block of 40 (ranks 1..3 hold nothing; the query host holds only
    the query), or two blocks of 17 with the anchor = all of block 0 (exact: block 1 sees what dense sees)."""
    ids = random_ids(40, 256, 2)
    dense = dense_logits(mixatt, LLAMA, ids, tmp_path)[-6:]
    star = logits(mixatt, LLAMA, ids, tmp_path, "--attn", "star", "--block", block, "--anchor", anchor,
                  "--query", 6, ranks=ranks)
    assert rel_err(star, dense) <= 1e-5


@pytest.mark.parametrize("ranks,block,anchor", [(0, 9, 4), (2, 9, 4), (4, 9, 4), (0, 8, 0), (2, 8, 0), (4, 12, 12)])
def test_several_blocks_equal_numpy_star(mixatt, tiny, tmp_path, ranks, block, anchor):
    """Approximate regimes (many blocks, short or no anchor, last block partial) against the numpy algorithm."""
    ids = random_ids(45, 256, 3)
    ref = tiny.star(ids, 5, block, anchor)
    star = logits(mixatt, LLAMA, ids, tmp_path, "--attn", "star", "--block", block, "--anchor", anchor,
                  "--query", 5, ranks=ranks)
    assert rel_err(star, ref) <= 1e-5
    assert rel_err(star, tiny.star(ids, 5, 64, 64)) > 1e-3  # the approximation is real: Star is not dense here


def test_gpt2_learned_positions(mixatt, tmp_path):
    """GPT-2 (learned absolute positions): two blocks with the full anchor over 2 ranks equal dense."""
    ids = random_ids(30, 256, 4)
    model = os.path.join(HF, "gpt2")
    dense = logits(mixatt, model, ids, tmp_path, name="dense")[-4:]
    star = logits(mixatt, model, ids, tmp_path, "--attn", "star", "--block", 13, "--query", 4, ranks=2)
    assert rel_err(star, dense) <= 1e-5


def smollm_ids(mixatt, model):
    text = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is "
            "named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to "
            "1889. Locally nicknamed La dame de fer, it was constructed as the centerpiece of the 1889 World's "
            "Fair. Question: who designed the tower? Answer:")
    r = run(mixatt, "tokenize", "-m", model, "-p", text, "--ids")
    assert r.returncode == 0, r.stderr
    return [int(t) for t in r.stdout.replace(",", " ").split()]


@pytest.mark.parametrize("ranks", [2, 4])
def test_smollm2_exact_equals_dense(mixatt, model, tmp_path, ranks):
    ids = smollm_ids(mixatt, model)
    n = len(ids)
    dense = dense_logits(mixatt, model, ids, tmp_path)[-8:]
    star = logits(mixatt, model, ids, tmp_path, "--attn", "star", "--block", n, "--query", 8, ranks=ranks)
    assert rel_err(star, dense) <= 1e-5


def test_smollm2_one_process_equals_ranks(mixatt, model, tmp_path):
    """Six blocks of 12 with an anchor of 4 on one process, and the same blocks over 2 ranks (3 each)."""
    ids = smollm_ids(mixatt, model)
    flags = ["--attn", "star", "--block", 12, "--anchor", 4, "--query", 8]
    one = logits(mixatt, model, ids, tmp_path, *flags, name="one")
    two = logits(mixatt, model, ids, tmp_path, *flags, ranks=2, name="two")
    assert rel_err(two, one) <= 1e-5


def test_run_generates_dense_text_when_exact(mixatt, model):
    """One block over 2 ranks: greedy generation through phase 2 equals dense generation."""
    prompt = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"
    dense = run(mixatt, "run", "-m", model, "-p", prompt, "-n", 12, "--exact", "-q", env={"OMP_NUM_THREADS": "1"})
    star = mpirun(mixatt, 2, "run", "-m", model, "-p", prompt, "-n", 12, "--exact", "-q", "--attn", "star",
                  "--block", 64, "--query", 3)
    assert dense.returncode == 0 and star.returncode == 0, dense.stderr + star.stderr
    assert star.stdout == dense.stdout and len(dense.stdout.strip()) > 0


def test_under_asan(mixatt_asan, tiny, tmp_path):
    """Several blocks on one process, the phase-1 scratch and the KV copies under AddressSanitizer."""
    ids = random_ids(33, 256, 5)
    star = logits(mixatt_asan, LLAMA, ids, tmp_path, "--attn", "star", "--block", 7, "--anchor", 3, "--query", 4)
    assert rel_err(star, tiny.star(ids, 4, 7, 3)) <= 1e-5


@pytest.mark.parametrize("args,message", [
    (["-m", os.path.join(HF, "mistral"), "--ids", "1 2 3 4"], "sliding window"),
    (["-m", os.path.join(HF, "deepseek_v2"), "--ids", "1 2 3 4"], "MHA/GQA/MQA layers only"),
    (["-m", LLAMA, "--ids", "1 2 3 4", "--block", 2, "--anchor", 3], "--anchor 3 is longer than the block"),
    (["-m", LLAMA, "--ids", "1 2 3 4", "--query", 4], "needs context before the query"),
])
def test_refusals(mixatt, tmp_path, args, message):
    r = run(mixatt, "logits", "--attn", "star", "-o", tmp_path / "x.f32", *args)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_flags_need_star_and_a_command_that_has_it(mixatt, model, tmp_path):
    r = run(mixatt, "logits", "-m", LLAMA, "--ids", "1 2", "-o", tmp_path / "x.f32", "--block", 4)
    assert r.returncode == 2 and "add --attn star" in r.stderr
    r = run(mixatt, "perplexity", "-m", model, "-f", __file__, "--attn", "star")
    assert r.returncode == 2 and "--attn star is implemented by mixatt run, logits and bench only" in r.stderr
