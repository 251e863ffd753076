/*
 * Sessions: a group of tasks with URLSession's lifecycle.
 *
 * Counting. Work accepted and not yet done is counted in two places. s->state holds,
 * below its flag bits, what other threads accepted and the loop has not taken over yet
 * (tasks whose SUBMIT command is in the inbox, get_tasks/flush requests); such a unit is
 * added only by a CAS that sees no invalidation flag (ura__session_count_get), so from
 * the instant invalidation sets its flag nothing new is accepted from any thread. Tasks
 * the loop thread has linked are counted in ura__session_live(s), a loop-only counter:
 * that thread also decides the final event, so a task it accepted after seeing no flag
 * is counted before any final check can run. The final event needs both at zero.
 *
 * The final event. The loop thread watches a session once it has seen its FINISH flag
 * (s->invalidating). It emits did_become_invalid when, on the loop thread at top level
 * (never inside another callback, never inside the invalidate call), the count is zero
 * and no cancel CQE of the session is outstanding: every terminal call and
 * task_did_complete has returned, and every CQE it caused has been reaped. The FINAL flag
 * is set before the call and checked before any other callback, so it runs once, and
 * nothing of the session runs after it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"

#include "cancel.h"
#include "session.h"
#include "task.h"

static void run_notice(struct ura__cmd *cmd, bool discard);

static ura_session *session_alloc(ura_loop *loop, const struct ura_session_delegate *d, void *ctx)
{
	ura_session *s = ura__zalloc_aligned(sizeof(*s), ura__one_page_align(sizeof(*s)));
	if (!s)
		return NULL;
	atomic_init(&s->state, 0);
	atomic_init(&s->refs, 1);
	s->loop = loop;
	ura__loop_ref(loop); /* the gate stays readable while s exists */
	if (d)
		s->delegate = *d;
	s->ctx = ctx;
	/* Written once, never again: a notifier may queue the notice while the loop still
	 * runs it (only its inbox link changes). */
	s->notice.run = run_notice;
	pthread_mutex_init(&s->desc_lock, NULL);
	ura__list_init(&s->in_loop);
	return s;
}

static void session_link(ura_loop *loop, ura_session *s)
{
	pthread_mutex_lock(&loop->sessions_lock);
	ura__list_push_back(&loop->sessions, &s->in_loop);
	pthread_mutex_unlock(&loop->sessions_lock);
}

/* Takes s off the loop's list; again is harmless (a removed node is on no list). */
static void session_unlink(ura_loop *loop, ura_session *s)
{
	pthread_mutex_lock(&loop->sessions_lock);
	ura__list_remove(&s->in_loop);
	pthread_mutex_unlock(&loop->sessions_lock);
}

int ura_session_new(ura_loop *loop, const struct ura_session_delegate *d, void *ctx,
		    ura_session **out)
{
	if (!loop || !out)
		return -EINVAL;
	bool on_loop = ura__on_loop(loop);
	if (!on_loop && !ura__loop_enter(loop))
		return -ESHUTDOWN;
	/* Relaxed: a session linked while the free runs is still ended by it (its drain
	 * and abandon_all walk the list); the flag only saves the work. */
	int r = atomic_load_explicit(&loop->freeing, memory_order_relaxed) ? -ESHUTDOWN : 0;
	ura_session *s = r ? NULL : session_alloc(loop, d, ctx);
	if (!r && !s)
		r = -ENOMEM;
	if (s) {
		/* Two references: the caller's, and the loop's until the final event. */
		atomic_store_explicit(&s->refs, 2, memory_order_relaxed);
		session_link(loop, s);
		*out = s;
	}
	if (!on_loop)
		ura__loop_leave(loop);
	return r;
}

int ura__session_shared_new(ura_loop *loop, ura_session **out)
{
	ura_session *s = session_alloc(loop, NULL, NULL);
	if (!s)
		return -ENOMEM;
	s->shared = true;
	session_link(loop, s);
	*out = s;
	return 0;
}

ura_session *ura_session_shared(ura_loop *loop)
{
	return loop ? loop->shared : NULL;
}

