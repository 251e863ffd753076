/*
 * Ops: every op wrapper on real descriptors (pipes, socketpairs, loopback TCP and UDP,
 * files in a private /tmp directory); cancel of each op that can block; cancel racing
 * completion; stale handles; multishot accept and multishot recv with a provided-buffer
 * ring; bad input.
 *
 * Every wait is bounded (GUARD_MS), and the suite has a Criterion timeout on top: a
 * hang is a failure with context, never a stuck test.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"
#include "registry.h" /* ura__handle_index: proves a stale handle's slot was reused */

#define GUARD_MS 10000u                 /* hang guard for one wait; never a speed bound */
#define LONG_NS (60ull * 1000000000ull) /* a timeout that never fires during a test */

static ura_loop *loop;
static ura_session *sh;
static char tmpdir[64];

/* ------------------------------------------------------------ fixture */

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st, (void)type, (void)ftw;
	return remove(path);
}

static void setup(void)
{
	cr_assert_eq(ura_loop_new(NULL, &loop), 0);
	sh = ura_session_shared(loop);
	strcpy(tmpdir, "/tmp/ura-test-ops-XXXXXX");
	cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));
}

static void teardown(void)
{
	ura_loop_free(loop);
	(void)nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(ops, .init = setup, .fini = teardown, .timeout = 120);

/* ---------------------------------------------------- bounded running */

/* ura_loop_run with a hang guard: true when run returned by itself (no work left), false
 * when a helper thread had to stop it after ms. */
static bool run_bounded(unsigned ms)
{
	int r;
	bool by_itself = th_run_bounded(loop, ms, &r);
	cr_assert_eq(r, 0, "ura_loop_run: %d", r);
	return by_itself;
}

static void iterate(int n)
{
	for (int i = 0; i < n; i++)
		(void)ura_loop_run_once(loop, false);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------ call recorder */

/* Everything one task's callback saw. Callbacks run on this (the loop) thread. */
struct rec {
	_Atomic uint64_t calls;    /* every call */
	_Atomic uint64_t terminal; /* calls without IORING_CQE_F_MORE */
	unsigned more;             /* calls with IORING_CQE_F_MORE */
	unsigned after_terminal;   /* calls after the terminal one: must stay 0 */
	unsigned wrong_session;
	int32_t res;               /* the terminal call's res, cqe_flags and handle */
	uint32_t flags;
	ura_task task;
	int32_t more_res[16];      /* res of the first F_MORE calls */
};

static void rec_fn(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	struct rec *r = arg;
	if (s != sh)
		r->wrong_session++;
	if (atomic_load(&r->terminal))
		r->after_terminal++;
	if (flags & IORING_CQE_F_MORE) {
		if (r->more < 16)
			r->more_res[r->more] = res;
		r->more++;
		atomic_fetch_add(&r->calls, 1);
		return;
	}
	r->res = res;
	r->flags = flags;
	r->task = t;
	atomic_fetch_add(&r->terminal, 1);
	atomic_fetch_add(&r->calls, 1);
}

/* Runs the loop until t's terminal call (bounded), then a few more iterations so that a
 * duplicate would show, and checks: exactly one terminal call, for t, none after it, and
 * t reads COMPLETED. */
static void wait_terminal(struct rec *r, ura_task t, const char *what)
{
	uint64_t n = th_run_until_count(loop, &r->terminal, 1, GUARD_MS);
	cr_assert_geq(n, 1, "%s: no terminal call within %u ms (%llu calls with F_MORE)", what,
		      GUARD_MS, (unsigned long long)r->more);
	iterate(4);
	cr_assert_eq(atomic_load(&r->terminal), 1, "%s: %llu terminal calls", what,
		     (unsigned long long)atomic_load(&r->terminal));
	cr_assert_eq(r->after_terminal, 0, "%s: %u calls after the terminal one", what,
		     r->after_terminal);
	cr_assert_eq(r->wrong_session, 0, "%s: callback got another session", what);
	cr_assert_eq(r->task, t, "%s: terminal call for task %#llx, submit gave %#llx", what,
		     (unsigned long long)r->task, (unsigned long long)t);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_COMPLETED,
		     "%s: state %d after the terminal call", what, ura_task_state(sh, t));
}

/* Submitted, waited, and its terminal res checked. */
static void expect_res(struct rec *r, ura_task t, int32_t want, const char *what)
{
	cr_assert_neq(t, 0, "%s: submit gave handle 0", what);
	wait_terminal(r, t, what);
	cr_assert_eq(r->res, want, "%s: res %d (%s), want %d", what, r->res,
		     r->res < 0 ? strerror(-r->res) : "ok", want);
}

static void expect_no_work_left(void)
{
	cr_assert(run_bounded(GUARD_MS), "ura_loop_run did not return: work left behind");
}

/* -------------------------------------------------------- descriptors */

static void make_pipe(int p[2])
{
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0, "pipe: %s", strerror(errno));
}

static void make_socketpair(int type, int sv[2])
{
	cr_assert_eq(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), 0, "socketpair: %s",
		     strerror(errno));
}

static struct sockaddr_in loopback_any(void)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = 0;
	return a;
}

static uint16_t local_port(int fd)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	return ntohs(a.sin_port);
}

static uint16_t peer_port(int fd)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	cr_assert_eq(getpeername(fd, (struct sockaddr *)&a, &len), 0, "getpeername: %s",
		     strerror(errno));
	return ntohs(a.sin_port);
}

/* A TCP listener on 127.0.0.1, port 0; *addr gets its address. */
static int tcp_listener(struct sockaddr_in *addr)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
	struct sockaddr_in a = loopback_any();
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0, "bind: %s", strerror(errno));
	cr_assert_eq(listen(fd, 64), 0, "listen: %s", strerror(errno));
	socklen_t len = sizeof(*addr);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)addr, &len), 0);
	return fd;
}

/* A blocking connect from this thread (loopback: the kernel finishes the handshake). */
static int tcp_client(const struct sockaddr_in *addr)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
	cr_assert_eq(connect(fd, (const struct sockaddr *)addr, sizeof(*addr)), 0,
		     "connect: %s", strerror(errno));
	return fd;
}

/* A connected loopback TCP pair, made with plain syscalls. */
static void tcp_pair(int fds[2])
{
	struct sockaddr_in la;
	int lfd = tcp_listener(&la);
	fds[0] = tcp_client(&la);
	fds[1] = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	cr_assert_geq(fds[1], 0, "accept: %s", strerror(errno));
	close(lfd);
}

static int udp_socket(struct sockaddr_in *addr)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
	struct sockaddr_in a = loopback_any();
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0, "bind: %s", strerror(errno));
	socklen_t len = sizeof(*addr);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)addr, &len), 0);
	return fd;
}

static int tmp_open(const char *name, int flags)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	int fd = open(path, flags | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
	return fd;
}

static int pending_bytes(int fd)
{
	int n = -1;
	cr_assert_eq(ioctl(fd, FIONREAD, &n), 0, "FIONREAD: %s", strerror(errno));
	return n;
}

/* ================================================================ ops */

Test(ops, nop)
{
	struct rec r = { 0 };
	ura_task t = 0;
	cr_assert_eq(ura_nop(sh, rec_fn, &r, &t), 0);
	expect_res(&r, t, 0, "nop");
	cr_assert_eq(r.more, 0);
	expect_no_work_left();
}

Test(ops, write_then_read_on_a_pipe)
{
	int p[2];
	make_pipe(p);
	static const char msg[] = "hello, ura";
	struct rec w = { 0 }, r = { 0 };
	ura_task tw = 0, tr = 0;
	cr_assert_eq(ura_write(sh, p[1], msg, sizeof(msg), 0, rec_fn, &w, &tw), 0);
	expect_res(&w, tw, (int32_t)sizeof(msg), "write to a pipe");
	char buf[64];
	memset(buf, 0, sizeof(buf));
	cr_assert_eq(ura_read(sh, p[0], buf, sizeof(buf), 0, rec_fn, &r, &tr), 0);
	expect_res(&r, tr, (int32_t)sizeof(msg), "read from a pipe");
	cr_assert_str_eq(buf, msg);
	cr_assert_neq(tw, tr, "two live-in-turn tasks share a handle");
	close(p[0]);
	close(p[1]);
	expect_no_work_left();
}

