/* sched.c: the scheduler (see sched.h). One loop:
 *   lock: free the slots of cancelled jobs, admit queued jobs into free slots, lay out the step's items
 *   unlock: run the batch (batch.c); sample each sequence that got logits with its own sampler and seed;
 *           turn its token into text (EOS, the end-of-turn token, stop strings, the token budget)
 *   lock: release the new text to the jobs, finish the jobs that ended, wake their HTTP threads
 * A step's items: one token for every decoding sequence, then whole prefill chunks (chunk tokens, cut where
 * mixatt run cuts its prompt) of prompts in slot order while the chunk budget lasts. A finished or cancelled
 * sequence gives its slot back in the same step, and the next queued job takes it at the next. */
#include "sched.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../base/clock.h"
#include "batch.h"
#include "text.h"

enum { TPS_RING = 256 };
static const double TPS_WINDOW_S = 5.0;

typedef struct {
    mx_seq seq;
    mx_job *job; /* NULL: free */
    mx_sampler smp;
    int *gen; /* [n_ctx] generated tokens */
    int n_gen;
    int fed;     /* prompt tokens in the cache */
    int pending; /* the last sampled token, evaluated at the next step; -1 none */
    mx_text text;
    /* what this step released, published under the lock */
    char *emit;
    size_t emit_len, emit_cap;
    const char *finish; /* set when the sequence ended this step */
} slot;

struct mx_sched {
    const mx_model *m;
    mx_backend *be;
    mx_sched_opts o;
    mx_batch batch;
    slot *slots;
    mx_batch_item *items;
    int *item_slot;
    int eos;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t wake, idle;
    mx_job *q_head, *q_tail;
    int n_queued, n_active;
    bool draining, quit;
    mx_rng seeds;
    uint64_t requests, cancelled, prompt_tokens, gen_tokens, steps;
    double tps_t[TPS_RING];
    int tps_n[TPS_RING], tps_at;
    size_t kv_bytes;
};

mx_job *mx_job_new(void) {
    mx_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    pthread_cond_init(&j->cond, NULL);
    j->refs = 1;
    j->stop_token = -1;
    j->client_fd = -1;
    return j;
}

void mx_job_unref(mx_job *j) {
    if (!j || --j->refs > 0) return;
    pthread_cond_destroy(&j->cond);
    free(j->prompt);
    for (int i = 0; i < j->n_stops; i++) free(j->stops[i]);
    free(j->out);
    free(j);
}

void mx_sched_lock(mx_sched *sc) {
    pthread_mutex_lock(&sc->mu);
}

void mx_sched_unlock(mx_sched *sc) {
    pthread_mutex_unlock(&sc->mu);
}

void mx_sched_wait(mx_sched *sc, mx_job *j, int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_cond_timedwait(&j->cond, &sc->mu, &ts);
}

void mx_sched_cancel(mx_sched *sc, mx_job *j) {
    j->cancelled = true;
    pthread_cond_signal(&sc->wake);
}

uint64_t mx_sched_seed(mx_sched *sc) {
    mx_sched_lock(sc);
    uint64_t s = mx_rng_u64(&sc->seeds);
    mx_sched_unlock(sc);
    return s;
}

int mx_sched_submit(mx_sched *sc, mx_job *j) {
    mx_sched_lock(sc);
    int rc = sc->draining ? 2 : sc->n_queued >= sc->o.queue_cap ? 1 : 0;
    if (rc == 0) {
        j->refs++;
        j->t_submit = mx_now();
        j->next = NULL;
        if (sc->q_tail)
            sc->q_tail->next = j;
        else
            sc->q_head = j;
        sc->q_tail = j;
        sc->n_queued++;
        pthread_cond_signal(&sc->wake);
    }
    mx_sched_unlock(sc);
    return rc;
}

/* With the lock: ends the job of slot i with reason why and gives the slot back. */
static void finish_slot(mx_sched *sc, slot *sl, const char *why) {
    mx_job *j = sl->job;
    j->finish = why;
    j->done = true;
    j->n_gen = sl->n_gen;
    j->t_done = mx_now();
    if (!j->t_first) j->t_first = j->t_done;
    sc->requests++;
    sc->prompt_tokens += (uint64_t)j->n_prompt;
    if (!strcmp(why, "cancelled")) sc->cancelled++;
    pthread_cond_broadcast(&j->cond);
    mx_job_unref(j);
    sl->job = NULL;
    sc->n_active--;
}

