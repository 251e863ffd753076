/*
 * Connections: XPC lifecycle over a private session's tasks. What the files of a
 * connection share, and no more: the object, and each file's entry points for the others
 * (conn.c lists which file owns what).
 */
#ifndef URA_CONN_H
#define URA_CONN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "address.h"
#include "frame.h"
#include "list.h"
#include "loop.h"
#include "msg.h"

#define URA__CONN_BATCH 32        /* messages per sendmsg */
#define URA__REPLY_BUCKETS 64     /* pending replies, by id */
#define URA__CONN_REASON_MAX 192  /* longest reason kept (longer ones are cut) */
/* Output watermarks (ura_conn_set_watermarks): past the high mark of queued output the
 * connection stops reading; at or under the low one it reads again. */
#define URA__CONN_WM_HIGH_DEFAULT ((size_t)4 << 20)
#define URA__CONN_WM_LOW_DEFAULT ((size_t)1 << 20)
/* How long a connection whose peer half-closed may take to write what it accepted. */
#define URA__CONN_CLOSE_TIMEOUT_NS (30ull * 1000 * 1000 * 1000)

/* A call to the loop thread, fn(arg), embedded in the connection or an op, so sending
 * it cannot fail (conn.c, ura__conn_run_on_loop). */
struct ura__conn_call {
	struct ura__cmd cmd;
	void (*fn)(void *arg);
	void *arg;
};
/* Its handler. Discarded by ura_loop_free: nothing (embedded, never freed here). */
void ura__conn_call_run(struct ura__cmd *cmd, bool discard);

/* A message waiting to be written, framed. */
struct ura__out {
	struct ura__out *next;
	ura_msg *msg;
	ura_loop *txn_loop; /* a reply holds its request's transaction until written */
	uint8_t hdr[URA__FRAME_HEADER_SIZE];
};

/* A reply handler waiting for the frame that answers id. */
struct ura__reply {
	struct ura__reply *next;
	uint64_t id;
	ura_event_fn fn;
	void *arg;
};

/* A received request not answered yet (no reference: its release hook removes it). */
struct ura__request {
	const ura_msg *msg;
	bool stale; /* its peer is gone (a client's interruption): the reply has nowhere to go */
};

/* An event held back while the connection is inactive or suspended. fn NULL: the
 * connection's handler. */
struct ura__held_event {
	struct ura__list link;    /* on c->held, oldest first */
	struct ura_event ev;
	ura_event_fn fn;
	void *arg;
};

enum ura__conn_state {
	URA__CONN_INACTIVE,     /* created, not activated */
	URA__CONN_CONNECTING,   /* client: connect in flight */
	URA__CONN_OPEN,         /* receiving and sending */
	URA__CONN_CLOSING,      /* the peer half-closed: writing what was accepted, then done */
	URA__CONN_DISCONNECTED, /* client whose peer left: the next send reconnects */
	URA__CONN_CANCELLING,   /* its I/O session is being invalidated, or its final event waits */
	URA__CONN_DONE,         /* final event delivered */
};

struct ura_conn {
	ura_loop *loop;
	_Atomic uint32_t refs;      /* memory: users' plus the runtime's until the final event */
	_Atomic uint32_t user_refs; /* the last user unref cancels */
	_Atomic int suspend;        /* suspend count, any thread */
	_Atomic bool activated;
	_Atomic bool cancelled;
	_Atomic bool finished;      /* final event delivered: nothing may touch the loop now */
	/* Sends that passed the cancelled check and have not been taken off sendq yet: the
	 * final event waits for them (conn_send.c, send_queued). */
	_Atomic uint32_t posting;
	_Atomic uint32_t epoch;     /* interruptions so far (a reply belongs to one epoch) */
	/* Set once, before sends are refused: points at reason_buf (written on the loop thread
	 * before it is published) or at a constant text. Never allocated, so an invalid
	 * connection always has a reason. */
	_Atomic(const char *) reason;
	char reason_buf[URA__CONN_REASON_MAX];
	/* Activation and cancel happen once each and must not fail for want of memory: their
	 * commands to the loop are embedded here. */
	struct ura__conn_call activate_cmd, cancel_cmd;
	/* Every send, from any thread, in the order the calls returned: an MPSC queue of
	 * ops (conn_send.c, "the send queue"). drain_cmd is in the loop's inbox only while
	 * sendq is not empty. sendq is on its own cache line: every sending thread writes it. */
	struct ura__inbox sendq;
	struct ura__conn_call drain_cmd;
	ura_event_fn handler;       /* set before activation; read on the loop thread */
	void *ctx;
	uint32_t max_frame;

