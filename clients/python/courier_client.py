"""A courier client in one file, Python standard library only.

It speaks the native protocol of docs/PROTOCOL.md: the HELLO exchange, REQUEST/REPLY
with request ids, ONEWAY, PING/PONG, ERROR and GOAWAY. Copy this file next to your
script:

    from courier_client import Client, ServerError

    with Client("127.0.0.1", 12345) as client:
        print(client.call(b"hello", timeout=5))      # b'hello' from the echo server
        client.send_oneway(b"a note; no reply")

One call is on the wire at a time per Client (calls from several threads take turns);
open one Client per thread for parallel calls.
"""

import socket
import struct
import threading
import time

__all__ = [
    "Client",
    "CourierError",
    "ServerError",
    "FrameTooLarge",
    "CallTimeout",
    "ConnectionClosed",
    "GoingAway",
    "ProtocolError",
]

MAGIC = b"COUR"
VERSION = 1
HEADER = struct.Struct(">IBI")  # length (of kind + id + payload), kind, request id
HELLO, REQUEST, REPLY, ONEWAY, ERROR, PING, PONG, GOAWAY = range(1, 9)
MAX_HELLO_PAYLOAD = 4096
AUTH_TOKEN_FIELD = 0x01


class CourierError(Exception):
    """Base class of every error this module raises (besides OSError from connect)."""


class ServerError(CourierError):
    """The server answered with an ERROR frame. `code` is the number from
    docs/PROTOCOL.md (11: handler failed, 14: busy, 1000+: the application's own),
    `text` the server's explanation."""

    def __init__(self, code, text):
        super().__init__(f"server error {code}: {text}")
        self.code = code
        self.text = text


class FrameTooLarge(CourierError):
    """The payload is larger than the server accepts (from its HELLO); nothing was sent."""


class CallTimeout(CourierError, TimeoutError):
    """No reply within the timeout. The connection is closed, since a late reply would
    otherwise be taken for the next call's."""


class ConnectionClosed(CourierError):
    """The connection closed before the reply; whether the server processed the request is
    unknown."""


class GoingAway(ConnectionClosed):
    """The server is draining (GOAWAY) and did not take the request: it was not processed
    and may be sent again, to this server later or to another."""


class ProtocolError(CourierError):
    """The peer does not speak courier, or broke the protocol."""


