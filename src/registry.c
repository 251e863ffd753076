/*
 * Lock-free task registry.
 *
 * Shape. Slots live in chunks of 4096 that are never moved or freed before the loop is:
 * growing publishes a new chunk and never touches old ones, so a slot pointer stays
 * valid for the registry's life and lookup is two loads (chunk pointer, slot).
 *
 * Who does what. Any thread allocates (ura_submit from any thread); only the loop thread
 * frees (terminal calls run there). The loop thread keeps a private LIFO cache of free
 * slots, touched with no atomics, and spills to the shared stack past
 * URA__LOCAL_CACHE_MAX so other threads find slots too.
 *
 * Progress. The shared free stack is a Treiber stack: pop and push are a CAS loop on
 * one 64-bit word, so some thread always completes (lock-free, not wait-free). Growing
 * reserves a chunk index with one fetch_add and publishes with one store; no thread ever
 * waits for another to finish growing (a thread that finds the stack empty grows itself).
 *
 * ABA. The head word is (tag << 32) | (index + 1) and every successful CAS increments the
 * tag, so a pop that read head H and next N cannot succeed after H was popped and pushed
 * back in between: the tag differs. A popper may read a stale slot->next (the slot was
 * popped and relinked meanwhile); that read is an atomic (no data race) and its value is
 * discarded because the CAS fails. Tag wrap needs 2^32 stack operations between one
 * thread's load and its CAS.
 *
 * Handles. A handle is (generation << 32) | (loop tag << 24) | index; the tag keeps one
 * loop's handles from naming another's slots. Freeing bumps the slot's generation
 * (31 bits, never 0) before the slot can be handed out again, so a stale handle names a
 * generation that no longer matches and is answered -ENOENT / COMPLETED, never reaching
 * the newer task. A generation repeats only after 2^31 - 1 reuses of one slot.
 *
 * Fences.
 *  - push (release CAS) pairs with pop (acquire CAS): the popper sees the slot's new
 *    generation and FREE state written by the freeing loop thread before the push.
 *  - grow's release store of chunks[i] pairs with the acquire load in
 *    ura__registry_slot: a thread that learned an index from that chunk (through the
 *    free stack, itself release/acquire, or a handle passed through the inbox) sees
 *    the chunk's initialised slots.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "alloc.h"

#include "registry.h"

#define LOW32(x) ((uint32_t)(x))

int ura__registry_init(struct ura__registry *r, uint32_t tag)
{
	memset(r, 0, sizeof(*r));
	r->tag = tag;
	return 0;
}

#define CHUNK_BYTES (sizeof(struct ura__slot) * URA__CHUNK_SLOTS)

/* Chunks come straight from mmap: exactly 64 bytes per slot of resident memory, page
 * (so cache-line) aligned and zeroed, where an aligned heap allocation of this size
 * costs a quarter more. */
static struct ura__slot *chunk_alloc(void)
{
	if (URA__ALLOC_FAULT())
		return NULL;
	void *p = mmap(NULL, CHUNK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

void ura__registry_destroy(struct ura__registry *r)
{
	uint32_t n = atomic_load_explicit(&r->nchunks, memory_order_acquire);
	if (n > URA__MAX_CHUNKS)
		n = URA__MAX_CHUNKS;
	for (uint32_t i = 0; i < n; i++) {
		struct ura__slot *c = atomic_load_explicit(&r->chunks[i], memory_order_acquire);
		if (c)
			munmap(c, CHUNK_BYTES);
	}
}

/* Pushes the chain first..last (linked through next) onto the shared stack. */
static void shared_push_chain(struct ura__registry *r, uint32_t first, struct ura__slot *last)
{
	uint64_t old = atomic_load_explicit(&r->free_head, memory_order_relaxed);
	uint64_t want;
	do {
		atomic_store_explicit(&last->next, LOW32(old), memory_order_relaxed);
		want = ((old >> 32) + 1) << 32 | (first + 1);
		/* Release: the chain's contents (links, generations) are visible to the
		 * thread whose acquire pop takes them. */
	} while (!atomic_compare_exchange_weak_explicit(&r->free_head, &old, want,
							memory_order_release,
							memory_order_relaxed));
}

static int64_t shared_pop(struct ura__registry *r)
{
	/* Acquire: pairs with the release push, so slot->next and the slot's contents
	 * written before the push are visible once we own the slot. */
	uint64_t old = atomic_load_explicit(&r->free_head, memory_order_acquire);
	for (;;) {
		uint32_t top = LOW32(old);
		if (top == 0)
			return -1;
		struct ura__slot *s = ura__registry_slot(r, top - 1);
		uint32_t next = atomic_load_explicit(&s->next, memory_order_relaxed);
		uint64_t want = ((old >> 32) + 1) << 32 | next;
		if (atomic_compare_exchange_weak_explicit(&r->free_head, &old, want,
							  memory_order_acquire,
							  memory_order_acquire))
			return top - 1;
	}
}

/* Adds a chunk; keeps slot 0 of it for the caller and shares the rest. */
static int64_t grow(struct ura__registry *r)
{
	uint32_t c = atomic_fetch_add_explicit(&r->nchunks, 1, memory_order_relaxed);
	if (c >= URA__MAX_CHUNKS) {
		atomic_fetch_sub_explicit(&r->nchunks, 1, memory_order_relaxed);
		return -ENOMEM;
	}
	struct ura__slot *chunk = chunk_alloc();
	if (!chunk) {
		/* The index stays reserved with a NULL chunk; lookups treat it as absent. */
		return -ENOMEM;
	}
	uint32_t base = c << URA__CHUNK_SHIFT;
	for (uint32_t i = 0; i < URA__CHUNK_SLOTS; i++) {
		atomic_init(&chunk[i].gen_state, ura__gs_make(1, URA__SLOT_FREE));
		atomic_init(&chunk[i].next, i + 1 < URA__CHUNK_SLOTS ? base + i + 2 : 0);
	}
	/* Release: publishes the initialised slots to lookups (see the header comment). */
	atomic_store_explicit(&r->chunks[c], chunk, memory_order_release);
	shared_push_chain(r, base + 1, &chunk[URA__CHUNK_SLOTS - 1]);
	return base;
}

int64_t ura__registry_alloc(struct ura__registry *r, bool on_loop)
{
	int64_t idx;
	if (on_loop && r->local_head) {
		idx = r->local_head - 1;
		struct ura__slot *s = ura__registry_slot(r, (uint32_t)idx);
		r->local_head = atomic_load_explicit(&s->next, memory_order_relaxed);
		r->local_count--;
	} else {
		idx = shared_pop(r);
		if (idx < 0)
			idx = grow(r);
		if (idx < 0)
			return idx;
	}
	return idx;
}

void ura__registry_free(struct ura__registry *r, uint32_t index)
{
	struct ura__slot *s = ura__registry_slot(r, index);
	uint64_t gs = atomic_load_explicit(&s->gen_state, memory_order_relaxed);
	uint32_t gen = (ura__gs_gen(gs) + 1) & URA__GEN_MASK;
	if (gen == 0)
		gen = 1;
	/* Release: a thread comparing generations after this sees the slot as gone before
	 * it can see any reuse (reuse happens only after the push below). */
	atomic_store_explicit(&s->gen_state, ura__gs_make(gen, URA__SLOT_FREE), memory_order_release);
	if (r->local_count < URA__LOCAL_CACHE_MAX) {
		atomic_store_explicit(&s->next, r->local_head, memory_order_relaxed);
		r->local_head = index + 1;
		r->local_count++;
		return;
	}
	shared_push_chain(r, index, s);
}
