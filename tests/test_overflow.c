/*
 * Overflow: a tiny ring (8 SQ entries, 16 CQ entries) under 100,000 in-flight tasks. The
 * SQ is always full (backlog) and the CQ always overflows (NODROP): every task must still
 * get exactly one terminal call, none lost, none duplicated, and the loop must run dry.
 * Also with the tasks submitted from four other threads at once.
 *
 * Every run is bounded: ura_loop_run under a watchdog thread that stops the loop, and
 * ura_loop_run_once loops under a deadline. The bounds are hang guards, not speed limits.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

#define N 100000u
#define THREADS 4u
#define GUARD_MS 120000u
#define LONG_NS (60ull * 1000000000ull)

static ura_loop *loop;
static ura_session *sh;
static pthread_t loop_thread;

/* Per task, indexed by the task's number (its arg). */
static _Atomic uint32_t *terminal;  /* terminal calls */
static _Atomic uint32_t *more;      /* calls with F_MORE (none expected) */
static int32_t *res_of;
static _Atomic ura_task *handle_of; /* written after submit returns; 0 until then */
static _Atomic uint64_t terminal_total;
static _Atomic uint64_t off_loop_calls; /* callbacks on a thread other than the loop's */
static _Atomic uint64_t wrong_handle;   /* callback's handle differs from submit's */

static void setup(void)
{
	struct ura_loop_config cfg = { .sq_entries = 8, .cq_entries = 16 };
	cr_assert_eq(ura_loop_new(&cfg, &loop), 0);
	sh = ura_session_shared(loop);
	loop_thread = pthread_self();
	terminal = calloc(N, sizeof(*terminal));
	more = calloc(N, sizeof(*more));
	res_of = calloc(N, sizeof(*res_of));
	handle_of = calloc(N, sizeof(*handle_of));
	cr_assert(terminal && more && res_of && handle_of);
	atomic_store(&terminal_total, 0);
	atomic_store(&off_loop_calls, 0);
	atomic_store(&wrong_handle, 0);
}

static void teardown(void)
{
	ura_loop_free(loop);
	free(terminal);
	free(more);
	free(res_of);
	free(handle_of);
}

TestSuite(overflow, .init = setup, .fini = teardown, .timeout = 600);

static void count_fn(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s;
	size_t i = (size_t)(uintptr_t)arg;
	if (!pthread_equal(pthread_self(), loop_thread))
		atomic_fetch_add(&off_loop_calls, 1);
	/* Relaxed: the handle is stored after the submit returns, so it may not be there
	 * yet (0: not checked); any non-zero value read is the final one. */
	ura_task h = atomic_load_explicit(&handle_of[i], memory_order_relaxed);
	if (h && h != t)
		atomic_fetch_add(&wrong_handle, 1);
	if (flags & IORING_CQE_F_MORE) {
		atomic_fetch_add(&more[i], 1);
		return;
	}
	res_of[i] = res;
	atomic_fetch_add(&terminal[i], 1);
	atomic_fetch_add(&terminal_total, 1);
}

/* Every task 0..n-1: exactly one terminal call, with res want (or also want2). */
static void check_all(size_t n, int32_t want, int32_t want2, const char *what)
{
	size_t lost = 0, dup = 0, bad_res = 0, with_more = 0;
	size_t first_lost = n, first_dup = n, first_bad = n;
	for (size_t i = 0; i < n; i++) {
		uint32_t c = atomic_load(&terminal[i]);
		if (c == 0 && lost++ == 0)
			first_lost = i;
		if (c > 1 && dup++ == 0)
			first_dup = i;
		if (c >= 1 && res_of[i] != want && res_of[i] != want2 && bad_res++ == 0)
			first_bad = i;
		if (atomic_load(&more[i]))
			with_more++;
	}
	cr_assert_eq(lost, 0, "%s: %zu of %zu tasks never got a terminal call (first: %zu)", what,
		     lost, n, first_lost);
	cr_assert_eq(dup, 0, "%s: %zu tasks got several terminal calls (first: %zu, %u calls)",
		     what, dup, first_dup, first_dup < n ? atomic_load(&terminal[first_dup]) : 0);
	cr_assert_eq(bad_res, 0, "%s: %zu tasks with a wrong res (first: %zu, res %d)", what,
		     bad_res, first_bad, first_bad < n ? res_of[first_bad] : 0);
	cr_assert_eq(with_more, 0, "%s: %zu one-shot tasks had F_MORE calls", what, with_more);
	cr_assert_eq(atomic_load(&terminal_total), n, "%s: %llu terminal calls in all", what,
		     (unsigned long long)atomic_load(&terminal_total));
	cr_assert_eq(atomic_load(&off_loop_calls), 0, "%s: %llu callbacks off the loop thread",
		     what, (unsigned long long)atomic_load(&off_loop_calls));
	cr_assert_eq(atomic_load(&wrong_handle), 0, "%s: %llu callbacks named another handle",
		     what, (unsigned long long)atomic_load(&wrong_handle));
}