	/* Requests received that expect a reply and are not answered yet (any thread
	 * answers, so under a lock). Each holds one transaction of the loop. */
	pthread_mutex_t lock;
	struct ura__request *unanswered;
	size_t n_unanswered, cap_unanswered;
	size_t answering;               /* replies between take_request and the send queue */
	_Atomic bool half_closed;       /* set once the peer's end of stream was seen */
	size_t wm_low_set, wm_high_set; /* the watermarks as last set; the poke copies them */

	/* Asks the loop thread to look at the connection again (conn_flow.c): embedded, so
	 * it cannot fail, and in the loop's inbox at most once (poke_queued). */
	struct ura__conn_call poke_cmd;
	_Atomic bool poke_queued;

	/* Loop thread only. */
	enum ura__conn_state state;
	bool by_address;
	/* The final event is due: it waits for held events, sends on their way (posting) or
	 * a resume. */
	bool final_pending;
	bool loop_ending;            /* ura_loop_free is ending the connection */
	int fd;
	struct ura__address addr;
	ura_session *io;             /* every task of the connection runs here */
	unsigned tasks_on_fd;        /* connect/recv/write tasks using fd */
	bool recv_live, writing;
	ura_task write_task;
	struct ura__out *out_head, *out_tail;
	uint32_t in_write;           /* entries the write in flight covers */
	size_t head_written;         /* bytes of out_head already written */
	struct iovec iov[2 * URA__CONN_BATCH];
	struct msghdr mh;
	struct ura__reply *replies[URA__REPLY_BUCKETS];
	uint64_t next_id;
	struct ura__list held;       /* struct ura__held_event, oldest first (conn_deliver.c) */
	struct ura__frame_decoder dec;
	bool active_counted;         /* a started handle of the loop (ura__loop_handle_start) */
	bool final_held;             /* counted by ura__loop_final_hold */
	bool draining;               /* ura__conn_drain_sends is running */

	/* Flow control (conn_flow.c). Loop thread only. */
	size_t wm_low, wm_high;      /* the watermarks in force */
	size_t out_bytes;            /* whole frames from out_head to out_tail */
	bool read_paused;            /* queued output went over the high mark */
	bool recv_cancelling;        /* the armed recv was cancelled to stop reading */
	ura_task recv_task;
	/* Received but not decoded: reading stopped in the middle of a chunk, or a chunk
	 * came after (the cancelled recv's last ones). Freed once decoded. */
	unsigned char *pend;
	size_t pend_off, pend_len, pend_cap;
	bool eof_seen;               /* the recv ended at end of stream; acted on once pend is fed */
	int recv_err;                /* the recv ended with this error; likewise */
	uint64_t close_timeout_ns;   /* the wait of a half-closed connection */
};

/* conn.c: references, commands to the loop, the end. Loop thread unless noted. */
/* A runtime reference: keeps the memory, unlike ura_conn_ref it does not keep the
 * connection alive (the user's last unref still cancels it). Any thread. */
void ura__conn_retain(ura_conn *c);
void ura__conn_release(ura_conn *c);
/* Runs fn(arg) on the loop thread, now or through cmd (embedded in its owner). c is held
 * until fn ran. false: the loop was freed, fn will never run. Any thread. */
bool ura__conn_run_on_loop(ura_conn *c, struct ura__conn_call *call, void (*fn)(void *),
			   void *arg);
/* The connection counts as a started handle of the loop (on) or stops counting. */
void ura__conn_count_active(ura_conn *c, bool on);
/* From here sends are refused (-ESHUTDOWN): reason first, then cancelled. */
void ura__conn_refuse_sends(ura_conn *c, const char *reason);
/* Ends the connection with reason (kept unless it has one already): sends are refused,
 * what is unsent is dropped, its tasks are cancelled, the final event follows. */
void ura__conn_invalidate(ura_conn *c, const char *reason);
/* ura__conn_invalidate with a reason formatted into the connection's reason buffer (cut
 * at URA__CONN_REASON_MAX). Nothing is formatted if the connection is ending already. */
