/* Child processes: spawn, line protocol, CPU time, cleanup. See proc.h. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proc.h"

/* Children running now, killed at exit. */
#define MAX_CHILDREN 16
static pid_t live[MAX_CHILDREN];
static bool atexit_set;

/* The affinity the process started with, for bench_pin(-1). */
static cpu_set_t initial_set;
static bool initial_saved;

static void save_initial(void)
{
	if (!initial_saved && sched_getaffinity(0, sizeof(initial_set), &initial_set) == 0)
		initial_saved = true;
}

void bench_pick_cpus(struct bench_cpus *c)
{
	save_initial();
	c->server = c->load = -1;
	if (!initial_saved)
		return;
	int found = 0;
	for (int i = 0; i < CPU_SETSIZE && found < 2; i++) {
		if (!CPU_ISSET(i, &initial_set))
			continue;
		if (found++ == 0)
			c->server = i;
		else
			c->load = i;
	}
	if (found < 2)
		c->server = c->load = -1;
}

int bench_pin(int cpu)
{
	save_initial();
	cpu_set_t set;
	if (cpu < 0) {
		if (!initial_saved)
			return 0;
		set = initial_set;
	} else {
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
	}
	return sched_setaffinity(0, sizeof(set), &set) < 0 ? -errno : 0;
}

unsigned long bench_raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 0;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			(void)getrlimit(RLIMIT_NOFILE, &rl);
	}
	return rl.rlim_cur == RLIM_INFINITY ? ULONG_MAX : (unsigned long)rl.rlim_cur;
}

static void kill_live(void)
{
	for (int i = 0; i < MAX_CHILDREN; i++) {
		if (live[i] > 0) {
			kill(live[i], SIGKILL);
			(void)waitpid(live[i], NULL, 0);
			live[i] = 0;
		}
	}
}

static int track(pid_t pid)
{
	if (!atexit_set) {
		if (atexit(kill_live) != 0)
			return -ENOMEM;
		atexit_set = true;
	}
	for (int i = 0; i < MAX_CHILDREN; i++) {
		if (live[i] == 0) {
			live[i] = pid;
			return 0;
		}
	}
	return -EMFILE;
}

static void untrack(pid_t pid)
{
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (live[i] == pid)
			live[i] = 0;
}

/* In the child, between fork and exec: only async-signal-safe calls. */
static void child_setup(pid_t parent, char *const argv[], int cpu, int keep_fd, int in_rd,
			int out_wr)
{
	/* Dies with the benchmark; the check closes the race with a parent that died
	 * before the prctl. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
		_exit(126);
	if (cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		(void)sched_setaffinity(0, sizeof(set), &set);
	}
	if ((in_rd >= 0 && dup2(in_rd, STDIN_FILENO) < 0) || dup2(out_wr, STDOUT_FILENO) < 0)
		_exit(126);
	if (keep_fd >= 0) {
		int fl = fcntl(keep_fd, F_GETFD);
		if (fl < 0 || fcntl(keep_fd, F_SETFD, fl & ~FD_CLOEXEC) < 0)
			_exit(126);
	}
	/* A server must survive a client that goes away mid-write. */
	signal(SIGPIPE, SIG_IGN);
	execv(argv[0], argv);
	static const char msg[] = "ura-bench: exec of a child failed\n";
	ssize_t n = write(STDERR_FILENO, msg, sizeof(msg) - 1);
	(void)n;
	_exit(127);
}

