/*
 * overload suite: what ura does when it is offered more work than it can finish
 * (issue 12's "Measure"). Three measurements:
 *
 *   flood           1, 2 and 4 threads call ura_nop on the loop's shared session as
 *                   fast as they can (an -EAGAIN answer is counted and retried at
 *                   once) while the loop thread runs ura_loop_run_once(loop, true).
 *                   Each case is a fresh child process (`ura-bench serve overload-flood
 *                   T:W:V`), so its peak RSS (VmHWM) is its own: V ms of flood to
 *                   warm up, then W ms timed; the producers stop and the loop drains
 *                   every accepted task (each must complete, with res 0). Then the same
 *                   loop runs as many NOPs as the window completed, submitted from the
 *                   loop thread in batches of 128 as the nop suite does: the unloaded
 *                   rate. The ratio is per child, flooded / unloaded completed tasks/s.
 *   pending flushes one long suspended task on a session and N flushes (N = 1000,
 *                   20000) pending behind it, taken by the loop before timing; then
 *                   NOPs on that session in batches of 128, against the same on a loop
 *                   with none pending (interleaved rounds, ratio N pending / none). On
 *                   a session of its own and on the shared session. At the end the
 *                   suspended task is cancelled and every flush must fire.
 *   never-reading   the rpc suite's server in a child; one unix connection sends
 *                   requests that expect replies as fast as it can and never reads
 *                   (its receive buffer set small) for a few seconds; reported: the
 *                   server's peak RSS (VmHWM), and its RSS after the client left. The
 *                   client sends from one fixed buffer and stops at its deadline, or
 *                   early if the server's RSS passes a safety cap.
 *
 * Goals, reported and never asserted: flood peak RSS <= 512 MiB at the default
 * max_queued; 4-thread flood >= 0.5x the unloaded rate; server peak RSS <= 256 MiB
 * under a never-reading client; 20000 pending flushes <= 1.5x the cost per task of none.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "proc.h"
#include "serve.h"

static const unsigned flood_threads[] = { 1, 2, 4 };
#define MAX_PRODUCERS 4u
#define FLOOD_WINDOW_MS 1000u
#define FLOOD_WINDOW_MS_QUICK 300u
#define FLOOD_WARM_MS 200u
#define FLOOD_WARM_MS_QUICK 100u
/* Bounds on the parts of a flood child that have no natural end. */
#define FLOOD_DRAIN_MS 30000u
#define FLOOD_CHILD_MS 120000
#define UNLOADED_BATCH 128u
#define UNLOADED_MIN 100000u
#define UNLOADED_MAX 4000000u

static const unsigned flush_counts[] = { 1000, 20000 };
#define FLUSH_OPS 1000000u
#define FLUSH_OPS_QUICK 200000u
#define FLUSH_BATCH 128u
#define FLUSH_SETTLE_MS 10000u

#define NR_RUN_MS 5000u
#define NR_RUN_MS_QUICK 2000u
#define NR_PAYLOAD 1024u
#define NR_FRAMES 64u              /* frames per write */
#define NR_HEADER 20u              /* docs/PROTOCOL.md */
#define NR_RCVBUF 4096             /* the kernel's minimum is about this */
#define NR_CAP_KB (1024ll * 1024)  /* stop the client early past 1 GiB of server RSS */
#define NR_SAMPLE_MS 100u
#define NR_AFTER_MS 500u
#define SERVER_READY_MS 10000

static uint64_t clock_of(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void)
{
	return clock_of(CLOCK_MONOTONIC);
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000l };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* A "Key:  N kB" line of /proc/<pid>/status (pid 0: this process); -1 if unreadable. */
static long long status_kb(pid_t pid, const char *key)
{
	char path[64], line[256];
	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	else
		snprintf(path, sizeof(path), "/proc/self/status");
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	long long kb = -1;
	size_t klen = strlen(key);
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
			if (sscanf(line + klen + 1, "%lld", &kb) != 1)
				kb = -1;
			break;
		}
	}
	fclose(f);
	return kb;
}

/* ------------------------------------------------------------ flood: child side */

struct flood;

