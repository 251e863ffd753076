/*
 * Fault injection (src/util/fault.h): allocation failure at every allocation site in turn,
 * a full SQ, io_uring_enter failing with -EBUSY/-EAGAIN/-EINTR, short writes, a peer
 * resetting mid-frame. In each case the API reports an error or the affected task or
 * connection ends with one, and the invariants hold: one terminal call per accepted
 * task, one final event per session and per connection, nothing after it, no leak
 * (LeakSanitizer checks each test process on exit).
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "fault.h"
#include "frame.h"
#include "helpers.h"

#define SEC 1000000000ull

/* ---- tasks and sessions under allocation failure */

enum { ON_LOOP = 12, REMOTE = 8, SUSPENDED = 4, TASKS = ON_LOOP + REMOTE + SUSPENDED };

struct run {
	ura_loop *loop;
	ura_session *s;
	struct th_delegate d;
	struct th_calls calls[TASKS];
	bool accepted[TASKS];
	ura_task handles[TASKS];
	_Atomic int posts, answers;
};

static void posted(void *arg)
{
	atomic_fetch_add(&((struct run *)arg)->posts, 1);
}

static void listed(ura_session *s, const ura_task *t, size_t n, void *arg)
{
	(void)s, (void)t, (void)n;
	atomic_fetch_add(&((struct run *)arg)->answers, 1);
}

static void flushed(ura_session *s, void *arg)
{
	(void)s;
	atomic_fetch_add(&((struct run *)arg)->answers, 1);
}

static void *remote_submits(void *arg)
{
	struct run *rn = arg;
	for (int i = ON_LOOP; i < ON_LOOP + REMOTE; i++) {
		int r = ura_nop(rn->s, th_record, &rn->calls[i], &rn->handles[i]);
		cr_assert(r == 0 || r == -ENOMEM, "remote submit: %d", r);
		rn->accepted[i] = r == 0;
	}
	return NULL;
}

/* One pass of everything that allocates; returns false if the loop could not be made. */
static bool tasks_scenario(void)
{
	struct run *rn = calloc(1, sizeof(*rn));
	int r = ura_loop_new(NULL, &rn->loop);
	if (r < 0) {
		cr_assert_eq(r, -ENOMEM, "loop_new: %d", r);
		free(rn);
		return false;
	}
	r = ura_session_new(rn->loop, &th_delegate_fns, &rn->d, &rn->s);
	if (r < 0) {
		cr_assert_eq(r, -ENOMEM);
		ura_loop_free(rn->loop);
		free(rn);
		return true;
	}
	int requests = 0;
	for (int i = 0; i < ON_LOOP; i++) {
		r = (i % 3) ? ura_nop(rn->s, th_record, &rn->calls[i], &rn->handles[i])
			    : ura_timeout(rn->s, 60 * SEC, th_record, &rn->calls[i], &rn->handles[i]);
		cr_assert(r == 0 || r == -ENOMEM, "submit: %d", r);
		rn->accepted[i] = r == 0;
	}
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_nop(&sqe);
	for (int i = ON_LOOP + REMOTE; i < TASKS; i++) {
		r = ura_submit(rn->s, &sqe, URA_SUBMIT_SUSPENDED, th_record, &rn->calls[i],
			       &rn->handles[i]);
		cr_assert(r == 0 || r == -ENOMEM);
		rn->accepted[i] = r == 0;
	}
	pthread_t th;
	pthread_create(&th, NULL, remote_submits, rn);
	pthread_join(th, NULL);
	if (rn->accepted[TASKS - 1])
		(void)ura_task_resume(rn->s, rn->handles[TASKS - 1]);
	if (rn->accepted[0])
		(void)ura_task_cancel(rn->s, rn->handles[0]);
	int posted_ok = ura_loop_post(rn->loop, posted, rn) == 0;
	requests += ura_session_get_all_tasks(rn->s, listed, rn) == 0;
	requests += ura_session_flush(rn->s, flushed, rn) == 0;
	for (int i = 0; i < 5; i++)
		ura_loop_run_once(rn->loop, false);
	ura_session_invalidate_and_cancel(rn->s);
	th_run_until(rn->loop, &rn->d.final_seen, 10000);

	cr_assert_eq(atomic_load(&rn->d.finals), 1, "final events: %lu",
		     (unsigned long)atomic_load(&rn->d.finals));
	uint64_t accepted = 0;
	for (int i = 0; i < TASKS; i++) {
		uint64_t n = atomic_load(&rn->calls[i].terminal);
		cr_assert_eq(n, rn->accepted[i] ? 1u : 0u, "task %d (accepted %d): %lu terminal calls",
			     i, rn->accepted[i], (unsigned long)n);
		accepted += rn->accepted[i];
	}
	cr_assert_eq(atomic_load(&rn->d.completions), accepted);
	cr_assert_eq(atomic_load(&rn->d.calls_after_final), 0);
	cr_assert_eq(atomic_load(&rn->answers), requests, "an accepted request was never answered");
	cr_assert_eq(atomic_load(&rn->posts), posted_ok);
	ura_session_unref(rn->s);
	ura_loop_free(rn->loop);
	free(rn);
	return true;
}

