/*
 * Soak: the public API from many threads at once for SECONDS, then a drain and a check of
 * every lifecycle invariant. A standalone program, not a Criterion test: it runs long and
 * prints counts. scripts/soak builds and runs it; tests/meson.build builds it without a
 * test(), so `meson test` never starts it.
 *
 *   soak [SECONDS]      (default 60)
 *
 * Parts: this file (threads, the mix of actions, drain, totals), soak_tasks.c (sessions
 * and tasks), soak_conns.c (connections), soak.h (what they share).
 *
 * What runs:
 *   - the loop thread (main): the run loop, and between iterations the same random
 *     actions as the workers;
 *   - WORKERS threads doing random actions: submits (nop, short and long timeouts, reads
 *     on pipes, suspended tasks then resumed or cancelled) to random sessions and to the
 *     shared session, cancels of recent task handles, invalidations of both kinds, new
 *     sessions, flush and get_all_tasks; clients of a listener on unix:@ura-soak-<pid>
 *     that send, send_with_reply, suspend and resume, cancel, and are dropped;
 *   - a writer thread putting bytes into the pipes so that reads complete.
 * Callbacks add their own: submits and invalidations from inside task callbacks, peers
 * that answer requests, echo messages and send requests of their own.
 *
 * What is checked (docs/RELIABILITY.md lists them against DESIGN.md):
 *   - every accepted task gets exactly one terminal call, with its own handle and a
 *     result its op can give, before its session's final event; a refused one is never
 *     called and was refused with -ESHUTDOWN only;
 *   - one final event per session, error 0, never inside the invalidate call, nothing of
 *     the session after it; the session then refuses everything; task_did_complete once
 *     per accepted task; stats agree;
 *   - the shared session ignores both invalidations;
 *   - every accepted send_with_reply gets its reply handler exactly once, a refused one
 *     never; an answer carries the request's nonce;
 *   - every connection gets exactly one final CONNECTION_INVALID, with a reason, and no
 *     event after it; an accepted connection never hears INTERRUPTED;
 *   - after the drain the loop has no live work left (ura_loop_run returns at once).
 * Session records are freed as soon as they are checked, so a late call into one is a
 * use-after-free that AddressSanitizer reports with both stacks.
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "soak.h"

struct soak_counts counts;
ura_loop *loop;
_Atomic bool draining, stop_workers;
char address[64];
static pthread_t loop_thread;

void violation(const char *fmt, ...)
{
	if (atomic_fetch_add(&counts.violations, 1) >= MAX_REPORTED)
		return;
	va_list ap;
	va_start(ap, fmt);
	fputs("soak: VIOLATION: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static _Thread_local uint64_t rng;

void seed_rng(uint64_t seed)
{
	rng = seed | 1; /* never 0: xorshift would stay there */
}

uint64_t rnd(void)
{
	/* xorshift64*: fast, and good enough to pick actions. */
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1dull;
}

uint32_t below(uint32_t k)
{
	return (uint32_t)(rnd() % k);
}

bool chance(uint32_t one_in)
{
	return below(one_in) == 0;
}

bool on_loop_thread(void)
{
	return pthread_equal(pthread_self(), loop_thread);
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ actions */

/* The mix, per thousand; the loop thread runs it too, between iterations. */
static const struct {
	unsigned weight;
	void (*fn)(void);
} actions[] = {
	{ 400, act_submit },
	{ 50, act_submit_shared },
	{ 120, act_cancel },
	{ 1, act_invalidate },
	{ 2, act_invalidate_shared },
	{ 60, act_new_session },   /* a no-op while VALID_TARGET sessions are valid */
	{ 20, act_ask },
	{ 30, act_new_client },    /* a no-op while CLIENT_TARGET clients are in the table */
	{ 1, act_drop_conn },
	{ 60, act_conn },
	{ 256, NULL },             /* a pause */
};

static void act(void)
{
	unsigned x = below(1000);
	for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++) {
		if (x < actions[i].weight) {
			if (actions[i].fn)
				actions[i].fn();
			return;
		}
		x -= actions[i].weight;
	}
}

static void *worker(void *arg)
{
	seed_rng(0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1) ^ (uint64_t)time(NULL));
	while (!atomic_load(&stop_workers)) {
		act();
		/* Vary the interleavings, and leave the loop thread some of the CPU. */
		if (chance(16))
			usleep(below(200));
	}
	return NULL;
}

