/* Tasks: submit, terminal calls, cancel, suspend/resume, state, stale handles, bad input. */
#include <errno.h>
#include <string.h>
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

TestSuite(tasks, .init = setup, .fini = teardown);

Test(tasks, bad_input_is_einval)
{
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_nop(&sqe);
	cr_assert_eq(ura_submit(NULL, &sqe, 0, NULL, NULL, NULL), -EINVAL);
	cr_assert_eq(ura_submit(sh, NULL, 0, NULL, NULL, NULL), -EINVAL);
	cr_assert_eq(ura_submit(sh, &sqe, 1u << 7, NULL, NULL, NULL), -EINVAL, "unknown flag");
	sqe.flags = IOSQE_IO_LINK;
	cr_assert_eq(ura_submit(sh, &sqe, 0, NULL, NULL, NULL), -EINVAL, "links are refused");
	sqe.flags = IOSQE_CQE_SKIP_SUCCESS;
	cr_assert_eq(ura_submit(sh, &sqe, 0, NULL, NULL, NULL), -EINVAL, "skip-success is refused");
	sqe.flags = 0;
	sqe.opcode = 250;
	cr_assert_eq(ura_submit(sh, &sqe, 0, NULL, NULL, NULL), -EINVAL, "unknown opcode");
	cr_assert_eq(ura_task_cancel(sh, 0), -ENOENT, "0 is never a task: an unknown handle");
	cr_assert_eq(ura_task_resume(sh, 0), -ENOENT);
	cr_assert_eq(ura_task_cancel(NULL, 1), -EINVAL);
	cr_assert_eq(ura_task_state(sh, 0), URA_TASK_COMPLETED);
	cr_assert_eq(ura_loop_run(loop), 0, "a refused submit left work behind");
}

Test(tasks, nop_has_exactly_one_terminal_call)
{
	enum { N = 1000 };
	static struct th_calls c[N];
	memset(c, 0, sizeof(c));
	for (int i = 0; i < N; i++)
		cr_assert_eq(ura_nop(sh, th_record, &c[i], NULL), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	for (int i = 0; i < N; i++) {
		cr_assert_eq(atomic_load(&c[i].terminal), 1, "task %d: %lu terminal calls", i,
			     (unsigned long)atomic_load(&c[i].terminal));
		cr_assert_eq(atomic_load(&c[i].last_res), 0);
	}
}

Test(tasks, timeout_completes_with_etime)
{
	struct th_calls c = { 0 };
	ura_task t = 0;
	cr_assert_eq(ura_timeout(sh, 1000000, th_record, &c, &t), 0);
	cr_assert_neq(t, 0);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_RUNNING);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&c.terminal), 1);
	cr_assert_eq(atomic_load(&c.last_res), -ETIME);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_COMPLETED);
	cr_assert_eq(ura_task_cancel(sh, t), -ENOENT, "finished handle must be -ENOENT");
}

Test(tasks, cancel_running_timeout)
{
	struct th_calls c = { 0 };
	ura_task t = 0;
	cr_assert_eq(ura_timeout(sh, 60ull * 1000000000ull, th_record, &c, &t), 0);
	cr_assert_eq(ura_loop_run_once(loop, false) >= 0, 1);
	cr_assert_eq(ura_task_cancel(sh, t), 0);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_CANCELING);
	cr_assert_eq(ura_task_cancel(sh, t), -EALREADY);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&c.terminal), 1);
	cr_assert_eq(atomic_load(&c.last_res), -ECANCELED, "res %d", atomic_load(&c.last_res));
}

Test(tasks, cancel_before_the_ring_saw_it)
{
	/* Cancelled in the same iteration it was submitted: the SQE is in the SQ. */
	struct th_calls c = { 0 };
	ura_task t = 0;
	cr_assert_eq(ura_timeout(sh, 60ull * 1000000000ull, th_record, &c, &t), 0);
	cr_assert_eq(ura_task_cancel(sh, t), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&c.terminal), 1);
	cr_assert_eq(atomic_load(&c.last_res), -ECANCELED, "res %d", atomic_load(&c.last_res));
}

Test(tasks, suspended_runs_at_resume)
{
	struct th_calls c = { 0 };
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_nop(&sqe);
	ura_task t = 0;
	cr_assert_eq(ura_submit(sh, &sqe, URA_SUBMIT_SUSPENDED, th_record, &c, &t), 0);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_SUSPENDED);
	th_spin(loop, 20);
	cr_assert_eq(atomic_load(&c.calls), 0, "a suspended task ran");
	cr_assert_eq(ura_task_resume(sh, t), 0);
	cr_assert_eq(ura_task_resume(sh, t), -EINVAL, "resume of a running task");
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&c.terminal), 1);
	cr_assert_eq(atomic_load(&c.last_res), 0);
	cr_assert_eq(ura_task_resume(sh, t), -ENOENT);
}

Test(tasks, cancel_suspended_completes_without_sqe)
{
	struct th_calls c = { 0 };
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	/* A read that would block forever if it reached the kernel. */
	int p[2];
	cr_assert_eq(pipe(p), 0);
	char buf[8];
	io_uring_prep_read(&sqe, p[0], buf, sizeof(buf), 0);
	ura_task t = 0;
	cr_assert_eq(ura_submit(sh, &sqe, URA_SUBMIT_SUSPENDED, th_record, &c, &t), 0);
	cr_assert_eq(ura_task_cancel(sh, t), 0);
	cr_assert_eq(atomic_load(&c.calls), 0, "terminal call ran inside cancel");
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&c.terminal), 1);
	cr_assert_eq(atomic_load(&c.last_res), -ECANCELED);
	close(p[0]);
	close(p[1]);
}

Test(tasks, handle_of_another_loop_is_enoent)
{
	ura_loop *other;
	cr_assert_eq(ura_loop_new(NULL, &other), 0);
	ura_task t = 0;
	cr_assert_eq(ura_timeout(sh, 60ull * 1000000000ull, NULL, NULL, &t), 0);
	cr_assert_eq(ura_task_cancel(ura_session_shared(other), t), -ENOENT);
	cr_assert_eq(ura_task_state(ura_session_shared(other), t), URA_TASK_COMPLETED);
	cr_assert_eq(ura_task_cancel(sh, t), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_loop_free(other);
}
