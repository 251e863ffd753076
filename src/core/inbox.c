/*
 * MPSC inbox: a Treiber stack that the single consumer empties with one exchange and
 * then reverses, so nodes come out in push order.
 *
 * Progress: producers CAS the head (lock-free); the consumer's take is one exchange
 * (wait-free). There is no ABA: the consumer never pops single nodes, it swaps the whole
 * list for NULL, so a producer's CAS compares against a head that only producers install.
 *
 * Order: pushes are linearised by their CAS; the taken list is reversed into that order.
 * A push that happens-before another (same thread, or the handle was passed on) comes out
 * first, in the same take or an earlier one.
 *
 * Wakeup: ura__inbox_push reports whether the inbox was empty. Only such a push needs
 * to wake the consumer: a later push onto a non-empty inbox will be taken by the same
 * take that the first push's wakeup causes. The consumer always takes before it sleeps,
 * and a push after that take finds the inbox empty and wakes it.
 *
 * Fences: the CAS in push and the exchange in take are both acq_rel. Release in push
 * with acquire in take: a node's contents written before its push are visible to the
 * consumer. Release in take with acquire in push: a push that finds the inbox empty
 * (it read the NULL a take wrote) comes after everything the consumer did before that
 * take, so a producer may reuse a node the consumer has finished with (conn.c's embedded
 * drain command) without a race on its link. The push is seq_cst, not only acq_rel: it
 * is the store half of the loop's sleep/wakeup pairing (loop.c, "Wakeup"), which needs
 * the push, the producer's read of `sleeping`, the loop's store to it and its last look
 * at the inbox in one total order.
 */
#include "inbox.h"

bool ura__inbox_push(struct ura__inbox *ib, struct ura__inbox_node *n)
{
	struct ura__inbox_node *old = atomic_load_explicit(&ib->head, memory_order_relaxed);
	do {
		n->next = old;
	} while (!atomic_compare_exchange_weak_explicit(&ib->head, &old, n,
							memory_order_seq_cst,
							memory_order_relaxed));
	return old == NULL;
}

struct ura__inbox_node *ura__inbox_take(struct ura__inbox *ib)
{
	struct ura__inbox_node *n = atomic_exchange_explicit(&ib->head, NULL, memory_order_acq_rel);
	struct ura__inbox_node *prev = NULL;
	while (n) {
		struct ura__inbox_node *next = n->next;
		n->next = prev;
		prev = n;
		n = next;
	}
	return prev;
}