/* With the lock: whether job j is cancelled, asking its client first (a hang-up is a cancel). */
static bool job_cancelled(mx_job *j) {
    if (!j->cancelled && j->client_gone && j->client_gone(j->client_fd)) j->cancelled = true;
    return j->cancelled;
}

/* With the lock: cancelled jobs, and those whose client hung up, leave their slots and the queue. */
static void reap_cancelled(mx_sched *sc) {
    for (int i = 0; i < sc->o.n_slots; i++)
        if (sc->slots[i].job && job_cancelled(sc->slots[i].job)) finish_slot(sc, &sc->slots[i], "cancelled");
    for (mx_job **p = &sc->q_head; *p;) {
        mx_job *j = *p;
        if (!job_cancelled(j)) {
            p = &j->next;
            continue;
        }
        *p = j->next;
        sc->n_queued--;
        sc->cancelled++;
        j->finish = "cancelled";
        j->done = true;
        pthread_cond_broadcast(&j->cond);
        mx_job_unref(j);
    }
    sc->q_tail = NULL;
    for (mx_job *j = sc->q_head; j; j = j->next) sc->q_tail = j;
}

/* With the lock: queued jobs into free slots, each with a fresh sequence and its own sampler. */
static void admit(mx_sched *sc) {
    for (int i = 0; i < sc->o.n_slots && sc->q_head; i++) {
        slot *sl = &sc->slots[i];
        if (sl->job) continue;
        mx_job *j = sc->q_head;
        sc->q_head = j->next;
        if (!sc->q_head) sc->q_tail = NULL;
        sc->n_queued--;
        sc->n_active++;
        sl->job = j;
        sl->seq.pos = 0; /* the old keys are never read again: attention reads positions < pos only */
        sl->n_gen = sl->fed = 0;
        sl->pending = -1;
        sl->finish = NULL;
        mx_text_reset(&sl->text);
        sl->smp.p = j->sp;
        mx_rng_seed(&sl->smp.rng, j->sp.seed);
    }
}

/* With the lock: the step's items, decode tokens first; returns their count. */
static int lay_out_step(mx_sched *sc) {
    int n = 0, budget = sc->o.chunk;
    for (int i = 0; i < sc->o.n_slots; i++) {
        slot *sl = &sc->slots[i];
        if (!sl->job || sl->pending < 0) continue;
        sc->items[n] = (mx_batch_item){&sl->seq, &sl->pending, 1, true};
        sc->item_slot[n++] = i;
    }
    int n_one = n;
    for (int i = 0; i < sc->o.n_slots && budget > 0; i++) {
        slot *sl = &sc->slots[i];
        if (!sl->job || sl->fed >= sl->job->n_prompt) continue;
        int left = sl->job->n_prompt - sl->fed, k = left < sc->o.chunk ? left : sc->o.chunk;
        if (k > budget) continue;
        budget -= k;
        mx_batch_item it = {&sl->seq, sl->job->prompt + sl->fed, k, k == left};
        if (k == 1) { /* one-token items go with the decode rows */
            sc->items[n] = sc->items[n_one];
            sc->item_slot[n] = sc->item_slot[n_one];
            sc->items[n_one] = it;
            sc->item_slot[n_one++] = i;
        } else {
            sc->items[n] = it;
            sc->item_slot[n] = i;
        }
        n++;
    }
    return n;
}

/* Takes token tok for slot sl (outside the lock): text, stop conditions, what to release. */
static void take_token(mx_sched *sc, slot *sl, int tok) {
    mx_job *j = sl->job;
    const mx_tokenizer *tk = sc->m->tok;
    if (tok == sc->eos || tok == j->stop_token) {
        sl->finish = "stop";
    } else {
        sl->gen[sl->n_gen++] = tok;
        size_t len = 0;
        const char *piece = mx_tokenizer_is_special(tk, tok) ? "" : mx_token_bytes(tk, tok, &len);
        if (!piece || !*piece) len = 0;
        if (mx_text_append(&sl->text, piece ? piece : "", len)) {
            snprintf(j->error, sizeof j->error, "out of memory");
            sl->finish = "error";
        }
        long stop = sl->finish ? -1 : mx_text_find_stop(&sl->text, j->stops, j->n_stops);
        if (stop >= 0) {
            mx_text_truncate(&sl->text, (size_t)stop);
            sl->finish = "stop";
        } else if (!sl->finish && sl->n_gen >= j->max_new) {
            sl->finish = "length";
        }
    }
    if (!sl->finish) sl->pending = tok;
    if (mx_text_release(&sl->text, j->stops, j->n_stops, sl->finish != NULL, &sl->emit, &sl->emit_len,
                        &sl->emit_cap) &&
        !sl->finish) {
        snprintf(j->error, sizeof j->error, "out of memory");
        sl->finish = "error";
    }
}