/* ------------------------------------------------------------ bounds */

/* ura_loop_run with a hang guard: true when it returned by itself (no work left). */
static bool run_bounded(unsigned ms)
{
	int r;
	bool by_itself = th_run_bounded(loop, ms, &r);
	cr_assert_eq(r, 0, "ura_loop_run: %d", r);
	return by_itself;
}

/* Lets the THREADS threads waiting on go start and runs the loop (blocking between
 * iterations when wait) until want tasks had their terminal call, under a hang guard;
 * then joins the threads. Returns true when the guard fired; *err is the first error
 * ura_loop_run_once returned. */
static bool run_while_threads_work(_Atomic bool *go, pthread_t th[THREADS], uint64_t want,
				   bool wait, int *err)
{
	struct th_watchdog w;
	cr_assert_eq(th_watchdog_start(&w, loop, GUARD_MS), 0);
	atomic_store(go, true);
	uint64_t end = th_now_ms() + GUARD_MS + 1000;
	*err = 0;
	while (atomic_load(&terminal_total) < want && th_now_ms() < end) {
		int r = ura_loop_run_once(loop, wait);
		if (r < 0 && *err == 0)
			*err = r;
	}
	for (unsigned k = 0; k < THREADS; k++)
		pthread_join(th[k], NULL);
	return th_watchdog_end(&w);
}

/* ------------------------------------------------------ single thread */

Test(overflow, nops_100k_on_a_tiny_ring)
{
	for (size_t i = 0; i < N; i++) {
		ura_task t = 0;
		int r = ura_nop(sh, count_fn, (void *)(uintptr_t)i, &t);
		atomic_store(&handle_of[i], t);
		cr_assert_eq(r, 0, "nop %zu: %d", i, r);
	}
	cr_assert(run_bounded(GUARD_MS), "ura_loop_run did not return (%llu of %u done)",
		  (unsigned long long)atomic_load(&terminal_total), N);
	check_all(N, 0, 0, "100k nops");
}

Test(overflow, timeouts_100k_on_a_tiny_ring)
{
	for (size_t i = 0; i < N; i++) {
		ura_task t = 0;
		int r = ura_timeout(sh, 1000000, count_fn, (void *)(uintptr_t)i, &t);
		atomic_store(&handle_of[i], t);
		cr_assert_eq(r, 0, "timeout %zu: %d", i, r);
	}
	cr_assert(run_bounded(GUARD_MS), "ura_loop_run did not return (%llu of %u done)",
		  (unsigned long long)atomic_load(&terminal_total), N);
	check_all(N, -ETIME, -ETIME, "100k 1 ms timeouts");
}

/* 100k 60 s timeouts; `iterations` loop iterations move some (64) or all (30000: 7 a
 * time) of them from the backlog into the kernel; then every one is cancelled: those in
 * the kernel need an ASYNC_CANCEL each through the full SQ, the others none. */
static void cancel_100k(int iterations, const char *what)
{
	for (size_t i = 0; i < N; i++) {
		ura_task t = 0;
		int r = ura_timeout(sh, LONG_NS, count_fn, (void *)(uintptr_t)i, &t);
		atomic_store(&handle_of[i], t);
		cr_assert_eq(r, 0, "timeout %zu: %d", i, r);
	}
	for (int k = 0; k < iterations; k++)
		(void)ura_loop_run_once(loop, false);
	cr_assert_eq(atomic_load(&terminal_total), 0, "a 60 s timeout fired");
	for (size_t i = 0; i < N; i++) {
		int r = ura_task_cancel(sh, handle_of[i]);
		cr_assert_eq(r, 0, "cancel %zu: %d", i, r);
		cr_assert_eq(ura_task_state(sh, handle_of[i]), URA_TASK_CANCELING);
	}
	cr_assert(run_bounded(GUARD_MS), "%s: ura_loop_run did not return (%llu of %u done)",
		  what, (unsigned long long)atomic_load(&terminal_total), N);
	check_all(N, -ECANCELED, -EINTR, what);
	for (size_t i = 0; i < N; i += 997)
		cr_assert_eq(ura_task_state(sh, handle_of[i]), URA_TASK_COMPLETED);
}

