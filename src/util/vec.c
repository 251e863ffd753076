/* Growable arrays (vec.h): doubling capacity, allocation failure reported, never fatal. */
#include <errno.h>
#include <string.h>

#include "alloc.h"
#include "vec.h"

int ura__vec_reserve(struct ura__vec *v, size_t size)
{
	if (v->len < v->cap)
		return 0;
	uint32_t cap = v->cap ? v->cap * 2 : 64;
	void *grown = ura__realloc(v->items, (size_t)cap * size);
	if (!grown)
		return -ENOMEM;
	v->items = grown;
	v->cap = cap;
	return 0;
}

int ura__vec_push(struct ura__vec *v, const void *item, size_t size)
{
	if (ura__vec_reserve(v, size) < 0)
		return -ENOMEM;
	memcpy((char *)v->items + (size_t)v->len * size, item, size);
	v->len++;
	return 0;
}

void ura__vec_free(struct ura__vec *v)
{
	ura__free(v->items);
	memset(v, 0, sizeof(*v));
}
