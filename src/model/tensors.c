/* tensors.c: the named tensor dictionary (see tensors.h). Linear lookup is fine: a few thousand names, looked
 * up once at load. */
#include "tensors.h"

#include <stdlib.h>
#include <string.h>

int mx_dict_own(mx_tensor_dict *d, void *buf, mx_err *err) {
    if (d->n_owned == d->cap_owned) {
        int cap = d->cap_owned ? d->cap_owned * 2 : 64;
        void **o = realloc(d->owned, sizeof(void *) * (size_t)cap);
        if (!o) return free(buf), mx_err_set(err, MX_ERR_NOMEM, "out of memory");
        d->owned = o;
        d->cap_owned = cap;
    }
    d->owned[d->n_owned++] = buf;
    return MX_OK;
}

int mx_dict_add(mx_tensor_dict *d, const char *name, uint32_t type, int n_dims, const int64_t *ne,
                const void *data, size_t nbytes, bool take_ownership, mx_err *err) {
    if (take_ownership && mx_dict_own(d, (void *)data, err)) return err->code;
    if (d->n == d->cap) {
        int cap = d->cap ? d->cap * 2 : 256;
        mx_named_tensor *it = realloc(d->items, sizeof *it * (size_t)cap);
        if (!it) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
        d->items = it;
        d->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy) return mx_err_set(err, MX_ERR_NOMEM, "out of memory");
    mx_named_tensor *nt = &d->items[d->n++];
    nt->name = copy;
    nt->t = (mx_tensor){.name = copy, .type = type, .n_dims = n_dims, .data = data, .nbytes = nbytes};
    for (int i = 0; i < 4; i++) nt->t.ne[i] = i < n_dims ? ne[i] : 1;
    return MX_OK;
}

const mx_tensor *mx_dict_find(const mx_tensor_dict *d, const char *name) {
    for (int i = 0; i < d->n; i++)
        if (!strcmp(d->items[i].name, name)) return &d->items[i].t;
    return NULL;
}

void mx_dict_free(mx_tensor_dict *d) {
    for (int i = 0; i < d->n; i++) free(d->items[i].name);
    for (int i = 0; i < d->n_owned; i++) free(d->owned[i]);
    free(d->items);
    free(d->owned);
    memset(d, 0, sizeof *d);
}