Test(faults, allocation_failure_at_every_site_in_turn, .timeout = 600)
{
	unsigned long k;
	for (k = 1; k < 400; k++) {
		unsigned long before = ura__fault_injected(URA__FAULT_ALLOC);
		ura__fault_arm(URA__FAULT_ALLOC, -ENOMEM, k, 0);
		tasks_scenario();
		ura__fault_disarm_all();
		if (ura__fault_injected(URA__FAULT_ALLOC) == before)
			break; /* the kth allocation was never reached: every site had its turn */
	}
	cr_log_info("allocation faults: %lu runs, %lu injected", k,
		    ura__fault_injected(URA__FAULT_ALLOC));
	cr_assert_lt(k, 400, "the scenario never ran out of allocations to fail");
	cr_assert_gt(k, 5, "too few allocation sites reached: %lu", k);
}

/* ---- a full SQ and a refusing io_uring_enter */

static void many_tasks_with(enum ura__fault_site site, int error, unsigned long repeat)
{
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	ura_session *s;
	struct th_delegate d = { 0 };
	cr_assert_eq(ura_session_new(loop, &th_delegate_fns, &d, &s), 0);
	enum { N = 600 };
	static struct th_calls c[N];
	memset(c, 0, sizeof(c));
	ura__fault_arm(site, error, 1, repeat);
	for (int i = 0; i < N; i++) {
		int r = (i % 4) ? ura_nop(s, th_record, &c[i], NULL)
				: ura_timeout(s, (i % 8) ? 1000000 : 60 * SEC, th_record, &c[i], NULL);
		cr_assert_eq(r, 0);
		if (i % 50 == 0)
			ura_loop_run_once(loop, false);
	}
	for (int i = 0; i < 200; i++)
		ura_loop_run_once(loop, false);
	ura_session_invalidate_and_cancel(s);
	th_run_until(loop, &d.final_seen, 20000);
	unsigned long injected = ura__fault_injected(site);
	ura__fault_disarm_all();
	cr_assert_gt(injected, 0, "no fault was injected");
	cr_assert_eq(atomic_load(&d.finals), 1);
	for (int i = 0; i < N; i++)
		cr_assert_eq(atomic_load(&c[i].terminal), 1, "task %d: %lu terminal calls", i,
			     (unsigned long)atomic_load(&c[i].terminal));
	ura_session_unref(s);
	ura_loop_free(loop);
}

Test(faults, sq_full_backlogs_without_losing_or_reordering)
{
	many_tasks_with(URA__FAULT_SQ_FULL, 1, 2000);
}

Test(faults, enter_ebusy)
{
	many_tasks_with(URA__FAULT_ENTER, -EBUSY, 50);
}

Test(faults, enter_eagain)
{
	many_tasks_with(URA__FAULT_ENTER, -EAGAIN, 50);
}

Test(faults, enter_eintr)
{
	many_tasks_with(URA__FAULT_ENTER, -EINTR, 50);
}

/* ---- connections: short writes, allocation failures, a reset mid-frame */

struct conn_seen {
	_Atomic int invalid, after_invalid, messages;
};

static void conn_events(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	struct conn_seen *s = ctx;
	if (atomic_load(&s->invalid))
		atomic_fetch_add(&s->after_invalid, 1);
	if (ev->type == URA_EVENT_MESSAGE) {
		atomic_fetch_add(&s->messages, 1);
		if (ura_msg_expects_reply(ev->msg))
			(void)ura_conn_reply(c, ev->msg, ev->msg); /* echo; may fail under faults */
	} else if (ev->error == URA_ERROR_CONNECTION_INVALID) {
		atomic_fetch_add(&s->invalid, 1);
	}
}

struct reply_count {
	_Atomic int calls, ok;
	size_t want_len;
};

