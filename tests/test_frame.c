/*
 * Wire frames (src/ipc/frame.c): encoding, incremental decoding over any chunking, every
 * malformation with its reason, the size limit, truncation at end of stream.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"

#define HDR URA__FRAME_HEADER_SIZE
#define MAX_FRAMES 1100

/* What one decode run saw. */
struct got {
	uint8_t flags;
	uint64_t id;
	uint32_t len;
	unsigned char *payload; /* a copy */
	size_t payload_off;     /* where the payload started in the stream, if not copied */
	bool copied;            /* came through a caller buffer */
};

struct run {
	struct got frames[MAX_FRAMES];
	size_t n;
	int result;             /* the error, or what finish said */
	char reason[128];
	unsigned need_buffers;
};

/* A frame description for building streams. */
struct spec {
	uint8_t flags;
	uint64_t id;
	uint32_t len;
};

static unsigned char pattern(size_t frame, size_t i)
{
	return (unsigned char)(frame * 31 + i * 7 + 1);
}

/* Encodes the frames of specs back to back; returns the stream (malloc'd), its size in
 * *len, and each frame's offset in starts (if not NULL). */
static unsigned char *build(const struct spec *specs, size_t n, size_t *len, size_t *starts)
{
	size_t total = 0;
	for (size_t k = 0; k < n; k++)
		total += ura__frame_size(specs[k].len);
	unsigned char *s = malloc(total ? total : 1);
	unsigned char *payload = malloc(1u << 16);
	cr_assert(s && payload, "out of memory");
	size_t off = 0;
	for (size_t k = 0; k < n; k++) {
		cr_assert(specs[k].len <= (1u << 16), "test payloads are at most 64 KiB");
		for (size_t i = 0; i < specs[k].len; i++)
			payload[i] = pattern(k, i);
		size_t w = 0;
		int r = ura__frame_encode(s + off, total - off, specs[k].flags, specs[k].id,
					  payload, specs[k].len, 1u << 16, &w);
		cr_assert_eq(r, 0, "encode frame %zu: %d", k, r);
		if (starts)
			starts[k] = off;
		off += w;
	}
	free(payload);
	*len = total;
	return s;
}

static void run_free(struct run *run)
{
	for (size_t k = 0; k < run->n; k++)
		free(run->frames[k].payload);
	free(run);
}

/*
 * Decodes stream[0, len) fed as the chunks between the sorted cut points, each chunk in
 * a malloc'd block of its exact size (so AddressSanitizer sees a read past a chunk), then
 * calls finish.
 */
static struct run *decode_cuts(const unsigned char *stream, size_t len, const size_t *cuts,
			       size_t ncuts, uint32_t max)
{
	struct run *run = calloc(1, sizeof(*run));
	cr_assert(run, "out of memory");
	struct ura__frame_decoder d;
	ura__frame_decoder_init(&d, max);
	size_t start = 0;
	for (size_t c = 0; c <= ncuts; c++) {
		size_t end = c < ncuts ? cuts[c] : len;
		size_t n = end - start;
		unsigned char *chunk = malloc(n ? n : 1);
		cr_assert(chunk, "out of memory");
		memcpy(chunk, stream + start, n);
		size_t off = 0;
		for (;;) {
			struct ura__frame f;
			size_t used = 99999;
			int r = ura__frame_decode(&d, chunk + off, n - off, &used, &f);
			if (used > n - off)
				cr_assert_fail("decode used %zu of %zu bytes", used, n - off);
			off += used;
			if (r == URA__FRAME_MORE) {
				if (off != n)
					cr_assert_fail("MORE with %zu of %zu bytes used", off, n);
				break;
			}
			if (r == URA__FRAME_NEED_BUFFER) {
				uint32_t need = ura__frame_decoder_need(&d);
				void *b = malloc(need);
				cr_assert(b, "out of memory");
				cr_assert_eq(ura__frame_decoder_give(&d, b), 0, "give");
				run->need_buffers++;
				continue;
			}
			if (r < 0) {
				run->result = r;
				snprintf(run->reason, sizeof(run->reason), "%s",
					 ura__frame_decoder_reason(&d));
				free(chunk);
				free(ura__frame_decoder_reset(&d));
				return run;
			}
			cr_assert_eq(r, URA__FRAME_READY, "unexpected result %d", r);
			cr_assert(run->n < MAX_FRAMES, "too many frames");
			struct got *g = &run->frames[run->n++];
			g->flags = f.flags;
			g->id = f.id;
			g->len = f.len;
			g->copied = f.buffer != NULL;
			if (f.payload == NULL)
				cr_assert_fail("frame %zu: NULL payload", run->n - 1);
			if (f.buffer && f.payload != f.buffer)
				cr_assert_fail("frame %zu: payload is not the given buffer",
					       run->n - 1);
			if (!f.buffer && f.len > 0)
				g->payload_off =
					start + (size_t)((const unsigned char *)f.payload - chunk);
			g->payload = malloc(f.len ? f.len : 1);
			memcpy(g->payload, f.payload, f.len);
			free(f.buffer);
		}
		free(chunk);
		start = end;
	}
	run->result = ura__frame_decoder_finish(&d);
	snprintf(run->reason, sizeof(run->reason), "%s", ura__frame_decoder_reason(&d));
	free(ura__frame_decoder_reset(&d));
	return run;
}

