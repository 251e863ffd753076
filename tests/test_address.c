/*
 * Connection addresses (src/net/address.c): every text form and every error, the round trip
 * through format, name resolution, and real listen/connect on each kind of address.
 */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "address.h"

#define SUN_OFF offsetof(struct sockaddr_un, sun_path)
#define SUN_SIZE sizeof(((struct sockaddr_un *)0)->sun_path)

static const char *err_name(int r)
{
	return r < 0 ? strerror(-r) : "ok";
}

static struct ura__address must_parse(const char *text)
{
	struct ura__address a;
	int r = ura__address_parse(text, &a);
	cr_assert_eq(r, 0, "parse(\"%s\") = %d (%s), want 0", text, r, err_name(r));
	cr_assert_eq(a.family, a.ss.ss_family, "parse(\"%s\"): family %d, ss_family %d", text,
		     a.family, a.ss.ss_family);
	return a;
}

static struct ura__address must_parse_numeric(const char *text)
{
	struct ura__address a;
	int r = ura__address_parse_numeric(text, &a);
	cr_assert_eq(r, 0, "parse_numeric(\"%s\") = %d (%s), want 0", text, r, err_name(r));
	return a;
}

/* Both parse functions give err for text, and leave *out alone. */
static void expect_error(const char *text, int err)
{
	struct ura__address a, untouched;
	memset(&untouched, 0xa5, sizeof(untouched));

	a = untouched;
	int r = ura__address_parse(text, &a);
	cr_assert_eq(r, err, "parse(\"%s\") = %d (%s), want %d (%s)", text, r, err_name(r),
		     err, err_name(err));
	cr_assert(memcmp(&a, &untouched, sizeof(a)) == 0, "parse(\"%s\") wrote *out on error",
		  text);
	a = untouched;
	r = ura__address_parse_numeric(text, &a);
	cr_assert_eq(r, err, "parse_numeric(\"%s\") = %d (%s), want %d (%s)", text, r,
		     err_name(r), err, err_name(err));
	cr_assert(memcmp(&a, &untouched, sizeof(a)) == 0,
		  "parse_numeric(\"%s\") wrote *out on error", text);
}

/* Bytes of ss past len are zero. */
static void check_tail_zero(const struct ura__address *a, const char *text)
{
	const unsigned char *p = (const unsigned char *)&a->ss;
	for (size_t i = a->len; i < sizeof(a->ss); i++)
		cr_assert_eq(p[i], 0, "\"%s\": byte %zu past len %u is %u", text, i,
			     (unsigned)a->len, p[i]);
}

static struct sockaddr_un as_un(const struct ura__address *a)
{
	struct sockaddr_un un;
	memcpy(&un, &a->ss, sizeof(un));
	return un;
}

static void check_in4(const char *text, const char *ip, uint16_t port)
{
	struct ura__address a = must_parse_numeric(text);
	struct sockaddr_in sin, want;
	memcpy(&sin, &a.ss, sizeof(sin));
	cr_assert_eq(a.family, AF_INET, "\"%s\": family %d", text, a.family);
	cr_assert_eq(sin.sin_family, AF_INET, "\"%s\": sin_family %d", text, sin.sin_family);
	cr_assert_eq(a.len, sizeof(struct sockaddr_in), "\"%s\": len %u", text, (unsigned)a.len);
	cr_assert_eq(inet_pton(AF_INET, ip, &want.sin_addr), 1);
	cr_assert_eq(sin.sin_addr.s_addr, want.sin_addr.s_addr, "\"%s\": wrong address", text);
	cr_assert_eq(ntohs(sin.sin_port), port, "\"%s\": port %u, want %u", text,
		     ntohs(sin.sin_port), port);
	check_tail_zero(&a, text);
	/* The resolving parse gives the same bytes for a literal. */
	struct ura__address b = must_parse(text);
	cr_assert(memcmp(&a, &b, sizeof(a)) == 0, "\"%s\": parse and parse_numeric differ", text);
}

