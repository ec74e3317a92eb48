/* ckpt.h: training checkpoints as one safetensors file (F32 tensors, PyTorch shapes [out, in] or [n]):
 * every parameter by name, the AdamW moments as optim.m.NAME and optim.v.NAME, and in __metadata__ the
 * format ("mixatt-train-1"), the config as JSON, the expanded plan string, the step count and the data
 * loader's position, and a checksum over all of it (safetensors.h), verified on every load. Written
 * atomically: a temp file in the same directory, fsync, rename; never with a NaN or infinity in it.
 * The same writer dumps gradients (--dump-grads): every parameter's gradient by name, the loss in metadata.
 */
#ifndef MX_CKPT_H
#define MX_CKPT_H

#include <stdbool.h>

#include "model_train.h"

typedef struct {
    int step;  /* updates done */
    int shard; /* data loader cursor */
    long pos;
} mx_ckpt_state;

int mx_ckpt_save(const mx_tmodel *m, const char *path, const mx_ckpt_state *st, mx_err *err);
/* Reads the config stored in a checkpoint (to rebuild the model before mx_ckpt_load). */
int mx_ckpt_read_config(const char *path, mx_train_config *cfg, mx_err *err);
/* Loads every parameter of m from path (each must be present with its shape, F32); with optim also the
 * AdamW moments and the state (st may be NULL otherwise). Used for --resume and for the `init` key. */
int mx_ckpt_load(mx_tmodel *m, const char *path, bool optim, mx_ckpt_state *st, mx_err *err);
/* Before a run writes into run_dir: removes checkpoint temp files (*.safetensors.tmp) a killed run left. */
int mx_ckpt_remove_stale(const char *run_dir, mx_err *err);
/* Keeps the lines of a log.jsonl whose "step" is at most step (a resumed run's log then has no step twice);
 * a torn last line is dropped. Atomic. A missing file is fine. */
int mx_ckpt_truncate_log(const char *path, int step, mx_err *err);
/* Writes every parameter's gradient and the loss. */
int mx_grads_save(const mx_tmodel *m, const char *path, double loss, mx_err *err);

#endif
