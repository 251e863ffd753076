#!/usr/bin/env python3
"""Writes the seed inputs of tests/fuzz/fuzz_frame.c into tests/fuzz/corpus/frame/.

A seed is three parameter bytes (payload limit selector, two bytes of chunking seed)
followed by the byte stream (docs/PROTOCOL.md). Run from anywhere; rewrites the seeds.
"""
import os

from seedlib import frame, seed, write_seeds

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "frame")

# Indexes into the harness's limits[]: 16 MiB default, 0, 1, 16, 64, 255, 4096, 65536.
DEFAULT, L16, L64 = 0, 3, 4


SEEDS = {
    "valid_single": seed(DEFAULT, 0x0100, frame(b"hello", 0, 1)),
    "valid_expects_reply": seed(DEFAULT, 0x0203, frame(bytes(range(100)), 1, 42)),
    "valid_reply_empty": seed(DEFAULT, 0x0001, frame(b"", 2, 42)),
    "coalesced": seed(L64, 0x0305, b"".join([
        frame(b"", 0, 0),
        frame(b"a", 1, 1),
        frame(b"question?" * 7, 1, 2),
        frame(b"", 2, 1),
        frame(b"answer" * 10, 2, 2),
    ])),
    "split_small_chunks": seed(DEFAULT, 0x1000, frame(bytes(i & 0xff for i in range(300)), 1, 7)
                               + frame(b"tail", 0, 8)),
    "at_limit": seed(L16, 0x0004, frame(b"0123456789abcdef", 0, 3)),
    "oversize": seed(L16, 0x0004, frame(b"0123456789abcdefg", 0, 3)),
    "oversize_header_only": seed(DEFAULT, 0x0002, frame(b"", 0, 3, length=(16 << 20) + 1)),
    "bad_magic": seed(DEFAULT, 0x0003, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"),
    "bad_version": seed(DEFAULT, 0x0000, frame(b"x", 0, 1, version=2)),
    "reserved_flags": seed(DEFAULT, 0x0000, frame(b"x", 0x80, 1)),
    "both_reply_flags": seed(DEFAULT, 0x0000, frame(b"x", 3, 1)),
    "reserved_field": seed(DEFAULT, 0x0000, frame(b"x", 0, 1, reserved=1)),
    "truncated_payload": seed(DEFAULT, 0x0102, frame(b"0123456789", 1, 5)[:-4]),
    "truncated_header": seed(DEFAULT, 0x0000, frame(b"0123456789")[:9]),
    "good_then_garbage": seed(L64, 0x0206, frame(b"ok", 0, 1) + b"URA1\x01\x00\x00\x01"),
}

write_seeds(OUT, SEEDS)
