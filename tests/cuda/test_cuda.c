/* test_cuda.c: every op of the CUDA backend against its CPU twin (the fp32 reference, exact mode), on fresh
 * random inputs of several shapes, then the default model's logits and greedy output on the GPU vs the CPU.
 * Run by `make test-cuda` on a machine with a GPU: ./build/cuda/test_cuda MODEL.gguf
 *
 * Every GPU output buffer is poisoned with NaN (0xFF bytes) before the op runs, so an element the op fails to
 * write fails the check. The measure is the relative L2 error ||gpu - cpu|| / ||cpu||; any NaN fails.
 * Tolerances (stated per op below):
 *   fp32 element-wise ops, norms, embedding, GEMV (decode matmul, fp32 math)   1e-5 .. 1e-4
 *   GEMM (prefill matmul: bf16 activations and weights, fp32 accumulation)     1e-2
 *   KV write (fp32 -> bf16 store)                                               4e-3
 *   attention (bf16 K/V exactly representable, Q and P rounded to bf16)        2e-2 on out, 2e-2 abs on lse
 *   model logits (30 layers, bf16 GEMMs, bf16 KV)                               6e-2, same argmax
 * Greedy decoding must produce the same tokens; a divergence is accepted only at a near tie (the CPU's logits
 * of the two tokens within 0.15), and is reported. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../src/backend/backend.h"
#include "../../src/backend/cuda/cuda_stream.h"
#include "../../src/base/rng.h"
#include "../../src/io/quant.h"
#include "../../src/model/session.h"
#include "../../src/run/generate.h"

int mx_backend_cuda_create(int device, mx_backend **out, mx_err *err);
void mx_backend_cuda_destroy(mx_backend *be);

static mx_backend *cpu, *gpu;
static mx_rng rng;
static int n_pass, n_fail;

static float frand(void) {
    return 2.0f * mx_rng_float(&rng) - 1.0f;
}
static float *rand_vec(size_t n, float scale) {
    float *v = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) v[i] = frand() * scale;
    return v;
}

#include "cuda_check.h"

static void *dev_from(const void *h, size_t bytes) {
    void *d = gpu->alloc(gpu, bytes);
    if (!d) exit(2);
    CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    CK(cudaDeviceSynchronize()); /* a pageable copy may return before its DMA lands; the backend's stream does not
                                    wait for the legacy stream */
    return d;
}
static void *dev_poisoned(size_t bytes) {
    void *d = gpu->alloc(gpu, bytes);
    if (!d) exit(2);
    CK(cudaMemset(d, 0xFF, bytes)); /* NaN as fp32 and as bf16 */
    CK(cudaDeviceSynchronize());    /* the backend's stream does not wait for the legacy stream */
    return d;
}
static void to_host(float *h, const void *d, size_t n) {
    gpu->sync(gpu);
    CK(cudaGetLastError());
    CK(cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost));
}

/* Relative L2 error; NaN anywhere (or an infinity where the reference has none) fails. */
static int check(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double num = 0, den = 0, maxd = 0;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (isinf(ref[i]) && got[i] == ref[i]) continue;
        if (isnan(got[i]) || isinf(got[i]) != isinf(ref[i])) {
            bad++;
            continue;
        }
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
        if (fabs(d) > maxd) maxd = fabs(d);
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    int ok = !bad && rel <= tol;
    printf("%s %-58s rel %.2e  max|d| %.2e  tol %.0e%s\n", ok ? "PASS" : "FAIL", what, rel, maxd, tol,
           bad ? "  (NaN/inf or unwritten elements)" : "");
    if (ok)
        n_pass++;
    else
        n_fail++;
    return ok;
}

/* ---------------------------------------------------------------- weights */

static void put_f16(uint8_t *p, float v) {
    uint16_t h = mx_f32_to_f16(v);
    memcpy(p, &h, 2);
}

/* A random weight of `type`, n_out rows of n_in: random quant bytes with small valid scales. */
static void *rand_weight(uint32_t type, int n_in, int n_out, size_t *bytes_out) {
    size_t rb = mx_dtype_row_bytes(type, n_in), bytes = rb * (size_t)n_out;
    uint8_t *w = malloc(bytes);
    *bytes_out = bytes;
    if (type == MX_F32) {
        float *f = (float *)w;
        for (size_t i = 0; i < (size_t)n_in * n_out; i++) f[i] = frand() * 0.5f;
        return w;
    }
    if (type == MX_F16 || type == MX_BF16) {
        uint16_t *h = (uint16_t *)w;
        for (size_t i = 0; i < (size_t)n_in * n_out; i++)
            h[i] = type == MX_F16 ? mx_f32_to_f16(frand() * 0.5f) : mx_f32_to_bf16(frand() * 0.5f);
        return w;
    }
    for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t)(mx_rng_u64(&rng) & 0xFF);
    const mx_dtype_info *info = mx_dtype_get(type);
    size_t nb = bytes / info->bytes;
    for (size_t b = 0; b < nb; b++) {
        uint8_t *blk = w + b * info->bytes;
        float d = 0.01f + 0.02f * mx_rng_float(&rng), m = 0.1f * frand();
        switch (type) {
        case MX_Q4_0:
        case MX_Q5_0:
        case MX_Q8_0:
            put_f16(blk, d);
            break;
        case MX_Q4_1:
        case MX_Q5_1:
            put_f16(blk, d), put_f16(blk + 2, m);
            break;
        case MX_Q4_K:
        case MX_Q5_K:
            put_f16(blk, d * 0.1f), put_f16(blk + 2, d * 0.05f);
            break;
        case MX_Q6_K:
            put_f16(blk + 208, d * 0.05f);
            break;
        default:
            break;
        }
    }
    return w;
}

static mx_tensor make_tensor(uint32_t type, int n_in, int n_out, const char *name) {
    mx_tensor t = {0};
    size_t bytes;
    t.name = name;
    t.type = type;
    t.n_dims = n_out > 1 ? 2 : 1;
    t.ne[0] = n_in, t.ne[1] = n_out, t.ne[2] = t.ne[3] = 1;
    t.data = rand_weight(type, n_in, n_out, &bytes);
    t.nbytes = bytes;
    mx_err err = {0};
    if (gpu->upload(gpu, &t, &err)) {
        fprintf(stderr, "upload: %s\n", err.msg);
        exit(2);
    }
    return t;
}
static void free_tensor(mx_tensor *t) {
    gpu->release(gpu, t);
    free((void *)t->data);
}

/* ---------------------------------------------------------------- ops */

static void test_matmul(void) {
    uint32_t types[] = {MX_F32,  MX_F16,  MX_BF16, MX_Q4_0, MX_Q4_1, MX_Q5_0,
                        MX_Q5_1, MX_Q8_0, MX_Q4_K, MX_Q5_K, MX_Q6_K};
    int shapes[][2] = {{256, 72}, {1536, 301}, {576, 1536}};
    int Ts[] = {1, 3, 8, 9, 130};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (size_t si = 0; si < 3; si++) {
            int n_in = shapes[si][0], n_out = shapes[si][1];
            if (types[ti] >= MX_Q4_K && types[ti] <= MX_Q8_K && n_in % 256) continue;
            mx_tensor w = make_tensor(types[ti], n_in, n_out, "w");
            for (size_t k = 0; k < sizeof Ts / sizeof Ts[0]; k++) {
                int T = Ts[k];
                float *x = rand_vec((size_t)T * n_in, 1.0f), *ref = malloc(sizeof(float) * T * n_out);
                float *got = malloc(sizeof(float) * T * n_out);
                cpu->matmul(cpu, &w, x, ref, T);
                float *dx = dev_from(x, sizeof(float) * T * n_in),
                      *dy = dev_poisoned(sizeof(float) * T * n_out);
                gpu->matmul(gpu, &w, dx, dy, T);
                to_host(got, dy, (size_t)T * n_out);
                char name[96];
                snprintf(name, sizeof name, "matmul %-5s %4dx%-4d T=%-3d (%s)", mx_dtype_name(types[ti]),
                         n_out, n_in, T, T <= 8 ? "GEMV" : "GEMM");
                check(name, got, ref, (size_t)T * n_out, T <= 8 ? 1e-4 : 1e-2);
                gpu->free(gpu, dx), gpu->free(gpu, dy);
                free(x), free(ref), free(got);
            }
            free_tensor(&w);
        }
}

static void test_embed(void) {
    uint32_t types[] = {MX_Q8_0, MX_Q4_1, MX_F32, MX_F16, MX_Q6_K, MX_Q4_K};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        int C = 512, V = 1000, T = 37;
        mx_tensor w = make_tensor(types[ti], C, V, "embd");
        int ids[37];
        for (int t = 0; t < T; t++) ids[t] = (int)(mx_rng_u64(&rng) % V);
        float *ref = malloc(sizeof(float) * T * C), *got = malloc(sizeof(float) * T * C);
        cpu->embed(cpu, &w, ids, T, ref);
        float *d = dev_poisoned(sizeof(float) * T * C);
        gpu->embed(gpu, &w, ids, T, d);
        to_host(got, d, (size_t)T * C);
        char name[64];
        snprintf(name, sizeof name, "embed %s C=%d T=%d", mx_dtype_name(types[ti]), C, T);
        check(name, got, ref, (size_t)T * C, 1e-6);
        gpu->free(gpu, d), free(ref), free(got), free_tensor(&w);
    }
}

