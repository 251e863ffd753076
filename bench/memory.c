/*
 * memory suite: bytes per in-flight task.
 *
 * Each probe (memory_probe.c) is a fresh process that puts N one-hour timers in flight
 * and reports the change of its resident set size (/proc/self/statm) over that; bytes
 * per task is that change / N. Rounds interleave the probes (ura, ura-backlog, raw,
 * libuv, ura, ...); reported are the medians over rounds and the per-round ratios ura /
 * libuv timer. libuv's request structs are printed for comparison (sizeof, from the
 * headers this was built with): a libuv program allocates one per operation in flight.
 *
 * The resident set holds user-space memory only. What the kernel keeps per in-flight
 * io_uring request (its request and timer data, in slab caches) is not in it; the
 * "kernel slab" rows give the machine-wide slab change over the same span, an
 * approximation. Goal, reported and never asserted: ura <= 64 B per task (one registry
 * slot).
 */
#include <errno.h>
#include <stdbool.h>
#include <time.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "proc.h"
#include "serve.h"

#ifdef BENCH_HAVE_LIBUV
#include <uv.h>
#endif

#define TASKS 1000000ul
#define TASKS_QUICK 250000ul /* the registry grows in 4096-slot chunks: still 61 of them */
#define PROBE_TIMEOUT_MS 120000
/* A probe that exits leaves its ring to a kernel worker, which frees the requests some
 * hundreds of milliseconds later. The next probe starts once the machine's slab memory
 * is back within SLAB_SLACK of where it was before the previous one (at most
 * SLAB_WAIT_MS), so that freeing does not land in its window. */
#define SLAB_SLACK (16ll << 20)
#define SLAB_WAIT_MS 10000
#define SLAB_STEP_MS 20

struct probe_kind {
	const char *name, *how;
};

static const struct probe_kind kinds[] = {
	{ "ura", "ura" },
	{ "ura-backlog", "ura-backlog" },
	{ "raw-liburing", "raw" },
#ifdef BENCH_HAVE_LIBUV
	{ "libuv uv_timer_t", "uv" },
#endif
};
enum { NK = sizeof(kinds) / sizeof(kinds[0]) };

struct probe_result {
	double rss_per_task, slab_per_task, ns_per_task;
};

/* Waits for the slab memory to come back to level (see SLAB_SLACK); false on timeout. */
static bool slab_back_to(long long level)
{
	for (int waited = 0; waited < SLAB_WAIT_MS; waited += SLAB_STEP_MS) {
		long long now = memory_slab_bytes();
		if (now < 0 || level < 0 || now <= level + SLAB_SLACK)
			return true;
		struct timespec ts = { .tv_nsec = SLAB_STEP_MS * 1000000l };
		nanosleep(&ts, NULL);
	}
	return false;
}

static int run_probe(const char *self, const struct probe_kind *k, unsigned long n,
		     long long slab_level, struct probe_result *out)
{
	if (!slab_back_to(slab_level))
		bench_warn("memory: the kernel's slab memory has not come back to its level "
			   "within %d ms: the next kernel figure may be off", SLAB_WAIT_MS);
	char how[32], num[32];
	snprintf(how, sizeof(how), "memory-%s", k->how);
	snprintf(num, sizeof(num), "%lu", n);
	char *argv[] = { (char *)self, "serve", how, num, NULL };
	struct bench_child ch;
	int r = bench_spawn(&ch, argv, -1, -1, false);
	if (r < 0)
		return r;
	char line[200];
	r = bench_child_line(&ch, line, sizeof(line), PROBE_TIMEOUT_MS);
	unsigned long got;
	long long rss, slab;
	unsigned long long ns;
	if (r == 0 && sscanf(line, "n=%lu rss_delta=%lld slab_delta=%lld ns=%llu", &got, &rss,
			     &slab, &ns) != 4)
		r = -EPROTO;
	int status = bench_child_reap(&ch, PROBE_TIMEOUT_MS);
	if (r == 0 && status != 0)
		r = status < 0 ? status : -EIO;
	if (r < 0) {
		bench_warn("memory: probe %s: %s", k->name, strerror(-r));
		return r;
	}
	out->rss_per_task = (double)rss / (double)n;
	out->slab_per_task = (double)slab / (double)n;
	out->ns_per_task = (double)ns / (double)n;
	return 0;
}

/* Median, min and max of v (sorted in place) into a value row. */
static void summarise(double *v, int rounds, struct bench_value *out)
{
	out->med = bench_median(v, (size_t)rounds);
	out->min = v[0];
	out->max = v[rounds - 1];
}

/* Per-round ratios ura / other of res[k][r].rss_per_task into a value row. */
static void ratio_rows(const struct probe_result *res, size_t ura, size_t other, int rounds,
		       double *v, struct bench_value *out)
{
	for (int r = 0; r < rounds; r++)
		v[r] = res[ura * (size_t)rounds + (size_t)r].rss_per_task /
		       res[other * (size_t)rounds + (size_t)r].rss_per_task;
	out->ratio_med = bench_median(v, (size_t)rounds);
	out->ratio_min = v[0];
	out->ratio_max = v[rounds - 1];
}

