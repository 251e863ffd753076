/*
 * Messages (src/ipc/msg.c): creation and its argument checks, the reference count under
 * many threads, the frame id and flags (expects_reply), and turning decoded frames into
 * messages with and without a copy. Also builds against tests/standalone.h, so the
 * threaded cases can run under ThreadSanitizer.
 */
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#ifdef URA_STANDALONE
/* The ThreadSanitizer build (see tests/meson.build): Criterion's subset, plus the two
 * assertions this file uses beyond it. */
#include "standalone.h"
#ifndef cr_assert_not
#define cr_assert_not(cond, ...) cr_assert(!(cond), __VA_ARGS__)
#endif
#ifndef cr_assert_str_eq
#define cr_assert_str_eq(a, b, ...) cr_assert(strcmp((a), (b)) == 0, __VA_ARGS__)
#endif
#else
#include <criterion/criterion.h>
#endif

#include "frame.h"
#include "msg.h"
#include "ura.h"

#define NTHREADS 8
#define ROUNDS 100000

Test(msg, new_copies_the_data)
{
	char src[] = "hello, ura";
	ura_msg *m = NULL;
	int r = ura_msg_new(src, sizeof(src), &m);
	cr_assert_eq(r, 0, "ura_msg_new: %d", r);
	cr_assert_not_null(m, "no message");
	memset(src, 'x', sizeof(src));
	cr_assert_eq(ura_msg_len(m), sizeof(src), "len %zu", ura_msg_len(m));
	cr_assert_str_eq(ura_msg_data(m), "hello, ura", "data is \"%s\": not a copy?",
			 (const char *)ura_msg_data(m));
	cr_assert_neq((const void *)ura_msg_data(m), (const void *)src, "data aliases the source");
	cr_assert_eq((uintptr_t)ura_msg_data(m) % alignof(max_align_t), 0,
		     "data %p not aligned for any type", ura_msg_data(m));
	cr_assert_not(ura_msg_expects_reply(m), "a new message expects no reply");
	cr_assert_not(ura__msg_is_reply(m), "a new message is no reply");
	cr_assert_eq(ura__msg_id(m), 0, "id %llu", (unsigned long long)ura__msg_id(m));
	cr_assert_eq(ura__msg_refs(m), 1, "refs %zu", ura__msg_refs(m));
	cr_assert_eq(ura__msg_of_data(ura_msg_data(m)), m, "of_data is data's inverse");
	ura_msg_unref(m);
}

Test(msg, empty_payload)
{
	ura_msg *a = NULL, *b = NULL;
	cr_assert_eq(ura_msg_new(NULL, 0, &a), 0, "NULL data, len 0");
	cr_assert_eq(ura_msg_new("x", 0, &b), 0, "some data, len 0");
	cr_assert_eq(ura_msg_len(a), 0, "len %zu", ura_msg_len(a));
	cr_assert_eq(ura_msg_len(b), 0, "len %zu", ura_msg_len(b));
	cr_assert_not_null(ura_msg_data(a), "data of an empty message is not NULL");
	cr_assert_not_null(ura_msg_data(b), "data of an empty message is not NULL");
	ura_msg_unref(a);
	ura_msg_unref(b);
}

Test(msg, bad_arguments)
{
	ura_msg *m = (ura_msg *)0x1;
	cr_assert_eq(ura_msg_new("abc", 3, NULL), -EINVAL, "NULL out");
	cr_assert_eq(ura_msg_new(NULL, 1, &m), -EINVAL, "NULL data with len 1");
	cr_assert_eq(m, (ura_msg *)0x1, "out untouched on error");
	/* The length is checked before the data is read: a short buffer is safe here. */
	cr_assert_eq(ura_msg_new("abc", (size_t)UINT32_MAX + 1, &m), -EMSGSIZE,
		     "over the wire format's limit");
	cr_assert_eq(ura_msg_new(NULL, SIZE_MAX, &m), -EINVAL, "NULL data, huge len");
	cr_assert_eq(ura_msg_new("abc", SIZE_MAX, &m), -EMSGSIZE, "SIZE_MAX");
	void *data;
	cr_assert_eq(ura__msg_alloc(1, NULL, &data), -EINVAL, "alloc: NULL out");
	cr_assert_eq(ura__msg_alloc(1, &m, NULL), -EINVAL, "alloc: NULL data");
	cr_assert_eq(ura__msg_alloc((size_t)UINT32_MAX + 1, &m, &data), -EMSGSIZE,
		     "alloc: over the limit");
}

Test(msg, null_is_fine)
{
	cr_assert_null(ura_msg_ref(NULL), "ref(NULL)");
	ura_msg_unref(NULL);
	cr_assert_null(ura_msg_data(NULL), "data(NULL)");
	cr_assert_eq(ura_msg_len(NULL), 0, "len(NULL)");
	cr_assert_not(ura_msg_expects_reply(NULL), "expects_reply(NULL)");
}

