/*
 * Connection I/O: connect, multishot receive into the loop's shared buffer ring, the
 * frame decoder, and batched sends. Every operation is a task of the connection's private
 * session, so cancelling the connection is that session's invalidate-and-cancel, and the
 * session's final event says the kernel holds nothing of the connection any more.
 * Loop thread only.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "alloc.h"
#include "bufring.h"
#include "conn.h"

/* ------------------------------------------------------------- the socket */

void ura__conn_close_fd_if_idle(ura_conn *c)
{
	if (c->fd >= 0 && c->tasks_on_fd == 0 &&
	    (c->state == URA__CONN_DISCONNECTED || c->state >= URA__CONN_CANCELLING)) {
		close(c->fd);
		c->fd = -1;
	}
}

static void task_done_on_fd(ura_conn *c)
{
	c->tasks_on_fd--;
	ura__conn_close_fd_if_idle(c);
}

/* ------------------------------------------------------------ receive */

static void on_recv(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg);

static void arm_recv(ura_conn *c)
{
	ura_buf_ring *br = ura__loop_shared_bufs(c->loop);
	if (!br) {
		ura__conn_invalidate(c, "no memory for receive buffers");
		return;
	}
	int r = ura_recv_multishot(c->io, c->fd, br, 0, on_recv, c, &c->recv_task);
	if (r < 0) {
		ura__conn_fail(c, "recv: %s", strerror(-r));
		return;
	}
	c->recv_live = true;
	c->recv_cancelling = false;
	c->tasks_on_fd++;
}

void ura__conn_stop_recv(ura_conn *c)
{
	if (!c->recv_live || c->recv_cancelling)
		return;
	c->recv_cancelling = true;
	/* Its terminal call comes on a later iteration; data it brings before that is kept
	 * (keep_input), the rest stays in the socket. */
	(void)ura_task_cancel(c->io, c->recv_task);
}

void ura__conn_drop_pending(ura_conn *c)
{
	ura__free(c->pend);
	c->pend = NULL;
	c->pend_off = c->pend_len = c->pend_cap = 0;
}

/* Keeps received bytes that reading stopped before decoding. 0 or -ENOMEM. */
static int keep_input(ura_conn *c, const unsigned char *p, size_t len)
{
	if (c->pend_off + c->pend_len + len > c->pend_cap) {
		/* Move what is left to the front first; grow only if that is not enough. */
		if (c->pend_len)
			memmove(c->pend, c->pend + c->pend_off, c->pend_len);
		c->pend_off = 0;
		if (c->pend_len + len > c->pend_cap) {
			size_t cap = c->pend_cap ? c->pend_cap : URA__SHARED_BUF_SIZE;
			while (cap < c->pend_len + len)
				cap *= 2;
			unsigned char *grown = ura__realloc(c->pend, cap);
			if (!grown)
				return -ENOMEM;
			c->pend = grown;
			c->pend_cap = cap;
		}
	}
	memcpy(c->pend + c->pend_off + c->pend_len, p, len);
	c->pend_len += len;
	return 0;
}

/* Feeds one received chunk to the decoder; each complete frame goes to the state
 * machine. A payload that straddles chunks is gathered into a message's own buffer.
 * Returns the bytes used: all of them, unless reading stopped (a reply went over the high
 * mark: the rest waits) or the connection failed. */
static size_t feed(ura_conn *c, const unsigned char *p, size_t len)
{
	size_t all = len;
	while (c->state == URA__CONN_OPEN && !c->read_paused) {
		size_t used = 0;
		struct ura__frame f;
		int r = ura__frame_decode(&c->dec, p, len, &used, &f);
		p += used;
		len -= used;
		if (r == URA__FRAME_READY) {
			ura__conn_frame(c, &f);
			continue;
		}
		if (r == URA__FRAME_MORE)
			return all;
		if (r == URA__FRAME_NEED_BUFFER) {
			ura_msg *m;
			void *buf;
			if (ura__msg_alloc(ura__frame_decoder_need(&c->dec), &m, &buf) < 0) {
				ura__conn_invalidate(c, "no memory for a message");
				return all - len;
			}
			ura__frame_decoder_give(&c->dec, buf);
			continue;
		}
		ura__conn_fail(c, "protocol error: %s", ura__frame_decoder_reason(&c->dec));
		return all - len;
	}
	return all - len;
}

