/* Connections: XPC lifecycle, messages with replies, errors with reasons, listeners. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "conn.h"
#include "frame.h"
#include "helpers.h"

static ura_loop *loop;

static void setup(void)
{
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
}

static void teardown(void)
{
	ura_loop_free(loop);
}

TestSuite(conn, .init = setup, .fini = teardown);

/* What a handler saw. */
struct seen {
	_Atomic int messages, interrupted, invalid, imminent, after_invalid;
	char last[64];
	ura_conn *echo_on;   /* when set, requests are answered with "re:" + payload */
};

static void on_event(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	struct seen *s = ctx;
	if (atomic_load(&s->invalid))
		atomic_fetch_add(&s->after_invalid, 1);
	if (ev->type == URA_EVENT_MESSAGE) {
		atomic_fetch_add(&s->messages, 1);
		th_msg_text(ev->msg, s->last, sizeof(s->last));
		if (ura_msg_expects_reply(ev->msg)) {
			char text[80];
			snprintf(text, sizeof(text), "re:%s", s->last);
			ura_msg *r;
			cr_assert_eq(ura_msg_new(text, strlen(text), &r), 0);
			cr_assert_eq(ura_conn_reply(c, ev->msg, r), 0);
			cr_assert_eq(ura_conn_reply(c, ev->msg, r), -EINVAL, "answered twice");
			ura_msg_unref(r);
		}
		return;
	}
	switch (ev->error) {
	case URA_ERROR_CONNECTION_INTERRUPTED: atomic_fetch_add(&s->interrupted, 1); break;
	case URA_ERROR_CONNECTION_INVALID: atomic_fetch_add(&s->invalid, 1); break;
	case URA_ERROR_TERMINATION_IMMINENT: atomic_fetch_add(&s->imminent, 1); break;
	}
}

struct reply_rec {
	_Atomic int calls, messages, invalid, interrupted;
	char text[64];
};

static void on_reply(ura_conn *c, const struct ura_event *ev, void *arg)
{
	(void)c;
	struct reply_rec *r = arg;
	atomic_fetch_add(&r->calls, 1);
	if (ev->type == URA_EVENT_MESSAGE) {
		atomic_fetch_add(&r->messages, 1);
		th_msg_text(ev->msg, r->text, sizeof(r->text));
	} else if (ev->error == URA_ERROR_CONNECTION_INVALID) {
		atomic_fetch_add(&r->invalid, 1);
	} else if (ev->error == URA_ERROR_CONNECTION_INTERRUPTED) {
		atomic_fetch_add(&r->interrupted, 1);
	}
}

static ura_msg *msg(const char *text)
{
	ura_msg *m;
	cr_assert_eq(ura_msg_new(text, strlen(text), &m), 0);
	return m;
}

/* ura_conn_send of a new message holding text; the connection keeps its own reference. */
static int send_text(ura_conn *c, const char *text)
{
	ura_msg *m = msg(text);
	int r = ura_conn_send(c, m);
	ura_msg_unref(m);
	return r;
}

static bool run_until_int(const _Atomic int *v, int want, unsigned ms)
{
	return th_run_until_int(loop, v, want, ms);
}

/* Two adopted connections over a socketpair, still inactive. */
static void pair(ura_conn **a, struct seen *sa, ura_conn **b, struct seen *sb)
{
	cr_assert_eq(th_conn_pair(loop, on_event, sa, a, on_event, sb, b), 0);
}

/* Two adopted connections over a socketpair, both activated. */
static void active_pair(ura_conn **a, struct seen *sa, ura_conn **b, struct seen *sb)
{
	pair(a, sa, b, sb);
	ura_conn_activate(*a);
	ura_conn_activate(*b);
}

/* One inactive adopted connection; *peer is the raw other end, for the test to drive. */
static ura_conn *adopted(struct seen *s, int *peer)
{
	ura_conn *c;
	cr_assert_eq(th_conn_adopt(loop, on_event, s, &c, peer), 0);
	return c;
}

/* The connection ended with a reason that mentions needle. */
static void expect_reason(ura_conn *c, const char *needle)
{
	char *why = ura_conn_copy_invalidation_reason(c);
	cr_assert(why && strstr(why, needle), "reason '%s' lacks '%s'", why ? why : "(null)",
		  needle);
	free(why);
}

/* Drops the test's connections (b may be NULL) and runs the loop until nothing is left. */
static void drop_and_drain(ura_conn *a, ura_conn *b)
{
	ura_conn_unref(a);
	ura_conn_unref(b);
	cr_assert_eq(ura_loop_run(loop), 0);
}

Test(conn, send_with_reply_gets_the_answer_once)
{
	ura_conn *a, *b;
	struct seen sa = { 0 }, sb = { 0 };
	active_pair(&a, &sa, &b, &sb);
	ura_conn_activate(b); /* again: a no-op */
	struct reply_rec r[10];
	memset(r, 0, sizeof(r));
	for (int i = 0; i < 10; i++) {
		char text[16];
		snprintf(text, sizeof(text), "ping%d", i);
		ura_msg *m = msg(text);
		cr_assert_eq(ura_conn_send_with_reply(a, m, on_reply, &r[i]), 0);
		ura_msg_unref(m);
	}
	for (int i = 0; i < 10; i++) {
		cr_assert(run_until_int(&r[i].calls, 1, 5000), "reply %d never came", i);
		char want[16];
		snprintf(want, sizeof(want), "re:ping%d", i);
		cr_assert_str_eq(r[i].text, want);
	}
	cr_assert_eq(atomic_load(&sb.messages), 10);
	cr_assert_null(ura_conn_copy_invalidation_reason(a), "valid connection has a reason");
	cr_assert_eq(ura_conn_loop(a), loop);
	ura_conn_cancel(a);
	ura_conn_cancel(b);
	cr_assert(run_until_int(&sa.invalid, 1, 5000));
	cr_assert(run_until_int(&sb.invalid, 1, 5000));
	th_spin(loop, 10);
	for (int i = 0; i < 10; i++)
		cr_assert_eq(atomic_load(&r[i].calls), 1, "reply %d called %d times", i,
			     atomic_load(&r[i].calls));
	drop_and_drain(a, b);
}