Test(ops, read_blocks_until_data_arrives)
{
	int p[2];
	make_pipe(p);
	/* Initialized: valgrind cannot see the kernel write it through the ring. */
	char buf[16] = { 0 };
	struct rec r = { 0 };
	ura_task t = 0;
	cr_assert_eq(ura_read(sh, p[0], buf, sizeof(buf), 0, rec_fn, &r, &t), 0);
	iterate(4);
	cr_assert_eq(atomic_load(&r.calls), 0, "read on an empty pipe completed: res %d", r.res);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_RUNNING);
	cr_assert_eq(write(p[1], "xyz", 3), 3);
	expect_res(&r, t, 3, "read after the writer wrote");
	cr_assert_eq(memcmp(buf, "xyz", 3), 0);
	close(p[0]);
	close(p[1]);
	expect_no_work_left();
}

Test(ops, write_and_read_a_file_at_offsets)
{
	int fd = tmp_open("rw", O_RDWR | O_CREAT | O_TRUNC);
	struct rec w1 = { 0 }, w2 = { 0 }, r1 = { 0 }, r2 = { 0 };
	ura_task t = 0;
	cr_assert_eq(ura_write(sh, fd, "head", 4, 0, rec_fn, &w1, &t), 0);
	expect_res(&w1, t, 4, "write at 0");
	cr_assert_eq(ura_write(sh, fd, "tail", 4, 8192, rec_fn, &w2, &t), 0);
	expect_res(&w2, t, 4, "write at 8192");
	struct stat st;
	cr_assert_eq(fstat(fd, &st), 0);
	cr_assert_eq(st.st_size, 8196, "file size %lld", (long long)st.st_size);
	char buf[8] = { 0 };
	cr_assert_eq(pread(fd, buf, 4, 8192), 4);
	cr_assert_eq(memcmp(buf, "tail", 4), 0, "pread found %.4s", buf);

	char back[16];
	memset(back, 'x', sizeof(back));
	cr_assert_eq(ura_read(sh, fd, back, 8, 8190, rec_fn, &r1, &t), 0);
	expect_res(&r1, t, 6, "read across the end of the file");
	cr_assert_eq(memcmp(back, "\0\0tail", 6), 0, "read back the wrong bytes");
	cr_assert_eq(ura_read(sh, fd, back, 8, 100000, rec_fn, &r2, &t), 0);
	expect_res(&r2, t, 0, "read past the end of the file");
	close(fd);
	expect_no_work_left();
}

Test(ops, writev_and_readv_on_a_file)
{
	int fd = tmp_open("vec", O_RDWR | O_CREAT | O_TRUNC);
	char a[] = "alpha", b[] = "-", c[] = "omega";
	struct iovec out[3] = {
		{ a, 5 },
		{ b, 1 },
		{ c, 5 },
	};
	struct rec w = { 0 }, r = { 0 };
	ura_task t = 0;
	cr_assert_eq(ura_writev(sh, fd, out, 3, 10, rec_fn, &w, &t), 0);
	expect_res(&w, t, 11, "writev of three iovecs at 10");
	char file[32] = { 0 };
	cr_assert_eq(pread(fd, file, sizeof(file), 0), 21);
	cr_assert_eq(memcmp(file + 10, "alpha-omega", 11), 0, "file holds %.11s", file + 10);

	char x[4] = { 0 }, y[16] = { 0 };
	struct iovec in[2] = {
		{ x, 3 },
		{ y, sizeof(y) },
	};
	cr_assert_eq(ura_readv(sh, fd, in, 2, 10, rec_fn, &r, &t), 0);
	expect_res(&r, t, 11, "readv into two iovecs at 10");
	cr_assert_eq(memcmp(x, "alp", 3), 0, "first iovec %.3s", x);
	cr_assert_eq(memcmp(y, "ha-omega", 8), 0, "second iovec %.8s", y);
	close(fd);
	expect_no_work_left();
}

Test(ops, send_and_recv_on_a_socketpair_and_tcp)
{
	for (int kind = 0; kind < 2; kind++) {
		const char *what = kind ? "tcp loopback" : "unix socketpair";
		int sv[2];
		if (kind)
			tcp_pair(sv);
		else
			make_socketpair(SOCK_STREAM, sv);
		static const char msg[] = "ping-pong";
		struct rec s = { 0 }, peek = { 0 }, r = { 0 };
		ura_task t = 0;
		cr_assert_eq(ura_send(sh, sv[0], msg, sizeof(msg), MSG_NOSIGNAL, rec_fn, &s, &t), 0);
		expect_res(&s, t, (int32_t)sizeof(msg), what);
		/* MSG_PEEK reaches the kernel: the same bytes are there for the next recv. */
		char p1[32] = { 0 }, p2[32] = { 0 };
		cr_assert_eq(ura_recv(sh, sv[1], p1, sizeof(p1), MSG_PEEK, rec_fn, &peek, &t), 0);
		expect_res(&peek, t, (int32_t)sizeof(msg), what);
		cr_assert_str_eq(p1, msg, "%s: peeked %s", what, p1);
		cr_assert_eq(pending_bytes(sv[1]), (int)sizeof(msg), "%s: MSG_PEEK consumed", what);
		cr_assert_eq(ura_recv(sh, sv[1], p2, sizeof(p2), 0, rec_fn, &r, &t), 0);
		expect_res(&r, t, (int32_t)sizeof(msg), what);
		cr_assert_str_eq(p2, msg, "%s: received %s", what, p2);
		close(sv[0]);
		close(sv[1]);
	}
	expect_no_work_left();
}

Test(ops, recv_sees_end_of_stream_and_send_sees_epipe)
{
	int sv[2];
	make_socketpair(SOCK_STREAM, sv);
	char buf[8];
	struct rec r = { 0 }, s = { 0 };
	ura_task t = 0;
	cr_assert_eq(shutdown(sv[0], SHUT_WR), 0);
	cr_assert_eq(ura_recv(sh, sv[1], buf, sizeof(buf), 0, rec_fn, &r, &t), 0);
	expect_res(&r, t, 0, "recv after the peer's shutdown");
	close(sv[1]);
	cr_assert_eq(ura_send(sh, sv[0], "x", 1, MSG_NOSIGNAL, rec_fn, &s, &t), 0);
	expect_res(&s, t, -EPIPE, "send to a closed peer");
	close(sv[0]);
	expect_no_work_left();
}

Test(ops, sendmsg_and_recvmsg_over_udp_loopback)
{
	struct sockaddr_in aa, ba;
	int a = udp_socket(&aa), b = udp_socket(&ba);
	char h[] = "head:", body[] = "datagram-body";
	struct iovec out[2] = {
		{ h, 5 },
		{ body, 13 },
	};
	struct msghdr sm;
	memset(&sm, 0, sizeof(sm));
	sm.msg_name = &ba;
	sm.msg_namelen = sizeof(ba);
	sm.msg_iov = out;
	sm.msg_iovlen = 2;

	char r1[7] = { 0 }, r2[32] = { 0 };
	struct iovec in[2] = {
		{ r1, 7 },
		{ r2, sizeof(r2) },
	};
	struct sockaddr_in from;
	memset(&from, 0, sizeof(from));
	struct msghdr rm;
	memset(&rm, 0, sizeof(rm));
	rm.msg_name = &from;
	rm.msg_namelen = sizeof(from);
	rm.msg_iov = in;
	rm.msg_iovlen = 2;

	struct rec rr = { 0 }, sr = { 0 };
	ura_task tr = 0, ts = 0;
	/* The receive first: it waits in the kernel for the datagram. */
	cr_assert_eq(ura_recvmsg(sh, b, &rm, 0, rec_fn, &rr, &tr), 0);
	iterate(2);
	cr_assert_eq(atomic_load(&rr.calls), 0, "recvmsg completed with nothing sent");
	cr_assert_eq(ura_sendmsg(sh, a, &sm, 0, rec_fn, &sr, &ts), 0);
	expect_res(&sr, ts, 18, "sendmsg of two iovecs");
	expect_res(&rr, tr, 18, "recvmsg into two iovecs");
	cr_assert_eq(memcmp(r1, "head:da", 7), 0, "first iovec %.7s", r1);
	cr_assert_eq(memcmp(r2, "tagram-body", 11), 0, "second iovec %.11s", r2);
	cr_assert_eq(rm.msg_namelen, sizeof(from), "namelen %u", (unsigned)rm.msg_namelen);
	cr_assert_eq(from.sin_family, AF_INET);
	cr_assert_eq(ntohs(from.sin_port), ntohs(aa.sin_port), "sender port %u, want %u",
		     ntohs(from.sin_port), ntohs(aa.sin_port));
	close(a);
	close(b);
	expect_no_work_left();
}

