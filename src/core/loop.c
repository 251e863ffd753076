/*
 * The loop: ring setup, the run loop, the completion reaper, and the cross-thread inbox
 * with its wakeup.
 *
 * One iteration (ura_loop_run_once):
 *   1. run a slice of the inbox's commands (submits, cancels, posts, session notices
 *      and requests, connection calls), at most four SQs' worth;
 *   2. run the loop thread's deferred work (cancelled-before-submission tasks,
 *      cancel-retry checks);
 *   3. move backlogged cancels, then tasks, into the SQ; resend cancels lost to a full
 *      SQ with no memory;
 *   4. one io_uring_enter: submit everything and wait (or only reap) completions;
 *   5. reap CQEs in batches: task callbacks; runtime tags (cancel results, retry timers,
 *      the wakeup read) through the table of tag handlers.
 * Callbacks that submit from the loop thread write straight into the SQ; the next
 * iteration's single enter submits them.
 *
 * Wakeup: an eventfd with a read always armed in the ring (user_data URA__TAG_WAKE).
 * A thread that pushes onto an empty inbox writes the eventfd (see inbox.c for why that
 * is enough), but only while the loop sleeps: a busy loop takes the inbox anyway, and the
 * write is a syscall per push when the loop keeps the inbox empty. The loop stores
 * `sleeping`, then looks at the inbox once more before it blocks; a producer pushes,
 * then reads `sleeping`. All four are seq_cst, so they fall in one total order and at
 * least one side sees the other's store: the loop finds the command and does not block,
 * or the producer finds it sleeping and writes the eventfd.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"

#include "bufring.h"
#include "cancel.h"
#include "enter.h"
#include "loop.h"
#include "session.h"
#include "task.h"

#define DEFAULT_SQ 256u
/* Tasks leave an eighth of the SQ to cancels. 8 is the smallest size whose eighth is a
 * whole entry; below it the headroom would have to be rounded up to one entry, which
 * leaves a 1-entry SQ no room for any task (the loop spun without placing one) and
 * takes up to half of the others. */
#define MIN_SQ 8u
#define MAX_SQ 32768u
#define MAX_CQ 65536u /* the kernel's IORING_MAX_CQ_ENTRIES */
/* Tasks other threads may have queued (ura_loop_config.max_queued): a command and a slot
 * each, about 200 bytes, so the default bounds them to about 13 MiB. */
#define DEFAULT_MAX_QUEUED 65536u
#define MAX_MAX_QUEUED (1u << 24)
/* Commands run per iteration, in SQs' worth: more could not reach the ring in this
 * iteration anyway, and completions must not wait behind a flood of commands. */
#define CMD_SLICE_SQS 4u
#define FREE_DRAIN_NS (5ull * 1000 * 1000 * 1000)

/* ------------------------------------------------------------- setup */

static int validate_config(const struct ura_loop_config *cfg, unsigned *sq, unsigned *cq,
			   unsigned *max_queued)
{
	*sq = DEFAULT_SQ;
	*cq = 0;
	*max_queued = DEFAULT_MAX_QUEUED;
	if (!cfg)
		return 0;
	for (size_t i = 0; i < sizeof(cfg->reserved) / sizeof(cfg->reserved[0]); i++)
		if (cfg->reserved[i])
			return -EINVAL;
	if (cfg->flags & ~(uint32_t)(URA_LOOP_NO_DEFER_TASKRUN | URA_LOOP_NO_COOP_TASKRUN))
		return -EINVAL;
	if ((cfg->sq_entries && cfg->sq_entries < MIN_SQ) || cfg->sq_entries > MAX_SQ ||
	    cfg->cq_entries > MAX_CQ || cfg->max_queued > MAX_MAX_QUEUED)
		return -EINVAL;
	if (cfg->max_queued)
		*max_queued = cfg->max_queued;
	if (cfg->sq_entries)
		*sq = cfg->sq_entries;
	if (cfg->cq_entries) {
		if (cfg->cq_entries < *sq)
			return -EINVAL;
		*cq = cfg->cq_entries;
	}
	return 0;
}

/*
 * Registers the ring's fd with the kernel (5.18+), so that io_uring_enter finds the ring
 * by index instead of looking the fd up and taking a file reference on every call: a
 * few percent of each enter. The registration belongs to the thread that makes it,
 * which is the loop thread, the only thread that enters this ring (SINGLE_ISSUER).
 * Older kernels refuse it and keep the plain fd; nothing else changes.
 */
