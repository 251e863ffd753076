/*
 * Services: ura_main / ura_main_with across two processes, transactions, and listeners
 * with clients on one loop (many requests, IPv6).
 *
 * The service tests fork: the child runs ura_main_with and the test process is its
 * client. The child never returns into Criterion (it leaves with _exit), dies with its
 * parent (PR_SET_PDEATHSIG), and the suite's fini kills it with SIGKILL when an
 * assertion ended the test early, so no service outlives a test. The child tells the
 * parent what it saw over a pipe: one byte per event, then a summary line once
 * ura_main_with has returned.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

#define MS 1000000ull /* nanoseconds */

/* Bytes the child writes to the report pipe. */
enum {
	REPORT_READY = 'R',    /* cfg.ready ran: the service is listening */
	REPORT_HELD = 'H',     /* a request is held, unanswered */
	REPORT_IMMINENT = 'T', /* a peer's handler got TERMINATION_IMMINENT */
	REPORT_SUMMARY = '{',  /* "{r=.. peers=.. finals=.. imminent=.. late=.. early=..}" */
};

static void sleep_us(long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
	nanosleep(&ts, NULL);
}

/* A fresh abstract socket name, so parallel runs never collide. */
static void service_name(char *buf, size_t len)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	unsigned rnd = (unsigned)rand() ^ (unsigned)ts.tv_nsec;
	snprintf(buf, len, "unix:@ura-svc-%d-%u", getpid(), rnd);
}

/* ------------------------------------------------- the service (child side) */

/* A request kept unanswered for a while: a reference to it and to its connection. */
struct held {
	struct held *next;
	ura_conn *conn;
	ura_msg *request;
};

struct peer {
	struct svc *svc;
	ura_conn *conn; /* the accept callback's reference, dropped at the final event */
	bool final;
};

/* How the child's service behaves. */
struct svc_opts {
	uint32_t shutdown_ms; /* cfg.shutdown_timeout_ms; 0: the default */
	bool reject;          /* the accept callback drops every peer at once */
};

struct svc {
	int report;
	ura_loop *loop;     /* the service's loop, from cfg.ready */
	struct svc_opts opts;
	bool txn_open;      /* a transaction begun by a "txn:" request, not yet ended */
	struct peer peers[16];
	int npeers, finals, imminent, late;
	int early;          /* peers cancelled while the "txn:" transaction was open */
	struct held *later; /* answered 200 ms after TERMINATION_IMMINENT */
	struct held *never; /* never answered (the shutdown timeout has to end them) */
};

static void report(struct svc *svc, char code)
{
	if (write(svc->report, &code, 1) != 1)
		_exit(3);
}

static struct held *held_new(ura_conn *c, ura_msg *request)
{
	struct held *h = calloc(1, sizeof(*h));
	if (!h)
		_exit(4);
	h->conn = ura_conn_ref(c);
	h->request = ura_msg_ref(request);
	return h;
}

static void held_answer(struct held *h)
{
	/* An echo: the request itself is the reply's payload. */
	(void)ura_conn_reply(h->conn, h->request, h->request);
	ura_msg_unref(h->request);
	ura_conn_unref(h->conn);
	free(h);
}

static void answer_one(ura_session *s, ura_task t, int32_t res, uint32_t f, void *arg)
{
	(void)s, (void)t, (void)res, (void)f;
	held_answer(arg);
}

static void answer_later(ura_session *s, ura_task t, int32_t res, uint32_t f, void *arg)
{
	(void)s, (void)t, (void)res, (void)f;
	struct svc *svc = arg;
	if (svc->txn_open) {
		svc->txn_open = false;
		ura_transaction_end(svc->loop);
	}
	while (svc->later) {
		struct held *h = svc->later;
		svc->later = h->next;
		held_answer(h);
	}
}

static bool starts(const ura_msg *m, const char *prefix)
{
	size_t n = strlen(prefix);
	return ura_msg_len(m) >= n && memcmp(ura_msg_data(m), prefix, n) == 0;
}

static void svc_event(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	struct peer *p = ctx;
	struct svc *svc = p->svc;
	ura_session *shared = ura_session_shared(ura_conn_loop(c));
	if (p->final) {
		svc->late++;
		return;
	}
	if (ev->type == URA_EVENT_MESSAGE) {
		if (!ura_msg_expects_reply(ev->msg))
			return;
		struct held *h;
		if (starts(ev->msg, "later:")) {
			h = held_new(c, ev->msg);
			h->next = svc->later;
			svc->later = h;
			report(svc, REPORT_HELD);
		} else if (starts(ev->msg, "never:")) {
			h = held_new(c, ev->msg);
			h->next = svc->never;
			svc->never = h;
			report(svc, REPORT_HELD);
		} else if (starts(ev->msg, "suspend:")) {
			/* Held, and the peer suspended: nothing more is delivered or sent. */
			h = held_new(c, ev->msg);
			h->next = svc->never;
			svc->never = h;
			(void)ura_conn_suspend(c);
			report(svc, REPORT_HELD);
		} else if (starts(ev->msg, "txn:")) {
			/* Answered at once, but work goes on: a transaction of our own. */
			ura_transaction_begin(ura_conn_loop(c));
			svc->txn_open = true;
			(void)ura_conn_reply(c, ev->msg, ev->msg);
		} else if (starts(ev->msg, "delay:")) {
			h = held_new(c, ev->msg);
			if (ura_timeout(shared, 20 * MS, answer_one, h, NULL) < 0)
				held_answer(h);
		} else {
			(void)ura_conn_reply(c, ev->msg, ev->msg);
		}
		return;
	}
	switch (ev->error) {
	case URA_ERROR_TERMINATION_IMMINENT:
		svc->imminent++;
		report(svc, REPORT_IMMINENT);
		/* Answer what was held a little later: shutdown must wait for it. */
		if (ura_timeout(shared, 200 * MS, answer_later, svc, NULL) < 0)
			answer_later(NULL, 0, 0, 0, svc);
		break;
	case URA_ERROR_CONNECTION_INVALID:
		p->final = true;
		svc->finals++;
		svc->early += svc->txn_open;
		ura_conn_unref(p->conn);
		break;
	case URA_ERROR_CONNECTION_INTERRUPTED:
		break;
	}
}

