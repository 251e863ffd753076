/* Lock-free task registry: slots under generation-tagged handles. See registry.c. */
#ifndef URA_REGISTRY_H
#define URA_REGISTRY_H

#include <stdatomic.h>
#include <stdint.h>
#include <linux/time_types.h>

#include "ura.h"

/* Slot states, kept in the low bits of slot->gen_state; the generation is above them. */
enum ura__slot_state {
	URA__SLOT_FREE = 0,
	URA__SLOT_PENDING,   /* accepted; its SQE is not in the ring yet (inbox or backlog) */
	URA__SLOT_SUSPENDED, /* accepted with URA_SUBMIT_SUSPENDED, waiting for resume */
	URA__SLOT_RUNNING,   /* its SQE is in the ring */
	URA__SLOT_CANCELING, /* cancel requested; the terminal call is still to come */
};

#define URA__STATE_BITS 3u
#define URA__STATE_MASK ((1u << URA__STATE_BITS) - 1)
/* The generation is 31 bits so a handle never sets bit 63 (reserved for internal tags). */
#define URA__GEN_MASK 0x7fffffffu

struct ura__submit_cmd;

/*
 * One task. 64 bytes, one cache line. Fields marked "loop" are touched only by the loop
 * thread once the task is accepted; gen_state is the only field other threads read.
 */
struct ura__slot {
	/* (generation << 32) | state. Any thread reads; transitions are CAS or loop-owned
	 * stores (see registry.c for the protocol). */
	_Atomic uint64_t gen_state;
	/* Free-list link while free; session task-list links while live (loop). Atomic
	 * because a thread popping the free list may read a stale link (see registry.c). */
	_Atomic uint32_t next;
	uint32_t prev;                   /* loop: session task list */
	uint32_t tag_lo;                 /* loop: the barrier tag it was linked with (barrier.c), */
	uint8_t opcode;                  /* for get_tasks kinds */
	uint8_t lflags;                  /* loop: URA__TF_* */
	uint16_t tag_hi;                 /* ...48 bits with these (ura__slot_tag) */
	/* Written before the slot's state is published (release), read by any thread after
	 * an acquire load of gen_state with a matching generation. */
	_Atomic(ura_session *) session;
	ura_task_fn fn;
	void *arg;
	union {
		struct __kernel_timespec ts;    /* ura_timeout: the kernel reads it in flight */
		struct ura__submit_cmd *pending; /* SQE copy while PENDING/SUSPENDED (task.c) */
	} u;
};
_Static_assert(sizeof(struct ura__slot) <= 64, "a registry slot must fit one cache line");

/* A slot's 48-bit barrier tag (tag_lo and tag_hi). Loop thread. */
static inline uint64_t ura__slot_tag(const struct ura__slot *s)
{
	return (uint64_t)s->tag_hi << 32 | s->tag_lo;
}

static inline void ura__slot_set_tag(struct ura__slot *s, uint64_t tag)
{
	s->tag_lo = (uint32_t)tag;
	s->tag_hi = (uint16_t)(tag >> 32);
}

/* Slot flags (slot->lflags), loop thread only. */
enum {
	URA__TF_IN_RING = 1u << 0,     /* its SQE has been handed to the ring */
	URA__TF_TS_IN_SLOT = 1u << 1,  /* u.ts holds the timeout the SQE points at */
	URA__TF_HAS_PENDING = 1u << 2, /* u.pending owns a heap SQE copy */
	URA__TF_CANCEL_SENT = 1u << 3, /* an ASYNC_CANCEL for it is queued or in flight */
	URA__TF_LINKED = 1u << 4,      /* counted live by its session (and on its list) */
	URA__TF_BACKLOG = 1u << 5,     /* waiting in the loop's backlog for SQ room */
	URA__TF_TIMEOUT = 1u << 6,     /* ura_timeout: addr must point at the slot's u.ts */
	URA__TF_QUEUED = 1u << 7,      /* accepted on another thread, counted in loop->queued */
};

