/*
 * cancel suite: the cost of ura_session_invalidate_and_cancel on N live tasks.
 *
 * N tasks that would not complete by themselves (60 s timeouts, or recvs on idle
 * sockets) are put in the kernel, untimed. The timed part is from the cancel request
 * until everything is drained: every target's CQE and every cancel CQE reaped (for ura:
 * until did_become_invalid, which the contract fires only after exactly that). Small N
 * is repeated within a run (reps) so that one run is long enough to time.
 *
 * Baselines on a raw ring of the same size and setup flags:
 *   raw-per-task  one ASYNC_CANCEL per task by user_data, as many per submit as the SQ
 *                 takes: the same kernel work ura's cancel does;
 *   raw-any-all   one ASYNC_CANCEL with CANCEL_ANY|CANCEL_ALL: the least user-space work
 *                 possible, and the method the design rejects for the runtime.
 * The raw loops know how many CQEs are due and wait for all of them in one enter. That
 * is the strongest raw baseline: with DEFER_TASKRUN a wait for one CQE runs only a
 * small batch of task work per enter, so waiting for fewer would flatter ura.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench_util.h"

#define TIMEOUT_NS (60ull * 1000000000ull)
/* Raw rings: targets carry user_data 1..N; every cancel SQE carries this. */
#define CANCEL_UD (1ull << 63)
/* Socketpairs for the recv workload; more recvs than pairs share sockets. */
#define MAX_PAIRS 1000u
/* Descriptors kept free for rings, eventfds and stdio. */
#define FD_SLACK 64u
/* The kernel's limits, which ura_loop_new enforces (-EINVAL beyond them). */
#define MAX_SQ 32768u
#define MAX_CQ 65536u
/* Small N is repeated until a run cancels at least this many tasks: runs of a few
 * milliseconds are at the mercy of every other process on the machine. */
#define TASKS_PER_RUN 50000u
/* raw-any-all is repeated less where one cancel is predicted to take longer than the
 * first, and left out where it is predicted to take longer than the second. */
#define ANY_ALL_RUN_NS (200ull * 1000000ull)
#define ANY_ALL_BUDGET_NS (5ull * 1000000000ull)

enum workload { W_TIMEOUT, W_RECV, W_COUNT };
static const char *const workload_name[W_COUNT] = {
	[W_TIMEOUT] = "timeout",
	[W_RECV] = "recv",
};

struct targets {
	unsigned n;     /* live tasks per cancel */
	enum workload w;
	const int *fds; /* recv: task i reads fds[i % nfds] */
	unsigned nfds;
};

/* Every recv targets this one buffer: the peers never write, so no recv ever receives
 * data and the kernel never touches it. */
static char recv_buf[64];

struct cancel_ura {
	const struct targets *t;
	unsigned reps;       /* cancels per run */
	ura_loop *loop;
	unsigned fill_iters; /* loop iterations that move every task into the ring */
	uint64_t completed, cancelled, other;
	bool invalid;
	int final_error;
};

struct cancel_raw {
	const struct targets *t;
	unsigned reps;       /* cancels per run */
	struct io_uring *ring;
	bool any_all;
};

struct reaped {
	uint64_t targets, cancelled, other; /* target CQEs: total, -ECANCELED/-EINTR, other */
	uint64_t cancels, found, failed;    /* cancel CQEs: total, tasks they hit, errors */
};

static bool is_cancelled(int32_t res)
{
	/* The kernel reports a cancelled task with -ECANCELED, some ops with -EINTR. */
	return res == -ECANCELED || res == -EINTR;
}

/* ------------------------------------------------------------------ ura */

static void target_done(ura_session *s, ura_task t, int32_t res, uint32_t cqe_flags, void *arg)
{
	struct cancel_ura *u = arg;
	u->completed++;
	if (is_cancelled(res))
		u->cancelled++;
	else
		u->other++;
}

static void became_invalid(ura_session *s, int error, void *ctx)
{
	struct cancel_ura *u = ctx;
	u->invalid = true;
	u->final_error = error;
}