static struct run *decode_whole(const void *stream, size_t len, uint32_t max)
{
	return decode_cuts(stream, len, NULL, 0, max);
}

/* Checks run decoded exactly specs, and copied only payloads that straddled a cut. */
static void expect_frames(const struct run *run, const struct spec *specs, size_t n,
			  const size_t *starts, const size_t *cuts, size_t ncuts, const char *ctx)
{
	if (run->result != 0)
		cr_assert_fail("%s: result %d (%s)", ctx, run->result, run->reason);
	if (run->n != n)
		cr_assert_fail("%s: %zu frames, expected %zu", ctx, run->n, n);
	for (size_t k = 0; k < n; k++) {
		const struct got *g = &run->frames[k];
		if (g->flags != specs[k].flags || g->id != specs[k].id || g->len != specs[k].len)
			cr_assert_fail("%s: frame %zu is (flags %u, id %llu, len %u), expected "
				       "(%u, %llu, %u)", ctx, k, g->flags,
				       (unsigned long long)g->id, g->len, specs[k].flags,
				       (unsigned long long)specs[k].id, specs[k].len);
		for (size_t i = 0; i < g->len; i++)
			if (g->payload[i] != pattern(k, i))
				cr_assert_fail("%s: frame %zu byte %zu is %u, expected %u", ctx, k,
					       i, g->payload[i], pattern(k, i));
		if (!starts)
			continue;
		size_t ps = starts[k] + HDR, pe = ps + specs[k].len;
		bool straddles = false;
		for (size_t c = 0; c < ncuts; c++)
			straddles |= cuts[c] > ps && cuts[c] < pe;
		if (g->copied != straddles)
			cr_assert_fail("%s: frame %zu (payload [%zu, %zu)) copied %d, straddles %d",
				       ctx, k, ps, pe, g->copied, straddles);
		if (!g->copied && g->len > 0 && g->payload_off != ps)
			cr_assert_fail("%s: frame %zu payload at %zu, expected %zu", ctx, k,
				       g->payload_off, ps);
	}
}

/* A header with arbitrary field values, for malformed input. */
static void raw_header(unsigned char h[HDR], const char magic[4], uint8_t version,
		       uint8_t flags, uint16_t reserved, uint64_t id, uint32_t len)
{
	memcpy(h, magic, 4);
	h[4] = version;
	h[5] = flags;
	h[6] = (unsigned char)reserved;
	h[7] = (unsigned char)(reserved >> 8);
	for (int i = 0; i < 8; i++)
		h[8 + i] = (unsigned char)(id >> (8 * i));
	for (int i = 0; i < 4; i++)
		h[16 + i] = (unsigned char)(len >> (8 * i));
}

