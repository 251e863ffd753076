/*
 * Overload (issue 12): work other threads queue is bounded (ura_loop_config.max_queued:
 * past it ura_submit answers -EAGAIN and nothing accepted is dropped), and an iteration
 * runs a bounded slice of commands so completions keep flowing under a flood.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"

struct flood {
	ura_session *s;
	unsigned n;
	unsigned flags;
	struct th_calls *calls;
	int *res;
	ura_task *handles;
};

static void *submit_all(void *arg)
{
	struct flood *f = arg;
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_nop(&sqe);
	for (unsigned i = 0; i < f->n; i++)
		f->res[i] = ura_submit(f->s, &sqe, f->flags, th_record, &f->calls[i],
				       f->handles ? &f->handles[i] : NULL);
	return NULL;
}

static unsigned flood_from_thread(struct flood *f)
{
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, submit_all, f), 0);
	pthread_join(th, NULL);
	unsigned accepted = 0;
	for (unsigned i = 0; i < f->n; i++) {
		cr_assert(f->res[i] == 0 || f->res[i] == -EAGAIN, "submit %u: %d", i, f->res[i]);
		accepted += f->res[i] == 0;
	}
	return accepted;
}

Test(overload, remote_submits_past_the_bound_answer_eagain_and_none_is_lost)
{
	struct ura_loop_config cfg = { .max_queued = 100 };
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(&cfg, &loop), 0);
	enum { N = 1000 };
	struct flood f = { .s = ura_session_shared(loop), .n = N };
	f.calls = calloc(N, sizeof(*f.calls));
	f.res = calloc(N, sizeof(*f.res));
	/* The loop does not run: the first 100 are queued, the rest refused. */
	cr_assert_eq(flood_from_thread(&f), 100);
	for (unsigned i = 0; i < N; i++)
		cr_assert_eq(f.res[i], i < 100 ? 0 : -EAGAIN, "submit %u: %d", i, f.res[i]);
	cr_assert_eq(ura_loop_run(loop), 0);
	for (unsigned i = 0; i < N; i++)
		cr_assert_eq(atomic_load(&f.calls[i].terminal), i < 100 ? 1u : 0u, "task %u", i);
	/* Once they are in the ring the bound is free again. */
	memset(f.calls, 0, N * sizeof(*f.calls));
	cr_assert_eq(flood_from_thread(&f), 100);
	cr_assert_eq(ura_loop_run(loop), 0);
	/* On the loop thread there is no such bound: the caller is the one who waits. */
	for (unsigned i = 0; i < N; i++)
		cr_assert_eq(ura_nop(f.s, th_record, &f.calls[i], NULL), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	free(f.calls);
	free(f.res);
	ura_loop_free(loop);
}

Test(overload, suspended_and_cancelled_tasks_leave_the_bound)
{
	struct ura_loop_config cfg = { .max_queued = 50 };
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(&cfg, &loop), 0);
	enum { N = 50 };
	struct flood f = { .s = ura_session_shared(loop), .n = N, .flags = URA_SUBMIT_SUSPENDED };
	f.calls = calloc(2 * N, sizeof(*f.calls));
	f.res = calloc(N, sizeof(*f.res));
	f.handles = calloc(N, sizeof(*f.handles));
	cr_assert_eq(flood_from_thread(&f), N);
	/* Full: one more is refused until the loop has taken the suspended ones. */
	cr_assert_eq(flood_from_thread(&(struct flood){ .s = f.s, .n = 1, .calls = f.calls + N,
							.res = f.res }), 0);
	for (int i = 0; i < 3; i++)
		(void)ura_loop_run_once(loop, false);
	struct flood g = { .s = f.s, .n = N, .flags = URA_SUBMIT_SUSPENDED,
			   .calls = f.calls + N, .res = calloc(N, sizeof(int)),
			   .handles = calloc(N, sizeof(ura_task)) };
	cr_assert_eq(flood_from_thread(&g), N, "suspended tasks still held the bound");
	/* Cancelled before the loop took them: they end without reaching the ring and give
	 * their place back too. */
	for (unsigned i = 0; i < N; i++)
		cr_assert_eq(ura_task_cancel(g.s, g.handles[i]), 0);
	for (unsigned i = 0; i < N; i++)
		cr_assert_eq(ura_task_resume(f.s, f.handles[i]), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	for (unsigned i = 0; i < 2 * N; i++)
		cr_assert_eq(atomic_load(&f.calls[i].terminal), 1, "task %u", i);
	cr_assert_eq(flood_from_thread(&f), N, "ended tasks still held the bound");
	for (unsigned i = 0; i < N; i++)
		cr_assert_eq(ura_task_cancel(f.s, f.handles[i]), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	free(g.res);
	free(g.handles);
	free(f.calls);
	free(f.res);
	free(f.handles);
	ura_loop_free(loop);
}

struct posted_order {
	_Atomic unsigned ran;
	_Atomic unsigned out_of_order;
};

struct post_arg {
	struct posted_order *o;
	unsigned n;
};

static void posted_in_order(void *arg)
{
	struct post_arg *a = arg;
	if (atomic_fetch_add(&a->o->ran, 1) != a->n)
		atomic_fetch_add(&a->o->out_of_order, 1);
}

struct poster {
	ura_loop *loop;
	struct post_arg *args;
	unsigned n;
};

static void *post_all(void *arg)
{
	struct poster *p = arg;
	for (unsigned i = 0; i < p->n; i++)
		cr_assert_eq(ura_loop_post(p->loop, posted_in_order, &p->args[i]), 0);
	return NULL;
}

/* A flood of commands is run a slice per iteration, in order, none lost. */
Test(overload, commands_run_a_bounded_slice_per_iteration)
{
	struct ura_loop_config cfg = { .sq_entries = 64 };
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(&cfg, &loop), 0);
	enum { N = 5000 };
	struct posted_order o = { 0 };
	struct post_arg *args = calloc(N, sizeof(*args));
	for (unsigned i = 0; i < N; i++)
		args[i] = (struct post_arg){ .o = &o, .n = i };
	struct poster p = { .loop = loop, .args = args, .n = N };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, post_all, &p), 0);
	pthread_join(th, NULL);
	(void)ura_loop_run_once(loop, false);
	unsigned first = atomic_load(&o.ran);
	cr_assert_gt(first, 0);
	cr_assert_lt(first, N, "one iteration ran the whole flood of %u commands", N);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&o.ran), N);
	cr_assert_eq(atomic_load(&o.out_of_order), 0);
	/* Left over at the free: a second flood, one slice run, then the free. */
	atomic_store(&o.ran, 0);
	cr_assert_eq(pthread_create(&th, NULL, post_all, &p), 0);
	pthread_join(th, NULL);
	(void)ura_loop_run_once(loop, false);
	ura_loop_free(loop); /* the rest is dropped with the loop, nothing leaks */
	free(args);
}

Test(overload, max_queued_is_validated)
{
	ura_loop *loop;
	struct ura_loop_config cfg = { .max_queued = (1u << 24) + 1 };
	cr_assert_eq(ura_loop_new(&cfg, &loop), -EINVAL);
	cfg.max_queued = 1u << 24;
	cr_assert_eq(ura_loop_new(&cfg, &loop), 0);
	ura_loop_free(loop);
}