Test(ops, accept_and_connect_on_tcp_loopback)
{
	struct sockaddr_in la;
	int lfd = tcp_listener(&la);
	int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(cfd, 0);
	struct sockaddr_in peer;
	memset(&peer, 0, sizeof(peer));
	socklen_t plen = sizeof(peer);
	struct rec ra = { 0 }, rc = { 0 };
	ura_task ta = 0, tc = 0;
	cr_assert_eq(ura_accept(sh, lfd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC, rec_fn,
				&ra, &ta), 0);
	iterate(2);
	cr_assert_eq(atomic_load(&ra.calls), 0, "accept completed without a client");
	cr_assert_eq(ura_connect(sh, cfd, (struct sockaddr *)&la, sizeof(la), rec_fn, &rc, &tc), 0);
	expect_res(&rc, tc, 0, "connect to the listener");
	wait_terminal(&ra, ta, "accept");
	int afd = ra.res;
	cr_assert_geq(afd, 0, "accept: res %d (%s)", afd, afd < 0 ? strerror(-afd) : "");
	cr_assert_eq(plen, sizeof(struct sockaddr_in), "addrlen %u", (unsigned)plen);
	cr_assert_eq(peer.sin_family, AF_INET);
	cr_assert_eq(ntohs(peer.sin_port), local_port(cfd), "accept's address is not the client");
	cr_assert_eq(peer_port(afd), local_port(cfd));
	cr_assert(fcntl(afd, F_GETFD) & FD_CLOEXEC, "accept flags (SOCK_CLOEXEC) were dropped");
	/* They are the two ends of one connection. */
	cr_assert_eq(write(cfd, "hi", 2), 2);
	char buf[2];
	cr_assert_eq(read(afd, buf, 2), 2);
	cr_assert_eq(memcmp(buf, "hi", 2), 0);

	/* accept without an address. */
	struct rec ra2 = { 0 };
	cr_assert_eq(ura_accept(sh, lfd, NULL, NULL, 0, rec_fn, &ra2, &ta), 0);
	int c2 = tcp_client(&la);
	wait_terminal(&ra2, ta, "accept without an address");
	cr_assert_geq(ra2.res, 0, "accept: res %d", ra2.res);
	cr_assert_eq(peer_port(ra2.res), local_port(c2));
	close(ra2.res);
	close(c2);
	close(afd);
	close(cfd);
	close(lfd);
	expect_no_work_left();
}

Test(ops, connect_to_a_closed_port_is_refused)
{
	/* A port that was free a moment ago and has no listener. */
	struct sockaddr_in a = loopback_any();
	int tmp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(bind(tmp, (struct sockaddr *)&a, sizeof(a)), 0);
	socklen_t len = sizeof(a);
	cr_assert_eq(getsockname(tmp, (struct sockaddr *)&a, &len), 0);
	close(tmp);
	int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct rec r = { 0 };
	ura_task t = 0;
	cr_assert_eq(ura_connect(sh, cfd, (struct sockaddr *)&a, sizeof(a), rec_fn, &r, &t), 0);
	expect_res(&r, t, -ECONNREFUSED, "connect to a port without a listener");
	close(cfd);
	expect_no_work_left();
}

Test(ops, close_a_descriptor)
{
	int p[2];
	make_pipe(p);
	int d = dup(p[0]);
	cr_assert_geq(d, 0);
	struct rec r = { 0 }, bad = { 0 };
	ura_task t = 0;
	cr_assert_eq(ura_close(sh, d, rec_fn, &r, &t), 0);
	expect_res(&r, t, 0, "close");
	errno = 0;
	cr_assert_eq(fcntl(d, F_GETFD), -1, "descriptor %d is still open", d);
	cr_assert_eq(errno, EBADF);
	/* The original still works: only d was closed. */
	cr_assert_eq(write(p[1], "k", 1), 1);
	char c;
	cr_assert_eq(read(p[0], &c, 1), 1);
	cr_assert_eq(ura_close(sh, d, rec_fn, &bad, &t), 0);
	expect_res(&bad, t, -EBADF, "close of a closed descriptor");
	close(p[0]);
	close(p[1]);
	expect_no_work_left();
}

Test(ops, openat_creates_opens_and_fails_like_openat)
{
	int dfd = open(tmpdir, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	cr_assert_geq(dfd, 0);
	const char name[] = "opened";
	struct rec r = { 0 };
	ura_task t = 0;
	cr_assert_eq(ura_openat(sh, dfd, name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0640,
				rec_fn, &r, &t), 0);
	wait_terminal(&r, t, "openat O_CREAT relative to a directory");
	int fd = r.res;
	cr_assert_geq(fd, 0, "openat: res %d (%s)", fd, fd < 0 ? strerror(-fd) : "");
	cr_assert_eq(write(fd, "abc", 3), 3, "the new descriptor is not writable");
	struct stat st;
	cr_assert_eq(fstatat(dfd, name, &st, 0), 0, "the file was not created in the directory");
	cr_assert_eq(st.st_size, 3);
	cr_assert_eq(st.st_mode & 0600, 0600, "mode %o", (unsigned)st.st_mode);
	cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC, "O_CLOEXEC was dropped");
	close(fd);

	/* Absolute path with AT_FDCWD, read only. */
	char abs_path[128];
	snprintf(abs_path, sizeof(abs_path), "%s/%s", tmpdir, name);
	struct rec r2 = { 0 };
	cr_assert_eq(ura_openat(sh, AT_FDCWD, abs_path, O_RDONLY | O_CLOEXEC, 0, rec_fn, &r2, &t), 0);
	wait_terminal(&r2, t, "openat of an absolute path");
	cr_assert_geq(r2.res, 0, "openat: res %d", r2.res);
	char buf[4] = { 0 };
	cr_assert_eq(read(r2.res, buf, 3), 3);
	cr_assert_str_eq(buf, "abc");
	close(r2.res);

	struct rec r3 = { 0 }, r4 = { 0 };
	cr_assert_eq(ura_openat(sh, dfd, "missing", O_RDONLY, 0, rec_fn, &r3, &t), 0);
	expect_res(&r3, t, -ENOENT, "openat of a missing file");
	cr_assert_eq(ura_openat(sh, dfd, name, O_CREAT | O_EXCL | O_RDWR, 0600, rec_fn, &r4, &t), 0);
	expect_res(&r4, t, -EEXIST, "openat O_EXCL of an existing file");
	close(dfd);
	expect_no_work_left();
}

