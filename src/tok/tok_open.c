/* tok_open.c: the tokenizer of a model path, whatever it is (mx_tokenizer_open, see tokenizer.h): a Hugging
 * Face directory (tokenizer.json and its configs) or a GGUF file. */
#include "tokenizer.h"

#include <sys/stat.h>

int mx_tokenizer_open(const char *path, mx_tokenizer **out, mx_err *err) {
    *out = NULL;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        mx_chat_template *chat = NULL;
        int rc = mx_hf_load_tokenizer(path, out, &chat, err);
        mx_chat_template_free(chat);
        if (!rc && !*out)
            rc = mx_err_set(err, MX_ERR_MISSING, "%s: no tokenizer.json in the directory", path);
        return rc;
    }
    mx_gguf *g = NULL;
    int rc = mx_gguf_open(path, &g, err);
    if (!rc) rc = mx_tokenizer_from_gguf(g, out, err);
    if (g) mx_gguf_close(g);
    return rc;
}
