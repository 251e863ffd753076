/*
 * ura: an async runtime on io_uring.
 *
 * One ring per loop, one loop per thread. The unit of work is a task (one io_uring
 * submission); tasks are grouped into sessions with URLSession's lifecycle.
 *
 * Conventions, for every function below:
 *   - returns 0 (or a count) on success and a negative errno on failure; errno is
 *     never the channel for an error. The common values: -EINVAL a bad argument (a NULL
 *     object or out pointer, unknown flags, a non-zero reserved field), -ENOMEM out of
 *     memory, -ESHUTDOWN the object has ended (its session is invalidated, its
 *     connection cancelled, or its loop freed). The comment above each function lists
 *     every value it can return;
 *   - a function that takes a callback and returns an error never calls the callback;
 *   - "any thread" means callable from any thread at any time, including from inside a
 *     callback; "loop thread" means only on the thread that created the loop;
 *   - all callbacks run on the loop thread.
 */
#ifndef URA_H
#define URA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <liburing.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Everything declared here is exported; the rest of the library is hidden. */
#pragma GCC visibility push(default)

#define URA_VERSION_MAJOR 0
#define URA_VERSION_MINOR 1

typedef struct ura_loop ura_loop;
typedef struct ura_session ura_session;
typedef struct ura_buf_ring ura_buf_ring;

/* A task handle: generation, loop tag and slot index; 0 is never a valid handle. */
typedef uint64_t ura_task;

/* ------------------------------------------------------------------ loop */

/* Loop creation flags (struct ura_loop_config.flags). */
enum {
	/* Do not use IORING_SETUP_DEFER_TASKRUN/SINGLE_ISSUER even where the kernel has them. */
	URA_LOOP_NO_DEFER_TASKRUN = 1u << 0,
	/* Do not use IORING_SETUP_COOP_TASKRUN. */
	URA_LOOP_NO_COOP_TASKRUN = 1u << 1,
};

struct ura_loop_config {
	uint32_t sq_entries;  /* 0: 256; else 8 to 32768, -EINVAL otherwise (an eighth of
			       * the SQ is kept for cancels: fewer than 8 entries leave
			       * too little or no room for tasks) */
	uint32_t cq_entries;  /* 0: 8 x sq_entries (clamped to 65536); at least sq_entries,
			       * at most 65536 (the kernel's limit) */
	uint32_t flags;       /* URA_LOOP_* */
	/* Tasks other threads may have accepted and not yet in the ring (in the inbox or
	 * waiting for SQ room): past it ura_submit from another thread answers -EAGAIN.
	 * 0: 65536; at most 16777216. Nothing accepted is ever dropped. */
	uint32_t max_queued;
	uint32_t reserved[4]; /* must be zero */
};

/* Setup flags the kernel accepted for a loop (ura_loop_features). */
enum {
	URA_FEATURE_SINGLE_ISSUER = 1u << 0,
	URA_FEATURE_DEFER_TASKRUN = 1u << 1,
	URA_FEATURE_COOP_TASKRUN = 1u << 2,
	URA_FEATURE_SUBMIT_ALL = 1u << 3,
	URA_FEATURE_NODROP = 1u << 4,
	URA_FEATURE_REGISTERED_RING = 1u << 5, /* the ring fd is registered (5.18+) */
};

/*
 * Creates a loop whose ring uses SINGLE_ISSUER, DEFER_TASKRUN, COOP_TASKRUN and
 * SUBMIT_ALL where the kernel has them. cfg may be NULL (defaults). The calling thread
 * becomes the loop thread. The caller frees the loop with ura_loop_free. Each live loop
 * holds one of 1023 tags that keep its task handles apart from other loops'. Returns 0,
 * -EINVAL (out NULL, unknown flags, non-zero reserved, sq_entries or cq_entries out of
 * range), -EMFILE (1023 loops are alive), -ENOMEM, or an error from eventfd(2) or
 * io_uring_setup(2) (e.g. -EMFILE, -ENFILE, or -EPERM/-ENOSYS where io_uring is
 * disabled). Any thread.
 */
int ura_loop_new(const struct ura_loop_config *cfg, ura_loop **out);

