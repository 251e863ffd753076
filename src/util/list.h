/*
 * One intrusive list for every list of the runtime: circular and doubly linked around a
 * head that is itself a node, so inserting and removing never test for the ends. A node
 * is embedded in its owner; ura__list_entry gets the owner back. Not thread-safe: each
 * list says which thread (or lock) owns it.
 */
#ifndef URA_LIST_H
#define URA_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct ura__list {
	struct ura__list *next, *prev;
};

/* An empty list (or a node on none). A zeroed head is not a list: init it. */
static inline void ura__list_init(struct ura__list *head)
{
	head->next = head->prev = head;
}

static inline bool ura__list_empty(const struct ura__list *head)
{
	return head->next == head;
}

/* Adds node at the back (the newest). */
static inline void ura__list_push_back(struct ura__list *head, struct ura__list *node)
{
	node->prev = head->prev;
	node->next = head;
	head->prev->next = node;
	head->prev = node;
}

/* Takes node off its list; it is then on none (empty, as after init). */
static inline void ura__list_remove(struct ura__list *node)
{
	node->prev->next = node->next;
	node->next->prev = node->prev;
	ura__list_init(node);
}

/* The front (oldest) node, or NULL when empty. */
static inline struct ura__list *ura__list_front(const struct ura__list *head)
{
	return ura__list_empty(head) ? NULL : head->next;
}

#define ura__list_entry(node, type, member) \
	((type *)((char *)(node) - offsetof(type, member)))

/* Walks the list; the loop body may remove the current node (next is read first). */
#define ura__list_for_each_safe(pos, tmp, head)                                        \
	for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head);                \
	     (pos) = (tmp), (tmp) = (pos)->next)

#endif
