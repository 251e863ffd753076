/*
 * Shared machinery of ura-bench: options, the round runner, results, the table and the
 * JSON file.
 *
 * Method. Contenders of one measurement run in the same run of ura-bench, interleaved:
 * every round runs each of them once, in the order given (A B C, A B C, ...), after one
 * untimed warm-up round. A contender times only the part being compared (its own setup
 * stays outside the clock). The comparison is the median over rounds of the per-round
 * ratio ura time / contender time (per op), so drift that slows a whole round
 * (frequency, another process) cancels out; absolute times are printed as medians for
 * context only. Each ratio is computed on wall time and on the thread's CPU time.
 * Throughput suites (echo, rpc) record rates instead (bench_record_rate): the same
 * rounds, the per-round ratio of requests per second, and of CPU time per request.
 */
#ifndef URA_BENCH_UTIL_H
#define URA_BENCH_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <liburing.h>

#include "ura.h"

#define BENCH_DEFAULT_ROUNDS 7
#define BENCH_MIN_ROUNDS 5

struct bench_opts {
	bool quick;            /* smaller workloads: all suites in about a minute */
	int rounds;            /* timed rounds per measurement, >= BENCH_MIN_ROUNDS */
	const char *json_path; /* NULL: no JSON file */
};

/*
 * What one run measured. The time of its timed part: wall clock, and the CPU time of
 * the calling thread (user + system; with DEFER_TASKRUN the kernel's completion work
 * runs in the thread too). Wall time is the headline; CPU time leaves out time the
 * thread sat preempted by other processes, so on a busy machine it is the steadier of
 * the two. A suite whose work happens in another process (a server) puts that
 * process's CPU time in cpu_ns instead, and says so in its table.
 *
 * Runs of a fixed duration do a varying number of operations: such a run sets ops, and
 * every per-op figure of that run divides by it (0: the contender's fixed ops). A run
 * that times each operation may also set latency percentiles (0: not measured).
 */
struct bench_time {
	uint64_t wall_ns, cpu_ns;
	uint64_t ops;
	uint64_t p50_ns, p99_ns;
};

/* A stopwatch for timed parts: start, then stop adds the interval to a bench_time. */
struct bench_clock {
	uint64_t wall, cpu;
};
void bench_clock_start(struct bench_clock *c);
void bench_clock_stop(const struct bench_clock *c, struct bench_time *acc);

/*
 * One side of a comparison. run() performs one run of ops operations, adding the time
 * of its timed part to *t (zeroed by the caller); it returns 0 or a negative errno.
 * Contenders are compared per operation, so their ops may differ (a slow baseline may
 * do fewer per run). By convention contender 0 of a measurement is ura (or, where all
 * contenders are ura, the one the others are compared with: rpc's unix transport);
 * ratios are named "<contender 0>/<contender i>".
 */
struct bench_contender {
	const char *name;
	int (*run)(void *ctx, struct bench_time *t);
	void *ctx;
	uint64_t ops;
};

/*
 * Runs one warm-up round, then `rounds` timed rounds of every contender in order.
 * t must hold nc * rounds values; t[c * rounds + r] is contender c in round r.
 * label names the measurement on the progress line (stderr). Returns 0 or the first
 * contender error (the measurement is then abandoned).
 */
int bench_rounds(const struct bench_contender *c, size_t nc, int rounds, const char *label,
		 struct bench_time *t);

/*
 * Summarises one measurement into result rows (kept until bench_finish): per contender
 * the median wall time per op; for each contender i > 0 the median of per-round ratios
 * (ura time per op / contender i time per op), on wall and on CPU time; for ura, the
 * same ratios against the contender with the lowest median wall time ("best"). note
 * (may be NULL) is printed under the measurement's rows, e.g. a reduced workload.
 */
int bench_record(const char *suite, const char *param, const struct bench_contender *c,
		 size_t nc, int rounds, const struct bench_time *t, const char *note);

/*
 * The same for throughput measurements (echo, rpc): per contender the median rate
 * (ops per second of wall time), the median CPU time per op (of whatever cpu_ns holds:
 * a server's), and the median latency percentiles where runs measured them; for each
 * contender i > 0 the median of per-round ratios ura rate / contender i rate and ura
 * CPU per op / contender i CPU per op; for ura, the same against the contender with the
 * highest median rate. With one contender only its figures are recorded.
 */
int bench_record_rate(const char *suite, const char *param, const struct bench_contender *c,
		      size_t nc, int rounds, const struct bench_time *t, const char *note);

/*
 * One figure that is not a time or a rate (bytes per task, a struct size): its median,
 * min and max over rounds (NAN min and max: a constant), and, when ratio_of is not
 * NULL, the median (min, max; NAN: none) of the per-round ratios ura / this contender
 * the suite computed. unit names the figure.
 */
struct bench_value {
	const char *contender;
	const char *unit;
	double med, min, max;
	const char *ratio_of; /* NULL: no ratio */
	double ratio_med, ratio_min, ratio_max;
};
int bench_record_value(const char *suite, const char *param, const struct bench_value *v,
		       const char *note);

/* Median over rounds of one contender's wall time per op; row holds its `rounds` times. */
double bench_median_per_op(const struct bench_time *row, int rounds, uint64_t ops);

/* Median of v[0..n) (n > 0); sorts v in place, so v[0] and v[n - 1] are then min, max. */
double bench_median(double *v, size_t n);

/* Prints the rows recorded for suite as a table on stdout. */
void bench_print_table(const char *suite);

/* Writes every recorded row to opts->json_path (if set) and frees them. 0 or -errno. */
int bench_finish(const struct bench_opts *opts);

/*
 * A raw ring for a baseline, set up like ura's: SINGLE_ISSUER|DEFER_TASKRUN where the
 * kernel has them, else no flags; cq_entries (0: the kernel's default) via CQSIZE; with
 * CLAMP, so the kernel may grant less than asked (see the ring's sq/cq.ring_entries).
 * *flags gets the setup flags used besides CQSIZE and CLAMP. The caller frees the ring
 * with io_uring_queue_exit.
 */
int bench_ring_init(struct io_uring *ring, unsigned sq_entries, unsigned cq_entries,
		    unsigned *flags);

/* "ura ring SQ/CQ flags; raw ring SQ/CQ flags": the rings as set up, for table notes. */
void bench_ring_note(char *buf, size_t len, ura_loop *loop, const struct io_uring *raw,
		     unsigned raw_flags);

/* Progress and diagnostics on stderr, printf-like. */
void bench_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void bench_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The suites: run, record and print their rows. 0 or -errno. */
int bench_nop(const struct bench_opts *opts);    /* nop.c */
int bench_cancel(const struct bench_opts *opts); /* cancel.c */
int bench_echo(const struct bench_opts *opts);   /* echo.c */
int bench_rpc(const struct bench_opts *opts);    /* rpc.c */
int bench_memory(const struct bench_opts *opts); /* memory.c */
int bench_overload(const struct bench_opts *opts); /* overload.c */

#endif