/*
 * Invalidates and cancels every live session, drains the ring (each session gets its
 * final event, with error -ESHUTDOWN), then frees the loop. Session, connection and
 * listener references the caller still holds stay valid until their last unref, and
 * calls through them from any thread, also while this runs, answer -ESHUTDOWN (or
 * -ENOENT) and touch nothing freed. NULL is fine. Loop thread, outside callbacks: called
 * from inside a callback of this loop it does nothing (the running iteration still
 * uses the loop).
 */
void ura_loop_free(ura_loop *loop);

/* Runs until no live work remains or ura_loop_stop. Returns 0, -EINVAL (loop NULL),
 * -EBUSY (called from inside a callback of this loop), or an error from io_uring_enter(2)
 * (its EINTR, EAGAIN, EBUSY and ETIME are retried, not returned). Loop thread. */
int ura_loop_run(ura_loop *loop);

/* One iteration; wait: block until at least one completion or wakeup. Returns the number
 * of completions handled, or the errors of ura_loop_run. Loop thread. */
int ura_loop_run_once(ura_loop *loop, bool wait);

/* Makes the current (or next) ura_loop_run return. Any thread. */
void ura_loop_stop(ura_loop *loop);

/* fn(arg) runs once on the loop thread, never inside this call. Returns 0, -EINVAL (loop
 * or fn NULL), -ESHUTDOWN (ura_loop_free has drained the loop: fn could never run),
 * -ENOMEM. Any thread. */
int ura_loop_post(ura_loop *loop, void (*fn)(void *arg), void *arg);

/* The loop's ring, for registering buffers and files. Do not submit on it. Loop thread. */
struct io_uring *ura_loop_ring(ura_loop *loop);

/* URA_FEATURE_* the ring was set up with. Any thread. */
uint32_t ura_loop_features(ura_loop *loop);

/* ----------------------------------------------------------------- tasks */

typedef void (*ura_task_fn)(ura_session *s, ura_task t, int32_t res, uint32_t cqe_flags, void *arg);

/* ura_submit flags. */
enum {
	URA_SUBMIT_SUSPENDED = 1u << 0, /* created suspended; starts at ura_task_resume */
};

enum ura_task_state {
	URA_TASK_RUNNING = 0,
	URA_TASK_SUSPENDED = 1,
	URA_TASK_CANCELING = 2,
	URA_TASK_COMPLETED = 3,
};

enum ura_task_kind { URA_TASK_DATA = 0, URA_TASK_UPLOAD = 1, URA_TASK_DOWNLOAD = 2 };

/*
 * Submits a copy of the template sqe (prepared with io_uring_prep_*) as a task of s. The
 * runtime owns user_data. fn (may be NULL) is called once per CQE; the call without
 * IORING_CQE_F_MORE is the terminal one, exactly once per accepted task. Memory the op
 * uses must live until that terminal call. IOSQE_IO_LINK, IOSQE_IO_HARDLINK and
 * IOSQE_CQE_SKIP_SUCCESS are refused (-EINVAL): each task is one independent CQE stream.
 * The opcode is the kernel's to judge, also one newer than liburing's headers: an opcode
 * the running kernel lacks is accepted here and its terminal call gets the kernel's
 * -EINVAL. out may be NULL. Returns 0, -EINVAL (s or sqe NULL, unknown flags,
 * IOSQE_IO_LINK, IOSQE_IO_HARDLINK or IOSQE_CQE_SKIP_SUCCESS), -ESHUTDOWN (s invalidated
 * or invalidating, or its loop freed), -EAGAIN (from another thread: the loop already
 * holds ura_loop_config.max_queued tasks other threads submitted that have not reached
 * the ring; retry later, nothing was accepted), -ENOMEM (also when the loop's 4M task
 * slots are all in use). The wrappers below return the same. Any thread.
 */
int ura_submit(ura_session *s, const struct io_uring_sqe *sqe, unsigned flags,
	       ura_task_fn fn, void *arg, ura_task *out);

