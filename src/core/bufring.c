/*
 * Provided-buffer rings: the kernel picks a buffer per completion (IORING_CQE_F_BUFFER,
 * buffer id in the CQE flags), and the application gives it back with recycle.
 * The ring and the buffers are one anonymous mapping (the ring must be page aligned).
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "alloc.h"

#include "bufring.h"
#include "loop.h"

struct ura_buf_ring {
	ura_loop *loop;
	struct io_uring_buf_ring *ring; /* loop thread only: the kernel reads, we add */
	unsigned char *bufs;
	size_t map_len;
	unsigned nbufs, buf_size, mask;
	uint16_t bgid;
};

int ura_buf_ring_new(ura_loop *loop, uint16_t bgid, unsigned nbufs, unsigned buf_size,
		     ura_buf_ring **out)
{
	if (!loop || !out || nbufs == 0 || nbufs > 32768 || (nbufs & (nbufs - 1)) ||
	    buf_size == 0 || buf_size > (1u << 24))
		return -EINVAL;
	URA__ASSERT_LOOP_THREAD(loop);
	ura_buf_ring *br = ura__zalloc(sizeof(*br));
	if (!br)
		return -ENOMEM;
	size_t ring_len = (size_t)nbufs * sizeof(struct io_uring_buf);
	ring_len = (ring_len + 4095) & ~(size_t)4095;
	br->map_len = ring_len + (size_t)nbufs * buf_size;
	void *map = mmap(NULL, br->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	if (map == MAP_FAILED) {
		ura__free(br);
		return -ENOMEM;
	}
	br->loop = loop;
	br->ring = map;
	br->bufs = (unsigned char *)map + ring_len;
	br->nbufs = nbufs;
	br->buf_size = buf_size;
	br->mask = nbufs - 1;
	br->bgid = bgid;
	struct io_uring_buf_reg reg;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)map;
	reg.ring_entries = nbufs;
	reg.bgid = bgid;
	int r = io_uring_register_buf_ring(&loop->ring, &reg, 0);
	if (r < 0) {
		munmap(map, br->map_len);
		ura__free(br);
		return r;
	}
	io_uring_buf_ring_init(br->ring);
	for (unsigned i = 0; i < nbufs; i++)
		io_uring_buf_ring_add(br->ring, br->bufs + (size_t)i * buf_size, buf_size,
				      (unsigned short)i, (int)br->mask, (int)i);
	/* Publishes the tail with a release store: the kernel sees the entries first. */
	io_uring_buf_ring_advance(br->ring, (int)nbufs);
	*out = br;
	return 0;
}

void ura_buf_ring_free(ura_buf_ring *br)
{
	if (!br)
		return;
	URA__ASSERT_LOOP_THREAD(br->loop);
	(void)io_uring_unregister_buf_ring(&br->loop->ring, br->bgid);
	munmap(br->ring, br->map_len);
	ura__free(br);
}

void *ura_buf_ring_buffer(ura_buf_ring *br, uint32_t cqe_flags)
{
	if (!br || !(cqe_flags & IORING_CQE_F_BUFFER))
		return NULL;
	unsigned bid = cqe_flags >> IORING_CQE_BUFFER_SHIFT;
	return bid < br->nbufs ? br->bufs + (size_t)bid * br->buf_size : NULL;
}

void ura_buf_ring_recycle(ura_buf_ring *br, uint32_t cqe_flags)
{
	if (br)
		URA__ASSERT_LOOP_THREAD(br->loop);
	unsigned char *buf = ura_buf_ring_buffer(br, cqe_flags);
	if (!buf)
		return;
	unsigned bid = cqe_flags >> IORING_CQE_BUFFER_SHIFT;
	io_uring_buf_ring_add(br->ring, buf, br->buf_size, (unsigned short)bid, (int)br->mask, 0);
	io_uring_buf_ring_advance(br->ring, 1);
}

unsigned ura_buf_ring_buf_size(const ura_buf_ring *br)
{
	return br ? br->buf_size : 0;
}

uint16_t ura__buf_ring_group(const ura_buf_ring *br)
{
	return br->bgid;
}

ura_buf_ring *ura__loop_shared_bufs(ura_loop *loop)
{
	if (!loop->shared_bufs &&
	    ura_buf_ring_new(loop, URA__SHARED_BUF_GROUP, URA__SHARED_BUFS, URA__SHARED_BUF_SIZE,
			     &loop->shared_bufs) < 0)
		return NULL;
	return loop->shared_bufs;
}

ura_buf_ring *ura__loop_shared_bufs_made(ura_loop *loop)
{
	return loop->shared_bufs;
}

void ura__loop_shared_bufs_free(ura_loop *loop)
{
	ura_buf_ring_free(loop->shared_bufs);
	loop->shared_bufs = NULL;
}
