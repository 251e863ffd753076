/*
 * Wire frames: encode and incremental decode (see frame.h and docs/PROTOCOL.md).
 *
 * The decoder is a small state machine over one stream:
 *
 *   HEADER    gathering the 20 header bytes. A header wholly inside the chunk is parsed
 *             in place; one split across chunks is gathered into d->hdr. Each field is
 *             checked as soon as its last byte is in, so garbage fails early (four bytes
 *             of "GET " are enough) and the verdict never depends on where chunks split.
 *   BODY      header complete, no payload byte consumed. If the chunk holds the whole
 *             payload the frame is yielded pointing into it (the no-copy path);
 *             otherwise the caller is asked for a buffer.
 *   WANT_BUF  waiting for ura__frame_decoder_give.
 *   FILL      copying a straddling payload into the caller's buffer.
 *   FAILED    a malformed stream; the error and its reason stay.
 *
 * Everything here is pure: no allocation, no I/O, nothing outside libc's memcpy and
 * snprintf, so the fuzz harness links this file alone.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "frame.h"

enum { ST_HEADER, ST_BODY, ST_WANT_BUF, ST_FILL, ST_FAILED };

/* Where each header field ends (one past its last byte). */
enum {
	END_MAGIC = 4,
	END_VERSION = 5,
	END_FLAGS = 6,
	END_RESERVED = 8,
	END_ID = 16,
	END_LEN = 20,
};
_Static_assert(END_LEN == URA__FRAME_HEADER_SIZE, "header layout and size disagree");
_Static_assert(sizeof(URA__FRAME_MAGIC) - 1 == END_MAGIC, "the magic is four bytes");

/* An empty payload still gets a non-NULL pointer. */
static const unsigned char empty_payload[1];

static void put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (unsigned)p[1] << 8);
}

static uint32_t get_le32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint64_t get_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static int flags_error(uint8_t flags)
{
	if (flags & ~URA__FRAME_FLAGS_KNOWN)
		return -EINVAL;
	if ((flags & URA__FRAME_FLAGS_KNOWN) == URA__FRAME_FLAGS_KNOWN)
		return -EINVAL;
	return 0;
}

static size_t min_size(size_t a, size_t b)
{
	return a < b ? a : b;
}

/* Records a malformation; every later call returns it. */
__attribute__((format(printf, 3, 4)))
static int fail(struct ura__frame_decoder *d, int error, const char *fmt, ...);

static int fail(struct ura__frame_decoder *d, int error, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(d->reason, sizeof(d->reason), fmt, ap);
	va_end(ap);
	d->state = ST_FAILED;
	d->error = error;
	return error;
}

static int fail_magic(struct ura__frame_decoder *d, const uint8_t *h)
{
	char text[END_MAGIC + 1];
	for (int i = 0; i < END_MAGIC; i++)
		text[i] = (h[i] >= 0x20 && h[i] < 0x7f && h[i] != '"' && h[i] != '\\') ?
			(char)h[i] : '.';
	text[END_MAGIC] = '\0';
	return fail(d, URA__FRAME_EBADMAGIC,
		    "bad magic %02x %02x %02x %02x (\"%s\"), expected \"" URA__FRAME_MAGIC "\"",
		    h[0], h[1], h[2], h[3], text);
}

/*
 * Checks the header fields of h whose last byte lies in [from, to): the bytes before
 * from were checked by an earlier call, those from to on have not arrived. On success
 * with to == END_LEN, fills d->cur from the header.
 */