static void svc_accept(ura_listener *l, ura_conn *peer, void *ctx)
{
	(void)l;
	struct svc *svc = ctx;
	if (svc->opts.reject ||
	    svc->npeers == (int)(sizeof(svc->peers) / sizeof(svc->peers[0]))) {
		ura_conn_unref(peer); /* the last reference: the peer is cancelled */
		return;
	}
	struct peer *p = &svc->peers[svc->npeers++];
	p->svc = svc;
	p->conn = peer;
	ura_conn_set_event_handler(peer, svc_event, p);
	ura_conn_activate(peer);
}

static void svc_ready(ura_loop *loop, ura_listener *l, void *ctx)
{
	(void)l;
	struct svc *svc = ctx;
	svc->loop = loop;
	report(svc, REPORT_READY);
}

/* The child's whole life: never returns. */
static _Noreturn void run_service(const char *address, struct svc_opts opts, int report_fd)
{
	struct svc svc = { .report = report_fd, .opts = opts };
	struct ura_main_config cfg = { .shutdown_timeout_ms = opts.shutdown_ms, .ready = svc_ready };
	int r = ura_main_with(address, &cfg, svc_accept, &svc);
	while (svc.never) {
		struct held *h = svc.never;
		svc.never = h->next;
		ura_msg_unref(h->request);
		ura_conn_unref(h->conn);
		free(h);
	}
	dprintf(report_fd, "{r=%d peers=%d finals=%d imminent=%d late=%d early=%d}", r,
		svc.npeers, svc.finals, svc.imminent, svc.late, svc.early);
	_exit(r == 0 ? 0 : 1);
}

/* ------------------------------------------------- the client (parent side) */

static pid_t child = -1;
static int report_fd = -1;
static char reports[1024];
static size_t nreports;
static ura_loop *loop; /* the test process's loop, made after the fork */
static _Atomic int seq; /* orders events across handlers */

static void reap_child(void)
{
	if (child > 0) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
		child = -1;
	}
}

static void service_fini(void)
{
	reap_child();
	if (report_fd >= 0)
		close(report_fd);
	report_fd = -1;
	/* A test that passed has freed its loop (end_client). One an assertion cut short is
	 * left alone: freeing it would call handlers whose records lived on the test's stack,
	 * and the process ends anyway. */
}

TestSuite(service, .fini = service_fini, .timeout = 60);

/* One step of waiting: the loop (if any) without blocking, and the report pipe. */
static void pump(void)
{
	if (loop)
		(void)ura_loop_run_once(loop, false);
	if (report_fd >= 0 && nreports < sizeof(reports) - 1) {
		ssize_t n = read(report_fd, reports + nreports, sizeof(reports) - 1 - nreports);
		if (n > 0) {
			nreports += (size_t)n;
			reports[nreports] = '\0';
		}
	}
	sleep_us(200);
}

static int count_reports(char code)
{
	int n = 0;
	for (size_t i = 0; i < nreports && reports[i] != REPORT_SUMMARY; i++)
		n += reports[i] == code;
	return n;
}

static bool wait_report(char code, int want, unsigned ms)
{
	uint64_t end = th_now_ms() + ms;
	while (count_reports(code) < want && th_now_ms() < end)
		pump();
	return count_reports(code) >= want;
}

static bool wait_int(const _Atomic int *v, int want, unsigned ms)
{
	uint64_t end = th_now_ms() + ms;
	while (atomic_load(v) < want && th_now_ms() < end)
		pump();
	return atomic_load(v) >= want;
}

/* Waits for the child to exit, pumping meanwhile; false on timeout (child still runs). */
static bool wait_exit(unsigned ms, int *status)
{
	uint64_t end = th_now_ms() + ms;
	for (;;) {
		pid_t p = waitpid(child, status, WNOHANG);
		if (p == child) {
			child = -1;
			pump(); /* the summary may still sit in the pipe */
			return true;
		}
		if (th_now_ms() >= end)
			return false;
		pump();
	}
}