__attribute__((format(printf, 2, 3)))
void ura__conn_fail(ura_conn *c, const char *fmt, ...);
/* The peer left (err 0: end of stream): a client by address is interrupted, any other
 * connection ends. */
void ura__conn_peer_gone(ura_conn *c, int err);
bool ura__conn_is_live(const ura_conn *c);

/* conn_send.c: the send queue, pending reply handlers, requests to answer. */
/* Runs the send queue's ops in order; drain_cmd's function. Loop thread. */
void ura__conn_drain_sends(void *arg);
/* The last resume: delivers what was held and writes again, on the loop thread. 0,
 * -ENOMEM, or -ESHUTDOWN once the loop was freed. Any thread. */
int ura__conn_resume_op(ura_conn *c);
/* The reply handler waiting for id, taken out (the caller frees it), or NULL. */
struct ura__reply *ura__conn_take_reply(ura_conn *c, uint64_t id);
/* Tells every pending reply handler e, once each. */
void ura__conn_fail_replies(ura_conn *c, enum ura_error e);
/* Keeps a received request until it is answered or released, with a transaction. */
void ura__conn_hold_request(ura_conn *c, ura_msg *m);
/* A request's release hook (ura_msg's on_release; arg is c, which it holds). */
void ura__conn_request_released(ura_msg *m, void *arg);
/* The peer is gone: live requests end their transactions and become stale; forget:
 * drop them all. Any thread. */
void ura__conn_requests_peer_gone(ura_conn *c, bool forget);
/* Requests received and neither answered nor released. Any thread. */
size_t ura__conn_requests_open(ura_conn *c);

/* conn_deliver.c: events to the handler and reply handlers. Loop thread. */
/* A received frame, as an event to its reply handler or to the handler. */
void ura__conn_frame(ura_conn *c, const struct ura__frame *f);
/* Calls fn (NULL: the handler) with ev now, or holds it while the connection holds. */
void ura__conn_deliver(ura_conn *c, ura_event_fn fn, void *arg, const struct ura_event *ev);
void ura__conn_error_event(ura_conn *c, ura_event_fn fn, void *arg, enum ura_error e);
/* Tells the connection's handler e (TERMINATION_IMMINENT from ura_main). */
void ura__conn_notify(ura_conn *c, enum ura_error e);
/* Delivers what was held if nothing holds it any more, then a pending final event. */
void ura__conn_flush_held(ura_conn *c);
/* Drops the held events meant for the handler; reply handlers keep theirs. */
void ura__conn_drop_held_handler_events(ura_conn *c);

/* conn_io.c */
void ura__conn_start_io(ura_conn *c);
void ura__conn_start_connect(ura_conn *c);
void ura__conn_kick_writer(ura_conn *c);
void ura__conn_drop_unsent(ura_conn *c);
void ura__conn_free_out(struct ura__out *o);
void ura__conn_close_fd_if_idle(ura_conn *c);
/* Reading on: feeds what was kept, then acts on the recv's end or arms a new one. */
void ura__conn_pump_input(ura_conn *c);
/* Reading off: cancels the armed recv (what it still brings is kept). */
void ura__conn_stop_recv(ura_conn *c);
void ura__conn_drop_pending(ura_conn *c);

/* conn_flow.c: watermarks and the half-closed end. Loop thread unless noted. */
/* Bytes of frames accepted and not yet written (on the loop thread; sends still in the
 * send queue come when it drains). */
size_t ura__conn_queued_bytes(const ura_conn *c);
/* A recv is armed: the connection reads its socket. */
bool ura__conn_reading(const ura_conn *c);
/* Stops reading past the high mark, resumes at or under the low one. */
void ura__conn_flow_check(ura_conn *c);
/* The peer of an adopted connection half-closed: write what was accepted, then end. */
void ura__conn_half_closed(ura_conn *c);
/* A half-closed connection ends once nothing accepted is left to write. */
void ura__conn_closing_check(ura_conn *c);
/* Any thread: the loop thread runs the checks above on a later iteration. */
void ura__conn_poke(ura_conn *c);
/* For tests: a shorter wait for a half-closed connection. Before activation. */
void ura__conn_set_close_timeout(ura_conn *c, uint64_t ns);

#endif
