/*
 * The memory suite's probes (`ura-bench serve memory-<how> <n>`), each a fresh process:
 * set up, read the resident set size, put n one-hour timers in flight, read it again,
 * and write "n=<n> rss_delta=<bytes> slab_delta=<bytes> ns=<setup time>". Then exit
 * without tearing down: the kernel frees the ring and everything in flight.
 *
 *   ura          ura_timeout tasks on one loop (SQ 4096, CQ 65536), submitted in batches
 *                that fit the SQ, so none waits in ura's backlog: the steady-state cost
 *                of a task in the kernel's hands;
 *   ura-backlog  all n submitted at once (most wait in the backlog, each with a heap
 *                copy of its SQE), then the loop runs until the backlog has drained
 *                into the kernel: what is left of that detour;
 *   raw          raw liburing timeouts, all pointing at one timespec (the kernel copies
 *                it): a raw ring's user-space cost per timer, for reference;
 *   uv           libuv timers (uv_timer_t, an array the program allocates, started for
 *                an hour): libuv's cost per timer (user space only).
 * Kernel memory (a request and its timer data per in-flight io_uring timeout) is not in
 * the resident set; slab_delta is the machine-wide change of the kernel's slab memory
 * over the same span (/proc/meminfo), an approximation (memory.c waits for the previous
 * probe's requests to be freed before it starts the next).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "serve.h"

#ifdef BENCH_HAVE_LIBUV
#include <uv.h>
#endif

#define TIMER_NS (3600ull * 1000000000ull)
#define SQ 4096u
#define CQ 65536u
/* Batches for the no-backlog submission: under the SQ room ura keeps for tasks (it
 * holds the last eighth of the SQ back for cancels). */
#define BATCH 2048u

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Resident set size in bytes, from /proc/self/statm; -1 if unreadable. */
static long long rss_bytes(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long long size, resident = -1;
	if (!f)
		return -1;
	if (fscanf(f, "%lld %lld", &size, &resident) != 2)
		resident = -1;
	fclose(f);
	return resident < 0 ? -1 : resident * sysconf(_SC_PAGESIZE);
}

long long memory_slab_bytes(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	long long kb = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Slab: %lld kB", &kb) == 1)
			break;
	fclose(f);
	return kb < 0 ? -1 : kb * 1024;
}

struct probe {
	long long rss0, slab0;
	uint64_t t0;
};

static void probe_start(struct probe *p)
{
	p->rss0 = rss_bytes();
	p->slab0 = memory_slab_bytes();
	p->t0 = now_ns();
}

static int probe_report(const struct probe *p, unsigned long n)
{
	uint64_t ns = now_ns() - p->t0;
	long long rss = rss_bytes(), slab = memory_slab_bytes();
	if (rss < 0 || p->rss0 < 0)
		return -EIO;
	printf("n=%lu rss_delta=%lld slab_delta=%lld ns=%llu\n", n, rss - p->rss0,
	       slab < 0 || p->slab0 < 0 ? 0 : slab - p->slab0, (unsigned long long)ns);
	fflush(stdout);
	return 0;
}

/* ------------------------------------------------------------------ ura */

static void timer_done(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)res, (void)flags;
	unsigned long *early = arg;
	(*early)++; /* an hour has not passed: any terminal call here is a surprise */
}

static void marker_done(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)res, (void)flags;
	*(bool *)arg = true;
}

