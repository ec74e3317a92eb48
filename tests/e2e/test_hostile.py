"""Hostile and damaged inputs (issue 15): safetensors headers, Hugging Face configs, GGUF hyper-parameters and
training checkpoints written to break mixatt. Every reproducer is written by this file from the committed
fixtures (tests/fixtures/hf, configs/); each must end the ASan/UBSan build (build/asan/mixatt) with a mixatt
message and a non-zero exit, never a sanitizer report, a crash or a silent success.

The cases are families, not single bytes: for each kind of field (a count, an expert number, a position, a step)
the boundary values on both sides, zero, negatives and values past the type's range."""
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest

from conftest import FIXTURES, ROOT, run

HF = os.path.join(FIXTURES, "hf")
TINY = ["-c", os.path.join(ROOT, "configs", "train-tiny-llama.json"), "--set", "vocab=32", "--set", "d_model=32",
        "--set", "n_layer=2", "--set", "plan=G,S", "--set", "n_head=4", "--set", "n_kv_head=2", "--set", "d_ff=64", "--set", "max_ctx=32",
        "--set", "seq=16", "--set", "batch=2", "--set", "train_data=synthetic:recall", "--set", "val_every=0",
        "--set", "steps=6", "--set", "warmup=2", "--set", "log_every=0"]
SANITIZER = ("AddressSanitizer", "runtime error", "LeakSanitizer", "double free", "Segmentation")


def assert_clean_failure(r, *needles):
    """A non-zero exit with a mixatt message that contains every needle, and no sanitizer report."""
    out = r.stdout + r.stderr
    assert r.returncode not in (0, None), out
    assert not any(s in out for s in SANITIZER), out
    assert "mixatt" in r.stderr, out
    for n in needles:
        assert n in r.stderr, f"{n!r} not in: {r.stderr}"


# ---- safetensors headers ----

def write_st(path, header_text, data=b""):
    h = header_text.encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


T4 = '"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'