Test(conn, messages_sent_before_activation_wait_for_it)
{
	ura_conn *a, *b;
	struct seen sa = { 0 }, sb = { 0 };
	pair(&a, &sa, &b, &sb);
	cr_assert_eq(send_text(a, "early"), 0);
	ura_conn_activate(b);
	th_spin(loop, 30);
	cr_assert_eq(atomic_load(&sb.messages), 0, "an inactive connection sent");
	ura_conn_activate(a);
	cr_assert(run_until_int(&sb.messages, 1, 5000));
	cr_assert_str_eq(sb.last, "early");
	drop_and_drain(a, b);
	cr_assert_eq(atomic_load(&sa.invalid), 1, "the last unref must cancel");
	cr_assert_eq(atomic_load(&sb.invalid), 1);
}

Test(conn, cancel_fails_pending_replies_then_one_final_event)
{
	ura_conn *a, *b;
	struct seen sa = { 0 }, sb = { 0 };
	pair(&a, &sa, &b, &sb);
	/* b never answers: it stays inactive, so requests stay pending. */
	ura_conn_activate(a);
	struct reply_rec r[5];
	memset(r, 0, sizeof(r));
	for (int i = 0; i < 5; i++) {
		ura_msg *m = msg("q");
		cr_assert_eq(ura_conn_send_with_reply(a, m, on_reply, &r[i]), 0);
		ura_msg_unref(m);
	}
	th_spin(loop, 20);
	ura_conn_cancel(a);
	ura_conn_cancel(a); /* idempotent */
	cr_assert_eq(atomic_load(&sa.invalid), 0, "final event inside cancel");
	cr_assert(run_until_int(&sa.invalid, 1, 5000));
	for (int i = 0; i < 5; i++) {
		cr_assert_eq(atomic_load(&r[i].calls), 1);
		cr_assert_eq(atomic_load(&r[i].invalid), 1);
	}
	cr_assert_eq(send_text(a, "late"), -ESHUTDOWN);
	char *why = ura_conn_copy_invalidation_reason(a);
	cr_assert_not_null(why);
	cr_assert_str_eq(why, "cancelled");
	free(why);
	th_spin(loop, 20);
	cr_assert_eq(atomic_load(&sa.invalid), 1);
	cr_assert_eq(atomic_load(&sa.after_invalid), 0);
	drop_and_drain(a, b);
}

Test(conn, suspend_holds_events_and_the_final_one_until_resume)
{
	ura_conn *a, *b;
	struct seen sa = { 0 }, sb = { 0 };
	pair(&a, &sa, &b, &sb);
	ura_conn_activate(a);
	cr_assert_eq(ura_conn_resume(b), 0, "resume on an inactive connection activates");
	cr_assert_eq(ura_conn_resume(b), -EINVAL, "more resumes than suspends");
	cr_assert_eq(ura_conn_suspend(b), 0);
	cr_assert_eq(ura_conn_suspend(b), 0);
	cr_assert_eq(send_text(a, "held"), 0);
	th_spin(loop, 30);
	cr_assert_eq(atomic_load(&sb.messages), 0, "handler ran while suspended");
	ura_conn_cancel(b);
	th_spin(loop, 30);
	cr_assert_eq(atomic_load(&sb.invalid), 0, "final event while suspended");
	cr_assert_eq(ura_conn_resume(b), 0);
	th_spin(loop, 10);
	cr_assert_eq(atomic_load(&sb.invalid), 0, "still suspended once");
	cr_assert_eq(ura_conn_resume(b), 0);
	cr_assert(run_until_int(&sb.invalid, 1, 5000));
	/* After cancel the handler hears only the final event: the held message is dropped. */
	cr_assert_eq(atomic_load(&sb.messages), 0, "a held message was delivered after cancel");
	cr_assert_eq(atomic_load(&sb.after_invalid), 0);
	drop_and_drain(a, b);
}

static void *resume_soon(void *arg)
{
	usleep(50 * 1000); /* lets ura_loop_run start first; the outcome must not depend on it */
	int r = ura_conn_resume(arg);
	return (void *)(intptr_t)r;
}

Test(conn, a_cancelled_suspended_connection_keeps_the_loop_running_until_resumed)
{
	int peer;
	struct seen sa = { 0 };
	ura_conn *a = adopted(&sa, &peer);
	ura_conn_activate(a);
	th_spin(loop, 5);
	cr_assert_eq(ura_conn_suspend(a), 0);
	ura_conn_cancel(a);
	th_spin(loop, 20); /* its I/O ends; the final event waits for the resume */
	cr_assert_eq(atomic_load(&sa.invalid), 0, "final event while suspended");
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, resume_soon, a), 0);
	int res = -1;
	bool by_itself = th_run_bounded(loop, 20000, &res);
	int invalid_at_return = atomic_load(&sa.invalid);
	void *resumed;
	pthread_join(th, &resumed);
	cr_assert_eq((intptr_t)resumed, 0, "resume: %d", (int)(intptr_t)resumed);
	cr_assert(by_itself, "ura_loop_run did not return after the final event");
	cr_assert_eq(res, 0);
	cr_assert_eq(invalid_at_return, 1, "ura_loop_run returned before the final event");
	cr_assert_eq(atomic_load(&sa.after_invalid), 0);
	ura_conn_unref(a);
	close(peer);
	cr_assert_eq(ura_loop_run(loop), 0);
}

