/*
 * Connection stress: sends with replies from other threads racing a cancel, and the order
 * of sends made by several threads and the loop thread. Built with Criterion (ASan) and
 * standalone under ThreadSanitizer, like test_stress.c.
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
#include <sched.h>
#include <string.h>
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

/*
 * Send order across threads (DESIGN.md: "queued in order", as on an XPC connection's
 * queue): sends leave in the order their calls returned, whatever thread made them.
 * Threads send numbered messages; the loop thread (in its own code and inside b's
 * handler) sends messages carrying how many sends of each thread it had seen return.
 * At the peer each thread's messages come in order, and a loop message comes after
 * every send it had seen return.
 */
enum { ORDER_SENDERS = 3, ORDER_PER_THREAD = 2000, ORDER_FROM_LOOP = 2000 };

struct order_msg {
	uint32_t sender; /* ORDER_SENDERS: the loop thread */
	uint32_t seq;
	uint32_t seen[ORDER_SENDERS]; /* a loop message: each thread's returned sends */
};

struct order {
	ura_conn *a;
	_Atomic bool go;
	_Atomic uint32_t returned[ORDER_SENDERS];
	_Atomic uint64_t send_errors, replies;
	/* Loop thread only. */
	uint32_t from_loop;
	uint32_t next[ORDER_SENDERS + 1];
	uint64_t received, out_of_order, too_early, malformed;
	const char *first; /* the first problem: what, and three numbers */
	uint32_t first_x, first_y, first_z;
};

static void order_reply(ura_conn *c, const struct ura_event *ev, void *arg)
{
	(void)c, (void)ev;
	atomic_fetch_add(&((struct order *)arg)->replies, 1);
}

static int order_send(ura_conn *c, const struct order_msg *om, bool with_reply, void *arg)
{
	ura_msg *m;
	int r = ura_msg_new(om, sizeof(*om), &m);
	if (r < 0)
		return r;
	r = with_reply ? ura_conn_send_with_reply(c, m, order_reply, arg) : ura_conn_send(c, m);
	ura_msg_unref(m);
	return r;
}

/* A loop-thread message: what it has seen of each thread so far. */
static void order_send_from_loop(struct order *o)
{
	if (o->from_loop == ORDER_FROM_LOOP)
		return;
	struct order_msg om = { .sender = ORDER_SENDERS, .seq = o->from_loop };
	for (int t = 0; t < ORDER_SENDERS; t++)
		/* Acquire: pairs with the sender's release store after its send returned. */
		om.seen[t] = atomic_load_explicit(&o->returned[t], memory_order_acquire);
	if (order_send(o->a, &om, false, o) < 0)
		atomic_fetch_add(&o->send_errors, 1);
	o->from_loop++;
}

static void order_note(struct order *o, uint64_t *counter, const char *what, uint32_t x,
		       uint32_t y, uint32_t z)
{
	if (!o->first) {
		o->first = what;
		o->first_x = x, o->first_y = y, o->first_z = z;
	}
	(*counter)++;
}

static void order_receive(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	struct order *o = ctx;
	if (ev->type != URA_EVENT_MESSAGE)
		return;
	struct order_msg om;
	if (ura_msg_len(ev->msg) != sizeof(om)) {
		order_note(o, &o->malformed, "a message of the wrong size",
			   (uint32_t)ura_msg_len(ev->msg), 0, 0);
		return;
	}
	memcpy(&om, ura_msg_data(ev->msg), sizeof(om));
	if (om.sender > ORDER_SENDERS) {
		order_note(o, &o->malformed, "an unknown sender", om.sender, 0, 0);
		return;
	}
	if (om.seq != o->next[om.sender])
		order_note(o, &o->out_of_order, "sender, message, message due", om.sender,
			   om.seq, o->next[om.sender]);
	o->next[om.sender] = om.seq + 1;
	if (om.sender == ORDER_SENDERS)
		for (uint32_t t = 0; t < ORDER_SENDERS; t++)
			if (o->next[t] < om.seen[t])
				order_note(o, &o->too_early,
					   "loop message, came before message, of thread",
					   om.seq, om.seen[t] - 1, t);
	o->received++;
	if (ura_msg_expects_reply(ev->msg))
		(void)ura_conn_reply(c, ev->msg, ev->msg);
	if (o->received % 3 == 0)
		order_send_from_loop(o); /* a send from inside a callback, too */
}

struct order_thread {
	struct order *o;
	uint32_t t;
};

