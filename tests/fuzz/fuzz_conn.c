/*
 * libFuzzer harness for a connection's receive path: arbitrary bytes from a peer, through
 * a real socket and a real ring, into an adopted connection (src/ipc/conn_io.c decodes,
 * conn_deliver.c delivers, conn.c ends it). Run by scripts/fuzz.
 *
 * fuzz-sources: src/util/ src/core/ src/net/ src/ipc/
 * fuzz-libs: -luring -lmimalloc -lpthread
 * fuzz-cflags: -DURA_SYSTEM_MALLOC
 *
 * (URA_SYSTEM_MALLOC: runtime objects come from malloc, not mimalloc, so that
 * AddressSanitizer sees every one of them: overflows, use after free, leaks.)
 *
 * Input: byte 0 holds options (bits 0-2 the connection's frame limit, bit 3 suspended
 * while the bytes arrive, bit 4 two requests sent first so that replies can match, bit 5
 * cancel from the handler at the first message), bytes 1-2 seed the chunking, the rest is
 * what the peer sends. The peer end writes it in chunks (the loop runs between them),
 * then shuts down its write side: a half close, so that the connection's own writes
 * (answers to requests) never fail with EPIPE and race the verdict on the input.
 *
 * Invariants checked:
 *   - exactly one final CONNECTION_INVALID event, with a reason, and no event after it;
 *     each request's reply handler called exactly once, before the final event;
 *   - without suspension, the events are exactly what the frame decoder predicts for
 *     the stream: the messages before the first error, the replies to our requests, and
 *     a reason naming the error ("protocol error: ...") or "peer closed";
 *   - afterwards the descriptor is closed and the loop holds no task, cancel, handle or
 *     invalidating session: nothing leaks from one input to the next.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "frame.h"
#include "loop.h"
#include "ura.h"

#include "fuzz.h"

enum {
	OPT_LIMIT = 7,
	OPT_SUSPEND = 1 << 3,
	OPT_REQUESTS = 1 << 4,
	OPT_CANCEL = 1 << 5,
	REQUESTS = 2,
};

/* Small limits that inputs reach; 0 leaves the default (16 MiB). */
static const uint32_t limits[8] = { 0, 1, 16, 20, 64, 255, 4096, 65536 };

/* What the connection did, for one input. Static: nothing may touch it after the input,
 * and if the runtime did, the counts of the next input would show it. */
static struct seen {
	unsigned messages, finals, after_final, other;
	unsigned reply_calls[REQUESTS], reply_msgs[REQUESTS];
	bool replies_before_final;
	bool cancel_at_first;
	uint32_t limit;                 /* the connection's frame limit (0: the default) */
	char reason[256];
} seen;

static void on_event(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	(void)ctx;
	if (seen.finals) {
		seen.after_final++;
		return;
	}
	if (ev->type == URA_EVENT_MESSAGE) {
		seen.messages++;
		if (ura_msg_expects_reply(ev->msg)) {
			/* "ok", cut to the limit: a larger reply is -EMSGSIZE. */
			size_t len = seen.limit == 1 ? 1 : 2;
			ura_msg *m;
			CHECK(ura_msg_new("ok", len, &m) == 0);
			int r = ura_conn_reply(c, ev->msg, m);
			CHECK(r == 0 || r == -ESHUTDOWN);
			ura_msg_unref(m);
		}
		if (seen.cancel_at_first)
			ura_conn_cancel(c);
		return;
	}
	if (ev->error != URA_ERROR_CONNECTION_INVALID) {
		seen.other++; /* INTERRUPTED is for clients by address only */
		return;
	}
	seen.finals++;
	seen.replies_before_final = true;
	for (int i = 0; i < REQUESTS; i++)
		seen.replies_before_final &= seen.reply_calls[i] == 1;
	char *why = ura_conn_copy_invalidation_reason(c);
	CHECK(why != NULL);
	snprintf(seen.reason, sizeof(seen.reason), "%s", why);
	free(why);
}

static void on_reply(ura_conn *c, const struct ura_event *ev, void *arg)
{
	(void)c;
	uintptr_t i = (uintptr_t)arg;
	seen.reply_calls[i]++;
	if (ev->type == URA_EVENT_MESSAGE)
		seen.reply_msgs[i]++;
}

/* What the stream should do to a connection, from the decoder alone. */
struct model {
	unsigned messages;
	unsigned reply_msgs[REQUESTS];
	char reason[256];
};

static void predict(const uint8_t *s, size_t n, uint32_t max, bool requests, struct model *m)
{
	memset(m, 0, sizeof(*m));
	struct ura__frame_decoder d;
	ura__frame_decoder_init(&d, max);
	bool pending[REQUESTS] = { requests, requests };
	size_t off = 0;
	for (;;) {
		size_t used = 0;
		struct ura__frame f;
		int r = ura__frame_decode(&d, s + off, n - off, &used, &f);
		off += used;
		if (r == URA__FRAME_MORE)
			break;
		if (r == URA__FRAME_NEED_BUFFER) {
			/* As the connection does: a buffer, so that the decoder counts the
			 * payload bytes it got (the truncation reason names them). */
			void *buf = malloc(ura__frame_decoder_need(&d));
			CHECK(buf && ura__frame_decoder_give(&d, buf) == 0);
			continue;
		}
		if (r < 0) {
			snprintf(m->reason, sizeof(m->reason), "protocol error: %s",
				 ura__frame_decoder_reason(&d));
			break;
		}
		free(f.buffer);
		if (f.flags & URA__FRAME_IS_REPLY) {
			/* Our requests are ids 1 and 2 (checked when they are sent). */
			if (f.id >= 1 && f.id <= REQUESTS && pending[f.id - 1]) {
				pending[f.id - 1] = false;
				m->reply_msgs[f.id - 1]++;
				continue;
			}
			snprintf(m->reason, sizeof(m->reason),
				 "protocol error: reply to unknown id %llu", (unsigned long long)f.id);
			break;
		}
		m->messages++;
	}
	if (m->reason[0] == '\0') {
		if (ura__frame_decoder_finish(&d) < 0)
			snprintf(m->reason, sizeof(m->reason), "protocol error: %s",
				 ura__frame_decoder_reason(&d));
		else
			snprintf(m->reason, sizeof(m->reason), "peer closed");
	}
	free(ura__frame_decoder_reset(&d));
}

