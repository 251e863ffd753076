/* Sessions: the ten guarantees of DESIGN.md, one or more tests each (named g<N>_...). */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"
#include "session.h" /* the submit counter, to stand in for 2^31 submits */

#define SEC 1000000000ull

static ura_loop *loop;

static void setup(void)
{
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
}

static void teardown(void)
{
	ura_loop_free(loop);
}

TestSuite(session, .init = setup, .fini = teardown);

/* An event log: each task's terminal call and the final event append to it. */
struct order {
	struct th_delegate d;
	int log[64];
	_Atomic int n;
	int final_at;
};

static void log_task(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)flags;
	struct order *o = arg;
	cr_assert_eq(atomic_load(&o->d.final_seen), false, "task callback after the final event");
	o->log[atomic_fetch_add(&o->n, 1)] = res;
}

static ura_session *new_session(struct th_delegate *d)
{
	ura_session *s = NULL;
	cr_assert_eq(ura_session_new(loop, &th_delegate_fns, d, &s), 0);
	return s;
}

Test(session, g1_finish_returns_at_once_and_refuses_new_tasks)
{
	struct order o = { 0 };
	ura_session *s = new_session(&o.d);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(ura_timeout(s, 2000000ull * (uint64_t)(i + 1), log_task, &o, NULL), 0);
	ura_session_finish_tasks_and_invalidate(s);
	cr_assert_eq(atomic_load(&o.d.finals), 0, "final event inside the call");
	cr_assert_eq(ura_nop(s, log_task, &o, NULL), -ESHUTDOWN);
	cr_assert_eq(ura_session_is_valid(s), false);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&o.n), 4, "live tasks must run to completion");
	for (int i = 0; i < 4; i++)
		cr_assert_eq(o.log[i], -ETIME, "task %d was not left to finish: %d", i, o.log[i]);
	cr_assert_eq(atomic_load(&o.d.finals), 1);
	cr_assert_eq(atomic_load(&o.d.final_error), 0);
	cr_assert_eq(atomic_load(&o.d.completions), 4, "task_did_complete per task");
	ura_session_unref(s);
}

Test(session, g2_invalidate_and_cancel_cancels_every_live_task)
{
	struct order o = { 0 };
	ura_session *s = new_session(&o.d);
	enum { N = 32 };
	for (int i = 0; i < N; i++)
		cr_assert_eq(ura_timeout(s, 60 * SEC, log_task, &o, NULL), 0);
	cr_assert_eq(ura_loop_run_once(loop, false) >= 0, true);
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&o.n), N);
	for (int i = 0; i < N; i++)
		cr_assert(o.log[i] == -ECANCELED || o.log[i] == -EINTR, "task %d: %d", i, o.log[i]);
	cr_assert_eq(atomic_load(&o.d.finals), 1);
	struct ura_session_stats st;
	cr_assert_eq(ura_session_stats(s, &st), 0);
	cr_assert_eq(st.cancel_ok, N, "one ASYNC_CANCEL per task: %lu ok", (unsigned long)st.cancel_ok);
	cr_assert_eq(st.cancelled, N);
	ura_session_unref(s);
}

Test(session, g2_suspended_tasks_cancelled_without_sqe)
{
	struct order o = { 0 };
	ura_session *s = new_session(&o.d);
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_nop(&sqe);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(ura_submit(s, &sqe, URA_SUBMIT_SUSPENDED, log_task, &o, NULL), 0);
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&o.n), 3);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(o.log[i], -ECANCELED);
	struct ura_session_stats st;
	ura_session_stats(s, &st);
	cr_assert_eq(st.cancel_ok + st.cancel_enoent + st.cancel_ealready, 0, "an SQE was issued");
	cr_assert_eq(atomic_load(&o.d.finals), 1);
	ura_session_unref(s);
}

Test(session, g2_cancel_upgrades_a_pending_finish)
{
	struct order o = { 0 };
	ura_session *s = new_session(&o.d);
	cr_assert_eq(ura_timeout(s, 60 * SEC, log_task, &o, NULL), 0);
	ura_session_finish_tasks_and_invalidate(s);
	th_spin(loop, 20);
	cr_assert_eq(atomic_load(&o.d.finals), 0, "finish must wait for the 60 s task");
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(o.log[0], -ECANCELED);
	cr_assert_eq(atomic_load(&o.d.finals), 1);
	ura_session_unref(s);
}

