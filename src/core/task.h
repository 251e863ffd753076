/* Tasks: acceptance, placement in the ring, resume, terminal calls (cancel: cancel.h). */
#ifndef URA_TASK_H
#define URA_TASK_H

#include <errno.h>

#include "loop.h"
#include "session.h"

/*
 * A slot's generation and state word, read and moved by task.c and cancel.c.
 */
static inline uint64_t ura__task_gs(struct ura__slot *slot)
{
	/* Acquire: pairs with the release store that published the state, so the slot's
	 * other fields (session, fn, arg) written before it are visible. */
	return atomic_load_explicit(&slot->gen_state, memory_order_acquire);
}

static inline bool ura__task_cas(struct ura__slot *slot, uint32_t gen, unsigned from, unsigned to)
{
	uint64_t want = ura__gs_make(gen, from);
	/* acq_rel: the loser re-reads a state published by the winner. */
	return atomic_compare_exchange_strong_explicit(&slot->gen_state, &want,
						       ura__gs_make(gen, to),
						       memory_order_acq_rel, memory_order_acquire);
}

/* Submits a task whose SQE addr must point at a runtime-kept timespec (ura_timeout). */
int ura__submit_ts(ura_session *s, const struct io_uring_sqe *sqe, unsigned flags,
		   const struct __kernel_timespec *ts, ura_task_fn fn, void *arg, ura_task *out);

/*
 * The wrappers' fast path: on the loop thread, with room in the SQ and nothing
 * backlogged, a wrapper prepares its SQE in place in the ring instead of in a template
 * that ura_submit then copies. begin reserves a slot and an SQE (false: use the template
 * path, which also gives the right error); commit makes the prepared SQE a task. Both
 * run for every task, so they are inline: the slot, SQE and session stay in registers.
 */
struct ura__fast {
	ura_session *s;
	ura_loop *loop;
	struct io_uring_sqe *sqe;
	struct ura__slot *slot;
	uint32_t index;
};

static inline bool ura__fast_begin(ura_session *s, struct ura__fast *f)
{
	/* Acquire: as in ura__submit_ts, the state is read before s->loop. */
	if (!s || (atomic_load_explicit(&s->state, memory_order_acquire) & URA__SS_FLAGS))
		return false;
	ura_loop *loop = s->loop;
	if (!ura__on_loop(loop) || loop->backlog_head < loop->backlog.len ||
	    !ura__sq_room(loop))
		return false;
	int64_t idx = ura__registry_alloc(&loop->registry, true);
	if (idx < 0)
		return false;
	f->s = s;
	f->loop = loop;
	f->index = (uint32_t)idx;
	f->slot = ura__registry_slot_at(&loop->registry, f->index);
	f->sqe = ura__loop_next_sqe(loop);
	return true;
}

static inline int ura__fast_commit(struct ura__fast *f, ura_task_fn fn, void *arg, ura_task *out)
{
	struct ura__slot *slot = f->slot;
	/* Relaxed: a free slot's generation was written by this (the loop) thread. */
	uint32_t gen = ura__gs_gen(atomic_load_explicit(&slot->gen_state, memory_order_relaxed));
	ura_task t = ura__handle_make(&f->loop->registry, gen, f->index);
	atomic_store_explicit(&slot->session, f->s, memory_order_relaxed);
	slot->fn = fn;
	slot->arg = arg;
	slot->opcode = f->sqe->opcode;
	slot->lflags = URA__TF_IN_RING | URA__TF_LINKED; /* linked just below */
	io_uring_sqe_set_data64(f->sqe, t);
	/* Release: publishes the fields above with the state (see ura__task_gs). Nobody
	 * else knows the handle yet, so a plain store suffices; no CAS. */
	atomic_store_explicit(&slot->gen_state, ura__gs_make(gen, URA__SLOT_RUNNING),
			      memory_order_release);
	ura__session_task_linked(f->s, f->index, slot, ura__session_barrier_tag(f->s));
	if (out)
		*out = t;
	return 0;
}

