/*
 * Echo server on ura's raw tasks: a multishot accept, one multishot recv per
 * connection into a provided-buffer ring, and a send straight from the received
 * buffer, which goes back to the ring when the send completes (no copy). A connection
 * keeps one send in flight; chunks that arrive meanwhile wait in order. Everything
 * runs on the loop's shared session; ura_loop_run drives it.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ura.h"

#include "echo_queue.h"
#include "echo_server.h"

struct econn {
	int fd;
	struct echo_queue q;
	ura_task recv;
	bool sending, recv_live, closing;
};

static struct {
	ura_loop *loop;
	ura_session *s;
	ura_buf_ring *br;
	int lfd;
	struct echo_bufs held; /* buffers held by connections */
} sv;

static uint32_t buf_flags(int32_t bid)
{
	return IORING_CQE_F_BUFFER | (uint32_t)bid << IORING_CQE_BUFFER_SHIFT;
}

static void drop_queue(struct econn *c)
{
	int32_t bid;
	while ((bid = echo_queue_pop(&c->q, &sv.held)) >= 0)
		ura_buf_ring_recycle(sv.br, buf_flags(bid));
}

static void maybe_free(struct econn *c)
{
	if (!c->closing || c->sending || c->recv_live)
		return;
	drop_queue(c);
	close(c->fd);
	free(c);
}

/* Stops a connection: its recv is cancelled, and it goes once nothing is in flight. */
static void shut(struct econn *c)
{
	c->closing = true;
	if (c->recv_live)
		(void)ura_task_cancel(sv.s, c->recv);
	maybe_free(c);
}

static void on_send(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg);

static void kick(struct econn *c)
{
	if (c->sending || echo_queue_empty(&c->q) || c->closing)
		return;
	unsigned char *buf = ura_buf_ring_buffer(sv.br, buf_flags(c->q.head));
	int r = ura_send(sv.s, c->fd, buf + c->q.off, echo_queue_unsent(&c->q, &sv.held),
			 MSG_NOSIGNAL, on_send, c, NULL);
	if (r < 0) {
		fprintf(stderr, "echo-ura: send: %s\n", strerror(-r));
		shut(c);
		return;
	}
	c->sending = true;
}

static void on_send(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	struct econn *c = arg;
	c->sending = false;
	if (res < 0) {
		shut(c);
		return;
	}
	int32_t sent = echo_queue_sent(&c->q, &sv.held, (uint32_t)res);
	if (sent >= 0)
		ura_buf_ring_recycle(sv.br, buf_flags(sent));
	kick(c);
	maybe_free(c);
}

static void on_recv(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg);

static void arm_recv(struct econn *c)
{
	int r = ura_recv_multishot(sv.s, c->fd, sv.br, 0, on_recv, c, &c->recv);
	if (r < 0) {
		fprintf(stderr, "echo-ura: recv: %s\n", strerror(-r));
		shut(c);
		return;
	}
	c->recv_live = true;
}

static void on_recv(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	struct econn *c = arg;
	if (res > 0 && (flags & IORING_CQE_F_BUFFER) && !c->closing) {
		int32_t bid = (int32_t)(flags >> IORING_CQE_BUFFER_SHIFT);
		echo_queue_push(&c->q, &sv.held, bid, (uint32_t)res);
		kick(c);
	} else {
		ura_buf_ring_recycle(sv.br, flags); /* a no-op without a buffer */
	}
	if (flags & IORING_CQE_F_MORE)
		return;
	c->recv_live = false;
	/* A multishot recv also ends after data, or when the ring ran dry: re-arm. */
	if (!c->closing && (res > 0 || res == -ENOBUFS)) {
		arm_recv(c);
		return;
	}
	shut(c); /* end of stream, an error, or cancelled */
}

static void on_accept(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg);

static int arm_accept(void)
{
	return ura_accept_multishot(sv.s, sv.lfd, SOCK_CLOEXEC, on_accept, NULL, NULL);
}

static void on_accept(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	if (res >= 0) {
		struct econn *c = calloc(1, sizeof(*c));
		if (!c) {
			close(res);
		} else {
			echo_set_nodelay(res);
			c->fd = res;
			echo_queue_init(&c->q);
			arm_recv(c);
		}
	}
	if (!(flags & IORING_CQE_F_MORE)) {
		int r = arm_accept();
		if (r < 0)
			fprintf(stderr, "echo-ura: accept: %s\n", strerror(-r));
	}
}

int echo_serve_ura(int listen_fd)
{
	struct ura_loop_config cfg = { .sq_entries = ECHO_SQ, .cq_entries = ECHO_CQ };
	sv.lfd = listen_fd;
	int r = ura_loop_new(&cfg, &sv.loop);
	if (r < 0)
		return r;
	sv.s = ura_session_shared(sv.loop);
	r = ura_buf_ring_new(sv.loop, ECHO_BGID, ECHO_NBUFS, ECHO_BUF_SIZE, &sv.br);
	if (r < 0)
		goto out;
	r = arm_accept();
	if (r < 0)
		goto out;
	echo_ready();
	r = ura_loop_run(sv.loop); /* returns only when nothing is left, or on error */
out:
	/* The ring's buffers go first: no recv is left when we get here (an error return
	 * ends the process). */
	ura_buf_ring_free(sv.br);
	ura_loop_free(sv.loop);
	return r;
}
