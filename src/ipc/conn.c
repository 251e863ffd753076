/*
 * Connections with XPC's lifecycle. This file owns a connection's creation, its
 * references, the public state calls (activate, suspend, resume, cancel) and its end: the
 * reason, invalidation, a peer gone, and the I/O session's last call. Beside it, sharing
 * conn.h:
 *   conn_send.c      the send queue; send, send with reply, reply; pending reply handlers
 *                    and the requests waiting for an answer (each holds a transaction)
 *   conn_deliver.c   received frames and errors as events, held while suspended or
 *                    inactive, and the final event
 *   conn_io.c        the socket: connect, receive, decode, write
 *   conn_flow.c      output watermarks and the end of a half-closed connection
 *   conn_listener.c  the listener whose peers are connections
 *
 * Threads. The public calls work from any thread. What they must answer at once is kept
 * in atomics (suspend count, activated, cancelled); everything else runs on the loop
 * thread: a call made elsewhere sends a small command through the loop's inbox, so
 * commands from one thread reach the connection in the order they were made. Sends take
 * a stricter road: every send, the loop thread's too, enters the connection's own send
 * queue, so messages leave in the order the send calls returned, across threads (a
 * loop-thread send may not overtake a send that another thread has finished).
 *
 * Lifecycle. INACTIVE until activated (a client then connects), OPEN while receiving and
 * sending, CLOSING while a peer that half-closed gets what was accepted (conn_flow.c),
 * DISCONNECTED for a client whose peer left (pending replies and the handler got
 * INTERRUPTED; the next send reconnects), CANCELLING while its I/O session is being
 * invalidated and until its final event can go, DONE once the final CONNECTION_INVALID
 * event is delivered. Cancel is non-preemptive: it only marks and asks; the final event
 * comes from the I/O session's did_become_invalid or later (a resume), i.e. on a later
 * loop iteration, after every in-flight task of the connection has had its terminal call.
 * Nothing of the connection runs after it.
 *
 * Suspension. While suspended (or inactive), events and reply calls are held in order and
 * nothing is written; resume delivers what was held, the final event last.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "conn.h"
#include "session.h"

/* ----------------------------------------------------------- references */

static void conn_free(ura_conn *c)
{
	ura_loop *loop = c->loop;
	pthread_mutex_destroy(&c->lock);
	ura__free(c->unanswered);
	ura__free(c);
	ura__loop_unref(loop);
}

