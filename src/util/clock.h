/* The clock the runtime measures with. */
#ifndef URA_CLOCK_H
#define URA_CLOCK_H

#include <stdint.h>

/* CLOCK_MONOTONIC in nanoseconds. Any thread. */
uint64_t ura__now_ns(void);

#endif
