/*
 * Transactions: work that must finish before a graceful shutdown (ura_main waits for the
 * count to reach zero). Loop state, so core owns it; any thread.
 */
#include <stdatomic.h>

#include "loop.h"

void ura_transaction_begin(ura_loop *loop)
{
	/* Relaxed: a counter; the waiter only needs to see it reach zero eventually. */
	if (loop)
		atomic_fetch_add_explicit(&loop->transactions, 1, memory_order_relaxed);
}

void ura_transaction_end(ura_loop *loop)
{
	if (!loop)
		return;
	uint64_t n = atomic_load_explicit(&loop->transactions, memory_order_relaxed);
	/* Never below zero: an unbalanced end is ignored rather than wrapping. */
	while (n && !atomic_compare_exchange_weak_explicit(&loop->transactions, &n, n - 1,
							   memory_order_release,
							   memory_order_relaxed))
		;
}

uint64_t ura_transaction_count(ura_loop *loop)
{
	return loop ? atomic_load_explicit(&loop->transactions, memory_order_acquire) : 0;
}
