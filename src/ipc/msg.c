/*
 * Messages: one block (mimalloc, through alloc.h) holding the reference count, the frame
 * id and flags, and the payload. Created on any thread and freed on whichever thread
 * drops the last reference (the allocator takes blocks back from any thread).
 *
 * Reference counting, the usual argument:
 *   - ura_msg_ref is a relaxed increment. Whoever calls it already holds a reference, so
 *     the message cannot be freed under it, and handing the new reference to another
 *     thread (a queue, a post) carries its own happens-before edge.
 *   - ura_msg_unref is a release decrement: this owner's reads of the payload (and the
 *     creator's writes of it) are ordered before the count drops, so they cannot move
 *     past the free another thread may do.
 *   - The owner whose decrement takes the count to zero does an acquire load before
 *     freeing. The decrements form one release sequence on refs, so that load
 *     synchronizes with every earlier release decrement: all other owners' accesses
 *     happen before the free. (An acquire load rather than atomic_thread_fence: same
 *     ordering, and ThreadSanitizer understands it.)
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "alloc.h"

#include "msg.h"

_Static_assert(URA__MSG_MAX_LEN <= SIZE_MAX - sizeof(struct ura_msg),
	       "a message of the largest length must not overflow the allocation size");

int ura__msg_alloc(size_t len, ura_msg **out, void **data)
{
	if (!out || !data)
		return -EINVAL;
	if (len > URA__MSG_MAX_LEN)
		return -EMSGSIZE;
	ura_msg *m = ura__malloc_aligned(sizeof(*m) + len, alignof(struct ura_msg));
	if (!m)
		return -ENOMEM;
	/* Not yet shared: a plain initialisation is enough, the publication that hands m to
	 * another thread orders it. */
	atomic_init(&m->refs, 1);
	m->len = len;
	m->id = 0;
	m->flags = 0;
	m->on_release = NULL;
	m->release_arg = NULL;
	*out = m;
	*data = m->data;
	return 0;
}

int ura_msg_new(const void *data, size_t len, ura_msg **out)
{
	if (!out || (!data && len > 0))
		return -EINVAL;
	ura_msg *m;
	void *p;
	int r = ura__msg_alloc(len, &m, &p);
	if (r < 0)
		return r;
	if (len > 0)
		memcpy(p, data, len);
	*out = m;
	return 0;
}

ura_msg *ura_msg_ref(ura_msg *m)
{
	if (m) {
		/* Relaxed: the caller's own reference keeps m alive; see the top of the file. */
		size_t old = atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
		(void)old;
#ifndef NDEBUG
		if (old == 0)
			__builtin_trap(); /* a reference taken on a freed message */
#endif
	}
	return m;
}

void ura_msg_unref(ura_msg *m)
{
	if (!m)
		return;
	/* Release: this owner's accesses to m happen before the count drops. */
	size_t old = atomic_fetch_sub_explicit(&m->refs, 1, memory_order_release);
#ifndef NDEBUG
	if (old == 0)
		__builtin_trap(); /* more unrefs than references */
#endif
	if (old != 1)
		return;
	/* Acquire: pairs with the release decrements of every other owner (one release
	 * sequence), so their accesses happen before the free. */
	(void)atomic_load_explicit(&m->refs, memory_order_acquire);
	if (m->on_release)
		m->on_release(m, m->release_arg);
	ura__free(m);
}

const void *ura_msg_data(const ura_msg *m)
{
	return m ? m->data : NULL;
}

size_t ura_msg_len(const ura_msg *m)
{
	return m ? m->len : 0;
}

bool ura_msg_expects_reply(const ura_msg *m)
{
	return m && (m->flags & URA__FRAME_EXPECTS_REPLY);
}

static bool flags_ok(uint8_t flags)
{
	return !(flags & ~URA__FRAME_FLAGS_KNOWN) && flags != URA__FRAME_FLAGS_KNOWN;
}

int ura__msg_from_frame(const struct ura__frame *f, ura_msg **out)
{
	if (!f || !out || !flags_ok(f->flags))
		return -EINVAL;
	ura_msg *m;
	if (f->buffer) {
		/* The decoder filled a message's payload: adopt that message. */
		m = ura__msg_of_data(f->buffer);
		if (m->len != f->len)
			return -EINVAL;
	} else {
		int r = ura_msg_new(f->payload, f->len, &m);
		if (r < 0)
			return r;
	}
	m->flags = f->flags;
	m->id = f->id;
	*out = m;
	return 0;
}

int ura__msg_set_header(ura_msg *m, uint8_t flags, uint64_t id)
{
	if (!m || !flags_ok(flags))
		return -EINVAL;
	m->flags = flags;
	m->id = id;
	return 0;
}

int ura__msg_encode_header(const ura_msg *m, uint8_t flags, uint64_t id, uint32_t max_payload,
			   uint8_t out[URA__FRAME_HEADER_SIZE])
{
	if (!m)
		return -EINVAL;
	return ura__frame_encode_header(out, flags, id, m->len, max_payload);
}

size_t ura__msg_refs(const ura_msg *m)
{
	/* Relaxed: a diagnostic snapshot that orders nothing. */
	return atomic_load_explicit(&m->refs, memory_order_relaxed);
}