Test(msg, ref_and_unref)
{
	ura_msg *m;
	cr_assert_eq(ura_msg_new("abc", 3, &m), 0, "new");
	cr_assert_eq(ura_msg_ref(m), m, "ref returns its argument");
	cr_assert_eq(ura_msg_ref(m), m, "ref returns its argument");
	cr_assert_eq(ura__msg_refs(m), 3, "refs %zu", ura__msg_refs(m));
	ura_msg_unref(m);
	ura_msg_unref(m);
	cr_assert_eq(ura__msg_refs(m), 1, "refs %zu", ura__msg_refs(m));
	cr_assert_eq(memcmp(ura_msg_data(m), "abc", 3), 0, "data intact");
	ura_msg_unref(m);
}

struct hammer {
	ura_msg *m;
	atomic_int *go;
};

/* ROUNDS ref/unref pairs, every 64th round holding 16 references at once so the count
 * climbs and falls under contention. */
static void *hammer_thread(void *arg)
{
	struct hammer *h = arg;
	/* Acquire: pairs with the release store that starts every thread at once. */
	while (!atomic_load_explicit(h->go, memory_order_acquire))
		;
	for (int i = 0; i < ROUNDS; i++) {
		if (i % 64 == 0) {
			ura_msg *held[16];
			for (int k = 0; k < 16; k++)
				held[k] = ura_msg_ref(h->m);
			for (int k = 0; k < 16; k++)
				ura_msg_unref(held[k]);
		}
		ura_msg *r = ura_msg_ref(h->m);
		/* Read through the reference, as an owner would. */
		if (ura_msg_len(r) != 7 || ((const char *)ura_msg_data(r))[0] != 'p')
			return (void *)1;
		ura_msg_unref(r);
	}
	return NULL;
}

Test(msg, refcount_from_many_threads, .timeout = 120)
{
	ura_msg *m;
	cr_assert_eq(ura_msg_new("payload", 7, &m), 0, "new");
	atomic_int go = 0;
	struct hammer h = { .m = m, .go = &go };
	pthread_t t[NTHREADS];
	for (int i = 0; i < NTHREADS; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, hammer_thread, &h), 0, "thread %d", i);
	atomic_store_explicit(&go, 1, memory_order_release);
	for (int i = 0; i < NTHREADS; i++) {
		void *ret;
		pthread_join(t[i], &ret);
		cr_assert_null(ret, "thread %d read a bad payload", i);
	}
	cr_assert_eq(ura__msg_refs(m), 1, "refs %zu after %d x %d ref/unref pairs",
		     ura__msg_refs(m), NTHREADS, ROUNDS);
	ura_msg_unref(m);
}

struct race {
	ura_msg *m;
	pthread_barrier_t *start;
};

static void *last_unref_thread(void *arg)
{
	struct race *rc = arg;
	pthread_barrier_wait(rc->start);
	/* Touch the payload, then drop the reference: whichever thread is last frees. */
	volatile char c = ((const char *)ura_msg_data(rc->m))[3];
	volatile size_t len = ura_msg_len(rc->m);
	(void)c;
	(void)len;
	ura_msg_unref(rc->m);
	return NULL;
}

Test(msg, last_unref_races, .timeout = 120)
{
	/* Every thread drops its reference at once, the creator's included: exactly one
	 * frees, after every other thread is done (the sanitizers check both). */
	for (int round = 0; round < 300; round++) {
		ura_msg *m;
		cr_assert_eq(ura_msg_new("race", 4, &m), 0, "round %d: new", round);
		pthread_barrier_t start;
		pthread_barrier_init(&start, NULL, NTHREADS + 1);
		struct race rc = { .m = m, .start = &start };
		pthread_t t[NTHREADS];
		for (int i = 0; i < NTHREADS; i++) {
			ura_msg_ref(m);
			cr_assert_eq(pthread_create(&t[i], NULL, last_unref_thread, &rc), 0,
				     "round %d: thread %d", round, i);
		}
		pthread_barrier_wait(&start);
		ura_msg_unref(m);
		for (int i = 0; i < NTHREADS; i++)
			pthread_join(t[i], NULL);
		pthread_barrier_destroy(&start);
	}
}

/* A decoded frame as the decoder would yield it with the payload in the chunk. */
static struct ura__frame frame_of(uint8_t flags, uint64_t id, const void *payload, uint32_t len)
{
	struct ura__frame f = { .flags = flags, .id = id, .len = len, .payload = payload };
	return f;
}