ura_conn *ura_conn_ref(ura_conn *c)
{
	if (c) {
		/* Relaxed: the caller already holds a reference; nothing to order. */
		atomic_fetch_add_explicit(&c->user_refs, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	}
	return c;
}

static void release(ura_conn *c)
{
	/* acq_rel: the last release sees every other holder's writes before freeing. */
	if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
		conn_free(c);
}

void ura__conn_retain(ura_conn *c)
{
	/* Relaxed: the caller holds a reference already. */
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void ura__conn_release(ura_conn *c)
{
	release(c);
}

void ura_conn_unref(ura_conn *c)
{
	if (!c)
		return;
	if (atomic_fetch_sub_explicit(&c->user_refs, 1, memory_order_acq_rel) == 1)
		ura_conn_cancel(c); /* nobody can use it any more: end it */
	release(c);
}

/* -------------------------------------------------------------- creation */

static void io_session_invalid(ura_session *s, int error, void *ctx);

static const struct ura_session_delegate io_delegate = {
	.did_become_invalid = io_session_invalid,
};

static int conn_alloc(ura_loop *loop, ura_conn **out)
{
	if (!loop || !out)
		return -EINVAL;
	/* Aligned: the send queue's head has a cache line of its own. */
	ura_conn *c = ura__zalloc_aligned(sizeof(*c), _Alignof(ura_conn));
	if (!c)
		return -ENOMEM;
	c->loop = loop;
	ura__loop_ref(loop); /* calls through c may read the loop's gate after its free */
	ura__list_init(&c->held);
	c->fd = -1;
	c->max_frame = URA__FRAME_MAX_PAYLOAD_DEFAULT;
	c->next_id = 1;
	c->wm_low = c->wm_low_set = URA__CONN_WM_LOW_DEFAULT;
	c->wm_high = c->wm_high_set = URA__CONN_WM_HIGH_DEFAULT;
	c->close_timeout_ns = URA__CONN_CLOSE_TIMEOUT_NS;
	/* The caller's reference, and the runtime's until the final event. */
	atomic_init(&c->refs, 2);
	atomic_init(&c->user_refs, 1);
	/* Written once here, never again: drain_cmd is reused while another thread may be
	 * queueing it (only its inbox link changes). */
	c->drain_cmd.cmd.run = ura__conn_call_run;
	c->drain_cmd.fn = ura__conn_drain_sends;
	c->drain_cmd.arg = c;
	pthread_mutex_init(&c->lock, NULL);
	int r = ura_session_new(loop, &io_delegate, c, &c->io);
	if (r < 0) {
		pthread_mutex_destroy(&c->lock);
		ura__free(c);
		ura__loop_unref(loop); /* the reference taken above */
		return r;
	}
	ura__frame_decoder_init(&c->dec, c->max_frame);
	*out = c;
	return 0;
}

int ura_conn_new(ura_loop *loop, int fd, ura_conn **out)
{
	if (fd < 0)
		return -EINVAL;
	int r = conn_alloc(loop, out);
	if (r == 0)
		(*out)->fd = fd;
	return r;
}

int ura_conn_connect(ura_loop *loop, const char *address, ura_conn **out)
{
	struct ura__address addr;
	int r = address ? ura__address_parse(address, &addr) : -EINVAL;
	if (r < 0)
		return r;
	r = conn_alloc(loop, out);
	if (r == 0) {
		(*out)->addr = addr;
		(*out)->by_address = true;
	}
	return r;
}

int ura_conn_set_event_handler(ura_conn *c, ura_event_fn fn, void *ctx)
{
	if (!c)
		return -EINVAL;
	if (atomic_load_explicit(&c->activated, memory_order_acquire))
		return -EBUSY;
	c->handler = fn;
	c->ctx = ctx;
	return 0;
}

int ura_conn_set_max_frame(ura_conn *c, uint32_t bytes)
{
	if (!c || bytes == 0)
		return -EINVAL;
	if (atomic_load_explicit(&c->activated, memory_order_acquire))
		return -EBUSY;
	c->max_frame = bytes;
	c->dec.max_payload = bytes;
	return 0;
}

ura_loop *ura_conn_loop(ura_conn *c)
{
	return c ? c->loop : NULL;
}

char *ura_conn_copy_invalidation_reason(ura_conn *c)
{
	/* Acquire: pairs with the release CAS in publish_reason, so the text is complete. */
	const char *r = c ? atomic_load_explicit(&c->reason, memory_order_acquire) : NULL;
	return r ? strdup(r) : NULL; /* the C library's malloc: the caller frees it */
}

/* --------------------------------------------------- commands to the loop */

void ura__conn_call_run(struct ura__cmd *cmd, bool discard)
{
	struct ura__conn_call *call = (struct ura__conn_call *)cmd;
	if (!discard)
		call->fn(call->arg);
}

/* Runs fn(arg) now on the loop thread, or sends it there in call, a command embedded in
 * its owner (no allocation). c is held until fn ran. false: the loop was freed (every
 * connection of it has ended), fn will never run and nothing was done. */
bool ura__conn_run_on_loop(ura_conn *c, struct ura__conn_call *call, void (*fn)(void *),
			   void *arg)
{
	if (ura__on_loop(c->loop)) {
		atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed); /* until fn ran */
		fn(arg);
		return true;
	}
	if (!ura__loop_enter(c->loop))
		return false;
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed); /* until fn ran */
	call->cmd.run = ura__conn_call_run;
	call->fn = fn;
	call->arg = arg;
	ura__loop_send(c->loop, &call->cmd);
	ura__loop_leave(c->loop);
	return true;
}

/* ------------------------------------------------------------- the end */

/* Makes text the reason unless one is set already. Any thread. */
static void publish_reason(ura_conn *c, const char *text)
{
	const char *none = NULL;
	/* Release: pairs with the acquire load in ura_conn_copy_invalidation_reason, which
	 * then sees the text the pointer leads to. */
	atomic_compare_exchange_strong_explicit(&c->reason, &none, text, memory_order_release,
						memory_order_relaxed);
}

/* Formats the reason into the connection itself unless one is set already: nothing to
 * allocate, nothing to fail. Loop thread: the only writer of reason_buf, which it writes
 * before publishing and never again after (a reason is set once). */
