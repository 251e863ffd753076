/* Errors: every bad input of the public API answers the exact -errno ura.h lists for it. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

static ura_loop *loop;
static ura_session *sh;

static void setup(void)
{
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	sh = ura_session_shared(loop);
}

static void teardown(void)
{
	ura_loop_free(loop);
}

TestSuite(errors, .init = setup, .fini = teardown);

static struct io_uring_sqe nop_sqe(void)
{
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_nop(&sqe);
	return sqe;
}

static void nothing(void *arg)
{
	(void)arg;
}

static void get_all(ura_session *s, const ura_task *t, size_t n, void *arg)
{
	(void)s, (void)t, (void)n, (void)arg;
}

static void get_kinds(ura_session *s, const ura_task *d, size_t nd, const ura_task *u,
		      size_t nu, const ura_task *dl, size_t ndl, void *arg)
{
	(void)s, (void)d, (void)nd, (void)u, (void)nu, (void)dl, (void)ndl, (void)arg;
}

static void barrier(ura_session *s, void *arg)
{
	(void)s, (void)arg;
}

/* ------------------------------------------------------------------ loop */

Test(errors, loop_new_refuses_bad_configs)
{
	ura_loop *l = NULL;
	cr_assert_eq(ura_loop_new(NULL, NULL), -EINVAL, "out NULL");
	struct ura_loop_config cfg = { 0 };
	cfg.reserved[3] = 1;
	cr_assert_eq(ura_loop_new(&cfg, &l), -EINVAL, "reserved field");
	cfg = (struct ura_loop_config){ .flags = 1u << 5 };
	cr_assert_eq(ura_loop_new(&cfg, &l), -EINVAL, "unknown flag");
	cfg = (struct ura_loop_config){ .sq_entries = 4 };
	cr_assert_eq(ura_loop_new(&cfg, &l), -EINVAL, "sq_entries below 8");
	cfg = (struct ura_loop_config){ .sq_entries = 32769 };
	cr_assert_eq(ura_loop_new(&cfg, &l), -EINVAL, "sq_entries above 32768");
	cfg = (struct ura_loop_config){ .cq_entries = 65537 };
	cr_assert_eq(ura_loop_new(&cfg, &l), -EINVAL, "cq_entries above 65536");
	cfg = (struct ura_loop_config){ .sq_entries = 64, .cq_entries = 32 };
	cr_assert_eq(ura_loop_new(&cfg, &l), -EINVAL, "cq_entries below sq_entries");
	cr_assert_null(l, "a refused loop_new wrote out");
}

Test(errors, loop_calls_refuse_null)
{
	cr_assert_eq(ura_loop_run(NULL), -EINVAL);
	cr_assert_eq(ura_loop_run_once(NULL, false), -EINVAL);
	cr_assert_eq(ura_loop_post(NULL, nothing, NULL), -EINVAL);
	cr_assert_eq(ura_loop_post(loop, NULL, NULL), -EINVAL);
}

struct reentry {
	int run, run_once, calls;
};

static void run_inside(struct reentry *r)
{
	r->run = ura_loop_run(loop);
	r->run_once = ura_loop_run_once(loop, false);
	r->calls++;
}

static void posted_reentry(void *arg)
{
	run_inside(arg);
}

static void task_reentry(ura_session *s, ura_task t, int32_t res, uint32_t f, void *arg)
{
	(void)s, (void)t, (void)res, (void)f;
	run_inside(arg);
}

