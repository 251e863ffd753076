/* Round runner, result rows, table and JSON output for ura-bench. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

struct row {
	char suite[16];
	char param[48];
	char contender[32];
	char ratio_of[48]; /* what the ratio divides: "ura/raw-liburing" */
	char note[320];
	double ns_per_op;  /* median wall time over rounds */
	double cpu_ns_per_op;
	double ratio_med, ratio_min, ratio_max; /* wall time */
	double cpu_ratio_med;
	int rounds;
	uint64_t ops;
};

static struct row *rows;
static size_t nrows, rows_cap;

static uint64_t clock_ns(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void bench_clock_start(struct bench_clock *c)
{
	c->cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID);
	c->wall = clock_ns(CLOCK_MONOTONIC);
}

void bench_clock_stop(const struct bench_clock *c, struct bench_time *acc)
{
	/* Reverse order of start: each clock's reading brackets the other's. */
	acc->wall_ns += clock_ns(CLOCK_MONOTONIC) - c->wall;
	acc->cpu_ns += clock_ns(CLOCK_THREAD_CPUTIME_ID) - c->cpu;
}

static void vprint(const char *prefix, const char *fmt, va_list ap)
{
	fputs(prefix, stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	fflush(stderr);
}

void bench_progress(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprint("ura-bench: ", fmt, ap);
	va_end(ap);
}

void bench_warn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprint("ura-bench: warning: ", fmt, ap);
	va_end(ap);
}

/*
 * Watchdog. A run that never finishes (a lost completion, a final event that never
 * fires) would otherwise block in io_uring_enter forever; a benchmark that hangs
 * silently reports nothing, so the alarm names the run and exits.
 */
#define RUN_TIMEOUT_S 300u

static char watch_msg[160];
static size_t watch_len;

static void on_alarm(int sig)
{
	(void)sig;
	/* Only async-signal-safe calls here. */
	ssize_t n = write(STDERR_FILENO, watch_msg, watch_len);
	(void)n;
	_exit(3);
}

static void watch(const char *label, const char *name)
{
	int n = snprintf(watch_msg, sizeof(watch_msg),
			 "\nura-bench: %s: %s did not finish within %u s (hang?); exiting\n",
			 label, name, RUN_TIMEOUT_S);
	watch_len = n < 0 ? 0 : (size_t)n < sizeof(watch_msg) ? (size_t)n : sizeof(watch_msg) - 1;
	signal(SIGALRM, on_alarm);
	alarm(RUN_TIMEOUT_S);
}

int bench_rounds(const struct bench_contender *c, size_t nc, int rounds, const char *label,
		 struct bench_time *t)
{
	/* On a terminal the round counter rewrites one line; in a log, one line per round
	 * would be noise, so only the start and the end are written. */
	bool tty = isatty(STDERR_FILENO);
	uint64_t start = clock_ns(CLOCK_MONOTONIC);
	if (!tty)
		bench_progress("%s: %d rounds x %zu contenders", label, rounds, nc);
	/* Round -1 is the warm-up: page faults, ring and allocator first use, caches. */
	for (int r = -1; r < rounds; r++) {
		if (tty) {
			fprintf(stderr, "\rura-bench: %s: %s %d/%d\033[K", label,
				r < 0 ? "warm-up" : "round", r < 0 ? 0 : r + 1, rounds);
			fflush(stderr);
		}
		for (size_t i = 0; i < nc; i++) {
			struct bench_time run = { 0 };
			watch(label, c[i].name);
			int err = c[i].run(c[i].ctx, &run);
			alarm(0);
			if (err < 0) {
				if (tty)
					fputc('\n', stderr);
				bench_warn("%s: %s failed: %s", label, c[i].name, strerror(-err));
				return err;
			}
			/* Ratios divide by these: never 0. */
			run.wall_ns += !run.wall_ns;
			run.cpu_ns += !run.cpu_ns;
			if (r >= 0)
				t[i * (size_t)rounds + (size_t)r] = run;
		}
	}
	double secs = (double)(clock_ns(CLOCK_MONOTONIC) - start) / 1e9;
	if (tty)
		fprintf(stderr, "\rura-bench: %s: done in %.1f s\033[K\n", label, secs);
	else
		bench_progress("%s: done in %.1f s", label, secs);
	return 0;
}