static int ura_target(struct cancel_ura *u, ura_session *s, unsigned i)
{
	if (u->t->w == W_TIMEOUT)
		return ura_timeout(s, TIMEOUT_NS, target_done, u, NULL);
	return ura_recv(s, u->t->fds[i % u->t->nfds], recv_buf, sizeof(recv_buf), 0,
			target_done, u, NULL);
}

/* One session: N tasks in the kernel, then the timed invalidate_and_cancel. */
static int ura_once(struct cancel_ura *u, struct bench_time *t)
{
	const struct ura_session_delegate d = { .did_become_invalid = became_invalid };
	ura_session *s;
	int r = ura_session_new(u->loop, &d, u, &s);
	if (r < 0)
		return r;
	u->completed = u->cancelled = u->other = 0;
	u->invalid = false;
	u->final_error = 0;
	for (unsigned i = 0; i < u->t->n && r == 0; i++)
		r = ura_target(u, s, i);
	/* Untimed: get every task into the kernel. One iteration places what the SQ takes
	 * (ura keeps an eighth of it for cancels); the rest waits in ura's backlog. */
	for (unsigned k = 0; k < u->fill_iters && r >= 0; k++)
		r = ura_loop_run_once(u->loop, false);
	if (r >= 0 && u->completed) {
		bench_warn("cancel: %llu ura tasks completed before the cancel",
			   (unsigned long long)u->completed);
		r = -EPROTO;
	}
	/* Timed, and also the cleanup after a failed submit: the session must drain. */
	struct bench_clock clk;
	bench_clock_start(&clk);
	ura_session_invalidate_and_cancel(s);
	while (!u->invalid) {
		int e = ura_loop_run_once(u->loop, true);
		if (e < 0) {
			bench_warn("cancel: ura_loop_run_once: %s", strerror(-e));
			r = e;
			break;
		}
	}
	bench_clock_stop(&clk, t);
	struct ura_session_stats st = { 0 };
	(void)ura_session_stats(s, &st);
	ura_session_unref(s);
	if (r < 0)
		return r;
	/* cancel_ok == N also proves every task was in the kernel when the clock started:
	 * one still in ura's backlog would have completed without a cancel SQE. */
	if (u->completed != u->t->n || u->other || u->final_error || st.cancelled != u->t->n ||
	    st.cancel_ok != u->t->n) {
		bench_warn("cancel: ura: %llu of %u tasks had their terminal call (%llu not "
			   "cancelled), final error %d, stats: cancelled %llu, cancel_ok %llu",
			   (unsigned long long)u->completed, u->t->n,
			   (unsigned long long)u->other, u->final_error,
			   (unsigned long long)st.cancelled, (unsigned long long)st.cancel_ok);
		return -EPROTO;
	}
	return 0;
}

static int ura_run(void *ctx, struct bench_time *t)
{
	struct cancel_ura *u = ctx;
	for (unsigned i = 0; i < u->reps; i++) {
		int r = ura_once(u, t);
		if (r < 0)
			return r;
	}
	return 0;
}

/* ------------------------------------------------------------------ raw */

static void raw_target(const struct targets *t, struct io_uring_sqe *q, unsigned i)
{
	/* The kernel copies the timespec when it prepares the SQE. */
	static struct __kernel_timespec ts = { .tv_sec = TIMEOUT_NS / 1000000000ull };
	if (t->w == W_TIMEOUT)
		io_uring_prep_timeout(q, &ts, 0, 0);
	else
		io_uring_prep_recv(q, t->fds[i % t->nfds], recv_buf, sizeof(recv_buf), 0);
	io_uring_sqe_set_data64(q, (uint64_t)i + 1);
}

/* Untimed: submits all targets, filling the SQ as often as needed. */
static int raw_arm(struct cancel_raw *x)
{
	struct io_uring *ring = x->ring;
	for (unsigned i = 0; i < x->t->n;) {
		struct io_uring_sqe *q = io_uring_get_sqe(ring);
		if (!q) {
			int r = io_uring_submit(ring);
			if (r < 0)
				return r;
			continue;
		}
		raw_target(x->t, q, i++);
	}
	int r = io_uring_submit(ring);
	if (r < 0)
		return r;
	if (io_uring_cq_ready(ring)) {
		bench_warn("cancel: %u raw targets completed before the cancel",
			   io_uring_cq_ready(ring));
		return -EPROTO;
	}
	return 0;
}

