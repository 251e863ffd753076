/* A growable array of fixed-size items, for the loop thread's queues. */
#ifndef URA_VEC_H
#define URA_VEC_H

#include <stddef.h>
#include <stdint.h>

struct ura__vec {
	void *items;
	uint32_t len, cap;
};

/* Room for one more item: after 0, the next push cannot fail. Returns -ENOMEM. */
int ura__vec_reserve(struct ura__vec *v, size_t size);
/* Appends a copy of item (size bytes). Returns 0 or -ENOMEM (v unchanged). */
int ura__vec_push(struct ura__vec *v, const void *item, size_t size);
/* Frees the items; v is empty and usable again. */
void ura__vec_free(struct ura__vec *v);

#endif