Test(ops, fsync_and_fdatasync)
{
	int fd = tmp_open("sync", O_RDWR | O_CREAT | O_TRUNC);
	cr_assert_eq(write(fd, "data", 4), 4);
	struct rec r1 = { 0 }, r2 = { 0 }, r3 = { 0 };
	ura_task t = 0;
	cr_assert_eq(ura_fsync(sh, fd, 0, rec_fn, &r1, &t), 0);
	expect_res(&r1, t, 0, "fsync");
	cr_assert_eq(ura_fsync(sh, fd, IORING_FSYNC_DATASYNC, rec_fn, &r2, &t), 0);
	expect_res(&r2, t, 0, "fdatasync");
	close(fd);
	cr_assert_eq(ura_fsync(sh, fd, 0, rec_fn, &r3, &t), 0);
	expect_res(&r3, t, -EBADF, "fsync of a closed descriptor");
	expect_no_work_left();
}

Test(ops, poll_reports_readiness)
{
	int p[2];
	make_pipe(p);
	struct rec w = { 0 }, r = { 0 };
	ura_task t = 0;
	/* An empty pipe is writable at once. */
	cr_assert_eq(ura_poll(sh, p[1], POLLOUT, rec_fn, &w, &t), 0);
	wait_terminal(&w, t, "poll POLLOUT");
	cr_assert(w.res & POLLOUT, "poll POLLOUT: res %#x", (unsigned)w.res);
	cr_assert_eq(w.res & (POLLERR | POLLHUP | POLLNVAL), 0, "res %#x", (unsigned)w.res);

	/* ... and readable only once a byte arrives. */
	cr_assert_eq(ura_poll(sh, p[0], POLLIN, rec_fn, &r, &t), 0);
	iterate(4);
	cr_assert_eq(atomic_load(&r.calls), 0, "POLLIN on an empty pipe fired: %#x", (unsigned)r.res);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_RUNNING);
	cr_assert_eq(write(p[1], "!", 1), 1);
	wait_terminal(&r, t, "poll POLLIN");
	cr_assert(r.res & POLLIN, "poll POLLIN: res %#x", (unsigned)r.res);
	cr_assert_eq(pending_bytes(p[0]), 1, "poll consumed data");
	close(p[0]);
	close(p[1]);
	expect_no_work_left();
}

static int order[8];
static int norder;

static void order_fn(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t, (void)flags;
	if (norder < 8)
		order[norder] = res == -ETIME ? (int)(uintptr_t)arg : -1000 + res;
	norder++;
}

Test(ops, timeout_fires_with_etime_not_early_and_in_order)
{
	struct rec r = { 0 }, z = { 0 };
	ura_task t = 0;
	uint64_t start = now_ns();
	cr_assert_eq(ura_timeout(sh, 20ull * 1000000, rec_fn, &r, &t), 0);
	expect_res(&r, t, -ETIME, "20 ms timeout");
	uint64_t took = now_ns() - start;
	cr_assert_geq(took, 20ull * 1000000, "a 20 ms timeout fired after %llu ns",
		      (unsigned long long)took);

	cr_assert_eq(ura_timeout(sh, 0, rec_fn, &z, &t), 0);
	expect_res(&z, t, -ETIME, "0 ns timeout");

	/* More than a second: the nanoseconds must be split into seconds correctly. */
	struct rec l = { 0 };
	start = now_ns();
	cr_assert_eq(ura_timeout(sh, 1050ull * 1000000, rec_fn, &l, &t), 0);
	expect_res(&l, t, -ETIME, "1.05 s timeout");
	took = now_ns() - start;
	cr_assert_geq(took, 1050ull * 1000000, "a 1.05 s timeout fired after %llu ns",
		      (unsigned long long)took);

	/* Submitted together, they fire by their duration (30 ms apart: no scheduling
	 * noise reorders them). */
	norder = 0;
	cr_assert_eq(ura_timeout(sh, 90ull * 1000000, order_fn, (void *)3, NULL), 0);
	cr_assert_eq(ura_timeout(sh, 30ull * 1000000, order_fn, (void *)1, NULL), 0);
	cr_assert_eq(ura_timeout(sh, 60ull * 1000000, order_fn, (void *)2, NULL), 0);
	expect_no_work_left();
	cr_assert_eq(norder, 3, "%d timeout calls", norder);
	cr_assert(order[0] == 1 && order[1] == 2 && order[2] == 3, "order %d %d %d", order[0],
		  order[1], order[2]);
}

Test(ops, splice_file_to_pipe_and_pipe_to_file)
{
	int fd = tmp_open("splice", O_RDWR | O_CREAT | O_TRUNC);
	static const char text[] = "spliced through a pipe";
	const unsigned n = sizeof(text) - 1;
	cr_assert_eq(pwrite(fd, text, n, 0), (ssize_t)n);
	int p[2];
	make_pipe(p);
	struct rec r1 = { 0 }, r2 = { 0 };
	ura_task t = 0;
	cr_assert_eq(ura_splice(sh, fd, 0, p[1], -1, n, 0, rec_fn, &r1, &t), 0);
	expect_res(&r1, t, (int32_t)n, "splice file -> pipe");
	cr_assert_eq(pending_bytes(p[0]), (int)n);
	/* Back from the pipe into the same file at offset 100. */
	cr_assert_eq(ura_splice(sh, p[0], -1, fd, 100, n, 0, rec_fn, &r2, &t), 0);
	expect_res(&r2, t, (int32_t)n, "splice pipe -> file at 100");
	char buf[64] = { 0 };
	cr_assert_eq(pread(fd, buf, n, 100), (ssize_t)n);
	cr_assert_str_eq(buf, text);
	cr_assert_eq(pending_bytes(p[0]), 0);
	close(p[0]);
	close(p[1]);
	close(fd);
	expect_no_work_left();
}

/* ================================================= multishot accept */

Test(ops, accept_multishot_then_cancel_mid_stream)
{
	enum { CLIENTS = 3 };
	struct sockaddr_in la;
	int lfd = tcp_listener(&la);
	struct rec r = { 0 };
	ura_task t = 0;
	cr_assert_eq(ura_accept_multishot(sh, lfd, SOCK_CLOEXEC, rec_fn, &r, &t), 0);
	int cli[CLIENTS];
	for (int k = 0; k < CLIENTS; k++) {
		cli[k] = tcp_client(&la);
		uint64_t got = th_run_until_count(loop, &r.calls, (uint64_t)k + 1, GUARD_MS);
		cr_assert_eq(got, (uint64_t)k + 1, "client %d: %llu accept calls", k,
			     (unsigned long long)got);
		cr_assert_eq(atomic_load(&r.terminal), 0, "accept %d was terminal: res %d", k, r.res);
		cr_assert_eq(r.more, (unsigned)k + 1);
		int fd = r.more_res[k];
		cr_assert_geq(fd, 0, "accept %d: res %d", k, fd);
		cr_assert_eq(peer_port(fd), local_port(cli[k]), "accept %d: another peer", k);
		cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC, "accept %d: SOCK_CLOEXEC dropped", k);
	}
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_RUNNING);

	iterate(4);
	cr_assert_eq(atomic_load(&r.calls), CLIENTS, "accept without a client");
	cr_assert_eq(ura_task_cancel(sh, t), 0);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_CANCELING);
	cr_assert_eq(ura_task_cancel(sh, t), -EALREADY);
	wait_terminal(&r, t, "cancelled multishot accept");
	cr_assert(r.res == -ECANCELED || r.res == -EINTR, "cancelled multishot accept: res %d",
		  r.res);
	cr_assert_eq(r.more, CLIENTS, "%u accepts with F_MORE", r.more);
	cr_assert_eq(ura_task_cancel(sh, t), -ENOENT);
	cr_assert_eq(ura_task_resume(sh, t), -ENOENT);

	/* After the terminal call, a new client reaches no callback. */
	int late = tcp_client(&la);
	iterate(8);
	cr_assert_eq(atomic_load(&r.calls), CLIENTS + 1, "a call after the terminal one");
	close(late);
	for (int k = 0; k < CLIENTS; k++) {
		close(r.more_res[k]);
		close(cli[k]);
	}
	close(lfd);
	expect_no_work_left();
}

/* ================================================== multishot recv */