Test(errors, loop_run_inside_a_callback_is_ebusy)
{
	/* From a post, with no other work left: run must still refuse, not return 0. */
	struct reentry p = { 1, 1, 0 };
	cr_assert_eq(ura_loop_post(loop, posted_reentry, &p), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(p.calls, 1);
	cr_assert_eq(p.run, -EBUSY, "run in a post: %d", p.run);
	cr_assert_eq(p.run_once, -EBUSY, "run_once in a post: %d", p.run_once);

	struct reentry t = { 1, 1, 0 };
	cr_assert_eq(ura_nop(sh, task_reentry, &t, NULL), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(t.calls, 1);
	cr_assert_eq(t.run, -EBUSY, "run in a task callback: %d", t.run);
	cr_assert_eq(t.run_once, -EBUSY, "run_once in a task callback: %d", t.run_once);
}

static void stop_then_run(void *arg)
{
	ura_loop_stop(loop);
	*(int *)arg = ura_loop_run(loop);
}

Test(errors, a_refused_nested_run_keeps_the_stop)
{
	_Atomic bool never = false;
	struct th_calls c = { 0 };
	/* A timeout keeps the loop busy: only the stop can end the run below. */
	ura_task t;
	cr_assert_eq(ura_timeout(sh, 60ull * 1000 * 1000 * 1000, th_record, &c, &t), 0);
	int nested = 1;
	cr_assert_eq(ura_loop_post(loop, stop_then_run, &nested), 0);
	int res = 1;
	cr_assert(th_run_bounded(loop, 5000, &res), "the stop was lost");
	cr_assert_eq(res, 0);
	cr_assert_eq(nested, -EBUSY, "nested run: %d", nested);
	cr_assert_eq(ura_task_cancel(sh, t), 0);
	cr_assert(!th_run_until(loop, &never, 50));
	cr_assert_eq(atomic_load(&c.terminal), 1);
}

/* ----------------------------------------------------------------- tasks */

Test(errors, submit_refuses_bad_input)
{
	struct io_uring_sqe sqe = nop_sqe();
	ura_task t = 7;
	cr_assert_eq(ura_submit(NULL, &sqe, 0, NULL, NULL, &t), -EINVAL);
	cr_assert_eq(ura_submit(sh, NULL, 0, NULL, NULL, &t), -EINVAL);
	cr_assert_eq(ura_submit(sh, &sqe, 1u << 1, NULL, NULL, &t), -EINVAL, "unknown flag");
	sqe.flags = IOSQE_IO_LINK;
	cr_assert_eq(ura_submit(sh, &sqe, 0, NULL, NULL, &t), -EINVAL);
	sqe.flags = IOSQE_IO_HARDLINK;
	cr_assert_eq(ura_submit(sh, &sqe, 0, NULL, NULL, &t), -EINVAL);
	sqe.flags = IOSQE_CQE_SKIP_SUCCESS;
	cr_assert_eq(ura_submit(sh, &sqe, 0, NULL, NULL, &t), -EINVAL);
	cr_assert_eq(t, 7, "a refused submit wrote out");
	cr_assert_eq(ura_loop_run(loop), 0, "a refused submit left work behind");
}

Test(errors, wrappers_refuse_null_pointers)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	cr_assert_eq(ura_nop(NULL, NULL, NULL, NULL), -EINVAL);
	cr_assert_eq(ura_timeout(NULL, 1000, NULL, NULL, NULL), -EINVAL);
	cr_assert_eq(ura_read(NULL, 0, &ss, 1, 0, NULL, NULL, NULL), -EINVAL);
	cr_assert_eq(ura_accept(sh, 0, (struct sockaddr *)&ss, NULL, 0, NULL, NULL, NULL), -EINVAL,
		     "addr without addrlen");
	cr_assert_eq(ura_accept(sh, 0, NULL, &len, 0, NULL, NULL, NULL), -EINVAL,
		     "addrlen without addr");
	cr_assert_eq(ura_connect(sh, 0, NULL, 0, NULL, NULL, NULL), -EINVAL);
	cr_assert_eq(ura_openat(sh, AT_FDCWD, NULL, 0, 0, NULL, NULL, NULL), -EINVAL);
	cr_assert_eq(ura_recv_multishot(sh, 0, NULL, 0, NULL, NULL, NULL), -EINVAL);
	cr_assert_eq(ura_loop_run(loop), 0);
}

Test(errors, cancel_resume_and_state_of_unknown_handles)
{
	cr_assert_eq(ura_task_cancel(NULL, 1), -EINVAL);
	cr_assert_eq(ura_task_resume(NULL, 1), -EINVAL);
	cr_assert_eq(ura_task_state(NULL, 1), URA_TASK_COMPLETED);
	cr_assert_eq(ura_task_cancel(sh, 0), -ENOENT, "handle 0");
	cr_assert_eq(ura_task_resume(sh, 0), -ENOENT, "handle 0");
	cr_assert_eq(ura_task_state(sh, 0), URA_TASK_COMPLETED);
	cr_assert_eq(ura_task_cancel(sh, 0x123456789abcull), -ENOENT, "made-up handle");
	cr_assert_eq(ura_task_resume(sh, UINT64_MAX), -ENOENT, "made-up handle");
	cr_assert_eq(ura_task_state(sh, UINT64_MAX), URA_TASK_COMPLETED);

	ura_task done;
	cr_assert_eq(ura_nop(sh, NULL, NULL, &done), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(ura_task_cancel(sh, done), -ENOENT, "finished");
	cr_assert_eq(ura_task_resume(sh, done), -ENOENT, "finished");
	cr_assert_eq(ura_task_state(sh, done), URA_TASK_COMPLETED);
}

Test(errors, cancel_twice_is_ealready_and_resume_of_a_running_task_is_einval)
{
	struct io_uring_sqe sqe = nop_sqe();
	struct th_calls c = { 0 };
	ura_task t;
	cr_assert_eq(ura_submit(sh, &sqe, URA_SUBMIT_SUSPENDED, th_record, &c, &t), 0);
	cr_assert_eq(ura_task_cancel(sh, t), 0);
	cr_assert_eq(ura_task_cancel(sh, t), -EALREADY);
	cr_assert_eq(ura_task_resume(sh, t), -EINVAL, "cancelling, not suspended");
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&c.last_res), -ECANCELED);

	ura_task r;
	cr_assert_eq(ura_timeout(sh, 60ull * 1000 * 1000 * 1000, NULL, NULL, &r), 0);
	cr_assert_eq(ura_task_resume(sh, r), -EINVAL, "running, not suspended");
	cr_assert_eq(ura_task_cancel(sh, r), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
}

Test(errors, a_handle_of_another_session_is_enoent)
{
	ura_session *s;
	cr_assert_eq(ura_session_new(loop, NULL, NULL, &s), 0);
	struct io_uring_sqe sqe = nop_sqe();
	ura_task t;
	cr_assert_eq(ura_submit(sh, &sqe, URA_SUBMIT_SUSPENDED, NULL, NULL, &t), 0);
	cr_assert_eq(ura_task_cancel(s, t), -ENOENT);
	cr_assert_eq(ura_task_resume(s, t), -ENOENT);
	cr_assert_eq(ura_task_state(s, t), URA_TASK_COMPLETED);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_SUSPENDED);
	cr_assert_eq(ura_task_cancel(sh, t), 0);
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_session_unref(s);
}

