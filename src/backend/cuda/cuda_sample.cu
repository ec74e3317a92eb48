/* cuda_sample.cu: the next token drawn on the GPU (backend.h: sample, sample_wait), so that a decode step
 * copies one int to the host instead of the vocabulary's logits, and the host can queue the next step before
 * it has seen the token (run/generate.c).
 *
 * k_sample, one block of SMP_THREADS over logits [vocab] fp32:
 *   - greedy (temperature <= 0): argmax, ties to the lowest id (sampler.c's `x[i] > x[best]` scan);
 *   - otherwise the top_k largest logits: logits become order-preserving 32-bit keys; four passes of 8-bit
 *     histograms (warp-aggregated shared-memory atomics) find the k-th largest key; every key above it and
 * the lowest-id keys equal to it (counted per thread segment, a block scan) make exactly k candidates; a
 * bitonic sort orders them (logit descending, id ascending); then sampler.c's arithmetic: p_i = expf((l_i -
 * l_0) / T) in fp32, the sums in double, top-p, min-p and the pick by u, in one thread (k <=
 * MX_SAMPLE_TOPK_MAX). The token goes to *tok (device) and, written by the kernel itself, to its slot of a
 * ring of SMP_RING ints in mapped pinned host memory (no copy node between decode steps);
 * mx_cuda_sample_fetch records the slot's event and mx_cuda_sample_wait returns the token once that event has
 * passed. */
#include <cub/block/block_scan.cuh>

#include "cuda_common.h"

enum { SMP_THREADS = 1024, SMP_K = MX_SAMPLE_TOPK_MAX, SMP_RING = 64 };

struct SampleP {
    int vocab, top_k;
    float temperature, top_p, min_p, u;
};

