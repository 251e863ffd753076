/*
 * Stress: the concurrency guarantees under many threads, bounded in time. Built twice:
 * with Criterion (ASan) and standalone under ThreadSanitizer. Each checks one terminal
 * call per accepted task, one final event per session, and no callback after it.
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

#include "helpers.h"

#define SEC 1000000000ull

/* A task record shared with its callback. */
struct rec {
	_Atomic uint32_t terminal;
	_Atomic uint32_t after_final;
	_Atomic int32_t res;
};

struct world {
	ura_loop *loop;
	ura_session *s;
	struct th_delegate d;
	_Atomic bool go, stop_submitting;
	_Atomic uint64_t accepted, refused, terminal_total, late;
};

static void rec_cb(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)t;
	struct rec *r = arg;
	struct th_delegate *d = NULL;
	(void)s;
	(void)d;
	if (!(flags & IORING_CQE_F_MORE))
		atomic_fetch_add(&r->terminal, 1);
	atomic_store(&r->res, res);
}

/* ---- submitters racing an invalidation (guarantees 1, 2, 5) */

enum { SUBMITTERS = 3, PER_SUBMITTER = 3000 };

struct submitter {
	struct world *w;
	struct rec *recs;
	uint8_t *accepted;
	int mode;
};

static void *submit_until_refused(void *arg)
{
	struct submitter *sb = arg;
	while (!atomic_load(&sb->w->go))
		;
	for (int i = 0; i < PER_SUBMITTER; i++) {
		int r;
		if (i % 3 == 0)
			r = ura_timeout(sb->w->s, 60 * SEC, rec_cb, &sb->recs[i], NULL);
		else
			r = ura_nop(sb->w->s, rec_cb, &sb->recs[i], NULL);
		if (r == 0) {
			sb->accepted[i] = 1;
			atomic_fetch_add(&sb->w->accepted, 1);
		} else {
			cr_assert_eq(r, -ESHUTDOWN, "submit failed with %d", r);
			atomic_fetch_add(&sb->w->refused, 1);
		}
	}
	return NULL;
}

static void *invalidate_soon(void *arg)
{
	struct world *w = arg;
	while (!atomic_load(&w->go))
		;
	usleep(1000);
	ura_session_invalidate_and_cancel(w->s);
	return NULL;
}

static void check_final_order(ura_session *s, ura_task t, int32_t res, void *ctx)
{
	(void)s, (void)t, (void)res;
	struct world *w = ctx;
	if (atomic_load(&w->d.final_seen))
		atomic_fetch_add(&w->late, 1);
	atomic_fetch_add(&w->d.completions, 1);
}

static void world_final(ura_session *s, int error, void *ctx)
{
	(void)s;
	struct world *w = ctx;
	atomic_store(&w->d.final_error, error);
	atomic_fetch_add(&w->d.finals, 1);
	atomic_store(&w->d.final_seen, true);
}

static const struct ura_session_delegate world_fns = {
	.task_did_complete = check_final_order,
	.did_become_invalid = world_final,
};