Test(session, g3_final_fires_once_with_zero_tasks_never_inside_the_call)
{
	struct th_delegate d = { 0 };
	ura_session *s = new_session(&d);
	for (int i = 0; i < 5; i++) {
		ura_session_finish_tasks_and_invalidate(s);
		ura_session_invalidate_and_cancel(s);
		cr_assert_eq(atomic_load(&d.finals), 0, "final event inside an invalidate call");
	}
	cr_assert_eq(ura_loop_run_once(loop, false) >= 0, true);
	cr_assert_eq(atomic_load(&d.finals), 1, "not on the next iteration");
	th_spin(loop, 10);
	ura_session_invalidate_and_cancel(s);
	th_spin(loop, 10);
	cr_assert_eq(atomic_load(&d.finals), 1);
	ura_session_unref(s);
}

Test(session, g3_final_after_every_terminal_call_and_cancel_cqe)
{
	struct order o = { 0 };
	ura_session *s = new_session(&o.d);
	int p[2];
	cr_assert_eq(pipe(p), 0);
	static char buf[4][8];
	for (int i = 0; i < 4; i++)
		cr_assert_eq(ura_read(s, p[0], buf[i], 8, 0, log_task, &o, NULL), 0);
	cr_assert_eq(ura_nop(s, log_task, &o, NULL), 0);
	cr_assert_eq(ura_loop_run_once(loop, false) >= 0, true);
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&o.n), 5);
	cr_assert_eq(atomic_load(&o.d.completions), 5, "task_did_complete before the final event");
	cr_assert_eq(atomic_load(&o.d.calls_after_final), 0);
	struct ura_session_stats st;
	ura_session_stats(s, &st);
	cr_assert_eq(st.cancel_ok + st.cancel_enoent + st.cancel_ealready, 4,
		     "every cancel CQE reaped before the final event");
	close(p[0]);
	close(p[1]);
	ura_session_unref(s);
}

struct inside {
	struct th_delegate d;
	ura_session *s;
	int submit_after;
	int final_seen_in_cb;
};

static void invalidate_inside(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)t, (void)res, (void)flags;
	struct inside *in = arg;
	ura_session_invalidate_and_cancel(s);
	in->submit_after = ura_nop(s, NULL, NULL, NULL);
	in->final_seen_in_cb = atomic_load(&in->d.finals);
}

Test(session, g3_invalidation_inside_a_callback_takes_effect_after_it)
{
	struct inside in = { 0 };
	ura_session *s = new_session(&in.d);
	in.s = s;
	cr_assert_eq(ura_nop(s, invalidate_inside, &in, NULL), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(in.submit_after, -ESHUTDOWN);
	cr_assert_eq(in.final_seen_in_cb, 0, "final event ran inside the callback");
	cr_assert_eq(atomic_load(&in.d.finals), 1);
	cr_assert_eq(atomic_load(&in.d.completions), 1);
	ura_session_unref(s);
}

static void flush_done(ura_session *s, void *arg)
{
	(void)s;
	atomic_fetch_add((_Atomic int *)arg, 1);
}

static void tasks_seen(ura_session *s, const ura_task *t, size_t n, void *arg)
{
	(void)s, (void)t;
	*(_Atomic long *)arg = (long)n;
}

Test(session, g4_after_final_calls_are_safe_and_answer_eshutdown)
{
	struct th_delegate d = { 0 };
	ura_session *s = new_session(&d);
	ura_session *extra = ura_session_ref(s);
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&d.finals), 1);
	cr_assert_eq(ura_nop(s, NULL, NULL, NULL), -ESHUTDOWN);
	cr_assert_eq(ura_session_is_valid(s), false);
	cr_assert_eq(ura_session_set_description(s, "x"), -ESHUTDOWN);
	_Atomic int f = 0;
	_Atomic long n = -1;
	cr_assert_eq(ura_session_flush(s, flush_done, &f), -ESHUTDOWN);
	cr_assert_eq(ura_session_get_all_tasks(s, tasks_seen, &n), -ESHUTDOWN);
	cr_assert_eq(ura_task_cancel(s, 12345), -ENOENT);
	struct ura_session_stats st;
	cr_assert_eq(ura_session_stats(s, &st), 0);
	ura_session_finish_tasks_and_invalidate(s);
	th_spin(loop, 10);
	cr_assert_eq(atomic_load(&d.finals), 1);
	cr_assert_eq(atomic_load(&d.calls_after_final), 0);
	ura_session_unref(s);
	/* Still allocated: one reference left, also across the loop's end. */
	ura_loop_free(loop);
	cr_assert_eq(ura_nop(extra, NULL, NULL, NULL), -ESHUTDOWN);
	cr_assert_eq(ura_session_is_valid(extra), false);
	ura_session_unref(extra);
	cr_assert_eq(ura_loop_new(NULL, &loop), 0); /* for teardown */
}

