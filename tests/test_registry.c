/* Registry: O(1) slots, generations, growth without moving, lock-free allocation. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#ifdef URA_STANDALONE
#include "standalone.h"
#else
#include <criterion/criterion.h>
#endif

#include "registry.h"

static struct ura__registry *new_registry(void)
{
	struct ura__registry *r = aligned_alloc(64, sizeof(*r));
	cr_assert_not_null(r);
	cr_assert_eq(ura__registry_init(r, 7), 0);
	return r;
}

static void free_registry(struct ura__registry *r)
{
	ura__registry_destroy(r);
	free(r);
}

Test(registry, slot_is_one_cache_line)
{
	cr_assert_leq(sizeof(struct ura__slot), 64);
}

Test(registry, stale_handle_never_reaches_a_newer_task)
{
	struct ura__registry *r = new_registry();
	int64_t i = ura__registry_alloc(r, true);
	cr_assert_geq(i, 0);
	struct ura__slot *s = ura__registry_slot(r, (uint32_t)i);
	uint32_t gen = ura__gs_gen(atomic_load(&s->gen_state));
	ura_task old = ura__handle_make(r, gen, (uint32_t)i);
	cr_assert_neq(old, 0);
	ura__registry_free(r, (uint32_t)i);
	int64_t j = ura__registry_alloc(r, true);
	cr_assert_eq(j, i, "the local cache should hand the same slot back");
	uint32_t gen2 = ura__gs_gen(atomic_load(&s->gen_state));
	cr_assert_neq(gen2, gen, "generation not bumped on free");
	ura_task fresh = ura__handle_make(r, gen2, (uint32_t)j);
	cr_assert_neq(old, fresh);
	cr_assert_eq(ura__registry_lookup(r, old), s, "lookup finds the slot...");
	cr_assert_neq(ura__handle_gen(old), ura__gs_gen(atomic_load(&s->gen_state)),
		      "...but the generation check rejects the stale handle");
	free_registry(r);
}

Test(registry, malformed_handles_find_nothing)
{
	struct ura__registry *r = new_registry();
	cr_assert_null(ura__registry_lookup(r, 0));
	cr_assert_null(ura__registry_lookup(r, 1ull << 63));
	cr_assert_null(ura__registry_lookup(r, 5), "generation 0 is never valid");
	/* Another loop's tag. */
	struct ura__registry *other = new_registry();
	other->tag = 9;
	cr_assert_null(ura__registry_lookup(r, ura__handle_make(other, 1, 0)));
	/* Beyond any chunk. */
	cr_assert_null(ura__registry_lookup(r, ura__handle_make(r, 1, URA__INDEX_MASK)));
	free_registry(other);
	free_registry(r);
}

Test(registry, grows_without_moving_slots)
{
	struct ura__registry *r = new_registry();
	enum { N = 3 * URA__CHUNK_SLOTS + 17 };
	static uint32_t idx[N];
	static struct ura__slot *where[N];
	for (int k = 0; k < N; k++) {
		int64_t i = ura__registry_alloc(r, false);
		cr_assert_geq(i, 0, "alloc %d failed: %ld", k, (long)i);
		idx[k] = (uint32_t)i;
		where[k] = ura__registry_slot(r, idx[k]);
		where[k]->tag_lo = (uint32_t)k;
	}
	for (int k = 0; k < N; k++) {
		cr_assert_eq(ura__registry_slot(r, idx[k]), where[k], "slot %d moved", k);
		cr_assert_eq(where[k]->tag_lo, (uint32_t)k, "slot %d was handed out twice", k);
	}
	for (int k = 0; k < N; k++)
		ura__registry_free(r, idx[k]);
	/* Everything freed comes back before the registry grows again. */
	uint32_t chunks = atomic_load(&r->nchunks);
	for (int k = 0; k < N; k++)
		cr_assert_geq(ura__registry_alloc(r, k % 2), 0);
	cr_assert_eq(atomic_load(&r->nchunks), chunks, "grew although free slots existed");
	free_registry(r);
}

/* Stress: allocating threads hand indexes to one freeing thread (the loop's role);
 * every index must be unique while held. */
enum { THREADS = 4, PER_THREAD = 200000, RING = 1 << 16 };

