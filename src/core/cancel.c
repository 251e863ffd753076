/*
 * Cancellation: every route by which a task is cancelled (ura_task_cancel from any
 * thread, a session's invalidate_and_cancel, a task whose SUBMIT arrives after its
 * session's cancel-all), the backlog of cancels waiting for SQ room, the resend of
 * cancels lost to a full SQ with no memory, the retry of cancels the kernel missed, and
 * the count of cancels in flight the session's final event and the loop's wait read.
 *
 * Correctness argument.
 *
 * States. A task is PENDING (backlogged or on its way to the loop), SUSPENDED, or
 * RUNNING (its SQE in the ring, URA__TF_IN_RING). A cancel moves it, from any of these,
 * to CANCELING by one CAS (mark_canceling); the CAS succeeds at most once per
 * generation, so only one caller sends a cancel, the others see -EALREADY, and a FREE
 * slot or a newer generation answers -ENOENT. Only the loop thread moves it on:
 *   - not in the ring (PENDING or SUSPENDED, or a SUBMIT still in the inbox): it ends
 *     with -ECANCELED at the next drain (ura__cancel_deferred, or the SUBMIT's command
 *     sees CANCELING), without an SQE and never inside the cancelling call;
 *   - in the ring: one ASYNC_CANCEL SQE is sent (URA__TF_CANCEL_SENT), tagged CANCEL
 *     with the session; the task stays CANCELING until its own terminal CQE;
 *   - terminal CQE (or the -ECANCELED above): FREE, generation bumped, then the
 *     terminal call. No state leads back out of CANCELING or FREE.
 *
 * CQEs, in either order. For a task in the ring two CQEs are outstanding: the task's
 * terminal CQE and its cancel's CQE. The kernel may post them in either order:
 *   - cancel 0, then the terminal CQE (usually -ECANCELED): the usual case;
 *   - the terminal CQE first (the request completed as the cancel ran), then the
 *     cancel's -ENOENT or -EALREADY: the task has ended; the miss changes nothing;
 *   - a miss (-ENOENT/-EALREADY) while the request lives on (it was re-arming its poll
 *     or running in io-wq): no terminal CQE would follow. A miss therefore defers a
 *     check (URA__DEFER_RETRY_CHECK) to the next drain, after the CQEs reaped with it
 *     have run; if a task of the session is then still CANCELING in the ring, a retry
 *     timer (tag RETRY) is armed, and when it fires every such task gets another
 *     ASYNC_CANCEL. Each of those is again one of the three cases.
 * A cancel that finds no SQE waits in cancel_backlog (sent before any backlogged task);
 * one that finds no memory either is counted nowhere and sets loop->cancels_lost, and
 * once the SQ has room every task CANCELING in the ring is cancelled again (a duplicate
 * misses harmlessly). Cancel CQEs carry the session pointer, so the session must
 * outlive them: that is the first half of the argument below.
 *
 * The final event cannot fire early. ura__session_maybe_final requires, besides no
 * count and no live task, !ura__cancel_pending(s): no cancel of s queued or in the
 * kernel (cancels_in_flight counts from send_cancel to its CQE, backlog included), no
 * retry timer in the ring (retry_armed, until its CQE, also the -ECANCELED of an early
 * removal), and no retry check waiting (retry_check_pending, which also holds a
 * reference). So no CQE tagged with s, and no deferred work naming s, can arrive after
 * the final event, and the session is not freed under them.
 *
 * Nor never. Every task in the ring that is CANCELING gets a terminal CQE: each cancel
 * is sent, backlogged (sent at a later drain), or lost and resent; each miss while the
 * task lives leads to a retry, with a delay that doubles up to RETRY_MAX_MS and never
 * stops while such a task remains. Each cancel CQE decrements the count; each timer
 * posts one CQE (it expires, or is removed early by ura__cancel_retry_end when the
 * session's last task ends, so the final event does not wait out the delay); each check
 * runs at the next drain. Each of these ends with a look at the final event.
 *
 * Two counts of cancels in flight. The session's (s->cancels_in_flight) decides its
 * final event. The loop's (loop->cancels_in_flight) is their sum, read on the hot path:
 * wait_count lets one blocking enter wait for all of them, and has_work keeps
 * ura_loop_run going while a cancel CQE is due after its task has ended. Summing the
 * sessions there would be a walk per iteration, so both are kept, written only by
 * in_flight_add, in_flight_sub and in_flight_clear below, together.
 */
#include <errno.h>

#include "alloc.h"

#include "cancel.h"
#include "session.h"
#include "task.h"

/* ------------------------------------------------- cancels in flight */