/* -------------------------------------------------------------- sessions */

Test(errors, session_calls_refuse_null)
{
	ura_session *s = NULL;
	struct ura_session_stats st;
	cr_assert_eq(ura_session_new(NULL, NULL, NULL, &s), -EINVAL);
	cr_assert_eq(ura_session_new(loop, NULL, NULL, NULL), -EINVAL);
	cr_assert_null(s);
	cr_assert_eq(ura_session_set_description(NULL, "x"), -EINVAL);
	cr_assert_eq(ura_session_get_all_tasks(NULL, get_all, NULL), -EINVAL);
	cr_assert_eq(ura_session_get_all_tasks(sh, NULL, NULL), -EINVAL);
	cr_assert_eq(ura_session_get_tasks(NULL, get_kinds, NULL), -EINVAL);
	cr_assert_eq(ura_session_get_tasks(sh, NULL, NULL), -EINVAL);
	cr_assert_eq(ura_session_flush(NULL, barrier, NULL), -EINVAL);
	cr_assert_eq(ura_session_flush(sh, NULL, NULL), -EINVAL);
	cr_assert_eq(ura_session_reset(NULL, barrier, NULL), -EINVAL);
	cr_assert_eq(ura_session_reset(sh, NULL, NULL), -EINVAL);
	cr_assert_eq(ura_session_stats(NULL, &st), -EINVAL);
	cr_assert_eq(ura_session_stats(sh, NULL), -EINVAL);
	cr_assert_eq(ura_loop_run(loop), 0);
}

