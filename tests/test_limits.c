/*
 * Resource limits the runtime must live within: a tight address-space limit (ulimit -v)
 * still leaves room for connections and tasks.
 *
 * Each case runs in a child of its own (fork), so a limit set there cannot reach other
 * tests. The child reports through its exit status and stderr, never through Criterion.
 *
 * AddressSanitizer reserves terabytes of shadow memory, so an ASan build cannot run under
 * any RLIMIT_AS that matters: there these cases skip. They run in the plain build
 * (suite 'plain', which scripts/test runs there; not under valgrind either).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

#define GUARD_MS 10000u         /* hang guard for one wait; never a speed bound */
#define NOPS 10000

/* The process's address space now (VmSize), in bytes, or 0 when unknown. */
static uint64_t vm_size(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	if (!f)
		return 0;
	unsigned long long pages = 0;
	int n = fscanf(f, "%llu", &pages);
	fclose(f);
	return n == 1 ? pages * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

struct seen {
	_Atomic int messages, invalid;
	char text[32];
};

static void on_event(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	(void)c;
	struct seen *s = ctx;
	if (ev->type == URA_EVENT_MESSAGE) {
		th_msg_text(ev->msg, s->text, sizeof(s->text));
		atomic_fetch_add(&s->messages, 1);
	} else if (ev->error == URA_ERROR_CONNECTION_INVALID) {
		atomic_fetch_add(&s->invalid, 1);
	}
}

/* The reason c ended with, printed; "(none)" while it is valid. */
static void print_reason(const char *who, ura_conn *c)
{
	char *why = ura_conn_copy_invalidation_reason(c);
	fprintf(stderr, "%s ended: %s\n", who, why ? why : "(none)");
	free(why);
}

static void count_nop(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)flags;
	if (res == 0)
		atomic_fetch_add((_Atomic uint64_t *)arg, 1);
}

/* Under RLIMIT_AS = current use + headroom: a loop, a message over a connection pair, and
 * NOPS tasks. Returns the exit status: 0, or the number of the step that failed. */
static int tight_child(uint64_t headroom)
{
	uint64_t used = vm_size();
	if (!used) {
		fprintf(stderr, "no /proc/self/statm\n");
		return 1;
	}
	struct rlimit lim = { .rlim_cur = used + headroom, .rlim_max = used + headroom };
	if (setrlimit(RLIMIT_AS, &lim) < 0) {
		fprintf(stderr, "setrlimit: %s\n", strerror(errno));
		return 2;
	}
	ura_loop *loop;
	int r = ura_loop_new(NULL, &loop);
	if (r < 0) {
		fprintf(stderr, "ura_loop_new: %s\n", strerror(-r));
		return 3;
	}
	struct seen sa = { 0 }, sb = { 0 };
	ura_conn *a, *b;
	r = th_conn_pair(loop, on_event, &sa, &a, on_event, &sb, &b);
	if (r < 0) {
		fprintf(stderr, "th_conn_pair: %s\n", strerror(-r));
		return 4;
	}
	ura_conn_activate(a);
	ura_conn_activate(b);
	ura_msg *m;
	if (ura_msg_new("hello", 5, &m) < 0)
		return 5;
	r = ura_conn_send(a, m);
	ura_msg_unref(m);
	if (r < 0) {
		fprintf(stderr, "ura_conn_send: %s\n", strerror(-r));
		return 6;
	}
	th_run_until_int(loop, &sb.messages, 1, GUARD_MS);
	if (atomic_load(&sb.messages) != 1 || strcmp(sb.text, "hello") != 0) {
		fprintf(stderr, "received %d messages ('%s') in %llu MiB of address space\n",
			atomic_load(&sb.messages), sb.text,
			(unsigned long long)((used + headroom) >> 20));
		print_reason("receiver", b);
		print_reason("sender", a);
		return 7;
	}
	/* The registry still holds tasks: more than one chunk's worth. */
	_Atomic uint64_t done = 0;
	ura_session *sh = ura_session_shared(loop);
	for (int i = 0; i < NOPS; i++) {
		r = ura_nop(sh, count_nop, &done, NULL);
		if (r < 0) {
			fprintf(stderr, "ura_nop %d: %s\n", i, strerror(-r));
			return 8;
		}
	}
	if (th_run_until_count(loop, &done, NOPS, GUARD_MS) != NOPS) {
		fprintf(stderr, "%llu of %d NOPs completed\n", (unsigned long long)atomic_load(&done),
			NOPS);
		return 9;
	}
	ura_conn_unref(a);
	ura_conn_unref(b);
	int res;
	if (!th_run_bounded(loop, GUARD_MS, &res) || res != 0)
		return 10;
	ura_loop_free(loop);
	return 0;
}

Test(limits, a_tight_address_space_leaves_room_for_connections_and_tasks)
{
	if (UNDER_ASAN)
		cr_skip("AddressSanitizer cannot run under an address-space limit");
	/* Address space allowed beyond what the child uses already. A reservation that took
	 * the largest power of two that fits left nothing at exactly 64 or 128 MiB. */
	static const unsigned headroom_mib[] = { 64, 128, 256 };
	for (size_t i = 0; i < sizeof(headroom_mib) / sizeof(headroom_mib[0]); i++) {
		fflush(NULL); /* the child must not write the parent's buffered output again */
		pid_t pid = fork();
		cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
		if (pid == 0)
			_exit(tight_child((uint64_t)headroom_mib[i] << 20));
		int status;
		cr_assert_eq(waitpid(pid, &status, 0), pid);
		cr_assert(WIFEXITED(status), "%u MiB: the child died (status %#x)", headroom_mib[i],
			  status);
		cr_assert_eq(WEXITSTATUS(status), 0,
			     "%u MiB: step %d failed (see the child's stderr above)", headroom_mib[i],
			     WEXITSTATUS(status));
	}
}