/* A 2 ms timeout on the shared session, again and again, so that the loop thread's
 * blocking waits end even when no other thread wakes it. */
static _Atomic bool ticking = true;

static void tick(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)t, (void)res, (void)flags, (void)arg;
	if (atomic_load(&ticking) && ura_timeout(s, 2 * MS, tick, NULL, NULL) != 0)
		violation("ticker submit");
}

/* A progress line: what is live right now. */
static void status(uint64_t ms)
{
	unsigned valid, all;
	sessions_count(&valid, &all);
	printf("%5.1f s: sessions %u valid, %u invalidating; tasks live %" PRIu64
	       " (reads %" PRIu64 "); connections %u; replies pending %" PRIu64 "\n",
	       ms / 1000.0, valid, all - valid, atomic_load(&live_tasks),
	       atomic_load(&live_reads), conns_count(), atomic_load(&pending_replies));
	fflush(stdout);
}

/* ------------------------------------------------------------ drain */

static void *stop_later(void *arg)
{
	(void)arg;
	usleep(IDLE_CHECK_MS * 1000);
	ura_loop_stop(loop);
	return NULL;
}

/* Invalidates and cancels everything, then runs the loop until every final event has
 * come (bounded), and checks that the loop is then idle. */
static void drain(ura_listener *l)
{
	atomic_store(&draining, true);
	atomic_store(&ticking, false);
	drain_sessions();
	drain_conns();
	ura_listener_cancel(l);
	ura_listener_unref(l);

	uint64_t start = now_ms(), end = start + DRAIN_MS;
	while (!(sessions_final() && conns_final()) && now_ms() < end) {
		int r = ura_loop_run_once(loop, false);
		if (r < 0)
			violation("ura_loop_run_once while draining: %d", r);
		reap_sessions();
		if (r == 0)
			usleep(100);
	}
	if (!(sessions_final() && conns_final())) {
		violation("drain: not everything final after %d ms", DRAIN_MS);
		status(now_ms() - start);
		report_unfinished_sessions();
		report_unfinished_conns();
	}
	else
		printf("drain: everything final in %" PRIu64 " ms\n", now_ms() - start);

	/* Idle means every count the loop keeps (tasks, cancels, handles) went back to 0. */
	pthread_t t;
	pthread_create(&t, NULL, stop_later, NULL);
	uint64_t t0 = now_ms();
	int r = ura_loop_run(loop);
	uint64_t took = now_ms() - t0;
	if (r != 0 || took >= IDLE_CHECK_MS)
		violation("ura_loop_run after the drain: %d after %" PRIu64 " ms (live work left)",
			  r, took);
	pthread_join(t, NULL);
}

/* ------------------------------------------------------------ main */

static void on_watchdog(int sig)
{
	(void)sig;
	static const char text[] = "soak: watchdog: still running, aborting\n";
	(void)!write(2, text, sizeof(text) - 1);
	abort();
}