static void count_reply(ura_conn *c, const struct ura_event *ev, void *arg)
{
	(void)c;
	struct reply_count *r = arg;
	atomic_fetch_add(&r->calls, 1);
	if (ev->type == URA_EVENT_MESSAGE && ura_msg_len(ev->msg) == r->want_len)
		atomic_fetch_add(&r->ok, 1);
}

enum { REQS = 16 };

/* Two connections over a socketpair, REQS requests; returns false if nothing was made. */
static bool conn_scenario(bool expect_all_ok)
{
	ura_loop *loop;
	int r = ura_loop_new(NULL, &loop);
	if (r < 0)
		return false;
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ura_conn *a = NULL, *b = NULL;
	struct conn_seen sa = { 0 }, sb = { 0 };
	if (ura_conn_new(loop, sv[0], &a) < 0) {
		close(sv[0]);
		a = NULL;
	}
	if (ura_conn_new(loop, sv[1], &b) < 0) {
		close(sv[1]);
		b = NULL;
	}
	static struct reply_count rc[REQS];
	memset(rc, 0, sizeof(rc));
	bool sent[REQS] = { 0 };
	char payload[300];
	memset(payload, 'x', sizeof(payload));
	if (a) {
		ura_conn_set_event_handler(a, conn_events, &sa);
		ura_conn_activate(a);
	}
	if (b) {
		ura_conn_set_event_handler(b, conn_events, &sb);
		ura_conn_activate(b);
	}
	for (int i = 0; a && i < REQS; i++) {
		ura_msg *m;
		rc[i].want_len = 10 + (size_t)i * 17;
		if (ura_msg_new(payload, rc[i].want_len, &m) < 0)
			continue;
		r = ura_conn_send_with_reply(a, m, count_reply, &rc[i]);
		/* -ESHUTDOWN: a failed allocation inside already ended the connection. */
		cr_assert(r == 0 || r == -ENOMEM || r == -ESHUTDOWN, "send: %d", r);
		sent[i] = r == 0;
		ura_msg_unref(m);
	}
	uint64_t end = th_now_ms() + 5000;
	for (;;) {
		int done = 0;
		for (int i = 0; i < REQS; i++)
			done += !sent[i] || atomic_load(&rc[i].calls) > 0;
		if (done == REQS || th_now_ms() > end)
			break;
		ura_loop_run_once(loop, false);
	}
	if (expect_all_ok)
		for (int i = 0; i < REQS; i++)
			cr_assert_eq(atomic_load(&rc[i].ok), 1, "request %d: no correct reply", i);
	ura_conn_cancel(a);
	ura_conn_cancel(b);
	ura_conn_unref(a);
	ura_conn_unref(b);
	end = th_now_ms() + 10000;
	while ((a && !atomic_load(&sa.invalid)) || (b && !atomic_load(&sb.invalid))) {
		if (th_now_ms() > end)
			break;
		ura_loop_run_once(loop, false);
	}
	cr_assert_eq(atomic_load(&sa.invalid), a ? 1 : 0, "final events on a");
	cr_assert_eq(atomic_load(&sb.invalid), b ? 1 : 0, "final events on b");
	cr_assert_eq(atomic_load(&sa.after_invalid) + atomic_load(&sb.after_invalid), 0);
	for (int i = 0; i < REQS; i++)
		cr_assert_eq(atomic_load(&rc[i].calls), sent[i] ? 1 : 0,
			     "reply handler %d (sent %d) called %d times", i, sent[i],
			     atomic_load(&rc[i].calls));
	ura_loop_free(loop);
	return true;
}

Test(faults, short_writes_deliver_every_frame_intact)
{
	ura__fault_arm(URA__FAULT_SHORT_WRITE, 1, 1, 100000);
	conn_scenario(true);
	unsigned long injected = ura__fault_injected(URA__FAULT_SHORT_WRITE);
	ura__fault_disarm_all();
	cr_assert_gt(injected, 10, "short writes injected: %lu", injected);
}

Test(faults, connection_allocation_failure_at_every_site_in_turn, .timeout = 600)
{
	unsigned long k;
	for (k = 1; k < 600; k++) {
		unsigned long before = ura__fault_injected(URA__FAULT_ALLOC);
		ura__fault_arm(URA__FAULT_ALLOC, -ENOMEM, k, 0);
		conn_scenario(false);
		ura__fault_disarm_all();
		if (ura__fault_injected(URA__FAULT_ALLOC) == before)
			break;
	}
	cr_log_info("connection allocation faults: %lu runs", k);
	cr_assert_lt(k, 600);
	cr_assert_gt(k, 10);
}

