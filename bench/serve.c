/* ura-bench serve <name> <arg>: dispatch to the child process named. See serve.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "echo_server.h"
#include "serve.h"

void echo_ready(void)
{
	printf("ready\n");
	fflush(stdout);
}

static int parse_num(const char *s, unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || !*s || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

static int echo_child(const char *arg, int (*serve)(int))
{
	unsigned long fd;
	if (parse_num(arg, &fd) < 0 || fd > 1u << 20)
		return -EINVAL;
	return serve((int)fd);
}

static int run(const char *name, const char *arg)
{
	static const struct {
		const char *name;
		int (*serve)(int listen_fd);
	} echo[] = {
		{ "echo-ura", echo_serve_ura },
		{ "echo-raw", echo_serve_raw },
		{ "echo-epoll", echo_serve_epoll },
#ifdef BENCH_HAVE_LIBUV
		{ "echo-uv", echo_serve_uv },
#endif
	};
	for (size_t i = 0; i < sizeof(echo) / sizeof(echo[0]); i++)
		if (strcmp(name, echo[i].name) == 0)
			return echo_child(arg, echo[i].serve);
	if (strcmp(name, "rpc") == 0)
		return rpc_serve(arg);
	if (strcmp(name, "overload-flood") == 0)
		return overload_flood_serve(arg);
	if (strncmp(name, "memory-", 7) == 0) {
		unsigned long n;
		if (parse_num(arg, &n) < 0)
			return -EINVAL;
		return memory_probe(name + 7, n);
	}
	return -ENOENT;
}

int bench_serve(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "ura-bench serve: want a name and one argument\n");
		return 2;
	}
	int r = run(argv[0], argv[1]);
	if (r < 0) {
		fprintf(stderr, "ura-bench serve %s: %s\n", argv[0], strerror(-r));
		return 1;
	}
	return 0;
}
