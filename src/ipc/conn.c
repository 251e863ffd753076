/*
 * Connections with XPC's lifecycle.
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
 * sending, DISCONNECTED for a client whose peer left (pending replies and the handler got
 * INTERRUPTED; the next send reconnects), CANCELLING while its I/O session is being
 * invalidated, DONE once the final CONNECTION_INVALID event is delivered. Cancel is
 * non-preemptive: it only marks and asks; the final event comes from the I/O session's
 * did_become_invalid, i.e. on a later loop iteration, after every in-flight task of the
 * connection has had its terminal call. Nothing of the connection runs after it.
 *
 * Suspension. While suspended (or inactive), events and reply calls are held in order and
 * nothing is written; resume delivers what was held, the final event last.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

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
static void drain_sends(void *arg);

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
	c->drain_cmd.fn = drain_sends;
	c->drain_cmd.arg = c;
	pthread_mutex_init(&c->lock, NULL);
	int r = ura_session_new(loop, &io_delegate, c, &c->io);
	if (r < 0) {
		pthread_mutex_destroy(&c->lock);
		ura__free(c);
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

enum op_kind {
	OP_SUSPENSION,
	OP_SEND,
	OP_REFUSED, /* a counted send that was refused: it only uncounts itself */
};

struct op {
	struct ura__conn_call cmd; /* to the loop, as a command or a send queue link: cannot fail */
	ura_conn *c; /* holds a reference until the op ran */
	enum op_kind kind;
	bool counted; /* in c->posting: every send and refused send */
	struct ura__out *out;
	uint8_t flags;
	uint64_t reply_to;
	uint32_t epoch;      /* of a reply: the peer its request came from */
	ura_event_fn reply;
	void *arg;
};

static void run_op(void *arg);

void ura__conn_call_run(struct ura__cmd *cmd, bool discard)
{
	struct ura__conn_call *call = (struct ura__conn_call *)cmd;
	if (!discard)
		call->fn(call->arg);
}

/* Runs fn(arg) now on the loop thread, or sends it there in call, a command embedded in
 * its owner (no allocation). c is held until fn ran. false: the loop was freed (every
 * connection of it has ended), fn will never run and nothing was done. */
static bool run_on_loop(ura_conn *c, struct ura__conn_call *call, void (*fn)(void *), void *arg)
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

/*
 * The send queue. Each send pushes its op onto c->sendq (the inbox's MPSC queue: a push
 * that happens-before another comes out first) and the loop thread runs them in that
 * order, in drain_sends, its only consumer, which takes the whole queue each time. A
 * send from the loop thread queues too, so it cannot overtake a send another thread has
 * returned from.
 *
 * Who drains: the push that finds the queue empty. On the loop thread it drains at once
 * (nothing queued before it), unless a drain is running (a handler called from it sent:
 * the ops that drain still holds come first). Elsewhere, or then, it sends drain_cmd,
 * embedded so a send never allocates for it. So drain_cmd is in the loop's inbox only
 * while the queue is not empty, and the next push to find the queue empty comes after a
 * take, i.e. after the command left the inbox: it is never queued twice. Each queued op
 * holds a reference, so c lives while the command waits.
 */
static void drain_sends(void *arg)
{
	ura_conn *c = arg;
	ura__conn_retain(c); /* the last op may drop the last other reference */
	c->draining = true;
	/* The take is a release (inbox.c), the push that finds the queue empty after it an
	 * acquire: the loop is done with drain_cmd (the inbox read and rewrote its link)
	 * before that pusher queues it again. */
	struct ura__inbox_node *n = ura__inbox_take(&c->sendq);
	while (n) {
		struct op *op = (struct op *)n; /* cmd.node is first in both */
		n = n->next;
		run_op(op);
	}
	c->draining = false;
	release(c);
}

static void enqueue_send(struct op *op)
{
	ura_conn *c = op->c;
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed); /* until the op ran */
	if (!ura__inbox_push(&c->sendq, &op->cmd.cmd.node))
		return; /* whoever found the queue empty has a drain coming */
	if (ura__on_loop(c->loop) && !c->draining) {
		drain_sends(c);
		return;
	}
	/* Our push read the NULL a take wrote (acquire, pairing with that take's release in
	 * inbox.c): the loop is done with drain_cmd, so queueing it again is safe. */
	ura__loop_send(c->loop, &c->drain_cmd.cmd);
}

