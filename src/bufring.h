/* Provided-buffer rings for multishot recv. */
#ifndef URA_BUFRING_H
#define URA_BUFRING_H

#include "ura.h"

uint16_t ura__buf_ring_group(const ura_buf_ring *br);

#endif
