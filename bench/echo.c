/*
 * echo suite: TCP echo over loopback (127.0.0.1), servers side by side.
 *
 * Servers (one file each, echo_server.h): ura raw tasks, raw liburing, epoll, and
 * libuv when it is found. Each runs in a child process (`ura-bench serve echo-<name>`)
 * pinned to the first CPU, for the whole suite, on a listening socket the suite made.
 * The load is a separate process, ura-echo-client (echo_client.c), pinned to the
 * second CPU: C connections, each a ping-pong of one message of S bytes, for a fixed
 * time per run. A run starts a client (it connects and warms up untimed), reads the
 * server's CPU clock, lets the client go, and reads the clock again when the client
 * reports; so each run yields requests, the client's wall time for them, and the
 * server's CPU time (every thread, including io_uring's workers if any) for them.
 *
 * Rounds interleave the servers (ura, raw, epoll, libuv, ura, raw, ...). Reported per
 * server: requests/s, and server CPU time per request, each as the median over rounds,
 * and the medians of the per-round ratios ura / server. Goals, reported and never
 * asserted: ura >= 1.0x raw liburing's throughput, >= 1.1x epoll's at 500 connections,
 * and <= 0.8x libuv's CPU time per request.
 */
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench_util.h"
#include "proc.h"

#define RUN_MS 400u
#define RUN_MS_QUICK 80u
/* Bounds on one client: to be ready (connect and warm up), and past its run time. */
#define READY_TIMEOUT_MS 30000
#define REPORT_SLACK_MS 30000
#define SERVER_READY_MS 10000
/* Descriptors beyond the connections: stdio, rings, pipes, listening sockets. */
#define FD_SLACK 64u

static const unsigned sizes[] = { 64, 512 };
static const unsigned conn_counts[] = { 1, 50, 500 };

struct echo_setup {
	unsigned conns, size, run_ms;
	int load_cpu;
	char client[PATH_MAX];
};

struct echo_server {
	const char *name;  /* contender */
	const char *child; /* serve name */
	unsigned port;
	struct bench_child ch;
	const struct echo_setup *setup;
};

static const struct {
	const char *name, *child;
} kinds[] = {
	{ "ura", "echo-ura" },
	{ "raw-liburing", "echo-raw" },
	{ "epoll", "echo-epoll" },
#ifdef BENCH_HAVE_LIBUV
	{ "libuv", "echo-uv" },
#endif
};
enum { NSERVERS = sizeof(kinds) / sizeof(kinds[0]) };

/* A TCP socket listening on 127.0.0.1 at a port the kernel picks. */
static int listen_loopback(unsigned *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t len = sizeof(sa);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4096) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	*port = ntohs(sa.sin_port);
	return fd;
}

static int start_server(struct echo_server *sv, const char *self, int cpu)
{
	int fd = listen_loopback(&sv->port);
	if (fd < 0) {
		bench_warn("echo: %s: listening socket: %s", sv->name, strerror(-fd));
		return fd;
	}
	char fdarg[16];
	snprintf(fdarg, sizeof(fdarg), "%d", fd);
	char *argv[] = { (char *)self, "serve", (char *)sv->child, fdarg, NULL };
	int r = bench_spawn(&sv->ch, argv, cpu, fd, false);
	close(fd); /* the server holds it now */
	if (r < 0) {
		bench_warn("echo: %s: spawn: %s", sv->name, strerror(-r));
		return r;
	}
	char line[64];
	r = bench_child_line(&sv->ch, line, sizeof(line), SERVER_READY_MS);
	if (r == 0 && strcmp(line, "ready") != 0)
		r = -EPROTO;
	if (r < 0) {
		bench_warn("echo: %s server did not get ready: %s", sv->name, strerror(-r));
		bench_child_reap(&sv->ch, 0);
	}
	return r;
}

/* Ends a client that failed; says why. */
static int client_failed(struct bench_child *cl, const char *server, const char *what, int err)
{
	bench_warn("echo: client against %s: %s: %s", server, what, strerror(-err));
	bench_child_reap(cl, 0);
	return err;
}