static void register_ring_fd(ura_loop *loop)
{
	if (io_uring_register_ring_fd(&loop->ring) == 1)
		loop->features |= URA_FEATURE_REGISTERED_RING;
}

/* Tries the best setup flags first and drops the ones this kernel refuses. */
static int ring_init(ura_loop *loop, unsigned sq, unsigned cq, uint32_t cfg_flags)
{
	static const struct {
		uint32_t setup, feature, disabled_by;
	} wanted[] = {
		{ IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
		  URA_FEATURE_SINGLE_ISSUER | URA_FEATURE_DEFER_TASKRUN, URA_LOOP_NO_DEFER_TASKRUN },
		{ IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG, URA_FEATURE_COOP_TASKRUN,
		  URA_LOOP_NO_COOP_TASKRUN },
		{ IORING_SETUP_SUBMIT_ALL, URA_FEATURE_SUBMIT_ALL, 0 },
	};
	enum { N = sizeof(wanted) / sizeof(wanted[0]) };
	bool use[N];
	for (int i = 0; i < N; i++)
		use[i] = !(cfg_flags & wanted[i].disabled_by);
	/* DEFER_TASKRUN and COOP_TASKRUN are alternatives for when task work runs. */
	if (use[0])
		use[1] = false;
	for (;;) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CLAMP;
		if (cq) {
			p.flags |= IORING_SETUP_CQSIZE;
			p.cq_entries = cq;
		}
		uint32_t features = 0;
		for (int i = 0; i < N; i++)
			if (use[i]) {
				p.flags |= wanted[i].setup;
				features |= wanted[i].feature;
			}
		int r = io_uring_queue_init_params(sq, &loop->ring, &p);
		if (r == 0) {
			loop->features = features |
				((p.features & IORING_FEAT_NODROP) ? URA_FEATURE_NODROP : 0);
			loop->sq_entries = p.sq_entries;
			loop->cq_entries = p.cq_entries;
			register_ring_fd(loop);
			return 0;
		}
		if (r != -EINVAL)
			return r;
		/* Drop the newest feature still in use, or fall back from DEFER to COOP. */
		int i = N - 1;
		while (i >= 0 && !use[i])
			i--;
		if (i < 0)
			return r;
		use[i] = false;
		if (i == 0 && !(cfg_flags & URA_LOOP_NO_COOP_TASKRUN))
			use[1] = true;
	}
}

static void arm_wake(ura_loop *loop)
{
	if (loop->wake_armed || loop->freeing_ring)
		return;
	struct io_uring_sqe *q = ura__loop_cancel_sqe(loop);
	if (!q)
		return; /* retried next iteration */
	io_uring_prep_read(q, loop->wake_fd, &loop->wake_buf, sizeof(loop->wake_buf), 0);
	io_uring_sqe_set_data64(q, URA__TAG_WAKE);
	loop->wake_armed = true;
}

__attribute__((tls_model("initial-exec"))) _Thread_local char ura__thread_mark;

int ura_loop_new(const struct ura_loop_config *cfg, ura_loop **out)
{
	if (!out)
		return -EINVAL;
	unsigned sq, cq, max_queued;
	int r = validate_config(cfg, &sq, &cq, &max_queued);
	if (r < 0)
		return r;
	/* The tag in every handle, unique among live loops: handles of two live loops
	 * never meet. -EMFILE past URA__MAX_TAG live loops. */
	int tag = ura__registry_tag_get();
	if (tag < 0)
		return tag;
	_Static_assert(sizeof(struct ura_loop) <= 4096, "the loop object must fit one page");
	ura_loop *loop = ura__zalloc_aligned(sizeof(*loop), ura__one_page_align(sizeof(*loop)));
	if (!loop) {
		r = -ENOMEM;
		goto err_tag;
	}
	atomic_init(&loop->refs, 1); /* the loop's own, dropped by ura_loop_free */
	loop->max_queued = max_queued;
	loop->owner = pthread_self();
	loop->owner_mark = &ura__thread_mark;
	r = ura__registry_init(&loop->registry, (uint32_t)tag);
	if (r < 0)
		goto err_loop;
	pthread_mutex_init(&loop->sessions_lock, NULL);
	ura__list_init(&loop->sessions);
	loop->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (loop->wake_fd < 0) {
		r = -errno;
		goto err_registry;
	}
	r = ring_init(loop, sq, cq ? cq : sq * 8, cfg ? cfg->flags : 0);
	if (r < 0)
		goto err_fd;
	/* Cancels may always use the last eighth of the SQ (at least one entry). */
	loop->cancel_headroom = loop->sq_entries / 8 ? loop->sq_entries / 8 : 1;
	loop->cmd_slice = loop->sq_entries * CMD_SLICE_SQS;
	r = ura__session_shared_new(loop, &loop->shared);
	if (r < 0)
		goto err_ring;
	arm_wake(loop);
	*out = loop;
	return 0;
err_ring:
	io_uring_queue_exit(&loop->ring);
err_fd:
	close(loop->wake_fd);
err_registry:
	pthread_mutex_destroy(&loop->sessions_lock);
	ura__registry_destroy(&loop->registry);
err_loop:
	ura__free(loop);
err_tag:
	ura__registry_tag_put((uint32_t)tag);
	return r;
}

