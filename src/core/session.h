/* Sessions: URLSession lifecycle over tasks. See session.c. */
#ifndef URA_SESSION_H
#define URA_SESSION_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "loop.h"
#include "ura.h"

/*
 * The session's state word: flag bits on top, below them the units of work accepted by
 * other threads and not yet taken over by the loop (tasks whose SUBMIT is in the inbox,
 * get_tasks/flush requests). Tasks linked on the loop thread are counted in
 * stats.in_flight (ura__session_live). Submit and invalidation meet here, lock-free: a
 * submit adds one to the count only while no invalidation bit is set (CAS), and
 * invalidation sets a bit (fetch_or). Whichever comes first in the word's modification
 * order wins: the submit is refused, or it is counted and the final event waits for it.
 */
#define URA__SS_FINISH (1ull << 62)  /* finish_tasks_and_invalidate requested */
#define URA__SS_CANCEL (1ull << 61)  /* invalidate_and_cancel requested */
#define URA__SS_FINAL (1ull << 60)   /* final event delivered */
#define URA__SS_FLAGS (URA__SS_FINISH | URA__SS_CANCEL | URA__SS_FINAL)
#define URA__SS_COUNT ((1ull << 60) - 1)

/* Stats written by the loop thread only, read by any thread: relaxed atomics so a
 * reader gets torn-free values without slowing the single writer. */
struct ura__session_counters {
	/* submitted counts from the session's creation; the stat is submitted -
	 * submitted_base, the base set by reset. */
	_Atomic uint64_t submitted, submitted_base, completed, cancelled;
	_Atomic uint64_t cancel_ok, cancel_enoent, cancel_ealready;
	_Atomic uint64_t in_flight, peak_in_flight;
	_Atomic uint64_t invalidate_to_final_ns;
};

/* A flush or reset waiting for the tasks tagged at or below tag (barrier.c). */
struct ura__barrier {
	struct ura__barrier *next;
	uint64_t tag;
	bool reset;
	void (*fn)(ura_session *, void *);
	void *arg;
};

/* Live tasks per barrier tag above the session's base tag, oldest first (barrier.c). */
struct ura__tag_counts {
	uint64_t *items;   /* items[head + i]: tasks tagged base + 1 + i */
	uint32_t head, len, cap;
};

struct ura_session {
	/* Written by every submitting thread: first, on its own line. */
	_Alignas(64) _Atomic uint64_t state;
	_Atomic uint32_t refs;
	_Atomic uint64_t invalidate_requested_ns; /* first request's time, 0 before */
	/* Flush and reset calls so far, any thread: a task is tagged with its value when
	 * submitted, a barrier with its value before the call's increment (barrier.c). */
	_Atomic uint64_t barrier_calls;

	_Alignas(64) ura_loop *loop; /* not dereferenced once the final event has been sent */
	bool shared;
	struct ura_session_delegate delegate;
	void *ctx;

	pthread_mutex_t desc_lock;
	char *description;

	/* Loop thread only. */
	uint64_t peak_live;              /* the largest live count since creation or reset */
	uint32_t task_head, task_tail;   /* index + 1 of the oldest/newest live task (not
	                                  * kept for the shared session: session_walk.c) */
	uint64_t cancels_in_flight;      /* ASYNC_CANCEL SQEs queued or in flight */
	bool retry_armed;                /* its cancel-retry timer is in the ring */
	bool retry_removing;             /* ...and a TIMEOUT_REMOVE for it too */
	bool retry_check_pending;        /* a missed cancel's check waits for the next drain */
	uint32_t retry_ms;               /* the next retry's delay; 0: start over */
	struct __kernel_timespec retry_ts; /* read by the kernel when the timer is submitted */
	bool cancel_all_done;            /* live tasks were cancelled for URA__SS_CANCEL */
	bool invalidating;               /* on the loop's invalidation watch */
	int final_error;
	struct ura__barrier *barriers, *barriers_tail; /* oldest (the front) first */
	uint64_t tag_base;               /* no live task is tagged below it (barrier.c) */
	uint64_t tagged;                 /* live tasks tagged above tag_base */
	uint64_t front_pending;          /* live tasks the front barrier waits for */
	uint64_t last_barrier_tag;       /* of the newest barrier taken */
	struct ura__tag_counts tag_counts;
	ura_task *scratch;               /* get_tasks answers; dropped by reset */
	size_t scratch_cap;
	struct ura__list in_loop;        /* on loop->sessions, under loop->sessions_lock */