static void in_flight_add(ura_loop *loop, ura_session *s)
{
	s->cancels_in_flight++;
	loop->cancels_in_flight++;
}

static void in_flight_sub(ura_loop *loop, ura_session *s)
{
	s->cancels_in_flight--;
	loop->cancels_in_flight--;
}

static void in_flight_clear(ura_loop *loop, ura_session *s)
{
	loop->cancels_in_flight -= s->cancels_in_flight;
	s->cancels_in_flight = 0;
}

/* ----------------------------------------------- sending, the backlog */

/* A per-task ASYNC_CANCEL waiting for SQ room (loop->cancel_backlog). */
struct cancel_req {
	ura_task task;
	ura_session *session;
};

/* Queues an ASYNC_CANCEL for t if the SQ has room (the cancel headroom is theirs). */
static bool cancel_sqe_try(ura_loop *loop, ura_session *s, ura_task t)
{
	struct io_uring_sqe *q = ura__loop_cancel_sqe(loop);
	if (!q)
		return false;
	/* A test's lost cancel aims at a user_data no request has, so the kernel answers
	 * -ENOENT while t lives on: what a cancel that races a re-arming request sees. */
	io_uring_prep_cancel64(q, ura__fault(URA__FAULT_CANCEL_MISS) ?
				  ura__tag(URA__TAG_KIND_NONE, 0) : t, 0);
	io_uring_sqe_set_data64(q, ura__tag(URA__TAG_KIND_CANCEL, (uintptr_t)s));
	return true;
}

/* Sends (or backlogs) one per-task cancel; the session's final event waits for its CQE. */
static void send_cancel(ura_loop *loop, ura_session *s, ura_task t)
{
	in_flight_add(loop, s);
	if (cancel_sqe_try(loop, s, t))
		return;
	struct cancel_req req = { .task = t, .session = s };
	if (ura__vec_push(&loop->cancel_backlog, &req, sizeof(req)) < 0) {
		/* Out of memory with a full SQ: this cancel cannot wait anywhere. Undo its
		 * accounting and have the loop send it again once the SQ has room (the task
		 * stays CANCELING in the ring, which is what the resend looks for). */
		in_flight_sub(loop, s);
		loop->cancels_lost = true;
	}
}

void ura__cancel_drain_backlog(ura_loop *loop)
{
	while (loop->cancel_backlog_head < loop->cancel_backlog.len) {
		struct cancel_req *req =
			(struct cancel_req *)loop->cancel_backlog.items +
			loop->cancel_backlog_head;
		if (!cancel_sqe_try(loop, req->session, req->task))
			break;
		loop->cancel_backlog_head++;
	}
	if (loop->cancel_backlog_head == loop->cancel_backlog.len)
		loop->cancel_backlog.len = loop->cancel_backlog_head = 0;
}

/* --------------------------------------------------- marking, acting */

/* Moves a live task of generation gen to CANCELING: 0, -EALREADY, or -ENOENT when it is
 * finished (or finishing). Any thread. */
static int mark_canceling(struct ura__slot *slot, uint32_t gen)
{
	for (;;) {
		uint64_t gs = ura__task_gs(slot);
		unsigned st = ura__gs_state(gs);
		if (ura__gs_gen(gs) != gen || st == URA__SLOT_FREE)
			return -ENOENT;
		if (st == URA__SLOT_CANCELING)
			return -EALREADY;
		if (ura__task_cas(slot, gen, st, URA__SLOT_CANCELING))
			return 0;
	}
}

/* Acts on a task just marked CANCELING. Loop thread. */
static void cancel_marked(ura_loop *loop, uint32_t index, struct ura__slot *slot, ura_task t)
{
	(void)index;
	if (!(slot->lflags & URA__TF_LINKED))
		return; /* its SUBMIT is still in the inbox and will see CANCELING */
	if (slot->lflags & URA__TF_IN_RING) {
		if (!(slot->lflags & URA__TF_CANCEL_SENT)) {
			slot->lflags |= URA__TF_CANCEL_SENT;
			send_cancel(loop, atomic_load_explicit(&slot->session,
							       memory_order_relaxed), t);
		}
		return;
	}
	/* Suspended or backlogged: it completes at once, without an SQE, at the next drain
	 * (never inside the caller's call). */
	if (ura__loop_defer(loop, URA__DEFER_CANCELLED, t, NULL) < 0) {
		/* No memory to defer: finishing inline is still exactly one terminal call. */
		ura__task_finish_now(loop, index, slot, -ECANCELED);
	}
}

