/* sched.h: the server's scheduler: a queue of generation jobs, N slots (each a sequence with its own KV
 * cache, sampler and text), and one thread that runs the slots as one batch per step (batch.h): every active
 * sequence's next token, plus prefill chunks of newly admitted prompts. HTTP threads submit jobs and read
 * their text as it is released; a job is shared by its HTTP thread and the scheduler and freed by the last
 * of them to let go of it. Everything in a job below "progress" is read and written under the scheduler's
 * lock (mx_sched_lock). */
#ifndef MX_SERVE_SCHED_H
#define MX_SERVE_SCHED_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "../model/model.h"
#include "../run/sampler.h"

enum { MX_SERVE_MAX_STOPS = 16 };

typedef struct mx_job mx_job;
struct mx_job {
    /* the request: set before mx_sched_submit, read-only after */
    int *prompt;
    int n_prompt;
    int max_new; /* tokens at most, within the context */
    mx_sampler_params sp;
    float presence, frequency;
    char *stops[MX_SERVE_MAX_STOPS];
    int n_stops;
    int stop_token; /* an extra token that ends the answer (chat end of turn), -1 none */
    /* asked at the start of each step, with the lock held: whether the client has gone (NULL: never) */
    bool (*client_gone)(int fd);
    int client_fd;
    /* progress */
    char *out; /* released text, valid UTF-8, NUL-terminated when out_len > 0 */
    size_t out_len, out_cap;
    int n_gen;
    const char *finish; /* "stop", "length", "cancelled" or "error" once done */
    bool done, cancelled;
    char error[256];
    double t_submit, t_first, t_done; /* mx_now() seconds: submitted, first text released, done */
    pthread_cond_t cond;              /* signalled when text is released or the job is done */
    int refs;
    mx_job *next;
};

typedef struct {
    int n_slots, n_ctx, chunk, queue_cap;
    bool batch_gemm; /* decode rows through the prefill GEMM (batch.h: mx_batch_init's gemm) */
} mx_sched_opts;

typedef struct {
    uint64_t requests, cancelled, prompt_tokens, gen_tokens, steps;
    int queued, active, slots, n_ctx;
    double tok_per_s; /* generated tokens per second over the last few seconds */
    size_t kv_bytes;  /* the slots' caches */
} mx_sched_stats;

typedef struct mx_sched mx_sched;

/* A job with one reference held by its creator. */
mx_job *mx_job_new(void);
/* Lets go of a reference (under the lock); the last one frees the job. */
void mx_job_unref(mx_job *j);

/* Allocates the slots (their caches sized from the plan) and starts the scheduler thread. */
int mx_sched_create(const mx_model *m, mx_backend *be, const mx_sched_opts *o, mx_sched **out, mx_err *err);
/* Finishes the jobs queued and running, stops the thread, frees everything. */
void mx_sched_free(mx_sched *sc);
/* Queues j (taking a reference): 0; 1 when the queue is full; 2 when the scheduler is draining. */
int mx_sched_submit(mx_sched *sc, mx_job *j);
/* Refuses new jobs, then waits until none is queued or running. */
void mx_sched_drain(mx_sched *sc);
void mx_sched_lock(mx_sched *sc);
void mx_sched_unlock(mx_sched *sc);
/* With the lock held: waits for j->cond at most ms milliseconds. */
void mx_sched_wait(mx_sched *sc, mx_job *j, int ms);
/* With the lock held: marks j cancelled; its slot is freed at the start of the next step. */
void mx_sched_cancel(mx_sched *sc, mx_job *j);
void mx_sched_stats_get(mx_sched *sc, mx_sched_stats *st);
/* A fresh seed for a request without one. */
uint64_t mx_sched_seed(mx_sched *sc);

#endif