	/* The session's one notice to the loop ("look at me": an invalidation or a last
	 * count unit). Embedded, so that sending it never allocates and a final event can
	 * never be lost to ENOMEM; notice_queued says it is in the inbox (session.c). */
	struct ura__cmd notice;
	_Atomic bool notice_queued;

	struct ura__session_counters stats;
};

/* Creates the loop's shared session. */
int ura__session_shared_new(ura_loop *loop, ura_session **out);

static inline bool ura__session_is_final(ura_session *s)
{
	return atomic_load_explicit(&s->state, memory_order_acquire) & URA__SS_FINAL;
}

/* Counts one unit of accepted work (a task or a pending command), or -ESHUTDOWN once
 * invalidation was requested. Any thread. */
int ura__session_count_get(ura_session *s);
/* Releases one unit; when it was the last of an invalidating session, the loop checks
 * the session at its next drain (no allocation: see notify_loop). Any thread. */
void ura__session_count_put(ura_session *s);
/* A task counted by another thread is now linked (counted as live). Loop thread. */
void ura__session_count_moved(ura_session *s);

/* Stats have one writer, the loop thread; any thread reads them. Relaxed: a reader
 * wants a torn-free recent value and orders nothing by it, and the writer pays no more
 * than for a plain variable. */
static inline void ura__stat_set(_Atomic uint64_t *c, uint64_t v)
{
	atomic_store_explicit(c, v, memory_order_relaxed);
}
static inline void ura__stat_bump(_Atomic uint64_t *c)
{
	ura__stat_set(c, atomic_load_explicit(c, memory_order_relaxed) + 1);
}

/* Tasks the loop has linked and not finished. Kept in the in_flight stat itself (one
 * counter, one store per change); only the loop thread writes it. Loop thread. */
static inline uint64_t ura__session_live(ura_session *s)
{
	return atomic_load_explicit(&s->stats.in_flight, memory_order_relaxed);
}

/* A slot on s's task list, named by index + 1 (never 0). Loop thread. */
static inline struct ura__slot *ura__session_slot(ura_session *s, uint32_t index1)
{
	return ura__registry_slot_at(&s->loop->registry, index1 - 1);
}

/*
 * Task accounting, called by task.c on the loop thread for every task, so inline. The
 * list links are relaxed atomics only because next doubles as the registry's free-list
 * link (registry.h); only the loop thread touches them while the task is live. The
 * caller sets URA__TF_LINKED with the slot's other flags (one store). The shared
 * session keeps no list (see session_walk.c).
 */
/* The tag of a task submitted now (barrier.c). Any thread. */
static inline uint64_t ura__session_barrier_tag(ura_session *s)
{
	/* Relaxed: a flush call that happens-before this read is seen by it (coherence),
	 * and one that this read happens-before cannot be; nothing else is ordered. */
	return atomic_load_explicit(&s->barrier_calls, memory_order_relaxed);
}

/* Out of line, rare: a tag above the base (a barrier was asked since the base). */
uint64_t ura__barrier_tag_add(ura_session *s, uint64_t tag);
void ura__barrier_tag_remove(ura_session *s, uint64_t tag);
/* The front barrier's tasks are done: runs it and every due one after it. */
void ura__barriers_run_due(ura_session *s);

/* Counts a task linked with tag in the barrier accounting. O(1). Loop thread. */
static inline void ura__barrier_task_linked(ura_session *s, struct ura__slot *slot, uint64_t tag)
{
	if (tag < s->tag_base)
		tag = s->tag_base; /* its barriers have all run: it was submitted with them */
	if (tag > s->tag_base)
		tag = ura__barrier_tag_add(s, tag);
	ura__slot_set_tag(slot, tag);
	if (s->barriers && tag <= s->barriers->tag)
		s->front_pending++;
}

/* Uncounts a finished task; runs barriers that were waiting only for it. O(1) but for
 * the barriers run. Loop thread. */
static inline void ura__barrier_task_done(ura_session *s, const struct ura__slot *slot)
{
	uint64_t tag = ura__slot_tag(slot);
	if (tag > s->tag_base)
		ura__barrier_tag_remove(s, tag);
	if (s->barriers && tag <= s->barriers->tag && --s->front_pending == 0)
		ura__barriers_run_due(s);
}

