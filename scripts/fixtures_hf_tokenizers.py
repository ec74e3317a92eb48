#!/usr/bin/env python3
"""fixtures_hf_tokenizers.py: writes tests/fixtures/hf_tok/, the Hugging Face reference for mixatt's
tokenizer.json reader, chat templates and Jinja subset (src/tok/).

Usage: python3 scripts/fixtures_hf_tokenizers.py [--out tests/fixtures/hf_tok]
Needs: pip install tokenizers transformers jinja2 (no torch).

Where each piece comes from
---------------------------
No real tokenizer.json can be fetched here (no Hugging Face hub; no PyPI wheel found that ships the
tokenizer.json of GPT-2, Llama 3, Qwen 2 or Mistral), so each tokenizer kind is built here with the
`tokenizers` library itself: a small BPE trained on this script's corpus, with the configuration that family's
published tokenizer.json uses (model options, normalizer, pre-tokenizer, decoder, post-processor, added
tokens). What mixatt must get right is the pipeline each configuration implies; the vocabulary's size only
changes how often each path runs. The families:
  gpt2     ByteLevel(add_prefix_space=False, use_regex=True); decoder ByteLevel; <|endoftext|>
  llama3   Split(Llama 3's regex, Isolated) + ByteLevel(use_regex=False); ignore_merges; TemplateProcessing
           "<|begin_of_text|> $A"; Llama 3's special tokens
  qwen2    NFC; Split(Qwen 2's regex) + ByteLevel(use_regex=False); <|endoftext|> <|im_start|> <|im_end|>
  smollm   Digits(individual_digits=True) + ByteLevel(use_regex=True); SmolLM2's first special tokens
  llama2   SentencePiece style, legacy: normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer; BPE
           with byte_fallback and fuse_unk, <unk> <s> </s> at ids 0..2 and <0x00>..<0xFF> at 3..258 in the
           model's vocabulary; decoder Replace + ByteFallback + Fuse + Strip(1); TemplateProcessing "<s> $A"
  mistral  SentencePiece style as Mistral's newer files: no normalizer, Metaspace(prepend_scheme="first",
           split=False); the same byte fallback and decoder; [INST] and [/INST] as special added tokens
  tiny     byte-level (as gpt2) with at most 256 tokens, so that the 256-token test models of
           tests/fixtures/hf/ can carry it: the end-to-end tests run `mixatt run -m DIR -p`, `--chat` and
           `convert` with it (ChatML template)
The chat templates are the published templates of SmolLM2-135M-Instruct (ChatML), Meta-Llama-3-8B-Instruct,
Mistral-7B-Instruct-v0.1, Qwen2.5-7B-Instruct and Llama-2-7b-chat, typed here as data (facts, not code), and
(llama31, on llama3's tokenizer) Llama 3.1's template without its tool-calling branches.
Expected ids are `tokenizers`' encode (add_special_tokens False and True, and with special tokens not parsed);
expected decodes are its decode; expected renders are transformers' apply_chat_template (tokenize=False and
True). jinja_cases.json holds small templates that exercise the Jinja subset, rendered by jinja2 with the
environment transformers uses (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols).
The output is generated only by this script; never edit it by hand.
"""
import argparse
import inspect
import json
import os
import random
import shutil
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ---- chat templates (the models' published templates, as data) ----

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

# Llama 3.1's template in its structure (bos, defaults set when undefined, the system message taken out of
# the list, the date header, tools None, `| trim`, `reject`), with its tool-calling branches left out.
LLAMA31_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# ---- corpus ----


def corpus():
    """Multilingual, emoji, code and whitespace texts (the tests' inputs)."""
    return [
        "", " ", "  ", "\t", "\n", "\n\n", "\r\n", " \n ", "a", "Hello world", "Hello world!", " Hello world",
        "Hello  world", "Hello   world", "trailing spaces   ", "   leading spaces", "tabs\tin\t\ttext\t",
        "line one\nline two\n\nline four\n", "mixed \t \n whitespace \n\t  end", "a\u00a0b\u00a0\u00a0c",
        "em\u2003space and\u3000ideographic space", "line\u2028separator", "It's", "I'M HERE it'S", "don't",
        "you're we've they'll he'd", "rock 'n' roll", "‘curly’ “quotes”", "0", "42", "123", "2024",
        "1234567890", "3.14159", "-273.15", "1,000,000", "x  1", "\n\n1", "a 1 b 22 c 333", "²³ ½ Ⅻ ① ٣٤٥",
        "café", "naïve résumé", "Ångström", "e\u0301 (e + combining acute)", "n\u0303o\u0308", "straße",
        "İstanbul ıi", "Привет, мир!", "Ελληνικά", "日本語のテキスト", "中文文本测试，标点符号。", "한국어 텍스트",
        "مرحبا بالعالم", "שלום עולם", "हिन्दी पाठ", "ภาษาไทย", "Tiếng Việt có dấu", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙",
        "Ｆｕｌｌｗｉｄｔｈ", "ﬁ ligature", "zero\u200bwidth\u200djoiner", "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦 family",
        "🏳️‍🌈 flag", "🇫🇷🇯🇵", "❤️ ✨ ☕", "emoji😀in😀words", "∑∫√∞≈≠", "$100 €50 £30", "50% off!!!", "...",
        "<html><body>Hi</body></html>", "http://example.com/a?b=c&d=e#f", "user@example.com",
        "def f(x):\n    return x * 2\n", "    indented\n        more\n",
        "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
        "for (int i = 0; i < n; i++) { a[i] += b[i]; }", "const x = () => [1, 2, 3].map(n => n ** 2);",
        "SELECT id, name FROM users WHERE age >= 18;", "{\"key\": [1, 2, {\"n\": null}]}",
        "# Heading\n\n- item 1\n- item 2\n\n```python\nprint(1)\n```", "snake_case camelCase kebab-case",
        "The quick brown fox jumps over the lazy dog.", "THE QUICK BROWN FOX",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "                                ", "\n\n\n\n\n\n", "\t\t\t\t",
        "Q: What's the capital of France?\nA: Paris.", "ctrl\u0004chars\u0006", "del\u007f", "\ufffd repl",
        "\U0010fffd private use", "𓀀 hieroglyph",
    ]


def special_cases(specials):
    """Texts with the tokenizer's special tokens written in them."""
    out = []
    for s in specials[:4]:
        out += [s, f"text{s}more text", f" {s} spaced {s}", f"{s}{s}", f"\n{s}\n", f"x {s}y"]
    if len(specials) > 1:
        out.append(f"{specials[0]}Hello{specials[1]} world")
    return out


def generated(rng):
    pieces = ["the", " cat", "Hello", "é", "ß", "日本", "😀", "👨‍👩‍👧", "42", "7", " ", "  ", "\t", "\n", "\r\n",
              "'s", "'ll", "'", "!", "?", ".", ",", "(", ")", "{", "}", "<", ">", "|", "ِ", "\u0301", "مرحبا",
              "Ω", "½", "\u00a0", "\u3000", "_", "-", "=", "\\", "€", "ж", " ж", "x", "X", "123", " 9", "▁", "#"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(2, 14))) for _ in range(60)]


