/*
 * Op wrappers: each prepares an SQE template with liburing's helper and submits it as a
 * task with ura_submit's callback convention.
 */
#include <errno.h>
#include <string.h>

#include "bufring.h"
#include "opcodes.h"
#include "task.h"

static struct io_uring_sqe blank(void)
{
	struct io_uring_sqe sqe;
	memset(&sqe, 0, sizeof(sqe));
	return sqe;
}

/*
 * Prepares sqe with prep and submits it: in place in the ring when the fast path allows
 * (see ura__fast_begin), else in a zeroed template through ura_submit. liburing's prep
 * helpers write every field of the SQE, so the in-place SQE needs no clearing first.
 */
#define PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, prep)                              \
	do {                                                                         \
		struct ura__fast fast_;                                              \
		if (ura__fast_begin((s), &fast_)) {                                  \
			struct io_uring_sqe *sqe = fast_.sqe;                        \
			prep;                                                        \
			return ura__fast_commit(&fast_, (fn), (arg), (out));         \
		}                                                                    \
		struct io_uring_sqe tmpl_ = blank(), *sqe = &tmpl_;                 \
		prep;                                                                \
		return ura_submit((s), sqe, 0, (fn), (arg), (out));                  \
	} while (0)

int ura_nop(ura_session *s, ura_task_fn fn, void *arg, ura_task *out)
{
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_nop(sqe));
}

int ura_read(ura_session *s, int fd, void *buf, unsigned len, uint64_t off,
	     ura_task_fn fn, void *arg, ura_task *out)
{
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_read(sqe, fd, buf, len, off));
}

int ura_write(ura_session *s, int fd, const void *buf, unsigned len, uint64_t off,
	      ura_task_fn fn, void *arg, ura_task *out)
{
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_write(sqe, fd, buf, len, off));
}

int ura_readv(ura_session *s, int fd, const struct iovec *iov, unsigned n, uint64_t off,
	      ura_task_fn fn, void *arg, ura_task *out)
{
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_readv(sqe, fd, iov, n, off));
}

int ura_writev(ura_session *s, int fd, const struct iovec *iov, unsigned n, uint64_t off,
	       ura_task_fn fn, void *arg, ura_task *out)
{
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_writev(sqe, fd, iov, n, off));
}

int ura_recv(ura_session *s, int fd, void *buf, size_t len, int flags,
	     ura_task_fn fn, void *arg, ura_task *out)
{
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_recv(sqe, fd, buf, len, flags));
}

int ura_send(ura_session *s, int fd, const void *buf, size_t len, int flags,
	     ura_task_fn fn, void *arg, ura_task *out)
{
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_send(sqe, fd, buf, len, flags));
}

int ura_sendmsg(ura_session *s, int fd, const struct msghdr *msg, unsigned flags,
		ura_task_fn fn, void *arg, ura_task *out)
{
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_sendmsg(sqe, fd, msg, flags));
}

int ura_recvmsg(ura_session *s, int fd, struct msghdr *msg, unsigned flags,
		ura_task_fn fn, void *arg, ura_task *out)
{
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_recvmsg(sqe, fd, msg, flags));
}

int ura_accept(ura_session *s, int fd, struct sockaddr *addr, socklen_t *addrlen, int flags,
	       ura_task_fn fn, void *arg, ura_task *out)
{
	if ((addr == NULL) != (addrlen == NULL))
		return -EINVAL;
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_accept(sqe, fd, addr, addrlen, flags));
}

int ura_accept_multishot(ura_session *s, int fd, int flags,
			 ura_task_fn fn, void *arg, ura_task *out)
{
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, flags));
}

int ura_connect(ura_session *s, int fd, const struct sockaddr *addr, socklen_t len,
		ura_task_fn fn, void *arg, ura_task *out)
{
	if (!addr)
		return -EINVAL;
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_connect(sqe, fd, addr, len));
}

int ura_close(ura_session *s, int fd, ura_task_fn fn, void *arg, ura_task *out)
{
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_close(sqe, fd));
}