ura_session *ura_session_ref(ura_session *s)
{
	if (s) /* Relaxed: taking a reference orders nothing; the holder already has one. */
		atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
	return s;
}

void ura_session_unref(ura_session *s)
{
	if (!s)
		return;
	/* acq_rel: the last unref sees every other holder's writes before freeing. */
	if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
		return;
	ura__barriers_free(s);
	free(s->description);
	ura__free(s->scratch);
	pthread_mutex_destroy(&s->desc_lock);
	ura_loop *loop = s->loop;
	ura__free(s);
	ura__loop_unref(loop);
}

/* ------------------------------------------------------------ counting */

int ura__session_count_get(ura_session *s)
{
	uint64_t st = atomic_load_explicit(&s->state, memory_order_relaxed);
	do {
		if (st & URA__SS_FLAGS)
			return -ESHUTDOWN;
		/* Acquire on success: nothing; relaxed would do for the count, but the
		 * caller then reads s->loop, written before the session was published. */
	} while (!atomic_compare_exchange_weak_explicit(&s->state, &st, st + 1,
							memory_order_acquire,
							memory_order_relaxed));
	return 0;
}

/*
 * Asks the loop to look at s at its next drain, through the notice embedded in s: no
 * allocation, so no request and no last count unit can go unnoticed.
 *
 * One notice is queued at a time. A notifier changes s->state, then sets notice_queued
 * (exchange); the loop clears it (exchange) before it reads the state. If the notifier
 * finds it set, its exchange comes before the loop's in the flag's order, so the loop's
 * acquire exchange reads a value the notifier's release exchange wrote (or a later one
 * of its release sequence): the state change happens-before the loop's check. If it
 * finds it clear, it queues the notice itself. Either way the change is looked at.
 */
static void notify_loop(ura_session *s)
{
	/* acq_rel: release publishes this thread's state change to the loop's exchange in
	 * ura__session_notice; acquire is not needed but harmless. */
	if (atomic_exchange_explicit(&s->notice_queued, true, memory_order_acq_rel))
		return;
	ura_loop *loop = s->loop;
	bool on_loop = ura__on_loop(loop);
	if (!on_loop && !ura__loop_enter(loop)) {
		/* ura_loop_free has ended every session: nothing left to look at. */
		atomic_store_explicit(&s->notice_queued, false, memory_order_relaxed);
		return;
	}
	ura_session_ref(s); /* until the loop has handled the notice */
	/* Also on the loop thread through the inbox: never inside the caller's call. */
	ura__loop_send(loop, &s->notice);
	if (!on_loop)
		ura__loop_leave(loop);
}

/* The notice's handler: takes it off the queue, checks the session, drops the notice's
 * reference. Discarded (the ring is gone, the session has ended): only the last. */
static void run_notice(struct ura__cmd *cmd, bool discard)
{
	ura_session *s = URA__CONTAINER_OF(cmd, ura_session, notice);
	if (discard) {
		atomic_store_explicit(&s->notice_queued, false, memory_order_relaxed);
		ura_session_unref(s);
		return;
	}
	/* acq_rel: acquire pairs with the notifiers' release exchange (see notify_loop);
	 * a notifier after this exchange queues the notice again. */
	atomic_exchange_explicit(&s->notice_queued, false, memory_order_acq_rel);
	ura__session_check(s);
	ura_session_unref(s);
}

static bool last_unit_of_invalidating(uint64_t old)
{
	return (old & URA__SS_COUNT) == 1 && (old & URA__SS_FINISH);
}

void ura__session_count_put(ura_session *s)
{
	/* Release: this unit's work (callbacks, stats) happens-before a final event that
	 * another check emits after reading the count (acquire there). */
	uint64_t old = atomic_fetch_sub_explicit(&s->state, 1, memory_order_acq_rel);
	if (last_unit_of_invalidating(old))
		notify_loop(s);
}

void ura__session_count_moved(ura_session *s)
{
	/* Relaxed: only the loop thread reads the count for the final event, and it is the
	 * thread doing this; the live count already holds the task. */
	atomic_fetch_sub_explicit(&s->state, 1, memory_order_relaxed);
}

/* -------------------------------------------------------------- tasks */

