/*
 * The subset of Criterion's API the stress tests use, for builds where Criterion cannot
 * run: its fixed-address arena does not start under ThreadSanitizer. Each test runs in a
 * child process; the summary line has Criterion's shape so scripts/test counts it alike.
 */
#ifndef URA_STANDALONE_H
#define URA_STANDALONE_H

#include <stdio.h>
#include <stdlib.h>

typedef void (*th_test_fn)(void);
void th_register(const char *suite, const char *name, th_test_fn fn, unsigned timeout_s);
void th_fail(const char *file, int line, const char *expr, const char *fmt, ...)
	__attribute__((noreturn, format(printf, 4, 5)));

struct th_test_opts { unsigned timeout; };

#define Test(suite, name, ...)                                                          \
	static void suite##_##name(void);                                               \
	__attribute__((constructor)) static void th_reg_##suite##_##name(void)         \
	{                                                                               \
		struct th_test_opts o = { __VA_ARGS__ };                                \
		th_register(#suite, #name, suite##_##name, o.timeout);                  \
	}                                                                               \
	static void suite##_##name(void)

#define cr_assert(cond, ...)                                                            \
	do {                                                                            \
		if (!(cond))                                                            \
			th_fail(__FILE__, __LINE__, #cond, " " __VA_ARGS__);           \
	} while (0)
#define cr_assert_eq(a, b, ...) cr_assert((a) == (b), __VA_ARGS__)
#define cr_assert_neq(a, b, ...) cr_assert((a) != (b), __VA_ARGS__)
#define cr_assert_lt(a, b, ...) cr_assert((a) < (b), __VA_ARGS__)
#define cr_assert_leq(a, b, ...) cr_assert((a) <= (b), __VA_ARGS__)
#define cr_assert_gt(a, b, ...) cr_assert((a) > (b), __VA_ARGS__)
#define cr_assert_geq(a, b, ...) cr_assert((a) >= (b), __VA_ARGS__)
#define cr_assert_null(p, ...) cr_assert((p) == NULL, __VA_ARGS__)
#define cr_assert_not_null(p, ...) cr_assert((p) != NULL, __VA_ARGS__)
#define cr_log_info(...) (fprintf(stderr, "[info] " __VA_ARGS__), fputc('\n', stderr))

#endif
