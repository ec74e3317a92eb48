/* bench_cuda.c: the CUDA backend's figures, each beside its ceiling measured here (device copy bandwidth) and
 * the peer's figure measured by bench/cuda/peer.py in the same `make bench-cuda` run.
 *   - SmolLM2 (default model) decode tok/s at batch 1 (token by token through mx_session_eval, logits to
 * host)
 *   - prefill tok/s of 4096 tokens (one mx_session_eval; the session runs it in ubatches of 512)
 *   - prefill attention TFLOP/s (bf16 K/V, causal, S 16384, D 128 x 16 heads and D 64 x 32 heads)
 *   - decode attention TB/s of K+V read (1 query, GQA 32/8 heads, D 128, KV 32768 and 131072)
 * Timing: CUDA events (kernels) or the host clock around synchronizing calls (model), after warm-up; medians.
 * Attention results are spot-checked against the CPU reference before they are timed.
 * usage: bench_cuda [MODEL.gguf]   (without a model: the kernels only) */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/backend/backend.h"
#include "../../src/base/clock.h"
#include "../../src/base/rng.h"
#include "../../src/io/quant.h"
#include "../../src/model/session.h"
#include "../../src/run/generate.h"

int mx_backend_cuda_create(int device, mx_backend **out, mx_err *err);
void mx_backend_cuda_destroy(mx_backend *be);

#include "../../tests/cuda/cuda_check.h"

static mx_backend *gpu, *cpu;
static mx_rng rng;

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *x, int n) {
    qsort(x, n, sizeof *x, cmp_d);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

static double copy_bw(void) {
    size_t n = (size_t)1 << 30;
    void *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    CK(cudaMemset(a, 1, n));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double t[10];
    for (int r = 0; r < 12; r++) {
        CK(cudaEventRecord(e0, 0));
        CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, 0));
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (r >= 2) t[r - 2] = ms * 1e-3;
    }
    CK(cudaFree(a));
    CK(cudaFree(b));
    return 2.0 * n / median(t, 10);
}

/* Times be->attention: median over reps of (n calls between two events) / n. */
static double time_attention(const mx_attn_spec *sp, const float *q, const void *k, const void *v, float *out,
                             int reps, int n) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double t[64];
    for (int r = 0; r < reps + 3; r++) {
        gpu->sync(gpu);
        CK(cudaEventRecord(e0, 0));
        for (int i = 0; i < n; i++) gpu->attention(gpu, sp, q, k, v, out, NULL);
        gpu->sync(gpu);
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (r >= 3) t[r - 3] = ms * 1e-3 / n;
    }
    return median(t, reps);
}