@pytest.mark.parametrize("header,data,needle", [
    ('{"__metadata__":{"a":"1","b":"2","c":"3"},"__metadata__":{"d":"4"}}', b"", "more than one __metadata__"),
    ('{"__metadata__":{"d":"4"},"__metadata__":{"a":"1","b":"2","c":"3","e":"5","f":"6"}}', b"",
     "more than one __metadata__"),
    ('{"__metadata__":{"a":"1"},' + T4 + ',"__metadata__":{"b":"2","c":"3","d":"4"}}', b"\0" * 4,
     "more than one __metadata__"),
    ('{"__metadata__":{},"__metadata__":{}}', b"", "more than one __metadata__"),
    ('{"__metadata__":{"a":"1","a":"2"}}', b"", "'a' appears twice"),
    ('{"__metadata__":{"a":1}}', b"", "not a string"),
    ('{"__metadata__":[1,2,3]}', b"", "not an object"),
    ('{' + T4 + ',' + T4 + '}', b"\0" * 4, "appears twice"),
    ('{"x":{"dtype":"F32","shape":[4294967296,0],"data_offsets":[0,0]}}', b"", "exceeds"),
    ('{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', b"\0" * 4, "not a non-negative integer"),
    ('{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', b"\0" * 4, "need 8 bytes"),
    ('{"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 4, "runs past the end"),
    ('{"x":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}', b"\0" * 8, "begin <= end"),
])
def test_bad_safetensors_header(mixatt_asan, tmp_path, header, data, needle):
    f = write_st(tmp_path / "bad.safetensors", header, data)
    r = run(mixatt_asan, "info", "-m", f)
    assert_clean_failure(r, str(f), needle)


# ---- Hugging Face configs ----

def hf_copy(tmp_path, name, **changes):
    d = tmp_path / name
    shutil.copytree(os.path.join(HF, name), d)
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def model_commands(m, tmp_path):
    return [["info", "-m", m], ["logits", "-m", m, "--ids", "1,2,3", "-o", tmp_path / "l.npy"],
            ["run", "-m", m, "--ids", "1,2,3", "-n", "2", "-q"]]


@pytest.mark.parametrize("changes,needle", [
    ({"num_local_experts": 0}, "num_local_experts 0"),
    ({"num_local_experts": 1, "num_experts_per_tok": 2}, "num_experts_per_tok 2"),
    ({"num_experts_per_tok": 9}, "num_experts_per_tok 9"),
    ({"num_experts_per_tok": 8 + 1000}, "num_experts_per_tok 1008"),
    ({"num_experts_per_tok": 0}, "num_experts_per_tok 0"),
    ({"num_experts_per_tok": -1}, "num_experts_per_tok"),
    ({"num_local_experts": -8}, "num_local_experts"),
    ({"num_local_experts": 1 << 20}, "num_local_experts"),
    ({"num_local_experts": None}, "num_local_experts"),
    ({"vocab_size": 0}, "vocab_size 0"),
    ({"vocab_size": 1}, "vocab_size 1"),
    ({"vocab_size": 255}, "vocab_size 255"),
    ({"vocab_size": 257}, "vocab_size 257"),
    ({"head_dim": 2048}, "rotary dims"),
])
def test_bad_mixtral_config(mixatt_asan, tmp_path, changes, needle):
    m = hf_copy(tmp_path, "mixtral", **changes)
    for cmd in model_commands(m, tmp_path):
        assert_clean_failure(run(mixatt_asan, *cmd), needle)


@pytest.mark.parametrize("changes,needle", [
    ({"num_experts_per_tok": 0}, "num_experts_per_tok 0"),
    ({"num_experts_per_tok": 99}, "num_experts_per_tok 99"),
    ({"n_routed_experts": 1 << 20}, "n_routed_experts"),
    ({"qk_rope_head_dim": 4096}, "rotary dims"),
    ({"kv_lora_rank": 0}, "kv_lora_rank"),
    ({"v_head_dim": 0}, "v_head_dim"),
])
def test_bad_deepseek_config(mixatt_asan, tmp_path, changes, needle):
    m = hf_copy(tmp_path, "deepseek_v2", **changes)
    assert_clean_failure(run(mixatt_asan, "info", "-m", m), needle)


@pytest.mark.parametrize("text,where", [
    ('{"model_type": "llama",\n  "hidden_size": }', "line 2, column 18"),
    ('{"model_type": "llama"', "line 1, column 23"),
    ('{"model_type": "llama"} trailing', "line 1, column 25"),
    ('[1, 2]', "top level is not a JSON object"),
    ('{"model_type": "llama"}\0{"x": 1}', "a NUL byte"),
])
def test_bad_json_config_names_the_position(mixatt_asan, tmp_path, text, where):
    d = hf_copy(tmp_path, "llama")
    (d / "config.json").write_bytes(text.encode())
    assert_clean_failure(run(mixatt_asan, "info", "-m", d), str(d / "config.json"), where)


@pytest.mark.parametrize("key,value,needle", [
    ("expert_used_count", 9, "top-k"),
    ("expert_used_count", 0, "top-k"),
    ("expert_count", 0, None),  # a dense reading of MoE tensors: the binder names the missing tensor
    ("rope.dimension_count", 1 << 20, "rotary dims"),
])
def test_bad_gguf_hyperparameters(mixatt, mixatt_asan, tmp_path, key, value, needle):
    from gguf import GGUFReader
    g = tmp_path / "mixtral.gguf"
    r = run(mixatt, "convert", "-m", os.path.join(HF, "mixtral"), "-o", g)
    assert r.returncode == 0, r.stderr
    reader = GGUFReader(str(g), "r+")
    field = reader.fields[f"llama.{key}"]
    field.parts[field.data[0]][0] = value
    del reader
    for cmd in model_commands(g, tmp_path):
        r = run(mixatt_asan, *cmd)
        assert_clean_failure(r, *([needle] if needle else []))


# ---- training checkpoints ----

def read_ckpt(path):
    b = path.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


def write_ckpt(path, header, data, fix_checksum=True):
    """Writes header (dict, metadata first) and data; with fix_checksum the stored checksum is recomputed the way
    mixatt computes it (so that the range checks behind it are what is tested)."""
    meta = header["__metadata__"]
    if fix_checksum and "checksum" in meta:
        crc = 0
        for k, v in meta.items():
            if k != "checksum":
                crc = zlib.crc32(k.encode() + b"\0" + v.encode() + b"\0", crc)
        meta["checksum"] = "crc32:%08x" % zlib.crc32(data, crc)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mixatt):
    """A run of 3 of 6 steps (checkpoint at step 3) to resume from; tests copy it."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    r = run(mixatt, "train", *TINY, "-o", out, "--max-steps", "3", "-q")
    assert r.returncode == 0, r.stderr
    return out


def copy_run(trained, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(trained, d)
    return d


def resume(binary, d, *extra):
    return run(binary, "train", "--resume", d, "-o", d, "-q", *extra)


def shard_tokens(d):
    return (d / "data" / "train_000.bin").stat().st_size // 2 - 512


@pytest.mark.parametrize("key,value,needle", [
    ("data_pos", "9223372036854775800", "past the shard"),
    ("data_pos", "9223372036854775807", "past the shard"),
    ("data_pos", "9223372036854775808", "not an integer"),
    ("data_pos", "-1", "outside 0.."),
    ("data_pos", "-9223372036854775793", "outside 0.."),
    ("data_pos", "PAST_END", "past the shard"),
    ("data_pos", "1e3", "not an integer"),
    ("data_pos", "", "not an integer"),
    ("data_pos", " 7", "not an integer"),
    ("data_pos", "0x10", "not an integer"),
    ("data_shard", "1", "outside the 1 shards"),
    ("data_shard", "4294967296", "outside 0.."),
    ("data_shard", "-1", "outside 0.."),
    ("step", "-7", "outside 0.."),
    ("step", "99999999999", "outside 0.."),
    ("step", "2147483648", "outside 0.."),
    ("step", "7", "past the run's 6 steps"),
    ("step", "three", "not an integer"),
])
def test_resume_rejects_bad_state(mixatt_asan, trained, tmp_path, key, value, needle):
    d = copy_run(trained, tmp_path)
    ckpt = d / "checkpoint.safetensors"
    header, data = read_ckpt(ckpt)
    header["__metadata__"][key] = str(shard_tokens(d) + 1) if value == "PAST_END" else value
    write_ckpt(ckpt, header, data)
    r = resume(mixatt_asan, d)
    assert_clean_failure(r, needle)


def test_resume_at_the_last_step_position_works(mixatt_asan, trained, tmp_path):
    """The boundary inside the range: the cursor at the shard's end passes to the next batch (the first shard)."""
    d = copy_run(trained, tmp_path)
    ckpt = d / "checkpoint.safetensors"
    header, data = read_ckpt(ckpt)
    header["__metadata__"]["data_pos"] = str(shard_tokens(d))
    write_ckpt(ckpt, header, data)
    r = resume(mixatt_asan, d)
    assert r.returncode == 0, r.stderr
    header, _ = read_ckpt(ckpt)
    assert header["__metadata__"]["step"] == "6"
    assert 0 <= int(header["__metadata__"]["data_pos"]) <= shard_tokens(d)


