/* mka.c: MKA and FastMKA attention. Not implemented yet: plans that need it are refused at load. */
#include <stdio.h>
#include <stdlib.h>

#include "../model/session.h"

void mx_attention_mka(mx_session *s, int l, int T) {
    fprintf(stderr, "mixatt: MKA attention is not implemented yet (layer %d)\n", l);
    abort();
}
