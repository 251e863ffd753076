/* Runner for tests built against standalone.h (see there). */
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "standalone.h"

enum { MAX_TESTS = 128 };
struct th_test { const char *suite, *name; th_test_fn fn; unsigned timeout; };
static struct th_test tests[MAX_TESTS];
static int ntests;

void th_register(const char *suite, const char *name, th_test_fn fn, unsigned timeout_s)
{
	if (ntests < MAX_TESTS)
		tests[ntests++] = (struct th_test){ suite, name, fn, timeout_s ? timeout_s : 600 };
}

void th_fail(const char *file, int line, const char *expr, const char *fmt, ...)
{
	fprintf(stderr, "%s:%d: Assertion failed: %s", file, line, expr);
	if (fmt && fmt[1]) {
		va_list ap;
		va_start(ap, fmt);
		fputs(": ", stderr);
		vfprintf(stderr, fmt + 1, ap);
		va_end(ap);
	}
	fputc('\n', stderr);
	exit(1);
}

int main(void)
{
	int passed = 0, failed = 0, crashed = 0;
	for (int i = 0; i < ntests; i++) {
		fflush(NULL);
		pid_t pid = fork();
		if (pid == 0) {
			alarm(tests[i].timeout);
			tests[i].fn();
			exit(0);
		}
		int status = 0;
		waitpid(pid, &status, 0);
		bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
		if (ok)
			passed++;
		else if (WIFEXITED(status))
			failed++;
		else
			crashed++;
		fprintf(stderr, "[%s] %s::%s\n", ok ? "PASS" : "FAIL", tests[i].suite, tests[i].name);
	}
	fprintf(stderr, "[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | Crashing: %d\n",
		ntests, passed, failed + crashed, crashed);
	return failed + crashed ? 1 : 0;
}
