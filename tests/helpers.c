#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif

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

bool th_run_until_int(ura_loop *loop, const _Atomic int *v, int want, unsigned ms)
{
	uint64_t end = th_now_ms() + ms;
	while (atomic_load(v) < want && th_now_ms() < end)
		(void)ura_loop_run_once(loop, false);
	return atomic_load(v) >= want;
}

void th_spin(ura_loop *loop, unsigned ms)
{
	uint64_t end = th_now_ms() + ms;
	while (th_now_ms() < end)
		step(loop);
}

static void *watchdog_main(void *arg)
{
	struct th_watchdog *w = arg;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += w->ms / 1000;
	until.tv_nsec += (long)(w->ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&w->mu);
	int r = 0;
	while (!w->done && r != ETIMEDOUT)
		r = pthread_cond_timedwait(&w->cv, &w->mu, &until);
	if (!w->done) {
		w->fired = true;
		ura_loop_stop(w->loop);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

int th_watchdog_start(struct th_watchdog *w, ura_loop *loop, unsigned ms)
{
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	w->done = w->fired = false;
	w->ms = ms;
	w->loop = loop;
	return pthread_create(&w->thread, NULL, watchdog_main, w);
}

bool th_watchdog_end(struct th_watchdog *w)
{
	pthread_mutex_lock(&w->mu);
	w->done = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->thread, NULL);
	return w->fired;
}

bool th_run_bounded(ura_loop *loop, unsigned ms, int *res)
{
	struct th_watchdog w;
	int r = th_watchdog_start(&w, loop, ms);
	if (r != 0) {
		*res = -r;
		return false;
	}
	*res = ura_loop_run(loop);
	return !th_watchdog_end(&w);
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

void th_msg_text(const ura_msg *m, char *buf, size_t size)
{
	size_t n = ura_msg_len(m);
	if (n >= size)
		n = size - 1;
	memcpy(buf, ura_msg_data(m), n);
	buf[n] = '\0';
}

/* Takes fd into a new connection with its handler. On error fd is closed too. */
static int adopt_fd(ura_loop *loop, int fd, ura_event_fn fn, void *ctx, ura_conn **c)
{
	int r = ura_conn_new(loop, fd, c);
	if (r < 0) {
		close(fd);
		return r;
	}
	r = ura_conn_set_event_handler(*c, fn, ctx);
	if (r < 0)
		ura_conn_unref(*c); /* the connection owns fd now: this closes it */
	return r;
}

int th_conn_adopt(ura_loop *loop, ura_event_fn fn, void *ctx, ura_conn **c, int *peer)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	int r = adopt_fd(loop, sv[0], fn, ctx, c);
	if (r < 0) {
		close(sv[1]);
		return r;
	}
	*peer = sv[1];
	return 0;
}

int th_conn_pair(ura_loop *loop, ura_event_fn fa, void *ca, ura_conn **a, ura_event_fn fb,
		 void *cb, ura_conn **b)
{
	int peer = -1;
	int r = th_conn_adopt(loop, fa, ca, a, &peer);
	if (r < 0)
		return r;
	r = adopt_fd(loop, peer, fb, cb, b);
	if (r < 0)
		ura_conn_unref(*a);
	return r;
}

bool th_under_valgrind(void)
{
#if __has_include(<valgrind/valgrind.h>)
	return RUNNING_ON_VALGRIND != 0;
#else
	return false;
#endif
}
