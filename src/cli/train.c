/* train.c: `mixatt train`: trains a model from a JSON config on the CPU in fp32 (src/train/).
 *   mixatt train -c CONFIG.json [--set key=value ...] [--resume DIR] -o RUN_DIR
 * Each step: grad_accum micro-batches (B, T) forward and backward, global-norm clipping, one AdamW update at
 * the schedule's learning rate. A progress line per log_every steps on stderr; one JSON line per step in
 * RUN_DIR/log.jsonl ({"step", "loss", "lr", "grad_norm", "tok_per_s"}, plus "aux" with experts and
 * "act_rms" with --log-act-rms; validation lines {"step", "val_loss"}); RUN_DIR/checkpoint.safetensors every
 * ckpt_every steps and at the end (ckpt.h), written atomically. "loss" is the objective (cross-entropy +
 * moe_aux_weight x aux), "val_loss" the cross-entropy.
 * --resume DIR continues from DIR/checkpoint.safetensors with its config (plus --set) and gives the same
 * results, bit for bit, as the run that was never stopped. A non-finite loss or gradient stops the run with a
 * message; the last checkpoint written stays as it was. train_data "synthetic:TASK" writes shards of the task
 * (synthetic.h) into RUN_DIR/data/ first.
 * --dp (under mpirun -np N) trains data-parallel: each rank takes batch / N rows of every micro-batch, the
 * gradients are averaged over ranks before clipping and AdamW, rank 0 writes the log and checkpoints; --zero1
 * also shards the AdamW moments (train/dp.h). Every failure is agreed: all ranks stop with one message.
 * Hidden (for tests): --dump-grads FILE writes the gradients of the first step taken (before clipping; under
 * --dp the ranks' mean, written by rank 0). */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../backend/backend.h"
#include "../dist/agree.h"
#include "../train/ckpt.h"
#include "../train/dp.h"
#include "../train/model_train.h"
#include "../train/mup.h"
#include "../train/op_profile.h"
#include "../train/optim.h"
#include "../train/shards.h"
#include "../train/synthetic.h"
#include "commands.h"
#include "common.h"

enum { MAX_SETS = 64, SYNTH_MAX_STEPS = 4000 };

typedef struct {
    const char *config, *resume, *out, *dump_grads;
    const char *device,
        *precision; /* "cpu" | "cuda"; "bf16" | "fp32" (NULL: bf16 on a GPU, fp32 on the CPU) */
    const char *sets[MAX_SETS];
    int n_sets, threads, max_steps, gpu;
    bool quiet, dp, zero1, act_rms, gpu_given, profile, recompute;
} train_opts;

