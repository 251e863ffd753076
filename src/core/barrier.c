/*
 * Barriers: flush and reset wait for the tasks live at their call. A task's end costs
 * O(1) however many barriers are pending.
 *
 * Tags. Every flush or reset call takes a number from s->barrier_calls (fetch_add, any
 * thread): the barrier's tag g is the value before its increment. Every task is tagged
 * with the counter's value when it is submitted (on the loop thread when linked, on
 * another thread in ura_submit, carried to the loop in the SUBMIT command). A task whose
 * submit happens-before a barrier's call reads a value <= g (it cannot see the later
 * increment); one submitted after the call returned reads > g. So "the tasks live at
 * the call" are the live tasks tagged <= g; tasks submitted concurrently with the call
 * may fall on either side, which the contract allows.
 *
 * Counting. The loop keeps, per session, how many live tasks carry each tag above a base
 * tag: s->tag_counts, a window over (tag_base, tag_base + len]. Tasks tagged tag_base
 * itself are not counted one by one: they are the live tasks less the counted ones
 * (s->tagged), so while no barrier is pending, when every task is tagged tag_base, a
 * task's link and end add nothing to the hot path but two compares. A task tagged below
 * the base counts as tag_base: every barrier that would have waited for it has run, so it
 * was submitted concurrently with them (see ura__barriers_run_due).
 *
 * Running. Barriers run in the order the loop took them (tags made monotone at that
 * point: a barrier taken after another waits for at least as much). Only the oldest, the
 * front, is watched: front_pending counts the live tasks tagged <= its tag, kept up by
 * each link and end below it; when it reaches zero the front runs, the base moves past
 * its tag (the window's counts up to there are zero and are dropped) and the next
 * barrier becomes the front, its pending count summed over the window once. Each window
 * entry is summed and dropped once, so the work is O(1) per task and per barrier,
 * amortised.
 */
#include <errno.h>
#include <string.h>

#include "alloc.h"

#include "session.h"

/* Makes the window hold the entry at i; -ENOMEM. */
static int window_reach(struct ura__tag_counts *w, uint32_t i)
{
	if (i < w->len)
		return 0;
	uint32_t want = i + 1;
	if (w->head + want > w->cap) {
		if (w->head) { /* slide the live part to the start first */
			memmove(w->items, w->items + w->head, (size_t)w->len * sizeof(*w->items));
			w->head = 0;
		}
		if (want > w->cap) {
			uint32_t cap = w->cap ? w->cap : 16;
			while (cap < want)
				cap *= 2;
			uint64_t *grown = ura__realloc(w->items, (size_t)cap * sizeof(*grown));
			if (!grown)
				return -ENOMEM;
			w->items = grown;
			w->cap = cap;
		}
	}
	memset(w->items + w->head + w->len, 0, (size_t)(want - w->len) * sizeof(*w->items));
	w->len = want;
	return 0;
}

uint64_t ura__barrier_tag_add(ura_session *s, uint64_t tag)
{
	struct ura__tag_counts *w = &s->tag_counts;
	uint64_t i = tag - s->tag_base - 1;
	if (i > UINT32_MAX - 1 || window_reach(w, (uint32_t)i) < 0) {
		/* No memory for a newer tag: file the task under the newest tag there is.
		 * Barriers then may wait for it though it came after them (never the
		 * reverse), only until memory is back. */
		if (!w->len)
			return s->tag_base;
		i = w->len - 1;
		tag = s->tag_base + 1 + i;
	}
	w->items[w->head + i]++;
	s->tagged++;
	return tag;
}

void ura__barrier_tag_remove(ura_session *s, uint64_t tag)
{
	struct ura__tag_counts *w = &s->tag_counts;
	w->items[w->head + (tag - s->tag_base - 1)]--;
	s->tagged--;
}

/* Live tasks tagged <= tag. Sums the window up to tag: done once per front. */
static uint64_t pending_up_to(ura_session *s, uint64_t tag)
{
	if (tag < s->tag_base)
		return 0;
	const struct ura__tag_counts *w = &s->tag_counts;
	uint64_t n = ura__session_live(s) - s->tagged; /* tagged tag_base */
	uint64_t upto = tag - s->tag_base;             /* window entries up to tag */
	for (uint64_t i = 0; i < upto && i < w->len; i++)
		n += w->items[w->head + i];
	return n;
}

/* Moves the base to tag (no live task is tagged below it): drops the window's entries
 * up to tag; the one for tag itself becomes the uncounted base. */
static void advance_base(ura_session *s, uint64_t tag)
{
	if (tag <= s->tag_base)
		return;
	struct ura__tag_counts *w = &s->tag_counts;
	uint64_t drop = tag - s->tag_base;
	if (drop > w->len)
		drop = w->len;
	if (drop)
		s->tagged -= w->items[w->head + drop - 1]; /* the others are zero */
	w->head += (uint32_t)drop;
	w->len -= (uint32_t)drop;
	if (!w->len)
		w->head = 0;
	s->tag_base = tag;
}

static void front_setup(ura_session *s)
{
	if (s->barriers)
		s->front_pending = pending_up_to(s, s->barriers->tag);
}

void ura__barriers_run_due(ura_session *s)
{
	struct ura__barrier *b;
	while ((b = s->barriers) && s->front_pending == 0) {
		s->barriers = b->next;
		if (!s->barriers)
			s->barriers_tail = NULL;
		/* Nothing tagged <= b->tag is live: the base moves past it. */
		advance_base(s, b->tag + 1);
		/* The next front is counted before b's callback, which may link tasks. */
		front_setup(s);
		ura__session_barrier_answer(s, b);
	}
}

int ura__barrier_add(ura_session *s, uint64_t tag, bool reset, void (*fn)(ura_session *, void *),
		     void *arg)
{
	struct ura__barrier *b = ura__malloc(sizeof(*b));
	if (!b)
		return -ENOMEM;
	/* Monotone in the order taken: two calls racing from different threads may reach
	 * the loop in the other order; the later one then waits a little longer. */
	if (tag < s->last_barrier_tag)
		tag = s->last_barrier_tag;
	s->last_barrier_tag = tag;
	*b = (struct ura__barrier){ .tag = tag, .reset = reset, .fn = fn, .arg = arg };
	if (s->barriers_tail) {
		s->barriers_tail->next = b;
		s->barriers_tail = b;
		return 0;
	}
	s->barriers = s->barriers_tail = b;
	front_setup(s);
	ura__barriers_run_due(s);
	return 0;
}

void ura__barriers_free(ura_session *s)
{
	while (s->barriers) {
		struct ura__barrier *b = s->barriers;
		s->barriers = b->next;
		ura__free(b);
	}
	s->barriers_tail = NULL;
	ura__free(s->tag_counts.items);
	memset(&s->tag_counts, 0, sizeof(s->tag_counts));
}