struct mrecv {
	ura_buf_ring *br;
	_Atomic uint64_t calls;
	_Atomic uint64_t terminal;
	_Atomic uint64_t bytes;   /* data received so far */
	unsigned more, after_terminal;
	unsigned no_buffer;       /* res > 0 without a ring buffer: must stay 0 */
	unsigned oversize;        /* res over the buffer size: must stay 0 */
	unsigned empty_more;      /* res <= 0 with F_MORE: must stay 0 */
	unsigned buffer_on_terminal_without_data;
	int32_t res;              /* terminal */
	uint32_t flags;
	unsigned nsizes;
	unsigned sizes[256];      /* res of each data call */
	unsigned char data[1 << 17];
};

static void mrecv_fn(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	(void)s, (void)t;
	struct mrecv *m = arg;
	if (atomic_load(&m->terminal))
		m->after_terminal++;
	if (res > 0) {
		unsigned char *b = ura_buf_ring_buffer(m->br, flags);
		if (!(flags & IORING_CQE_F_BUFFER) || !b) {
			m->no_buffer++;
		} else if ((unsigned)res > ura_buf_ring_buf_size(m->br)) {
			m->oversize++;
		} else {
			uint64_t at = atomic_load(&m->bytes);
			if (at + (unsigned)res <= sizeof(m->data))
				memcpy(m->data + at, b, (size_t)res);
			if (m->nsizes < 256)
				m->sizes[m->nsizes] = (unsigned)res;
			m->nsizes++;
			atomic_store(&m->bytes, at + (unsigned)res);
		}
		ura_buf_ring_recycle(m->br, flags);
	} else if (flags & IORING_CQE_F_BUFFER) {
		m->buffer_on_terminal_without_data++;
		ura_buf_ring_recycle(m->br, flags);
	}
	if (flags & IORING_CQE_F_MORE) {
		m->more++;
		if (res <= 0)
			m->empty_more++;
	} else {
		m->res = res;
		m->flags = flags;
		atomic_fetch_add(&m->terminal, 1);
	}
	atomic_fetch_add(&m->calls, 1);
}

static void mrecv_check_clean(const struct mrecv *m, const char *what)
{
	cr_assert_eq(m->no_buffer, 0, "%s: %u data calls without a ring buffer", what, m->no_buffer);
	cr_assert_eq(m->oversize, 0, "%s: %u calls over the buffer size", what, m->oversize);
	cr_assert_eq(m->empty_more, 0, "%s: %u F_MORE calls without data", what, m->empty_more);
	cr_assert_eq(m->after_terminal, 0, "%s: %u calls after the terminal one", what,
		     m->after_terminal);
}

static struct mrecv *mrecv_new(ura_buf_ring *br)
{
	struct mrecv *m = calloc(1, sizeof(*m));
	cr_assert_not_null(m);
	m->br = br;
	return m;
}

Test(ops, buf_ring_accessors)
{
	ura_buf_ring *br = NULL;
	cr_assert_eq(ura_buf_ring_new(loop, 5, 8, 128, &br), 0);
	cr_assert_not_null(br);
	cr_assert_eq(ura_buf_ring_buf_size(br), 128);
	cr_assert_null(ura_buf_ring_buffer(br, 0), "a CQE without F_BUFFER carries no buffer");
	cr_assert_null(ura_buf_ring_buffer(NULL, IORING_CQE_F_BUFFER));
	ura_buf_ring_recycle(br, 0); /* nothing to give back: a no-op */
	ura_buf_ring_free(br);
	ura_buf_ring_free(NULL);
	/* The group id is free again after free. */
	cr_assert_eq(ura_buf_ring_new(loop, 5, 8, 128, &br), 0);
	ura_buf_ring_free(br);
}

Test(ops, recv_multishot_one_buffer_per_message_recycled_until_eof)
{
	enum { NBUFS = 8, BUFSZ = 64, MSGS = 3 * NBUFS };
	int sv[2];
	make_socketpair(SOCK_STREAM, sv);
	ura_buf_ring *br = NULL;
	cr_assert_eq(ura_buf_ring_new(loop, 1, NBUFS, BUFSZ, &br), 0);
	struct mrecv *m = mrecv_new(br);
	ura_task t = 0;
	cr_assert_eq(ura_recv_multishot(sh, sv[1], br, 0, mrecv_fn, m, &t), 0);
	iterate(2);
	cr_assert_eq(atomic_load(&m->calls), 0, "multishot recv completed with nothing sent");

	/* One message at a time, each waited for: each arrives as one CQE, and 3x the
	 * ring's buffers pass through it, so recycling is exercised. */
	char expect[MSGS * 16];
	size_t elen = 0;
	for (int i = 0; i < MSGS; i++) {
		char msg[16];
		int len = snprintf(msg, sizeof(msg), "message %02d", i);
		cr_assert_eq(write(sv[0], msg, (size_t)len), len);
		memcpy(expect + elen, msg, (size_t)len);
		elen += (size_t)len;
		uint64_t got = th_run_until_count(loop, &m->calls, (uint64_t)i + 1, GUARD_MS);
		cr_assert_eq(got, (uint64_t)i + 1, "message %d: %llu calls", i,
			     (unsigned long long)got);
		cr_assert_eq(atomic_load(&m->terminal), 0,
			     "message %d ended the multishot recv: res %d (%s)", i, m->res,
			     m->res < 0 ? strerror(-m->res) : "");
		cr_assert_eq(m->sizes[i], (unsigned)len, "message %d: %u bytes in its CQE", i,
			     m->sizes[i]);
		mrecv_check_clean(m, "multishot recv");
	}
	cr_assert_eq(atomic_load(&m->bytes), elen);
	cr_assert_eq(memcmp(m->data, expect, elen), 0, "received bytes differ from sent");
	cr_assert_eq(m->more, MSGS);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_RUNNING);

	/* Peer shutdown: the terminal call, res 0, no buffer. */
	cr_assert_eq(shutdown(sv[0], SHUT_WR), 0);
	uint64_t n = th_run_until_count(loop, &m->terminal, 1, GUARD_MS);
	cr_assert_eq(n, 1, "no terminal call after the peer's shutdown");
	iterate(4);
	cr_assert_eq(atomic_load(&m->terminal), 1, "%llu terminal calls",
		     (unsigned long long)atomic_load(&m->terminal));
	cr_assert_eq(m->res, 0, "end of stream: res %d", m->res);
	cr_assert_eq(m->flags & (IORING_CQE_F_MORE | IORING_CQE_F_BUFFER), 0,
		     "end of stream: flags %#x", m->flags);
	cr_assert_eq(m->buffer_on_terminal_without_data, 0);
	mrecv_check_clean(m, "multishot recv");
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_COMPLETED);
	cr_assert_eq(ura_task_cancel(sh, t), -ENOENT);
	ura_buf_ring_free(br);
	free(m);
	close(sv[0]);
	close(sv[1]);
	expect_no_work_left();
}

Test(ops, recv_multishot_stream_over_tcp)
{
	/* 64 KiB through a ring of 16 x 256 bytes in 1 KiB writes, each write waited for:
	 * the ring never runs dry, and the byte stream arrives whole and in order. */
	enum { NBUFS = 16, BUFSZ = 256, CHUNK = 1024, TOTAL = 64 * 1024 };
	int sv[2];
	tcp_pair(sv);
	ura_buf_ring *br = NULL;
	cr_assert_eq(ura_buf_ring_new(loop, 2, NBUFS, BUFSZ, &br), 0);
	struct mrecv *m = mrecv_new(br);
	ura_task t = 0;
	cr_assert_eq(ura_recv_multishot(sh, sv[1], br, 0, mrecv_fn, m, &t), 0);
	static unsigned char sent[TOTAL];
	for (size_t i = 0; i < TOTAL; i++)
		sent[i] = (unsigned char)(i * 7 + (i >> 8));
	for (size_t off = 0; off < TOTAL; off += CHUNK) {
		cr_assert_eq(write(sv[0], sent + off, CHUNK), CHUNK);
		uint64_t got = th_run_until_count(loop, &m->bytes, off + CHUNK, GUARD_MS);
		cr_assert_eq(got, off + CHUNK, "after %zu bytes sent, %llu received", off + CHUNK,
			     (unsigned long long)got);
		cr_assert_eq(atomic_load(&m->terminal), 0, "the stream ended early: res %d (%s)",
			     m->res, m->res < 0 ? strerror(-m->res) : "");
	}
	cr_assert_eq(memcmp(m->data, sent, TOTAL), 0, "the received stream differs");
	mrecv_check_clean(m, "multishot recv over tcp");
	close(sv[0]);
	uint64_t n = th_run_until_count(loop, &m->terminal, 1, GUARD_MS);
	cr_assert_eq(n, 1, "no terminal call after the peer closed");
	iterate(4);
	cr_assert_eq(atomic_load(&m->terminal), 1);
	cr_assert_eq(m->res, 0, "end of stream: res %d", m->res);
	mrecv_check_clean(m, "multishot recv over tcp");
	cr_log_info("64 KiB in %u data calls", m->nsizes);
	ura_buf_ring_free(br);
	free(m);
	close(sv[1]);
	expect_no_work_left();
}