/* Runs an op without a message on the loop thread (see run_on_loop): 0, -ENOMEM, or
 * -ESHUTDOWN once the loop was freed. */
static int simple_op(ura_conn *c, enum op_kind kind)
{
	struct op *op = ura__zalloc(sizeof(*op));
	if (!op)
		return -ENOMEM;
	op->c = c;
	op->kind = kind;
	if (run_on_loop(c, &op->cmd, run_op, op))
		return 0;
	ura__free(op);
	return -ESHUTDOWN;
}

/* ------------------------------------------------------------ delivery */

static bool holding(ura_conn *c)
{
	return atomic_load_explicit(&c->suspend, memory_order_acquire) > 0 ||
	       !atomic_load_explicit(&c->activated, memory_order_acquire);
}

static void call(ura_conn *c, ura_event_fn fn, void *arg, const struct ura_event *ev)
{
	if (fn)
		fn(c, ev, arg);
	else if (c->handler)
		c->handler(c, ev, c->ctx);
}

void ura__conn_deliver(ura_conn *c, ura_event_fn fn, void *arg, const struct ura_event *ev)
{
	/* Once cancelled, the handler hears nothing but the final event. */
	if (!fn && c->state >= URA__CONN_CANCELLING)
		return;
	/* After the final event only reply handlers can be left (a send_with_reply that
	 * raced the cancel): they are told at once, nothing waits for a resume any more. */
	if ((!holding(c) && !c->held_head) || c->state == URA__CONN_DONE) {
		call(c, fn, arg, ev);
		return;
	}
	struct ura__held_event *h = ura__malloc(sizeof(*h));
	if (!h) {
		call(c, fn, arg, ev); /* out of memory: deliver now rather than lose it */
		return;
	}
	h->next = NULL;
	h->ev = *ev;
	h->ev.msg = ura_msg_ref(ev->msg);
	h->fn = fn;
	h->arg = arg;
	if (c->held_tail)
		c->held_tail->next = h;
	else
		c->held_head = h;
	c->held_tail = h;
}

static void deliver_final(ura_conn *c);
static void drop_held_handler_events(ura_conn *c);

/* Delivers held events while the connection is active and not suspended. */
static void flush_held(ura_conn *c)
{
	if (c->state >= URA__CONN_CANCELLING)
		drop_held_handler_events(c);
	/* At the loop's end nothing can wait for a resume: everything held goes now. */
	while (c->held_head && (!holding(c) || c->loop_ending)) {
		struct ura__held_event *h = c->held_head;
		c->held_head = h->next;
		if (!c->held_head)
			c->held_tail = NULL;
		call(c, h->fn, h->arg, &h->ev);
		ura_msg_unref(h->ev.msg);
		ura__free(h);
	}
	if (c->final_pending && !c->held_head)
		deliver_final(c);
}

static void error_event(ura_conn *c, ura_event_fn fn, void *arg, enum ura_error e)
{
	struct ura_event ev = { .type = URA_EVENT_ERROR, .error = e, .msg = NULL };
	ura__conn_deliver(c, fn, arg, &ev);
}

/* ------------------------------------------------------------- replies */

static struct ura__reply **bucket(ura_conn *c, uint64_t id)
{
	return &c->replies[id % URA__REPLY_BUCKETS];
}

static struct ura__reply *take_reply(ura_conn *c, uint64_t id)
{
	for (struct ura__reply **p = bucket(c, id); *p; p = &(*p)->next) {
		if ((*p)->id == id) {
			struct ura__reply *r = *p;
			*p = r->next;
			return r;
		}
	}
	return NULL;
}

/* Tells every pending reply handler e, once each. */
static void fail_replies(ura_conn *c, enum ura_error e)
{
	for (unsigned b = 0; b < URA__REPLY_BUCKETS; b++) {
		while (c->replies[b]) {
			struct ura__reply *r = c->replies[b];
			c->replies[b] = r->next;
			error_event(c, r->fn, r->arg, e);
			ura__free(r);
		}
	}
}