int bench_spawn(struct bench_child *ch, char *const argv[], int cpu, int keep_fd,
		bool want_stdin)
{
	int in[2] = { -1, -1 }, out[2];
	memset(ch, 0, sizeof(*ch));
	ch->in = ch->out = -1;
	if (pipe2(out, O_CLOEXEC) < 0)
		return -errno;
	if (want_stdin && pipe2(in, O_CLOEXEC) < 0) {
		int err = -errno;
		close(out[0]);
		close(out[1]);
		return err;
	}
	/* Children inherit stdio buffers: write ours out first. */
	fflush(stdout);
	fflush(stderr);
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid == 0)
		child_setup(parent, argv, cpu, keep_fd, in[0], out[1]);
	int err = pid < 0 ? -errno : 0;
	close(out[1]);
	if (in[0] >= 0)
		close(in[0]);
	if (err == 0)
		err = track(pid);
	if (err < 0) {
		if (pid > 0) {
			kill(pid, SIGKILL);
			(void)waitpid(pid, NULL, 0);
		}
		close(out[0]);
		if (in[1] >= 0)
			close(in[1]);
		return err;
	}
	ch->pid = pid;
	ch->out = out[0];
	ch->in = in[1];
	if (clock_getcpuclockid(pid, &ch->cpu_clock) != 0)
		ch->cpu_clock = (clockid_t)-1;
	return 0;
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int bench_child_line(struct bench_child *ch, char *line, size_t len, int timeout_ms)
{
	uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
	for (;;) {
		char *nl = memchr(ch->buf, '\n', ch->len);
		if (nl) {
			size_t n = (size_t)(nl - ch->buf);
			if (n + 1 > len)
				return -EMSGSIZE;
			memcpy(line, ch->buf, n);
			line[n] = '\0';
			ch->len -= n + 1;
			memmove(ch->buf, nl + 1, ch->len);
			return 0;
		}
		if (ch->len == sizeof(ch->buf))
			return -EMSGSIZE;
		uint64_t now = mono_ms();
		if (now >= deadline)
			return -ETIMEDOUT;
		struct pollfd p = { .fd = ch->out, .events = POLLIN };
		int r = poll(&p, 1, (int)(deadline - now));
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r <= 0)
			continue;
		ssize_t got = read(ch->out, ch->buf + ch->len, sizeof(ch->buf) - ch->len);
		if (got < 0 && errno != EINTR && errno != EAGAIN)
			return -errno;
		if (got == 0)
			return -EPIPE;
		if (got > 0)
			ch->len += (size_t)got;
	}
}

int bench_child_write(struct bench_child *ch, const char *s)
{
	size_t len = strlen(s);
	while (len) {
		ssize_t n = write(ch->in, s, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		s += n;
		len -= (size_t)n;
	}
	return 0;
}

uint64_t bench_child_cpu_ns(const struct bench_child *ch)
{
	struct timespec ts;
	if (ch->cpu_clock == (clockid_t)-1 || clock_gettime(ch->cpu_clock, &ts) != 0)
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

bool bench_child_alive(struct bench_child *ch)
{
	return ch->pid > 0 && waitpid(ch->pid, NULL, WNOHANG) == 0;
}

int bench_child_reap(struct bench_child *ch, int timeout_ms)
{
	if (!ch || ch->pid <= 0)
		return 0;
	if (ch->in >= 0)
		close(ch->in); /* EOF on its stdin: a client may take that as "stop" */
	ch->in = -1;
	int status = 0, res = -ETIMEDOUT;
	uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
	for (;;) {
		pid_t w = waitpid(ch->pid, &status, WNOHANG);
		if (w == ch->pid) {
			res = WIFEXITED(status) ? WEXITSTATUS(status) : -EINTR;
			break;
		}
		if (w < 0) { /* not our child any more: nothing to kill or reap */
			res = -ECHILD;
			break;
		}
		if (mono_ms() >= deadline) {
			kill(ch->pid, SIGKILL);
			(void)waitpid(ch->pid, NULL, 0);
			break;
		}
		struct timespec ts = { .tv_nsec = 1000000 };
		nanosleep(&ts, NULL);
	}
	untrack(ch->pid);
	ch->pid = 0;
	if (ch->out >= 0)
		close(ch->out);
	ch->out = -1;
	return res;
}

int bench_exe_path(char *buf, size_t len, const char *name)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n < 0)
		return -errno;
	self[n] = '\0';
	if (!name) {
		if ((size_t)n + 1 > len)
			return -ENAMETOOLONG;
		memcpy(buf, self, (size_t)n + 1);
		return 0;
	}
	char *slash = strrchr(self, '/');
	if (!slash)
		return -ENOENT;
	*slash = '\0';
	int w = snprintf(buf, len, "%s/%s", self, name);
	return w < 0 || (size_t)w >= len ? -ENAMETOOLONG : 0;
}