#ifdef URA_CHECKS
void ura__loop_thread_violation(const char *fn)
{
	fprintf(stderr, "ura: %s called off its loop's thread (see ura.h: \"loop thread\")\n",
		fn);
	abort();
}
#endif

struct io_uring *ura_loop_ring(ura_loop *loop)
{
	if (!loop)
		return NULL;
	URA__ASSERT_LOOP_THREAD(loop);
	return &loop->ring;
}

uint32_t ura_loop_features(ura_loop *loop)
{
	return loop ? loop->features : 0;
}

/* --------------------------------------------------------- cross-thread */

void ura__loop_wake(ura_loop *loop)
{
	uint64_t one = 1;
	/* EAGAIN means the counter is already non-zero: a wakeup is pending anyway. */
	ssize_t n = write(loop->wake_fd, &one, sizeof(one));
	(void)n;
}

void ura__loop_send(ura_loop *loop, struct ura__cmd *cmd)
{
	if (!ura__inbox_push(&loop->inbox, &cmd->node) || ura__on_loop(loop))
		return; /* an earlier push has the wakeup in hand, or this is the loop */
	/* seq_cst: the load half of the producer's side (see "Wakeup" above). */
	if (atomic_load_explicit(&loop->sleeping, memory_order_seq_cst))
		ura__loop_wake(loop);
}

int ura__loop_defer(ura_loop *loop, uint8_t kind, ura_task t, ura_session *s)
{
	struct ura__deferred d = { .kind = kind, .task = t, .session = s };
	return ura__vec_push(&loop->deferred, &d, sizeof(d));
}

void ura_loop_stop(ura_loop *loop)
{
	if (!loop)
		return;
	/* Release: pairs with the loop's acquire load; nothing else to order. */
	atomic_store_explicit(&loop->stop, true, memory_order_release);
	if (!ura__on_loop(loop) && ura__loop_enter(loop)) {
		ura__loop_wake(loop);
		ura__loop_leave(loop);
	}
}

/* ura_loop_post's command: allocated by the poster, freed by its run. */
struct post_cmd {
	struct ura__cmd cmd;
	void (*fn)(void *arg);
	void *arg;
};

static void run_post(struct ura__cmd *cmd, bool discard)
{
	struct post_cmd *p = (struct post_cmd *)cmd;
	void (*fn)(void *) = p->fn;
	void *arg = p->arg;
	ura__free(p);
	if (!discard)
		fn(arg);
}

int ura_loop_post(ura_loop *loop, void (*fn)(void *arg), void *arg)
{
	if (!loop || !fn)
		return -EINVAL;
	bool on_loop = ura__on_loop(loop);
	/* On the loop thread too: once the gate is shut the inbox is never run again.
	 * Relaxed: only this thread shuts it. */
	if (on_loop ? (atomic_load_explicit(&loop->gate, memory_order_relaxed) & URA__GATE_CLOSED)
		    : !ura__loop_enter(loop))
		return -ESHUTDOWN;
	int r = -ENOMEM;
	struct post_cmd *p = ura__malloc(sizeof(*p));
	if (p) {
		p->cmd.run = run_post;
		p->fn = fn;
		p->arg = arg;
		ura__loop_send(loop, &p->cmd);
		r = 0;
	}
	if (!on_loop)
		ura__loop_leave(loop);
	return r;
}