static void raw_reap(struct io_uring *ring, bool any_all, struct reaped *c)
{
	unsigned head, seen = 0;
	struct io_uring_cqe *cqe;
	io_uring_for_each_cqe(ring, head, cqe) {
		seen++;
		if (cqe->user_data == CANCEL_UD) {
			c->cancels++;
			if (cqe->res < 0)
				c->failed++;
			else /* CANCEL_ALL reports how many it cancelled; per task, 0 is one */
				c->found += any_all ? (uint64_t)cqe->res : 1;
		} else {
			c->targets++;
			if (is_cancelled(cqe->res))
				c->cancelled++;
			else
				c->other++;
		}
	}
	io_uring_cq_advance(ring, seen);
}

/* Submits what is queued and waits for `due` CQEs (the kernel caps it at the CQ size). */
static int raw_wait(struct io_uring *ring, uint64_t due)
{
	int r = io_uring_submit_and_wait(ring, due > MAX_CQ ? MAX_CQ : (unsigned)due);
	/* EINTR: a signal; EBUSY/EAGAIN: CQ overflow or kernel memory, reap and retry. */
	if (r < 0 && r != -EINTR && r != -EBUSY && r != -EAGAIN)
		return r;
	return 0;
}

/* One cancel of N armed targets, timed; reaps until every due CQE is seen. */
static int raw_once(struct cancel_raw *x, struct bench_time *t)
{
	struct io_uring *ring = x->ring;
	const unsigned n = x->t->n;
	int r = raw_arm(x);
	if (r < 0)
		return r;
	struct reaped c = { 0 };
	struct bench_clock clk;
	bench_clock_start(&clk);
	if (x->any_all) {
		struct io_uring_sqe *q = io_uring_get_sqe(ring); /* the SQ is empty */
		io_uring_prep_cancel64(q, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
		io_uring_sqe_set_data64(q, CANCEL_UD);
		/* Due: every target, and the cancel itself. */
		while (r == 0 && (c.targets < n || c.cancels < 1)) {
			r = raw_wait(ring, (uint64_t)n + 1 - c.targets - c.cancels);
			raw_reap(ring, true, &c);
		}
	} else {
		unsigned next = 0;
		while (r == 0 && (c.targets < n || c.cancels < n)) {
			struct io_uring_sqe *q;
			while (next < n && (q = io_uring_get_sqe(ring))) {
				io_uring_prep_cancel64(q, (uint64_t)next + 1, 0);
				io_uring_sqe_set_data64(q, CANCEL_UD);
				next++;
			}
			/* Due: each cancel submitted so far, and the target it hits. */
			r = raw_wait(ring, 2 * (uint64_t)next - c.targets - c.cancels);
			raw_reap(ring, false, &c);
		}
	}
	bench_clock_stop(&clk, t);
	if (r < 0)
		return r;
	if (c.cancelled != n || c.other || c.failed || c.found != n) {
		bench_warn("cancel: raw %s: %llu of %u targets cancelled, %llu other results, "
			   "%llu failed cancels, %llu tasks found",
			   x->any_all ? "any-all" : "per-task", (unsigned long long)c.cancelled,
			   n, (unsigned long long)c.other, (unsigned long long)c.failed,
			   (unsigned long long)c.found);
		return -EPROTO;
	}
	return 0;
}

static int raw_run(void *ctx, struct bench_time *t)
{
	struct cancel_raw *x = ctx;
	for (unsigned i = 0; i < x->reps; i++) {
		int r = raw_once(x, t);
		if (r < 0)
			return r;
	}
	return 0;
}

/* --------------------------------------------------------------- driver */

static unsigned pow2_at_least(unsigned v)
{
	unsigned p = 1;
	while (p < v)
		p <<= 1;
	return p;
}

/* Opens up to MAX_PAIRS idle socketpairs within RLIMIT_NOFILE (raising the soft limit
 * to the hard one first). rx[i] is read by the recvs; peer[i] stays open and silent so
 * those recvs wait. Returns the number of pairs opened. */
static unsigned open_pairs(int *rx, int *peer)
{
	struct rlimit rl = { 0 };
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	unsigned want = MAX_PAIRS;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 2 * MAX_PAIRS + FD_SLACK)
		want = rl.rlim_cur > FD_SLACK ? (unsigned)(rl.rlim_cur - FD_SLACK) / 2 : 0;
	unsigned n = 0;
	for (; n < want; n++) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
			bench_warn("cancel: socketpair %u: %s", n, strerror(errno));
			break;
		}
		rx[n] = sv[0];
		peer[n] = sv[1];
	}
	if (n < MAX_PAIRS)
		bench_warn("cancel: only %u socketpairs (RLIMIT_NOFILE %llu): more recvs per socket",
			   n, (unsigned long long)rl.rlim_cur);
	return n;
}

