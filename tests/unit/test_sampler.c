/* test_sampler.c: sampling semantics. Greedy is argmax; with top-k 1 any temperature is greedy; the empirical
 * distribution at temperature 1 follows the softmax (chi-square bound); top-p, min-p and top-k restrict the
 * support exactly as defined in sampler.h; the repetition penalty lowers repeated tokens; seeds reproduce. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "../../src/run/sampler.h"

enum { V = 8 };
static const float BASE[V] = {2.0f, 1.0f, 0.5f, 0.0f, -0.5f, -1.0f, 3.0f, -2.0f};

static int draw(mx_sampler_params p, int n, int *counts) {
    mx_sampler s;
    cr_assert_eq(mx_sampler_init(&s, &p, V), 0);
    for (int i = 0; i < V; i++) counts[i] = 0;
    int last = -1;
    for (int i = 0; i < n; i++) {
        float l[V];
        for (int j = 0; j < V; j++) l[j] = BASE[j];
        last = mx_sample(&s, l, NULL, 0);
        counts[last]++;
    }
    mx_sampler_free(&s);
    return last;
}

static mx_sampler_params plain(float temp) {
    mx_sampler_params p = mx_sampler_defaults();
    p.temperature = temp, p.top_k = 0, p.top_p = 1.0f, p.min_p = 0.0f;
    return p;
}

Test(sampler, greedy_is_argmax) {
    int c[V];
    draw(plain(0), 10, c);
    cr_assert_eq(c[6], 10);
    mx_sampler_params p = plain(5.0f);
    p.top_k = 1;
    draw(p, 50, c);
    cr_assert_eq(c[6], 50);
}

Test(sampler, temperature_one_follows_softmax) {
    int c[V], n = 40000;
    draw(plain(1.0f), n, c);
    double z = 0, chi2 = 0;
    for (int j = 0; j < V; j++) z += exp(BASE[j]);
    for (int j = 0; j < V; j++) {
        double e = n * exp(BASE[j]) / z;
        chi2 += (c[j] - e) * (c[j] - e) / e;
    }
    cr_assert(chi2 < 24.3, "chi-square %g over 7 degrees of freedom (p = 0.001 bound 24.3)", chi2);
}

Test(sampler, top_p_min_p_top_k_restrict_support) {
    int c[V];
    mx_sampler_params p = plain(1.0f);
    p.top_p =
        0.7f; /* softmax mass: token 6 ≈ 0.61, token 0 ≈ 0.22: the smallest set reaching 0.7 is {6, 0} */
    draw(p, 3000, c);
    cr_assert(c[6] > 0 && c[0] > 0 && c[6] + c[0] == 3000, "top-p kept more than {6, 0}");
    p = plain(1.0f);
    p.min_p = 0.3f; /* keeps tokens with prob >= 0.3 x p(6): exp(2-3) = 0.37 ok, exp(1-3) = 0.14 not */
    draw(p, 3000, c);
    cr_assert(c[6] + c[0] == 3000);
    p = plain(1.0f);
    p.top_k = 3; /* {6, 0, 1} */
    draw(p, 3000, c);
    cr_assert(c[6] + c[0] + c[1] == 3000 && c[1] > 0);
}

Test(sampler, repetition_penalty_and_seed) {
    mx_sampler_params p = plain(0);
    p.repeat_penalty = 2.0f;
    mx_sampler s;
    mx_sampler_init(&s, &p, V);
    float l[V];
    for (int j = 0; j < V; j++) l[j] = BASE[j];
    int hist[1] = {6}; /* 3.0 / 2 = 1.5 < 2.0: token 0 wins */
    cr_assert_eq(mx_sample(&s, l, hist, 1), 0);
    mx_sampler_free(&s);
    int c1[V], c2[V];
    mx_sampler_params q = plain(1.0f);
    q.seed = 99;
    int a = draw(q, 100, c1), b = draw(q, 100, c2);
    cr_assert(a == b && memcmp(c1, c2, sizeof c1) == 0);
}