__attribute__((format(printf, 2, 0)))
static void set_reason_v(ura_conn *c, const char *fmt, va_list ap)
{
	/* Relaxed: only the loop thread publishes reason_buf; a constant text another thread
	 * published wins the CAS below anyway. */
	if (atomic_load_explicit(&c->reason, memory_order_relaxed))
		return;
	vsnprintf(c->reason_buf, sizeof(c->reason_buf), fmt, ap);
	publish_reason(c, c->reason_buf);
}

__attribute__((format(printf, 2, 3)))
static void set_reason(ura_conn *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	set_reason_v(c, fmt, ap);
	va_end(ap);
}

void ura__conn_refuse_sends(ura_conn *c, const char *reason)
{
	set_reason(c, "%s", reason);
	/* seq_cst: the store half of the Dekker pairing in send_queued (conn_send.c). */
	atomic_store_explicit(&c->cancelled, true, memory_order_seq_cst);
}

void ura__conn_invalidate(ura_conn *c, const char *reason)
{
	ura__conn_fail(c, "%s", reason);
}

void ura__conn_fail(ura_conn *c, const char *fmt, ...)
{
	if (c->state >= URA__CONN_CANCELLING)
		return;
	c->state = URA__CONN_CANCELLING;
	/* Sends are refused from here: the reason first, then cancelled. */
	va_list ap;
	va_start(ap, fmt);
	set_reason_v(c, fmt, ap);
	va_end(ap);
	/* seq_cst: the store half of the Dekker pairing in send_queued (conn_send.c). */
	atomic_store_explicit(&c->cancelled, true, memory_order_seq_cst);
	ura__conn_drop_unsent(c);
	/* Every task of the connection is cancelled; the session's final event (a later
	 * iteration, after every terminal call) finishes the job in io_session_invalid. */
	ura_session_invalidate_and_cancel(c->io);
}

void ura__conn_peer_gone(ura_conn *c, int err)
{
	if (!c->by_address) {
		if (err)
			ura__conn_fail(c, "peer closed: %s", strerror(err));
		else
			ura__conn_invalidate(c, "peer closed");
		return;
	}
	/* A client by address survives: replies and handler hear INTERRUPTED, what was
	 * half written is sent again whole after the reconnect that the next send makes. */
	c->state = URA__CONN_DISCONNECTED;
	if (c->writing)
		(void)ura_task_cancel(c->io, c->write_task);
	/* Every reply handler hears INTERRUPTED below, so nothing queued may go out on the
	 * next socket (a new peer would get requests whose replies nobody waits for), and
	 * the old peer's requests cannot be answered to the new one. */
	ura__conn_drop_unsent(c);
	ura__conn_requests_peer_gone(c, false);
	c->head_written = 0;
	void *partial = ura__frame_decoder_reset(&c->dec);
	if (partial)
		ura_msg_unref(ura__msg_of_data(partial));
	/* What the old peer sent and was not decoded goes with it. */
	ura__conn_drop_pending(c);
	c->eof_seen = false;
	c->recv_err = 0;
	ura__conn_flow_check(c);
	ura__conn_fail_replies(c, URA_ERROR_CONNECTION_INTERRUPTED);
	ura__conn_error_event(c, NULL, NULL, URA_ERROR_CONNECTION_INTERRUPTED);
	ura__conn_close_fd_if_idle(c);
}

/* An active connection is live work (a started handle of the loop) from activation, or
 * from its I/O's end if never activated, until its final event is delivered. */
void ura__conn_count_active(ura_conn *c, bool on)
{
	if (c->active_counted == on)
		return;
	c->active_counted = on;
	if (on)
		ura__loop_handle_start(c->loop);
	else
		ura__loop_handle_stop(c->loop);
}