Test(session, g6_shared_session_ignores_invalidation)
{
	ura_session *sh = ura_session_shared(loop);
	ura_session_finish_tasks_and_invalidate(sh);
	ura_session_invalidate_and_cancel(sh);
	cr_assert_eq(ura_session_is_valid(sh), true);
	struct th_calls c = { 0 };
	cr_assert_eq(ura_nop(sh, th_record, &c, NULL), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&c.terminal), 1);
}

struct kinds {
	_Atomic long nd, nu, ndl;
	_Atomic int calls;
};

static void by_kind(ura_session *s, const ura_task *d, size_t nd, const ura_task *u, size_t nu,
		    const ura_task *dl, size_t ndl, void *arg)
{
	(void)s, (void)d, (void)u, (void)dl;
	struct kinds *k = arg;
	k->nd = (long)nd;
	k->nu = (long)nu;
	k->ndl = (long)ndl;
	atomic_fetch_add(&k->calls, 1);
}

/* Submits a read, a read it cancels, a write and a timeout on s, then checks that
 * get_tasks and get_all_tasks answer later, once, with the three not cancelling. */
static void check_listing_by_kind(ura_session *s, int p[2])
{
	static char rbuf[8], wbuf[8];
	struct io_uring_sqe sqe;
	ura_task cancelled;
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_read(&sqe, p[0], rbuf, 8, 0);
	cr_assert_eq(ura_submit(s, &sqe, URA_SUBMIT_SUSPENDED, NULL, NULL, NULL), 0);
	cr_assert_eq(ura_submit(s, &sqe, URA_SUBMIT_SUSPENDED, NULL, NULL, &cancelled), 0);
	io_uring_prep_write(&sqe, p[1], wbuf, 8, 0);
	cr_assert_eq(ura_submit(s, &sqe, URA_SUBMIT_SUSPENDED, NULL, NULL, NULL), 0);
	cr_assert_eq(ura_timeout(s, 60 * SEC, NULL, NULL, NULL), 0);
	cr_assert_eq(ura_task_cancel(s, cancelled), 0);
	struct kinds k = { 0 };
	_Atomic long all = -1;
	cr_assert_eq(ura_session_get_tasks(s, by_kind, &k), 0);
	cr_assert_eq(ura_session_get_all_tasks(s, tasks_seen, &all), 0);
	cr_assert_eq(atomic_load(&k.calls), 0, "answered inside the call");
	th_spin(loop, 20);
	cr_assert_eq(atomic_load(&k.calls), 1);
	cr_assert_eq(k.nd, 1, "data (timeout): %ld", k.nd);
	cr_assert_eq(k.nu, 1, "upload (write): %ld", k.nu);
	cr_assert_eq(k.ndl, 1, "download (read, the other cancelled): %ld", k.ndl);
	cr_assert_eq(atomic_load(&all), 3);
}

Test(session, g7_get_tasks_lists_live_tasks_by_kind_not_cancelling)
{
	struct th_delegate d = { 0 };
	ura_session *s = new_session(&d);
	int p[2];
	cr_assert_eq(pipe(p), 0);
	check_listing_by_kind(s, p);
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	close(p[0]);
	close(p[1]);
	ura_session_unref(s);
}