int bench_ring_init(struct io_uring *ring, unsigned sq_entries, unsigned cq_entries,
		    unsigned *flags)
{
	static const unsigned tries[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
		0,
	};
	int r = -EINVAL;
	for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		/* CLAMP, as ura does: sizes above the kernel's maximum (32768 SQ, 65536 CQ
		 * entries) are reduced to it rather than refused. */
		p.flags = tries[i] | IORING_SETUP_CLAMP;
		if (cq_entries) {
			p.flags |= IORING_SETUP_CQSIZE;
			p.cq_entries = cq_entries;
		}
		r = io_uring_queue_init_params(sq_entries, ring, &p);
		if (r == 0) {
			*flags = tries[i];
			return 0;
		}
		if (r != -EINVAL)
			break; /* not a missing feature: falling back would not help */
	}
	return r;
}

void bench_ring_note(char *buf, size_t len, ura_loop *loop, const struct io_uring *raw,
		     unsigned raw_flags)
{
	uint32_t f = ura_loop_features(loop);
	/* The sizes the kernel granted, read from the rings (after CLAMP). */
	const struct io_uring *ur = ura_loop_ring(loop);
	snprintf(buf, len, "ura ring %u/%u%s%s%s%s; raw ring %u/%u%s", ur->sq.ring_entries,
		 ur->cq.ring_entries,
		 f & URA_FEATURE_SINGLE_ISSUER ? " SINGLE_ISSUER" : "",
		 f & URA_FEATURE_DEFER_TASKRUN ? " DEFER_TASKRUN" : "",
		 f & URA_FEATURE_COOP_TASKRUN ? " COOP_TASKRUN" : "",
		 f & URA_FEATURE_SUBMIT_ALL ? " SUBMIT_ALL" : "",
		 raw->sq.ring_entries, raw->cq.ring_entries,
		 raw_flags ? " SINGLE_ISSUER DEFER_TASKRUN" : " (no flags)");
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Median of v[0..n) (n > 0); sorts v in place. */
static double median(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Median per op of the wall (cpu false) or CPU times in row; 0 without memory. */
static double median_per_op(const struct bench_time *row, int rounds, uint64_t ops, bool cpu)
{
	double *v = malloc((size_t)rounds * sizeof(*v));
	if (!v)
		return 0;
	for (int r = 0; r < rounds; r++)
		v[r] = (double)(cpu ? row[r].cpu_ns : row[r].wall_ns) / (double)ops;
	double m = median(v, (size_t)rounds);
	free(v);
	return m;
}

double bench_median_per_op(const struct bench_time *row, int rounds, uint64_t ops)
{
	return median_per_op(row, rounds, ops, false);
}

/* Per-round ratios ura / other per op, wall or CPU, into v (rounds values). */
static void ratios(double *v, const struct bench_contender *c, const struct bench_time *t,
		   int rounds, size_t other, bool cpu)
{
	const struct bench_time *a = t, *b = t + other * (size_t)rounds;
	for (int r = 0; r < rounds; r++) {
		double x = (double)(cpu ? a[r].cpu_ns : a[r].wall_ns) / (double)c[0].ops;
		double y = (double)(cpu ? b[r].cpu_ns : b[r].wall_ns) / (double)c[other].ops;
		v[r] = x / y;
	}
}

static struct row *row_add(void)
{
	if (nrows == rows_cap) {
		size_t cap = rows_cap ? rows_cap * 2 : 32;
		struct row *grown = realloc(rows, cap * sizeof(*rows));
		if (!grown)
			return NULL;
		rows = grown;
		rows_cap = cap;
	}
	struct row *w = &rows[nrows++];
	memset(w, 0, sizeof(*w));
	return w;
}

int bench_record(const char *suite, const char *param, const struct bench_contender *c,
		 size_t nc, int rounds, const struct bench_time *t, const char *note)
{
	double *v = malloc((size_t)rounds * sizeof(*v));
	double *med = malloc(nc * sizeof(*med));
	if (!v || !med) {
		free(v);
		free(med);
		return -ENOMEM;
	}
	for (size_t i = 0; i < nc; i++)
		med[i] = bench_median_per_op(t + i * (size_t)rounds, rounds, c[i].ops);
	/* The ura row is compared with the fastest other contender by median time. */
	size_t best = 1;
	for (size_t i = 2; i < nc; i++)
		if (med[i] < med[best])
			best = i;
	int err = 0;
	for (size_t i = 0; i < nc; i++) {
		size_t other = i == 0 ? best : i;
		struct row *w = row_add();
		if (!w) {
			err = -ENOMEM;
			break;
		}
		snprintf(w->suite, sizeof(w->suite), "%s", suite);
		snprintf(w->param, sizeof(w->param), "%s", param);
		snprintf(w->contender, sizeof(w->contender), "%s", c[i].name);
		snprintf(w->ratio_of, sizeof(w->ratio_of), "ura/%s%s", c[other].name,
			 i == 0 && nc > 2 ? " (best)" : "");
		snprintf(w->note, sizeof(w->note), "%s", note ? note : "");
		w->ns_per_op = med[i];
		w->cpu_ns_per_op = median_per_op(t + i * (size_t)rounds, rounds, c[i].ops, true);
		w->rounds = rounds;
		w->ops = c[i].ops;
		if (nc < 2)
			continue;
		/* Per-round ratio first, then the median: never a ratio of medians. */
		ratios(v, c, t, rounds, other, true);
		w->cpu_ratio_med = median(v, (size_t)rounds);
		ratios(v, c, t, rounds, other, false);
		w->ratio_med = median(v, (size_t)rounds); /* sorts v: min and max follow */
		w->ratio_min = v[0];
		w->ratio_max = v[rounds - 1];
	}
	free(v);
	free(med);
	return err;
}

void bench_print_table(const char *suite)
{
	printf("\n%-7s %-16s %-13s %11s %10s %13s %9s  %s\n", "suite", "parameter",
	       "contender", "ns/op (med)", "ratio(med)", "min..max", "cpu ratio", "ratio is");
	for (size_t i = 0; i < nrows; i++) {
		const struct row *w = &rows[i];
		if (strcmp(w->suite, suite) != 0)
			continue;
		printf("%-7s %-16s %-13s %11.1f %10.3f %6.3f..%-6.3f %9.3f  %s\n", w->suite,
		       w->param, w->contender, w->ns_per_op, w->ratio_med, w->ratio_min,
		       w->ratio_max, w->cpu_ratio_med, w->ratio_of);
		/* A measurement's note once, under its last row. */
		bool last = i + 1 == nrows || strcmp(rows[i + 1].param, w->param) != 0 ||
			    strcmp(rows[i + 1].suite, w->suite) != 0;
		if (last && w->note[0])
			printf("        (%s)\n", w->note);
	}
	fflush(stdout);
}

/* Writes s as a JSON string (our strings are plain, but quote what JSON requires). */
static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', f);
		if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			fputc(*s, f);
	}
	fputc('"', f);
}

