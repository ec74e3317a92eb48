/* dtype.c: the table of tensor element types mixatt knows (ggml ids) and their block geometry. */
#include "dtype.h"

typedef struct {
    uint32_t id;
    mx_dtype_info info;
} dtype_entry;

static const dtype_entry k_dtypes[] = {
    {MX_F32, {"F32", 1, 4}},       {MX_F16, {"F16", 1, 2}},       {MX_BF16, {"BF16", 1, 2}},
    {MX_Q4_0, {"Q4_0", 32, 18}},   {MX_Q4_1, {"Q4_1", 32, 20}},   {MX_Q5_0, {"Q5_0", 32, 22}},
    {MX_Q5_1, {"Q5_1", 32, 24}},   {MX_Q8_0, {"Q8_0", 32, 34}},   {MX_Q8_1, {"Q8_1", 32, 36}},
    {MX_Q4_K, {"Q4_K", 256, 144}}, {MX_Q5_K, {"Q5_K", 256, 176}}, {MX_Q6_K, {"Q6_K", 256, 210}},
    {MX_Q8_K, {"Q8_K", 256, 292}},
};

const mx_dtype_info *mx_dtype_get(uint32_t type) {
    for (size_t i = 0; i < sizeof k_dtypes / sizeof k_dtypes[0]; i++)
        if (k_dtypes[i].id == type) return &k_dtypes[i].info;
    return NULL;
}

const char *mx_dtype_name(uint32_t type) {
    const mx_dtype_info *info = mx_dtype_get(type);
    return info ? info->name : "unknown";
}

size_t mx_dtype_row_bytes(uint32_t type, int64_t n) {
    const mx_dtype_info *info = mx_dtype_get(type);
    if (!info || n < 0 || n % info->block != 0) return 0;
    uint64_t blocks = (uint64_t)n / (uint64_t)info->block;
    if (blocks > SIZE_MAX / (uint64_t)info->bytes) return 0;
    return (size_t)(blocks * (uint64_t)info->bytes);
}