/* Returns 0, -ENOENT (t is 0, unknown, finished, or not a task of s; also once s has had
 * its final event or its loop was freed), -EALREADY (already cancelling), -EINVAL (s
 * NULL), -ENOMEM (off the loop thread: no memory to tell the loop; nothing changed). A
 * suspended or not yet submitted task completes with -ECANCELED without an SQE; a
 * running one is cancelled with IORING_OP_ASYNC_CANCEL. Any thread. */
int ura_task_cancel(ura_session *s, ura_task t);

/* Starts a suspended task. Returns 0, -ENOENT (as for ura_task_cancel), -EINVAL (s NULL,
 * or t is not suspended: running or cancelling), -ENOMEM (off the loop thread; t stays
 * suspended). Any thread. */
int ura_task_resume(ura_session *s, ura_task t);

/* URA_TASK_*, never an error: a finished or unknown handle, 0, a NULL or ended session
 * and a freed loop all read URA_TASK_COMPLETED. Any thread. */
int ura_task_state(ura_session *s, ura_task t);

/* Wrappers: prepare the SQE and ura_submit it with flags 0. Same callback convention and
 * the same returns: 0, -EINVAL (s NULL, or a NULL pointer argument noted below),
 * -ESHUTDOWN, -ENOMEM. Errors of the operation itself (a bad fd, a refused connect)
 * come as the terminal call's res, never from these calls. */
int ura_nop(ura_session *s, ura_task_fn fn, void *arg, ura_task *out);
int ura_read(ura_session *s, int fd, void *buf, unsigned len, uint64_t off,
	     ura_task_fn fn, void *arg, ura_task *out);
int ura_write(ura_session *s, int fd, const void *buf, unsigned len, uint64_t off,
	      ura_task_fn fn, void *arg, ura_task *out);
int ura_readv(ura_session *s, int fd, const struct iovec *iov, unsigned n, uint64_t off,
	      ura_task_fn fn, void *arg, ura_task *out);
int ura_writev(ura_session *s, int fd, const struct iovec *iov, unsigned n, uint64_t off,
	       ura_task_fn fn, void *arg, ura_task *out);
int ura_recv(ura_session *s, int fd, void *buf, size_t len, int flags,
	     ura_task_fn fn, void *arg, ura_task *out);
int ura_send(ura_session *s, int fd, const void *buf, size_t len, int flags,
	     ura_task_fn fn, void *arg, ura_task *out);
int ura_sendmsg(ura_session *s, int fd, const struct msghdr *msg, unsigned flags,
		ura_task_fn fn, void *arg, ura_task *out);
int ura_recvmsg(ura_session *s, int fd, struct msghdr *msg, unsigned flags,
		ura_task_fn fn, void *arg, ura_task *out);
/* addr/addrlen may be NULL, but only both (-EINVAL); res is the accepted descriptor. */
int ura_accept(ura_session *s, int fd, struct sockaddr *addr, socklen_t *addrlen, int flags,
	       ura_task_fn fn, void *arg, ura_task *out);
/* One CQE per accepted connection with IORING_CQE_F_MORE until the terminal one. */
int ura_accept_multishot(ura_session *s, int fd, int flags,
			 ura_task_fn fn, void *arg, ura_task *out);
/* -EINVAL if addr is NULL. */
int ura_connect(ura_session *s, int fd, const struct sockaddr *addr, socklen_t len,
		ura_task_fn fn, void *arg, ura_task *out);
int ura_close(ura_session *s, int fd, ura_task_fn fn, void *arg, ura_task *out);
/* path must live until the terminal call; -EINVAL if it is NULL. */
int ura_openat(ura_session *s, int dfd, const char *path, int flags, unsigned mode,
	       ura_task_fn fn, void *arg, ura_task *out);
int ura_fsync(ura_session *s, int fd, unsigned flags, ura_task_fn fn, void *arg, ura_task *out);
/* One-shot poll; res is the returned event mask. */
int ura_poll(ura_session *s, int fd, unsigned events, ura_task_fn fn, void *arg, ura_task *out);
/* Completes after ns nanoseconds with -ETIME. The timespec is kept by the runtime. */
int ura_timeout(ura_session *s, uint64_t ns, ura_task_fn fn, void *arg, ura_task *out);
int ura_splice(ura_session *s, int fd_in, int64_t off_in, int fd_out, int64_t off_out,
	       unsigned len, unsigned flags, ura_task_fn fn, void *arg, ura_task *out);

