/*
 * Tasks: one io_uring submission each, living in a registry slot.
 *
 * Life of a task (slot state in gen_state, see registry.h):
 *   accepted on the loop thread:  RUNNING (SQE in the SQ) or PENDING (SQ full: backlog)
 *                                 or SUSPENDED;
 *   accepted on another thread:   PENDING or SUSPENDED, plus a SUBMIT command that the
 *                                 loop turns into the above;
 *   cancel (any thread):          CAS to CANCELING; the loop then sends ASYNC_CANCEL (in
 *                                 the ring) or finishes it with -ECANCELED (not in it):
 *                                 all of it in cancel.c;
 *   terminal CQE:                 FREE with the generation bumped, before the callbacks
 *                                 run (the handle reads COMPLETED from then on); the
 *                                 slot is reused only after they return.
 * Only the loop thread moves a task out of CANCELING or into RUNNING/FREE; other
 * threads only CAS SUSPENDED->PENDING (resume) and *->CANCELING (cancel). The loop uses
 * CAS where such a move can race with it (PENDING->RUNNING) and plain stores where the
 * outcome is the same whichever comes first (FREE: a cancel racing it finds a
 * finished task and answers -ENOENT, or succeeds first and the task reports its real
 * result, which the contract allows).
 */
#include <errno.h>
#include <string.h>

#include "alloc.h"

#include "cancel.h"
#include "session.h"
#include "task.h"

/*
 * A task accepted on another thread, on its way to the loop (a command); then, kept in
 * its slot's u.pending, the SQE copy of a task that is not in the ring yet (suspended or
 * backlogged, however it was accepted). Freed once the SQE is in the ring or the task
 * has ended.
 */
struct ura__submit_cmd {
	struct ura__cmd cmd;
	ura_session *session;  /* holds a count unit until the loop links the task */
	ura_task task;
	uint64_t barrier_tag;  /* taken at the submit, linked later */
	struct io_uring_sqe sqe;
	struct __kernel_timespec ts;
};

static void set_state(struct ura__slot *slot, uint32_t gen, unsigned state)
{
	/* Release: publishes the slot's fields with the new state (see ura__task_gs). */
	atomic_store_explicit(&slot->gen_state, ura__gs_make(gen, state), memory_order_release);
}

/* Copies the template into a ring SQE; the timeout's timespec moves into the slot. */
static void fill_sqe(struct io_uring_sqe *q, const struct io_uring_sqe *tmpl,
		     const struct __kernel_timespec *ts, struct ura__slot *slot, ura_task t)
{
	memcpy(q, tmpl, sizeof(*q));
	if (slot->lflags & URA__TF_TIMEOUT) {
		slot->u.ts = *ts;
		q->addr = (uint64_t)(uintptr_t)&slot->u.ts;
	}
	io_uring_sqe_set_data64(q, t);
	slot->lflags |= URA__TF_IN_RING;
}

static void backlog_add(ura_loop *loop, struct ura__slot *slot, ura_task t)
{
	slot->lflags |= URA__TF_BACKLOG;
	if (ura__vec_push(&loop->backlog, &t, sizeof(t)) < 0) {
		/* Out of memory with a full SQ: the task cannot be queued anywhere; it ends
		 * (as cancelled) rather than being lost: at the next drain, or now if even
		 * that cannot be queued; exactly one terminal call either way. */
		slot->lflags &= (uint8_t)~URA__TF_BACKLOG;
		(void)ura__task_cas(slot, ura__handle_gen(t), URA__SLOT_PENDING, URA__SLOT_CANCELING);
		if (ura__loop_defer(loop, URA__DEFER_CANCELLED, t, NULL) < 0)
			ura__task_finish_now(loop, ura__handle_index(t), slot, -ECANCELED);
	}
}

static bool backlog_busy(ura_loop *loop)
{
	return loop->backlog_head < loop->backlog.len;
}

/* Keeps the SQE (and timespec) of a task that cannot go to the ring yet. Takes cmd. */
static void keep_pending(struct ura__slot *slot, struct ura__submit_cmd *cmd)
{
	slot->u.pending = cmd;
	slot->lflags |= URA__TF_HAS_PENDING;
}

/* Moves a PENDING task with a kept SQE into the ring, or leaves it for the backlog.
 * Returns true once it is in the ring. Loop thread. */