/* The recv ended at end of stream and everything before it was decoded. */
static void end_of_input(ura_conn *c)
{
	if (ura__frame_decoder_finish(&c->dec) < 0) {
		ura__conn_fail(c, "protocol error: %s", ura__frame_decoder_reason(&c->dec));
		return;
	}
	/* A client by address reconnects; an adopted connection's peer may still read. */
	if (c->by_address)
		ura__conn_peer_gone(c, 0);
	else
		ura__conn_half_closed(c);
}

void ura__conn_pump_input(ura_conn *c)
{
	if (c->state != URA__CONN_OPEN || c->read_paused)
		return;
	if (c->pend_len) {
		size_t used = feed(c, c->pend + c->pend_off, c->pend_len);
		c->pend_off += used;
		c->pend_len -= used;
		if (c->pend_len)
			return; /* stopped again, or failed */
		ura__conn_drop_pending(c); /* not kept at its peak */
	}
	if (c->state != URA__CONN_OPEN || c->read_paused || c->recv_live)
		return;
	if (c->eof_seen)
		end_of_input(c);
	else if (c->recv_err)
		ura__conn_peer_gone(c, c->recv_err);
	else
		arm_recv(c);
}

static void on_recv(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t;
	ura_conn *c = arg;
	ura_buf_ring *br = ura__loop_shared_bufs_made(c->loop);
	if (res > 0) {
		const unsigned char *data = ura_buf_ring_buffer(br, flags);
		size_t used = 0;
		/* In order: nothing goes to the decoder while older bytes wait. */
		if (data && !c->pend_len)
			used = feed(c, data, (size_t)res);
		if (data && used < (size_t)res && c->state == URA__CONN_OPEN &&
		    keep_input(c, data + used, (size_t)res - used) < 0)
			ura__conn_invalidate(c, "no memory for received data");
	}
	ura_buf_ring_recycle(br, flags);
	if (flags & IORING_CQE_F_MORE)
		return;
	c->recv_live = false;
	task_done_on_fd(c);
	if (c->state != URA__CONN_OPEN)
		return; /* cancelled or already failed: the state machine knows */
	if (!ura_session_is_valid(c->io))
		return; /* the loop's end cancelled it, not the peer: io_session_invalid follows */
	/* Else a new recv follows, once reading is on and what was kept is decoded: after
	 * data (a multishot recv may end after some), -ENOBUFS (the ring ran dry; buffers
	 * are back now) or -ECANCELED (reading stopped at the high mark). End of stream and
	 * errors are acted on at that point, in order. */
	if (res == 0)
		c->eof_seen = true;
	else if (res < 0 && res != -ENOBUFS && res != -ECANCELED)
		c->recv_err = -res;
	ura__conn_pump_input(c);
}

/* ------------------------------------------------------------ connect */

static void on_connect(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)flags;
	ura_conn *c = arg;
	task_done_on_fd(c);
	if (c->state != URA__CONN_CONNECTING)
		return;
	if (res < 0) {
		ura__conn_fail(c, "connect: %s", strerror(-res));
		return;
	}
	ura__conn_start_io(c);
}

void ura__conn_start_connect(ura_conn *c)
{
	int fd = ura__address_socket(&c->addr);
	if (fd < 0) {
		ura__conn_fail(c, "socket: %s", strerror(-fd));
		return;
	}
	c->fd = fd;
	c->state = URA__CONN_CONNECTING;
	ura__frame_decoder_init(&c->dec, c->max_frame);
	int r = ura_connect(c->io, fd, (const struct sockaddr *)&c->addr.ss, c->addr.len,
			    on_connect, c, NULL);
	if (r < 0) {
		ura__conn_fail(c, "connect: %s", strerror(-r));
		return;
	}
	c->tasks_on_fd++;
}

void ura__conn_start_io(ura_conn *c)
{
	c->state = URA__CONN_OPEN;
	c->eof_seen = false;
	c->recv_err = 0;
	ura__conn_kick_writer(c);
	ura__conn_flow_check(c); /* sends made before may be over the high mark already */
	ura__conn_pump_input(c);
}

/* ------------------------------------------------------------- sending */

void ura__conn_free_out(struct ura__out *o)
{
	if (o->txn_loop) /* the reply is written (or dropped): its request is done */
		ura_transaction_end(o->txn_loop);
	ura_msg_unref(o->msg);
	ura__free(o);
}

