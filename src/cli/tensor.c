/* tensor.c: `mixatt tensor`: inspect a GGUF file and dump its tensors dequantized to fp32.
 *   mixatt tensor -m FILE.gguf --list               metadata (key, type, value; arrays abbreviated) and
 * tensors (name, type, shape, offset, bytes) mixatt tensor -m FILE.gguf --dump-all -o DIR    every tensor to
 * DIR/NAME.f32 mixatt tensor -m FILE.gguf NAME -o OUT.f32      one tensor Dumps are raw little-endian
 * float32, row-major with ne[0] contiguous (numpy shape = reversed ne). argv[0] is the subcommand's name. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../io/dtype.h"
#include "../io/gguf.h"
#include "../io/quant.h"
#include "commands.h"
#include "common.h"

#define LIST_MAX_ELEMS 8   /* array elements shown by --list */
#define LIST_MAX_CHARS 120 /* string bytes shown by --list */

static void usage(FILE *f) {
    fprintf(f,
            "usage: mixatt tensor -m FILE.gguf --list\n"
            "       mixatt tensor -m FILE.gguf --dump-all -o DIR\n"
            "       mixatt tensor -m FILE.gguf NAME -o OUT.f32\n"
            "\n"
            "Reads a GGUF file (v2 or v3) and validates it.\n"
            "  -m, --model FILE   the GGUF file (required)\n"
            "  --list             print every metadata key (type, value; long strings and arrays\n"
            "                     abbreviated) and every tensor (name, type, shape ne[0..], data offset)\n"
            "  --dump-all         write every tensor, dequantized, to DIR/NAME.f32 ('/' in names -> '_')\n"
            "  NAME               write the one tensor NAME, dequantized, to OUT.f32\n"
            "  -o, --output PATH  the output directory (--dump-all) or file (NAME)\n"
            "  -h, --help         this text\n"
            "Dumps are little-endian float32, row-major with ne[0] contiguous (numpy shape: ne reversed).\n"
            "Exit status 0 on success, 1 on any error (the message names the file).\n");
}

/* Prints a gguf string with C-style escapes, at most `max` bytes, then "... (N bytes)". */
static void print_str(const mx_gguf_str *s, uint64_t max) {
    mx_print_quoted(stdout, s->ptr, (size_t)(s->len < max ? s->len : max));
    if (s->len > max) printf("... (%" PRIu64 " bytes)", s->len);
}

static void print_scalar(const mx_gguf_kv *kv) {
    switch (kv->type) {
    case MX_GGUF_F32:
    case MX_GGUF_F64:
        printf("%.9g", kv->v.f);
        break;
    case MX_GGUF_BOOL:
        fputs(kv->v.b ? "true" : "false", stdout);
        break;
    case MX_GGUF_I8:
    case MX_GGUF_I16:
    case MX_GGUF_I32:
    case MX_GGUF_I64:
        printf("%" PRId64, kv->v.i);
        break;
    default:
        printf("%" PRIu64, kv->v.u);
        break;
    }
}

static void print_array(const mx_gguf_kv *kv) {
    uint64_t shown = kv->count < LIST_MAX_ELEMS ? kv->count : LIST_MAX_ELEMS;
    printf("[");
    for (uint64_t i = 0; i < shown; i++) {
        if (i) printf(", ");
        if (kv->elem == MX_GGUF_STRING)
            print_str(&kv->strs[i], 40);
        else if (kv->elem == MX_GGUF_ARRAY)
            print_array(&kv->items[i]);
        else if (kv->elem == MX_GGUF_F32 || kv->elem == MX_GGUF_F64)
            printf("%.9g", mx_gguf_arr_f64(kv, i));
        else if (kv->elem == MX_GGUF_U64)
            printf("%" PRIu64, (uint64_t)mx_gguf_arr_i64(kv, i));
        else if (kv->elem == MX_GGUF_BOOL)
            fputs(mx_gguf_arr_i64(kv, i) ? "true" : "false", stdout);
        else
            printf("%" PRId64, mx_gguf_arr_i64(kv, i));
    }
    if (kv->count > shown) printf(", ... (%" PRIu64 " total)", kv->count);
    printf("]");
}

static void print_type(const mx_gguf_kv *kv) {
    if (kv->type != MX_GGUF_ARRAY) {
        fputs(mx_gguf_vtype_name(kv->type), stdout);
        return;
    }
    printf("array[%s, %" PRIu64 "]", mx_gguf_vtype_name(kv->elem), kv->count);
}