/*
 * Unanswered requests, by message (ids from a new peer may repeat an old peer's). Each
 * holds a transaction until it is answered, released (its last unref), or its peer is
 * gone: a client's interruption makes its requests stale, and the end of the connection
 * forgets them all. Any thread answers, hence the lock.
 */
static void hold_request(ura_conn *c, ura_msg *m)
{
	pthread_mutex_lock(&c->lock);
	if (c->n_unanswered == c->cap_unanswered) {
		size_t cap = c->cap_unanswered ? c->cap_unanswered * 2 : 8;
		struct ura__request *grown = ura__realloc(c->unanswered, cap * sizeof(*grown));
		if (!grown) {
			pthread_mutex_unlock(&c->lock);
			return; /* not tracked: a reply to it will be refused as unknown */
		}
		c->unanswered = grown;
		c->cap_unanswered = cap;
	}
	c->unanswered[c->n_unanswered++] = (struct ura__request){ .msg = m };
	pthread_mutex_unlock(&c->lock);
	ura_transaction_begin(c->loop);
}

/* Takes m out of the set: 0 (its transaction is the caller's to end or move), -ENOTCONN
 * if its peer is gone (transaction already ended), -EINVAL if unknown or answered. With
 * epoch (a reply), a request taken live counts as being answered until answer_done. */