/* ---- send order across threads */

enum { AB_ROUNDS = 300 };

struct ab {
	ura_conn *a;
	_Atomic int go, sent; /* rounds the loop thread opened / the other thread's sends done */
	_Atomic int got;       /* messages b received */
	int order[2 * AB_ROUNDS]; /* round * 2 + (0 for A, 1 for B), in arrival order */
	_Atomic int replies;
};

static void ab_reply(ura_conn *c, const struct ura_event *ev, void *arg)
{
	(void)c, (void)ev;
	atomic_fetch_add(&((struct ab *)arg)->replies, 1);
}

/* b's handler: records which message came, answers requests. */
static void ab_record(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	struct ab *ab = ctx;
	if (ev->type != URA_EVENT_MESSAGE)
		return;
	char text[32];
	th_msg_text(ev->msg, text, sizeof(text));
	int n = atomic_load(&ab->got);
	if (n < 2 * AB_ROUNDS) {
		int round = atoi(text + 1);
		ab->order[n] = round * 2 + (text[0] == 'B');
	}
	atomic_store(&ab->got, n + 1);
	if (ura_msg_expects_reply(ev->msg))
		(void)ura_conn_reply(c, ev->msg, ev->msg);
}

/* The other thread: in each round, one send (every other round one with a reply). */
static void *ab_sender(void *arg)
{
	struct ab *ab = arg;
	for (int i = 0; i < AB_ROUNDS; i++) {
		uint64_t end = th_now_ms() + 10000; /* a hang guard, not a speed bound */
		while (atomic_load(&ab->go) <= i && th_now_ms() < end)
			sched_yield();
		char text[32];
		snprintf(text, sizeof(text), "A%d", i);
		ura_msg *m;
		if (ura_msg_new(text, strlen(text), &m) < 0)
			break;
		int r = i % 2 ? ura_conn_send_with_reply(ab->a, m, ab_reply, ab) : ura_conn_send(ab->a, m);
		ura_msg_unref(m);
		if (r < 0)
			break;
		atomic_store(&ab->sent, i + 1); /* seq_cst: the loop thread sends B after seeing it */
	}
	return NULL;
}

Test(conn, a_send_that_returned_on_another_thread_goes_before_a_later_loop_send)
{
	ura_conn *a, *b;
	struct seen sa = { 0 };
	struct ab ab = { 0 };
	cr_assert_eq(th_conn_pair(loop, on_event, &sa, &a, ab_record, &ab, &b), 0);
	ab.a = a;
	ura_conn_activate(a);
	ura_conn_activate(b);
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, ab_sender, &ab), 0);
	int rounds = 0;
	for (; rounds < AB_ROUNDS; rounds++) {
		atomic_store(&ab.go, rounds + 1);
		uint64_t end = th_now_ms() + 10000; /* a hang guard */
		while (atomic_load(&ab.sent) <= rounds && th_now_ms() < end)
			sched_yield();
		if (atomic_load(&ab.sent) <= rounds)
			break;
		/* A's send has returned: B, sent now from the loop thread, must follow it. */
		char text[32];
		snprintf(text, sizeof(text), "B%d", rounds);
		cr_assert_eq(send_text(a, text), 0);
		if (rounds % 4 == 0)
			(void)ura_loop_run_once(loop, false); /* sometimes the loop runs between */
	}
	pthread_join(th, NULL);
	cr_assert_eq(rounds, AB_ROUNDS, "the sender thread stopped at round %d", rounds);
	cr_assert(run_until_int(&ab.got, 2 * AB_ROUNDS, 10000), "%d of %d messages arrived",
		  atomic_load(&ab.got), 2 * AB_ROUNDS);
	for (int k = 0; k < 2 * AB_ROUNDS; k++)
		cr_assert_eq(ab.order[k], k, "arrival %d is %c%d, expected %c%d", k,
			     ab.order[k] % 2 ? 'B' : 'A', ab.order[k] / 2, k % 2 ? 'B' : 'A', k / 2);
	cr_assert(run_until_int(&ab.replies, AB_ROUNDS / 2, 10000));
	drop_and_drain(a, b);
}

Test(conn, peer_closing_an_adopted_connection_is_invalid_with_reason)
{
	int peer;
	struct seen sa = { 0 };
	ura_conn *a = adopted(&sa, &peer);
	ura_conn_activate(a);
	struct reply_rec r = { 0 };
	ura_msg *m = msg("q");
	cr_assert_eq(ura_conn_send_with_reply(a, m, on_reply, &r), 0);
	ura_msg_unref(m);
	th_spin(loop, 20);
	close(peer);
	cr_assert(run_until_int(&sa.invalid, 1, 5000));
	cr_assert_eq(atomic_load(&r.invalid), 1);
	expect_reason(a, "peer closed");
	drop_and_drain(a, NULL);
}