struct io_uring_sqe *ura__loop_task_sqe(ura_loop *loop)
{
	return ura__sq_room(loop) ? io_uring_get_sqe(&loop->ring) : NULL;
}

struct io_uring_sqe *ura__loop_cancel_sqe(ura_loop *loop)
{
	return io_uring_get_sqe(&loop->ring);
}

/* ------------------------------------------------------------ iteration */

/*
 * Runs one slice of commands: those left from the last slice, else what the inbox holds,
 * at most cmd_slice of them; the rest wait, in order, for the next iteration, so that a
 * flood of commands cannot keep completions from being reaped.
 */
static unsigned run_commands(ura_loop *loop)
{
	unsigned n = 0;
	struct ura__inbox_node *node = loop->inbox_rest;
	if (!node)
		node = ura__inbox_take(&loop->inbox);
	loop->inbox_rest = NULL;
	while (node) {
		if (n == loop->cmd_slice) {
			loop->inbox_rest = node;
			break;
		}
		struct ura__cmd *cmd = (struct ura__cmd *)node;
		node = node->next; /* first: the handler may free or requeue cmd */
		n++;
		cmd->run(cmd, false);
	}
	return n;
}

static bool deferred_pending(ura_loop *loop)
{
	return loop->deferred.len;
}

static unsigned run_deferred(ura_loop *loop)
{
	/* Swap first: work deferred while these run waits for the next drain. */
	struct ura__vec batch = loop->deferred;
	loop->deferred = loop->deferred_alt;
	loop->deferred.len = 0;
	for (uint32_t i = 0; i < batch.len; i++) {
		struct ura__deferred *d = (struct ura__deferred *)batch.items + i;
		if (d->kind == URA__DEFER_CANCELLED) {
			ura__cancel_deferred(loop, d->task);
		} else { /* URA__DEFER_RETRY_CHECK */
			ura__cancel_retry_check(d->session);
			ura_session_unref(d->session);
		}
	}
	unsigned n = batch.len;
	batch.len = 0;
	loop->deferred_alt = batch;
	return n;
}

/* ------------------------------------------------------------- tags */

static void wake_cqe(ura_loop *loop, uint64_t payload, int32_t res)
{
	(void)payload, (void)res;
	loop->wake_armed = false;
	arm_wake(loop);
}

static void cancel_cqe(ura_loop *loop, uint64_t payload, int32_t res)
{
	(void)loop;
	ura__cancel_reaped((ura_session *)(uintptr_t)payload, res);
}

static void retry_cqe(ura_loop *loop, uint64_t payload, int32_t res)
{
	(void)loop, (void)res;
	ura__cancel_retry_fired((ura_session *)(uintptr_t)payload);
}

static void ignore_cqe(ura_loop *loop, uint64_t payload, int32_t res)
{
	(void)loop, (void)payload, (void)res;
}

/* The handler of each runtime tag kind (loop.h): every kind has one. */
static void (*const tag_handlers[])(ura_loop *loop, uint64_t payload, int32_t res) = {
	[URA__TAG_KIND_NONE] = ignore_cqe,
	[URA__TAG_KIND_WAKE] = wake_cqe,
	[URA__TAG_KIND_WAKE_CANCEL] = ignore_cqe,
	[URA__TAG_KIND_CANCEL] = cancel_cqe,
	[URA__TAG_KIND_RETRY] = retry_cqe,
	[URA__TAG_KIND_IGNORE] = ignore_cqe,
};
_Static_assert(sizeof(tag_handlers) / sizeof(tag_handlers[0]) == URA__TAG_KINDS,
	       "every runtime tag kind needs a handler in tag_handlers");

static void internal_cqe(ura_loop *loop, uint64_t user_data, int32_t res)
{
	tag_handlers[ura__tag_kind(user_data)](loop, user_data & URA__TAG_PAYLOAD_MASK, res);
}

/*
 * Reaps every CQE there is. Each entry is read into registers before its callback runs,
 * and the CQ head is moved once per run of entries, after their callbacks: one store to
 * the shared ring per run rather than per CQE. Entries not yet released stay reserved.
 * With DEFER_TASKRUN the kernel posts completions only inside io_uring_enter, so this
 * costs nothing. Without it (COOP or plain rings) a completion posted while callbacks
 * run finds fewer free entries and may go to the NODROP overflow list, which the next
 * enter flushes; a multishot request whose extra CQE overflows is ended by the kernel
 * and reports that in its last CQE (no IORING_CQE_F_MORE), as with any overflow. The
 * ring has no CQE32 (ring_init does not ask for it), so an entry is one array element.
 */