/* Every call that creates work on s answers -ESHUTDOWN; cancel and resume -ENOENT. */
static void check_ended(ura_session *s, ura_task t)
{
	struct io_uring_sqe sqe = nop_sqe();
	cr_assert_eq(ura_submit(s, &sqe, 0, NULL, NULL, NULL), -ESHUTDOWN);
	cr_assert_eq(ura_nop(s, NULL, NULL, NULL), -ESHUTDOWN);
	cr_assert_eq(ura_timeout(s, 1000, NULL, NULL, NULL), -ESHUTDOWN);
	cr_assert_eq(ura_session_set_description(s, "x"), -ESHUTDOWN);
	cr_assert_eq(ura_session_get_all_tasks(s, get_all, NULL), -ESHUTDOWN);
	cr_assert_eq(ura_session_get_tasks(s, get_kinds, NULL), -ESHUTDOWN);
	cr_assert_eq(ura_session_flush(s, barrier, NULL), -ESHUTDOWN);
	cr_assert_eq(ura_session_reset(s, barrier, NULL), -ESHUTDOWN);
	cr_assert_eq(ura_task_cancel(s, t), -ENOENT);
	cr_assert_eq(ura_task_resume(s, t), -ENOENT);
	cr_assert_eq(ura_task_state(s, t), URA_TASK_COMPLETED);
	cr_assert(!ura_session_is_valid(s));
	struct ura_session_stats st;
	cr_assert_eq(ura_session_stats(s, &st), 0, "stats stay readable");
}

Test(errors, an_invalidated_session_is_eshutdown)
{
	ura_session *s;
	cr_assert_eq(ura_session_new(loop, NULL, NULL, &s), 0);
	ura_task t;
	cr_assert_eq(ura_nop(s, NULL, NULL, &t), 0);
	ura_session_finish_tasks_and_invalidate(s);
	/* Invalidating: the nop is still live, so only new work is refused. */
	struct io_uring_sqe sqe = nop_sqe();
	cr_assert_eq(ura_submit(s, &sqe, 0, NULL, NULL, NULL), -ESHUTDOWN);
	cr_assert_eq(ura_session_flush(s, barrier, NULL), -ESHUTDOWN);
	cr_assert_eq(ura_loop_run(loop), 0);
	/* Final event past: everything. */
	check_ended(s, t);
	ura_session_unref(s);
}

struct remote {
	ura_loop *loop;
	ura_session *s;
	int post, session_new, submit, flush, cancel;
};

static void *remote_calls(void *arg)
{
	struct remote *r = arg;
	ura_session *extra = NULL;
	r->post = ura_loop_post(r->loop, nothing, NULL);
	r->session_new = ura_session_new(r->loop, NULL, NULL, &extra);
	r->submit = ura_nop(r->s, NULL, NULL, NULL);
	r->flush = ura_session_flush(r->s, barrier, NULL);
	r->cancel = ura_task_cancel(r->s, 1);
	return NULL;
}

Test(errors, calls_after_loop_free_are_eshutdown)
{
	ura_loop *l;
	ura_session *s;
	cr_assert_eq(ura_loop_new(NULL, &l), 0);
	cr_assert_eq(ura_session_new(l, NULL, NULL, &s), 0);
	ura_task t;
	cr_assert_eq(ura_timeout(s, 60ull * 1000 * 1000 * 1000, NULL, NULL, &t), 0);
	ura_loop_free(l); /* s keeps the loop object readable */

	check_ended(s, t);
	ura_session *extra = NULL;
	cr_assert_eq(ura_session_new(l, NULL, NULL, &extra), -ESHUTDOWN, "loop thread");
	cr_assert_eq(ura_loop_post(l, nothing, NULL), -ESHUTDOWN, "loop thread");
	cr_assert_null(extra);

	struct remote r = { .loop = l, .s = s };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, remote_calls, &r), 0);
	pthread_join(th, NULL);
	cr_assert_eq(r.post, -ESHUTDOWN, "post: %d", r.post);
	cr_assert_eq(r.session_new, -ESHUTDOWN, "session_new: %d", r.session_new);
	cr_assert_eq(r.submit, -ESHUTDOWN, "submit: %d", r.submit);
	cr_assert_eq(r.flush, -ESHUTDOWN, "flush: %d", r.flush);
	cr_assert_eq(r.cancel, -ENOENT, "cancel: %d", r.cancel);
	ura_session_unref(s);
}