static bool place_pending(ura_loop *loop, uint32_t index, struct ura__slot *slot, ura_task t)
{
	(void)index;
	if (!ura__sq_room(loop))
		return false;
	if (!ura__task_cas(slot, ura__handle_gen(t), URA__SLOT_PENDING, URA__SLOT_RUNNING))
		return true; /* cancelled meanwhile: its deferred cancel finishes it */
	struct ura__submit_cmd *cmd = slot->u.pending;
	slot->lflags &= (uint8_t)~URA__TF_HAS_PENDING;
	if (slot->lflags & URA__TF_QUEUED)
		ura__loop_unqueue(loop, slot);
	/* cmd->ts is read only for a timeout: it is past the SQE, on a line another thread
	 * wrote (a miss measured on every cross-thread task). cmd outlives the copy, so u.ts
	 * (over u.pending) may be written from it directly. */
	fill_sqe(io_uring_get_sqe(&loop->ring), &cmd->sqe, &cmd->ts, slot, t);
	ura__free(cmd);
	return true;
}

static void place_or_backlog(ura_loop *loop, uint32_t index, struct ura__slot *slot, ura_task t)
{
	if (backlog_busy(loop) || !place_pending(loop, index, slot, t))
		backlog_add(loop, slot, t);
}

/* Loop-thread acceptance of a task whose slot is filled in; cmd (may be NULL for an
 * on-loop submit) carries the SQE copy. */
static int accept_on_loop(ura_loop *loop, uint32_t index, struct ura__slot *slot, ura_task t,
			  const struct io_uring_sqe *sqe, const struct __kernel_timespec *ts,
			  bool suspended)
{
	ura_session *s = atomic_load_explicit(&slot->session, memory_order_relaxed);
	uint32_t gen = ura__handle_gen(t);
	if (!suspended && !backlog_busy(loop) && ura__sq_room(loop)) {
		/* Fast path: nobody else knows the handle yet, so no CAS is needed. */
		fill_sqe(io_uring_get_sqe(&loop->ring), sqe, ts, slot, t);
		set_state(slot, gen, URA__SLOT_RUNNING);
		slot->lflags |= URA__TF_LINKED;
		ura__session_task_linked(s, index, slot, ura__session_barrier_tag(s));
		return 0;
	}
	/* Room in the backlog first: once linked, the task could not be refused. */
	if (!suspended && ura__vec_reserve(&loop->backlog, sizeof(t)) < 0)
		return -ENOMEM;
	struct ura__submit_cmd *cmd = ura__malloc(sizeof(*cmd));
	if (!cmd)
		return -ENOMEM;
	cmd->cmd.run = NULL; /* never sent: only the slot's SQE copy */
	memcpy(&cmd->sqe, sqe, sizeof(*sqe));
	if (ts)
		cmd->ts = *ts;
	keep_pending(slot, cmd);
	set_state(slot, gen, suspended ? URA__SLOT_SUSPENDED : URA__SLOT_PENDING);
	slot->lflags |= URA__TF_LINKED;
	ura__session_task_linked(s, index, slot, ura__session_barrier_tag(s));
	if (!suspended)
		backlog_add(loop, slot, t);
	return 0;
}

/* A new task's slot, filled in; its handle in *t. -ENOMEM when the registry is full. */
static int64_t slot_fill(ura_session *s, ura_loop *loop, bool on_loop,
			 const struct io_uring_sqe *sqe, bool timeout, ura_task_fn fn, void *arg,
			 ura_task *t)
{
	int64_t idx = ura__registry_alloc(&loop->registry, on_loop);
	if (idx < 0)
		return idx;
	uint32_t index = (uint32_t)idx;
	struct ura__slot *slot = ura__registry_slot_at(&loop->registry, index);
	uint32_t gen = ura__gs_gen(atomic_load_explicit(&slot->gen_state, memory_order_relaxed));
	*t = ura__handle_make(&loop->registry, gen, index);
	atomic_store_explicit(&slot->session, s, memory_order_relaxed);
	slot->fn = fn;
	slot->arg = arg;
	slot->opcode = sqe->opcode;
	slot->lflags = timeout ? URA__TF_TIMEOUT : 0;
	return idx;
}

static int submit_on_loop(ura_session *s, ura_loop *loop, const struct io_uring_sqe *sqe,
			  unsigned flags, const struct __kernel_timespec *ts, ura_task_fn fn,
			  void *arg, ura_task *out)
{
	ura_task t;
	int64_t idx = slot_fill(s, loop, true, sqe, ts != NULL, fn, arg, &t);
	if (idx < 0)
		return (int)idx;
	uint32_t index = (uint32_t)idx;
	int r = accept_on_loop(loop, index, ura__registry_slot_at(&loop->registry, index), t,
			       sqe, ts, flags & URA_SUBMIT_SUSPENDED);
	if (r < 0) {
		ura__registry_free(&loop->registry, index);
		return r;
	}
	if (out)
		*out = t;
	return 0;
}

