/*
 * The wire format (docs/PROTOCOL.md): a 20-byte header, then the payload.
 *
 *   offset  size  field
 *        0     4  magic "URA1"
 *        4     1  version (1)
 *        5     1  flags: EXPECTS_REPLY 1, IS_REPLY 2, other bits zero
 *        6     2  reserved, zero
 *        8     8  id, little-endian
 *       16     4  payload length, little-endian
 *
 * Pure functions over bytes: no I/O, no allocation, no global state, nothing from the
 * rest of the library, so the fuzz harness builds this file alone. The decoder is
 * incremental: feed it chunks split anywhere; it yields each frame with its payload
 * pointing into the chunk, and copies only a payload that straddles chunks, into a
 * buffer the caller gives it. A receive path looks like:
 *
 *	for (size_t off = 0, used;; off += used) {
 *		int r = ura__frame_decode(&d, buf + off, n - off, &used, &f);
 *		if (r == URA__FRAME_MORE)
 *			break;                        // wait for the next read
 *		if (r == URA__FRAME_NEED_BUFFER) {    // e.g. a new message's payload
 *			ura__msg_alloc(ura__frame_decoder_need(&d), &m, &p);
 *			ura__frame_decoder_give(&d, p);
 *			continue;
 *		}
 *		if (r < 0)
 *			fail(r, ura__frame_decoder_reason(&d));
 *		deliver(&f);                          // f.payload valid while buf is
 *	}
 */
#ifndef URA_FRAME_H
#define URA_FRAME_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define URA__FRAME_MAGIC "URA1"          /* the four bytes, in wire order */
#define URA__FRAME_VERSION 1
#define URA__FRAME_HEADER_SIZE 20
/* The payload limit a decoder gets unless told otherwise. */
#define URA__FRAME_MAX_PAYLOAD_DEFAULT (16u << 20)

/* Header flag bits. */
enum {
	/* The sender waits for one frame with IS_REPLY and this id. */
	URA__FRAME_EXPECTS_REPLY = 1u << 0,
	/* Answers the EXPECTS_REPLY frame with this id. */
	URA__FRAME_IS_REPLY = 1u << 1,
	URA__FRAME_FLAGS_KNOWN = URA__FRAME_EXPECTS_REPLY | URA__FRAME_IS_REPLY,
};

/*
 * Decoder results. The errors are negative errnos, one per malformation, so a caller can
 * tell them apart with a switch and still pass them on as an errno. They are sticky: once
 * a decoder has failed, every later call returns the same error.
 */
enum {
	URA__FRAME_MORE = 0,        /* the input is used up; no complete frame yet */
	URA__FRAME_READY = 1,       /* a complete frame in *f */
	URA__FRAME_NEED_BUFFER = 2, /* give a buffer for a payload that straddles chunks */

	URA__FRAME_EBADMAGIC = -EBADMSG,           /* the first four bytes are not "URA1" */
	URA__FRAME_EVERSION = -EPROTONOSUPPORT,    /* a version other than 1 */
	URA__FRAME_ERESERVED = -EPROTO,            /* reserved flag bits or field not zero, or
						    * EXPECTS_REPLY and IS_REPLY both set */
	URA__FRAME_ETOOBIG = -EMSGSIZE,            /* payload length over the decoder's limit */
	URA__FRAME_ETRUNCATED = -ENODATA,          /* end of stream inside a frame */
};

/* A decoded frame. */
struct ura__frame {
	uint8_t flags;       /* URA__FRAME_EXPECTS_REPLY, URA__FRAME_IS_REPLY or 0 */
	uint64_t id;
	uint32_t len;        /* payload bytes, at most the decoder's max_payload */
	/* Never NULL (also when len is 0). Points into the chunk just fed, valid as long as
	 * that chunk is, or equals buffer. */
	const void *payload;
	/* NULL, or the buffer given with ura__frame_decoder_give, now holding the whole
	 * payload and handed back: the caller owns it again. */
	void *buffer;
};

/*
 * Decoder state, embedded by the caller (no allocation). One per byte stream, used by
 * one thread at a time. Fields other than max_payload are private.
 */
struct ura__frame_decoder {
	/* Largest payload accepted; a larger length is URA__FRAME_ETOOBIG as soon as the
	 * header is complete. The caller may change it between frames; it applies to every
	 * header not yet complete. */
	uint32_t max_payload;