static void reset_stats(ura_session *s)
{
	struct ura__session_counters *c = &s->stats;
	/* Release: a reader that sees the new base (acquire) sees a count at least as new. */
	atomic_store_explicit(&c->submitted_base, atomic_load_explicit(&c->submitted, memory_order_relaxed),
			      memory_order_release);
	ura__stat_set(&c->completed, 0);
	ura__stat_set(&c->cancelled, 0);
	ura__stat_set(&c->cancel_ok, 0);
	ura__stat_set(&c->cancel_enoent, 0);
	ura__stat_set(&c->cancel_ealready, 0);
	s->peak_live = ura__session_live(s);
	ura__stat_set(&c->peak_in_flight, s->peak_live);
	ura__free(s->scratch);
	s->scratch = NULL;
	s->scratch_cap = 0;
}

void ura__session_barrier_answer(ura_session *s, struct ura__barrier *b)
{
	if (b->reset)
		reset_stats(s);
	if (b->fn)
		b->fn(s, b->arg);
	ura__free(b);
	ura__session_count_put(s);
}

void ura__session_after_task(ura_session *s)
{
	if (ura__session_live(s) == 0 && s->invalidating) {
		ura__cancel_retry_end(s); /* nothing left to cancel: end the wait */
		ura__session_maybe_final(s);
	}
}

/* -------------------------------------------------------- invalidation */

void ura__session_maybe_final(ura_session *s)
{
	uint64_t st = atomic_load_explicit(&s->state, memory_order_acquire);
	if (!s->invalidating || (st & URA__SS_FINAL) || (st & URA__SS_COUNT) || ura__session_live(s) ||
	    ura__cancel_pending(s))
		return;
	ura_loop *loop = s->loop;
	/* Set FINAL before the call: nothing of this session may run after it. */
	atomic_fetch_or_explicit(&s->state, URA__SS_FINAL, memory_order_acq_rel);
	uint64_t asked = atomic_load_explicit(&s->invalidate_requested_ns, memory_order_relaxed);
	ura__stat_set(&s->stats.invalidate_to_final_ns, asked ? ura__now_ns() - asked : 0);
	s->invalidating = false;
	loop->invalidating--;
	void (*fn)(ura_session *, int, void *) = s->delegate.did_become_invalid;
	void *ctx = s->ctx;
	/* References are broken: the runtime never reads the delegate or ctx again. */
	memset(&s->delegate, 0, sizeof(s->delegate));
	s->ctx = NULL;
	if (fn)
		fn(s, s->final_error, ctx);
	session_unlink(loop, s);
	if (!s->shared)
		ura_session_unref(s); /* the loop's reference */
}

void ura__session_check(ura_session *s)
{
	uint64_t st = atomic_load_explicit(&s->state, memory_order_acquire);
	if (!(st & URA__SS_FINISH) || (st & URA__SS_FINAL))
		return;
	if (!s->invalidating) {
		s->invalidating = true;
		s->loop->invalidating++;
	}
	if ((st & URA__SS_CANCEL) && !s->cancel_all_done) {
		s->cancel_all_done = true;
		ura__cancel_all(s);
	}
	ura__session_maybe_final(s);
}

static void request_invalidation(ura_session *s, uint64_t bits)
{
	if (!s || s->shared)
		return;
	uint64_t old = atomic_fetch_or_explicit(&s->state, bits, memory_order_acq_rel);
	if ((old & bits) == bits || (old & URA__SS_FINAL))
		return; /* nothing new for the loop to act on */
	uint64_t zero = 0;
	atomic_compare_exchange_strong_explicit(&s->invalidate_requested_ns, &zero, ura__now_ns(),
						memory_order_relaxed, memory_order_relaxed);
	notify_loop(s);
}

void ura_session_finish_tasks_and_invalidate(ura_session *s)
{
	request_invalidation(s, URA__SS_FINISH);
}

void ura_session_invalidate_and_cancel(ura_session *s)
{
	request_invalidation(s, URA__SS_FINISH | URA__SS_CANCEL);
}

bool ura_session_is_valid(ura_session *s)
{
	return s && !(atomic_load_explicit(&s->state, memory_order_acquire) & URA__SS_FLAGS);
}

