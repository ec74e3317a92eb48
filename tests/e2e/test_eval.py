"""`mixatt eval ruler` (src/cli/eval.c, src/eval/ruler.c) end to end on SmolLM2, kept short (the generators are
checked by tests/unit/test_ruler.c, which parses their samples):
- a small run of two tasks with dense and xattn writes the table, JSON whose entries agree with the table,
  and a PNG;
- τ = 1 XAttention scores what dense scores (the same prompts, the same greedy answers);
- under mpirun -np 2, Star spreads the context over the ranks and rank 0 alone prints;
- bad input fails with a message: a length beyond the model's context, τ outside (0, 1], an unknown task
  or method, a haystack file too short for the length."""
import json
import os

import pytest

from conftest import run
from test_star import mpirun


def ruler(binary, model, *extra):
    return run(binary, "eval", "ruler", "-m", model, "-q", "--samples", "1", "--lengths", "400", *extra)


def test_small_run_writes_table_json_and_png(mixatt, model, tmp_path):
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    r = ruler(mixatt, model, "--tasks", "niah_single_1,vt", "--methods", "dense,xattn", "--xattn-threshold", "1",
              "--json", js, "--plot", png)
    assert r.returncode == 0, r.stderr
    assert "| niah_single_1 | 400 |" in r.stdout and "| vt | 400 |" in r.stdout and "% of dense" in r.stdout
    data = json.loads(js.read_text())
    rows = {(x["task"], x["method"]): x for x in data["results"]}
    for task in ("niah_single_1", "vt"):
        for me in ("dense", "xattn"):
            assert 0 <= rows[(task, me)]["score"] <= 100 and rows[(task, me)]["n"] == 1
            assert f"| {task} | 400 | " in r.stdout
        assert rows[(task, "dense")]["score"] == rows[(task, "xattn")]["score"]  # τ = 1 is dense
    mean = [x for x in data["results"] if x["task"] == "mean" and x["method"] == "dense"][0]
    assert mean["score"] == pytest.approx((rows[("niah_single_1", "dense")]["score"] +
                                           rows[("vt", "dense")]["score"]) / 2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_star_under_mpirun(mixatt, model):
    r = mpirun(mixatt, 2, "eval", "ruler", "-m", model, "-q", "--samples", "1", "--lengths", "400", "--tasks",
               "niah_single_1", "--methods", "star", "-t", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("| niah_single_1 | 400 |") == 1 and "star: 2 rank(s)" in r.stdout


def test_refusals(mixatt, model, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("A short essay. It has few words. " * 5)
    blank = tmp_path / "blank.txt"  # no words at all: the fuzz_ruler reproducer (a word read before the first)
    blank.write_text(" \n\t \n")
    cases = [
        (["--lengths", "100000"], "length 100000 is beyond the model's context"),
        (["--xattn-threshold", "2"], "--xattn-threshold 2 is outside (0, 1]"),
        (["--tasks", "niah_x"], "no task 'niah_x'"),
        (["--methods", "sparse"], "no method 'sparse'"),
        (["--tasks", "niah_single_2", "--haystack", short], "too short to fill 400 tokens"),
        (["--tasks", "niah_multiquery", "--haystack", blank], "the haystack text has no words"),
        (["--tasks", "niah_single_3", "--haystack", os.devnull], "the haystack text has no words"),
    ]
    for args, message in cases:
        r = ruler(mixatt, model, *args)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
    r = run(mixatt, "eval")
    assert r.returncode == 2 and "give a suite" in r.stderr