/* A random attention problem on the GPU; returns the time, checks rows `chk` against the CPU first. */
static double bench_attention(int T, int H, int G, int D, int S, int q_pos0, int reps, double *err_out) {
    size_t nq = (size_t)T * H * D, nkv = (size_t)S * G * D, no = nq;
    float *q = malloc(sizeof(float) * nq);
    uint16_t *kb = malloc(nkv * 2), *vb = malloc(nkv * 2);
    for (size_t i = 0; i < nq; i++) q[i] = 2.0f * mx_rng_float(&rng) - 1.0f;
    for (size_t i = 0; i < nkv; i++) kb[i] = mx_f32_to_bf16(2.0f * mx_rng_float(&rng) - 1.0f);
    for (size_t i = 0; i < nkv; i++) vb[i] = mx_f32_to_bf16(2.0f * mx_rng_float(&rng) - 1.0f);
    float *dq = gpu->alloc(gpu, sizeof(float) * nq), *dout = gpu->alloc(gpu, sizeof(float) * no);
    void *dk = gpu->alloc(gpu, nkv * 2), *dv = gpu->alloc(gpu, nkv * 2);
    CK(cudaMemcpy(dq, q, sizeof(float) * nq, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dk, kb, nkv * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dv, vb, nkv * 2, cudaMemcpyHostToDevice));
    CK(cudaMemset(dout, 0xFF, sizeof(float) * no));
    CK(cudaDeviceSynchronize());
    mx_attn_spec sp = {.n_q = T,
                       .n_head = H,
                       .n_kv_head = G,
                       .head_dim = D,
                       .v_dim = D,
                       .q_pos0 = q_pos0,
                       .n_slots = S,
                       .window = 0,
                       .causal = true,
                       .kv_lo = 0,
                       .kv_hi = q_pos0 + T - 1,
                       .scale = 1.0f / sqrtf((float)D),
                       .q_stride = (size_t)H * D,
                       .k_stride = (size_t)G * D,
                       .v_stride = (size_t)G * D,
                       .o_stride = (size_t)H * D};
    gpu->attention(gpu, &sp, dq, dk, dv, dout, NULL);
    gpu->sync(gpu);
    /* check: the last query row and one early row, all heads, against the CPU on fp32 copies of K/V */
    float *kf = malloc(sizeof(float) * nkv), *vf = malloc(sizeof(float) * nkv),
          *got = malloc(sizeof(float) * no);
    for (size_t i = 0; i < nkv; i++) kf[i] = mx_bf16_to_f32(kb[i]), vf[i] = mx_bf16_to_f32(vb[i]);
    CK(cudaMemcpy(got, dout, sizeof(float) * no, cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    int rows[2] = {T - 1, T / 3};
    float *ref = malloc(sizeof(float) * H * D);
    for (int i = 0; i < 2; i++) {
        mx_attn_spec s1 = sp;
        s1.n_q = 1;
        s1.q_pos0 = q_pos0 + rows[i];
        s1.kv_hi = s1.q_pos0;
        cpu->attention(cpu, &s1, q + (size_t)rows[i] * H * D, kf, vf, ref, NULL);
        for (int j = 0; j < H * D; j++) {
            double d = got[(size_t)rows[i] * H * D + j] - ref[j];
            num += isnan(d) ? 1e30 : d * d, den += (double)ref[j] * ref[j];
        }
    }
    *err_out = sqrt(num / den);
    double t = time_attention(&sp, dq, dk, dv, dout, reps, T == 1 ? 20 : 1);
    gpu->free(gpu, dq), gpu->free(gpu, dout), gpu->free(gpu, dk), gpu->free(gpu, dv);
    free(q), free(kb), free(vb), free(kf), free(vf), free(got), free(ref);
    return t;
}

int main(int argc, char **argv) {
    mx_err err = {0};
    if (mx_backend_cuda_create(0, &gpu, &err)) {
        fprintf(stderr, "bench_cuda: %s\n", err.msg);
        return 2;
    }
    cpu = mx_backend_cpu_create(0);
    mx_rng_seed(&rng, 42);
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    double bw = copy_bw();
    printf("device-to-device copy (read + write): %.2f TB/s\n\n", bw / 1e12);

    /* ---- model ---- */
    mx_model *m;
    if (argc < 2) goto kernels; /* no model given: the kernels only */
    if (mx_model_load(argv[1], NULL, &m, &err) || mx_model_place(m, gpu, &err)) {
        fprintf(stderr, "bench_cuda: %s\n", err.msg);
        return 2;
    }
    int V = m->cfg.vocab, PP = 4096, TG = 256;
    float *logits = malloc(sizeof(float) * V);
    int *toks = malloc(sizeof(int) * (PP + TG + 1));
    for (int i = 0; i < PP + TG + 1; i++) toks[i] = (int)(mx_rng_u64(&rng) % (uint64_t)V);
    mx_session *s;
    if (mx_session_create(m, gpu, PP + 1, &s, &err)) {
        fprintf(stderr, "bench_cuda: %s\n", err.msg);
        return 2;
    }
    double tp[5], td[5];
    for (int r = -2; r < 5; r++) { /* prefill 4096; two warm-ups (the second captures the CUDA graphs) */
        mx_session_truncate(s, 0);
        gpu->sync(gpu);
        double t0 = mx_now();
        mx_session_eval(s, toks, PP, logits, false, &err);
        double t = mx_now() - t0;
        if (r >= 0) tp[r] = PP / t;
    }
    mx_session_free(s);
    if (mx_session_create(m, gpu, 1024, &s, &err)) return 2;
    for (int r = 0; r < 6; r++) { /* decode TG tokens after an 8-token prompt */
        mx_session_truncate(s, 0);
        mx_session_eval(s, toks, 8, logits, false, &err);
        double t0 = mx_now();
        for (int i = 0; i < TG; i++) mx_session_eval(s, toks + 8 + i, 1, logits, false, &err);
        double t = mx_now() - t0;
        if (r) td[r - 1] = TG / t;
    }
    mx_session_free(s);
    double pp_tps = median(tp, 5), tg_tps = median(td, 5);
    double wbytes = (double)mx_model_decode_bytes(m);
    printf("SmolLM2-135M (%s) decode batch 1: %.0f tok/s (%.1f us/token; weights read %.1f MiB/token = %.2f "
           "TB/s "
           "if from DRAM)\n",
           m->cfg.name, tg_tps, 1e6 / tg_tps, wbytes / 1048576.0, wbytes * tg_tps / 1e12);
    printf("SmolLM2-135M prefill %d tokens: %.0f tok/s (%.1f ms)\n\n", PP, pp_tps, PP / pp_tps * 1e3);
    mx_model_unplace(m, gpu);
    mx_model_free(m);

    free(logits);
    free(toks);

kernels
    :; /* ---- attention kernels (as the backend dispatches them; every variant: bench/cuda/fa_variants.cu) ---- */
    struct {
        int H, D;
    } pf[2] = {{16, 128}, {32, 64}};
    int S = 16384;
    for (int i = 0; i < 2; i++) {
        double e, t = bench_attention(S, pf[i].H, pf[i].H, pf[i].D, S, 0, 10, &e);
        double flops = 4.0 * pf[i].H * (double)S * S * pf[i].D / 2;
        printf("prefill attention bf16 causal S %d H %d D %d: %.3f ms = %.1f TFLOP/s (check rel err %.1e)\n",
               S, pf[i].H, pf[i].D, t * 1e3, flops / t / 1e12, e);
    }
    int kvs[2] = {32768, 131072};
    for (int i = 0; i < 2; i++) {
        double e, t = bench_attention(1, 32, 8, 128, kvs[i], kvs[i] - 1, 50, &e);
        double bytes = 2.0 * kvs[i] * 8 * 128 * 2;
        printf(
            "decode attention 1 query GQA 32/8 D 128 KV %d: %.1f us = %.2f TB/s of K+V (%.0f%% of copy bw; "
            "check rel err %.1e)\n",
            kvs[i], t * 1e6, bytes / t / 1e12, 100.0 * bytes / t / bw, e);
    }
    mx_backend_destroy(cpu);
    mx_backend_cuda_destroy(gpu);
    return 0;
}
