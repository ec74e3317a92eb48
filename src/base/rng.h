/* rng.h: a small deterministic random generator (xoshiro256** seeded by splitmix64). State lives in the
 * caller's struct: no global state. */
#ifndef MX_RNG_H
#define MX_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} mx_rng;

void mx_rng_seed(mx_rng *r, uint64_t seed);
uint64_t mx_rng_u64(mx_rng *r);
float mx_rng_float(mx_rng *r);  /* uniform in [0, 1) */
float mx_rng_normal(mx_rng *r); /* standard normal (Box-Muller) */

#endif
