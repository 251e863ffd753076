/*
 * Echo server on raw liburing, written as well as we know how, as the bar ura is held
 * to: a ring with SINGLE_ISSUER|DEFER_TASKRUN (completions run only inside our own
 * io_uring_enter, in a batch), a multishot accept, one multishot recv per connection
 * into a provided-buffer ring, and a send straight from the received buffer, which
 * goes back to the ring when the send completes (no copy). Buffers returned in one
 * batch of completions are published to the kernel with one tail update. One enter per
 * loop iteration submits everything queued and waits for the next completion.
 *
 * It uses plain descriptors, like ura (registered files would save the kernel a file
 * lookup per operation on both sides alike). A connection keeps one send in flight;
 * chunks that arrive meanwhile wait in order.
 */
#include <errno.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echo_queue.h"
#include "echo_server.h"

enum { UD_ACCEPT = 0, UD_RECV = 1, UD_SEND = 2, UD_TYPE_BITS = 2 };

struct rconn {
	int fd;
	struct echo_queue q;
	bool sending, recv_live, closing;
};

static struct {
	struct io_uring ring;
	struct io_uring_buf_ring *br;
	unsigned char *bufs;
	int recycled; /* buffers added to br since the last tail update */
	int lfd;
	struct rconn **conns; /* by descriptor */
	size_t nconns;
	struct echo_bufs held; /* buffers held by connections */
} sv;

static struct io_uring_sqe *sqe(void)
{
	struct io_uring_sqe *q = io_uring_get_sqe(&sv.ring);
	while (!q) {
		/* The SQ is full: hand it to the kernel (completions stay in the CQ). */
		int r = io_uring_submit(&sv.ring);
		if (r < 0 && r != -EAGAIN && r != -EBUSY) {
			fprintf(stderr, "echo-raw: submit: %s\n", strerror(-r));
			exit(1);
		}
		q = io_uring_get_sqe(&sv.ring);
	}
	return q;
}

static void recycle(int32_t bid)
{
	io_uring_buf_ring_add(sv.br, sv.bufs + (size_t)bid * ECHO_BUF_SIZE, ECHO_BUF_SIZE,
			      (unsigned short)bid, io_uring_buf_ring_mask(ECHO_NBUFS), sv.recycled++);
}

static void publish_recycled(void)
{
	if (sv.recycled) {
		/* A release store of the tail: the kernel sees the entries before it. */
		io_uring_buf_ring_advance(sv.br, sv.recycled);
		sv.recycled = 0;
	}
}

static void maybe_free(struct rconn *c)
{
	if (!c->closing || c->sending || c->recv_live)
		return;
	int32_t bid;
	while ((bid = echo_queue_pop(&c->q, &sv.held)) >= 0)
		recycle(bid);
	sv.conns[c->fd] = NULL;
	close(c->fd);
	free(c);
}

static void shut(struct rconn *c)
{
	c->closing = true;
	if (c->recv_live)
		(void)shutdown(c->fd, SHUT_RDWR); /* ends the multishot recv */
	maybe_free(c);
}

static void arm_recv(struct rconn *c)
{
	struct io_uring_sqe *q = sqe();
	io_uring_prep_recv_multishot(q, c->fd, NULL, 0, 0);
	q->flags |= IOSQE_BUFFER_SELECT;
	q->buf_group = ECHO_BGID;
	io_uring_sqe_set_data64(q, (uint64_t)c->fd << UD_TYPE_BITS | UD_RECV);
	c->recv_live = true;
}