Test(session, g8_flush_waits_for_tasks_live_at_the_call_only)
{
	struct order o = { 0 };
	ura_session *s = new_session(&o.d);
	cr_assert_eq(ura_timeout(s, 5000000, log_task, &o, NULL), 0);
	cr_assert_eq(ura_timeout(s, 10000000, log_task, &o, NULL), 0);
	_Atomic int flushed = 0;
	cr_assert_eq(ura_session_flush(s, flush_done, &flushed), 0);
	ura_task later;
	cr_assert_eq(ura_timeout(s, 60 * SEC, NULL, NULL, &later), 0);
	uint64_t end = th_now_ms() + 10000;
	while (!atomic_load(&flushed) && th_now_ms() < end)
		ura_loop_run_once(loop, true);
	cr_assert_eq(atomic_load(&flushed), 1, "flush did not fire (or waited for the later task)");
	cr_assert_eq(atomic_load(&o.n), 2, "flush fired before the tasks live at the call");
	cr_assert_eq(ura_task_state(s, later), URA_TASK_RUNNING);
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_session_unref(s);
}

/* The shared session keeps no task list: its walks scan the registry (session_walk.c). */
Test(session, g7_shared_session_lists_live_tasks_by_kind_not_cancelling)
{
	int p[2];
	cr_assert_eq(pipe(p), 0);
	/* A task of another session in the same registry is not the shared session's. */
	struct th_delegate d = { 0 };
	ura_session *other = new_session(&d);
	cr_assert_eq(ura_timeout(other, 60 * SEC, NULL, NULL, NULL), 0);
	check_listing_by_kind(ura_session_shared(loop), p);
	ura_session_invalidate_and_cancel(other);
	cr_assert(th_run_until(loop, &d.final_seen, 10000), "the other session never ended");
	ura_session_unref(other);
	/* The teardown's ura_loop_free ends the shared session's tasks (a registry walk). */
	close(p[0]);
	close(p[1]);
}

static void count_nop(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)res, (void)flags;
	atomic_fetch_add((_Atomic int *)arg, 1);
}

struct flush_probe {
	_Atomic int *completed;
	int seen_at_flush; /* completions when the flush ran; -1 before */
};

static void flush_probe_done(ura_session *s, void *arg)
{
	(void)s;
	struct flush_probe *f = arg;
	f->seen_at_flush = atomic_load(f->completed);
}

/* More tasks than one registry chunk (4096 slots), so the walk crosses chunks; a second
 * flush set up after more tasks waits for those too, and runs after the first. */
Test(session, g8_shared_session_flushes_count_the_tasks_live_at_each_call)
{
	enum { FIRST = 5000, SECOND = 100 };
	ura_session *s = ura_session_shared(loop);
	static ura_task first[FIRST], second[SECOND];
	_Atomic int completed = 0;
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_nop(&sqe);
	for (int i = 0; i < FIRST; i++)
		cr_assert_eq(ura_submit(s, &sqe, URA_SUBMIT_SUSPENDED, count_nop, &completed,
					&first[i]), 0);
	struct flush_probe f1 = { &completed, -1 }, f2 = { &completed, -1 };
	_Atomic long all = -1;
	cr_assert_eq(ura_session_get_all_tasks(s, tasks_seen, &all), 0);
	cr_assert_eq(ura_session_flush(s, flush_probe_done, &f1), 0);
	th_spin(loop, 20);
	cr_assert_eq(atomic_load(&all), FIRST, "listed %ld of %d", (long)atomic_load(&all), FIRST);
	cr_assert_eq(f1.seen_at_flush, -1, "flush ran with every task suspended");
	for (int i = 0; i < SECOND; i++)
		cr_assert_eq(ura_submit(s, &sqe, URA_SUBMIT_SUSPENDED, count_nop, &completed,
					&second[i]), 0);
	cr_assert_eq(ura_session_flush(s, flush_probe_done, &f2), 0);
	th_spin(loop, 20);
	for (int i = 0; i < FIRST; i++)
		cr_assert_eq(ura_task_resume(s, first[i]), 0);
	cr_assert(th_run_until_int(loop, &completed, FIRST, 10000));
	th_spin(loop, 20);
	cr_assert_eq(f1.seen_at_flush, FIRST, "first flush at %d completions", f1.seen_at_flush);
	cr_assert_eq(f2.seen_at_flush, -1, "second flush ran before its later tasks");
	for (int i = 0; i < SECOND; i++)
		cr_assert_eq(ura_task_resume(s, second[i]), 0);
	cr_assert(th_run_until_int(loop, &completed, FIRST + SECOND, 10000));
	th_spin(loop, 20);
	cr_assert_eq(f2.seen_at_flush, FIRST + SECOND, "second flush at %d completions",
		     f2.seen_at_flush);
}