static void run_submit(struct ura__cmd *cmd, bool discard);

/* Inside the loop's gate (ura__loop_enter). */
static int submit_remote(ura_session *s, ura_loop *loop, const struct io_uring_sqe *sqe,
			 unsigned flags, const struct __kernel_timespec *ts, ura_task_fn fn,
			 void *arg, ura_task *out)
{
	/* The loop's bound on work queued by other threads (ura_loop_config.max_queued).
	 * Relaxed: a count, not a publication. A plain read first: a producer retrying
	 * against a full queue then only reads the line the loop writes. */
	if (atomic_load_explicit(&loop->queued, memory_order_relaxed) >= loop->max_queued)
		return -EAGAIN;
	if (atomic_fetch_add_explicit(&loop->queued, 1, memory_order_relaxed) >= loop->max_queued) {
		atomic_fetch_sub_explicit(&loop->queued, 1, memory_order_relaxed);
		return -EAGAIN;
	}
	int r = -ENOMEM;
	/* Allocated before the task is counted: a failure here needs no undo. */
	struct ura__submit_cmd *cmd = ura__malloc(sizeof(*cmd));
	if (!cmd || (r = ura__session_count_get(s)) < 0) {
		ura__free(cmd);
		atomic_fetch_sub_explicit(&loop->queued, 1, memory_order_relaxed);
		return r;
	}
	ura_task t;
	int64_t idx = slot_fill(s, loop, false, sqe, ts != NULL, fn, arg, &t);
	if (idx < 0) {
		ura__free(cmd);
		ura__session_count_put(s);
		atomic_fetch_sub_explicit(&loop->queued, 1, memory_order_relaxed);
		return (int)idx;
	}
	struct ura__slot *slot = ura__registry_slot_at(&loop->registry, (uint32_t)idx);
	slot->lflags |= URA__TF_QUEUED; /* until it reaches the ring, is suspended or ends */
	cmd->cmd.run = run_submit;
	cmd->task = t;
	cmd->session = s;
	cmd->barrier_tag = ura__session_barrier_tag(s); /* submitted now, linked later */
	memcpy(&cmd->sqe, sqe, sizeof(*sqe));
	if (ts)
		cmd->ts = *ts;
	/* Published with release: the loop (and cancellers) see the slot's fields. */
	set_state(slot, ura__handle_gen(t),
		  (flags & URA_SUBMIT_SUSPENDED) ? URA__SLOT_SUSPENDED : URA__SLOT_PENDING);
	ura__loop_send(loop, &cmd->cmd);
	if (out)
		*out = t;
	return 0;
}

int ura__submit_ts(ura_session *s, const struct io_uring_sqe *sqe, unsigned flags,
		   const struct __kernel_timespec *ts, ura_task_fn fn, void *arg, ura_task *out)
{
	if (!s || !sqe)
		return -EINVAL;
	if (flags & ~(unsigned)URA_SUBMIT_SUSPENDED)
		return -EINVAL;
	if (sqe->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK | IOSQE_CQE_SKIP_SUCCESS))
		return -EINVAL;

	/* Early out, before the loop is entered (its ring and registry are gone once the
	 * session is final).
	 * On the loop thread this is also the authoritative check: acceptance and the final
	 * event are both decided on that thread, and an accepted task is counted in
	 * the session's live count before any check for the final event can run, so no atomic
	 * read-modify-write is needed. Another thread counts itself in s->state instead
	 * (ura__session_count_get), by a CAS that an invalidation flag makes fail. */
	if (atomic_load_explicit(&s->state, memory_order_acquire) & URA__SS_FLAGS)
		return -ESHUTDOWN;
	ura_loop *loop = s->loop;
	if (ura__on_loop(loop))
		return submit_on_loop(s, loop, sqe, flags, ts, fn, arg, out);
	if (!ura__loop_enter(loop))
		return -ESHUTDOWN; /* ura_loop_free has ended the session meanwhile */
	int r = submit_remote(s, loop, sqe, flags, ts, fn, arg, out);
	ura__loop_leave(loop);
	return r;
}