/* Decodes in as one chunk and expects error code with exactly the given reason. */
static void expect_error(const void *in, size_t len, uint32_t max, int code, const char *reason)
{
	struct run *run = decode_whole(in, len, max);
	cr_assert_eq(run->result, code, "result %d (%s), expected %d (%s)", run->result,
		     run->reason, code, ura__frame_strerror(code));
	cr_assert_str_eq(run->reason, reason, "reason \"%s\", expected \"%s\"", run->reason,
			 reason);
	run_free(run);
}

Test(frame, header_layout)
{
	unsigned char h[HDR];
	int r = ura__frame_encode_header(h, URA__FRAME_EXPECTS_REPLY, 0x0102030405060708ull,
					 0x00a0b0c0, UINT32_MAX);
	cr_assert_eq(r, 0, "encode_header: %d", r);
	const unsigned char want[HDR] = {
		'U', 'R', 'A', '1', 1, 1, 0, 0,
		0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
		0xc0, 0xb0, 0xa0, 0x00,
	};
	for (size_t i = 0; i < HDR; i++)
		cr_assert_eq(h[i], want[i], "header byte %zu is 0x%02x, expected 0x%02x", i, h[i],
			     want[i]);
}

Test(frame, round_trip)
{
	const struct spec specs[] = {
		{ 0, 0, 0 },
		{ 0, 1, 1 },
		{ URA__FRAME_EXPECTS_REPLY, 42, 100 },
		{ URA__FRAME_IS_REPLY, 42, 3 },
		{ URA__FRAME_EXPECTS_REPLY, UINT64_MAX, 65536 },
		{ URA__FRAME_IS_REPLY, 0x8000000000000000ull, 0 },
	};
	size_t n = sizeof(specs) / sizeof(specs[0]);
	for (size_t k = 0; k < n; k++) {
		size_t len;
		unsigned char *s = build(&specs[k], 1, &len, NULL);
		cr_assert_eq(len, HDR + specs[k].len, "frame %zu is %zu bytes", k, len);
		struct run *run = decode_whole(s, len, 1u << 16);
		char ctx[32];
		snprintf(ctx, sizeof(ctx), "spec %zu", k);
		/* build() numbers payload patterns from 0: compare as a one-frame stream. */
		expect_frames(run, &specs[k], 1, NULL, NULL, 0, ctx);
		cr_assert_not(run->frames[0].copied, "%s: a whole frame must not be copied", ctx);
		run_free(run);
		free(s);
	}
}

Test(frame, empty_payload_pointer_is_not_null)
{
	unsigned char h[HDR];
	cr_assert_eq(ura__frame_encode_header(h, 0, 7, 0, 0), 0, "encode_header");
	struct ura__frame_decoder d;
	ura__frame_decoder_init(&d, 0);
	/* Split inside the header so the frame completes from the decoder's own copy. */
	struct ura__frame f;
	size_t used;
	cr_assert_eq(ura__frame_decode(&d, h, 11, &used, &f), URA__FRAME_MORE, "first half");
	int r = ura__frame_decode(&d, h + 11, HDR - 11, &used, &f);
	cr_assert_eq(r, URA__FRAME_READY, "second half: %d", r);
	cr_assert_eq(used, HDR - 11, "used %zu", used);
	cr_assert_eq(f.len, 0, "len %u", f.len);
	cr_assert_eq(f.id, 7, "id %llu", (unsigned long long)f.id);
	cr_assert_not_null(f.payload, "an empty payload still has a pointer");
	cr_assert_null(f.buffer, "no buffer for an empty payload");
	cr_assert_eq(ura__frame_decoder_finish(&d), 0, "finish after a whole frame");
}

