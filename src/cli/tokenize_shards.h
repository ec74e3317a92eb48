/* tokenize_shards.h: `mixatt tokenize -o PREFIX`: text files to llm.c token shards (see tokenize_shards.c).
 */
#ifndef MX_TOKENIZE_SHARDS_H
#define MX_TOKENIZE_SHARDS_H

#include <stdbool.h>

typedef struct {
    const char *out;     /* OUT_PREFIX: shards OUT_PREFIX_{train,val}_NNNNNN.bin */
    const char *doc_sep; /* also split files into documents at this text (NULL: a file is a document) */
    double val_fraction; /* share of the tokens held out (whole documents) */
    long shard_tokens;   /* tokens per shard file */
    bool no_special;     /* special tokens written in the text stay text */
    bool quiet;          /* no progress bar */
} mx_shard_opts;

/* Tokenizes the files (a directory stands for the regular files directly in it, sorted, hidden ones
 * skipped) with the tokenizer of the GGUF at model_path and writes the shards. Returns the exit status
 * (messages printed). */
int mx_tokenize_to_shards(const char *model_path, const char *const *inputs, int n_inputs,
                          const mx_shard_opts *o);

#endif