/* Writes raw bytes at an adopted connection and expects it to end with a reason. */
static void expect_protocol_error(const void *bytes, size_t len, const char *needle)
{
	int peer;
	struct seen sa = { 0 };
	ura_conn *a = adopted(&sa, &peer);
	ura_conn_set_max_frame(a, 1024);
	ura_conn_activate(a);
	cr_assert_eq(write(peer, bytes, len), (ssize_t)len);
	cr_assert(run_until_int(&sa.invalid, 1, 5000), "no INVALID for %s", needle);
	expect_reason(a, needle);
	ura_conn_unref(a);
	close(peer);
	/* Not ura_loop_run: the healthy pair beside it keeps the loop busy. */
	th_spin(loop, 5);
}

Test(conn, malformed_input_ends_only_that_connection_with_a_reason)
{
	/* A healthy pair runs alongside and must be untouched. */
	ura_conn *a, *b;
	struct seen sa = { 0 }, sb = { 0 };
	active_pair(&a, &sa, &b, &sb);

	expect_protocol_error("GARBAGE-GARBAGE-GARBAGE", 23, "protocol error");
	uint8_t f[URA__FRAME_HEADER_SIZE + 4];
	size_t n;
	cr_assert_eq(ura__frame_encode(f, sizeof(f), 0, 1, "abcd", 4, 0, &n), 0);
	f[4] = 9; /* version */
	expect_protocol_error(f, n, "protocol error");
	uint8_t big[URA__FRAME_HEADER_SIZE];
	cr_assert_eq(ura__frame_encode_header(big, 0, 1, 4096, 0), 0);
	expect_protocol_error(big, sizeof(big), "4096");
	cr_assert_eq(ura__frame_encode(f, sizeof(f), URA__FRAME_IS_REPLY, 77, "abcd", 4, 0, &n), 0);
	expect_protocol_error(f, n, "unknown id 77");

	struct reply_rec r = { 0 };
	ura_msg *m = msg("still fine");
	cr_assert_eq(ura_conn_send_with_reply(a, m, on_reply, &r), 0);
	ura_msg_unref(m);
	cr_assert(run_until_int(&r.calls, 1, 5000));
	cr_assert_str_eq(r.text, "re:still fine");
	drop_and_drain(a, b);
}

Test(conn, truncated_frame_at_end_of_stream_is_invalid)
{
	uint8_t f[URA__FRAME_HEADER_SIZE + 4];
	size_t n;
	cr_assert_eq(ura__frame_encode(f, sizeof(f), 0, 1, "abcd", 4, 0, &n), 0);
	int peer;
	struct seen sa = { 0 };
	ura_conn *a = adopted(&sa, &peer);
	ura_conn_activate(a);
	cr_assert_eq(write(peer, f, n - 2), (ssize_t)n - 2);
	close(peer);
	cr_assert(run_until_int(&sa.invalid, 1, 5000));
	expect_reason(a, "protocol error");
	drop_and_drain(a, NULL);
}

/* ---- listeners and clients by address */

struct server {
	struct seen seen;
	ura_conn *peers[8];
	_Atomic int n;
};

static void accept_peer(ura_listener *l, ura_conn *peer, void *ctx)
{
	(void)l;
	struct server *sv = ctx;
	ura_conn_set_event_handler(peer, on_event, &sv->seen);
	ura_conn_activate(peer);
	int i = atomic_fetch_add(&sv->n, 1);
	if (i < 8)
		sv->peers[i] = peer;
	else
		ura_conn_unref(peer);
}

static void abstract_name(char *buf, size_t len)
{
	snprintf(buf, len, "unix:@ura-test-%d-%u", getpid(), (unsigned)rand());
}

Test(conn, client_by_address_survives_the_peer_and_reconnects)
{
	char addr[64];
	abstract_name(addr, sizeof(addr));
	struct server sv = { 0 };
	ura_listener *l;
	cr_assert_eq(ura_listener_new(loop, addr, accept_peer, &sv, &l), 0);
	ura_listener *dup;
	cr_assert_eq(ura_listener_new(loop, addr, accept_peer, &sv, &dup), -EADDRINUSE);
	char bound[64];
	cr_assert_eq(ura_listener_address(l, bound, sizeof(bound)), strlen(addr));
	cr_assert_str_eq(bound, addr);

	ura_conn *c;
	struct seen sc = { 0 };
	cr_assert_eq(ura_conn_connect(loop, addr, &c), 0);
	ura_conn_set_event_handler(c, on_event, &sc);
	ura_conn_activate(c);
	struct reply_rec r1 = { 0 }, r2 = { 0 }, pending = { 0 };
	ura_msg *m = msg("one");
	cr_assert_eq(ura_conn_send_with_reply(c, m, on_reply, &r1), 0);
	cr_assert(run_until_int(&r1.calls, 1, 5000));
	cr_assert_str_eq(r1.text, "re:one");
	/* The server drops the peer while a request is pending. */
	ura_conn_suspend(sv.peers[0]);
	cr_assert_eq(ura_conn_send_with_reply(c, m, on_reply, &pending), 0);
	th_spin(loop, 20);
	ura_conn_cancel(sv.peers[0]);
	ura_conn_resume(sv.peers[0]);
	cr_assert(run_until_int(&sc.interrupted, 1, 5000), "no INTERRUPTED");
	cr_assert_eq(atomic_load(&pending.interrupted), 1);
	cr_assert_eq(atomic_load(&sc.invalid), 0, "a client by address must stay usable");
	/* The next send reconnects. */
	cr_assert_eq(ura_conn_send_with_reply(c, m, on_reply, &r2), 0);
	cr_assert(run_until_int(&r2.calls, 1, 5000), "no reply after reconnecting");
	cr_assert_str_eq(r2.text, "re:one");
	cr_assert_eq(atomic_load(&sv.n), 2);
	ura_msg_unref(m);
	ura_conn_unref(c);
	for (int i = 0; i < atomic_load(&sv.n) && i < 8; i++)
		ura_conn_unref(sv.peers[i]);
	ura_listener_cancel(l);
	ura_listener_unref(l);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&sc.invalid), 1);
}

