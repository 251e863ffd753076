/*
 * ura-echo-client: the echo suite's load generator, a process of its own.
 *
 *   ura-echo-client --port P [--conns C] [--size S] [--duration-ms D | --count N]
 *                   [--cpu K] [--wait-go] [--timeout-s T]
 *
 * Opens C TCP connections to 127.0.0.1:P. Each connection is a ping-pong: it sends one
 * message of S bytes and waits until the whole echo is back (and matches) before it
 * sends the next, so C requests are outstanding at any time. Every connection first
 * does one untimed request (the server has then accepted it and armed its receive);
 * the timed phase follows, for D milliseconds (no request starts after that; those
 * under way finish) or N requests in all.
 *
 * The client is the same for every server, so it only has to be cheap and correct: it
 * runs on io_uring (a send and a recv per request, one io_uring_enter per batch of
 * completions), and each echo is compared with what was sent (a sequence number leads
 * every message).
 *
 * With --wait-go (the suite's mode) it prints "ready" once connected and warmed up,
 * waits for a line on stdin, runs, then prints "requests=R wall_ns=W". Without, it
 * starts at once and prints a readable line. Exit status: 0, or 1 on any error (a
 * connection that failed, closed, or echoed wrong bytes). --timeout-s (default 120)
 * bounds the whole process.
 */
#include <errno.h>
#include <getopt.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { OP_SEND = 0, OP_RECV = 1 };

struct conn {
	int fd;
	unsigned sent, got; /* bytes of the current request sent, received */
	uint64_t seq;
	unsigned char *tx, *rx;
};

struct client {
	struct io_uring ring;
	struct conn *conns;
	unsigned nconns, size;
	uint64_t deadline_ns; /* no request starts at or after it */
	uint64_t limit;       /* nor once this many have started */
	uint64_t started, done;
	unsigned active;      /* connections with a request under way */
	uint64_t last_done_ns;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, int err)
{
	fprintf(stderr, "ura-echo-client: %s: %s\n", what, strerror(err));
	exit(1);
}

static struct io_uring_sqe *sqe(struct client *cl)
{
	struct io_uring_sqe *q = io_uring_get_sqe(&cl->ring);
	if (!q) {
		int r = io_uring_submit(&cl->ring);
		if (r < 0)
			die("io_uring_submit", -r);
		q = io_uring_get_sqe(&cl->ring);
		if (!q)
			die("no SQE after a submit", EBUSY);
	}
	return q;
}