/* One producer thread's counters, written by it alone and read after the join: each on
 * its own cache line, so the producers do not slow each other down through them. */
struct producer {
	_Alignas(64) struct flood *f;
	pthread_t tid;
	uint64_t accepted, eagain;
	int error;
};

struct flood {
	ura_loop *loop;
	ura_session *s;
	uint64_t deadline_ns; /* producers give up here even if never told to stop */
	/* Written by the loop thread, polled by the producers. */
	_Alignas(64) atomic_bool go;
	atomic_bool stop;
	/* Loop thread only (callbacks run there). */
	_Alignas(64) uint64_t done, errors;
};

static void flood_done(ura_session *s, ura_task t, int32_t res, uint32_t cqe_flags, void *arg)
{
	struct flood *f = arg;
	f->done++;
	if (res != 0)
		f->errors++;
}

static void *producer_main(void *arg)
{
	struct producer *p = arg;
	struct flood *f = p->f;
	/* Start together, so the window sees every producer at work. Acquire pairs with
	 * the loop thread's release store. */
	while (!atomic_load_explicit(&f->go, memory_order_acquire)) {
		if (now_ns() > f->deadline_ns)
			return NULL;
		sched_yield();
	}
	for (uint64_t i = 0;; i++) {
		/* The flag and the clock every 1024 submits: cheap, and still prompt. */
		if ((i & 1023u) == 0 &&
		    (atomic_load_explicit(&f->stop, memory_order_relaxed) || now_ns() > f->deadline_ns))
			break;
		int r = ura_nop(f->s, flood_done, f, NULL);
		if (r == 0) {
			p->accepted++;
		} else if (r == -EAGAIN) {
			p->eagain++; /* the bound: retry at once, as a hostile producer would */
		} else {
			p->error = r;
			break;
		}
	}
	return NULL;
}

/* Runs the loop until done reaches target or the deadline passes. */
static int run_until(struct flood *f, uint64_t target, uint64_t deadline)
{
	while (f->done < target) {
		int r = ura_loop_run_once(f->loop, true);
		if (r < 0)
			return r;
		if (now_ns() > deadline)
			return -ETIMEDOUT;
	}
	return 0;
}

/* The unloaded rate: n NOPs from the loop thread, batches of UNLOADED_BATCH. */
static int unloaded(struct flood *f, uint64_t n, uint64_t *wall, uint64_t *cpu)
{
	uint64_t c0 = clock_of(CLOCK_THREAD_CPUTIME_ID), t0 = now_ns();
	uint64_t base = f->done, deadline = t0 + FLOOD_DRAIN_MS * 1000000ull;
	for (uint64_t sent = 0; sent < n; sent += UNLOADED_BATCH) {
		for (unsigned i = 0; i < UNLOADED_BATCH; i++) {
			int r = ura_nop(f->s, flood_done, f, NULL);
			if (r < 0)
				return r;
		}
		int r = run_until(f, base + sent + UNLOADED_BATCH, deadline);
		if (r < 0)
			return r;
	}
	*wall = now_ns() - t0;
	*cpu = clock_of(CLOCK_THREAD_CPUTIME_ID) - c0;
	return 0;
}