static void test_norms(void) {
    int cases[][2] = {{7, 576}, {1, 4096}, {33, 100}};
    for (int k = 0; k < 3; k++) {
        int T = cases[k][0], C = cases[k][1];
        mx_tensor w = make_tensor(MX_F32, C, 1, "norm"), b = make_tensor(MX_F32, C, 1, "bias");
        float *x = rand_vec((size_t)T * C, 3.0f), *ref = malloc(sizeof(float) * T * C),
              *got = malloc(sizeof(float) * T * C);
        float *dx = dev_from(x, sizeof(float) * T * C), *dy = dev_poisoned(sizeof(float) * T * C);
        char name[64];
        cpu->rmsnorm(cpu, x, &w, ref, T, C, 1e-5f);
        gpu->rmsnorm(gpu, dx, &w, dy, T, C, 1e-5f);
        to_host(got, dy, (size_t)T * C);
        snprintf(name, sizeof name, "rmsnorm T=%d C=%d", T, C);
        check(name, got, ref, (size_t)T * C, 1e-5);
        for (int withb = 0; withb < 2; withb++) {
            CK(cudaMemset(dy, 0xFF, sizeof(float) * T * C));
            CK(cudaDeviceSynchronize());
            cpu->layernorm(cpu, x, &w, withb ? &b : NULL, ref, T, C, 1e-5f);
            gpu->layernorm(gpu, dx, &w, withb ? &b : NULL, dy, T, C, 1e-5f);
            to_host(got, dy, (size_t)T * C);
            snprintf(name, sizeof name, "layernorm T=%d C=%d %s", T, C, withb ? "bias" : "no bias");
            check(name, got, ref, (size_t)T * C, 1e-5);
        }
        gpu->free(gpu, dx), gpu->free(gpu, dy), free(x), free(ref), free(got);
        free_tensor(&w), free_tensor(&b);
    }
}

static void test_rope(void) {
    int cases[][5] = {
        {5, 9, 64, 64, 0}, {3, 4, 128, 128, 4000}, {17, 3, 64, 32, 100000}, {1, 32, 128, 64, 131071}};
    for (int k = 0; k < 4; k++)
        for (int mode = 0; mode < 2; mode++) {
            int T = cases[k][0], H = cases[k][1], D = cases[k][2], rd = cases[k][3], pos0 = cases[k][4];
            size_t n = (size_t)T * H * D;
            float *x = rand_vec(n, 1.0f), *got = malloc(sizeof(float) * n);
            float *dx = dev_from(x, sizeof(float) * n);
            cpu->rope(cpu, x, T, H, D, rd, pos0, 10000.0f, (mx_rope_mode)mode);
            gpu->rope(gpu, dx, T, H, D, rd, pos0, 10000.0f, (mx_rope_mode)mode);
            to_host(got, dx, n);
            char name[80];
            snprintf(name, sizeof name, "rope %s T=%d H=%d D=%d rope_dim=%d pos0=%d",
                     mode ? "half" : "adjacent", T, H, D, rd, pos0);
            check(name, got, x, n, 2e-5);
            gpu->free(gpu, dx), free(x), free(got);
        }
}

static void test_elementwise(void) {
    int sizes[] = {1, 1000, 12345};
    for (int k = 0; k < 3; k++) {
        int n = sizes[k];
        float *a = rand_vec(n, 4.0f), *b = rand_vec(n, 2.0f), *got = malloc(sizeof(float) * n);
        float *ref = malloc(sizeof(float) * n);
        char name[64];
        const char *names[] = {"swiglu", "gelu", "add"};
        for (int op = 0; op < 3; op++) {
            memcpy(ref, a, sizeof(float) * n);
            float *da = dev_from(a, sizeof(float) * n), *db = dev_from(b, sizeof(float) * n);
            if (op == 0) cpu->swiglu(cpu, ref, b, n), gpu->swiglu(gpu, da, db, n);
            if (op == 1) cpu->gelu(cpu, ref, n), gpu->gelu(gpu, da, n);
            if (op == 2) cpu->add(cpu, ref, b, n), gpu->add(gpu, da, db, n);
            to_host(got, da, n);
            snprintf(name, sizeof name, "%s n=%d", names[op], n);
            check(name, got, ref, n, 1e-6);
            gpu->free(gpu, da), gpu->free(gpu, db);
        }
        free(a), free(b), free(got), free(ref);
    }
    int T = 9, n = 300;
    mx_tensor bias = make_tensor(MX_F32, n, 1, "bias");
    float *y = rand_vec((size_t)T * n, 1.0f), *got = malloc(sizeof(float) * T * n);
    float *dy = dev_from(y, sizeof(float) * T * n);
    cpu->add_bias(cpu, y, &bias, T, n);
    gpu->add_bias(gpu, dy, &bias, T, n);
    to_host(got, dy, (size_t)T * n);
    check("add_bias T=9 n=300", got, y, (size_t)T * n, 1e-6);
    gpu->free(gpu, dy), free(y), free(got), free_tensor(&bias);
}

static float *bf16_to_f32_arr(const uint16_t *h, size_t n) {
    float *f = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) f[i] = mx_bf16_to_f32(h[i]);
    return f;
}

static void test_kv_write(void) {
    int cases[][4] = {{70, 192, 100, 128}, {1, 1024, 5000, 8192}, {300, 64, 0, 300}};
    for (int k = 0; k < 3; k++) {
        int T = cases[k][0], n = cases[k][1], pos0 = cases[k][2], S = cases[k][3];
        size_t tot = (size_t)S * n;
        float *src = rand_vec((size_t)T * n, 2.0f), *ref = malloc(sizeof(float) * tot);
        for (size_t i = 0; i < tot; i++) ref[i] = NAN;
        cpu->kv_write(cpu, ref, src, T, n, pos0, S);
        float *dsrc = dev_from(src, sizeof(float) * T * n);
        void *store = dev_poisoned(tot * 2);
        gpu->kv_write(gpu, store, dsrc, T, n, pos0, S);
        gpu->sync(gpu);
        uint16_t *h = malloc(tot * 2);
        CK(cudaMemcpy(h, store, tot * 2, cudaMemcpyDeviceToHost));
        float *got = bf16_to_f32_arr(h, tot);
        /* compare written slots; unwritten ones must still hold the poison on both sides */
        size_t untouched_bad = 0;
        for (size_t i = 0; i < tot; i++)
            if (isnan(ref[i]) != isnan(got[i])) untouched_bad++;
        for (size_t i = 0; i < tot; i++)
            if (isnan(ref[i])) ref[i] = got[i] = 0.0f;
        char name[80];
        snprintf(name, sizeof name, "kv_write T=%d n=%d pos0=%d slots=%d%s", T, n, pos0, S,
                 untouched_bad ? " (WRONG SLOTS)" : "");
        if (untouched_bad) got[0] = NAN;
        check(name, got, ref, tot, 4e-3);
        gpu->free(gpu, dsrc), gpu->free(gpu, store);
        free(src), free(ref), free(h), free(got);
    }
}

typedef struct {
    const char *name;
    int n_q, H, G, D, Dv, q_pos0, n_slots, window, causal, kv_lo, kv_hi;
    int scale_kind; /* 0: 1/sqrt(D); 1: 0 (uniform weights); 2: -0.3 (the prefill kernels take scale > 0 only) */
} attn_case;

static void test_attention_case(const attn_case *c) {
    mx_attn_spec sp = {.n_q = c->n_q,
                       .n_head = c->H,
                       .n_kv_head = c->G,
                       .head_dim = c->D,
                       .v_dim = c->Dv,
                       .q_pos0 = c->q_pos0,
                       .n_slots = c->n_slots,
                       .window = c->window,
                       .causal = c->causal,
                       .kv_lo = c->kv_lo,
                       .kv_hi = c->kv_hi,
                       .scale = c->scale_kind == 1   ? 0.0f
                                : c->scale_kind == 2 ? -0.3f
                                                     : 1.0f / sqrtf((float)c->D),
                       .q_stride = (size_t)c->H * c->D,
                       .k_stride = (size_t)c->G * c->D,
                       .v_stride = (size_t)c->G * c->Dv,
                       .o_stride = (size_t)c->H * c->Dv};
    size_t nq = (size_t)c->n_q * sp.q_stride, nk = (size_t)c->n_slots * sp.k_stride,
           nv = (size_t)c->n_slots * sp.v_stride, no = (size_t)c->n_q * sp.o_stride,
           nl = (size_t)c->n_q * c->H;
    float *q = rand_vec(nq, 2.0f), *k = rand_vec(nk, 1.0f), *v = rand_vec(nv, 1.0f);
    uint16_t *kb = malloc(nk * 2), *vb = malloc(nv * 2);
    for (size_t i = 0; i < nk; i++) kb[i] = mx_f32_to_bf16(k[i]), k[i] = mx_bf16_to_f32(kb[i]);
    for (size_t i = 0; i < nv; i++) vb[i] = mx_f32_to_bf16(v[i]), v[i] = mx_bf16_to_f32(vb[i]);
    float *ref = malloc(sizeof(float) * no), *ref_lse = malloc(sizeof(float) * nl);
    float *got = malloc(sizeof(float) * no), *got_lse = malloc(sizeof(float) * nl);
    cpu->attention(cpu, &sp, q, k, v, ref, ref_lse);
    float *dq = dev_from(q, sizeof(float) * nq);
    void *dk = dev_from(kb, nk * 2), *dv = dev_from(vb, nv * 2);
    float *dout = dev_poisoned(sizeof(float) * no), *dlse = dev_poisoned(sizeof(float) * nl);
    gpu->attention(gpu, &sp, dq, dk, dv, dout, dlse);
    to_host(got, dout, no);
    to_host(got_lse, dlse, nl);
    char name[128];
    snprintf(name, sizeof name, "attention %s: out", c->name);
    check(name, got, ref, no, 2e-2);
    /* lse: absolute error (it is a log) */
    double maxd = 0;
    int bad = 0;
    for (size_t i = 0; i < nl; i++) {
        if (isinf(ref_lse[i]) && got_lse[i] == ref_lse[i]) continue;
        if (isnan(got_lse[i]) || isinf(got_lse[i]))
            bad = 1;
        else if (fabs(got_lse[i] - ref_lse[i]) > maxd)
            maxd = fabs(got_lse[i] - ref_lse[i]);
    }
    int ok = !bad && maxd <= 2e-2;
    printf("%s attention %s: lse%*s max|d| %.2e  tol 2e-02\n", ok ? "PASS" : "FAIL", c->name,
           (int)(44 - strlen(c->name)), "", maxd);
    ok ? n_pass++ : n_fail++;
    /* without lse (NULL must be accepted) */
    CK(cudaMemset(dout, 0xFF, sizeof(float) * no));
    CK(cudaDeviceSynchronize());
    gpu->attention(gpu, &sp, dq, dk, dv, dout, NULL);
    to_host(got, dout, no);
    snprintf(name, sizeof name, "attention %s: out, lse=NULL", c->name);
    check(name, got, ref, no, 2e-2);
    gpu->free(gpu, dq), gpu->free(gpu, dk), gpu->free(gpu, dv), gpu->free(gpu, dout), gpu->free(gpu, dlse);
    free(q), free(k), free(v), free(kb), free(vb), free(ref), free(ref_lse), free(got), free(got_lse);
}