Test(stress, submits_racing_invalidation_are_refused_or_finished, .timeout = 300)
{
	for (int round = 0; round < 6; round++) {
		struct world w;
		memset(&w, 0, sizeof(w));
		cr_assert_eq(ura_loop_new(NULL, &w.loop), 0);
		cr_assert_eq(ura_session_new(w.loop, &world_fns, &w, &w.s), 0);
		struct submitter sb[SUBMITTERS];
		pthread_t th[SUBMITTERS + 1];
		for (int i = 0; i < SUBMITTERS; i++) {
			sb[i].w = &w;
			sb[i].recs = calloc(PER_SUBMITTER, sizeof(struct rec));
			sb[i].accepted = calloc(PER_SUBMITTER, 1);
			pthread_create(&th[i], NULL, submit_until_refused, &sb[i]);
		}
		pthread_create(&th[SUBMITTERS], NULL, invalidate_soon, &w);
		atomic_store(&w.go, true);
		uint64_t end = th_now_ms() + 60000;
		while (!atomic_load(&w.d.final_seen) && th_now_ms() < end)
			ura_loop_run_once(w.loop, false);
		for (int i = 0; i <= SUBMITTERS; i++)
			pthread_join(th[i], NULL);
		th_spin(w.loop, 5);
		cr_assert_eq(atomic_load(&w.d.finals), 1, "round %d: %lu final events", round,
			     (unsigned long)atomic_load(&w.d.finals));
		cr_assert_eq(atomic_load(&w.late), 0, "completion after the final event");
		uint64_t accepted = 0;
		for (int i = 0; i < SUBMITTERS; i++) {
			for (int k = 0; k < PER_SUBMITTER; k++) {
				uint32_t n = atomic_load(&sb[i].recs[k].terminal);
				if (sb[i].accepted[k]) {
					accepted++;
					cr_assert_eq(n, 1, "accepted task %d/%d: %u terminal calls", i, k, n);
				} else {
					cr_assert_eq(n, 0, "refused task %d/%d was called", i, k);
				}
			}
			free(sb[i].recs);
			free(sb[i].accepted);
		}
		cr_assert_eq(atomic_load(&w.d.completions), accepted);
		if (round == 0)
			cr_log_info("accepted %lu refused %lu", (unsigned long)accepted,
				    (unsigned long)atomic_load(&w.refused));
		ura_session_unref(w.s);
		ura_loop_free(w.loop);
	}
}

/* ---- many threads invalidating one session at once (guarantee 3) */

struct inval {
	ura_session *s;
	_Atomic bool *go;
	int which;
};

static void *invalidate_many(void *arg)
{
	struct inval *iv = arg;
	while (!atomic_load(iv->go))
		;
	for (int i = 0; i < 200; i++) {
		if ((i + iv->which) % 2)
			ura_session_finish_tasks_and_invalidate(iv->s);
		else
			ura_session_invalidate_and_cancel(iv->s);
	}
	return NULL;
}

Test(stress, many_threads_invalidating_one_session_one_final, .timeout = 300)
{
	enum { THREADS = 6, ROUNDS = 40 };
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	for (int round = 0; round < ROUNDS; round++) {
		struct world w;
		memset(&w, 0, sizeof(w));
		w.loop = loop;
		cr_assert_eq(ura_session_new(loop, &world_fns, &w, &w.s), 0);
		static struct rec recs[64];
		memset(recs, 0, sizeof(recs));
		for (int i = 0; i < 64; i++)
			cr_assert_eq(ura_timeout(w.s, (i % 2) ? 60 * SEC : 1000, rec_cb, &recs[i], NULL), 0);
		_Atomic bool go = false;
		struct inval iv[THREADS];
		pthread_t th[THREADS];
		for (int i = 0; i < THREADS; i++) {
			iv[i] = (struct inval){ w.s, &go, i };
			pthread_create(&th[i], NULL, invalidate_many, &iv[i]);
		}
		atomic_store(&go, true);
		uint64_t end = th_now_ms() + 30000;
		while (!atomic_load(&w.d.final_seen) && th_now_ms() < end)
			ura_loop_run_once(loop, false);
		for (int i = 0; i < THREADS; i++)
			pthread_join(th[i], NULL);
		th_spin(loop, 2);
		cr_assert_eq(atomic_load(&w.d.finals), 1, "round %d: %lu finals", round,
			     (unsigned long)atomic_load(&w.d.finals));
		for (int i = 0; i < 64; i++)
			cr_assert_eq(atomic_load(&recs[i].terminal), 1, "task %d", i);
		cr_assert_eq(atomic_load(&w.late), 0);
		ura_session_unref(w.s);
	}
	ura_loop_free(loop);
}

/* ---- cancel from other threads racing completion (tasks, guarantee "exactly one") */

enum { RACE_TASKS = 4000 };

struct racer {
	ura_session *s;
	ura_task *handles;
	_Atomic uint32_t *published;
	_Atomic uint64_t ok, enoent, ealready;
};

static void *cancel_all_published(void *arg)
{
	struct racer *r = arg;
	for (int i = 0; i < RACE_TASKS; i++) {
		while (!atomic_load(&r->published[i]))
			;
		int rc = ura_task_cancel(r->s, r->handles[i]);
		if (rc == 0)
			atomic_fetch_add(&r->ok, 1);
		else if (rc == -ENOENT)
			atomic_fetch_add(&r->enoent, 1);
		else if (rc == -EALREADY)
			atomic_fetch_add(&r->ealready, 1);
		else
			cr_assert(false, "cancel returned %d", rc);
		(void)ura_task_state(r->s, r->handles[i]);
	}
	return NULL;
}