/* The first session of the loop that pred accepts, with a reference, or NULL. */
static ura_session *find_session(ura_loop *loop, bool (*pred)(ura_session *, uint64_t))
{
	ura_session *found = NULL;
	pthread_mutex_lock(&loop->sessions_lock);
	struct ura__list *pos, *tmp;
	ura__list_for_each_safe(pos, tmp, &loop->sessions) {
		ura_session *s = ura__list_entry(pos, ura_session, in_loop);
		if (pred(s, atomic_load_explicit(&s->state, memory_order_acquire))) {
			found = ura_session_ref(s);
			break;
		}
	}
	pthread_mutex_unlock(&loop->sessions_lock);
	return found;
}

static bool not_yet_cancelled(ura_session *s, uint64_t st)
{
	(void)s;
	return !(st & URA__SS_CANCEL) && !(st & URA__SS_FINAL);
}

void ura__session_invalidate_all(ura_loop *loop, int error)
{
	ura_session *s;
	while ((s = find_session(loop, not_yet_cancelled))) {
		if (!(atomic_load_explicit(&s->state, memory_order_acquire) & URA__SS_FINISH))
			s->final_error = error;
		atomic_fetch_or_explicit(&s->state, URA__SS_FINISH | URA__SS_CANCEL,
					 memory_order_acq_rel);
		uint64_t zero = 0;
		atomic_compare_exchange_strong_explicit(&s->invalidate_requested_ns, &zero,
							ura__now_ns(), memory_order_relaxed,
							memory_order_relaxed);
		ura__session_check(s);
		ura_session_unref(s);
	}
}

void ura__session_abandon_all(ura_loop *loop)
{
	/* The ring is gone: the kernel holds nothing. End what is left with -ECANCELED. */
	for (;;) {
		ura_session *found = NULL;
		pthread_mutex_lock(&loop->sessions_lock);
		struct ura__list *front = ura__list_front(&loop->sessions);
		found = front ? ura_session_ref(ura__list_entry(front, ura_session, in_loop)) : NULL;
		pthread_mutex_unlock(&loop->sessions_lock);
		if (!found)
			return;
		ura__cancel_abandon(found);
		/* Passes until one finds nothing: a terminal call may submit again. */
		for (unsigned finished = 1; finished;) {
			struct ura__task_walk w;
			uint32_t index;
			finished = 0;
			ura__task_walk_start(&w, found);
			for (struct ura__slot *slot; (slot = ura__task_walk_next(&w, &index));) {
				slot->lflags &= (uint8_t)~URA__TF_IN_RING;
				ura__task_finish_now(loop, index, slot, -ECANCELED);
				finished++;
			}
		}
		/* Commands still counted (get_tasks, flush) were dropped with the inbox. */
		uint64_t st = atomic_load_explicit(&found->state, memory_order_acquire);
		atomic_fetch_sub_explicit(&found->state, st & URA__SS_COUNT, memory_order_acq_rel);
		if (!found->invalidating) {
			found->invalidating = true;
			loop->invalidating++;
		}
		ura__session_maybe_final(found);
		if (!(atomic_load_explicit(&found->state, memory_order_acquire) & URA__SS_FINAL))
			session_unlink(loop, found); /* cannot happen; never loop forever */
		ura_session_unref(found);
	}
}

void ura__session_release_shared(ura_loop *loop)
{
	ura_session_unref(loop->shared);
	loop->shared = NULL;
}

/* ------------------------------------------------------- descriptions */

int ura_session_set_description(ura_session *s, const char *text)
{
	if (!s)
		return -EINVAL;
	if (!ura_session_is_valid(s))
		return -ESHUTDOWN;
	char *copy = NULL;
	if (text && !(copy = strdup(text)))
		return -ENOMEM;
	pthread_mutex_lock(&s->desc_lock);
	char *old = s->description;
	s->description = copy;
	pthread_mutex_unlock(&s->desc_lock);
	free(old);
	return 0;
}

