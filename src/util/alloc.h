/*
 * Allocation for runtime objects: mimalloc, whose per-thread heaps keep allocation off
 * shared locks. ThreadSanitizer builds (URA_SYSTEM_MALLOC) use the C library instead:
 * TSan intercepts malloc/free and so knows that memory freed on one thread and reused on
 * another is not a race, which it cannot see inside an uninstrumented mimalloc.
 */
#ifndef URA_ALLOC_H
#define URA_ALLOC_H

#include <stdlib.h>
#include <string.h>

#include "fault.h"

/* A test can make any allocation fail (fault.h); nothing in a release build. */
#define URA__ALLOC_FAULT() (ura__fault(URA__FAULT_ALLOC) != 0)

#ifdef URA_SYSTEM_MALLOC
static inline void *ura__malloc(size_t n) { return URA__ALLOC_FAULT() ? NULL : malloc(n); }
static inline void *ura__zalloc(size_t n) { return URA__ALLOC_FAULT() ? NULL : calloc(1, n); }
static inline void *ura__realloc(void *p, size_t n)
{
	return URA__ALLOC_FAULT() ? NULL : realloc(p, n);
}
static inline void ura__free(void *p) { free(p); }
static inline void *ura__malloc_aligned(size_t n, size_t align)
{
	return URA__ALLOC_FAULT() ? NULL : aligned_alloc(align, (n + align - 1) / align * align);
}
static inline void *ura__zalloc_aligned(size_t n, size_t align)
{
	size_t rounded = (n + align - 1) / align * align;
	void *p = URA__ALLOC_FAULT() ? NULL : aligned_alloc(align, rounded);
	if (p)
		memset(p, 0, rounded);
	return p;
}
#else
#include <mimalloc.h>
static inline void *ura__malloc(size_t n) { return URA__ALLOC_FAULT() ? NULL : mi_malloc(n); }
static inline void *ura__zalloc(size_t n) { return URA__ALLOC_FAULT() ? NULL : mi_zalloc(n); }
static inline void *ura__realloc(void *p, size_t n)
{
	return URA__ALLOC_FAULT() ? NULL : mi_realloc(p, n);
}
static inline void ura__free(void *p) { mi_free(p); }
static inline void *ura__malloc_aligned(size_t n, size_t align)
{
	return URA__ALLOC_FAULT() ? NULL : mi_malloc_aligned(n, align);
}
static inline void *ura__zalloc_aligned(size_t n, size_t align)
{
	return URA__ALLOC_FAULT() ? NULL : mi_zalloc_aligned(n, align);
}
#endif

/*
 * The alignment that keeps an object of n bytes (at most a page) inside one page: the
 * smallest power of two not below n, and at least a cache line. The loop and its
 * sessions are touched on every iteration right after io_uring_enter, and on kernels
 * with page-table isolation every syscall empties the TLB: each page the hot path
 * touches then costs a page walk, so an object straddling two pages costs two.
 */
static inline size_t ura__one_page_align(size_t n)
{
	size_t a = 64;
	while (a < n && a < 4096)
		a *= 2;
	return a;
}

#endif
