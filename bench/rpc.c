/*
 * rpc suite: request/reply over ura connections.
 *
 * The server (rpc_server.c) is a child process on the first CPU, listening with
 * ura_listener_new on an abstract unix address and on tcp:127.0.0.1; its handlers
 * answer each request with ura_conn_reply (a copy of the 64-byte payload). The client
 * is this process, on the second CPU: one ura loop, connections made with
 * ura_conn_connect, requests sent with ura_conn_send_with_reply. Each run lasts a
 * fixed time; a reply starts the next request in its place, so the number outstanding
 * stays fixed (closed loop). Shapes:
 *   conns=1 depth=1    one connection, one request at a time: latency;
 *   conns=64 depth=1   64 client connections, one outstanding request each;
 *   conns=1 depth=64   one connection with 64 outstanding requests (pipelined).
 * Latency is each request's time from ura_conn_send_with_reply to its reply handler.
 *
 * The contenders are the two transports of the same server, interleaved in rounds:
 * unix (contender 0) and tcp. Reported per transport: requests/s, the server's CPU time
 * per request, p50 and p99 latency (medians over rounds), and the per-round ratios
 * unix / tcp.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "proc.h"

#define RUN_MS 500u
#define RUN_MS_QUICK 120u
#define PAYLOAD 64u
#define MAX_CONNS 64u
#define MAX_DEPTH 64u
#define SERVER_READY_MS 10000
/* Bound on draining a run's outstanding requests after its deadline. */
#define DRAIN_MS 30000u

static const struct {
	unsigned conns, depth;
} shapes[] = {
	{ 1, 1 },
	{ 64, 1 },
	{ 1, 64 },
};

struct rpc_client;

/* One outstanding request slot. */
struct rpc_req {
	struct rpc_client *cl;
	ura_conn *conn;
	uint64_t sent_ns;
};