static void help(FILE *f) {
    fprintf(
        f,
        "usage: mixatt train -c CONFIG.json [--set key=value ...] [--resume DIR] [--device cpu|cuda] -o "
        "RUN_DIR\n\n"
        "Trains a GPT-2- or Llama-shaped model on the CPU (fp32) or one NVIDIA GPU. Attention: key attn = "
        "mha (MHA/GQA/MQA "
        "with\n"
        "the plan's windows and shared K/V), mla (explicit form, llama; mla_* keys), mka or fastmka "
        "(causal);\n"
        "n_expert > 0 makes every MLP a top-n_expert_used mixture of experts (llama) with the "
        "load-balancing\n"
        "loss weighted by moe_aux_weight; mup = true trains with muP relative to mup_base_width\n"
        "(docs/training.md has every rule).\n\n"
        "  -c, --config FILE   the run's config: one JSON object (configs/train-tiny-gpt2.json shows every "
        "key)\n"
        "  --set KEY=VALUE     overrides one config key (repeatable)\n"
        "  --resume DIR        continue from DIR/checkpoint.safetensors (its config; -c is not needed)\n"
        "  -o, --out DIR       run directory: log.jsonl, checkpoint.safetensors, data/ (created)\n"
        "  --max-steps N       stop after N steps of this run (checkpoint written; the schedule still spans\n"
        "                      `steps`): continue later with --resume\n"
        "  --device cpu|cuda   where the steps run (default cpu). cuda: parameters, gradients, fp32 AdamW\n"
        "                      state and activations on the GPU; every architecture, attention kind and\n"
        "                      block the CPU trains (mha with windows and shared K/V, mla, mka, fastmka,\n"
        "                      experts). Checkpoints are the same files either way\n"
        "  --gpu N             which GPU (default 0; under mpirun, rank r takes GPU r)\n"
        "  --precision P       bf16 (the default on a GPU: matmuls on bf16 tensor cores with fp32\n"
        "                      accumulation; norms, softmax, loss and AdamW in fp32) or fp32\n"
        "  -t, --threads N     threads (default: all cores)\n"
        "  -q, --quiet         no progress lines\n"
        "  --profile           print where a step's time goes, op by op (the device synced around each op,\n"
        "                      so profiled steps run a little slower; the first step is left out)\n"
        "  --recompute         keep only each layer's input (and K/V) through the step and run the layer's\n"
        "                      forward again in the backward: activation memory of one layer instead of\n"
        "                      all, for one more forward pass; the same gradients bit for bit (config key\n"
        "                      recompute)\n"
        "  --log-act-rms       add \"act_rms\" to each step's log line: the RMS of the residual stream "
        "entering\n"
        "                      each layer and leaving the last (a coordinate check; scripts/coord_check.py)\n"
        "  --dp                data parallel over the ranks of `mpirun -np N mixatt train --dp ...`: each "
        "rank\n"
        "                      trains on batch / N rows of every micro-batch (batch must divide by N), the\n"
        "                      gradients are averaged over ranks (fp32) before clipping and AdamW; rank 0\n"
        "                      writes log.jsonl and checkpoints (RUN_DIR on a file system every rank sees).\n"
        "                      The result equals one process training the same global batch, up to the\n"
        "                      order of fp32 sums. --resume works with any N that divides the batch\n"
        "                      With --device cuda: one GPU per rank (GPU r for rank r unless --gpu),\n"
        "                      gradients averaged by NCCL\n"
        "  --zero1             with --dp: shard the AdamW moments over the ranks (ZeRO stage 1): each rank\n"
        "                      updates its slice of the parameters, then the slices are allgathered\n");
}

static int parse(train_opts *o, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = !strcmp(a, "-c") || !strcmp(a, "--config") || !strcmp(a, "--set") ||
                     !strcmp(a, "--resume") || !strcmp(a, "-o") || !strcmp(a, "--out") ||
                     !strcmp(a, "--dump-grads") || !strcmp(a, "-t") || !strcmp(a, "--threads") ||
                     !strcmp(a, "--max-steps") || !strcmp(a, "--device") || !strcmp(a, "--precision") ||
                     !strcmp(a, "--gpu");
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return help(stdout), -1;
        if (!strcmp(a, "--log-act-rms")) {
            o->act_rms = true;
            continue;
        }
        bool *flag = !strcmp(a, "-q") || !strcmp(a, "--quiet") ? &o->quiet
                     : !strcmp(a, "--dp")                      ? &o->dp
                     : !strcmp(a, "--profile")                 ? &o->profile
                     : !strcmp(a, "--zero1")                   ? &o->zero1
                     : !strcmp(a, "--recompute")               ? &o->recompute
                                                               : NULL;
        if (flag) {
            *flag = true;
            continue;
        }
        if (!takes)
            return fprintf(stderr, "mixatt train: unknown flag '%s' (see mixatt train --help)\n", a), 2;
        if (!val) return fprintf(stderr, "mixatt train: %s expects a value\n", a), 2;
        i++;
        if (!strcmp(a, "-c") || !strcmp(a, "--config"))
            o->config = val;
        else if (!strcmp(a, "--resume"))
            o->resume = val;
        else if (!strcmp(a, "-o") || !strcmp(a, "--out"))
            o->out = val;
        else if (!strcmp(a, "--dump-grads"))
            o->dump_grads = val;
        else if (!strcmp(a, "--device"))
            o->device = val;
        else if (!strcmp(a, "--precision"))
            o->precision = val;
        else if (!strcmp(a, "--gpu")) {
            if (mx_parse_int(a, val, 0, 1023, &o->gpu)) return 2;
            o->gpu_given = true;
        } else if (!strcmp(a, "--set")) {
            if (o->n_sets == MAX_SETS)
                return fprintf(stderr, "mixatt train: at most %d --set\n", MAX_SETS), 2;
            o->sets[o->n_sets++] = val;
        } else if (!strcmp(a, "--max-steps")) {
            if (mx_parse_int(a, val, 1, 1 << 30, &o->max_steps)) return 2;
        } else if (mx_parse_int(a, val, 1, 4096, &o->threads))
            return 2;
    }
    if (!o->out)
        return fprintf(stderr, "mixatt train: -o RUN_DIR is required (see mixatt train --help)\n"), 2;
    if (!o->config && !o->resume)
        return fprintf(stderr,
                       "mixatt train: give -c CONFIG.json or --resume DIR (see mixatt train --help)\n"),
               2;
    if (o->device && strcmp(o->device, "cpu") && strcmp(o->device, "cuda"))
        return fprintf(stderr, "mixatt train: --device is cpu or cuda, not '%s'\n", o->device), 2;
    if (o->precision && strcmp(o->precision, "bf16") && strcmp(o->precision, "fp32"))
        return fprintf(stderr, "mixatt train: --precision is bf16 or fp32, not '%s'\n", o->precision), 2;
    if (o->zero1 && !o->dp)
        return fprintf(stderr, "mixatt train: --zero1 shards the optimizer of --dp training: add --dp\n"), 2;
    return 0;
}

