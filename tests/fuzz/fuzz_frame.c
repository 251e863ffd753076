/*
 * libFuzzer harness for the frame decoder (src/ipc/frame.c). Run by scripts/fuzz.
 *
 * fuzz-sources: src/ipc/frame.c
 *
 * Input: byte 0 picks the payload limit, bytes 1-2 seed the chunking, the rest is the
 * byte stream. The stream is decoded twice, as one chunk and cut into chunks whose sizes
 * come from the seed, each chunk in a heap block of its exact size so AddressSanitizer
 * catches a read past it. Invariants checked:
 *   - decode never consumes more than it was given, and MORE means it took everything;
 *   - every frame has len <= the limit, known flags, a payload inside the chunk or equal
 *     to the buffer the harness gave (exactly the size asked for);
 *   - re-encoding a frame gives back exactly the bytes it was decoded from, and decoding
 *     those gives the same frame;
 *   - errors are sticky and carry a reason; finish is 0 exactly at a frame boundary;
 *   - the chunking changes nothing: same frames, same error, same reason.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"

#include "fuzz.h"

/* Limits small enough that inputs reach them; 0 stands for "only empty frames". */
static const uint32_t limits[8] = {
	URA__FRAME_MAX_PAYLOAD_DEFAULT, 0, 1, 16, 64, 255, 4096, 65536,
};

struct rec {
	uint8_t flags;
	uint64_t id;
	uint32_t len;
	size_t end;             /* stream offset just past the frame */
};

struct result {
	struct rec *frames;
	size_t n;
	int code;               /* the error, or what finish said */
	char reason[sizeof(((struct ura__frame_decoder *)0)->reason)];
};

static void init_limit(struct ura__frame_decoder *d, uint32_t max)
{
	ura__frame_decoder_init(d, max);
	d->max_payload = max; /* init takes 0 as "the default"; here it means 0 */
}

static bool is_error(int r)
{
	return r == URA__FRAME_EBADMAGIC || r == URA__FRAME_EVERSION ||
	       r == URA__FRAME_ERESERVED || r == URA__FRAME_ETOOBIG ||
	       r == URA__FRAME_ETRUNCATED;
}

/* Encodes f again, checks it is byte for byte the frame it came from, decodes it again. */
static void check_reencode(const struct ura__frame *f, const uint8_t *orig, size_t orig_len,
			   uint32_t max)
{
	size_t cap = ura__frame_size(f->len), w = 0;
	uint8_t *buf = malloc(cap);
	CHECK(buf);
	CHECK(ura__frame_encode(buf, cap, f->flags, f->id, f->payload, f->len, UINT32_MAX,
				&w) == 0);
	CHECK(w == cap && w == orig_len);
	CHECK(memcmp(buf, orig, w) == 0);

	struct ura__frame_decoder d;
	init_limit(&d, max);
	struct ura__frame g;
	size_t used = 0;
	CHECK(ura__frame_decode(&d, buf, w, &used, &g) == URA__FRAME_READY);
	CHECK(used == w);
	CHECK(g.flags == f->flags && g.id == f->id && g.len == f->len && g.buffer == NULL);
	CHECK(memcmp(g.payload, f->payload, f->len) == 0);
	CHECK(ura__frame_decoder_finish(&d) == 0);
	free(buf);
}

/* xorshift64: the chunk sizes. */
static uint64_t next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void decode(const uint8_t *stream, size_t n, uint32_t max, uint16_t seed, bool split,
		   struct result *res)
{
	static const size_t chunk_caps[8] = { 1, 2, 3, 7, 19, 21, 64, 1000 };
	uint64_t rng = 0x9e3779b97f4a7c15ull ^ seed;
	size_t cap = chunk_caps[seed & 7];

	struct ura__frame_decoder d;
	init_limit(&d, max);
	memset(res, 0, sizeof(*res));
	res->frames = malloc((n / URA__FRAME_HEADER_SIZE + 1) * sizeof(*res->frames));
	CHECK(res->frames);

