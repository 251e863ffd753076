/* Tasks: acceptance, placement in the ring, cancel/resume, terminal calls. */
#ifndef URA_TASK_H
#define URA_TASK_H

#include "loop.h"

/* Submits a task whose SQE addr must point at a runtime-kept timespec (ura_timeout). */
int ura__submit_ts(ura_session *s, const struct io_uring_sqe *sqe, unsigned flags,
		   const struct __kernel_timespec *ts, ura_task_fn fn, void *arg, ura_task *out);

/*
 * The wrappers' fast path: on the loop thread, with room in the SQ and nothing
 * backlogged, a wrapper prepares its SQE in place in the ring instead of in a template
 * that ura_submit then copies. begin reserves a slot and an SQE (false: use the template
 * path, which also gives the right error); commit makes the prepared SQE a task.
 */
struct ura__fast {
	ura_session *s;
	struct io_uring_sqe *sqe;
	struct ura__slot *slot;
	uint32_t index;
};
bool ura__fast_begin(ura_session *s, struct ura__fast *f);
int ura__fast_commit(struct ura__fast *f, ura_task_fn fn, void *arg, ura_task *out);

/* Inbox commands SUBMIT, CANCEL and RESUME. Loop thread. */
void ura__task_command(ura_loop *loop, struct ura__cmd *cmd);
/* A CQE whose user_data is a task handle. Loop thread. */
void ura__task_cqe(ura_loop *loop, uint64_t user_data, int32_t res, uint32_t flags);
/* URA__DEFER_CANCELLED: a task cancelled before reaching the ring. Loop thread. */
void ura__task_deferred_cancel(ura_loop *loop, ura_task t);
/* Moves backlogged cancels, then tasks, into the SQ while there is room. Loop thread. */
void ura__task_drain_backlog(ura_loop *loop);
/* Marks a live task CANCELING (unless it is already) and acts on it. Returns true when
 * this call requested the cancel. Loop thread. */
bool ura__task_cancel_slot(ura_loop *loop, uint32_t index, struct ura__slot *slot);
/* Terminal call of a task that never reached the kernel or was abandoned. Loop thread. */
void ura__task_finish_now(ura_loop *loop, uint32_t index, struct ura__slot *slot, int32_t res);

#endif