Test(frame, bad_magic)
{
	const char http[] = "GET / HTTP/1.1\r\nHost: example\r\n\r\n";
	expect_error(http, sizeof(http) - 1, 0, URA__FRAME_EBADMAGIC,
		     "bad magic 47 45 54 20 (\"GET \"), expected \"URA1\"");

	unsigned char h[HDR];
	raw_header(h, "URA\x02", 1, 0, 0, 1, 0);
	expect_error(h, HDR, 0, URA__FRAME_EBADMAGIC,
		     "bad magic 55 52 41 02 (\"URA.\"), expected \"URA1\"");
	/* The verdict comes as soon as four bytes are in. */
	struct ura__frame_decoder d;
	ura__frame_decoder_init(&d, 0);
	struct ura__frame f;
	size_t used;
	cr_assert_eq(ura__frame_decode(&d, http, 3, &used, &f), URA__FRAME_MORE, "3 bytes");
	int r = ura__frame_decode(&d, http + 3, 1, &used, &f);
	cr_assert_eq(r, URA__FRAME_EBADMAGIC, "the fourth byte decides: %d", r);
}

Test(frame, bad_version)
{
	unsigned char h[HDR];
	raw_header(h, "URA1", 2, 0, 0, 1, 0);
	expect_error(h, HDR, 0, URA__FRAME_EVERSION, "unsupported version 2, expected 1");
	raw_header(h, "URA1", 0, 0, 0, 1, 0);
	expect_error(h, HDR, 0, URA__FRAME_EVERSION, "unsupported version 0, expected 1");
}

Test(frame, reserved_flag_bits)
{
	for (unsigned bit = 2; bit < 8; bit++) {
		unsigned char h[HDR];
		uint8_t flags = (uint8_t)(1u << bit | URA__FRAME_EXPECTS_REPLY);
		raw_header(h, "URA1", 1, flags, 0, 1, 0);
		char want[128];
		snprintf(want, sizeof(want), "reserved flag bits 0x%02x set (flags 0x%02x)",
			 1u << bit, flags);
		expect_error(h, HDR, 0, URA__FRAME_ERESERVED, want);
	}
}

Test(frame, both_reply_flags)
{
	unsigned char h[HDR];
	raw_header(h, "URA1", 1, URA__FRAME_EXPECTS_REPLY | URA__FRAME_IS_REPLY, 0, 1, 0);
	expect_error(h, HDR, 0, URA__FRAME_ERESERVED,
		     "flags 0x03: EXPECTS_REPLY and IS_REPLY both set");
}

Test(frame, reserved_field)
{
	unsigned char h[HDR];
	raw_header(h, "URA1", 1, 0, 0x0001, 1, 0);
	expect_error(h, HDR, 0, URA__FRAME_ERESERVED,
		     "reserved header field is 0x0001, must be zero");
	raw_header(h, "URA1", 1, 0, 0x8000, 1, 0);
	expect_error(h, HDR, 0, URA__FRAME_ERESERVED,
		     "reserved header field is 0x8000, must be zero");
}

Test(frame, size_limit_boundary)
{
	/* Exactly at the limit: fine. */
	struct spec at = { 0, 5, 64 };
	size_t len;
	unsigned char *s = build(&at, 1, &len, NULL);
	struct run *run = decode_whole(s, len, 64);
	expect_frames(run, &at, 1, NULL, NULL, 0, "len == limit");
	run_free(run);
	free(s);

	/* One over: an error from the header alone, before any payload arrives. */
	unsigned char h[HDR];
	raw_header(h, "URA1", 1, 0, 0, 5, 65);
	expect_error(h, HDR, 64, URA__FRAME_ETOOBIG,
		     "frame payload of 65 bytes is over the limit of 64 bytes");
}