/* JSON has no NaN or infinity. */
static void json_num(FILE *f, double x)
{
	if (isfinite(x))
		fprintf(f, "%.6g", x);
	else
		fputs("null", f);
}

static int write_json(const struct bench_opts *opts)
{
	FILE *f = fopen(opts->json_path, "w");
	if (!f)
		return -errno;
	struct utsname u;
	if (uname(&u) < 0)
		snprintf(u.release, sizeof(u.release), "unknown");
	fprintf(f, "{\n  \"tool\": \"ura-bench\",\n  \"kernel\": ");
	json_str(f, u.release);
	fprintf(f, ",\n  \"quick\": %s,\n  \"rounds\": %d,\n", opts->quick ? "true" : "false",
		opts->rounds);
	fprintf(f, "  \"method\": \"interleaved rounds; medians of per-round ratios\",\n");
	fprintf(f, "  \"results\": [");
	for (size_t i = 0; i < nrows; i++) {
		const struct row *w = &rows[i];
		fprintf(f, "%s\n    {\"suite\": ", i ? "," : "");
		json_str(f, w->suite);
		fprintf(f, ", \"param\": ");
		json_str(f, w->param);
		fprintf(f, ", \"contender\": ");
		json_str(f, w->contender);
		fprintf(f, ", \"ns_per_op_median\": ");
		json_num(f, w->ns_per_op);
		fprintf(f, ", \"ratio\": ");
		json_str(f, w->ratio_of);
		fprintf(f, ", \"ratio_median\": ");
		json_num(f, w->ratio_med);
		fprintf(f, ", \"ratio_min\": ");
		json_num(f, w->ratio_min);
		fprintf(f, ", \"ratio_max\": ");
		json_num(f, w->ratio_max);
		fprintf(f, ", \"cpu_ns_per_op_median\": ");
		json_num(f, w->cpu_ns_per_op);
		fprintf(f, ", \"cpu_ratio_median\": ");
		json_num(f, w->cpu_ratio_med);
		fprintf(f, ", \"rounds\": %d, \"ops_per_round\": %llu, \"note\": ", w->rounds,
			(unsigned long long)w->ops);
		json_str(f, w->note);
		fputc('}', f);
	}
	fprintf(f, "\n  ]\n}\n");
	int err = ferror(f) ? -EIO : 0;
	if (fclose(f) != 0 && !err)
		err = -errno;
	return err;
}

int bench_finish(const struct bench_opts *opts)
{
	int err = 0;
	if (opts->json_path)
		err = write_json(opts);
	free(rows);
	rows = NULL;
	nrows = rows_cap = 0;
	return err;
}