/* An order-preserving key: a > b as floats <=> key(a) > key(b) as unsigned (-0 taken as +0). */
__device__ __forceinline__ uint32_t okey(float x) {
    if (x == 0.0f) x = 0.0f;
    uint32_t u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float okey_float(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
/* candidate a ranks before b: larger key, then lower id */
__device__ __forceinline__ bool before(uint32_t ka, int ia, uint32_t kb, int ib) {
    return ka > kb || (ka == kb && ia < ib);
}

__device__ void argmax_block(const float *__restrict__ logits, int V, int *tok) {
    __shared__ uint32_t wk[SMP_THREADS / 32];
    __shared__ int wi[SMP_THREADS / 32];
    uint32_t bk = 0;
    int bi = INT_MAX;
    for (int i = threadIdx.x; i < V; i += SMP_THREADS) {
        uint32_t k = okey(logits[i]);
        if (bi == INT_MAX || k > bk) bk = k, bi = i; /* ids rise along a thread's loop: ties keep the first */
    }
    for (int o = 16; o > 0; o >>= 1) {
        uint32_t k2 = __shfl_xor_sync(0xffffffffu, bk, o);
        int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
        if (i2 != INT_MAX && (bi == INT_MAX || before(k2, i2, bk, bi))) bk = k2, bi = i2;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) wk[warp] = bk, wi[warp] = bi;
    __syncthreads();
    if (warp == 0) {
        bk = wk[lane], bi = wi[lane];
        for (int o = 16; o > 0; o >>= 1) {
            uint32_t k2 = __shfl_xor_sync(0xffffffffu, bk, o);
            int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
            if (i2 != INT_MAX && (bi == INT_MAX || before(k2, i2, bk, bi))) bk = k2, bi = i2;
        }
        if (lane == 0) *tok = bi;
    }
}

/* The k-th largest key among logits (k >= 1) and how many keys equal to it belong to the top k. */
__device__ void radix_select(const float *__restrict__ logits, int V, int k, uint32_t *thr, int *need_eq) {
    __shared__ unsigned hist[256];
    __shared__ int s_digit, s_need;
    uint32_t prefix = 0, mask = 0;
    int need = k;
    const int lane = threadIdx.x & 31;
    for (int shift = 24; shift >= 0; shift -= 8) {
        if (threadIdx.x < 256) hist[threadIdx.x] = 0;
        __syncthreads();
        for (int base = 0; base < V; base += SMP_THREADS) {
            int i = base + threadIdx.x;
            uint32_t key = i < V ? okey(logits[i]) : 0;
            bool in = i < V && (key & mask) == prefix;
            unsigned live = __ballot_sync(0xffffffffu, in);
            if (in) { /* one atomic per distinct digit in the warp */
                unsigned d = (key >> shift) & 255u, same = __match_any_sync(live, d);
                if (lane == __ffs(same) - 1) atomicAdd(&hist[d], (unsigned)__popc(same));
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int acc = 0, d = 255;
            for (; d > 0; d--) {
                if (acc + (int)hist[d] >= need) break;
                acc += (int)hist[d];
            }
            s_digit = d, s_need = need - acc;
        }
        __syncthreads();
        prefix |= (uint32_t)s_digit << shift;
        mask |= 255u << shift;
        need = s_need;
        __syncthreads();
    }
    *thr = prefix;
    *need_eq = need;
}

/* the token to the device int and to the host ring's slot (mapped pinned memory) */
__device__ __forceinline__ void put_token(int t, int *tok, int *ring, int slot) {
    *tok = t;
    ring[slot] = t;
    __threadfence_system();
}

__global__ void __launch_bounds__(SMP_THREADS)
    k_sample(const float *__restrict__ logits, SampleP p, const int *__restrict__ dyn, int *__restrict__ tok,
             int *__restrict__ ring, int slot) {
    if (dyn) p.u = __int_as_float(dyn[0]), slot = dyn[1];
    pdl_wait(); /* the logits come from the previous kernel (the head) */
    const int V = p.vocab, tid = threadIdx.x;
    __shared__ int s_tok;
    if (p.temperature <= 0.0f) {
        argmax_block(logits, V, &s_tok);
        __syncthreads();
        if (tid == 0) put_token(s_tok, tok, ring, slot);
        return;
    }
    __shared__ uint32_t ck[SMP_K];
    __shared__ int ci[SMP_K];
    __shared__ float cp[SMP_K];
    __shared__ int s_cnt;
    typedef cub::BlockScan<int, SMP_THREADS> Scan;
    __shared__ typename Scan::TempStorage scan_tmp;
    const int k = min(p.top_k, V);
    uint32_t thr;
    int need_eq;
    radix_select(logits, V, k, &thr, &need_eq);
    /* candidates: keys above thr, and the first need_eq keys equal to it in id order (per-thread segments) */
    const int seg = (V + SMP_THREADS - 1) / SMP_THREADS, b = min(V, tid * seg), e = min(V, b + seg);
    int eq = 0;
    for (int i = b; i < e; i++) eq += okey(logits[i]) == thr;
    int eq_before;
    Scan(scan_tmp).ExclusiveSum(eq, eq_before);
    if (tid == 0) s_cnt = 0;
    __syncthreads();
    for (int i = b; i < e; i++) {
        uint32_t key = okey(logits[i]);
        bool take = key > thr;
        if (key == thr) take = eq_before++ < need_eq;
        if (take) {
            int at = atomicAdd(&s_cnt, 1);
            ck[at] = key, ci[at] = i;
        }
    }
    __syncthreads();
    int n2 = 1;
    while (n2 < k) n2 <<= 1;
    for (int i = k + tid; i < n2; i += SMP_THREADS) ck[i] = 0, ci[i] = INT_MAX; /* padding sorts last */
    __syncthreads();
    /* bitonic sort of n2 entries into rank order (before() first) */
    for (int size = 2; size <= n2; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            int i = tid, j = i ^ stride;
            if (i < n2 && j > i) {
                bool asc = (i & size) == 0;
                bool swap = asc ? before(ck[j], ci[j], ck[i], ci[i]) : before(ck[i], ci[i], ck[j], ci[j]);
                if (swap) {
                    uint32_t tk = ck[i];
                    int ti = ci[i];
                    ck[i] = ck[j], ci[i] = ci[j], ck[j] = tk, ci[j] = ti;
                }
            }
            __syncthreads();
        }
    const float mx = okey_float(ck[0]);
    for (int i = tid; i < k; i += SMP_THREADS) cp[i] = expf((okey_float(ck[i]) - mx) / p.temperature);
    __syncthreads();
    if (tid != 0) return;
    /* sampler.c from here, operation for operation */
    double sum = 0;
    for (int i = 0; i < k; i++) sum += cp[i];
    int keep = k;
    if (p.top_p < 1.0f) {
        double acc = 0;
        for (int i = 0; i < k; i++) {
            acc += cp[i] / sum;
            if (acc >= p.top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    if (p.min_p > 0.0f) {
        float floor = cp[0] * p.min_p;
        int j = 1;
        while (j < keep && cp[j] >= floor) j++;
        keep = j;
    }
    double kept = 0;
    for (int i = 0; i < keep; i++) kept += cp[i];
    double r = p.u * kept, acc = 0;
    for (int i = 0; i < keep; i++) {
        acc += cp[i];
        if (r < acc) {
            put_token(ci[i], tok, ring, slot);
            return;
        }
    }
    put_token(ci[keep - 1], tok, ring, slot);
}

/* ---- the tokens' way back: a ring in mapped pinned memory, one event per slot ---- */
struct SampleRing {
    int *tok_h; /* pinned, mapped [SMP_RING] */
    int *tok_d; /* its device address */
    cudaEvent_t ev[SMP_RING];
    int next; /* the next ticket */
};

static SampleRing *ring_of(mx_cuda_ctx *c) {
    if (c->sample_ring) return (SampleRing *)c->sample_ring;
    SampleRing *r = (SampleRing *)calloc(1, sizeof *r);
    if (!r) mx_cuda_fatal("calloc", "out of memory", __FILE__, __LINE__);
    CU_CHECK(cudaHostAlloc((void **)&r->tok_h, sizeof(int) * SMP_RING, cudaHostAllocMapped));
    CU_CHECK(cudaHostGetDevicePointer((void **)&r->tok_d, r->tok_h, 0));
    for (int i = 0; i < SMP_RING; i++) CU_CHECK(cudaEventCreateWithFlags(&r->ev[i], cudaEventDisableTiming));
    c->sample_ring = r;
    return r;
}

int mx_cuda_sample_slot(mx_cuda_ctx *c) {
    return ring_of(c)->next % SMP_RING;
}

void mx_cuda_sample_k(mx_cuda_ctx *c, const float *logits, int vocab, const mx_sample_spec *sp,
                      const int *dyn, int *tok) {
    SampleRing *r = ring_of(c);
    SampleP p;
    p.vocab = vocab, p.top_k = sp->top_k, p.temperature = sp->temperature, p.top_p = sp->top_p;
    p.min_p = sp->min_p, p.u = sp->u;
    /* with the PDL attribute (as the decode GEMVs): the launch overlaps the head's tail, the kernel waits */
    cudaLaunchAttribute at;
    cudaLaunchConfig_t cfg = mx_cuda_pdl_config(c, dim3(1), dim3(SMP_THREADS), 0, &at);
    CU_CHECK(cudaLaunchKernelEx(&cfg, k_sample, logits, p, dyn, tok, r->tok_d, r->next % SMP_RING));
}

int mx_cuda_sample_fetch(mx_cuda_ctx *c, const int *tok) {
    SampleRing *r = ring_of(c);
    int t = r->next++, slot = t % SMP_RING;
    CU_CHECK(cudaEventRecord(r->ev[slot], c->stream)); /* the kernel wrote the slot itself */
    if (r->next == INT_MAX) r->next = SMP_RING;        /* never negative; old tickets stay unknown */
    return t;
}

int mx_cuda_sample_wait(mx_cuda_ctx *c, int ticket) {
    SampleRing *r = (SampleRing *)c->sample_ring;
    if (!r || ticket < 0 || ticket >= r->next || ticket < r->next - SMP_RING) return -1;
    int slot = ticket % SMP_RING;
    CU_CHECK(cudaEventSynchronize(r->ev[slot]));
    return r->tok_h[slot];
}

void mx_cuda_sample_free(mx_cuda_ctx *c) {
    SampleRing *r = (SampleRing *)c->sample_ring;
    if (!r) return;
    for (int i = 0; i < SMP_RING; i++) cudaEventDestroy(r->ev[i]);
    cudaFreeHost(r->tok_h);
    free(r);
    c->sample_ring = NULL;
}
