/* fuzz_ruler.c: libFuzzer target for the RULER haystack reader (make fuzz). Each input is a byte that picks one
 * of the essay tasks (niah_single_2/3, niah_multikey_1, niah_multivalue, niah_multiquery) and a length, then
 * the text of a `mixatt eval ruler --haystack FILE`; a sample of that length is built from the text, with a
 * counter of one token per 4 bytes standing in for the tokenizer. A sample that is made must hold every reference in its context; one that is refused
 * (a text too short for the length, say) must say why. The seed corpus holds prose, a text without sentence
 * ends and a nearly empty one (make_corpus.py). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/eval/ruler.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int count_bytes(void *ctx, const mx_ruler_sample *s) {
    (void)ctx;
    return (int)((strlen(s->pre) + strlen(s->post) + strlen(s->answer_prefix)) / 4);
}

static const mx_ruler_task ESSAY[] = {MX_RULER_NIAH_SINGLE_2, MX_RULER_NIAH_SINGLE_3,
                                      MX_RULER_NIAH_MULTIKEY_1, MX_RULER_NIAH_MULTIVALUE,
                                      MX_RULER_NIAH_MULTIQUERY};

static void make_and_check(mx_ruler_task t, int length, const char *essay, int index) {
    mx_ruler_sample s;
    mx_err err = {0};
    memset(&s, 0, sizeof s);
    if (mx_ruler_make(t, length, 11, index, essay, count_bytes, NULL, &s, &err) != MX_OK) {
        if (!err.msg[0]) __builtin_trap();
        return;
    }
    if (s.n_refs <= 0 || s.n_refs > MX_RULER_MAX_REFS || count_bytes(NULL, &s) + s.max_new > length)
        __builtin_trap();
    for (int i = 0; i < s.n_refs; i++)
        if (!s.refs[i][0] || !strstr(s.pre, s.refs[i])) __builtin_trap();
    if (mx_ruler_score(&s, s.pre) != 100.0) __builtin_trap();
    mx_ruler_sample_free(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    char *essay = malloc(size);
    if (!essay) return 0;
    memcpy(essay, data + 1, size - 1);
    essay[size - 1] = '\0';
    int n_tasks = (int)(sizeof ESSAY / sizeof *ESSAY), lengths[] = {64, 160, 700, 1500};
    make_and_check(ESSAY[data[0] % n_tasks], lengths[data[0] / n_tasks % 4], essay, data[0] >> 4);
    free(essay);
    return 0;
}