Test(stress, cancels_from_other_threads_racing_completion, .timeout = 300)
{
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	ura_session *s;
	struct th_delegate d = { 0 };
	cr_assert_eq(ura_session_new(loop, &th_delegate_fns, &d, &s), 0);
	struct rec *recs = calloc(RACE_TASKS, sizeof(*recs));
	struct racer r = { .s = s };
	r.handles = calloc(RACE_TASKS, sizeof(ura_task));
	r.published = calloc(RACE_TASKS, sizeof(*r.published));
	pthread_t th[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, cancel_all_published, &r);
	for (int i = 0; i < RACE_TASKS; i++) {
		int rc = (i % 2) ? ura_nop(s, rec_cb, &recs[i], &r.handles[i])
				 : ura_timeout(s, (i % 4) ? 60 * SEC : 100000, rec_cb, &recs[i],
					       &r.handles[i]);
		cr_assert_eq(rc, 0);
		atomic_store(&r.published[i], 1);
		if (i % 16 == 0)
			ura_loop_run_once(loop, false);
	}
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	uint64_t end = th_now_ms() + 60000;
	while (atomic_load(&d.completions) < RACE_TASKS && th_now_ms() < end)
		ura_loop_run_once(loop, false);
	for (int i = 0; i < RACE_TASKS; i++) {
		cr_assert_eq(atomic_load(&recs[i].terminal), 1, "task %d: %u terminal calls", i,
			     atomic_load(&recs[i].terminal));
		int32_t res = atomic_load(&recs[i].res);
		cr_assert(res == 0 || res == -ETIME || res == -ECANCELED || res == -EINTR,
			  "task %d res %d", i, res);
	}
	cr_log_info("cancel ok %lu, enoent %lu, ealready %lu", (unsigned long)atomic_load(&r.ok),
		    (unsigned long)atomic_load(&r.enoent), (unsigned long)atomic_load(&r.ealready));
	cr_assert_eq(atomic_load(&r.ok) + atomic_load(&r.enoent) + atomic_load(&r.ealready),
		     2 * RACE_TASKS);
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&d.finals), 1);
	ura_session_unref(s);
	ura_loop_free(loop);
	free(recs);
	free(r.handles);
	free((void *)r.published);
}

/* ---- 100,000 live tasks cancelled through a CQ far smaller (guarantees 2, 3) */

Test(stress, hundred_thousand_live_tasks_cancelled_with_small_cq, .timeout = 300)
{
	enum { N = 100000 };
	struct ura_loop_config cfg = { .sq_entries = 128, .cq_entries = 256 };
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(&cfg, &loop), 0);
	ura_session *s;
	struct th_delegate d = { 0 };
	cr_assert_eq(ura_session_new(loop, &th_delegate_fns, &d, &s), 0);
	struct rec *recs = calloc(N, sizeof(*recs));
	for (int i = 0; i < N; i++) {
		cr_assert_eq(ura_timeout(s, 600 * SEC, rec_cb, &recs[i], NULL), 0);
		if (i % 1024 == 0)
			ura_loop_run_once(loop, false);
	}
	/* Let everything reach the kernel. */
	struct ura_session_stats st;
	for (int i = 0; i < 1000; i++)
		ura_loop_run_once(loop, false);
	ura_session_invalidate_and_cancel(s);
	uint64_t end = th_now_ms() + 120000;
	while (!atomic_load(&d.final_seen) && th_now_ms() < end)
		ura_loop_run_once(loop, true);
	cr_assert_eq(atomic_load(&d.finals), 1);
	for (int i = 0; i < N; i++)
		cr_assert_eq(atomic_load(&recs[i].terminal), 1, "task %d: %u terminal calls", i,
			     atomic_load(&recs[i].terminal));
	ura_session_stats(s, &st);
	cr_log_info("cancel_ok %lu enoent %lu, %.1f ms to the final event",
		    (unsigned long)st.cancel_ok, (unsigned long)st.cancel_enoent,
		    st.invalidate_to_final_ns / 1e6);
	cr_assert_eq(st.completed, N);
	cr_assert_eq(atomic_load(&d.calls_after_final), 0);
	ura_session_unref(s);
	ura_loop_free(loop);
	free(recs);
}

