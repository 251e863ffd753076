/*
 * The loop's io_uring_enter, without liburing's out-of-line submit functions.
 *
 * Why not io_uring_submit_and_wait: it lives in liburing.so, so each iteration would run
 * code on liburing's text page and go through the library's PLT and GOT, and it checks
 * for ring modes the loop never uses. On kernels with page-table isolation (PTI) every
 * syscall empties the TLB, so each page the loop touches after an enter costs a page
 * walk on every iteration (in ura-bench nop, moving the loop object onto one page
 * instead of two saved about 1 ns per task at batch 32).
 *
 * What it does is the kernel's protocol for a ring without SQPOLL or IOPOLL (ring_init
 * never asks for either): publish the SQ tail, then enter with GETEVENTS, passing the
 * number of SQEs the kernel has not consumed. The ring's own fields are used as liburing
 * defines them (sqe_head/sqe_tail, enter_ring_fd), so liburing calls on the same ring
 * (the timeout wait, a user's own submissions through ura_loop_ring) stay consistent.
 */
#ifndef URA_ENTER_H
#define URA_ENTER_H

#include <errno.h>
#include <stdbool.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <liburing.h>

static inline long ura__sys_enter(int fd, unsigned to_submit, unsigned min_complete,
				  unsigned flags)
{
#if defined(__x86_64__)
	/* The x86-64 syscall convention: number in rax, arguments in rdi, rsi, rdx, r10,
	 * r8, r9; the kernel clobbers rcx and r11 and returns -errno in rax. */
	register long r10 __asm__("r10") = flags;
	register long r8 __asm__("r8") = 0; /* no signal mask / extended argument */
	register long r9 __asm__("r9") = 0;
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "0"((long)__NR_io_uring_enter), "D"((long)fd), "S"((long)to_submit),
			   "d"((long)min_complete), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
#else
	long ret = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
	return ret < 0 ? -errno : ret;
#endif
}

/*
 * Submits every prepared SQE and gets events, waiting for min_complete completions
 * (0: do not wait). registered: the ring fd is registered (enter_ring_fd is its index).
 * Returns the number submitted or -errno, as io_uring_enter does.
 */
static inline int ura__ring_enter(struct io_uring *ring, unsigned min_complete, bool registered)
{
#ifdef URA_ENTER_VIA_LIBURING
	/* Valgrind builds (scripts/test --valgrind): through liburing, whose wait
	 * tests/valgrind_preload.c replaces, because valgrind 3.19 stops every thread of
	 * the process while one waits in io_uring_enter. Same protocol, same result. */
	(void)registered;
	return min_complete ? io_uring_submit_and_wait(ring, min_complete)
			    : io_uring_submit_and_get_events(ring);
#else
	struct io_uring_sq *sq = &ring->sq;
	unsigned tail = sq->sqe_tail;
	if (sq->sqe_head != tail) {
		sq->sqe_head = tail;
		/* Release: the SQEs written before are visible to the kernel once it sees the
		 * tail (the kernel's acquire read of it). */
		io_uring_smp_store_release(sq->ktail, tail);
	}
	/* SQEs the kernel has not consumed yet: ours and any left by a failed enter.
	 * Relaxed: without SQPOLL the kernel moves the head only inside io_uring_enter,
	 * which only the loop thread calls. */
	unsigned pending = tail - __atomic_load_n(sq->khead, __ATOMIC_RELAXED);
	unsigned flags = IORING_ENTER_GETEVENTS | (registered ? IORING_ENTER_REGISTERED_RING : 0);
	return (int)ura__sys_enter(ring->enter_ring_fd, pending, min_complete, flags);
#endif
}

#endif
