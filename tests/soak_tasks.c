/*
 * The soak's sessions and tasks (see soak.c): submits of every kind from any thread,
 * cancels, invalidations of both kinds, flush and get_all_tasks, and the checks of what a
 * session promises, made once it is final and nobody holds it.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "soak.h"

_Atomic uint64_t live_tasks, live_reads; /* accepted (or being submitted), not terminal */
static int pipes[PIPES][2];

enum kind { K_NOP, K_SHORT, K_LONG, K_READ, K_SUSPENDED, K_KINDS };

struct sctx;

/* One submit, kept until its session is checked. */
struct trec {
	struct trec *next;
	struct sctx *sc;
	enum kind kind;
	ura_task handle;              /* written by the submitter once accepted */
	_Atomic int state;            /* SUBMITTING, ACCEPTED, REFUSED */
	_Atomic uint32_t calls, terminal, late;
	_Atomic ura_task seen;        /* the handle the callback got */
	_Atomic int32_t res;
	uint64_t buf;                 /* pipe reads land here */
};

struct sctx {
	ura_session *s;
	bool shared;
	_Atomic uint32_t users;       /* threads that picked it from the table and hold it */
	_Atomic uint32_t finals;
	_Atomic bool final_seen;
	_Atomic int final_error;
	_Atomic uint64_t late;        /* delegate, flush or listing calls after the final */
	_Atomic uint64_t delegate_calls;
	_Atomic(struct trec *) recs;  /* every submit ever made to it, newest first */
	_Atomic ura_task recent[RECENT];
	struct sctx *next;            /* loop thread: the retiring list */
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sctx *sessions[MAX_SESSIONS]; /* under table_lock */
static unsigned n_sessions;
static struct sctx *retiring;               /* loop thread: final, waiting for users */
static struct sctx shared_sc = { .shared = true };

static void submit_one(struct sctx *sc, enum kind kind);
static void invalidate(struct sctx *sc, bool in_callback);

static bool res_ok(enum kind k, int32_t res)
{
	if (res == -ECANCELED || res == -EINTR)
		return true;
	switch (k) {
	case K_NOP:
	case K_SUSPENDED: return res == 0;
	case K_SHORT:
	case K_LONG: return res == -ETIME;
	case K_READ: return res > 0 && res <= (int32_t)sizeof(uint64_t);
	default: return false;
	}
}

static void task_cb(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	struct trec *r = arg;
	struct sctx *sc = r->sc;
	if (atomic_load(&sc->final_seen))
		atomic_fetch_add(&r->late, 1);
	atomic_fetch_add(&r->calls, 1);
	atomic_store(&r->seen, t);
	atomic_store(&r->res, res);
	if (flags & IORING_CQE_F_MORE)
		return; /* none of the soak's ops is multishot; the check catches it */
	atomic_fetch_add(&r->terminal, 1);
	atomic_fetch_add(&counts.terminal, 1);
	atomic_fetch_sub(&live_tasks, 1);
	if (r->kind == K_READ)
		atomic_fetch_sub(&live_reads, 1);
	if (res == -ECANCELED || res == -EINTR)
		atomic_fetch_add(&counts.cancelled_res, 1);
	if (!res_ok(r->kind, res))
		violation("task kind %d ended with res %d", r->kind, res);
	if (atomic_load(&draining) || !ura_session_is_valid(s))
		return;
	/* Work made inside a callback: a submit (any kind), now and then an invalidation,
	 * which must take effect only after this callback returns. */
	if (chance(8))
		submit_one(sc, sc->shared ? (enum kind)below(2) : (enum kind)below(K_KINDS));
	if (!sc->shared && chance(4000))
		invalidate(sc, true);
}

static void on_task_done(ura_session *s, ura_task t, int32_t res, void *ctx)
{
	(void)s, (void)t, (void)res;
	struct sctx *sc = ctx;
	if (atomic_load(&sc->final_seen))
		atomic_fetch_add(&sc->late, 1);
	atomic_fetch_add(&sc->delegate_calls, 1);
}

static void on_invalid(ura_session *s, int error, void *ctx)
{
	(void)s;
	struct sctx *sc = ctx;
	if (atomic_fetch_add(&sc->finals, 1) != 0)
		violation("session %p: a second final event", (void *)sc->s);
	atomic_store(&sc->final_error, error);
	atomic_store(&sc->final_seen, true);
	atomic_fetch_add(&counts.finals, 1);
}

static const struct ura_session_delegate delegate = {
	.task_did_complete = on_task_done,
	.did_become_invalid = on_invalid,
};

static void push_rec(struct sctx *sc, struct trec *r)
{
	/* Treiber push: records are only taken off once nobody can push any more. */
	struct trec *head = atomic_load(&sc->recs);
	do
		r->next = head;
	while (!atomic_compare_exchange_weak(&sc->recs, &head, r));
}

/* A suspended task is resumed or cancelled by its submitter at once, so no session
 * waits forever on one (finish_tasks_and_invalidate lets suspended tasks be). */
static void settle_suspended(struct sctx *sc, ura_task t)
{
	if (chance(2)) {
		int rc = ura_task_resume(sc->s, t);
		/* -ENOENT: a canceller finished it; -EINVAL: it is being cancelled. */
		if (rc == 0)
			atomic_fetch_add(&counts.resumed, 1);
		else if (rc != -ENOENT && rc != -EINVAL)
			violation("resume of a suspended task: %d", rc);
		return;
	}
	int rc = ura_task_cancel(sc->s, t);
	if (rc != 0 && rc != -ENOENT && rc != -EALREADY)
		violation("cancel of a suspended task: %d", rc);
}

static void submit_one(struct sctx *sc, enum kind kind)
{
	if (atomic_load(&live_tasks) >= MAX_LIVE_TASKS)
		return;
	if (kind == K_READ && atomic_fetch_add(&live_reads, 1) >= MAX_LIVE_READS) {
		atomic_fetch_sub(&live_reads, 1);
		kind = K_NOP;
	}
	struct trec *r = calloc(1, sizeof(*r));
	if (!r)
		abort();
	r->sc = sc;
	r->kind = kind;
	/* Pushed before the submit: whatever happens, the check sees it. */
	push_rec(sc, r);
	atomic_fetch_add(&live_tasks, 1);
	ura_task t = 0;
	int rc;
	switch (kind) {
	case K_NOP:
		rc = ura_nop(sc->s, task_cb, r, &t);
		break;
	case K_SHORT:
		rc = ura_timeout(sc->s, 1000 + below(2 * MS), task_cb, r, &t);
		break;
	case K_LONG:
		rc = ura_timeout(sc->s, 20 * MS + below(480 * MS), task_cb, r, &t);
		break;
	case K_READ:
		rc = ura_read(sc->s, pipes[below(PIPES)][0], &r->buf, sizeof(r->buf), 0, task_cb,
			      r, &t);
		break;
	default: {
		struct io_uring_sqe sqe;
		memset(&sqe, 0, sizeof(sqe));
		io_uring_prep_nop(&sqe);
		rc = ura_submit(sc->s, &sqe, URA_SUBMIT_SUSPENDED, task_cb, r, &t);
		break;
	}
	}
	if (rc == 0) {
		r->handle = t;
		atomic_store(&r->state, ACCEPTED);
		atomic_store(&sc->recent[below(RECENT)], t);
		atomic_fetch_add(&counts.submitted, 1);
		if (kind == K_SUSPENDED)
			settle_suspended(sc, t);
		return;
	}
	/* -EAGAIN: another thread met the loop's bound on queued work (max_queued); nothing
	 * was accepted. Anything else must be an ended session. */
	if (rc == -EAGAIN)
		atomic_fetch_add(&counts.busy, 1);
	else if (rc != -ESHUTDOWN)
		violation("submit of kind %d failed with %d", kind, rc);
	else if (sc->shared)
		violation("the shared session refused a submit: %d", rc);
	atomic_store(&r->state, REFUSED);
	atomic_fetch_sub(&live_tasks, 1);
	if (kind == K_READ)
		atomic_fetch_sub(&live_reads, 1);
	atomic_fetch_add(&counts.refused, 1);
}

static void cancel_recent(struct sctx *sc)
{
	ura_task t = atomic_load(&sc->recent[below(RECENT)]);
	if (!t)
		return;
	int rc = ura_task_cancel(sc->s, t);
	if (rc == 0)
		atomic_fetch_add(&counts.cancel_ok, 1);
	else if (rc == -ENOENT)
		atomic_fetch_add(&counts.cancel_enoent, 1);
	else if (rc == -EALREADY)
		atomic_fetch_add(&counts.cancel_ealready, 1);
	else
		violation("ura_task_cancel: %d", rc);
}

static void invalidate(struct sctx *sc, bool in_callback)
{
	bool cancel = chance(2);
	uint32_t before = atomic_load(&sc->finals);
	if (cancel)
		ura_session_invalidate_and_cancel(sc->s);
	else
		ura_session_finish_tasks_and_invalidate(sc->s);
	atomic_fetch_add(cancel ? &counts.inval_cancel : &counts.inval_finish, 1);
	if (in_callback)
		atomic_fetch_add(&counts.inval_in_callback, 1);
	/* On the loop thread the final event can only come from a later iteration. */
	if (on_loop_thread() && atomic_load(&sc->finals) != before)
		violation("final event inside the invalidate call");
	if (ura_session_is_valid(sc->s))
		violation("session still valid after an invalidation");
}

void act_invalidate_shared(void)
{
	ura_session_finish_tasks_and_invalidate(shared_sc.s);
	ura_session_invalidate_and_cancel(shared_sc.s);
	atomic_fetch_add(&counts.inval_shared, 1);
	if (!ura_session_is_valid(shared_sc.s))
		violation("the shared session became invalid");
	submit_one(&shared_sc, K_NOP); /* and still accepts work */
}

static void on_flush(ura_session *s, void *arg)
{
	(void)s;
	struct sctx *sc = arg;
	if (atomic_load(&sc->final_seen))
		atomic_fetch_add(&sc->late, 1);
	atomic_fetch_add(&counts.answered, 1);
}

static void on_list(ura_session *s, const ura_task *t, size_t k, void *arg)
{
	(void)t, (void)k;
	on_flush(s, arg);
}

static void ask(struct sctx *sc)
{
	int rc = chance(2) ? ura_session_flush(sc->s, on_flush, sc)
			   : ura_session_get_all_tasks(sc->s, on_list, sc);
	if (rc == 0)
		atomic_fetch_add(&counts.asked, 1);
	else if (rc != -ESHUTDOWN)
		violation("flush/get_all_tasks: %d", rc);
}

/* The table holds every session that has not had its final event. A picker holds the
 * session (users) so that the checker never frees it under a submit in progress. */
static struct sctx *pick_session(void)
{
	struct sctx *sc = NULL;
	pthread_mutex_lock(&table_lock);
	if (n_sessions) {
		sc = sessions[below(n_sessions)];
		/* Invalidating sessions linger (finish waits for long timeouts): pick again
		 * once, so that most work goes to valid sessions and some is refused. */
		if (!ura_session_is_valid(sc->s))
			sc = sessions[below(n_sessions)];
		atomic_fetch_add(&sc->users, 1);
	}
	pthread_mutex_unlock(&table_lock);
	return sc;
}

static void put_session(struct sctx *sc)
{
	atomic_fetch_sub(&sc->users, 1);
}

void act_new_session(void)
{
	pthread_mutex_lock(&table_lock);
	unsigned valid = 0;
	for (unsigned i = 0; i < n_sessions; i++)
		valid += ura_session_is_valid(sessions[i]->s);
	if (n_sessions == MAX_SESSIONS || valid >= VALID_TARGET || atomic_load(&draining)) {
		pthread_mutex_unlock(&table_lock);
		return;
	}
	struct sctx *sc = calloc(1, sizeof(*sc));
	if (!sc)
		abort();
	int rc = ura_session_new(loop, &delegate, sc, &sc->s);
	if (rc != 0) {
		pthread_mutex_unlock(&table_lock);
		violation("ura_session_new: %d", rc);
		free(sc);
		return;
	}
	char text[32];
	snprintf(text, sizeof(text), "soak %" PRIu64, atomic_fetch_add(&counts.sessions, 1));
	if (ura_session_set_description(sc->s, text) != 0)
		violation("set_description on a new session");
	sessions[n_sessions++] = sc;
	pthread_mutex_unlock(&table_lock);
}

/* Everything a session promised, checked once it is final and nobody holds it. */
static void check_session(struct sctx *sc)
{
	if (atomic_load(&sc->finals) != 1)
		violation("session: %u final events", atomic_load(&sc->finals));
	if (atomic_load(&sc->final_error) != 0)
		violation("session: final error %d after an explicit invalidation",
			  atomic_load(&sc->final_error));
	if (atomic_load(&sc->late))
		violation("session: %" PRIu64 " delegate/flush calls after the final event",
			  atomic_load(&sc->late));
	uint64_t accepted = 0;
	struct trec *r = atomic_load(&sc->recs);
	while (r) {
		struct trec *next = r->next;
		int st = atomic_load(&r->state);
		if (st == ACCEPTED) {
			accepted++;
			if (atomic_load(&r->terminal) != 1)
				violation("accepted task (kind %d): %u terminal calls", r->kind,
					  atomic_load(&r->terminal));
			if (atomic_load(&r->late))
				violation("task called after its session's final event");
			if (atomic_load(&r->seen) != r->handle)
				violation("task callback got handle %#" PRIx64 ", submit said %#"
					  PRIx64, atomic_load(&r->seen), r->handle);
		} else if (st == REFUSED) {
			if (atomic_load(&r->calls))
				violation("refused submit was called back");
		} else {
			violation("submit still in progress on a checked session");
		}
		free(r);
		r = next;
	}
	if (atomic_load(&sc->delegate_calls) != accepted)
		violation("task_did_complete %" PRIu64 " times for %" PRIu64 " tasks",
			  atomic_load(&sc->delegate_calls), accepted);
	struct ura_session_stats st;
	if (ura_session_stats(sc->s, &st) != 0 || st.submitted != accepted ||
	    st.completed != accepted || st.in_flight != 0)
		violation("stats: submitted %" PRIu64 " completed %" PRIu64 " in flight %" PRIu64
			  ", %" PRIu64 " accepted", st.submitted, st.completed, st.in_flight,
			  accepted);
	/* Guarantee 4: the object stays usable and refuses everything. */
	if (ura_session_is_valid(sc->s) || ura_nop(sc->s, NULL, NULL, NULL) != -ESHUTDOWN ||
	    ura_session_flush(sc->s, on_flush, sc) != -ESHUTDOWN ||
	    ura_session_set_description(sc->s, "x") != -ESHUTDOWN)
		violation("an invalidated session accepted a call");
	ura_session_unref(sc->s);
	free(sc);
}

/* Loop thread: moves final sessions out of the table, checks those nobody holds. */
void reap_sessions(void)
{
	pthread_mutex_lock(&table_lock);
	for (unsigned i = 0; i < n_sessions;) {
		struct sctx *sc = sessions[i];
		if (!atomic_load(&sc->final_seen)) {
			i++;
			continue;
		}
		sessions[i] = sessions[--n_sessions];
		sc->next = retiring;
		retiring = sc;
	}
	pthread_mutex_unlock(&table_lock);
	for (struct sctx **p = &retiring; *p;) {
		struct sctx *sc = *p;
		if (atomic_load(&sc->users)) {
			p = &sc->next;
			continue;
		}
		*p = sc->next;
		check_session(sc);
	}
}

/* ------------------------------------------------------------ actions */

void act_submit(void)
{
	struct sctx *sc = pick_session();
	if (sc) {
		submit_one(sc, (enum kind)below(K_KINDS));
		put_session(sc);
	}
}

void act_submit_shared(void)
{
	submit_one(&shared_sc, (enum kind)below(2)); /* nop or short timeout: it never ends */
}

void act_cancel(void)
{
	struct sctx *sc = pick_session();
	if (sc) {
		cancel_recent(sc);
		put_session(sc);
	}
	if (chance(4))
		cancel_recent(&shared_sc);
}

void act_invalidate(void)
{
	struct sctx *sc = pick_session();
	if (sc) {
		invalidate(sc, false);
		put_session(sc);
	}
}

void act_ask(void)
{
	/* Now and then the shared session, whose walks scan the registry (session_walk.c):
	 * its tasks are nops and short timeouts, so its barriers always come due. */
	if (shared_sc.s && chance(4)) {
		ask(&shared_sc);
		return;
	}
	struct sctx *sc = pick_session();
	if (sc) {
		ask(sc);
		put_session(sc);
	}
}

void *pipe_writer(void *arg)
{
	(void)arg;
	seed_rng(0x51ed2701ull ^ (uint64_t)time(NULL));
	static const char bytes[16] = "0123456789abcdef";
	while (!atomic_load(&stop_workers)) {
		/* Non-blocking: a full pipe just skips a beat. */
		if (write(pipes[below(PIPES)][1], bytes, sizeof(bytes)) < 0 && errno != EAGAIN)
			violation("pipe write: %s", strerror(errno));
		usleep(50 + below(150));
	}
	return NULL;
}

/* ------------------------------------------------------------ start, drain, end */

int tasks_init(void)
{
	for (int i = 0; i < PIPES; i++) {
		if (pipe2(pipes[i], O_CLOEXEC) != 0 ||
		    fcntl(pipes[i][1], F_SETFL, O_NONBLOCK) != 0)
			return -errno;
	}
	shared_sc.s = ura_session_shared(loop);
	return 0;
}

void tasks_fini(void)
{
	for (int i = 0; i < PIPES; i++) {
		close(pipes[i][0]);
		close(pipes[i][1]);
	}
}

void sessions_count(unsigned *valid, unsigned *all)
{
	pthread_mutex_lock(&table_lock);
	*all = n_sessions;
	*valid = 0;
	for (unsigned i = 0; i < n_sessions; i++)
		*valid += ura_session_is_valid(sessions[i]->s);
	pthread_mutex_unlock(&table_lock);
}

void drain_sessions(void)
{
	pthread_mutex_lock(&table_lock);
	for (unsigned i = 0; i < n_sessions; i++)
		ura_session_invalidate_and_cancel(sessions[i]->s);
	pthread_mutex_unlock(&table_lock);
}

bool sessions_final(void)
{
	pthread_mutex_lock(&table_lock);
	bool none = n_sessions == 0;
	pthread_mutex_unlock(&table_lock);
	return none && !retiring && atomic_load(&live_tasks) == 0;
}

/* What the drain waits for, when it waited too long: the sessions not final yet, with
 * their stats and the tasks still live. Loop thread. */
void report_unfinished_sessions(void)
{
	pthread_mutex_lock(&table_lock);
	for (unsigned i = 0; i < n_sessions; i++) {
		struct sctx *sc = sessions[i];
		struct ura_session_stats st;
		ura_session_stats(sc->s, &st);
		fprintf(stderr, "soak: unfinished session: in flight %" PRIu64 ", cancel CQEs: "
			"0 %" PRIu64 ", -ENOENT %" PRIu64 ", -EALREADY %" PRIu64 "\n",
			st.in_flight, st.cancel_ok, st.cancel_enoent, st.cancel_ealready);
		for (struct trec *r = atomic_load(&sc->recs); r; r = r->next) {
			if (atomic_load(&r->state) != ACCEPTED || atomic_load(&r->terminal))
				continue;
			fprintf(stderr, "soak:   live task kind %d, state %d (0 running, "
				"2 cancelling)\n", r->kind, ura_task_state(sc->s, r->handle));
		}
	}
	pthread_mutex_unlock(&table_lock);
}

void check_sessions_end(void)
{
	reap_sessions(); /* anything the loop's free ended (a violation: error != 0) */
	if (n_sessions || retiring)
		violation("%u sessions never had their final event", n_sessions);
	for (struct trec *r = atomic_load(&shared_sc.recs), *next; r; r = next) {
		next = r->next;
		if (atomic_load(&r->state) == ACCEPTED && atomic_load(&r->terminal) != 1)
			violation("shared-session task: %u terminal calls", atomic_load(&r->terminal));
		free(r);
	}
}
