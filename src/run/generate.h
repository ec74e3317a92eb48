/* generate.h: prompt → prefill → token-by-token decode, streaming text as it comes, stopping on EOS, the
 * chat end-of-turn token, a stop string or the token budget. A model without a tokenizer (a checkpoint of
 * mixatt train) streams the generated ids as text, "ID " each, and has no EOS. */
#ifndef MX_GENERATE_H
#define MX_GENERATE_H

#include <stdio.h>

#include "../model/session.h"
#include "sampler.h"

typedef struct {
    int n_predict;      /* max new tokens; < 0 = until the context is full */
    const char **stops; /* stop strings (not printed) */
    int n_stops;
    int stop_token; /* an extra token id that ends generation (chat end-of-turn), -1 none */
    FILE *out;      /* streamed text; NULL = don't stream */
} mx_gen_opts;

typedef struct {
    int n_prompt, n_gen;
    double prefill_s, decode_s;
    char *text;              /* the generated text (malloc'd), stop string excluded */
    int *tokens;             /* the generated tokens (malloc'd) */
    const char *stop_reason; /* "eos", "stop string", "length", "context full" */
} mx_gen_result;

int mx_generate(mx_session *s, mx_sampler *smp, const int *prompt, int n_prompt, const mx_gen_opts *o,
                mx_gen_result *res, mx_err *err);
void mx_gen_result_free(mx_gen_result *r);

#endif
