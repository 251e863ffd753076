/*
 * Lock-free task registry.
 *
 * Shape. The registry reserves address space for every slot it may ever have (256 MiB;
 * no memory is used until a chunk is made usable) and makes chunks of 4096 slots usable
 * in place as it grows. Under an address-space limit (RLIMIT_AS, ulimit -v) it reserves
 * at most an eighth of what the limit leaves when the loop is made (the limit less the
 * process's VmSize), in whole chunks, at least one: the reservation counts against the
 * limit in full though it uses no memory, and the ring, the receive buffers, the heap and
 * the program itself must still fit in the rest. Less again if mmap refuses. Slot i is therefore always base[i]:
 * a slot never moves, and the loop thread reaches the slot of an index it produced
 * itself with one address computation. Lookups of untrusted handles check that the
 * index's chunk is in use first.
 *
 * Who does what. Any thread allocates (ura_submit from any thread); only the loop thread
 * frees (terminal calls run there). The loop thread keeps a private LIFO cache of free
 * slots, touched with no atomics, and spills to the shared stack past
 * URA__LOCAL_CACHE_MAX so other threads find slots too.
 *
 * Progress. The shared free stack is a Treiber stack: pop and push are a CAS loop on
 * one 64-bit word, so some thread always completes (lock-free, not wait-free). Growing
 * reserves a chunk index with one fetch_add and publishes with one fetch_or; no thread ever
 * waits for another to finish growing (a thread that finds the stack empty grows itself).
 *
 * ABA. The head word is (tag << 32) | (index + 1) and every successful CAS increments the
 * tag, so a pop that read head H and next N cannot succeed after H was popped and pushed
 * back in between: the tag differs. A popper may read a stale slot->next (the slot was
 * popped and relinked meanwhile); that read is an atomic (no data race) and its value is
 * discarded because the CAS fails. Tag wrap needs 2^32 stack operations between one
 * thread's load and its CAS.
 *
 * Handles. A handle is (generation << 32) | (loop tag << 22) | index; the tag keeps one
 * loop's handles from naming another's slots. Tags are unique among live loops: each
 * loop takes one from a process-wide bitmap and gives it back when freed, after every
 * one of its sessions has had its final event. A final session answers -ENOENT without
 * reading any registry, so the freed loop's handles, given with its own sessions, never
 * reach the tasks of the tag's next holder. Freeing a slot bumps its generation (31
 * bits, never 0) before the slot can be handed out again, so a stale handle names a
 * generation that no longer matches and is answered -ENOENT / COMPLETED, never reaching
 * the newer task. A generation repeats only after 2^31 - 1 reuses of one slot.
 *
 * Fences.
 *  - push (release CAS) pairs with pop (acquire CAS): the popper sees the slot's new
 *    generation and FREE state written by the freeing loop thread before the push.
 *  - grow's release fetch_or of chunk c's bit in chunk_ready pairs with the acquire
 *    load in ura__registry_slot, so a lookup that finds the chunk in use sees its initialised
 *    slots. A thread that learned an index from the free stack (release/acquire) or
 *    through the inbox (release/acquire) is ordered after the initialisation anyway,
 *    which is why ura__registry_slot_at needs no check.
 *  - tag_put's release fetch_and pairs with tag_get's acquire fetch_or: the loop that held the
 *    tag before (its sessions made final) happens-before the next holder hands out a
 *    handle under it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "alloc.h"

#include "registry.h"

#define LOW32(x) ((uint32_t)(x))

#define CHUNK_BYTES (sizeof(struct ura__slot) * URA__CHUNK_SLOTS)

/* The process's address space in use (VmSize), in bytes; 0 when unknown. */
static uint64_t vm_size(void)
{
	int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	char text[64];
	ssize_t n = read(fd, text, sizeof(text) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	text[n] = '\0';
	return strtoull(text, NULL, 10) * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Chunks to reserve: all of them without an address-space limit; under one, an eighth of
 * what it leaves (see the header comment), at least one chunk. */
static uint32_t chunk_budget(void)
{
	struct rlimit lim;
	if (getrlimit(RLIMIT_AS, &lim) < 0 || lim.rlim_cur == RLIM_INFINITY)
		return URA__MAX_CHUNKS;
	uint64_t used = vm_size();
	uint64_t left = lim.rlim_cur > used ? lim.rlim_cur - used : 0;
	uint64_t chunks = left / 8 / CHUNK_BYTES;
	if (chunks < 1)
		return 1;
	return chunks < URA__MAX_CHUNKS ? (uint32_t)chunks : URA__MAX_CHUNKS;
}

int ura__registry_init(struct ura__registry *r, uint32_t tag)
{
	memset(r, 0, sizeof(*r));
	r->tag = tag;
	/* PROT_NONE and MAP_NORESERVE: address space only, no memory and no commit charge
	 * until grow() opens a chunk. Still, it counts against RLIMIT_AS in full. */
	for (uint32_t n = chunk_budget(); n; n /= 2) {
		void *p = mmap(NULL, (size_t)n * CHUNK_BYTES, PROT_NONE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (p != MAP_FAILED) {
			r->base = p;
			r->max_chunks = n;
			return 0;
		}
	}
	return -ENOMEM;
}

void ura__registry_destroy(struct ura__registry *r)
{
	if (r->base)
		munmap(r->base, (size_t)r->max_chunks * CHUNK_BYTES);
	r->base = NULL;
}

/* Makes chunk c of the reservation usable: zeroed memory, 64 bytes per slot resident
 * once touched, page (so cache-line) aligned. */
static struct ura__slot *chunk_open(struct ura__registry *r, uint32_t c)
{
	if (URA__ALLOC_FAULT())
		return NULL;
	struct ura__slot *chunk = r->base + ((size_t)c << URA__CHUNK_SHIFT);
	if (mprotect(chunk, CHUNK_BYTES, PROT_READ | PROT_WRITE) < 0)
		return NULL;
	return chunk;
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
		struct ura__slot *s = ura__registry_slot_at(r, top - 1);
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
	if (c >= r->max_chunks) {
		atomic_fetch_sub_explicit(&r->nchunks, 1, memory_order_relaxed);
		return -ENOMEM;
	}
	struct ura__slot *chunk = chunk_open(r, c);
	if (!chunk) {
		/* The index stays reserved and never ready; lookups treat it as absent. */
		return -ENOMEM;
	}
	uint32_t base = c << URA__CHUNK_SHIFT;
	for (uint32_t i = 0; i < URA__CHUNK_SLOTS; i++) {
		atomic_init(&chunk[i].gen_state, ura__gs_make(1, URA__SLOT_FREE));
		atomic_init(&chunk[i].next, i + 1 < URA__CHUNK_SLOTS ? base + i + 2 : 0);
	}
	/* Release: publishes the initialised slots to lookups (see the header comment).
	 * fetch_or, not a store: other chunks' bits share the word. */
	atomic_fetch_or_explicit(&r->chunk_ready[c / 64], 1ull << (c % 64), memory_order_release);
	shared_push_chain(r, base + 1, &chunk[URA__CHUNK_SLOTS - 1]);
	return base;
}

int64_t ura__registry_alloc_shared(struct ura__registry *r)
{
	int64_t idx = shared_pop(r);
	return idx < 0 ? grow(r) : idx;
}

#define URA__SPILL_BATCH 64u

void ura__registry_spill(struct ura__registry *r, uint32_t index, struct ura__slot *s)
{
	/* Relaxed: the chain is the loop thread's own until the release push below. */
	atomic_store_explicit(&s->next, r->spill_head, memory_order_relaxed);
	if (!r->spill_head)
		r->spill_tail = index;
	r->spill_head = index + 1;
	if (++r->spill_count < URA__SPILL_BATCH)
		return;
	shared_push_chain(r, r->spill_head - 1, ura__registry_slot_at(r, r->spill_tail));
	r->spill_head = 0;
	r->spill_count = 0;
}

/*
 * Loop tags: bit t of the bitmap is set while a live loop holds tag t. Lock-free: a tag
 * is taken by the fetch_or that sets its bit while it was clear, so exactly one thread
 * takes each free tag; it is given back by one fetch_and. Bit 0 stays set: tag 0 is
 * never given out.
 *
 * The search starts at a cursor that moves on by one per call, not at the lowest free
 * tag: a tag given back is taken again only after the cursor has gone round (about
 * URA__MAX_TAG loops later), so a stale handle of a freed loop, mistakenly given with
 * a session of a newer loop, meets the same tag as late as possible. Loops are made and
 * freed rarely, so a scan of the bitmap costs nothing that matters.
 */
static _Atomic uint64_t tags_held[(URA__MAX_TAG + 1) / 64] = { 1 };
static _Atomic uint32_t tag_cursor;

int ura__registry_tag_get(void)
{
	/* Relaxed: the cursor only spreads the search; the fetch_or below decides. */
	uint32_t start = atomic_fetch_add_explicit(&tag_cursor, 1, memory_order_relaxed);
	for (uint32_t i = 0; i <= URA__MAX_TAG; i++) {
		uint32_t t = (start + i) % (URA__MAX_TAG + 1);
		uint64_t bit = 1ull << (t % 64);
		/* Acquire: pairs with tag_put's release (see the header comment). */
		if (!(atomic_fetch_or_explicit(&tags_held[t / 64], bit, memory_order_acquire) & bit))
			return (int)t;
	}
	return -EMFILE;
}

void ura__registry_tag_put(uint32_t tag)
{
	if (tag == 0 || tag > URA__MAX_TAG)
		return;
	/* Release: the old holder's teardown happens-before the next tag_get's acquire. */
	atomic_fetch_and_explicit(&tags_held[tag / 64], ~(1ull << (tag % 64)),
				  memory_order_release);
}
