/* Round runner, result rows, table and JSON output for ura-bench. */
#include <errno.h>
#include <math.h>
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
	char note[160];
	double ns_per_op;  /* median over rounds */
	double ratio_med, ratio_min, ratio_max;
	int rounds;
	uint64_t ops;
};

static struct row *rows;
static size_t nrows, rows_cap;

uint64_t bench_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
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

int bench_rounds(const struct bench_contender *c, size_t nc, int rounds, const char *label,
		 uint64_t *ns)
{
	/* On a terminal the round counter rewrites one line; in a log, one line per round
	 * would be noise, so only the start and the end are written. */
	bool tty = isatty(STDERR_FILENO);
	uint64_t start = bench_now_ns();
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
			uint64_t t = 0;
			int err = c[i].run(c[i].ctx, &t);
			if (err < 0) {
				if (tty)
					fputc('\n', stderr);
				bench_warn("%s: %s failed: %s", label, c[i].name, strerror(-err));
				return err;
			}
			if (r >= 0)
				ns[i * (size_t)rounds + (size_t)r] = t ? t : 1; /* ratios need > 0 */
		}
	}
	double secs = (double)(bench_now_ns() - start) / 1e9;
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
		p.flags = tries[i];
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

void bench_ring_note(char *buf, size_t len, ura_loop *loop, unsigned raw_flags)
{
	uint32_t f = ura_loop_features(loop);
	snprintf(buf, len, "ura ring:%s%s%s%s; raw ring:%s",
		 f & URA_FEATURE_SINGLE_ISSUER ? " SINGLE_ISSUER" : "",
		 f & URA_FEATURE_DEFER_TASKRUN ? " DEFER_TASKRUN" : "",
		 f & URA_FEATURE_COOP_TASKRUN ? " COOP_TASKRUN" : "",
		 f & URA_FEATURE_SUBMIT_ALL ? " SUBMIT_ALL" : "",
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
		 size_t nc, int rounds, const uint64_t *ns, uint64_t ops, const char *note)
{
	double *v = malloc((size_t)rounds * sizeof(*v));
	double *med = malloc(nc * sizeof(*med));
	if (!v || !med) {
		free(v);
		free(med);
		return -ENOMEM;
	}
	for (size_t i = 0; i < nc; i++) {
		for (int r = 0; r < rounds; r++)
			v[r] = (double)ns[i * (size_t)rounds + (size_t)r] / (double)ops;
		med[i] = median(v, (size_t)rounds);
	}
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
		w->rounds = rounds;
		w->ops = ops;
		if (nc < 2)
			continue;
		/* Per-round ratio first, then the median: never a ratio of medians. */
		for (int r = 0; r < rounds; r++)
			v[r] = (double)ns[r] / (double)ns[other * (size_t)rounds + (size_t)r];
		w->ratio_med = median(v, (size_t)rounds);
		w->ratio_min = v[0];
		w->ratio_max = v[rounds - 1];
	}
	free(v);
	free(med);
	return err;
}

void bench_print_table(const char *suite)
{
	printf("\n%-7s %-22s %-16s %12s %10s %13s  %s\n", "suite", "parameter", "contender",
	       "ns/op (med)", "ratio(med)", "ratio min..max", "ratio is");
	const char *last_note = "";
	for (size_t i = 0; i < nrows; i++) {
		const struct row *w = &rows[i];
		if (strcmp(w->suite, suite) != 0)
			continue;
		printf("%-7s %-22s %-16s %12.1f %10.3f %6.3f..%-6.3f  %s\n", w->suite, w->param,
		       w->contender, w->ns_per_op, w->ratio_med, w->ratio_min, w->ratio_max,
		       w->ratio_of);
		if (w->note[0] && strcmp(w->note, last_note) != 0)
			printf("        note: %s\n", w->note);
		last_note = w->note;
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