/* One contender: the connections to one of the server's addresses. */
struct rpc_client {
	const char *name;
	char address[160];
	ura_loop *loop;
	ura_msg *msg;
	struct bench_child *server;
	unsigned conns, depth, run_ms;
	ura_conn *conn[MAX_CONNS];
	struct rpc_req req[MAX_CONNS * MAX_DEPTH];
	uint64_t deadline_ns, last_ns;
	unsigned outstanding;
	uint64_t done;
	int error; /* the first failure seen by a handler, -errno */
	uint64_t *lat;
	size_t nlat, cap;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void on_reply(ura_conn *c, const struct ura_event *ev, void *arg);

static void send_req(struct rpc_req *q)
{
	struct rpc_client *cl = q->cl;
	q->sent_ns = now_ns();
	int r = ura_conn_send_with_reply(q->conn, cl->msg, on_reply, q);
	if (r < 0) {
		if (!cl->error)
			cl->error = r;
		cl->outstanding--;
	}
}

static void on_reply(ura_conn *c, const struct ura_event *ev, void *arg)
{
	(void)c;
	struct rpc_req *q = arg;
	struct rpc_client *cl = q->cl;
	uint64_t now = now_ns();
	if (ev->type != URA_EVENT_MESSAGE || ura_msg_len(ev->msg) != PAYLOAD) {
		if (!cl->error)
			cl->error = ev->type == URA_EVENT_MESSAGE ? -EPROTO : -ECONNRESET;
		cl->outstanding--;
		return;
	}
	if (cl->nlat == cl->cap) {
		size_t cap = cl->cap ? 2 * cl->cap : 65536;
		uint64_t *grown = realloc(cl->lat, cap * sizeof(*grown));
		if (!grown) {
			cl->error = -ENOMEM;
			cl->outstanding--;
			return;
		}
		cl->lat = grown;
		cl->cap = cap;
	}
	cl->lat[cl->nlat++] = now - q->sent_ns;
	cl->done++;
	cl->last_ns = now;
	if (now < cl->deadline_ns && !cl->error)
		send_req(q);
	else
		cl->outstanding--;
}

/* Events that are not replies: a connection that failed. The final events that
 * disconnect_all causes arrive after it cleared conn[0], and are expected. */
static void on_conn_event(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	(void)c;
	struct rpc_client *cl = ctx;
	if (ev->type == URA_EVENT_ERROR && cl->conn[0] && !cl->error)
		cl->error = -ECONNRESET;
}

static int connect_all(struct rpc_client *cl)
{
	for (unsigned i = 0; i < cl->conns; i++) {
		int r = ura_conn_connect(cl->loop, cl->address, &cl->conn[i]);
		if (r == 0)
			r = ura_conn_set_event_handler(cl->conn[i], on_conn_event, cl);
		if (r < 0) {
			bench_warn("rpc: connect %s: %s", cl->address, strerror(-r));
			return r;
		}
		ura_conn_activate(cl->conn[i]);
	}
	return 0;
}

/* Cancels every contender's connections, then runs the loop until their final events
 * (ura_loop_run returns only once no connection of the loop is left). */
static void disconnect_all(struct rpc_client *cl, size_t nc)
{
	for (size_t k = 0; k < nc; k++) {
		for (unsigned i = 0; i < MAX_CONNS; i++) {
			if (!cl[k].conn[i])
				continue;
			ura_conn_cancel(cl[k].conn[i]);
			ura_conn_unref(cl[k].conn[i]);
			cl[k].conn[i] = NULL;
		}
	}
	int r = ura_loop_run(cl[0].loop);
	if (r < 0)
		bench_warn("rpc: draining the connections: %s", strerror(-r));
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

static uint64_t percentile(const uint64_t *sorted, size_t n, double p)
{
	size_t i = (size_t)(p * (double)(n - 1) + 0.5);
	return sorted[i < n ? i : n - 1];
}

static int rpc_run(void *ctx, struct bench_time *t)
{
	struct rpc_client *cl = ctx;
	if (!cl->conn[0]) {
		int r = connect_all(cl);
		if (r < 0)
			return r;
	}
	cl->nlat = 0;
	cl->done = 0;
	cl->error = 0;
	uint64_t cpu0 = bench_child_cpu_ns(cl->server);
	uint64_t t0 = now_ns();
	cl->deadline_ns = t0 + cl->run_ms * 1000000ull;
	cl->last_ns = t0;
	cl->outstanding = cl->conns * cl->depth;
	for (unsigned i = 0; i < cl->conns * cl->depth; i++) {
		struct rpc_req *q = &cl->req[i];
		q->cl = cl;
		q->conn = cl->conn[i / cl->depth];
		send_req(q);
	}
	uint64_t give_up = cl->deadline_ns + DRAIN_MS * 1000000ull;
	while (cl->outstanding) {
		int r = ura_loop_run_once(cl->loop, true);
		if (r < 0) {
			bench_warn("rpc: ura_loop_run_once: %s", strerror(-r));
			return r;
		}
		if (now_ns() > give_up) {
			bench_warn("rpc %s: %u requests unanswered %u ms after the run", cl->name,
				   cl->outstanding, DRAIN_MS);
			return -ETIMEDOUT;
		}
	}
	uint64_t cpu1 = bench_child_cpu_ns(cl->server);
	if (cl->error) {
		bench_warn("rpc %s: a request failed: %s", cl->name, strerror(-cl->error));
		return cl->error;
	}
	if (!cl->done || !bench_child_alive(cl->server))
		return -EIO;
	qsort(cl->lat, cl->nlat, sizeof(*cl->lat), cmp_u64);
	t->wall_ns += cl->last_ns - t0;
	t->ops += cl->done;
	t->cpu_ns += cpu1 - cpu0;
	t->p50_ns = percentile(cl->lat, cl->nlat, 0.50);
	t->p99_ns = percentile(cl->lat, cl->nlat, 0.99);
	return 0;
}

static int start_server(struct bench_child *ch, const char *unix_addr, int cpu, char *tcp,
			size_t tcp_len)
{
	char self[4096];
	int r = bench_exe_path(self, sizeof(self), NULL);
	if (r < 0)
		return r;
	char *argv[] = { self, "serve", "rpc", (char *)unix_addr, NULL };
	r = bench_spawn(ch, argv, cpu, -1, false);
	if (r < 0)
		return r;
	char line[200];
	r = bench_child_line(ch, line, sizeof(line), SERVER_READY_MS);
	if (r == 0 && (strncmp(line, "ready tcp:", 10) != 0 || strlen(line + 6) >= tcp_len))
		r = -EPROTO;
	if (r < 0) {
		bench_child_reap(ch, 0);
		return r;
	}
	snprintf(tcp, tcp_len, "%s", line + 6);
	return 0;
}

static int measure(struct rpc_client *cl, size_t nc, unsigned conns, unsigned depth,
		   const struct bench_opts *opts, struct bench_time *t, const char *cpu_note)
{
	struct bench_contender c[2];
	for (size_t i = 0; i < nc; i++) {
		cl[i].conns = conns;
		cl[i].depth = depth;
		c[i] = (struct bench_contender){ cl[i].name, rpc_run, &cl[i], 0 };
	}
	char param[48], label[64], note[320];
	snprintf(param, sizeof(param), "conns=%u depth=%u", conns, depth);
	snprintf(label, sizeof(label), "rpc %s", param);
	snprintf(note, sizeof(note),
		 "%u ms per run; %u request(s) outstanding per connection; %u-byte payloads; %s",
		 cl[0].run_ms, depth, PAYLOAD, cpu_note);
	memset(t, 0, nc * (size_t)opts->rounds * sizeof(*t));
	int r = bench_rounds(c, nc, opts->rounds, label, t);
	disconnect_all(cl, nc);
	if (r < 0)
		return r;
	return bench_record_rate("rpc", param, c, nc, opts->rounds, t, note);
}

int bench_rpc(const struct bench_opts *opts)
{
	enum { NC = 2 };
	struct bench_cpus cpus;
	struct bench_child server = { 0 };
	struct rpc_client *cl = calloc(NC, sizeof(*cl));
	struct bench_time *t = calloc(NC * (size_t)opts->rounds, sizeof(*t));
	ura_loop *loop = NULL;
	ura_msg *msg = NULL;
	char cpu_note[96], unix_addr[64];
	int r = cl && t ? 0 : -ENOMEM;
	if (r < 0)
		goto out;
	bench_pick_cpus(&cpus);
	if (cpus.server >= 0)
		snprintf(cpu_note, sizeof(cpu_note), "server on CPU %d, client on CPU %d",
			 cpus.server, cpus.load);
	else
		snprintf(cpu_note, sizeof(cpu_note), "one CPU: server and client not pinned");
	snprintf(unix_addr, sizeof(unix_addr), "unix:@ura-bench-rpc-%d", (int)getpid());
	cl[0].name = "unix";
	snprintf(cl[0].address, sizeof(cl[0].address), "%s", unix_addr);
	cl[1].name = "tcp";
	r = start_server(&server, unix_addr, cpus.server, cl[1].address, sizeof(cl[1].address));
	if (r < 0) {
		bench_warn("rpc: the server did not start: %s", strerror(-r));
		goto out;
	}
	/* The client loop is this thread's: pin before creating it. */
	(void)bench_pin(cpus.load);
	r = ura_loop_new(NULL, &loop);
	if (r == 0) {
		unsigned char payload[PAYLOAD];
		memset(payload, 'r', sizeof(payload));
		r = ura_msg_new(payload, sizeof(payload), &msg);
	}
	if (r < 0) {
		bench_warn("rpc: client setup: %s", strerror(-r));
		goto out;
	}
	for (size_t i = 0; i < NC; i++) {
		cl[i].loop = loop;
		cl[i].msg = msg;
		cl[i].server = &server;
		cl[i].run_ms = opts->quick ? RUN_MS_QUICK : RUN_MS;
	}
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]) && r == 0; s++)
		r = measure(cl, NC, shapes[s].conns, shapes[s].depth, opts, t, cpu_note);
	bench_print_table("rpc");
out:
	ura_msg_unref(msg);
	ura_loop_free(loop);
	bench_child_reap(&server, 0);
	(void)bench_pin(-1);
	if (cl) {
		for (size_t i = 0; i < NC; i++)
			free(cl[i].lat);
	}
	free(cl);
	free(t);
	return r;
}