static void queue_send(struct client *cl, unsigned i)
{
	struct conn *c = &cl->conns[i];
	struct io_uring_sqe *q = sqe(cl);
	io_uring_prep_send(q, c->fd, c->tx + c->sent, cl->size - c->sent, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(q, (uint64_t)i << 1 | OP_SEND);
}

static void queue_recv(struct client *cl, unsigned i)
{
	struct conn *c = &cl->conns[i];
	struct io_uring_sqe *q = sqe(cl);
	io_uring_prep_recv(q, c->fd, c->rx + c->got, cl->size - c->got, 0);
	io_uring_sqe_set_data64(q, (uint64_t)i << 1 | OP_RECV);
}

/* Starts connection i's next request: its send and the recv for the echo. */
static void start(struct client *cl, unsigned i)
{
	struct conn *c = &cl->conns[i];
	c->seq++;
	memcpy(c->tx, &c->seq, cl->size < sizeof(c->seq) ? cl->size : sizeof(c->seq));
	c->sent = c->got = 0;
	cl->started++;
	queue_send(cl, i);
	queue_recv(cl, i);
}

static void finish(struct client *cl, unsigned i, uint64_t now)
{
	struct conn *c = &cl->conns[i];
	if (memcmp(c->tx, c->rx, cl->size) != 0) {
		fprintf(stderr, "ura-echo-client: connection %u: echo differs from request %llu\n",
			i, (unsigned long long)c->seq);
		exit(1);
	}
	cl->done++;
	cl->last_done_ns = now;
	if (now < cl->deadline_ns && cl->started < cl->limit)
		start(cl, i);
	else
		cl->active--;
}

static void on_cqe(struct client *cl, const struct io_uring_cqe *cqe, uint64_t now)
{
	unsigned i = (unsigned)(cqe->user_data >> 1);
	struct conn *c = &cl->conns[i];
	if (cqe->res < 0)
		die((cqe->user_data & 1) == OP_SEND ? "send" : "recv", -cqe->res);
	if ((cqe->user_data & 1) == OP_SEND) {
		c->sent += (unsigned)cqe->res;
		if (c->sent < cl->size)
			queue_send(cl, i);
	} else {
		if (cqe->res == 0) {
			fprintf(stderr, "ura-echo-client: connection %u: server closed it\n", i);
			exit(1);
		}
		c->got += (unsigned)cqe->res;
		if (c->got < cl->size)
			queue_recv(cl, i);
	}
	if (c->sent == cl->size && c->got == cl->size)
		finish(cl, i, now);
}

/* Runs requests on every connection until the deadline or limit; returns when none is
 * under way. */
static void drive(struct client *cl, uint64_t deadline_ns, uint64_t limit)
{
	cl->deadline_ns = deadline_ns;
	cl->limit = limit;
	cl->started = cl->done = 0;
	cl->active = cl->nconns;
	for (unsigned i = 0; i < cl->nconns; i++)
		start(cl, i);
	while (cl->active) {
		int r = io_uring_submit_and_wait(&cl->ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
			die("io_uring_submit_and_wait", -r);
		/* One clock read per batch: the deadline is coarse by design. */
		uint64_t now = now_ns();
		unsigned head, seen = 0;
		struct io_uring_cqe *cqe;
		io_uring_for_each_cqe(&cl->ring, head, cqe) {
			on_cqe(cl, cqe, now);
			seen++;
		}
		io_uring_cq_advance(&cl->ring, seen);
	}
}

static int ring_init(struct io_uring *ring, unsigned conns)
{
	unsigned sq = 64;
	while (sq < 2 * conns + 8)
		sq <<= 1;
	static const unsigned tries[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, 0,
	};
	int r = -EINVAL;
	for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		p.flags = tries[i] | IORING_SETUP_CQSIZE;
		p.cq_entries = 4 * sq;
		r = io_uring_queue_init_params(sq, ring, &p);
		if (r != -EINVAL)
			break;
	}
	return r;
}

static void connect_all(struct client *cl, unsigned port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (unsigned i = 0; i < cl->nconns; i++) {
		struct conn *c = &cl->conns[i];
		c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (c->fd < 0)
			die("socket", errno);
		int one = 1;
		(void)setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			die("connect", errno);
		c->tx = malloc(cl->size);
		c->rx = malloc(cl->size);
		if (!c->tx || !c->rx)
			die("malloc", ENOMEM);
		for (unsigned k = 0; k < cl->size; k++)
			c->tx[k] = (unsigned char)(i + k);
	}
}

static unsigned long arg_num(const char *s, const char *what, unsigned long max)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || *end || !*s || v > max) {
		fprintf(stderr, "ura-echo-client: bad %s '%s'\n", what, s);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "conns", required_argument, NULL, 'c' },
		{ "size", required_argument, NULL, 's' },
		{ "duration-ms", required_argument, NULL, 'd' },
		{ "count", required_argument, NULL, 'n' },
		{ "cpu", required_argument, NULL, 'k' },
		{ "wait-go", no_argument, NULL, 'g' },
		{ "timeout-s", required_argument, NULL, 't' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long port = 0, conns = 1, size = 64, duration_ms = 1000, count = 0, timeout = 120;
	long cpu = -1;
	bool wait_go = false;
	int o;
	while ((o = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (o) {
		case 'p': port = arg_num(optarg, "port", 65535); break;
		case 'c': conns = arg_num(optarg, "conns", 100000); break;
		case 's': size = arg_num(optarg, "size", 1u << 20); break;
		case 'd': duration_ms = arg_num(optarg, "duration", 3600000); break;
		case 'n': count = arg_num(optarg, "count", UINT32_MAX); break;
		case 'k': cpu = (long)arg_num(optarg, "cpu", CPU_SETSIZE - 1); break;
		case 'g': wait_go = true; break;
		case 't': timeout = arg_num(optarg, "timeout", 86400); break;
		default:
			fprintf(stderr, "usage: ura-echo-client --port P [--conns C] [--size S] "
					"[--duration-ms D | --count N] [--cpu K] [--wait-go] "
					"[--timeout-s T]\n");
			return 2;
		}
	}
	if (!port || !conns || !size) {
		fprintf(stderr, "ura-echo-client: --port, --conns and --size must be positive\n");
		return 2;
	}
	alarm((unsigned)timeout); /* SIGALRM's default action ends a client that hangs */
	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET((int)cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set) < 0)
			die("sched_setaffinity", errno);
	}
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}

	struct client cl = { .nconns = (unsigned)conns, .size = (unsigned)size };
	cl.conns = calloc(conns, sizeof(*cl.conns));
	if (!cl.conns)
		die("calloc", ENOMEM);
	int r = ring_init(&cl.ring, cl.nconns);
	if (r < 0)
		die("io_uring setup", -r);
	connect_all(&cl, (unsigned)port);
	drive(&cl, UINT64_MAX, cl.nconns); /* warm-up: one request per connection */

	if (wait_go) {
		printf("ready\n");
		fflush(stdout);
		char line[16];
		if (!fgets(line, sizeof(line), stdin))
			return 1; /* the suite went away */
	}
	uint64_t t0 = now_ns();
	drive(&cl, count ? UINT64_MAX : t0 + duration_ms * 1000000ull, count ? count : UINT64_MAX);
	uint64_t wall = cl.last_done_ns - t0;
	if (wait_go)
		printf("requests=%llu wall_ns=%llu\n", (unsigned long long)cl.done,
		       (unsigned long long)wall);
	else
		printf("%llu requests in %.3f s over %u connections of %u B: %.0f requests/s\n",
		       (unsigned long long)cl.done, (double)wall / 1e9, cl.nconns, cl.size,
		       (double)cl.done * 1e9 / (double)wall);
	fflush(stdout);
	for (unsigned i = 0; i < cl.nconns; i++) {
		close(cl.conns[i].fd);
		free(cl.conns[i].tx);
		free(cl.conns[i].rx);
	}
	free(cl.conns);
	io_uring_queue_exit(&cl.ring);
	return 0;
}
