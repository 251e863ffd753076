/*
 * Messages: immutable refcounted byte payloads (ura_msg_* in ura.h), and what the
 * connection layer needs to turn frames into messages and messages into frames.
 *
 * A message is one allocation: this header, then the payload, aligned for any type. It
 * is immutable once published, i.e. once a second thread or the user can see it; the
 * setters below are for the thread that created it, before that.
 *
 * The id and flags of a message are those of the frame it arrived in: they say whether a
 * received message expects a reply (and under which id the reply goes back) or is a
 * reply. A message being sent may go out on several connections under different ids, so
 * the sender frames it from its own send-queue entry (ura__frame_encode_header with
 * ura_msg_len), not from these fields.
 */
#ifndef URA_MSG_H
#define URA_MSG_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "frame.h"
#include "ura.h"

/* The largest payload a message can have: what a frame's 32-bit length can say. */
#define URA__MSG_MAX_LEN ((size_t)UINT32_MAX)

struct ura_msg {
	/* References, one per owner. Any thread; see msg.c for the orderings. */
	atomic_size_t refs;
	size_t len;
	uint64_t id;        /* the frame's id; 0 for a message made by ura_msg_new */
	uint8_t flags;      /* URA__FRAME_EXPECTS_REPLY / URA__FRAME_IS_REPLY */
	/* Called once when the last reference goes, on that thread, before the free (NULL:
	 * nothing). Set before the message is published; the connection layer uses it so
	 * that a request nobody answers releases its transaction. */
	void (*on_release)(ura_msg *m, void *arg);
	void *release_arg;
	alignas(max_align_t) unsigned char data[];
};

/*
 * A message of len bytes whose payload is not yet written: *data points at it, writable
 * until the message is published. Any thread. The caller owns the one reference.
 * -EINVAL for NULL out/data, -EMSGSIZE over URA__MSG_MAX_LEN, -ENOMEM.
 */
int ura__msg_alloc(size_t len, ura_msg **out, void **data);

/* The message whose payload data is (data from ura__msg_alloc or ura_msg_data). No new
 * reference is made. */
static inline ura_msg *ura__msg_of_data(const void *data)
{
	return (ura_msg *)(void *)((const unsigned char *)data - offsetof(struct ura_msg, data));
}

/*
 * A message from a decoded frame, with the frame's id and flags. If f->buffer is set, it
 * must be the payload of a message from ura__msg_alloc(f->len, ...) that was given to the
 * decoder: that message itself is returned, no copy, and the caller's reference to it
 * moves to *out. Otherwise the payload is copied into a new message, the caller's
 * reference in *out. Any thread. -EINVAL (NULL arguments, bad flags, or a buffer whose
 * message is not f->len bytes long: the caller keeps its reference), -ENOMEM.
 */
int ura__msg_from_frame(const struct ura__frame *f, ura_msg **out);

/* Sets the frame id and flags of a message not yet published. -EINVAL for unknown flag
 * bits or both EXPECTS_REPLY and IS_REPLY. */
int ura__msg_set_header(ura_msg *m, uint8_t flags, uint64_t id);

static inline uint64_t ura__msg_id(const ura_msg *m)
{
	return m->id;
}

static inline uint8_t ura__msg_flags(const ura_msg *m)
{
	return m->flags;
}

static inline bool ura__msg_is_reply(const ura_msg *m)
{
	return (m->flags & URA__FRAME_IS_REPLY) != 0;
}

/* Writes the header of a frame carrying m's payload, with the given flags and id (not
 * m's: see above), for a sendmsg of header then ura_msg_data(m). Errors as
 * ura__frame_encode_header. */
int ura__msg_encode_header(const ura_msg *m, uint8_t flags, uint64_t id, uint32_t max_payload,
			   uint8_t out[URA__FRAME_HEADER_SIZE]);

/* The current reference count, for tests and assertions: racy unless the caller knows
 * no other thread holds a reference. */
size_t ura__msg_refs(const ura_msg *m);

#endif
