/*
 * A connection's received buffers waiting to be echoed, for the two io_uring echo
 * servers (echo_ura.c, echo_raw.c): provided buffers, linked in arrival order by buffer
 * id. Both servers keep exactly this bookkeeping, so that they differ only in how they
 * drive the ring; how a buffer goes back to its ring is the caller's.
 */
#ifndef URA_BENCH_ECHO_QUEUE_H
#define URA_BENCH_ECHO_QUEUE_H

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "echo_server.h"

/* The links and lengths of the buffers held by connections, one per server. */
struct echo_bufs {
	int32_t next[ECHO_NBUFS]; /* the next buffer of the same connection; -1: none */
	uint32_t len[ECHO_NBUFS]; /* bytes received into the buffer */
};

struct echo_queue {
	int32_t head, tail; /* buffers waiting to be echoed, linked by bid; -1: none */
	uint32_t off;       /* bytes of the head buffer already sent */
};

/* A fresh accepted socket: small echoes go out at once (no Nagle delay). */
static inline void echo_set_nodelay(int fd)
{
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static inline void echo_queue_init(struct echo_queue *q)
{
	q->head = q->tail = -1;
	q->off = 0;
}

static inline bool echo_queue_empty(const struct echo_queue *q)
{
	return q->head < 0;
}

/* Appends buffer bid, holding len received bytes. */
static inline void echo_queue_push(struct echo_queue *q, struct echo_bufs *b, int32_t bid,
				   uint32_t len)
{
	b->len[bid] = len;
	b->next[bid] = -1;
	if (q->tail >= 0)
		b->next[q->tail] = bid;
	else
		q->head = bid;
	q->tail = bid;
}

/* Takes the head buffer off the queue; returns its bid, or -1 when the queue is empty. */
static inline int32_t echo_queue_pop(struct echo_queue *q, struct echo_bufs *b)
{
	int32_t bid = q->head;
	if (bid < 0)
		return -1;
	q->head = b->next[bid];
	if (q->head < 0)
		q->tail = -1;
	q->off = 0;
	return bid;
}

/* The bytes of the head buffer still to send (the queue is not empty). */
static inline uint32_t echo_queue_unsent(const struct echo_queue *q, const struct echo_bufs *b)
{
	return b->len[q->head] - q->off;
}

/* Accounts n bytes of the head buffer as sent. Returns the head's bid once all of it is
 * sent (it is then off the queue, for the caller to recycle), else -1. */
static inline int32_t echo_queue_sent(struct echo_queue *q, struct echo_bufs *b, uint32_t n)
{
	q->off += n;
	return q->off == b->len[q->head] ? echo_queue_pop(q, b) : -1;
}

#endif