/*
 * A provided-buffer ring of nbufs (a power of two, at most 32768) buffers of buf_size
 * bytes each (1 to 16 MiB), registered under group id bgid (0x5552 is the group the
 * loop's connections use). Loop thread; freed with ura_buf_ring_free after every task
 * using it has had its terminal call. Returns 0, -EINVAL (loop or out NULL, nbufs or
 * buf_size out of range), -ENOMEM, or an error from registering the ring with the kernel
 * (-EEXIST: bgid is taken; -EINVAL: a kernel before 5.19).
 */
int ura_buf_ring_new(ura_loop *loop, uint16_t bgid, unsigned nbufs, unsigned buf_size,
		     ura_buf_ring **out);
void ura_buf_ring_free(ura_buf_ring *br); /* loop thread; NULL is fine */
/* The buffer a CQE carries (IORING_CQE_F_BUFFER in cqe_flags), or NULL. */
void *ura_buf_ring_buffer(ura_buf_ring *br, uint32_t cqe_flags);
/* Gives the buffer a CQE carried back to the kernel. Loop thread. */
void ura_buf_ring_recycle(ura_buf_ring *br, uint32_t cqe_flags);
unsigned ura_buf_ring_buf_size(const ura_buf_ring *br);

/* Multishot recv into br's buffers: res bytes in ura_buf_ring_buffer(br, cqe_flags);
 * res 0 is end of stream (terminal). Recycle each buffer when done with it. Returns as
 * the wrappers above; -EINVAL also if br is NULL. */
int ura_recv_multishot(ura_session *s, int fd, ura_buf_ring *br, int flags,
		       ura_task_fn fn, void *arg, ura_task *out);

/* The kind get_tasks files an opcode under: reads/recvs DOWNLOAD (also READ_MULTISHOT,
 * RECV_ZC and READV_FIXED, newer than liburing 2.3), writes/sends UPLOAD (also
 * WRITEV_FIXED), everything else, unknown numbers too, DATA. Any thread. */
enum ura_task_kind ura_task_kind_of_opcode(uint8_t opcode);

/* -------------------------------------------------------------- sessions */

struct ura_session_delegate {
	/* After the terminal call of each task. */
	void (*task_did_complete)(ura_session *s, ura_task t, int32_t res, void *ctx);
	/* Exactly once, after everything the session caused has drained. error: 0 for an
	 * explicit invalidation, a negative errno when the loop was freed or the ring failed. */
	void (*did_become_invalid)(ura_session *s, int error, void *ctx);
};

struct ura_session_stats {
	uint64_t submitted;        /* tasks accepted */
	uint64_t completed;        /* terminal calls made */
	uint64_t cancelled;        /* tasks a cancel ended: cancel requested and terminal
				    * res -ECANCELED or -EINTR (one that finished first
				    * reports its real result and is not counted) */
	uint64_t cancel_ok;        /* cancel CQEs with res 0 */
	uint64_t cancel_enoent;    /* cancel CQEs with res -ENOENT */
	uint64_t cancel_ealready;  /* cancel CQEs with res -EALREADY */
	uint64_t in_flight;        /* accepted and not yet terminal */
	uint64_t peak_in_flight;
	uint64_t invalidate_to_final_ns; /* first invalidation request to final event; 0 before */
};

/* A new session (one reference, the caller's). d may be NULL; *d is copied. Returns 0,
 * -EINVAL (loop or out NULL), -ESHUTDOWN (ura_loop_free is under way or done), -ENOMEM.
 * Any thread. */
int ura_session_new(ura_loop *loop, const struct ura_session_delegate *d, void *ctx,
		    ura_session **out);