Test(ops, recv_multishot_cancel_mid_stream)
{
	enum { NBUFS = 4, BUFSZ = 32 };
	int sv[2];
	make_socketpair(SOCK_STREAM, sv);
	ura_buf_ring *br = NULL;
	cr_assert_eq(ura_buf_ring_new(loop, 3, NBUFS, BUFSZ, &br), 0);
	struct mrecv *m = mrecv_new(br);
	ura_task t = 0;
	cr_assert_eq(ura_recv_multishot(sh, sv[1], br, 0, mrecv_fn, m, &t), 0);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(write(sv[0], "chunk", 5), 5);
		uint64_t got = th_run_until_count(loop, &m->calls, (uint64_t)i + 1, GUARD_MS);
		cr_assert_eq(got, (uint64_t)i + 1, "message %d not received", i);
	}
	cr_assert_eq(m->more, 3, "%u calls with F_MORE before the cancel", m->more);
	cr_assert_eq(atomic_load(&m->terminal), 0);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_RUNNING);
	cr_assert_eq(ura_task_cancel(sh, t), 0);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_CANCELING);
	cr_assert_eq(ura_task_cancel(sh, t), -EALREADY);
	uint64_t n = th_run_until_count(loop, &m->terminal, 1, GUARD_MS);
	cr_assert_eq(n, 1, "no terminal call after the cancel");
	iterate(4);
	cr_assert_eq(atomic_load(&m->terminal), 1, "%llu terminal calls",
		     (unsigned long long)atomic_load(&m->terminal));
	cr_assert(m->res == -ECANCELED || m->res == -EINTR, "cancelled multishot recv: res %d",
		  m->res);
	cr_assert_eq(m->flags & IORING_CQE_F_MORE, 0);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_COMPLETED);
	cr_assert_eq(ura_task_cancel(sh, t), -ENOENT);
	cr_assert_eq(ura_task_resume(sh, t), -ENOENT);
	/* Data after the terminal call reaches no callback. */
	uint64_t calls = atomic_load(&m->calls);
	cr_assert_eq(write(sv[0], "late", 4), 4);
	iterate(8);
	cr_assert_eq(atomic_load(&m->calls), calls, "a call after the terminal one");
	mrecv_check_clean(m, "cancelled multishot recv");
	ura_buf_ring_free(br);
	free(m);
	close(sv[0]);
	close(sv[1]);
	expect_no_work_left();
}

Test(ops, recv_multishot_without_recycling_ends_once)
{
	/* Two buffers, never given back: the third message finds the ring empty and the
	 * kernel ends the multishot recv (-ENOBUFS): still exactly one terminal call. */
	int sv[2];
	make_socketpair(SOCK_STREAM, sv);
	ura_buf_ring *br = NULL;
	cr_assert_eq(ura_buf_ring_new(loop, 4, 2, 32, &br), 0);
	static struct rec r;
	memset(&r, 0, sizeof(r));
	ura_task t = 0;
	cr_assert_eq(ura_recv_multishot(sh, sv[1], br, 0, rec_fn, &r, &t), 0);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(write(sv[0], "abc", 3), 3);
		uint64_t got = th_run_until_count(loop, &r.calls, (uint64_t)i + 1, GUARD_MS);
		cr_assert_eq(got, (uint64_t)i + 1, "message %d not received", i);
		cr_assert_eq(r.more_res[i], 3, "message %d: res %d", i, r.more_res[i]);
	}
	cr_assert_eq(atomic_load(&r.terminal), 0);
	cr_assert_eq(write(sv[0], "def", 3), 3);
	wait_terminal(&r, t, "multishot recv with an empty ring");
	cr_assert_eq(r.res, -ENOBUFS, "res %d (%s)", r.res, r.res < 0 ? strerror(-r.res) : "");
	cr_assert_eq(r.more, 2);
	cr_assert_eq(pending_bytes(sv[1]), 3, "the unreceived message was lost");
	ura_buf_ring_free(br);
	close(sv[0]);
	close(sv[1]);
	expect_no_work_left();
}

/* A multishot callback that cancels its own task on the second CQE. */
struct self_cancel {
	struct rec r;
	ura_buf_ring *br;
	int cancel_res;   /* what ura_task_cancel answered inside the callback */
	int state_after;  /* and ura_task_state right after it */
	int in_terminal_cancel, in_terminal_resume, in_terminal_state;
};

static void self_cancel_fn(ura_session *s, ura_task t, int32_t res, uint32_t flags, void *arg)
{
	struct self_cancel *sc = arg;
	if (flags & IORING_CQE_F_BUFFER)
		ura_buf_ring_recycle(sc->br, flags);
	if ((flags & IORING_CQE_F_MORE) && sc->r.more == 1) {
		sc->cancel_res = ura_task_cancel(s, t);
		sc->state_after = ura_task_state(s, t);
	}
	if (!(flags & IORING_CQE_F_MORE)) {
		/* Its own terminal call: the task is finished. */
		sc->in_terminal_cancel = ura_task_cancel(s, t);
		sc->in_terminal_resume = ura_task_resume(s, t);
		sc->in_terminal_state = ura_task_state(s, t);
	}
	rec_fn(s, t, res, flags, &sc->r);
}

Test(ops, multishot_cancelled_from_its_own_callback)
{
	int sv[2];
	make_socketpair(SOCK_STREAM, sv);
	ura_buf_ring *br = NULL;
	cr_assert_eq(ura_buf_ring_new(loop, 6, 8, 32, &br), 0);
	static struct self_cancel sc;
	memset(&sc, 0, sizeof(sc));
	sc.br = br;
	ura_task t = 0;
	cr_assert_eq(ura_recv_multishot(sh, sv[1], br, 0, self_cancel_fn, &sc, &t), 0);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(write(sv[0], "msg", 3), 3);
		uint64_t got = th_run_until_count(loop, &sc.r.calls, (uint64_t)i + 1, GUARD_MS);
		cr_assert_geq(got, (uint64_t)i + 1, "message %d not received", i);
	}
	wait_terminal(&sc.r, t, "multishot recv cancelled by its own callback");
	cr_assert_eq(sc.cancel_res, 0, "cancel inside the callback: %d", sc.cancel_res);
	cr_assert_eq(sc.state_after, URA_TASK_CANCELING, "state %d", sc.state_after);
	cr_assert(sc.r.res == -ECANCELED || sc.r.res == -EINTR, "res %d", sc.r.res);
	cr_assert_eq(sc.in_terminal_cancel, -ENOENT, "cancel inside the terminal call: %d",
		     sc.in_terminal_cancel);
	cr_assert_eq(sc.in_terminal_resume, -ENOENT, "resume inside the terminal call: %d",
		     sc.in_terminal_resume);
	cr_assert_eq(sc.in_terminal_state, URA_TASK_COMPLETED, "state inside the terminal call: %d",
		     sc.in_terminal_state);
	ura_buf_ring_free(br);
	close(sv[0]);
	close(sv[1]);
	expect_no_work_left();
}