URA__HOT static unsigned reap(ura_loop *loop)
{
	struct io_uring_cq *cq = &loop->ring.cq;
	unsigned head = *cq->khead; /* only this thread moves the head */
	unsigned total = 0;
	for (;;) {
		/* Acquire: pairs with the kernel's release of the tail, so the entries
		 * before it are fully written when we read them. */
		unsigned tail = io_uring_smp_load_acquire(cq->ktail);
		if (head == tail)
			break;
		total += tail - head;
		do {
			const struct io_uring_cqe *cqe = &cq->cqes[head++ & cq->ring_mask];
			uint64_t data = cqe->user_data;
			int32_t res = cqe->res;
			uint32_t flags = cqe->flags;
			if (data & URA__TAG_BIT)
				internal_cqe(loop, data, res);
			else
				ura__task_cqe(loop, data, res, flags);
		} while (head != tail);
		/* Release: our reads of the entries happen before the kernel may reuse
		 * them. */
		io_uring_smp_store_release(cq->khead, head);
	}
	return total;
}

URA__HOT static bool must_not_block(ura_loop *loop)
{
	/* Backlogged work must not wait behind tasks that may never complete: this enter
	 * empties the SQ and the next iteration moves the backlog into it. */
	return loop->deferred.len || ura__loop_has_commands(loop) || ura__loop_backlogged(loop) ||
	       loop->cancels_lost ||
	       atomic_load_explicit(&loop->stop, memory_order_acquire) ||
	       io_uring_cq_has_overflow(&loop->ring) || io_uring_cq_ready(&loop->ring);
}

/*
 * How many completions a blocking enter may wait for. At least one; more when cancels are
 * in the kernel: each produces a CQE promptly, and waiting for all of them in one enter
 * lets the kernel run their task work in one go (with DEFER_TASKRUN it otherwise runs a
 * bounded batch, about 20 items, per enter). Capped at half the CQ so the wait can
 * always be met.
 */
static unsigned wait_count(ura_loop *loop)
{
	uint64_t queued = loop->cancel_backlog.len - loop->cancel_backlog_head;
	uint64_t due = loop->cancels_in_flight > queued ? loop->cancels_in_flight - queued : 0;
	uint64_t cap = loop->cq_entries / 2 ? loop->cq_entries / 2 : 1;
	if (due > cap)
		due = cap;
	return due > 1 ? (unsigned)due : 1;
}

URA__HOT static int enter(ura_loop *loop, bool wait, const struct __kernel_timespec *timeout)
{
	int r = ura__fault(URA__FAULT_ENTER); /* a test's -EBUSY, -EAGAIN or -EINTR */
	if (r) {
		/* as if the kernel had refused: nothing submitted, nothing waited for */
	} else if (wait && timeout) {
		struct io_uring_cqe *cqe;
		r = io_uring_submit_and_wait_timeout(&loop->ring, &cqe, 1,
						     (struct __kernel_timespec *)timeout, NULL);
		if (r == -ETIME)
			r = 0;
	} else {
		r = ura__ring_enter(&loop->ring, wait ? wait_count(loop) : 0,
				    loop->features & URA_FEATURE_REGISTERED_RING);
	}
	if (r >= 0)
		return 0;
	switch (r) {
	case -EINTR:  /* a signal: just go round again */
	case -EAGAIN: /* kernel resources: SQEs stay queued, retried next iteration */
	case -EBUSY:  /* CQ overflow backlog: reap first, SQEs stay queued */
	case -ETIME:
		return 0;
	default:
		return r;
	}
}