/* One run: a fresh client for run_ms against one server. */
static int echo_run(void *ctx, struct bench_time *t)
{
	struct echo_server *sv = ctx;
	const struct echo_setup *st = sv->setup;
	char port[16], conns[16], size[16], ms[16];
	snprintf(port, sizeof(port), "%u", sv->port);
	snprintf(conns, sizeof(conns), "%u", st->conns);
	snprintf(size, sizeof(size), "%u", st->size);
	snprintf(ms, sizeof(ms), "%u", st->run_ms);
	char *argv[] = {
		(char *)st->client, "--port", port, "--conns", conns, "--size", size,
		"--duration-ms", ms, "--wait-go", "--timeout-s", "120", NULL,
	};
	struct bench_child cl;
	int r = bench_spawn(&cl, argv, st->load_cpu, -1, true);
	if (r < 0)
		return client_failed(&cl, sv->name, "spawn", r);
	char line[128];
	r = bench_child_line(&cl, line, sizeof(line), READY_TIMEOUT_MS);
	if (r == 0 && strcmp(line, "ready") != 0)
		r = -EPROTO;
	if (r < 0)
		return client_failed(&cl, sv->name, "connect and warm-up", r);
	uint64_t cpu0 = bench_child_cpu_ns(&sv->ch);
	r = bench_child_write(&cl, "go\n");
	if (r == 0)
		r = bench_child_line(&cl, line, sizeof(line), (int)st->run_ms + REPORT_SLACK_MS);
	uint64_t cpu1 = bench_child_cpu_ns(&sv->ch);
	if (r < 0)
		return client_failed(&cl, sv->name, "run", r);
	unsigned long long reqs, wall;
	if (sscanf(line, "requests=%llu wall_ns=%llu", &reqs, &wall) != 2 || !reqs || !wall)
		return client_failed(&cl, sv->name, "report", -EPROTO);
	int status = bench_child_reap(&cl, 10000);
	if (status != 0)
		return client_failed(&cl, sv->name, "exit", status < 0 ? status : -EIO);
	if (!bench_child_alive(&sv->ch)) {
		bench_warn("echo: the %s server exited", sv->name);
		return -ECHILD;
	}
	t->wall_ns += wall;
	t->ops += reqs;
	t->cpu_ns += cpu1 - cpu0;
	return 0;
}

static int measure(struct echo_server *sv, struct echo_setup *st, const struct bench_opts *opts,
		   struct bench_time *t, const char *cpu_note)
{
	struct bench_contender c[NSERVERS];
	for (size_t i = 0; i < NSERVERS; i++) {
		c[i] = (struct bench_contender){ sv[i].name, echo_run, &sv[i], 0 };
		sv[i].setup = st;
	}
	char param[48], label[64], note[320];
	snprintf(param, sizeof(param), "%uB conns=%u", st->size, st->conns);
	snprintf(label, sizeof(label), "echo %s", param);
	snprintf(note, sizeof(note),
		 "%u ms per run, 1 request in flight per connection; %s; srv cpu/req: the "
		 "server process's CPU time per request",
		 st->run_ms, cpu_note);
	int r = bench_rounds(c, NSERVERS, opts->rounds, label, t);
	if (r < 0)
		return r;
	return bench_record_rate("echo", param, c, NSERVERS, opts->rounds, t, note);
}

int bench_echo(const struct bench_opts *opts)
{
	struct echo_setup st = { .run_ms = opts->quick ? RUN_MS_QUICK : RUN_MS };
	struct echo_server sv[NSERVERS];
	struct bench_cpus cpus;
	char self[PATH_MAX], cpu_note[96];
	memset(sv, 0, sizeof(sv));
	int r = bench_exe_path(self, sizeof(self), NULL);
	if (r == 0)
		r = bench_exe_path(st.client, sizeof(st.client), "ura-echo-client");
	if (r == 0 && access(st.client, X_OK) != 0)
		r = -errno;
	if (r < 0) {
		bench_warn("echo: cannot find ura-echo-client beside ura-bench: %s", strerror(-r));
		return r;
	}
	/* Each connection is a descriptor in the server and one in the client. */
	unsigned long nofile = bench_raise_nofile();
	unsigned max_conns = nofile > 2 * FD_SLACK ? (unsigned)(nofile - FD_SLACK) : 1;
	bench_pick_cpus(&cpus);
	st.load_cpu = cpus.load;
	if (cpus.server >= 0)
		snprintf(cpu_note, sizeof(cpu_note), "server on CPU %d, client on CPU %d",
			 cpus.server, cpus.load);
	else
		snprintf(cpu_note, sizeof(cpu_note), "one CPU: server and client not pinned");
	/* This process mostly sleeps on the client's pipe; keep it off the server's CPU. */
	(void)bench_pin(cpus.load);

	struct bench_time *t = calloc(NSERVERS * (size_t)opts->rounds, sizeof(*t));
	if (!t) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < NSERVERS && r == 0; i++) {
		sv[i].name = kinds[i].name;
		sv[i].child = kinds[i].child;
		r = start_server(&sv[i], self, cpus.server);
	}
#ifndef BENCH_HAVE_LIBUV
	bench_warn("echo: libuv not found at build time: no libuv server");
#endif
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]) && r == 0; s++) {
		for (size_t k = 0; k < sizeof(conn_counts) / sizeof(conn_counts[0]) && r == 0;
		     k++) {
			st.size = sizes[s];
			st.conns = conn_counts[k];
			if (st.conns > max_conns) {
				bench_warn("echo: RLIMIT_NOFILE %lu: %u connections, not %u", nofile,
					   max_conns, st.conns);
				st.conns = max_conns;
			}
			memset(t, 0, NSERVERS * (size_t)opts->rounds * sizeof(*t));
			r = measure(sv, &st, opts, t, cpu_note);
		}
	}
	bench_print_table("echo");
out:
	for (size_t i = 0; i < NSERVERS; i++)
		bench_child_reap(&sv[i].ch, 0);
	free(t);
	(void)bench_pin(-1);
	return r;
}
