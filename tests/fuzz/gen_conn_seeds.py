#!/usr/bin/env python3
"""Writes the seed inputs of tests/fuzz/fuzz_conn.c into tests/fuzz/corpus/conn/.

A seed is an options byte, two bytes of chunking seed, then what the peer sends
(docs/PROTOCOL.md). Options: bits 0-2 the frame limit (0 default, 1 one byte, 2 16,
3 20, 4 64, 5 255, 6 4096, 7 65536), bit 3 suspended while the bytes arrive, bit 4 two
requests sent first (ids 1 and 2), bit 5 cancel at the first message. Run from anywhere;
rewrites the seeds.
"""
import os

from seedlib import frame, seed, write_seeds

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "conn")

L16, L64 = 2, 4
SUSPEND, REQUESTS, CANCEL = 1 << 3, 1 << 4, 1 << 5
EXPECTS_REPLY, IS_REPLY = 1, 2


SEEDS = {
    # Well formed.
    "empty_stream": seed(0, 0, b""),
    "one_message": seed(0, 0x0107, frame(b"hello", 0, 0)),
    "request_answered": seed(0, 0x0203, frame(b"question?", EXPECTS_REPLY, 42)),
    "replies_to_our_requests": seed(REQUESTS, 0x0001,
                                    frame(b"first", IS_REPLY, 1) + frame(b"", IS_REPLY, 2)),
    "coalesced": seed(L64, 0x0305, b"".join([
        frame(b"", 0, 0),
        frame(b"a", EXPECTS_REPLY, 1),
        frame(b"question?" * 7, EXPECTS_REPLY, 2),
        frame(b"plain" * 12, 0, 3),
    ])),
    "byte_by_byte": seed(0, 0x0000, frame(bytes(range(40)), EXPECTS_REPLY, 7)
                         + frame(b"tail", 0, 8)),
    "at_limit": seed(L16, 0x0004, frame(b"0123456789abcdef", 0, 3)),
    "suspended": seed(SUSPEND | REQUESTS, 0x0102,
                      frame(b"m1") + frame(b"r", IS_REPLY, 2) + frame(b"m2")),
    "cancel_at_first": seed(CANCEL, 0x0006, frame(b"one") + frame(b"two") + frame(b"three")),
    # Malformed.
    "bad_magic_http": seed(0, 0x0003, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"),
    "bad_version": seed(0, 0x0000, frame(b"x", 0, 1, version=2)),
    "reserved_flags": seed(0, 0x0000, frame(b"x", 0x80, 1)),
    "both_reply_flags": seed(0, 0x0000, frame(b"x", EXPECTS_REPLY | IS_REPLY, 1)),
    "reserved_field": seed(0, 0x0000, frame(b"x", 0, 1, reserved=1)),
    "over_limit": seed(L16, 0x0004, frame(b"0123456789abcdefg", 0, 3)),
    "over_default_limit_header": seed(0, 0x0002, frame(b"", 0, 3, length=(16 << 20) + 1)),
    "truncated_header": seed(0, 0x0000, frame(b"0123456789")[:9]),
    "truncated_payload": seed(0, 0x0102, frame(b"0123456789", EXPECTS_REPLY, 5)[:-4]),
    "reply_to_unknown_id": seed(0, 0x0001, frame(b"who?", IS_REPLY, 7)),
    "reply_twice": seed(REQUESTS, 0x0001, frame(b"a", IS_REPLY, 1) + frame(b"b", IS_REPLY, 1)),
    "good_then_garbage": seed(L64, 0x0206, frame(b"ok", 0, 1) + b"URA1\x01\x00\x00\x01"),
}

write_seeds(OUT, SEEDS)