static void totals(void)
{
#define C(f) atomic_load(&counts.f)
	if (C(submitted) != C(terminal))
		violation("%" PRIu64 " tasks accepted, %" PRIu64 " terminal calls", C(submitted),
			  C(terminal));
	if (C(asked) != C(answered))
		violation("%" PRIu64 " flush/get_all_tasks accepted, %" PRIu64 " answered",
			  C(asked), C(answered));
	if (C(sessions) != C(finals))
		violation("%" PRIu64 " sessions, %" PRIu64 " final events", C(sessions), C(finals));
	if (C(clients) + C(peers) != C(conn_finals))
		violation("%" PRIu64 " connections, %" PRIu64 " final events",
			  C(clients) + C(peers), C(conn_finals));
	printf("tasks: submitted %" PRIu64 " (refused %" PRIu64 ", of them -EAGAIN %" PRIu64
	       "), completed %" PRIu64 ", cancelled %" PRIu64 ", resumed %" PRIu64 "\n",
	       C(submitted), C(refused), C(busy), C(terminal), C(cancelled_res), C(resumed));
	printf("task cancels: 0 %" PRIu64 ", -ENOENT %" PRIu64 ", -EALREADY %" PRIu64 "\n",
	       C(cancel_ok), C(cancel_enoent), C(cancel_ealready));
	printf("sessions: %" PRIu64 ", final events %" PRIu64 "; flush/get_tasks %" PRIu64
	       ", answered %" PRIu64 "\n", C(sessions), C(finals), C(asked), C(answered));
	printf("invalidations: finish %" PRIu64 ", cancel %" PRIu64 " (%" PRIu64
	       " inside callbacks), on the shared session (ignored) %" PRIu64 "\n",
	       C(inval_finish), C(inval_cancel), C(inval_in_callback), C(inval_shared));
	printf("connections: clients %" PRIu64 ", peers %" PRIu64 ", final events %" PRIu64
	       ", interrupted %" PRIu64 ", cancels %" PRIu64 ", drops %" PRIu64
	       ", suspend/resume %" PRIu64 "\n", C(clients), C(peers), C(conn_finals),
	       C(interrupted), C(conn_cancels), C(conn_drops), C(suspends));
	printf("messages: sent %" PRIu64 ", echoed %" PRIu64 ", received %" PRIu64 "\n",
	       C(msgs_sent), C(echoes), C(msgs_received));
	printf("replies: requested %" PRIu64 " (refused %" PRIu64 "), answered %" PRIu64
	       ", INVALID %" PRIu64 ", INTERRUPTED %" PRIu64 " (%" PRIu64
	       " after the connection's final event)\n",
	       C(requests), C(requests_refused), C(replies_msg), C(replies_invalid),
	       C(replies_interrupted), C(replies_after_final));
#undef C
}

int main(int argc, char **argv)
{
	unsigned secs = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 60;
	if (secs == 0 || argc > 2) {
		fprintf(stderr, "usage: soak [SECONDS]\n");
		return 2;
	}
	signal(SIGALRM, on_watchdog);
	alarm(secs + 60);
	signal(SIGPIPE, SIG_IGN);
	seed_rng((uint64_t)time(NULL) * 2654435761u);
	loop_thread = pthread_self();

	/* Small rings: the backlog and CQ overflow paths get their share. */
	struct ura_loop_config cfg = { .sq_entries = 128, .cq_entries = 512 };
	int rc = ura_loop_new(&cfg, &loop);
	if (rc == 0)
		rc = tasks_init();
	if (rc != 0) {
		fprintf(stderr, "soak: setup: %s\n", strerror(-rc));
		return 1;
	}
	snprintf(address, sizeof(address), "unix:@ura-soak-%d", (int)getpid());
	ura_listener *l;
	rc = ura_listener_new(loop, address, on_accept, NULL, &l);
	if (rc != 0) {
		fprintf(stderr, "soak: ura_listener_new(%s): %s\n", address, strerror(-rc));
		return 1;
	}
	if (ura_timeout(ura_session_shared(loop), 2 * MS, tick, NULL, NULL) != 0)
		violation("ticker submit");
	printf("soak: %u s, %d workers, listener %s\n", secs, WORKERS, address);
	fflush(stdout);

	pthread_t th[WORKERS + 1];
	for (uintptr_t i = 0; i < WORKERS; i++)
		pthread_create(&th[i], NULL, worker, (void *)i);
	pthread_create(&th[WORKERS], NULL, pipe_writer, NULL);

	uint64_t begin = now_ms(), end = begin + (uint64_t)secs * 1000, next_status = begin;
	while (now_ms() < end) {
		if (now_ms() >= next_status) {
			status(now_ms() - begin);
			next_status += 10000;
		}
		int r = ura_loop_run_once(loop, true);
		if (r < 0)
			violation("ura_loop_run_once: %d", r);
		reap_sessions();
		reap_conns();
		for (uint32_t k = below(4); k > 0; k--)
			act();
	}
	atomic_store(&stop_workers, true);
	for (int i = 0; i <= WORKERS; i++)
		pthread_join(th[i], NULL);

	drain(l);
	ura_loop_free(loop);
	check_sessions_end();
	check_conns_end();
	tasks_fini();
	totals();
	uint64_t v = atomic_load(&counts.violations);
	if (v) {
		printf("soak: FAILED, %" PRIu64 " violations\n", v);
		return 1;
	}
	printf("soak: OK, no violation\n");
	return 0;
}
