/* star_cli.h: long-context attention on the command line (mixatt run, logits, bench, eval): Star Attention's
 * flags --attn star, --block, --anchor, --query; XAttention's --attn xattn | star+xattn, --xattn-stride,
 * --xattn-threshold; their help and checks. */
#ifndef MX_STAR_CLI_H
#define MX_STAR_CLI_H

#include <stdio.h>

#include "../run/star_pipeline.h"

/* The defaults: off, block = context / ranks, anchor = block, query = 1 token. */
mx_star_opts mx_star_cli_defaults(void);
/* A command's flag function for the Star flags (an mx_flag_fn; star is the mx_star_opts to fill): 1 consumed,
 * 0 not a Star flag, -1 bad value (message printed). */
int mx_star_cli_flag(void *star, const char *flag, const char *val, int *i);
/* After parsing: refuses Star flags without --attn star. 0 or 2 (message printed). */
int mx_star_cli_check(const char *cmd, const mx_star_opts *o);
void mx_star_cli_help(FILE *f);
/* With --attn xattn (no Star): gives session s XAttention. 0, or 1 with a message printed. */
int mx_xattn_cli_attach(const char *cmd, const mx_star_opts *o, mx_session *s);
/* The query length for a prompt of n tokens: o->query, which must leave at least one context token. Prints
 * a message and returns -1 when it does not. */
int mx_star_cli_query(const char *cmd, const mx_star_opts *o, int n);

#endif
