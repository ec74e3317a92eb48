#!/usr/bin/env python3
"""Writes the seed corpus of the GGUF fuzzer (tests/fuzz/corpus/): a few tiny valid GGUF files made with the
`gguf` package's GGUFWriter (every metadata value type, nested arrays, several tensor types). Run from anywhere:
python3 tests/fuzz/make_corpus.py"""
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

OUT = Path(__file__).resolve().parent / "corpus"


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


def main():
    OUT.mkdir(exist_ok=True)
    write("metadata_only.gguf", metadata)
    write("tensors_only.gguf", tensors)
    write("both.gguf", lambda w: (metadata(w), tensors(w)))
    write("empty.gguf", lambda w: None)


if __name__ == "__main__":
    main()
