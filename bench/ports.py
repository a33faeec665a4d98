"""Ports for the bench scripts: a free one for a server to listen on, and a wait until a
server listens. Imported by the scripts beside it (`from ports import ...`: a script's own
directory is on Python's path)."""

import socket
import time


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15):
    """Returns once something accepts connections at `port`: a port of 127.0.0.1, or a
    "HOST:PORT" string. Raises RuntimeError after `timeout` seconds."""
    if isinstance(port, str):
        host, number = port.rsplit(":", 1)
        address = (host, int(number))
    else:
        address = ("127.0.0.1", port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(address, timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens at {address[0]}:{address[1]}")
