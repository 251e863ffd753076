/*
 * Services: ura_main.
 *
 * ura_main runs a loop with one listener. SIGTERM and SIGINT are blocked in the calling
 * thread and read from a signalfd by a task, so they arrive as an ordinary completion.
 * Shutdown then goes: stop accepting; tell each live peer TERMINATION_IMMINENT once;
 * wait, checking every few milliseconds, until the loop's open transactions reach zero
 * or the timeout passes; cancel every peer; let the loop drain; free it; return 0.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "alloc.h"
#include "conn.h"
#include "loop.h"

#define DEFAULT_SHUTDOWN_MS 10000u
#define SHUTDOWN_POLL_NS (5ull * 1000 * 1000)

struct service {
	ura_loop *loop;
	ura_listener *listener;
	ura_accept_fn fn;
	void *ctx;
	int sfd;
	struct signalfd_siginfo si;
	ura_conn **peers; /* a reference each, pruned of ended ones as peers arrive and at shutdown */
	size_t npeers, cap;
	bool shutting_down;
	uint64_t deadline_ns;
	uint32_t timeout_ms;
};

static void prune_peers(struct service *sv)
{
	size_t k = 0;
	for (size_t i = 0; i < sv->npeers; i++) {
		if (ura__conn_is_live(sv->peers[i]))
			sv->peers[k++] = sv->peers[i];
		else
			ura__conn_release(sv->peers[i]);
	}
	sv->npeers = k;
}

static void service_accept(ura_listener *l, ura_conn *peer, void *ctx)
{
	struct service *sv = ctx;
	prune_peers(sv);
	if (sv->npeers == sv->cap) {
		size_t cap = sv->cap ? sv->cap * 2 : 16;
		ura_conn **grown = ura__realloc(sv->peers, cap * sizeof(*grown));
		if (grown) {
			sv->peers = grown;
			sv->cap = cap;
		}
	}
	if (sv->npeers < sv->cap) {
		/* A runtime reference: a peer the callback drops must still be cancelled by
		 * that drop, as with a plain listener. */
		ura__conn_retain(peer);
		sv->peers[sv->npeers++] = peer;
	}
	sv->fn(l, peer, sv->ctx);
}

static void cancel_peers(struct service *sv)
{
	for (size_t i = 0; i < sv->npeers; i++)
		ura_conn_cancel(sv->peers[i]);
}

static void poll_transactions(ura_session *s, ura_task t, int32_t res, uint32_t f, void *arg)
{
	(void)t, (void)res, (void)f;
	struct service *sv = arg;
	if (ura_transaction_count(sv->loop) == 0 || ura__now_ns() >= sv->deadline_ns) {
		cancel_peers(sv);
		return;
	}
	if (ura_timeout(s, SHUTDOWN_POLL_NS, poll_transactions, sv, NULL) < 0)
		cancel_peers(sv);
}

static void on_signal(ura_session *s, ura_task t, int32_t res, uint32_t f, void *arg)
{
	(void)t, (void)f;
	struct service *sv = arg;
	if (res == -ECANCELED)
		return; /* the loop is being freed */
	if (res >= 0 && res != (int32_t)sizeof(sv->si)) {
		/* A short read cannot happen with signalfd; read again rather than guess. */
		if (ura_read(s, sv->sfd, &sv->si, sizeof(sv->si), 0, on_signal, sv, NULL) == 0)
			return;
	}
	/* A signal, or a failed signalfd: shut down rather than run deaf to signals. */
	if (sv->shutting_down)
		return;
	sv->shutting_down = true;
	ura_listener_cancel(sv->listener);
	prune_peers(sv);
	for (size_t i = 0; i < sv->npeers; i++)
		ura__conn_notify(sv->peers[i], URA_ERROR_TERMINATION_IMMINENT);
	sv->deadline_ns = ura__now_ns() + (uint64_t)sv->timeout_ms * 1000000ull;
	poll_transactions(s, 0, 0, 0, sv);
}

int ura_main(const char *address, ura_accept_fn fn, void *ctx)
{
	return ura_main_with(address, NULL, fn, ctx);
}

int ura_main_with(const char *address, const struct ura_main_config *cfg, ura_accept_fn fn,
		  void *ctx)
{
	if (!address || !fn)
		return -EINVAL;
	if (cfg)
		for (size_t i = 0; i < sizeof(cfg->reserved) / sizeof(cfg->reserved[0]); i++)
			if (cfg->reserved[i])
				return -EINVAL;
	struct service sv = { .fn = fn, .ctx = ctx, .sfd = -1 };
	sv.timeout_ms = cfg && cfg->shutdown_timeout_ms ? cfg->shutdown_timeout_ms
							: DEFAULT_SHUTDOWN_MS;
	sigset_t mask, old;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	int r = -pthread_sigmask(SIG_BLOCK, &mask, &old);
	if (r < 0)
		return r;
	sv.sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (sv.sfd < 0) {
		r = -errno;
		goto out_mask;
	}
	r = ura_loop_new(NULL, &sv.loop);
	if (r < 0)
		goto out_fd;
	r = ura_listener_new(sv.loop, address, service_accept, &sv, &sv.listener);
	if (r < 0)
		goto out_loop;
	ura_session *sh = ura_session_shared(sv.loop);
	r = ura_read(sh, sv.sfd, &sv.si, sizeof(sv.si), 0, on_signal, &sv, NULL);
	if (r < 0)
		goto out_listener;
	if (cfg && cfg->ready)
		cfg->ready(sv.loop, sv.listener, ctx);
	/* The listener and the peers keep the loop running; after shutdown they are gone
	 * and only the signal read is left, which the loop's free cancels. A suspended peer's
	 * final event waits for a resume that need not come: the loop's free delivers it. */
	while ((r = ura_loop_run_once(sv.loop, true)) >= 0) {
		if (sv.shutting_down && ura__loop_handles_busy(sv.loop) == 0)
			break;
	}
	r = r < 0 ? r : 0;
out_listener:
	ura_listener_unref(sv.listener);
out_loop:
	for (size_t i = 0; i < sv.npeers; i++)
		ura__conn_release(sv.peers[i]);
	ura__free(sv.peers);
	ura_loop_free(sv.loop);
out_fd:
	close(sv.sfd);
	/* A second SIGTERM/SIGINT during shutdown is still pending: take it now, or
	 * restoring the mask would deliver it and kill the process that is returning 0. */
	struct timespec zero = { 0, 0 };
	while (sigtimedwait(&mask, NULL, &zero) > 0)
		;
out_mask:
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return r;
}