size_t ura_session_description(ura_session *s, char *buf, size_t len)
{
	if (!s)
		return 0;
	pthread_mutex_lock(&s->desc_lock);
	const char *d = s->description ? s->description : "";
	size_t n = strlen(d);
	if (buf && len) {
		size_t c = n < len - 1 ? n : len - 1;
		memcpy(buf, d, c);
		buf[c] = '\0';
	}
	pthread_mutex_unlock(&s->desc_lock);
	return n;
}

/* ----------------------------------------------- get_tasks, flush, reset */

/*
 * A get_tasks, flush or reset request: counted in the session (a unit of its state word)
 * until answered, so the final event waits for it. Its handler says which: run_get_all,
 * run_get_by_kind or run_barrier, each reading its own member of fn.
 */
struct request {
	struct ura__cmd cmd;
	ura_session *s;
	union {
		void (*all)(ura_session *, const ura_task *, size_t, void *);
		void (*by_kind)(ura_session *, const ura_task *, size_t, const ura_task *,
				size_t, const ura_task *, size_t, void *);
		void (*barrier)(ura_session *, void *);
	} fn;
	void *arg;
	uint64_t barrier_tag; /* a flush or reset: the barrier's (barrier.c) */
	bool reset;
};

static void run_get_all(struct ura__cmd *cmd, bool discard);
static void run_get_by_kind(struct ura__cmd *cmd, bool discard);
static void run_barrier(struct ura__cmd *cmd, bool discard);

/* Sends a copy of req (with s and its barrier tag filled in) to the loop. */
static int send_request(ura_session *s, const struct request *req)
{
	if (!s)
		return -EINVAL;
	if (atomic_load_explicit(&s->state, memory_order_acquire) & URA__SS_FLAGS)
		return -ESHUTDOWN;
	ura_loop *loop = s->loop;
	bool on_loop = ura__on_loop(loop);
	if (!on_loop && !ura__loop_enter(loop))
		return -ESHUTDOWN;
	int r = -ENOMEM;
	struct request *cmd = ura__malloc(sizeof(*cmd));
	if (cmd && (r = ura__session_count_get(s)) < 0)
		ura__free(cmd);
	if (r == 0) {
		*cmd = *req;
		cmd->s = s;
		/* A barrier covers the tasks live at the call, on whatever thread: its tag
		 * is taken now (barrier.c). Relaxed: the RMW's place in the counter's order
		 * is all that matters (see ura__session_barrier_tag). */
		if (cmd->cmd.run == run_barrier)
			cmd->barrier_tag = atomic_fetch_add_explicit(&s->barrier_calls, 1,
								     memory_order_relaxed);
		/* Always through the inbox, also on the loop thread: the answer is
		 * asynchronous. */
		ura__loop_send(loop, &cmd->cmd);
	}
	if (!on_loop)
		ura__loop_leave(loop);
	return r;
}

int ura_session_get_all_tasks(ura_session *s,
			      void (*fn)(ura_session *, const ura_task *, size_t, void *),
			      void *arg)
{
	if (!fn)
		return -EINVAL;
	return send_request(s, &(struct request){ .cmd.run = run_get_all, .fn.all = fn,
						  .arg = arg });
}

int ura_session_get_tasks(ura_session *s,
			  void (*fn)(ura_session *, const ura_task *, size_t, const ura_task *,
				     size_t, const ura_task *, size_t, void *),
			  void *arg)
{
	if (!fn)
		return -EINVAL;
	return send_request(s, &(struct request){ .cmd.run = run_get_by_kind, .fn.by_kind = fn,
						  .arg = arg });
}

int ura_session_flush(ura_session *s, void (*fn)(ura_session *, void *), void *arg)
{
	if (!fn)
		return -EINVAL;
	return send_request(s, &(struct request){ .cmd.run = run_barrier, .fn.barrier = fn,
						  .arg = arg });
}

int ura_session_reset(ura_session *s, void (*fn)(ura_session *, void *), void *arg)
{
	if (!fn)
		return -EINVAL;
	return send_request(s, &(struct request){ .cmd.run = run_barrier, .fn.barrier = fn,
						  .arg = arg, .reset = true });
}

/* Lists live tasks that are neither cancelling nor done; by kind when by_kind
 * (data first, then upload, then download). Returns the count, or -ENOMEM. */