/* The I/O session drained: no task of the connection is in the kernel any more. */
static void io_session_invalid(ura_session *s, int error, void *ctx)
{
	(void)s;
	ura_conn *c = ctx;
	/* Every way here sets cancelled first, except the loop's end (its sessions are
	 * invalidated directly): set it now, before the final event, so later sends are
	 * refused without touching the loop, and the pairing in send_queued holds.
	 * seq_cst: the store half of that pairing. The reason goes first: a refused send
	 * means an invalid connection, which has a reason. */
	if (error < 0)
		set_reason(c, "loop ended: %s", error == -ESHUTDOWN ? "freed" : strerror(-error));
	else
		set_reason(c, "cancelled"); /* set already on every way but the loop's end */
	atomic_store_explicit(&c->cancelled, true, memory_order_seq_cst);
	/* A negative error: the loop is being freed. A final event held for a resume could
	 * never be delivered after that, so it goes now. */
	c->loop_ending = error < 0;
	c->state = URA__CONN_CANCELLING;
	c->tasks_on_fd = 0;
	/* Its I/O is over, but its final event is still to come (maybe on a resume): that
	 * keeps the loop running, also for a connection never activated. */
	ura__conn_count_active(c, true);
	ura__conn_close_fd_if_idle(c);
	ura__conn_drop_unsent(c);
	ura__conn_drop_pending(c);
	void *partial = ura__frame_decoder_reset(&c->dec);
	if (partial)
		ura_msg_unref(ura__msg_of_data(partial));
	ura__conn_drop_held_handler_events(c);
	ura__conn_fail_replies(c, URA_ERROR_CONNECTION_INVALID);
	ura__conn_requests_peer_gone(c, true);
	/* The final event is delivered even to a connection never activated: it is how the
	 * owner learns the connection is gone. Held events go first. */
	atomic_store_explicit(&c->activated, true, memory_order_release);
	c->final_pending = true;
	ura__conn_flush_held(c);
}

/* ------------------------------------------------------ public state calls */

static void op_activate(ura_conn *c)
{
	if (c->state != URA__CONN_INACTIVE)
		return;
	ura__conn_count_active(c, true);
	if (c->by_address)
		ura__conn_start_connect(c);
	else
		ura__conn_start_io(c);
}

static void embedded_activate(void *arg)
{
	ura_conn *c = arg;
	op_activate(c);
	ura__conn_flush_held(c);
	release(c);
}

static void embedded_cancel(void *arg)
{
	ura_conn *c = arg;
	ura__conn_invalidate(c, "cancelled");
	release(c);
}

void ura_conn_activate(ura_conn *c)
{
	if (!c || atomic_exchange_explicit(&c->activated, true, memory_order_acq_rel))
		return;
	ura__conn_run_on_loop(c, &c->activate_cmd, embedded_activate, c);
}

int ura_conn_suspend(ura_conn *c)
{
	if (!c)
		return -EINVAL;
	/* acq_rel, like resume's CAS: the count needs no ordering of its own (every change
	 * is a read-modify-write), but release pairs with the loop thread's acquire loads of
	 * it (delivery, the writer), which then see what the caller did before suspending. */
	atomic_fetch_add_explicit(&c->suspend, 1, memory_order_acq_rel);
	return 0;
}

int ura_conn_resume(ura_conn *c)
{
	if (!c)
		return -EINVAL;
	int n = atomic_load_explicit(&c->suspend, memory_order_acquire);
	do {
		if (n == 0) {
			if (atomic_load_explicit(&c->activated, memory_order_acquire))
				return -EINVAL; /* more resumes than suspends */
			ura_conn_activate(c); /* resume on an inactive connection activates */
			return 0;
		}
	} while (!atomic_compare_exchange_weak_explicit(&c->suspend, &n, n - 1,
							memory_order_acq_rel,
							memory_order_acquire));
	if (n == 1) {
		if (atomic_load_explicit(&c->finished, memory_order_acquire))
			return 0; /* nothing is held any more, and the loop may be gone */
		int r = ura__conn_resume_op(c);
		if (r == -ESHUTDOWN)
			return 0; /* the loop was freed: its end delivered what was held */
		if (r < 0) /* nothing will deliver what was held: stay suspended, say so */
			atomic_fetch_add_explicit(&c->suspend, 1, memory_order_acq_rel);
		return r;
	}
	return 0;
}

void ura_conn_cancel(ura_conn *c)
{
	if (!c)
		return;
	/* From here sends are refused, so the connection is invalid: its reason is set
	 * first (unless another one was), a constant that needs no memory. */
	publish_reason(c, "cancelled");
	/* seq_cst: the store half of the Dekker pairing in send_queued (conn_send.c). */
	if (atomic_exchange_explicit(&c->cancelled, true, memory_order_seq_cst))
		return;
	ura__conn_run_on_loop(c, &c->cancel_cmd, embedded_cancel, c);
}

bool ura__conn_is_live(const ura_conn *c)
{
	return c->state < URA__CONN_CANCELLING;
}