struct remote_submit {
	ura_session *s;
	_Atomic int *ended;
};

static void count_end(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)res, (void)flags;
	atomic_fetch_add((_Atomic int *)arg, 1);
}

static void *submit_short_timeout(void *arg)
{
	struct remote_submit *r = arg;
	cr_assert_eq(ura_timeout(r->s, 30000000, count_end, r->ended, NULL), 0);
	return NULL;
}

/* A task another thread submitted before the flush call is live at the call, though the
 * loop links it only when it takes the SUBMIT from its inbox, after the call. */
Test(session, g8_flush_waits_for_tasks_other_threads_submitted_before_the_call)
{
	struct th_delegate d = { 0 };
	ura_session *sessions[2] = { new_session(&d), ura_session_shared(loop) };
	for (int i = 0; i < 2; i++) {
		_Atomic int ended = 0, flushed = 0;
		struct remote_submit r = { sessions[i], &ended };
		pthread_t th;
		cr_assert_eq(pthread_create(&th, NULL, submit_short_timeout, &r), 0);
		pthread_join(th, NULL);
		cr_assert_eq(ura_session_flush(sessions[i], flush_done, &flushed), 0);
		cr_assert(th_run_until_int(loop, &flushed, 1, 10000), "flush never answered");
		cr_assert_eq(atomic_load(&ended), 1, "%s session: flush ran before the task "
			     "submitted ahead of it", i ? "shared" : "new");
	}
	ura_session_invalidate_and_cancel(sessions[0]);
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_session_unref(sessions[0]);
}

static void set_flag(ura_session *s, void *arg)
{
	(void)s;
	atomic_store((_Atomic int *)arg, 1);
}

/* A flush pending while billions of tasks pass must still wait for its own task: task
 * numbers are compared on 48 bits. The counter jumps stand in for 2^31 and 2^32 submits
 * (about 3 and 7 minutes of NOPs at full speed). */
Test(session, g8_flush_waits_across_billions_of_later_submits)
{
	ura_session *s = ura_session_shared(loop);
	for (int k = 31; k <= 32; k++) {
		_Atomic int a_done = 0, b_done = 0, flushed = 0;
		struct io_uring_sqe sqe;
		memset(&sqe, 0, sizeof(sqe));
		io_uring_prep_nop(&sqe);
		ura_task a;
		cr_assert_eq(ura_submit(s, &sqe, URA_SUBMIT_SUSPENDED, count_end, &a_done, &a), 0);
		cr_assert_eq(ura_session_flush(s, set_flag, &flushed), 0);
		th_spin(loop, 20);
		atomic_store(&s->stats.submitted, atomic_load(&s->stats.submitted) + (1ull << k));
		cr_assert_eq(ura_nop(s, count_end, &b_done, NULL), 0);
		cr_assert(th_run_until_int(loop, &b_done, 1, 5000));
		th_spin(loop, 20);
		cr_assert_eq(atomic_load(&flushed), 0, "2^%d submits later, the flush ran before "
			     "its task", k);
		cr_assert_eq(ura_task_resume(s, a), 0);
		cr_assert(th_run_until_int(loop, &flushed, 1, 5000));
		cr_assert_eq(atomic_load(&a_done), 1);
	}
}

Test(session, g8_reset_is_a_barrier_then_clears_stats)
{
	struct th_delegate d = { 0 };
	ura_session *s = new_session(&d);
	for (int i = 0; i < 10; i++)
		cr_assert_eq(ura_nop(s, NULL, NULL, NULL), 0);
	_Atomic int done = 0;
	cr_assert_eq(ura_session_reset(s, flush_done, &done), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&done), 1);
	struct ura_session_stats st;
	ura_session_stats(s, &st);
	cr_assert_eq(st.submitted, 0, "stats not reset: submitted %lu", (unsigned long)st.submitted);
	cr_assert_eq(st.completed, 0);
	cr_assert_eq(atomic_load(&d.completions), 10, "reset ran before the tasks finished");
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_session_unref(s);
}

