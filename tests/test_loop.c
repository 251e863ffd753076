/* Loop: configuration, run/run_once/stop/post, cross-thread wakeup. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sched.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

Test(loop, defaults_and_features)
{
	ura_loop *loop = NULL;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	cr_assert_not_null(ura_loop_ring(loop));
	uint32_t f = ura_loop_features(loop);
	cr_log_info("features: 0x%x", f);
	cr_assert(f & URA_FEATURE_NODROP, "kernel without NODROP: features 0x%x", f);
	cr_assert_not_null(ura_session_shared(loop));
	ura_loop_free(loop);
	ura_loop_free(NULL);
}

Test(loop, bad_config_is_einval)
{
	ura_loop *loop = NULL;
	struct ura_loop_config cfg = { 0 };
	cr_assert_eq(ura_loop_new(NULL, NULL), -EINVAL);
	cfg.flags = 1u << 30;
	cr_assert_eq(ura_loop_new(&cfg, &loop), -EINVAL, "unknown flag accepted");
	cfg = (struct ura_loop_config){ .reserved = { 0, 0, 7 } };
	cr_assert_eq(ura_loop_new(&cfg, &loop), -EINVAL, "reserved field accepted");
	cfg = (struct ura_loop_config){ .sq_entries = 1u << 20 };
	cr_assert_eq(ura_loop_new(&cfg, &loop), -EINVAL, "absurd SQ accepted");
	cfg = (struct ura_loop_config){ .sq_entries = 64, .cq_entries = 8 };
	cr_assert_eq(ura_loop_new(&cfg, &loop), -EINVAL, "CQ smaller than SQ accepted");
	cfg = (struct ura_loop_config){ .cq_entries = 1u << 30 };
	cr_assert_eq(ura_loop_new(&cfg, &loop), -EINVAL, "absurd CQ accepted");
	cfg = (struct ura_loop_config){ .cq_entries = 65537 };
	cr_assert_eq(ura_loop_new(&cfg, &loop), -EINVAL, "CQ over the kernel's 65536 accepted");
	cfg = (struct ura_loop_config){ .sq_entries = 32768, .cq_entries = 65536 };
	cr_assert_eq(ura_loop_new(&cfg, &loop), 0, "the largest rings must work");
	ura_loop_free(loop);
	loop = NULL;
	cr_assert_null(loop);
	cr_assert_eq(ura_loop_run(NULL), -EINVAL);
	cr_assert_eq(ura_loop_run_once(NULL, false), -EINVAL);
	cr_assert_eq(ura_loop_post(NULL, NULL, NULL), -EINVAL);
}

Test(loop, fallback_without_defer_taskrun)
{
	ura_loop *loop = NULL;
	struct ura_loop_config cfg = { .flags = URA_LOOP_NO_DEFER_TASKRUN };
	cr_assert_eq(ura_loop_new(&cfg, &loop), 0);
	cr_assert_eq(ura_loop_features(loop) & URA_FEATURE_DEFER_TASKRUN, 0);
	_Atomic uint64_t n = 0;
	struct th_calls c = { 0 };
	for (int i = 0; i < 100; i++)
		cr_assert_eq(ura_nop(ura_session_shared(loop), th_record, &c, NULL), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&c.terminal), 100);
	(void)n;
	ura_loop_free(loop);
}

Test(loop, run_without_work_returns)
{
	ura_loop *loop = NULL;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	/* An idle loop (and an idle session) is not work: run returns at once. */
	ura_session *s = NULL;
	cr_assert_eq(ura_session_new(loop, NULL, NULL, &s), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_session_unref(s);
	ura_loop_free(loop);
}

static void count_post(void *arg)
{
	atomic_fetch_add((_Atomic uint64_t *)arg, 1);
}

Test(loop, post_runs_once_on_loop_thread_never_inline)
{
	ura_loop *loop = NULL;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	_Atomic uint64_t n = 0;
	cr_assert_eq(ura_loop_post(loop, count_post, &n), 0);
	cr_assert_eq(atomic_load(&n), 0, "post ran inside the call");
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&n), 1);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&n), 1, "post ran twice");
	ura_loop_free(loop);
}

struct poster {
	ura_loop *loop;
	_Atomic uint64_t *count;
	int n;
};

