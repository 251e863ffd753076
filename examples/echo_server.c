/*
 * A TCP echo server on raw tasks (no connections, no framing): what ura's connection layer
 * does for you, spelled out.
 *
 *   echo_server [PORT]      PORT defaults to 0 (a free port); listens on 127.0.0.1
 *
 * Prints "listening on 127.0.0.1:PORT", echoes every byte back to its sender, and exits 0
 * on SIGINT or SIGTERM.
 *
 * The shape: one session holds every task. A multishot accept brings clients; each client
 * has one multishot recv into a shared provided-buffer ring and at most one send in
 * flight. A received chunk stays in its ring buffer until the send of it has had its
 * terminal call; only then is the buffer recycled. An accept that fails for want of
 * descriptors or memory is tried again after a growing wait (a timer task), not at once,
 * which would spin while the shortage lasts. On a signal the session is
 * invalidated, which cancels every task; each client is freed when its last task has had
 * its terminal call, and the session's final event says the kernel holds nothing more.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* signalfd, strsignal */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ura.h>

#define BUF_GROUP 1    /* the ring's buffer group id: any id not used by another ring */
#define NBUFS 256      /* a power of two */
#define BUF_SIZE 4096

struct client;

struct server {
	ura_session *session;
	ura_buf_ring *bufs;
	int listen_fd, signal_fd;
	struct signalfd_siginfo si; /* the signal read's buffer: lives until its terminal call */
	struct client *clients;     /* every client not yet freed */
	unsigned paused;            /* clients waiting for a free ring buffer */
	uint64_t accept_wait_ns;    /* the last wait before accepting again; 0 after a success */
	bool stopping;
};

/* A chunk received and not echoed yet. Its bytes are the ring buffer the kernel filled. */
struct chunk {
	struct chunk *next;
	uint32_t cqe_flags; /* names the ring buffer, to recycle it */
	const char *data;
	size_t len, sent;
};

struct client {
	struct server *srv;
	struct client *prev, *next;
	int fd;
	ura_task recv_task;
	bool receiving;   /* the multishot recv has not had its terminal call */
	bool sending;     /* a send is in flight */
	bool paused;      /* the ring ran dry: receive again once a buffer comes back */
	bool done;        /* nothing more will be received (EOF, error, cancel) */
	bool failed;      /* a send failed: what is queued is dropped */
	struct chunk *head, *tail;
};

static void on_recv(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg);
static void on_sent(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg);

/* ------------------------------------------------------------ clients */

static void drop_queue(struct client *cl)
{
	while (cl->head) {
		struct chunk *ch = cl->head;
		cl->head = ch->next;
		ura_buf_ring_recycle(cl->srv->bufs, ch->cqe_flags);
		free(ch);
	}
	cl->tail = NULL;
}

/* Frees the client once no task of it is left: the kernel no longer uses its fd or the
 * buffers it held, so a plain close() is safe. */
static void maybe_free(struct client *cl)
{
	if (cl->receiving || cl->sending || cl->paused || !cl->done || (cl->head && !cl->failed))
		return;
	drop_queue(cl);
	close(cl->fd);
	if (cl->prev)
		cl->prev->next = cl->next;
	else
		cl->srv->clients = cl->next;
	if (cl->next)
		cl->next->prev = cl->prev;
	free(cl);
}

static void arm_recv(struct client *cl)
{
	int r = ura_recv_multishot(cl->srv->session, cl->fd, cl->srv->bufs, 0, on_recv, cl,
				   &cl->recv_task);
	if (r < 0) {
		/* -ESHUTDOWN once stopping: a submit that fails never calls its callback. */
		cl->done = true;
		return;
	}
	cl->receiving = true;
}

/* One send at a time per client keeps the bytes in order. */
static void kick_send(struct client *cl)
{
	if (cl->sending || cl->failed || !cl->head)
		return;
	struct chunk *ch = cl->head;
	/* MSG_NOSIGNAL: a client that went away is an error result, not a SIGPIPE. */
	int r = ura_send(cl->srv->session, cl->fd, ch->data + ch->sent, ch->len - ch->sent,
			 MSG_NOSIGNAL, on_sent, cl, NULL);
	if (r < 0) {
		cl->failed = true;
		return;
	}
	cl->sending = true;
}

/* A buffer went back to the ring: clients that ran dry can receive again. */
static void resume_paused(struct server *srv)
{
	if (!srv->paused || srv->stopping)
		return;
	for (struct client *cl = srv->clients, *next; cl; cl = next) {
		next = cl->next;
		if (!cl->paused)
			continue;
		cl->paused = false;
		srv->paused--;
		arm_recv(cl);
		maybe_free(cl); /* when arm_recv failed */
	}
}

