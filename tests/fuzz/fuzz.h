/*
 * What every libFuzzer harness in tests/fuzz/ shares. Not a harness itself: scripts/fuzz
 * builds each tests/fuzz/fuzz_NAME.c, and each harness includes this file.
 */
#ifndef URA_FUZZ_H
#define URA_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* An invariant of the harness: a failure aborts, so libFuzzer keeps the input. */
#define CHECK(cond)                                                                     \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond,        \
				__FILE__, __LINE__);                                    \
			abort();                                                        \
		}                                                                       \
	} while (0)

/* libFuzzer's entry point, which each harness defines (-Wmissing-prototypes). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