/* ============================================== cancel of blocking ops */

/* Cancels t (a blocking op) and checks the contract: RUNNING before, CANCELING after the
 * cancel (and -EALREADY for a second one), exactly one terminal call with -ECANCELED or
 * -EINTR, COMPLETED and -ENOENT after it. in_kernel: let the op reach the kernel first;
 * otherwise it is cancelled while its SQE still sits in the SQ. */
static void cancel_blocking(struct rec *r, ura_task t, bool in_kernel, const char *what)
{
	cr_assert_neq(t, 0, "%s: handle 0", what);
	if (in_kernel)
		iterate(4);
	cr_assert_eq(atomic_load(&r->calls), 0, "%s completed by itself: res %d", what, r->res);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_RUNNING, "%s: state %d", what,
		     ura_task_state(sh, t));
	int c = ura_task_cancel(sh, t);
	cr_assert_eq(c, 0, "%s: cancel returned %d", what, c);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_CANCELING, "%s: state %d after cancel",
		     what, ura_task_state(sh, t));
	cr_assert_eq(ura_task_cancel(sh, t), -EALREADY, "%s: second cancel", what);
	cr_assert_eq(atomic_load(&r->calls), 0, "%s: terminal call inside cancel", what);
	wait_terminal(r, t, what);
	cr_assert(r->res == -ECANCELED || r->res == -EINTR, "%s: cancelled with res %d (%s)",
		  what, r->res, r->res < 0 ? strerror(-r->res) : "");
	cr_assert_eq(ura_task_cancel(sh, t), -ENOENT, "%s: cancel after the terminal call", what);
	cr_assert_eq(ura_task_resume(sh, t), -ENOENT, "%s: resume after the terminal call", what);
}

Test(ops, cancel_read_on_an_empty_pipe)
{
	for (int k = 0; k < 2; k++) {
		const char *what = k ? "read on an empty pipe (in the SQ)" : "read on an empty pipe";
		int p[2];
		make_pipe(p);
		char buf[16];
		struct rec r = { 0 };
		ura_task t = 0;
		cr_assert_eq(ura_read(sh, p[0], buf, sizeof(buf), 0, rec_fn, &r, &t), 0);
		cancel_blocking(&r, t, k == 0, what);
		/* The cancelled read took nothing: a later byte is still there. */
		cr_assert_eq(write(p[1], "z", 1), 1);
		iterate(4);
		cr_assert_eq(pending_bytes(p[0]), 1, "%s: a cancelled read consumed data", what);
		close(p[0]);
		close(p[1]);
	}
	expect_no_work_left();
}

Test(ops, cancel_recv_on_an_idle_socket)
{
	for (int k = 0; k < 2; k++) {
		const char *what = k ? "recv on an idle socket (in the SQ)" : "recv on an idle socket";
		int sv[2];
		tcp_pair(sv);
		char buf[16];
		struct rec r = { 0 };
		ura_task t = 0;
		cr_assert_eq(ura_recv(sh, sv[1], buf, sizeof(buf), 0, rec_fn, &r, &t), 0);
		cancel_blocking(&r, t, k == 0, what);
		cr_assert_eq(write(sv[0], "z", 1), 1);
		iterate(4);
		close(sv[0]);
		close(sv[1]);
	}
	expect_no_work_left();
}

Test(ops, cancel_accept_without_a_client)
{
	for (int k = 0; k < 2; k++) {
		const char *what = k ? "accept without a client (in the SQ)" : "accept without a client";
		struct sockaddr_in la;
		int lfd = tcp_listener(&la);
		struct sockaddr_in peer;
		socklen_t plen = sizeof(peer);
		struct rec r = { 0 };
		ura_task t = 0;
		cr_assert_eq(ura_accept(sh, lfd, (struct sockaddr *)&peer, &plen, 0, rec_fn, &r, &t), 0);
		cancel_blocking(&r, t, k == 0, what);
		/* The listener still works, and the cancelled accept took no client. */
		int c = tcp_client(&la);
		iterate(4);
		int a = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		cr_assert_geq(a, 0, "%s: the client was swallowed: %s", what, strerror(errno));
		close(a);
		close(c);
		close(lfd);
	}
	expect_no_work_left();
}

Test(ops, cancel_poll)
{
	for (int k = 0; k < 2; k++) {
		const char *what = k ? "poll (in the SQ)" : "poll";
		int p[2];
		make_pipe(p);
		struct rec r = { 0 };
		ura_task t = 0;
		cr_assert_eq(ura_poll(sh, p[0], POLLIN, rec_fn, &r, &t), 0);
		cancel_blocking(&r, t, k == 0, what);
		cr_assert_eq(write(p[1], "z", 1), 1);
		iterate(4);
		close(p[0]);
		close(p[1]);
	}
	expect_no_work_left();
}

Test(ops, cancel_timeout)
{
	for (int k = 0; k < 2; k++) {
		const char *what = k ? "timeout (in the SQ)" : "timeout";
		struct rec r = { 0 };
		ura_task t = 0;
		cr_assert_eq(ura_timeout(sh, LONG_NS, rec_fn, &r, &t), 0);
		cancel_blocking(&r, t, k == 0, what);
	}
	expect_no_work_left();
}

Test(ops, cancel_racing_completion)
{
	/* Each round: a byte is (or becomes) available while a read is submitted and at once
	 * cancelled. Whatever wins, the task has exactly one terminal call, with the real
	 * result (the byte, consumed) or -ECANCELED/-EINTR (the byte still in the pipe). */
	enum { ROUNDS = 1000 };
	int p[2];
	make_pipe(p);
	unsigned real = 0, cancelled = 0, cancel_late = 0;
	for (int i = 0; i < ROUNDS; i++) {
		unsigned char want = (unsigned char)(i * 13 + 1), got = 0;
		int variant = i % 3;
		struct rec r = { 0 };
		ura_task t = 0;
		if (variant == 0) /* data first: the read can complete at once */
			cr_assert_eq(write(p[1], &want, 1), 1);
		cr_assert_eq(ura_read(sh, p[0], &got, 1, 0, rec_fn, &r, &t), 0, "round %d", i);
		if (variant == 1) { /* read armed in the kernel, then data, then cancel */
			iterate(1);
			cr_assert_eq(write(p[1], &want, 1), 1);
		}
		int c = ura_task_cancel(sh, t);
		cr_assert(c == 0 || c == -ENOENT, "round %d: cancel %d", i, c);
		if (c == -ENOENT)
			cancel_late++;
		if (variant == 2) /* cancel requested, then data */
			cr_assert_eq(write(p[1], &want, 1), 1);
		wait_terminal(&r, t, "racing read");
		int left = pending_bytes(p[0]);
		if (r.res == 1) {
			real++;
			cr_assert_eq(got, want, "round %d: read %u, want %u", i, got, want);
			cr_assert_eq(left, 0, "round %d: read reported 1 byte, pipe holds %d", i, left);
		} else {
			cr_assert(r.res == -ECANCELED || r.res == -EINTR, "round %d: res %d", i, r.res);
			cr_assert_eq(c, 0, "round %d: cancel said -ENOENT, res %d", i, r.res);
			cancelled++;
			cr_assert_eq(left, 1, "round %d: cancelled read, pipe holds %d bytes", i, left);
			unsigned char b = 0;
			cr_assert_eq(read(p[0], &b, 1), 1);
			cr_assert_eq(b, want, "round %d: drained %u, want %u", i, b, want);
		}
	}
	cr_log_info("cancel racing completion: %u real results, %u cancelled (%u cancels too "
		    "late)", real, cancelled, cancel_late);
	cr_assert_eq(real + cancelled, ROUNDS);
	close(p[0]);
	close(p[1]);
	expect_no_work_left();
}

/* ====================================================== stale handles */