static void test_attention(void) {
    const attn_case cases[] = {
        /* name                              T    H   G    D   Dv  pos0  slots  W  causal lo   hi  scale */
        {"prefill causal D64 GQA 9/3", 300, 9, 3, 64, 64, 0, 300, 0, 1, 0, 299, 0},
        {"prefill causal D128 GQA 8/2", 257, 8, 2, 128, 128, 0, 257, 0, 1, 0, 256, 0},
        {"prefill chunk at pos 200 D64", 100, 6, 2, 64, 64, 200, 512, 0, 1, 0, 299, 0},
        {"prefill window 50 D128 MHA", 300, 4, 4, 128, 128, 0, 300, 50, 1, 0, 299, 0},
        {"prefill ring W64 slots163 D64", 100, 9, 3, 64, 64, 400, 163, 64, 1, 337, 499, 0},
        {"prefill non-causal [10,400] D64", 130, 4, 2, 64, 64, 50, 512, 0, 0, 10, 400, 0},
        {"prefill non-causal D128 1 row", 1, 4, 4, 128, 128, 0, 700, 0, 0, 0, 699, 0},
        {"prefill empty rows (kv_lo 5)", 40, 2, 1, 64, 64, 0, 64, 0, 1, 5, 39, 0},
        /* several query blocks per head (the wgmma kernel's 128/192-row blocks and 128-key tiles) */
        {"prefill causal D128 T1000 GQA 8/2", 1000, 8, 2, 128, 128, 0, 1000, 0, 1, 0, 999, 0},
        {"prefill causal D64 T2048 GQA 8/2", 2048, 8, 2, 64, 64, 0, 2048, 0, 1, 0, 2047, 0},
        {"prefill causal D64 T1024 pos 1500 GQA 4/1", 1024, 4, 1, 64, 64, 1500, 4096, 0, 1, 0, 2523, 0},
        {"prefill causal D128 T1000 pos 777 GQA 4/1", 1000, 4, 1, 128, 128, 777, 2048, 0, 1, 0, 1776, 0},
        {"prefill non-causal D128 T1000 [0,699]", 1000, 4, 1, 128, 128, 0, 700, 0, 0, 0, 699, 0},
        {"prefill non-causal D64 T2048 [100,899]", 2048, 4, 2, 64, 64, 0, 1024, 0, 0, 100, 899, 0},
        {"prefill window 300 D64 T2048 GQA 4/2", 2048, 4, 2, 64, 64, 0, 2048, 300, 1, 0, 2047, 0},
        {"prefill ring W512 slots1200 D128 T600", 600, 4, 2, 128, 128, 3100, 1200, 512, 1, 2500, 3699, 0},
        {"decode T1 KV5001 D128 GQA 32/8", 1, 32, 8, 128, 128, 5000, 6000, 0, 1, 0, 5000, 0},
        {"decode T1 KV70 D64 GQA 9/3", 1, 9, 3, 64, 64, 69, 100, 0, 1, 0, 69, 0},
        {"decode T1 ring W100 D64", 1, 9, 3, 64, 64, 1000, 100, 100, 1, 901, 1000, 0},
        {"decode T3 D64 MQA 4/1", 3, 4, 1, 64, 64, 77, 128, 0, 1, 0, 79, 0},
        {"decode T2 KV20000 D64 window 3000", 2, 8, 2, 64, 64, 19998, 20000, 3000, 1, 0, 19999, 0},
        {"decode T1 KV40000 D128 GQA 8/8", 1, 8, 8, 128, 128, 39999, 40000, 0, 1, 0, 39999, 0},
        {"decode T1 D128 GQA 10/2 (R 5)", 1, 10, 2, 128, 128, 3000, 4096, 0, 1, 0, 3000, 0},
        {"decode T2 D128 ring W700 GQA 8/2", 2, 8, 2, 128, 128, 5000, 700, 700, 1, 4302, 5001, 0},
        {"decode T1 D64 kv_lo 1000 GQA 12/3", 1, 12, 3, 64, 64, 9000, 9100, 0, 1, 1000, 9000, 0},
        /* every row count k_decode2 is compiled for (RM 2, 3, 4, 8), with and without split merges */
        {"decode T1 D128 GQA 8/4 (R 2) KV9000", 1, 8, 4, 128, 128, 8999, 9000, 0, 1, 0, 8999, 0},
        {"decode T1 D64 GQA 9/3 (R 3) KV12000", 1, 9, 3, 64, 64, 11999, 12000, 0, 1, 0, 11999, 0},
        {"decode T1 D128 GQA 6/2 (R 3) ring W500", 1, 6, 2, 128, 128, 2000, 600, 500, 1, 1401, 2000, 0},
        {"decode T1 D64 GQA 8/4 (R 2) KV40", 1, 8, 4, 64, 64, 39, 64, 0, 1, 0, 39, 0},
        {"generic D96", 20, 4, 2, 96, 96, 10, 64, 0, 1, 0, 29, 0},
        {"generic MLA-like D576 Dv512", 5, 4, 1, 576, 512, 30, 64, 0, 1, 0, 34, 0},
        /* a scale that is not positive: prefill shapes go to k_generic, decode kernels scale before the max */
        {"prefill causal D128 scale 0", 200, 4, 2, 128, 128, 0, 200, 0, 1, 0, 199, 1},
        {"prefill causal D64 scale -0.3 GQA 8/2", 300, 8, 2, 64, 64, 0, 300, 0, 1, 0, 299, 2},
        {"decode T1 D128 scale -0.3 GQA 8/2", 1, 8, 2, 128, 128, 999, 1000, 0, 1, 0, 999, 2},
        {"decode T1 D64 scale 0 GQA 9/3", 1, 9, 3, 64, 64, 499, 512, 0, 1, 0, 499, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) test_attention_case(&cases[i]);
}

/* ---------------------------------------------------------------- MoE / MLA / MKA ops */

static void test_blocks(void) {
    char name[96];
    { /* fill */
        size_t n = 10007;
        float *d = dev_poisoned(sizeof(float) * n), *got = malloc(sizeof(float) * n),
              *ref = malloc(sizeof(float) * n);
        gpu->fill(gpu, d, n, 0.375f);
        cpu->fill(cpu, ref, n, 0.375f);
        to_host(got, d, n);
        check("fill n=10007", got, ref, n, 0);
        gpu->free(gpu, d), free(got), free(ref);
    }
    { /* copy3d with a broadcast source stride */
        int n0 = 40, n1 = 7, n2 = 5;
        size_t ds1 = 50, ds2 = 400, ss1 = 0, ss2 = 64, nd = ds2 * n2, ns = ss2 * n2;
        float *src = rand_vec(ns, 1.0f), *ref = malloc(sizeof(float) * nd), *got = malloc(sizeof(float) * nd);
        float *dsrc = dev_from(src, sizeof(float) * ns), *dd = dev_poisoned(sizeof(float) * nd);
        for (size_t i = 0; i < nd; i++) ref[i] = 0.0f;
        gpu->fill(gpu, dd, nd, 0.0f);
        cpu->copy3d(cpu, ref, src, n0, n1, n2, ds1, ss1, ds2, ss2);
        gpu->copy3d(gpu, dd, dsrc, n0, n1, n2, ds1, ss1, ds2, ss2);
        to_host(got, dd, nd);
        check("copy3d 40x7x5 (broadcast rows)", got, ref, nd, 0);
        gpu->free(gpu, dsrc), gpu->free(gpu, dd), free(src), free(ref), free(got);
    }
    { /* matmul_t */
        uint32_t types[] = {MX_F32, MX_Q8_0, MX_Q4_1, MX_Q6_K};
        int Ts[] = {1, 5, 70};
        for (size_t ti = 0; ti < 4; ti++) {
            int n_in = 512, n_out = 192;
            mx_tensor w = make_tensor(types[ti], n_in, n_out, "wt");
            for (int k = 0; k < 3; k++) {
                int T = Ts[k];
                float *x = rand_vec((size_t)T * n_out, 1.0f), *ref = malloc(sizeof(float) * T * n_in),
                      *got = malloc(sizeof(float) * T * n_in);
                cpu->matmul_t(cpu, &w, x, ref, T);
                float *dx = dev_from(x, sizeof(float) * T * n_out),
                      *dy = dev_poisoned(sizeof(float) * T * n_in);
                gpu->matmul_t(gpu, &w, dx, dy, T);
                to_host(got, dy, (size_t)T * n_in);
                snprintf(name, sizeof name, "matmul_t %s %dx%d T=%d (bf16 GEMM)", mx_dtype_name(types[ti]),
                         n_out, n_in, T);
                check(name, got, ref, (size_t)T * n_in, 1e-2);
                gpu->free(gpu, dx), gpu->free(gpu, dy), free(x), free(ref), free(got);
            }
            free_tensor(&w);
        }
    }
    { /* kv_read after kv_write (bf16 store): against the CPU reading its fp32 store of the same bf16 values
       */
        int T = 9, n = 192, S = 20, pos0 = 15;
        float *src = rand_vec((size_t)T * n, 1.0f);
        for (int i = 0; i < T * n; i++) src[i] = mx_bf16_to_f32(mx_f32_to_bf16(src[i]));
        float *cst = malloc(sizeof(float) * S * n), *ref = malloc(sizeof(float) * T * n),
              *got = malloc(sizeof(float) * T * n);
        cpu->kv_write(cpu, cst, src, T, n, pos0, S);
        cpu->kv_read(cpu, cst, ref, T, n, pos0, S);
        float *dsrc = dev_from(src, sizeof(float) * T * n), *dd = dev_poisoned(sizeof(float) * T * n);
        void *gst = dev_poisoned((size_t)S * n * 2);
        gpu->kv_write(gpu, gst, dsrc, T, n, pos0, S);
        gpu->kv_read(gpu, gst, dd, T, n, pos0, S);
        to_host(got, dd, (size_t)T * n);
        check("kv_read T=9 n=192 ring slots 20 pos0 15", got, ref, (size_t)T * n, 0);
        gpu->free(gpu, dsrc), gpu->free(gpu, dd), gpu->free(gpu, gst), free(src), free(cst), free(ref),
            free(got);
    }
    { /* moe_route */
        int T = 13, E = 16, k = 3;
        float *lg = rand_vec((size_t)T * E, 3.0f);
        float *dl = dev_from(lg, sizeof(float) * T * E);
        for (int norm = 0; norm < 2; norm++) {
            int ic[39], ig[39];
            float wc[39], wg[39];
            cpu->moe_route(cpu, lg, T, E, k, norm, 1.5f, ic, wc);
            gpu->moe_route(gpu, dl, T, E, k, norm, 1.5f, ig, wg);
            int same = !memcmp(ic, ig, sizeof ic);
            snprintf(name, sizeof name, "moe_route T=13 E=16 k=3 norm=%d%s", norm,
                     same ? "" : " (IDS DIFFER)");
            if (!same) wg[0] = NAN;
            check(name, wg, wc, (size_t)T * k, 1e-6);
        }
        gpu->free(gpu, dl), free(lg);
    }
    { /* moe_route with ties (a row of equal logits, a duplicated maximum: the lower expert first), the norm
       * and scale flags, one token (decode: routed on the host) and many (on the device) */
        struct {
            int T, E, k, norm;
            float scale;
        } cf[] = {{1, 8, 2, 1, 1.0f},   {300, 8, 2, 1, 1.0f}, {57, 64, 6, 0, 2.5f},
                  {57, 64, 6, 1, 2.5f}, {40, 5, 5, 1, 1.0f},  {129, 160, 8, 0, 16.0f}};
        for (size_t ci = 0; ci < sizeof cf / sizeof cf[0]; ci++) {
            int T = cf[ci].T, E = cf[ci].E, k = cf[ci].k, n = T * k;
            float *lg = rand_vec((size_t)T * E, 3.0f);
            for (int t = 0; t < T; t += 7) /* every 7th token: all logits equal */
                for (int e = 0; e < E; e++) lg[(size_t)t * E + e] = 0.25f;
            for (int t = 3; t < T; t += 5) { /* others: the maximum twice */
                float *r = lg + (size_t)t * E;
                int a = (int)(mx_rng_u64(&rng) % (uint64_t)E), b = (int)(mx_rng_u64(&rng) % (uint64_t)E);
                r[a] = r[b] = 9.0f;
            }
            float *dl = dev_from(lg, sizeof(float) * T * E);
            int *ic = malloc(sizeof(int) * n), *ig = malloc(sizeof(int) * n);
            float *wc = malloc(sizeof(float) * n), *wg = malloc(sizeof(float) * n);
            cpu->moe_route(cpu, lg, T, E, k, cf[ci].norm, cf[ci].scale, ic, wc);
            gpu->moe_route(gpu, dl, T, E, k, cf[ci].norm, cf[ci].scale, ig, wg);
            int same = !memcmp(ic, ig, sizeof(int) * n);
            snprintf(name, sizeof name, "moe_route ties T=%d E=%d k=%d norm=%d scale=%g%s", T, E, k,
                     cf[ci].norm, cf[ci].scale, same ? "" : " (IDS DIFFER)");
            if (!same) wg[0] = NAN;
            check(name, wg, wc, (size_t)n, 1e-6);
            gpu->free(gpu, dl), free(lg), free(ic), free(ig), free(wc), free(wg);
        }
    }
    { /* gather_rows / scatter_add_rows (a repeated index) */
        int R = 300, n = 96, rows = 50;
        int idx[50];
        float wts[50];
        for (int i = 0; i < rows; i++) idx[i] = (int)(mx_rng_u64(&rng) % R), wts[i] = frand();
        idx[7] = idx[3];
        float *src = rand_vec((size_t)R * n, 1.0f), *ref = malloc(sizeof(float) * R * n),
              *got = malloc(sizeof(float) * R * n);
        float *dsrc = dev_from(src, sizeof(float) * R * n), *dg = dev_poisoned(sizeof(float) * rows * n);
        cpu->gather_rows(cpu, ref, src, idx, rows, n);
        gpu->gather_rows(gpu, dg, dsrc, idx, rows, n);
        to_host(got, dg, (size_t)rows * n);
        check("gather_rows 50 of 300 x 96", got, ref, (size_t)rows * n, 0);
        float *acc = rand_vec((size_t)R * n, 1.0f), *dacc = dev_from(acc, sizeof(float) * R * n);
        float *part = rand_vec((size_t)rows * n, 1.0f), *dpart = dev_from(part, sizeof(float) * rows * n);
        cpu->scatter_add_rows(cpu, acc, part, idx, wts, rows, n);
        gpu->scatter_add_rows(gpu, dacc, dpart, idx, wts, rows, n);
        to_host(got, dacc, (size_t)R * n);
        check("scatter_add_rows 50 into 300 x 96 (repeated index)", got, acc, (size_t)R * n, 1e-6);
        gpu->free(gpu, dsrc), gpu->free(gpu, dg), gpu->free(gpu, dacc), gpu->free(gpu, dpart);
        free(src), free(ref), free(got), free(acc), free(part);
    }
    { /* scatter_add_rows with distinct indices (an MoE expert's tokens: every row at once), twice into one
       * accumulator; 3000 rows go through the eager path even when recording */
        int R = 4000, n = 160;
        int rows_of[2] = {700, 3000};
        int *perm = malloc(sizeof(int) * R);
        float *acc = rand_vec((size_t)R * n, 1.0f), *got = malloc(sizeof(float) * R * n);
        float *dacc = dev_from(acc, sizeof(float) * R * n);
        for (int k = 0; k < 2; k++) {
            int rows = rows_of[k];
            for (int i = 0; i < R; i++) perm[i] = i;
            for (int i = R - 1; i > 0; i--) { /* a random permutation; its first `rows` are the targets */
                int j = (int)(mx_rng_u64(&rng) % (uint64_t)(i + 1)), t = perm[i];
                perm[i] = perm[j], perm[j] = t;
            }
            float *wts = rand_vec((size_t)rows, 1.0f), *part = rand_vec((size_t)rows * n, 1.0f);
            float *dpart = dev_from(part, sizeof(float) * rows * n);
            cpu->scatter_add_rows(cpu, acc, part, perm, wts, rows, n);
            gpu->scatter_add_rows(gpu, dacc, dpart, perm, wts, rows, n);
            gpu->free(gpu, dpart), free(wts), free(part);
        }
        to_host(got, dacc, (size_t)R * n);
        check("scatter_add_rows 700 + 3000 distinct into 4000 x 160", got, acc, (size_t)R * n, 1e-6);
        gpu->free(gpu, dacc), free(perm), free(acc), free(got);
    }
    { /* tanh_, softmax_rows, scale_add_rows */
        int T = 7, n = 1500;
        size_t N = (size_t)T * n;
        float *a = rand_vec(N, 4.0f), *ref = malloc(sizeof(float) * N), *got = malloc(sizeof(float) * N);
        float *da = dev_from(a, sizeof(float) * N);
        memcpy(ref, a, sizeof(float) * N);
        cpu->tanh_(cpu, ref, (int)N);
        gpu->tanh_(gpu, da, (int)N);
        to_host(got, da, N);
        check("tanh_ n=10500", got, ref, N, 1e-6);
        CK(cudaMemcpy(da, a, sizeof(float) * N, cudaMemcpyHostToDevice));
        CK(cudaDeviceSynchronize());
        memcpy(ref, a, sizeof(float) * N);
        cpu->softmax_rows(cpu, ref, T, n);
        gpu->softmax_rows(gpu, da, T, n);
        to_host(got, da, N);
        check("softmax_rows T=7 n=1500", got, ref, N, 1e-5);
        float *x = rand_vec(N, 1.0f), *w = rand_vec((size_t)T * 3, 1.0f);
        float *dx = dev_from(x, sizeof(float) * N), *dw = dev_from(w, sizeof(float) * T * 3);
        CK(cudaMemcpy(da, a, sizeof(float) * N, cudaMemcpyHostToDevice));
        CK(cudaDeviceSynchronize());
        memcpy(ref, a, sizeof(float) * N);
        cpu->scale_add_rows(cpu, ref, x, n, w + 1, 3, T, n);
        gpu->scale_add_rows(gpu, da, dx, n, dw + 1, 3, T, n);
        cpu->scale_add_rows(cpu, ref, x, 0, w, 3, T, n);
        gpu->scale_add_rows(gpu, da, dx, 0, dw, 3, T, n);
        to_host(got, da, N);
        check("scale_add_rows T=7 n=1500 (strided w, broadcast x)", got, ref, N, 1e-6);
        gpu->free(gpu, da), gpu->free(gpu, dx), gpu->free(gpu, dw), free(a), free(ref), free(got), free(x),
            free(w);
    }
    { /* lse_merge: R = 1..4 parts (one lse of part 1 at -inf: ignored; row 0 head 1 -inf in every part: 0 and
       * -inf), strided parts as Star's messages are, with and without the merged lse */
        int T = 5, H = 6, Dv = 72;
        size_t n_out = (size_t)T * H * Dv, ps = n_out + (size_t)T * H + 13;
        for (int R = 1; R <= 4; R++) {
            float *parts = rand_vec(ps * R, 2.0f), *ref = malloc(sizeof(float) * n_out),
                  *got = malloc(sizeof(float) * n_out), *rl = malloc(sizeof(float) * T * H),
                  *gl = malloc(sizeof(float) * T * H);
            for (int r = 0; r < R; r++) {
                float *l = parts + (size_t)r * ps + n_out;
                for (int i = 0; i < T * H; i++) l[i] = 8.0f * frand(); /* spread: weights far from equal */
                l[1] = -INFINITY;
                if (r == 1) l[7] = -INFINITY;
            }
            float *dp = dev_from(parts, sizeof(float) * ps * R), *dout = dev_poisoned(sizeof(float) * n_out),
                  *dl = dev_poisoned(sizeof(float) * T * H);
            cpu->lse_merge(cpu, parts, parts + n_out, ps, R, T, H, Dv, ref, rl);
            gpu->lse_merge(gpu, dp, dp + n_out, ps, R, T, H, Dv, dout, dl);
            to_host(got, dout, n_out);
            to_host(gl, dl, (size_t)T * H);
            char what[64];
            snprintf(what, sizeof what, "lse_merge R=%d T=5 H=6 Dv=72 out", R);
            check(what, got, ref, n_out, 1e-6);
            snprintf(what, sizeof what, "lse_merge R=%d lse", R);
            check(what, gl, rl, (size_t)T * H, 1e-6);
            CK(cudaMemset(dout, 0xFF, sizeof(float) * n_out));
            gpu->lse_merge(gpu, dp, dp + n_out, ps, R, T, H, Dv, dout, NULL);
            to_host(got, dout, n_out);
            snprintf(what, sizeof what, "lse_merge R=%d out, lse NULL", R);
            check(what, got, ref, n_out, 1e-6);
            gpu->free(gpu, dp), gpu->free(gpu, dout), gpu->free(gpu, dl);
            free(parts), free(ref), free(got), free(rl), free(gl);
        }
    }
    { /* prefix_mean over two calls (carried sums), ring slots */
        int C = 200, S = 16, T1 = 11, T2 = 9;
        float *x = rand_vec((size_t)(T1 + T2) * C, 1.0f), *sc = malloc(sizeof(float) * S * C);
        float *ref = malloc(sizeof(float) * (T1 + T2) * C), *got = malloc(sizeof(float) * (T1 + T2) * C);
        float *dx = dev_from(x, sizeof(float) * (T1 + T2) * C), *ds = dev_poisoned(sizeof(float) * S * C);
        float *dm = dev_poisoned(sizeof(float) * (T1 + T2) * C);
        cpu->prefix_mean(cpu, x, T1, C, sc, 0, S, ref);
        cpu->prefix_mean(cpu, x + (size_t)T1 * C, T2, C, sc, T1, S, ref + (size_t)T1 * C);
        gpu->prefix_mean(gpu, dx, T1, C, ds, 0, S, dm);
        gpu->prefix_mean(gpu, dx + (size_t)T1 * C, T2, C, ds, T1, S, dm + (size_t)T1 * C);
        to_host(got, dm, (size_t)(T1 + T2) * C);
        check("prefix_mean C=200 11+9 tokens, 16 slots", got, ref, (size_t)(T1 + T2) * C, 1e-6);
        gpu->free(gpu, dx), gpu->free(gpu, ds), gpu->free(gpu, dm), free(x), free(sc), free(ref), free(got);
    }
}

/* ---------------------------------------------------------------- row views
 * A view of rows [r0, r0 + n) of a placed weight (backend.h: row_views): data and dev both offset by r0 rows, as
 * moe.c's expert slices and mla.c's per-head W_uk/W_uv ranges make them. The GPU resolves dev to its parent's
 * quantized bytes and bf16 copy; the CPU reads data. */
static mx_tensor rows_of_view(const mx_tensor *t, int64_t r0, int64_t n) {
    mx_tensor v = *t;
    size_t off = mx_dtype_row_bytes(t->type, t->ne[0]) * (size_t)r0;
    v.n_dims = 2;
    v.ne[1] = n, v.ne[2] = v.ne[3] = 1;
    v.data = (const char *)t->data + off;
    v.nbytes = mx_dtype_row_bytes(t->type, t->ne[0]) * (size_t)n;
    v.dev = (char *)t->dev + off;
    return v;
}

static void test_row_views(void) {
    char name[112];
    /* expert e of a 3-D expert tensor ne {n_in, F, E}: matmul (GEMV and GEMM) */
    uint32_t types[] = {MX_BF16, MX_F32, MX_Q4_1, MX_Q4_K};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        int n_in = 256, F = 72, E = 4;
        mx_tensor w = make_tensor(types[ti], n_in, F * E, "ffn_gate_exps");
        w.n_dims = 3, w.ne[1] = F, w.ne[2] = E;
        int Ts[] = {1, 2, 40};
        for (int e = 1; e < E; e += 2)
            for (int k = 0; k < 3; k++) {
                int T = Ts[k];
                mx_tensor v = rows_of_view(&w, (int64_t)e * F, F);
                float *x = rand_vec((size_t)T * n_in, 1.0f), *ref = malloc(sizeof(float) * T * F),
                      *got = malloc(sizeof(float) * T * F);
                cpu->matmul(cpu, &v, x, ref, T);
                float *dx = dev_from(x, sizeof(float) * T * n_in), *dy = dev_poisoned(sizeof(float) * T * F);
                gpu->matmul(gpu, &v, dx, dy, T);
                to_host(got, dy, (size_t)T * F);
                snprintf(name, sizeof name, "row view: expert %d of %d, %s %dx%d T=%d (%s)", e, E,
                         mx_dtype_name(types[ti]), F, n_in, T, T <= 8 ? "GEMV" : "GEMM");
                check(name, got, ref, (size_t)T * F, T <= 8 ? 1e-4 : 1e-2);
                gpu->free(gpu, dx), gpu->free(gpu, dy), free(x), free(ref), free(got);
            }
        w.n_dims = 2, w.ne[1] = F * E, w.ne[2] = 1;
        free_tensor(&w);
    }
    /* MLA-shaped: rows [17, 41) of ne {40, 200} (the bf16 copy's view starts 16-byte aligned only), matmul and
     * matmul_t, the output written 4 bytes past an aligned address */
    uint32_t mtypes[] = {MX_F16, MX_F32};
    for (size_t ti = 0; ti < 2; ti++) {
        int R = 40, rows = 200, r0 = 17, n = 24;
        mx_tensor w = make_tensor(mtypes[ti], R, rows, "attn_kv_b");
        mx_tensor v = rows_of_view(&w, r0, n);
        int Ts[] = {1, 9, 33};
        for (int k = 0; k < 3; k++) {
            int T = Ts[k];
            for (int tr = 0; tr < 2; tr++) {
                int ni = tr ? n : R, no = tr ? R : n; /* x (T, ni) -> y (T, no) */
                float *x = rand_vec((size_t)T * ni, 1.0f), *ref = malloc(sizeof(float) * T * no),
                      *got = malloc(sizeof(float) * T * no);
                float *dx = dev_from(x, sizeof(float) * T * ni),
                      *dy = dev_poisoned(sizeof(float) * (T * no + 1));
                if (tr) {
                    cpu->matmul_t(cpu, &v, x, ref, T);
                    gpu->matmul_t(gpu, &v, dx, dy + 1, T);
                } else {
                    cpu->matmul(cpu, &v, x, ref, T);
                    gpu->matmul(gpu, &v, dx, dy + 1, T);
                }
                to_host(got, dy + 1, (size_t)T * no);
                snprintf(name, sizeof name, "row view: rows %d..%d of %dx%d %s, %s T=%d", r0, r0 + n, rows, R,
                         mx_dtype_name(mtypes[ti]), tr ? "matmul_t" : "matmul", T);
                check(name, got, ref, (size_t)T * no, tr || T > 8 ? 1e-2 : 1e-4);
                gpu->free(gpu, dx), gpu->free(gpu, dy), free(x), free(ref), free(got);
            }
        }
        free_tensor(&w);
    }
}