static int flood_child(unsigned nthreads, unsigned window_ms, unsigned warm_ms)
{
	/* Both hold cache-line-aligned members: aligned allocations. */
	struct flood *f = aligned_alloc(64, sizeof(*f));
	struct producer *p = aligned_alloc(64, MAX_PRODUCERS * sizeof(*p));
	int r = f && p ? 0 : -ENOMEM;
	unsigned started = 0;
	if (r == 0) {
		memset(f, 0, sizeof(*f));
		memset(p, 0, MAX_PRODUCERS * sizeof(*p));
		r = ura_loop_new(NULL, &f->loop); /* the default bound: what the goal names */
	}
	if (r < 0)
		goto out;
	f->s = ura_session_shared(f->loop);
	uint64_t start = now_ns();
	f->deadline_ns = start + (warm_ms + window_ms + 10000ull) * 1000000ull;
	for (; started < nthreads; started++) {
		p[started].f = f;
		r = -pthread_create(&p[started].tid, NULL, producer_main, &p[started]);
		if (r < 0)
			break;
	}
	/* Release: the producers see a loop and session fully set up. */
	atomic_store_explicit(&f->go, true, memory_order_release);
	uint64_t t0 = 0, t1 = 0, done0 = 0, done1 = 0, c0 = 0, c1 = 0, longest = 0;
	uint64_t warm_end = start + warm_ms * 1000000ull;
	uint64_t end = warm_end + window_ms * 1000000ull;
	/* Warm-up, then the window; bounded by the clock. */
	while (r == 0) {
		uint64_t a = now_ns();
		if (!t0 && a >= warm_end) {
			t0 = a;
			done0 = f->done;
			c0 = clock_of(CLOCK_THREAD_CPUTIME_ID);
		}
		if (a >= end) {
			t1 = a;
			done1 = f->done;
			c1 = clock_of(CLOCK_THREAD_CPUTIME_ID);
			break;
		}
		int n = ura_loop_run_once(f->loop, true);
		if (n < 0)
			r = n;
		uint64_t it = now_ns() - a;
		if (t0 && it > longest)
			longest = it;
	}
	atomic_store_explicit(&f->stop, true, memory_order_relaxed);
	uint64_t accepted = 0, eagain = 0;
	for (unsigned i = 0; i < started; i++) {
		pthread_join(p[i].tid, NULL);
		accepted += p[i].accepted;
		eagain += p[i].eagain;
		if (p[i].error && r == 0)
			r = p[i].error;
	}
	/* Nothing accepted is dropped: every accepted task completes. */
	if (r == 0)
		r = run_until(f, accepted, now_ns() + FLOOD_DRAIN_MS * 1000000ull);
	if (r == 0 && (f->errors || f->done != accepted)) {
		fprintf(stderr, "overload-flood: %llu accepted, %llu completed, %llu with an error\n",
			(unsigned long long)accepted, (unsigned long long)f->done,
			(unsigned long long)f->errors);
		r = -EIO;
	}
	uint64_t flood_ns = now_ns() - start;
	/* The same number of tasks the window completed, unloaded (clamped: enough to time,
	 * never so many it takes long). */
	uint64_t n = done1 - done0;
	n = n < UNLOADED_MIN ? UNLOADED_MIN : n > UNLOADED_MAX ? UNLOADED_MAX : n;
	n -= n % UNLOADED_BATCH;
	uint64_t uw = 0, uc = 0;
	if (r == 0)
		r = unloaded(f, n, &uw, &uc);
	if (r == 0 && f->errors)
		r = -EIO;
	if (r == 0)
		printf("window_done=%llu window_ns=%llu window_cpu_ns=%llu unloaded_done=%llu "
		       "unloaded_ns=%llu unloaded_cpu_ns=%llu eagain=%llu flood_ns=%llu "
		       "longest_ns=%llu hwm_kb=%lld\n",
		       (unsigned long long)(done1 - done0), (unsigned long long)(t1 - t0),
		       (unsigned long long)(c1 - c0), (unsigned long long)n,
		       (unsigned long long)uw, (unsigned long long)uc, (unsigned long long)eagain,
		       (unsigned long long)flood_ns, (unsigned long long)longest,
		       status_kb(0, "VmHWM"));
	fflush(stdout);
out:
	if (f && p)
		ura_loop_free(f->loop);
	free(p);
	free(f);
	return r;
}

int overload_flood_serve(const char *arg)
{
	unsigned t, w, v;
	char end;
	if (sscanf(arg, "%u:%u:%u%c", &t, &w, &v, &end) != 3 || t < 1 || t > MAX_PRODUCERS ||
	    w < 1 || w > 60000 || v > 60000)
		return -EINVAL;
	return flood_child(t, w, v);
}

/* ----------------------------------------------------------- flood: parent side */

struct flood_result {
	double rate, unloaded_rate, cpu_per_task, unloaded_cpu_per_task;
	double loop_cpu_share; /* the loop thread's CPU time / wall time in the window */
	double hwm_mib, eagain_per_s, longest_ms;
};