URA__HOT static int iterate(ura_loop *loop, bool wait, const struct __kernel_timespec *timeout)
{
	if (loop->running)
		return -EBUSY; /* run/run_once called from inside a callback */
	loop->running++;
	/* Each step is called only when it has work: the steps live on other text pages,
	 * and an idle step's page would cost a TLB miss per iteration (see enter.h). */
	unsigned handled = 0;
	if (ura__loop_has_commands(loop))
		handled += run_commands(loop);
	if (deferred_pending(loop))
		handled += run_deferred(loop);
	if (ura__loop_backlogged(loop)) {
		ura__cancel_drain_backlog(loop);
		ura__task_drain_backlog(loop);
	}
	if (loop->cancels_lost && ura__sq_room(loop))
		ura__cancel_resend_lost(loop);
	arm_wake(loop);
	/* Having run commands, an iteration normally returns without blocking; but cancels
	 * it just issued complete promptly, so waiting for them now saves a round trip. */
	bool block = wait && (!handled || wait_count(loop) > 1) && !must_not_block(loop);
	bool announced = block;
	if (block) {
		/* seq_cst: the store half of the loop's side (see "Wakeup"). */
		atomic_store_explicit(&loop->sleeping, true, memory_order_seq_cst);
		block = ura__inbox_empty_before_sleep(&loop->inbox);
	}
	int r = enter(loop, block, timeout);
	if (announced) /* Relaxed: only producers' wakeup decisions read it. */
		atomic_store_explicit(&loop->sleeping, false, memory_order_relaxed);
	if (r == 0)
		handled += reap(loop);
	loop->running--;
	return r < 0 ? r : (int)handled;
}

URA__HOT int ura_loop_run_once(ura_loop *loop, bool wait)
{
	if (!loop)
		return -EINVAL;
	URA__ASSERT_LOOP_THREAD(loop);
	return iterate(loop, wait, NULL);
}

static bool has_work(ura_loop *loop)
{
	return loop->live_tasks || loop->cancels_in_flight || loop->retry_timers ||
	       loop->active_handles || loop->invalidating || loop->deferred.len ||
	       ura__loop_has_commands(loop) ||
	       loop->backlog.len || loop->cancel_backlog.len;
}

int ura_loop_run(ura_loop *loop)
{
	if (!loop)
		return -EINVAL;
	URA__ASSERT_LOOP_THREAD(loop);
	if (loop->running)
		return -EBUSY; /* inside a callback: also with no work left, and stop is kept */
	int r = 0;
	while (!atomic_load_explicit(&loop->stop, memory_order_acquire) && has_work(loop)) {
		r = iterate(loop, true, NULL);
		if (r < 0)
			break;
		r = 0;
	}
	atomic_store_explicit(&loop->stop, false, memory_order_relaxed);
	return r;
}

/* ------------------------------------------------------------ lifetime */

/*
 * Lifetime. Other threads reach the loop through what they hold (a session, connection
 * or listener), and may call in at any time, also while ura_loop_free runs. Two things
 * make that safe:
 *   - The loop object outlives every such holder: each holds a reference (loop->refs),
 *     so a caller can always read s->loop's gate, owner and flags.
 *   - What ura_loop_free releases (ring, registry, inbox, wakeup fd) is used by other
 *     threads only between ura__loop_enter and ura__loop_leave. ura_loop_free first
 *     ends every session and connection, then closes the gate (fetch_or) and waits for
 *     the callers inside to leave. A caller whose increment comes before the close in
 *     the gate's order is seen by the wait and is waited for; one whose increment comes
 *     after it reads the CLOSED bit and touches nothing. Callers stay inside for a
 *     bounded time (no call blocks inside the gate), so the wait ends.
 */
void ura__loop_ref(ura_loop *loop)
{
	/* Relaxed: the caller holds a reference already (or is the loop's creator). */
	atomic_fetch_add_explicit(&loop->refs, 1, memory_order_relaxed);
}

void ura__loop_unref(ura_loop *loop)
{
	/* acq_rel: the last unref sees every other holder's accesses before the free. */
	if (atomic_fetch_sub_explicit(&loop->refs, 1, memory_order_acq_rel) == 1)
		ura__free(loop);
}

/* Shuts the gate and waits until no other thread is inside a call. Loop thread. */
static void close_gate(ura_loop *loop)
{
	/* acq_rel: the RMW orders after every entry before it in the gate's order. */
	atomic_fetch_or_explicit(&loop->gate, URA__GATE_CLOSED, memory_order_acq_rel);
	/* Acquire: pairs with each caller's release in ura__loop_leave. */
	while (atomic_load_explicit(&loop->gate, memory_order_acquire) != URA__GATE_CLOSED)
		sched_yield();
}

/* ---------------------------------------------------------------- free */

static bool sessions_pending(ura_loop *loop)
{
	pthread_mutex_lock(&loop->sessions_lock);
	bool any = !ura__list_empty(&loop->sessions);
	pthread_mutex_unlock(&loop->sessions_lock);
	return any;
}

