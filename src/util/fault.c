/* Fault injection state (see fault.h). Relaxed atomics throughout: tests arm a site and
 * then drive the runtime; the counters need to be exact, not ordered with anything. */
#include "fault.h"

#ifdef URA_FAULT_INJECTION
#include <stdatomic.h>

struct site {
	_Atomic unsigned long checks;   /* checks since the site was armed */
	_Atomic unsigned long fire_at;  /* fail when checks reaches this (0: never) */
	_Atomic unsigned long fire_end; /* ...until checks passes this */
	_Atomic int error;
	_Atomic unsigned long total_checks, injected;
};

static struct site sites[URA__FAULT_SITES];

int ura__fault(enum ura__fault_site site)
{
	struct site *s = &sites[site];
	atomic_fetch_add_explicit(&s->total_checks, 1, memory_order_relaxed);
	unsigned long at = atomic_load_explicit(&s->fire_at, memory_order_relaxed);
	if (!at)
		return 0;
	unsigned long n = atomic_fetch_add_explicit(&s->checks, 1, memory_order_relaxed) + 1;
	if (n < at || n > atomic_load_explicit(&s->fire_end, memory_order_relaxed))
		return 0;
	atomic_fetch_add_explicit(&s->injected, 1, memory_order_relaxed);
	return atomic_load_explicit(&s->error, memory_order_relaxed);
}

void ura__fault_arm(enum ura__fault_site site, int error, unsigned long nth, unsigned long repeat)
{
	struct site *s = &sites[site];
	atomic_store_explicit(&s->fire_at, 0, memory_order_relaxed);
	atomic_store_explicit(&s->checks, 0, memory_order_relaxed);
	atomic_store_explicit(&s->error, error, memory_order_relaxed);
	atomic_store_explicit(&s->fire_end, nth + repeat, memory_order_relaxed);
	atomic_store_explicit(&s->fire_at, nth, memory_order_relaxed);
}

void ura__fault_disarm_all(void)
{
	for (int i = 0; i < URA__FAULT_SITES; i++)
		atomic_store_explicit(&sites[i].fire_at, 0, memory_order_relaxed);
}

unsigned long ura__fault_checks(enum ura__fault_site site)
{
	return atomic_load_explicit(&sites[site].total_checks, memory_order_relaxed);
}

unsigned long ura__fault_injected(enum ura__fault_site site)
{
	return atomic_load_explicit(&sites[site].injected, memory_order_relaxed);
}
#endif