/* After the batch (outside the lock): advance prompts, sample where there are logits. */
static void after_step(mx_sched *sc, int n_items, const float *logits) {
    int vocab = sc->m->cfg.vocab, row = 0;
    for (int k = 0; k < n_items; k++) {
        slot *sl = &sc->slots[sc->item_slot[k]];
        const mx_batch_item *it = &sc->items[k];
        bool decode = it->tokens == &sl->pending;
        if (!decode) sl->fed += it->n;
        if (decode) sl->pending = -1;
        if (!it->logits) continue;
        float *l = (float *)logits + (size_t)row++ * vocab; /* the batch's host logits: ours to modify */
        mx_sample_penalize(&sl->smp, l, sl->gen, sl->n_gen, sl->job->presence, sl->job->frequency);
        take_token(sc, sl, mx_sample(&sl->smp, l, NULL, 0));
    }
}

/* With the lock: released text to the jobs, ended jobs finished. */
static void publish(mx_sched *sc, int n_items, int gen_tokens, double t) {
    for (int k = 0; k < n_items; k++) {
        slot *sl = &sc->slots[sc->item_slot[k]];
        mx_job *j = sl->job;
        if (!j) continue;
        if (sl->emit_len) {
            if (mx_utf8_append(&j->out, &j->out_len, &j->out_cap, sl->emit, sl->emit_len) && !sl->finish) {
                snprintf(j->error, sizeof j->error, "out of memory");
                sl->finish = "error";
            }
            if (!j->t_first) j->t_first = t;
            sl->emit_len = 0;
        }
        j->n_gen = sl->n_gen;
        if (sl->finish)
            finish_slot(sc, sl, sl->finish);
        else
            pthread_cond_broadcast(&j->cond);
    }
    sc->steps++;
    sc->gen_tokens += (uint64_t)gen_tokens;
    sc->tps_t[sc->tps_at] = t;
    sc->tps_n[sc->tps_at] = gen_tokens;
    sc->tps_at = (sc->tps_at + 1) % TPS_RING;
    if (sc->n_active == 0 && !sc->q_head) pthread_cond_broadcast(&sc->idle);
}

/* With the lock: every job of the step fails with the batch's error. */
static void fail_step(mx_sched *sc, int n_items, const mx_err *err) {
    for (int k = 0; k < n_items; k++) {
        slot *sl = &sc->slots[sc->item_slot[k]];
        if (!sl->job) continue;
        snprintf(sl->job->error, sizeof sl->job->error, "%.200s", err->msg);
        finish_slot(sc, sl, "error");
    }
    if (sc->n_active == 0 && !sc->q_head) pthread_cond_broadcast(&sc->idle);
}

static void *sched_main(void *arg) {
    mx_sched *sc = arg;
    omp_set_num_threads(sc->be->n_threads); /* OpenMP's thread count is per calling thread */
    mx_sched_lock(sc);
    for (;;) {
        while (!sc->quit && sc->n_active == 0 && !sc->q_head) pthread_cond_wait(&sc->wake, &sc->mu);
        if (sc->quit && sc->n_active == 0 && !sc->q_head) break;
        reap_cancelled(sc);
        admit(sc);
        int n = lay_out_step(sc);
        mx_sched_unlock(sc);
        mx_err err = {0};
        float *logits = NULL;
        int rc = n ? mx_batch_step(&sc->batch, sc->items, n, &logits, &err) : MX_OK;
        int gen_before = 0, gen_after = 0;
        for (int k = 0; k < n; k++) gen_before += sc->slots[sc->item_slot[k]].n_gen;
        if (!rc) after_step(sc, n, logits);
        for (int k = 0; k < n; k++) gen_after += sc->slots[sc->item_slot[k]].n_gen;
        mx_sched_lock(sc);
        if (rc)
            fail_step(sc, n, &err);
        else
            publish(sc, n, gen_after - gen_before, mx_now());
    }
    mx_sched_unlock(sc);
    return NULL;
}

static void free_slots(mx_sched *sc) {
    for (int i = 0; sc->slots && i < sc->o.n_slots; i++) {
        slot *sl = &sc->slots[i];
        mx_seq_free(&sl->seq);
        mx_sampler_free(&sl->smp);
        free(sl->gen);
        mx_text_free(&sl->text);
        free(sl->emit);
    }
    free(sc->slots);
}

