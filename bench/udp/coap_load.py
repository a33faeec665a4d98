#!/usr/bin/env python3
"""A closed-loop load of confirmable CoAP GETs (RFC 7252) for bench/udp_loss.

    coap_load.py HOST PORT [--in-flight 32] [--seconds 10] [--path PATH]

Keeps --in-flight requests outstanding against a CoAP server (libcoap's coap-server in
bench/udp_loss), each a CON GET with a 4-byte token, retransmitted as RFC 7252 says
(ACK_TIMEOUT 2 s times a random factor up to 1.5, doubled per retransmission,
MAX_RETRANSMIT 4), and prints one JSON line: successful calls per second over the
window, p50/p99 latency of those, calls given up, and calls still outstanding at the
end (not counted either way). libcoap's own coap-client sends one request per process,
which would measure process start-up, hence this client.
"""
import argparse
import asyncio
import json
import os
import random
import struct
import time

ACK_TIMEOUT, ACK_RANDOM_FACTOR, MAX_RETRANSMIT = 2.0, 1.5, 4


class Load(asyncio.DatagramProtocol):
    def __init__(self, path):
        self.path = path.encode()
        self.waiting = {}  # token -> future
        self.mid = random.randrange(1 << 16)

    def connection_made(self, transport):
        self.transport = transport

    def message(self, token):
        self.mid = (self.mid + 1) & 0xFFFF
        msg = struct.pack(">BBH", 0x44, 0x01, self.mid) + token
        if self.path:
            msg += bytes([0xB0 | len(self.path)]) + self.path  # Uri-Path, delta 11
        return msg

    def datagram_received(self, data, addr):
        if len(data) < 4:
            return
        tkl = data[0] & 0x0F
        kind = (data[0] >> 4) & 3
        code = data[1]
        token = data[4:4 + tkl]
        if kind == 0:  # a separate CON response: acknowledge it
            self.transport.sendto(struct.pack(">BBH", 0x60, 0, struct.unpack(">H", data[2:4])[0]))
        if code == 0:  # an empty ACK: the response comes separately
            return
        fut = self.waiting.pop(token, None)
        if fut and not fut.done():
            fut.set_result(code)

    async def call(self):
        token = os.urandom(4)
        msg = self.message(token)
        fut = asyncio.get_running_loop().create_future()
        self.waiting[token] = fut
        timeout = ACK_TIMEOUT * random.uniform(1, ACK_RANDOM_FACTOR)
        for _ in range(MAX_RETRANSMIT + 1):
            self.transport.sendto(msg)
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout)
            except asyncio.TimeoutError:
                timeout *= 2
        self.waiting.pop(token, None)
        return None


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--in-flight", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--path", default="")
    args = ap.parse_args()
    loop = asyncio.get_running_loop()
    transport, load = await loop.create_datagram_endpoint(
        lambda: Load(args.path), remote_addr=(args.host, args.port))
    latencies, failed = [], 0
    end = time.monotonic() + args.seconds

    async def worker():
        nonlocal failed
        while time.monotonic() < end:
            start = time.monotonic()
            code = await load.call()
            done = time.monotonic()
            if done > end:
                return
            if code is not None and code >> 5 == 2:
                latencies.append(done - start)
            else:
                failed += 1

    tasks = [asyncio.create_task(worker()) for _ in range(args.in_flight)]
    await asyncio.sleep(args.seconds)
    outstanding = sum(1 for t in tasks if not t.done())
    for t in tasks:
        t.cancel()
    transport.close()
    latencies.sort()

    def q(p):
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e6 if latencies else None

    print(json.dumps({"rps": len(latencies) / args.seconds, "p50_us": q(0.5), "p99_us": q(0.99),
                      "ok": len(latencies), "failed": failed, "outstanding": outstanding}))


if __name__ == "__main__":
    asyncio.run(main())