/* ---------------------------------------------------------------- moe_ffn
 * The grouped MoE op (backend.h: moe_ffn; CUDA: routing, grouping and the expert GEMMs on the device) against
 * the CPU's generic composition of moe.c (moe_route, then per expert gather_rows, matmul, swiglu, matmul,
 * scatter_add_rows), on 3-D expert tensors of several types, token counts that are multiples of nothing, tied
 * router rows, an expert no token chooses, and a tensor-parallel mask of local experts. */
static void moe_ref(const mx_tensor *gate, const mx_tensor *up, const mx_tensor *down, const float *x,
                    const float *lg, int T, int C, int F, int E, int k, bool norm, float scale,
                    const bool *local, float *out, int *counts) {
    int *ids = malloc(sizeof(int) * T * k), *tok = malloc(sizeof(int) * T);
    float *w = malloc(sizeof(float) * T * k), *tw = malloc(sizeof(float) * T);
    float *xg = malloc(sizeof(float) * T * C), *g = malloc(sizeof(float) * T * F),
          *u = malloc(sizeof(float) * T * F), *y = malloc(sizeof(float) * T * C);
    cpu->moe_route(cpu, lg, T, E, k, norm, scale, ids, w);
    memset(out, 0, sizeof(float) * T * C);
    for (int e = 0; e < E; e++) {
        int n = 0;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < k; j++)
                if (ids[t * k + j] == e) tok[n] = t, tw[n++] = w[t * k + j];
        counts[e] = n;
        if (!n || (local && !local[e])) continue;
        mx_tensor wg = rows_of_view(gate, (int64_t)e * F, F), wu = rows_of_view(up, (int64_t)e * F, F),
                  wd = rows_of_view(down, (int64_t)e * C, C);
        cpu->gather_rows(cpu, xg, x, tok, n, C);
        cpu->matmul(cpu, &wg, xg, g, n);
        cpu->matmul(cpu, &wu, xg, u, n);
        cpu->swiglu(cpu, g, u, n * F);
        cpu->matmul(cpu, &wd, g, y, n);
        cpu->scatter_add_rows(cpu, out, y, tok, tw, n, C);
    }
    free(ids), free(tok), free(w), free(tw), free(xg), free(g), free(u), free(y);
}