def training_text():
    """Text to train the small vocabularies on: the corpus, some of Python's own source and docs."""
    import json as json_mod
    import textwrap

    parts = corpus() * 3 + [inspect.getsource(json_mod.decoder), inspect.getsource(textwrap)]
    parts += [
        "The capital of France is Paris. The capital of Japan is Tokyo. Hello, how are you today? "
        "I am fine, thank you. What is the weather like? It is sunny and warm. " * 5,
        "Bonjour le monde. Guten Tag, wie geht es Ihnen? Hola, ¿cómo estás? Ciao, come stai? " * 5,
        "Привет, как дела? Всё хорошо, спасибо. 你好，你好吗？我很好，谢谢。こんにちは、元気ですか？" * 5,
    ]
    return parts


# ---- the tokenizers ----


def train_byte_level(pre, vocab_size, specials, normalizer=None, ignore_merges=False, alphabet=True):
    tk = Tokenizer(models.BPE(unk_token=None, ignore_merges=ignore_merges))
    if normalizer:
        tk.normalizer = normalizer
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if alphabet else [],
    )
    tk.train_from_iterator(training_text(), tr)
    return tk


def train_spm(vocab_size, legacy):
    """SentencePiece-style BPE: trained on ▁-marked words, then laid out as Llama 2 / Mistral lay theirs out."""
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[], limit_alphabet=150, show_progress=False)
    base.train_from_iterator(training_text(), tr)
    model = json.loads(base.to_str())["model"]
    trained = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = 3 + b
    for tok, _ in trained:
        if tok not in vocab:
            vocab[tok] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tk = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if legacy:
        tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tk.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ["<unk>", "<s>", "</s>"]])
    if not legacy:
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ["[INST]", "[/INST]"]])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tk


