/*
 * The child processes of the echo, rpc, memory and overload suites: ura-bench runs
 * itself as
 *   ura-bench serve <name> <arg>
 * (a hidden subcommand), so that a server's CPU time and a probe's memory are its own.
 */
#ifndef URA_BENCH_SERVE_H
#define URA_BENCH_SERVE_H

/* argv[0] is the child's name; returns the process exit status. */
int bench_serve(int argc, char **argv);

/* rpc_server.c: ura connections answering every request with its own payload, on
 * address (unix:@name) and on tcp:127.0.0.1:0; writes "ready <tcp address>". */
int rpc_serve(const char *address);

/* memory_probe.c: puts n timers in flight the named way ("ura", "ura-backlog", "raw",
 * "uv") and writes what that cost ("rss_delta=... slab_delta=... n=..."). */
int memory_probe(const char *how, unsigned long n);
/* The kernel's slab memory in bytes, machine-wide (/proc/meminfo); -1 if unknown. */
long long memory_slab_bytes(void);

/* overload.c: a submit flood, arg "threads:window_ms:warm_ms"; writes its figures
 * ("window_done=... hwm_kb=...") on one line. */
int overload_flood_serve(const char *arg);

#endif