static mx_tensor as_3d(const mx_tensor *t, int rows, int E) {
    mx_tensor v = *t;
    v.n_dims = 3, v.ne[1] = rows, v.ne[2] = E;
    return v;
}

static void test_moe_ffn(void) {
    char name[112];
    if (!gpu->moe_ffn) {
        printf("FAIL moe_ffn: the CUDA backend has no moe_ffn op\n");
        n_fail++;
        return;
    }
    struct {
        uint32_t type;
        int C, F, E, k, norm, tp;
        float scale;
    } cf[] = {{MX_BF16, 256, 512, 8, 2, 1, 0, 1.0f},
              {MX_Q4_K, 256, 512, 6, 3, 0, 1, 1.5f},
              {MX_F32, 100, 72, 4, 2, 1, 0, 1.0f},
              {MX_Q8_0, 128, 160, 16, 4, 1, 1, 2.5f}};
    int Ts[] = {9, 37, 300, 1000};
    for (size_t ci = 0; ci < sizeof cf / sizeof cf[0]; ci++) {
        int C = cf[ci].C, F = cf[ci].F, E = cf[ci].E, k = cf[ci].k;
        mx_tensor g2 = make_tensor(cf[ci].type, C, F * E, "ffn_gate_exps"),
                  u2 = make_tensor(cf[ci].type, C, F * E, "ffn_up_exps"),
                  d2 = make_tensor(cf[ci].type, F, C * E, "ffn_down_exps");
        mx_tensor g3 = as_3d(&g2, F, E), u3 = as_3d(&u2, F, E), d3 = as_3d(&d2, C, E);
        bool local[16];
        for (int e = 0; e < E; e++) local[e] = !cf[ci].tp || (e >= E / 4 && e < E / 4 + E / 2);
        int zero = E - 2; /* the expert no token chooses */
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            int T = Ts[ti];
            float *x = rand_vec((size_t)T * C, 1.0f), *lg = rand_vec((size_t)T * E, 2.0f);
            for (int t = 0; t < T; t++) lg[(size_t)t * E + zero] = -40.0f;
            for (int t = 5; t < T; t += 11) /* tied rows: equal logits except the unchosen expert */
                for (int e = 0; e < E; e++)
                    if (e != zero) lg[(size_t)t * E + e] = 0.5f;
            float *ref = malloc(sizeof(float) * T * C), *got = malloc(sizeof(float) * T * C);
            int cc[16], cg[16];
            moe_ref(&g3, &u3, &d3, x, lg, T, C, F, E, k, cf[ci].norm, cf[ci].scale, cf[ci].tp ? local : NULL,
                    ref, cc);
            float *dx = dev_from(x, sizeof(float) * T * C), *dl = dev_from(lg, sizeof(float) * T * E),
                  *dout = dev_poisoned(sizeof(float) * T * C);
            memset(cg, 0xFF, sizeof cg);
            bool took = gpu->moe_ffn(gpu, dx, dl, T, E, k, cf[ci].norm, cf[ci].scale, &g3, &u3, &d3,
                                     cf[ci].tp ? local : NULL, dout, cg);
            to_host(got, dout, (size_t)T * C);
            int same = took && !memcmp(cc, cg, sizeof(int) * E);
            snprintf(name, sizeof name, "moe_ffn %s C=%d F=%d E=%d k=%d T=%d%s%s%s",
                     mx_dtype_name(cf[ci].type), C, F, E, k, T, cf[ci].tp ? " (local experts)" : "",
                     took ? "" : " (DECLINED)", same || !took ? "" : " (COUNTS DIFFER)");
            if (!same) got[0] = NAN;
            check(name, got, ref, (size_t)T * C, 2e-2);
            gpu->free(gpu, dx), gpu->free(gpu, dl), gpu->free(gpu, dout);
            free(x), free(lg), free(ref), free(got);
        }
        { /* a few tokens: declined (the generic path and its decode kernels), nothing written */
            int T = 4;
            float *dx = dev_poisoned(sizeof(float) * T * C), *dl = dev_poisoned(sizeof(float) * T * E),
                  *dout = dev_poisoned(sizeof(float) * T * C);
            bool took = gpu->moe_ffn(gpu, dx, dl, T, E, k, true, 1.0f, &g3, &u3, &d3, NULL, dout, NULL);
            printf("%s moe_ffn declines T=4 (%s)\n", took ? "FAIL" : "PASS", took ? "took it" : "declined");
            took ? n_fail++ : n_pass++;
            gpu->free(gpu, dx), gpu->free(gpu, dl), gpu->free(gpu, dout);
        }
        free_tensor(&g2), free_tensor(&u2), free_tensor(&d2);
    }
}

