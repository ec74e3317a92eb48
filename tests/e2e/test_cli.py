"""End-to-end tests of the mixatt commands: what a user types, what they see. Bad input must give a clear
message naming the file and the problem, a non-zero exit and no crash, also under the ASan build."""
import os
import shutil

import gguf
import numpy as np
import pytest

from conftest import ROOT, run

COMMANDS = ["run", "chat", "info", "perplexity", "bench", "tokenize", "tensor", "logits"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(mixatt, cmd):
    r = run(mixatt, cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: mixatt " + cmd in r.stdout


def test_top_level_usage_lists_commands(mixatt):
    r = run(mixatt, "--help")
    assert r.returncode == 0
    for cmd in COMMANDS:
        assert cmd in r.stdout
    r = run(mixatt, "frobnicate")
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr


def test_run_greedy_answers(mixatt, model):
    r = run(mixatt, "run", "-m", model, "--chat", "-p", "What is the capital of France?", "-n", 24)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "tok/s" in r.stderr  # timings go to stderr, not into the text


def test_run_finds_default_model_from_another_directory(mixatt, model, tmp_path):
    r = run(mixatt, "run", "-p", "Hello", "-n", 2, "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_stop_string_is_not_printed(mixatt, model):
    base = run(mixatt, "run", "-m", model, "-p", "One, two, three, four,", "-n", 12, "-q")
    assert base.returncode == 0
    words = base.stdout.split()
    assert len(words) > 2
    stop = words[1]
    r = run(mixatt, "run", "-m", model, "-p", "One, two, three, four,", "-n", 12, "-q", "--stop", stop)
    assert r.returncode == 0
    assert stop not in r.stdout and r.stdout.strip() == base.stdout[: base.stdout.index(stop)].strip()


def test_sampling_is_seeded(mixatt, model):
    args = ("run", "-m", model, "-p", "Once upon a time", "-n", 16, "-q", "--temp", "0.9", "--top-k", "50",
            "--top-p", "0.9", "--min-p", "0.02", "--repeat-penalty", "1.1")
    a = run(mixatt, *args, "--seed", 7)
    b = run(mixatt, *args, "--seed", 7)
    c = run(mixatt, *args, "--seed", 8)
    assert a.returncode == 0 and a.stdout == b.stdout
    assert a.stdout != c.stdout


def test_chat_keeps_the_conversation(mixatt, model):
    """The second answer of a chat (cache reused across turns) equals a one-shot run of the whole rendered
    conversation: the chat carries the first exchange in its context, exactly."""
    u1, u2 = "My name is Ada and I live in Paris.", "What is my name?"
    r = run(mixatt, "chat", "-m", model, "-n", 40, "--exact", input=f"{u1}\n{u2}\n/exit\n")
    assert r.returncode == 0, r.stderr
    turns = r.stdout.split("> ")
    a1, a2 = turns[1][:-1], turns[2][:-1]  # each answer is followed by one newline
    sys = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    conv = (f"<|im_start|>system\n{sys}<|im_end|>\n<|im_start|>user\n{u1}<|im_end|>\n"
            f"<|im_start|>assistant\n{a1}<|im_end|>\n<|im_start|>user\n{u2}<|im_end|>\n<|im_start|>assistant\n")
    one_shot = run(mixatt, "run", "-m", model, "-p", conv, "-n", 40, "-q", "--exact", "--stop", "<|im_end|>")
    assert one_shot.returncode == 0, one_shot.stderr
    assert a2 and one_shot.stdout[:-1] == a2


def test_chat_drops_old_turns_when_the_context_is_full(mixatt, model):
    lines = "".join(f"Tell me a fact about the number {i}.\n" for i in range(6))
    r = run(mixatt, "chat", "-m", model, "-n", 40, "--ctx", 160, input=lines)
    assert r.returncode == 0, r.stderr
    assert "dropped the oldest exchange" in r.stderr
    assert r.stdout.count("> ") == 7


def test_info(mixatt, model):
    r = run(mixatt, "info", "-m", model, "--ctx", 4096)
    assert r.returncode == 0, r.stderr
    assert "30 layers, width 576, 9 query heads / 3 KV heads" in r.stdout
    assert "134.52 M" in r.stdout
    assert "Q4_1" in r.stdout and "Q8_0" in r.stdout
    # 30 layers x 2 (K, V) x 3 heads x 64 dims x 4 bytes
    assert "46080 bytes fp32" in r.stdout


def test_perplexity_is_reasonable(mixatt, model, tmp_path):
    text = open(os.path.join(ROOT, "tests", "fixtures", "smollm2_logits.json")).read()
    (tmp_path / "t.txt").write_text(text)
    r = run(mixatt, "perplexity", "-m", model, "-f", tmp_path / "t.txt", "--ctx", 128, "--chunks", 2)
    assert r.returncode == 0, r.stderr
    ppl = float(r.stdout.split("perplexity:")[1].split()[0])
    assert 1.0 < ppl < 200.0


def test_bench_prints_a_table(mixatt, model):
    r = run(mixatt, "bench", "-m", model, "-p", 16, "-n", 4, "-r", 2)
    assert r.returncode == 0, r.stderr
    assert "pp16" in r.stdout and "tg4" in r.stdout and "GB/s" in r.stdout


# ---------- bad input: each names the file and the problem, exits non-zero, no crash ----------

def expect_error(binary, args, *words, code=None):
    r = run(binary, *args)
    assert r.returncode != 0 and (code is None or r.returncode == code), (r.returncode, r.stderr)
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr
    return r


@pytest.fixture(params=["release", "asan"])
def binary(request, mixatt, mixatt_asan):
    return mixatt if request.param == "release" else mixatt_asan


def test_missing_model(binary, tmp_path):
    expect_error(binary, ["run", "-m", tmp_path / "nope.gguf", "-p", "hi"], "model not found", "nope.gguf")


def test_missing_default_model_says_how_to_get_it(binary, tmp_path):
    r = run(binary, "run", "-p", "hi", cwd=tmp_path, env={"MIXATT_MODEL": ""}, exe_copy=True)
    assert r.returncode == 1
    assert "make model" in r.stderr


def test_not_a_gguf(binary, tmp_path):
    p = tmp_path / "model.gguf"
    p.write_bytes(b"this is not a model\n" * 10)
    expect_error(binary, ["run", "-m", p, "-p", "hi"], "model.gguf")


def test_truncated_model(binary, model, tmp_path):
    p = tmp_path / "cut.gguf"
    with open(model, "rb") as f:
        p.write_bytes(f.read(20 << 20))
    expect_error(binary, ["run", "-m", p, "-p", "hi"], "cut.gguf")


def llama_gguf(path, drop=None, arch="llama", tensor_type=None):
    """A tiny random Llama GGUF with the real model's tokenizer metadata (2 layers, width 64)."""
    src = gguf.GGUFReader(os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    w = gguf.GGUFWriter(str(path), arch)
    C, F, V, L = 64, 128, 49152, 2
    w.add_context_length(256)
    w.add_embedding_length(C)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        f = src.fields[key]
        if key == "tokenizer.ggml.model":
            w.add_tokenizer_model(f.contents())
        elif key == "tokenizer.ggml.pre":
            w.add_tokenizer_pre(f.contents())
        elif key == "tokenizer.ggml.tokens":
            w.add_token_list(f.contents())
        elif key == "tokenizer.ggml.merges":
            w.add_token_merges(f.contents())
        elif key == "tokenizer.ggml.token_type":
            w.add_token_types(f.contents())
        elif key.endswith("bos_token_id"):
            w.add_bos_token_id(f.contents())
        else:
            w.add_eos_token_id(f.contents())
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (V, C), "output_norm.weight": (C,)}
    for l in range(L):
        shapes.update({f"blk.{l}.attn_norm.weight": (C,), f"blk.{l}.attn_q.weight": (C, C),
                       f"blk.{l}.attn_k.weight": (C // 2, C), f"blk.{l}.attn_v.weight": (C // 2, C),
                       f"blk.{l}.attn_output.weight": (C, C), f"blk.{l}.ffn_norm.weight": (C,),
                       f"blk.{l}.ffn_gate.weight": (F, C), f"blk.{l}.ffn_up.weight": (F, C),
                       f"blk.{l}.ffn_down.weight": (C, F)})
    for name, shape in shapes.items():
        if name == drop:
            continue
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tiny_random_llama_runs(binary, tmp_path):
    p = llama_gguf(tmp_path / "tiny.gguf")
    r = run(binary, "run", "-m", p, "-p", "Hello world", "-n", 8, "-q")
    assert r.returncode == 0, r.stderr


def test_missing_tensor(binary, tmp_path):
    p = llama_gguf(tmp_path / "tiny.gguf", drop="blk.1.ffn_up.weight")
    expect_error(binary, ["run", "-m", p, "-p", "hi"], "tiny.gguf", "missing tensor 'blk.1.ffn_up.weight'")


def test_unsupported_architecture(binary, tmp_path):
    p = llama_gguf(tmp_path / "tiny.gguf", arch="mamba")
    expect_error(binary, ["run", "-m", p, "-p", "hi"], "tiny.gguf", "architecture 'mamba' is not supported")


def test_prompt_longer_than_context(binary, model):
    expect_error(binary, ["run", "-m", model, "--ctx", 16, "-p", "word " * 40], "longer than the context")


def test_bad_flag_values(binary, model):
    expect_error(binary, ["run", "-m", model, "-p", "hi", "--temp", "hot"], "--temp expects a number", code=2)
    expect_error(binary, ["run", "-m", model, "-p", "hi", "-t", "0"], "-t expects an integer", code=2)
    expect_error(binary, ["run", "-m", model], "give exactly one of -p PROMPT, -f FILE or --ids", code=2)
    expect_error(binary, ["run", "-m", model, "-f", "/nonexistent/prompt.txt"], "/nonexistent/prompt.txt")
    expect_error(binary, ["perplexity", "-m", model], "-f FILE is required", code=2)


def test_moe_stats_counts_every_routed_token(mixatt):
    """Mixtral-shaped fixture (4 experts, top-2): info --moe-stats routes the prompt and prints each MoE layer's
    expert loads, which must sum to tokens x k on every layer."""
    import re
    model = os.path.join(ROOT, "tests", "fixtures", "blocks", "mixtral.gguf")
    r = run(mixatt, "info", "-m", model, "--moe-stats", "-p", "the quick brown fox jumps over the lazy dog")
    assert r.returncode == 0, r.stderr
    head = re.search(r"expert load on (\d+) tokens \(top-(\d+) of (\d+) experts", r.stdout)
    assert head, r.stdout
    n, k, e = map(int, head.groups())
    rows = re.findall(r"layer +\d+:((?: +\d+)+)", r.stdout)
    assert rows and n > 5
    for row in rows:
        counts = list(map(int, row.split()))
        assert len(counts) == e and sum(counts) == n * k


def test_moe_stats_on_a_model_without_experts(mixatt, model):
    r = run(mixatt, "info", "-m", model, "--moe-stats", "-p", "hello")
    assert r.returncode == 1 and "has no experts" in r.stderr