/* Cancels the wakeup read so no kernel reference to the loop's memory remains. */
static void disarm_wake(ura_loop *loop, uint64_t deadline)
{
	loop->freeing_ring = true;
	if (!loop->wake_armed)
		return;
	struct io_uring_sqe *q = io_uring_get_sqe(&loop->ring);
	if (!q) {
		io_uring_submit(&loop->ring);
		q = io_uring_get_sqe(&loop->ring);
	}
	if (q) {
		io_uring_prep_cancel64(q, URA__TAG_WAKE, 0);
		io_uring_sqe_set_data64(q, ura__tag(URA__TAG_KIND_WAKE_CANCEL, 0));
	}
	const struct __kernel_timespec tick = { .tv_nsec = 100 * 1000 * 1000 };
	while (loop->wake_armed && ura__now_ns() < deadline)
		(void)iterate(loop, true, &tick);
}

void ura_loop_free(ura_loop *loop)
{
	/* Inside a callback the iteration below it still uses the loop, and inside
	 * ura_loop_free the free is under way: refused (ura.h). */
	if (!loop || loop->running || atomic_load_explicit(&loop->freeing, memory_order_relaxed))
		return;
	URA__ASSERT_LOOP_THREAD(loop);
	atomic_store_explicit(&loop->freeing, true, memory_order_relaxed);
	ura__session_invalidate_all(loop, -ESHUTDOWN);
	uint64_t deadline = ura__now_ns() + FREE_DRAIN_NS;
	const struct __kernel_timespec tick = { .tv_nsec = 100 * 1000 * 1000 };
	while ((has_work(loop) || sessions_pending(loop)) && ura__now_ns() < deadline) {
		if (iterate(loop, true, &tick) < 0)
			break;
		/* Sessions created by callbacks during the drain are cancelled too. */
		ura__session_invalidate_all(loop, -ESHUTDOWN);
	}
	/* From here no other thread can be inside a call: what remains is the loop's. */
	close_gate(loop);
	/* Commands other threads sent before the close (a refused send uncounting itself,
	 * a late cancel) run now, while the ring still exists. Bounded: nothing new can
	 * come from other threads, and every session has ended. */
	for (unsigned i = 0; i < 1000 && ura__loop_has_commands(loop); i++)
		(void)iterate(loop, false, NULL);
	disarm_wake(loop, deadline);
	ura__loop_shared_bufs_free(loop);
	/* Closing the ring makes the kernel cancel and wait for anything left, so what
	 * follows touches no memory the kernel still uses. */
	io_uring_queue_exit(&loop->ring);
	ura__session_abandon_all(loop);
	/* Commands of a slice not run yet come first, then the inbox's, in order. */
	struct ura__inbox_node *left = loop->inbox_rest;
	loop->inbox_rest = NULL;
	if (!left)
		left = ura__inbox_take(&loop->inbox);
	else
		for (struct ura__inbox_node *tail = left;; tail = tail->next)
			if (!tail->next) {
				tail->next = ura__inbox_take(&loop->inbox);
				break;
			}
	/* Each handler releases what its command holds (abandon_all has already released
	 * the session count units of submits and requests). */
	for (struct ura__inbox_node *n = left; n;) {
		struct ura__cmd *cmd = (struct ura__cmd *)n;
		n = n->next;
		cmd->run(cmd, true);
	}
	for (uint32_t i = 0; i < loop->deferred.len; i++) {
		struct ura__deferred *d = (struct ura__deferred *)loop->deferred.items + i;
		if (d->kind != URA__DEFER_CANCELLED) /* RETRY_CHECK: a reference */
			ura_session_unref(d->session);
	}
	ura__session_release_shared(loop);
	ura__vec_free(&loop->deferred);
	ura__vec_free(&loop->deferred_alt);
	ura__vec_free(&loop->backlog);
	ura__vec_free(&loop->cancel_backlog);
	/* Every session has had its final event (abandon_all above), so no handle can
	 * reach this registry any more: another loop may take the tag. */
	ura__registry_tag_put(loop->registry.tag);
	ura__registry_destroy(&loop->registry);
	close(loop->wake_fd);
	pthread_mutex_destroy(&loop->sessions_lock);
	ura__loop_unref(loop); /* the object goes with the last session or connection */
}
