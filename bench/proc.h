/*
 * Child processes for the suites whose server runs apart from its load (echo, rpc,
 * memory): spawning with a CPU pin, a line protocol over pipes with deadlines, the
 * child's CPU time, and cleanup.
 *
 * Every child gets PR_SET_PDEATHSIG(SIGKILL), and the children still running when
 * ura-bench exits normally are killed by an atexit handler, so no server outlives the
 * benchmark, also when the watchdog ends it. Loop thread (the benchmark's one thread).
 */
#ifndef URA_BENCH_PROC_H
#define URA_BENCH_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

struct bench_child {
	pid_t pid;           /* 0: not running */
	int in;              /* writes go to the child's stdin; -1 when not asked for */
	int out;             /* the child's stdout */
	clockid_t cpu_clock; /* the child's process CPU clock (all its threads) */
	char buf[512];       /* stdout bytes read but not yet returned as lines */
	size_t len;
};

/* The CPUs the suites pin to: server on one, load generator on another. */
struct bench_cpus {
	int server, load; /* -1: not pinned (fewer than two CPUs allowed) */
};

/* The first two CPUs this process may run on (normally 0 and 1). */
void bench_pick_cpus(struct bench_cpus *c);

/* Pins the calling thread to cpu (-1: every CPU the process was allowed at start).
 * 0 or -errno. */
int bench_pin(int cpu);

/* Raises the RLIMIT_NOFILE soft limit to the hard limit. Returns the soft limit now. */
unsigned long bench_raise_nofile(void);

/*
 * Starts argv[0] (a path) with argv, pinned to cpu (-1: not pinned), its stdout a pipe
 * to ch->out and, with want_stdin, its stdin a pipe from ch->in. keep_fd (-1: none)
 * stays open across exec; every other descriptor the caller opened with CLOEXEC is
 * closed. 0 or -errno; on error nothing is left running.
 */
int bench_spawn(struct bench_child *ch, char *const argv[], int cpu, int keep_fd,
		bool want_stdin);

/* Reads one line of the child's stdout (without the newline) within timeout_ms.
 * 0, -ETIMEDOUT, -EPIPE (the child closed its stdout: exited or crashed), -EMSGSIZE. */
int bench_child_line(struct bench_child *ch, char *line, size_t len, int timeout_ms);

/* Writes s to the child's stdin. 0 or -errno. */
int bench_child_write(struct bench_child *ch, const char *s);

/* The child's CPU time so far (user + system, every thread, ns); 0 if unreadable. */
uint64_t bench_child_cpu_ns(const struct bench_child *ch);

/* True while the child has not exited. */
bool bench_child_alive(struct bench_child *ch);

/* Waits up to timeout_ms for the child to exit, then kills it (SIGKILL). Closes the
 * pipes. Returns its exit status (0..255), or -EINTR if a signal ended it, -ETIMEDOUT
 * if it had to be killed. NULL or a child not running is fine (returns 0). */
int bench_child_reap(struct bench_child *ch, int timeout_ms);

/* The path of the executable name beside ura-bench (name NULL: ura-bench itself). 0 or
 * -errno. */
int bench_exe_path(char *buf, size_t len, const char *name);

#endif
