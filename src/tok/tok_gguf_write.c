/* tok_gguf_write.c: a tokenizer and chat template into GGUF metadata (mx_tokenizer_write_gguf, see
 * tokenizer.h), for `mixatt convert` from a Hugging Face directory. Written: the tokenizer.json whole
 * (tokenizer.huggingface.json: mixatt reads it back, so the GGUF encodes exactly as the directory did), and
 * llama.cpp's keys for other readers: tokenizer.ggml.model ("gpt2" for byte-level BPE, "llama" for
 * SentencePiece style), .pre (when the pre-tokenizer has a llama.cpp name), .tokens (as the file writes them:
 * GPT-2's byte alphabet, or ▁), .token_type, .merges ("left right" by rank), .scores (SentencePiece style: a
 * merged token's score is minus its merge's rank, so highest score first is rank order), BOS/EOS ids,
 * add_bos_token/add_eos_token, and tokenizer.chat_template. */
#include "../io/gguf_write.h"
#include "tok_impl.h"

#include <stdlib.h>
#include <string.h>

/* The text of token id as the file writes it, into a malloc'd string. */
static char *written(const mx_tokenizer *t, int id, size_t *len) {
    const char *s = t->bytes + t->tok[id].off;
    size_t n = t->tok[id].len;
    bool raw = t->kind == MX_TOK_SPM || t->type[id] == TT_CONTROL || t->type[id] == TT_USER;
    char *d = malloc(2 * n + 1);
    if (!d) return NULL;
    *len = raw ? (memcpy(d, s, n), n) : mx_tok_to_byte_level(s, n, d);
    d[*len] = '\0';
    return d;
}

static int write_vocab(const mx_tokenizer *t, mx_gguf_writer *w, mx_err *err) {
    size_t n = (size_t)t->n_vocab;
    char **strs = calloc(n, sizeof *strs);
    size_t *lens = calloc(n, sizeof *lens);
    int32_t *types = malloc(n * sizeof *types);
    int rc = strs && lens && types ? 0 : mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        if (!(strs[i] = written(t, (int)i, &lens[i]))) rc = mx_err_set(err, MX_ERR_NOMEM, "out of memory");
        types[i] = t->type[i];
    }
    if (!rc) rc = mx_gguf_w_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)strs, lens, n, err);
    if (!rc) rc = mx_gguf_w_arr_i32(w, "tokenizer.ggml.token_type", types, n, err);
    for (size_t i = 0; strs && i < n; i++) free(strs[i]);
    free(strs);
    free(lens);
    free(types);
    return rc;
}

static int write_merges(const mx_tokenizer *t, mx_gguf_writer *w, mx_err *err) {
    size_t n = (size_t)t->n_merges;
    const merge_ent **by_rank = calloc(n ? n : 1, sizeof *by_rank);
    char **strs = calloc(n ? n : 1, sizeof *strs);
    float *scores = t->kind == MX_TOK_SPM ? calloc((size_t)t->n_vocab, sizeof *scores) : NULL;
    int rc = by_rank && strs && (scores || t->kind != MX_TOK_SPM)
                 ? 0
                 : mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    for (uint32_t i = 0; !rc && i <= t->mmask; i++) { /* ranks are 0..n-1, one merge each */
        const merge_ent *m = &t->merges[i];
        if (m->key && m->rank >= 0 && (size_t)m->rank < n) by_rank[m->rank] = m;
    }
    size_t k = 0;
    for (size_t r = 0; !rc && r < n; r++) {
        const merge_ent *m = by_rank[r];
        if (!m) continue; /* a rank whose pair came again later */
        int a = (int)((m->key - 1) >> 32), b = (int)((m->key - 1) & 0xffffffffu);
        size_t la, lb;
        char *sa = written(t, a, &la), *sb = written(t, b, &lb);
        strs[k] = sa && sb ? malloc(la + lb + 2) : NULL;
        if (strs[k])
            memcpy(strs[k], sa, la), strs[k][la] = ' ', memcpy(strs[k] + la + 1, sb, lb + 1), k++;
        else
            rc = mx_err_set(err, MX_ERR_NOMEM, "out of memory");
        free(sa);
        free(sb);
        if (scores && scores[m->out] == 0) scores[m->out] = -(float)(r + 1);
    }
    if (!rc) rc = mx_gguf_w_arr_str(w, "tokenizer.ggml.merges", (const char *const *)strs, NULL, k, err);
    if (!rc && scores) rc = mx_gguf_w_arr_f32(w, "tokenizer.ggml.scores", scores, (size_t)t->n_vocab, err);
    for (size_t i = 0; i < k; i++) free(strs[i]);
    free(strs);
    free(by_rank);
    free(scores);
    return rc;
}

int mx_tokenizer_write_gguf(const mx_tokenizer *t, const mx_chat_template *ct, mx_gguf_writer *w,
                            mx_err *err) {
    int rc = mx_gguf_w_str(w, "tokenizer.ggml.model", t->kind == MX_TOK_SPM ? "llama" : "gpt2", err);
    if (!rc && t->kind == MX_TOK_BYTE_LEVEL && t->pre_name)
        rc = mx_gguf_w_str(w, "tokenizer.ggml.pre", t->pre_name, err);
    if (!rc) rc = write_vocab(t, w, err);
    if (!rc) rc = write_merges(t, w, err);
    if (!rc && t->bos >= 0) rc = mx_gguf_w_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)t->bos, err);
    if (!rc && t->eos >= 0) rc = mx_gguf_w_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)t->eos, err);
    if (!rc && t->unk >= 0) rc = mx_gguf_w_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)t->unk, err);
    if (!rc) rc = mx_gguf_w_bool(w, "tokenizer.ggml.add_bos_token", t->add_bos, err);
    if (!rc) rc = mx_gguf_w_bool(w, "tokenizer.ggml.add_eos_token", t->add_eos, err);
    if (!rc && t->hf_json) rc = mx_gguf_w_str(w, MX_GGUF_HF_JSON_KEY, t->hf_json, err);
    if (!rc && ct) rc = mx_gguf_w_str(w, "tokenizer.chat_template", mx_chat_template_source(ct), err);
    return rc;
}
