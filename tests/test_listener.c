/*
 * Listeners under a full fd table: an accept that fails for want of a descriptor (or
 * memory) is tried again after a growing delay, not at once, so a waiting client costs no
 * CPU; it is accepted once descriptors are free again; cancel ends a listener that is
 * waiting out such a delay at once.
 *
 * The table is made full by lowering this process's RLIMIT_NOFILE to its lowest free
 * descriptor. Every case restores the limit before it asserts anything.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"
#include "listener.h"

#define GUARD_MS 10000u /* hang guard for one wait; never a speed bound */

static ura_loop *loop;

static void setup(void)
{
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
}

static void teardown(void)
{
	ura_loop_free(loop);
}

TestSuite(listener, .init = setup, .fini = teardown);

struct accepted {
	_Atomic int n;
};

static void on_accept(ura_listener *l, ura_conn *peer, void *ctx)
{
	(void)l;
	struct accepted *a = ctx;
	atomic_fetch_add(&a->n, 1);
	ura_conn_unref(peer); /* rejects it: only the count matters here */
}

/* A listener on 127.0.0.1 (a free port) and a client connected to it, waiting in the
 * listen backlog: the kernel completes a loopback handshake without accept. */
static ura_listener *listen_with_client(struct accepted *a, int *client)
{
	ura_listener *l;
	cr_assert_eq(ura_listener_new(loop, "tcp:127.0.0.1:0", on_accept, a, &l), 0);
	char bound[64];
	ura_listener_address(l, bound, sizeof(bound));
	unsigned port = 0;
	cr_assert_eq(sscanf(bound, "tcp:127.0.0.1:%u", &port), 1, "address %s", bound);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	*client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(*client, 0);
	cr_assert_eq(connect(*client, (struct sockaddr *)&sin, sizeof(sin)), 0, "connect: %s",
		     strerror(errno));
	return l;
}

/* Lowers the soft RLIMIT_NOFILE to the lowest free descriptor, so every descriptor the
 * process may have is taken; *old gets the limit to restore. */
static void fill_fd_table(struct rlimit *old)
{
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, old), 0);
	int lowest = open("/dev/null", O_RDONLY | O_CLOEXEC); /* the lowest free descriptor */
	cr_assert_geq(lowest, 0);
	close(lowest);
	struct rlimit tight = { .rlim_cur = (rlim_t)lowest, .rlim_max = old->rlim_max };
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &tight), 0);
}

static void restore_fd_table(const struct rlimit *old)
{
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, old), 0);
}

static struct ura__listener_stats stats_of(ura_listener *l)
{
	struct ura__listener_stats st;
	ura__listener_stats(l, &st);
	return st;
}

Test(listener, a_full_fd_table_backs_off_then_the_waiting_client_is_accepted)
{
	if (th_under_valgrind())
		cr_skip("valgrind keeps descriptors of its own above the limit: no full table");
	struct accepted a = { 0 };
	int client;
	ura_listener *l = listen_with_client(&a, &client);
	struct rlimit old;
	fill_fd_table(&old);
	int probe = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int probe_err = errno;
	/* 300 ms of a full table: re-arming at once fails about once per iteration (a
	 * thousand times and more); a delay that starts at 1 ms and doubles fails 9 times. */
	th_spin(loop, 300);
	struct ura__listener_stats st = stats_of(l);
	int accepted_while_full = atomic_load(&a.n);
	restore_fd_table(&old);

	cr_assert_eq(probe, -1, "the fd table is not full");
	cr_assert_eq(probe_err, EMFILE);
	cr_assert_geq(st.accept_failures, 1, "the accept never met EMFILE");
	cr_assert_lt(st.accept_failures, 30, "%llu accepts failed in 300 ms: no backoff",
		     (unsigned long long)st.accept_failures);
	cr_assert_eq(accepted_while_full, 0);

	/* Descriptors are free again: the client already waiting is accepted, no new one. */
	cr_assert(th_run_until_int(loop, &a.n, 1, GUARD_MS), "the waiting client was not accepted");
	cr_assert_eq(atomic_load(&a.n), 1);

	close(client);
	ura_listener_unref(l);
	int res;
	cr_assert(th_run_bounded(loop, GUARD_MS, &res), "the listener did not end");
	cr_assert_eq(res, 0);
}

Test(listener, cancel_during_a_backoff_ends_the_listener_at_once)
{
	if (th_under_valgrind())
		cr_skip("valgrind keeps descriptors of its own above the limit: no full table");
	struct accepted a = { 0 };
	int client;
	ura_listener *l = listen_with_client(&a, &client);
	struct rlimit old;
	fill_fd_table(&old);
	/* Until the accept has failed and the listener waits to try again. */
	uint64_t end = th_now_ms() + GUARD_MS;
	struct ura__listener_stats st = stats_of(l);
	while (!(st.accept_failures >= 1 && st.backoff_pending) && th_now_ms() < end) {
		(void)ura_loop_run_once(loop, false);
		st = stats_of(l);
	}
	/* The table stays full: an accept re-armed by a wait that fired would fail again, and
	 * only a cancelled wait ends the listener now. */
	ura_listener_cancel(l);
	int res;
	bool ended = th_run_bounded(loop, GUARD_MS, &res);
	struct ura__listener_stats after = stats_of(l);
	restore_fd_table(&old);

	cr_assert(st.accept_failures >= 1 && st.backoff_pending, "no backoff began");
	cr_assert(ended, "ura_loop_run did not return: the listener's final event is missing");
	cr_assert_eq(res, 0);
	cr_assert_eq(after.backoffs_cancelled, 1, "the wait was not cancelled");
	cr_assert_not(after.backoff_pending);
	cr_assert_eq(after.accept_failures, st.accept_failures, "listened again after cancel");
	cr_assert_eq(atomic_load(&a.n), 0);
	close(client);
	ura_listener_unref(l); /* the last reference: frees it (ASan checks) */
}
