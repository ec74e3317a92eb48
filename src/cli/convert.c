/* convert.c: `mixatt convert`: writes a loaded model (a Hugging Face directory or a GGUF file) as GGUF v3.
 * Tensors keep their stored type and bytes (F32/F16/BF16 from safetensors; any GGUF type from a GGUF) under
 * GGUF names. Metadata: general.architecture (llama, gpt2, deepseek2) with llama.cpp's standard keys, and
 * mixatt's own keys for what GGUF has no name for: mixatt.rope_half (Hugging Face Llama/Mistral weights are
 * not permuted the way llama.cpp's converter permutes them) and mixatt.plan (the attention plan string).
 * From a GGUF source every other key (tokenizer, chat template, general.*) is copied as it is; from a Hugging
 * Face directory with a tokenizer.json, the tokenizer and chat template are written by
 * mx_tokenizer_write_gguf (llama.cpp's tokenizer.ggml.* keys plus the tokenizer.json whole). */
#include <stdio.h>
#include <string.h>

#include "../io/gguf_write.h"
#include "../model/save_gguf.h"
#include "commands.h"
#include "common.h"

static void help(FILE *f) {
    fprintf(
        f,
        "usage: mixatt convert -m MODEL -o OUT.gguf\n\n"
        "Writes MODEL as a GGUF v3 file that `mixatt run/logits -m OUT.gguf` loads with the same logits.\n\n"
        "  -m, --model PATH   a Hugging Face directory (config.json + model.safetensors or shards;\n"
        "                     model_type gpt2, llama, mistral, mixtral, deepseek_v2, deepseek_v3) or a GGUF "
        "file\n"
        "  -o, --out FILE     the GGUF to write (written to FILE.tmp, then renamed)\n"
        "  --plan P, --window W, --attn KIND   store this attention plan with the model (mixatt.plan): the\n"
        "                     converted file then runs with it as its own plan\n\n"
        "Tensors keep their stored type (F32, F16, BF16; quantized types from a GGUF); nothing is\n"
        "re-quantized. Keys: general.architecture llama | gpt2 | deepseek2 with llama.cpp's names, plus\n"
        "mixatt.rope_half and mixatt.plan. A Hugging Face tokenizer (tokenizer.json, tokenizer_config.json)\n"
        "goes in as llama.cpp's tokenizer.ggml.* keys, tokenizer.chat_template, and the tokenizer.json "
        "whole\n"
        "(tokenizer.huggingface.json), so the GGUF tokenizes exactly as the directory did. A directory\n"
        "without tokenizer.json gives a GGUF without a tokenizer, which takes token ids (logits --ids).\n");
}

static int convert(const char *in, const char *out, const mx_load_opts *opts) {
    mx_err err = {0};
    mx_model *m = NULL;
    if (mx_model_load(in, opts, &m, &err)) {
        fprintf(stderr, "mixatt convert: cannot load model: %s\n", err.msg);
        return 1;
    }
    mx_gguf_writer *w = mx_gguf_writer_new();
    int rc = !w ? mx_err_set(&err, MX_ERR_NOMEM, "out of memory") : MX_OK;
    if (!rc)
        rc = mx_save_gguf_keys(w, m, &err) ||
             (!m->gguf && m->tok && mx_tokenizer_write_gguf(m->tok, m->chat, w, &err)) ||
             mx_save_gguf_tensors(w, m, &err) || mx_gguf_writer_save(w, out, &err);
    if (rc)
        fprintf(stderr, "mixatt convert: %s: %s\n", out, err.msg);
    else
        fprintf(stderr, "mixatt convert: wrote %s (%s, %d tensors, %.1f MB)%s\n", out, m->cfg.arch_name,
                m->dict.n, mx_model_weight_bytes(m) / 1e6, m->tok ? "" : "; no tokenizer: use token ids");
    mx_gguf_writer_free(w);
    mx_model_free(m);
    return rc ? 1 : 0;
}

int mx_cmd_convert(int argc, char **argv, mx_comm *comm) {
    const char *out = NULL;
    const mx_opt opts[] = {MX_OPT_S("--out", "-o", &out), MX_OPT_END};
    mx_common_opts o;
    int status;
    const mx_command cmd = {.name = "convert", .help = help, .opts = opts};
    if (!mx_command_start(&cmd, argc, argv, comm, &o, &status)) return status;
    if (!o.model || !out) {
        fprintf(stderr, "mixatt convert: need -m MODEL and -o OUT.gguf (see --help)\n");
        return 2;
    }
    return convert(o.model, out, &o.load);
}