#define URA__CHUNK_SHIFT 12u
#define URA__CHUNK_SLOTS (1u << URA__CHUNK_SHIFT)
/* 4M slots: 256 MiB of address space, reserved, not used; less under RLIMIT_AS. */
#define URA__MAX_CHUNKS 1024u
#define URA__LOCAL_CACHE_MAX 1024u
/* A handle's low 32 bits: the loop's tag above the slot index, so a handle from another
 * live loop is never mistaken for one of this loop's tasks. */
#define URA__INDEX_BITS 22u
#define URA__INDEX_MASK ((1u << URA__INDEX_BITS) - 1)
/* Tags 1..1023: as many loops can be alive at once (tag 0 is never given out). */
#define URA__MAX_TAG ((1u << (32 - URA__INDEX_BITS)) - 1)
_Static_assert((uint64_t)URA__MAX_CHUNKS * URA__CHUNK_SLOTS - 1 <= URA__INDEX_MASK,
	       "slot indexes must fit the handle");

struct ura__registry {
	uint32_t tag;        /* 1..URA__MAX_TAG, set at init, part of every handle */
	uint32_t max_chunks; /* chunks the reservation holds (URA__MAX_CHUNKS unless short) */
	/* One reservation of address space; chunk c is made usable in place, so slot i is
	 * always base[i] and a slot never moves. */
	struct ura__slot *base;
	/* Bit c set (release) once chunk c is usable: lookups of untrusted handles check it.
	 * A bitmap, not a byte per chunk: it keeps the loop object small enough that the
	 * fields every iteration touches share one page (see ura_loop_new). */
	_Atomic uint64_t chunk_ready[URA__MAX_CHUNKS / 64];
	_Atomic uint32_t nchunks; /* chunk indexes handed out (some may still be filling) */
	/* Shared free stack: (tag << 32) | (index + 1); 0 in the low half means empty.
	 * On its own cache line: every allocating thread writes it. */
	_Alignas(64) _Atomic uint64_t free_head;
	/* Loop-thread free cache: no atomics needed, only the loop thread touches it. */
	_Alignas(64) uint32_t local_head; /* index + 1, 0 = empty */
	uint32_t local_count;
	/* Slots freed while the cache is full, pushed to the shared stack in one CAS per
	 * URA__SPILL_BATCH (registry.c): one contended CAS per slot was measurable when
	 * other threads allocate as fast as the loop frees. */
	uint32_t spill_head;  /* index + 1 of the newest, 0 = none */
	uint32_t spill_tail;  /* index of the oldest: the chain's last link */
	uint32_t spill_count;
};

/* Reserves the address space (all of it, or under RLIMIT_AS an eighth of what the limit
 * leaves: registry.c); -ENOMEM when not even one chunk can be reserved. tag is one from
 * ura__registry_tag_get (a test may pick its own). */
int ura__registry_init(struct ura__registry *r, uint32_t tag);
void ura__registry_destroy(struct ura__registry *r);

/* A loop tag no live loop holds, 1..URA__MAX_TAG, or -EMFILE when every one is held.
 * Any thread. */
int ura__registry_tag_get(void);
/* Gives a tag back for another loop to use, once no handle can reach its loop's registry
 * any more: every session of the loop has had its final event (ura_loop_free). Any
 * thread. */
void ura__registry_tag_put(uint32_t tag);

/* The slot at an index the runtime itself produced (a live task's handle from its own
 * CQE or list, a free-list entry): no checks, one address computation. */
static inline struct ura__slot *ura__registry_slot_at(const struct ura__registry *r,
						      uint32_t index)
{
	return r->base + index;
}

/* The slot at any index, or NULL when its chunk is not in use (yet). */
static inline struct ura__slot *ura__registry_slot(struct ura__registry *r, uint32_t index)
{
	uint32_t c = index >> URA__CHUNK_SHIFT;
	if (c >= r->max_chunks)
		return NULL;
	/* Acquire: pairs with the release fetch_or that published the chunk in grow(). */
	uint64_t ready = atomic_load_explicit(&r->chunk_ready[c / 64], memory_order_acquire);
	if (!(ready >> (c % 64) & 1))
		return NULL;
	return ura__registry_slot_at(r, index);
}

/* The shared stack and growth, behind ura__registry_alloc. */
int64_t ura__registry_alloc_shared(struct ura__registry *r);
/* Gives one freed slot to the shared stack, in batches (the local cache is full). Loop
 * thread. */