/* Starts the service in a child process and waits until it listens. */
static void spawn_service(const char *address, struct svc_opts opts)
{
	int fds[2];
	cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
	pid_t parent = getpid();
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		close(fds[0]);
		/* Die with the test process, whatever happens to it. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			_exit(2);
		run_service(address, opts, fds[1]);
	}
	child = pid;
	close(fds[1]);
	report_fd = fds[0];
	cr_assert_eq(fcntl(report_fd, F_SETFL, O_NONBLOCK), 0);
	nreports = 0;
	reports[0] = '\0';
	cr_assert(wait_report(REPORT_READY, 1, 10000), "the service never became ready: '%s'",
		  reports);
}

struct summary {
	int r, peers, finals, imminent, late, early;
};

static struct summary child_summary(void)
{
	struct summary s = { .r = 999 };
	const char *p = strchr(reports, REPORT_SUMMARY);
	cr_assert_not_null(p, "no summary from the service: '%s'", reports);
	cr_assert_eq(sscanf(p, "{r=%d peers=%d finals=%d imminent=%d late=%d early=%d}", &s.r,
			    &s.peers, &s.finals, &s.imminent, &s.late, &s.early),
		     6, "summary: '%s'", p);
	return s;
}

static void expect_clean_exit(unsigned ms)
{
	int status = 0;
	bool exited = wait_exit(ms, &status);
	cr_assert(exited, "the service did not exit within %u ms after the signal", ms);
	cr_assert(WIFEXITED(status), "the service died: status 0x%x", status);
	cr_assert_eq(WEXITSTATUS(status), 0, "the service exited %d; reports '%s'",
		     WEXITSTATUS(status), reports);
}

/* What the client's handler saw. */
struct seen {
	_Atomic int messages, interrupted, invalid, imminent, after_invalid;
	int interrupted_at, invalid_at;
};

static void client_event(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	(void)c;
	struct seen *s = ctx;
	if (atomic_load(&s->invalid))
		atomic_fetch_add(&s->after_invalid, 1);
	if (ev->type == URA_EVENT_MESSAGE) {
		atomic_fetch_add(&s->messages, 1);
		return;
	}
	switch (ev->error) {
	case URA_ERROR_CONNECTION_INTERRUPTED:
		s->interrupted_at = atomic_fetch_add(&seq, 1);
		atomic_fetch_add(&s->interrupted, 1);
		break;
	case URA_ERROR_CONNECTION_INVALID:
		s->invalid_at = atomic_fetch_add(&seq, 1);
		atomic_fetch_add(&s->invalid, 1);
		break;
	case URA_ERROR_TERMINATION_IMMINENT:
		atomic_fetch_add(&s->imminent, 1);
		break;
	}
}

/* What one reply handler saw. */
struct reply_rec {
	_Atomic int calls, messages, invalid, interrupted;
	int at;
	char text[64];
};

static void on_reply(ura_conn *c, const struct ura_event *ev, void *arg)
{
	(void)c;
	struct reply_rec *r = arg;
	r->at = atomic_fetch_add(&seq, 1);
	if (ev->type == URA_EVENT_MESSAGE) {
		th_msg_text(ev->msg, r->text, sizeof(r->text));
		atomic_fetch_add(&r->messages, 1);
	} else if (ev->error == URA_ERROR_CONNECTION_INVALID) {
		atomic_fetch_add(&r->invalid, 1);
	} else if (ev->error == URA_ERROR_CONNECTION_INTERRUPTED) {
		atomic_fetch_add(&r->interrupted, 1);
	}
	/* Incremented last: a waiter that sees the call sees what it recorded. */
	atomic_fetch_add(&r->calls, 1);
}

static void request(ura_conn *c, const char *text, struct reply_rec *r)
{
	ura_msg *m;
	cr_assert_eq(ura_msg_new(text, strlen(text), &m), 0);
	cr_assert_eq(ura_conn_send_with_reply(c, m, on_reply, r), 0);
	ura_msg_unref(m);
}

/* A client by address on l, activated; its events go to seen. */
static ura_conn *connect_client(ura_loop *l, const char *address, struct seen *seen)
{
	ura_conn *c;
	cr_assert_eq(ura_conn_connect(l, address, &c), 0);
	cr_assert_eq(ura_conn_set_event_handler(c, client_event, seen), 0);
	ura_conn_activate(c);
	return c;
}

/* Starts the service (in a child) at a fresh name and connects a client on a new loop. */
static ura_conn *service_with_client(struct svc_opts opts, struct seen *seen)
{
	char addr[80];
	service_name(addr, sizeof(addr));
	spawn_service(addr, opts);
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	return connect_client(loop, addr, seen);
}

/* A request the service answers at once with its own payload. */
static void round_trip(ura_conn *c, const char *text, struct reply_rec *r)
{
	request(c, text, r);
	cr_assert(wait_int(&r->calls, 1, 5000), "no reply to %s", text);
	cr_assert_str_eq(r->text, text);
}

/* A request the service keeps unanswered ("later:", "never:", "suspend:"). */
static void hold_request(ura_conn *c, const char *text, struct reply_rec *r)
{
	request(c, text, r);
	cr_assert(wait_report(REPORT_HELD, 1, 5000), "the service never held %s", text);
}

/* The service exited 0 within ms; what it reported on its way out. */
static struct summary summary_after_exit(unsigned ms)
{
	expect_clean_exit(ms);
	return child_summary();
}

/* Sends sig and expects the graceful end: the client hears INTERRUPTED, the service exits
 * 0, and its one peer got TERMINATION_IMMINENT and its final event once each. */
static struct summary stop_gracefully(int sig, struct seen *seen)
{
	cr_assert_eq(kill(child, sig), 0);
	cr_assert(wait_int(&seen->interrupted, 1, 10000), "no INTERRUPTED after signal %d", sig);
	struct summary s = summary_after_exit(10000);
	cr_assert_eq(s.imminent, 1);
	cr_assert_eq(s.finals, 1);
	return s;
}

/* Drops the client, lets the loop drain and frees it. */
static void end_client(ura_conn *c)
{
	ura_conn_unref(c);
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_loop_free(loop);
	loop = NULL;
}

Test(service, a_held_request_is_answered_through_sigterm)
{
	struct seen seen = { 0 };
	ura_conn *c = service_with_client((struct svc_opts){ 0 } /* timeout: the default 10 s */,
					  &seen);

	/* Ordinary traffic first: one answered at once, one after a timer. */
	struct reply_rec quick = { 0 }, delayed = { 0 }, held = { 0 };
	request(c, "ping", &quick);
	request(c, "delay:one", &delayed);
	cr_assert(wait_int(&quick.calls, 1, 5000), "no reply to ping");
	cr_assert(wait_int(&delayed.calls, 1, 5000), "no reply to the delayed request");
	cr_assert_str_eq(quick.text, "ping");
	cr_assert_str_eq(delayed.text, "delay:one");

	/* A request the service keeps until after the signal. */
	hold_request(c, "later:held", &held);
	cr_assert_eq(atomic_load(&held.calls), 0);
	cr_assert_eq(kill(child, SIGTERM), 0);

	/* Shutdown waits for the transaction: the answer still arrives, then the end. */
	cr_assert(wait_int(&held.calls, 1, 10000), "the held request was never answered");
	cr_assert_eq(atomic_load(&held.messages), 1, "held reply: invalid %d interrupted %d",
		     atomic_load(&held.invalid), atomic_load(&held.interrupted));
	cr_assert_str_eq(held.text, "later:held");
	cr_assert(wait_int(&seen.interrupted, 1, 10000),
		  "the service closed the connection but the client heard nothing");
	cr_assert_lt(held.at, seen.interrupted_at, "the reply came after INTERRUPTED");
	expect_clean_exit(10000);

	struct summary s = child_summary();
	cr_assert_eq(s.r, 0);
	cr_assert_eq(s.peers, 1);
	cr_assert_eq(s.imminent, 1, "the peer's handler got TERMINATION_IMMINENT %d times",
		     s.imminent);
	cr_assert_eq(count_reports(REPORT_IMMINENT), 1);
	cr_assert_eq(s.finals, 1, "the peer's final event came %d times", s.finals);
	cr_assert_eq(s.late, 0, "the peer's handler ran after its final event");

	/* A client by address outlives its peer: INTERRUPTED, not INVALID. The next send
	 * reconnects, which fails now that the service is gone: INVALID with a reason. */
	cr_assert_eq(atomic_load(&seen.interrupted), 1);
	cr_assert_eq(atomic_load(&seen.invalid), 0, "a client by address must stay usable");
	struct reply_rec after = { 0 };
	request(c, "after", &after);
	cr_assert(wait_int(&after.calls, 1, 5000));
	cr_assert_eq(atomic_load(&after.invalid), 1);
	cr_assert(wait_int(&seen.invalid, 1, 5000), "a failed reconnect was silent");
	char *why = ura_conn_copy_invalidation_reason(c);
	cr_assert(why && strstr(why, "connect"), "reason: %s", why ? why : "(null)");
	free(why);
	for (int i = 0; i < 20; i++)
		pump();
	cr_assert_eq(atomic_load(&seen.after_invalid), 0);
	cr_assert_eq(atomic_load(&quick.calls) + atomic_load(&delayed.calls) +
			     atomic_load(&held.calls) + atomic_load(&after.calls),
		     4, "a reply handler ran more than once");
	end_client(c);
}

Test(service, sigterm_with_no_clients_returns_zero_promptly)
{
	char addr[80];
	service_name(addr, sizeof(addr));
	spawn_service(addr, (struct svc_opts){ 0 });
	uint64_t t0 = th_now_ms();
	cr_assert_eq(kill(child, SIGTERM), 0);
	expect_clean_exit(5000);
	cr_log_info("idle service stopped in %llu ms", (unsigned long long)(th_now_ms() - t0));
	struct summary s = child_summary();
	cr_assert_eq(s.r, 0);
	cr_assert_eq(s.peers, 0);
	cr_assert_eq(s.imminent, 0);
}

Test(service, sigint_stops_a_service_with_a_client)
{
	struct seen seen = { 0 };
	ura_conn *c = service_with_client((struct svc_opts){ 0 }, &seen);
	struct reply_rec r = { 0 };
	round_trip(c, "ping", &r);
	stop_gracefully(SIGINT, &seen);
	end_client(c);
	cr_assert_eq(atomic_load(&seen.invalid), 1, "the last unref must end the client");
}

Test(service, the_shutdown_timeout_bounds_an_unanswered_request)
{
	struct seen seen = { 0 };
	ura_conn *c = service_with_client((struct svc_opts){ .shutdown_ms = 300 }, &seen);
	struct reply_rec never = { 0 };
	hold_request(c, "never:x", &never);
	uint64_t t0 = th_now_ms();
	cr_assert_eq(kill(child, SIGTERM), 0);
	/* A hang guard, not a performance threshold. */
	expect_clean_exit(20000);
	cr_log_info("stopped %llu ms after SIGTERM (timeout 300 ms)",
		    (unsigned long long)(th_now_ms() - t0));
	cr_assert(wait_int(&never.calls, 1, 5000), "the pending reply was never told");
	cr_assert_eq(atomic_load(&never.messages), 0);
	cr_assert_eq(atomic_load(&never.interrupted), 1,
		     "a pending reply of a client by address: INTERRUPTED (invalid %d)",
		     atomic_load(&never.invalid));
	cr_assert(wait_int(&seen.interrupted, 1, 5000));
	struct summary s = child_summary();
	cr_assert_eq(s.r, 0);
	cr_assert_eq(s.imminent, 1);
	cr_assert_eq(s.finals, 1);
	end_client(c);
}

Test(service, shutdown_waits_for_a_transaction_the_service_began)
{
	struct seen seen = { 0 };
	ura_conn *c = service_with_client((struct svc_opts){ 0 }, &seen);
	/* Answered at once; the service's own transaction ends 200 ms after the signal. */
	struct reply_rec r = { 0 };
	round_trip(c, "txn:work", &r);
	struct summary s = stop_gracefully(SIGTERM, &seen);
	cr_assert_eq(s.early, 0, "a peer was cancelled while a transaction was open");
	end_client(c);
}

/*
 * The signal ura_main reads is consumed, and so is one that arrives while it shuts down:
 * ura_main still returns 0 and the program goes on (here: writes its summary and exits
 * 0). Ctrl-C pressed twice must not kill the process after the graceful shutdown is done.
 */
Test(service, a_second_signal_during_shutdown_still_returns_zero)
{
	struct seen seen = { 0 };
	ura_conn *c = service_with_client((struct svc_opts){ 0 }, &seen);
	struct reply_rec held = { 0 };
	hold_request(c, "later:held", &held);
	cr_assert_eq(kill(child, SIGTERM), 0);
	cr_assert(wait_report(REPORT_IMMINENT, 1, 5000));
	/* The held request is answered 200 ms after TERMINATION_IMMINENT: still shutting
	 * down when this one arrives. */
	cr_assert_eq(kill(child, SIGINT), 0);
	cr_assert(wait_int(&held.calls, 1, 10000));
	cr_assert_str_eq(held.text, "later:held");
	struct summary s = summary_after_exit(10000);
	cr_assert_eq(s.r, 0);
	cr_assert_eq(s.imminent, 1, "TERMINATION_IMMINENT again for the second signal");
	end_client(c);
}

/*
 * A peer suspended by the service (flow control, say) holds its final event until resumed
 * (connection contract), but the shutdown is still bounded: after the timeout the peer is
 * cancelled, its I/O drains and ura_main returns 0.
 */
Test(service, a_suspended_peer_does_not_stall_shutdown)
{
	struct seen seen = { 0 };
	ura_conn *c = service_with_client((struct svc_opts){ .shutdown_ms = 300 }, &seen);
	struct reply_rec r = { 0 };
	hold_request(c, "suspend:x", &r);
	cr_assert_eq(kill(child, SIGTERM), 0);
	/* A hang guard: the shutdown timeout is 300 ms. */
	expect_clean_exit(10000);
	cr_assert(wait_int(&r.calls, 1, 5000), "the pending reply was never told");
	cr_assert_eq(atomic_load(&r.interrupted), 1);
	struct summary s = child_summary();
	cr_assert_eq(s.r, 0);
	end_client(c);
}

/*
 * The accept callback owns one reference to the peer; dropping it at once rejects the
 * peer: the last unref of a live connection cancels it, and the client hears its end.
 * ura_main keeps peers of its own for the shutdown, which must not keep a rejected peer
 * open.
 */
Test(service, a_peer_the_accept_callback_drops_is_closed)
{
	struct seen seen = { 0 };
	ura_conn *c = service_with_client((struct svc_opts){ .reject = true }, &seen);
	struct reply_rec r = { 0 };
	request(c, "ping", &r);
	cr_assert(wait_int(&r.calls, 1, 5000),
		  "a rejected peer stayed open: the request is neither answered nor failed");
	cr_assert_eq(atomic_load(&r.interrupted), 1);
	cr_assert(wait_int(&seen.interrupted, 1, 5000));
	cr_assert_eq(kill(child, SIGTERM), 0);
	expect_clean_exit(10000);
	end_client(c);
}

static void never_accept(ura_listener *l, ura_conn *peer, void *ctx)
{
	(void)l, (void)ctx;
	ura_conn_unref(peer);
}

Test(service, bad_or_taken_addresses_fail_with_an_errno)
{
	cr_assert_eq(ura_main("bogus:thing", never_accept, NULL), -EINVAL);
	cr_assert_eq(ura_main("tcp:127.0.0.1", never_accept, NULL), -EINVAL, "port missing");
	cr_assert_eq(ura_main("unix:", never_accept, NULL), -EINVAL);
	cr_assert_eq(ura_main(NULL, never_accept, NULL), -EINVAL);
	char addr[80];
	service_name(addr, sizeof(addr));
	cr_assert_eq(ura_main(addr, NULL, NULL), -EINVAL, "no accept callback");
	struct ura_main_config cfg = { .reserved = { [3] = 1 } };
	cr_assert_eq(ura_main_with(addr, &cfg, never_accept, NULL), -EINVAL,
		     "a non-zero reserved field was accepted");

	/* An abstract unix name someone else listens on. */
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	const char *name = addr + strlen("unix:@");
	memcpy(un.sun_path + 1, name, strlen(name));
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
	cr_assert_eq(bind(fd, (struct sockaddr *)&un, len), 0, "bind: %s", strerror(errno));
	cr_assert_eq(listen(fd, 4), 0);
	cr_assert_eq(ura_main(addr, never_accept, NULL), -EADDRINUSE);
	close(fd);

	/* A TCP port someone else listens on. */
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
	cr_assert_eq(bind(fd, (struct sockaddr *)&in, sizeof(in)), 0);
	cr_assert_eq(listen(fd, 4), 0);
	socklen_t inlen = sizeof(in);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&in, &inlen), 0);
	char taken[64];
	snprintf(taken, sizeof(taken), "tcp:127.0.0.1:%u", ntohs(in.sin_port));
	cr_assert_eq(ura_main(taken, never_accept, NULL), -EADDRINUSE, "%s", taken);
	close(fd);

	/* The failed calls put the signal mask back as they found it. */
	sigset_t now;
	cr_assert_eq(pthread_sigmask(SIG_SETMASK, NULL, &now), 0);
	cr_assert_not(sigismember(&now, SIGTERM), "SIGTERM left blocked");
	cr_assert_not(sigismember(&now, SIGINT), "SIGINT left blocked");
}