void ura__conn_drop_unsent(ura_conn *c)
{
	/* Entries covered by a write in flight stay until it completes. */
	struct ura__out **keep = &c->out_head;
	for (uint32_t i = 0; i < c->in_write && *keep; i++)
		keep = &(*keep)->next;
	struct ura__out *o = *keep;
	*keep = NULL;
	c->out_tail = NULL;
	c->out_bytes = 0;
	for (struct ura__out *k = c->out_head; k; k = k->next) {
		c->out_tail = k;
		c->out_bytes += ura__frame_size(ura_msg_len(k->msg));
	}
	while (o) {
		struct ura__out *next = o->next;
		ura__conn_free_out(o);
		o = next;
	}
}

static void on_write(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg);

void ura__conn_kick_writer(ura_conn *c)
{
	if (c->writing || !c->out_head ||
	    (c->state != URA__CONN_OPEN && c->state != URA__CONN_CLOSING) ||
	    atomic_load_explicit(&c->suspend, memory_order_acquire) > 0)
		return;
	/* One sendmsg for up to URA__CONN_BATCH frames: header and payload iovecs. */
	unsigned n = 0, k = 0;
	size_t skip = c->head_written;
	for (struct ura__out *o = c->out_head; o && k < URA__CONN_BATCH; o = o->next, k++) {
		const void *parts[2] = { o->hdr, ura_msg_data(o->msg) };
		size_t lens[2] = { URA__FRAME_HEADER_SIZE, ura_msg_len(o->msg) };
		for (int p = 0; p < 2; p++) {
			if (skip >= lens[p]) {
				skip -= lens[p];
				continue;
			}
			c->iov[n].iov_base = (char *)parts[p] + skip;
			c->iov[n].iov_len = lens[p] - skip;
			skip = 0;
			n++;
		}
	}
	if (ura__fault(URA__FAULT_SHORT_WRITE) && c->iov[0].iov_len > 3) {
		/* A test's short write: only a few bytes of the first frame go out. */
		c->iov[0].iov_len = 3;
		n = 1;
	}
	memset(&c->mh, 0, sizeof(c->mh));
	c->mh.msg_iov = c->iov;
	c->mh.msg_iovlen = n;
	/* MSG_NOSIGNAL: a peer that went away is an error result, not a SIGPIPE. */
	int r = ura_sendmsg(c->io, c->fd, &c->mh, MSG_NOSIGNAL, on_write, c, &c->write_task);
	if (r < 0) {
		ura__conn_fail(c, "send: %s", strerror(-r));
		return;
	}
	c->writing = true;
	c->in_write = k;
	c->tasks_on_fd++;
}

static void on_write(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)flags;
	ura_conn *c = arg;
	c->writing = false;
	size_t done = res > 0 ? (size_t)res : 0;
	/* Retire what was written; a short write leaves the rest of the head in place. */
	while (c->out_head && c->in_write) {
		struct ura__out *o = c->out_head;
		size_t total = URA__FRAME_HEADER_SIZE + ura_msg_len(o->msg) - c->head_written;
		if (done < total) {
			c->head_written += done;
			break;
		}
		done -= total;
		c->head_written = 0;
		c->out_head = o->next;
		if (!c->out_head)
			c->out_tail = NULL;
		c->in_write--;
		c->out_bytes -= ura__frame_size(ura_msg_len(o->msg));
		ura__conn_free_out(o);
	}
	if (c->state == URA__CONN_DISCONNECTED) {
		/* What this write still covered was meant for the old peer, whose replies were
		 * already failed: drop it. Later sends (for the next peer) stay queued. */
		for (; c->in_write && c->out_head; c->in_write--) {
			struct ura__out *o = c->out_head;
			c->out_head = o->next;
			if (!c->out_head)
				c->out_tail = NULL;
			c->out_bytes -= ura__frame_size(ura_msg_len(o->msg));
			ura__conn_free_out(o);
		}
		c->head_written = 0;
	}
	c->in_write = 0;
	task_done_on_fd(c);
	if (c->state == URA__CONN_DISCONNECTED && c->fd < 0 && c->out_head) {
		/* The old socket is closed now; what is queued goes out on a new one. */
		ura__conn_start_connect(c);
		return;
	}
	if (c->state >= URA__CONN_CANCELLING) {
		ura__conn_drop_unsent(c);
		return;
	}
	if (res < 0) {
		/* A write the loop's end cancelled says nothing of the peer. */
		if ((c->state == URA__CONN_OPEN || c->state == URA__CONN_CLOSING) &&
		    ura_session_is_valid(c->io))
			ura__conn_peer_gone(c, -res);
		return;
	}
	ura__conn_kick_writer(c);
	ura__conn_flow_check(c); /* under the low mark: read again */
	ura__conn_closing_check(c);
}