Test(frame, default_limit)
{
	struct ura__frame_decoder d;
	ura__frame_decoder_init(&d, 0);
	cr_assert_eq(d.max_payload, URA__FRAME_MAX_PAYLOAD_DEFAULT, "default limit %u",
		     d.max_payload);
	cr_assert_eq(URA__FRAME_MAX_PAYLOAD_DEFAULT, 16u << 20, "the default is 16 MiB");

	unsigned char h[HDR + 1];
	raw_header(h, "URA1", 1, 0, 0, 1, 16u << 20);
	h[HDR] = 0xaa;
	struct ura__frame f;
	size_t used;
	int r = ura__frame_decode(&d, h, HDR + 1, &used, &f);
	cr_assert_eq(r, URA__FRAME_NEED_BUFFER, "16 MiB is allowed: %d (%s)", r,
		     ura__frame_decoder_reason(&d));
	cr_assert_eq(used, HDR, "the header is consumed, the payload byte is not: %zu", used);
	cr_assert_eq(ura__frame_decoder_need(&d), 16u << 20, "need %u",
		     ura__frame_decoder_need(&d));

	char want[128];
	snprintf(want, sizeof(want), "frame payload of %u bytes is over the limit of %u bytes",
		 (16u << 20) + 1, 16u << 20);
	raw_header(h, "URA1", 1, 0, 0, 1, (16u << 20) + 1);
	expect_error(h, HDR, 0, URA__FRAME_ETOOBIG, want);

	raw_header(h, "URA1", 1, 0, 0, 1, UINT32_MAX);
	snprintf(want, sizeof(want), "frame payload of %u bytes is over the limit of %u bytes",
		 UINT32_MAX, 16u << 20);
	expect_error(h, HDR, 0, URA__FRAME_ETOOBIG, want);
}

Test(frame, limit_changes_between_frames)
{
	const struct spec specs[] = { { 0, 1, 100 }, { 0, 2, 100 } };
	size_t len;
	unsigned char *s = build(specs, 2, &len, NULL);
	struct ura__frame_decoder d;
	ura__frame_decoder_init(&d, 100);
	struct ura__frame f;
	size_t used;
	int r = ura__frame_decode(&d, s, len, &used, &f);
	cr_assert_eq(r, URA__FRAME_READY, "first frame under limit 100: %d", r);
	d.max_payload = 99;
	r = ura__frame_decode(&d, s + used, len - used, &used, &f);
	cr_assert_eq(r, URA__FRAME_ETOOBIG, "second frame under limit 99: %d", r);
	cr_assert_str_eq(ura__frame_decoder_reason(&d),
			 "frame payload of 100 bytes is over the limit of 99 bytes", "reason: %s",
			 ura__frame_decoder_reason(&d));
	free(s);
}

Test(frame, errors_are_sticky)
{
	const struct spec ok = { 0, 1, 4 };
	size_t len;
	unsigned char *good = build(&ok, 1, &len, NULL);
	struct ura__frame_decoder d;
	ura__frame_decoder_init(&d, 0);
	struct ura__frame f;
	size_t used;
	int r = ura__frame_decode(&d, "XXXX", 4, &used, &f);
	cr_assert_eq(r, URA__FRAME_EBADMAGIC, "garbage: %d", r);
	char reason[128];
	snprintf(reason, sizeof(reason), "%s", ura__frame_decoder_reason(&d));
	r = ura__frame_decode(&d, good, len, &used, &f);
	cr_assert_eq(r, URA__FRAME_EBADMAGIC, "a good frame after the error: %d", r);
	cr_assert_eq(used, 0, "nothing consumed after an error: %zu", used);
	cr_assert_eq(ura__frame_decoder_finish(&d), URA__FRAME_EBADMAGIC, "finish");
	cr_assert_str_eq(ura__frame_decoder_reason(&d), reason, "reason changed to %s",
			 ura__frame_decoder_reason(&d));
	/* reset starts a fresh stream. */
	cr_assert_null(ura__frame_decoder_reset(&d), "no buffer held");
	cr_assert_str_eq(ura__frame_decoder_reason(&d), "", "reason after reset");
	r = ura__frame_decode(&d, good, len, &used, &f);
	cr_assert_eq(r, URA__FRAME_READY, "after reset: %d", r);
	free(good);
}

Test(frame, truncated_header_at_eof)
{
	const struct spec sp = { 0, 1, 4 };
	size_t len;
	unsigned char *s = build(&sp, 1, &len, NULL);
	for (size_t cut = 1; cut < HDR; cut++) {
		struct run *run = decode_whole(s, cut, 0);
		char want[128];
		snprintf(want, sizeof(want),
			 "truncated frame at end of stream: %zu of 20 header bytes", cut);
		cr_assert_eq(run->result, URA__FRAME_ETRUNCATED, "cut %zu: %d (%s)", cut,
			     run->result, run->reason);
		cr_assert_str_eq(run->reason, want, "cut %zu: %s", cut, run->reason);
		run_free(run);
	}
	free(s);
}