/* ------------------------------------------------------------ transactions */

static ura_loop *tloop;

static void tsetup(void)
{
	cr_assert_eq(ura_loop_new(NULL, &tloop), 0);
}

static void tteardown(void)
{
	ura_loop_free(tloop);
}

TestSuite(transactions, .init = tsetup, .fini = tteardown, .timeout = 60);

Test(transactions, begin_and_end_balance)
{
	cr_assert_eq(ura_transaction_count(tloop), 0);
	for (int i = 0; i < 3; i++)
		ura_transaction_begin(tloop);
	cr_assert_eq(ura_transaction_count(tloop), 3);
	ura_transaction_end(tloop);
	cr_assert_eq(ura_transaction_count(tloop), 2);
	ura_transaction_end(tloop);
	ura_transaction_end(tloop);
	cr_assert_eq(ura_transaction_count(tloop), 0);
}

Test(transactions, end_never_goes_below_zero)
{
	ura_transaction_end(tloop);
	ura_transaction_end(tloop);
	cr_assert_eq(ura_transaction_count(tloop), 0, "count wrapped: %llu",
		     (unsigned long long)ura_transaction_count(tloop));
	ura_transaction_begin(tloop);
	cr_assert_eq(ura_transaction_count(tloop), 1, "an unbalanced end was banked");
	ura_transaction_end(tloop);
	cr_assert_eq(ura_transaction_count(tloop), 0);
}