static int init_slots(mx_sched *sc, mx_err *err) {
    sc->slots = calloc((size_t)sc->o.n_slots, sizeof *sc->slots);
    sc->items = calloc((size_t)sc->o.n_slots, sizeof *sc->items);
    sc->item_slot = calloc((size_t)sc->o.n_slots, sizeof *sc->item_slot);
    if (!sc->slots || !sc->items || !sc->item_slot) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    for (int i = 0; i < sc->o.n_slots; i++) {
        slot *sl = &sc->slots[i];
        int rc = mx_seq_init(&sl->seq, sc->m, sc->be, sc->o.n_ctx, sc->o.chunk, err);
        if (rc) return mx_err_wrap(err, "slot %d of %d", i, sc->o.n_slots);
        sc->kv_bytes += sl->seq.kv.bytes;
        mx_sampler_params p = mx_sampler_defaults();
        sl->gen = malloc(sizeof(int) * (size_t)sc->o.n_ctx);
        if (!sl->gen || mx_sampler_init(&sl->smp, &p, sc->m->cfg.vocab))
            return mx_err_set(err, MX_ERR_NOMEM, "out of memory allocating slot %d", i);
    }
    return MX_OK;
}

int mx_sched_create(const mx_model *m, mx_backend *be, const mx_sched_opts *o, mx_sched **out, mx_err *err) {
    *out = NULL;
    if (!m->tok) return mx_err_set(err, MX_ERR_ARG, "%s has no tokenizer: the server needs one", m->path);
    mx_sched *sc = calloc(1, sizeof *sc);
    if (!sc) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    sc->m = m;
    sc->be = be;
    sc->o = *o;
    sc->eos = mx_tokenizer_eos(m->tok);
    pthread_mutex_init(&sc->mu, NULL);
    pthread_cond_init(&sc->wake, NULL);
    pthread_cond_init(&sc->idle, NULL);
    mx_rng_seed(&sc->seeds, (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)sc);
    int rc = mx_batch_init(&sc->batch, m, be, o->n_slots, o->chunk, o->batch_gemm, err);
    if (!rc) rc = init_slots(sc, err);
    if (!rc && pthread_create(&sc->thread, NULL, sched_main, sc))
        rc = mx_err_set(err, MX_ERR_NOMEM, "cannot start the scheduler thread");
    if (rc) {
        mx_sched_free(sc);
        return rc;
    }
    sc->started = true;
    *out = sc;
    return MX_OK;
}

void mx_sched_drain(mx_sched *sc) {
    mx_sched_lock(sc);
    sc->draining = true;
    while (sc->n_active > 0 || sc->q_head) pthread_cond_wait(&sc->idle, &sc->mu);
    mx_sched_unlock(sc);
}

void mx_sched_free(mx_sched *sc) {
    if (!sc) return;
    if (sc->started) {
        mx_sched_lock(sc);
        sc->quit = true;
        pthread_cond_signal(&sc->wake);
        mx_sched_unlock(sc);
        pthread_join(sc->thread, NULL);
    }
    free_slots(sc);
    free(sc->items);
    free(sc->item_slot);
    mx_batch_free(&sc->batch);
    pthread_cond_destroy(&sc->wake);
    pthread_cond_destroy(&sc->idle);
    pthread_mutex_destroy(&sc->mu);
    free(sc);
}

void mx_sched_stats_get(mx_sched *sc, mx_sched_stats *st) {
    mx_sched_lock(sc);
    double now = mx_now(), oldest = now;
    long toks = 0;
    for (int i = 0; i < TPS_RING; i++)
        if (sc->tps_t[i] > 0 && now - sc->tps_t[i] <= TPS_WINDOW_S) {
            toks += sc->tps_n[i];
            if (sc->tps_t[i] < oldest) oldest = sc->tps_t[i];
        }
    *st = (mx_sched_stats){.requests = sc->requests,
                           .cancelled = sc->cancelled,
                           .prompt_tokens = sc->prompt_tokens,
                           .gen_tokens = sc->gen_tokens,
                           .steps = sc->steps,
                           .queued = sc->n_queued,
                           .active = sc->n_active,
                           .slots = sc->o.n_slots,
                           .n_ctx = sc->o.n_ctx,
                           .tok_per_s = toks > 0 && now - oldest > 0.05 ? toks / (now - oldest) : 0.0,
                           .kv_bytes = sc->kv_bytes};
    mx_sched_unlock(sc);
}