static void on_sent(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)flags;
	struct client *cl = arg;
	struct server *srv = cl->srv;
	cl->sending = false;
	if (res < 0) {
		if (res != -ECANCELED)
			fprintf(stderr, "client %d: send: %s\n", cl->fd, strerror(-res));
		/* Stop receiving too: there is no one to echo to. */
		cl->failed = true;
		if (cl->receiving)
			(void)ura_task_cancel(srv->session, cl->recv_task);
		drop_queue(cl);
		resume_paused(srv);
		maybe_free(cl);
		return;
	}
	struct chunk *ch = cl->head;
	ch->sent += (size_t)res;
	if (ch->sent == ch->len) {
		/* The send's terminal call has come: the kernel is done with the bytes, and
		 * only now may the buffer go back to the ring. */
		cl->head = ch->next;
		if (!cl->head)
			cl->tail = NULL;
		ura_buf_ring_recycle(srv->bufs, ch->cqe_flags);
		free(ch);
		resume_paused(srv);
	}
	kick_send(cl); /* the rest of a short send, or the next chunk */
	maybe_free(cl);
}

static void on_recv(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t;
	struct client *cl = arg;
	struct server *srv = cl->srv;
	const char *data = ura_buf_ring_buffer(srv->bufs, flags); /* NULL when no buffer came */
	if (res > 0 && data && !cl->failed) {
		struct chunk *ch = malloc(sizeof(*ch));
		if (ch) {
			*ch = (struct chunk){ .cqe_flags = flags, .data = data, .len = (size_t)res };
			if (cl->tail)
				cl->tail->next = ch;
			else
				cl->head = ch;
			cl->tail = ch;
			kick_send(cl);
		} else {
			ura_buf_ring_recycle(srv->bufs, flags); /* out of memory: drop the chunk */
		}
	} else {
		ura_buf_ring_recycle(srv->bufs, flags); /* no-op when no buffer came */
	}
	if (flags & IORING_CQE_F_MORE)
		return; /* more completions of this recv follow */

	/* The terminal call: this recv is over. */
	cl->receiving = false;
	if (res == -ENOBUFS && !cl->failed && !srv->stopping) {
		/* Every buffer is queued for sending somewhere: wait for one to come back. */
		cl->paused = true;
		srv->paused++;
	} else if (res > 0 && !cl->failed && !srv->stopping) {
		arm_recv(cl); /* a multishot recv may end after data: keep receiving */
	} else {
		if (res < 0 && res != -ECANCELED)
			fprintf(stderr, "client %d: recv: %s\n", cl->fd, strerror(-res));
		cl->done = true; /* res 0 is end of stream: echo what is queued, then close */
	}
	maybe_free(cl);
}

/* ------------------------------------------------------ accept, signals */

static void on_accept(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg);

static void accept_again(struct server *srv)
{
	int r = ura_accept_multishot(srv->session, srv->listen_fd, SOCK_CLOEXEC, on_accept, srv,
				     NULL);
	if (r < 0)
		fprintf(stderr, "echo_server: accept ended: %s\n", strerror(-r));
}

/* The wait after a failed accept is over (or cancelled because we are stopping). */
static void on_accept_wait(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)flags;
	struct server *srv = arg;
	if (res != -ECANCELED && !srv->stopping)
		accept_again(srv);
}

static void on_accept(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)t;
	struct server *srv = arg;
	if (res >= 0) {
		srv->accept_wait_ns = 0;
		struct client *cl = calloc(1, sizeof(*cl));
		if (!cl) {
			close(res);
		} else {
			cl->srv = srv;
			cl->fd = res;
			cl->next = srv->clients;
			if (srv->clients)
				srv->clients->prev = cl;
			srv->clients = cl;
			arm_recv(cl);
			maybe_free(cl); /* when arm_recv failed (stopping) */
		}
	}
	/* A multishot accept can end: listen again, unless it was cancelled because we are
	 * stopping. */
	if ((flags & IORING_CQE_F_MORE) || srv->stopping || res == -ECANCELED)
		return;
	if (res >= 0 || res == -ECONNABORTED || res == -EPROTO) {
		accept_again(srv); /* fine, or one client went away: the next may be fine */
		return;
	}
	/* Out of descriptors (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM): accepting
	 * again at once would fail at once, over and over, at 100% CPU, for as long as the
	 * shortage lasts. Wait first: 1 ms, doubled after each failure in a row, up to 1 s.
	 * The wait is a task of the session, so stopping cancels it like everything else. */
	uint64_t ns = srv->accept_wait_ns ? srv->accept_wait_ns * 2 : 1000000;
	srv->accept_wait_ns = ns < 1000000000 ? ns : 1000000000;
	fprintf(stderr, "echo_server: accept: %s, retrying in %llu ms\n", strerror(-res),
		(unsigned long long)(srv->accept_wait_ns / 1000000));
	int r = ura_timeout(s, srv->accept_wait_ns, on_accept_wait, srv, NULL);
	if (r < 0)
		fprintf(stderr, "echo_server: accept ended: %s\n", strerror(-r));
}