/* The loop's shared session: no delegate, ignores invalidation. Borrowed. Any thread. */
ura_session *ura_session_shared(ura_loop *loop);
ura_session *ura_session_ref(ura_session *s);    /* any thread */
void ura_session_unref(ura_session *s);          /* any thread; NULL is fine */
/* No new tasks; live ones finish; then did_become_invalid(s, 0). Returns at once. Any thread. */
void ura_session_finish_tasks_and_invalidate(ura_session *s);
/* No new tasks; live ones are cancelled; then did_become_invalid(s, 0). Any thread. */
void ura_session_invalidate_and_cancel(ura_session *s);
/* False once invalidation has been requested (and for NULL). Any thread. */
bool ura_session_is_valid(ura_session *s);
/* Copies text (NULL clears). Returns 0, -EINVAL (s NULL), -ESHUTDOWN (invalidation was
 * requested, or the loop freed), -ENOMEM. Any thread. */
int ura_session_set_description(ura_session *s, const char *text);
/* snprintf-like: the description's length; writes at most len bytes with a NUL. Any thread. */
size_t ura_session_description(ura_session *s, char *buf, size_t len);
/* fn runs later on the loop thread with the tasks neither completed nor cancelling. The
 * array is valid for the call only. Returns 0, -EINVAL (s or fn NULL), -ESHUTDOWN (s
 * invalidated or invalidating, or its loop freed), -ENOMEM; the same for get_tasks,
 * flush and reset. Any thread. */
int ura_session_get_all_tasks(ura_session *s,
			      void (*fn)(ura_session *, const ura_task *, size_t, void *),
			      void *arg);
int ura_session_get_tasks(ura_session *s,
			  void (*fn)(ura_session *, const ura_task *data, size_t nd,
				     const ura_task *upload, size_t nu,
				     const ura_task *download, size_t ndl, void *),
			  void *arg);
/* fn runs once every task live at the call has completed. Any thread. */
int ura_session_flush(ura_session *s, void (*fn)(ura_session *, void *), void *arg);
/* flush, then drop the session's cached resources and reset its stats. Any thread. */
int ura_session_reset(ura_session *s, void (*fn)(ura_session *, void *), void *arg);
/* A snapshot of the session's counters, also after its final event. Returns 0 or
 * -EINVAL (s or out NULL). Any thread. */
int ura_session_stats(ura_session *s, struct ura_session_stats *out);

/* -------------------------------------------------------------- messages */

/* An immutable, refcounted byte payload: what connections carry. */
typedef struct ura_msg ura_msg;

/*
 * A message holding a copy of data[0, len). len 0 is valid (data may then be NULL). The
 * caller owns the one reference and drops it with ura_msg_unref. -EINVAL if out is NULL
 * or data is NULL with len > 0; -EMSGSIZE if len is over the wire format's limit
 * (UINT32_MAX bytes; a connection may enforce a smaller one); -ENOMEM. Any thread.
 */
int ura_msg_new(const void *data, size_t len, ura_msg **out);
/* Takes one more reference on m; returns m. NULL is fine. Any thread. */
ura_msg *ura_msg_ref(ura_msg *m);
/* Drops one reference; the last one frees m. NULL is fine. Any thread. */
void ura_msg_unref(ura_msg *m);
/* The payload, len bytes, aligned for any type, valid while the caller holds a reference.
 * Never NULL for a message (also when len is 0); NULL for NULL. Any thread. */
const void *ura_msg_data(const ura_msg *m);
/* The payload's length in bytes; 0 for NULL. Any thread. */
size_t ura_msg_len(const ura_msg *m);
/* True for a received message whose sender waits for an answer (ura_conn_reply); false
 * for a message made by ura_msg_new, and for NULL. Any thread. */
bool ura_msg_expects_reply(const ura_msg *m);


/* ----------------------------------------------------------- connections */

typedef struct ura_conn ura_conn;
typedef struct ura_listener ura_listener;

enum ura_event_type { URA_EVENT_MESSAGE, URA_EVENT_ERROR };
enum ura_error {
	URA_ERROR_CONNECTION_INTERRUPTED = 1, /* peer went away; a client by address reconnects */
	URA_ERROR_CONNECTION_INVALID,         /* the final event: nothing follows it */
	URA_ERROR_TERMINATION_IMMINENT,       /* the service is shutting down (ura_main) */
};
/* msg is borrowed for the call (ura_msg_ref keeps it); NULL for errors. */
struct ura_event {
	enum ura_event_type type;
	enum ura_error error;
	ura_msg *msg;
};
typedef void (*ura_event_fn)(ura_conn *c, const struct ura_event *ev, void *ctx);
/* The callback owns one reference to peer (ura_conn_unref when done with it). */
typedef void (*ura_accept_fn)(ura_listener *l, ura_conn *peer, void *ctx);

