/*
 * ura_loop_free while other threads use what they hold (issue 11, item 1). Threads that
 * hold session references keep submitting, cancelling, reading task states, flushing,
 * invalidating and posting while the loop thread runs and then frees the loop. Every
 * call must answer 0 or the documented error (-ESHUTDOWN, -ENOENT, -EALREADY, -ENOMEM)
 * and touch nothing freed: ASan and TSan builds catch a read of the freed loop or the
 * unmapped registry. Built twice, like test_stress.c.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef URA_STANDALONE
#include "standalone.h"
#else
#include <criterion/criterion.h>
#endif

#include "fault.h"
#include "helpers.h"

enum { CALLERS = 3, ROUNDS = 12, HANDLES = 64 };

struct race {
	ura_loop *loop;
	ura_session *own, *shared; /* references the callers hold */
	ura_conn *a, *b;           /* a connected pair, both held */
	ura_conn *idle;            /* never activated before the free */
	int idle_peer;
	_Atomic uint64_t sends_with_reply, replies;
	_Atomic bool go, freed, stop;
	_Atomic uint64_t calls, calls_after_free, terminal;
	_Atomic ura_task recent[HANDLES]; /* handles the callers cancel and read */
};

static void count_terminal(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)res;
	struct race *r = arg;
	if (!(flags & IORING_CQE_F_MORE))
		atomic_fetch_add(&r->terminal, 1);
}

static void flushed(ura_session *s, void *arg)
{
	(void)s, (void)arg;
}

static void posted(void *arg)
{
	(void)arg;
}

static void reply_once(ura_conn *c, const struct ura_event *ev, void *arg)
{
	(void)c, (void)ev;
	atomic_fetch_add(&((struct race *)arg)->replies, 1);
}

static void ignore_event(ura_conn *c, const struct ura_event *ev, void *arg)
{
	(void)c, (void)ev, (void)arg;
}

static void *activate_late(void *arg)
{
	struct race *r = arg;
	ura_conn_activate(r->idle);
	cr_assert_eq(ura_conn_resume(r->idle), -EINVAL);
	ura_msg *m;
	cr_assert_eq(ura_msg_new("x", 1, &m), 0);
	cr_assert_eq(ura_conn_send(r->idle, m), -ESHUTDOWN);
	ura_msg_unref(m);
	return NULL;
}

static bool allowed(int r)
{
	return r == 0 || r == -ESHUTDOWN || r == -ENOENT || r == -EALREADY || r == -ENOMEM ||
	       r == -EAGAIN;
}

/* One call of a caller's round-robin; asserts its answer. */
static void one_call(struct race *r, unsigned i, unsigned self)
{
	ura_session *s = (i & 1) ? r->own : r->shared;
	ura_task *slot = (ura_task *)&r->recent[(i + self * 7) % HANDLES];
	ura_task t = atomic_load((_Atomic ura_task *)slot);
	int res;
	if (i % 4 == 3) { /* the connections' calls */
		ura_msg *m;
		cr_assert_eq(ura_msg_new("x", 1, &m), 0);
		ura_conn *c = (i & 4) ? r->a : r->b;
		if (i % 3 == 0) {
			res = ura_conn_send_with_reply(c, m, reply_once, r);
			if (res == 0)
				atomic_fetch_add(&r->sends_with_reply, 1);
		} else {
			res = ura_conn_send(c, m);
		}
		cr_assert(res == 0 || res == -ESHUTDOWN || res == -ENOMEM, "send: %d", res);
		ura_msg_unref(m);
		if (i % 40 == 7) {
			cr_assert_eq(ura_conn_suspend(c), 0);
			res = ura_conn_resume(c);
			cr_assert(res == 0 || res == -ENOMEM, "resume: %d", res);
		}
		if (i % 200 == 11)
			ura_conn_cancel(r->b);
		atomic_fetch_add(&r->calls, 1);
		if (atomic_load(&r->freed))
			atomic_fetch_add(&r->calls_after_free, 1);
		return;
	}
	switch (i % 6) {
	case 0: {
		ura_task nt = 0;
		res = ura_timeout(s, 50 * 1000 * 1000, count_terminal, r, &nt);
		cr_assert(allowed(res) && res != -ENOENT, "ura_timeout: %d", res);
		if (res == 0)
			atomic_store((_Atomic ura_task *)slot, nt);
		break;
	}
	case 1:
		res = ura_task_cancel(s, t);
		cr_assert(allowed(res), "ura_task_cancel: %d", res);
		break;
	case 2:
		res = ura_task_state(s, t);
		cr_assert(res >= URA_TASK_RUNNING && res <= URA_TASK_COMPLETED, "state %d", res);
		break;
	case 3:
		res = ura_session_flush(s, flushed, NULL);
		cr_assert(res == 0 || res == -ESHUTDOWN || res == -ENOMEM, "flush: %d", res);
		break;
	case 4:
		res = ura_nop(s, count_terminal, r, NULL);
		cr_assert(res == 0 || res == -ESHUTDOWN || res == -ENOMEM || res == -EAGAIN,
			  "nop: %d", res);
		break;
	default:
		res = ura_loop_post(r->loop, posted, NULL);
		cr_assert(res == 0 || res == -ESHUTDOWN || res == -ENOMEM, "post: %d", res);
		if (i % 60 == 5)
			ura_session_finish_tasks_and_invalidate(r->own);
		break;
	}
	atomic_fetch_add(&r->calls, 1);
	if (atomic_load(&r->freed))
		atomic_fetch_add(&r->calls_after_free, 1);
}

