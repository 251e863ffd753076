/* Lock-free MPSC inbox: any thread pushes, the loop thread takes everything at once. */
#ifndef URA_INBOX_H
#define URA_INBOX_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

struct ura__inbox_node {
	struct ura__inbox_node *next;
};

struct ura__inbox {
	/* Written by every producer: on its own cache line. */
	_Alignas(64) _Atomic(struct ura__inbox_node *) head;
};

/* Pushes n; returns true when the inbox was empty before, i.e. the caller must wake the
 * consumer. Any thread. */
bool ura__inbox_push(struct ura__inbox *ib, struct ura__inbox_node *n);

/* Takes every node pushed so far, oldest first (a NULL-terminated list). Loop thread. */
struct ura__inbox_node *ura__inbox_take(struct ura__inbox *ib);

/* The consumer's last look before it sleeps: seq_cst (loop.c, "Wakeup"). */
static inline bool ura__inbox_empty_before_sleep(struct ura__inbox *ib)
{
	return atomic_load_explicit(&ib->head, memory_order_seq_cst) == NULL;
}

static inline bool ura__inbox_empty(struct ura__inbox *ib)
{
	return atomic_load_explicit(&ib->head, memory_order_relaxed) == NULL;
}

#endif
