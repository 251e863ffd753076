/*
 * Shared machinery of ura-bench: options, the round runner, results, the table and the
 * JSON file.
 *
 * Method. Contenders of one measurement run in the same process, interleaved: every
 * round runs each of them once, in the order given (A B C, A B C, ...), after one
 * untimed warm-up round. A contender times only the part being compared (its own setup
 * stays outside the clock). The comparison is the median over rounds of the per-round
 * ratio ura time / contender time, so drift that slows a whole round (frequency,
 * another process) cancels out; absolute times are printed as medians for context only.
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
	bool quick;            /* smaller workloads: about 20 s per suite */
	int rounds;            /* timed rounds per measurement, >= BENCH_MIN_ROUNDS */
	const char *json_path; /* NULL: no JSON file */
};

/*
 * One side of a comparison. run() performs one timed repetition and stores the elapsed
 * nanoseconds of its timed part in *ns; it returns 0 or a negative errno. By convention
 * contender 0 of a measurement is ura.
 */
struct bench_contender {
	const char *name;
	int (*run)(void *ctx, uint64_t *ns);
	void *ctx;
};

/* Monotonic clock in nanoseconds. */
uint64_t bench_now_ns(void);

/*
 * Runs one warm-up round, then `rounds` timed rounds of every contender in order.
 * ns must hold nc * rounds values; ns[c * rounds + r] is contender c in round r.
 * label names the measurement on the progress line (stderr). Returns 0 or the first
 * contender error (the measurement is then abandoned).
 */
int bench_rounds(const struct bench_contender *c, size_t nc, int rounds, const char *label,
		 uint64_t *ns);

/*
 * Summarises one measurement into result rows (kept until bench_finish): per contender
 * the median time per op (ns / ops); for each contender i > 0 the median of per-round
 * ratios ura / contender i; for ura, the same ratio against the contender with the
 * lowest median ("best"). ops is the number of operations one run performs.
 * note (may be NULL) is printed with the table, e.g. a reduced workload.
 */
int bench_record(const char *suite, const char *param, const struct bench_contender *c,
		 size_t nc, int rounds, const uint64_t *ns, uint64_t ops, const char *note);

/* Prints the rows recorded for suite as a table on stdout. */
void bench_print_table(const char *suite);

/* Writes every recorded row to opts->json_path (if set) and frees them. 0 or -errno. */
int bench_finish(const struct bench_opts *opts);

/*
 * A raw ring for a baseline, set up like ura's: SINGLE_ISSUER|DEFER_TASKRUN where the
 * kernel has them, else no flags; cq_entries (0: the kernel's default) via CQSIZE.
 * *flags gets the setup flags used. The caller frees it with io_uring_queue_exit.
 */
int bench_ring_init(struct io_uring *ring, unsigned sq_entries, unsigned cq_entries,
		    unsigned *flags);

/* "ura ring: ...; raw ring: ..." describing the setup flags in use, for table notes. */
void bench_ring_note(char *buf, size_t len, ura_loop *loop, unsigned raw_flags);

/* Progress and diagnostics on stderr, printf-like. */
void bench_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void bench_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The suites (nop.c, cancel.c): run, record and print their rows. 0 or -errno. */
int bench_nop(const struct bench_opts *opts);
int bench_cancel(const struct bench_opts *opts);

#endif