void ura__registry_spill(struct ura__registry *r, uint32_t index, struct ura__slot *s);

/* Allocates a slot from any thread (on_loop: the caller is the loop thread, which may use
 * the private cache). The slot's state is FREE with a fresh generation; returns its
 * index, or -ENOMEM. */
static inline int64_t ura__registry_alloc(struct ura__registry *r, bool on_loop)
{
	if (!on_loop) /* first: the cache is not even to be read off the loop thread */
		return ura__registry_alloc_shared(r);
	uint32_t head = r->local_head;
	if (!head)
		return ura__registry_alloc_shared(r);
	struct ura__slot *s = ura__registry_slot_at(r, head - 1);
	/* Relaxed: the cache is the loop thread's own; next is atomic only because of the
	 * shared stack's stale reads (registry.c). */
	r->local_head = atomic_load_explicit(&s->next, memory_order_relaxed);
	r->local_count--;
	return head - 1;
}

static inline uint64_t ura__gs_make(uint32_t gen, unsigned state)
{
	return ((uint64_t)gen << 32) | state;
}
static inline uint32_t ura__gs_gen(uint64_t gs) { return (uint32_t)(gs >> 32); }
static inline unsigned ura__gs_state(uint64_t gs) { return (unsigned)(gs & URA__STATE_MASK); }

/*
 * Retires the slot of a task of generation gen: FREE with the next generation (never 0),
 * so the task's handle names nothing any more and lookups answer -ENOENT / COMPLETED.
 * The slot is not reusable yet: ura__registry_release hands it out again, after the
 * task's calls have returned. Loop thread only.
 */
static inline void ura__registry_retire(struct ura__slot *s, uint32_t gen)
{
	gen = (gen + 1) & URA__GEN_MASK;
	gen += gen == 0;
	/* Release: orders the task's fields before the state for acquire readers. A thread
	 * comparing generations sees this store before any later one to gen_state (one
	 * variable's stores have one order), so it sees the task gone before any reuse,
	 * which comes after ura__registry_release. */
	atomic_store_explicit(&s->gen_state, ura__gs_make(gen, URA__SLOT_FREE), memory_order_release);
}

/* Returns a retired slot to the registry. Loop thread only. */
static inline void ura__registry_release(struct ura__registry *r, uint32_t index,
					 struct ura__slot *s)
{
	if (r->local_count >= URA__LOCAL_CACHE_MAX) {
		ura__registry_spill(r, index, s);
		return;
	}
	atomic_store_explicit(&s->next, r->local_head, memory_order_relaxed);
	r->local_head = index + 1;
	r->local_count++;
}

/* Retires and returns a slot whose task never started (a refused submit). Loop thread. */
static inline void ura__registry_free(struct ura__registry *r, uint32_t index)
{
	struct ura__slot *s = ura__registry_slot_at(r, index);
	/* Relaxed: only the loop thread writes a live slot's generation. */
	ura__registry_retire(s, ura__gs_gen(atomic_load_explicit(&s->gen_state, memory_order_relaxed)));
	ura__registry_release(r, index, s);
}

static inline ura_task ura__handle_make(const struct ura__registry *r, uint32_t gen,
					uint32_t index)
{
	return ((uint64_t)gen << 32) | ((uint64_t)r->tag << URA__INDEX_BITS) | index;
}
static inline uint32_t ura__handle_gen(ura_task t) { return (uint32_t)(t >> 32); }
static inline uint32_t ura__handle_index(ura_task t) { return (uint32_t)t & URA__INDEX_MASK; }
static inline uint32_t ura__handle_tag(ura_task t) { return (uint32_t)t >> URA__INDEX_BITS; }

/* The slot a handle names, or NULL when the handle is malformed or out of range. The
 * caller still compares generations: the slot may hold a newer task. */
static inline struct ura__slot *ura__registry_lookup(struct ura__registry *r, ura_task t)
{
	if (t == 0 || (t >> 63) || ura__handle_gen(t) == 0 || ura__handle_tag(t) != r->tag)
		return NULL;
	return ura__registry_slot(r, ura__handle_index(t));
}

#endif