static int check_header(struct ura__frame_decoder *d, const uint8_t *h, size_t from, size_t to)
{
#define COMPLETES(end) (from < (end) && (end) <= to)
	if (COMPLETES(END_MAGIC) && memcmp(h, URA__FRAME_MAGIC, END_MAGIC) != 0)
		return fail_magic(d, h);
	if (COMPLETES(END_VERSION) && h[4] != URA__FRAME_VERSION)
		return fail(d, URA__FRAME_EVERSION, "unsupported version %u, expected %u",
			    h[4], URA__FRAME_VERSION);
	if (COMPLETES(END_FLAGS)) {
		uint8_t flags = h[5];
		if (flags & ~URA__FRAME_FLAGS_KNOWN)
			return fail(d, URA__FRAME_ERESERVED,
				    "reserved flag bits 0x%02x set (flags 0x%02x)",
				    (unsigned)(flags & ~URA__FRAME_FLAGS_KNOWN), flags);
		if (flags == URA__FRAME_FLAGS_KNOWN)
			return fail(d, URA__FRAME_ERESERVED,
				    "flags 0x%02x: EXPECTS_REPLY and IS_REPLY both set", flags);
	}
	if (COMPLETES(END_RESERVED) && get_le16(h + 6) != 0)
		return fail(d, URA__FRAME_ERESERVED,
			    "reserved header field is 0x%04x, must be zero", get_le16(h + 6));
	if (COMPLETES(END_LEN)) {
		uint32_t len = get_le32(h + 16);
		if (len > d->max_payload)
			return fail(d, URA__FRAME_ETOOBIG,
				    "frame payload of %u bytes is over the limit of %u bytes",
				    len, d->max_payload);
		d->cur.flags = h[5];
		d->cur.id = get_le64(h + 8);
		d->cur.len = len;
		d->cur.payload = empty_payload;
		d->cur.buffer = NULL;
	}
#undef COMPLETES
	return 0;
}

void ura__frame_decoder_init(struct ura__frame_decoder *d, uint32_t max_payload)
{
	memset(d, 0, sizeof(*d));
	d->max_payload = max_payload ? max_payload : URA__FRAME_MAX_PAYLOAD_DEFAULT;
	d->state = ST_HEADER;
}

/* Hands the current frame out and starts on the next header. */
static int ready(struct ura__frame_decoder *d, struct ura__frame *f)
{
	*f = d->cur;
	d->state = ST_HEADER;
	d->hdr_have = 0;
	d->buf = NULL;
	d->buf_have = 0;
	return URA__FRAME_READY;
}

int ura__frame_decode(struct ura__frame_decoder *d, const void *in, size_t len,
		      size_t *used, struct ura__frame *f)
{
	if (!d || !used || !f || (!in && len > 0))
		return -EINVAL;
	const uint8_t *p = in;
	size_t off = 0;
	int r;

	*used = 0;
	for (;;) {
		size_t avail = len - off;
		switch (d->state) {
		case ST_HEADER:
			if (d->hdr_have == 0 && avail >= URA__FRAME_HEADER_SIZE) {
				/* The common case: parse in place. */
				r = check_header(d, p + off, 0, END_LEN);
				if (r < 0)
					goto out;
				off += URA__FRAME_HEADER_SIZE;
			} else {
				size_t n = min_size(URA__FRAME_HEADER_SIZE - d->hdr_have, avail);
				if (n == 0) {
					r = URA__FRAME_MORE;
					goto out;
				}
				memcpy(d->hdr + d->hdr_have, p + off, n);
				off += n;
				size_t from = d->hdr_have;
				d->hdr_have = (uint8_t)(from + n);
				r = check_header(d, d->hdr, from, d->hdr_have);
				if (r < 0)
					goto out;
				if (d->hdr_have < URA__FRAME_HEADER_SIZE) {
					r = URA__FRAME_MORE;
					goto out;
				}
			}
			d->state = ST_BODY;
			if (d->cur.len == 0) {
				r = ready(d, f);
				goto out;
			}
			break;
		case ST_BODY:
			if (avail >= d->cur.len) {
				/* The whole payload is in this chunk: no copy. */
				d->cur.payload = p + off;
				off += d->cur.len;
				r = ready(d, f);
				goto out;
			}
			if (avail == 0) {
				/* The payload may yet arrive whole in the next chunk. */
				r = URA__FRAME_MORE;
				goto out;
			}
			d->state = ST_WANT_BUF;
			r = URA__FRAME_NEED_BUFFER;
			goto out;
		case ST_WANT_BUF:
			r = URA__FRAME_NEED_BUFFER;
			goto out;
		case ST_FILL: {
			if (avail == 0) {
				r = URA__FRAME_MORE;
				goto out;
			}
			size_t n = min_size(d->cur.len - d->buf_have, avail);
			memcpy(d->buf + d->buf_have, p + off, n);
			off += n;
			d->buf_have += (uint32_t)n;
			if (d->buf_have < d->cur.len) {
				r = URA__FRAME_MORE;
				goto out;
			}
			d->cur.payload = d->buf;
			d->cur.buffer = d->buf;
			r = ready(d, f);
			goto out;
		}
		case ST_FAILED:
		default:
			r = d->error;
			goto out;
		}
	}
out:
	*used = off;
	return r;
}

