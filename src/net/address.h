/*
 * Connection addresses: the text ura takes for "where to listen / connect", turned into
 * a socket address and back.
 *
 *   unix:PATH        a filesystem socket; PATH absolute or relative, 1..107 bytes
 *                    (it must fit sun_path with its NUL)
 *   unix:@NAME       a Linux abstract socket: sun_path[0] is '\0', then NAME's 1..107
 *                    bytes, no NUL; len = offsetof(sun_path) + 1 + strlen(NAME)
 *   tcp:HOST:PORT    HOST is an IPv4 literal in dotted-quad form (127.0.0.1), an IPv6
 *                    literal in brackets ([::1]; [fe80::1%2] with a scope id, which is
 *                    a decimal number if it starts with a digit and otherwise an
 *                    interface name, [fe80::1%eth0], in ura__address_parse only), or a
 *                    host name (ura__address_parse only); PORT is decimal 0..65535,
 *                    digits only (leading zeros are fine)
 *
 * Schemes are lower case. The text is a C string, so it cannot hold a NUL; more than
 * URA__ADDRESS_MAX_TEXT bytes is -EINVAL before anything else is looked at.
 *
 * Errors, the same for both parse functions:
 *   -EINVAL        NULL argument; no or unknown scheme; empty unix path or abstract name;
 *                  empty host; a ':' or port missing; a port that is not 0..65535 in
 *                  plain decimal; an unbracketed IPv6 literal; a malformed bracketed
 *                  literal; a host that is neither a literal nor a well-formed name
 *                  (labels of letters, digits, '-' and '_', 1..63 bytes, 253 in all);
 *                  an IPv4 form other than dotted quad (01.2.3.4, 127.1, 0x7f000001),
 *                  which getaddrinfo would otherwise quietly accept; in
 *                  ura__address_parse_numeric, any host name
 *   -ENAMETOOLONG  a unix path or abstract name that does not fit sun_path
 *   -ENOENT        the name does not exist (EAI_NONAME, EAI_NODATA), or has no IPv4
 *                  or IPv6 address, or an unknown interface in a scope id
 *   -EHOSTUNREACH  the resolver could not answer (EAI_AGAIN, EAI_FAIL, and anything
 *                  else getaddrinfo reports that has no errno of its own)
 *   -ENOMEM        getaddrinfo ran out of memory; EAI_SYSTEM passes its errno on
 *
 * Nothing here depends on the rest of the library (only libc), so the fuzz harness
 * builds address.c alone.
 */
#ifndef URA_ADDRESS_H
#define URA_ADDRESS_H

#include <stddef.h>
#include <sys/socket.h>

/* Longer text is -EINVAL without being parsed. */
#define URA__ADDRESS_MAX_TEXT 4096
/* Enough for any ura__address_format result, NUL included ("unix:@" + 107 bytes). */
#define URA__ADDRESS_STRLEN 128

/*
 * A parsed address, ready for bind/connect as (struct sockaddr *)&ss, len. Bytes of ss
 * past len are zero after a parse, so two parses of the same address compare equal
 * with memcmp over the whole struct.
 */
struct ura__address {
	struct sockaddr_storage ss;
	socklen_t len;
	int family; /* AF_UNIX, AF_INET or AF_INET6; always equal to ss.ss_family */
};

/*
 * Parses text (see the top of this file) into *out. A tcp host name is resolved with
 * getaddrinfo (AF_UNSPEC, SOCK_STREAM), taking the first result, so this may block for
 * as long as the resolver does: do not call it on a loop thread with a name that is not
 * a literal. text is not kept; *out is written only on success. Any thread.
 */
int ura__address_parse(const char *text, struct ura__address *out);

/*
 * As ura__address_parse, but never resolves anything: a tcp host name, or an interface
 * name as an IPv6 scope, is -EINVAL. Pure (no I/O, no global state), never blocks.
 * *out is written only on success. Any thread.
 */
int ura__address_parse_numeric(const char *text, struct ura__address *out);

/*
 * Writes a as text into buf: "unix:/p", "unix:@n", "tcp:1.2.3.4:80", "tcp:[::1]:80",
 * "tcp:[fe80::1%2]:80" (the scope id only when it is not 0; sin6_flowinfo is dropped).
 * Returns the length, NUL not counted, which ura__address_parse_numeric turns back into
 * the same address. -ENOBUFS if buf cannot hold the text and its NUL
 * (URA__ADDRESS_STRLEN always can); -EINVAL for a NULL argument, an unknown family,
 * family and ss.ss_family differing, a len wrong for the family, an unnamed unix socket,
 * or an abstract name holding a NUL byte (text cannot carry it); -ENAMETOOLONG for a
 * path filling all of sun_path with no NUL (the kernel allows it, parse does not). On
 * error buf holds "" if cap > 0. Pure. Any thread.
 */
int ura__address_format(const struct ura__address *a, char *buf, size_t cap);

/*
 * socket(a->family, SOCK_STREAM | SOCK_CLOEXEC, 0). Returns the descriptor, which the
 * caller owns and closes, or -errno; -EINVAL for NULL, an unknown family, or family and
 * ss.ss_family differing. Any thread.
 */
int ura__address_socket(const struct ura__address *a);

#endif