def test_duplicate_metadata_block_in_a_checkpoint(mixatt_asan, trained, tmp_path):
    d = copy_run(trained, tmp_path)
    ckpt = d / "checkpoint.safetensors"
    b = ckpt.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    text = b[8:8 + n].rstrip()
    assert text.endswith(b"}")
    text = text[:-1] + b',"__metadata__":{"a":"1","b":"2","c":"3","d":"4","e":"5","f":"6","g":"7","h":"8"}}'
    text += b" " * (-len(text) % 8)
    ckpt.write_bytes(struct.pack("<Q", len(text)) + text + b[8 + n:])
    assert_clean_failure(resume(mixatt_asan, d), "more than one __metadata__")
    assert_clean_failure(run(mixatt_asan, "run", "-m", d, "--ids", "1,2", "-n", "2", "-q"),
                         "more than one __metadata__")


@pytest.mark.parametrize("key", ["d_ff", "d_model", "max_ctx"])
def test_checkpoint_config_missing_a_shape_key_is_refused(mixatt_asan, trained, tmp_path, key):
    """fuzz_ckpt found it: a stored config without d_ff (its checksum fixed) loaded with d_ff = -1 under `run -m`,
    and the session's activation width wrapped around, so the embedding wrote past its buffer."""
    d = copy_run(trained, tmp_path)
    ckpt = d / "checkpoint.safetensors"
    header, data = read_ckpt(ckpt)
    cfg = json.loads(header["__metadata__"]["config"])
    del cfg[key]
    header["__metadata__"]["config"] = json.dumps(cfg)
    write_ckpt(ckpt, header, data)
    assert_clean_failure(run(mixatt_asan, "run", "-m", d, "--ids", "1,2", "-n", "2", "-q"), str(ckpt),
                         f"no key '{key}'")


@pytest.mark.parametrize("damage", ["data_word", "data_1000_words", "last_byte", "metadata_value", "no_checksum",
                                    "bad_checksum_syntax", "appended_byte"])