	uint8_t state;                     /* enum in frame.c */
	uint8_t hdr_have;                  /* header bytes gathered in hdr */
	uint8_t hdr[URA__FRAME_HEADER_SIZE];
	struct ura__frame cur;             /* the frame whose header is complete */
	unsigned char *buf;                /* the caller's, from give until handed out */
	uint32_t buf_have;                 /* payload bytes copied into buf */
	int error;                         /* the sticky error, or 0 */
	char reason[128];                  /* why it failed; "" while it has not */
};

/* Resets d for a new stream with a payload limit of max_payload (0: the default). Any
 * buffer given earlier is forgotten (use ura__frame_decoder_reset to get it back). */
void ura__frame_decoder_init(struct ura__frame_decoder *d, uint32_t max_payload);

/*
 * Decodes from in[0, len), consuming at most one frame. *used is set to the bytes
 * consumed; call again with the rest. Returns:
 *   URA__FRAME_READY: *f holds the next frame. Its payload points into in when the whole
 *     payload was there (no copy), else f->buffer is the caller's buffer, filled.
 *   URA__FRAME_MORE: all of in was consumed (*used == len) without completing a frame.
 *   URA__FRAME_NEED_BUFFER: the current payload (ura__frame_decoder_need bytes) does not
 *     fit in what is left of in; give a buffer with ura__frame_decoder_give and call
 *     again with the rest of in (which may be empty). Returned (consuming nothing) until
 *     a buffer is given.
 *   a URA__FRAME_E* error: the stream is malformed, see ura__frame_decoder_reason.
 *   -EINVAL: d, used or f is NULL, or in is NULL with len > 0.
 * Never reads in[len] or beyond; never writes past the given buffer's need bytes.
 */
int ura__frame_decode(struct ura__frame_decoder *d, const void *in, size_t len,
		      size_t *used, struct ura__frame *f);

/* The payload length a buffer must hold after URA__FRAME_NEED_BUFFER; 0 otherwise. */
uint32_t ura__frame_decoder_need(const struct ura__frame_decoder *d);

/* Gives the decoder buf (at least ura__frame_decoder_need bytes) for the payload it
 * asked for. The decoder writes it and hands it back in the frame's buffer field (or
 * ura__frame_decoder_reset does). -EINVAL if no buffer was asked for or buf is NULL. */
int ura__frame_decoder_give(struct ura__frame_decoder *d, void *buf);

/* End of stream: 0 if d stopped between frames, else URA__FRAME_ETRUNCATED (then sticky,
 * the reason saying how far the frame got), or the error d already had. */
int ura__frame_decoder_finish(struct ura__frame_decoder *d);

/* Resets d for a new stream, keeping max_payload. Returns the buffer it was holding
 * (given and not yet handed back in a frame) for the caller to free, or NULL. */
void *ura__frame_decoder_reset(struct ura__frame_decoder *d);

/* A human-readable reason for d's error, with the numbers involved (e.g. "frame payload
 * of 17 bytes is over the limit of 16 bytes"); "" while d has not failed. Valid until d
 * is reset. */
const char *ura__frame_decoder_reason(const struct ura__frame_decoder *d);

/* A short static name for a URA__FRAME_* result ("bad magic", "truncated frame", ...). */
const char *ura__frame_strerror(int code);

/*
 * Writes the header of a frame with the given flags, id and payload length into out.
 * -EINVAL for unknown flag bits or both EXPECTS_REPLY and IS_REPLY; -EMSGSIZE if len is
 * over max_payload (0: the default limit). out is untouched on error.
 */
int ura__frame_encode_header(uint8_t out[URA__FRAME_HEADER_SIZE], uint8_t flags, uint64_t id,
			     size_t len, uint32_t max_payload);

/*
 * Writes a whole frame (header then payload) into out[0, cap); *written gets its size.
 * payload may be NULL when len is 0. The errors of ura__frame_encode_header, -ENOBUFS if
 * cap is too small, -EINVAL for NULL out/written or NULL payload with len > 0.
 */
int ura__frame_encode(void *out, size_t cap, uint8_t flags, uint64_t id, const void *payload,
		      size_t len, uint32_t max_payload, size_t *written);

/* The size of a whole frame with a payload of len bytes. */
static inline size_t ura__frame_size(size_t len)
{
	return URA__FRAME_HEADER_SIZE + len;
}

#endif
