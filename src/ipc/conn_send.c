/*
 * A connection's sends: the send queue that keeps them in the order their calls returned,
 * ura_conn_send, ura_conn_send_with_reply and ura_conn_reply, the reply handlers waiting
 * for their answer, and the requests received and not answered yet, each holding one
 * transaction of the loop until its reply is written (or it is released, or its peer is
 * gone). The calls work from any thread; the ops they queue run on the loop thread.
 */
#include <errno.h>
#include <unistd.h>

#include "alloc.h"
#include "conn.h"

/* --------------------------------------------------------------- the ops */

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

/*
 * The send queue. Each send pushes its op onto c->sendq (the inbox's MPSC queue: a push
 * that happens-before another comes out first) and the loop thread runs them in that
 * order, in ura__conn_drain_sends, its only consumer, which takes the whole queue each time. A
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
void ura__conn_drain_sends(void *arg)
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
	ura__conn_release(c);
}

static void enqueue_send(struct op *op)
{
	ura_conn *c = op->c;
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed); /* until the op ran */
	if (!ura__inbox_push(&c->sendq, &op->cmd.cmd.node))
		return; /* whoever found the queue empty has a drain coming */
	if (ura__on_loop(c->loop) && !c->draining) {
		ura__conn_drain_sends(c);
		return;
	}
	/* Our push read the NULL a take wrote (acquire, pairing with that take's release in
	 * inbox.c): the loop is done with drain_cmd, so queueing it again is safe. */
	ura__loop_send(c->loop, &c->drain_cmd.cmd);
}

/* Runs an op without a message on the loop thread (see ura__conn_run_on_loop): 0,
 * -ENOMEM, or -ESHUTDOWN once the loop was freed. */
static int simple_op(ura_conn *c, enum op_kind kind)
{
	struct op *op = ura__zalloc(sizeof(*op));
	if (!op)
		return -ENOMEM;
	op->c = c;
	op->kind = kind;
	if (ura__conn_run_on_loop(c, &op->cmd, run_op, op))
		return 0;
	ura__free(op);
	return -ESHUTDOWN;
}

int ura__conn_resume_op(ura_conn *c)
{
	return simple_op(c, OP_SUSPENSION);
}

/* ------------------------------------------------- reply handlers waiting */

static struct ura__reply **bucket(ura_conn *c, uint64_t id)
{
	return &c->replies[id % URA__REPLY_BUCKETS];
}

struct ura__reply *ura__conn_take_reply(ura_conn *c, uint64_t id)
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
void ura__conn_fail_replies(ura_conn *c, enum ura_error e)
{
	for (unsigned b = 0; b < URA__REPLY_BUCKETS; b++) {
		while (c->replies[b]) {
			struct ura__reply *r = c->replies[b];
			c->replies[b] = r->next;
			ura__conn_error_event(c, r->fn, r->arg, e);
			ura__free(r);
		}
	}
}

/* ------------------------------------------------------ requests to answer */

/*
 * Unanswered requests, by message (ids from a new peer may repeat an old peer's). Each
 * holds a transaction until it is answered, released (its last unref), or its peer is
 * gone: a client's interruption makes its requests stale, and the end of the connection
 * forgets them all. Any thread answers, hence the lock.
 */
void ura__conn_hold_request(ura_conn *c, ura_msg *m)
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
void ura__conn_request_released(ura_msg *m, void *arg)
{
	ura_conn *c = arg;
	if (take_request(c, m, NULL) == 0) {
		ura_transaction_end(c->loop);
		ura__conn_poke(c); /* a half-closed connection may wait for no more */
	}
	ura__conn_release(c); /* the reference the request held */
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
void ura__conn_requests_peer_gone(ura_conn *c, bool forget)
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

/* ------------------------------------------------------ the ops' loop side */

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
			ura__conn_error_event(c, op->reply, op->arg, URA_ERROR_CONNECTION_INVALID);
		ura__conn_free_out(o);
		return;
	}
	uint64_t id = op->reply_to;
	if (op->reply) {
		struct ura__reply *r = ura__malloc(sizeof(*r));
		if (!r) {
			ura__conn_error_event(c, op->reply, op->arg, URA_ERROR_CONNECTION_INVALID);
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
	/* seq_cst: the count's changes are part of the pairing in send_queued. */
	if (atomic_fetch_sub_explicit(&c->posting, 1, memory_order_seq_cst) == 1 &&
	    c->final_pending)
		ura__conn_flush_held(c);
}

static void run_op(void *arg)
{
	struct op *op = arg;
	ura_conn *c = op->c;
	switch (op->kind) {
	case OP_SUSPENSION:
		ura__conn_flush_held(c);
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
	ura__conn_release(c);
	ura__free(op);
}

/* --------------------------------------------------------------- sending */

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
	 * A send can pass send_common's cancelled check just before a cancel and leave the send queue after
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

