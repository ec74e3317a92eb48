/* runs.h: a training run directory as `mixatt compare` and `mixatt plot` read it: the config, expanded plan
 * and parameter count from RUN_DIR/checkpoint.safetensors (ckpt.h), the loss curves from RUN_DIR/log.jsonl
 * (one JSON object per line: {"step", "loss", "tok_per_s", ...} or {"step", "val_loss"}). */
#ifndef MX_RUNS_H
#define MX_RUNS_H

#include "../train/model_train.h"

typedef struct {
    int n, cap;
    int *step;
    double *value;
} mx_curve;

typedef struct {
    const char *dir;
    char name[256];  /* the directory's last component */
    char plan[1024]; /* the checkpoint's expanded plan */
    mx_train_config cfg;
    long n_params;  /* elements of the model's parameters (optimizer moments excluded) */
    mx_curve train; /* loss per step */
    mx_curve val;   /* val_loss per validation */
    mx_curve tok_s; /* tok_per_s per step */
} mx_run;

/* Reads RUN_DIR's checkpoint and log; prints a message naming the file and returns non-zero on failure. */
int mx_run_load(const char *dir, mx_run *r);
void mx_run_free(mx_run *r);
/* KV cache bytes per token at the run's max_ctx, fp32 elements, window layers at their ring (kvcache.h);
 * -1 when the plan does not parse. */
double mx_run_kv_bytes_per_token(const mx_run *r);

#endif
