/*
 * The soak's connections (see soak.c): peers accepted by the listener, which answer
 * requests, echo messages and ask questions of their own; clients that connect, send,
 * send_with_reply, suspend and resume, cancel, and are dropped. Every connection and
 * every send_with_reply is recorded and checked at the very end, after the loop is freed:
 * a handler may run until the final event, after the last reference is gone.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "soak.h"

_Atomic uint64_t pending_replies; /* accepted send_with_reply not answered yet */

struct cctx;

/* One send_with_reply, kept to the end. */
struct rrec {
	struct rrec *next;
	struct cctx *cc;
	uint64_t nonce;               /* the request's first 8 bytes, echoed in the answer */
	size_t len;                   /* the request's length */
	_Atomic int state;
	_Atomic uint32_t calls;
};

/* One connection, client or peer, kept to the end (its handler may run until the
 * final event, after our last reference is gone). */
struct cctx {
	struct cctx *next_all;
	ura_conn *c;                  /* only while the table holds it */
	bool peer;
	_Atomic uint32_t finals, late, interrupted;
	_Atomic bool final_seen;
	_Atomic(struct rrec *) replies;
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(struct cctx *) all_conns;
static struct cctx *conns[MAX_CONNS]; /* under table_lock; each holds one reference */
static unsigned n_conns;

static void push_conn(struct cctx *cc)
{
	struct cctx *head = atomic_load(&all_conns);
	do
		cc->next_all = head;
	while (!atomic_compare_exchange_weak(&all_conns, &head, cc));
}

static void push_reply(struct cctx *cc, struct rrec *r)
{
	struct rrec *head = atomic_load(&cc->replies);
	do
		r->next = head;
	while (!atomic_compare_exchange_weak(&cc->replies, &head, r));
}

/* A payload: an 8-byte nonce, then filler; now and then over a receive buffer's 16 KiB
 * so that payloads straddle reads. */
static ura_msg *make_msg(uint64_t nonce)
{
	size_t len = 8 + (chance(50) ? 16384 + below(50000) : below(300));
	unsigned char *buf = malloc(len);
	if (!buf)
		abort();
	memcpy(buf, &nonce, 8);
	memset(buf + 8, 'a' + (int)below(26), len - 8);
	ura_msg *m;
	if (ura_msg_new(buf, len, &m) != 0)
		abort();
	free(buf);
	return m;
}

static void on_reply(ura_conn *c, const struct ura_event *ev, void *arg)
{
	(void)c;
	struct rrec *r = arg;
	if (atomic_fetch_add(&r->calls, 1) != 0)
		violation("reply handler called twice");
	atomic_fetch_sub(&pending_replies, 1);
	if (atomic_load(&r->cc->final_seen))
		atomic_fetch_add(&counts.replies_after_final, 1);
	if (ev->type == URA_EVENT_MESSAGE) {
		const unsigned char *p = ura_msg_data(ev->msg);
		size_t len = ura_msg_len(ev->msg);
		if (len != r->len + 3 || memcmp(p, "re:", 3) != 0 ||
		    memcmp(p + 3, &r->nonce, 8) != 0)
			violation("%s: an answer of %zu bytes (%.3s) to a request of %zu bytes "
				  "(after %u INTERRUPTED)", r->cc->peer ? "peer" : "client", len,
				  (const char *)p, r->len, atomic_load(&r->cc->interrupted));
		atomic_fetch_add(&counts.replies_msg, 1);
	} else if (ev->error == URA_ERROR_CONNECTION_INVALID) {
		atomic_fetch_add(&counts.replies_invalid, 1);
	} else if (ev->error == URA_ERROR_CONNECTION_INTERRUPTED && !r->cc->peer) {
		atomic_fetch_add(&counts.replies_interrupted, 1);
	} else {
		violation("reply handler got error %d (peer %d)", ev->error, r->cc->peer);
	}
}

static void send_request(ura_conn *c, struct cctx *cc)
{
	if (atomic_load(&pending_replies) >= MAX_PENDING_REPLIES)
		return;
	struct rrec *r = calloc(1, sizeof(*r));
	if (!r)
		abort();
	r->cc = cc;
	r->nonce = rnd();
	push_reply(cc, r);
	atomic_fetch_add(&pending_replies, 1);
	ura_msg *m = make_msg(r->nonce);
	r->len = ura_msg_len(m);
	int rc = ura_conn_send_with_reply(c, m, on_reply, r);
	ura_msg_unref(m);
	if (rc == 0) {
		atomic_store(&r->state, ACCEPTED);
		atomic_fetch_add(&counts.requests, 1);
		return;
	}
	if (rc != -ESHUTDOWN)
		violation("send_with_reply: %d", rc);
	atomic_store(&r->state, REFUSED);
	atomic_fetch_sub(&pending_replies, 1);
	atomic_fetch_add(&counts.requests_refused, 1);
}

static void send_plain(ura_conn *c)
{
	ura_msg *m = make_msg(rnd());
	int rc = ura_conn_send(c, m);
	ura_msg_unref(m);
	if (rc == 0)
		atomic_fetch_add(&counts.msgs_sent, 1);
	else if (rc != -ESHUTDOWN)
		violation("ura_conn_send: %d", rc);
}

static void answer(ura_conn *c, ura_msg *req)
{
	size_t len = ura_msg_len(req);
	unsigned char *buf = malloc(len + 3);
	if (!buf)
		abort();
	memcpy(buf, "re:", 3);
	memcpy(buf + 3, ura_msg_data(req), len);
	ura_msg *m;
	if (ura_msg_new(buf, len + 3, &m) != 0)
		abort();
	free(buf);
	int rc = ura_conn_reply(c, req, m);
	ura_msg_unref(m);
	/* -ENOTCONN: a client was interrupted since the request arrived (its peer left). */
	if (rc != 0 && rc != -ESHUTDOWN && rc != -ENOTCONN)
		violation("ura_conn_reply: %d", rc);
}

/* Both sides: answer requests; peers also echo plain messages and ask the client. */
static void on_event(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	struct cctx *cc = ctx;
	if (atomic_load(&cc->final_seen)) {
		atomic_fetch_add(&cc->late, 1);
		return;
	}
	if (ev->type == URA_EVENT_MESSAGE) {
		atomic_fetch_add(&counts.msgs_received, 1);
		if (ura_msg_expects_reply(ev->msg)) {
			answer(c, ev->msg);
		} else if (cc->peer && !atomic_load(&draining)) {
			if (chance(4)) {
				int rc = ura_conn_send(c, ev->msg);
				if (rc == 0)
					atomic_fetch_add(&counts.echoes, 1);
				else if (rc != -ESHUTDOWN)
					violation("echo: %d", rc);
			} else if (chance(8)) {
				send_request(c, cc);
			}
		}
		return;
	}
	switch (ev->error) {
	case URA_ERROR_CONNECTION_INTERRUPTED:
		if (cc->peer)
			violation("an accepted connection got INTERRUPTED");
		atomic_fetch_add(&cc->interrupted, 1);
		atomic_fetch_add(&counts.interrupted, 1);
		break;
	case URA_ERROR_CONNECTION_INVALID: {
		atomic_fetch_add(&cc->finals, 1);
		atomic_store(&cc->final_seen, true);
		atomic_fetch_add(&counts.conn_finals, 1);
		char *why = ura_conn_copy_invalidation_reason(c);
		if (!why)
			violation("final event without a reason");
		/* Both ends speak the protocol correctly: a protocol error is a bug. */
		else if (strstr(why, "protocol error"))
			violation("%s ended with \"%s\"", cc->peer ? "peer" : "client", why);
		free(why);
		break;
	}
	default:
		violation("connection event with error %d", ev->error);
	}
}

void on_accept(ura_listener *l, ura_conn *peer, void *ctx)
{
	(void)l, (void)ctx;
	struct cctx *cc = calloc(1, sizeof(*cc));
	if (!cc)
		abort();
	cc->peer = true;
	cc->c = peer;
	push_conn(cc);
	atomic_fetch_add(&counts.peers, 1);
	if (ura_conn_set_event_handler(peer, on_event, cc) != 0)
		violation("set_event_handler on an accepted peer");
	ura_conn_activate(peer);
	pthread_mutex_lock(&table_lock);
	if (n_conns < MAX_CONNS && !atomic_load(&draining)) {
		conns[n_conns++] = cc;
		peer = NULL;
	}
	pthread_mutex_unlock(&table_lock);
	ura_conn_unref(peer); /* no room: the last unref cancels it */
}

void act_new_client(void)
{
	pthread_mutex_lock(&table_lock);
	unsigned clients = 0;
	for (unsigned i = 0; i < n_conns; i++)
		clients += !conns[i]->peer;
	if (clients >= CLIENT_TARGET || n_conns == MAX_CONNS || atomic_load(&draining)) {
		pthread_mutex_unlock(&table_lock);
		return;
	}
	struct cctx *cc = calloc(1, sizeof(*cc));
	if (!cc)
		abort();
	int rc = ura_conn_connect(loop, address, &cc->c);
	if (rc != 0) {
		pthread_mutex_unlock(&table_lock);
		violation("ura_conn_connect: %d", rc);
		free(cc);
		return;
	}
	push_conn(cc);
	atomic_fetch_add(&counts.clients, 1);
	if (ura_conn_set_event_handler(cc->c, on_event, cc) != 0)
		violation("set_event_handler on a new client");
	/* Activated before anyone else can reach it; resume on an inactive one activates. */
	if (chance(2))
		ura_conn_activate(cc->c);
	else if (ura_conn_resume(cc->c) != 0)
		violation("resume did not activate an inactive connection");
	conns[n_conns++] = cc;
	pthread_mutex_unlock(&table_lock);
}

/* Loop thread: takes connections that had their final event out of the table. */
void reap_conns(void)
{
	ura_conn *done[MAX_CONNS];
	unsigned ndone = 0;
	pthread_mutex_lock(&table_lock);
	for (unsigned i = 0; i < n_conns;) {
		if (!atomic_load(&conns[i]->final_seen)) {
			i++;
			continue;
		}
		done[ndone++] = conns[i]->c;
		conns[i]->c = NULL;
		conns[i] = conns[--n_conns];
	}
	pthread_mutex_unlock(&table_lock);
	for (unsigned i = 0; i < ndone; i++)
		ura_conn_unref(done[i]);
}

/* A connection from the table with a reference of the caller's, or NULL. */
static ura_conn *pick_conn(struct cctx **out)
{
	ura_conn *c = NULL;
	pthread_mutex_lock(&table_lock);
	if (n_conns) {
		*out = conns[below(n_conns)];
		c = ura_conn_ref((*out)->c);
	}
	pthread_mutex_unlock(&table_lock);
	return c;
}

/* Takes a connection out of the table: cancel then unref, or only unref (the last
 * unref cancels); another thread may still hold it for a moment. */
void act_drop_conn(void)
{
	ura_conn *c = NULL;
	pthread_mutex_lock(&table_lock);
	if (n_conns) {
		unsigned i = below(n_conns);
		c = conns[i]->c;
		conns[i]->c = NULL;
		conns[i] = conns[--n_conns];
	}
	pthread_mutex_unlock(&table_lock);
	if (!c)
		return;
	if (chance(2)) {
		ura_conn_cancel(c);
		atomic_fetch_add(&counts.conn_cancels, 1);
	}
	ura_conn_unref(c);
	atomic_fetch_add(&counts.conn_drops, 1);
}

void act_conn(void)
{
	struct cctx *cc;
	ura_conn *c = pick_conn(&cc);
	if (!c)
		return;
	/* Cancels rare enough that most connections get answers before they end. */
	uint32_t x = below(1000);
	if (x < 450) {
		send_plain(c);
	} else if (x < 900) {
		send_request(c, cc);
	} else if (x < 903) {
		ura_conn_cancel(c); /* stays in the table: later sends are refused */
		ura_conn_cancel(c); /* idempotent */
		atomic_fetch_add(&counts.conn_cancels, 1);
	} else {
		if (ura_conn_suspend(c) != 0)
			violation("ura_conn_suspend");
		if (!on_loop_thread()) /* never block the loop thread */
			usleep(below(300));
		if (ura_conn_resume(c) != 0)
			violation("ura_conn_resume after a suspend");
		atomic_fetch_add(&counts.suspends, 1);
	}
	ura_conn_unref(c);
}

/* ------------------------------------------------------------ drain, end */

unsigned conns_count(void)
{
	pthread_mutex_lock(&table_lock);
	unsigned k = n_conns;
	pthread_mutex_unlock(&table_lock);
	return k;
}

void drain_conns(void)
{
	ura_conn *drop[MAX_CONNS];
	unsigned ndrop = 0;
	pthread_mutex_lock(&table_lock);
	for (unsigned i = 0; i < n_conns; i++) {
		drop[ndrop++] = conns[i]->c;
		conns[i]->c = NULL;
	}
	n_conns = 0;
	pthread_mutex_unlock(&table_lock);
	for (unsigned i = 0; i < ndrop; i++) {
		ura_conn_cancel(drop[i]);
		ura_conn_unref(drop[i]);
	}
}

bool conns_final(void)
{
	for (struct cctx *cc = atomic_load(&all_conns); cc; cc = cc->next_all)
		if (!atomic_load(&cc->final_seen))
			return false;
	return atomic_load(&pending_replies) == 0;
}

/* What the drain waits for, when it waited too long. */
void report_unfinished_conns(void)
{
	unsigned shown = 0;
	for (struct cctx *cc = atomic_load(&all_conns); cc; cc = cc->next_all) {
		if (atomic_load(&cc->final_seen) || shown++ >= 5)
			continue;
		unsigned waiting = 0;
		for (struct rrec *r = atomic_load(&cc->replies); r; r = r->next)
			waiting += atomic_load(&r->state) == ACCEPTED && !atomic_load(&r->calls);
		fprintf(stderr, "soak: unfinished %s: %u INTERRUPTED, %u replies waiting\n",
			cc->peer ? "peer" : "client", atomic_load(&cc->interrupted), waiting);
	}
}

void check_conns_end(void)
{
	for (struct cctx *cc = atomic_load(&all_conns), *next; cc; cc = next) {
		next = cc->next_all;
		if (atomic_load(&cc->finals) != 1)
			violation("%s: %u final events", cc->peer ? "peer" : "client",
				  atomic_load(&cc->finals));
		if (atomic_load(&cc->late))
			violation("%s: %u events after the final one", cc->peer ? "peer" : "client",
				  atomic_load(&cc->late));
		for (struct rrec *r = atomic_load(&cc->replies), *rn; r; r = rn) {
			rn = r->next;
			uint32_t calls = atomic_load(&r->calls);
			int st = atomic_load(&r->state);
			if (st == ACCEPTED && calls != 1)
				violation("accepted send_with_reply: reply called %u times", calls);
			if (st == REFUSED && calls != 0)
				violation("refused send_with_reply: reply called %u times", calls);
			free(r);
		}
		free(cc);
	}
}