int ura_openat(ura_session *s, int dfd, const char *path, int flags, unsigned mode,
	       ura_task_fn fn, void *arg, ura_task *out)
{
	if (!path)
		return -EINVAL;
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_openat(sqe, dfd, path, flags, mode));
}

int ura_fsync(ura_session *s, int fd, unsigned flags, ura_task_fn fn, void *arg, ura_task *out)
{
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_fsync(sqe, fd, flags));
}

int ura_poll(ura_session *s, int fd, unsigned events, ura_task_fn fn, void *arg, ura_task *out)
{
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_poll_add(sqe, fd, events));
}

int ura_timeout(ura_session *s, uint64_t ns, ura_task_fn fn, void *arg, ura_task *out)
{
	struct __kernel_timespec ts = {
		.tv_sec = (long long)(ns / 1000000000ull),
		.tv_nsec = (long long)(ns % 1000000000ull),
	};
	struct io_uring_sqe sqe = blank();
	/* addr is re-pointed at the runtime's copy of ts when the SQE goes to the ring. */
	io_uring_prep_timeout(&sqe, &ts, 0, 0);
	return ura__submit_ts(s, &sqe, 0, &ts, fn, arg, out);
}

int ura_splice(ura_session *s, int fd_in, int64_t off_in, int fd_out, int64_t off_out,
	       unsigned len, unsigned flags, ura_task_fn fn, void *arg, ura_task *out)
{
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, io_uring_prep_splice(sqe, fd_in, off_in, fd_out, off_out, len, flags));
}

int ura_recv_multishot(ura_session *s, int fd, ura_buf_ring *br, int flags,
		       ura_task_fn fn, void *arg, ura_task *out)
{
	if (!br)
		return -EINVAL;
	uint16_t group = ura__buf_ring_group(br);
	PREPARE_AND_SUBMIT(s, fn, arg, out, sqe, {
		io_uring_prep_recv_multishot(sqe, fd, NULL, 0, flags);
		sqe->flags |= IOSQE_BUFFER_SELECT;
		sqe->buf_group = group;
	});
}

/* Which get_tasks list an opcode belongs to, for every value an SQE's opcode can hold:
 * the ones not named (and numbers no kernel has) are URA_TASK_DATA (0). */
static const uint8_t kind_of[UINT8_MAX + 1] = {
	[IORING_OP_READV] = URA_TASK_DOWNLOAD,
	[IORING_OP_READ_FIXED] = URA_TASK_DOWNLOAD,
	[IORING_OP_READ] = URA_TASK_DOWNLOAD,
	[IORING_OP_RECV] = URA_TASK_DOWNLOAD,
	[IORING_OP_RECVMSG] = URA_TASK_DOWNLOAD,
	[URA__OP_READ_MULTISHOT] = URA_TASK_DOWNLOAD,
	[URA__OP_RECV_ZC] = URA_TASK_DOWNLOAD,
	[URA__OP_READV_FIXED] = URA_TASK_DOWNLOAD,
	[IORING_OP_WRITEV] = URA_TASK_UPLOAD,
	[IORING_OP_WRITE_FIXED] = URA_TASK_UPLOAD,
	[IORING_OP_WRITE] = URA_TASK_UPLOAD,
	[IORING_OP_SEND] = URA_TASK_UPLOAD,
	[IORING_OP_SENDMSG] = URA_TASK_UPLOAD,
	[IORING_OP_SEND_ZC] = URA_TASK_UPLOAD,
	[IORING_OP_SENDMSG_ZC] = URA_TASK_UPLOAD,
	[URA__OP_WRITEV_FIXED] = URA_TASK_UPLOAD,
};
_Static_assert(sizeof(kind_of) == 1u << (8 * sizeof(((struct io_uring_sqe *)0)->opcode)),
	       "one kind for every opcode an SQE can carry");

enum ura_task_kind ura_task_kind_of_opcode(uint8_t opcode)
{
	return (enum ura_task_kind)kind_of[opcode];
}