static void check_in6(const char *text, const char *ip, uint16_t port, uint32_t scope)
{
	struct ura__address a = must_parse_numeric(text);
	struct sockaddr_in6 sin6;
	struct in6_addr want;
	memcpy(&sin6, &a.ss, sizeof(sin6));
	cr_assert_eq(a.family, AF_INET6, "\"%s\": family %d", text, a.family);
	cr_assert_eq(sin6.sin6_family, AF_INET6, "\"%s\": sin6_family %d", text,
		     sin6.sin6_family);
	cr_assert_eq(a.len, sizeof(struct sockaddr_in6), "\"%s\": len %u", text,
		     (unsigned)a.len);
	cr_assert_eq(inet_pton(AF_INET6, ip, &want), 1);
	cr_assert(memcmp(&sin6.sin6_addr, &want, sizeof(want)) == 0, "\"%s\": wrong address",
		  text);
	cr_assert_eq(ntohs(sin6.sin6_port), port, "\"%s\": port %u, want %u", text,
		     ntohs(sin6.sin6_port), port);
	cr_assert_eq(sin6.sin6_scope_id, scope, "\"%s\": scope %u, want %u", text,
		     sin6.sin6_scope_id, scope);
	cr_assert_eq(sin6.sin6_flowinfo, 0u, "\"%s\": flowinfo set", text);
	check_tail_zero(&a, text);
}

static void check_format(const struct ura__address *a, const char *want)
{
	char buf[URA__ADDRESS_STRLEN];
	int n = ura__address_format(a, buf, sizeof(buf));
	cr_assert_eq(n, (int)strlen(want), "format: %d (%s), want \"%s\"", n, err_name(n), want);
	cr_assert_str_eq(buf, want);
}

/* ------------------------------------------------------------------- unix */

Test(address, unix_absolute_path)
{
	const char *text = "unix:/tmp/ura.sock";
	struct ura__address a = must_parse_numeric(text);
	struct sockaddr_un un = as_un(&a);
	cr_assert_eq(a.family, AF_UNIX);
	cr_assert_eq(un.sun_family, AF_UNIX);
	cr_assert_str_eq(un.sun_path, "/tmp/ura.sock");
	cr_assert_eq(a.len, SUN_OFF + strlen("/tmp/ura.sock") + 1, "len %u", (unsigned)a.len);
	check_tail_zero(&a, text);
	struct ura__address b = must_parse(text);
	cr_assert(memcmp(&a, &b, sizeof(a)) == 0, "parse and parse_numeric differ");
}

Test(address, unix_relative_path)
{
	static const char *const paths[] = { "ura.sock", "run/ura.sock", "./x", "../x",
					     "x@y", "a b", "/", "unix:nested" };
	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		char text[64];
		snprintf(text, sizeof(text), "unix:%s", paths[i]);
		struct ura__address a = must_parse(text);
		struct sockaddr_un un = as_un(&a);
		cr_assert_eq(a.family, AF_UNIX, "\"%s\"", text);
		cr_assert_str_eq(un.sun_path, paths[i], "\"%s\"", text);
		cr_assert_eq(a.len, SUN_OFF + strlen(paths[i]) + 1, "\"%s\": len %u", text,
			     (unsigned)a.len);
	}
}

Test(address, unix_path_limits)
{
	char text[5 + 4200];
	memcpy(text, "unix:", 5);

	/* 107 bytes and the NUL fill sun_path exactly. */
	memset(text + 5, 'p', SUN_SIZE - 1);
	text[5 + SUN_SIZE - 1] = '\0';
	struct ura__address a = must_parse(text);
	cr_assert_eq(a.len, sizeof(struct sockaddr_un), "len %u", (unsigned)a.len);
	cr_assert_eq(strlen(as_un(&a).sun_path), SUN_SIZE - 1);

	memset(text + 5, 'p', SUN_SIZE);
	text[5 + SUN_SIZE] = '\0';
	expect_error(text, -ENAMETOOLONG);

	memset(text + 5, 'p', 4000);
	text[5 + 4000] = '\0';
	expect_error(text, -ENAMETOOLONG);
}

Test(address, unix_abstract)
{
	const char *text = "unix:@ura-test";
	struct ura__address a = must_parse_numeric(text);
	struct sockaddr_un un = as_un(&a);
	cr_assert_eq(a.family, AF_UNIX);
	cr_assert_eq(un.sun_path[0], '\0', "abstract: sun_path[0] must be NUL");
	cr_assert(memcmp(un.sun_path + 1, "ura-test", 8) == 0, "name not copied");
	/* The length ends the name: no NUL counted. */
	cr_assert_eq(a.len, SUN_OFF + 1 + 8, "len %u", (unsigned)a.len);
	check_tail_zero(&a, text);

	/* Any byte but NUL belongs to the name, '@' and '/' included. */
	a = must_parse("unix:@@a b/c");
	un = as_un(&a);
	cr_assert_eq(a.len, SUN_OFF + 1 + 6, "len %u", (unsigned)a.len);
	cr_assert(memcmp(un.sun_path + 1, "@a b/c", 6) == 0, "name not copied");
}