	size_t pos = 0, frame_start = 0;
	void *held = NULL;
	bool abandoned = false, failed = false;
	bool last_empty = false;
	while (pos < n && !failed && !abandoned) {
		size_t clen = n - pos;
		if (split) {
			/* Sometimes an empty chunk, never two in a row. */
			clen = (size_t)(next(&rng) % (cap + 1));
			if (clen == 0 && last_empty)
				clen = 1;
			if (clen > n - pos)
				clen = n - pos;
		}
		last_empty = clen == 0;
		uint8_t *chunk = clen ? malloc(clen) : NULL;
		CHECK(!clen || chunk);
		if (clen)
			memcpy(chunk, stream + pos, clen);
		size_t off = 0;
		for (;;) {
			struct ura__frame f;
			size_t used = SIZE_MAX;
			/* NULL for an empty chunk: no arithmetic on a null pointer. */
			const uint8_t *in = chunk ? chunk + off : NULL;
			int r = ura__frame_decode(&d, in, clen - off, &used, &f);
			CHECK(used <= clen - off);
			off += used;
			pos += used;
			if (r == URA__FRAME_MORE) {
				CHECK(off == clen);
				break;
			}
			if (r == URA__FRAME_NEED_BUFFER) {
				uint32_t need = ura__frame_decoder_need(&d);
				CHECK(need > 0 && need <= d.max_payload);
				CHECK(off < clen && clen - off < need);
				CHECK(held == NULL);
				if (need > n) {
					/* Can never complete: do as a peer that hung up. */
					abandoned = true;
					break;
				}
				held = malloc(need);
				CHECK(held);
				CHECK(ura__frame_decoder_give(&d, held) == 0);
				continue;
			}
			if (r < 0) {
				CHECK(is_error(r) && r != URA__FRAME_ETRUNCATED);
				CHECK(ura__frame_decoder_reason(&d)[0] != '\0');
				size_t again = SIZE_MAX;
				CHECK(ura__frame_decode(&d, chunk + off, clen - off, &again, &f) ==
				      r);
				CHECK(again == 0);
				res->code = r;
				failed = true;
				break;
			}
			CHECK(r == URA__FRAME_READY);
			CHECK(f.len <= d.max_payload);
			CHECK((f.flags & ~URA__FRAME_FLAGS_KNOWN) == 0 &&
			      f.flags != URA__FRAME_FLAGS_KNOWN);
			CHECK(f.payload != NULL);
			if (f.buffer) {
				CHECK(f.buffer == held && f.payload == held);
				held = NULL;
			} else {
				const uint8_t *p = f.payload;
				CHECK(f.len == 0 ||
				      (p >= chunk && p + f.len <= chunk + off));
			}
			check_reencode(&f, stream + frame_start, pos - frame_start, d.max_payload);
			CHECK(memcmp(f.payload, stream + pos - f.len, f.len) == 0);
			res->frames[res->n++] = (struct rec){ f.flags, f.id, f.len, pos };
			frame_start = pos;
			free(f.buffer);
		}
		free(chunk);
	}
	if (!failed) {
		res->code = ura__frame_decoder_finish(&d);
		CHECK(res->code == 0 || res->code == URA__FRAME_ETRUNCATED);
		CHECK((res->code == 0) == (pos == frame_start));
		/* Sticky too. */
		CHECK(ura__frame_decoder_finish(&d) == res->code);
	}
	snprintf(res->reason, sizeof(res->reason), "%s", ura__frame_decoder_reason(&d));
	CHECK((res->code == 0) == (res->reason[0] == '\0'));
	void *back = ura__frame_decoder_reset(&d);
	CHECK(back == held);
	free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	uint32_t max = limits[data[0] & 7];
	uint16_t seed = (uint16_t)(data[1] | data[2] << 8);
	const uint8_t *stream = data + 3;
	size_t n = size - 3;

	struct result whole, parts;
	decode(stream, n, max, seed, false, &whole);
	decode(stream, n, max, seed, true, &parts);

	CHECK(whole.n == parts.n);
	for (size_t k = 0; k < whole.n; k++) {
		const struct rec *a = &whole.frames[k], *b = &parts.frames[k];
		CHECK(a->flags == b->flags && a->id == b->id && a->len == b->len &&
		      a->end == b->end);
	}
	CHECK(whole.code == parts.code);
	CHECK(strcmp(whole.reason, parts.reason) == 0);
	free(whole.frames);
	free(parts.frames);
	return 0;
}