static void *begin_end_many(void *arg)
{
	ura_loop *l = arg;
	for (int i = 0; i < 20000; i++) {
		ura_transaction_begin(l);
		ura_transaction_end(l);
	}
	return NULL;
}

Test(transactions, balanced_from_many_threads)
{
	ura_transaction_begin(tloop); /* keeps the count above zero throughout */
	pthread_t th[4];
	for (int i = 0; i < 4; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, begin_end_many, tloop), 0);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	cr_assert_eq(ura_transaction_count(tloop), 1);
	ura_transaction_end(tloop);
	cr_assert_eq(ura_transaction_count(tloop), 0);
}

/* A server side that keeps every request it receives (a reference each). */
struct keeper {
	ura_msg *requests[8];
	_Atomic int messages, invalid;
	int nrequests;
	uint64_t count_at_delivery; /* transactions when the last message arrived */
	uint64_t count_at_final;
};

static void keep_event(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	(void)c;
	struct keeper *k = ctx;
	if (ev->type == URA_EVENT_MESSAGE) {
		k->count_at_delivery = ura_transaction_count(tloop);
		if (ura_msg_expects_reply(ev->msg) && k->nrequests < 8)
			k->requests[k->nrequests++] = ura_msg_ref(ev->msg);
		atomic_fetch_add(&k->messages, 1);
	} else if (ev->error == URA_ERROR_CONNECTION_INVALID) {
		k->count_at_final = ura_transaction_count(tloop);
		atomic_fetch_add(&k->invalid, 1);
	}
}

