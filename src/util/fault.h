/*
 * Fault injection, for tests only: compiled in when URA_FAULT_INJECTION is defined
 * (every build type but release), compiled out otherwise (ura__fault is then 0).
 *
 * A test arms a site with ura__fault_arm: the site's Nth check from now fails with the
 * given error, and so do the `repeat` checks after it. Sites are process-wide.
 */
#ifndef URA_FAULT_H
#define URA_FAULT_H

enum ura__fault_site {
	URA__FAULT_ALLOC,       /* every runtime allocation: fails with NULL (-ENOMEM) */
	URA__FAULT_SQ_FULL,     /* task submission sees a full SQ (the backlog takes over) */
	URA__FAULT_ENTER,       /* io_uring_enter returns the error (-EBUSY, -EAGAIN, -EINTR) */
	URA__FAULT_SHORT_WRITE, /* a connection's sendmsg is cut to a few bytes */
	URA__FAULT_CANCEL_MISS, /* a task's ASYNC_CANCEL aims at nothing (-ENOENT) */
	URA__FAULT_SEND_STALL,  /* a send from another thread sleeps 2 ms mid-way (races) */
	URA__FAULT_SITES
};

#ifdef URA_FAULT_INJECTION
/* 0 to go on, or the error to inject at this check. Any thread. */
int ura__fault(enum ura__fault_site site);
/* Fails the nth check from now (1 = the next) and the repeat checks after it. */
void ura__fault_arm(enum ura__fault_site site, int error, unsigned long nth, unsigned long repeat);
void ura__fault_disarm_all(void);
/* Checks of the site so far, and faults injected there (for tests' reports). */
unsigned long ura__fault_checks(enum ura__fault_site site);
unsigned long ura__fault_injected(enum ura__fault_site site);
#else
#define ura__fault(site) 0
#endif

#endif