int ura_submit(ura_session *s, const struct io_uring_sqe *sqe, unsigned flags,
	       ura_task_fn fn, void *arg, ura_task *out)
{
	return ura__submit_ts(s, sqe, flags, NULL, fn, arg, out);
}

/* Slot and generation state for a handle of s's loop, checked against s (not final;
 * off the loop thread, inside the gate). NULL when the handle is not a live task of s. */
static struct ura__slot *find(ura_session *s, ura_task t, uint64_t *gs_out)
{
	struct ura__slot *slot = ura__registry_lookup(&s->loop->registry, t);
	if (!slot)
		return NULL;
	uint64_t gs = ura__task_gs(slot);
	if (ura__gs_gen(gs) != ura__handle_gen(t) || ura__gs_state(gs) == URA__SLOT_FREE)
		return NULL;
	if (atomic_load_explicit(&slot->session, memory_order_relaxed) != s)
		return NULL;
	/* Re-read: if the generation still matches, the session we read was this task's. */
	if (ura__gs_gen(ura__task_gs(slot)) != ura__handle_gen(t))
		return NULL;
	*gs_out = gs;
	return slot;
}

int ura_task_state(ura_session *s, ura_task t)
{
	if (!s || ura__session_is_final(s))
		return URA_TASK_COMPLETED;
	bool on_loop = ura__on_loop(s->loop);
	if (!on_loop && !ura__loop_enter(s->loop))
		return URA_TASK_COMPLETED; /* the loop has ended every task */
	uint64_t gs;
	int r = URA_TASK_COMPLETED;
	if (find(s, t, &gs)) {
		switch (ura__gs_state(gs)) {
		case URA__SLOT_SUSPENDED:
			r = URA_TASK_SUSPENDED;
			break;
		case URA__SLOT_CANCELING:
			r = URA_TASK_CANCELING;
			break;
		default:
			r = URA_TASK_RUNNING;
			break;
		}
	}
	if (!on_loop)
		ura__loop_leave(s->loop);
	return r;
}

void ura__task_finish_now(ura_loop *loop, uint32_t index, struct ura__slot *slot, int32_t res)
{
	if (slot->lflags & URA__TF_QUEUED) /* ends before it ever reached the ring */
		ura__loop_unqueue(loop, slot);
	ura_session *s = atomic_load_explicit(&slot->session, memory_order_relaxed);
	uint32_t gen = ura__gs_gen(ura__task_gs(slot));
	ura__task_end(s, slot, ura__handle_make(&loop->registry, gen, index), res, 0);
}

/* The common start of cancel and resume: find the task and, off the loop thread, enter
 * the loop and allocate the command before the state changes, so that a change that
 * succeeds cannot then fail to reach the loop. On success the caller ends with
 * ura__task_call_end. */
int ura__task_call_begin(ura_session *s, ura_task t, struct ura__task_call *call)
{
	if (!s)
		return -EINVAL;
	if (ura__session_is_final(s))
		return -ENOENT; /* every task of s has ended; its loop may be gone */
	call->on_loop = ura__on_loop(s->loop);
	call->cmd = NULL;
	if (!call->on_loop && !ura__loop_enter(s->loop))
		return -ENOENT; /* ura_loop_free has ended every task */
	int r = 0;
	call->slot = find(s, t, &call->gs);
	if (!call->slot)
		r = -ENOENT;
	else if (!call->on_loop && !(call->cmd = ura__malloc(sizeof(*call->cmd))))
		r = -ENOMEM;
	if (r < 0 && !call->on_loop)
		ura__loop_leave(s->loop);
	return r;
}

/* Hands a cancel or resume that took effect to the loop thread (cmd NULL: it did not,
 * or this is the loop thread), and leaves the loop. */
void ura__task_call_end(ura_session *s, ura_task t, struct ura__task_call *call,
			void (*run)(struct ura__cmd *, bool))
{
	if (call->on_loop)
		return;
	if (call->cmd) {
		call->cmd->cmd.run = run;
		call->cmd->loop = s->loop;
		call->cmd->task = t;
		ura__loop_send(s->loop, &call->cmd->cmd);
	}
	ura__loop_leave(s->loop);
}

static void run_resume(struct ura__cmd *cmd, bool discard);