Test(address, unix_abstract_limits)
{
	char text[6 + SUN_SIZE + 1];
	memcpy(text, "unix:@", 6);

	/* No NUL: 107 name bytes after the leading NUL fill sun_path. */
	memset(text + 6, 'n', SUN_SIZE - 1);
	text[6 + SUN_SIZE - 1] = '\0';
	struct ura__address a = must_parse(text);
	cr_assert_eq(a.len, sizeof(struct sockaddr_un), "len %u", (unsigned)a.len);

	memset(text + 6, 'n', SUN_SIZE);
	text[6 + SUN_SIZE] = '\0';
	expect_error(text, -ENAMETOOLONG);
}

Test(address, unix_empty)
{
	expect_error("unix:", -EINVAL);
	expect_error("unix:@", -EINVAL);
}

/* -------------------------------------------------------------------- tcp */

Test(address, tcp_ipv4)
{
	check_in4("tcp:127.0.0.1:8080", "127.0.0.1", 8080);
	check_in4("tcp:0.0.0.0:0", "0.0.0.0", 0);
	check_in4("tcp:255.255.255.255:65535", "255.255.255.255", 65535);
	check_in4("tcp:10.1.2.3:1", "10.1.2.3", 1);
}

Test(address, tcp_ipv6)
{
	check_in6("tcp:[::1]:8080", "::1", 8080, 0);
	check_in6("tcp:[::]:0", "::", 0, 0);
	check_in6("tcp:[2001:db8::1]:443", "2001:db8::1", 443, 0);
	check_in6("tcp:[2001:DB8:0:0:0:0:0:1]:443", "2001:db8::1", 443, 0);
	check_in6("tcp:[::ffff:192.0.2.1]:80", "::ffff:192.0.2.1", 80, 0);
	check_in6("tcp:[fe80::1%2]:80", "fe80::1", 80, 2);
	check_in6("tcp:[fe80::1%4294967295]:80", "fe80::1", 80, UINT32_MAX);
	check_in6("tcp:[fe80::1%0]:80", "fe80::1", 80, 0);
}

Test(address, tcp_ipv6_scope_errors)
{
	expect_error("tcp:[fe80::1%]:80", -EINVAL);
	expect_error("tcp:[fe80::1%4294967296]:80", -EINVAL);
	/* Starting with a digit, it is a number and nothing else. */
	expect_error("tcp:[fe80::1%2x]:80", -EINVAL);
	expect_error("tcp:[fe80::1%2 ]:80", -EINVAL);
	expect_error("tcp:[%2]:80", -EINVAL);
	/* Longer than any interface name can be. */
	expect_error("tcp:[fe80::1%abcdefghijklmnopq]:80", -EINVAL);
}

Test(address, tcp_ipv6_scope_interface_name)
{
	unsigned lo = if_nametoindex("lo");
	if (lo == 0)
		cr_skip("no interface named lo");
	struct ura__address a = must_parse("tcp:[fe80::1%lo]:80");
	struct sockaddr_in6 sin6;
	memcpy(&sin6, &a.ss, sizeof(sin6));
	cr_assert_eq(sin6.sin6_scope_id, lo, "scope %u, want %u", sin6.sin6_scope_id, lo);

	/* Interface names mean asking the kernel: never in numeric mode. */
	struct ura__address b;
	int r = ura__address_parse_numeric("tcp:[fe80::1%lo]:80", &b);
	cr_assert_eq(r, -EINVAL, "parse_numeric with an interface name: %d", r);

	static const char *const unknown[] = { "tcp:[fe80::1%nosuchif9]:80",
					       "tcp:[fe80::1%-1]:80", "tcp:[fe80::1%%2]:80" };
	for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
		r = ura__address_parse(unknown[i], &b);
		cr_assert_eq(r, -ENOENT, "\"%s\": %d (%s), want -ENOENT", unknown[i], r,
			     err_name(r));
		r = ura__address_parse_numeric(unknown[i], &b);
		cr_assert_eq(r, -EINVAL, "numeric \"%s\": %d (%s), want -EINVAL", unknown[i],
			     r, err_name(r));
	}
}

