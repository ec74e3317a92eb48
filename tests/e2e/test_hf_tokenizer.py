"""Hugging Face tokenizers end to end (tests/fixtures/hf_tok, written by scripts/fixtures_hf_tokenizers.py):
a Hugging Face directory made of the 256-token Llama test model (tests/fixtures/hf/llama) and a 256-token
byte-level tokenizer with SmolLM2's ChatML template runs `mixatt run -m DIR -p` and `--chat` on the ids that
Hugging Face `tokenizers` and transformers' apply_chat_template give; `mixatt convert` writes the tokenizer
and the template into the GGUF, which then tokenizes and generates exactly as the directory; `tokenize -m DIR`
reads every tokenizer family; a template outside the Jinja subset costs only --chat, with its construct named."""
import json
import os
import shutil
import subprocess

from gguf import GGUFReader

from conftest import FIXTURES, run

TOK = os.path.join(FIXTURES, "hf_tok")


def hf_dir(tmp_path, tokenizer="tiny", template=None):
    d = tmp_path / "model"
    d.mkdir()
    for f in ["config.json", "generation_config.json", "model.safetensors"]:
        shutil.copy(os.path.join(FIXTURES, "hf", "llama", f), d)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(TOK, tokenizer, f), d)
    if template is not None:
        cfg = json.load(open(d / "tokenizer_config.json"))
        cfg["chat_template"] = template
        json.dump(cfg, open(d / "tokenizer_config.json", "w"))
    return d


def reference(name="tiny"):
    return json.load(open(os.path.join(TOK, name, "reference.json")))


def case(ref, text):
    return next(c for c in ref["cases"] if c["text"] == text)


def run_ids(binary, model, *args):
    """The prompt and generated ids of `mixatt run --print-ids` (greedy) and its output's bytes (a random
    model writes any bytes)."""
    r = subprocess.run([binary, "run", "-m", str(model), "-n", "6", "--print-ids", *map(str, args)],
                       capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="2"), timeout=600)
    r.stderr = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stderr.splitlines() if l.startswith("ids:"))
    return [int(x) for x in line[4:].split()], r.stdout


def test_run_prompt_uses_tokenizers_ids(mixatt, tmp_path):
    d, ref = hf_dir(tmp_path), reference()
    for text in ["The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x * 2\n"]:
        ids, _ = run_ids(mixatt, d, "-p", text)
        want = case(ref, text)["ids"]
        assert ids[: len(want)] == want and len(ids) == len(want) + 6, (text, ids, want)


def test_run_chat_uses_transformers_template(mixatt_asan, tmp_path):
    d, ref = hf_dir(tmp_path), reference()
    chat = next(c for c in ref["chats"] if c["messages"] == [{"role": "user", "content": "Hi!"}])
    assert chat["add_generation_prompt"]
    ids, _ = run_ids(mixatt_asan, d, "--chat", "-p", "Hi!")
    assert ids[: len(chat["ids"])] == chat["ids"]


def test_convert_writes_the_tokenizer(mixatt, tmp_path):
    d, ref = hf_dir(tmp_path), reference()
    out = tmp_path / "model.gguf"
    r = run(mixatt, "convert", "-m", d, "-o", out)
    assert r.returncode == 0 and "no tokenizer" not in r.stderr, r.stderr
    g = GGUFReader(str(out))
    field = lambda k: bytes(g.fields[k].parts[g.fields[k].data[0]]).decode("utf-8")
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt2"
    assert len(g.fields["tokenizer.ggml.tokens"].data) == ref["vocab_size"]
    assert field("tokenizer.chat_template") == json.load(open(d / "tokenizer_config.json"))["chat_template"]
    assert json.loads(field("tokenizer.huggingface.json"))["model"]["type"] == "BPE"
    for text in ["Hello world!", "日本語のテキスト", "text<|endoftext|>more text"]:
        a = run(mixatt, "tokenize", "-m", d, "-p", text)
        b = run(mixatt, "tokenize", "-m", out, "-p", text)
        assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
        assert a.stdout == b.stdout and [int(x) for x in a.stdout.split()] == case(ref, text)["ids"], text
    assert run_ids(mixatt, out, "--chat", "-p", "Hi!") == run_ids(mixatt, d, "--chat", "-p", "Hi!")


def test_tokenize_every_family(mixatt, tmp_path):
    for name in ["gpt2", "llama3", "qwen2", "smollm", "llama2", "mistral"]:
        ref = reference(name)
        for c in ref["cases"][::25]:
            if not c["text"]:
                continue
            r = run(mixatt, "tokenize", "-m", os.path.join(TOK, name), "-p", c["text"])
            assert r.returncode == 0, r.stderr
            assert [int(x) for x in r.stdout.split()] == c["ids"], (name, c["text"])


def test_unsupported_template_costs_only_chat(mixatt, tmp_path):
    d = hf_dir(tmp_path, template="{% macro turn(m) %}{{ m.content }}{% endmacro %}{{ turn(messages[0]) }}")
    r = run(mixatt, "run", "-m", d, "--chat", "-p", "Hi", "-n", 2)
    assert r.returncode != 0
    assert "'macro'" in r.stderr and "line 1" in r.stderr and "tokenizer_config.json" in r.stderr, r.stderr
    assert run_ids(mixatt, d, "-p", "Hi")[0]


def test_raise_exception_reaches_the_user(mixatt, tmp_path):
    mistral = json.load(open(os.path.join(TOK, "mistral", "tokenizer_config.json")))["chat_template"]
    d = hf_dir(tmp_path, template=mistral)  # Mistral's template: roles must alternate, starting with user
    r = run(mixatt, "run", "-m", d, "--chat", "--system", "be brief", "-p", "Hi", "-n", 2)
    assert r.returncode != 0 and "raise_exception: Conversation roles must alternate" in r.stderr, r.stderr
    assert run_ids(mixatt, d, "--chat", "-p", "Hi")[0]


def test_tokenizer_larger_than_the_model_is_refused(mixatt, tmp_path):
    d = hf_dir(tmp_path, tokenizer="llama2")  # 959 tokens for a 256-row embedding
    r = run(mixatt, "run", "-m", d, "-p", "Hi", "-n", 2)
    assert r.returncode != 0 and "959" in r.stderr and "256" in r.stderr, r.stderr
