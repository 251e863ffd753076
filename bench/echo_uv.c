/*
 * Echo server on libuv, the usual way: uv_tcp handles, uv_read_start, and a uv_write of
 * each chunk read. The read buffer and its write request are one block from a free
 * list: alloc_cb hands out a block's data, read_cb writes that same data (no copy), and
 * write_cb returns the block. Built only when libuv is found.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "echo_server.h"

struct block {
	uv_write_t req;
	uv_buf_t buf;
	struct block *next_free;
	char data[ECHO_BUF_SIZE];
};

static struct block *free_blocks;

static struct block *block_of_data(char *data)
{
	return (struct block *)(data - offsetof(struct block, data));
}

static void put_block(struct block *b)
{
	b->next_free = free_blocks;
	free_blocks = b;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h, (void)suggested;
	struct block *b = free_blocks;
	if (b)
		free_blocks = b->next_free;
	else
		b = malloc(sizeof(*b));
	/* A NULL base makes libuv report UV_ENOBUFS to read_cb. */
	*buf = b ? uv_buf_init(b->data, sizeof(b->data)) : uv_buf_init(NULL, 0);
}

static void close_cb(uv_handle_t *h)
{
	free(h);
}

static void write_cb(uv_write_t *req, int status)
{
	struct block *b = (struct block *)req;
	uv_handle_t *h = (uv_handle_t *)req->handle;
	put_block(b);
	if (status < 0 && !uv_is_closing(h))
		uv_close(h, close_cb);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct block *b = buf->base ? block_of_data(buf->base) : NULL;
	if (nread > 0) {
		b->buf = uv_buf_init(b->data, (unsigned)nread);
		if (uv_write(&b->req, s, &b->buf, 1, write_cb) == 0)
			return;
		put_block(b);
		if (!uv_is_closing((uv_handle_t *)s))
			uv_close((uv_handle_t *)s, close_cb);
		return;
	}
	if (b)
		put_block(b);
	if (nread < 0 && !uv_is_closing((uv_handle_t *)s)) /* UV_EOF or an error */
		uv_close((uv_handle_t *)s, close_cb);
}

static void on_connection(uv_stream_t *server, int status)
{
	if (status < 0)
		return;
	uv_tcp_t *c = malloc(sizeof(*c));
	if (!c)
		return;
	uv_tcp_init(server->loop, c);
	if (uv_accept(server, (uv_stream_t *)c) < 0) {
		uv_close((uv_handle_t *)c, close_cb);
		return;
	}
	uv_tcp_nodelay(c, 1);
	if (uv_read_start((uv_stream_t *)c, alloc_cb, read_cb) < 0)
		uv_close((uv_handle_t *)c, close_cb);
}

int echo_serve_uv(int listen_fd)
{
	static uv_tcp_t server;
	uv_loop_t *loop = uv_default_loop();
	int r = uv_tcp_init(loop, &server);
	if (r == 0)
		r = uv_tcp_open(&server, listen_fd);
	if (r == 0)
		r = uv_listen((uv_stream_t *)&server, 4096, on_connection);
	if (r < 0) {
		fprintf(stderr, "echo-uv: %s\n", uv_strerror(r));
		return r; /* libuv's errors are negative errnos on Unix */
	}
	echo_ready();
	return uv_run(loop, UV_RUN_DEFAULT) < 0 ? -EIO : 0;
}
