/* The loop: ring, run loop, completion reaper, cross-thread inbox and wakeup; the
 * command node and the runtime tag kinds every layer sends and submits through. */
#ifndef URA_LOOP_H
#define URA_LOOP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <liburing.h>

#include "fault.h"
#include "inbox.h"
#include "registry.h"
#include "clock.h"
#include "list.h"
#include "vec.h"
#include "ura.h"

/* The functions every loop iteration runs. GCC places them in .text.hot, together, so
 * they span as few pages as possible: each page the loop touches costs a TLB miss after
 * every enter on kernels with page-table isolation (see enter.h). */
#define URA__HOT __attribute__((hot))

/*
 * Runtime tags: user_data values with bit 63 set are the runtime's own (task handles
 * never set it). Bits 62..60 hold the kind, which picks the CQE's handler (loop.c,
 * tag_handlers); the bits below hold the kind's payload, a session pointer for CANCEL
 * and RETRY (user-space, below 2^57 even with 5-level page tables).
 */
#define URA__TAG_BIT (1ull << 63)
#define URA__TAG_KIND_SHIFT 60
#define URA__TAG_PAYLOAD_MASK ((1ull << URA__TAG_KIND_SHIFT) - 1)

enum ura__tag_kind {
	URA__TAG_KIND_NONE,        /* on no SQE: what a test's lost cancel aims at */
	URA__TAG_KIND_WAKE,        /* the eventfd read that wakes the loop */
	URA__TAG_KIND_WAKE_CANCEL, /* ura_loop_free's cancel of that read */
	URA__TAG_KIND_CANCEL,      /* a per-task ASYNC_CANCEL; payload: its session */
	URA__TAG_KIND_RETRY,       /* a session's cancel-retry timer; payload: the session */
	URA__TAG_KIND_IGNORE,      /* a runtime SQE whose CQE needs no action */
	URA__TAG_KINDS
};
_Static_assert(URA__TAG_KINDS <= 8, "tag kinds fit bits 62..60");

static inline uint64_t ura__tag(enum ura__tag_kind kind, uint64_t payload)
{
	return URA__TAG_BIT | (uint64_t)kind << URA__TAG_KIND_SHIFT | payload;
}

static inline enum ura__tag_kind ura__tag_kind(uint64_t user_data)
{
	return (enum ura__tag_kind)((user_data >> URA__TAG_KIND_SHIFT) & 7);
}

#define URA__TAG_WAKE ura__tag(URA__TAG_KIND_WAKE, 0)

/*
 * A command to the loop thread, sent through the inbox. It is embedded in a typed
 * struct owned by the layer that sends it (task.c's submit, cancel and resume,
 * session.c's notice and requests, loop.c's post, conn.c's calls), and carries its own
 * handler: the loop runs run(cmd, false) and knows nothing of the kinds. ura_loop_free
 * runs what is left after the ring is gone with discard = true: the handler then only
 * releases what the command holds (frees itself, drops a reference), by its own rule.
 */
struct ura__cmd {
	struct ura__inbox_node node; /* first: the inbox links commands through it */
	void (*run)(struct ura__cmd *cmd, bool discard);
};

