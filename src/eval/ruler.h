/* ruler.h: RULER's synthetic long-context tasks (NVIDIA's RULER; docs/eval.md), generated with no downloads,
 * and their string_match_all score.
 *
 * Tasks: niah_single_1/2/3, niah_multikey_1/2/3, niah_multivalue, niah_multiquery (needle retrieval), vt
 * (variable tracking: a chain of 4 hops), cwe (the 10 most common words of a numbered list) and fwe (the 3
 * most frequent coded words of a Zipf(2) text). A needle reads "One of the special magic {numbers|uuids} for
 * {key} is: {value}."; keys are adjective-noun pairs (or uuids), values 7-digit numbers (or uuids). The noise
 * haystack is "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
 * repeated, one per line, needles at random lines; the essay tasks (single_2/3, multikey_1, multivalue,
 * multiquery) take their haystack from the user's text (the words of a file, needles at sentence boundaries
 * at depths from 40 evenly spaced points), or the noise haystack when none is given; multikey_2/3's haystack
 * is made of distractor needles.
 *
 * A sample is the instruction + context (`pre`, Star's context), the question (`post`, which with the chat
 * template's turn end and the answer prefix forms Star's query), the answer prefix, and the reference strings.
 * Its size (haystack lines, words or needles) is the largest for which count(prompt) + max_new fits the
 * length, by binary search over a counter the caller supplies (tokens of the rendered prompt). */
#ifndef MX_RULER_H
#define MX_RULER_H

#include <stdint.h>

#include "../base/status.h"

typedef enum {
    MX_RULER_NIAH_SINGLE_1,
    MX_RULER_NIAH_SINGLE_2,
    MX_RULER_NIAH_SINGLE_3,
    MX_RULER_NIAH_MULTIKEY_1,
    MX_RULER_NIAH_MULTIKEY_2,
    MX_RULER_NIAH_MULTIKEY_3,
    MX_RULER_NIAH_MULTIVALUE,
    MX_RULER_NIAH_MULTIQUERY,
    MX_RULER_VT,
    MX_RULER_CWE,
    MX_RULER_FWE,
    MX_RULER_N_TASKS
} mx_ruler_task;

enum { MX_RULER_MAX_REFS = 10 };

typedef struct {
    mx_ruler_task task;
    char *pre;           /* instruction and context */
    char *post;          /* the question, after the context ("\n..."), before the chat turn's end */
    char *answer_prefix; /* appended after the assistant's opening (or after post without a template) */
    char *refs[MX_RULER_MAX_REFS];
    int n_refs;
    int max_new; /* tokens to generate */
    int size;    /* the haystack size chosen (lines, words, needles or list entries) */
} mx_ruler_sample;

/* Tokens of the prompt a sample renders to (the caller applies the chat template); < 0 on failure. */
typedef int (*mx_ruler_count_fn)(void *ctx, const mx_ruler_sample *s);

/* The task's name ("niah_single_1" ...), and the task of a name (-1 if none). */
const char *mx_ruler_task_name(mx_ruler_task t);
int mx_ruler_task_parse(const char *name);

/* Builds sample number `index` of task t for a prompt of at most `length` tokens as counted by count, from
 * seed (the same arguments give the same sample). essay: the user's haystack text, NULL = the noise haystack
 * for the essay tasks. Fails with a message when even the smallest sample does not fit, or when the essay
 * text is too short to fill the length. */
int mx_ruler_make(mx_ruler_task t, int length, uint64_t seed, int index, const char *essay,
                  mx_ruler_count_fn count, void *ctx, mx_ruler_sample *out, mx_err *err);
void mx_ruler_sample_free(mx_ruler_sample *s);

/* string_match_all: 100 × the fraction of references found in pred (case-insensitive substrings). */
double mx_ruler_score(const mx_ruler_sample *s, const char *pred);

#endif