def families():
    smollm_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>"]
    llama3_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                       "<|eot_id|>"]
    qwen_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    out = {}
    tk = train_byte_level(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), 800, ["<|endoftext|>"])
    out["gpt2"] = (tk, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}, None)
    tk = train_byte_level(
        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        900, llama3_specials, ignore_merges=True)
    bot = tk.token_to_id("<|begin_of_text|>")
    tk.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bot)]),
    ])
    out["llama3"] = (tk, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, LLAMA3_TEMPLATE)
    out["llama31"] = (tk, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, LLAMA31_TEMPLATE)
    tk = train_byte_level(
        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        900, qwen_specials, normalizer=normalizers.NFC())
    out["qwen2"] = (tk, {"bos_token": None, "eos_token": "<|im_end|>"}, QWEN25_TEMPLATE)
    tk = train_byte_level(
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
        800, smollm_specials)
    out["smollm"] = (tk, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}, SMOLLM2_TEMPLATE)
    out["llama2"] = (train_spm(700, legacy=True), {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True},
                     LLAMA2_TEMPLATE)
    out["mistral"] = (train_spm(700, legacy=False), {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True},
                      MISTRAL_TEMPLATE)
    tk = train_byte_level(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), 256,
                          ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], alphabet=False)
    out["tiny"] = (tk, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}, SMOLLM2_TEMPLATE)
    return out


def conversations():
    return [
        ([{"role": "user", "content": "Hi!"}], True),
        ([{"role": "user", "content": "What is the capital of France?"}], False),
        ([{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello"}], True),
        ([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 = 4."},
          {"role": "user", "content": "And 3 × 3?\nExplain briefly."}], True),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  spaces  \n"},
          {"role": "assistant", "content": " ok "}, {"role": "user", "content": "Écris un poème 🌸"}], True),
        ([{"role": "user", "content": "one"}, {"role": "user", "content": "two"}], True),  # Mistral refuses
    ]


def encode_cases(tk, texts):
    cases = []
    for t in texts:
        case = {"text": t, "ids": tk.encode(t, add_special_tokens=False).ids,
                "ids_bos": tk.encode(t, add_special_tokens=True).ids}
        tk.encode_special_tokens = True
        case["ids_no_special"] = tk.encode(t, add_special_tokens=False).ids
        tk.encode_special_tokens = False
        case["decoded"] = tk.decode(case["ids"], skip_special_tokens=False)
        cases.append(case)
    return cases


def chat_cases(tk, cfg, template):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=cfg.get("bos_token"), eos_token=cfg.get("eos_token"))
    hf.chat_template = template
    out = []
    for msgs, gen in conversations():
        try:
            text = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        except Exception as e:  # raise_exception in the template
            out.append({"messages": msgs, "add_generation_prompt": gen, "error": str(e)})
            continue
        ids = tk.encode(text, add_special_tokens=False).ids
        out.append({"messages": msgs, "add_generation_prompt": gen, "text": text, "ids": ids})
    return out


# ---- Jinja subset cases ----