bool ura__cancel_slot(ura_loop *loop, uint32_t index, struct ura__slot *slot)
{
	uint32_t gen = ura__gs_gen(ura__task_gs(slot));
	if (mark_canceling(slot, gen) < 0)
		return false;
	cancel_marked(loop, index, slot, ura__handle_make(&loop->registry, gen, index));
	return true;
}

/* A cancel made on another thread reaches the loop. Discarded: only freed (the ring
 * is gone and ura__session_abandon_all ends the task). */
static void run_cancel(struct ura__cmd *cmd, bool discard)
{
	struct ura__task_cmd *tc = (struct ura__task_cmd *)cmd;
	uint64_t gs;
	struct ura__slot *slot;
	if (!discard && (slot = ura__task_live_slot(tc->loop, tc->task, &gs)) &&
	    ura__gs_state(gs) == URA__SLOT_CANCELING)
		cancel_marked(tc->loop, ura__handle_index(tc->task), slot, tc->task);
	ura__free(tc);
}

int ura_task_cancel(ura_session *s, ura_task t)
{
	struct ura__task_call call;
	int r = ura__task_call_begin(s, t, &call);
	if (r < 0)
		return r;
	r = mark_canceling(call.slot, ura__handle_gen(t));
	if (r < 0) {
		ura__free(call.cmd);
		call.cmd = NULL;
	} else if (call.on_loop) {
		cancel_marked(s->loop, ura__handle_index(t), call.slot, t);
	}
	ura__task_call_end(s, t, &call, run_cancel);
	return r;
}

void ura__cancel_deferred(ura_loop *loop, ura_task t)
{
	uint64_t gs;
	struct ura__slot *slot = ura__task_live_slot(loop, t, &gs);
	if (slot && ura__gs_state(gs) == URA__SLOT_CANCELING && !(slot->lflags & URA__TF_IN_RING))
		ura__task_finish_now(loop, ura__handle_index(t), slot, -ECANCELED);
}

/* ---------------------------------------- sessions, retries, results */

/*
 * Retries. A per-task ASYNC_CANCEL can miss: the kernel answers -ENOENT or -EALREADY
 * when the request is between states at that instant (completing, re-arming its poll
 * after a wakeup that found nothing to read, running in io-wq). If it was completing, its CQE
 * follows; if it went back to waiting, nothing more would come, and neither would the
 * task's terminal call nor its session's final event.
 *
 * Most misses are the first kind (a cancel racing a completion), so a miss only asks for
 * a check at the next drain, once the CQEs reaped with it have run: if a task of the
 * session is still cancelling in the ring then, a short timer is armed, and when it
 * fires every such task is cancelled again. The delay doubles while retries keep finding
 * such tasks (a request io-wq cannot interrupt must not make the loop spin) and starts
 * over once a retry finds none. When the session's last task ends, the timer is removed,
 * so its final event does not wait out the delay.
 */
#define RETRY_FIRST_MS 1u
#define RETRY_MAX_MS 128u

/* Calls act on every task of s (ura__task_walk); returns how many calls answered true.
 * An act that ends tasks (a cancel finished at once for want of memory) makes the walk
 * start again from the head; the acts used here do nothing to a task acted on before. */
static unsigned for_each_task(ura_session *s,
			      bool (*act)(ura_loop *, uint32_t, struct ura__slot *))
{
	unsigned n = 0;
	struct ura__task_walk w;
	uint32_t index;
	ura__task_walk_start(&w, s);
	for (struct ura__slot *slot; (slot = ura__task_walk_next(&w, &index));)
		n += act(s->loop, index, slot);
	return n;
}

void ura__cancel_all(ura_session *s)
{
	(void)for_each_task(s, ura__cancel_slot);
}

/* Sends another ASYNC_CANCEL for a task that is CANCELING with its SQE in the ring
 * (an earlier one missed); false when the task is not in that state. Loop thread. */
static bool recancel(ura_loop *loop, uint32_t index, struct ura__slot *slot)
{
	uint64_t gs = ura__task_gs(slot);
	if (ura__gs_state(gs) != URA__SLOT_CANCELING || !(slot->lflags & URA__TF_IN_RING))
		return false;
	send_cancel(loop, atomic_load_explicit(&slot->session, memory_order_relaxed),
		    ura__handle_make(&loop->registry, ura__gs_gen(gs), index));
	return true;
}

/* Cancels again every task of s still cancelling in the ring; returns how many. */
static unsigned recancel_all(ura_session *s)
{
	return for_each_task(s, recancel);
}

