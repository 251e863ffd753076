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

/* How a row reads: a time per op (nop, cancel), a rate (echo, rpc), or a plain figure. */
enum row_kind { ROW_TIME, ROW_RATE, ROW_VALUE };

struct row {
	enum row_kind kind;
	char suite[16];
	char param[48];
	char contender[32];
	char ratio_of[48]; /* what the ratio divides: "ura/raw-liburing"; "" for none */
	char unit[24];     /* ROW_VALUE: what the value counts */
	char note[320];
	double ns_per_op;  /* median wall time per op over rounds */
	double cpu_ns_per_op;
	double rate;       /* ROW_RATE: median ops per second */
	double p50_ns, p99_ns; /* ROW_RATE: median over rounds; NAN when not measured */
	double value, value_min, value_max; /* ROW_VALUE */
	double ratio_med, ratio_min, ratio_max; /* wall time, rate or value; NAN: none */
	double cpu_ratio_med;
	int rounds;
	uint64_t ops;      /* per round (ROW_RATE: the median) */
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
	snprintf(buf, len, "ura ring %u/%u%s%s%s%s%s; raw ring %u/%u%s", ur->sq.ring_entries,
		 ur->cq.ring_entries,
		 f & URA_FEATURE_SINGLE_ISSUER ? " SINGLE_ISSUER" : "",
		 f & URA_FEATURE_DEFER_TASKRUN ? " DEFER_TASKRUN" : "",
		 f & URA_FEATURE_COOP_TASKRUN ? " COOP_TASKRUN" : "",
		 f & URA_FEATURE_SUBMIT_ALL ? " SUBMIT_ALL" : "",
		 f & URA_FEATURE_REGISTERED_RING ? " REGISTERED_RING" : "",
		 raw->sq.ring_entries, raw->cq.ring_entries,
		 raw_flags ? " SINGLE_ISSUER DEFER_TASKRUN" : " (no flags)");
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

double bench_median(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The ops one run did: its own count (fixed-duration runs) or the contender's. */
static double run_ops(const struct bench_time *x, uint64_t ops)
{
	return (double)(x->ops ? x->ops : ops);
}

/* What one run measured, per figure. */
enum figure { F_WALL, F_CPU, F_RATE, F_P50, F_P99 };

static double figure_of(const struct bench_time *x, uint64_t ops, enum figure f)
{
	switch (f) {
	case F_WALL:
		return (double)x->wall_ns / run_ops(x, ops);
	case F_CPU:
		return (double)x->cpu_ns / run_ops(x, ops);
	case F_RATE:
		return run_ops(x, ops) * 1e9 / (double)x->wall_ns;
	case F_P50:
		return (double)x->p50_ns;
	case F_P99:
		return (double)x->p99_ns;
	}
	return NAN;
}

/* Median over rounds of one figure of row; NAN without memory or (latencies) when the
 * runs did not measure it. */
static double median_of(const struct bench_time *row, int rounds, uint64_t ops, enum figure f)
{
	if ((f == F_P50 && !row[0].p50_ns) || (f == F_P99 && !row[0].p99_ns))
		return NAN;
	double *v = malloc((size_t)rounds * sizeof(*v));
	if (!v)
		return NAN;
	for (int r = 0; r < rounds; r++)
		v[r] = figure_of(&row[r], ops, f);
	double m = bench_median(v, (size_t)rounds);
	free(v);
	return m;
}

double bench_median_per_op(const struct bench_time *row, int rounds, uint64_t ops)
{
	return median_of(row, rounds, ops, F_WALL);
}

/* Per-round ratios ura / other of one figure, into v (rounds values). */
static void ratios(double *v, const struct bench_contender *c, const struct bench_time *t,
		   int rounds, size_t other, enum figure f)
{
	const struct bench_time *a = t, *b = t + other * (size_t)rounds;
	for (int r = 0; r < rounds; r++)
		v[r] = figure_of(&a[r], c[0].ops, f) / figure_of(&b[r], c[other].ops, f);
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

static void row_names(struct row *w, enum row_kind kind, const char *suite, const char *param,
		      const char *contender, const char *note)
{
	w->kind = kind;
	snprintf(w->suite, sizeof(w->suite), "%s", suite);
	snprintf(w->param, sizeof(w->param), "%s", param);
	snprintf(w->contender, sizeof(w->contender), "%s", contender);
	snprintf(w->note, sizeof(w->note), "%s", note ? note : "");
	w->ratio_med = w->ratio_min = w->ratio_max = w->cpu_ratio_med = NAN;
	w->p50_ns = w->p99_ns = w->rate = w->value = w->value_min = w->value_max = NAN;
}

/* Rows of one measurement of time (rate false) or rate contenders. */
static int record(const char *suite, const char *param, const struct bench_contender *c,
		  size_t nc, int rounds, const struct bench_time *t, const char *note, bool rate)
{
	double *v = malloc((size_t)rounds * sizeof(*v));
	double *med = malloc(nc * sizeof(*med));
	if (!v || !med) {
		free(v);
		free(med);
		return -ENOMEM;
	}
	enum figure head = rate ? F_RATE : F_WALL;
	for (size_t i = 0; i < nc; i++)
		med[i] = median_of(t + i * (size_t)rounds, rounds, c[i].ops, head);
	/* The ura row is compared with the best other contender: the lowest median time,
	 * or the highest median rate. */
	size_t best = 1;
	for (size_t i = 2; i < nc; i++)
		if (rate ? med[i] > med[best] : med[i] < med[best])
			best = i;
	int err = 0;
	for (size_t i = 0; i < nc; i++) {
		size_t other = i == 0 ? best : i;
		const struct bench_time *row = t + i * (size_t)rounds;
		struct row *w = row_add();
		if (!w) {
			err = -ENOMEM;
			break;
		}
		row_names(w, rate ? ROW_RATE : ROW_TIME, suite, param, c[i].name, note);
		w->ns_per_op = median_of(row, rounds, c[i].ops, F_WALL);
		w->cpu_ns_per_op = median_of(row, rounds, c[i].ops, F_CPU);
		w->rounds = rounds;
		w->ops = c[i].ops;
		if (rate) {
			w->rate = med[i];
			w->p50_ns = median_of(row, rounds, c[i].ops, F_P50);
			w->p99_ns = median_of(row, rounds, c[i].ops, F_P99);
			for (int r = 0; r < rounds; r++)
				v[r] = run_ops(&row[r], c[i].ops);
			w->ops = (uint64_t)bench_median(v, (size_t)rounds);
		}
		if (nc < 2)
			continue;
		snprintf(w->ratio_of, sizeof(w->ratio_of), "%s/%s%s", c[0].name, c[other].name,
			 i == 0 && nc > 2 ? " (best)" : "");
		/* Per-round ratio first, then the median: never a ratio of medians. */
		ratios(v, c, t, rounds, other, F_CPU);
		w->cpu_ratio_med = bench_median(v, (size_t)rounds);
		ratios(v, c, t, rounds, other, head);
		w->ratio_med = bench_median(v, (size_t)rounds); /* sorts v: min and max follow */
		w->ratio_min = v[0];
		w->ratio_max = v[rounds - 1];
	}
	free(v);
	free(med);
	return err;
}

int bench_record(const char *suite, const char *param, const struct bench_contender *c,
		 size_t nc, int rounds, const struct bench_time *t, const char *note)
{
	return record(suite, param, c, nc, rounds, t, note, false);
}

int bench_record_rate(const char *suite, const char *param, const struct bench_contender *c,
		      size_t nc, int rounds, const struct bench_time *t, const char *note)
{
	return record(suite, param, c, nc, rounds, t, note, true);
}

int bench_record_value(const char *suite, const char *param, const struct bench_value *v,
		       const char *note)
{
	struct row *w = row_add();
	if (!w)
		return -ENOMEM;
	row_names(w, ROW_VALUE, suite, param, v->contender, note);
	snprintf(w->unit, sizeof(w->unit), "%s", v->unit);
	w->value = v->med;
	w->value_min = v->min;
	w->value_max = v->max;
	if (v->ratio_of) {
		snprintf(w->ratio_of, sizeof(w->ratio_of), "%s", v->ratio_of);
		w->ratio_med = v->ratio_med;
		w->ratio_min = v->ratio_min;
		w->ratio_max = v->ratio_max;
	}
	return 0;
}

/* A number for the table: "-" where a figure does not apply. */
static const char *num(char *buf, size_t len, int decimals, double x)
{
	if (isnan(x))
		snprintf(buf, len, "-");
	else
		snprintf(buf, len, "%.*f", decimals, x);
	return buf;
}

static void print_header(enum row_kind kind)
{
	switch (kind) {
	case ROW_TIME:
		printf("\n%-8s %-16s %-13s %11s %10s %13s %9s  %s\n", "suite", "parameter",
		       "contender", "ns/op (med)", "ratio(med)", "min..max", "cpu ratio",
		       "ratio is");
		break;
	case ROW_RATE:
		printf("\n%-8s %-17s %-13s %11s %10s %13s %11s %9s %8s %8s  %s\n", "suite",
		       "parameter", "contender", "req/s (med)", "ratio(med)", "min..max",
		       "srv cpu/req", "cpu ratio", "p50 us", "p99 us", "ratio is");
		break;
	case ROW_VALUE:
		printf("\n%-8s %-22s %-22s %10s %-10s %17s %10s %13s  %s\n", "suite",
		       "parameter", "contender", "value(med)", "unit", "min..max",
		       "ratio(med)", "min..max", "ratio is");
		break;
	}
}

static void print_row(const struct row *w)
{
	char a[32], b[32], c[32], d[32], e[32], f[32];
	switch (w->kind) {
	case ROW_TIME:
		printf("%-8s %-16s %-13s %11.1f %10s %6s..%-6s %9s  %s\n", w->suite, w->param,
		       w->contender, w->ns_per_op, num(a, sizeof(a), 3, w->ratio_med),
		       num(b, sizeof(b), 3, w->ratio_min),
		       num(c, sizeof(c), 3, w->ratio_max),
		       num(d, sizeof(d), 3, w->cpu_ratio_med), w->ratio_of);
		break;
	case ROW_RATE:
		printf("%-8s %-17s %-13s %11.0f %10s %6s..%-6s %8.0f ns %9s %8s %8s  %s\n",
		       w->suite, w->param, w->contender, w->rate,
		       num(a, sizeof(a), 3, w->ratio_med),
		       num(b, sizeof(b), 3, w->ratio_min),
		       num(c, sizeof(c), 3, w->ratio_max), w->cpu_ns_per_op,
		       num(d, sizeof(d), 3, w->cpu_ratio_med),
		       num(e, sizeof(e), 1, w->p50_ns / 1e3),
		       num(f, sizeof(f), 1, w->p99_ns / 1e3), w->ratio_of);
		break;
	case ROW_VALUE:
		/* A figure with no spread (a sizeof: NAN) or no ratio shows its cells empty. */
		if (isnan(w->value_min))
			b[0] = '\0';
		else
			snprintf(b, sizeof(b), "%.1f..%.1f", w->value_min, w->value_max);
		if (isnan(w->ratio_min))
			e[0] = '\0';
		else
			snprintf(e, sizeof(e), "%.3f..%.3f", w->ratio_min, w->ratio_max);
		printf("%-8s %-22s %-22s %10s %-10s %17s %10s %13s  %s\n", w->suite, w->param,
		       w->contender, num(a, sizeof(a), 1, w->value), w->unit, b,
		       isnan(w->ratio_med) ? "" : num(d, sizeof(d), 3, w->ratio_med), e,
		       w->ratio_of);
		break;
	}
}

void bench_print_table(const char *suite)
{
	int kind = -1;
	for (size_t i = 0; i < nrows; i++) {
		const struct row *w = &rows[i];
		if (strcmp(w->suite, suite) != 0)
			continue;
		if ((int)w->kind != kind) {
			kind = (int)w->kind;
			print_header(w->kind);
		}
		print_row(w);
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

static const char *const kind_name[] = {
	[ROW_TIME] = "time",
	[ROW_RATE] = "rate",
	[ROW_VALUE] = "value",
};
_Static_assert(sizeof(kind_name) / sizeof(kind_name[0]) == ROW_VALUE + 1, "a name per kind");

static void json_field(FILE *f, const char *key, double x)
{
	fprintf(f, ", \"%s\": ", key);
	json_num(f, x);
}

/* One result per line: scripts/bench-plot reads them with awk. */
static void json_row(FILE *f, const struct row *w)
{
	fprintf(f, "{\"suite\": ");
	json_str(f, w->suite);
	fprintf(f, ", \"param\": ");
	json_str(f, w->param);
	fprintf(f, ", \"contender\": ");
	json_str(f, w->contender);
	fprintf(f, ", \"kind\": \"%s\"", kind_name[w->kind]);
	if (w->kind == ROW_VALUE) {
		fprintf(f, ", \"unit\": ");
		json_str(f, w->unit);
		json_field(f, "value_median", w->value);
		json_field(f, "value_min", w->value_min);
		json_field(f, "value_max", w->value_max);
	} else {
		if (w->kind == ROW_RATE) {
			json_field(f, "req_per_s_median", w->rate);
			json_field(f, "p50_ns_median", w->p50_ns);
			json_field(f, "p99_ns_median", w->p99_ns);
		}
		json_field(f, "ns_per_op_median", w->ns_per_op);
		json_field(f, "cpu_ns_per_op_median", w->cpu_ns_per_op);
	}
	fprintf(f, ", \"ratio\": ");
	json_str(f, w->ratio_of);
	json_field(f, "ratio_median", w->ratio_med);
	json_field(f, "ratio_min", w->ratio_min);
	json_field(f, "ratio_max", w->ratio_max);
	json_field(f, "cpu_ratio_median", w->cpu_ratio_med);
	fprintf(f, ", \"rounds\": %d, \"ops_per_round\": %llu, \"note\": ", w->rounds,
		(unsigned long long)w->ops);
	json_str(f, w->note);
	fputc('}', f);
}

static int write_json(const struct bench_opts *opts)
{
	FILE *f = fopen(opts->json_path, "w");
	if (!f)
		return -errno;
	struct utsname u;
	if (uname(&u) < 0)
		snprintf(u.release, sizeof(u.release), "unknown");
	char date[32] = "unknown";
	time_t now = time(NULL);
	struct tm tm;
	if (gmtime_r(&now, &tm))
		strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm);
	fprintf(f, "{\n  \"tool\": \"ura-bench\",\n  \"kernel\": ");
	json_str(f, u.release);
	fprintf(f, ",\n  \"date\": \"%s\",\n  \"cpus\": %ld,\n", date,
		sysconf(_SC_NPROCESSORS_ONLN));
	fprintf(f, "  \"quick\": %s,\n  \"rounds\": %d,\n", opts->quick ? "true" : "false",
		opts->rounds);
	fprintf(f, "  \"method\": \"interleaved rounds; medians of per-round ratios\",\n");
	fprintf(f, "  \"results\": [");
	for (size_t i = 0; i < nrows; i++) {
		fprintf(f, "%s\n    ", i ? "," : "");
		json_row(f, &rows[i]);
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
