/* agree.h: "all ranks agree or exit". A phase that can fail on some ranks only (loading weights, reading
 * data, allocating) ends with every rank calling mx_dist_agree with its own outcome; all ranks then take the
 * same branch: go on together, or stop together with the message of the lowest failing rank. No rank is left
 * waiting in a collective for a rank that has already returned.
 *
 *   int rc = load(...);                        // may fail on this rank only, err says why
 *   if (mx_dist_agree(comm, rc, &err)) {       // collective: every rank calls it
 *       mx_dist_report(comm, "mixatt", &err);  // printed once (rank 0), "mixatt: rank 1: ..."
 *       return 1;                              // every rank exits with status 1
 *   }
 */
#ifndef MX_DIST_AGREE_H
#define MX_DIST_AGREE_H

#include "comm.h"

/* rc: this rank's status (0 = ok); when non-zero, err holds this rank's message. Returns 0 on every rank when
 * every rank passed 0; otherwise a non-zero code on every rank with err = the lowest failing rank's message,
 * prefixed "rank R: " when the job has several ranks (a single rank's message is left as it is). comm NULL
 * stands for a single rank. */
int mx_dist_agree(mx_comm *comm, int rc, mx_err *err);
/* Prints "who: message" on stderr, once per job (rank 0; every rank when comm is NULL). */
void mx_dist_report(const mx_comm *comm, const char *who, const mx_err *err);
/* Whether this rank prints the job's messages (rank 0, or comm NULL). */
int mx_dist_is_root(const mx_comm *comm);

#endif