static void *order_thread_main(void *arg)
{
	struct order_thread *ot = arg;
	struct order *o = ot->o;
	while (!atomic_load(&o->go))
		;
	for (uint32_t i = 0; i < ORDER_PER_THREAD; i++) {
		struct order_msg om = { .sender = ot->t, .seq = i };
		if (order_send(o->a, &om, i % 5 == 0, o) < 0) {
			atomic_fetch_add(&o->send_errors, 1);
			break;
		}
		/* Release: a loop thread that reads i + 1 sends after this send returned. */
		atomic_store_explicit(&o->returned[ot->t], i + 1, memory_order_release);
		if (i % 16 == 15)
			sched_yield(); /* interleave with the loop thread more often */
	}
	return NULL;
}

Test(conn_stress, sends_leave_in_the_order_their_calls_returned, .timeout = 300)
{
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	static struct order o;
	memset(&o, 0, sizeof(o));
	ura_conn *b;
	cr_assert_eq(th_conn_pair(loop, NULL, NULL, &o.a, order_receive, &o, &b), 0);
	ura_conn_activate(o.a);
	ura_conn_activate(b);
	pthread_t th[ORDER_SENDERS];
	struct order_thread ot[ORDER_SENDERS];
	for (uint32_t t = 0; t < ORDER_SENDERS; t++) {
		ot[t] = (struct order_thread){ .o = &o, .t = t };
		cr_assert_eq(pthread_create(&th[t], NULL, order_thread_main, &ot[t]), 0);
	}
	atomic_store(&o.go, true);
	const uint64_t want = (uint64_t)ORDER_SENDERS * ORDER_PER_THREAD + ORDER_FROM_LOOP;
	uint64_t end = th_now_ms() + 120000; /* a hang guard, not a speed bound */
	while (o.received < want && th_now_ms() < end &&
	       atomic_load(&o.send_errors) == 0) {
		order_send_from_loop(&o);
		(void)ura_loop_run_once(loop, false);
	}
	for (int t = 0; t < ORDER_SENDERS; t++)
		pthread_join(th[t], NULL);
	cr_log_info("order: %llu received, %llu replies",
		    (unsigned long long)o.received, (unsigned long long)atomic_load(&o.replies));
	cr_assert_eq(atomic_load(&o.send_errors), 0);
	cr_assert_eq(o.malformed + o.out_of_order + o.too_early, 0,
		     "%llu out of order, %llu too early, %llu malformed; first: %s %u %u %u",
		     (unsigned long long)o.out_of_order, (unsigned long long)o.too_early,
		     (unsigned long long)o.malformed, o.first, o.first_x, o.first_y, o.first_z);
	cr_assert_eq(o.received, want, "%llu of %llu messages arrived",
		     (unsigned long long)o.received, (unsigned long long)want);
	ura_conn_unref(o.a);
	ura_conn_unref(b);
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_loop_free(loop);
}

/*
 * A half-closed peer whose requests other threads answer while another thread changes
 * the connection's watermarks: every answer (each accepted, since the connection waits
 * for the requests it received) reaches the peer before the close, whatever the
 * interleaving of the answers, the pokes and the close.
 */
enum { HC_REQUESTS = 400, HC_ANSWERERS = 2, HC_ROUNDS = 20, HC_FRAME = 20 + 8 };

struct half_close {
	ura_conn *c;
	ura_msg *reqs[HC_REQUESTS];
	_Atomic int received, accepted, refused, finals;
	_Atomic bool done;
};

static void hc_event(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	(void)c;
	struct half_close *h = ctx;
	if (ev->type == URA_EVENT_MESSAGE) {
		int i = atomic_load(&h->received);
		if (i < HC_REQUESTS)
			h->reqs[i] = ura_msg_ref(ev->msg);
		/* Release: the answerers read reqs[i] after seeing the count. */
		atomic_store(&h->received, i + 1);
	} else if (ev->error == URA_ERROR_CONNECTION_INVALID) {
		atomic_fetch_add(&h->finals, 1);
	}
}

struct hc_thread {
	struct half_close *h;
	int t;
};

static void *hc_answer(void *arg)
{
	struct hc_thread *ht = arg;
	struct half_close *h = ht->h;
	uint64_t end = th_now_ms() + 60000; /* a hang guard */
	while (atomic_load(&h->received) < HC_REQUESTS && th_now_ms() < end)
		sched_yield();
	for (int i = ht->t; i < atomic_load(&h->received) && i < HC_REQUESTS; i += HC_ANSWERERS) {
		/* The request is its own answer (an echo). */
		if (ura_conn_reply(h->c, h->reqs[i], h->reqs[i]) == 0)
			atomic_fetch_add(&h->accepted, 1);
		else
			atomic_fetch_add(&h->refused, 1);
		ura_msg_unref(h->reqs[i]);
		if (i % 16 == 0)
			sched_yield();
	}
	return NULL;
}