Test(session, g9_stats_count_and_time_the_invalidation)
{
	struct th_delegate d = { 0 };
	ura_session *s = new_session(&d);
	for (int i = 0; i < 20; i++)
		cr_assert_eq(ura_timeout(s, 60 * SEC, NULL, NULL, NULL), 0);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(ura_nop(s, NULL, NULL, NULL), 0);
	struct ura_session_stats st;
	ura_session_stats(s, &st);
	cr_assert_eq(st.in_flight, 25);
	cr_assert_eq(st.peak_in_flight, 25);
	ura_loop_run_once(loop, false);
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_session_stats(s, &st);
	cr_assert_eq(st.submitted, 25);
	cr_assert_eq(st.completed, 25);
	cr_assert_eq(st.cancelled, 20, "cancelled %lu", (unsigned long)st.cancelled);
	cr_assert_eq(st.cancel_ok, 20);
	cr_assert_eq(st.in_flight, 0);
	cr_assert_gt(st.invalidate_to_final_ns, 0);
	ura_session_unref(s);
}

Test(session, g9_cancel_results_enoent_counted)
{
	struct th_delegate d = { 0 };
	ura_session *s = new_session(&d);
	ura_task t;
	/* Cancel a nop in the same iteration: the kernel has usually completed it by the
	 * time the cancel SQE runs (-ENOENT) or cancels nothing; either way one result. */
	cr_assert_eq(ura_nop(s, NULL, NULL, &t), 0);
	cr_assert_eq(ura_task_cancel(s, t), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	struct ura_session_stats st;
	ura_session_stats(s, &st);
	cr_assert_eq(st.cancel_ok + st.cancel_enoent + st.cancel_ealready, 1,
		     "ok %lu enoent %lu ealready %lu", (unsigned long)st.cancel_ok,
		     (unsigned long)st.cancel_enoent, (unsigned long)st.cancel_ealready);
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_session_unref(s);
}

static uint64_t cancelled_count(ura_session *s)
{
	struct ura_session_stats st;
	cr_assert_eq(ura_session_stats(s, &st), 0);
	return st.cancelled;
}

/* stats.cancelled counts the tasks a cancel ended (-ECANCELED or -EINTR), not the
 * cancels that came too late. */
Test(session, g9_cancelled_counts_only_cancels_that_took_effect)
{
	struct th_delegate d = { 0 };
	ura_session *s = new_session(&d);
	/* A nop cancelled while still in the SQ: the kernel completes it (res 0) before the
	 * cancel runs, which then finds nothing (-ENOENT). */
	struct th_calls nop = { 0 };
	ura_task t;
	cr_assert_eq(ura_nop(s, th_record, &nop, &t), 0);
	cr_assert_eq(ura_task_cancel(s, t), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&nop.terminal), 1);
	cr_assert_eq(atomic_load(&nop.last_res), 0, "res %d", atomic_load(&nop.last_res));
	cr_assert_eq(cancelled_count(s), 0, "a cancel that did not take effect was counted");

	/* A suspended task: the cancel ends it without an SQE. */
	struct th_calls sus = { 0 };
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_nop(&sqe);
	cr_assert_eq(ura_submit(s, &sqe, URA_SUBMIT_SUSPENDED, th_record, &sus, &t), 0);
	cr_assert_eq(ura_task_cancel(s, t), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&sus.last_res), -ECANCELED);
	cr_assert_eq(cancelled_count(s), 1);

	/* A read that waits on an empty pipe: the kernel cancels it. */
	int p[2];
	cr_assert_eq(pipe(p), 0);
	static char buf[8];
	struct th_calls rd = { 0 };
	cr_assert_eq(ura_read(s, p[0], buf, sizeof(buf), 0, th_record, &rd, &t), 0);
	cr_assert_geq(ura_loop_run_once(loop, false), 0);
	cr_assert_eq(ura_task_cancel(s, t), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	int32_t res = atomic_load(&rd.last_res);
	cr_assert(res == -ECANCELED || res == -EINTR, "res %d", res);
	cr_assert_eq(cancelled_count(s), 2);
	close(p[0]);
	close(p[1]);
	/* Its final event before the delegate on this stack goes out of scope. */
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_session_unref(s);
}