Test(conn, failed_connect_is_an_invalid_event_with_reason)
{
	ura_conn *c;
	struct seen sc = { 0 };
	cr_assert_eq(ura_conn_connect(loop, "unix:/nonexistent/ura/socket", &c), 0);
	ura_conn_set_event_handler(c, on_event, &sc);
	struct reply_rec r = { 0 };
	ura_msg *m = msg("lost");
	cr_assert_eq(ura_conn_send_with_reply(c, m, on_reply, &r), 0);
	ura_msg_unref(m);
	ura_conn_activate(c);
	cr_assert(run_until_int(&sc.invalid, 1, 5000), "a failed connect was silent");
	cr_assert_eq(atomic_load(&r.invalid), 1);
	expect_reason(c, "connect:");
	drop_and_drain(c, NULL);
}

Test(conn, bad_arguments)
{
	ura_conn *c = NULL;
	cr_assert_eq(ura_conn_connect(loop, "bogus:thing", &c), -EINVAL);
	cr_assert_eq(ura_conn_connect(loop, NULL, &c), -EINVAL);
	cr_assert_eq(ura_conn_new(loop, -1, &c), -EINVAL);
	cr_assert_eq(ura_conn_new(NULL, 0, &c), -EINVAL);
	cr_assert_eq(ura_conn_send(NULL, NULL), -EINVAL);
	cr_assert_eq(ura_conn_suspend(NULL), -EINVAL);
	ura_listener *l;
	cr_assert_eq(ura_listener_new(loop, "tcp:127.0.0.1", accept_peer, NULL, &l), -EINVAL);
	ura_conn_unref(NULL);
	ura_conn_cancel(NULL);
	cr_assert_eq(ura_loop_run(loop), 0);
}

Test(conn, tcp_loopback_round_trip)
{
	struct server sv = { 0 };
	ura_listener *l;
	cr_assert_eq(ura_listener_new(loop, "tcp:127.0.0.1:0", accept_peer, &sv, &l), 0);
	char bound[64];
	ura_listener_address(l, bound, sizeof(bound));
	cr_assert_neq(strcmp(bound, "tcp:127.0.0.1:0"), 0, "port 0 not resolved: %s", bound);
	ura_conn *c;
	struct seen sc = { 0 };
	cr_assert_eq(ura_conn_connect(loop, bound, &c), 0);
	ura_conn_set_event_handler(c, on_event, &sc);
	ura_conn_activate(c);
	/* A payload larger than one receive buffer crosses chunks. */
	size_t big = 100000;
	char *payload = malloc(big);
	for (size_t i = 0; i < big; i++)
		payload[i] = (char)('a' + i % 26);
	ura_msg *m;
	cr_assert_eq(ura_msg_new(payload, big, &m), 0);
	struct reply_rec r = { 0 };
	cr_assert_eq(ura_conn_send_with_reply(c, m, on_reply, &r), 0);
	cr_assert(run_until_int(&r.calls, 1, 10000));
	cr_assert_eq(atomic_load(&r.messages), 1);
	cr_assert_eq(strncmp(r.text, "re:abcdef", 9), 0, "got %s", r.text);
	ura_msg_unref(m);
	free(payload);
	ura_conn_unref(c);
	for (int i = 0; i < atomic_load(&sv.n) && i < 8; i++)
		ura_conn_unref(sv.peers[i]);
	ura_listener_unref(l);
	cr_assert_eq(ura_loop_run(loop), 0);
}

struct keeper {
	ura_msg *kept;
	_Atomic int seen;
};

static void keep_request(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	(void)c;
	struct keeper *k = ctx;
	if (ev->type != URA_EVENT_MESSAGE)
		return;
	atomic_fetch_add(&k->seen, 1);
	if (atomic_load(&k->seen) == 1)
		k->kept = ura_msg_ref(ev->msg); /* the first is answered later */
	/* the second is neither answered nor kept: released when this returns */
}

Test(conn, a_request_holds_a_transaction_until_answered_or_released)
{
	ura_conn *a, *b;
	struct seen sa = { 0 };
	struct keeper k = { 0 };
	cr_assert_eq(th_conn_pair(loop, on_event, &sa, &a, keep_request, &k, &b), 0);
	ura_conn_activate(a);
	ura_conn_activate(b);
	struct reply_rec r1 = { 0 }, r2 = { 0 };
	ura_msg *m = msg("kept");
	cr_assert_eq(ura_conn_send_with_reply(a, m, on_reply, &r1), 0);
	cr_assert(run_until_int(&k.seen, 1, 5000));
	cr_assert_eq(ura_transaction_count(loop), 1, "the kept request holds one");
	cr_assert_eq(ura_conn_send_with_reply(a, m, on_reply, &r2), 0);
	cr_assert(run_until_int(&k.seen, 2, 5000));
	th_spin(loop, 5);
	cr_assert_eq(ura_transaction_count(loop), 1, "a released request must give its back");
	cr_assert_eq(ura_conn_reply(b, k.kept, m), 0);
	cr_assert(run_until_int(&r1.calls, 1, 5000));
	cr_assert_eq(ura_transaction_count(loop), 0, "answered and written: none left");
	ura_msg_unref(k.kept);
	ura_msg_unref(m);
	drop_and_drain(a, b);
	cr_assert_eq(atomic_load(&r2.calls), 1, "the unanswered request's reply handler");
	cr_assert_eq(atomic_load(&r2.invalid), 1);
}