static void *post_many(void *arg)
{
	struct poster *p = arg;
	for (int i = 0; i < p->n; i++)
		while (ura_loop_post(p->loop, count_post, p->count) != 0)
			;
	return NULL;
}

Test(loop, posts_from_many_threads_all_run)
{
	ura_loop *loop = NULL;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	_Atomic uint64_t n = 0;
	enum { THREADS = 4, EACH = 20000 };
	pthread_t th[THREADS];
	struct poster p = { loop, &n, EACH };
	for (int i = 0; i < THREADS; i++)
		pthread_create(&th[i], NULL, post_many, &p);
	uint64_t got = th_run_until_count(loop, &n, THREADS * EACH, 60000);
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	got = th_run_until_count(loop, &n, THREADS * EACH, 10000);
	cr_assert_eq(got, (uint64_t)THREADS * EACH, "ran %lu posts of %d", (unsigned long)got,
		     THREADS * EACH);
	ura_loop_free(loop);
}

static void *stop_later(void *arg)
{
	usleep(50 * 1000);
	ura_loop_stop(arg);
	return NULL;
}

static void noop_cb(ura_session *s, ura_task t, int32_t res, uint32_t f, void *a)
{
	(void)s, (void)t, (void)res, (void)f;
	atomic_store((_Atomic int32_t *)a, res);
}

Test(loop, stop_from_another_thread_wakes_a_blocked_run)
{
	ura_loop *loop = NULL;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	_Atomic int32_t res = 1;
	/* A long timeout keeps run blocked in the kernel until stop wakes it. */
	ura_task t;
	cr_assert_eq(ura_timeout(ura_session_shared(loop), 60ull * 1000000000ull, noop_cb, &res, &t), 0);
	pthread_t th;
	pthread_create(&th, NULL, stop_later, loop);
	uint64_t start = th_now_ms();
	cr_assert_eq(ura_loop_run(loop), 0);
	pthread_join(th, NULL);
	cr_assert_lt(th_now_ms() - start, 30000, "stop did not wake the loop");
	cr_assert_eq(atomic_load(&res), 1, "the timeout fired early");
	cr_assert_eq(ura_task_cancel(ura_session_shared(loop), t), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&res), -ECANCELED, "res %d", atomic_load(&res));
	ura_loop_free(loop);
}

Test(loop, stop_before_run_returns_at_once)
{
	ura_loop *loop = NULL;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	_Atomic int32_t res = 1;
	cr_assert_eq(ura_timeout(ura_session_shared(loop), 60ull * 1000000000ull, noop_cb, &res, NULL), 0);
	ura_loop_stop(loop);
	cr_assert_eq(ura_loop_run(loop), 0);
	/* free cancels the timeout and drains it: its terminal call runs. */
	ura_loop_free(loop);
	cr_assert_eq(atomic_load(&res), -ECANCELED, "res %d", atomic_load(&res));
}

static void reenter(ura_session *s, ura_task t, int32_t res, uint32_t f, void *a)
{
	(void)t, (void)res, (void)f, (void)s;
	ura_loop *loop = a;
	cr_assert_eq(ura_loop_run_once(loop, false), -EBUSY, "run_once is not reentrant");
}