static void keeper_drop(struct keeper *k)
{
	for (int i = 0; i < k->nrequests; i++)
		ura_msg_unref(k->requests[i]);
	k->nrequests = 0;
}

static bool tloop_until_int(const _Atomic int *v, int want, unsigned ms)
{
	return th_run_until_int(tloop, v, want, ms);
}

static bool tloop_until_count(uint64_t want, unsigned ms)
{
	uint64_t end = th_now_ms() + ms;
	while (ura_transaction_count(tloop) != want && th_now_ms() < end)
		(void)ura_loop_run_once(tloop, false);
	return ura_transaction_count(tloop) == want;
}

/*
 * One test's client (requests, replies) and keeper (server) over a socketpair, with what
 * they saw. Static (txn_start): if an assertion ends a test early, the suite's teardown
 * frees the loop, which still calls the handlers, and they must not write into a stack
 * frame that is gone.
 */
struct txn_pair {
	ura_conn *cl, *sv;
	struct seen sc;
	struct keeper k;
	struct reply_rec r[3];
};

static struct txn_pair *txn_start(void)
{
	static struct txn_pair t;
	cr_assert_eq(th_conn_pair(tloop, client_event, &t.sc, &t.cl, keep_event, &t.k, &t.sv), 0);
	ura_conn_activate(t.cl);
	ura_conn_activate(t.sv);
	return &t;
}

/* n requests from the client, answered (or not) by the test through the keeper. */
static void send_requests(struct txn_pair *t, int n)
{
	for (int i = 0; i < n; i++) {
		ura_msg *m;
		cr_assert_eq(ura_msg_new("q", 1, &m), 0);
		cr_assert_eq(ura_conn_send_with_reply(t->cl, m, on_reply, &t->r[i]), 0);
		ura_msg_unref(m);
	}
}

/* The keeper answers request with "a"; returns what ura_conn_reply said. */
static int answer(struct txn_pair *t, ura_msg *request)
{
	ura_msg *a;
	cr_assert_eq(ura_msg_new("a", 1, &a), 0);
	int r = ura_conn_reply(t->sv, request, a);
	ura_msg_unref(a);
	return r;
}

/* Drops both connections and runs the loop dry: no transaction may be left. */
static void txn_end(struct txn_pair *t)
{
	ura_conn_unref(t->cl);
	ura_conn_unref(t->sv);
	cr_assert_eq(ura_loop_run(tloop), 0);
	cr_assert_eq(ura_transaction_count(tloop), 0);
}

