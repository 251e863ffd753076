/*
 * Listeners: a bound socket with a multishot accept task in a private session. Each
 * accepted socket becomes a peer object made by the layer above (make_peer: the ipc
 * layer's connections, see conn_listener.c), handed to the accept callback, which owns
 * one reference to it. Cancelling invalidates the session; its final event closes
 * the socket (and removes a unix socket file the listener created).
 *
 * An accept that fails for want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM) fails
 * again at once while the shortage lasts, whether or not a client waits: re-arming
 * straight away would spin. The listener waits instead, with a timeout task in the same
 * private session (so cancel and the final event cover it): 1 ms after the first
 * failure, twice as long after each further one, at most 1 s; a successful accept
 * starts the count again. Other unexpected errors are waited out the same way; the
 * errors accept(2) reports for one connection that went away re-arm at once.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "address.h"
#include "alloc.h"
#include "listener.h"
#include "session.h"

#define BACKOFF_MIN_NS 1000000ull    /* 1 ms: the first wait after a failed accept */
#define BACKOFF_MAX_NS 1000000000ull /* 1 s: a freed descriptor is used within this */

struct ura_listener {
	ura_loop *loop;
	_Atomic uint32_t refs;  /* the caller's and the runtime's until the final event */
	_Atomic bool cancelled;
	int fd;
	ura_session *io;
	ura_accept_fn fn;
	void *ctx;
	ura__listener_peer_fn make_peer; /* turns an accepted socket into the peer */
	struct ura__address addr; /* as bound (the chosen port for port 0) */
	bool unlink_path;
	bool active_counted;      /* loop thread */
	uint64_t backoff_ns;      /* loop thread: the last wait; 0 after an accept succeeded */
	struct ura__listener_stats stats; /* loop thread */
};

static void release(ura_listener *l)
{
	/* acq_rel: the last release sees the other holders' writes before freeing. */
	if (atomic_fetch_sub_explicit(&l->refs, 1, memory_order_acq_rel) != 1)
		return;
	/* The session is kept to the end: ura_listener_cancel may still name it from
	 * another thread after its final event, and it keeps the loop object alive. */
	ura_session_unref(l->io);
	ura__free(l);
}

static void on_accept(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg);

static int arm(ura_listener *l)
{
	return ura_accept_multishot(l->io, l->fd, SOCK_CLOEXEC, on_accept, l, NULL);
}

/* Errors accept(2) reports for one connection that went away before it was accepted:
 * the next connection may well be fine, so listening again at once is right. */
static bool one_connection_failed(int32_t res)
{
	return res == -ECONNABORTED || res == -EPROTO || res == -EINTR || res == -EAGAIN;
}

static bool live(ura_listener *l)
{
	/* Acquire: pairs with ura_listener_cancel's exchange; a cancelled listener accepts
	 * nothing more. */
	return !atomic_load_explicit(&l->cancelled, memory_order_acquire);
}

static void on_backoff(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)flags;
	ura_listener *l = arg;
	l->stats.backoff_pending = false;
	if (res == -ECANCELED) {
		l->stats.backoffs_cancelled++; /* the listener's cancel: nothing to re-arm */
		return;
	}
	if (live(l) && arm(l) < 0)
		ura_listener_cancel(l);
}

/* Listens again after a wait that doubles with each consecutive failure. */
static void arm_later(ura_listener *l)
{
	uint64_t ns = l->backoff_ns ? l->backoff_ns * 2 : BACKOFF_MIN_NS;
	l->backoff_ns = ns < BACKOFF_MAX_NS ? ns : BACKOFF_MAX_NS;
	if (ura_timeout(l->io, l->backoff_ns, on_backoff, l, NULL) < 0) {
		ura_listener_cancel(l); /* no way to listen again: end with a final event */
		return;
	}
	l->stats.backoff_pending = true;
}