static void path_join(char *buf, size_t size, const char *dir, const char *name) {
    snprintf(buf, size, "%s/%s", dir, name);
}

/* Creates path and any missing parents (mkdir -p). */
static int make_dir(const char *path, mx_err *err) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return mx_err_set(err, MX_ERR_ARG, "%s: path too long", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0777) && errno != EEXIST)
            return mx_err_set(err, MX_ERR_IO, "%s: cannot create the directory: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) && errno != EEXIST)
        return mx_err_set(err, MX_ERR_IO, "%s: cannot create the directory: %s", path, strerror(errno));
    return MX_OK;
}

/* The config: the checkpoint's when resuming, else the file's; then every --set. */
static int load_config(const train_opts *o, mx_train_config *cfg, char *ckpt, size_t ckpt_size, mx_err *err) {
    mx_train_config_defaults(cfg);
    if (o->resume) {
        path_join(ckpt, ckpt_size, o->resume, "checkpoint.safetensors");
        if (mx_ckpt_read_config(ckpt, cfg, err)) return err->code;
    } else {
        size_t len;
        char *json = mx_read_file(o->config, &len);
        if (!json) return mx_err_set(err, MX_ERR_IO, "cannot read the config %s", o->config);
        int rc = mx_train_config_apply_json(cfg, json, o->config, err);
        free(json);
        if (rc) return rc;
    }
    for (int i = 0; i < o->n_sets; i++)
        if (mx_train_config_set(cfg, o->sets[i], err)) return err->code;
    if (o->recompute) cfg->recompute = true;
    return mx_train_config_check(cfg, err);
}

typedef struct {
    char train[2100], val[2100]; /* shard patterns ("" = no validation) */
} data_paths;

/* The run's shard patterns: the config's, with synthetic:TASK written as shards under RUN_DIR/data/ (same
 * seed, same tokens, so a resumed run reads the same data) when write is true (rank 0; the other ranks only
 * take the paths). The config itself keeps the task names. */
static int prepare_data(const mx_train_config *cfg, const char *run_dir, bool write, data_paths *dp,
                        mx_err *err) {
    const char *pre = "synthetic:", *val = cfg->val_data[0] ? cfg->val_data : NULL;
    size_t np = strlen(pre);
    bool train_syn = !strncmp(cfg->train_data, pre, np);
    if (!val && train_syn) val = cfg->train_data; /* held out: the same task under another seed */
    snprintf(dp->train, sizeof dp->train, "%s", cfg->train_data);
    snprintf(dp->val, sizeof dp->val, "%s", val ? val : "");
    bool val_syn = val && !strncmp(val, pre, np);
    if (!train_syn && !val_syn) return MX_OK;
    char dir[2048];
    path_join(dir, sizeof dir, run_dir, "data");
    if (write && make_dir(dir, err)) return err->code;
    if (train_syn) {
        long per_step = (long)cfg->batch * cfg->seq * cfg->grad_accum;
        long n = per_step * (cfg->steps < SYNTH_MAX_STEPS ? cfg->steps : SYNTH_MAX_STEPS) + 1;
        path_join(dp->train, sizeof dp->train, dir, "train_000.bin");
        if (write && mx_synth_write(cfg->train_data + np, dp->train, n, cfg->vocab, cfg->seq, cfg->seed, err))
            return err->code;
    }
    if (val_syn) {
        long n = (long)cfg->batch * cfg->seq * (cfg->val_batches > 0 ? cfg->val_batches : 1) + 1;
        path_join(dp->val, sizeof dp->val, dir, "val_000.bin");
        if (write && mx_synth_write(val + np, dp->val, n, cfg->vocab, cfg->seq, cfg->seed + 1, err))
            return err->code;
    }
    return MX_OK;
}

