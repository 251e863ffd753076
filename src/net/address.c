/*
 * Connection addresses (address.h): text to socket address and back.
 *
 * Socket addresses are built in a local struct of their own type and copied into the
 * zeroed sockaddr_storage, never written through a cast pointer, so the bytes past len
 * are zero and two parses of one address compare equal with memcmp. Only libc is used.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* getaddrinfo, inet_aton, if_nametoindex under -std=c11 */
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "address.h"

#define SUN_PATH_OFF offsetof(struct sockaddr_un, sun_path)
#define SUN_PATH_SIZE sizeof(((struct sockaddr_un *)0)->sun_path)

/* Host name limits (RFC 1035): 63-byte labels, 253 bytes without the root's dot. */
#define DNS_LABEL_MAX 63
#define DNS_NAME_MAX 253

_Static_assert(SUN_PATH_OFF + SUN_PATH_SIZE <= sizeof(struct sockaddr_storage),
	       "sockaddr_un fits sockaddr_storage");
_Static_assert(sizeof("unix:@") - 1 + SUN_PATH_SIZE - 1 < URA__ADDRESS_STRLEN,
	       "URA__ADDRESS_STRLEN holds the longest unix text");
_Static_assert(sizeof("tcp:[%4294967295]:65535") - 1 + INET6_ADDRSTRLEN <= URA__ADDRESS_STRLEN,
	       "URA__ADDRESS_STRLEN holds the longest tcp text");

static void store(struct ura__address *out, int family, const void *sa, size_t len)
{
	memset(out, 0, sizeof(*out));
	memcpy(&out->ss, sa, len);
	out->len = (socklen_t)len;
	out->family = family;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Decimal digits only, at least one, value at most max. */
static int parse_decimal(const char *s, uint32_t max, uint32_t *out)
{
	uint64_t v = 0;
	if (*s == '\0')
		return -EINVAL;
	for (; *s; s++) {
		if (!is_digit(*s))
			return -EINVAL;
		v = v * 10 + (uint64_t)(*s - '0');
		if (v > max)
			return -EINVAL;
	}
	*out = (uint32_t)v;
	return 0;
}

/* ------------------------------------------------------------------- unix */

static int parse_unix(const char *p, struct ura__address *out)
{
	struct sockaddr_un un;
	size_t len;

	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	if (p[0] == '@') {
		/* Abstract: a leading NUL, then the name; the length, not a NUL, ends it. */
		size_t n = strlen(p + 1);
		if (n == 0)
			return -EINVAL;
		if (1 + n > SUN_PATH_SIZE)
			return -ENAMETOOLONG;
		memcpy(un.sun_path + 1, p + 1, n);
		len = SUN_PATH_OFF + 1 + n;
	} else {
		size_t n = strlen(p);
		if (n == 0)
			return -EINVAL;
		if (n + 1 > SUN_PATH_SIZE)
			return -ENAMETOOLONG;
		memcpy(un.sun_path, p, n + 1);
		len = SUN_PATH_OFF + n + 1;
	}
	store(out, AF_UNIX, &un, len);
	return 0;
}

/* -------------------------------------------------------------------- tcp */

/*
 * A host name as RFC 1123 has it, plus '_' (in use in the wild): labels of letters,
 * digits, '-' and '_', 1..63 bytes, not starting or ending with '-', at most 253 bytes,
 * one trailing dot allowed. A last label of digits only is refused: no top-level
 * domain is numeric, so "1.2.3.4.5" is a mistyped literal, not a name to look up.
 */
static bool valid_host_name(const char *h)
{
	size_t n = strlen(h), label = 0;
	bool all_digits = true;

	if (n > 0 && h[n - 1] == '.')
		n--;
	if (n == 0 || n > DNS_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = h[i];
		if (c == '.') {
			if (label == 0 || h[i - 1] == '-')
				return false;
			label = 0;
			all_digits = true;
			continue;
		}
		char lower = (char)(c | 0x20);
		bool digit = is_digit(c);
		if (!digit && !(lower >= 'a' && lower <= 'z') && c != '-' && c != '_')
			return false;
		if (label == 0 && c == '-')
			return false;
		if (++label > DNS_LABEL_MAX)
			return false;
		if (!digit)
			all_digits = false;
	}
	return label > 0 && h[n - 1] != '-' && !all_digits;
}

static int set_in4(const struct in_addr *ip, uint16_t port, struct ura__address *out)
{
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(port);
	sin.sin_addr = *ip;
	store(out, AF_INET, &sin, sizeof(sin));
	return 0;
}

/* The part of a bracketed literal after '%': a decimal id, or (resolving) a name. */
static int parse_scope(const char *s, bool resolve, uint32_t *out)
{
	if (*s == '\0')
		return -EINVAL;
	if (is_digit(*s))
		return parse_decimal(s, UINT32_MAX, out);
	if (!resolve || strlen(s) >= IF_NAMESIZE)
		return -EINVAL;
	/* Asks the kernel (a socket and an ioctl): not pure, so not in numeric mode. */
	unsigned idx = if_nametoindex(s);
	if (idx == 0)
		return -ENOENT;
	*out = idx;
	return 0;
}

/* host: the text between the brackets, modified in place. */
static int parse_in6(char *host, uint16_t port, bool resolve, struct ura__address *out)
{
	struct sockaddr_in6 sin6;
	uint32_t scope = 0;
	char *pct = strchr(host, '%');

	if (pct)
		*pct = '\0';
	memset(&sin6, 0, sizeof(sin6));
	if (inet_pton(AF_INET6, host, &sin6.sin6_addr) != 1)
		return -EINVAL;
	if (pct) {
		int r = parse_scope(pct + 1, resolve, &scope);
		if (r < 0)
			return r;
	}
	sin6.sin6_family = AF_INET6;
	sin6.sin6_port = htons(port);
	sin6.sin6_scope_id = scope;
	store(out, AF_INET6, &sin6, sizeof(sin6));
	return 0;
}

static int errno_of_eai(int rc)
{
	switch (rc) {
	case EAI_NONAME:
#ifdef EAI_NODATA
	case EAI_NODATA:
#endif
#ifdef EAI_ADDRFAMILY
	case EAI_ADDRFAMILY:
#endif
		return -ENOENT;
	case EAI_MEMORY:
		return -ENOMEM;
	case EAI_SYSTEM:
		return errno > 0 ? -errno : -EHOSTUNREACH;
	default: /* EAI_AGAIN, EAI_FAIL, ... */
		return -EHOSTUNREACH;
	}
}

static int resolve_name(const char *host, uint16_t port, struct ura__address *out)
{
	struct addrinfo hints, *res = NULL;
	int r = -ENOENT;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	/* No AI_ADDRCONFIG: on a host whose only interface is lo it hides the loopback
	 * answers, and that is where "localhost" must work most. */
	int rc = getaddrinfo(host, NULL, &hints, &res);
	if (rc != 0)
		return errno_of_eai(rc);
	for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		if (ai->ai_family == AF_INET && ai->ai_addrlen == sizeof(struct sockaddr_in)) {
			struct sockaddr_in sin;
			memcpy(&sin, ai->ai_addr, sizeof(sin));
			r = set_in4(&sin.sin_addr, port, out);
			break;
		}
		if (ai->ai_family == AF_INET6 && ai->ai_addrlen == sizeof(struct sockaddr_in6)) {
			struct sockaddr_in6 sin6;
			memcpy(&sin6, ai->ai_addr, sizeof(sin6));
			sin6.sin6_port = htons(port);
			store(out, AF_INET6, &sin6, sizeof(sin6));
			r = 0;
			break;
		}
	}
	freeaddrinfo(res);
	return r;
}

