"""What the seed generators of tests/fuzz share: the wire format's frame (docs/PROTOCOL.md),
a seed's parameter prefix, and writing the seeds out."""
import os
import struct


def frame(payload=b"", flags=0, ident=0, magic=b"URA1", version=1, reserved=0, length=None):
    """One frame: the 20-byte header, then the payload. length overrides the header's."""
    n = len(payload) if length is None else length
    return magic + struct.pack("<BBHQI", version, flags, reserved, ident, n) + payload


def seed(param, chunking, stream):
    """A seed: one parameter byte, two bytes of chunking seed, then the byte stream."""
    return bytes([param]) + struct.pack("<H", chunking) + stream


def write_seeds(out, seeds):
    """Writes each seed to out/<name>, replacing what was there."""
    os.makedirs(out, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"{len(seeds)} seeds in {out}")