static int probe_ura(unsigned long n, bool backlog)
{
	struct ura_loop_config cfg = { .sq_entries = SQ, .cq_entries = CQ };
	ura_loop *loop;
	ura_session *s;
	unsigned long early = 0;
	bool marker = false;
	int r = ura_loop_new(&cfg, &loop);
	if (r < 0)
		return r;
	r = ura_session_new(loop, NULL, NULL, &s);
	if (r < 0)
		return r;
	/* Warm: the loop's first iteration and first task allocate what any loop has. */
	r = ura_nop(s, marker_done, &marker, NULL);
	while (r == 0 && !marker)
		r = ura_loop_run_once(loop, true);
	if (r < 0)
		return r;
	struct probe p;
	probe_start(&p);
	for (unsigned long i = 0; i < n; i++) {
		r = ura_timeout(s, TIMER_NS, timer_done, &early, NULL);
		if (r < 0)
			return r;
		if (!backlog && (i + 1) % BATCH == 0 && (r = ura_loop_run_once(loop, false)) < 0)
			return r;
	}
	/* The backlog is first in, first out: once a NOP submitted after every timer has
	 * completed, every timer has been handed to the kernel. */
	marker = false;
	r = ura_nop(s, marker_done, &marker, NULL);
	while (r >= 0 && !marker)
		r = ura_loop_run_once(loop, !backlog);
	if (r < 0)
		return r;
	struct ura_session_stats st;
	r = ura_session_stats(s, &st);
	if (r < 0)
		return r;
	if (st.in_flight != n || early) {
		fprintf(stderr, "memory-ura: %llu tasks in flight, %lu finished early; want %lu, 0\n",
			(unsigned long long)st.in_flight, early, n);
		return -EPROTO;
	}
	return probe_report(&p, n);
}

/* ------------------------------------------------------------------ raw */

static int probe_raw(unsigned long n)
{
	struct io_uring ring;
	unsigned flags;
	static struct __kernel_timespec ts = { .tv_sec = (long long)(TIMER_NS / 1000000000ull) };
	int r = bench_ring_init(&ring, SQ, CQ, &flags);
	if (r < 0)
		return r;
	struct probe p;
	probe_start(&p);
	for (unsigned long i = 0; i < n; i++) {
		struct io_uring_sqe *q = io_uring_get_sqe(&ring);
		if (!q) {
			r = io_uring_submit(&ring);
			if (r < 0)
				return r;
			q = io_uring_get_sqe(&ring);
		}
		io_uring_prep_timeout(q, &ts, 0, 0);
		io_uring_sqe_set_data64(q, i);
	}
	r = io_uring_submit(&ring);
	if (r < 0)
		return r;
	if (io_uring_cq_ready(&ring)) {
		fprintf(stderr, "memory-raw: %u timeouts completed early\n", io_uring_cq_ready(&ring));
		return -EPROTO;
	}
	return probe_report(&p, n);
}

/* ------------------------------------------------------------------ libuv */

#ifdef BENCH_HAVE_LIBUV
static void uv_timer_fired(uv_timer_t *t)
{
	(void)t;
}

static int probe_uv(unsigned long n)
{
	static uv_loop_t loop;
	int r = uv_loop_init(&loop);
	if (r < 0)
		return r;
	struct probe p;
	probe_start(&p);
	/* The program's own memory for its timers is part of their cost. */
	uv_timer_t *timers = calloc(n, sizeof(*timers));
	if (!timers)
		return -ENOMEM;
	for (unsigned long i = 0; i < n; i++) {
		uv_timer_init(&loop, &timers[i]);
		r = uv_timer_start(&timers[i], uv_timer_fired, TIMER_NS / 1000000u, 0);
		if (r < 0)
			return r;
	}
	/* One pass of the loop: the timers stay pending. */
	uv_run(&loop, UV_RUN_NOWAIT);
	return probe_report(&p, n);
}
#endif

int memory_probe(const char *how, unsigned long n)
{
	if (n == 0)
		return -EINVAL;
	if (strcmp(how, "ura") == 0)
		return probe_ura(n, false);
	if (strcmp(how, "ura-backlog") == 0)
		return probe_ura(n, true);
	if (strcmp(how, "raw") == 0)
		return probe_raw(n);
#ifdef BENCH_HAVE_LIBUV
	if (strcmp(how, "uv") == 0)
		return probe_uv(n);
#endif
	return -ENOENT;
}
