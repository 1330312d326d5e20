"""Corrupted variants of a container payload, for the learned codecs' fuzz tests."""

from __future__ import annotations

import random
import struct
import zlib


def fuzzed_payloads(payload: bytes, body_size: int, seed: int = 0) -> list[bytes]:
    """Truncations, single bit flips, forged headers and bodies with a recomputed CRC, and random bytes.

    Args:
        payload: a valid payload: header, CRC32 (4 bytes), body.
        body_size: bytes of its body (the substreams).
    """
    rng = random.Random(seed)
    head_end = len(payload) - body_size - 4
    cases = [payload[:rng.randrange(len(payload))] for _ in range(60)]
    for _ in range(120):
        corrupt = bytearray(payload)
        corrupt[rng.randrange(len(corrupt))] ^= 1 << rng.randrange(8)
        cases.append(bytes(corrupt))
    for _ in range(120):
        head, body = bytearray(payload[:head_end]), bytearray(payload[head_end + 4:])
        target = head if rng.random() < 0.5 else body
        for _ in range(rng.randint(1, 3)):
            target[rng.randrange(len(target))] = rng.randrange(256)
        cases.append(bytes(head) + struct.pack("<I", zlib.crc32(bytes(body), zlib.crc32(bytes(head)))) + bytes(body))
    cases += [bytes(rng.randrange(256) for _ in range(rng.randrange(200))) for _ in range(40)]
    return [case for case in cases if case != payload]