static int take_request(ura_conn *c, const ura_msg *m, uint32_t *epoch)
{
	int r = -EINVAL;
	pthread_mutex_lock(&c->lock);
	/* Under the lock, with the stale marks: a request taken live has this epoch. */
	if (epoch)
		*epoch = atomic_load_explicit(&c->epoch, memory_order_relaxed);
	for (size_t i = 0; i < c->n_unanswered; i++) {
		if (c->unanswered[i].msg == m) {
			r = c->unanswered[i].stale ? -ENOTCONN : 0;
			c->unanswered[i] = c->unanswered[--c->n_unanswered];
			c->answering += r == 0 && epoch;
			break;
		}
	}
	if (c->n_unanswered == 0 && c->cap_unanswered > 64) {
		/* A burst is over: give its memory back rather than keep the peak. */
		ura__free(c->unanswered);
		c->unanswered = NULL;
		c->cap_unanswered = 0;
	}
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* The last reference to a request went: unanswered, it gives its transaction back. */
static void request_released(ura_msg *m, void *arg)
{
	ura_conn *c = arg;
	if (take_request(c, m, NULL) == 0) {
		ura_transaction_end(c->loop);
		ura__conn_poke(c); /* a half-closed connection may wait for no more */
	}
	release(c); /* the reference the request held */
}

/* A reply from take_request has been accepted or refused: a half-closed connection that
 * waited for it may end now. */
static void answer_done(ura_conn *c)
{
	pthread_mutex_lock(&c->lock);
	c->answering--;
	pthread_mutex_unlock(&c->lock);
	/* Relaxed: the lock orders it. The loop sets half_closed before it counts open
	 * requests under the lock; if it counted ours, our unlock comes after its lock, so
	 * we see the flag and poke. */
	if (atomic_load_explicit(&c->half_closed, memory_order_relaxed))
		ura__conn_poke(c);
}

size_t ura__conn_requests_open(ura_conn *c)
{
	pthread_mutex_lock(&c->lock);
	/* A reply on its way from take_request to the send queue is still open: between
	 * the two nothing else shows it. */
	size_t n = c->answering;
	for (size_t i = 0; i < c->n_unanswered; i++)
		n += !c->unanswered[i].stale;
	pthread_mutex_unlock(&c->lock);
	return n;
}

/* The peer is gone: every live request ends its transaction; stale ones stay known so
 * a late reply is told -ENOTCONN. forget: the connection ends, drop them all. */
static void requests_peer_gone(ura_conn *c, bool forget)
{
	size_t ended = 0;
	pthread_mutex_lock(&c->lock);
	/* A new epoch with the stale marks, atomically for take_request (relaxed: the lock
	 * orders it). */
	atomic_fetch_add_explicit(&c->epoch, 1, memory_order_relaxed);
	for (size_t i = 0; i < c->n_unanswered; i++) {
		ended += !c->unanswered[i].stale;
		c->unanswered[i].stale = true;
	}
	if (forget)
		c->n_unanswered = 0;
	pthread_mutex_unlock(&c->lock);
	while (ended--)
		ura_transaction_end(c->loop);
}

/* --------------------------------------------------------- state machine */

void ura__conn_frame(ura_conn *c, const struct ura__frame *f)
{
	ura_msg *m;
	if (ura__msg_from_frame(f, &m) < 0) {
		ura__conn_invalidate(c, "no memory for a message");
		return;
	}
	struct ura_event ev = { .type = URA_EVENT_MESSAGE, .msg = m };
	if (f->flags & URA__FRAME_IS_REPLY) {
		struct ura__reply *r = take_reply(c, f->id);
		if (!r) {
			char why[96];
			snprintf(why, sizeof(why), "protocol error: reply to unknown id %llu",
				 (unsigned long long)f->id);
			ura_msg_unref(m);
			ura__conn_invalidate(c, why);
			return;
		}
		ura__conn_deliver(c, r->fn, r->arg, &ev);
		ura__free(r);
	} else {
		if (f->flags & URA__FRAME_EXPECTS_REPLY) {
			/* Held until answered or released (the hook on its last unref). */
			hold_request(c, m);
			atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
			m->on_release = request_released;
			m->release_arg = c;
		}
		ura__conn_deliver(c, NULL, NULL, &ev);
	}
	ura_msg_unref(m);
}

/* Makes text the reason unless one is set already. Any thread. */
static void publish_reason(ura_conn *c, const char *text)
{
	const char *none = NULL;
	/* Release: pairs with the acquire load in ura_conn_copy_invalidation_reason, which
	 * then sees the text the pointer leads to. */
	atomic_compare_exchange_strong_explicit(&c->reason, &none, text, memory_order_release,
						memory_order_relaxed);
}

/* Keeps a copy of reason in the connection itself: nothing to allocate, nothing to fail.
 * Loop thread: the only writer of reason_buf, which it writes before publishing and
 * never again after (a reason is set once). */
static void set_reason(ura_conn *c, const char *reason)
{
	/* Relaxed: only the loop thread publishes reason_buf; a constant text another thread
	 * published wins the CAS below anyway. */
	if (atomic_load_explicit(&c->reason, memory_order_relaxed))
		return;
	snprintf(c->reason_buf, sizeof(c->reason_buf), "%s", reason);
	publish_reason(c, c->reason_buf);
}

void ura__conn_refuse_sends(ura_conn *c, const char *reason)
{
	set_reason(c, reason);
	/* seq_cst: the store half of send_common's Dekker pairing. */
	atomic_store_explicit(&c->cancelled, true, memory_order_seq_cst);
}

void ura__conn_invalidate(ura_conn *c, const char *reason)
{
	if (c->state >= URA__CONN_CANCELLING)
		return;
	c->state = URA__CONN_CANCELLING;
	ura__conn_refuse_sends(c, reason);
	ura__conn_drop_unsent(c);
	/* Every task of the connection is cancelled; the session's final event (a later
	 * iteration, after every terminal call) finishes the job in io_session_invalid. */
	ura_session_invalidate_and_cancel(c->io);
}

void ura__conn_peer_gone(ura_conn *c, int err)
{
	if (!c->by_address) {
		char why[96];
		if (err)
			snprintf(why, sizeof(why), "peer closed: %s", strerror(err));
		else
			snprintf(why, sizeof(why), "peer closed");
		ura__conn_invalidate(c, why);
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
	requests_peer_gone(c, false);
	c->head_written = 0;
	void *partial = ura__frame_decoder_reset(&c->dec);
	if (partial)
		ura_msg_unref(ura__msg_of_data(partial));
	/* What the old peer sent and was not decoded goes with it. */
	ura__conn_drop_pending(c);
	c->eof_seen = false;
	c->recv_err = 0;
	ura__conn_flow_check(c);
	fail_replies(c, URA_ERROR_CONNECTION_INTERRUPTED);
	error_event(c, NULL, NULL, URA_ERROR_CONNECTION_INTERRUPTED);
	ura__conn_close_fd_if_idle(c);
}

/* An active connection is live work (a started handle of the loop) from activation, or
 * from its I/O's end if never activated, until its final event is delivered. */
static void count_active(ura_conn *c, bool on)
{
	if (c->active_counted == on)
		return;
	c->active_counted = on;
	if (on)
		ura__loop_handle_start(c->loop);
	else
		ura__loop_handle_stop(c->loop);
}

/* Its final event waits for nothing but a resume: ura_main's shutdown does not wait for
 * that, the loop's free delivers it. */
static void held_for_resume(ura_conn *c, bool held)
{
	if (c->final_held == held)
		return;
	c->final_held = held;
	if (held)
		ura__loop_final_hold(c->loop);
	else
		ura__loop_final_release(c->loop);
}

static void deliver_final(ura_conn *c)
{
	/* seq_cst: pairs with send_common (see there). A send from another thread that
	 * passed its cancelled check is on its way: its reply handler hears INVALID first,
	 * and posting_done brings the final event back here. */
	if (atomic_load_explicit(&c->posting, memory_order_seq_cst) > 0) {
		held_for_resume(c, false);
		c->final_pending = true;
		return;
	}
	if (!c->loop_ending && atomic_load_explicit(&c->suspend, memory_order_acquire) > 0) {
		/* A suspended connection says it on resume; until then it is still live work,
		 * so ura_loop_run keeps running for a resume from another thread. */
		held_for_resume(c, true);
		c->final_pending = true;
		return;
	}
	held_for_resume(c, false);
	count_active(c, false);
	c->final_pending = false;
	c->state = URA__CONN_DONE;
	/* Release: the caller of a later resume sees the connection finished and leaves
	 * the (possibly freed) loop alone. */
	atomic_store_explicit(&c->finished, true, memory_order_release);
	struct ura_event ev = { .type = URA_EVENT_ERROR, .error = URA_ERROR_CONNECTION_INVALID };
	if (c->handler)
		c->handler(c, &ev, c->ctx);
	/* Never again: the handler and its ctx are forgotten. */
	c->handler = NULL;
	c->ctx = NULL;
	ura_session_unref(c->io);
	c->io = NULL;
	release(c); /* the runtime's reference */
}

/* Cancel drops what the handler has not seen yet (it hears only the final event from
 * now on); reply handlers keep their one call each. */
static void drop_held_handler_events(ura_conn *c)
{
	struct ura__held_event **p = &c->held_head;
	c->held_tail = NULL;
	while (*p) {
		struct ura__held_event *h = *p;
		if (!h->fn) {
			*p = h->next;
			ura_msg_unref(h->ev.msg);
			ura__free(h);
			continue;
		}
		c->held_tail = h;
		p = &h->next;
	}
}

/* The I/O session drained: no task of the connection is in the kernel any more. */
static void io_session_invalid(ura_session *s, int error, void *ctx)
{
	(void)s;
	ura_conn *c = ctx;
	/* Every way here sets cancelled first, except the loop's end (its sessions are
	 * invalidated directly): set it now, before the final event, so later sends are
	 * refused without touching the loop, and the pairing in send_common holds.
	 * seq_cst: the store half of that pairing. The reason goes first: a refused send
	 * means an invalid connection, which has a reason. */
	char why[64] = "cancelled"; /* set already on every way but the loop's end */
	if (error < 0)
		snprintf(why, sizeof(why), "loop ended: %s",
			 error == -ESHUTDOWN ? "freed" : strerror(-error));
	set_reason(c, why);
	atomic_store_explicit(&c->cancelled, true, memory_order_seq_cst);
	/* A negative error: the loop is being freed. A final event held for a resume could
	 * never be delivered after that, so it goes now. */
	c->loop_ending = error < 0;
	c->state = URA__CONN_CANCELLING;
	c->tasks_on_fd = 0;
	/* Its I/O is over, but its final event is still to come (maybe on a resume): that
	 * keeps the loop running, also for a connection never activated. */
	count_active(c, true);
	ura__conn_close_fd_if_idle(c);
	ura__conn_drop_unsent(c);
	ura__conn_drop_pending(c);
	void *partial = ura__frame_decoder_reset(&c->dec);
	if (partial)
		ura_msg_unref(ura__msg_of_data(partial));
	drop_held_handler_events(c);
	fail_replies(c, URA_ERROR_CONNECTION_INVALID);
	requests_peer_gone(c, true);
	/* The final event is delivered even to a connection never activated: it is how the
	 * owner learns the connection is gone. Held events go first. */
	atomic_store_explicit(&c->activated, true, memory_order_release);
	c->final_pending = true;
	flush_held(c);
}

/* -------------------------------------------------------------- the ops */

static void op_activate(ura_conn *c)
{
	if (c->state != URA__CONN_INACTIVE)
		return;
	count_active(c, true);
	if (c->by_address)
		ura__conn_start_connect(c);
	else
		ura__conn_start_io(c);
}

static void op_send(ura_conn *c, struct op *op)
{
	struct ura__out *o = op->out;
	op->out = NULL;
	if ((op->flags & URA__FRAME_IS_REPLY) &&
	    op->epoch != atomic_load_explicit(&c->epoch, memory_order_relaxed)) {
		ura__conn_free_out(o); /* its request's peer left: a new peer must not get it */
		return;
	}
	if (c->state >= URA__CONN_CANCELLING) {
		/* Too late: a reply handler still hears about it, exactly once. */
		if (op->reply)
			error_event(c, op->reply, op->arg, URA_ERROR_CONNECTION_INVALID);
		ura__conn_free_out(o);
		return;
	}
	uint64_t id = op->reply_to;
	if (op->reply) {
		struct ura__reply *r = ura__malloc(sizeof(*r));
		if (!r) {
			error_event(c, op->reply, op->arg, URA_ERROR_CONNECTION_INVALID);
			ura__conn_free_out(o);
			return;
		}
		id = c->next_id++;
		r->id = id;
		r->fn = op->reply;
		r->arg = op->arg;
		r->next = *bucket(c, id);
		*bucket(c, id) = r;
	}
	(void)ura__msg_encode_header(o->msg, op->flags, id, c->max_frame, o->hdr);
	o->next = NULL;
	if (c->out_tail)
		c->out_tail->next = o;
	else
		c->out_head = o;
	c->out_tail = o;
	c->out_bytes += ura__frame_size(ura_msg_len(o->msg));
	if (c->state == URA__CONN_DISCONNECTED && c->fd < 0)
		ura__conn_start_connect(c);
	ura__conn_kick_writer(c);
	ura__conn_flow_check(c); /* accepted whatever the mark: only reading stops */
}

/* A send has left the send queue; the last one lets a final event that waited for them
 * go. */
static void posting_done(ura_conn *c)
{
	/* seq_cst: the count's changes are part of send_common's pairing. */
	if (atomic_fetch_sub_explicit(&c->posting, 1, memory_order_seq_cst) == 1 &&
	    c->final_pending)
		flush_held(c);
}

static void run_op(void *arg)
{
	struct op *op = arg;
	ura_conn *c = op->c;
	switch (op->kind) {
	case OP_SUSPENSION:
		flush_held(c);
		ura__conn_kick_writer(c);
		break;
	case OP_SEND:
		op_send(c, op);
		break;
	case OP_REFUSED:
		break;
	}
	if (op->counted)
		posting_done(c);
	ura__conn_closing_check(c); /* a half-closed connection may wait for this op */
	release(c);
	ura__free(op);
}

/* ------------------------------------------------------------ public ops */

static void embedded_activate(void *arg)
{
	ura_conn *c = arg;
	op_activate(c);
	flush_held(c);
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
	run_on_loop(c, &c->activate_cmd, embedded_activate, c);
}

int ura_conn_suspend(ura_conn *c)
{
	if (!c)
		return -EINVAL;
	/* Relaxed is enough for the count itself; the loop re-reads it with acquire. */
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
		int r = simple_op(c, OP_SUSPENSION);
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
	/* seq_cst: the store half of send_common's Dekker pairing. */
	if (atomic_exchange_explicit(&c->cancelled, true, memory_order_seq_cst))
		return;
	run_on_loop(c, &c->cancel_cmd, embedded_cancel, c);
}

static int send_queued(ura_conn *c, ura_msg *m, uint8_t flags, uint64_t reply_to,
		       uint32_t epoch, ura_event_fn reply, void *arg);

static int send_common(ura_conn *c, ura_msg *m, uint8_t flags, uint64_t reply_to,
		       uint32_t epoch, ura_event_fn reply, void *arg)
{
	if (!c || !m)
		return -EINVAL;
	if (ura_msg_len(m) > c->max_frame)
		return -EMSGSIZE;
	if (atomic_load_explicit(&c->cancelled, memory_order_acquire))
		return -ESHUTDOWN;
	if (ura__on_loop(c->loop))
		return send_queued(c, m, flags, reply_to, epoch, reply, arg);
	/* Another thread enters the loop: a send racing ura_loop_free touches nothing of
	 * it once it is freed (the connection has ended by then: -ESHUTDOWN). */
	if (!ura__loop_enter(c->loop))
		return -ESHUTDOWN;
	int r = send_queued(c, m, flags, reply_to, epoch, reply, arg);
	ura__loop_leave(c->loop);
	return r;
}

/* send_common's work, on the loop thread or inside the loop's gate. */
static int send_queued(ura_conn *c, ura_msg *m, uint8_t flags, uint64_t reply_to,
		       uint32_t epoch, ura_event_fn reply, void *arg)
{
	struct op *op = ura__zalloc(sizeof(*op));
	struct ura__out *o = ura__malloc(sizeof(*o));
	if (!op || !o) {
		ura__free(op);
		ura__free(o);
		return -ENOMEM;
	}
	op->c = c;
	/*
	 * A send can pass the check above just before a cancel and leave the send queue after
	 * it. Its reply handler must still be called before the final event, so the final
	 * event waits for it: the send counts itself in posting, then re-checks cancelled;
	 * the loop sets cancelled, then (in deliver_final) reads posting. All four are
	 * seq_cst, so at least one side sees the other: the send is refused, or the final
	 * event waits for it. A refused send still goes to the loop, to uncount itself there.
	 */
	op->counted = true;
	atomic_fetch_add_explicit(&c->posting, 1, memory_order_seq_cst);
	if (!ura__on_loop(c->loop) && ura__fault(URA__FAULT_SEND_STALL))
		usleep(2000); /* a test widens the race with a cancel */
	if (atomic_load_explicit(&c->cancelled, memory_order_seq_cst)) {
		ura__free(o);
		op->kind = OP_REFUSED;
		enqueue_send(op);
		return -ESHUTDOWN;
	}
	o->msg = ura_msg_ref(m);
	o->txn_loop = (flags & URA__FRAME_IS_REPLY) ? c->loop : NULL;
	op->kind = OP_SEND;
	op->out = o;
	op->flags = flags;
	op->reply_to = reply_to;
	op->epoch = epoch;
	op->reply = reply;
	op->arg = arg;
	enqueue_send(op); /* from here the send is ordered: before any later one */
	return 0;
}

int ura_conn_send(ura_conn *c, ura_msg *m)
{
	return send_common(c, m, 0, 0, 0, NULL, NULL);
}

int ura_conn_send_with_reply(ura_conn *c, ura_msg *m, ura_event_fn reply, void *arg)
{
	if (!reply)
		return -EINVAL;
	return send_common(c, m, URA__FRAME_EXPECTS_REPLY, 0, 0, reply, arg);
}

int ura_conn_reply(ura_conn *c, ura_msg *request, ura_msg *reply)
{
	if (!c || !request || !reply || !(ura__msg_flags(request) & URA__FRAME_EXPECTS_REPLY))
		return -EINVAL;
	if (atomic_load_explicit(&c->cancelled, memory_order_acquire))
		return -ESHUTDOWN;
	if (ura_msg_len(reply) > c->max_frame)
		return -EMSGSIZE; /* checked first: a reply that fits may still answer it */
	uint32_t epoch;
	int r = take_request(c, request, &epoch);
	if (r < 0)
		return r; /* -EINVAL: not a request of c, or answered; -ENOTCONN: its peer left */
	r = send_common(c, reply, URA__FRAME_IS_REPLY, ura__msg_id(request), epoch, NULL, NULL);
	if (r < 0)
		ura_transaction_end(c->loop); /* the reply will never be written */
	/* Accepted, it is counted in posting now, which a half-closed end waits for too. */
	answer_done(c);
	return r;
}

void ura__conn_notify(ura_conn *c, enum ura_error e)
{
	error_event(c, NULL, NULL, e);
}

bool ura__conn_is_live(const ura_conn *c)
{
	return c->state < URA__CONN_CANCELLING;
}