static int flood_once(const char *self, unsigned nthreads, const struct bench_opts *opts,
		      struct flood_result *out)
{
	char arg[64];
	snprintf(arg, sizeof(arg), "%u:%u:%u", nthreads,
		 opts->quick ? FLOOD_WINDOW_MS_QUICK : FLOOD_WINDOW_MS,
		 opts->quick ? FLOOD_WARM_MS_QUICK : FLOOD_WARM_MS);
	char *argv[] = { (char *)self, "serve", "overload-flood", arg, NULL };
	struct bench_child ch;
	int r = bench_spawn(&ch, argv, -1, -1, false);
	if (r < 0)
		return r;
	char line[400];
	r = bench_child_line(&ch, line, sizeof(line), FLOOD_CHILD_MS);
	unsigned long long wd, wns, wcpu, ud, uns, ucpu, eagain, fns, longest;
	long long hwm;
	if (r == 0 && sscanf(line,
			     "window_done=%llu window_ns=%llu window_cpu_ns=%llu unloaded_done=%llu "
			     "unloaded_ns=%llu unloaded_cpu_ns=%llu eagain=%llu flood_ns=%llu "
			     "longest_ns=%llu hwm_kb=%lld",
			     &wd, &wns, &wcpu, &ud, &uns, &ucpu, &eagain, &fns, &longest, &hwm) != 10)
		r = -EPROTO;
	int status = bench_child_reap(&ch, FLOOD_CHILD_MS);
	if (r == 0 && status != 0)
		r = status < 0 ? status : -EIO;
	if (r == 0 && (!wd || !wns || !ud || !uns))
		r = -EIO;
	if (r < 0) {
		bench_warn("overload: flood with %u thread(s): %s", nthreads, strerror(-r));
		return r;
	}
	out->rate = (double)wd * 1e9 / (double)wns;
	out->unloaded_rate = (double)ud * 1e9 / (double)uns;
	out->cpu_per_task = (double)wcpu / (double)wd;
	out->unloaded_cpu_per_task = (double)ucpu / (double)ud;
	out->loop_cpu_share = (double)wcpu / (double)wns;
	out->hwm_mib = hwm < 0 ? NAN : (double)hwm / 1024.0;
	out->eagain_per_s = (double)eagain * 1e9 / (double)fns;
	out->longest_ms = (double)longest / 1e6;
	return 0;
}

/* One value row over rounds: the figure at offset fig of each result; with ratio_of,
 * the per-round ratio fig / the figure at offset base. */
static int flood_row(const char *param, const struct flood_result *res, int rounds,
		     const char *name, const char *unit, double scale, size_t fig,
		     const char *ratio_of, size_t base, const char *note, double *v)
{
	struct bench_value row = { .contender = name, .unit = unit };
	for (int r = 0; r < rounds; r++)
		v[r] = *(const double *)((const char *)&res[r] + fig) * scale;
	row.med = bench_median(v, (size_t)rounds);
	row.min = v[0];
	row.max = v[rounds - 1];
	if (ratio_of) {
		for (int r = 0; r < rounds; r++)
			v[r] = *(const double *)((const char *)&res[r] + fig) /
			       *(const double *)((const char *)&res[r] + base);
		row.ratio_of = ratio_of;
		row.ratio_med = bench_median(v, (size_t)rounds);
		row.ratio_min = v[0];
		row.ratio_max = v[rounds - 1];
	}
	return bench_record_value("overload", param, &row, note);
}