Test(msg, expects_reply_flag)
{
	const struct {
		uint8_t flags;
		bool expects, is_reply;
	} cases[] = {
		{ 0, false, false },
		{ URA__FRAME_EXPECTS_REPLY, true, false },
		{ URA__FRAME_IS_REPLY, false, true },
	};
	for (size_t i = 0; i < 3; i++) {
		struct ura__frame f = frame_of(cases[i].flags, 1000 + i, "question", 8);
		ura_msg *m = NULL;
		int r = ura__msg_from_frame(&f, &m);
		cr_assert_eq(r, 0, "flags 0x%x: from_frame %d", cases[i].flags, r);
		cr_assert_eq(ura_msg_expects_reply(m), cases[i].expects,
			     "flags 0x%x: expects_reply %d", cases[i].flags,
			     ura_msg_expects_reply(m));
		cr_assert_eq(ura__msg_is_reply(m), cases[i].is_reply, "flags 0x%x: is_reply %d",
			     cases[i].flags, ura__msg_is_reply(m));
		cr_assert_eq(ura__msg_id(m), 1000 + i, "flags 0x%x: id %llu", cases[i].flags,
			     (unsigned long long)ura__msg_id(m));
		cr_assert_eq(ura__msg_flags(m), cases[i].flags, "flags 0x%x: flags 0x%x",
			     cases[i].flags, ura__msg_flags(m));
		cr_assert_neq(ura_msg_data(m), f.payload, "the payload is copied");
		cr_assert_eq(memcmp(ura_msg_data(m), "question", 8), 0, "payload");
		ura_msg_unref(m);
	}
}

Test(msg, from_frame_rejects_bad_flags)
{
	ura_msg *m = NULL;
	struct ura__frame f = frame_of(URA__FRAME_EXPECTS_REPLY | URA__FRAME_IS_REPLY, 1, "x", 1);
	cr_assert_eq(ura__msg_from_frame(&f, &m), -EINVAL, "both reply flags");
	f.flags = 0x10;
	cr_assert_eq(ura__msg_from_frame(&f, &m), -EINVAL, "unknown flag");
	cr_assert_null(m, "out untouched");
	cr_assert_eq(ura__msg_from_frame(NULL, &m), -EINVAL, "NULL frame");
	f.flags = 0;
	cr_assert_eq(ura__msg_from_frame(&f, NULL), -EINVAL, "NULL out");
}

Test(msg, set_header)
{
	ura_msg *m;
	cr_assert_eq(ura_msg_new("r", 1, &m), 0, "new");
	cr_assert_eq(ura__msg_set_header(m, URA__FRAME_EXPECTS_REPLY, 77), 0, "set");
	cr_assert(ura_msg_expects_reply(m), "expects a reply after set_header");
	cr_assert_eq(ura__msg_id(m), 77, "id");
	cr_assert_eq(ura__msg_set_header(m, 3, 1), -EINVAL, "both reply flags");
	cr_assert_eq(ura__msg_set_header(m, 4, 1), -EINVAL, "unknown flag");
	cr_assert_eq(ura__msg_id(m), 77, "untouched on error");
	cr_assert_eq(ura__msg_set_header(NULL, 0, 1), -EINVAL, "NULL");
	ura_msg_unref(m);
}

/* Decodes stream fed in two chunks, the payload straddling them, into a message whose
 * buffer the decoder fills: no copy after the decoder's. */
Test(msg, decode_straight_into_a_message)
{
	char payload[300];
	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (char)(i * 13);
	unsigned char stream[URA__FRAME_HEADER_SIZE + sizeof(payload)];
	size_t n;
	int r = ura__frame_encode(stream, sizeof(stream), URA__FRAME_EXPECTS_REPLY, 9, payload,
				  sizeof(payload), 0, &n);
	cr_assert_eq(r, 0, "encode %d", r);

	struct ura__frame_decoder d;
	ura__frame_decoder_init(&d, 0);
	struct ura__frame f;
	size_t used, cut = 100;
	r = ura__frame_decode(&d, stream, cut, &used, &f);
	cr_assert_eq(r, URA__FRAME_NEED_BUFFER, "first chunk: %d", r);
	ura_msg *pending;
	void *data;
	r = ura__msg_alloc(ura__frame_decoder_need(&d), &pending, &data);
	cr_assert_eq(r, 0, "alloc %d", r);
	cr_assert_eq(ura__frame_decoder_give(&d, data), 0, "give");
	size_t off = used;
	r = ura__frame_decode(&d, stream + off, cut - off, &used, &f);
	cr_assert_eq(r, URA__FRAME_MORE, "rest of the first chunk: %d", r);
	r = ura__frame_decode(&d, stream + cut, n - cut, &used, &f);
	cr_assert_eq(r, URA__FRAME_READY, "second chunk: %d", r);
	cr_assert_eq(f.buffer, data, "the message's payload came back");

	ura_msg *m = NULL;
	r = ura__msg_from_frame(&f, &m);
	cr_assert_eq(r, 0, "from_frame %d", r);
	cr_assert_eq(m, pending, "the message itself, not a copy");
	cr_assert_eq(ura__msg_refs(m), 1, "refs %zu: the reference moved", ura__msg_refs(m));
	cr_assert(ura_msg_expects_reply(m), "expects a reply");
	cr_assert_eq(ura__msg_id(m), 9, "id");
	cr_assert_eq(ura_msg_len(m), sizeof(payload), "len %zu", ura_msg_len(m));
	cr_assert_eq(memcmp(ura_msg_data(m), payload, sizeof(payload)), 0, "payload");
	ura_msg_unref(m);
}