Test(frame, truncated_payload_at_eof)
{
	const struct spec sp = { URA__FRAME_EXPECTS_REPLY, 9, 10 };
	size_t len;
	unsigned char *s = build(&sp, 1, &len, NULL);
	for (size_t cut = HDR; cut < len; cut++) {
		struct run *run = decode_whole(s, cut, 0);
		char want[128];
		snprintf(want, sizeof(want),
			 "truncated frame at end of stream: %zu of 10 payload bytes (id 9)",
			 cut - HDR);
		cr_assert_eq(run->result, URA__FRAME_ETRUNCATED, "cut %zu: %d (%s)", cut,
			     run->result, run->reason);
		cr_assert_str_eq(run->reason, want, "cut %zu: %s", cut, run->reason);
		cr_assert_eq(run->n, 0, "cut %zu: %zu frames", cut, run->n);
		run_free(run);
	}
	/* Whole: finish is content. */
	struct run *run = decode_whole(s, len, 0);
	expect_frames(run, &sp, 1, NULL, NULL, 0, "whole");
	run_free(run);
	free(s);
}

Test(frame, finish_between_frames)
{
	struct ura__frame_decoder d;
	ura__frame_decoder_init(&d, 0);
	cr_assert_eq(ura__frame_decoder_finish(&d), 0, "finish on an empty stream");
	cr_assert_str_eq(ura__frame_decoder_reason(&d), "", "no reason");
}

Test(frame, reset_returns_the_buffer)
{
	const struct spec sp = { 0, 3, 50 };
	size_t len;
	unsigned char *s = build(&sp, 1, &len, NULL);
	struct ura__frame_decoder d;
	ura__frame_decoder_init(&d, 0);
	struct ura__frame f;
	size_t used;
	int r = ura__frame_decode(&d, s, 30, &used, &f);
	cr_assert_eq(r, URA__FRAME_NEED_BUFFER, "part of the payload: %d", r);
	cr_assert_eq(used, HDR, "used %zu", used);
	/* Asking again without giving changes nothing. */
	r = ura__frame_decode(&d, s + used, 30 - used, &used, &f);
	cr_assert_eq(r, URA__FRAME_NEED_BUFFER, "again: %d", r);
	cr_assert_eq(used, 0, "used %zu", used);
	char buf[50];
	cr_assert_eq(ura__frame_decoder_give(&d, NULL), -EINVAL, "NULL buffer");
	cr_assert_eq(ura__frame_decoder_give(&d, buf), 0, "give");
	cr_assert_eq(ura__frame_decoder_give(&d, buf), -EINVAL, "give twice");
	r = ura__frame_decode(&d, s + HDR, 10, &used, &f);
	cr_assert_eq(r, URA__FRAME_MORE, "filling: %d", r);
	/* End of stream inside the payload: the buffer is still the decoder's to hand back. */
	cr_assert_eq(ura__frame_decoder_finish(&d), URA__FRAME_ETRUNCATED, "finish");
	cr_assert_str_eq(ura__frame_decoder_reason(&d),
			 "truncated frame at end of stream: 10 of 50 payload bytes (id 3)",
			 "reason %s", ura__frame_decoder_reason(&d));
	cr_assert_eq(ura__frame_decoder_reset(&d), (void *)buf, "reset hands the buffer back");
	cr_assert_eq(ura__frame_decoder_reset(&d), NULL, "and only once");
	cr_assert_eq(d.max_payload, URA__FRAME_MAX_PAYLOAD_DEFAULT, "reset keeps the limit");
	free(s);
}

Test(frame, give_without_need)
{
	struct ura__frame_decoder d;
	ura__frame_decoder_init(&d, 0);
	char buf[8];
	cr_assert_eq(ura__frame_decoder_give(&d, buf), -EINVAL, "nothing was asked for");
	cr_assert_eq(ura__frame_decoder_need(&d), 0, "need");
}