Test(faults, peer_reset_mid_frame_ends_the_connection_with_a_reason)
{
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	ura_conn *a;
	int peer;
	struct conn_seen sa = { 0 };
	cr_assert_eq(th_conn_adopt(loop, conn_events, &sa, &a, &peer), 0);
	ura_conn_activate(a);
	struct reply_count rc = { .want_len = 1 };
	ura_msg *m;
	cr_assert_eq(ura_msg_new("q", 1, &m), 0);
	cr_assert_eq(ura_conn_send_with_reply(a, m, count_reply, &rc), 0);
	ura_msg_unref(m);
	uint8_t f[URA__FRAME_HEADER_SIZE + 100];
	size_t n;
	char body[100] = { 0 };
	cr_assert_eq(ura__frame_encode(f, sizeof(f), 0, 9, body, sizeof(body), 0, &n), 0);
	cr_assert_eq(write(peer, f, 30), 30);
	th_spin(loop, 10);
	close(peer); /* the peer goes away in the middle of a frame */
	th_run_until_int(loop, &sa.invalid, 1, 5000);
	cr_assert_eq(atomic_load(&sa.invalid), 1);
	cr_assert_eq(atomic_load(&rc.calls), 1, "the pending reply was not told");
	char *why = ura_conn_copy_invalidation_reason(a);
	cr_assert_not_null(why);
	cr_log_info("reason: %s", why);
	free(why);
	ura_conn_unref(a);
	ura_loop_free(loop);
}

/* ---- the final event survives allocation failure (issue 11, item 2) */

struct final_run {
	ura_session *s;
	struct th_delegate d;
	struct th_calls task;
	_Atomic int flushes;
	_Atomic bool invalidated;
};

static void final_flushed(ura_session *s, void *arg)
{
	(void)s;
	atomic_fetch_add(&((struct final_run *)arg)->flushes, 1);
}

static void *invalidate_elsewhere(void *arg)
{
	struct final_run *fr = arg;
	ura_session_finish_tasks_and_invalidate(fr->s);
	atomic_store(&fr->invalidated, true);
	return NULL;
}

/*
 * A session with one live task, a flush asked on the loop thread, finish_tasks_and_
 * invalidate from another thread, and allocations failing from the kth on for a while
 * (repeat more after it). Once memory is back the final event comes, exactly once.
 */
static void final_scenario(unsigned long k, unsigned long repeat)
{
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	struct final_run *fr = calloc(1, sizeof(*fr));
	cr_assert_eq(ura_session_new(loop, &th_delegate_fns, &fr->d, &fr->s), 0);
	cr_assert_eq(ura_timeout(fr->s, 20 * 1000 * 1000, th_record, &fr->task, NULL), 0);
	ura__fault_arm(URA__FAULT_ALLOC, -ENOMEM, k, repeat);
	int flush_ok = ura_session_flush(fr->s, final_flushed, fr) == 0;
	cr_assert(flush_ok || k == 1, "flush failed with the kth allocation, k=%lu", k);
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, invalidate_elsewhere, fr), 0);
	pthread_join(th, NULL);
	th_spin(loop, 40); /* the task ends and the flush answers while allocations fail */
	ura__fault_disarm_all();
	th_run_until(loop, &fr->d.final_seen, 5000);
	cr_assert_eq(atomic_load(&fr->d.finals), 1, "k=%lu repeat=%lu: %lu final events", k,
		     repeat, (unsigned long)atomic_load(&fr->d.finals));
	cr_assert_eq(atomic_load(&fr->task.terminal), 1);
	cr_assert_eq(atomic_load(&fr->flushes), flush_ok, "k=%lu: flush answers", k);
	cr_assert_eq(atomic_load(&fr->d.calls_after_final), 0);
	ura_session_unref(fr->s);
	ura_loop_free(loop);
	free(fr);
}

Test(faults, final_event_survives_allocation_failure_at_every_site, .timeout = 300)
{
	static const unsigned long repeats[] = { 0, 3, 1000 };
	for (size_t i = 0; i < sizeof(repeats) / sizeof(repeats[0]); i++) {
		unsigned long k;
		for (k = 1; k < 100; k++) {
			unsigned long before = ura__fault_injected(URA__FAULT_ALLOC);
			final_scenario(k, repeats[i]);
			if (ura__fault_injected(URA__FAULT_ALLOC) == before)
				break; /* every allocation on the way had its turn */
		}
		cr_assert_lt(k, 100, "the scenario never ran out of allocations to fail");
		cr_assert_gt(k, 1, "no allocation site was reached");
	}
}

