#!/usr/bin/env python3
"""Writes the hand-made seed inputs of both fuzz targets into fuzz/corpus/<target>/.

The fuzzer starts from these and keeps what it finds; `cargo fuzz cmin` then trims the
corpus that is committed. Run from anywhere: python3 fuzz/make_seeds.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def frame(kind, rid, payload=b""):
    return struct.pack(">IBI", 5 + len(payload), kind, rid) + payload


HELLO = frame(1, 0, b"COUR" + struct.pack(">HI", 1, 1 << 20))


def chunks(data, size):
    """The connection target's script: each chunk is a length byte and the bytes."""
    out = b""
    for i in range(0, len(data), size):
        part = data[i:i + size]
        out += bytes([len(part)]) + part
    return out


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


requests = b"".join(frame(2, i, b"x" * i) for i in range(1, 6))
write("decode", "hello", bytes([255]) + HELLO)
write("decode", "requests", bytes([255]) + requests)
write("decode", "error", bytes([255]) + frame(5, 3, struct.pack(">H", 4) + b"too large"))
write("decode", "oversize", bytes([1]) + frame(2, 1, b"y" * 40))
write("decode", "bad-length", bytes([9]) + b"\x00\x00\x00\x02\x02")
write("decode", "plain", bytes([9]) + struct.pack(">I", 3) + b"abc")
write("decode", "unknown-kind", bytes([9]) + frame(0x7F, 1))
write("decode", "ping-goaway", bytes([9]) + frame(6, 9, b"p") + frame(8, 0, struct.pack(">I", 7)))
write("decode", "stats", bytes([9]) + frame(9, 4))
write("decode", "truncated", bytes([9]) + frame(2, 1, b"abcdef")[:-2])

# flags: 1 hello first, 2 plain, 4 waiting handler, 8 client never reads,
# 16 no EOF, 32 shutdown after the input, 64 token required
write("connection", "requests", bytes([1]) + chunks(requests, 200))
write("connection", "split", bytes([1]) + chunks(requests, 3))
write("connection", "waiting-handler", bytes([5]) + chunks(frame(2, 1, b"\xfeab") + frame(2, 2, b"\xffno"), 50))
write("connection", "duplicate-id", bytes([5]) + chunks(frame(2, 7, b"\xfe") + frame(2, 7, b"z"), 50))
write("connection", "no-hello", bytes([0]) + chunks(requests, 50))
write("connection", "raw-hello", bytes([0]) + chunks(HELLO + frame(6, 1, b"ping"), 7))
write("connection", "stall", bytes([1]) + b"\x04\x00\x00\x00\x20" + b"\x00\xff\x00\xff")
write("connection", "idle", bytes([17]) + chunks(frame(2, 1, b"a"), 20))
write("connection", "slow-reader", bytes([9]) + chunks(b"".join(frame(2, i, b"r" * 900) for i in range(1, 40)), 250))
write("connection", "drain", bytes([37]) + chunks(frame(2, 1, b"\xfewait") + frame(2, 2, b"b"), 60))
write("connection", "plain", bytes([2]) + chunks(struct.pack(">I", 3) + b"abc" + struct.pack(">I", 5000), 9))
write("connection", "oversize", bytes([1]) + chunks(frame(2, 1, b"o" * 2000), 255))
write("connection", "stats", bytes([1]) + chunks(frame(9, 3) + frame(2, 4, b"q"), 30))
# 64: the server requires the token "fuzz-token"; with bit 1 the valid HELLO carries it.
write("connection", "token", bytes([65]) + chunks(frame(2, 1, b"in"), 30))
WRONG = frame(1, 0, b"COUR" + struct.pack(">HI", 1, 1 << 20) + b"\x01" + struct.pack(">H", 5) + b"guess")
write("connection", "wrong-token", bytes([64]) + chunks(WRONG + frame(2, 1, b"sneak"), 30))


# The datagram target: a flags byte, then steps of an opcode and 3 operand bytes
# (see harness.rs). Op 1 is a HELLO (the second, with the cookie the first got, opens
# the session), op 2 a REQUEST/ONEWAY/PING/STATS, op 3 a request finishing, op 4 time
# passing, op 0 raw bytes.
def step(op, a=0, b=0, c=0, extra=b""):
    return bytes([op, a, b, c]) + extra


def datagram_bytes(session, kind, rid, payload=b"", acked=0):
    return bytes([0xC7]) + struct.pack(">QI", session, acked) + frame(kind, rid, payload)


opened = step(1, 0, 16) + step(1, 0, 16)
write("datagram", "open-and-request", bytes([0]) + opened
      + step(2, 0, 1, 10, b"x") + step(2, 0, 1, 10, b"x") + step(3) + step(2, 0, 1, 10, b"x"))
write("datagram", "mismatch", bytes([0]) + opened
      + step(2, 0, 2, 10, b"a") + step(2, 0, 2, 10, b"b") + step(3) + step(2, 0, 2, 10, b"b"))
write("datagram", "token", bytes([1]) + step(1, 0, 16, 1) + step(1, 0, 16, 1)
      + step(2, 0, 3, 0) + step(3))
write("datagram", "small-cache", bytes([2]) + opened
      + b"".join(step(2, 0, i, 20, b"yy") + step(3) for i in range(1, 8))
      + step(2, 0, 1, 20, b"yy"))
write("datagram", "unvalidated", bytes([0]) + step(2, 1, 1, 0) + step(1, 2, 16)
      + step(0, 3, 30, 0, datagram_bytes(9, 2, 1, b"z" * 8)))
write("datagram", "time-and-ping", bytes([16]) + opened + step(2, 0, 4, 3) + step(4, 0, 200)
      + step(2, 0, 5, 4) + step(2, 0, 6, 0) + step(5))
write("datagram", "garbage", bytes([0]) + step(0, 0, 8, 0, b"\xc7\x00\x00") + step(0, 0, 3, 0, b"abc"))
write("datagram", "acked-floor", bytes([0]) + opened + step(2, 0, 1, 0) + step(3)
      + step(2, 0, 0x41, 0) + step(2, 0, 1, 0))
write("datagram", "other-session", bytes([0]) + opened + step(1, 4, 16) + step(1, 4, 16)
      + step(2, 4, 1, 0) + step(2, 0, 1, 0) + step(3) + step(3))
write("datagram", "oneway", bytes([0]) + opened + step(2, 0, 7, 2) + step(2, 0, 7, 2) + step(3))