/* Adopts a connected stream socket (the connection closes it; on an error the caller
 * keeps it). Inactive until ura_conn_activate. When its peer shuts down its sending side
 * (end of stream), the connection still writes everything it accepted and waits for the
 * requests it received to be answered or released, at most 30 s, then closes and ends
 * (INVALID, reason "peer closed"). The same holds for accepted connections. The caller owns one reference. Returns 0,
 * -EINVAL (loop or out NULL, fd negative), -ESHUTDOWN (the loop is being or was freed),
 * -ENOMEM. Any thread. */
int ura_conn_new(ura_loop *loop, int fd, ura_conn **out);
/* A client of "unix:/path", "unix:@abstract", "tcp:host:port" or "tcp:[v6]:port". A host
 * name is resolved here (blocking); an address that cannot be reached is an INVALID
 * event with the reason once active. Returns 0, -EINVAL (loop, address or out NULL, a
 * malformed address), -ENAMETOOLONG (a unix path over 107 bytes), -ENOENT (an unknown
 * host name or scope interface), -EHOSTUNREACH or getaddrinfo(3)'s errno (resolution
 * failed otherwise), -ESHUTDOWN (the loop is being or was freed), -ENOMEM. Any thread. */
int ura_conn_connect(ura_loop *loop, const char *address, ura_conn **out);
/* Sets the handler; only before activation. Returns 0, -EINVAL (c NULL), -EBUSY
 * (already activated). Any thread. */
int ura_conn_set_event_handler(ura_conn *c, ura_event_fn fn, void *ctx);
/* Largest frame payload accepted or sent (default 16 MiB); before activation. Returns 0,
 * -EINVAL (c NULL, bytes 0), -EBUSY (already activated). */
int ura_conn_set_max_frame(ura_conn *c, uint32_t bytes);
/* Output watermarks, in bytes of queued output (frames accepted by send, send_with_reply
 * and reply and not yet written to the socket). Past high the connection stops reading
 * its socket (what the peer sends waits in the kernel, so a peer that never reads
 * cannot make the connection's memory grow without bound); once the queued output is at
 * or under low it reads again. Sends are never refused for being over the mark.
 * Defaults: low 1 MiB, high 4 MiB. Before or after activation; takes effect on a later
 * loop iteration. Returns 0, -EINVAL (c NULL, high 0, low over high). Any thread. */
int ura_conn_set_watermarks(ura_conn *c, size_t low, size_t high);
/* Starts delivery; again is a no-op. Any thread. */
void ura_conn_activate(ura_conn *c);
/* Counted: no handler runs and nothing is sent while suspended. Resume on an inactive
 * connection activates it. A cancelled connection that is suspended keeps ura_loop_run
 * running until the resume that delivers its final event. suspend returns 0 or -EINVAL
 * (c NULL); resume returns 0, -EINVAL (c NULL, more resumes than suspends), -ENOMEM (the
 * last resume could not reach the loop: the connection stays suspended). Any thread. */
int ura_conn_suspend(ura_conn *c);
int ura_conn_resume(ura_conn *c);
/* Queues m (a reference is taken). Sends, send_with_reply and replies share one queue:
 * they leave in the order their calls returned, across threads (a send on the loop thread
 * never overtakes one another thread has returned from). Returns 0, -EINVAL (c or m
 * NULL), -EMSGSIZE (m is over the connection's maximum frame), -ESHUTDOWN (c cancelled
 * or invalid, or its loop freed), -ENOMEM. Any thread. */
int ura_conn_send(ura_conn *c, ura_msg *m);
/* As send; reply(c, event, arg) runs exactly once on the loop thread with the answer
 * (a MESSAGE event) or an error event (INTERRUPTED, INVALID). Returns as send; -EINVAL
 * also if reply is NULL. Any thread. */