static int flood_suite(const char *self, const struct bench_opts *opts)
{
	enum { NT = sizeof(flood_threads) / sizeof(flood_threads[0]) };
	int rounds = opts->rounds;
	struct flood_result *res = calloc(NT * (size_t)rounds, sizeof(*res));
	double *v = calloc((size_t)rounds, sizeof(*v));
	int r = res && v ? 0 : -ENOMEM;
	/* Cases interleaved in every round (1 2 4, 1 2 4, ...), as other suites do. No
	 * warm-up round: each child warms up inside its own flood. */
	if (r == 0)
		bench_progress("overload flood: %d rounds x %d cases", rounds, (int)NT);
	for (int round = 0; round < rounds && r == 0; round++)
		for (size_t k = 0; k < NT && r == 0; k++)
			r = flood_once(self, flood_threads[k], opts, &res[k * (size_t)rounds + (size_t)round]);
	if (r == 0)
		bench_progress("overload flood: done");
	char note[320];
	snprintf(note, sizeof(note),
		 "child per run; %u ms window after %u ms of flood; unloaded: as many NOPs from "
		 "the loop thread, batches of %u; default max_queued; %ld CPUs; goals: peak RSS "
		 "<= 512 MiB, 4 threads flooded/unloaded >= 0.5",
		 opts->quick ? FLOOD_WINDOW_MS_QUICK : FLOOD_WINDOW_MS,
		 opts->quick ? FLOOD_WARM_MS_QUICK : FLOOD_WARM_MS, UNLOADED_BATCH,
		 sysconf(_SC_NPROCESSORS_ONLN));
	for (size_t k = 0; k < NT && r == 0; k++) {
		const struct flood_result *x = &res[k * (size_t)rounds];
		char param[48];
		snprintf(param, sizeof(param), "flood, %u thread%s", flood_threads[k],
			 flood_threads[k] > 1 ? "s" : "");
#define OFF(field) offsetof(struct flood_result, field)
		r = flood_row(param, x, rounds, "completed, flooded", "ktasks/s", 1e-3, OFF(rate),
			      "flooded/unloaded", OFF(unloaded_rate), NULL, v);
		if (r == 0)
			r = flood_row(param, x, rounds, "completed, unloaded", "ktasks/s", 1e-3,
				      OFF(unloaded_rate), NULL, 0, NULL, v);
		if (r == 0)
			r = flood_row(param, x, rounds, "loop cpu/task, flooded", "ns", 1,
				      OFF(cpu_per_task), "flooded/unloaded",
				      OFF(unloaded_cpu_per_task), NULL, v);
		/* Rate = share / CPU per task: says whether a low rate is the runtime's cost
		 * or the scheduler giving the loop thread less of a CPU. */
		if (r == 0)
			r = flood_row(param, x, rounds, "loop thread CPU share", "%", 100,
				      OFF(loop_cpu_share), NULL, 0, NULL, v);
		if (r == 0)
			r = flood_row(param, x, rounds, "peak RSS (VmHWM)", "MiB", 1, OFF(hwm_mib),
				      NULL, 0, NULL, v);
		if (r == 0)
			r = flood_row(param, x, rounds, "-EAGAIN answers", "k/s", 1e-3,
				      OFF(eagain_per_s), NULL, 0, NULL, v);
		if (r == 0)
			r = flood_row(param, x, rounds, "longest iteration", "ms", 1,
				      OFF(longest_ms), NULL, 0, k + 1 == NT ? note : NULL, v);
#undef OFF
	}
	free(res);
	free(v);
	return r;
}

/* -------------------------------------------------------------- pending flushes */

/* One contender: a loop whose session has one suspended task and n flushes behind it. */
struct pending {
	ura_loop *loop;
	ura_session *s;
	bool own;        /* a session of its own, else the shared one */
	unsigned n;      /* flushes pending */
	ura_task held;   /* the suspended task they wait for */
	uint64_t fired;  /* flush callbacks run */
	bool marker;     /* the post queued behind the flushes ran */
	uint64_t ops, done, errors;
};

static void on_flush(ura_session *s, void *arg)
{
	struct pending *p = arg;
	p->fired++;
}

static void on_marker(void *arg)
{
	struct pending *p = arg;
	p->marker = true;
}

static void pending_nop_done(ura_session *s, ura_task t, int32_t res, uint32_t cqe_flags,
			     void *arg)
{
	struct pending *p = arg;
	p->done++;
	if (res != 0)
		p->errors++;
}

static void pending_free(struct pending *p)
{
	if (p->own)
		ura_session_unref(p->s);
	ura_loop_free(p->loop); /* cancels what is left; nothing of ours runs after */
	p->loop = NULL;
	p->s = NULL;
}

