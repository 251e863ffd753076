/*
 * Walking a session's tasks.
 *
 * A session keeps its live tasks on a list in acceptance order, except the shared
 * session: it is never invalidated, so nothing needs its tasks often, and most programs'
 * tasks go through it, so it saves the list's upkeep on every task. Its rare walks
 * (get_tasks, flush and reset, cancel retries, the loop's teardown) scan the registry
 * for slots it has linked instead. (Barriers need no walk: see barrier.c.)
 */
#include "session.h"

void ura__task_walk_start(struct ura__task_walk *w, ura_session *s)
{
	struct ura__registry *r = &s->loop->registry;
	w->s = s;
	if (!s->shared) {
		w->next1 = s->task_head;
		w->end = 0;
		return;
	}
	w->next1 = 1;
	/* Relaxed: a chunk counted here but not ready yet is skipped below (its slots
	 * cannot hold a task the loop has linked: linking happens on this thread). */
	w->end = atomic_load_explicit(&r->nchunks, memory_order_relaxed) << URA__CHUNK_SHIFT;
}

/* The shared session's next linked task at or after index next1 - 1 of the scan. */
static struct ura__slot *scan_next(struct ura__task_walk *w, uint32_t *index)
{
	struct ura__registry *r = &w->s->loop->registry;
	while (w->next1 - 1 < w->end) {
		uint32_t i = w->next1 - 1;
		struct ura__slot *slot = ura__registry_slot(r, i);
		if (!slot) { /* chunk not in use: skip it whole */
			w->next1 = ((i >> URA__CHUNK_SHIFT) + 1) * URA__CHUNK_SLOTS + 1;
			continue;
		}
		w->next1++;
		/* Acquire: a slot another thread accepted is read after its publication.
		 * Only this (the loop) thread makes a slot FREE, so a slot found live stays
		 * so while we read it. */
		uint64_t gs = atomic_load_explicit(&slot->gen_state, memory_order_acquire);
		if (ura__gs_state(gs) == URA__SLOT_FREE ||
		    atomic_load_explicit(&slot->session, memory_order_relaxed) != w->s ||
		    !(slot->lflags & URA__TF_LINKED))
			continue;
		*index = i;
		return slot;
	}
	return NULL;
}

struct ura__slot *ura__task_walk_next(struct ura__task_walk *w, uint32_t *index)
{
	if (w->s->shared)
		return scan_next(w, index);
	if (!w->next1)
		return NULL;
	struct ura__slot *slot = ura__session_slot(w->s, w->next1);
	/* The slot read as next was finished meanwhile (an act's callbacks can end other
	 * tasks, e.g. a cancel finished at once for want of memory): it is off the list,
	 * and its link is a free-list link now. Start again from the head; acts on tasks
	 * already seen find them changed and do nothing. Relaxed: the loop's own store. */
	if (ura__gs_state(atomic_load_explicit(&slot->gen_state, memory_order_relaxed)) ==
	    URA__SLOT_FREE) {
		if (!w->s->task_head)
			return NULL;
		slot = ura__session_slot(w->s, w->next1 = w->s->task_head);
	}
	*index = w->next1 - 1;
	w->next1 = atomic_load_explicit(&slot->next, memory_order_relaxed);
	return slot;
}