/* ---------------------------------------------------------------- decode fusions
 * One Llama layer at T = 1 (rmsnorm, q/k/v matmuls, ropes, KV writes, attention, o matmul + residual, rmsnorm,
 * gate/up, swiglu, down + residual, final norm + head), four tokens in a row: with graphs on, cuda_graph.cu
 * runs these as fused kernels (eagerly, then captured, then replayed); every buffer the ops write is compared
 * with the CPU's, and the backend's count of fused groups (cuda_fusion.cu) with what the order of the calls
 * allows. Three orders of the same calls:
 *   ORDER_MHA      as attention/mha.c and forward.c issue them;
 *   ORDER_SWAPPED  independent calls swapped (v's matmul first, v's KV write before k's rope, q's rope after
 *                  k's, up's matmul before gate's): the fusions are matched by data flow, so all still fuse;
 *   ORDER_READER   an extra call that reads q between its matmul and its rope (q += ... into the attention
 *                  output buffer, which attention then overwrites): q/k/v must not fuse (q's un-rotated value
 *                  is read outside the group); the norm fuses with q's matmul instead. */
enum { ORDER_MHA, ORDER_SWAPPED, ORDER_READER, N_ORDERS };

static bool fusions_on(void) {
    const char *g = getenv("MX_CUDA_GRAPHS"), *f = getenv("MX_CUDA_FUSE");
    return !(g && !strcmp(g, "0")) && !(f && !strcmp(f, "0"));
}

/* The fused groups run since the last call, by kind (cuda_stream.h: mx_cuda_backend_fusions). */
static void fusions_since(long *last, long *delta) {
    long now[4];
    mx_cuda_backend_fusions(gpu, now);
    for (int k = 0; k < 4; k++) delta[k] = now[k] - last[k], last[k] = now[k];
}

