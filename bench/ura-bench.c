/*
 * ura-bench: ura against raw liburing, in the same process.
 *
 *   ura-bench nop|cancel|all [--quick] [--rounds N] [--json FILE]
 *
 * Results are ratios (the median of per-round ratios, see bench_util.h), printed as a
 * table on stdout; progress goes to stderr. Nothing here passes or fails on a timing:
 * the exit status reports only errors (bad usage, a failed or incorrect run).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ura-bench nop|cancel|all [--quick] [--rounds N] [--json FILE]\n"
		"  nop       ura NOP tasks vs raw liburing NOPs, batches 1, 32, 128\n"
		"  cancel    invalidate_and_cancel on N live tasks vs raw ASYNC_CANCEL\n"
		"  all       both suites\n"
		"  --quick   smaller workloads (about 20 s per suite)\n"
		"  --rounds  timed rounds per measurement (default %d, at least %d)\n"
		"  --json    also write the results to FILE\n"
		"Ratios are medians of per-round ratios ura time / contender time per op,\n"
		"on wall time and on the benchmark thread's CPU time.\n",
		BENCH_DEFAULT_ROUNDS, BENCH_MIN_ROUNDS);
}

int main(int argc, char **argv)
{
	struct bench_opts opts = { .rounds = BENCH_DEFAULT_ROUNDS };
	const char *suite = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--quick") == 0) {
			opts.quick = true;
		} else if (strcmp(a, "--rounds") == 0 && i + 1 < argc) {
			char *end;
			long v = strtol(argv[++i], &end, 10);
			if (*end || v < BENCH_MIN_ROUNDS || v > 100000) {
				fprintf(stderr, "ura-bench: --rounds wants a number >= %d\n",
					BENCH_MIN_ROUNDS);
				return 2;
			}
			opts.rounds = (int)v;
		} else if (strcmp(a, "--json") == 0 && i + 1 < argc) {
			opts.json_path = argv[++i];
		} else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (!suite && (strcmp(a, "nop") == 0 || strcmp(a, "cancel") == 0 ||
				      strcmp(a, "all") == 0)) {
			suite = a;
		} else {
			fprintf(stderr, "ura-bench: unexpected argument '%s'\n", a);
			usage(stderr);
			return 2;
		}
	}
	if (!suite) {
		usage(stderr);
		return 2;
	}
	/* Results go to a pipe or file as often as to a terminal: keep lines whole. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ura-bench %s: %d rounds%s; ratio = median over rounds of "
	       "(ura time / contender time) per op in the same round,\n"
	       "on wall time (min..max over rounds) and on the thread's CPU time (cpu ratio)\n",
	       suite, opts.rounds, opts.quick ? ", quick" : "");

	bool all = strcmp(suite, "all") == 0;
	int err = 0;
	if (all || strcmp(suite, "nop") == 0)
		err = bench_nop(&opts);
	if (all || strcmp(suite, "cancel") == 0) {
		/* Run the other suite even when one failed: its numbers still stand. */
		int e = bench_cancel(&opts);
		if (!err)
			err = e;
	}
	int e = bench_finish(&opts);
	if (e < 0)
		fprintf(stderr, "ura-bench: writing %s: %s\n", opts.json_path, strerror(-e));
	if (err < 0)
		fprintf(stderr, "ura-bench: failed: %s\n", strerror(-err));
	return err < 0 || e < 0 ? 1 : 0;
}
