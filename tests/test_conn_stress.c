/*
 * Connection stress: sends with replies from other threads racing a cancel. Built with
 * Criterion (ASan) and standalone under ThreadSanitizer, like test_stress.c.
 *
 * The guarantee (DESIGN.md, connections): every reply handler is called exactly once,
 * and after the final CONNECTION_INVALID event nothing of the connection runs again. A
 * send that passes its cancelled check just before the cancel reaches the loop after it;
 * its reply handler must still be called before the final event, not after. Where the
 * fault hooks are built in, some sends sleep in that window (URA__FAULT_SEND_STALL), so
 * the race happens in most rounds instead of rarely.
 */
#include <errno.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef URA_STANDALONE
#include "standalone.h"
#else
#include <criterion/criterion.h>
#endif

#include "fault.h"
#include "helpers.h"

enum { SENDERS = 3, ROUNDS = 150, MAX_SENDS_PER_THREAD = 2000 };

struct round {
	ura_conn *c;
	ura_msg *msg;
	_Atomic bool go;
	_Atomic bool final_seen;
	_Atomic uint64_t finals, accepted, replies, late_replies, other_events_after_final;
};

static void on_event(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	(void)c;
	struct round *r = ctx;
	if (atomic_load(&r->final_seen)) {
		atomic_fetch_add(&r->other_events_after_final, 1);
		return;
	}
	if (ev->type == URA_EVENT_ERROR && ev->error == URA_ERROR_CONNECTION_INVALID) {
		atomic_fetch_add(&r->finals, 1);
		atomic_store(&r->final_seen, true);
	}
}

static void on_reply(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	(void)c;
	(void)ev;
	struct round *r = ctx;
	atomic_fetch_add(&r->replies, 1);
	if (atomic_load(&r->final_seen))
		atomic_fetch_add(&r->late_replies, 1);
}

/* Sends with replies until the connection refuses (it was cancelled). */
static void *sender(void *arg)
{
	struct round *r = arg;
	while (!atomic_load(&r->go))
		;
	for (int i = 0; i < MAX_SENDS_PER_THREAD; i++) {
		if (ura_conn_send_with_reply(r->c, r->msg, on_reply, r) < 0)
			break;
		atomic_fetch_add(&r->accepted, 1);
	}
	return NULL;
}

/* One round: senders start, the loop thread runs a little, cancels, and drains. */
static void run_round(ura_loop *loop, ura_msg *msg, unsigned spin_iterations)
{
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	struct round r = { .msg = msg };
	cr_assert_eq(ura_conn_new(loop, sv[0], &r.c), 0);
	cr_assert_eq(ura_conn_set_event_handler(r.c, on_event, &r), 0);
	ura_conn_activate(r.c);

#ifdef URA_FAULT_INJECTION
	/* Two of the first few sends stall across the cancel. */
	ura__fault_arm(URA__FAULT_SEND_STALL, 1, 1 + spin_iterations % 4, 1);
#endif
	pthread_t th[SENDERS];
	for (int i = 0; i < SENDERS; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, sender, &r), 0);
	atomic_store(&r.go, true);
	for (unsigned i = 0; i < spin_iterations; i++)
		(void)ura_loop_run_once(loop, false);
	ura_conn_cancel(r.c);
	/* Keep the loop going while the senders finish (they stop at their first refusal). */
	bool ok = th_run_until(loop, &r.final_seen, 10000);
	for (int i = 0; i < SENDERS; i++)
		pthread_join(th[i], NULL);
	th_spin(loop, 2); /* anything still on its way arrives now, and would be late */
#ifdef URA_FAULT_INJECTION
	ura__fault_disarm_all();
#endif

	cr_assert(ok, "no final event");
	cr_assert_eq(atomic_load(&r.finals), 1);
	cr_assert_eq(atomic_load(&r.replies), atomic_load(&r.accepted),
		     "%llu accepted sends, %llu reply calls",
		     (unsigned long long)atomic_load(&r.accepted),
		     (unsigned long long)atomic_load(&r.replies));
	cr_assert_eq(atomic_load(&r.late_replies), 0, "%llu reply handlers ran after the final event",
		     (unsigned long long)atomic_load(&r.late_replies));
	cr_assert_eq(atomic_load(&r.other_events_after_final), 0);
	ura_conn_unref(r.c);
	close(sv[1]);
}

Test(conn_stress, replies_racing_cancel_all_come_before_the_final_event, .timeout = 300)
{
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	ura_msg *msg;
	cr_assert_eq(ura_msg_new("ping", 4, &msg), 0);
	for (unsigned i = 0; i < ROUNDS; i++)
		run_round(loop, msg, i % 8); /* cancel at varied points, also at once */
	ura_msg_unref(msg);
	ura_loop_free(loop);
}