/* ----------------------------------------------------------- buffer rings */

Test(errors, buf_ring_new_refuses_bad_sizes)
{
	ura_buf_ring *br = NULL;
	cr_assert_eq(ura_buf_ring_new(NULL, 1, 8, 64, &br), -EINVAL);
	cr_assert_eq(ura_buf_ring_new(loop, 1, 8, 64, NULL), -EINVAL);
	cr_assert_eq(ura_buf_ring_new(loop, 1, 0, 64, &br), -EINVAL, "no buffers");
	cr_assert_eq(ura_buf_ring_new(loop, 1, 12, 64, &br), -EINVAL, "not a power of two");
	cr_assert_eq(ura_buf_ring_new(loop, 1, 65536, 64, &br), -EINVAL, "over 32768");
	cr_assert_eq(ura_buf_ring_new(loop, 1, 8, 0, &br), -EINVAL, "empty buffers");
	cr_assert_eq(ura_buf_ring_new(loop, 1, 8, (16u << 20) + 1, &br), -EINVAL, "over 16 MiB");
	cr_assert_null(br);

	int r = ura_buf_ring_new(loop, 7, 8, 64, &br);
	if (r == -EINVAL)
		cr_skip("the kernel has no provided-buffer rings");
	cr_assert_eq(r, 0);
	ura_buf_ring *again = NULL;
	cr_assert_eq(ura_buf_ring_new(loop, 7, 8, 64, &again), -EEXIST, "bgid taken");
	cr_assert_null(again);
	ura_buf_ring_free(br);
}

/* -------------------------------------------------------------- messages */

Test(errors, msg_new_refuses_bad_input)
{
	ura_msg *m = NULL;
	char byte = 'x';
	cr_assert_eq(ura_msg_new(&byte, 1, NULL), -EINVAL, "out NULL");
	cr_assert_eq(ura_msg_new(NULL, 1, &m), -EINVAL, "data NULL with a length");
	if (SIZE_MAX > UINT32_MAX)
		cr_assert_eq(ura_msg_new(&byte, (size_t)UINT32_MAX + 1, &m), -EMSGSIZE);
	cr_assert_null(m);
	cr_assert_eq(ura_msg_new(NULL, 0, &m), 0, "empty is fine");
	ura_msg_unref(m);
}

/* ----------------------------------------------------------- connections */

static void ignore_event(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	(void)c, (void)ev, (void)ctx;
}

static void drain(void)
{
	_Atomic bool never = false;
	(void)th_run_until(loop, &never, 100);
}

Test(errors, conn_creation_refuses_bad_input)
{
	ura_conn *c = NULL;
	cr_assert_eq(ura_conn_new(NULL, 0, &c), -EINVAL);
	cr_assert_eq(ura_conn_new(loop, -1, &c), -EINVAL);
	cr_assert_eq(ura_conn_new(loop, 0, NULL), -EINVAL);
	cr_assert_eq(ura_conn_connect(loop, NULL, &c), -EINVAL);
	cr_assert_eq(ura_conn_connect(NULL, "unix:/x", &c), -EINVAL);
	cr_assert_eq(ura_conn_connect(loop, "unix:/x", NULL), -EINVAL);
	cr_assert_eq(ura_conn_connect(loop, "udp:1.2.3.4:5", &c), -EINVAL, "unknown scheme");
	cr_assert_eq(ura_conn_connect(loop, "tcp:127.0.0.1", &c), -EINVAL, "no port");
	cr_assert_eq(ura_conn_connect(loop, "tcp:127.0.0.1:65536", &c), -EINVAL, "port range");
	cr_assert_eq(ura_conn_connect(loop, "tcp:127.1:80", &c), -EINVAL, "short literal");
	cr_assert_eq(ura_conn_connect(loop, "unix:", &c), -EINVAL, "empty path");
	char path[200] = "unix:/";
	memset(path + 6, 'a', sizeof(path) - 7);
	path[sizeof(path) - 1] = '\0';
	cr_assert_eq(ura_conn_connect(loop, path, &c), -ENAMETOOLONG);
	cr_assert_eq(ura_conn_connect(loop, "tcp:[::1%ura-no-such-if]:80", &c), -ENOENT,
		     "unknown scope interface");
	cr_assert_null(c);
}

