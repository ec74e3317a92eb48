/* load_hf.c: Hugging Face directories (config.json + *.safetensors). Not implemented yet. */
#include "model.h"

int mx_load_hf(mx_model *m, mx_err *err) {
    return mx_err_set(err, MX_ERR_UNSUPPORTED, "%s: loading Hugging Face directories is not implemented yet", m->path);
}