Test(overflow, cancel_100k_timeouts_mostly_backlogged)
{
	cancel_100k(64, "100k timeouts cancelled, most still backlogged");
}

Test(overflow, cancel_100k_timeouts_all_in_the_kernel)
{
	cancel_100k(30000, "100k timeouts cancelled, all in the kernel");
}

/* Each callback submits the next hop of its chain, with the SQ full. */
struct chain {
	unsigned hops;
	_Atomic uint64_t *done;
	unsigned extra_terminal;
};

static void chain_fn(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)t, (void)flags;
	struct chain *c = arg;
	if (res != 0 || c->hops == 0) {
		c->extra_terminal++;
		return;
	}
	if (--c->hops == 0) {
		atomic_fetch_add(c->done, 1);
		return;
	}
	int r = ura_nop(s, chain_fn, c, NULL);
	if (r != 0)
		c->extra_terminal += 1000; /* a refused submit: reported below */
}

Test(overflow, callbacks_resubmitting_into_a_full_ring)
{
	enum { CHAINS = 1000, HOPS = 100 };
	static struct chain c[CHAINS];
	_Atomic uint64_t done = 0;
	for (int i = 0; i < CHAINS; i++) {
		c[i] = (struct chain){ .hops = HOPS, .done = &done };
		cr_assert_eq(ura_nop(sh, chain_fn, &c[i], NULL), 0);
	}
	cr_assert(run_bounded(GUARD_MS), "ura_loop_run did not return (%llu chains done)",
		  (unsigned long long)atomic_load(&done));
	cr_assert_eq(atomic_load(&done), CHAINS, "%llu of %d chains finished",
		     (unsigned long long)atomic_load(&done), CHAINS);
	for (int i = 0; i < CHAINS; i++) {
		cr_assert_eq(c[i].hops, 0, "chain %d stopped with %u hops left", i, c[i].hops);
		cr_assert_eq(c[i].extra_terminal, 0, "chain %d: %u (extra calls + 1000 x refused)",
			     i, c[i].extra_terminal);
	}
}

/* ------------------------------------------------------ other threads */

enum op { OP_NOP, OP_TIMEOUT, OP_TIMEOUT_CANCEL };

struct submitter {
	unsigned id;
	enum op op;
	_Atomic bool *go;
	_Atomic uint64_t *failed;       /* submits or cancels that did not return 0 */
	_Atomic int first_error;
};

static void *submit_main(void *arg)
{
	struct submitter *sb = arg;
	while (!atomic_load(sb->go))
		;
	size_t each = N / THREADS;
	for (size_t k = 0; k < each; k++) {
		size_t i = sb->id * each + k;
		void *a = (void *)(uintptr_t)i;
		ura_task t = 0;
		int r;
		/* -EAGAIN: the loop holds max_queued of other threads' tasks; nothing was
		 * accepted, so try again once it has taken some (what a producer does). */
		do {
			switch (sb->op) {
			case OP_NOP:
				r = ura_nop(sh, count_fn, a, &t);
				break;
			case OP_TIMEOUT:
				r = ura_timeout(sh, 1000000, count_fn, a, &t);
				break;
			default:
				r = ura_timeout(sh, LONG_NS, count_fn, a, &t);
				break;
			}
		} while (r == -EAGAIN && (sched_yield(), true));
		/* The callback may already have run (the loop thread is busy meanwhile):
		 * it then skipped the handle check; check_all's count is still exact. */
		atomic_store_explicit(&handle_of[i], t, memory_order_relaxed);
		if (r == 0 && sb->op == OP_TIMEOUT_CANCEL)
			r = ura_task_cancel(sh, t);
		if (r != 0) {
			int zero = 0;
			atomic_compare_exchange_strong(&sb->first_error, &zero, r);
			atomic_fetch_add(sb->failed, 1);
		}
	}
	return NULL;
}

