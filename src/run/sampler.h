/* sampler.h: picks the next token from logits. Order: repetition penalty (over the last repeat_last_n
 * tokens, as in the CTRL paper / Hugging Face: positive logits divided, negative multiplied), temperature,
 * top-k, top-p (nucleus), min-p (relative to the most likely token), then a draw. temperature <= 0 is greedy
 * (argmax after the penalty). Deterministic for a given seed. */
#ifndef MX_SAMPLER_H
#define MX_SAMPLER_H

#include <stdint.h>

#include "../base/rng.h"

typedef struct {
    float temperature;    /* 0 = greedy */
    int top_k;            /* 0 = off */
    float top_p;          /* 1 = off */
    float min_p;          /* 0 = off */
    float repeat_penalty; /* 1 = off */
    int repeat_last_n;
    uint64_t seed;
} mx_sampler_params;

typedef struct {
    mx_sampler_params p;
    mx_rng rng;
    int vocab;
    int *idx;    /* scratch [vocab] */
    float *prob; /* scratch [vocab] */
} mx_sampler;

mx_sampler_params mx_sampler_defaults(void);
int mx_sampler_init(mx_sampler *s, const mx_sampler_params *p, int vocab);
void mx_sampler_free(mx_sampler *s);
/* logits is modified (penalties applied). history: the tokens so far. */
int mx_sample(mx_sampler *s, float *logits, const int *history, int n_history);
/* OpenAI's presence and frequency penalties (the server's request fields), applied before mx_sample: for each
 * token that occurs c > 0 times in gen, logits[token] -= frequency * c + presence. */
void mx_sample_penalize(mx_sampler *s, float *logits, const int *gen, int n_gen, float presence,
                        float frequency);

#endif
