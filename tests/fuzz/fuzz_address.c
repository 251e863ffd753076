/*
 * libFuzzer harness for address parsing (src/net/address.c). Run by scripts/fuzz.
 *
 * fuzz-sources: src/net/address.c
 *
 * Input: the text, made a C string (so a NUL in the input ends it early). Only the pure
 * ura__address_parse_numeric is fuzzed, never name resolution. Invariants checked:
 *   - the result is 0, -EINVAL or -ENAMETOOLONG (only for unix:); *out is untouched on
 *     error; text over URA__ADDRESS_MAX_TEXT bytes is -EINVAL;
 *   - a parsed address is well formed: family and ss_family agree, len is right for
 *     the family, the bytes of ss past len are zero;
 *   - ura__address_parse gives the same bytes (a literal never reaches the resolver);
 *   - format succeeds, its length is exact, one byte less room is -ENOBUFS; parsing
 *     the text gives the same address byte for byte, and formatting that gives the
 *     same text.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>

#include "address.h"

#include "fuzz.h"

static void check_shape(const struct ura__address *a)
{
	CHECK(a->ss.ss_family == a->family);
	switch (a->family) {
	case AF_UNIX: {
		struct sockaddr_un un;
		size_t off = offsetof(struct sockaddr_un, sun_path);
		memcpy(&un, &a->ss, sizeof(un));
		/* A path byte and its NUL, or the abstract NUL and a name byte. */
		CHECK(a->len >= off + 2 && a->len <= sizeof(un));
		size_t n = a->len - off;
		if (un.sun_path[0] == '\0')
			CHECK(memchr(un.sun_path + 1, '\0', n - 1) == NULL);
		else
			CHECK(strlen(un.sun_path) == n - 1);
		break;
	}
	case AF_INET:
		CHECK(a->len == sizeof(struct sockaddr_in));
		break;
	case AF_INET6:
		CHECK(a->len == sizeof(struct sockaddr_in6));
		break;
	default:
		CHECK(!"unknown family");
	}
	const unsigned char *p = (const unsigned char *)&a->ss;
	for (size_t i = a->len; i < sizeof(a->ss); i++)
		CHECK(p[i] == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	CHECK(text);
	memcpy(text, data, size);
	text[size] = '\0';
	size_t len = strlen(text);

	struct ura__address a, untouched;
	memset(&untouched, 0xa5, sizeof(untouched));
	a = untouched;
	int r = ura__address_parse_numeric(text, &a);
	if (r != 0) {
		CHECK(r == -EINVAL || r == -ENAMETOOLONG);
		CHECK(r != -ENAMETOOLONG || strncmp(text, "unix:", 5) == 0);
		CHECK(memcmp(&a, &untouched, sizeof(a)) == 0);
		free(text);
		return 0;
	}
	CHECK(len <= URA__ADDRESS_MAX_TEXT);
	check_shape(&a);

	struct ura__address resolved;
	CHECK(ura__address_parse(text, &resolved) == 0);
	CHECK(memcmp(&a, &resolved, sizeof(a)) == 0);

	char out[URA__ADDRESS_STRLEN];
	int n = ura__address_format(&a, out, sizeof(out));
	CHECK(n > 0 && (size_t)n == strlen(out));
	CHECK(strncmp(out, a.family == AF_UNIX ? "unix:" : "tcp:", a.family == AF_UNIX ? 5 : 4)
	      == 0);
	char small[URA__ADDRESS_STRLEN];
	CHECK(ura__address_format(&a, small, (size_t)n) == -ENOBUFS);
	CHECK(small[0] == '\0');

	struct ura__address b;
	CHECK(ura__address_parse_numeric(out, &b) == 0);
	CHECK(b.len == a.len && b.family == a.family);
	CHECK(memcmp(&a.ss, &b.ss, sizeof(a.ss)) == 0);

	char again[URA__ADDRESS_STRLEN];
	CHECK(ura__address_format(&b, again, sizeof(again)) == n);
	CHECK(strcmp(out, again) == 0);

	free(text);
	return 0;
}
