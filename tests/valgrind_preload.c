/*
 * Preloaded (LD_PRELOAD) into the tests that `scripts/test --valgrind` runs, and only
 * there; scripts/test builds it. Not part of the library.
 *
 * Valgrind 3.19 (Debian 12) does not mark io_uring_enter as a syscall that may block, so
 * it runs it while holding the lock that serializes the threads of the process. A loop
 * waiting in the kernel then stops every other thread, including the one whose submit,
 * post or stop would wake it: the test hangs until some kernel event (a timeout) ends
 * the wait by itself (liburing issue #657 shows the same with a plain ring).
 *
 * Here the two waits the loop uses (src/core/loop.c enter(); the build defines
 * URA_ENTER_VIA_LIBURING so that src/core/enter.h waits through liburing) wait in slices of at
 * most 1 ms,
 * with a sched_yield between slices: valgrind hands its lock over on sched_yield, so
 * the other threads run. The semantics stay those of liburing: each call returns when
 * wait_nr completions are there (or the caller's timeout expires), never earlier.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>

#include <liburing.h>

#define SLICE_NS 1000000ll

typedef int (*wait_timeout_fn)(struct io_uring *, struct io_uring_cqe **, unsigned,
			       struct __kernel_timespec *, sigset_t *);

int io_uring_submit_and_wait(struct io_uring *ring, unsigned wait_nr);
int io_uring_submit_and_wait_timeout(struct io_uring *ring, struct io_uring_cqe **cqe_ptr,
				     unsigned wait_nr, struct __kernel_timespec *ts,
				     sigset_t *sigmask);

static wait_timeout_fn real_wait_timeout(void)
{
	static wait_timeout_fn fn;
	if (!fn)
		fn = (wait_timeout_fn)dlsym(RTLD_NEXT, "io_uring_submit_and_wait_timeout");
	return fn;
}

static int64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000ll + t.tv_nsec;
}

/* Waits in slices until wait_nr completions are there, or until deadline (-1: none).
 * Readiness is read from the CQ itself: when a slice submitted SQEs, liburing returns
 * their count even if the slice timed out before anything completed. */
static int sliced(struct io_uring *ring, struct io_uring_cqe **cqe_ptr, unsigned wait_nr,
		  int64_t deadline, sigset_t *sigmask)
{
	wait_timeout_fn real = real_wait_timeout();
	struct io_uring_cqe *cqe = NULL;
	int submitted = 0;
	for (;;) {
		int64_t slice = SLICE_NS;
		if (deadline >= 0) {
			int64_t left = deadline - now_ns();
			if (left < slice)
				slice = left > 0 ? left : 0;
		}
		struct __kernel_timespec ts = { 0, slice };
		int r = real(ring, &cqe, wait_nr, &ts, sigmask);
		if (r < 0 && r != -ETIME)
			return r; /* -EINTR, -EBUSY, ...: the caller's to handle */
		if (r > 0)
			submitted += r; /* only the first slice has anything to submit */
		if (io_uring_cq_ready(ring) >= wait_nr)
			break;
		if (deadline >= 0 && now_ns() >= deadline) {
			if (cqe_ptr)
				*cqe_ptr = NULL;
			return submitted ? submitted : -ETIME;
		}
		sched_yield();
	}
	if (cqe_ptr && io_uring_peek_cqe(ring, cqe_ptr) != 0)
		*cqe_ptr = NULL;
	return submitted;
}

int io_uring_submit_and_wait(struct io_uring *ring, unsigned wait_nr)
{
	return sliced(ring, NULL, wait_nr, -1, NULL);
}

int io_uring_submit_and_wait_timeout(struct io_uring *ring, struct io_uring_cqe **cqe_ptr,
				     unsigned wait_nr, struct __kernel_timespec *ts,
				     sigset_t *sigmask)
{
	int64_t deadline = -1;
	if (ts)
		deadline = now_ns() + (int64_t)ts->tv_sec * 1000000000ll + ts->tv_nsec;
	return sliced(ring, cqe_ptr, wait_nr, deadline, sigmask);
}