typedef struct {
    mx_tmodel *m;
    mx_backend *be; /* where the steps run */
    mx_comm *comm;
    mx_dp *dp; /* NULL without --dp */
    mx_loader train, val;
    bool has_val;
    int *inputs, *targets;
    FILE *log; /* rank 0's */
    char ckpt_path[2100];
    int last_ckpt; /* step of the last checkpoint written by this process or resumed from, -1 none */
} trainer;

static double validate(trainer *t, mx_err *err) {
    mx_tmodel *m = t->m;
    double sum = 0;
    int rc = mx_loader_seek(&t->val, 0, 0, err), T = m->cfg.seq;
    for (int i = 0; i < m->cfg.val_batches && !rc; i++) {
        if ((rc = mx_loader_next(&t->val, t->inputs, t->targets, err))) break;
        sum +=
            mx_tmodel_step(m, mx_dp_rows(t->dp, t->inputs, T), mx_dp_rows(t->dp, t->targets, T), false, 0.0f);
        sum -= m->cfg.moe_aux_weight * m->aux_loss; /* the validation loss is the cross-entropy alone */
    }
    sum /= m->cfg.val_batches;
    if (mx_dp_agree(t->dp, rc, err) || mx_dp_mean(t->dp, &sum, err)) return NAN;
    return sum;
}

