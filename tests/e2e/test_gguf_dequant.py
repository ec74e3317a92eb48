"""End-to-end tests of the GGUF reader and dequantization through `mixatt tensor`.

Small GGUF files with tensors of every supported type are written with the `gguf` package (GGUFWriter); for the
K types, which gguf cannot quantize, valid random blocks are built as raw bytes (sane fp16 scales, random quant
bits). `mixatt tensor --dump-all` must reproduce `gguf.quants.dequantize` bit for bit: mixatt performs the same
fp32 operations in the same order (no FMA contraction), so no tolerance is needed. The same holds for every
tensor of the real model. Bad inputs must give exit status 1 and a message naming the file, also under the ASan
build ($MIXATT_ASAN) when it is given.

Environment: MIXATT (required) = path to the mixatt binary; MIXATT_ASAN (optional) = an ASan build.
"""
import os
import struct
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def mixatt_bin():
    path = os.environ.get("MIXATT")
    if not path:
        pytest.fail("MIXATT is not set: it must name the mixatt binary (make e2e sets it)")
    return path


def binaries():
    """The release binary and, when given, the ASan build."""
    bins = [mixatt_bin()]
    if os.environ.get("MIXATT_ASAN"):
        bins.append(os.environ["MIXATT_ASAN"])
    return bins


def run(binary, *args):
    return subprocess.run([binary, "tensor", *map(str, args)], capture_output=True, text=True, timeout=600)


# ---- building test files ----

def f16(x):
    return np.asarray(x, dtype=np.float16).view(np.uint8)


