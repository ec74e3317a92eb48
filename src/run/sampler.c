/* sampler.c: token sampling (see sampler.h). */
#include "sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

mx_sampler_params mx_sampler_defaults(void) {
    return (mx_sampler_params){.temperature = 0.0f,
                               .top_k = 40,
                               .top_p = 0.95f,
                               .min_p = 0.05f,
                               .repeat_penalty = 1.0f,
                               .repeat_last_n = 64,
                               .seed = 42};
}

int mx_sampler_init(mx_sampler *s, const mx_sampler_params *p, int vocab) {
    s->p = *p;
    s->vocab = vocab;
    mx_rng_seed(&s->rng, p->seed);
    s->idx = malloc(sizeof(int) * (size_t)vocab);
    s->prob = malloc(sizeof(float) * (size_t)vocab);
    return s->idx && s->prob ? 0 : -1;
}

void mx_sampler_free(mx_sampler *s) {
    free(s->idx);
    free(s->prob);
}

static void apply_repeat_penalty(const mx_sampler *s, float *logits, const int *hist, int n) {
    if (s->p.repeat_penalty == 1.0f || n <= 0) return;
    int from = s->p.repeat_last_n > 0 && n > s->p.repeat_last_n ? n - s->p.repeat_last_n : 0;
    /* each token penalized once even if repeated: mark with a NaN-free sentinel pass */
    for (int i = from; i < n; i++) {
        int t = hist[i];
        if (t < 0 || t >= s->vocab) continue;
        bool seen = false;
        for (int j = from; j < i && !seen; j++) seen = hist[j] == t;
        if (seen) continue;
        logits[t] = logits[t] > 0 ? logits[t] / s->p.repeat_penalty : logits[t] * s->p.repeat_penalty;
    }
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int cmp_desc(const void *a, const void *b, void *key) {
    const float *logits = key;
    float x = logits[*(const int *)a], y = logits[*(const int *)b];
    return (x < y) - (x > y);
}

/* Sorts the candidate ids by logit, descending; returns how many are kept (top-k bound). */
static int sort_candidates(mx_sampler *s, const float *logits, int k) {
    int n = s->vocab;
    for (int i = 0; i < n; i++) s->idx[i] = i;
    if (k <= 0 || k > n) k = n;
    /* partial selection: move the k largest to the front, then sort only those */
    if (k < n) {
        for (int i = 0; i < k; i++) {
            int best = i;
            for (int j = i + 1; j < n; j++)
                if (logits[s->idx[j]] > logits[s->idx[best]]) best = j;
            int t = s->idx[i];
            s->idx[i] = s->idx[best];
            s->idx[best] = t;
        }
        return k;
    }
    qsort_r(s->idx, (size_t)n, sizeof(int), cmp_desc, (void *)logits);
    return n;
}

int mx_sample(mx_sampler *s, float *logits, const int *history, int n_history) {
    apply_repeat_penalty(s, logits, history, n_history);
    if (s->p.temperature <= 0.0f) return argmax(logits, s->vocab);
    int n = sort_candidates(s, logits, s->p.top_k > 0 ? s->p.top_k : 0);
    float mx = logits[s->idx[0]];
    double sum = 0;
    for (int i = 0; i < n; i++) {
        s->prob[i] = expf((logits[s->idx[i]] - mx) / s->p.temperature);
        sum += s->prob[i];
    }
    /* top-p: the smallest prefix whose mass reaches p; min-p: drop tokens below min_p x the best one */
    int keep = n;
    if (s->p.top_p < 1.0f) {
        double acc = 0;
        for (int i = 0; i < n; i++) {
            acc += s->prob[i] / sum;
            if (acc >= s->p.top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    if (s->p.min_p > 0.0f) {
        float floor = s->prob[0] * s->p.min_p;
        int j = 1;
        while (j < keep && s->prob[j] >= floor) j++;
        keep = j;
    }
    double kept = 0;
    for (int i = 0; i < keep; i++) kept += s->prob[i];
    double r = mx_rng_float(&s->rng) * kept, acc = 0;
    for (int i = 0; i < keep; i++) {
        acc += s->prob[i];
        if (r < acc) return s->idx[i];
    }
    return s->idx[keep - 1];
}

void mx_sample_penalize(mx_sampler *s, float *logits, const int *gen, int n_gen, float presence,
                        float frequency) {
    if (presence == 0.0f && frequency == 0.0f) return;
    for (int i = 0; i < n_gen;
         i++) /* s->idx as scratch: 0 marks a token not yet given its presence penalty */
        if (gen[i] >= 0 && gen[i] < s->vocab) s->idx[gen[i]] = 0;
    for (int i = 0; i < n_gen; i++) {
        int t = gen[i];
        if (t < 0 || t >= s->vocab) continue;
        logits[t] -= frequency;
        if (s->idx[t] == 0) logits[t] -= presence;
        s->idx[t] = 1;
    }
}