static int cmd_list(const mx_gguf *g) {
    printf("%s: GGUF v%u, %" PRIu64 " metadata keys, %" PRIu64 " tensors, alignment %" PRIu64
           ", data at offset %" PRIu64 "\n",
           g->path, g->version, g->n_kv, g->n_tensors, g->alignment, g->data_offset);
    printf("metadata:\n");
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const mx_gguf_kv *kv = &g->kv[i];
        printf("  %s  ", kv->key);
        print_type(kv);
        printf("  ");
        if (kv->type == MX_GGUF_STRING)
            print_str(&kv->str, LIST_MAX_CHARS);
        else if (kv->type == MX_GGUF_ARRAY)
            print_array(kv);
        else
            print_scalar(kv);
        printf("\n");
    }
    printf("tensors:\n");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const mx_gguf_tensor *t = &g->tensors[i];
        printf("  %s  %s  [", t->name, mx_dtype_name(t->type));
        for (int d = 0; d < t->n_dims; d++) printf(d ? ", %" PRId64 : "%" PRId64, t->ne[d]);
        printf("]  offset %" PRIu64 "  %zu bytes\n", t->offset, t->nbytes);
    }
    return 0;
}

/* Writes tensor t dequantized to path, row by row. */
static int dump_tensor(const mx_gguf *g, const mx_gguf_tensor *t, const char *path) {
    int64_t ne0 = t->ne[0], rows = t->ne[1] * t->ne[2] * t->ne[3];
    size_t row_bytes = mx_dtype_row_bytes(t->type, ne0);
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "mixatt tensor: %s: cannot write '%s': %s\n", g->path, path, strerror(errno));
        return 1;
    }
    float *buf = malloc((size_t)(ne0 ? ne0 : 1) * sizeof *buf);
    int rc = buf ? 0 : 1;
    for (int64_t r = 0; !rc && r < rows && ne0 > 0; r++) {
        mx_dequant_row(t->type, (const uint8_t *)t->data + (size_t)r * row_bytes, buf, ne0);
        if (fwrite(buf, sizeof *buf, (size_t)ne0, f) != (size_t)ne0) rc = 1;
    }
    free(buf);
    if (fclose(f) != 0) rc = 1;
    if (rc)
        fprintf(stderr, "mixatt tensor: %s: writing tensor '%s' to '%s' failed\n", g->path, t->name, path);
    return rc;
}

static int cmd_dump_all(const mx_gguf *g, const char *dir) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "mixatt tensor: %s: cannot create directory '%s': %s\n", g->path, dir,
                strerror(errno));
        return 1;
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const mx_gguf_tensor *t = &g->tensors[i];
        size_t len = strlen(dir) + strlen(t->name) + 6;
        char *path = malloc(len);
        if (!path) return 1;
        snprintf(path, len, "%s/%s.f32", dir, t->name);
        for (char *p = path + strlen(dir) + 1; *p; p++)
            if (*p == '/') *p = '_';
        int rc = dump_tensor(g, t, path);
        free(path);
        if (rc) return rc;
    }
    return 0;
}

typedef struct {
    const char *model, *out, *name;
    int list, dump_all;
} tensor_opts;

/* Returns 0 to go on, 1 on a usage error (printed), 2 for --help (printed). */
static int parse_args(int argc, char **argv, tensor_opts *o) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 2;
        } else if (!strcmp(a, "--list")) {
            o->list = 1;
        } else if (!strcmp(a, "--dump-all")) {
            o->dump_all = 1;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model") || !strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "mixatt tensor: %s expects a value\n", a);
                return 1;
            }
            *(a[1] == 'm' || a[2] == 'm' ? &o->model : &o->out) = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "mixatt tensor: unknown option '%s' (see --help)\n", a);
            return 1;
        } else if (o->name) {
            fprintf(stderr, "mixatt tensor: more than one tensor name ('%s', '%s')\n", o->name, a);
            return 1;
        } else {
            o->name = a;
        }
    }
    const char *err = NULL;
    if (!o->model)
        err = "-m FILE.gguf is required";
    else if (o->list + o->dump_all + (o->name != NULL) != 1)
        err = "give exactly one of --list, --dump-all, NAME";
    else if (!o->list && !o->out)
        err = "-o is required with --dump-all and NAME";
    if (err) {
        fprintf(stderr, "mixatt tensor: %s\n\n", err);
        usage(stderr);
        return 1;
    }
    return 0;
}

int mx_cmd_tensor(int argc, char **argv, mx_comm *comm) {
    tensor_opts o = {0};
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc == 2 ? 0 : 1;
    mx_gguf *g = NULL;
    mx_err err;
    if (mx_gguf_open(o.model, &g, &err)) {
        fprintf(stderr, "mixatt tensor: %s\n", err.msg);
        return 1;
    }
    if (o.list) {
        rc = cmd_list(g);
    } else if (o.dump_all) {
        rc = cmd_dump_all(g, o.out);
    } else {
        const mx_gguf_tensor *t = mx_gguf_tensor_find(g, o.name);
        if (!t) {
            fprintf(stderr, "mixatt tensor: %s: no tensor named '%s'\n", g->path, o.name);
            rc = 1;
        } else {
            rc = dump_tensor(g, t, o.out);
        }
    }
    if (fflush(stdout) != 0) rc = 1;
    mx_gguf_close(g);
    return rc;
}