Test(frame, bad_arguments)
{
	struct ura__frame_decoder d;
	ura__frame_decoder_init(&d, 0);
	struct ura__frame f;
	size_t used;
	cr_assert_eq(ura__frame_decode(&d, NULL, 1, &used, &f), -EINVAL, "NULL input");
	cr_assert_eq(ura__frame_decode(&d, NULL, 0, &used, &f), URA__FRAME_MORE,
		     "NULL empty input");
	cr_assert_eq(ura__frame_decode(NULL, "x", 1, &used, &f), -EINVAL, "NULL decoder");
	cr_assert_eq(ura__frame_decode(&d, "x", 1, NULL, &f), -EINVAL, "NULL used");
	cr_assert_eq(ura__frame_decode(&d, "x", 1, &used, NULL), -EINVAL, "NULL frame");
}

Test(frame, encode_errors)
{
	unsigned char out[HDR + 8];
	size_t w = 12345;
	cr_assert_eq(ura__frame_encode(out, sizeof(out), 4, 1, "abcd", 4, 0, &w), -EINVAL,
		     "unknown flag bit");
	cr_assert_eq(ura__frame_encode(out, sizeof(out), 3, 1, "abcd", 4, 0, &w), -EINVAL,
		     "both reply flags");
	cr_assert_eq(ura__frame_encode(out, sizeof(out), 0, 1, NULL, 4, 0, &w), -EINVAL,
		     "NULL payload with a length");
	cr_assert_eq(ura__frame_encode(out, sizeof(out), 0, 1, "abcd", 4, 3, &w), -EMSGSIZE,
		     "over the limit");
	cr_assert_eq(ura__frame_encode(out, HDR + 3, 0, 1, "abcd", 4, 0, &w), -ENOBUFS,
		     "buffer one byte short");
	cr_assert_eq(ura__frame_encode(out, 5, 0, 1, "abcd", 4, 0, &w), -ENOBUFS,
		     "buffer shorter than a header");
	cr_assert_eq(w, 12345, "written untouched on error");
	cr_assert_eq(ura__frame_encode(out, HDR + 4, 0, 1, "abcd", 4, 4, &w), 0,
		     "exactly at the limit, exactly the space");
	cr_assert_eq(w, HDR + 4, "written %zu", w);
	cr_assert_eq(ura__frame_encode(out, HDR, 0, 1, NULL, 0, 0, &w), 0, "empty payload");
	cr_assert_eq(w, HDR, "written %zu", w);
	cr_assert_eq(ura__frame_encode_header(out, 0, 1, (size_t)UINT32_MAX + 1, UINT32_MAX),
		     -EMSGSIZE, "over what 32 bits can say");
}

/* Frames of assorted sizes used by the splitting tests. */
static const struct spec split_specs[] = {
	{ 0, 0, 0 },
	{ URA__FRAME_EXPECTS_REPLY, 1, 1 },
	{ 0, 2, 37 },
	{ URA__FRAME_IS_REPLY, 1, 0 },
	{ URA__FRAME_EXPECTS_REPLY, UINT64_MAX, 300 },
	{ 0, 5, 19 },
	{ 0, 6, 21 },
};
#define NSPLIT (sizeof(split_specs) / sizeof(split_specs[0]))

Test(frame, split_at_every_byte)
{
	size_t len, starts[NSPLIT];
	unsigned char *s = build(split_specs, NSPLIT, &len, starts);
	for (size_t cut = 0; cut <= len; cut++) {
		struct run *run = decode_cuts(s, len, &cut, 1, 0);
		char ctx[48];
		snprintf(ctx, sizeof(ctx), "cut at %zu of %zu", cut, len);
		expect_frames(run, split_specs, NSPLIT, starts, &cut, 1, ctx);
		run_free(run);
	}
	free(s);
}

Test(frame, split_at_every_pair_of_bytes)
{
	/* The small frames only: every two cuts over ~150 bytes. */
	const struct spec *specs = split_specs;
	size_t n = 4, len, starts[4];
	unsigned char *s = build(specs, n, &len, starts);
	for (size_t a = 0; a <= len; a++) {
		for (size_t b = a; b <= len; b++) {
			size_t cuts[2] = { a, b };
			struct run *run = decode_cuts(s, len, cuts, 2, 0);
			char ctx[48];
			snprintf(ctx, sizeof(ctx), "cuts at %zu and %zu of %zu", a, b, len);
			expect_frames(run, specs, n, starts, cuts, 2, ctx);
			run_free(run);
		}
	}
	free(s);
}