class Client:
    """A connection to a courier server."""

    def __init__(self, host="127.0.0.1", port=12345, timeout=10.0, max_frame=16 << 20,
                 auth_token=None):
        """Connects and does the HELLO exchange within `timeout` seconds. Replies larger
        than `max_frame` bytes are refused (the server is told so in our HELLO).
        `auth_token` (bytes or str) is presented to a server that requires one; a missing
        or wrong token makes the first call raise ServerError with code 15."""
        self._max_frame = max_frame
        if isinstance(auth_token, str):
            auth_token = auth_token.encode()
        self._auth_token = auth_token
        self._timeout = timeout
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self._next_id = 1
        self._going_away = False
        self._closed = False
        self._sock = socket.create_connection((host, port), timeout=timeout)
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._handshake(time.monotonic() + timeout)
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def server_max_frame(self):
        """The largest payload the server accepts."""
        return self._server_max_frame

    def call(self, payload, timeout=None):
        """Sends `payload` (bytes) as a REQUEST and returns the reply's bytes.

        Raises ServerError for an ERROR reply, FrameTooLarge, CallTimeout,
        GoingAway or ConnectionClosed."""
        payload = bytes(payload)
        self._check_size(payload)
        with self._lock:
            self._check_open()
            request_id = self._take_id()
            self._send(REQUEST, request_id, payload)
            return self._wait_for(request_id, self._deadline(timeout))

    def ping(self, payload=b"", timeout=None):
        """Sends a PING and returns the PONG's payload (the same bytes)."""
        payload = bytes(payload)
        self._check_size(payload)
        with self._lock:
            self._check_open()
            request_id = self._take_id()
            self._send(PING, request_id, payload)
            return self._wait_for(request_id, self._deadline(timeout))

    def send_oneway(self, payload):
        """Sends `payload` as a ONEWAY message: no reply, no confirmation."""
        payload = bytes(payload)
        self._check_size(payload)
        with self._lock:
            self._check_open()
            self._send(ONEWAY, 0, payload)

    def close(self):
        """Closes the connection. The server still answers what it has received, but this
        client no longer reads it."""
        if not self._closed:
            self._closed = True
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()

    # Internals.

    def _handshake(self, deadline):
        kind, _, payload = self._read_frame(deadline, MAX_HELLO_PAYLOAD)
        if kind == ERROR:
            raise self._server_error(payload)
        if kind != HELLO:
            raise ProtocolError(f"expected HELLO from the server, got kind {kind}")
        if len(payload) < 10 or payload[:4] != MAGIC:
            raise ProtocolError("the server's HELLO does not start with the magic bytes COUR")
        version, max_frame = struct.unpack(">HI", payload[4:10])
        if version != VERSION:
            raise ProtocolError(f"the server speaks protocol version {version}, this client {VERSION}")
        self._server_max_frame = max_frame
        fields = b""
        if self._auth_token is not None:
            # HELLO field 0x01: the auth token (tag, 2-byte length, value).
            fields = struct.pack(">BH", AUTH_TOKEN_FIELD, len(self._auth_token)) + self._auth_token
        self._send(HELLO, 0, MAGIC + struct.pack(">HI", VERSION, self._max_frame) + fields)

    def _deadline(self, timeout):
        return time.monotonic() + (self._timeout if timeout is None else timeout)

    def _check_size(self, payload):
        if len(payload) > self._server_max_frame:
            raise FrameTooLarge(
                f"the payload is {len(payload)} bytes, the server accepts at most {self._server_max_frame}"
            )

    def _check_open(self):
        if self._going_away:
            raise GoingAway("the server is going away: the request was not sent")
        if self._closed:
            raise ConnectionClosed("the connection is closed")

    def _take_id(self):
        request_id = self._next_id
        self._next_id = self._next_id % 0xFFFFFFFF + 1  # never 0, wraps after 2**32 - 1
        return request_id

    def _send(self, kind, request_id, payload):
        try:
            self._sock.sendall(HEADER.pack(5 + len(payload), kind, request_id) + payload)
        except OSError as err:
            self.close()
            raise ConnectionClosed(f"sending failed: {err}") from err

    def _wait_for(self, request_id, deadline):
        while True:
            kind, frame_id, payload = self._read_frame(deadline, self._max_frame)
            if kind in (REPLY, PONG) and frame_id == request_id:
                return payload
            if kind == ERROR and frame_id == request_id:
                raise self._server_error(payload)
            if kind == ERROR and frame_id == 0:
                self.close()
                raise self._server_error(payload)
            if kind == GOAWAY:
                # Every request the server received is still answered; keep waiting.
                self._going_away = True
            elif kind == PING:
                self._send(PONG, frame_id, payload)
            # Anything else answers an earlier call that gave up; skip it.

    def _read_frame(self, deadline, max_payload):
        header = self._read_exact(HEADER.size, deadline)
        length, kind, frame_id = HEADER.unpack(header)
        if length < 5:
            raise ProtocolError(f"bad frame length {length}")
        if length - 5 > max_payload:
            self.close()
            raise ProtocolError(f"frame too large: {length - 5} bytes, the limit is {max_payload}")
        return kind, frame_id, self._read_exact(length - 5, deadline)

    def _read_exact(self, size, deadline):
        while len(self._buffer) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise CallTimeout("no reply within the timeout")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(max(65536, size - len(self._buffer)))
            except socket.timeout:
                continue
            except OSError as err:
                self.close()
                raise ConnectionClosed(f"receiving failed: {err}") from err
            if not chunk:
                self.close()
                if self._going_away:
                    raise GoingAway("the server closed the connection after GOAWAY: the request was not processed")
                raise ConnectionClosed("the server closed the connection")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    @staticmethod
    def _server_error(payload):
        if len(payload) < 2:
            return ProtocolError("an ERROR frame shorter than its 2-byte code")
        (code,) = struct.unpack(">H", payload[:2])
        return ServerError(code, payload[2:].decode("utf-8", "replace"))