static void format_eta(char *buf, size_t size, double s) {
    if (s < 60)
        snprintf(buf, size, "%.0fs", s);
    else if (s < 3600)
        snprintf(buf, size, "%dm%02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(buf, size, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int save(trainer *t, int step, mx_err *err) {
    mx_ckpt_state st = {.step = step, .shard = t->train.shard, .pos = t->train.pos};
    mx_tmodel_to_host(t->m); /* the checkpoint reads host buffers */
    int rc = mx_dp_save(t->dp, t->m, t->ckpt_path, &st, err);
    mx_tmodel_to_device(t->m);
    if (rc) return err->code;
    t->last_ckpt = step;
    return MX_OK;
}

static int stop_nonfinite(trainer *t, const char *what, double value, int step) {
    if (!mx_dist_is_root(t->comm)) return 1;
    fprintf(stderr, "mixatt train: %s is %s at step %d; stopping. ", what, isnan(value) ? "NaN" : "infinite",
            step + 1);
    if (t->last_ckpt >= 0)
        fprintf(stderr, "The last good checkpoint (step %d) is %s\n", t->last_ckpt, t->ckpt_path);
    else
        fprintf(stderr, "No checkpoint was written before it.\n");
    return 1;
}

/* One optimizer step: grad_accum micro-batches (this rank's rows of each under --dp), the gradients averaged
 * over ranks, clipping, AdamW. Returns the mean loss (NaN on error, on every rank alike). */
static double train_step(trainer *t, int step, const char *dump, double *norm, float *lr, mx_err *err) {
    mx_tmodel *m = t->m;
    const mx_train_config *c = &m->cfg;
    double loss = 0;
    int rc = 0;
    mx_zero_grads(m);
    for (int i = 0; i < c->grad_accum && !rc; i++) {
        if ((rc = mx_loader_next(&t->train, t->inputs, t->targets, err))) break;
        loss += mx_tmodel_step(m, mx_dp_rows(t->dp, t->inputs, c->seq), mx_dp_rows(t->dp, t->targets, c->seq),
                               true, 1.0f / (float)c->grad_accum);
    }
    loss /= c->grad_accum;
    if (mx_dp_reduce(t->dp, m, rc, &loss, err)) return NAN;
    if (!isfinite(loss)) return loss;
    if (dump) {
        mx_tmodel_to_host(m);
        rc = mx_dist_is_root(t->comm) ? mx_grads_save(m, dump, loss, err) : 0;
        mx_tmodel_to_device(m);
        if (mx_dp_agree(t->dp, rc, err)) return NAN;
    }
    *norm = mx_grad_norm(m);
    if (!isfinite(*norm)) return loss;
    mx_clip_grads(m, *norm, c->grad_clip);
    *lr = mx_lr_at(c, step);
    if (mx_dp_adamw_step(t->dp, m, *lr, step + 1, err)) return NAN;
    return loss;
}

/* Prints an error once per job (rank 0), after the ranks agreed on it. */
static int report(const trainer *t, const char *what, const mx_err *err) {
    char who[64];
    snprintf(who, sizeof who, "mixatt train%s%s", what ? ": " : "", what ? what : "");
    mx_dist_report(t->comm, who, err);
    return 1;
}

/* The optional fields of a step's log line: "aux" (experts: the unweighted load-balancing loss of the last
 * micro-batch) and "act_rms" (--log-act-rms). */
static void log_extras(FILE *f, const mx_tmodel *m, bool act_rms) {
    if (m->cfg.n_expert > 0) fprintf(f, ", \"aux\": %.9g", m->aux_loss);
    if (!act_rms) return;
    double rms[1025];
    int n = m->cfg.n_layer + 1 < 1025 ? m->cfg.n_layer + 1 : 1025;
    if (n == 1025) return; /* more layers than the log line holds */
    mx_act_rms(m, rms);
    fputs(", \"act_rms\": [", f);
    for (int i = 0; i < n; i++) fprintf(f, "%s%.6g", i ? ", " : "", rms[i]);
    fputc(']', f);
}

static int run_loop(trainer *t, int start, const train_opts *o, mx_err *err) {
    const mx_train_config *c = &t->m->cfg;
    long tok_per_step = (long)c->batch * c->seq * c->grad_accum;
    double t0 = now();
    int end = o->max_steps > 0 && start + o->max_steps < c->steps ? start + o->max_steps : c->steps;
    for (int step = start; step < end; step++) {
        double ts = now(), norm = 0;
        float lr = 0;
        double loss = train_step(t, step, step == start ? o->dump_grads : NULL, &norm, &lr, err);
        if (err->code) return report(t, NULL, err);
        if (t->m->prof) mx_op_profile_step(t->m->prof, step == start);
        if (!isfinite(loss)) return stop_nonfinite(t, "the loss", loss, step);
        if (!isfinite(norm)) return stop_nonfinite(t, "the gradient norm", norm, step);
        double dt = now() - ts, tps = tok_per_step / (dt > 0 ? dt : 1e-9);
        bool root = t->log != NULL;
        if (root) {
            fprintf(t->log,
                    "{\"step\": %d, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, \"tok_per_s\": %.1f",
                    step + 1, loss, lr, norm, tps);
            log_extras(t->log, t->m, o->act_rms);
            fputs("}\n", t->log);
        }
        bool last = step + 1 == c->steps, stop = step + 1 == end;
        if (root && !o->quiet && c->log_every && ((step + 1) % c->log_every == 0 || last)) {
            char eta[32];
            double per = (now() - t0) / (step + 1 - start);
            format_eta(eta, sizeof eta, per * (c->steps - step - 1));
            fprintf(stderr, "step %d/%d | loss %.4f | lr %.3e | grad norm %.3f | %.0f tok/s | ETA %s\n",
                    step + 1, c->steps, loss, lr, norm, tps, eta);
        }
        if (t->has_val && c->val_every && ((step + 1) % c->val_every == 0 || last)) {
            mx_op_profile *prof = t->m->prof;
            t->m->prof = NULL; /* the profile is of training steps */
            double vl = validate(t, err);
            t->m->prof = prof;
            if (err->code) return report(t, "validation", err);
            if (root) fprintf(t->log, "{\"step\": %d, \"val_loss\": %.9g}\n", step + 1, vl);
            if (root && !o->quiet) fprintf(stderr, "step %d/%d | val loss %.4f\n", step + 1, c->steps, vl);
        }
        if (root) fflush(t->log);
        if ((c->ckpt_every && (step + 1) % c->ckpt_every == 0) || stop)
            if (save(t, step + 1, err)) return report(t, NULL, err);
    }
    return 0;
}

/* Rank 0 creates the run directory and writes synthetic data; every rank gets the shard patterns. */
static int setup_data(trainer *t, const train_opts *o, const mx_train_config *cfg, data_paths *dp,
                      mx_err *err) {
    bool root = mx_dist_is_root(t->comm);
    int rc = (root && make_dir(o->out, err)) || prepare_data(cfg, o->out, root, dp, err) ? err->code : 0;
    return mx_dp_agree(t->dp, rc, err); /* the others read what rank 0 wrote after this */
}

/* This rank's part of setup: the model, a checkpoint when resuming, the loaders and (rank 0) the log. */
static int setup_local(trainer *t, const train_opts *o, mx_train_config *cfg, const char *resume_ckpt,
                       const data_paths *dpp, int *start, mx_err *err) {
    char path[2100];
    data_paths dp = *dpp;
    if (mx_dp_create_model(t->dp, cfg, &t->m, err)) return err->code;
    mx_ckpt_state st = {0};
    if (o->resume) {
        if (mx_ckpt_load(t->m, resume_ckpt, true, &st, err)) return err->code;
        t->last_ckpt = st.step;
    } else if (cfg->init[0] && mx_ckpt_load(t->m, cfg->init, false, NULL, err)) {
        return mx_err_wrap(err, "init");
    }
    *start = st.step;
    bool gpu = o->device && !strcmp(o->device, "cuda");
    bool bf16 = o->precision ? !strcmp(o->precision, "bf16") : gpu;
    if (!gpu && bf16)
        return mx_err_set(err, MX_ERR_UNSUPPORTED,
                          "--precision bf16 needs --device cuda; the CPU trains in fp32");
    /* the CPU trains on the model's own host buffers and OpenMP threads (no backend object needed) */
    int dev = o->gpu_given || t->comm->size == 1 ? o->gpu : t->comm->rank;
    if (gpu && (mx_backend_create("cuda", dev, 1, &t->be, err) || mx_tmodel_place(t->m, t->be, bf16, err)))
        return err->code;
    if (o->act_rms && t->m->on_device)
        return mx_err_set(err, MX_ERR_UNSUPPORTED,
                          "--log-act-rms reads activations on the host: use --device cpu");
    size_t n = (size_t)cfg->batch * cfg->seq;
    t->inputs = malloc(sizeof(int) * n), t->targets = malloc(sizeof(int) * n);
    if (!t->inputs || !t->targets) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    if (mx_loader_open(&t->train, dp.train, cfg->vocab, cfg->batch, cfg->seq, err) ||
        mx_loader_seek(&t->train, st.shard, st.pos, err))
        return mx_err_wrap(err, "training data");
    t->has_val = dp.val[0] && cfg->val_batches > 0;
    if (t->has_val && mx_loader_open(&t->val, dp.val, cfg->vocab, cfg->batch, cfg->seq, err))
        return mx_err_wrap(err, "validation data");
    path_join(t->ckpt_path, sizeof t->ckpt_path, o->out, "checkpoint.safetensors");
    path_join(path, sizeof path, o->out, "log.jsonl");
    if (mx_dist_is_root(t->comm) &&
        (mx_ckpt_remove_stale(o->out, err) || mx_ckpt_truncate_log(path, *start, err)))
        return err->code; /* a killed run's temp files go; the log keeps the steps up to the resumed one */
    if (mx_dist_is_root(t->comm) && !(t->log = fopen(path, "a")))
        return mx_err_set(err, MX_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    return MX_OK;
}

/* Builds the model and data of the run and restores a checkpoint when resuming; returns the first step. Under
 * --dp every rank goes on, or every rank returns the first failing rank's message. */
static int setup(trainer *t, const train_opts *o, mx_train_config *cfg, const char *resume_ckpt, int *start,
                 mx_err *err) {
    data_paths dp;
    if (setup_data(t, o, cfg, &dp, err)) return err->code;
    if (mx_dp_agree(t->dp, setup_local(t, o, cfg, resume_ckpt, &dp, start, err), err)) return err->code;
    /* --dp on GPUs: the gradient allreduce and the parameter broadcast run through NCCL on the backend's
     * stream (collective: every rank attaches or every rank fails) */
    if (t->dp && t->m->on_device && t->comm->attach(t->comm, t->be, err))
        return mx_err_wrap(err, "--dp: attaching the ranks' collectives to %s", t->be->name);
    return mx_dp_start(t->dp, t->m, err);
}

static void describe(const mx_tmodel *m, int start, const mx_dp *dp) {
    const mx_train_config *c = &m->cfg;
    char plan[1024];
    mx_plan_to_string(m->plan, c->n_layer, plan, sizeof plan);
    fprintf(stderr,
            "mixatt train: %s, %d layers, d_model %d, %d heads (%d KV), %.2fM parameters, plan %s\n"
            "  batch %d x %d x %d accumulated, steps %d..%d, lr %g (warmup %d, cosine to %g), %d threads\n",
            c->arch == MX_TARCH_GPT2 ? "gpt2" : "llama", c->n_layer, c->d_model, c->n_head, c->n_kv_head,
            (double)m->n_floats / 1e6, plan, c->batch, c->seq, c->grad_accum, start + 1, c->steps, c->lr,
            c->warmup, c->min_lr, omp_get_max_threads());
    if (c->attn != MX_ATTN_MHA || c->n_expert > 0 || c->mup) { /* the blocks beyond the defaults */
        char moe[96] = "dense MLP", mup[96] = "standard parameterization";
        if (c->n_expert > 0)
            snprintf(moe, sizeof moe, "experts top-%d of %d (aux weight %g)", c->n_expert_used, c->n_expert,
                     c->moe_aux_weight);
        if (c->mup)
            snprintf(mup, sizeof mup, "muP, base width %d (x%g)", c->mup_base_width,
                     (double)c->d_model / c->mup_base_width);
        fprintf(stderr, "  attention %s, %s, %s\n", mx_attn_kind_name(c->attn), moe, mup);
    }
    fprintf(stderr, "  activations %.2f MiB%s\n", m->acts.floats * 4.0 / 1048576.0,
            c->recompute ? " (recompute: one layer's, formed again in the backward)" : "");
    if (dp)
        fprintf(stderr, "  data parallel over %d ranks: %d sequences of each micro-batch per rank%s\n",
                dp->size, dp->batch_local, dp->zero1 ? ", AdamW moments sharded (ZeRO-1)" : "");
}

/* --dp against the job: several ranks need --dp (else each would train alone into the same files); --dp in a
 * single process trains on one rank. Returns 0 to go on, else the exit status (message printed once). */
static int check_dp(const train_opts *o, const mx_comm *comm) {
    if (comm->size > 1 && !o->dp) {
        if (comm->rank == 0)
            fprintf(stderr,
                    "mixatt train: this job has %d ranks (mpirun -np %d): add --dp to train data-parallel "
                    "(without "
                    "it every rank would train the same model alone into the same files)\n",
                    comm->size, comm->size);
        return 2;
    }
    if (o->dp && comm->size == 1 && !o->quiet)
        fprintf(stderr,
                "mixatt train: note: --dp in a single process (not started by mpirun): training on one "
                "rank; start N ranks with `mpirun -np N mixatt train --dp ...`\n");
    return 0;
}

int mx_cmd_train(int argc, char **argv, mx_comm *comm) {
    train_opts o = {0};
    int rc = parse(&o, argc, argv);
    if (rc) return rc < 0 ? 0 : rc;
    if ((rc = check_dp(&o, comm))) return rc;
    if (o.threads > 0) {
        omp_set_num_threads(o.threads);
        openblas_set_num_threads(o.threads);
    }
    mx_err err = {0};
    mx_train_config cfg;
    char ckpt[2100] = "";
    mx_dp dp = {0};
    rc = load_config(&o, &cfg, ckpt, sizeof ckpt, &err);
    if (!rc && o.dp) rc = mx_dp_init(&dp, comm, &cfg, o.zero1, &err);
    if (o.dp) rc = mx_dist_agree(comm, rc, &err); /* a rank may fail to read the config or checkpoint */
    if (rc) {
        mx_dist_report(comm, "mixatt train", &err);
        return err.code == MX_ERR_ARG ? 2 : 1;
    }
    trainer t = {.last_ckpt = -1, .comm = comm, .dp = o.dp ? &dp : NULL};
    int start = 0;
    if (setup(&t, &o, &cfg, ckpt, &start, &err)) {
        rc = report(&t, NULL, &err);
    } else {
        if (!o.quiet && mx_dist_is_root(comm)) describe(t.m, start, t.dp);
        mx_op_profile prof = {0};
        if (o.profile) t.m->prof = &prof;
        rc = run_loop(&t, start, &o, &err);
        t.m->prof = NULL;
        if (o.profile && mx_dist_is_root(comm)) mx_op_profile_print(&prof, stderr);
    }
    if (t.log) fclose(t.log);
    mx_loader_close(&t.train);
    mx_loader_close(&t.val);
    free(t.inputs), free(t.targets);
    mx_dp_free(t.dp); /* ZeRO-1's moments may live in the model's backend: before both go */
    mx_tmodel_free(t.m);
    mx_backend_destroy(t.be);
    return rc;
}
