/*
 * The echo suite's servers, one file each, run as child processes by the hidden
 * `ura-bench serve echo-<name> <fd>` (serve.c). Each serves the TCP socket listen_fd
 * (bound to 127.0.0.1 and listening) until it is killed: every byte a connection
 * receives is sent back on it, in order; a connection that ends is closed. Each writes
 * "ready" on stdout once it is set up (the suite waits for that line). They return only
 * on a setup or fatal error, with -errno.
 */
#ifndef URA_BENCH_ECHO_SERVER_H
#define URA_BENCH_ECHO_SERVER_H

/* Provided-buffer rings of the io_uring servers: the same for ura and raw liburing. */
#define ECHO_BGID 7
#define ECHO_NBUFS 1024u
#define ECHO_BUF_SIZE 2048u
/* Ring sizes of the io_uring servers (CQ: 8x, ura's default ratio). */
#define ECHO_SQ 1024u
#define ECHO_CQ 8192u

int echo_serve_ura(int listen_fd);   /* echo_ura.c */
int echo_serve_raw(int listen_fd);   /* echo_raw.c */
int echo_serve_epoll(int listen_fd); /* echo_epoll.c */
int echo_serve_uv(int listen_fd);    /* echo_uv.c, when libuv is found */

/* Writes the "ready" line (serve.c). */
void echo_ready(void);

#endif