def random_k_blocks(qtype, n_blocks, rng):
    """Valid random super-blocks of a K type as raw bytes (n_blocks, type_size)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    d = rng.uniform(0.001, 0.05, size=n_blocks).astype(np.float16)
    if qtype in (QT.Q4_K, QT.Q5_K):
        raw[:, 0:2] = d.reshape(-1, 1).view(np.uint8)
        raw[:, 2:4] = rng.uniform(0.0, 0.02, size=(n_blocks, 1)).astype(np.float16).view(np.uint8)
    elif qtype == QT.Q6_K:
        raw[:, 208:210] = (d * rng.choice([-1, 1], size=n_blocks)).astype(np.float16).reshape(-1, 1).view(np.uint8)
    return raw


def fix_scales(raw, qtype, rng):
    """Random blocks of a 32-element type with sane fp16 scales (d, and m for the types with a min)."""
    n = raw.shape[0]
    raw[:, 0:2] = rng.uniform(-0.05, 0.05, size=(n, 1)).astype(np.float16).view(np.uint8)
    if qtype in (QT.Q4_1, QT.Q5_1):
        raw[:, 2:4] = rng.uniform(-0.5, 0.5, size=(n, 1)).astype(np.float16).view(np.uint8)
    return raw


def quantized(qtype, shape, rng):
    """(bytes array for GGUFWriter.add_tensor, raw_dtype) for a tensor of `shape` (numpy order, last contiguous)."""
    data = rng.standard_normal(shape).astype(np.float32)
    if qtype == QT.F32:
        return data, None
    if qtype == QT.F16:
        return data.astype(np.float16), None
    if qtype in (QT.Q4_K, QT.Q5_K, QT.Q6_K):
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        rows = int(np.prod(shape[:-1]))
        raw = random_k_blocks(qtype, rows * shape[-1] // block, rng)
        return raw.reshape(*shape[:-1], shape[-1] // block * size), qtype
    q = gguf.quants.quantize(data, qtype)
    if qtype in (QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0) and rng.random() < 2:
        # also random quant bits (not only what the quantizer produces), with sane scales
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(q.size // size, size), dtype=np.uint8)
        q = fix_scales(raw, qtype, rng).reshape(q.shape)
    return q, qtype


ALL_TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.Q6_K]


def write_small_gguf(path, rng):
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_uint32("test.u32", 7)
    w.add_int32("test.i32", -7)
    w.add_float32("test.f32", 0.5)
    w.add_bool("test.bool", True)
    w.add_string("test.str", "héllo \"quoted\"")
    w.add_array("test.arr_i32", [1, -2, 3])
    w.add_array("test.arr_str", ["a", "bc"])
    w.add_key_value("test.u64", 1 << 40, gguf.GGUFValueType.UINT64)
    w.add_key_value("test.f64", 1.25, gguf.GGUFValueType.FLOAT64)
    w.add_key_value("test.nested", [[1, 2], [3, 4, 5]], gguf.GGUFValueType.ARRAY)
    for i, qtype in enumerate(ALL_TYPES):
        for shape in [(3, 256), (2, 2, 512)]:
            data, raw_dtype = quantized(qtype, shape, rng)
            w.add_tensor(f"t.{qtype.name}.{len(shape)}d", data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check_dump_matches(binary, gguf_path, out_dir):
    r = run(binary, "-m", gguf_path, "--dump-all", "-o", out_dir)
    assert r.returncode == 0, r.stderr
    reader = gguf.GGUFReader(str(gguf_path))
    assert len(reader.tensors) > 0
    for t in reader.tensors:
        want = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        got = np.fromfile(Path(out_dir) / f"{t.name}.f32", dtype="<f4")
        assert got.size == want.size == int(np.prod(t.shape)), t.name
        # bit for bit (no NaNs are produced by these files)
        mismatch = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
        assert mismatch.size == 0, f"{t.name} ({t.tensor_type.name}): {mismatch.size} elements differ, first at " \
                                   f"{mismatch[0]}: got {got[mismatch[0]]!r} want {want[mismatch[0]]!r}"


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "all_types.gguf"
    write_small_gguf(path, np.random.default_rng(1234))
    return path


# ---- dequantization ----

@pytest.mark.parametrize("which", ["release", "asan"])
def test_every_type_bit_exact(small_gguf, tmp_path, which):
    bins = binaries()
    if which == "asan" and len(bins) < 2:
        pytest.skip("MIXATT_ASAN not set")
    check_dump_matches(bins[0] if which == "release" else bins[1], small_gguf, tmp_path / "dump")


def test_single_tensor_dump(small_gguf, tmp_path):
    out = tmp_path / "one.f32"
    r = run(mixatt_bin(), "-m", small_gguf, "t.Q4_K.3d", "-o", out)
    assert r.returncode == 0, r.stderr
    reader = gguf.GGUFReader(str(small_gguf))
    t = next(t for t in reader.tensors if t.name == "t.Q4_K.3d")
    want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)
    assert np.array_equal(np.fromfile(out, dtype="<f4").view(np.uint32), want.view(np.uint32))
    r = run(mixatt_bin(), "-m", small_gguf, "no.such.tensor", "-o", out)
    assert r.returncode == 1 and str(small_gguf) in r.stderr and "no.such.tensor" in r.stderr


def test_list(small_gguf):
    r = run(mixatt_bin(), "-m", small_gguf, "--list")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for key in ["test.u32  u32  7", "test.i32  i32  -7", "test.f32  f32  0.5", "test.bool  bool  true",
                "test.u64  u64  1099511627776", "test.f64  f64  1.25", "test.arr_i32  array[i32, 3]  [1, -2, 3]",
                'test.arr_str  array[string, 2]  ["a", "bc"]', "test.nested  array[array, 2]  [[1, 2], [3, 4, 5]]",
                "general.architecture  string  \"llama\""]:
        assert key in out, key
    assert "t.Q6_K.3d  Q6_K  [512, 2, 2]" in out
    assert "t.F16.2d  F16  [256, 3]" in out


def test_help():
    r = run(mixatt_bin(), "--help")
    assert r.returncode == 0 and "--dump-all" in r.stdout and "--list" in r.stdout


def test_real_model_every_tensor(tmp_path):
    assert MODEL.exists(), f"{MODEL} is missing (make model)"
    check_dump_matches(mixatt_bin(), MODEL, tmp_path / "dump")


# ---- bad input ----

def gguf_bytes(tensors, kvs=(), version=3, alignment=32, data_size=None):
    """A hand-made GGUF: tensors = [(name, dims, type, offset, data_len)], u32 kvs = [(key, value)]; the data
    section holds data_size zero bytes (default: up to the end of the last tensor)."""
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, v in kvs:
        out += s(k) + struct.pack("<II", 4, v)
    for name, dims, ttype, offset, _ in tensors:
        out += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ttype, offset)
    out += b"\0" * (-len(out) % alignment)
    size = max((off + n for _, _, _, off, n in tensors), default=0) if data_size is None else data_size
    return out + bytes(size)


def expect_failure(path, *words):
    for binary in binaries():
        r = run(binary, "-m", path, "--list")
        assert r.returncode == 1, f"{binary}: rc {r.returncode}\n{r.stderr}"
        assert str(path) in r.stderr, r.stderr
        assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr
        for w in words:
            assert w in r.stderr, r.stderr
        r = run(binary, "-m", path, "--dump-all", "-o", Path(path).parent / "dump")
        assert r.returncode == 1 and str(path) in r.stderr


def test_not_gguf(tmp_path):
    p = tmp_path / "text.gguf"
    p.write_text("this is not a model\n" * 10)
    expect_failure(p, "not a GGUF file")
    e = tmp_path / "empty.gguf"
    e.write_bytes(b"")
    expect_failure(e)
    expect_failure(tmp_path / "missing.gguf")


def test_hand_made_file_is_valid(tmp_path):
    p = tmp_path / "ok.gguf"
    p.write_bytes(gguf_bytes([("a", [32, 2], 8, 0, 68), ("b", [4], 0, 96, 16)]))
    r = run(mixatt_bin(), "-m", p, "--list")
    assert r.returncode == 0, r.stderr


def test_truncated(small_gguf, tmp_path):
    data = small_gguf.read_bytes()
    # the writer pads the file after the last tensor: cut inside the last tensor's data, not the padding
    end = max(int(t.data_offset) + int(t.n_bytes) for t in gguf.GGUFReader(str(small_gguf)).tensors)
    for i, cut in enumerate([3, 4, 7, 12, 20, 23, 40, 100, 300, 1000, len(data) // 2, end - 1]):
        p = tmp_path / f"trunc{i}.gguf"
        p.write_bytes(data[:cut])
        expect_failure(p)


def test_unknown_tensor_type(tmp_path):
    p = tmp_path / "type.gguf"
    p.write_bytes(gguf_bytes([("weird.weight", [32], 99, 0, 64)]))
    expect_failure(p, "weird.weight", "unknown tensor type 99")


def test_offset_past_end(tmp_path):
    p = tmp_path / "offset.gguf"
    good = gguf_bytes([("w", [32, 4], 0, 0, 512)])
    p.write_bytes(good[:-100])
    expect_failure(p, "'w'", "past the end")
    p2 = tmp_path / "offset2.gguf"
    p2.write_bytes(gguf_bytes([("w", [32], 0, 1 << 40, 128)], data_size=128))
    expect_failure(p2, "'w'", "past the end")


def test_bad_shapes_and_counts(tmp_path):
    cases = {
        "ndims5.gguf": (gguf_bytes([("five", [1, 1, 1, 1, 1], 0, 0, 4)]), "5 dimensions"),
        "unaligned.gguf": (gguf_bytes([("u", [8], 0, 4, 32)]), "not a multiple of the alignment"),
        "blocks.gguf": (gguf_bytes([("b", [31], 2, 0, 64)]), "not a multiple of the Q4_0 block size"),
        "dup.gguf": (gguf_bytes([("x", [8], 0, 0, 32), ("x", [8], 0, 32, 32)]), "duplicate tensor name 'x'"),
        "overflow.gguf": (gguf_bytes([("o", [1 << 40, 1 << 40], 0, 0, 0)]), "overflow"),
        "v1.gguf": (gguf_bytes([], version=1), "version 1"),
        "align.gguf": (gguf_bytes([], kvs=[("general.alignment", 3)]), "power of two"),
    }
    for name, (data, word) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        expect_failure(p, word)
    huge = tmp_path / "huge.gguf"
    huge.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1 << 62, 0))
    expect_failure(huge, "tensor count")
    huge_kv = tmp_path / "huge_kv.gguf"
    huge_kv.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" +
                        struct.pack("<IIQ", 9, 8, 1 << 61))
    expect_failure(huge_kv, "'k'")