Test(conn, a_suspended_connection_still_ends_when_the_loop_is_freed)
{
	ura_conn *a, *b;
	struct seen sa = { 0 }, sb = { 0 };
	active_pair(&a, &sa, &b, &sb);
	cr_assert_eq(ura_conn_suspend(a), 0);
	th_spin(loop, 10);
	ura_loop_free(loop);
	cr_assert_eq(atomic_load(&sa.invalid), 1, "the loop's end must reach a suspended one too");
	cr_assert_eq(atomic_load(&sb.invalid), 1);
	/* Calls on connections that outlived their loop are safe. */
	cr_assert_eq(ura_conn_resume(a), 0);
	cr_assert_eq(send_text(a, "after"), -ESHUTDOWN);
	ura_conn_cancel(a);
	ura_conn_unref(a);
	ura_conn_unref(b);
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
}

/* A connection the loop's end reaches with no I/O to cancel (never activated): later
 * calls are refused without touching the freed loop (ASan would see it). */
Test(conn, a_never_activated_connection_refuses_sends_after_the_loop_is_freed)
{
	struct seen sa = { 0 };
	int peer;
	ura_conn *a = adopted(&sa, &peer);
	ura_loop_free(loop);
	cr_assert_eq(atomic_load(&sa.invalid), 1, "the loop's end must reach it");
	cr_assert_eq(send_text(a, "after"), -ESHUTDOWN);
	struct reply_rec r = { 0 };
	ura_msg *m = msg("after");
	cr_assert_eq(ura_conn_send_with_reply(a, m, on_reply, &r), -ESHUTDOWN);
	ura_msg_unref(m);
	ura_conn_unref(a);
	close(peer);
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
}

struct holder {
	ura_msg *req;
};

static void hold_it(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	(void)c;
	struct holder *h = ctx;
	if (ev->type == URA_EVENT_MESSAGE && !h->req)
		h->req = ura_msg_ref(ev->msg);
}

Test(conn, an_oversized_reply_leaves_the_request_answerable)
{
	ura_conn *a, *b;
	struct seen sa = { 0 };
	struct holder h = { 0 };
	cr_assert_eq(th_conn_pair(loop, on_event, &sa, &a, hold_it, &h, &b), 0);
	cr_assert_eq(ura_conn_set_max_frame(b, 4), 0);
	ura_conn_activate(a);
	ura_conn_activate(b);
	struct reply_rec r = { 0 };
	ura_msg *q = msg("q");
	cr_assert_eq(ura_conn_send_with_reply(a, q, on_reply, &r), 0);
	uint64_t end = th_now_ms() + 5000;
	while (!h.req && th_now_ms() < end)
		ura_loop_run_once(loop, false);
	cr_assert_not_null(h.req);
	ura_msg *big = msg("too long"), *ok = msg("ok");
	cr_assert_eq(ura_conn_reply(b, h.req, big), -EMSGSIZE);
	cr_assert_eq(ura_conn_reply(b, h.req, ok), 0, "the refused reply used up the request");
	cr_assert(run_until_int(&r.calls, 1, 5000));
	cr_assert_str_eq(r.text, "ok");
	ura_msg_unref(h.req);
	ura_msg_unref(big);
	ura_msg_unref(ok);
	ura_msg_unref(q);
	drop_and_drain(a, b);
}

/* ---- flow control: output watermarks, and a peer that half-closes */

/* A raw peer's requests carry their id as an 8-byte payload; the server answers each
 * with reply_len bytes of a pattern the id determines, so the peer can check every byte
 * and the order. */
enum { REQ_FRAME = URA__FRAME_HEADER_SIZE + 8 };

static uint8_t pattern_byte(uint64_t id, size_t i)
{
	return (uint8_t)(id * 131 + i * 7 + (i >> 12));
}

struct replier {
	size_t reply_len;
	_Atomic int requests, invalid;
};

static void pattern_replier(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	struct replier *rp = ctx;
	if (ev->type == URA_EVENT_ERROR) {
		if (ev->error == URA_ERROR_CONNECTION_INVALID)
			atomic_fetch_add(&rp->invalid, 1);
		return;
	}
	atomic_fetch_add(&rp->requests, 1);
	uint64_t id = 0;
	cr_assert_eq(ura_msg_len(ev->msg), 8);
	memcpy(&id, ura_msg_data(ev->msg), 8);
	uint8_t *p = malloc(rp->reply_len);
	cr_assert_not_null(p);
	for (size_t i = 0; i < rp->reply_len; i++)
		p[i] = pattern_byte(id, i);
	ura_msg *m;
	cr_assert_eq(ura_msg_new(p, rp->reply_len, &m), 0);
	free(p);
	cr_assert_eq(ura_conn_reply(c, ev->msg, m), 0);
	ura_msg_unref(m);
}