/* ---- the shared session's registry walks racing other threads' submits and cancels
 * (guarantees 7 and 8 on a session without a task list, session_walk.c) */

enum { WALK_THREADS = 3, WALK_PER_THREAD = 10000, WALK_N = WALK_THREADS * WALK_PER_THREAD };

struct walk_world {
	ura_session *s;
	struct rec *recs;
	ura_task *handles;
	_Atomic uint32_t *published;
	_Atomic int submitters_done;
	_Atomic uint64_t flushes_answered, gets_answered;
};

struct walk_submitter {
	struct walk_world *w;
	int first; /* its tasks: first .. first + WALK_PER_THREAD - 1 */
};

static void *walk_submit(void *arg)
{
	struct walk_submitter *sb = arg;
	struct walk_world *w = sb->w;
	for (int i = sb->first; i < sb->first + WALK_PER_THREAD; i++) {
		/* Odd: nops; even: timeouts, a quarter of them short, all cancelled below. */
		int rc = (i % 2) ? ura_nop(w->s, rec_cb, &w->recs[i], &w->handles[i])
				 : ura_timeout(w->s, (i % 4) ? 60 * SEC : 100000, rec_cb,
					       &w->recs[i], &w->handles[i]);
		cr_assert_eq(rc, 0, "submit %d: %d", i, rc);
		atomic_store(&w->published[i], 1);
	}
	atomic_fetch_add(&w->submitters_done, 1);
	return NULL;
}

static void *walk_cancel_timeouts(void *arg)
{
	struct walk_world *w = arg;
	for (int i = 0; i < WALK_N; i += 2) {
		while (!atomic_load(&w->published[i]))
			;
		int rc = ura_task_cancel(w->s, w->handles[i]);
		cr_assert(rc == 0 || rc == -ENOENT || rc == -EALREADY, "cancel: %d", rc);
	}
	return NULL;
}

static void walk_flushed(ura_session *s, void *arg)
{
	(void)s;
	atomic_fetch_add(&((struct walk_world *)arg)->flushes_answered, 1);
}

static void walk_listed(ura_session *s, const ura_task *t, size_t n, void *arg)
{
	(void)s, (void)t, (void)n;
	atomic_fetch_add(&((struct walk_world *)arg)->gets_answered, 1);
}

static void walk_round(void)
{
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	struct walk_world w = { .s = ura_session_shared(loop) };
	w.recs = calloc(WALK_N, sizeof(*w.recs));
	w.handles = calloc(WALK_N, sizeof(ura_task));
	w.published = calloc(WALK_N, sizeof(*w.published));
	struct walk_submitter sb[WALK_THREADS];
	pthread_t th[WALK_THREADS + 1];
	for (int i = 0; i < WALK_THREADS; i++) {
		sb[i] = (struct walk_submitter){ &w, i * WALK_PER_THREAD };
		pthread_create(&th[i], NULL, walk_submit, &sb[i]);
	}
	pthread_create(&th[WALK_THREADS], NULL, walk_cancel_timeouts, &w);
	/* While they run, the loop walks the shared session's tasks over and over. */
	uint64_t asked = 0;
	uint64_t end = th_now_ms() + 120000;
	while (atomic_load(&w.submitters_done) < WALK_THREADS && th_now_ms() < end) {
		cr_assert_eq(ura_session_flush(w.s, walk_flushed, &w), 0);
		cr_assert_eq(ura_session_get_all_tasks(w.s, walk_listed, &w), 0);
		asked++;
		ura_loop_run_once(loop, false);
	}
	for (int i = 0; i <= WALK_THREADS; i++)
		pthread_join(th[i], NULL);
	/* Every task ends (nops, short or cancelled timeouts), so every flush answers; the
	 * last one, asked after every submit, waits for all of them. */
	cr_assert_eq(ura_session_flush(w.s, walk_flushed, &w), 0);
	cr_assert_eq(ura_session_get_all_tasks(w.s, walk_listed, &w), 0);
	asked++;
	while ((atomic_load(&w.flushes_answered) < asked ||
		atomic_load(&w.gets_answered) < asked) && th_now_ms() < end)
		ura_loop_run_once(loop, false);
	cr_log_info("%lu flushes and get_all_tasks during the race", (unsigned long)asked);
	cr_assert_eq(atomic_load(&w.gets_answered), asked, "get_all_tasks answers");
	cr_assert_eq(atomic_load(&w.flushes_answered), asked, "flush answers");
	for (int i = 0; i < WALK_N; i++)
		cr_assert_eq(atomic_load(&w.recs[i].terminal), 1, "task %d: %u terminal calls", i,
			     atomic_load(&w.recs[i].terminal));
	ura_loop_free(loop);
	free(w.recs);
	free(w.handles);
	free((void *)w.published);
}

