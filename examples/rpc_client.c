/*
 * A client for rpc_server: sends requests and checks that each reply echoes its request.
 *
 *   rpc_client ADDRESS N [INFLIGHT]
 *
 * Sends N requests, keeping INFLIGHT (default 1) of them outstanding, and prints the
 * rate. Exits 0 once every reply arrived intact, 1 on any error (unreachable service,
 * lost connection, wrong reply).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* clock_gettime under -std=c11 */
#endif
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ura.h>

struct run {
	ura_conn *conn;
	uint64_t total, sent, answered;
	bool failed;
};

static void on_reply(ura_conn *c, const struct ura_event *ev, void *arg);

/* Sends request number run->sent: its payload is the number, so the reply can be
 * checked. A message is refcounted: the connection keeps its own reference until the
 * frame is written, so ours can go right after the send. */
static int send_next(struct run *run)
{
	uint64_t seq = run->sent;
	ura_msg *m;
	int r = ura_msg_new(&seq, sizeof(seq), &m);
	if (r == 0) {
		/* on_reply runs exactly once for this request: the answer or an error. */
		r = ura_conn_send_with_reply(run->conn, m, on_reply, run);
		ura_msg_unref(m);
	}
	if (r < 0) {
		fprintf(stderr, "rpc_client: send: %s\n", strerror(-r));
		return r;
	}
	run->sent++;
	return 0;
}

static void fail(struct run *run, ura_conn *c, const char *what)
{
	if (!run->failed)
		fprintf(stderr, "rpc_client: %s after %" PRIu64 " of %" PRIu64 " replies\n", what,
			run->answered, run->total);
	run->failed = true;
	ura_conn_cancel(c); /* the final event follows, then ura_loop_run returns */
}

static void on_reply(ura_conn *c, const struct ura_event *ev, void *arg)
{
	struct run *run = arg;
	if (run->failed)
		return;
	if (ev->type != URA_EVENT_MESSAGE) {
		fail(run, c, ev->error == URA_ERROR_CONNECTION_INTERRUPTED
				     ? "connection interrupted"
				     : "connection invalid");
		return;
	}
	uint64_t seq;
	if (ura_msg_len(ev->msg) != sizeof(seq)) {
		fail(run, c, "a reply of the wrong size");
		return;
	}
	memcpy(&seq, ura_msg_data(ev->msg), sizeof(seq)); /* the payload is not aligned for us */
	if (seq >= run->sent) {
		fail(run, c, "a reply to a request never sent");
		return;
	}
	if (++run->answered == run->total) {
		/* Done. Cancelling ends the connection; its final event is the loop's last
		 * work, so ura_loop_run returns. */
		ura_conn_cancel(c);
		return;
	}
	if (run->sent < run->total && send_next(run) < 0)
		fail(run, c, "send failed");
}

/* The connection's own events: for a client, only its end matters here. */
static void on_event(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	struct run *run = ctx;
	if (ev->type != URA_EVENT_ERROR || run->answered == run->total)
		return;
	if (ev->error == URA_ERROR_CONNECTION_INVALID && !run->failed) {
		/* A connect that failed ends up here, with the reason. */
		char *why = ura_conn_copy_invalidation_reason(c);
		fprintf(stderr, "rpc_client: %s\n", why ? why : "connection invalid");
		free(why); /* a malloc'd copy: ours to free */
		run->failed = true;
	} else if (ev->error == URA_ERROR_CONNECTION_INTERRUPTED) {
		/* The service went away. A client by address would reconnect on its next
		 * send, but a benchmark with lost requests is no benchmark: stop. */
		fail(run, c, "service went away");
	}
}

static bool parse_count(const char *text, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(text, &end, 10);
	if (errno || end == text || *end || v == 0 || text[0] == '-')
		return false;
	*out = v;
	return true;
}

static double seconds_since(const struct timespec *t0)
{
	struct timespec t1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

int main(int argc, char **argv)
{
	uint64_t total, inflight = 1;
	if (argc < 3 || argc > 4 || !parse_count(argv[2], &total) ||
	    (argc == 4 && !parse_count(argv[3], &inflight))) {
		fprintf(stderr, "usage: rpc_client ADDRESS N [INFLIGHT]   (N, INFLIGHT >= 1)\n");
		return 2;
	}
	ura_loop *loop;
	int r = ura_loop_new(NULL, &loop);
	if (r < 0) {
		fprintf(stderr, "rpc_client: loop: %s\n", strerror(-r));
		return 1;
	}
	struct run run = { .total = total };
	/* Only a malformed address fails here; an unreachable one is an INVALID event. */
	r = ura_conn_connect(loop, argv[1], &run.conn);
	if (r < 0) {
		fprintf(stderr, "rpc_client: %s: %s\n", argv[1], strerror(-r));
		ura_loop_free(loop);
		return 1;
	}
	ura_conn_set_event_handler(run.conn, on_event, &run);
	ura_conn_activate(run.conn); /* connects; requests sent before that wait for it */

	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (uint64_t i = 0; i < inflight && i < total && !run.failed; i++)
		if (send_next(&run) < 0)
			fail(&run, run.conn, "send failed");
	/* Runs until the connection has ended: after the last reply, or on an error. */
	r = ura_loop_run(loop);
	double secs = seconds_since(&t0);

	ura_conn_unref(run.conn);
	ura_loop_free(loop);
	if (r < 0) {
		fprintf(stderr, "rpc_client: loop: %s\n", strerror(-r));
		return 1;
	}
	if (run.failed || run.answered != total)
		return 1;
	printf("%" PRIu64 " requests in %.3f s: %.0f requests/s (%" PRIu64 " in flight)\n", total,
	       secs, secs > 0 ? (double)total / secs : 0.0, inflight);
	return 0;
}