/* Writes request id (id as its payload, little-endian on this machine too) into out. */
static void request_frame(uint8_t out[REQ_FRAME], uint64_t id)
{
	size_t n;
	cr_assert_eq(ura__frame_encode(out, REQ_FRAME, URA__FRAME_EXPECTS_REPLY, id, &id, 8, 0,
				       &n), 0);
	cr_assert_eq(n, REQ_FRAME);
}

/* The raw peer's receiving side: checks each reply frame against docs/PROTOCOL.md and
 * the pattern, as its bytes come, in whatever pieces. */
struct rx {
	uint8_t hdr[URA__FRAME_HEADER_SIZE];
	size_t hdr_have;
	uint64_t id;
	uint32_t len, have;
	uint64_t frames;      /* whole replies received */
	size_t expect_len;
	bool bad;
	char why[160];
};

static void rx_fail(struct rx *r, const char *why)
{
	if (!r->bad)
		snprintf(r->why, sizeof(r->why), "reply %llu: %s",
			 (unsigned long long)r->frames + 1, why);
	r->bad = true;
}

static uint64_t le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void rx_bytes(struct rx *r, const uint8_t *p, size_t n)
{
	while (n && !r->bad) {
		if (r->hdr_have < URA__FRAME_HEADER_SIZE) {
			size_t take = URA__FRAME_HEADER_SIZE - r->hdr_have;
			take = take < n ? take : n;
			memcpy(r->hdr + r->hdr_have, p, take);
			r->hdr_have += take, p += take, n -= take;
			if (r->hdr_have < URA__FRAME_HEADER_SIZE)
				return;
			if (memcmp(r->hdr, "URA1", 4) || r->hdr[4] != 1)
				rx_fail(r, "bad magic or version");
			if (r->hdr[5] != URA__FRAME_IS_REPLY || r->hdr[6] || r->hdr[7])
				rx_fail(r, "not a reply, or reserved bits set");
			r->id = le(r->hdr + 8, 8);
			r->len = (uint32_t)le(r->hdr + 16, 4);
			r->have = 0;
			if (r->id != r->frames + 1)
				rx_fail(r, "out of order");
			if (r->len != r->expect_len)
				rx_fail(r, "wrong length");
		}
		size_t take = r->len - r->have;
		take = take < n ? take : n;
		for (size_t i = 0; i < take && !r->bad; i++)
			if (p[i] != pattern_byte(r->id, r->have + i))
				rx_fail(r, "payload corrupted");
		r->have += (uint32_t)take, p += take, n -= take;
		if (r->have == r->len) {
			r->frames++;
			r->hdr_have = 0;
		}
	}
}

/* Reads what the peer's socket holds (non-blocking) into r. Returns the bytes read, 0 at
 * end of stream, -1 when nothing is there. */
static ssize_t rx_read(struct rx *r, int fd)
{
	static uint8_t buf[1 << 16];
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (n > 0)
		rx_bytes(r, buf, (size_t)n);
	return n < 0 ? -1 : n;
}

enum {
	WM_LOW = 16 << 10,
	WM_HIGH = 64 << 10,
	WM_REPLY = 4 << 10,
	WM_BOUND = WM_HIGH + URA__FRAME_HEADER_SIZE + WM_REPLY, /* the high mark + one reply */
};

Test(conn, a_peer_that_never_reads_stops_the_connection_reading_at_the_high_mark)
{
	struct replier rp = { .reply_len = WM_REPLY };
	int peer;
	ura_conn *c;
	cr_assert_eq(th_conn_adopt(loop, pattern_replier, &rp, &c, &peer), 0);
	cr_assert_eq(ura_conn_set_watermarks(c, WM_LOW, WM_HIGH), 0);
	ura_conn_activate(c);

	/* The peer writes requests (a batch per call, non-blocking) and never reads, until
	 * its socket is full and the connection has stopped reading, for a while. */
	uint8_t batch[64 * REQ_FRAME];
	size_t batch_off = sizeof(batch), written = 0, max_q = 0;
	uint64_t next_id = 1;
	int stable = 0;
	uint64_t end = th_now_ms() + 30000; /* a hang guard */
	while (stable < 200 && max_q <= WM_BOUND && th_now_ms() < end) {
		if (batch_off == sizeof(batch)) {
			for (int i = 0; i < 64; i++)
				request_frame(batch + i * REQ_FRAME, next_id++);
			batch_off = 0;
		}
		ssize_t n = send(peer, batch + batch_off, sizeof(batch) - batch_off, MSG_DONTWAIT);
		if (n > 0) {
			batch_off += (size_t)n;
			written += (size_t)n;
		}
		(void)ura_loop_run_once(loop, false);
		size_t q = ura__conn_queued_bytes(c);
		max_q = q > max_q ? q : max_q;
		stable = n <= 0 && !ura__conn_reading(c) ? stable + 1 : 0;
	}
	cr_assert_leq(max_q, WM_BOUND, "queued output %zu is over the high mark %d + one reply",
		      max_q, WM_HIGH);
	cr_assert_eq(stable, 200, "the connection kept reading (queued %zu, %d requests seen)",
		     ura__conn_queued_bytes(c), atomic_load(&rp.requests));
	cr_assert_gt(max_q, WM_LOW, "the test never filled the queue");
	uint64_t seen_at_stop = (uint64_t)atomic_load(&rp.requests);
	cr_assert_lt(seen_at_stop, written / REQ_FRAME, "requests still in the socket");

	/* The peer reads now: every reply arrives whole and in order, and reading resumes
	 * until every request was answered. The request cut by the full socket goes too. */
	struct rx rx = { .expect_len = WM_REPLY };
	bool resumed = false;
	while (rx.frames < written / REQ_FRAME + (written % REQ_FRAME != 0) && !rx.bad &&
	       th_now_ms() < end) {
		if (written % REQ_FRAME) {
			ssize_t n = send(peer, batch + batch_off, REQ_FRAME - written % REQ_FRAME,
					 MSG_DONTWAIT);
			if (n > 0) {
				batch_off += (size_t)n;
				written += (size_t)n;
			}
		}
		(void)rx_read(&rx, peer);
		(void)ura_loop_run_once(loop, false);
		size_t q = ura__conn_queued_bytes(c);
		max_q = q > max_q ? q : max_q;
		resumed |= ura__conn_reading(c);
	}
	cr_assert(!rx.bad, "%s", rx.why);
	cr_assert_eq(rx.frames, written / REQ_FRAME, "%llu of %zu replies arrived",
		     (unsigned long long)rx.frames, written / REQ_FRAME);
	cr_assert(resumed, "reading never resumed");
	cr_assert_leq(max_q, WM_BOUND, "queued output %zu is over the bound", max_q);
	cr_assert_eq(ura__conn_queued_bytes(c), 0);
	ura_conn_unref(c);
	close(peer);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&rp.invalid), 1);
}

