/* Listeners: what tests may read of one. See listener.c. */
#ifndef URA_LISTENER_H
#define URA_LISTENER_H

#include <stdbool.h>
#include <stdint.h>

#include "ura.h"

/* A listener's accept history, for tests. */
struct ura__listener_stats {
	/* Accepts that ended in an error the listener waits out before listening again
	 * (EMFILE, ENFILE, ENOBUFS, ENOMEM, anything unexpected). */
	uint64_t accept_failures;
	bool backoff_pending;        /* a wait is in progress */
	uint64_t backoffs_cancelled; /* waits ended by the listener's cancel */
};

/* Copies l's counters into *out. Loop thread only. */
void ura__listener_stats(ura_listener *l, struct ura__listener_stats *out);

#endif