static void on_accept(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t;
	ura_listener *l = arg;
	bool is_live = live(l);
	if (res >= 0) {
		l->backoff_ns = 0;
		ura_conn *peer;
		if (!is_live || l->make_peer(l->loop, res, &peer) < 0)
			close(res);
		else
			l->fn(l, peer, l->ctx); /* fn is never NULL (ura__listener_new) */
	}
	/* A multishot accept can end (on an error, or when the kernel chooses): keep
	 * listening, at once unless it failed in a way that would fail again at once. */
	if ((flags & IORING_CQE_F_MORE) || !is_live || res == -ECANCELED)
		return;
	if (res < 0 && !one_connection_failed(res)) {
		l->stats.accept_failures++;
		arm_later(l);
	} else if (arm(l) < 0) {
		ura_listener_cancel(l);
	}
}

static void listener_invalid(ura_session *s, int error, void *ctx)
{
	(void)s, (void)error;
	ura_listener *l = ctx;
	close(l->fd);
	if (l->unlink_path) {
		struct sockaddr_un *un = (struct sockaddr_un *)&l->addr.ss;
		unlink(un->sun_path);
	}
	if (l->active_counted) {
		l->active_counted = false;
		ura__loop_handle_stop(l->loop);
	}
	release(l);
}

static const struct ura_session_delegate listener_delegate = {
	.did_become_invalid = listener_invalid,
};

static int bind_listen(ura_listener *l)
{
	int fd = ura__address_socket(&l->addr);
	if (fd < 0)
		return fd;
	int one = 1;
	if (l->addr.family != AF_UNIX)
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&l->addr.ss, l->addr.len) < 0 || listen(fd, SOMAXCONN) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	l->addr.len = sizeof(l->addr.ss);
	(void)getsockname(fd, (struct sockaddr *)&l->addr.ss, &l->addr.len);
	l->fd = fd;
	return 0;
}

int ura__listener_new(ura_loop *loop, const char *address, ura_accept_fn fn, void *ctx,
		      ura__listener_peer_fn make_peer, ura_listener **out)
{
	if (!loop || !address || !fn || !make_peer || !out)
		return -EINVAL;
	URA__ASSERT_LOOP_THREAD(loop);
	ura_listener *l = ura__zalloc(sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->loop = loop;
	l->fn = fn;
	l->ctx = ctx;
	l->make_peer = make_peer;
	atomic_init(&l->refs, 2);
	int r = ura__address_parse(address, &l->addr);
	if (r < 0)
		goto err_free;
	r = bind_listen(l);
	if (r < 0)
		goto err_free;
	l->unlink_path = l->addr.family == AF_UNIX &&
			 ((struct sockaddr_un *)&l->addr.ss)->sun_path[0] != '\0';
	r = ura_session_new(loop, &listener_delegate, l, &l->io);
	if (r < 0)
		goto err_close;
	r = arm(l);
	if (r < 0)
		goto err_session;
	l->active_counted = true;
	ura__loop_handle_start(loop);
	*out = l;
	return 0;
err_session:
	ura_session_invalidate_and_cancel(l->io); /* its final event closes and releases */
	release(l);
	return r;
err_close:
	close(l->fd);
	if (l->unlink_path)
		unlink(((struct sockaddr_un *)&l->addr.ss)->sun_path);
err_free:
	ura__free(l);
	return r;
}

void ura_listener_cancel(ura_listener *l)
{
	if (!l || atomic_exchange_explicit(&l->cancelled, true, memory_order_acq_rel))
		return;
	ura_session_invalidate_and_cancel(l->io);
}

void ura_listener_unref(ura_listener *l)
{
	if (!l)
		return;
	ura_listener_cancel(l); /* a listener nobody holds cannot be stopped otherwise */
	release(l);
}

void ura__listener_stats(ura_listener *l, struct ura__listener_stats *out)
{
	*out = l->stats;
}

ura_loop *ura_listener_loop(ura_listener *l)
{
	return l ? l->loop : NULL;
}

size_t ura_listener_address(ura_listener *l, char *buf, size_t len)
{
	char text[160];
	int n = l ? ura__address_format(&l->addr, text, sizeof(text)) : -EINVAL;
	if (n < 0)
		n = 0, text[0] = '\0';
	if (buf && len) {
		size_t c = (size_t)n < len - 1 ? (size_t)n : len - 1;
		memcpy(buf, text, c);
		buf[c] = '\0';
	}
	return (size_t)n;
}
