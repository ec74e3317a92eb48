/* clock.h: the one wall clock mixatt times itself with: monotonic seconds (CLOCK_MONOTONIC), for intervals
 * only (the origin is arbitrary). */
#ifndef MX_CLOCK_H
#define MX_CLOCK_H

/* Seconds since an arbitrary fixed point; differences of two calls are elapsed time. */
double mx_now(void);

#endif
