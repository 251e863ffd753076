/*
 * Echo server on plain epoll: nonblocking sockets, level-triggered readiness. Each
 * readable connection gets one read into a shared buffer and one write of what came;
 * a short write keeps the rest in the connection and waits for EPOLLOUT (reading
 * stops until it is flushed, so a slow reader cannot make the server buffer without
 * bound). One read per wakeup: with level triggering, anything left is reported again
 * by the next epoll_wait, which saves the read that would only say EAGAIN.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echo_server.h"

#define READ_BUF 65536u
#define MAX_EVENTS 512

struct pconn {
	int fd;
	unsigned char *pending; /* unsent echo bytes, after a short write */
	size_t npending;
};

static unsigned char rbuf[READ_BUF];

static void conn_close(struct pconn *c)
{
	close(c->fd); /* also removes it from the epoll set */
	free(c->pending);
	free(c);
}

static int watch(int ep, int op, struct pconn *c, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = c };
	return epoll_ctl(ep, op, c->fd, &ev);
}

static void accept_all(int ep, int lfd)
{
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				fprintf(stderr, "echo-epoll: accept: %s\n", strerror(errno));
			if (errno != EINTR && errno != ECONNABORTED)
				return;
			continue;
		}
		struct pconn *c = calloc(1, sizeof(*c));
		int one = 1;
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		if (watch(ep, EPOLL_CTL_ADD, c, EPOLLIN) < 0)
			conn_close(c);
	}
}

/* Writes what is pending; true while the connection is usable. */
static bool flush_pending(int ep, struct pconn *c)
{
	ssize_t n = write(c->fd, c->pending, c->npending);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR;
	c->npending -= (size_t)n;
	memmove(c->pending, c->pending + n, c->npending);
	if (c->npending == 0 && watch(ep, EPOLL_CTL_MOD, c, EPOLLIN) < 0)
		return false;
	return true;
}

/* One read, then the echo; true while the connection is usable. */
static bool echo_once(int ep, struct pconn *c)
{
	ssize_t got = read(c->fd, rbuf, sizeof(rbuf));
	if (got == 0)
		return false;
	if (got < 0)
		return errno == EAGAIN || errno == EINTR;
	ssize_t n = write(c->fd, rbuf, (size_t)got);
	if (n < 0 && errno != EAGAIN && errno != EINTR)
		return false;
	size_t done = n < 0 ? 0 : (size_t)n;
	if (done == (size_t)got)
		return true;
	/* Short write: keep the rest, stop reading until it is out. */
	unsigned char *p = realloc(c->pending, (size_t)got - done);
	if (!p)
		return false;
	c->pending = p;
	c->npending = (size_t)got - done;
	memcpy(p, rbuf + done, c->npending);
	return watch(ep, EPOLL_CTL_MOD, c, EPOLLOUT) == 0;
}

int echo_serve_epoll(int listen_fd)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		return -errno;
	/* accept_all takes connections until EAGAIN. */
	int fl = fcntl(listen_fd, F_GETFL);
	if (fl < 0 || fcntl(listen_fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	struct epoll_event lev = { .events = EPOLLIN, .data.ptr = NULL };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, listen_fd, &lev) < 0)
		return -errno;
	echo_ready();
	struct epoll_event evs[MAX_EVENTS];
	for (;;) {
		int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		for (int i = 0; i < n; i++) {
			struct pconn *c = evs[i].data.ptr;
			if (!c) {
				accept_all(ep, listen_fd);
				continue;
			}
			bool ok;
			if (c->npending)
				ok = (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) ?
					     flush_pending(ep, c) : true;
			else
				ok = echo_once(ep, c);
			if (!ok)
				conn_close(c);
		}
	}
}
