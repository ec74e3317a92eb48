/* star_cli.h: Star Attention on the command line (mixatt run, mixatt logits, mixatt bench): the flags --attn star, --block,
 * --anchor, --query, their help, and opening the phase-2 session for a tokenized prompt whose last --query
 * tokens are the query. */
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
/* The query length for a prompt of n tokens: o->query, which must leave at least one context token. Prints
 * a message and returns -1 when it does not. */
int mx_star_cli_query(const char *cmd, const mx_star_opts *o, int n);

#endif
