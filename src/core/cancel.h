/* Cancellation: every route by which a task or a session is cancelled, the cancel
 * backlog, lost-cancel resends, missed-cancel retries and the count of cancels in
 * flight. See cancel.c for why the final event neither fires early nor never. */
#ifndef URA_CANCEL_H
#define URA_CANCEL_H

#include "loop.h"
#include "session.h"

/* Some cancel work of s is still outstanding: an ASYNC_CANCEL queued or in the kernel,
 * a retry timer in the ring, or a retry check waiting for the next drain. The session's
 * final event waits until this is false. Loop thread. */
static inline bool ura__cancel_pending(const ura_session *s)
{
	return s->cancels_in_flight || s->retry_armed || s->retry_check_pending;
}

/* Marks a live task CANCELING (unless it is already) and acts on it. Returns true when
 * this call requested the cancel. Loop thread. */
bool ura__cancel_slot(ura_loop *loop, uint32_t index, struct ura__slot *slot);
/* Cancels every live task of s (invalidate_and_cancel). Loop thread. */
void ura__cancel_all(ura_session *s);
/* URA__DEFER_CANCELLED: ends a task cancelled before it reached the ring. Loop thread. */
void ura__cancel_deferred(ura_loop *loop, ura_task t);

/* Moves backlogged cancels into the SQ while there is room; before the task backlog.
 * Loop thread. */
void ura__cancel_drain_backlog(ura_loop *loop);
/* A cancel was lost to a full SQ and no memory (loop->cancels_lost): clears the flag
 * and cancels again every task of every session cancelling in the ring. Call only with
 * SQ room. Loop thread. */
void ura__cancel_resend_lost(ura_loop *loop);

/* A cancel CQE (res) for one of s's tasks was reaped (tag kind CANCEL). Loop thread. */
void ura__cancel_reaped(ura_session *s, int32_t res);
/* URA__DEFER_RETRY_CHECK, after a missed cancel: arms the retry timer if a task of s is
 * still cancelling in the ring. Loop thread. */
void ura__cancel_retry_check(ura_session *s);
/* s's cancel-retry timer fired (tag kind RETRY): cancels again what is still
 * cancelling. Loop thread. */
void ura__cancel_retry_fired(ura_session *s);
/* s has no task left: removes its armed retry timer so the final event does not wait
 * out the delay. Loop thread. */
void ura__cancel_retry_end(ura_session *s);
/* The ring is gone (ura_loop_free): forgets s's cancels, timer and check. */
void ura__cancel_abandon(ura_session *s);

#endif
