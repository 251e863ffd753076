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
 * get_tasks/flush requests). Tasks linked on the loop thread are counted in loop_live. Submit and invalidation meet here, lock-free: a submit adds one
 * to the count only while no invalidation bit is set (CAS), and invalidation sets a bit
 * (fetch_or). Whichever comes first in the word's modification order wins: the submit is
 * refused, or it is counted and the final event waits for it.
 */
#define URA__SS_FINISH (1ull << 62)  /* finish_tasks_and_invalidate requested */
#define URA__SS_CANCEL (1ull << 61)  /* invalidate_and_cancel requested */
#define URA__SS_FINAL (1ull << 60)   /* final event delivered */
#define URA__SS_FLAGS (URA__SS_FINISH | URA__SS_CANCEL | URA__SS_FINAL)
#define URA__SS_COUNT ((1ull << 60) - 1)

/* Stats written by the loop thread only, read by any thread: relaxed atomics so a
 * reader gets torn-free values without slowing the single writer. */
struct ura__session_counters {
	_Atomic uint64_t submitted, completed, cancelled;
	_Atomic uint64_t cancel_ok, cancel_enoent, cancel_ealready;
	_Atomic uint64_t in_flight, peak_in_flight;
	_Atomic uint64_t invalidate_to_final_ns;
};

struct ura__barrier {
	struct ura__barrier *next;
	uint32_t seq_limit; /* tasks accepted before this sequence number */
	bool reset;
	void (*fn)(ura_session *, void *);
	void *arg;
};

struct ura_session {
	/* Written by every submitting thread: first, on its own line. */
	_Alignas(64) _Atomic uint64_t state;
	_Atomic uint32_t refs;
	_Atomic uint64_t invalidate_requested_ns; /* first request's time, 0 before */

	_Alignas(64) ura_loop *loop; /* not dereferenced once the final event has been sent */
	bool shared;
	struct ura_session_delegate delegate;
	void *ctx;

	pthread_mutex_t desc_lock;
	char *description;

	/* Loop thread only. */
	uint64_t loop_live;              /* tasks the loop has linked and not finished */
	uint64_t peak_live;              /* the largest loop_live since creation or reset */
	uint32_t task_head, task_tail;   /* index + 1 of the oldest/newest live task */
	uint32_t next_seq;
	uint64_t cancels_in_flight;      /* ASYNC_CANCEL SQEs queued or in flight */
	bool cancel_all_done;            /* live tasks were cancelled for URA__SS_CANCEL */
	bool invalidating;               /* on the loop's invalidation watch */
	int final_error;
	struct ura__barrier *barriers, *barriers_tail;
	ura_task *scratch;               /* get_tasks answers; dropped by reset */
	size_t scratch_cap;
	ura_session *next_in_loop, *prev_in_loop; /* under loop->sessions_lock */

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
 * the session at its next drain. Loop thread. */
void ura__session_count_put(ura_session *s);
/* The same from another thread; cmd (owned, never NULL) carries the check if needed. */
void ura__session_count_put_remote(ura_session *s, struct ura__cmd *cmd);
/* A task counted by another thread is now linked (counted in loop_live). Loop thread. */
void ura__session_count_moved(ura_session *s);

/* Task accounting, called by task.c on the loop thread. */
void ura__session_task_linked(ura_session *s, uint32_t index, struct ura__slot *slot);
/* After a task's terminal call: task_did_complete, unlink, free the slot, release the
 * count, run due barriers, and emit the final event if it was the last. */
void ura__session_task_finished(ura_session *s, uint32_t index, struct ura__slot *slot,
				ura_task t, int32_t res, bool cancelled);
/* A cancel CQE (res) for one of s's tasks was reaped. */
void ura__session_cancel_reaped(ura_session *s, int32_t res);

/* Handles URA__CMD_SESSION / URA__DEFER_SESSION: starts watching, cancels on request,
 * and emits the final event when nothing is left. Loop thread. */
void ura__session_check(ura_session *s);
/* Handles URA__CMD_GET_TASKS and URA__CMD_FLUSH. Loop thread. */
void ura__session_command(struct ura__cmd *cmd);
/* Checks every session whose invalidation the loop may have missed (a notification
 * that could not be allocated). Loop thread. */
void ura__session_rescan(ura_loop *loop);
/* ura_loop_free: invalidate and cancel every session, with error. Loop thread. */
void ura__session_invalidate_all(ura_loop *loop, int error);
/* ura_loop_free's last resort after the ring is gone: finish what is left. */
void ura__session_abandon_all(ura_loop *loop);
/* Drops the loop's reference to the shared session. */
void ura__session_release_shared(ura_loop *loop);

#endif
