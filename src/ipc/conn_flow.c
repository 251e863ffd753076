/*
 * Connection flow control: output watermarks and the end of a half-closed connection.
 *
 * Watermarks. Sends are never refused for being many (they queue in order, as on an XPC
 * connection), so what bounds a connection's memory is its input: past the high mark of
 * queued output (frames accepted and not yet written) the connection stops reading its
 * socket, and reads again once the output is at or under the low mark. A stop cancels
 * the multishot recv; what it still brings before its terminal call is kept undecoded
 * (conn_io.c), and what the peer sends meanwhile stays in the kernel's socket buffer, so
 * the peer's writes block: the stream's own backpressure. Memory is then bounded by the
 * high mark plus one reply (the one that crossed it) plus what the recv had already read.
 *
 * Half-close. A peer that shuts down its write side still reads: the connection writes
 * everything it accepted, waits for the requests it received to be answered (or
 * released), then ends with "peer closed". The wait is bounded by close_timeout_ns.
 *
 * Loop thread only, except ura_conn_set_watermarks and ura__conn_poke.
 */
#include <errno.h>

#include "conn.h"
#include "session.h"

size_t ura__conn_queued_bytes(const ura_conn *c)
{
	return c->out_bytes - c->head_written;
}

bool ura__conn_reading(const ura_conn *c)
{
	return c->recv_live && !c->recv_cancelling;
}

void ura__conn_flow_check(ura_conn *c)
{
	size_t q = ura__conn_queued_bytes(c);
	if (!c->read_paused && q > c->wm_high) {
		c->read_paused = true;
		ura__conn_stop_recv(c);
	} else if (c->read_paused && q <= c->wm_low) {
		c->read_paused = false;
		ura__conn_pump_input(c);
	}
}

/* ---------------------------------------------------------------- poke */

static void run_poke(void *arg)
{
	ura_conn *c = arg;
	/* Release: pairs with the acq_rel exchange in ura__conn_poke. A poke that reads
	 * this false queues the command again, and what its caller changed before it (under
	 * c->lock) is then read by that run; one that still reads true changed it before our
	 * lock below, which sees it. */
	atomic_store_explicit(&c->poke_queued, false, memory_order_release);
	if (ura__conn_is_live(c)) {
		pthread_mutex_lock(&c->lock);
		c->wm_low = c->wm_low_set;
		c->wm_high = c->wm_high_set;
		pthread_mutex_unlock(&c->lock);
		ura__conn_flow_check(c);
		ura__conn_closing_check(c);
	}
	ura__conn_release(c);
}

void ura__conn_poke(ura_conn *c)
{
	/* acq_rel: see run_poke. Acquire also orders our rewrite of poke_cmd after the loop's
	 * last read of it (it read fn and arg before calling run_poke). */
	if (atomic_exchange_explicit(&c->poke_queued, true, memory_order_acq_rel))
		return; /* one is queued and has not started: it will see the change */
	/* Acquire: a finished connection's loop may be freed; touch nothing of it. Pairs
	 * with the release store in deliver_final. */
	if (atomic_load_explicit(&c->finished, memory_order_acquire))
		return;
	ura_loop *loop = c->loop;
	bool on_loop = ura__on_loop(loop);
	/* Through the inbox on the loop thread too: the checks may end the connection, which
	 * must not happen inside whatever called us (a handler, a message's release). Once
	 * the gate is shut the inbox never runs again, and the loop's end ends c anyway.
	 * Relaxed: only the loop thread shuts it. */
	if (on_loop ? (atomic_load_explicit(&loop->gate, memory_order_relaxed) & URA__GATE_CLOSED)
		    : !ura__loop_enter(loop))
		return;
	ura__conn_retain(c); /* until run_poke ran */
	c->poke_cmd.cmd.run = ura__conn_call_run;
	c->poke_cmd.fn = run_poke;
	c->poke_cmd.arg = c;
	ura__loop_send(loop, &c->poke_cmd.cmd);
	if (!on_loop)
		ura__loop_leave(loop);
}

int ura_conn_set_watermarks(ura_conn *c, size_t low, size_t high)
{
	if (!c || high == 0 || low > high)
		return -EINVAL;
	/* Both under the lock: the loop never sees one mark without the other. */
	pthread_mutex_lock(&c->lock);
	c->wm_low_set = low;
	c->wm_high_set = high;
	pthread_mutex_unlock(&c->lock);
	ura__conn_poke(c);
	return 0;
}

/* ----------------------------------------------------------- half-close */

void ura__conn_set_close_timeout(ura_conn *c, uint64_t ns)
{
	c->close_timeout_ns = ns;
}

static void on_close_timer(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)flags;
	ura_conn *c = arg;
	if (res != -ETIME || c->state != URA__CONN_CLOSING)
		return; /* cancelled: the connection ended first */
	ura__conn_fail(c, "peer closed; %zu bytes unwritten after %llu ms",
		       ura__conn_queued_bytes(c), (unsigned long long)(c->close_timeout_ns / 1000000));
}

void ura__conn_half_closed(ura_conn *c)
{
	c->state = URA__CONN_CLOSING;
	/* Relaxed: c->lock orders it against answer_done (conn_send.c), which pokes once it sees
	 * it; the closing check below takes that lock after this store. */
	atomic_store_explicit(&c->half_closed, true, memory_order_relaxed);
	/* A task of the connection's session: its end cancels the timer. */
	if (ura_timeout(c->io, c->close_timeout_ns, on_close_timer, c, NULL) < 0) {
		ura__conn_invalidate(c, "peer closed"); /* the wait could not be bounded */
		return;
	}
	ura__conn_closing_check(c);
}

void ura__conn_closing_check(ura_conn *c)
{
	if (c->state != URA__CONN_CLOSING || c->writing || c->out_head ||
	    ura__conn_requests_open(c) > 0)
		return;
	/* Nothing accepted is left. Sends are refused from here; one that was accepted
	 * before (it passed its cancelled check) is still on its way through the send queue
	 * and is written first: refuse_sends stores cancelled, then we read posting, both
	 * seq_cst, against send_queued's increment of posting then load of cancelled. Its
	 * op's end (run_op, conn_send.c) checks again. */
	ura__conn_refuse_sends(c, "peer closed");
	if (atomic_load_explicit(&c->posting, memory_order_seq_cst) > 0)
		return;
	ura__conn_invalidate(c, "peer closed");
}