static int pending_setup(struct pending *p, bool own, unsigned n, uint64_t ops)
{
	memset(p, 0, sizeof(*p));
	p->own = own;
	p->n = n;
	p->ops = ops;
	int r = ura_loop_new(NULL, &p->loop);
	if (r < 0)
		return r;
	if (own)
		r = ura_session_new(p->loop, NULL, NULL, &p->s);
	else
		p->s = ura_session_shared(p->loop);
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_nop(&sqe);
	if (r == 0)
		r = ura_submit(p->s, &sqe, URA_SUBMIT_SUSPENDED, NULL, NULL, &p->held);
	for (unsigned i = 0; i < n && r == 0; i++)
		r = ura_session_flush(p->s, on_flush, p);
	/* The inbox is first in, first out: when the post runs, the loop has taken every
	 * flush before it. */
	if (r == 0)
		r = ura_loop_post(p->loop, on_marker, p);
	uint64_t deadline = now_ns() + FLUSH_SETTLE_MS * 1000000ull;
	while (r == 0 && !p->marker) {
		int k = ura_loop_run_once(p->loop, false);
		if (k < 0)
			r = k;
		else if (now_ns() > deadline)
			r = -ETIMEDOUT;
	}
	if (r == 0 && p->fired) {
		bench_warn("overload: a flush fired while its task was still suspended");
		r = -EIO;
	}
	if (r < 0)
		pending_free(p);
	return r;
}

/* Ends the suspended task; every flush must then fire. */
static int pending_teardown(struct pending *p)
{
	int r = ura_task_cancel(p->s, p->held);
	uint64_t deadline = now_ns() + FLUSH_SETTLE_MS * 1000000ull;
	while (r == 0 && p->fired < p->n) {
		int k = ura_loop_run_once(p->loop, true);
		if (k < 0)
			r = k;
		else if (now_ns() > deadline)
			r = -ETIMEDOUT;
	}
	if (r == 0 && p->fired != p->n) {
		bench_warn("overload: %llu of %u flushes fired",
			   (unsigned long long)p->fired, p->n);
		r = -EIO;
	}
	pending_free(p);
	return r;
}

static int pending_run(void *ctx, struct bench_time *t)
{
	struct pending *p = ctx;
	struct bench_clock clk;
	p->done = 0;
	bench_clock_start(&clk);
	for (uint64_t sent = 0; sent < p->ops; sent += FLUSH_BATCH) {
		for (unsigned i = 0; i < FLUSH_BATCH; i++) {
			int r = ura_nop(p->s, pending_nop_done, p, NULL);
			if (r < 0)
				return r;
		}
		while (p->done < sent + FLUSH_BATCH) {
			int r = ura_loop_run_once(p->loop, true);
			if (r < 0)
				return r;
		}
	}
	bench_clock_stop(&clk, t);
	if (p->errors || p->fired) {
		bench_warn("overload: %llu NOPs with an error, %llu flushes fired early",
			   (unsigned long long)p->errors, (unsigned long long)p->fired);
		return -EIO;
	}
	return 0;
}

static int flush_suite(const struct bench_opts *opts)
{
	uint64_t ops = opts->quick ? FLUSH_OPS_QUICK : FLUSH_OPS;
	ops -= ops % FLUSH_BATCH;
	struct bench_time *t = calloc(2 * (size_t)opts->rounds, sizeof(*t));
	if (!t)
		return -ENOMEM;
	int r = 0;
	for (int own = 1; own >= 0 && r == 0; own--) {
		for (size_t k = 0; k < sizeof(flush_counts) / sizeof(flush_counts[0]) && r == 0; k++) {
			unsigned n = flush_counts[k];
			struct pending with, none;
			r = pending_setup(&with, own, n, ops);
			if (r < 0)
				break;
			r = pending_setup(&none, own, 0, ops);
			if (r < 0) {
				pending_teardown(&with);
				break;
			}
			char name[32], param[48], label[64], note[160];
			snprintf(name, sizeof(name), "%u pending", n);
			snprintf(param, sizeof(param), "%s, N=%u", own ? "own" : "shared", n);
			snprintf(label, sizeof(label), "overload %s", param);
			snprintf(note, sizeof(note),
				 "%s session: N flushes pending behind one suspended task, NOPs on "
				 "it in batches of %u; goal: 20000 pending <= 1.5x none",
				 own ? "own" : "shared", FLUSH_BATCH);
			struct bench_contender c[] = {
				{ name, pending_run, &with, ops },
				{ "none", pending_run, &none, ops },
			};
			memset(t, 0, 2 * (size_t)opts->rounds * sizeof(*t));
			r = bench_rounds(c, 2, opts->rounds, label, t);
			if (r == 0)
				r = bench_record("overload", param, c, 2, opts->rounds, t, note);
			int e1 = pending_teardown(&with), e2 = pending_teardown(&none);
			if (r == 0)
				r = e1 < 0 ? e1 : e2;
		}
	}
	free(t);
	return r;
}