static void on_signal(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)t, (void)flags;
	struct server *srv = arg;
	if (res == -ECANCELED)
		return;
	fprintf(stderr, "echo_server: %s, stopping\n",
		res == (int32_t)sizeof(srv->si) ? strsignal((int)srv->si.ssi_signo) : "signalfd failed");
	srv->stopping = true;
	/* Clients waiting for a buffer have no task to cancel: end them here. */
	for (struct client *cl = srv->clients, *next; cl; cl = next) {
		next = cl->next;
		if (cl->paused) {
			cl->paused = false;
			srv->paused--;
			cl->done = true;
			maybe_free(cl);
		}
	}
	/* Cancels the accept, every recv and send (each still gets its terminal call, which
	 * frees its client), then did_become_invalid. Asked inside a callback, it takes
	 * effect when this callback returns. */
	ura_session_invalidate_and_cancel(s);
}

/* The session's final event: every task has had its terminal call and every CQE has been
 * reaped. The kernel holds nothing of ours; ura_loop_run returns after this. */
static void on_invalid(ura_session *s, int error, void *ctx)
{
	(void)s, (void)error;
	struct server *srv = ctx;
	if (srv->clients)
		fprintf(stderr, "echo_server: clients left at the end (a bug)\n");
}

static const struct ura_session_delegate delegate = { .did_become_invalid = on_invalid };

static int listen_on(unsigned port, int *out)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sin);
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(fd, SOMAXCONN) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sin, &len) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	printf("listening on 127.0.0.1:%u\n", ntohs(sin.sin_port));
	fflush(stdout); /* stdout may be a pipe: say it now */
	*out = fd;
	return 0;
}

int main(int argc, char **argv)
{
	char *end = NULL;
	unsigned long port = argc > 1 ? strtoul(argv[1], &end, 10) : 0;
	if (argc > 2 || (end && (*end || end == argv[1])) || port > 65535) {
		fprintf(stderr, "usage: echo_server [PORT]\n");
		return 2;
	}
	struct server srv = { .listen_fd = -1, .signal_fd = -1 };
	ura_loop *loop = NULL;
	int r;

	/* Signals become a readable fd: block them first, so they wait for our read task
	 * instead of killing the process. */
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0 ||
	    (srv.signal_fd = signalfd(-1, &mask, SFD_CLOEXEC)) < 0) {
		perror("echo_server: signalfd");
		return 1;
	}
	if ((r = listen_on((unsigned)port, &srv.listen_fd)) < 0) {
		fprintf(stderr, "echo_server: port %lu: %s\n", port, strerror(-r));
		goto out;
	}
	if ((r = ura_loop_new(NULL, &loop)) < 0)
		goto fail;
	if ((r = ura_session_new(loop, &delegate, &srv, &srv.session)) < 0)
		goto fail;
	if ((r = ura_buf_ring_new(loop, BUF_GROUP, NBUFS, BUF_SIZE, &srv.bufs)) < 0)
		goto fail;
	if ((r = ura_read(srv.session, srv.signal_fd, &srv.si, sizeof(srv.si), 0, on_signal, &srv,
			  NULL)) < 0 ||
	    (r = ura_accept_multishot(srv.session, srv.listen_fd, SOCK_CLOEXEC, on_accept, &srv,
				      NULL)) < 0) {
		ura_session_invalidate_and_cancel(srv.session); /* the task that started, if any */
		(void)ura_loop_run(loop);
		goto fail;
	}
	/* Runs until no task is left: after the signal, once everything has drained. */
	r = ura_loop_run(loop);
	if (r < 0)
		goto fail;
	goto out;
fail:
	fprintf(stderr, "echo_server: %s\n", strerror(-r));
out:
	/* The ring may go only after every task using it has had its terminal call. */
	ura_buf_ring_free(srv.bufs);
	ura_session_unref(srv.session);
	ura_loop_free(loop);
	if (srv.listen_fd >= 0)
		close(srv.listen_fd);
	close(srv.signal_fd);
	return r < 0 ? 1 : 0;
}