Test(session, g10_loop_free_gives_each_session_a_negative_final_error)
{
	struct th_delegate d1 = { 0 }, d2 = { 0 };
	ura_session *a = new_session(&d1);
	ura_session *b = new_session(&d2);
	struct th_calls c = { 0 };
	cr_assert_eq(ura_timeout(a, 60 * SEC, th_record, &c, NULL), 0);
	ura_loop_free(loop);
	cr_assert_eq(atomic_load(&c.terminal), 1, "the live task got no terminal call");
	cr_assert_eq(atomic_load(&c.last_res), -ECANCELED);
	cr_assert_eq(atomic_load(&d1.finals), 1);
	cr_assert_eq(atomic_load(&d2.finals), 1);
	cr_assert_lt(atomic_load(&d1.final_error), 0);
	cr_assert_lt(atomic_load(&d2.final_error), 0);
	ura_session_unref(a);
	ura_session_unref(b);
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
}

Test(session, g10_explicit_invalidation_before_free_keeps_error_zero)
{
	struct th_delegate d = { 0 };
	ura_session *s = new_session(&d);
	cr_assert_eq(ura_timeout(s, 60 * SEC, NULL, NULL, NULL), 0);
	ura_session_invalidate_and_cancel(s);
	ura_loop_free(loop);
	cr_assert_eq(atomic_load(&d.finals), 1);
	cr_assert_eq(atomic_load(&d.final_error), 0);
	ura_session_unref(s);
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
}

Test(session, description_is_copied_and_snprintf_like)
{
	struct th_delegate d = { 0 };
	ura_session *s = new_session(&d);
	char text[] = "uploads to the archive";
	cr_assert_eq(ura_session_set_description(s, text), 0);
	text[0] = 'X';
	char buf[8];
	cr_assert_eq(ura_session_description(s, buf, sizeof(buf)), strlen(text));
	cr_assert_str_eq(buf, "uploads");
	cr_assert_eq(ura_session_description(s, NULL, 0), strlen(text));
	cr_assert_eq(ura_session_set_description(s, NULL), 0);
	cr_assert_eq(ura_session_description(s, buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "");
	/* d lives on this stack: the session must have had its final event before return. */
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&d.finals), 1);
	ura_session_unref(s);
	cr_assert_eq(ura_session_new(NULL, NULL, NULL, &s), -EINVAL);
	cr_assert_eq(ura_session_new(loop, NULL, NULL, NULL), -EINVAL);
}

/* ---- a flush from another thread is bounded at its call (issue 11, item 6) */

struct remote_flush {
	ura_session *s;
	_Atomic bool flushed;
	int r;
};

static void remote_flushed(ura_session *s, void *arg)
{
	(void)s;
	atomic_store(&((struct remote_flush *)arg)->flushed, true);
}

static void *flush_elsewhere(void *arg)
{
	struct remote_flush *rf = arg;
	rf->r = ura_session_flush(rf->s, remote_flushed, rf);
	return NULL;
}

Test(session, flush_from_another_thread_ignores_later_tasks)
{
	for (int shared = 0; shared < 2; shared++) {
		ura_loop *lp;
		cr_assert_eq(ura_loop_new(NULL, &lp), 0);
		struct remote_flush rf = { 0 };
		if (shared)
			rf.s = ura_session_ref(ura_session_shared(lp));
		else
			cr_assert_eq(ura_session_new(lp, NULL, NULL, &rf.s), 0);
		struct th_calls early = { 0 }, late = { 0 };
		ura_task t;
		cr_assert_eq(ura_nop(rf.s, th_record, &early, NULL), 0); /* live at the call */
		pthread_t th;
		cr_assert_eq(pthread_create(&th, NULL, flush_elsewhere, &rf), 0);
		pthread_join(th, NULL); /* the flush call has returned ... */
		cr_assert_eq(rf.r, 0);
		/* ... before this task exists: the flush must not wait for its hour. */
		cr_assert_eq(ura_timeout(rf.s, 3600ull * 1000000000ull, th_record, &late, &t), 0);
		cr_assert(th_run_until(lp, &rf.flushed, 5000),
			  "the flush waited for a task submitted after it returned (shared %d)",
			  shared);
		cr_assert_eq(atomic_load(&early.terminal), 1);
		cr_assert_eq(atomic_load(&late.terminal), 0);
		cr_assert_eq(ura_task_cancel(rf.s, t), 0);
		cr_assert_eq(ura_loop_run(lp), 0);
		cr_assert_eq(atomic_load(&late.terminal), 1);
		ura_session_unref(rf.s);
		ura_loop_free(lp);
	}
}