def test_checkpoint_damage_is_detected(mixatt_asan, trained, tmp_path, damage):
    d = copy_run(trained, tmp_path)
    ckpt = d / "checkpoint.safetensors"
    header, data = read_ckpt(ckpt)
    data = bytearray(data)
    meta = header["__metadata__"]
    rng = np.random.default_rng(15)
    if damage == "data_word":
        data[len(data) // 2] ^= 0x40
    elif damage == "data_1000_words":
        for i in rng.choice(len(data) // 4, 1000, replace=False):
            data[4 * i + 3] ^= 0x01
    elif damage == "last_byte":
        data[-1] ^= 0x80
    elif damage == "metadata_value":
        meta["data_pos"] = str(int(meta["data_pos"]) - 16)
    elif damage == "no_checksum":
        del meta["checksum"]
    elif damage == "bad_checksum_syntax":
        meta["checksum"] = "crc32:xyz"
    elif damage == "appended_byte":
        data += b"\0"
    write_ckpt(ckpt, header, bytes(data), fix_checksum=False)
    needle = {"no_checksum": "no checksum", "bad_checksum_syntax": "not crc32:"}.get(damage, "checksum mismatch")
    assert_clean_failure(resume(mixatt_asan, d), str(ckpt), needle)
    assert_clean_failure(run(mixatt_asan, "run", "-m", d, "--ids", "1,2", "-n", "2", "-q"), str(ckpt), needle)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("which", ["weight", "moment"])
def test_nonfinite_values_in_a_checkpoint_are_refused(mixatt_asan, trained, tmp_path, value, which):
    """A checkpoint whose checksum matches but which holds a NaN or an infinity (crafted: mixatt train never
    writes one): a weight is refused by both `run -m` and `--resume`, an AdamW moment by `--resume`. The fuzzer
    found what a NaN weight did before: every MoE router score NaN, an expert index of -1."""
    d = copy_run(trained, tmp_path)
    ckpt = d / "checkpoint.safetensors"
    header, data = read_ckpt(ckpt)
    names = [k for k in header if k != "__metadata__" and header[k]["dtype"] == "F32" and
             k.startswith("optim.") == (which == "moment")]
    name = sorted(names)[len(names) // 2]
    lo, hi = header[name]["data_offsets"]
    data = bytearray(data)
    at = (hi - lo) // 8 * 4  # an element in the middle of the tensor
    data[lo + at:lo + at + 4] = struct.pack("<f", value)
    write_ckpt(ckpt, header, bytes(data))
    kind = "a NaN" if value != value else "an infinity"
    assert_clean_failure(resume(mixatt_asan, d), str(ckpt), f"tensor '{name}' holds {kind} at element {at // 4}")
    r = run(mixatt_asan, "run", "-m", d, "--ids", "1,2", "-n", "2", "-q")
    if which == "weight":
        assert_clean_failure(r, str(ckpt), f"tensor '{name}' holds {kind}")
    else:  # run -m reads no optimizer state
        assert r.returncode == 0, r.stderr


def test_leftover_temp_file_is_removed_at_start(mixatt, trained, tmp_path):
    d = copy_run(trained, tmp_path)
    tmp = d / "checkpoint.safetensors.tmp"
    tmp.write_bytes(b"\0" * 12345)  # what a kill -9 in the middle of a write leaves
    r = resume(mixatt, d, "--max-steps", "1")
    assert r.returncode == 0, r.stderr
    assert not tmp.exists()


def test_resumed_log_has_each_step_once(mixatt, trained, tmp_path):
    """The run went on past its checkpoint (steps 4 and 5 logged) and was killed before the next one: the resumed
    run's log holds steps 1..6 once each, and steps 1..3 as they were."""
    d = copy_run(trained, tmp_path)
    saved = (d / "checkpoint.safetensors").read_bytes()
    before = (d / "log.jsonl").read_text().splitlines()
    r = resume(mixatt, d, "--max-steps", "2")
    assert r.returncode == 0, r.stderr
    (d / "checkpoint.safetensors").write_bytes(saved)  # the kill: the step-5 checkpoint never landed
    with open(d / "log.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 1.0')  # and a torn line
    r = resume(mixatt, d)
    assert r.returncode == 0, r.stderr
    lines = (d / "log.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == [1, 2, 3, 4, 5, 6], steps
    assert lines[:3] == before[:3]


@pytest.mark.parametrize("lr", ["1e30", "1e38"])
def test_nonfinite_run_keeps_a_finite_checkpoint(mixatt, tmp_path, lr):
    """However the run diverges (a NaN loss, or weights that overflow in the update), the checkpoint on disk holds
    only finite numbers and the message names its step."""
    from safetensors.numpy import load_file
    out = tmp_path / "run"
    r = run(mixatt, "train", *TINY, "--set", f"lr={lr}", "--set", "warmup=0", "--set", "ckpt_every=1", "-o", out)
    assert r.returncode == 1, r.stderr
    assert "stopping" in r.stderr, r.stderr
    ckpt = out / "checkpoint.safetensors"
    if ckpt.exists():
        tensors = load_file(ckpt)
        assert all(np.isfinite(v).all() for v in tensors.values())
        step = read_ckpt(ckpt)[0]["__metadata__"]["step"]
        assert f"(step {step})" in r.stderr, r.stderr
    else:
        assert "No checkpoint was written before it" in r.stderr, r.stderr


# ---- the smaller defects ----

@pytest.mark.parametrize("plan,needle", [
    ("S2147483648,G", "window 2147483648 in 'S2147483648' is out of range"),
    ("S99999999999999999999,G", "is out of range"),
    ("G@-1", "layer 0 reads layer -1's cache, which does not exist (3 layers)"),
    ("G,G@-5", "layer 1 reads layer -5's cache, which does not exist"),
    ("G,G@4294967296", "layer 1 reads layer 4294967296's cache, which does not exist"),
    ("G,G@1x", "unexpected 'x'"),
    ("G*99999999999", "bad repeat count"),
    ("G*2x", "bad repeat count"),
])
def test_plan_messages_name_the_bad_value(mixatt_asan, plan, needle):
    r = run(mixatt_asan, "info", "-m", os.path.join(HF, "llama"), "--plan", plan)
    assert_clean_failure(r, needle)


@pytest.mark.parametrize("cut", [9, 12, 20, 23])
def test_truncated_gguf_says_how_many_bytes_a_u64_needs(mixatt_asan, tmp_path, cut):
    """Header: magic, version (4 bytes each), then the tensor and key counts (8 bytes each): a file that ends
    inside a count needs 8 bytes there, not 4."""
    head = b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", 0) + struct.pack("<Q", 0)
    f = tmp_path / "cut.gguf"
    f.write_bytes(head[:cut])
    r = run(mixatt_asan, "info", "-m", f)
    at = 8 if cut < 16 else 16
    assert_clean_failure(r, "needs 8 bytes at offset %d" % at)


def test_run_prompt_file_with_a_nul_byte_is_refused(mixatt_asan, model, tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes(b"Hello\0 world, this is a prompt")
    r = run(mixatt_asan, "run", "-m", model, "-f", f, "-n", "1")
    assert_clean_failure(r, f"{f} has a NUL byte at offset 5")


@pytest.mark.parametrize("name,want", [
    ("gpt2", "(LayerNorm, learned positions, GELU, tied embeddings)"),
    ("llama", "(RMSNorm, RoPE theta"),
    ("mixtral", "SwiGLU experts (top-2 of 8)"),
    ("deepseek_v2", "MLA attention"),
])
def test_info_architecture_line_says_what_the_model_is(mixatt, name, want):
    r = run(mixatt, "info", "-m", os.path.join(HF, name))
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("architecture:"))
    assert want in line, line
    if name == "gpt2":
        assert "RMSNorm" not in line and "RoPE" not in line and "SwiGLU" not in line, line


def test_shape_mismatch_prints_the_tensor_dims_only(mixatt_asan, tmp_path):
    m = hf_copy(tmp_path, "llama", intermediate_size=48)
    r = run(mixatt_asan, "info", "-m", m)
    assert_clean_failure(r)
    import re
    assert re.search(r"has shape \[\d+, \d+\]; the config implies \[\d+, 48\]", r.stderr), r.stderr


@pytest.mark.parametrize("key,value,needle", [
    ("d_model", 1e20, "'d_model' is not a non-negative integer"),
    ("d_model", -4, "'d_model' is not a non-negative integer"),
    ("n_layer", 2.5, "'n_layer' is not a non-negative integer"),
    ("n_expert", 4, "experts used per token"),  # with n_expert_used 5 (set below)
    ("n_head", 0, "impossible shape"),
])
def test_run_m_rejects_a_bad_stored_config(mixatt_asan, trained, tmp_path, key, value, needle):
    """The run -m path reads the training config stored in the checkpoint (with a valid checksum here, so the
    range checks are what is tested)."""
    d = copy_run(trained, tmp_path)
    ckpt = d / "checkpoint.safetensors"
    header, data = read_ckpt(ckpt)
    cfg = json.loads(header["__metadata__"]["config"])
    cfg[key] = value
    if key == "n_expert":
        cfg["n_expert_used"] = 5
    header["__metadata__"]["config"] = json.dumps(cfg)
    write_ckpt(ckpt, header, data)
    r = run(mixatt_asan, "run", "-m", ckpt, "--ids", "1,2", "-n", "2", "-q")
    assert_clean_failure(r, needle)