Test(msg, adopt_checks_the_length)
{
	ura_msg *pending;
	void *data;
	cr_assert_eq(ura__msg_alloc(10, &pending, &data), 0, "alloc");
	struct ura__frame f = frame_of(0, 1, data, 11);
	f.buffer = data;
	ura_msg *m = NULL;
	cr_assert_eq(ura__msg_from_frame(&f, &m), -EINVAL, "a buffer of the wrong length");
	cr_assert_null(m, "out untouched");
	cr_assert_eq(ura__msg_refs(pending), 1, "the caller keeps its reference");
	ura_msg_unref(pending);
}

Test(msg, abandoned_decode_frees_the_message)
{
	/* A stream that ends inside a payload: reset hands the message's buffer back. */
	unsigned char stream[URA__FRAME_HEADER_SIZE + 50];
	size_t n, used;
	char payload[50] = { 0 };
	cr_assert_eq(ura__frame_encode(stream, sizeof(stream), 0, 1, payload, 50, 0, &n), 0, "");
	struct ura__frame_decoder d;
	ura__frame_decoder_init(&d, 0);
	struct ura__frame f;
	cr_assert_eq(ura__frame_decode(&d, stream, 30, &used, &f), URA__FRAME_NEED_BUFFER, "");
	ura_msg *pending;
	void *data;
	cr_assert_eq(ura__msg_alloc(ura__frame_decoder_need(&d), &pending, &data), 0, "alloc");
	cr_assert_eq(ura__frame_decoder_give(&d, data), 0, "give");
	cr_assert_eq(ura__frame_decode(&d, stream + used, 30 - used, &used, &f), URA__FRAME_MORE,
		     "");
	cr_assert_eq(ura__frame_decoder_finish(&d), URA__FRAME_ETRUNCATED, "truncated");
	void *back = ura__frame_decoder_reset(&d);
	cr_assert_eq(back, data, "reset returns the buffer");
	cr_assert_eq(ura__msg_of_data(back), pending, "which names the message");
	ura_msg_unref(ura__msg_of_data(back));
}

Test(msg, encode_header_frames_the_payload)
{
	ura_msg *m;
	cr_assert_eq(ura_msg_new("reply body", 10, &m), 0, "new");
	uint8_t hdr[URA__FRAME_HEADER_SIZE];
	int r = ura__msg_encode_header(m, URA__FRAME_IS_REPLY, 5, 0, hdr);
	cr_assert_eq(r, 0, "encode_header %d", r);
	cr_assert_eq(ura__msg_encode_header(m, 0, 5, 9, hdr), -EMSGSIZE, "over a 9-byte limit");
	cr_assert_eq(ura__msg_encode_header(m, 3, 5, 0, hdr), -EINVAL, "bad flags");
	cr_assert_eq(ura__msg_encode_header(NULL, 0, 5, 0, hdr), -EINVAL, "NULL message");

	/* Header then payload, as a writev would send them, decode to the same message. */
	unsigned char wire[URA__FRAME_HEADER_SIZE + 10];
	memcpy(wire, hdr, sizeof(hdr));
	memcpy(wire + sizeof(hdr), ura_msg_data(m), 10);
	struct ura__frame_decoder d;
	ura__frame_decoder_init(&d, 0);
	struct ura__frame f;
	size_t used;
	r = ura__frame_decode(&d, wire, sizeof(wire), &used, &f);
	cr_assert_eq(r, URA__FRAME_READY, "decode %d (%s)", r, ura__frame_decoder_reason(&d));
	ura_msg *back;
	cr_assert_eq(ura__msg_from_frame(&f, &back), 0, "from_frame");
	cr_assert(ura__msg_is_reply(back), "is a reply");
	cr_assert_not(ura_msg_expects_reply(back), "expects no reply");
	cr_assert_eq(ura__msg_id(back), 5, "id");
	cr_assert_eq(ura_msg_len(back), 10, "len");
	cr_assert_eq(memcmp(ura_msg_data(back), "reply body", 10), 0, "payload");
	ura_msg_unref(back);
	ura_msg_unref(m);
}