/* ------------------------------------------------------- never-reading client */

static void put_le(unsigned char *p, uint64_t v, unsigned bytes)
{
	for (unsigned i = 0; i < bytes; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

/* Writes NR_FRAMES requests expecting replies, ids from *id on (docs/PROTOCOL.md). */
static void fill_frames(unsigned char *buf, uint64_t *id)
{
	const size_t frame = NR_HEADER + NR_PAYLOAD;
	for (unsigned i = 0; i < NR_FRAMES; i++) {
		unsigned char *h = buf + i * frame;
		memcpy(h, "URA1", 4);
		h[4] = 1;    /* version */
		h[5] = 0x01; /* EXPECTS_REPLY */
		h[6] = h[7] = 0;
		put_le(h + 8, (*id)++, 8);
		put_le(h + 16, NR_PAYLOAD, 4);
	}
}

struct nr_result {
	long long start_kb, peak_kb, end_kb, after_kb;
	uint64_t sent, ms;
	bool capped, peer_closed;
};

/* The client: sends for run_ms (or until the cap), never reads. 0 or -errno. */
static int nr_client(const char *name, pid_t server, unsigned run_ms, struct nr_result *out)
{
	const size_t len = NR_FRAMES * (NR_HEADER + NR_PAYLOAD);
	unsigned char *buf = calloc(1, len);
	if (!buf)
		return -ENOMEM;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int r = fd < 0 ? -errno : 0;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t nlen = strlen(name);
	if (r == 0 && nlen + 1 > sizeof(sa.sun_path))
		r = -ENAMETOOLONG;
	/* Small: the server's replies back up into its own memory, not into this socket. */
	int rcv = NR_RCVBUF;
	if (r == 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv)) < 0)
		r = -errno;
	if (r == 0) {
		memcpy(sa.sun_path + 1, name, nlen); /* abstract: a leading NUL */
		socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + nlen);
		if (connect(fd, (struct sockaddr *)&sa, alen) < 0)
			r = -errno;
	}
	if (r == 0 && fcntl(fd, F_SETFL, O_NONBLOCK) < 0)
		r = -errno;
	if (r < 0)
		goto out;
	out->start_kb = status_kb(server, "VmRSS");
	uint64_t id = 1, off = len, t0 = now_ns(), next_sample = t0;
	uint64_t deadline = t0 + run_ms * 1000000ull;
	for (uint64_t now = t0; now < deadline; now = now_ns()) {
		if (now >= next_sample) {
			next_sample = now + NR_SAMPLE_MS * 1000000ull;
			long long kb = status_kb(server, "VmRSS");
			if (kb > NR_CAP_KB) {
				out->capped = true;
				break;
			}
		}
		if (off == len) {
			fill_frames(buf, &id);
			off = 0;
		}
		ssize_t n = send(fd, buf + off, len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			off += (size_t)n;
			out->sent += (uint64_t)n;
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			out->peer_closed = true; /* the server dropped us: nothing more to offer */
			break;
		}
		/* Full: wait for room, never past the deadline or the next sample. */
		uint64_t until = deadline < next_sample ? deadline : next_sample;
		struct pollfd pf = { .fd = fd, .events = POLLOUT };
		int ms = (int)((until - now) / 1000000ull) + 1;
		(void)poll(&pf, 1, ms);
	}
	out->ms = (now_ns() - t0) / 1000000ull;
	/* Still connected: the peak is read before the server can free anything. */
	out->peak_kb = status_kb(server, "VmHWM");
	out->end_kb = status_kb(server, "VmRSS");
	close(fd);
	fd = -1;
	sleep_ms(NR_AFTER_MS);
	out->after_kb = status_kb(server, "VmRSS");
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	return r;
}