int ura_conn_send_with_reply(ura_conn *c, ura_msg *m, ura_event_fn reply, void *arg);
/* Answers request (a received message that expects a reply) with reply. Returns 0,
 * -EINVAL (an argument NULL, or request is not an unanswered request of c), -ENOTCONN
 * (the client was interrupted since it arrived: the peer that asked is gone), -EMSGSIZE
 * (reply is over the maximum frame; request stays unanswered), -ESHUTDOWN (c cancelled
 * or invalid), -ENOMEM. Any thread. */
int ura_conn_reply(ura_conn *c, ura_msg *request, ura_msg *reply);
ura_loop *ura_conn_loop(ura_conn *c);
/* Asynchronous, non-preemptive, idempotent: unsent messages are dropped, in-flight I/O
 * is cancelled, pending replies get CONNECTION_INVALID, then the handler gets one final
 * CONNECTION_INVALID event and never runs again. Any thread. */
void ura_conn_cancel(ura_conn *c);
/* NULL while valid. Once invalid (from ura_conn_cancel on, or once it ended by itself) a
 * malloc'd copy of the reason, which the caller frees. The reason itself is kept without
 * allocating, so an invalid connection always has one: NULL then means only that this
 * copy could not be allocated. Any thread. */
char *ura_conn_copy_invalidation_reason(ura_conn *c);
ura_conn *ura_conn_ref(ura_conn *c);   /* any thread */
/* The last unref of a live connection cancels it; the runtime keeps the object until its
 * final event. Any thread; NULL is fine. */
void ura_conn_unref(ura_conn *c);

/* Listens on address (multishot accept); each peer arrives inactive in fn. The caller
 * owns one reference. Returns 0, -EINVAL (an argument NULL, a malformed address), the
 * address errors of ura_conn_connect (-ENAMETOOLONG, -ENOENT, -EHOSTUNREACH...),
 * -ESHUTDOWN (the loop is being freed), -ENOMEM, or an error from socket(2), bind(2) or
 * listen(2) (e.g. -EADDRINUSE when the address is taken, -EACCES). Loop thread. */
int ura_listener_new(ura_loop *loop, const char *address, ura_accept_fn fn, void *ctx,
		     ura_listener **out);
/* Stops accepting (asynchronous; fn is not called after the cancel took effect). */
void ura_listener_cancel(ura_listener *l);
void ura_listener_unref(ura_listener *l);
ura_loop *ura_listener_loop(ura_listener *l);
/* The bound address (e.g. the port chosen for "tcp:127.0.0.1:0"), snprintf-like. */
size_t ura_listener_address(ura_listener *l, char *buf, size_t len);

/* -------------------------------------------------------------- services */

/* Work that must finish before a graceful shutdown. Any thread. */
void ura_transaction_begin(ura_loop *loop);
void ura_transaction_end(ura_loop *loop);
/* Open transactions on the loop. Any thread. */
uint64_t ura_transaction_count(ura_loop *loop);

struct ura_main_config {
	uint32_t shutdown_timeout_ms; /* wait for transactions after the signal; 0: 10000 */
	uint32_t reserved[7];         /* must be zero */
	/* Called on the loop thread once listening, e.g. to report the bound address. */
	void (*ready)(ura_loop *loop, ura_listener *l, void *ctx);
};
/* Runs a service on address: accepts peers into fn until SIGTERM or SIGINT, then stops
 * accepting, sends TERMINATION_IMMINENT once to each peer, waits (bounded) for open
 * transactions to reach zero, cancels every connection, drains and returns 0. The
 * signals are blocked in the calling thread and read through the ring (signalfd).
 * Returns 0 after that shutdown, or at once -EINVAL (address or fn NULL, a non-zero
 * reserved field in cfg), an error of ura_loop_new or ura_listener_new, -ENOMEM, or an
 * error from signalfd(2); later, an error of ura_loop_run_once ends it early. */
int ura_main(const char *address, ura_accept_fn fn, void *ctx);
int ura_main_with(const char *address, const struct ura_main_config *cfg, ura_accept_fn fn,
		  void *ctx);

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif
#endif /* URA_H */