Test(transactions, a_request_holds_one_until_its_reply_is_written)
{
	struct txn_pair *t = txn_start();

	/* A plain message holds nothing. */
	ura_msg *m;
	cr_assert_eq(ura_msg_new("plain", 5, &m), 0);
	cr_assert_eq(ura_conn_send(t->cl, m), 0);
	ura_msg_unref(m);
	cr_assert(tloop_until_int(&t->k.messages, 1, 5000));
	cr_assert_eq(t->k.count_at_delivery, 0, "a message without reply holds a transaction");

	send_requests(t, 1);
	cr_assert(tloop_until_int(&t->k.messages, 2, 5000));
	cr_assert_eq(t->k.count_at_delivery, 1, "a request must hold one transaction");
	th_spin(tloop, 20);
	cr_assert_eq(ura_transaction_count(tloop), 1, "released while unanswered and held");

	cr_assert_eq(answer(t, t->k.requests[0]), 0);
	cr_assert_eq(answer(t, t->k.requests[0]), -EINVAL, "answered twice");
	cr_assert(tloop_until_int(&t->r[0].calls, 1, 5000));
	cr_assert_str_eq(t->r[0].text, "a");
	cr_assert(tloop_until_count(0, 5000), "still %llu after the reply was written",
		  (unsigned long long)ura_transaction_count(tloop));
	/* Dropping the answered request afterwards ends nothing a second time. */
	keeper_drop(&t->k);
	ura_transaction_begin(tloop);
	cr_assert_eq(ura_transaction_count(tloop), 1);
	ura_transaction_end(tloop);
	th_spin(tloop, 10);
	cr_assert_eq(ura_transaction_count(tloop), 0);

	txn_end(t);
}

Test(transactions, a_request_released_unanswered_gives_its_transaction_back)
{
	struct txn_pair *t = txn_start();
	send_requests(t, 2);
	cr_assert(tloop_until_int(&t->k.messages, 2, 5000));
	cr_assert_eq(ura_transaction_count(tloop), 2);
	/* The service decides not to answer the first: it drops its last reference. */
	ura_msg_unref(t->k.requests[0]);
	t->k.requests[0] = NULL;
	cr_assert(tloop_until_count(1, 5000), "%llu open after releasing one of two",
		  (unsigned long long)ura_transaction_count(tloop));
	/* The other is still answerable, and its reply ends the last one. */
	cr_assert_eq(answer(t, t->k.requests[1]), 0);
	cr_assert(tloop_until_int(&t->r[1].calls, 1, 5000));
	cr_assert_eq(atomic_load(&t->r[1].messages), 1);
	cr_assert(tloop_until_count(0, 5000));
	cr_assert_eq(atomic_load(&t->r[0].calls), 0, "the released request was answered");
	keeper_drop(&t->k);
	txn_end(t);
	/* Its sender hears of it when the connection ends. */
	cr_assert_eq(atomic_load(&t->r[0].calls), 1);
}

Test(transactions, cancelling_a_connection_releases_its_unanswered_requests)
{
	struct txn_pair *t = txn_start();
	send_requests(t, 3);
	cr_assert(tloop_until_int(&t->k.messages, 3, 5000));
	cr_assert_eq(ura_transaction_count(tloop), 3, "%llu transactions for 3 requests",
		     (unsigned long long)ura_transaction_count(tloop));

	ura_conn_cancel(t->sv);
	cr_assert(tloop_until_int(&t->k.invalid, 1, 5000));
	cr_assert_eq(t->k.count_at_final, 0, "requests still held at the final event: %llu",
		     (unsigned long long)t->k.count_at_final);
	cr_assert_eq(ura_transaction_count(tloop), 0);

	/* Too late to answer; nothing is ended twice, also when the requests go. */
	cr_assert_eq(answer(t, t->k.requests[0]), -ESHUTDOWN);
	keeper_drop(&t->k);
	ura_transaction_begin(tloop);
	cr_assert_eq(ura_transaction_count(tloop), 1);
	ura_transaction_end(tloop);

	/* The client (adopted) sees its peer close: every pending reply is told. */
	for (int i = 0; i < 3; i++) {
		cr_assert(tloop_until_int(&t->r[i].calls, 1, 5000));
		cr_assert_eq(atomic_load(&t->r[i].invalid), 1);
	}
	txn_end(t);
}

/* --------------------------------------------- listener and clients, one loop */

#define NREQ 200

struct echo_server {
	ura_loop *loop;
	ura_conn *peers[8];
	_Atomic int npeers, requests, posted;
};

struct posted_answer {
	ura_conn *conn;
	ura_msg *request;
	struct echo_server *sv;
};

static void answer_posted(void *arg)
{
	struct posted_answer *a = arg;
	cr_assert_eq(ura_conn_reply(a->conn, a->request, a->request), 0);
	atomic_fetch_add(&a->sv->posted, 1);
	ura_msg_unref(a->request);
	ura_conn_unref(a->conn);
	free(a);
}

/* Answers every request with its own payload: every other one later, from a post. */
static void echo_event(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	struct echo_server *sv = ctx;
	if (ev->type != URA_EVENT_MESSAGE || !ura_msg_expects_reply(ev->msg))
		return;
	int n = atomic_fetch_add(&sv->requests, 1);
	if (n % 2) {
		struct posted_answer *a = malloc(sizeof(*a));
		cr_assert_not_null(a);
		a->conn = ura_conn_ref(c);
		a->request = ura_msg_ref(ev->msg);
		a->sv = sv;
		cr_assert_eq(ura_loop_post(sv->loop, answer_posted, a), 0);
		return;
	}
	ura_msg *copy;
	cr_assert_eq(ura_msg_new(ura_msg_data(ev->msg), ura_msg_len(ev->msg), &copy), 0);
	cr_assert_eq(ura_conn_reply(c, ev->msg, copy), 0);
	ura_msg_unref(copy);
}

static void echo_accept(ura_listener *l, ura_conn *peer, void *ctx)
{
	(void)l;
	struct echo_server *sv = ctx;
	cr_assert_eq(ura_conn_set_event_handler(peer, echo_event, sv), 0);
	ura_conn_activate(peer);
	int i = atomic_fetch_add(&sv->npeers, 1);
	if (i < 8)
		sv->peers[i] = peer;
	else
		ura_conn_unref(peer);
}