Test(loop, run_once_inside_callback_is_ebusy)
{
	ura_loop *loop = NULL;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	cr_assert_eq(ura_nop(ura_session_shared(loop), reenter, loop, NULL), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_loop_free(loop);
}

struct nop_feeder {
	ura_loop *loop;
	struct th_calls *calls;
	int n;
	_Atomic int refused; /* submits that failed with something other than -EAGAIN */
};

static void *submit_nops(void *arg)
{
	struct nop_feeder *f = arg;
	for (int i = 0; i < f->n; i++) {
		int r;
		while ((r = ura_nop(ura_session_shared(f->loop), th_record, f->calls, NULL)) == -EAGAIN)
			sched_yield();
		if (r != 0)
			atomic_fetch_add(&f->refused, 1);
	}
	return NULL;
}

/* Below 8 entries the cancel headroom leaves no room for a task (sq 1 used to spin at
 * 100% CPU and never run one): refused. 8 works, for many more tasks than the SQ holds,
 * submitted on the loop thread and from another thread. */
Test(loop, sq_below_8_is_einval_and_8_runs_more_tasks_than_it_holds)
{
	ura_loop *loop = NULL;
	for (uint32_t sq = 1; sq < 8; sq++) {
		struct ura_loop_config cfg = { .sq_entries = sq };
		int r = ura_loop_new(&cfg, &loop);
		cr_assert_eq(r, -EINVAL, "sq_entries %u: %d, not -EINVAL", sq, r);
	}
	struct ura_loop_config cfg = { .sq_entries = 8 };
	cr_assert_eq(ura_loop_new(&cfg, &loop), 0);
	enum { LOCAL = 3000, REMOTE = 3000 };
	static struct th_calls c;
	memset(&c, 0, sizeof(c));
	struct nop_feeder f = { .loop = loop, .calls = &c, .n = REMOTE };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, submit_nops, &f), 0);
	for (int i = 0; i < LOCAL; i++)
		cr_assert_eq(ura_nop(ura_session_shared(loop), th_record, &c, NULL), 0, "nop %d", i);
	int r = 0;
	bool ok = th_run_bounded(loop, 30000, &r);
	pthread_join(th, NULL);
	/* The other thread may have finished submitting after run found no work. */
	ok = ok && r == 0 && th_run_bounded(loop, 30000, &r);
	cr_assert(ok, "ura_loop_run did not return by itself (res %d, %lu of %d done)", r,
		  (unsigned long)atomic_load(&c.terminal), LOCAL + REMOTE);
	cr_assert_eq(r, 0);
	cr_assert_eq(atomic_load(&f.refused), 0);
	cr_assert_eq(atomic_load(&c.terminal), LOCAL + REMOTE, "%lu of %d tasks ran",
		     (unsigned long)atomic_load(&c.terminal), LOCAL + REMOTE);
	cr_assert_eq(atomic_load(&c.last_res), 0);
	ura_loop_free(loop);
}

/* Each live loop holds one of 1023 handle tags (unique among live loops, so handles of
 * two loops never meet): the 1024th live loop is refused, and a freed loop's tag is
 * handed out again. Each loop costs two descriptors (ring, eventfd). */
Test(loop, loop_beyond_1023_live_is_emfile, .timeout = 300)
{
	enum { MAX_LIVE = 1023 };
	struct rlimit rl;
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur < 2 * (MAX_LIVE + 1) + 64) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
		(void)getrlimit(RLIMIT_NOFILE, &rl);
		if (rl.rlim_cur < 2 * (MAX_LIVE + 1) + 64)
			cr_skip("RLIMIT_NOFILE %lu is too low for 1024 rings (test_registry "
				"checks the tag allocator itself)", (unsigned long)rl.rlim_cur);
	}
	static ura_loop *loops[MAX_LIVE + 1];
	int n = 0, r = 0;
	while (n <= MAX_LIVE && (r = ura_loop_new(NULL, &loops[n])) == 0)
		n++;
	if (r == -ENOMEM && n < MAX_LIVE) {
		/* The environment cannot map 1024 rings (valgrind's address space): nothing to
		 * say about tags here; test_registry checks the allocator itself. */
		for (int i = 0; i < n; i++)
			ura_loop_free(loops[i]);
		cr_skip("only %d rings fit in this address space", n);
	}
	cr_assert_eq(n, MAX_LIVE, "%d live loops, then %d", n, r);
	cr_assert_eq(r, -EMFILE, "loop %d: %d, not -EMFILE", n + 1, r);
	ura_loop_free(loops[100]);
	cr_assert_eq(ura_loop_new(NULL, &loops[100]), 0, "a freed loop's tag was not reused");
	ura_loop *extra = NULL;
	cr_assert_eq(ura_loop_new(NULL, &extra), -EMFILE);
	for (int i = 0; i < n; i++)
		ura_loop_free(loops[i]);
	cr_assert_eq(ura_loop_new(NULL, &extra), 0);
	ura_loop_free(extra);
}

/* ---- loop-thread-only calls from another thread abort with a message (URA_CHECKS) */

static void *run_once_elsewhere(void *arg)
{
	(void)ura_loop_run_once(arg, false); /* aborts: not the loop's thread */
	return NULL;
}

Test(loop, run_once_off_the_loop_thread_aborts, .signal = SIGABRT)
{
	ura_loop *l;
	cr_assert_eq(ura_loop_new(NULL, &l), 0);
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, run_once_elsewhere, l), 0);
	pthread_join(th, NULL);
	cr_assert_fail("ura_loop_run_once ran off the loop thread without aborting");
}