/* The struct of the given type whose member is at ptr (a command embedded in it). */
#define URA__CONTAINER_OF(ptr, type, member) \
	((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* Loop-thread work deferred to the next drain (no allocation). */
struct ura__deferred {
	uint8_t kind;      /* URA__DEFER_* */
	ura_task task;
	ura_session *session;
};
enum { URA__DEFER_CANCELLED, URA__DEFER_RETRY_CHECK };

struct ura_loop {
	/* Calls from other threads inside the loop, plus URA__GATE_CLOSED once
	 * ura_loop_free has shut it (loop.c, "Lifetime"). Every remote call writes it:
	 * first, on its own line. */
	_Alignas(64) _Atomic uint64_t gate;
	/* References to this object: the loop's own until ura_loop_free, and one per
	 * session, connection and listener, so that a call through any of them can
	 * still read the gate after the loop is freed. */
	_Atomic uint32_t refs;

	_Alignas(64) struct io_uring ring;
	uint32_t features;
	unsigned sq_entries, cq_entries; /* as the kernel granted them */
	unsigned cancel_headroom; /* SQ entries task submissions leave free for cancels */
	pthread_t owner;
	const void *owner_mark;   /* &ura__thread_mark of the owner thread (ura__on_loop) */

	struct ura__registry registry;

	/* Tasks accepted by other threads and not yet in the ring (URA__TF_QUEUED), and
	 * the bound past which such a submit answers -EAGAIN. Every remote submit writes
	 * it: on its own line. */
	_Alignas(64) _Atomic uint64_t queued;
	uint64_t max_queued;

	/* Cross-thread commands. */
	_Alignas(64) struct ura__inbox inbox;
	struct ura__inbox_node *inbox_rest; /* taken, not yet run: the next slice's start */
	/* The loop thread is in (or about to enter) a blocking io_uring_enter: only then
	 * does a push onto the empty inbox need the eventfd (loop.c, "Wakeup"). */
	_Atomic bool sleeping;
	unsigned cmd_slice;                 /* commands run per iteration at most */
	int wake_fd;
	uint64_t wake_buf;
	bool wake_armed;

	/* Loop-thread state. */
	struct ura__vec deferred;     /* struct ura__deferred */
	struct ura__vec deferred_alt; /* swapped in while draining */
	struct ura__vec backlog;      /* ura_task: accepted tasks waiting for SQ room, in order */
	uint32_t backlog_head;
	struct ura__vec cancel_backlog; /* cancel.c's cancel_req: cancels waiting for SQ room */
	uint32_t cancel_backlog_head;
	uint64_t live_tasks;      /* accepted by the loop and not yet terminal */
	uint64_t cancels_in_flight;  /* the sum of the sessions' (cancel.c) */
	uint64_t retry_timers;    /* sessions' cancel-retry timers in the ring */
	bool cancels_lost;        /* a cancel found neither SQ room nor memory: resend */
	uint64_t active_handles;  /* connections and listeners keep the loop running */
	uint64_t finals_held;     /* of those, connections whose final event awaits a resume */
	uint64_t invalidating;    /* sessions waiting for their final event */
	unsigned running;         /* nesting guard: run_once is not reentrant */
	_Atomic bool freeing;     /* ura_loop_free has started: no new sessions */
	bool freeing_ring;        /* the wakeup read is being retired: do not re-arm it */

	/* Open transactions (ura_transaction_begin/end), any thread. */
	_Atomic uint64_t transactions;
	/* The receive buffer ring connections share (bufring.c), created on first use. */
	ura_buf_ring *shared_bufs;

	/* Any thread: a stop request. */
	_Atomic bool stop;

	/* Sessions of this loop that have not had their final event. */
	pthread_mutex_t sessions_lock;
	struct ura__list sessions; /* ura_session.in_loop, oldest first */
	ura_session *shared;
};

/* One byte per thread whose address identifies the thread: comparing it is a TLS
 * address computation, cheaper than a call to pthread_self on every submit. */
extern __attribute__((tls_model("initial-exec"))) _Thread_local char ura__thread_mark;

static inline bool ura__on_loop(const ura_loop *loop)
{
	return loop->owner_mark == &ura__thread_mark;
}

/*
 * Loop-thread-only entry points check their thread in builds with URA_CHECKS (every
 * build type but release): misuse is an abort naming the function, not corruption of
 * state only that thread may touch. One TLS compare; nothing in release builds.
 */
#ifdef URA_CHECKS
void ura__loop_thread_violation(const char *fn) __attribute__((noreturn, cold));
#define URA__ASSERT_LOOP_THREAD(loop)                                                   \
	do {                                                                            \
		if (!ura__on_loop(loop))                                               \
			ura__loop_thread_violation(__func__);                          \
	} while (0)
#else
#define URA__ASSERT_LOOP_THREAD(loop) ((void)(loop))
#endif

/* Room in the SQ for a task, leaving the cancel headroom (a test may say there is none). */
static inline bool ura__sq_room(ura_loop *loop)
{
	return io_uring_sq_space_left(&loop->ring) > loop->cancel_headroom &&
	       !ura__fault(URA__FAULT_SQ_FULL);
}

/* Tasks or cancels wait in a backlog for SQ room. Loop thread. */
static inline bool ura__loop_backlogged(const ura_loop *loop)
{
	return loop->backlog_head < loop->backlog.len ||
	       loop->cancel_backlog_head < loop->cancel_backlog.len;
}

/* The next SQE, once ura__sq_room said there is one: no second check of the ring's
 * head. The ring never has SQE128 (ring_init does not ask for it), so an SQE is one
 * array entry. Loop thread. */
static inline struct io_uring_sqe *ura__loop_next_sqe(ura_loop *loop)
{
	struct io_uring_sq *sq = &loop->ring.sq;
	return &sq->sqes[sq->sqe_tail++ & sq->ring_mask];
}

#define URA__GATE_CLOSED (1ull << 63)

/*
 * A call from another thread enters the loop before it touches anything ura_loop_free
 * releases (the registry, the inbox, the wakeup fd) and leaves when done. false: the
 * loop is closed; the caller answers -ESHUTDOWN (or -ENOENT) and touches nothing. The
 * loop object itself stays readable as long as the caller holds a session, connection
 * or listener of it (loop->refs). Any thread; the loop thread never needs it.
 */
static inline bool ura__loop_enter(ura_loop *loop)
{
	/* Acquire: this call's reads of the loop's resources stay after the increment,
	 * which ura_loop_free's closing RMW then sees (it waits for us to leave). */
	uint64_t g = atomic_fetch_add_explicit(&loop->gate, 1, memory_order_acquire);
	if (!(g & URA__GATE_CLOSED))
		return true;
	/* Relaxed: we touched nothing; the closer only waits for the count to drop. */
	atomic_fetch_sub_explicit(&loop->gate, 1, memory_order_relaxed);
	return false;
}

static inline void ura__loop_leave(ura_loop *loop)
{
	/* Release: every access this call made happens-before the closer's acquire load
	 * that sees the count reach zero, and so before the resources are released. */
	atomic_fetch_sub_explicit(&loop->gate, 1, memory_order_release);
}

/* Keeps the loop object (not its ring or registry) allocated. Any thread. */
void ura__loop_ref(ura_loop *loop);
void ura__loop_unref(ura_loop *loop);

/* A task counted in loop->queued left it (into the ring, suspended, or ended). */
static inline void ura__loop_unqueue(ura_loop *loop, struct ura__slot *slot)
{
	slot->lflags &= (uint8_t)~URA__TF_QUEUED;
	/* Relaxed: a bound, not a publication; nothing is read through it. */
	atomic_fetch_sub_explicit(&loop->queued, 1, memory_order_relaxed);
}

/* Commands wait in the inbox, or were taken and wait for the next slice. Loop thread. */
static inline bool ura__loop_has_commands(ura_loop *loop)
{
	return loop->inbox_rest || !ura__inbox_empty(&loop->inbox);
}

/*
 * Handles: a connection or listener is live work from its start until its stop, and
 * keeps ura_loop_run running meanwhile (like libuv's handle start/stop). This pair is
 * the only way a layer above core touches the loop's liveness. Loop thread.
 */
static inline void ura__loop_handle_start(ura_loop *loop) { loop->active_handles++; }
static inline void ura__loop_handle_stop(ura_loop *loop) { loop->active_handles--; }
/* Of the live handles, those whose end waits only for a resume (a suspended, cancelled
 * connection): ura_main's shutdown does not wait for them. Loop thread. */
static inline void ura__loop_final_hold(ura_loop *loop) { loop->finals_held++; }
static inline void ura__loop_final_release(ura_loop *loop) { loop->finals_held--; }
/* Live handles other than those. Loop thread. */
static inline uint64_t ura__loop_handles_busy(const ura_loop *loop)
{
	return loop->active_handles - loop->finals_held;
}

/* Sends a command to the loop thread and wakes it if needed. Any thread. */
void ura__loop_send(ura_loop *loop, struct ura__cmd *cmd);
/* Wakes the loop thread out of its wait. Any thread. */
void ura__loop_wake(ura_loop *loop);
/* Queues loop-thread work for the next drain. Returns -ENOMEM. Loop thread. */
int ura__loop_defer(ura_loop *loop, uint8_t kind, ura_task t, ura_session *s);
/* An SQE for a task, honouring the cancel headroom; NULL when the SQ is full. */
struct io_uring_sqe *ura__loop_task_sqe(ura_loop *loop);
/* An SQE for an internal cancel (may use the headroom); NULL when full. */
struct io_uring_sqe *ura__loop_cancel_sqe(ura_loop *loop);


#endif
