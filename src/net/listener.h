/* Listeners: the accept loop, and what tests may read of one. See listener.c. */
#ifndef URA_LISTENER_H
#define URA_LISTENER_H

#include <stdbool.h>
#include <stdint.h>

#include "ura.h"

/* Makes the peer object for an accepted socket fd (which it then owns) or answers -errno
 * (the listener closes fd). Supplied by the layer whose objects the peers are. */
typedef int (*ura__listener_peer_fn)(ura_loop *loop, int fd, ura_conn **out);

/* A listener on address whose accepted sockets become peers by make_peer, each handed to
 * fn (not NULL) with one reference the callback owns. Returns as ura_listener_new. Loop
 * thread. */
int ura__listener_new(ura_loop *loop, const char *address, ura_accept_fn fn, void *ctx,
		      ura__listener_peer_fn make_peer, ura_listener **out);

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
