/* open.h: a model made ready to run on a backend. mx_model_open loads it (model.h), keeps this rank's slice
 * under tensor parallelism (tp.h), creates the backend, checks that it runs every block the model has, places
 * the weights on it and, for tensor parallelism on a backend with a CUDA stream, attaches the job's data
 * collectives to that stream (NCCL). Every rank of the job opens together: all go on, or all fail with the
 * first failing rank's message (dist/agree.h). mx_model_close undoes it. */
#ifndef MX_OPEN_H
#define MX_OPEN_H

#include <stdbool.h>

#include "../dist/comm.h"
#include "model.h"

typedef struct {
    const char *path;   /* a GGUF file, a Hugging Face directory or a `mixatt train` checkpoint */
    mx_load_opts load;  /* plan, window, attention kind, MLA form */
    const char *device; /* backend name for mx_backend_create (NULL = cpu) */
    int gpu;            /* device index; < 0: in a job of several ranks the rank's index among the ranks of
                           its host (OMPI_COMM_WORLD_LOCAL_RANK, else the world rank), otherwise 0 */
    int threads;        /* CPU threads (0 = all cores) */
    bool exact;         /* fp32 activations in every matmul (mx_backend.exact) */
    mx_comm *comm;      /* the job (NULL = one rank) */
    int tp;             /* tensor parallel over every rank of comm; 0 = off */
} mx_open_opts;

/* Collective over o->comm. On failure nothing is left open (*m and *be NULL) and err holds the message. */
int mx_model_open(const mx_open_opts *o, mx_model **m, mx_backend **be, mx_err *err);
/* Unplaces the weights, destroys the backend and frees the model; either may be NULL. */
void mx_model_close(mx_model *m, mx_backend *be);

#endif
