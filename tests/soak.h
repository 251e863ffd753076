/* The soak's parts (tests/soak.c, soak_tasks.c, soak_conns.c): what they share. */
#ifndef URA_SOAK_H
#define URA_SOAK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "ura.h"

enum {
	WORKERS = 4,
	PIPES = 8,
	MAX_SESSIONS = 256,        /* table: valid and invalidating sessions */
	VALID_TARGET = 16,         /* new sessions are made while fewer are valid */
	MAX_CONNS = 256,           /* table: clients and peers */
	CLIENT_TARGET = 12,        /* new clients are made while fewer are in the table */
	MAX_LIVE_TASKS = 4000,     /* submitters back off above this */
	MAX_LIVE_READS = 256,      /* pipe reads wait for the writer: keep them few */
	MAX_PENDING_REPLIES = 2000,
	RECENT = 8,                /* handles kept per session for cancellers */
	DRAIN_MS = 30000,
	IDLE_CHECK_MS = 5000,      /* ura_loop_run after the drain must return before this */
	MAX_REPORTED = 30,         /* violations printed; all are counted */
};

#define MS 1000000ull

/* What a submit or send_with_reply became. */
enum { SUBMITTING, ACCEPTED, REFUSED };

/* Everything counted, printed at the end. Any thread. */
struct soak_counts {
	_Atomic uint64_t submitted, refused, busy, terminal, cancelled_res, resumed;
	_Atomic uint64_t cancel_ok, cancel_enoent, cancel_ealready;
	_Atomic uint64_t sessions, finals, inval_finish, inval_cancel, inval_in_callback;
	_Atomic uint64_t inval_shared, asked, answered;
	_Atomic uint64_t clients, peers, conn_finals, interrupted, conn_cancels, conn_drops;
	_Atomic uint64_t suspends, msgs_sent, msgs_received, echoes;
	_Atomic uint64_t requests, requests_refused, replies_msg, replies_invalid;
	_Atomic uint64_t replies_interrupted, replies_after_final;
	_Atomic uint64_t violations;
};

/* soak.c */
extern struct soak_counts counts;
extern ura_loop *loop;
extern _Atomic bool draining;     /* the drain has begun: no new work from callbacks */
extern _Atomic bool stop_workers;
extern char address[64];          /* the listener's */
/* Counts a broken invariant and prints the first MAX_REPORTED. Any thread. */
void violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void seed_rng(uint64_t seed);     /* per thread */
uint64_t rnd(void);
uint32_t below(uint32_t k);
bool chance(uint32_t one_in);
bool on_loop_thread(void);

/* soak_tasks.c: sessions and their tasks. Actions run on any thread. */
extern _Atomic uint64_t live_tasks, live_reads;
int tasks_init(void);             /* the pipes, the shared session */
void tasks_fini(void);
void act_submit(void);
void act_submit_shared(void);
void act_cancel(void);
void act_invalidate(void);
void act_invalidate_shared(void);
void act_new_session(void);
void act_ask(void);
void *pipe_writer(void *arg);
void reap_sessions(void);         /* loop thread: checks sessions that are final */
void sessions_count(unsigned *valid, unsigned *all);
void drain_sessions(void);        /* invalidate_and_cancel every session */
bool sessions_final(void);
void report_unfinished_sessions(void);
void check_sessions_end(void);    /* after ura_loop_free */

/* soak_conns.c: the listener's peers and the clients. */
extern _Atomic uint64_t pending_replies;
void on_accept(ura_listener *l, ura_conn *peer, void *ctx);
void act_new_client(void);
void act_drop_conn(void);
void act_conn(void);
void reap_conns(void);            /* loop thread: drops connections that are final */
unsigned conns_count(void);
void drain_conns(void);           /* cancel and drop every connection */
bool conns_final(void);
void report_unfinished_conns(void);
void check_conns_end(void);       /* after ura_loop_free */

#endif
