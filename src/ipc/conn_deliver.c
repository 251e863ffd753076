/*
 * What a connection tells its owner: a received frame becomes a message event for the
 * handler or for the reply handler it answers (a request is held for its answer first,
 * conn_send.c); errors become error events. While the connection is suspended or not yet
 * activated, events are held in order; resume delivers them, and the final
 * CONNECTION_INVALID event comes last, once nothing else can. Loop thread only.
 */
#include "alloc.h"
#include "conn.h"
#include "session.h"

/* ------------------------------------------------------- received frames */

void ura__conn_frame(ura_conn *c, const struct ura__frame *f)
{
	ura_msg *m;
	if (ura__msg_from_frame(f, &m) < 0) {
		ura__conn_invalidate(c, "no memory for a message");
		return;
	}
	struct ura_event ev = { .type = URA_EVENT_MESSAGE, .msg = m };
	if (f->flags & URA__FRAME_IS_REPLY) {
		struct ura__reply *r = ura__conn_take_reply(c, f->id);
		if (!r) {
			ura_msg_unref(m);
			ura__conn_fail(c, "protocol error: reply to unknown id %llu",
				       (unsigned long long)f->id);
			return;
		}
		ura__conn_deliver(c, r->fn, r->arg, &ev);
		ura__free(r);
	} else {
		if (f->flags & URA__FRAME_EXPECTS_REPLY) {
			/* Held until answered or released (the hook on its last unref). */
			ura__conn_hold_request(c, m);
			atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
			m->on_release = ura__conn_request_released;
			m->release_arg = c;
		}
		ura__conn_deliver(c, NULL, NULL, &ev);
	}
	ura_msg_unref(m);
}

/* -------------------------------------------------------------- delivery */

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
	if ((!holding(c) && ura__list_empty(&c->held)) || c->state == URA__CONN_DONE) {
		call(c, fn, arg, ev);
		return;
	}
	struct ura__held_event *h = ura__malloc(sizeof(*h));
	if (!h) {
		call(c, fn, arg, ev); /* out of memory: deliver now rather than lose it */
		return;
	}
	h->ev = *ev;
	h->ev.msg = ura_msg_ref(ev->msg);
	h->fn = fn;
	h->arg = arg;
	ura__list_push_back(&c->held, &h->link);
}

void ura__conn_error_event(ura_conn *c, ura_event_fn fn, void *arg, enum ura_error e)
{
	struct ura_event ev = { .type = URA_EVENT_ERROR, .error = e, .msg = NULL };
	ura__conn_deliver(c, fn, arg, &ev);
}

void ura__conn_notify(ura_conn *c, enum ura_error e)
{
	ura__conn_error_event(c, NULL, NULL, e);
}

/* ----------------------------------------------------------- held events */

static void deliver_final(ura_conn *c);

/* Cancel drops what the handler has not seen yet (it hears only the final event from
 * now on); reply handlers keep their one call each. */
void ura__conn_drop_held_handler_events(ura_conn *c)
{
	struct ura__list *pos, *tmp;
	ura__list_for_each_safe(pos, tmp, &c->held) {
		struct ura__held_event *h = ura__list_entry(pos, struct ura__held_event, link);
		if (h->fn)
			continue;
		ura__list_remove(&h->link);
		ura_msg_unref(h->ev.msg);
		ura__free(h);
	}
}

/* Delivers held events while the connection is active and not suspended (all of them at
 * the loop's end), then the final event if it is due and nothing is held. */
void ura__conn_flush_held(ura_conn *c)
{
	if (c->state >= URA__CONN_CANCELLING)
		ura__conn_drop_held_handler_events(c);
	/* At the loop's end nothing can wait for a resume: everything held goes now. */
	struct ura__list *front;
	while ((front = ura__list_front(&c->held)) && (!holding(c) || c->loop_ending)) {
		struct ura__held_event *h = ura__list_entry(front, struct ura__held_event, link);
		ura__list_remove(&h->link);
		call(c, h->fn, h->arg, &h->ev);
		ura_msg_unref(h->ev.msg);
		ura__free(h);
	}
	if (c->final_pending && ura__list_empty(&c->held))
		deliver_final(c);
}

/* ------------------------------------------------------- the final event */

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
	/* seq_cst: pairs with send_queued (conn_send.c). A send from another thread that
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
	ura__conn_count_active(c, false);
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
	ura__conn_release(c); /* the runtime's reference */
}