Test(address, ports)
{
	check_in4("tcp:1.2.3.4:0", "1.2.3.4", 0);
	check_in4("tcp:1.2.3.4:65535", "1.2.3.4", 65535);
	check_in4("tcp:1.2.3.4:00080", "1.2.3.4", 80);
	check_in6("tcp:[::1]:65535", "::1", 65535, 0);

	static const char *const bad[] = {
		"65536", "70000", "99999", "4294967376", "99999999999999999999999",
		"+80", "-1", "-0", "80x", "x80", " 80", "80 ", "8 0", "0x50", "8.0",
		"80:", ":80", "", "\t80",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char text[64];
		snprintf(text, sizeof(text), "tcp:127.0.0.1:%s", bad[i]);
		expect_error(text, -EINVAL);
		snprintf(text, sizeof(text), "tcp:[::1]:%s", bad[i]);
		expect_error(text, -EINVAL);
		/* Before any lookup: a bad port with a name is -EINVAL, not a resolver error. */
		snprintf(text, sizeof(text), "tcp:no-such-host.invalid:%s", bad[i]);
		expect_error(text, -EINVAL);
	}
}

Test(address, tcp_missing_parts)
{
	static const char *const bad[] = {
		"tcp:", "tcp:127.0.0.1", "tcp:127.0.0.1:", "tcp::80", "tcp::", "tcp:[]:80",
		"tcp:[::1]", "tcp:[::1]:", "tcp:[::1]80", "tcp:[::1:80", "tcp:[::1]]:80",
		"tcp:[[::1]]:80", "tcp:::1:80", "tcp:fe80::1:80", "tcp:::1", "tcp:[",
		"tcp:]:80", "tcp:[1.2.3.4]:80", "tcp:[::g]:80", "tcp:[localhost]:80",
		"tcp:[ ::1]:80", "tcp: 127.0.0.1:80", "tcp:127.0.0.1 :80",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_error(bad[i], -EINVAL);
}

Test(address, ipv4_noncanonical)
{
	/* getaddrinfo would take all of these (inet_aton forms) or send them to DNS. */
	static const char *const bad[] = {
		"tcp:01.2.3.4:80", "tcp:010.0.0.1:80", "tcp:127.1:80", "tcp:127.0.1:80",
		"tcp:0x7f000001:80", "tcp:0x7f.0.0.1:80", "tcp:2130706433:80",
		"tcp:1.2.3.4.5:80", "tcp:256.1.1.1:80", "tcp:1.2.3.256:80", "tcp:1.2.3.:80",
		"tcp:1.2.3.4.:80", "tcp:0:80", "tcp:1.2.3.-4:80",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_error(bad[i], -EINVAL);
}

Test(address, host_name_syntax)
{
	char label64[64 + 1], long_name[300];
	memset(label64, 'a', 64);
	label64[64] = '\0';
	/* Four 63-byte labels: 255 bytes, over the 253 a name may have. */
	size_t n = 0;
	for (int l = 0; l < 4; l++) {
		if (l > 0)
			long_name[n++] = '.';
		memset(long_name + n, 'a', 63);
		n += 63;
	}
	long_name[n] = '\0';

	char text[400];
	static const char *const bad[] = {
		"tcp:bad host:80", "tcp:a..b:80", "tcp:.a:80", "tcp:a..:80", "tcp:.:80",
		"tcp:-a:80", "tcp:a-:80", "tcp:a-.b:80", "tcp:a.-b:80", "tcp:ex%ample:80",
		"tcp:ho[st:80", "tcp:h/st:80", "tcp:h\xc3\xa9st:80", "tcp:host.123:80",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_error(bad[i], -EINVAL);
	snprintf(text, sizeof(text), "tcp:%s.example:80", label64);
	expect_error(text, -EINVAL);
	snprintf(text, sizeof(text), "tcp:%s:80", long_name);
	expect_error(text, -EINVAL);
}

Test(address, numeric_refuses_names)
{
	char label63[63 + 1], text[128];
	memset(label63, 'a', 63);
	label63[63] = '\0';
	snprintf(text, sizeof(text), "tcp:%s.example:80", label63);

	/* Well formed, so only the refusal to resolve makes them -EINVAL. */
	const char *const names[] = { "tcp:localhost:80", "tcp:localhost.:80",
				      "tcp:a_b.example:80", "tcp:x-1.example.org:443",
				      "tcp:1a:80", text };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		struct ura__address a;
		int r = ura__address_parse_numeric(names[i], &a);
		cr_assert_eq(r, -EINVAL, "parse_numeric(\"%s\") = %d (%s), want -EINVAL",
			     names[i], r, err_name(r));
	}
}

Test(address, resolve_localhost)
{
	struct ura__address a = must_parse("tcp:localhost:80");
	if (a.family == AF_INET) {
		struct sockaddr_in sin;
		memcpy(&sin, &a.ss, sizeof(sin));
		cr_assert_eq(a.len, sizeof(sin));
		cr_assert_eq(ntohl(sin.sin_addr.s_addr), INADDR_LOOPBACK, "localhost is %08x",
			     ntohl(sin.sin_addr.s_addr));
		cr_assert_eq(ntohs(sin.sin_port), 80);
	} else {
		cr_assert_eq(a.family, AF_INET6, "localhost: family %d", a.family);
		struct sockaddr_in6 sin6;
		memcpy(&sin6, &a.ss, sizeof(sin6));
		cr_assert_eq(a.len, sizeof(sin6));
		cr_assert(memcmp(&sin6.sin6_addr, &in6addr_loopback, sizeof(in6addr_loopback)) == 0,
			  "localhost is not ::1");
		cr_assert_eq(ntohs(sin6.sin6_port), 80);
	}
	check_tail_zero(&a, "tcp:localhost:80");
}

Test(address, resolve_failure)
{
	/* .invalid never resolves (RFC 6761): -ENOENT if the resolver says so, or
	 * -EHOSTUNREACH if it cannot be reached at all. */
	struct ura__address a, untouched;
	memset(&untouched, 0x5a, sizeof(untouched));
	a = untouched;
	int r = ura__address_parse("tcp:no-such-host.invalid:80", &a);
	cr_assert(r == -ENOENT || r == -EHOSTUNREACH,
		  "unresolvable name: %d (%s), want -ENOENT or -EHOSTUNREACH", r, err_name(r));
	cr_assert(memcmp(&a, &untouched, sizeof(a)) == 0, "*out written on error");
}

/* ----------------------------------------------------------------- scheme */

Test(address, scheme)
{
	static const char *const bad[] = {
		"", "/tmp/x", "127.0.0.1:80", "[::1]:80", "localhost:80", "udp:1.2.3.4:80",
		"UNIX:/x", "Unix:/x", "TCP:1.2.3.4:80", "unix", "tcp", "unix/x", " unix:/x",
		"http://x", "tcp4:1.2.3.4:80", "unixx:/x", ":", "@abstract",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_error(bad[i], -EINVAL);
}

Test(address, null_arguments)
{
	struct ura__address a = must_parse("unix:/x");
	char buf[URA__ADDRESS_STRLEN];

	cr_assert_eq(ura__address_parse(NULL, &a), -EINVAL);
	cr_assert_eq(ura__address_parse("unix:/x", NULL), -EINVAL);
	cr_assert_eq(ura__address_parse_numeric(NULL, &a), -EINVAL);
	cr_assert_eq(ura__address_parse_numeric("unix:/x", NULL), -EINVAL);
	cr_assert_eq(ura__address_format(NULL, buf, sizeof(buf)), -EINVAL);
	cr_assert_eq(ura__address_format(&a, NULL, 16), -EINVAL);
	cr_assert_eq(ura__address_format(&a, NULL, 0), -EINVAL);
	cr_assert_eq(ura__address_socket(NULL), -EINVAL);
}

Test(address, input_length_limit)
{
	char *text = malloc(URA__ADDRESS_MAX_TEXT + 2);
	cr_assert_not_null(text);

	/* Exactly at the limit the text is parsed (and the path is too long)... */
	memcpy(text, "unix:", 5);
	memset(text + 5, 'p', URA__ADDRESS_MAX_TEXT - 5);
	text[URA__ADDRESS_MAX_TEXT] = '\0';
	expect_error(text, -ENAMETOOLONG);

	/* ...one byte over, it is not looked at. */
	memset(text + 5, 'p', URA__ADDRESS_MAX_TEXT + 1 - 5);
	text[URA__ADDRESS_MAX_TEXT + 1] = '\0';
	expect_error(text, -EINVAL);

	memcpy(text, "tcp:", 4);
	memset(text + 4, 'h', URA__ADDRESS_MAX_TEXT + 1 - 4);
	text[URA__ADDRESS_MAX_TEXT + 1] = '\0';
	expect_error(text, -EINVAL);
	free(text);
}

/* ----------------------------------------------------------------- format */

Test(address, format_each_kind)
{
	struct ura__address a = must_parse("unix:/tmp/ura.sock");
	check_format(&a, "unix:/tmp/ura.sock");
	a = must_parse("unix:rel/ura.sock");
	check_format(&a, "unix:rel/ura.sock");
	a = must_parse("unix:@ura-abstract");
	check_format(&a, "unix:@ura-abstract");
	a = must_parse("tcp:127.0.0.1:80");
	check_format(&a, "tcp:127.0.0.1:80");
	a = must_parse("tcp:0.0.0.0:0");
	check_format(&a, "tcp:0.0.0.0:0");
	a = must_parse("tcp:[::1]:80");
	check_format(&a, "tcp:[::1]:80");
	a = must_parse("tcp:[fe80::1%7]:65535");
	check_format(&a, "tcp:[fe80::1%7]:65535");
}

Test(address, format_buffer_size)
{
	struct ura__address a = must_parse("tcp:127.0.0.1:80");
	const char *want = "tcp:127.0.0.1:80";
	size_t len = strlen(want);
	char buf[URA__ADDRESS_STRLEN];

	/* Room for the text but not its NUL: refused, buf left empty. */
	memset(buf, 'z', sizeof(buf));
	int r = ura__address_format(&a, buf, len);
	cr_assert_eq(r, -ENOBUFS, "cap %zu: %d", len, r);
	cr_assert_eq(buf[0], '\0', "buf not emptied on -ENOBUFS");
	cr_assert_eq(buf[len], 'z', "wrote past cap");

	r = ura__address_format(&a, buf, 1);
	cr_assert_eq(r, -ENOBUFS);
	cr_assert_eq(buf[0], '\0');

	memset(buf, 'z', sizeof(buf));
	r = ura__address_format(&a, buf, 0);
	cr_assert_eq(r, -ENOBUFS);
	cr_assert_eq(buf[0], 'z', "cap 0: buf written");

	memset(buf, 'z', sizeof(buf));
	r = ura__address_format(&a, buf, len + 1);
	cr_assert_eq(r, (int)len, "cap %zu: %d", len + 1, r);
	cr_assert_str_eq(buf, want);

	/* URA__ADDRESS_STRLEN holds the longest texts. */
	char text[6 + SUN_SIZE];
	memcpy(text, "unix:@", 6);
	memset(text + 6, 'n', SUN_SIZE - 1);
	text[6 + SUN_SIZE - 1] = '\0';
	a = must_parse(text);
	check_format(&a, text);
	a = must_parse("tcp:[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%4294967295]:65535");
	check_format(&a, "tcp:[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535");
	a = must_parse("tcp:[::ffff:255.255.255.255%4294967295]:65535");
	check_format(&a, "tcp:[::ffff:255.255.255.255%4294967295]:65535");
}

static void expect_format_error(const struct ura__address *a, int err, const char *what)
{
	char buf[URA__ADDRESS_STRLEN];
	memset(buf, 'z', sizeof(buf));
	int r = ura__address_format(a, buf, sizeof(buf));
	cr_assert_eq(r, err, "%s: format = %d (%s), want %d", what, r, err_name(r), err);
	cr_assert_eq(buf[0], '\0', "%s: buf not emptied", what);
}

Test(address, format_invalid)
{
	struct ura__address a = must_parse("tcp:127.0.0.1:80");
	a.family = AF_INET6;
	expect_format_error(&a, -EINVAL, "family differs from ss_family");
	cr_assert_eq(ura__address_socket(&a), -EINVAL);

	a = must_parse("tcp:127.0.0.1:80");
	a.family = AF_PACKET;
	a.ss.ss_family = AF_PACKET;
	expect_format_error(&a, -EINVAL, "unknown family");
	cr_assert_eq(ura__address_socket(&a), -EINVAL);

	a = must_parse("tcp:127.0.0.1:80");
	a.len = sizeof(struct sockaddr_in) - 1;
	expect_format_error(&a, -EINVAL, "short sockaddr_in");
	a = must_parse("tcp:[::1]:80");
	a.len = sizeof(struct sockaddr_in);
	expect_format_error(&a, -EINVAL, "sockaddr_in6 with sockaddr_in's length");

	/* Unnamed unix socket: only the family. */
	a = must_parse("unix:/x");
	a.len = sizeof(sa_family_t);
	expect_format_error(&a, -EINVAL, "unnamed unix socket");
	a.len = sizeof(struct sockaddr_un) + 1;
	expect_format_error(&a, -EINVAL, "unix len past sockaddr_un");

	/* An abstract name with a NUL in it has no text form. */
	struct sockaddr_un un;
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	memcpy(un.sun_path, "\0ab\0cd", 6);
	memset(&a, 0, sizeof(a));
	memcpy(&a.ss, &un, sizeof(un));
	a.family = AF_UNIX;
	a.len = (socklen_t)(SUN_OFF + 6);
	expect_format_error(&a, -EINVAL, "abstract name holding a NUL");
	a.len = (socklen_t)(SUN_OFF + 1);
	expect_format_error(&a, -EINVAL, "empty abstract name");

	/* A path filling sun_path with no NUL: legal for the kernel, not for parse. */
	memset(un.sun_path, 'p', SUN_SIZE);
	memcpy(&a.ss, &un, sizeof(un));
	a.len = sizeof(struct sockaddr_un);
	expect_format_error(&a, -ENAMETOOLONG, "108-byte path");
}

Test(address, format_kernel_shapes)
{
	/* A path length reported without its NUL, or with extra NULs, formats the same. */
	struct ura__address a = must_parse("unix:/tmp/k");
	a.len = (socklen_t)(SUN_OFF + strlen("/tmp/k"));
	check_format(&a, "unix:/tmp/k");
	a.len = sizeof(struct sockaddr_un);
	check_format(&a, "unix:/tmp/k");

	/* sin6_flowinfo has no text form and is dropped. */
	a = must_parse("tcp:[::1]:80");
	struct sockaddr_in6 sin6;
	memcpy(&sin6, &a.ss, sizeof(sin6));
	sin6.sin6_flowinfo = htonl(0x12345);
	memcpy(&a.ss, &sin6, sizeof(sin6));
	check_format(&a, "tcp:[::1]:80");
}

Test(address, round_trip)
{
	/* input, the canonical text format gives for it */
	static const char *const cases[][2] = {
		{ "unix:/tmp/ura.sock", "unix:/tmp/ura.sock" },
		{ "unix:ura.sock", "unix:ura.sock" },
		{ "unix:@ura", "unix:@ura" },
		{ "unix:@@/x y", "unix:@@/x y" },
		{ "tcp:127.0.0.1:0", "tcp:127.0.0.1:0" },
		{ "tcp:1.2.3.4:00080", "tcp:1.2.3.4:80" },
		{ "tcp:255.255.255.255:65535", "tcp:255.255.255.255:65535" },
		{ "tcp:[::1]:8080", "tcp:[::1]:8080" },
		{ "tcp:[0:0:0:0:0:0:0:1]:8080", "tcp:[::1]:8080" },
		{ "tcp:[2001:DB8::A]:1", "tcp:[2001:db8::a]:1" },
		{ "tcp:[::ffff:1.2.3.4]:80", "tcp:[::ffff:1.2.3.4]:80" },
		{ "tcp:[fe80::1%0]:1", "tcp:[fe80::1]:1" },
		{ "tcp:[fe80::1%00042]:1", "tcp:[fe80::1%42]:1" },
		{ "tcp:localhost:443", NULL }, /* resolved: 127.0.0.1 or ::1 */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *in = cases[i][0], *want = cases[i][1];
		struct ura__address a = must_parse(in), b;
		char buf[URA__ADDRESS_STRLEN], again[URA__ADDRESS_STRLEN];
		int n = ura__address_format(&a, buf, sizeof(buf));
		cr_assert_geq(n, 0, "format(parse(\"%s\")) = %d (%s)", in, n, err_name(n));
		if (want)
			cr_assert_str_eq(buf, want, "\"%s\" formats as \"%s\", want \"%s\"", in, buf,
					 want);
		int r = ura__address_parse_numeric(buf, &b);
		cr_assert_eq(r, 0, "parse_numeric(\"%s\") (from \"%s\") = %d (%s)", buf, in, r,
			     err_name(r));
		cr_assert(memcmp(&a, &b, sizeof(a)) == 0, "\"%s\" -> \"%s\" parses differently",
			  in, buf);
		cr_assert_eq(ura__address_format(&b, again, sizeof(again)), n);
		cr_assert_str_eq(again, buf, "format not stable for \"%s\"", in);
	}
}

/* ----------------------------------------------------------------- socket */

Test(address, socket_flags)
{
	static const char *const texts[] = { "unix:/x", "tcp:127.0.0.1:0" };
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		struct ura__address a = must_parse(texts[i]);
		int fd = ura__address_socket(&a);
		cr_assert_geq(fd, 0, "socket for \"%s\": %d (%s)", texts[i], fd, err_name(fd));
		int fdflags = fcntl(fd, F_GETFD);
		cr_assert(fdflags >= 0 && (fdflags & FD_CLOEXEC), "\"%s\": no FD_CLOEXEC",
			  texts[i]);
		int v = 0;
		socklen_t vl = sizeof(v);
		cr_assert_eq(getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &vl), 0);
		cr_assert_eq(v, SOCK_STREAM, "\"%s\": SO_TYPE %d", texts[i], v);
		vl = sizeof(v);
		cr_assert_eq(getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &vl), 0);
		cr_assert_eq(v, a.family, "\"%s\": SO_DOMAIN %d", texts[i], v);
		close(fd);
	}
}