void ura__cancel_resend_lost(ura_loop *loop)
{
	loop->cancels_lost = false;
	/* Rare (memory ran out with a full SQ): a walk of every session is fine. Tasks
	 * whose cancel did go out get a second one, which misses harmlessly. */
	pthread_mutex_lock(&loop->sessions_lock);
	struct ura__list *pos, *tmp;
	ura__list_for_each_safe(pos, tmp, &loop->sessions)
		(void)recancel_all(ura__list_entry(pos, ura_session, in_loop));
	pthread_mutex_unlock(&loop->sessions_lock);
}

/* True when a task of s is still cancelling with its SQE in the ring. */
static bool cancel_pending_in_ring(ura_session *s)
{
	struct ura__task_walk w;
	uint32_t index;
	ura__task_walk_start(&w, s);
	for (struct ura__slot *slot; (slot = ura__task_walk_next(&w, &index));) {
		uint64_t gs = atomic_load_explicit(&slot->gen_state, memory_order_acquire);
		if (ura__gs_state(gs) == URA__SLOT_CANCELING && (slot->lflags & URA__TF_IN_RING))
			return true;
	}
	return false;
}

static void arm_cancel_retry(ura_session *s)
{
	ura_loop *loop = s->loop;
	struct io_uring_sqe *q = ura__loop_cancel_sqe(loop);
	if (!q) {
		/* SQ full: retry at once; cancels that find no room wait in the backlog. */
		(void)recancel_all(s);
		return;
	}
	if (!s->retry_ms)
		s->retry_ms = RETRY_FIRST_MS;
	s->retry_ts = (struct __kernel_timespec){ .tv_nsec = (long long)s->retry_ms * 1000000 };
	io_uring_prep_timeout(q, &s->retry_ts, 0, 0);
	io_uring_sqe_set_data64(q, ura__tag(URA__TAG_KIND_RETRY, (uintptr_t)s));
	s->retry_armed = true;
	loop->retry_timers++;
}

void ura__cancel_retry_check(ura_session *s)
{
	s->retry_check_pending = false;
	if (!s->retry_armed && !(atomic_load_explicit(&s->state, memory_order_acquire) &
				 URA__SS_FINAL) && cancel_pending_in_ring(s))
		arm_cancel_retry(s);
	if (s->invalidating)
		ura__session_maybe_final(s);
}

void ura__cancel_retry_fired(ura_session *s)
{
	s->retry_armed = false;
	s->retry_removing = false;
	s->loop->retry_timers--;
	if (recancel_all(s))
		s->retry_ms = s->retry_ms * 2 < RETRY_MAX_MS ? s->retry_ms * 2 : RETRY_MAX_MS;
	else
		s->retry_ms = 0;
	if (s->invalidating)
		ura__session_maybe_final(s);
}

void ura__cancel_reaped(ura_session *s, int32_t res)
{
	if (res == 0)
		ura__stat_bump(&s->stats.cancel_ok);
	else if (res == -ENOENT)
		ura__stat_bump(&s->stats.cancel_enoent);
	else if (res == -EALREADY)
		ura__stat_bump(&s->stats.cancel_ealready);
	in_flight_sub(s->loop, s);
	if (res != 0 && !s->retry_armed && !s->retry_check_pending) {
		s->retry_check_pending = true;
		ura_session_ref(s); /* until the check ran */
		if (ura__loop_defer(s->loop, URA__DEFER_RETRY_CHECK, 0, s) < 0) {
			/* No memory to defer the check: arm the timer now instead. */
			ura_session_unref(s);
			s->retry_check_pending = false;
			arm_cancel_retry(s);
		}
	}
	if (s->invalidating)
		ura__session_maybe_final(s);
}


/* Removes the armed timer early (the session has no task left): its CQE, -ECANCELED,
 * then comes at once. Without an SQE it simply runs out. */
static void remove_cancel_retry(ura_session *s)
{
	struct io_uring_sqe *q = ura__loop_cancel_sqe(s->loop);
	if (!q)
		return;
	io_uring_prep_timeout_remove(q, ura__tag(URA__TAG_KIND_RETRY, (uintptr_t)s), 0);
	io_uring_sqe_set_data64(q, ura__tag(URA__TAG_KIND_IGNORE, 0));
	s->retry_removing = true;
}

void ura__cancel_retry_end(ura_session *s)
{
	if (s->retry_armed && !s->retry_removing)
		remove_cancel_retry(s);
}

void ura__cancel_abandon(ura_session *s)
{
	in_flight_clear(s->loop, s); /* their CQEs went with the ring */
	s->retry_check_pending = false; /* dropped with the deferred work */
	s->retry_removing = false;
	if (s->retry_armed) { /* the ring took its timer with it */
		s->retry_armed = false;
		s->loop->retry_timers--;
	}
}