Test(frame, one_byte_at_a_time)
{
	size_t len, starts[NSPLIT];
	unsigned char *s = build(split_specs, NSPLIT, &len, starts);
	size_t *cuts = malloc(len * sizeof(*cuts));
	for (size_t i = 0; i < len; i++)
		cuts[i] = i + 1;
	struct run *run = decode_cuts(s, len, cuts, len - 1, 0);
	expect_frames(run, split_specs, NSPLIT, starts, cuts, len - 1, "byte by byte");
	run_free(run);
	free(cuts);
	free(s);
}

Test(frame, many_frames_coalesced)
{
	static struct spec specs[1000];
	for (size_t k = 0; k < 1000; k++) {
		specs[k].flags = (uint8_t)(k % 3);
		specs[k].id = k * 1000003ull;
		specs[k].len = (uint32_t)((k * 37) % 200);
	}
	size_t len;
	size_t *starts = malloc(1000 * sizeof(*starts));
	unsigned char *s = build(specs, 1000, &len, starts);
	struct run *run = decode_whole(s, len, 0);
	expect_frames(run, specs, 1000, starts, NULL, 0, "1000 frames in one chunk");
	cr_assert_eq(run->need_buffers, 0, "no copy when all is in one chunk: %u buffers",
		     run->need_buffers);
	run_free(run);

	/* Again split in two places inside frames: only the two straddling ones copy. */
	size_t cuts[2] = { starts[100] + HDR + 1, starts[900] + HDR + 2 };
	run = decode_cuts(s, len, cuts, 2, 0);
	expect_frames(run, specs, 1000, starts, cuts, 2, "1000 frames in three chunks");
	run_free(run);
	free(starts);
	free(s);
}

Test(frame, garbage_after_good_frames)
{
	const struct spec specs[] = { { 0, 1, 5 }, { 0, 2, 6 } };
	size_t len;
	unsigned char *good = build(specs, 2, &len, NULL);
	unsigned char *s = malloc(len + HDR);
	memcpy(s, good, len);
	raw_header(s + len, "URA1", 7, 0, 0, 3, 0);
	struct run *run = decode_whole(s, len + HDR, 0);
	cr_assert_eq(run->n, 2, "the good frames come first: %zu", run->n);
	cr_assert_eq(run->result, URA__FRAME_EVERSION, "then the error: %d", run->result);
	cr_assert_str_eq(run->reason, "unsupported version 7, expected 1", "reason %s",
			 run->reason);
	run_free(run);
	free(s);
	free(good);
}

Test(frame, strerror_names)
{
	cr_assert_str_eq(ura__frame_strerror(URA__FRAME_EBADMAGIC), "bad magic", "");
	cr_assert_str_eq(ura__frame_strerror(URA__FRAME_EVERSION), "unsupported version", "");
	cr_assert_str_eq(ura__frame_strerror(URA__FRAME_ERESERVED), "reserved bits set", "");
	cr_assert_str_eq(ura__frame_strerror(URA__FRAME_ETOOBIG), "frame over the size limit",
			 "");
	cr_assert_str_eq(ura__frame_strerror(URA__FRAME_ETRUNCATED),
			 "truncated frame at end of stream", "");
	/* The error codes are distinct. */
	const int codes[] = { URA__FRAME_EBADMAGIC, URA__FRAME_EVERSION, URA__FRAME_ERESERVED,
			      URA__FRAME_ETOOBIG, URA__FRAME_ETRUNCATED, -EINVAL };
	for (size_t i = 0; i < 6; i++)
		for (size_t j = i + 1; j < 6; j++)
			cr_assert_neq(codes[i], codes[j], "codes %zu and %zu are both %d", i, j,
				      codes[i]);
}