static int parse_tcp(const char *p, bool resolve, struct ura__address *out)
{
	/* Room for the longest name with its root dot; bracketed literals are shorter. */
	char host[DNS_NAME_MAX + 2];
	const char *host_start, *host_end, *port_text;
	bool bracketed = p[0] == '[';
	uint32_t port;

	if (bracketed) {
		host_start = p + 1;
		host_end = strchr(host_start, ']');
		if (!host_end || host_end[1] != ':')
			return -EINVAL;
		port_text = host_end + 2;
	} else {
		/* A host never holds ':', so the first one ends it; an unbracketed IPv6
		 * literal leaves ':' in the port text and fails there. */
		host_start = p;
		host_end = strchr(p, ':');
		if (!host_end)
			return -EINVAL;
		port_text = host_end + 1;
	}
	size_t n = (size_t)(host_end - host_start);
	if (n == 0 || n >= sizeof(host))
		return -EINVAL;
	memcpy(host, host_start, n);
	host[n] = '\0';
	/* The port first: a bad one never costs a name lookup. */
	int r = parse_decimal(port_text, UINT16_MAX, &port);
	if (r < 0)
		return r;

	if (bracketed)
		return parse_in6(host, (uint16_t)port, resolve, out);

	struct in_addr ip;
	if (inet_pton(AF_INET, host, &ip) == 1)
		return set_in4(&ip, (uint16_t)port, out);
	/* inet_aton (and so getaddrinfo) also takes 127.1, 0x7f000001 and octal 010.0.0.1;
	 * one spelling per address: those are refused, not resolved. */
	if (inet_aton(host, &ip) != 0)
		return -EINVAL;
	if (!valid_host_name(host) || !resolve)
		return -EINVAL;
	return resolve_name(host, (uint16_t)port, out);
}

/* ----------------------------------------------------------------- parse */