static int record(const struct probe_result *res, int rounds, unsigned long n, double *v)
{
	char param[48], note[320], ratio_of[NK][48];
	size_t uv = NK; /* the libuv probe's index, NK when there is none */
	for (size_t k = 0; k < NK; k++)
		if (strcmp(kinds[k].how, "uv") == 0)
			uv = k;
	snprintf(param, sizeof(param), "%lu timers, RSS", n);
	snprintf(note, sizeof(note),
		 "resident set change / timers in flight; user space only: the kernel's "
		 "per-request memory is not in RSS (see the slab rows); goal: ura <= 64 B");
	int err = 0;
	for (size_t k = 0; k < NK && err == 0; k++) {
		struct bench_value row = { .contender = kinds[k].name, .unit = "B/task" };
		for (int r = 0; r < rounds; r++)
			v[r] = res[k * (size_t)rounds + (size_t)r].rss_per_task;
		summarise(v, rounds, &row);
		if (uv < NK && k != uv && strncmp(kinds[k].how, "ura", 3) == 0) {
			snprintf(ratio_of[k], sizeof(ratio_of[k]), "%s/%s", kinds[k].name,
				 kinds[uv].name);
			row.ratio_of = ratio_of[k];
			ratio_rows(res, k, uv, rounds, v, &row);
		}
		err = bench_record_value("memory", param, &row, note);
	}
	snprintf(param, sizeof(param), "%lu timers, kernel", n);
	snprintf(note, sizeof(note),
		 "machine-wide slab change (/proc/meminfo Slab) / timers: approximate, "
		 "not in RSS");
	for (size_t k = 0; k < NK && err == 0; k++) {
		struct bench_value row = { .contender = kinds[k].name, .unit = "B/task" };
		for (int r = 0; r < rounds; r++)
			v[r] = res[k * (size_t)rounds + (size_t)r].slab_per_task;
		summarise(v, rounds, &row);
		err = bench_record_value("memory", param, &row, note);
	}
#ifdef BENCH_HAVE_LIBUV
	/* What a libuv program allocates per request in flight, against ura's per task. */
	for (int r = 0; r < rounds; r++)
		v[r] = res[(size_t)r].rss_per_task; /* kinds[0] is ura */
	double ura_med = bench_median(v, (size_t)rounds);
	static const struct {
		const char *name;
		size_t size;
	} structs[] = {
		{ "uv_timer_t", sizeof(uv_timer_t) },
		{ "uv_write_t", sizeof(uv_write_t) },
		{ "uv_fs_t", sizeof(uv_fs_t) },
	};
	snprintf(note, sizeof(note), "libuv %d.%d.%d headers; ratio: ura's median B/task / size",
		 UV_VERSION_MAJOR, UV_VERSION_MINOR, UV_VERSION_PATCH);
	for (size_t i = 0; i < sizeof(structs) / sizeof(structs[0]) && err == 0; i++) {
		double sz = (double)structs[i].size;
		char of[48];
		snprintf(of, sizeof(of), "ura/%s", structs[i].name);
		struct bench_value row = {
			.contender = structs[i].name, .unit = "B (sizeof)", .med = sz, .min = NAN,
			.max = NAN, .ratio_of = of, .ratio_med = ura_med / sz,
			.ratio_min = NAN, .ratio_max = NAN,
		};
		err = bench_record_value("memory", "libuv request structs", &row, note);
	}
#endif
	return err;
}

int bench_memory(const struct bench_opts *opts)
{
	char self[PATH_MAX];
	int rounds = opts->rounds;
	unsigned long n = opts->quick ? TASKS_QUICK : TASKS;
	int r = bench_exe_path(self, sizeof(self), NULL);
	if (r < 0)
		return r;
	struct probe_result *res = calloc(NK * (size_t)rounds, sizeof(*res));
	double *v = calloc((size_t)rounds, sizeof(*v));
	if (!res || !v) {
		r = -ENOMEM;
		goto out;
	}
#ifndef BENCH_HAVE_LIBUV
	bench_warn("memory: libuv not found at build time: no libuv timers");
#endif
	/* No warm-up round: each probe is a fresh process measuring a difference. */
	bench_progress("memory: %lu timers: %d rounds x %d probes", n, rounds, (int)NK);
	long long slab_level = memory_slab_bytes();
	for (int round = 0; round < rounds && r == 0; round++)
		for (size_t k = 0; k < NK && r == 0; k++)
			r = run_probe(self, &kinds[k], n, slab_level,
				      &res[k * (size_t)rounds + (size_t)round]);
	bench_progress("memory: done");
	if (r == 0)
		r = record(res, rounds, n, v);
	if (r == 0)
		bench_print_table("memory");
out:
	free(res);
	free(v);
	return r;
}
