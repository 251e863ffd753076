/*
 * Kernel opcodes newer than the liburing headers ura may be built against (liburing 2.3
 * stops at IORING_OP_SENDMSG_ZC, 48). The values are the kernel's (enum io_uring_op in
 * include/uapi/linux/io_uring.h). The names are ura's own, not IORING_OP_*, so that a
 * newer liburing, whose enum has those, still compiles. ura_submit does not look at
 * opcodes at all (the kernel judges them); these only file tasks for get_tasks (ops.c).
 */
#ifndef URA_OPCODES_H
#define URA_OPCODES_H

#include <liburing.h>

enum {
	URA__OP_READ_MULTISHOT = 49,
	URA__OP_WAITID,
	URA__OP_FUTEX_WAIT,
	URA__OP_FUTEX_WAKE,
	URA__OP_FUTEX_WAITV,
	URA__OP_FIXED_FD_INSTALL,
	URA__OP_FTRUNCATE,
	URA__OP_BIND,
	URA__OP_LISTEN,
	URA__OP_RECV_ZC,
	URA__OP_EPOLL_WAIT,
	URA__OP_READV_FIXED,
	URA__OP_WRITEV_FIXED,
	URA__OP_PIPE,
};

_Static_assert(URA__OP_READ_MULTISHOT == IORING_OP_SENDMSG_ZC + 1,
	       "the kernel's numbering continues after liburing 2.3's last opcode");
_Static_assert(URA__OP_PIPE == 62, "enum io_uring_op: PIPE is 62");

#endif
