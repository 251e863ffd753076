/*
 * Shared test helpers: loops driven to a condition with a bound, a hang guard for
 * ura_loop_run, counting callbacks, connections over a socketpair. They return results
 * and never assert: the caller asserts, so a failure names the test's own line.
 */
#ifndef URA_TEST_HELPERS_H
#define URA_TEST_HELPERS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ura.h"

/* Runs loop iterations until *flag becomes true or ms elapse. Returns *flag. */
bool th_run_until(ura_loop *loop, const _Atomic bool *flag, unsigned ms);
/* Runs until the counter reaches want or ms elapse. Returns the final value. */
uint64_t th_run_until_count(ura_loop *loop, const _Atomic uint64_t *count, uint64_t want,
			    unsigned ms);
/* Runs non-blocking iterations until *v reaches want or ms elapse. Returns whether it did. */
bool th_run_until_int(ura_loop *loop, const _Atomic int *v, int want, unsigned ms);
/* Runs non-blocking iterations for ms (lets pending work settle). */
void th_spin(ura_loop *loop, unsigned ms);
uint64_t th_now_ms(void);

/*
 * A hang guard: a helper thread that stops the loop if the test has not ended the guard
 * within ms. Never a speed bound. Start and end it on the loop's thread.
 */
struct th_watchdog {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t thread;
	bool done, fired;
	unsigned ms;
	ura_loop *loop;
};
/* Returns 0 or the pthread_create error; on error there is nothing to end. */
int th_watchdog_start(struct th_watchdog *w, ura_loop *loop, unsigned ms);
/* Ends the guard and joins its thread. Returns true when it fired (stopped the loop). */
bool th_watchdog_end(struct th_watchdog *w);
/* ura_loop_run under a watchdog. Returns true when run returned by itself (no work
 * left), false when the guard had to stop it; *res is what ura_loop_run returned. */
bool th_run_bounded(ura_loop *loop, unsigned ms, int *res);

/* True when the test runs under valgrind, whose own descriptors and limits make tests
 * of the fd table meaningless (they skip). */
bool th_under_valgrind(void);

/* A per-task record of calls, for "exactly one terminal call" checks. */
struct th_calls {
	_Atomic uint64_t calls;     /* every callback */
	_Atomic uint64_t terminal;  /* calls without IORING_CQE_F_MORE */
	_Atomic int32_t last_res;
};
/* ura_task_fn recording into (struct th_calls *)arg. */
void th_record(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg);

/* Session delegate recording its events. */
struct th_delegate {
	_Atomic uint64_t completions;
	_Atomic uint64_t finals;
	_Atomic int final_error;
	_Atomic bool final_seen;
	_Atomic uint64_t calls_after_final; /* any delegate call after the final event */
};
extern const struct ura_session_delegate th_delegate_fns;

/* Copies m's payload into buf (size bytes) as a C string, cut to fit. */
void th_msg_text(const ura_msg *m, char *buf, size_t size);

/* One inactive connection adopting one end of a new socketpair, events to fn(ctx);
 * *peer is the other, raw end, which the caller closes. Returns 0 or -errno. */
int th_conn_adopt(ura_loop *loop, ura_event_fn fn, void *ctx, ura_conn **c, int *peer);
/* Two inactive connections adopting the ends of a new socketpair, each with its own
 * handler. Returns 0 or -errno (then neither exists). */
int th_conn_pair(ura_loop *loop, ura_event_fn fa, void *ca, ura_conn **a, ura_event_fn fb,
		 void *cb, ura_conn **b);

#endif
