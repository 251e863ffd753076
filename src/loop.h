/* The loop: ring, run loop, completion reaper, cross-thread inbox and wakeup. */
#ifndef URA_LOOP_H
#define URA_LOOP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <liburing.h>

#include "fault.h"
#include "inbox.h"
#include "registry.h"
#include "ura.h"

/* The functions every loop iteration runs. GCC places them in .text.hot, together, so
 * they span as few pages as possible: each page the loop touches costs a TLB miss after
 * every enter on kernels with page-table isolation (see enter.h). */
#define URA__HOT __attribute__((hot))

/* user_data values with bit 63 set are the runtime's own; task handles never set it. */
#define URA__TAG_BIT (1ull << 63)
#define URA__TAG_WAKE (URA__TAG_BIT | 1ull)
/* An ASYNC_CANCEL SQE: the tag plus the session pointer (user-space, below 2^47). */
#define URA__TAG_CANCEL (URA__TAG_BIT | (1ull << 62))
/* A session's cancel-retry timer (session.c): the tag plus the session pointer. */
#define URA__TAG_RETRY (URA__TAG_BIT | (1ull << 61))
/* A runtime SQE whose CQE needs no action (a timer's removal). */
#define URA__TAG_IGNORE (URA__TAG_BIT | 4ull)

/* Commands sent to the loop thread through the inbox. */
enum ura__cmd_kind {
	URA__CMD_SUBMIT,     /* a task accepted on another thread */
	URA__CMD_CANCEL,     /* ura_task_cancel from another thread */
	URA__CMD_RESUME,     /* ura_task_resume from another thread */
	URA__CMD_POST,       /* ura_loop_post */
	URA__CMD_SESSION,    /* a session's invalidation state changed */
	URA__CMD_GET_TASKS,  /* get_all_tasks / get_tasks */
	URA__CMD_FLUSH,      /* flush / reset barrier */
	URA__CMD_CALL,       /* fn(arg) with a command embedded in its owner: never freed */
};

struct ura__cmd {
	struct ura__inbox_node node; /* first: the inbox links commands through it */
	uint8_t kind;
	uint8_t variant;             /* GET_TASKS: all or by kind; FLUSH: flush or reset */
	ura_task task;
	ura_session *session;        /* holds a reference for SESSION, GET_TASKS, FLUSH */
	void *fn;
	void *arg;
	/* SUBMIT, and the SQE copy kept while a task is suspended or backlogged. */
	struct io_uring_sqe sqe;
	struct __kernel_timespec ts;
};

/* Loop-thread work deferred to the next drain (no allocation). */
struct ura__deferred {
	uint8_t kind;      /* URA__DEFER_* */
	ura_task task;
	ura_session *session;
};
enum { URA__DEFER_CANCELLED, URA__DEFER_SESSION, URA__DEFER_RETRY_CHECK };

/* A per-task ASYNC_CANCEL waiting for SQ room. */
struct ura__cancel_req {
	ura_task task;
	ura_session *session;
};

struct ura__vec {
	void *items;
	uint32_t len, cap;
};

struct ura_loop {
	struct io_uring ring;
	uint32_t features;
	unsigned sq_entries, cq_entries; /* as the kernel granted them */
	unsigned cancel_headroom; /* SQ entries task submissions leave free for cancels */
	pthread_t owner;
	const void *owner_mark;   /* &ura__thread_mark of the owner thread (ura__on_loop) */

	struct ura__registry registry;

	/* Cross-thread commands. */
	struct ura__inbox inbox;
	int wake_fd;
	uint64_t wake_buf;
	bool wake_armed;

	/* Loop-thread state. */
	struct ura__vec deferred;     /* struct ura__deferred */
	struct ura__vec deferred_alt; /* swapped in while draining */
	struct ura__vec backlog;      /* ura_task: accepted tasks waiting for SQ room, in order */
	uint32_t backlog_head;
	struct ura__vec cancel_backlog; /* ura_task: cancels waiting for SQ room */
	uint32_t cancel_backlog_head;
	uint64_t live_tasks;      /* accepted by the loop and not yet terminal */
	uint64_t cancels_in_flight;
	uint64_t retry_timers;    /* sessions' cancel-retry timers in the ring */
	uint64_t active_handles;  /* connections and listeners keep the loop running */
	uint64_t finals_held;     /* of those, connections whose final event awaits a resume */
	uint64_t invalidating;    /* sessions waiting for their final event */
	unsigned running;         /* nesting guard: run_once is not reentrant */
	bool freeing;             /* ura_loop_free has started: no new sessions */
	bool freeing_ring;        /* the wakeup read is being retired: do not re-arm it */

	/* Open transactions (ura_transaction_begin/end), any thread. */
	_Atomic uint64_t transactions;
	/* The receive buffer ring connections share (conn_io.c), created on first use. */
	ura_buf_ring *conn_bufs;

	/* Any thread: a stop request; sessions to rescan (a notification failed to allocate). */
	_Atomic bool stop;
	_Atomic bool sessions_dirty;

	/* Sessions of this loop that have not had their final event. */
	pthread_mutex_t sessions_lock;
	ura_session *sessions;
	ura_session *shared;
};

/* One byte per thread whose address identifies the thread: comparing it is a TLS
 * address computation, cheaper than a call to pthread_self on every submit. */
extern __attribute__((tls_model("initial-exec"))) _Thread_local char ura__thread_mark;

static inline bool ura__on_loop(const ura_loop *loop)
{
	return loop->owner_mark == &ura__thread_mark;
}

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

int ura__vec_push(struct ura__vec *v, const void *item, size_t size);
void ura__vec_free(struct ura__vec *v);

uint64_t ura__now_ns(void);

#endif
