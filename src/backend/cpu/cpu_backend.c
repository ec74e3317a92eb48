/* cpu_backend.c: the CPU backend's op table and buffer allocation. Ops live in the other cpu_*.c files;
 * threads are OpenMP's, sized once at creation (-t N). */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

#include "../backend_train.h"
#include "cpu_ops.h"

static void *cpu_alloc(mx_backend *be, size_t bytes) {
    (void)be;
    size_t rounded = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, rounded ? rounded : 64);
}

static void cpu_free(mx_backend *be, void *p) {
    (void)be;
    free(p);
}

static int cpu_upload(mx_backend *be, mx_tensor *t, mx_err *err) {
    return MX_OK;
}
static void cpu_release(mx_backend *be, mx_tensor *t) {}
static void cpu_sync(mx_backend *be) {}

static void cpu_destroy(mx_backend *be) {
    free(be);
}

static int cpu_mem_info(mx_backend *be, size_t *free_bytes, size_t *total_bytes) {
    long page = sysconf(_SC_PAGESIZE), avail = sysconf(_SC_AVPHYS_PAGES), total = sysconf(_SC_PHYS_PAGES);
    if (page <= 0 || avail < 0 || total <= 0) return -1;
    *free_bytes = (size_t)avail * (size_t)page;
    *total_bytes = (size_t)total * (size_t)page;
    return 0;
}

static void cpu_to_host(mx_backend *be, float *dst, const float *src, size_t n) {
    (void)be;
    if (dst != src) memcpy(dst, src, n * sizeof(float));
}

mx_backend *mx_backend_cpu_create(int n_threads) {
    mx_backend *be = calloc(1, sizeof *be);
    if (!be) return NULL;
    if (n_threads <= 0) n_threads = omp_get_num_procs();
    omp_set_num_threads(n_threads);
    openblas_set_num_threads(1); /* BLAS only serves F32 weights in decode, from the calling thread */
    be->name = "cpu";
    be->caps = MX_CAP_HOST_MEMORY;
    be->destroy = cpu_destroy;
    be->n_threads = n_threads;
    be->act8 =
        true; /* 8-bit activations in decode by default (fp32 decode ~20% slower); exact turns it off */
    be->kv_elem_bytes = sizeof(float);
    be->row_views = true;
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_upload;
    be->release = cpu_release;
    be->sync = cpu_sync;
    be->mem_info = cpu_mem_info;
    be->matmul = mx_cpu_matmul;
    be->matmul_group = mx_cpu_matmul_group;
    be->embed = mx_cpu_embed;
    be->rmsnorm = mx_cpu_rmsnorm;
    be->layernorm = mx_cpu_layernorm;
    be->rope = mx_cpu_rope;
    be->swiglu = mx_cpu_swiglu;
    be->gelu = mx_cpu_gelu;
    be->add = mx_cpu_add;
    be->add_bias = mx_cpu_add_bias;
    be->attention = mx_cpu_attention;
    be->lse_merge = mx_cpu_lse_merge;
    be->xattn_select = mx_cpu_xattn_select;
    be->kv_write = mx_cpu_kv_write;
    be->to_host = cpu_to_host;
    mx_cpu_blocks_register(be);
    be->train = &mx_cpu_train_ops;
    mx_cpu_batch_register(be);
    return be;
}
