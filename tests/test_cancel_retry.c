/*
 * Cancel retries: a per-task ASYNC_CANCEL that misses (the kernel answers -ENOENT while
 * the task lives on) is sent again after a short, growing delay, so the task still gets
 * its terminal call and its session its final event. The miss is made by the fault site
 * URA__FAULT_CANCEL_MISS, which aims a cancel at nothing; the tasks are pipe reads that
 * would otherwise wait forever.
 */
#include <errno.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "fault.h"
#include "helpers.h"
#include "loop.h" /* loop->retry_timers: whether a retry timer is armed */

struct pipe_read {
	int fds[2];
	char buf[8];
	struct th_calls calls;
	ura_task task;
};

/* Starts a read on an empty pipe: it completes only if cancelled (or written to). */
static void start_read(ura_session *s, struct pipe_read *p)
{
	cr_assert_eq(pipe(p->fds), 0);
	int r = ura_read(s, p->fds[0], p->buf, sizeof(p->buf), 0, th_record, &p->calls, &p->task);
	cr_assert_eq(r, 0, "ura_read: %d", r);
}

static void close_pipe(struct pipe_read *p)
{
	close(p->fds[0]);
	close(p->fds[1]);
}

static struct ura_session_stats stats_of(ura_session *s)
{
	struct ura_session_stats st;
	cr_assert_eq(ura_session_stats(s, &st), 0);
	return st;
}

/* A loop, a session with a recording delegate, and one read waiting on an empty pipe. */
struct one_read {
	ura_loop *loop;
	struct th_delegate d;
	ura_session *s;
	struct pipe_read p;
};

static void one_read_start(struct one_read *f)
{
	cr_assert_eq(ura_loop_new(NULL, &f->loop), 0);
	cr_assert_eq(ura_session_new(f->loop, &th_delegate_fns, &f->d, &f->s), 0);
	start_read(f->s, &f->p);
	th_spin(f->loop, 5); /* the read is in the kernel, waiting */
}

static void one_read_end(struct one_read *f)
{
	ura_session_unref(f->s);
	ura_loop_free(f->loop);
	close_pipe(&f->p);
}

Test(cancel_retry, a_missed_task_cancel_is_sent_again)
{
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	ura_session *s = ura_session_shared(loop);
	struct pipe_read p = { 0 };
	start_read(s, &p);
	th_spin(loop, 5); /* the read is in the kernel, waiting */

	ura__fault_arm(URA__FAULT_CANCEL_MISS, 1, 1, 0); /* only the first cancel misses */
	cr_assert_eq(ura_task_cancel(s, p.task), 0);
	uint64_t done = th_run_until_count(loop, &p.calls.terminal, 1, 5000);
	unsigned long missed = ura__fault_injected(URA__FAULT_CANCEL_MISS);
	ura__fault_disarm_all();

	cr_assert_eq(missed, 1, "the first cancel was not made to miss");
	cr_assert_eq(done, 1, "the task never ended after its cancel missed");
	cr_assert_eq(p.calls.calls, 1, "%lu calls", (unsigned long)p.calls.calls);
	cr_assert_eq(p.calls.last_res, -ECANCELED, "res %d", p.calls.last_res);
	struct ura_session_stats st = stats_of(s);
	cr_assert_geq(st.cancel_enoent, 1, "the miss was not counted");
	cr_assert_geq(st.cancel_ok, 1, "the retry did not cancel");
	ura_loop_free(loop);
	close_pipe(&p);
}

/* Several misses in a row: the retry backs off and keeps going until one lands, and the
 * session's final event waits for all of it. */