static void *set_watermarks_elsewhere(void *arg)
{
	return (void *)(intptr_t)ura_conn_set_watermarks(arg, 1 << 20, 2 << 20);
}

Test(conn, watermarks_are_validated)
{
	int peer;
	struct seen s = { 0 };
	ura_conn *c = adopted(&s, &peer);
	cr_assert_eq(ura_conn_set_watermarks(NULL, 1, 2), -EINVAL);
	cr_assert_eq(ura_conn_set_watermarks(c, 0, 0), -EINVAL, "high 0");
	cr_assert_eq(ura_conn_set_watermarks(c, 3, 2), -EINVAL, "low over high");
	cr_assert_eq(ura_conn_set_watermarks(c, 0, 1), 0);
	cr_assert_eq(ura_conn_set_watermarks(c, 2, 2), 0);
	ura_conn_activate(c);
	cr_assert_eq(ura_conn_set_watermarks(c, 1 << 20, 4 << 20), 0, "after activation");
	pthread_t th;
	void *r;
	cr_assert_eq(pthread_create(&th, NULL, set_watermarks_elsewhere, c), 0);
	pthread_join(th, &r);
	cr_assert_eq((intptr_t)r, 0, "from another thread");
	th_spin(loop, 5);
	ura_conn_unref(c);
	close(peer);
	cr_assert_eq(ura_loop_run(loop), 0);
}

/* The raw peer sends request 1 and shuts down its write side: it still reads. */
static ura_conn *half_closing_peer(struct replier *rp, int *peer, uint64_t close_timeout_ns)
{
	ura_conn *c;
	cr_assert_eq(th_conn_adopt(loop, pattern_replier, rp, &c, peer), 0);
	if (close_timeout_ns)
		ura__conn_set_close_timeout(c, close_timeout_ns);
	ura_conn_activate(c);
	uint8_t req[REQ_FRAME];
	request_frame(req, 1);
	cr_assert_eq(write(*peer, req, sizeof(req)), (ssize_t)sizeof(req));
	cr_assert_eq(shutdown(*peer, SHUT_WR), 0);
	return c;
}

Test(conn, a_reply_to_a_half_closed_peer_is_written_whole_before_the_end)
{
	struct replier rp = { .reply_len = 16u << 20 }; /* the largest frame, a default */
	int peer;
	ura_conn *c = half_closing_peer(&rp, &peer, 0);
	struct rx rx = { .expect_len = rp.reply_len };
	bool eof = false;
	uint64_t end = th_now_ms() + 30000; /* a hang guard */
	while (!eof && !rx.bad && th_now_ms() < end) {
		eof = rx_read(&rx, peer) == 0;
		(void)ura_loop_run_once(loop, false);
	}
	cr_assert(!rx.bad, "%s", rx.why);
	cr_assert_eq(rx.frames, 1, "the reply was cut: %u of %zu payload bytes arrived",
		     rx.hdr_have == URA__FRAME_HEADER_SIZE ? rx.have : 0, rp.reply_len);
	cr_assert(eof, "the connection did not close after its last reply");
	cr_assert(run_until_int(&rp.invalid, 1, 10000), "no final event");
	expect_reason(c, "peer closed");
	ura_conn_unref(c);
	close(peer);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&rp.invalid), 1);
}

Test(conn, a_half_closed_peer_that_never_reads_is_dropped_after_the_close_timeout)
{
	/* More than the socket holds, less than the high mark: the connection reads on and
	 * sees the end of stream. (Past the high mark it would stop reading first, and wait
	 * for the peer to read like any other connection.) */
	struct replier rp = { .reply_len = 1u << 20 };
	int peer;
	ura_conn *c = half_closing_peer(&rp, &peer, 50ull * 1000 * 1000);
	cr_assert(run_until_int(&rp.invalid, 1, 20000), "the wait was not bounded (%d requests, %zu queued)", atomic_load(&rp.requests), ura__conn_queued_bytes(c));
	cr_assert_eq(atomic_load(&rp.requests), 1);
	expect_reason(c, "peer closed");
	expect_reason(c, "unwritten");
	ura_conn_unref(c);
	close(peer);
	cr_assert_eq(ura_loop_run(loop), 0);
}