/* ---- many pending barriers (issue 12, item 4): each runs once, in order, after its
 * own tasks; tasks after them are not delayed and do not delay them */

static void count_done(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)res, (void)flags;
	atomic_fetch_add((_Atomic uint64_t *)arg, 1);
}

struct flush_order {
	_Atomic uint64_t ran;
	_Atomic uint64_t out_of_order;
};

struct flush_order_arg {
	struct flush_order *o;
	uint64_t n;
};

static void flush_in_order(ura_session *s, void *arg)
{
	(void)s;
	struct flush_order_arg *a = arg;
	if (atomic_fetch_add(&a->o->ran, 1) != a->n)
		atomic_fetch_add(&a->o->out_of_order, 1);
}

Test(session, twenty_thousand_flushes_behind_one_task)
{
	enum { FLUSHES = 20000, LATER = 10000 };
	for (int shared = 0; shared < 2; shared++) {
		struct th_delegate d = { 0 };
		ura_session *s = shared ? ura_session_shared(loop) : new_session(&d);
		struct io_uring_sqe sqe;
		memset(&sqe, 0, sizeof(sqe));
		io_uring_prep_nop(&sqe);
		_Atomic int long_done = 0;
		ura_task held;
		cr_assert_eq(ura_submit(s, &sqe, URA_SUBMIT_SUSPENDED, count_end, &long_done, &held), 0);
		struct flush_order o = { 0 };
		struct flush_order_arg *args = calloc(FLUSHES, sizeof(*args));
		for (uint64_t i = 0; i < FLUSHES; i++) {
			args[i] = (struct flush_order_arg){ .o = &o, .n = i };
			cr_assert_eq(ura_session_flush(s, flush_in_order, &args[i]), 0);
		}
		th_spin(loop, 20); /* the loop takes them: all wait for the held task */
		_Atomic uint64_t later_done = 0;
		for (int i = 0; i < LATER; i++)
			cr_assert_eq(ura_nop(s, count_done, &later_done, NULL), 0);
		/* Bounded by a hang guard only: a slow machine (valgrind) just takes longer. */
		cr_assert_eq(th_run_until_count(loop, &later_done, LATER, 60000), LATER,
			     "a later task waited");
		cr_assert_eq(atomic_load(&o.ran), 0, "a flush ran before the task it waits for");
		cr_assert_eq(ura_task_resume(s, held), 0);
		cr_assert_eq(th_run_until_count(loop, &o.ran, FLUSHES, 10000), FLUSHES);
		cr_assert_eq(atomic_load(&o.out_of_order), 0);
		cr_assert_eq(atomic_load(&long_done), 1);
		free(args);
		if (!shared) {
			ura_session_invalidate_and_cancel(s);
			cr_assert_eq(ura_loop_run(loop), 0);
			cr_assert_eq(atomic_load(&d.finals), 1);
			ura_session_unref(s);
		}
	}
}

/* A flush taken while tasks tagged for later flushes are live waits only for its own. */
Test(session, flushes_each_wait_for_their_own_tasks)
{
	struct th_delegate d = { 0 };
	ura_session *s = new_session(&d);
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_nop(&sqe);
	enum { K = 5 };
	ura_task t[K];
	_Atomic int done[K] = { 0 }, flushed[K] = { 0 };
	for (int i = 0; i < K; i++) {
		cr_assert_eq(ura_submit(s, &sqe, URA_SUBMIT_SUSPENDED, count_end, &done[i], &t[i]), 0);
		cr_assert_eq(ura_session_flush(s, set_flag, &flushed[i]), 0);
	}
	th_spin(loop, 20);
	/* Resuming the tasks from the last: flush i runs only once tasks 0..i are done. */
	for (int i = K - 1; i >= 0; i--) {
		cr_assert_eq(ura_task_resume(s, t[i]), 0);
		cr_assert(th_run_until_int(loop, &done[i], 1, 5000));
		th_spin(loop, 10);
		for (int j = 0; j < K; j++)
			cr_assert_eq(atomic_load(&flushed[j]), i == 0,
				     "flush %d after resuming %d..%d", j, i, K - 1);
	}
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_session_unref(s);
}