static void arm_accept(void)
{
	struct io_uring_sqe *q = sqe();
	io_uring_prep_multishot_accept(q, sv.lfd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(q, UD_ACCEPT);
}

static void kick(struct rconn *c)
{
	if (c->sending || echo_queue_empty(&c->q) || c->closing)
		return;
	struct io_uring_sqe *q = sqe();
	io_uring_prep_send(q, c->fd, sv.bufs + (size_t)c->q.head * ECHO_BUF_SIZE + c->q.off,
			   echo_queue_unsent(&c->q, &sv.held), MSG_NOSIGNAL);
	io_uring_sqe_set_data64(q, (uint64_t)c->fd << UD_TYPE_BITS | UD_SEND);
	c->sending = true;
}

static void on_accept(int32_t res, uint32_t flags)
{
	if (res >= 0) {
		struct rconn *c = (size_t)res < sv.nconns ? calloc(1, sizeof(*c)) : NULL;
		if (!c) {
			close(res);
		} else {
			echo_set_nodelay(res);
			c->fd = res;
			echo_queue_init(&c->q);
			sv.conns[res] = c;
			arm_recv(c);
		}
	}
	if (!(flags & IORING_CQE_F_MORE))
		arm_accept();
}

static void on_recv(struct rconn *c, int32_t res, uint32_t flags)
{
	bool has_buf = flags & IORING_CQE_F_BUFFER;
	int32_t bid = (int32_t)(flags >> IORING_CQE_BUFFER_SHIFT);
	if (res > 0 && has_buf && !c->closing) {
		echo_queue_push(&c->q, &sv.held, bid, (uint32_t)res);
		kick(c);
	} else if (has_buf) {
		recycle(bid);
	}
	if (flags & IORING_CQE_F_MORE)
		return;
	c->recv_live = false;
	if (!c->closing && (res > 0 || res == -ENOBUFS)) {
		arm_recv(c);
		return;
	}
	shut(c);
}

static void on_send(struct rconn *c, int32_t res)
{
	c->sending = false;
	if (res < 0) {
		shut(c);
		return;
	}
	int32_t sent = echo_queue_sent(&c->q, &sv.held, (uint32_t)res);
	if (sent >= 0)
		recycle(sent);
	kick(c);
	maybe_free(c);
}

static void on_cqe(const struct io_uring_cqe *cqe)
{
	unsigned type = (unsigned)(cqe->user_data & ((1u << UD_TYPE_BITS) - 1));
	if (type == UD_ACCEPT) {
		on_accept(cqe->res, cqe->flags);
		return;
	}
	struct rconn *c = sv.conns[cqe->user_data >> UD_TYPE_BITS];
	if (type == UD_RECV)
		on_recv(c, cqe->res, cqe->flags);
	else
		on_send(c, cqe->res);
}

static int setup_bufs(void)
{
	size_t ring_len = ECHO_NBUFS * sizeof(struct io_uring_buf);
	size_t len = ring_len + (size_t)ECHO_NBUFS * ECHO_BUF_SIZE;
	void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED)
		return -errno;
	sv.br = map;
	sv.bufs = (unsigned char *)map + ring_len; /* ring_len is a multiple of the page */
	struct io_uring_buf_reg reg;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)map;
	reg.ring_entries = ECHO_NBUFS;
	reg.bgid = ECHO_BGID;
	int r = io_uring_register_buf_ring(&sv.ring, &reg, 0);
	if (r < 0)
		return r;
	io_uring_buf_ring_init(sv.br);
	for (unsigned i = 0; i < ECHO_NBUFS; i++)
		recycle((int32_t)i);
	publish_recycled();
	return 0;
}

int echo_serve_raw(int listen_fd)
{
	struct rlimit rl;
	sv.lfd = listen_fd;
	sv.nconns = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
			    rl.rlim_cur < (1u << 20) ? (size_t)rl.rlim_cur : (1u << 20);
	sv.conns = calloc(sv.nconns, sizeof(*sv.conns));
	if (!sv.conns)
		return -ENOMEM;
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
	p.cq_entries = ECHO_CQ;
	int r = io_uring_queue_init_params(ECHO_SQ, &sv.ring, &p);
	if (r < 0)
		return r;
	r = setup_bufs();
	if (r < 0)
		return r;
	arm_accept();
	echo_ready();
	for (;;) {
		r = io_uring_submit_and_wait(&sv.ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
			return r;
		unsigned head, seen = 0;
		struct io_uring_cqe *cqe;
		io_uring_for_each_cqe(&sv.ring, head, cqe) {
			on_cqe(cqe);
			seen++;
		}
		io_uring_cq_advance(&sv.ring, seen);
		publish_recycled();
	}
}