int ura_task_resume(ura_session *s, ura_task t)
{
	struct ura__task_call call;
	int r = ura__task_call_begin(s, t, &call);
	if (r < 0)
		return r;
	struct ura__slot *slot = call.slot;
	if (ura__gs_state(call.gs) != URA__SLOT_SUSPENDED ||
	    !ura__task_cas(slot, ura__handle_gen(t), URA__SLOT_SUSPENDED, URA__SLOT_PENDING)) {
		ura__free(call.cmd);
		call.cmd = NULL;
		uint64_t gs = ura__task_gs(slot);
		if (ura__gs_gen(gs) != ura__handle_gen(t) || ura__gs_state(gs) == URA__SLOT_FREE)
			r = -ENOENT;
		else
			r = -EINVAL;
	} else if (call.on_loop && (slot->lflags & URA__TF_LINKED)) {
		place_or_backlog(s->loop, ura__handle_index(t), slot, t);
	}
	/* On the loop thread an unlinked task's SUBMIT is still in the inbox, and that
	 * command will find it PENDING. */
	ura__task_call_end(s, t, &call, run_resume);
	return r;
}

struct ura__slot *ura__task_live_slot(ura_loop *loop, ura_task t, uint64_t *gs)
{
	struct ura__slot *slot = ura__registry_lookup(&loop->registry, t);
	if (!slot)
		return NULL;
	*gs = ura__task_gs(slot);
	if (ura__gs_gen(*gs) != ura__handle_gen(t) || ura__gs_state(*gs) == URA__SLOT_FREE)
		return NULL;
	return slot;
}

static void command_submit(ura_loop *loop, struct ura__submit_cmd *cmd)
{
	uint64_t gs;
	ura_task t = cmd->task;
	uint32_t index = ura__handle_index(t);
	struct ura__slot *slot = ura__task_live_slot(loop, t, &gs);
	/* The task cannot have finished before the loop saw it: only the loop finishes. */
	keep_pending(slot, cmd);
	ura_session *s = cmd->session;
	ura__session_task_linked(s, index, slot, cmd->barrier_tag);
	slot->lflags |= URA__TF_LINKED;
	ura__session_count_moved(s); /* now counted as live */
	if (s->cancel_all_done) {
		/* Accepted before the session's cancel bit was set, seen after its cancel-all
		 * ran: cancel it like the rest. */
		(void)ura__cancel_slot(loop, index, slot);
	}
	switch (ura__gs_state(ura__task_gs(slot))) {
	case URA__SLOT_CANCELING:
		ura__task_finish_now(loop, index, slot, -ECANCELED);
		break;
	case URA__SLOT_PENDING:
		place_or_backlog(loop, index, slot, t);
		break;
	default: /* SUSPENDED: waits for resume, no longer counted as queued */
		ura__loop_unqueue(loop, slot);
		break;
	}
}

/* A task accepted on another thread reaches the loop; the slot keeps cmd as its SQE
 * copy. Discarded: the slot goes with the registry, the count unit was released. */
static void run_submit(struct ura__cmd *cmd, bool discard)
{
	struct ura__submit_cmd *sc = (struct ura__submit_cmd *)cmd;
	if (discard)
		ura__free(sc);
	else
		command_submit(sc->session->loop, sc);
}

static void run_resume(struct ura__cmd *cmd, bool discard)
{
	struct ura__task_cmd *tc = (struct ura__task_cmd *)cmd;
	uint64_t gs;
	struct ura__slot *slot;
	if (!discard && (slot = ura__task_live_slot(tc->loop, tc->task, &gs)) &&
	    ura__gs_state(gs) == URA__SLOT_PENDING &&
	    !(slot->lflags & (URA__TF_IN_RING | URA__TF_BACKLOG)))
		place_or_backlog(tc->loop, ura__handle_index(tc->task), slot, tc->task);
	ura__free(tc);
}

void ura__task_drop_pending(struct ura__slot *slot)
{
	ura__free(slot->u.pending);
	slot->lflags &= (uint8_t)~URA__TF_HAS_PENDING;
}

void ura__task_drain_backlog(ura_loop *loop)
{
	while (loop->backlog_head < loop->backlog.len) {
		ura_task t = ((ura_task *)loop->backlog.items)[loop->backlog_head];
		uint64_t gs;
		struct ura__slot *slot = ura__task_live_slot(loop, t, &gs);
		if (slot && ura__gs_state(gs) == URA__SLOT_PENDING) {
			if (!place_pending(loop, ura__handle_index(t), slot, t))
				break;
		}
		if (slot)
			slot->lflags &= (uint8_t)~URA__TF_BACKLOG;
		loop->backlog_head++;
	}
	if (loop->backlog_head == loop->backlog.len)
		loop->backlog.len = loop->backlog_head = 0;
}
