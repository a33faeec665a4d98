"""An exec worker (courier serve --exec ... --exec-workers N): reads plain-framed
requests (4-byte big-endian length, payload) on stdin and writes plain-framed
replies on stdout. Replies with the payload in upper case; a few payloads
misbehave on purpose for the tests:

  die    exit with status 3 without replying
  hang   never reply
  slow   reply after 0.3 s
  pid    reply with this process's id

With the argument --once it exits after its first reply, as a worker that serves one
request per process does.
"""
import os
import struct
import sys
import time

stdin = sys.stdin.buffer
stdout = sys.stdout.buffer
once = "--once" in sys.argv[1:]
while True:
    head = stdin.read(4)
    if len(head) < 4:
        break
    (length,) = struct.unpack(">I", head)
    payload = stdin.read(length)
    if payload == b"die":
        sys.exit(3)
    if payload == b"hang":
        time.sleep(3600)
    if payload == b"slow":
        time.sleep(0.3)
    reply = str(os.getpid()).encode() if payload == b"pid" else payload.upper()
    stdout.write(struct.pack(">I", len(reply)) + reply)
    stdout.flush()
    if once:
        break