Test(errors, conn_calls_refuse_bad_input)
{
	ura_conn *c;
	int peer;
	cr_assert_eq(th_conn_adopt(loop, ignore_event, NULL, &c, &peer), 0);
	ura_msg *m, *big;
	cr_assert_eq(ura_msg_new("0123456789abcdef", 16, &big), 0);
	cr_assert_eq(ura_msg_new("hi", 2, &m), 0);

	cr_assert_eq(ura_conn_set_event_handler(NULL, ignore_event, NULL), -EINVAL);
	cr_assert_eq(ura_conn_set_max_frame(NULL, 8), -EINVAL);
	cr_assert_eq(ura_conn_set_max_frame(c, 0), -EINVAL);
	cr_assert_eq(ura_conn_set_max_frame(c, 8), 0);
	cr_assert_eq(ura_conn_suspend(NULL), -EINVAL);
	cr_assert_eq(ura_conn_resume(NULL), -EINVAL);
	cr_assert_eq(ura_conn_send(NULL, m), -EINVAL);
	cr_assert_eq(ura_conn_send(c, NULL), -EINVAL);
	cr_assert_eq(ura_conn_send(c, big), -EMSGSIZE, "over the maximum frame");
	cr_assert_eq(ura_conn_send_with_reply(c, m, NULL, NULL), -EINVAL, "reply NULL");
	cr_assert_eq(ura_conn_send_with_reply(c, big, ignore_event, NULL), -EMSGSIZE);
	cr_assert_eq(ura_conn_reply(NULL, m, m), -EINVAL);
	cr_assert_eq(ura_conn_reply(c, NULL, m), -EINVAL);
	cr_assert_eq(ura_conn_reply(c, m, NULL), -EINVAL);
	cr_assert_eq(ura_conn_reply(c, m, m), -EINVAL, "not a received request");

	/* Resume: once on an inactive connection activates it, then more than suspends. */
	cr_assert_eq(ura_conn_resume(c), 0);
	cr_assert_eq(ura_conn_resume(c), -EINVAL, "more resumes than suspends");
	cr_assert_eq(ura_conn_suspend(c), 0);
	cr_assert_eq(ura_conn_resume(c), 0);
	cr_assert_eq(ura_conn_resume(c), -EINVAL, "more resumes than suspends");
	cr_assert_eq(ura_conn_set_event_handler(c, ignore_event, NULL), -EBUSY, "active");
	cr_assert_eq(ura_conn_set_max_frame(c, 64), -EBUSY, "active");

	ura_conn_cancel(c);
	cr_assert_eq(ura_conn_send(c, m), -ESHUTDOWN);
	cr_assert_eq(ura_conn_send_with_reply(c, m, ignore_event, NULL), -ESHUTDOWN);
	drain();
	cr_assert_eq(ura_conn_send(c, m), -ESHUTDOWN, "after the final event");
	ura_conn_unref(c);
	close(peer);
	ura_msg_unref(m);
	ura_msg_unref(big);
	drain();
}

struct held {
	ura_msg *req;
};

static void hold_request(ura_conn *c, const struct ura_event *ev, void *ctx)
{
	(void)c;
	struct held *h = ctx;
	if (ev->type == URA_EVENT_MESSAGE && !h->req)
		h->req = ura_msg_ref(ev->msg);
}