static int parse(const char *text, struct ura__address *out, bool resolve)
{
	if (!text || !out)
		return -EINVAL;
	if (strnlen(text, URA__ADDRESS_MAX_TEXT + 1) > URA__ADDRESS_MAX_TEXT)
		return -EINVAL;
	if (strncmp(text, "unix:", 5) == 0)
		return parse_unix(text + 5, out);
	if (strncmp(text, "tcp:", 4) == 0)
		return parse_tcp(text + 4, resolve, out);
	return -EINVAL;
}

int ura__address_parse(const char *text, struct ura__address *out)
{
	return parse(text, out, true);
}

int ura__address_parse_numeric(const char *text, struct ura__address *out)
{
	return parse(text, out, false);
}

/* ---------------------------------------------------------------- format */

static bool family_ok(const struct ura__address *a)
{
	if (a->family != AF_UNIX && a->family != AF_INET && a->family != AF_INET6)
		return false;
	return a->ss.ss_family == a->family;
}

/* Into tmp (URA__ADDRESS_STRLEN bytes); returns the length or -errno. */
static int format_unix(const struct ura__address *a, char *tmp)
{
	struct sockaddr_un un;

	if (a->len <= SUN_PATH_OFF || a->len > sizeof(un))
		return -EINVAL; /* unnamed (len is just the family), or nonsense */
	memcpy(&un, &a->ss, sizeof(un));
	size_t n = a->len - SUN_PATH_OFF;
	if (un.sun_path[0] == '\0') {
		size_t name = n - 1;
		if (name == 0 || memchr(un.sun_path + 1, '\0', name))
			return -EINVAL;
		memcpy(tmp, "unix:@", 6);
		memcpy(tmp + 6, un.sun_path + 1, name);
		tmp[6 + name] = '\0';
		return (int)(6 + name);
	}
	/* The kernel stops a path at its first NUL, and may report the length with or
	 * without it: so does the text. A path filling all of sun_path has no room for
	 * the NUL parse insists on. */
	size_t plen = strnlen(un.sun_path, n);
	if (plen >= SUN_PATH_SIZE)
		return -ENAMETOOLONG;
	memcpy(tmp, "unix:", 5);
	memcpy(tmp + 5, un.sun_path, plen);
	tmp[5 + plen] = '\0';
	return (int)(5 + plen);
}

static int format_in4(const struct ura__address *a, char *tmp)
{
	struct sockaddr_in sin;
	char ip[INET_ADDRSTRLEN];

	if (a->len != sizeof(sin))
		return -EINVAL;
	memcpy(&sin, &a->ss, sizeof(sin));
	if (!inet_ntop(AF_INET, &sin.sin_addr, ip, sizeof(ip)))
		return -EINVAL;
	return snprintf(tmp, URA__ADDRESS_STRLEN, "tcp:%s:%u", ip, (unsigned)ntohs(sin.sin_port));
}

static int format_in6(const struct ura__address *a, char *tmp)
{
	struct sockaddr_in6 sin6;
	char ip[INET6_ADDRSTRLEN];

	if (a->len != sizeof(sin6))
		return -EINVAL;
	memcpy(&sin6, &a->ss, sizeof(sin6));
	if (!inet_ntop(AF_INET6, &sin6.sin6_addr, ip, sizeof(ip)))
		return -EINVAL;
	unsigned port = ntohs(sin6.sin6_port);
	if (sin6.sin6_scope_id != 0)
		return snprintf(tmp, URA__ADDRESS_STRLEN, "tcp:[%s%%%u]:%u", ip,
				(unsigned)sin6.sin6_scope_id, port);
	return snprintf(tmp, URA__ADDRESS_STRLEN, "tcp:[%s]:%u", ip, port);
}

int ura__address_format(const struct ura__address *a, char *buf, size_t cap)
{
	char tmp[URA__ADDRESS_STRLEN];
	int n;

	if (!buf)
		return -EINVAL;
	if (cap > 0)
		buf[0] = '\0';
	if (!a || !family_ok(a))
		return -EINVAL;
	if (a->family == AF_UNIX)
		n = format_unix(a, tmp);
	else if (a->family == AF_INET)
		n = format_in4(a, tmp);
	else
		n = format_in6(a, tmp);
	if (n < 0)
		return n;
	if ((size_t)n >= URA__ADDRESS_STRLEN)
		return -EINVAL; /* cannot happen: see the static asserts */
	if ((size_t)n >= cap)
		return -ENOBUFS;
	memcpy(buf, tmp, (size_t)n + 1);
	return n;
}

/* ---------------------------------------------------------------- socket */

int ura__address_socket(const struct ura__address *a)
{
	if (!a || !family_ok(a))
		return -EINVAL;
	int fd = socket(a->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	return fd < 0 ? -errno : fd;
}