/* Rounds: how much of a round the loop spends racing the submitters depends on the
 * scheduler (2 cores, 5 threads), so a few rounds make sure some of them overlap. */
Test(stress, shared_session_walks_racing_other_threads, .timeout = 300)
{
	for (int round = 0; round < 5; round++)
		walk_round();
}

/* ---- the wakeup: a loop that sleeps between sporadic submits from other threads never
 * misses one (loop.c "Wakeup": producers write the eventfd only while it sleeps) */

struct pinger {
	ura_loop *loop;
	_Atomic uint64_t done;
	_Atomic bool quit, lost, finished;
	uint64_t sent;
};

static void ping_done(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)res, (void)flags;
	atomic_fetch_add(&((struct pinger *)arg)->done, 1);
}

static void *ping_main(void *arg)
{
	struct pinger *p = arg;
	ura_session *sh = ura_session_shared(p->loop);
	/* 20000 round trips, or as many as 10 s allow (valgrind is slow): the check is
	 * that none is lost, not how many fit. */
	uint64_t start = th_now_ms();
	for (unsigned i = 0; i < 20000 && !atomic_load(&p->quit) && th_now_ms() - start < 10000;
	     i++) {
		/* One at a time: each finds the loop idle, most often asleep in the kernel. */
		uint64_t want = atomic_load(&p->done) + 1;
		int r;
		while ((r = ura_nop(sh, ping_done, p, NULL)) == -EAGAIN)
			sched_yield();
		cr_assert_eq(r, 0);
		p->sent++;
		for (uint64_t t0 = th_now_ms(); atomic_load(&p->done) < want;) {
			if (atomic_load(&p->quit))
				return NULL;
			if (th_now_ms() - t0 > 10000) { /* lost: stop the loop, which then fails */
				atomic_store(&p->lost, true);
				ura_loop_stop(p->loop);
				return NULL;
			}
			if (i % 3 == 0)
				sched_yield();
		}
	}
	atomic_store(&p->finished, true);
	ura_loop_stop(p->loop); /* wakes the loop to see it */
	return NULL;
}

Test(stress, sporadic_submits_always_wake_the_sleeping_loop, .timeout = 300)
{
	struct pinger p = { 0 };
	cr_assert_eq(ura_loop_new(NULL, &p.loop), 0);
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, ping_main, &p), 0);
	struct th_watchdog w;
	cr_assert_eq(th_watchdog_start(&w, p.loop, 120000), 0);
	/* The loop blocks whenever it has nothing to do; only the eventfd wakes it. */
	for (uint64_t t0 = th_now_ms(); !atomic_load(&p.finished) && !atomic_load(&p.lost) &&
					th_now_ms() - t0 < 120000;) {
		int r = ura_loop_run_once(p.loop, true);
		cr_assert_geq(r, 0);
	}
	bool fired = th_watchdog_end(&w);
	atomic_store(&p.quit, true);
	pthread_join(th, NULL);
	cr_assert(!fired && !atomic_load(&p.lost),
		  "a submit was left in the inbox while the loop slept: %lu of %lu done",
		  (unsigned long)atomic_load(&p.done), (unsigned long)p.sent);
	cr_assert_eq(atomic_load(&p.done), p.sent);
	cr_assert_geq(p.sent, 100, "too few round trips to say anything");
	ura_loop_free(p.loop);
}