struct caller {
	struct race *r;
	unsigned self;
};

static void *caller_main(void *arg)
{
	struct caller *c = arg;
	while (!atomic_load(&c->r->go))
		sched_yield();
	for (unsigned i = 0; !atomic_load(&c->r->stop); i++)
		one_call(c->r, i, c->self);
	return NULL;
}

static void wait_calls(struct race *r, uint64_t more)
{
	uint64_t want = atomic_load(&r->calls) + more;
	for (uint64_t t0 = th_now_ms(); atomic_load(&r->calls) < want && th_now_ms() - t0 < 5000;)
		sched_yield();
}

static void one_round(unsigned round)
{
	struct race *r = calloc(1, sizeof(*r));
	cr_assert_not_null(r);
	cr_assert_eq(ura_loop_new(NULL, &r->loop), 0);
	cr_assert_eq(ura_session_new(r->loop, NULL, NULL, &r->own), 0);
	r->shared = ura_session_ref(ura_session_shared(r->loop));
	cr_assert_eq(th_conn_pair(r->loop, ignore_event, r, &r->a, ignore_event, r, &r->b), 0);
	ura_conn_activate(r->a);
	ura_conn_activate(r->b);
	cr_assert_eq(th_conn_adopt(r->loop, ignore_event, r, &r->idle, &r->idle_peer), 0);
	pthread_t th[CALLERS];
	struct caller cs[CALLERS];
	for (unsigned i = 0; i < CALLERS; i++) {
		cs[i] = (struct caller){ .r = r, .self = i };
		cr_assert_eq(pthread_create(&th[i], NULL, caller_main, &cs[i]), 0);
	}
	atomic_store(&r->go, true);
	/* Some loop work while the callers run, then the free in the middle of their calls
	 * (the round number varies how long the loop runs first). */
	unsigned spins = 1 + round % 4;
	for (unsigned i = 0; i < spins; i++)
		(void)ura_loop_run_once(r->loop, false);
	wait_calls(r, 200);
	/* Odd rounds: sends from other threads stall between their checks (fault.h), so
	 * the free lands in the middle of some. */
#ifdef URA_FAULT_INJECTION
	if (round & 1)
		ura__fault_arm(URA__FAULT_SEND_STALL, 1, 1, 1000000);
#endif
	ura_loop_free(r->loop);
	atomic_store(&r->freed, true);
	wait_calls(r, 300); /* calls after the free must be refused cleanly too */
	atomic_store(&r->stop, true);
	for (unsigned i = 0; i < CALLERS; i++)
		pthread_join(th[i], NULL);
#ifdef URA_FAULT_INJECTION
	ura__fault_disarm_all();
#endif
	cr_assert_gt(atomic_load(&r->calls_after_free), 0, "no call raced the free");
	cr_assert(!ura_session_is_valid(r->own));
	cr_assert_eq(ura_nop(r->shared, count_terminal, r, NULL), -ESHUTDOWN);
	cr_assert_eq(ura_task_cancel(r->own, atomic_load(&r->recent[0])), -ENOENT);
	/* A connection the free ended before it was ever activated: activating it from
	 * another thread now must do nothing (the loop is gone). */
	pthread_t late;
	cr_assert_eq(pthread_create(&late, NULL, activate_late, r), 0);
	pthread_join(late, NULL);
	close(r->idle_peer);
	ura_conn_unref(r->idle);
	cr_assert_eq(atomic_load(&r->replies), atomic_load(&r->sends_with_reply),
		     "a reply handler was lost or called twice");
	char *why = ura_conn_copy_invalidation_reason(r->a);
	cr_assert_not_null(why, "a connection the free ended has no reason");
	free(why);
	ura_session_unref(r->own);
	ura_conn_unref(r->a);
	ura_conn_unref(r->b);
	ura_session_unref(r->shared); /* the last reference: the loop object goes now */
	free(r);
}

Test(loop_free, calls_racing_the_free_answer_shutdown, .timeout = 120)
{
	for (unsigned round = 0; round < ROUNDS; round++)
		one_round(round);
}

/* ura_loop_free inside a callback is refused (issue 11, item 4): the loop goes on. */
static void free_inside(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)res, (void)flags;
	ura_loop *loop = arg;
	ura_loop_free(loop); /* refused: the iteration running this call still uses it */
}

Test(loop_free, inside_a_callback_is_refused)
{
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	ura_session *s = ura_session_shared(loop);
	for (int i = 0; i < 8; i++)
		cr_assert_eq(ura_nop(s, free_inside, loop, NULL), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	/* The loop still works after the refused frees. */
	struct race r = { 0 };
	cr_assert_eq(ura_nop(s, count_terminal, &r, NULL), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&r.terminal), 1);
	ura_loop_free(loop);
}
