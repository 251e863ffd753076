/* Provided-buffer rings for multishot recv. */
#ifndef URA_BUFRING_H
#define URA_BUFRING_H

#include "ura.h"

uint16_t ura__buf_ring_group(const ura_buf_ring *br);

/* The loop's shared receive buffers (connections receive into them): group id, count and
 * size. The group id is reserved: a user's ura_buf_ring_new with it answers -EEXIST. */
#define URA__SHARED_BUF_GROUP 0x5552
#define URA__SHARED_BUFS 256
#define URA__SHARED_BUF_SIZE 16384

/* The loop's shared receive buffer ring, made on first use; NULL when it cannot be made
 * (no memory, or a kernel without buffer rings). Loop thread. */
ura_buf_ring *ura__loop_shared_bufs(ura_loop *loop);
/* The ring if it was made, else NULL (nothing is made). Loop thread. */
ura_buf_ring *ura__loop_shared_bufs_made(ura_loop *loop);
/* ura_loop_free, after the drain: frees the ring. */
void ura__loop_shared_bufs_free(ura_loop *loop);

#endif