static void *hc_marks(void *arg)
{
	struct half_close *h = arg;
	for (size_t k = 0; !atomic_load(&h->done); k++) {
		/* Tiny marks stop and start reading often; large ones leave it on. */
		size_t high = k % 3 ? (k % 7 + 1) * HC_FRAME : (size_t)4 << 20;
		(void)ura_conn_set_watermarks(h->c, high / 2, high);
		sched_yield();
	}
	return NULL;
}

Test(conn_stress, a_half_closed_peer_gets_every_answer_other_threads_gave, .timeout = 300)
{
	ura_loop *loop;
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	for (int round = 0; round < HC_ROUNDS; round++) {
		static struct half_close h;
		memset(&h, 0, sizeof(h));
		int peer;
		cr_assert_eq(th_conn_adopt(loop, hc_event, &h, &h.c, &peer), 0);
		ura_conn_activate(h.c);
		pthread_t th[HC_ANSWERERS + 1];
		struct hc_thread ht[HC_ANSWERERS];
		for (int t = 0; t < HC_ANSWERERS; t++) {
			ht[t] = (struct hc_thread){ .h = &h, .t = t };
			cr_assert_eq(pthread_create(&th[t], NULL, hc_answer, &ht[t]), 0);
		}
		cr_assert_eq(pthread_create(&th[HC_ANSWERERS], NULL, hc_marks, &h), 0);
		/* The peer's requests, then its half-close. */
		static uint8_t reqs[HC_REQUESTS * HC_FRAME];
		for (uint64_t i = 0; i < HC_REQUESTS; i++) {
			uint8_t *f = reqs + i * HC_FRAME;
			memcpy(f, "URA1\x01\x01\x00\x00", 8);
			for (int b = 0; b < 8; b++)
				f[8 + b] = (uint8_t)((i + 1) >> (8 * b));
			memcpy(f + 16, "\x08\x00\x00\x00", 4);
			memcpy(f + 20, &i, 8);
		}
		size_t off = 0, got = 0;
		bool eof = false, bad = false;
		uint64_t end = th_now_ms() + 60000; /* a hang guard */
		while (!eof && th_now_ms() < end) {
			if (off < sizeof(reqs)) {
				ssize_t n = send(peer, reqs + off, sizeof(reqs) - off, MSG_DONTWAIT);
				off += n > 0 ? (size_t)n : 0;
				if (off == sizeof(reqs))
					cr_assert_eq(shutdown(peer, SHUT_WR), 0);
			}
			static uint8_t in[HC_REQUESTS * HC_FRAME];
			ssize_t n = recv(peer, in + got, sizeof(in) - got, MSG_DONTWAIT);
			if (n == 0 || (n < 0 && errno != EAGAIN))
				eof = true;
			got += n > 0 ? (size_t)n : 0;
			(void)ura_loop_run_once(loop, false);
			if (got == sizeof(in)) { /* all there: the next read must be the end */
				for (size_t i = 0; i < got; i += HC_FRAME)
					bad |= memcmp(in + i, "URA1\x01\x02", 6) != 0;
				uint8_t extra;
				while (!eof && th_now_ms() < end) {
					n = recv(peer, &extra, 1, MSG_DONTWAIT);
					eof = n == 0;
					bad |= n > 0;
					(void)ura_loop_run_once(loop, false);
				}
			}
		}
		atomic_store(&h.done, true);
		for (int t = 0; t <= HC_ANSWERERS; t++)
			pthread_join(th[t], NULL);
		uint64_t fin_end = th_now_ms() + 10000;
		while (atomic_load(&h.finals) == 0 && th_now_ms() < fin_end)
			(void)ura_loop_run_once(loop, false);
		cr_assert(eof, "round %d: no end of stream", round);
		cr_assert(!bad, "round %d: a malformed reply or bytes after the last", round);
		cr_assert_eq(atomic_load(&h.refused), 0, "round %d: an answer was refused", round);
		cr_assert_eq(atomic_load(&h.accepted), HC_REQUESTS);
		cr_assert_eq(got, (size_t)HC_REQUESTS * HC_FRAME,
			     "round %d: %zu of %d replies arrived", round, got / HC_FRAME,
			     HC_REQUESTS);
		cr_assert_eq(atomic_load(&h.finals), 1, "round %d: no final event", round);
		ura_conn_unref(h.c);
		close(peer);
	}
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_loop_free(loop);
}