struct stress {
	struct ura__registry *r;
	_Atomic uint32_t ring[RING]; /* index + 1 handed to the freer; 0 = empty */
	_Atomic uint64_t head;       /* producers reserve positions */
	_Atomic uint8_t *held;       /* held[index] = 1 while allocated */
	_Atomic uint64_t dup;
	_Atomic int producers_done;
};

static void *producer(void *arg)
{
	struct stress *st = arg;
	for (int k = 0; k < PER_THREAD; k++) {
		int64_t i = ura__registry_alloc(st->r, false);
		if (i < 0)
			abort();
		if (atomic_exchange(&st->held[i], 1) != 0)
			atomic_fetch_add(&st->dup, 1);
		uint64_t pos = atomic_fetch_add(&st->head, 1) % RING;
		uint32_t expect = 0;
		while (!atomic_compare_exchange_weak(&st->ring[pos], &expect, (uint32_t)i + 1))
			expect = 0; /* the freer has not consumed this cell yet */
	}
	atomic_fetch_add(&st->producers_done, 1);
	return NULL;
}

Test(stress, registry_alloc_any_thread_free_one_thread, .timeout = 120)
{
	struct stress *st = calloc(1, sizeof(*st));
	st->r = new_registry();
	st->held = calloc(URA__MAX_CHUNKS * (size_t)URA__CHUNK_SLOTS, 1); /* one per slot */
	pthread_t th[THREADS];
	for (int t = 0; t < THREADS; t++)
		pthread_create(&th[t], NULL, producer, st);
	uint64_t freed = 0, tail = 0;
	while (freed < (uint64_t)THREADS * PER_THREAD) {
		uint32_t v = atomic_exchange(&st->ring[tail % RING], 0);
		if (!v) {
			sched_yield();
			continue;
		}
		tail++;
		atomic_store(&st->held[v - 1], 0);
		/* The main thread plays the loop: it frees, also into its local cache. */
		ura__registry_free(st->r, v - 1);
		freed++;
		if (freed % 3 == 0) {
			int64_t i = ura__registry_alloc(st->r, true);
			if (atomic_exchange(&st->held[i], 1) != 0)
				atomic_fetch_add(&st->dup, 1);
			atomic_store(&st->held[i], 0);
			ura__registry_free(st->r, (uint32_t)i);
		}
	}
	for (int t = 0; t < THREADS; t++)
		pthread_join(th[t], NULL);
	cr_assert_eq(atomic_load(&st->dup), 0, "%lu slots were handed out twice",
		     (unsigned long)atomic_load(&st->dup));
	cr_log_info("registry grew to %u chunks for %d threads", atomic_load(&st->r->nchunks), THREADS);
	free_registry(st->r);
	free(st->held);
	free(st);
}

/* Loop tags: each held by one live loop at a time, 1..URA__MAX_TAG, then -EMFILE; a
 * tag given back is handed out again. No loop exists in this program, so all are free. */
Test(registry, loop_tags_are_unique_until_given_back)
{
	static bool seen[URA__MAX_TAG + 1];
	int n = 0, tag;
	while ((tag = ura__registry_tag_get()) >= 0) {
		cr_assert(tag >= 1 && tag <= (int)URA__MAX_TAG, "tag %d", tag);
		cr_assert(!seen[tag], "tag %d handed out twice", tag);
		seen[tag] = true;
		n++;
	}
	cr_assert_eq(tag, -EMFILE, "%d", tag);
	cr_assert_eq(n, (int)URA__MAX_TAG, "%d tags", n);
	ura__registry_tag_put(77);
	cr_assert_eq(ura__registry_tag_get(), 77);
	cr_assert_eq(ura__registry_tag_get(), -EMFILE);
	for (uint32_t t = 1; t <= URA__MAX_TAG; t++)
		ura__registry_tag_put(t);
	/* A tag given back is not the next one handed out: tags go round, so a freed
	 * loop's stale handles meet a newer loop under the same tag as late as possible. */
	int first = ura__registry_tag_get();
	cr_assert_geq(first, 1);
	ura__registry_tag_put((uint32_t)first);
	for (int i = 0; i < 100; i++) {
		int t = ura__registry_tag_get();
		cr_assert(t >= 1 && t != first, "tag %d handed out again at once", t);
		ura__registry_tag_put((uint32_t)t);
	}
}