/* What the previous N measured for raw-any-all, to predict the next one. */
struct any_all_seen {
	unsigned n;
	double ns_per_task;
};

/* raw-any-all's kernel cost per task can grow with N (a scan per cancelled request);
 * assuming linear growth per task, one cancel of n tasks takes this long (0: unknown). */
static double any_all_predict_ns(const struct any_all_seen *seen, unsigned n)
{
	if (!seen->n)
		return 0;
	return seen->ns_per_task * ((double)n / seen->n) * n;
}

/* Everything the workloads of one N share: the rings' contenders and the output buffer. */
struct cancel_setup {
	const struct bench_opts *opts;
	unsigned n;
	unsigned reps; /* cancels per run for ura and raw-per-task */
	const int *rx;
	unsigned npairs;
	struct cancel_ura *u;
	struct cancel_raw *per_task, *any_all;
	struct bench_contender *c;
	char ring_note[160];
	struct bench_time *t;
};

/* Measures one workload; updates seen with raw-any-all's result. */
static int measure_workload(struct cancel_setup *m, enum workload w, struct any_all_seen *seen)
{
	struct targets t = { .n = m->n, .w = w, .fds = m->rx, .nfds = m->npairs };
	char note[320], param[48], label[64];
	if (w == W_RECV && m->npairs == 0) {
		bench_warn("cancel: no socketpairs: recv workload skipped");
		return 0;
	}
	m->u->t = m->per_task->t = m->any_all->t = &t;
	snprintf(param, sizeof(param), "N=%u %s", m->n, workload_name[w]);
	snprintf(label, sizeof(label), "cancel %s", param);
	int len = snprintf(note, sizeof(note), "%s; cancels per run: %u", m->ring_note,
			   m->reps);
	if (w == W_RECV) {
		unsigned used = m->npairs < m->n ? m->npairs : m->n;
		len += snprintf(note + len, sizeof(note) - (size_t)len,
				"; %u AF_UNIX socketpairs, recvs per socket: %u", used,
				(m->n + used - 1) / used);
	}

	/* Plan raw-any-all from what the previous N showed. */
	size_t nc = 3;
	double predicted = any_all_predict_ns(seen, m->n);
	m->any_all->reps = m->reps;
	if (predicted > ANY_ALL_BUDGET_NS) {
		nc = 2;
		snprintf(note + len, sizeof(note) - (size_t)len,
			 "; raw-any-all left out: ~%.0f s per cancel predicted from %.0f ns/task "
			 "at N=%u", predicted / 1e9, seen->ns_per_task, seen->n);
		bench_warn("cancel %s: raw-any-all left out (~%.0f s per cancel predicted)",
			   param, predicted / 1e9);
	} else if (predicted * m->reps > ANY_ALL_RUN_NS) {
		m->any_all->reps = predicted > ANY_ALL_RUN_NS ? 1
							   : (unsigned)(ANY_ALL_RUN_NS / predicted);
		snprintf(note + len, sizeof(note) - (size_t)len, "; raw-any-all: %u per run",
			 m->any_all->reps);
	}
	m->c[2].ops = (uint64_t)m->n * m->any_all->reps;

	int r = bench_rounds(m->c, nc, m->opts->rounds, label, m->t);
	if (r < 0)
		return r;
	if (nc == 3) {
		seen->n = m->n;
		seen->ns_per_task = bench_median_per_op(m->t + 2 * (size_t)m->opts->rounds,
							m->opts->rounds, m->c[2].ops);
	}
	return bench_record("cancel", param, m->c, nc, m->opts->rounds, m->t, note);
}