static void test_fused_decode(void) {
    uint32_t types[] = {MX_Q4_1, MX_Q8_0, MX_Q6_K};
    long last[4];
    mx_cuda_backend_fusions(gpu, last);
    for (size_t tc = 0; tc < 3 * N_ORDERS; tc++) {
        const size_t ti = tc / N_ORDERS;
        const int order = (int)(tc % N_ORDERS);
        int C = 512, H = 8, G = 2, D = 64, F = 1024, S = 64, V = 3000;
        uint32_t ty = types[ti];
        mx_tensor wq = make_tensor(ty, C, H * D, "wq"), wk = make_tensor(ty, C, G * D, "wk"),
                  wv = make_tensor(ty, C, G * D, "wv"), wo = make_tensor(ty, H * D, C, "wo"),
                  wg = make_tensor(ty, C, F, "wg"), wu = make_tensor(ty, C, F, "wu"),
                  wd = make_tensor(ty, F, C, "wd"), wh = make_tensor(ty, C, V, "head"),
                  n1 = make_tensor(MX_F32, C, 1, "n1"), n2 = make_tensor(MX_F32, C, 1, "n2");
        /* host (CPU) and device buffers */
        float *x = rand_vec(C, 1.0f), *hx = malloc(sizeof(float) * C), *hq = malloc(sizeof(float) * H * D),
              *hk = malloc(sizeof(float) * G * D), *hv = malloc(sizeof(float) * G * D),
              *ha = malloc(sizeof(float) * H * D), *hg = malloc(sizeof(float) * F),
              *hu = malloc(sizeof(float) * F), *hl = malloc(sizeof(float) * V);
        float *kc = malloc(sizeof(float) * S * G * D), *vc = malloc(sizeof(float) * S * G * D);
        float *dx = dev_from(x, sizeof(float) * C), *dh = dev_poisoned(sizeof(float) * F),
              *dq = dev_poisoned(sizeof(float) * H * D), *dk = dev_poisoned(sizeof(float) * G * D),
              *dv = dev_poisoned(sizeof(float) * G * D), *da = dev_poisoned(sizeof(float) * H * D),
              *dg = dev_poisoned(sizeof(float) * F), *du = dev_poisoned(sizeof(float) * F),
              *dl = dev_poisoned(sizeof(float) * V);
        void *gk = dev_poisoned((size_t)S * G * D * 2), *gv = dev_poisoned((size_t)S * G * D * 2);
        /* fill the KV prefix (positions 0..39) with the same bf16 values on both sides */
        int P = 40;
        float *pre = rand_vec((size_t)P * G * D, 1.0f);
        for (int i = 0; i < P * G * D; i++) pre[i] = mx_bf16_to_f32(mx_f32_to_bf16(pre[i]));
        float *dpre = dev_from(pre, sizeof(float) * P * G * D);
        cpu->kv_write(cpu, kc, pre, P, G * D, 0, S), cpu->kv_write(cpu, vc, pre, P, G * D, 0, S);
        gpu->kv_write(gpu, gk, dpre, P, G * D, 0, S), gpu->kv_write(gpu, gv, dpre, P, G * D, 0, S);
        float *hh = malloc(sizeof(float) * F), *got = malloc(sizeof(float) * V);
        for (int step = 0; step < 4; step++) { /* eager, eager (new sequence), captured, replayed */
            int pos = P + step;
            /* each token starts from the CPU's residual stream: the check stays per token (random weights
             * amplify the bf16-KV difference across tokens otherwise) */
            if (step) {
                gpu->sync(gpu);
                CK(cudaMemcpy(dx, x, sizeof(float) * C, cudaMemcpyHostToDevice));
                CK(cudaDeviceSynchronize());
            }
            /* CPU, then the same calls on the GPU */
            long delta[4];
            fusions_since(last, delta); /* the earlier steps' groups (flushed by the sync above) */
            for (int side = 0; side < 2; side++) {
                mx_backend *be = side ? gpu : cpu;
                float *X = side ? dx : x, *Hb = side ? dh : hh, *Q = side ? dq : hq, *K = side ? dk : hk,
                      *Vb = side ? dv : hv, *A = side ? da : ha, *Gb = side ? dg : hg, *U = side ? du : hu,
                      *L = side ? dl : hl;
                void *KS = side ? gk : (void *)kc, *VS = side ? gv : (void *)vc;
                be->rmsnorm(be, X, &n1, Hb, 1, C, 1e-5f);
                if (order == ORDER_SWAPPED) {
                    be->matmul(be, &wv, Hb, Vb, 1);
                    be->matmul(be, &wq, Hb, Q, 1);
                    be->matmul(be, &wk, Hb, K, 1);
                    be->kv_write(be, VS, Vb, 1, G * D, pos, S);
                    be->rope(be, K, 1, G, D, D, pos, 10000.0f, MX_ROPE_ADJACENT);
                    be->rope(be, Q, 1, H, D, D, pos, 10000.0f, MX_ROPE_ADJACENT);
                    be->kv_write(be, KS, K, 1, G * D, pos, S);
                } else {
                    be->matmul(be, &wq, Hb, Q, 1);
                    if (order == ORDER_READER) be->add(be, A, Q, H * D);
                    be->rope(be, Q, 1, H, D, D, pos, 10000.0f, MX_ROPE_ADJACENT);
                    be->matmul(be, &wk, Hb, K, 1);
                    be->matmul(be, &wv, Hb, Vb, 1);
                    be->rope(be, K, 1, G, D, D, pos, 10000.0f, MX_ROPE_ADJACENT);
                    be->kv_write(be, KS, K, 1, G * D, pos, S);
                    be->kv_write(be, VS, Vb, 1, G * D, pos, S);
                }
                if (!side) /* the reference stores the new row as the GPU does (bf16), so that attention
                            * compares like with like; random weights made the fp32-vs-bf16 row differ by up
                            * to ~4e-2 */
                    for (int i = 0; i < G * D; i++) {
                        size_t o = (size_t)(pos % S) * G * D + i;
                        kc[o] = mx_bf16_to_f32(mx_f32_to_bf16(kc[o]));
                        vc[o] = mx_bf16_to_f32(mx_f32_to_bf16(vc[o]));
                    }
                mx_attn_spec sp = {.n_q = 1,
                                   .n_head = H,
                                   .n_kv_head = G,
                                   .head_dim = D,
                                   .v_dim = D,
                                   .q_pos0 = pos,
                                   .n_slots = S,
                                   .window = 0,
                                   .causal = true,
                                   .kv_lo = 0,
                                   .kv_hi = pos,
                                   .scale = 1.0f / sqrtf((float)D),
                                   .q_stride = (size_t)H * D,
                                   .k_stride = (size_t)G * D,
                                   .v_stride = (size_t)G * D,
                                   .o_stride = (size_t)H * D};
                be->attention(be, &sp, Q, KS, VS, A, NULL);
                be->matmul(be, &wo, A, Hb, 1);
                be->add(be, X, Hb, C);
                be->rmsnorm(be, X, &n2, Hb, 1, C, 1e-5f);
                if (order == ORDER_SWAPPED) {
                    be->matmul(be, &wu, Hb, U, 1);
                    be->matmul(be, &wg, Hb, Gb, 1);
                } else {
                    be->matmul(be, &wg, Hb, Gb, 1);
                    be->matmul(be, &wu, Hb, U, 1);
                }
                be->swiglu(be, Gb, U, F);
                be->matmul(be, &wd, Gb, Hb, 1);
                be->add(be, X, Hb, C);
                be->rmsnorm(be, X, &n1, Hb, 1, C, 1e-5f);
                be->matmul(be, &wh, Hb, L, 1);
            }
            static const char *order_names[] = {"mha order", "swapped", "q read before rope"};
            const char *what[] = {"x", "q", "k", "v", "attn", "gate*", "up", "head logits"};
            float *hs[] = {x, hq, hk, hv, ha, hg, hu, hl}, *ds[] = {dx, dq, dk, dv, da, dg, du, dl};
            size_t ns[] = {C, (size_t)H * D, (size_t)G * D, (size_t)G * D, (size_t)H * D, F, F, V};
            for (int b = 0; b < 8; b++) {
                to_host(got, ds[b], ns[b]);
                char name[96];
                snprintf(name, sizeof name, "fused decode layer %s %s token %d: %s", mx_dtype_name(ty),
                         order_names[order], step, what[b]);
                /* token 0's q/k/v come from exact inputs: the fused norm/GEMV/RoPE must match the fp32
                 * reference closely; everything after the first attention differs by the GPU's bf16 KV store
                 * (the CPU keeps fp32), which the attention tolerance (2e-2) covers */
                check(name, got, hs[b], ns[b], step == 0 && b >= 1 && b <= 3 ? 1e-5 : 2e-2);
            }
            /* the step's fused groups: q/k/v, gate/up, norm + GEMV (the head; q's matmul too when q/k/v cannot
             * fuse), GEMV + add (o and down projections); none without recording or with MX_CUDA_FUSE=0 */
            fusions_since(last, delta);
            long want[4] = {order == ORDER_READER ? 0 : 1, 1, order == ORDER_READER ? 2 : 1, 2};
            if (!fusions_on()) memset(want, 0, sizeof want);
            bool same = !memcmp(delta, want, sizeof want);
            printf(
                "%s fused decode layer %s %s token %d: fused groups q/k/v %ld, gate/up %ld, norm+gemv %ld, "
                "gemv+add %ld (want %ld %ld %ld %ld)\n",
                same ? "PASS" : "FAIL", mx_dtype_name(ty), order_names[order], step, delta[0], delta[1],
                delta[2], delta[3], want[0], want[1], want[2], want[3]);
            same ? n_pass++ : n_fail++;
        }
        /* the KV stores, every slot */
        uint16_t *kb = malloc((size_t)S * G * D * 2);
        float *kf = malloc(sizeof(float) * S * G * D);
        CK(cudaMemcpy(kb, gk, (size_t)S * G * D * 2, cudaMemcpyDeviceToHost));
        for (int i = 0; i < S * G * D; i++) {
            kf[i] = mx_bf16_to_f32(kb[i]);
            if (i >= (P + 4) * G * D) kf[i] = kc[i] = 0.0f; /* unwritten slots: poison on the GPU */
        }
        char name[96];
        snprintf(name, sizeof name, "fused decode layer %s %s: K store", mx_dtype_name(ty),
                 order == ORDER_MHA       ? "mha order"
                 : order == ORDER_SWAPPED ? "swapped"
                                          : "q read before rope");
        check(name, kf, kc, (size_t)S * G * D, 4e-3);
        free(kb), free(kf);
        mx_tensor *ws[] = {&wq, &wk, &wv, &wo, &wg, &wu, &wd, &wh, &n1, &n2};
        for (int i = 0; i < 10; i++) free_tensor(ws[i]);
        float *dd[] = {dx, dh, dq, dk, dv, da, dg, du, dl, dpre};
        for (int i = 0; i < 10; i++) gpu->free(gpu, dd[i]);
        gpu->free(gpu, gk), gpu->free(gpu, gv);
        free(x), free(hx), free(hq), free(hk), free(hv), free(ha), free(hg), free(hu), free(hl), free(kc),
            free(vc);
        free(pre), free(hh), free(got);
    }
}

/* ---------------------------------------------------------------- whole model */

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* ---------------------------------------------------------------- sampling on the GPU
 * backend.h's sample against run/sampler.c's mx_sample (the same uniform draw): the same token, every time.
 * Greedy and top-k/top-p/min-p settings, several vocabulary sizes, continuous logits (no ties: the CPU's
 * selection order among equal logits is its own) and, for greedy and top-1, logits with many exact ties (both
 * take the lowest id). Several draws are queued before any is read back (the pinned ring of tickets). */
static void test_sample(void) {
    const int vocabs[] = {49152, 32007, 1000, 5};
    const mx_sampler_params sets[] = {
        {.temperature = 0.0f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f, .repeat_penalty = 1.0f},
        {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f, .repeat_penalty = 1.0f},
        {.temperature = 1.0f, .top_k = 1, .top_p = 1.0f, .min_p = 0.0f, .repeat_penalty = 1.0f},
        {.temperature = 1.5f, .top_k = 1024, .top_p = 1.0f, .min_p = 0.0f, .repeat_penalty = 1.0f},
        {.temperature = 0.7f, .top_k = 200, .top_p = 0.5f, .min_p = 0.0f, .repeat_penalty = 1.0f},
        {.temperature = 2.0f, .top_k = 7, .top_p = 1.0f, .min_p = 0.3f, .repeat_penalty = 1.0f},
    };
    enum { DRAWS = 6 };
    int *dtok = gpu->alloc(gpu, 64 * DRAWS);
    for (size_t vi = 0; vi < sizeof vocabs / sizeof vocabs[0]; vi++)
        for (size_t si = 0; si < sizeof sets / sizeof sets[0]; si++)
            for (int ties = 0; ties < 2; ties++) {
                const mx_sampler_params *p = &sets[si];
                if (ties && p->temperature > 0.0f && p->top_k != 1) continue;
                int V = vocabs[vi], same = 0, ticket[DRAWS], want[DRAWS];
                mx_sampler smp;
                mx_sampler_params sp = *p;
                sp.seed = 1000 + si;
                if (mx_sampler_init(&smp, &sp, V)) exit(2);
                float *dl[DRAWS];
                for (int d = 0; d < DRAWS; d++) {
                    float *l = rand_vec((size_t)V, 6.0f);
                    if (ties)
                        for (int i = 0; i < V; i++) l[i] = roundf(l[i]); /* 13 distinct values */
                    dl[d] = dev_from(l, sizeof(float) * (size_t)V);
                    mx_sample_spec ss = {.temperature = p->temperature,
                                         .top_p = p->top_p,
                                         .min_p = p->min_p,
                                         .top_k = p->top_k};
                    mx_rng peek = smp.rng; /* the draw mx_sample is about to make */
                    if (p->temperature > 0.0f) ss.u = mx_rng_float(&peek);
                    ticket[d] = gpu->sample(gpu, dl[d], V, &ss, dtok + 16 * d);
                    want[d] = mx_sample(&smp, l, NULL, 0);
                    free(l);
                }
                for (int d = DRAWS - 1; d >= 0; d--) same += gpu->sample_wait(gpu, ticket[d]) == want[d];
                for (int d = 0; d < DRAWS; d++) gpu->free(gpu, dl[d]);
                mx_sampler_free(&smp);
                int ok = same == DRAWS;
                printf("%s sample V %d, T %.1f top-k %d top-p %.2f min-p %.2f%s: %d/%d tokens equal to "
                       "mx_sample\n",
                       ok ? "PASS" : "FAIL", V, p->temperature, p->top_k, p->top_p, p->min_p,
                       ties ? ", tied logits" : "", same, DRAWS);
                ok ? n_pass++ : n_fail++;
            }
    int stale = gpu->sample_wait(gpu, -1) == -1;
    printf("%s sample_wait of an unknown ticket returns -1\n", stale ? "PASS" : "FAIL");
    stale ? n_pass++ : n_fail++;
    gpu->free(gpu, dtok);
}