Test(ops, stale_handle_after_completion)
{
	struct rec r = { 0 };
	ura_task t = 0;
	cr_assert_eq(ura_nop(sh, rec_fn, &r, &t), 0);
	expect_res(&r, t, 0, "nop");
	cr_assert_eq(ura_task_cancel(sh, t), -ENOENT);
	cr_assert_eq(ura_task_resume(sh, t), -ENOENT);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_COMPLETED);

	/* Also for a task that ended cancelled. */
	struct rec c = { 0 };
	cr_assert_eq(ura_timeout(sh, LONG_NS, rec_fn, &c, &t), 0);
	iterate(2);
	cr_assert_eq(ura_task_cancel(sh, t), 0);
	expect_res(&c, t, -ECANCELED, "cancelled timeout");
	cr_assert_eq(ura_task_cancel(sh, t), -ENOENT);
	cr_assert_eq(ura_task_resume(sh, t), -ENOENT);
	cr_assert_eq(ura_task_state(sh, t), URA_TASK_COMPLETED);
	expect_no_work_left();
}

Test(ops, stale_handle_after_its_slot_is_reused)
{
	struct rec r = { 0 };
	ura_task old = 0;
	cr_assert_eq(ura_nop(sh, rec_fn, &r, &old), 0);
	expect_res(&r, old, 0, "the old task");

	/* Many tasks through the registry, each finished before the next. */
	enum { NOPS = 2000 };
	for (int i = 0; i < NOPS; i++) {
		struct rec n = { 0 };
		ura_task t = 0;
		cr_assert_eq(ura_nop(sh, rec_fn, &n, &t), 0);
		cr_assert_neq(t, old, "nop %d got the old task's handle", i);
		uint64_t got = th_run_until_count(loop, &n.terminal, 1, GUARD_MS);
		cr_assert_eq(got, 1, "nop %d: %llu terminal calls", i, (unsigned long long)got);
		cr_assert_eq(ura_task_cancel(sh, old), -ENOENT);
	}

	/* Long-running tasks until one lives in the old task's slot. */
	enum { MAXNEW = 512 };
	static struct rec nr[MAXNEW];
	ura_task nt[MAXNEW];
	memset(nr, 0, sizeof(nr));
	int n = 0, reused = -1;
	while (n < MAXNEW && reused < 0) {
		cr_assert_eq(ura_timeout(sh, LONG_NS, rec_fn, &nr[n], &nt[n]), 0);
		if (ura__handle_index(nt[n]) == ura__handle_index(old))
			reused = n;
		n++;
	}
	cr_assert_geq(reused, 0, "none of %d new tasks reused the old slot", MAXNEW);
	ura_task young = nt[reused];
	cr_assert_neq(young, old, "the reused slot kept its generation");
	iterate(4);

	cr_assert_eq(ura_task_state(sh, old), URA_TASK_COMPLETED, "the old handle reads %d",
		     ura_task_state(sh, old));
	cr_assert_eq(ura_task_resume(sh, old), -ENOENT);
	cr_assert_eq(ura_task_cancel(sh, old), -ENOENT, "cancel through the old handle");
	iterate(4);
	cr_assert_eq(ura_task_state(sh, young), URA_TASK_RUNNING,
		     "the new task reads %d after a stale cancel", ura_task_state(sh, young));
	for (int i = 0; i < n; i++)
		cr_assert_eq(atomic_load(&nr[i].calls), 0, "new task %d was called", i);

	/* A task of the shared session is unknown to another session. */
	ura_session *other = NULL;
	cr_assert_eq(ura_session_new(loop, NULL, NULL, &other), 0);
	cr_assert_eq(ura_task_cancel(other, young), -ENOENT);
	cr_assert_eq(ura_task_state(other, young), URA_TASK_COMPLETED);
	cr_assert_eq(ura_task_state(sh, young), URA_TASK_RUNNING);
	ura_session_unref(other);

	for (int i = 0; i < n; i++)
		cr_assert_eq(ura_task_cancel(sh, nt[i]), 0, "cancel of new task %d", i);
	for (int i = 0; i < n; i++) {
		wait_terminal(&nr[i], nt[i], "new task");
		cr_assert_eq(nr[i].res, -ECANCELED, "new task %d: res %d", i, nr[i].res);
	}
	expect_no_work_left();
}

/* ========================================================= bad input */

Test(ops, bad_input_is_einval_and_never_calls_back)
{
	struct rec r = { 0 };
	struct sockaddr_in la;
	int lfd = tcp_listener(&la);
	struct sockaddr_in peer;
	ura_task t = 0;
	cr_assert_eq(ura_accept(sh, lfd, (struct sockaddr *)&peer, NULL, 0, rec_fn, &r, &t), -EINVAL,
		     "accept with an address and no length");
	int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(ura_connect(sh, cfd, NULL, sizeof(la), rec_fn, &r, &t), -EINVAL,
		     "connect to NULL");
	cr_assert_eq(ura_openat(sh, AT_FDCWD, NULL, O_RDONLY, 0, rec_fn, &r, &t), -EINVAL,
		     "openat of NULL");
	cr_assert_eq(ura_recv_multishot(sh, cfd, NULL, 0, rec_fn, &r, &t), -EINVAL,
		     "multishot recv without a ring");
	cr_assert_eq(ura_nop(NULL, rec_fn, &r, &t), -EINVAL, "nop on a NULL session");
	cr_assert_eq(ura_read(NULL, 0, &peer, 1, 0, rec_fn, &r, &t), -EINVAL);
	cr_assert_eq(ura_timeout(NULL, 1, rec_fn, &r, &t), -EINVAL);

	ura_buf_ring *br = NULL;
	cr_assert_eq(ura_buf_ring_new(loop, 1, 3, 64, &br), -EINVAL, "3 buffers");
	cr_assert_eq(ura_buf_ring_new(loop, 1, 0, 64, &br), -EINVAL, "0 buffers");
	cr_assert_eq(ura_buf_ring_new(loop, 1, 1u << 16, 64, &br), -EINVAL, "65536 buffers");
	cr_assert_eq(ura_buf_ring_new(loop, 1, 1u << 31, 64, &br), -EINVAL, "2^31 buffers");
	cr_assert_eq(ura_buf_ring_new(loop, 1, 6, 64, &br), -EINVAL, "6 buffers");
	cr_assert_eq(ura_buf_ring_new(loop, 1, 8, 0, &br), -EINVAL, "buffers of 0 bytes");
	cr_assert_eq(ura_buf_ring_new(NULL, 1, 8, 64, &br), -EINVAL, "NULL loop");
	cr_assert_eq(ura_buf_ring_new(loop, 1, 8, 64, NULL), -EINVAL, "NULL out");
	cr_assert_null(br, "a failed ura_buf_ring_new wrote *out");
	/* The refused attempts left group 1 free. */
	cr_assert_eq(ura_buf_ring_new(loop, 1, 8, 64, &br), 0);
	ura_buf_ring_free(br);

	/* An invalidated session refuses work with -ESHUTDOWN, also without calling back. */
	struct th_delegate d = { 0 };
	ura_session *s = NULL;
	cr_assert_eq(ura_session_new(loop, &th_delegate_fns, &d, &s), 0);
	ura_session_invalidate_and_cancel(s);
	cr_assert_eq(ura_nop(s, rec_fn, &r, &t), -ESHUTDOWN);
	cr_assert_eq(ura_timeout(s, 1, rec_fn, &r, &t), -ESHUTDOWN);
	cr_assert_eq(ura_accept(s, lfd, NULL, NULL, 0, rec_fn, &r, &t), -ESHUTDOWN);
	cr_assert(th_run_until(loop, &d.final_seen, GUARD_MS), "no final event");
	cr_assert_eq(ura_nop(s, rec_fn, &r, &t), -ESHUTDOWN, "after the final event");
	ura_session_unref(s);

	th_spin(loop, 20);
	expect_no_work_left();
	cr_assert_eq(atomic_load(&r.calls), 0, "a refused submit called its callback %llu times",
		     (unsigned long long)atomic_load(&r.calls));
	close(cfd);
	close(lfd);
}