static inline void ura__session_task_linked(ura_session *s, uint32_t index, struct ura__slot *slot,
					    uint64_t tag)
{
	uint64_t n = atomic_load_explicit(&s->stats.submitted, memory_order_relaxed);
	ura__stat_set(&s->stats.submitted, n + 1);
	if (!s->shared) {
		slot->prev = s->task_tail;
		atomic_store_explicit(&slot->next, 0, memory_order_relaxed);
		if (s->task_tail)
			atomic_store_explicit(&ura__session_slot(s, s->task_tail)->next,
					      index + 1, memory_order_relaxed);
		else
			s->task_head = index + 1;
		s->task_tail = index + 1;
	}
	s->loop->live_tasks++;
	uint64_t live = ura__session_live(s) + 1;
	ura__stat_set(&s->stats.in_flight, live);
	/* The peak is compared on a loop-thread copy, stored only when it grows. */
	if (live > s->peak_live)
		ura__stat_set(&s->stats.peak_in_flight, s->peak_live = live);
	ura__barrier_task_linked(s, slot, tag);
}

static inline void ura__session_task_unlink(ura_session *s, struct ura__slot *slot)
{
	uint32_t next = atomic_load_explicit(&slot->next, memory_order_relaxed);
	if (slot->prev)
		atomic_store_explicit(&ura__session_slot(s, slot->prev)->next, next,
				      memory_order_relaxed);
	else
		s->task_head = next;
	if (next)
		ura__session_slot(s, next)->prev = slot->prev;
	else
		s->task_tail = slot->prev;
	/* URA__TF_LINKED stays set: the slot is freed next, and its flags are rewritten
	 * whole when it is used again (a store saved on every task). */
}

/*
 * A walk over the tasks s has linked and not finished: its list, oldest first, or for
 * the shared session a scan of the registry, in index order. The next task is found
 * before the current one is returned, so the caller may finish it. Loop thread.
 */
struct ura__task_walk {
	ura_session *s;
	uint32_t next1; /* index + 1 of the next slot to look at; 0: the list is done */
	uint32_t end;   /* scan: one past the last index in use */
};
void ura__task_walk_start(struct ura__task_walk *w, ura_session *s);
struct ura__slot *ura__task_walk_next(struct ura__task_walk *w, uint32_t *index);
/* Frees the SQE copy a task kept while pending or suspended (task.c). */
void ura__task_drop_pending(struct ura__slot *slot);
/* The last task is done: the final event, if the session is invalidating (session.c). */
void ura__session_after_task(ura_session *s);
/* Runs a barrier's callback (a reset first resets the stats) and releases its count
 * unit (session.c). */
void ura__session_barrier_answer(ura_session *s, struct ura__barrier *b);
/* Takes a flush/reset request with tag: a new barrier at the back (barrier.c). Returns
 * -ENOMEM (the caller retries). Loop thread. */
int ura__barrier_add(ura_session *s, uint64_t tag, bool reset, void (*fn)(ura_session *, void *),
		     void *arg);
/* Frees what the barrier accounting holds (the session's last unref). */
void ura__barriers_free(ura_session *s);

/* After a task's terminal call: task_did_complete, unlink, free the slot, release the
 * count, run due barriers, and emit the final event if it was the last. The caller
 * counted a cancelled task in stats.cancelled before the terminal call, so that nothing
 * but the handle and result has to be kept across it. */
static inline void ura__session_task_finished(ura_session *s, struct ura__slot *slot,
					      ura_task t, int32_t res)
{
	ura_loop *loop = s->loop;
	uint32_t index = ura__handle_index(t);
	if (s->delegate.task_did_complete)
		s->delegate.task_did_complete(s, t, res, s->ctx);
	if (slot->lflags & URA__TF_HAS_PENDING)
		ura__task_drop_pending(slot);
	if (!s->shared)
		ura__session_task_unlink(s, slot);
	loop->live_tasks--;
	ura__stat_bump(&s->stats.completed);
	uint64_t live = ura__session_live(s) - 1;
	ura__stat_set(&s->stats.in_flight, live);
	/* After the live count: a barrier run here reads it (barrier.c). Before the
	 * release: the slot's tag is read. */
	ura__barrier_task_done(s, slot);
	ura__registry_release(&loop->registry, index, slot);
	if (live == 0 && s->invalidating)
		ura__session_after_task(s);
}

/* Emits the final event if s is invalidating and nothing of it is left: no count, no
 * live task, no cancel of cancel.c's still pending. Loop thread, at top level. */
void ura__session_maybe_final(ura_session *s);

/* Looks at s after a notice: starts watching, cancels on request,
 * and emits the final event when nothing is left. Loop thread. */
void ura__session_check(ura_session *s);
/* ura_loop_free: invalidate and cancel every session, with error. Loop thread. */
void ura__session_invalidate_all(ura_loop *loop, int error);
/* ura_loop_free's last resort after the ring is gone: finish what is left. */
void ura__session_abandon_all(ura_loop *loop);
/* Drops the loop's reference to the shared session. */
void ura__session_release_shared(ura_loop *loop);

#endif