static int never_reading_suite(const char *self, const struct bench_opts *opts)
{
	struct bench_cpus cpus;
	struct bench_child server;
	struct nr_result res = { 0 };
	char name[64], addr[80], line[200];
	unsigned run_ms = opts->quick ? NR_RUN_MS_QUICK : NR_RUN_MS;
	bench_pick_cpus(&cpus);
	snprintf(name, sizeof(name), "ura-bench-overload-%d", (int)getpid());
	snprintf(addr, sizeof(addr), "unix:@%s", name);
	char *argv[] = { (char *)self, "serve", "rpc", addr, NULL };
	int r = bench_spawn(&server, argv, cpus.server, -1, false);
	if (r < 0) {
		bench_warn("overload: the rpc server did not start: %s", strerror(-r));
		return r;
	}
	r = bench_child_line(&server, line, sizeof(line), SERVER_READY_MS);
	if (r == 0 && strncmp(line, "ready ", 6) != 0)
		r = -EPROTO;
	if (r == 0) {
		bench_progress("overload never-reading client: %u ms", run_ms);
		(void)bench_pin(cpus.load);
		r = nr_client(name, server.pid, run_ms, &res);
		(void)bench_pin(-1);
	}
	if (r == 0 && !bench_child_alive(&server))
		r = -EIO; /* the server died (out of memory?) */
	bench_child_reap(&server, 0);
	if (r < 0) {
		bench_warn("overload: never-reading client: %s", strerror(-r));
		return r;
	}
	bench_progress("overload never-reading client: done");
	char note[320];
	snprintf(note, sizeof(note),
		 "bench rpc server (unix); %llu ms of %u-byte requests expecting replies, "
		 "never read, client SO_RCVBUF %d%s%s; goal: peak <= 256 MiB",
		 (unsigned long long)res.ms, NR_PAYLOAD, NR_RCVBUF,
		 res.capped ? "; stopped at the 1 GiB safety cap" : "",
		 res.peer_closed ? "; the server closed the connection" : "");
	const char *param = "never-reading client";
	double secs = (double)(res.ms + !res.ms) / 1e3;
	const struct {
		const char *name, *unit;
		double mib;
	} rows[] = {
		{ "server RSS at start", "MiB", (double)res.start_kb / 1024.0 },
		{ "server peak RSS", "MiB", (double)res.peak_kb / 1024.0 },
		{ "server RSS at the end", "MiB", (double)res.end_kb / 1024.0 },
		{ "server RSS 0.5 s after", "MiB", (double)res.after_kb / 1024.0 },
		{ "client sent", "MiB", (double)res.sent / 1048576.0 },
		/* Near 0 once the server stops reading a peer that does not read. */
		{ "server growth", "MiB/s", (double)(res.peak_kb - res.start_kb) / 1024.0 / secs },
	};
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]) && r == 0; i++) {
		struct bench_value row = {
			.contender = rows[i].name, .unit = rows[i].unit, .med = rows[i].mib, .min = NAN,
			.max = NAN,
		};
		r = bench_record_value("overload", param, &row,
				       i + 1 == sizeof(rows) / sizeof(rows[0]) ? note : NULL);
	}
	return r;
}

/* -------------------------------------------------------------------- the suite */

int bench_overload(const struct bench_opts *opts)
{
	char self[PATH_MAX];
	int r = bench_exe_path(self, sizeof(self), NULL);
	if (r < 0)
		return r;
	/* Each part runs even when another failed: its figures still stand. */
	int err = flood_suite(self, opts);
	r = flush_suite(opts);
	if (!err)
		err = r;
	r = never_reading_suite(self, opts);
	if (!err)
		err = r;
	bench_print_table("overload");
	return err;
}