static int64_t collect(ura_session *s, bool by_kind, size_t counts[3])
{
	size_t n = (size_t)ura__session_live(s); /* every linked task; some are not listed */
	if (n > s->scratch_cap) {
		ura_task *grown = ura__realloc(s->scratch, n * sizeof(ura_task));
		if (!grown)
			return -ENOMEM;
		s->scratch = grown;
		s->scratch_cap = n;
	}
	size_t out = 0;
	counts[0] = counts[1] = counts[2] = 0;
	for (int pass = 0; pass < (by_kind ? 3 : 1); pass++) {
		struct ura__task_walk w;
		uint32_t index;
		ura__task_walk_start(&w, s);
		for (struct ura__slot *slot; (slot = ura__task_walk_next(&w, &index));) {
			uint64_t gs = atomic_load_explicit(&slot->gen_state, memory_order_acquire);
			unsigned st = ura__gs_state(gs);
			bool listed = st != URA__SLOT_CANCELING && st != URA__SLOT_FREE; /* FREE: finishing */
			if (listed && by_kind)
				listed = (int)ura_task_kind_of_opcode(slot->opcode) == pass;
			if (listed) {
				s->scratch[out++] = ura__handle_make(&s->loop->registry,
								     ura__gs_gen(gs), index);
				counts[pass]++;
			}
		}
	}
	return (int64_t)out;
}

/* Answers a get_tasks request once, with an empty list when memory ran out. Discarded:
 * freed; ura__session_abandon_all has released its count unit. */
static void answer_get_tasks(struct ura__cmd *cmd, bool discard, bool by_kind)
{
	struct request *req = (struct request *)cmd;
	ura_session *s = req->s;
	if (discard) {
		ura__free(req);
		return;
	}
	size_t c[3];
	int64_t n = collect(s, by_kind, c);
	if (n < 0)
		n = 0, c[0] = c[1] = c[2] = 0; /* no memory: an empty answer, still once */
	if (by_kind)
		req->fn.by_kind(s, s->scratch, c[0], s->scratch + c[0], c[1],
				s->scratch + c[0] + c[1], c[2], req->arg);
	else
		req->fn.all(s, s->scratch, (size_t)n, req->arg);
	ura__free(req);
	ura__session_count_put(s);
}

static void run_get_all(struct ura__cmd *cmd, bool discard)
{
	answer_get_tasks(cmd, discard, false);
}

static void run_get_by_kind(struct ura__cmd *cmd, bool discard)
{
	answer_get_tasks(cmd, discard, true);
}

/* A flush or reset: a barrier behind the tasks live at the call (barrier.c), which
 * releases the count unit when it has answered. Discarded: as for get_tasks. */
static void run_barrier(struct ura__cmd *cmd, bool discard)
{
	struct request *req = (struct request *)cmd;
	if (!discard && ura__barrier_add(req->s, req->barrier_tag, req->reset, req->fn.barrier,
					 req->arg) < 0) {
		ura__loop_send(req->s->loop, cmd); /* no memory: try again at the next drain */
		return;
	}
	ura__free(req);
}

int ura_session_stats(ura_session *s, struct ura_session_stats *out)
{
	if (!s || !out)
		return -EINVAL;
	const struct ura__session_counters *c = &s->stats;
	/* Acquire: pairs with reset's release, so the count read next is not older than
	 * the base (the difference never goes below zero). */
	uint64_t base = atomic_load_explicit(&c->submitted_base, memory_order_acquire);
	uint64_t submitted = atomic_load_explicit(&c->submitted, memory_order_relaxed) - base;
#define LOAD(f) atomic_load_explicit(&c->f, memory_order_relaxed)
	*out = (struct ura_session_stats){
		.submitted = submitted,
		.completed = LOAD(completed),
		.cancelled = LOAD(cancelled),
		.cancel_ok = LOAD(cancel_ok),
		.cancel_enoent = LOAD(cancel_enoent),
		.cancel_ealready = LOAD(cancel_ealready),
		.in_flight = LOAD(in_flight),
		.peak_in_flight = LOAD(peak_in_flight),
		.invalidate_to_final_ns = LOAD(invalidate_to_final_ns),
	};
#undef LOAD
	return 0;
}
