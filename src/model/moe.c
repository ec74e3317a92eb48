/* moe.c: mixture-of-experts MLP. Not implemented yet: MoE models are refused at load until this lands. */
#include <stdio.h>
#include <stdlib.h>

#include "session.h"

void mx_mlp_moe(mx_session *s, int l, int T) {
    fprintf(stderr, "mixatt: mixture-of-experts is not implemented yet (layer %d)\n", l);
    abort();
}