/* ------------------------------------------------------------ real sockets */

/*
 * Listens on text, formats the address the listener got (the port for port 0), parses
 * that back and connects to it, then passes a byte each way. ipv6: skip rather than fail
 * if the host has no IPv6.
 */
static void listen_and_connect(const char *text, bool ipv6)
{
	struct ura__address a = must_parse(text), bound, peer;
	int lfd = ura__address_socket(&a);
	if (lfd < 0 && ipv6)
		cr_skip("no IPv6: socket: %s", err_name(lfd));
	cr_assert_geq(lfd, 0, "\"%s\": socket: %d (%s)", text, lfd, err_name(lfd));
	if (bind(lfd, (struct sockaddr *)&a.ss, a.len) < 0) {
		int e = errno;
		close(lfd);
		if (ipv6 && (e == EADDRNOTAVAIL || e == EAFNOSUPPORT))
			cr_skip("no IPv6: bind: %s", strerror(e));
		cr_assert_fail("\"%s\": bind: %s", text, strerror(e));
	}
	cr_assert_eq(listen(lfd, 4), 0, "\"%s\": listen: %s", text, strerror(errno));

	memset(&bound, 0, sizeof(bound));
	bound.len = sizeof(bound.ss);
	cr_assert_eq(getsockname(lfd, (struct sockaddr *)&bound.ss, &bound.len), 0);
	bound.family = bound.ss.ss_family;
	cr_assert_eq(bound.family, a.family);
	char name[URA__ADDRESS_STRLEN];
	int n = ura__address_format(&bound, name, sizeof(name));
	cr_assert_gt(n, 0, "\"%s\": format(getsockname) = %d (%s)", text, n, err_name(n));
	cr_log_info("%s listening on %s", text, name);
	cr_assert_eq(ura__address_parse_numeric(name, &peer), 0, "parse(\"%s\")", name);
	cr_assert_eq(peer.len, bound.len, "\"%s\": len %u, getsockname said %u", name,
		     (unsigned)peer.len, (unsigned)bound.len);
	cr_assert(memcmp(&peer.ss, &bound.ss, bound.len) == 0,
		  "\"%s\" parses to other bytes than getsockname gave", name);
	if (a.family != AF_UNIX) {
		/* sin_port and sin6_port sit at the same offset. */
		struct sockaddr_in sin;
		memcpy(&sin, &bound.ss, sizeof(sin));
		cr_assert_neq(sin.sin_port, 0, "\"%s\": still port 0", name);
	}

	int cfd = ura__address_socket(&peer);
	cr_assert_geq(cfd, 0, "\"%s\": client socket: %d (%s)", name, cfd, err_name(cfd));
	cr_assert_eq(connect(cfd, (struct sockaddr *)&peer.ss, peer.len), 0,
		     "connect to \"%s\": %s", name, strerror(errno));
	int afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	cr_assert_geq(afd, 0, "accept on \"%s\": %s", name, strerror(errno));

	char c = 'q';
	cr_assert_eq(write(cfd, "x", 1), 1);
	cr_assert_eq(read(afd, &c, 1), 1);
	cr_assert_eq(c, 'x');
	cr_assert_eq(write(afd, "y", 1), 1);
	cr_assert_eq(read(cfd, &c, 1), 1);
	cr_assert_eq(c, 'y');

	close(afd);
	close(cfd);
	close(lfd);
}

Test(address, live_tcp_ipv4)
{
	listen_and_connect("tcp:127.0.0.1:0", false);
}

Test(address, live_tcp_ipv6)
{
	listen_and_connect("tcp:[::1]:0", true);
}

Test(address, live_unix_path)
{
	char dir[] = "/tmp/ura-address-XXXXXX";
	cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	char path[128], text[160];
	snprintf(path, sizeof(path), "%s/listener.sock", dir);
	snprintf(text, sizeof(text), "unix:%s", path);

	listen_and_connect(text, false);

	cr_assert_eq(unlink(path), 0, "unlink %s: %s", path, strerror(errno));
	cr_assert_eq(rmdir(dir), 0, "rmdir %s: %s", dir, strerror(errno));
}

Test(address, live_unix_abstract)
{
	uint64_t suffix = 0;
	if (getrandom(&suffix, sizeof(suffix), 0) != (ssize_t)sizeof(suffix))
		suffix = (uint64_t)getpid() << 20 ^ (uint64_t)(uintptr_t)&suffix;
	char text[64];
	snprintf(text, sizeof(text), "unix:@ura-test-%016llx", (unsigned long long)suffix);

	listen_and_connect(text, false);
}