/* Generation on the GPU with the draw there (generate.c's decode_device) against the host loop
 * (MX_HOST_SAMPLING=1) on the same GPU: the same tokens, text, stop reason and final position, greedy and
 * sampled, and with a stop string that ends it early (the queued steps past it are taken back). */
static void test_generate_device(mx_model *m, const int *ids, int n) {
    const char *stops[] = {"e"};
    const struct {
        float temp;
        int n_stops;
    } runs[] = {{0.0f, 0}, {0.8f, 0}, {0.0f, 1}, {0.9f, 1}};
    for (size_t ri = 0; ri < sizeof runs / sizeof runs[0]; ri++) {
        mx_gen_result res[2];
        int pos[2] = {0, 0}, rc[2] = {0, 0};
        float next_u[2] = {0,
                           0}; /* the sampler's next draw after generation: the steps taken back spent none */
        for (int host = 0; host < 2; host++) {
            mx_err err = {0};
            mx_session *s;
            setenv("MX_HOST_SAMPLING", host ? "1" : "0", 1);
            if (mx_session_create(m, gpu, 512, &s, &err)) exit(2);
            mx_sampler_params sp = mx_sampler_defaults();
            sp.temperature = runs[ri].temp;
            sp.seed = 7;
            mx_sampler smp;
            if (mx_sampler_init(&smp, &sp, m->cfg.vocab)) exit(2);
            mx_gen_opts go = {.n_predict = 40, .stops = stops, .n_stops = runs[ri].n_stops, .stop_token = -1};
            rc[host] = mx_generate(s, &smp, ids, n, &go, &res[host], &err);
            pos[host] = s->pos;
            next_u[host] = mx_rng_float(&smp.rng);
            mx_sampler_free(&smp);
            mx_session_free(s);
        }
        unsetenv("MX_HOST_SAMPLING");
        int ok = !rc[0] && !rc[1] && res[0].n_gen == res[1].n_gen &&
                 !memcmp(res[0].tokens, res[1].tokens, sizeof(int) * (size_t)res[0].n_gen) &&
                 !strcmp(res[0].text, res[1].text) && !strcmp(res[0].stop_reason, res[1].stop_reason) &&
                 pos[0] == pos[1] && next_u[0] == next_u[1];
        printf("%s generate on the GPU, T %.1f%s: device draw vs host loop: %d vs %d tokens, stop %s/%s, "
               "position "
               "%d vs %d, generator %s\n",
               ok ? "PASS" : "FAIL", runs[ri].temp, runs[ri].n_stops ? ", stop \"e\"" : "", res[0].n_gen,
               res[1].n_gen, res[0].stop_reason, res[1].stop_reason, pos[0], pos[1],
               next_u[0] == next_u[1] ? "in step" : "NOT in step");
        ok ? n_pass++ : n_fail++;
        mx_gen_result_free(&res[0]);
        mx_gen_result_free(&res[1]);
    }
}

/* The model's decode step takes the fused path (cuda_fusion.cu): for a Llama without biases, per layer one
 * q/k/v group, one gate/up group and two GEMV + residual groups, and the head's norm + GEMV; counted over one
 * decode step after a prefill (none when recording or fusion is off). */
static void test_model_fusions(mx_model *m, const int *ids, int n) {
    const mx_config *c = &m->cfg;
    if (c->arch != MX_ARCH_LLAMA || c->attn_bias || c->mlp_bias || c->n_expert > 0) {
        printf("NOTE model decode fusions: not checked (the expected groups are stated for a bias-free dense "
               "Llama)\n");
        return;
    }
    mx_err err = {0};
    mx_session *s;
    if (mx_session_create(m, gpu, 512, &s, &err)) {
        printf("FAIL session: %s\n", err.msg);
        n_fail++;
        return;
    }
    float *lg = malloc(sizeof(float) * c->vocab);
    mx_session_eval(s, ids, n, lg, false, &err);
    long last[4], d[4];
    mx_cuda_backend_fusions(gpu, last);
    int tok = argmax(lg, c->vocab);
    mx_session_eval(s, &tok, 1, lg, false, &err);
    fusions_since(last, d);
    long L = c->n_layer, want[4] = {L, L, 1, 2 * L};
    if (!fusions_on()) memset(want, 0, sizeof want);
    bool same = !memcmp(d, want, sizeof want);
    printf("%s model decode step fused groups: q/k/v %ld, gate/up %ld, norm+gemv %ld, gemv+add %ld (want %ld "
           "%ld "
           "%ld %ld: %d layers)\n",
           same ? "PASS" : "FAIL", d[0], d[1], d[2], d[3], want[0], want[1], want[2], want[3], c->n_layer);
    same ? n_pass++ : n_fail++;
    free(lg);
    mx_session_free(s);
}

static void test_model(const char *path) {
    mx_err err = {0};
    mx_model *m;
    if (mx_model_load(path, NULL, &m, &err)) {
        printf("FAIL model: cannot load %s: %s\n", path, err.msg);
        n_fail++;
        return;
    }
    if (mx_model_place(m, gpu, &err)) { /* the CPU reads t->data; the GPU its placed copy */
        printf("FAIL model: cannot place on the GPU: %s\n", err.msg);
        n_fail++;
        mx_model_free(m);
        return;
    }
    const char *prompts[] = {"The capital of France is",
                             "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
                             "<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n",
                             "Once upon a time, in a small village by the sea, there lived"};
    int V = m->cfg.vocab, n_gen = 32;
    float *lc = malloc(sizeof(float) * V), *lg = malloc(sizeof(float) * V);
    for (size_t pi = 0; pi < sizeof prompts / sizeof prompts[0]; pi++) {
        int *ids, n;
        if (mx_tokenize(m->tok, prompts[pi], strlen(prompts[pi]), true, &ids, &n, &err)) {
            printf("FAIL tokenize: %s\n", err.msg);
            n_fail++;
            continue;
        }
        mx_session *sc, *sg;
        if (mx_session_create(m, cpu, 512, &sc, &err) || mx_session_create(m, gpu, 512, &sg, &err)) {
            printf("FAIL session: %s\n", err.msg);
            n_fail++;
            free(ids);
            continue;
        }
        mx_session_eval(sc, ids, n, lc, false, &err);
        mx_session_eval(sg, ids, n, lg, false, &err);
        char name[96];
        snprintf(name, sizeof name, "model prefill logits, prompt %zu (%d tokens)", pi, n);
        check(name, lg, lc, V, 6e-2);
        int agree = 0, diverged = -1, near_tie = 0;
        double worst = 0;
        for (int i = 0; i < n_gen; i++) {
            int tc = argmax(lc, V), tg = argmax(lg, V);
            double num = 0, den = 0;
            for (int j = 0; j < V; j++) num += (lg[j] - lc[j]) * (lg[j] - lc[j]), den += lc[j] * lc[j];
            if (sqrt(num / den) > worst) worst = sqrt(num / den);
            if (tc != tg) {
                diverged = i;
                near_tie = fabsf(lc[tc] - lc[tg]) < 0.15f;
                break;
            }
            agree++;
            mx_session_eval(sc, &tc, 1, lc, false, &err);
            mx_session_eval(sg, &tc, 1, lg, false, &err);
        }
        int ok = (diverged < 0 || near_tie) && worst < 6e-2;
        printf("%s model greedy, prompt %zu: %d/%d tokens equal%s; worst decode-logit rel %.2e (tol 6e-2)\n",
               ok ? "PASS" : "FAIL", pi, agree, n_gen,
               diverged < 0 ? ""
               : near_tie   ? " (then a near tie: accepted)"
                            : " (DIVERGED)",
               worst);
        ok ? n_pass++ : n_fail++;
        mx_session_free(sc);
        mx_session_free(sg);
        if (pi == 0) test_generate_device(m, ids, n);
        if (pi == 0) test_model_fusions(m, ids, n);
        free(ids);
    }
    free(lc), free(lg);
    mx_model_unplace(m, gpu);
    mx_model_free(m);
}

int main(int argc, char **argv) {
    mx_err err = {0};
    if (mx_backend_cuda_create(0, &gpu, &err)) {
        fprintf(stderr, "test_cuda: %s\n", err.msg);
        return 2;
    }
    cpu = mx_backend_cpu_create(0);
    cpu->exact = true; /* the fp32 reference everywhere */
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const char *gr = getenv("MX_CUDA_GRAPHS");
    printf("CUDA backend vs CPU reference on %s (%d SMs), CUDA graphs %s\n", prop.name,
           prop.multiProcessorCount, gr && !strcmp(gr, "0") ? "off (MX_CUDA_GRAPHS=0)" : "on");
    uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 0;
    if (!seed) seed = (uint64_t)time(NULL);
    printf("seed %llu (pass it as the second argument to repeat)\n", (unsigned long long)seed);
    mx_rng_seed(&rng, seed);
    test_matmul();
    test_embed();
    test_norms();
    test_rope();
    test_elementwise();
    test_kv_write();
    test_attention();
    test_blocks();
    test_row_views();
    test_moe_ffn();
    test_fused_decode();
    test_sample();
    if (argc > 1) test_model(argv[1]);
    printf("\n%d passed, %d failed\n", n_pass, n_fail);
    mx_backend_destroy(cpu);
    mx_backend_cuda_destroy(gpu);
    return n_fail ? 1 : 0;
}
