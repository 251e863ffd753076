/*
 * Connection I/O: connect, multishot receive into the loop's shared buffer ring, the
 * frame decoder, and batched sends. Every operation is a task of the connection's private
 * session, so cancelling the connection is that session's invalidate-and-cancel, and the
 * session's final event says the kernel holds nothing of the connection any more.
 * Loop thread only.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "alloc.h"
#include "conn.h"

/* ------------------------------------------------------------ buffers */

static ura_buf_ring *loop_bufs(ura_loop *loop)
{
	if (!loop->conn_bufs &&
	    ura_buf_ring_new(loop, URA__CONN_BUF_GROUP, URA__CONN_BUFS, URA__CONN_BUF_SIZE,
			     &loop->conn_bufs) < 0)
		return NULL;
	return loop->conn_bufs;
}

void ura__conn_loop_cleanup(ura_loop *loop)
{
	ura_buf_ring_free(loop->conn_bufs);
	loop->conn_bufs = NULL;
}

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
	ura_buf_ring *br = loop_bufs(c->loop);
	if (!br) {
		ura__conn_invalidate(c, "no memory for receive buffers");
		return;
	}
	int r = ura_recv_multishot(c->io, c->fd, br, 0, on_recv, c, NULL);
	if (r < 0) {
		char why[64];
		snprintf(why, sizeof(why), "recv: %s", strerror(-r));
		ura__conn_invalidate(c, why);
		return;
	}
	c->recv_live = true;
	c->tasks_on_fd++;
}

/* Feeds one received chunk to the decoder; each complete frame goes to the state
 * machine. A payload that straddles chunks is gathered into a message's own buffer. */
static void feed(ura_conn *c, const unsigned char *p, size_t len)
{
	while (c->state == URA__CONN_OPEN) {
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
			return;
		if (r == URA__FRAME_NEED_BUFFER) {
			ura_msg *m;
			void *buf;
			if (ura__msg_alloc(ura__frame_decoder_need(&c->dec), &m, &buf) < 0) {
				ura__conn_invalidate(c, "no memory for a message");
				return;
			}
			ura__frame_decoder_give(&c->dec, buf);
			continue;
		}
		char why[192];
		snprintf(why, sizeof(why), "protocol error: %s", ura__frame_decoder_reason(&c->dec));
		ura__conn_invalidate(c, why);
		return;
	}
}

static void on_recv(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t;
	ura_conn *c = arg;
	ura_buf_ring *br = c->loop->conn_bufs;
	if (res > 0) {
		const unsigned char *data = ura_buf_ring_buffer(br, flags);
		if (data)
			feed(c, data, (size_t)res);
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
	if (res == -ENOBUFS) {
		arm_recv(c); /* the ring ran dry; buffers are back now */
		return;
	}
	if (res > 0) { /* a multishot recv may end after data: keep receiving */
		arm_recv(c);
		return;
	}
	if (res == 0 && ura__frame_decoder_finish(&c->dec) < 0) {
		char why[192];
		snprintf(why, sizeof(why), "protocol error: %s", ura__frame_decoder_reason(&c->dec));
		ura__conn_invalidate(c, why);
		return;
	}
	ura__conn_peer_gone(c, res == 0 ? 0 : -res);
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
		char why[96];
		snprintf(why, sizeof(why), "connect: %s", strerror(-res));
		ura__conn_invalidate(c, why);
		return;
	}
	ura__conn_start_io(c);
}

void ura__conn_start_connect(ura_conn *c)
{
	int fd = ura__address_socket(&c->addr);
	if (fd < 0) {
		char why[96];
		snprintf(why, sizeof(why), "socket: %s", strerror(-fd));
		ura__conn_invalidate(c, why);
		return;
	}
	c->fd = fd;
	c->state = URA__CONN_CONNECTING;
	ura__frame_decoder_init(&c->dec, c->max_frame);
	int r = ura_connect(c->io, fd, (const struct sockaddr *)&c->addr.ss, c->addr.len,
			    on_connect, c, NULL);
	if (r < 0) {
		char why[96];
		snprintf(why, sizeof(why), "connect: %s", strerror(-r));
		ura__conn_invalidate(c, why);
		return;
	}
	c->tasks_on_fd++;
}

void ura__conn_start_io(ura_conn *c)
{
	c->state = URA__CONN_OPEN;
	arm_recv(c);
	ura__conn_kick_writer(c);
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
	for (struct ura__out *k = c->out_head; k; k = k->next)
		c->out_tail = k;
	while (o) {
		struct ura__out *next = o->next;
		ura__conn_free_out(o);
		o = next;
	}
}

static void on_write(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg);

void ura__conn_kick_writer(ura_conn *c)
{
	if (c->writing || !c->out_head || c->state != URA__CONN_OPEN ||
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
		char why[64];
		snprintf(why, sizeof(why), "send: %s", strerror(-r));
		ura__conn_invalidate(c, why);
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
		if (c->state == URA__CONN_OPEN && ura_session_is_valid(c->io))
			ura__conn_peer_gone(c, -res);
		return;
	}
	ura__conn_kick_writer(c);
}