/* ---- a task that finds neither SQ room nor memory still ends, once */

struct backlog_run {
	ura_session *s;
	struct th_delegate d;
	struct th_calls calls[100];
};

static void *submit_hundred(void *arg)
{
	struct backlog_run *br = arg;
	for (int i = 0; i < 100; i++)
		cr_assert_eq(ura_nop(br->s, th_record, &br->calls[i], NULL), 0);
	return NULL;
}

Test(faults, task_without_sq_room_or_memory_ends_once)
{
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	struct backlog_run *br = calloc(1, sizeof(*br));
	cr_assert_eq(ura_session_new(loop, &th_delegate_fns, &br->d, &br->s), 0);
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, submit_hundred, br), 0);
	pthread_join(th, NULL); /* 100 accepted tasks wait in the inbox */
	/* The loop takes them with a full SQ and no memory for its backlog or its
	 * deferred work: each must still get its terminal call. */
	ura__fault_arm(URA__FAULT_SQ_FULL, 1, 1, 1000000);
	ura__fault_arm(URA__FAULT_ALLOC, -ENOMEM, 1, 1000000);
	for (int i = 0; i < 4; i++)
		(void)ura_loop_run_once(loop, false);
	ura__fault_disarm_all();
	ura_session_finish_tasks_and_invalidate(br->s);
	int res;
	cr_assert(th_run_bounded(loop, 10000, &res), "a task was lost: the loop never idled");
	for (int i = 0; i < 100; i++)
		cr_assert_eq(atomic_load(&br->calls[i].terminal), 1, "task %d: %lu terminal calls",
			     i, (unsigned long)atomic_load(&br->calls[i].terminal));
	cr_assert_eq(atomic_load(&br->d.finals), 1);
	ura_session_unref(br->s);
	ura_loop_free(loop);
	free(br);
}

/* ---- a cancel that finds neither SQ room nor memory is sent again later */

Test(faults, cancel_without_sq_room_or_memory_is_resent)
{
	struct ura_loop_config cfg = { .sq_entries = 8 };
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(&cfg, &loop), 0);
	struct th_delegate d = { 0 };
	ura_session *s;
	cr_assert_eq(ura_session_new(loop, &th_delegate_fns, &d, &s), 0);
	int p[2];
	cr_assert_eq(pipe(p), 0);
	static char buf[3][8];
	struct th_calls reads[3] = { 0 }, nops[7] = { 0 };
	for (int i = 0; i < 3; i++)
		cr_assert_eq(ura_read(s, p[0], buf[i], sizeof(buf[i]), 0, th_record, &reads[i], NULL), 0);
	(void)ura_loop_run_once(loop, false); /* the reads wait in the kernel */
	/* Fill the SQ up to the cancel headroom (one entry), then cancel all three reads
	 * with no memory for the cancels that do not fit. */
	ura_session *sh = ura_session_shared(loop);
	for (int i = 0; i < 7; i++)
		cr_assert_eq(ura_nop(sh, th_record, &nops[i], NULL), 0);
	ura_session_invalidate_and_cancel(s);
	ura__fault_arm(URA__FAULT_ALLOC, -ENOMEM, 1, 1000000);
	(void)ura_loop_run_once(loop, false);
	ura__fault_disarm_all();
	int res;
	cr_assert(th_run_bounded(loop, 10000, &res), "a lost cancel was never sent again");
	cr_assert_eq(atomic_load(&d.finals), 1);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(atomic_load(&reads[i].terminal), 1);
	for (int i = 0; i < 7; i++)
		cr_assert_eq(atomic_load(&nops[i].terminal), 1);
	close(p[0]);
	close(p[1]);
	ura_session_unref(s);
	ura_loop_free(loop);
}

/* ---- a barrier's bookkeeping without memory: tasks still end, flushes still run */

static void flush_count(ura_session *s, void *arg)
{
	(void)s;
	atomic_fetch_add((_Atomic int *)arg, 1);
}