uint32_t ura__frame_decoder_need(const struct ura__frame_decoder *d)
{
	return d->state == ST_WANT_BUF ? d->cur.len : 0;
}

int ura__frame_decoder_give(struct ura__frame_decoder *d, void *buf)
{
	if (!buf || d->state != ST_WANT_BUF)
		return -EINVAL;
	d->buf = buf;
	d->buf_have = 0;
	d->state = ST_FILL;
	return 0;
}

int ura__frame_decoder_finish(struct ura__frame_decoder *d)
{
	switch (d->state) {
	case ST_HEADER:
		if (d->hdr_have == 0)
			return 0;
		return fail(d, URA__FRAME_ETRUNCATED,
			    "truncated frame at end of stream: %u of %u header bytes",
			    d->hdr_have, URA__FRAME_HEADER_SIZE);
	case ST_BODY:
	case ST_WANT_BUF:
	case ST_FILL:
		return fail(d, URA__FRAME_ETRUNCATED,
			    "truncated frame at end of stream: %u of %u payload bytes (id %llu)",
			    d->state == ST_FILL ? d->buf_have : 0, d->cur.len,
			    (unsigned long long)d->cur.id);
	default:
		return d->error;
	}
}

void *ura__frame_decoder_reset(struct ura__frame_decoder *d)
{
	/* Set by give, cleared when the frame is handed out: held in between, also when
	 * finish failed the stream inside that frame. */
	void *buf = d->buf;
	ura__frame_decoder_init(d, d->max_payload);
	return buf;
}

const char *ura__frame_decoder_reason(const struct ura__frame_decoder *d)
{
	return d->reason;
}

const char *ura__frame_strerror(int code)
{
	switch (code) {
	case URA__FRAME_MORE:
		return "need more input";
	case URA__FRAME_READY:
		return "frame ready";
	case URA__FRAME_NEED_BUFFER:
		return "need a payload buffer";
	case URA__FRAME_EBADMAGIC:
		return "bad magic";
	case URA__FRAME_EVERSION:
		return "unsupported version";
	case URA__FRAME_ERESERVED:
		return "reserved bits set";
	case URA__FRAME_ETOOBIG:
		return "frame over the size limit";
	case URA__FRAME_ETRUNCATED:
		return "truncated frame at end of stream";
	case -EINVAL:
		return "invalid argument";
	default:
		return "unknown frame error";
	}
}

int ura__frame_encode_header(uint8_t out[URA__FRAME_HEADER_SIZE], uint8_t flags, uint64_t id,
			     size_t len, uint32_t max_payload)
{
	if (!out || flags_error(flags))
		return -EINVAL;
	if (len > (max_payload ? max_payload : URA__FRAME_MAX_PAYLOAD_DEFAULT))
		return -EMSGSIZE;
	memcpy(out, URA__FRAME_MAGIC, END_MAGIC);
	out[4] = URA__FRAME_VERSION;
	out[5] = flags;
	put_le16(out + 6, 0);
	put_le64(out + 8, id);
	put_le32(out + 16, (uint32_t)len);
	return 0;
}

int ura__frame_encode(void *out, size_t cap, uint8_t flags, uint64_t id, const void *payload,
		      size_t len, uint32_t max_payload, size_t *written)
{
	if (!out || !written || (!payload && len > 0))
		return -EINVAL;
	uint8_t hdr[URA__FRAME_HEADER_SIZE];
	int r = ura__frame_encode_header(hdr, flags, id, len, max_payload);
	if (r < 0)
		return r;
	if (cap < URA__FRAME_HEADER_SIZE || cap - URA__FRAME_HEADER_SIZE < len)
		return -ENOBUFS;
	memcpy(out, hdr, sizeof(hdr));
	if (len > 0)
		memcpy((uint8_t *)out + sizeof(hdr), payload, len);
	*written = ura__frame_size(len);
	return 0;
}