/*
 * A task's end, from its terminal CQE or without one (ura__task_finish_now): counts a
 * task the cancel ended, retires its slot, makes the terminal call and lets the session finish
 * it (task_did_complete, unlink, release the slot). Loop thread; inline, once per task.
 */
static inline void ura__task_end(ura_session *s, struct ura__slot *slot, ura_task t,
				 int32_t res, uint32_t flags)
{
	/* Acquire: a canceller's CAS to CANCELING is read here (nothing it wrote before is
	 * needed, but the state must be its latest). */
	uint64_t gs = atomic_load_explicit(&slot->gen_state, memory_order_acquire);
	/* Counted only when the cancel is what ended the task: one that finished first
	 * reports its real result, and its cancel did not take effect. */
	if (ura__gs_state(gs) == URA__SLOT_CANCELING && (res == -ECANCELED || res == -EINTR))
		ura__stat_bump(&s->stats.cancelled);
	/* Retired before the calls, not after: during them the handle already reads
	 * COMPLETED (a cancel gets -ENOENT), as it should once the terminal call has begun,
	 * and this is the slot's only state store at a task's end. A plain store: the
	 * state is the loop's to set; a cancel racing it finds the task gone or won just
	 * before, which the contract allows. The slot stays on the session's list (the
	 * shared session keeps none) until ura__session_task_finished (FREE there means
	 * finishing) and is reused only after it is released. URA__TF_IN_RING stays set: nothing acts on a FREE slot's flags
	 * (every cancel and resume path checks the state first). */
	ura__registry_retire(slot, ura__handle_gen(t));
	if (slot->fn)
		slot->fn(s, t, res, flags, slot->arg);
	ura__session_task_finished(s, slot, t, res);
}

/*
 * A CQE whose user_data is a task handle. Loop thread; inline, once per completion.
 * The runtime wrote this user_data and the task stays live until its terminal CQE, so
 * the handle needs no validation here: straight to the slot.
 */
static inline void ura__task_cqe(ura_loop *loop, uint64_t user_data, int32_t res,
				 uint32_t flags)
{
	ura_task t = user_data;
	uint32_t index = ura__handle_index(t);
	struct ura__slot *slot = ura__registry_slot_at(&loop->registry, index);
	ura_session *s = atomic_load_explicit(&slot->session, memory_order_relaxed);
	if (flags & IORING_CQE_F_MORE) {
		if (slot->fn)
			slot->fn(s, t, res, flags, slot->arg);
		return;
	}
	ura__task_end(s, slot, t, res, flags);
}
/* Moves backlogged tasks into the SQ while there is room (after the cancel backlog,
 * cancel.c). Loop thread. */
void ura__task_drain_backlog(ura_loop *loop);
/* The slot of t if t is still live (its state word in *gs), else NULL. Loop thread. */
struct ura__slot *ura__task_live_slot(ura_loop *loop, ura_task t, uint64_t *gs);

/* A cancel or resume from another thread: the state changed there; the loop acts. */
struct ura__task_cmd {
	struct ura__cmd cmd;
	ura_loop *loop;
	ura_task task;
};

/* A cancel or resume in progress: the task's slot and state, and the command that will
 * carry it to the loop (NULL on the loop thread). */
struct ura__task_call {
	struct ura__slot *slot;
	uint64_t gs;
	bool on_loop;
	struct ura__task_cmd *cmd;
};
/* The common start of cancel and resume (see task.c). 0 or -errno; on 0 the caller
 * ends with ura__task_call_end. Any thread. */
int ura__task_call_begin(ura_session *s, ura_task t, struct ura__task_call *call);
/* Hands a change that took effect (call->cmd not NULL) to the loop with run as its
 * handler, and leaves the loop. Any thread. */
void ura__task_call_end(ura_session *s, ura_task t, struct ura__task_call *call,
			void (*run)(struct ura__cmd *, bool));
/* Terminal call of a task that never reached the kernel or was abandoned. Loop thread. */
void ura__task_finish_now(ura_loop *loop, uint32_t index, struct ura__slot *slot, int32_t res);

#endif