static ura_loop *loop;

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Runs a few loop iterations and throws away what the connection wrote to the peer. */
static void pump(int peer, unsigned iterations)
{
	char sink[4096];
	for (unsigned i = 0; i < iterations; i++) {
		CHECK(ura_loop_run_once(loop, false) >= 0);
		while (read(peer, sink, sizeof(sink)) > 0)
			;
	}
}

/* xorshift64: the chunk sizes. */
static uint64_t next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	if (!loop)
		CHECK(ura_loop_new(NULL, &loop) == 0); /* one loop for the whole run */
	uint8_t opt = data[0];
	uint32_t limit = limits[opt & OPT_LIMIT];
	uint64_t rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)(data[1] | data[2] << 8);
	const uint8_t *stream = data + 3;
	size_t n = size - 3;

	memset(&seen, 0, sizeof(seen));
	seen.cancel_at_first = opt & OPT_CANCEL;
	seen.limit = limit;
	int sv[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) == 0);
	ura_conn *c;
	CHECK(ura_conn_new(loop, sv[0], &c) == 0);
	CHECK(ura_conn_set_event_handler(c, on_event, NULL) == 0);
	if (limit)
		CHECK(ura_conn_set_max_frame(c, limit) == 0);
	if (opt & OPT_REQUESTS) {
		for (uintptr_t i = 0; i < REQUESTS; i++) {
			ura_msg *m;
			CHECK(ura_msg_new(NULL, 0, &m) == 0);
			CHECK(ura_conn_send_with_reply(c, m, on_reply, (void *)i) == 0);
			ura_msg_unref(m);
		}
		CHECK(c->next_id == REQUESTS + 1); /* the model's assumption: ids 1 and 2 */
	}
	if (opt & OPT_SUSPEND)
		CHECK(ura_conn_suspend(c) == 0);
	ura_conn_activate(c);

	/* The peer sends the stream in chunks, the loop running in between. */
	static const size_t caps[8] = { 1, 2, 3, 7, 19, 21, 64, 4096 };
	size_t cap = caps[rng & 7], off = 0;
	uint64_t end = now_ms() + 5000;
	while (off < n && now_ms() < end && !seen.finals) {
		size_t len = 1 + (size_t)(next(&rng) % cap);
		if (len > n - off)
			len = n - off;
		/* MSG_NOSIGNAL: a connection that ended has closed its end (EPIPE). */
		ssize_t w = send(sv[1], stream + off, len, MSG_NOSIGNAL);
		if (w > 0)
			off += (size_t)w;
		else if (errno == EPIPE || errno == ECONNRESET)
			break;
		else
			CHECK(errno == EAGAIN); /* full: the connection stopped reading, or is slow */
		pump(sv[1], 1 + (unsigned)(next(&rng) % 3));
	}
	CHECK(shutdown(sv[1], SHUT_WR) == 0 || errno == ENOTCONN);
	if (opt & OPT_SUSPEND) {
		pump(sv[1], 4);
		CHECK(ura_conn_resume(c) == 0);
	}
	while (!seen.finals && now_ms() < end) {
		pump(sv[1], 1);
		if (!seen.finals)
			nanosleep(&(struct timespec){ 0, 20000 }, NULL);
	}
	CHECK(seen.finals == 1);
	CHECK(seen.reason[0] != '\0');
	CHECK(seen.other == 0);
	for (int i = 0; i < REQUESTS; i++)
		CHECK(seen.reply_calls[i] == ((opt & OPT_REQUESTS) ? 1u : 0u));
	CHECK(!(opt & OPT_REQUESTS) || seen.replies_before_final);

	char *why = ura_conn_copy_invalidation_reason(c);
	CHECK(why && strcmp(why, seen.reason) == 0);
	free(why);
	ura_conn_unref(c);
	pump(sv[1], 4);
	CHECK(seen.finals == 1 && seen.after_final == 0);

	/* Nothing of the connection is left: its descriptor and every count of the loop. */
	CHECK(fcntl(sv[0], F_GETFD) < 0 && errno == EBADF);
	CHECK(loop->live_tasks == 0 && loop->cancels_in_flight == 0);
	CHECK(loop->active_handles == 0 && loop->invalidating == 0);
	close(sv[1]);

	/* The model, where timing cannot change the outcome: no suspension (held events are
	 * dropped by the end), no cancel from the handler, the whole stream written. */
	if (!(opt & (OPT_SUSPEND | OPT_CANCEL)) && off == n) {
		struct model m;
		predict(stream, n, limit ? limit : URA__FRAME_MAX_PAYLOAD_DEFAULT,
			opt & OPT_REQUESTS, &m);
		if (strcmp(m.reason, seen.reason) != 0 || m.messages != seen.messages) {
			fprintf(stderr, "expected %u messages and \"%s\", got %u and \"%s\"\n",
				m.messages, m.reason, seen.messages, seen.reason);
			CHECK(!"the connection disagrees with the frame decoder");
		}
		for (int i = 0; i < REQUESTS; i++)
			CHECK(seen.reply_msgs[i] == m.reply_msgs[i]);
	}
	return 0;
}