/* Measures one N on both workloads with a fresh ura loop and raw ring of equal size. */
static int measure_n(const struct bench_opts *opts, unsigned n, const int *rx, unsigned npairs,
		     struct any_all_seen seen[W_COUNT], struct bench_time *t)
{
	/* SQ: all N targets in one fill where the maximum allows (plus ura's cancel
	 * headroom); CQ: N target CQEs plus N cancel CQEs, up to the kernel's 65536 (ura
	 * refuses more). Where the CQ is smaller than that, both sides reap while
	 * cancelling, and may meet CQ overflow. */
	unsigned sq = pow2_at_least(n + n / 8 + 64);
	sq = sq > MAX_SQ ? MAX_SQ : sq;
	unsigned cq = pow2_at_least(2 * n + 64);
	cq = cq < 2 * sq ? 2 * sq : cq > MAX_CQ ? MAX_CQ : cq;
	unsigned reps = n < TASKS_PER_RUN ? TASKS_PER_RUN / n : 1;
	struct ura_loop_config cfg = { .sq_entries = sq, .cq_entries = cq };
	struct io_uring ring;
	unsigned raw_flags;
	/* ura places at most sq - sq/8 - 1 tasks per iteration (headroom, wakeup read). */
	struct cancel_ura u = { .reps = reps, .fill_iters = n / (sq - sq / 8 - 1) + 2 };
	struct cancel_raw per_task = { .reps = reps, .ring = &ring, .any_all = false };
	struct cancel_raw any_all = { .reps = reps, .ring = &ring, .any_all = true };
	struct bench_contender c[] = {
		{ "ura", ura_run, &u, (uint64_t)n * reps },
		{ "raw-per-task", raw_run, &per_task, (uint64_t)n * reps },
		{ "raw-any-all", raw_run, &any_all, (uint64_t)n * reps },
	};
	struct cancel_setup m = {
		.opts = opts, .n = n, .reps = reps, .rx = rx,
		.npairs = npairs, .u = &u, .per_task = &per_task, .any_all = &any_all, .c = c,
		.t = t,
	};

	int r = ura_loop_new(&cfg, &u.loop);
	if (r < 0) {
		bench_warn("cancel: ura_loop_new(sq %u, cq %u): %s", sq, cq, strerror(-r));
		return r;
	}
	r = bench_ring_init(&ring, sq, cq, &raw_flags);
	if (r < 0) {
		bench_warn("cancel: raw ring setup (sq %u, cq %u): %s", sq, cq, strerror(-r));
		goto out_loop;
	}
	bench_ring_note(m.ring_note, sizeof(m.ring_note), u.loop, &ring, raw_flags);
	for (int w = 0; w < W_COUNT && r == 0; w++)
		r = measure_workload(&m, (enum workload)w, &seen[w]);
	io_uring_queue_exit(&ring);
out_loop:
	ura_loop_free(u.loop);
	return r;
}

int bench_cancel(const struct bench_opts *opts)
{
	static const unsigned sizes[] = { 1000, 10000, 100000 };
	/* --quick leaves out the largest N, which dominates the suite's time. */
	size_t nsizes = opts->quick ? 2 : sizeof(sizes) / sizeof(sizes[0]);
	int rx[MAX_PAIRS], peer[MAX_PAIRS];
	struct any_all_seen seen[W_COUNT] = { { 0 } };
	struct bench_time *t = calloc(3 * (size_t)opts->rounds, sizeof(*t));
	if (!t)
		return -ENOMEM;
	unsigned npairs = open_pairs(rx, peer);
	int r = 0;
	for (size_t i = 0; i < nsizes && r == 0; i++)
		r = measure_n(opts, sizes[i], rx, npairs, seen, t);
	bench_print_table("cancel");
	for (unsigned i = 0; i < npairs; i++) {
		close(rx[i]);
		close(peer[i]);
	}
	free(t);
	return r;
}