Test(faults, barrier_tags_without_memory)
{
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	struct th_delegate d = { 0 };
	ura_session *s;
	cr_assert_eq(ura_session_new(loop, &th_delegate_fns, &d, &s), 0);
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_nop(&sqe);
	struct th_calls held_calls = { 0 }, later[50];
	memset(later, 0, sizeof(later));
	ura_task held;
	cr_assert_eq(ura_submit(s, &sqe, URA_SUBMIT_SUSPENDED, th_record, &held_calls, &held), 0);
	_Atomic int flushed = 0;
	cr_assert_eq(ura_session_flush(s, flush_count, &flushed), 0);
	th_spin(loop, 10);
	/* Tasks after the flush need a new tag count, and there is no memory for it. */
	ura__fault_arm(URA__FAULT_ALLOC, -ENOMEM, 1, 1000000);
	for (int i = 0; i < 50; i++)
		cr_assert_eq(ura_nop(s, th_record, &later[i], NULL), 0);
	(void)ura_loop_run_once(loop, false);
	ura__fault_disarm_all();
	cr_assert_eq(ura_session_flush(s, flush_count, &flushed), 0);
	cr_assert_eq(ura_task_resume(s, held), 0);
	ura_session_finish_tasks_and_invalidate(s);
	int res;
	cr_assert(th_run_bounded(loop, 10000, &res));
	cr_assert_eq(atomic_load(&flushed), 2);
	cr_assert_eq(atomic_load(&held_calls.terminal), 1);
	for (int i = 0; i < 50; i++)
		cr_assert_eq(atomic_load(&later[i].terminal), 1);
	cr_assert_eq(atomic_load(&d.finals), 1);
	ura_session_unref(s);
	ura_loop_free(loop);
}

/* ---- an invalid connection always has a reason, also when nothing can be allocated */

enum end_by {
	END_PEER_CLOSED,
	END_PROTOCOL_ERROR,
	END_CANCEL,
	END_LOOP_FREED,
	END_LOOP_FREED_INACTIVE, /* never activated: no I/O of its own to end it */
};

/* Ends an open adopted connection in the way named while every allocation fails, then
 * asks for its reason with allocation working again. */
static void reason_without_memory(enum end_by how, const char *needle)
{
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	ura_conn *a;
	int peer;
	struct conn_seen sa = { 0 };
	cr_assert_eq(th_conn_adopt(loop, conn_events, &sa, &a, &peer), 0);
	if (how != END_LOOP_FREED_INACTIVE) {
		ura_conn_activate(a);
		th_spin(loop, 5); /* open, its receive armed */
	}
	ura__fault_arm(URA__FAULT_ALLOC, -ENOMEM, 1, 1000000000ul);
	switch (how) {
	case END_PEER_CLOSED:
		close(peer);
		peer = -1;
		break;
	case END_PROTOCOL_ERROR:
		cr_assert_eq(write(peer, "GARBAGE-GARBAGE-GARBAGE", 23), 23);
		break;
	case END_CANCEL:
		ura_conn_cancel(a);
		break;
	case END_LOOP_FREED:
	case END_LOOP_FREED_INACTIVE:
		break;
	}
	if (how == END_LOOP_FREED || how == END_LOOP_FREED_INACTIVE) {
		ura_loop_free(loop);
		loop = NULL;
	} else {
		th_run_until_int(loop, &sa.invalid, 1, 5000);
	}
	unsigned long injected = ura__fault_injected(URA__FAULT_ALLOC);
	ura__fault_disarm_all();
	cr_assert_eq(atomic_load(&sa.invalid), 1, "%s: no final event", needle);
	char *why = ura_conn_copy_invalidation_reason(a);
	cr_assert_not_null(why, "%s: an invalid connection without a reason (%lu allocations "
			   "failed)", needle, injected);
	cr_assert(strstr(why, needle), "reason '%s' lacks '%s'", why, needle);
	free(why);
	ura_conn_unref(a);
	if (peer >= 0)
		close(peer);
	ura_loop_free(loop);
}

Test(faults, peer_closed_without_memory_still_gives_a_reason)
{
	reason_without_memory(END_PEER_CLOSED, "peer closed");
}

Test(faults, protocol_error_without_memory_still_gives_a_reason)
{
	reason_without_memory(END_PROTOCOL_ERROR, "protocol error");
}

Test(faults, cancel_without_memory_still_gives_a_reason)
{
	reason_without_memory(END_CANCEL, "cancelled");
}

Test(faults, the_loops_end_without_memory_still_gives_a_reason)
{
	reason_without_memory(END_LOOP_FREED, "loop ended");
}

Test(faults, the_loops_end_of_an_inactive_connection_gives_a_reason)
{
	reason_without_memory(END_LOOP_FREED_INACTIVE, "loop ended");
}