JINJA_CASES = [
    ("{{ 'a' + 'b' ~ 1 ~ none ~ true }}", {}),
    ("{{ x | trim }}|{{ x | length }}|{{ x | upper }}|{{ x | lower }}|{{ x.strip() }}", {"x": "  Hé llo "}),
    ("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }} {{ 1.5 * 2 }}", {}),
    ("{% for m in messages %}{{ loop.index }}/{{ loop.length }}:{{ m.role }}{% if loop.first %}F{% endif %}"
     "{% if loop.last %}L{% endif %},{% endfor %}", {"messages": [{"role": "a"}, {"role": "b"}, {"role": "c"}]}),
    ("{% for x in xs if x > 1 %}{{ x }}{% else %}none{% endfor %}|{% for x in [] %}{{ x }}{% else %}empty{% endfor %}",
     {"xs": [1, 2, 3]}),
    ("{% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}",
     {"xs": [1, 2, 3, 4, 5]}),
    ("{% set ns = namespace(n=0, s='') %}{% for x in xs %}{% set ns.n = ns.n + x %}{% set ns.s = ns.s ~ x %}"
     "{% endfor %}{{ ns.n }} {{ ns.s }}", {"xs": [1, 2, 3]}),
    ("{% set y = 1 %}{% for x in xs %}{% set y = x %}{% endfor %}{{ y }}", {"xs": [5, 6]}),
    ("{{ xs[1:] }} {{ xs[:-1] }} {{ xs[::-1] }} {{ s[1:3] }} {{ s[-1] }} {{ xs[-1] }}",
     {"xs": [1, 2, 3], "s": "héllo"}),
    ("{% if a is defined %}A{% elif b is defined %}B{% else %}C{% endif %}{% if c is none %}N{% endif %}"
     "{% if a is not defined %}!{% endif %}", {"b": 1, "c": None}),
    ("{{ d | tojson }} {{ l | tojson }} {{ 'x\"y\\n' | tojson }} {{ d.items() | list }}",
     {"d": {"k": "v", "n": 1.5, "t": True, "z": None}, "l": [1, "é"]}),
    ("{{ d | tojson(indent=2) }}", {"d": {"a": [1, 2], "b": {"c": "d"}}}),
    ("{{ x if x else 'no' }} {{ y if y else 'no' }} {{ (1, 2) }} {{ [1, 'a'] }} {{ {'k': 'v'} }}", {"x": "yes", "y": ""}),
    ("{{ 'a' in 'cat' }} {{ 'z' not in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }}", {}),
    ("{{ xs | join(', ') }} {{ xs | first }} {{ xs | last }} {{ xs | reverse | list }} {{ xs | length }}",
     {"xs": ["a", "b", "c"]}),
    ("{{ s.split() }} {{ s.split(',') }} {{ s.startswith('a') }} {{ s.endswith(('z', 'c')) }} {{ s.replace(',', ';') }}",
     {"s": "a,b  c"}),
    ("{{ m.get('a') }} {{ m.get('z', 'dflt') }} {{ m['a'] }} {{ m.a }} {% for k, v in m.items() %}{{ k }}={{ v }};{% endfor %}",
     {"m": {"a": 1, "b": "two"}}),
    ("{{ x | default('d') }} {{ '' | default('d', true) }} {{ y | default('d') }}", {"y": "set"}),
    ("{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | join('+') }}",
     {"msgs": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}, {"role": "user", "content": "c"}]}),
    ("a\n  {% if true %}\n    b\n  {% endif %}\nc\n", {}),
    ("a  {%- if true -%}  b  {%- endif %}  c {{- ' d ' -}} e {# comment #}\n{#- c2 -#} f\n", {}),
    ("{% for i in range(3) %}{{ i }}{% endfor %}{% for i in range(1, 7, 2) %}{{ i }}{% endfor %}", {}),
    ("{{ xs | reject('equalto', 'b') | join(',') }} {{ ns | select('odd') | list }} {{ ns | reject('even') | list }}",
     {"xs": ["a", "b", "c"], "ns": [1, 2, 3, 4, 5]}),
    ("{{ 'abc' | title }} {{ 'hello world' | capitalize }} {{ 3 | string + 'x' }} {{ '5' | int + 1 }}", {}),
    ("{% if not x and (y or z) %}yes{% endif %} {{ 1 < 2 < 3 }} {{ 'b' > 'a' }} {{ 1 == 1.0 }}", {"y": 1}),
    ("{{ \"dq\" }} {{ 'it\\'s' }} {{ 'tab\\there' }} {{ 'uni\\u00e9' }}", {}),
    ("{{ x is string }} {{ n is number }} {{ l is iterable }} {{ d is mapping }} {{ 3 is odd }} {{ 4 is even }}",
     {"x": "s", "n": 1, "l": [], "d": {}}),
]

REFUSED = [
    ("{% macro f() %}x{% endmacro %}", "macro"),
    ("{{ x | wordwrap }}", "wordwrap"),
    ("{% if x is lower %}{% endif %}", "lower"),
    ("{% include 'x' %}", "include"),
    ("{% for x in xs %}", "never closed"),
    ("{% set x %}y{% endset %}", "block 'set'"),
]


def jinja_cases():
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    out = []
    for src, v in JINJA_CASES:
        out.append({"template": src, "vars": v, "text": env.from_string(src).render(**v)})
    return {"cases": out, "refused": [{"template": s, "error": e} for s, e in REFUSED]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/hf_tok")
    args = ap.parse_args()
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    rng = random.Random(1234)
    texts = corpus() + generated(rng)
    for name, (tk, cfg, template) in families().items():
        d = os.path.join(args.out, name)
        os.makedirs(d)
        tk.save(os.path.join(d, "tokenizer.json"))
        tcfg = {k: v for k, v in cfg.items() if v is not None}
        if template:
            tcfg["chat_template"] = template
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(tcfg, f, ensure_ascii=False, indent=1)
        specials = [t.content for t in tk.get_added_tokens_decoder().values()]
        ref = {"family": name, "vocab_size": tk.get_vocab_size(), "bos_token": cfg.get("bos_token"),
               "eos_token": cfg.get("eos_token"), "cases": encode_cases(tk, texts + special_cases(specials)),
               "chats": chat_cases(tk, cfg, template) if template else []}
        with open(os.path.join(d, "reference.json"), "w", encoding="utf-8") as f:
            json.dump(ref, f, ensure_ascii=False, separators=(",", ":"))
        print(f"{name}: {ref['vocab_size']} tokens, {len(ref['cases'])} cases, {len(ref['chats'])} chats", file=sys.stderr)
    with open(os.path.join(args.out, "jinja_cases.json"), "w", encoding="utf-8") as f:
        json.dump(jinja_cases(), f, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main()
