/* Tasks: submit, terminal calls, cancel, suspend/resume, state, stale handles, bad input. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/* Loop tags are unique among live loops: a handle of loop A never names a task of loop
 * B, however many loops were made in between (the tag used to be a counter modulo 255,
 * so the 255th loop after A handed out A's handles again). */
Test(tasks, handle_reaches_only_its_own_sessions_tasks_across_300_loops, .timeout = 120)
{
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_nop(&sqe);
	ura_session *sa = NULL;
	cr_assert_eq(ura_session_new(loop, NULL, NULL, &sa), 0);
	ura_task ta = 0;
	cr_assert_eq(ura_submit(sa, &sqe, URA_SUBMIT_SUSPENDED, NULL, NULL, &ta), 0);
	for (int i = 1; i <= 300; i++) {
		ura_loop *b = NULL;
		cr_assert_eq(ura_loop_new(NULL, &b), 0, "loop %d", i);
		ura_session *sb = NULL;
		cr_assert_eq(ura_session_new(b, NULL, NULL, &sb), 0);
		ura_task tb = 0;
		cr_assert_eq(ura_submit(sb, &sqe, URA_SUBMIT_SUSPENDED, NULL, NULL, &tb), 0);
		/* Both are their loop's first task: only the tag tells them apart. */
		cr_assert_neq(ta, tb, "loop %d after A gave out A's first handle 0x%lx", i,
			      (unsigned long)ta);
		cr_assert_eq(ura_task_state(sb, ta), URA_TASK_COMPLETED, "loop %d", i);
		cr_assert_eq(ura_task_cancel(sb, ta), -ENOENT, "loop %d", i);
		cr_assert_eq(ura_task_state(sa, tb), URA_TASK_COMPLETED, "loop %d", i);
		cr_assert_eq(ura_task_cancel(sa, tb), -ENOENT, "loop %d", i);
		cr_assert_eq(ura_task_state(sb, tb), URA_TASK_SUSPENDED);
		ura_session_unref(sb);
		ura_loop_free(b);
	}
	cr_assert_eq(ura_task_state(sa, ta), URA_TASK_SUSPENDED, "A's task was reached");
	cr_assert_eq(ura_task_cancel(sa, ta), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	ura_session_unref(sa);
}

/* Kernel opcodes newer than the build's liburing headers (2.3 stops at 48). */
enum { OP_READ_MULTISHOT = 49, OP_FTRUNCATE = 55, OP_RECV_ZC = 58, OP_READV_FIXED = 60,
       OP_WRITEV_FIXED = 61, OP_PIPE = 62 };

static bool kernel_has_op(int op)
{
	struct io_uring_probe *p = io_uring_get_probe_ring(ura_loop_ring(loop));
	if (!p)
		return false;
	bool has = io_uring_opcode_supported(p, op);
	io_uring_free_probe(p);
	return has;
}

Test(tasks, newer_kernel_opcode_runs)
{
	if (!kernel_has_op(OP_FTRUNCATE))
		cr_skip("kernel without IORING_OP_FTRUNCATE");
	char path[] = "/tmp/ura-ftruncate-XXXXXX";
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	unlink(path);
	/* Filled as the kernel's ftruncate prep reads it: fd and the length in off; every
	 * other field zero. */
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	sqe.opcode = OP_FTRUNCATE;
	sqe.fd = fd;
	sqe.off = 12345;
	struct th_calls c = { 0 };
	int r = ura_submit(sh, &sqe, 0, th_record, &c, NULL);
	cr_assert_eq(r, 0, "IORING_OP_FTRUNCATE refused at submit: %d", r);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&c.terminal), 1);
	cr_assert_eq(atomic_load(&c.last_res), 0, "res %d", atomic_load(&c.last_res));
	struct stat st;
	cr_assert_eq(fstat(fd, &st), 0);
	cr_assert_eq(st.st_size, 12345, "size %ld", (long)st.st_size);
	close(fd);
}

Test(tasks, opcode_the_kernel_lacks_completes_with_einval)
{
	if (kernel_has_op(250))
		cr_skip("this kernel has an opcode 250");
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	sqe.opcode = 250;
	struct th_calls c = { 0 };
	int r = ura_submit(sh, &sqe, 0, th_record, &c, NULL);
	cr_assert_eq(r, 0, "the kernel judges opcodes, not ura_submit: %d", r);
	cr_assert_eq(ura_loop_run(loop), 0);
	cr_assert_eq(atomic_load(&c.terminal), 1);
	cr_assert_eq(atomic_load(&c.last_res), -EINVAL, "res %d", atomic_load(&c.last_res));
}

Test(tasks, newer_opcodes_have_their_kind)
{
	cr_assert_eq(ura_task_kind_of_opcode(OP_READ_MULTISHOT), URA_TASK_DOWNLOAD);
	cr_assert_eq(ura_task_kind_of_opcode(OP_RECV_ZC), URA_TASK_DOWNLOAD);
	cr_assert_eq(ura_task_kind_of_opcode(OP_READV_FIXED), URA_TASK_DOWNLOAD);
	cr_assert_eq(ura_task_kind_of_opcode(OP_WRITEV_FIXED), URA_TASK_UPLOAD);
	cr_assert_eq(ura_task_kind_of_opcode(OP_FTRUNCATE), URA_TASK_DATA);
	cr_assert_eq(ura_task_kind_of_opcode(OP_PIPE), URA_TASK_DATA);
	cr_assert_eq(ura_task_kind_of_opcode(250), URA_TASK_DATA);
	cr_assert_eq(ura_task_kind_of_opcode(IORING_OP_READ), URA_TASK_DOWNLOAD);
	cr_assert_eq(ura_task_kind_of_opcode(IORING_OP_SEND), URA_TASK_UPLOAD);
}

struct listed {
	_Atomic int calls;
	size_t nd, nu, ndl;
};

static void list_kinds(ura_session *s, const ura_task *d, size_t nd, const ura_task *u,
		       size_t nu, const ura_task *dl, size_t ndl, void *arg)
{
	(void)s, (void)d, (void)u, (void)dl;
	struct listed *l = arg;
	l->nd = nd;
	l->nu = nu;
	l->ndl = ndl;
	atomic_fetch_add(&l->calls, 1);
}

Test(tasks, read_multishot_is_listed_as_download)
{
	int p[2];
	cr_assert_eq(pipe(p), 0);
	/* Suspended: it stays live without reaching the kernel. */
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	sqe.opcode = OP_READ_MULTISHOT;
	sqe.fd = p[0];
	sqe.flags = IOSQE_BUFFER_SELECT;
	sqe.buf_group = 1;
	ura_task t = 0;
	int r = ura_submit(sh, &sqe, URA_SUBMIT_SUSPENDED, NULL, NULL, &t);
	cr_assert_eq(r, 0, "IORING_OP_READ_MULTISHOT refused at submit: %d", r);
	struct listed l = { 0 };
	cr_assert_eq(ura_session_get_tasks(sh, list_kinds, &l), 0);
	cr_assert(th_run_until_int(loop, &l.calls, 1, 10000), "get_tasks never answered");
	cr_assert_eq(l.ndl, 1, "download %zu (data %zu, upload %zu)", l.ndl, l.nd, l.nu);
	cr_assert_eq(l.nd + l.nu, 0);
	cr_assert_eq(ura_task_cancel(sh, t), 0);
	cr_assert_eq(ura_loop_run(loop), 0);
	close(p[0]);
	close(p[1]);
}