/* Four threads submit N/4 tasks each while this (the loop) thread runs iterations; wait:
 * block in the kernel between iterations (the inbox wakeup must reach the loop) rather
 * than spin. Bounded: a watchdog stops the loop, after which no iteration blocks. */
static void from_threads(enum op op, bool wait, int32_t want, int32_t want2, const char *what)
{
	_Atomic bool go = false;
	_Atomic uint64_t failed = 0;
	struct submitter sb[THREADS];
	pthread_t th[THREADS];
	for (unsigned k = 0; k < THREADS; k++) {
		sb[k] = (struct submitter){ .id = k, .op = op, .go = &go, .failed = &failed };
		cr_assert_eq(pthread_create(&th[k], NULL, submit_main, &sb[k]), 0);
	}
	int err;
	bool fired = run_while_threads_work(&go, th, N, wait, &err);
	cr_assert_eq(err, 0, "%s: ura_loop_run_once: %d", what, err);
	cr_assert_eq(atomic_load(&failed), 0, "%s: %llu submits/cancels failed (first: %d)", what,
		     (unsigned long long)atomic_load(&failed), atomic_load(&sb[0].first_error));
	cr_assert(!fired, "%s: only %llu of %u tasks finished before the hang guard", what,
		  (unsigned long long)atomic_load(&terminal_total), N);
	/* Nothing is left: run returns, and no late call arrives. */
	cr_assert(run_bounded(GUARD_MS), "%s: ura_loop_run did not return afterwards", what);
	check_all(N, want, want2, what);
}

Test(overflow, nops_from_four_threads_loop_spinning)
{
	from_threads(OP_NOP, false, 0, 0, "4 x 25k nops (spinning loop)");
}

Test(overflow, nops_from_four_threads_loop_blocking)
{
	from_threads(OP_NOP, true, 0, 0, "4 x 25k nops (blocking loop)");
}

Test(overflow, timeouts_from_four_threads)
{
	from_threads(OP_TIMEOUT, true, -ETIME, -ETIME, "4 x 25k 1 ms timeouts");
}

Test(overflow, timeouts_cancelled_from_four_threads)
{
	from_threads(OP_TIMEOUT_CANCEL, true, -ECANCELED, -EINTR,
		     "4 x 25k timeouts cancelled by their submitter");
}

struct canceller {
	unsigned id;
	size_t each;
	_Atomic bool *go;
	_Atomic uint64_t *failed;
	_Atomic int first_error;
};

static void *cancel_main(void *arg)
{
	struct canceller *c = arg;
	while (!atomic_load(c->go))
		;
	for (size_t k = 0; k < c->each; k++) {
		int r = ura_task_cancel(sh, atomic_load(&handle_of[c->id * c->each + k]));
		if (r != 0) {
			int zero = 0;
			atomic_compare_exchange_strong(&c->first_error, &zero, r);
			atomic_fetch_add(c->failed, 1);
		}
	}
	return NULL;
}

Test(overflow, reads_in_the_kernel_cancelled_from_four_threads)
{
	/* The loop places NK reads of one empty pipe in the kernel first; then four threads
	 * cancel them at once while the loop runs: NK cancel commands through the inbox, NK
	 * ASYNC_CANCEL SQEs through an 8-entry SQ, 2 x NK CQEs through a 16-entry CQ.
	 * NK is 10k, not 100k, because of two kernel costs, both O(n) per cancel: a timeout
	 * is found by walking the ring's timeout list (so out-of-order cancels of 100k
	 * timeouts outlast a 60 s timeout), and a poll-armed read by walking a cancel hash
	 * whose size follows the CQ (2 buckets for 16 CQEs: 100k reads took ~2 minutes of
	 * kernel time). */
	enum { NK = 10000 };
	int p[2];
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	static char sink[1];
	for (size_t i = 0; i < NK; i++) {
		ura_task t = 0;
		int r = ura_read(sh, p[0], sink, 1, 0, count_fn, (void *)(uintptr_t)i, &t);
		atomic_store(&handle_of[i], t);
		cr_assert_eq(r, 0, "read %zu: %d", i, r);
	}
	for (int k = 0; k < 3 * NK; k++)
		(void)ura_loop_run_once(loop, false);
	cr_assert_eq(atomic_load(&terminal_total), 0, "a read of an empty pipe completed");
	_Atomic bool go = false;
	_Atomic uint64_t failed = 0;
	struct canceller cs[THREADS];
	pthread_t th[THREADS];
	for (unsigned k = 0; k < THREADS; k++) {
		cs[k] = (struct canceller){ .id = k, .each = NK / THREADS, .go = &go,
					    .failed = &failed };
		cr_assert_eq(pthread_create(&th[k], NULL, cancel_main, &cs[k]), 0);
	}
	int err;
	bool fired = run_while_threads_work(&go, th, NK, true, &err);
	cr_assert_eq(err, 0, "ura_loop_run_once: %d", err);
	cr_assert_eq(atomic_load(&failed), 0, "%llu cancels failed (first: %d)",
		     (unsigned long long)atomic_load(&failed), atomic_load(&cs[0].first_error));
	cr_assert(!fired, "only %llu of %d tasks finished before the hang guard",
		  (unsigned long long)atomic_load(&terminal_total), NK);
	cr_assert(run_bounded(GUARD_MS), "ura_loop_run did not return afterwards");
	check_all(NK, -ECANCELED, -EINTR, "10k in-kernel reads cancelled from 4 threads");
	close(p[0]);
	close(p[1]);
}

