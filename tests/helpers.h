/* Shared test helpers: loops driven to a condition with a bound, counting callbacks. */
#ifndef URA_TEST_HELPERS_H
#define URA_TEST_HELPERS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "ura.h"

/* Runs loop iterations until *flag becomes true or ms elapse. Returns *flag. */
bool th_run_until(ura_loop *loop, const _Atomic bool *flag, unsigned ms);
/* Runs until the counter reaches want or ms elapse. Returns the final value. */
uint64_t th_run_until_count(ura_loop *loop, const _Atomic uint64_t *count, uint64_t want,
			    unsigned ms);
/* Runs non-blocking iterations for ms (lets pending work settle). */
void th_spin(ura_loop *loop, unsigned ms);
uint64_t th_now_ms(void);

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

#endif