Test(errors, a_reply_on_a_cancelled_connection_is_eshutdown)
{
	ura_conn *a, *b;
	struct held h = { 0 };
	cr_assert_eq(th_conn_pair(loop, ignore_event, NULL, &a, hold_request, &h, &b), 0);
	ura_conn_activate(a);
	ura_conn_activate(b);
	ura_msg *q;
	cr_assert_eq(ura_msg_new("q", 1, &q), 0);
	cr_assert_eq(ura_conn_send_with_reply(a, q, ignore_event, NULL), 0);
	uint64_t end = th_now_ms() + 5000;
	while (!h.req && th_now_ms() < end)
		ura_loop_run_once(loop, false);
	cr_assert_not_null(h.req);
	cr_assert(ura_msg_expects_reply(h.req));
	ura_conn_cancel(b);
	cr_assert_eq(ura_conn_reply(b, h.req, q), -ESHUTDOWN);
	cr_assert_eq(ura_conn_reply(a, h.req, q), -EINVAL, "a request of another connection");
	ura_msg_unref(h.req);
	ura_msg_unref(q);
	ura_conn_unref(a);
	ura_conn_unref(b);
	drain();
}

/* ------------------------------------------------------------- listeners */

static void accept_none(ura_listener *l, ura_conn *peer, void *ctx)
{
	(void)l, (void)ctx;
	ura_conn_unref(peer);
}

Test(errors, listener_new_refuses_bad_input_and_passes_socket_errors)
{
	ura_listener *l = NULL;
	cr_assert_eq(ura_listener_new(NULL, "tcp:127.0.0.1:0", accept_none, NULL, &l), -EINVAL);
	cr_assert_eq(ura_listener_new(loop, NULL, accept_none, NULL, &l), -EINVAL);
	cr_assert_eq(ura_listener_new(loop, "tcp:127.0.0.1:0", NULL, NULL, &l), -EINVAL);
	cr_assert_eq(ura_listener_new(loop, "tcp:127.0.0.1:0", accept_none, NULL, NULL), -EINVAL);
	cr_assert_eq(ura_listener_new(loop, "bogus", accept_none, NULL, &l), -EINVAL);
	cr_assert_eq(ura_listener_new(loop, "tcp:127.0.0.1:x", accept_none, NULL, &l), -EINVAL);
	char path[200] = "unix:/";
	memset(path + 6, 'a', sizeof(path) - 7);
	path[sizeof(path) - 1] = '\0';
	cr_assert_eq(ura_listener_new(loop, path, accept_none, NULL, &l), -ENAMETOOLONG);
	cr_assert_eq(ura_listener_new(loop, "unix:/ura-no-such-dir/x.sock", accept_none, NULL, &l),
		     -ENOENT, "bind(2)'s error");
	cr_assert_null(l);

	cr_assert_eq(ura_listener_new(loop, "tcp:127.0.0.1:0", accept_none, NULL, &l), 0);
	char addr[64];
	cr_assert_gt(ura_listener_address(l, addr, sizeof(addr)), 0);
	ura_listener *again = NULL;
	cr_assert_eq(ura_listener_new(loop, addr, accept_none, NULL, &again), -EADDRINUSE,
		     "%s is taken", addr);
	cr_assert_null(again);
	ura_listener_unref(l);
	cr_assert_eq(ura_loop_run(loop), 0);
}

/* --------------------------------------------------------------- services */

Test(errors, main_refuses_bad_input)
{
	struct ura_main_config cfg = { 0 };
	cfg.reserved[2] = 1;
	cr_assert_eq(ura_main(NULL, accept_none, NULL), -EINVAL);
	cr_assert_eq(ura_main("tcp:127.0.0.1:0", NULL, NULL), -EINVAL);
	cr_assert_eq(ura_main_with("tcp:127.0.0.1:0", &cfg, accept_none, NULL), -EINVAL);
	cr_assert_eq(ura_main("bogus", accept_none, NULL), -EINVAL, "ura_listener_new's error");
}