/* ------------------------------------------------- backlog starvation */

struct canceller_cb {
	ura_task *tasks;
	unsigned n;
	_Atomic bool ran;
	int32_t res;
};

static void cancel_all_fn(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)t, (void)flags;
	struct canceller_cb *c = arg;
	c->res = res;
	for (unsigned i = 0; i < c->n; i++)
		(void)ura_task_cancel(s, c->tasks[i]);
	atomic_store(&c->ran, true);
}

/* Submits a nop whose callback cancels the n blockers (all still pending), and expects
 * ura_loop_run to get the nop to the kernel and return, every blocker cancelled. */
static void cancel_from_a_backlogged_nop(ura_task *blockers, unsigned n, const char *what)
{
	/* Static: on failure the loop is freed in teardown, after this frame is gone, and
	 * the nop's callback still runs then. */
	static struct canceller_cb c;
	c = (struct canceller_cb){ .tasks = blockers, .n = n };
	cr_assert_eq(ura_nop(sh, cancel_all_fn, &c, NULL), 0);
	cr_assert(run_bounded(10000), "ura_loop_run slept with a task in its backlog (nop %s)",
		  atomic_load(&c.ran) ? "ran" : "never ran");
	cr_assert(atomic_load(&c.ran));
	check_all(n, -ECANCELED, -EINTR, what);
}

Test(overflow, backlog_is_not_starved_behind_tasks_that_block)
{
	/* More long-running tasks than the SQ holds, then a nop whose callback cancels them
	 * all. The nop must reach the kernel although none of the tasks ahead of it will
	 * complete: a loop that blocks for a completion while work waits in its backlog
	 * would sleep until the first 60 s timeout fires. */
	enum { BLOCKERS = 40 };
	/* Static: on failure the loop is freed in teardown, after this frame is gone, and
	 * the nop's callback still cancels these. */
	static ura_task blockers[BLOCKERS];
	for (size_t i = 0; i < BLOCKERS; i++) {
		int r = ura_timeout(sh, LONG_NS, count_fn, (void *)(uintptr_t)i, &blockers[i]);
		cr_assert_eq(r, 0, "timeout %zu: %d", i, r);
	}
	cancel_from_a_backlogged_nop(blockers, BLOCKERS, "timeouts cancelled by a backlogged nop");
}

Test(overflow, backlog_is_not_starved_with_the_default_ring)
{
	/* The same with a default loop (256 SQ entries): 300 reads of an idle pipe, as a
	 * server with 300 idle connections has, then a nop that cancels them. */
	ura_loop_free(loop);
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	sh = ura_session_shared(loop);
	enum { BLOCKERS = 300 };
	int p[2];
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	static char sink[1];
	static ura_task blockers[BLOCKERS];
	for (size_t i = 0; i < BLOCKERS; i++) {
		int r = ura_read(sh, p[0], sink, 1, 0, count_fn, (void *)(uintptr_t)i, &blockers[i]);
		cr_assert_eq(r, 0, "read %zu: %d", i, r);
	}
	cancel_from_a_backlogged_nop(blockers, BLOCKERS, "reads cancelled by a backlogged nop");
	close(p[0]);
	close(p[1]);
}