Test(cancel_retry, repeated_misses_back_off_and_the_session_still_finishes)
{
	enum { TASKS = 8, MISSES = 5 };
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	struct th_delegate d = { 0 };
	ura_session *s;
	cr_assert_eq(ura_session_new(loop, &th_delegate_fns, &d, &s), 0);
	struct pipe_read p[TASKS] = { 0 };
	for (int i = 0; i < TASKS; i++)
		start_read(s, &p[i]);
	th_spin(loop, 5);

	/* The first round of cancels, then the first retries, all miss. */
	ura__fault_arm(URA__FAULT_CANCEL_MISS, 1, 1, TASKS * MISSES - 1);
	ura_session_invalidate_and_cancel(s);
	bool final = th_run_until(loop, &d.final_seen, 10000);
	unsigned long missed = ura__fault_injected(URA__FAULT_CANCEL_MISS);
	ura__fault_disarm_all();

	cr_assert(final, "no final event after %lu missed cancels", missed);
	cr_assert_eq(missed, TASKS * MISSES, "%lu misses injected", missed);
	cr_assert_eq(d.finals, 1);
	cr_assert_eq(d.final_error, 0);
	for (int i = 0; i < TASKS; i++) {
		cr_assert_eq(p[i].calls.terminal, 1, "task %d: %lu terminal calls", i,
			     (unsigned long)p[i].calls.terminal);
		cr_assert_eq(p[i].calls.last_res, -ECANCELED, "task %d: res %d", i,
			     p[i].calls.last_res);
	}
	struct ura_session_stats st = stats_of(s);
	cr_assert_eq(st.cancel_enoent, TASKS * MISSES, "%lu", (unsigned long)st.cancel_enoent);
	cr_assert_eq(st.cancel_ok, TASKS, "%lu", (unsigned long)st.cancel_ok);
	cr_assert_eq(d.calls_after_final, 0);
	ura_session_unref(s);
	ura_loop_free(loop);
	for (int i = 0; i < TASKS; i++)
		close_pipe(&p[i]);
}

/* A cancel racing its task's completion (it may find the task finishing and miss): the
 * task still ends exactly once and the session still finishes. */
Test(cancel_retry, a_cancel_racing_completion_ends_the_task_once)
{
	struct one_read f = { 0 };
	one_read_start(&f);
	/* Data arrives and the cancel is asked for before the loop sees the completion. */
	cr_assert_eq(write(f.p.fds[1], "x", 1), 1);
	ura_session_invalidate_and_cancel(f.s);
	cr_assert(th_run_until(f.loop, &f.d.final_seen, 5000), "no final event");
	cr_assert_eq(f.p.calls.terminal, 1);
	cr_assert(f.p.calls.last_res == 1 || f.p.calls.last_res == -ECANCELED, "res %d",
		  f.p.calls.last_res);
	cr_assert_eq(f.d.finals, 1);
	one_read_end(&f);
}

/* The common miss: the cancel races a task that is completing anyway (a NOP completes
 * during the submit its cancel follows). Its CQE comes with the cancel's, so no retry
 * timer is armed and nothing waits for one. */
Test(cancel_retry, a_miss_on_a_finished_task_arms_no_timer)
{
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	ura_session *s = ura_session_shared(loop);
	for (int i = 0; i < 20; i++) {
		struct th_calls calls = { 0 };
		ura_task t;
		cr_assert_eq(ura_nop(s, th_record, &calls, &t), 0);
		cr_assert_eq(ura_task_cancel(s, t), 0);
		cr_assert_eq(th_run_until_count(loop, &calls.terminal, 1, 5000), 1);
		(void)ura_loop_run_once(loop, false); /* the deferred check of the miss */
		cr_assert_eq(loop->retry_timers, 0, "round %d: a timer for a finished task", i);
		cr_assert_eq(calls.calls, 1);
	}
	struct ura_session_stats st = stats_of(s);
	cr_assert_eq(st.cancel_ok + st.cancel_enoent + st.cancel_ealready, 20);
	ura_loop_free(loop);
}

/* A retry timer is armed (the cancel missed and the read still waits), then the read
 * completes by itself: the task ends once with its data, the timer is removed, and the
 * session still gets its one final event. */
Test(cancel_retry, a_task_ending_by_itself_after_a_miss_ends_once_and_the_session_finishes)
{
	struct one_read f = { 0 };
	one_read_start(&f);
	ura__fault_arm(URA__FAULT_CANCEL_MISS, 1, 1, 1000000); /* every cancel misses */
	ura_session_invalidate_and_cancel(f.s);
	for (int i = 0; i < 1000 && !f.loop->retry_timers; i++)
		(void)ura_loop_run_once(f.loop, false);
	bool armed = f.loop->retry_timers == 1;
	cr_assert_eq(write(f.p.fds[1], "x", 1), 1);
	bool final = th_run_until(f.loop, &f.d.final_seen, 5000);
	ura__fault_disarm_all();
	cr_assert(armed, "no retry timer after the miss");
	cr_assert(final, "no final event");
	cr_assert_eq(f.p.calls.terminal, 1);
	cr_assert_eq(f.p.calls.last_res, 1, "res %d", f.p.calls.last_res);
	cr_assert_eq(f.d.finals, 1);
	cr_assert_eq(f.loop->retry_timers, 0);
	one_read_end(&f);
}