static void echo_server_end(struct echo_server *sv, ura_listener *l)
{
	for (int i = 0; i < atomic_load(&sv->npeers) && i < 8; i++)
		ura_conn_unref(sv->peers[i]);
	ura_listener_cancel(l);
	ura_listener_unref(l);
}

Test(service, client_and_server_on_one_loop_answer_every_request_once)
{
	ura_loop *l;
	cr_assert_eq(ura_loop_new(NULL, &l), 0);
	char addr[80];
	service_name(addr, sizeof(addr));
	struct echo_server sv = { .loop = l };
	ura_listener *lst;
	cr_assert_eq(ura_listener_new(l, addr, echo_accept, &sv, &lst), 0);
	cr_assert_eq(ura_listener_loop(lst), l);

	struct seen sc = { 0 };
	ura_conn *c = connect_client(l, addr, &sc);
	static struct reply_rec r[NREQ];
	memset(r, 0, sizeof(r));
	int answered = 0;
	for (int i = 0; i < NREQ; i++) {
		char text[32];
		snprintf(text, sizeof(text), "request-%d", i);
		request(c, text, &r[i]);
	}
	uint64_t end = th_now_ms() + 10000;
	while (th_now_ms() < end) {
		int n = 0;
		for (int i = 0; i < NREQ; i++)
			n += atomic_load(&r[i].calls) > 0;
		answered = n;
		if (n == NREQ)
			break;
		(void)ura_loop_run_once(l, false);
	}
	cr_assert_eq(answered, NREQ, "only %d of %d answered", answered, NREQ);
	th_spin(l, 20); /* room for a duplicate to show up */
	for (int i = 0; i < NREQ; i++) {
		char want[32];
		snprintf(want, sizeof(want), "request-%d", i);
		cr_assert_eq(atomic_load(&r[i].calls), 1, "reply %d ran %d times", i,
			     atomic_load(&r[i].calls));
		cr_assert_eq(atomic_load(&r[i].messages), 1, "reply %d was an error", i);
		cr_assert_str_eq(r[i].text, want);
	}
	cr_assert_eq(atomic_load(&sv.requests), NREQ);
	cr_assert_eq(atomic_load(&sv.posted), NREQ / 2);
	cr_assert_eq(atomic_load(&sv.npeers), 1);
	cr_assert_eq(atomic_load(&sc.messages), 0, "replies leaked to the handler");
	cr_assert_eq(ura_transaction_count(l), 0);

	ura_conn_unref(c);
	echo_server_end(&sv, lst);
	cr_assert_eq(ura_loop_run(l), 0);
	cr_assert_eq(atomic_load(&sc.invalid), 1);
	ura_loop_free(l);
}

Test(service, ipv6_loopback_round_trip)
{
	ura_loop *l;
	cr_assert_eq(ura_loop_new(NULL, &l), 0);
	struct echo_server sv = { .loop = l };
	ura_listener *lst;
	int r = ura_listener_new(l, "tcp:[::1]:0", echo_accept, &sv, &lst);
	if (r == -EAFNOSUPPORT || r == -EADDRNOTAVAIL || r == -EPROTONOSUPPORT) {
		ura_loop_free(l);
		cr_skip("no IPv6 loopback: %s", strerror(-r));
	}
	cr_assert_eq(r, 0, "listen on tcp:[::1]:0: %s", strerror(-r));
	char bound[80];
	size_t n = ura_listener_address(lst, bound, sizeof(bound));
	cr_assert_eq(n, strlen(bound));
	cr_assert_eq(strncmp(bound, "tcp:[::1]:", 10), 0, "bound: %s", bound);
	cr_assert_neq(strcmp(bound, "tcp:[::1]:0"), 0, "port 0 not resolved: %s", bound);

	struct seen sc = { 0 };
	ura_conn *c = connect_client(l, bound, &sc);
	struct reply_rec a = { 0 }, b = { 0 };
	request(c, "over v6", &a);
	request(c, "twice", &b);
	cr_assert(th_run_until_int(l, &a.calls, 1, 5000), "no reply over IPv6");
	cr_assert(th_run_until_int(l, &b.calls, 1, 5000));
	cr_assert_str_eq(a.text, "over v6");
	cr_assert_str_eq(b.text, "twice");
	ura_conn_unref(c);
	echo_server_end(&sv, lst);
	cr_assert_eq(ura_loop_run(l), 0);
	ura_loop_free(l);
}

static void reject_accept(ura_listener *l, ura_conn *peer, void *ctx)
{
	(void)l;
	atomic_fetch_add((_Atomic int *)ctx, 1);
	ura_conn_unref(peer); /* the only reference: the peer is cancelled */
}

/* The same rejection with a plain listener: what ura_main has to match. */
Test(service, a_listener_peer_the_accept_callback_drops_is_closed)
{
	ura_loop *l;
	cr_assert_eq(ura_loop_new(NULL, &l), 0);
	char addr[80];
	service_name(addr, sizeof(addr));
	_Atomic int accepted = 0;
	ura_listener *lst;
	cr_assert_eq(ura_listener_new(l, addr, reject_accept, &accepted, &lst), 0);
	struct seen sc = { 0 };
	ura_conn *c = connect_client(l, addr, &sc);
	struct reply_rec r = { 0 };
	request(c, "ping", &r);
	cr_assert(th_run_until_int(l, &r.calls, 1, 5000), "a rejected peer stayed open");
	cr_assert_eq(atomic_load(&r.interrupted), 1);
	cr_assert(th_run_until_int(l, &sc.interrupted, 1, 5000));
	cr_assert_eq(atomic_load(&accepted), 1);
	ura_conn_unref(c);
	ura_listener_unref(lst);
	cr_assert_eq(ura_loop_run(l), 0);
	ura_loop_free(l);
}
