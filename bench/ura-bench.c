/*
 * ura-bench: ura against raw liburing and the usual alternatives.
 *
 *   ura-bench nop|cancel|echo|rpc|memory|overload|all [--quick] [--rounds N] [--json FILE]
 *
 * Results are ratios (the median of per-round ratios, see bench_util.h), printed as a
 * table on stdout; progress goes to stderr. Nothing here passes or fails on a timing:
 * the exit status reports only errors (bad usage, a failed or incorrect run).
 *
 * `ura-bench serve <name> <arg>` (not listed in the usage) is how the echo, rpc, memory
 * and overload suites start their child processes (serve.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "serve.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ura-bench nop|cancel|echo|rpc|memory|overload|all [--quick] [--rounds N] "
		"[--json FILE]\n"
		"  nop       ura NOP tasks vs raw liburing NOPs, batches 1, 32, 128\n"
		"  cancel    invalidate_and_cancel on N live tasks vs raw ASYNC_CANCEL\n"
		"  echo      TCP echo servers on loopback: ura, raw liburing, epoll, libuv\n"
		"  rpc       ura connections: request/reply rate and latency, unix vs tcp\n"
		"  memory    bytes per in-flight task (1M timeouts) vs libuv's structs\n"
		"  overload  submit flood from 1, 2, 4 threads (rate, peak RSS), a never-reading\n"
		"            rpc client (server peak RSS), NOPs behind 1000/20000 pending flushes\n"
		"  all       every suite\n"
		"  --quick   smaller workloads and %d rounds (all suites in about a minute)\n"
		"  --rounds  timed rounds per measurement (default %d, at least %d)\n"
		"  --json    also write the results to FILE\n"
		"Ratios are medians of per-round ratios ura / contender: of time per op (nop,\n"
		"cancel), of requests/s and server CPU per request (echo, rpc), of bytes\n"
		"(memory); overload reports flooded/unloaded rates, MiB, and time ratios N\n"
		"pending / none.\n",
		BENCH_MIN_ROUNDS, BENCH_DEFAULT_ROUNDS, BENCH_MIN_ROUNDS);
}

static const struct {
	const char *name;
	int (*run)(const struct bench_opts *opts);
} suites[] = {
	{ "nop", bench_nop },
	{ "cancel", bench_cancel },
	{ "echo", bench_echo },
	{ "rpc", bench_rpc },
	{ "memory", bench_memory },
	{ "overload", bench_overload },
};

static bool is_suite(const char *a)
{
	if (strcmp(a, "all") == 0)
		return true;
	for (size_t i = 0; i < sizeof(suites) / sizeof(suites[0]); i++)
		if (strcmp(a, suites[i].name) == 0)
			return true;
	return false;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "serve") == 0)
		return bench_serve(argc - 2, argv + 2);
	struct bench_opts opts = { .rounds = BENCH_DEFAULT_ROUNDS };
	bool rounds_given = false;
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
			rounds_given = true;
		} else if (strcmp(a, "--json") == 0 && i + 1 < argc) {
			opts.json_path = argv[++i];
		} else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		} else if (!suite && is_suite(a)) {
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
	/* --quick keeps every suite but runs the fewest rounds the method allows. */
	if (opts.quick && !rounds_given)
		opts.rounds = BENCH_MIN_ROUNDS;
	/* Results go to a pipe or file as often as to a terminal: keep lines whole. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ura-bench %s: %d rounds%s, contenders interleaved in every round; ratio = median\n"
	       "over rounds of the per-round ratio ura / contender, of: time per op (nop, cancel:\n"
	       "wall, min..max, and the thread's CPU time as cpu ratio), requests/s and server\n"
	       "CPU per request (echo, rpc), bytes per task (memory); overload: see its notes\n",
	       suite, opts.rounds, opts.quick ? ", quick" : "");

	bool all = strcmp(suite, "all") == 0;
	int err = 0;
	for (size_t i = 0; i < sizeof(suites) / sizeof(suites[0]); i++) {
		if (!all && strcmp(suite, suites[i].name) != 0)
			continue;
		/* Run the other suites even when one failed: their numbers still stand. */
		int e = suites[i].run(&opts);
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
