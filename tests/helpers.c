#include <time.h>

#include <liburing.h>

#include "helpers.h"

uint64_t th_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Waits in short blocking steps: a post from a helper thread bounds each wait. */
static void step(ura_loop *loop)
{
	(void)ura_loop_run_once(loop, false);
	struct timespec pause = { 0, 200 * 1000 };
	nanosleep(&pause, NULL);
}

bool th_run_until(ura_loop *loop, const _Atomic bool *flag, unsigned ms)
{
	uint64_t end = th_now_ms() + ms;
	while (!atomic_load(flag) && th_now_ms() < end)
		step(loop);
	return atomic_load(flag);
}

uint64_t th_run_until_count(ura_loop *loop, const _Atomic uint64_t *count, uint64_t want,
			    unsigned ms)
{
	uint64_t end = th_now_ms() + ms;
	while (atomic_load(count) < want && th_now_ms() < end)
		(void)ura_loop_run_once(loop, false);
	return atomic_load(count);
}

void th_spin(ura_loop *loop, unsigned ms)
{
	uint64_t end = th_now_ms() + ms;
	while (th_now_ms() < end)
		step(loop);
}

void th_record(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s;
	(void)t;
	struct th_calls *c = arg;
	atomic_fetch_add(&c->calls, 1);
	if (!(flags & IORING_CQE_F_MORE))
		atomic_fetch_add(&c->terminal, 1);
	atomic_store(&c->last_res, res);
}

static void on_complete(ura_session *s, ura_task t, int32_t res, void *ctx)
{
	(void)s;
	(void)t;
	(void)res;
	struct th_delegate *d = ctx;
	if (atomic_load(&d->final_seen))
		atomic_fetch_add(&d->calls_after_final, 1);
	atomic_fetch_add(&d->completions, 1);
}

static void on_invalid(ura_session *s, int error, void *ctx)
{
	(void)s;
	struct th_delegate *d = ctx;
	if (atomic_load(&d->final_seen))
		atomic_fetch_add(&d->calls_after_final, 1);
	atomic_store(&d->final_error, error);
	atomic_fetch_add(&d->finals, 1);
	atomic_store(&d->final_seen, true);
}

const struct ura_session_delegate th_delegate_fns = {
	.task_did_complete = on_complete,
	.did_become_invalid = on_invalid,
};
