"""A courier client in one file, Python standard library only.

It speaks the native protocol of docs/PROTOCOL.md: the HELLO exchange, REQUEST/REPLY
with request ids, ONEWAY, PING/PONG, ERROR and GOAWAY. Copy this file next to your
script:

    from courier_client import Client, ServerError

    with Client("127.0.0.1", 12345) as client:
        print(client.call(b"hello", timeout=5))      # b'hello' from the echo server
        client.send_oneway(b"a note; no reply")

Or install it (`pip install clients/python`) and `import courier_client`. For a server
that speaks TLS, pass an `ssl.SSLContext`:

    context = ssl.create_default_context(cafile="ca.pem")
    with Client("server.example", 12345, tls=context) as client:
        ...

A peer that is not a courier server (an HTTP or SSH server, a plain-framing server, a TLS
port reached without TLS) raises NotCourier, which names its first bytes, or says it sent
nothing.

One call is on the wire at a time per Client (calls from several threads take turns);
open one Client per thread for parallel calls.

Outcomes
--------

Every call ends in exactly one of: a reply, "not received" (safe to send again), or
"outcome unknown". Which exception means which:

- A reply: `call` returns the REPLY's bytes, or raises ServerError when the server
  answered with an ERROR.
- "Not received" (not processed, safe to send again): GoingAway, when the server is
  draining and never received the request; and a plain ConnectionClosed (the base class
  itself), when nothing was sent: the client was already closed, or the connection failed
  before any byte of the request left. FrameTooLarge is also raised before anything is
  sent.
- "Outcome unknown" (the server may or may not have processed it): OutcomeUnknown, when
  the request was sent and the connection ended without its answer; CallTimeout, when no
  answer came in time.

The rule follows the wire. GOAWAY carries the id of the last REQUEST the server received;
the server then stops reading and tries to answer what it received, but a handler slower
than its drain_timeout leaves a received request unanswered. This client numbers
requests 1, 2, ... and wraps after 2**32 - 1, skipping 0. A request sent after GOAWAY's
last id (last id 0: none received) was not received; one at or before it that gets no
answer, or one left unanswered by a close without GOAWAY, has an unknown outcome:

    try:
        reply = client.call(payment)
    except (OutcomeUnknown, CallTimeout):
        ...  # ask the server (or its ledger) whether it happened before sending again
    except ConnectionClosed:
        ...  # GoingAway or nothing sent: send it again, on a new connection
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from typing import Optional, Tuple, Union

__all__ = [
    "Client",
    "CourierError",
    "ServerError",
    "FrameTooLarge",
    "CallTimeout",
    "ConnectionClosed",
    "GoingAway",
    "OutcomeUnknown",
    "ProtocolError",
    "NotCourier",
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

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"server error {code}: {text}")
        self.code = code
        self.text = text


class FrameTooLarge(CourierError):
    """The payload is larger than the server accepts (from its HELLO); nothing was sent."""


class CallTimeout(CourierError, TimeoutError):
    """No answer within the timeout: the outcome is unknown, since the server may or may
    not have processed the request. The connection is closed, since a late reply would
    otherwise be taken for the next call's.

    Every call ends in exactly one of: a reply, "not received" (safe to send again), or
    "outcome unknown"; this is "outcome unknown"."""


class ConnectionClosed(CourierError):
    """The connection ended. Raised as this class itself only when nothing was sent: the
    client was already closed, or the connection failed before any byte of the request
    left; the request was not received and may be sent again on a new connection.

    Every call ends in exactly one of: a reply, "not received" (safe to send again), or
    "outcome unknown". The subclasses say which of the last two: GoingAway is "not
    received", OutcomeUnknown is "outcome unknown"."""


class GoingAway(ConnectionClosed):
    """Not received by the server: not processed, safe to send again, to this server
    later or to another.

    Raised for a call made after the server's GOAWAY (it is not sent), and for a call
    whose request id comes after the last id the GOAWAY named when the server then closes
    without answering: the server stopped reading before that request."""


class OutcomeUnknown(ConnectionClosed):
    """The request was sent and the connection ended without its answer; the server may
    or may not have processed it. Find out before sending it again if doing it twice
    would matter (a payment).

    Raised when the connection closes (EOF, reset, a receive error) after the request was
    sent, with no GOAWAY or with a GOAWAY whose last id is at or after this call's id, and
    when sending failed after some of the request was written."""


class ProtocolError(CourierError):
    """The peer does not speak courier, or broke the protocol. The connection is closed;
    a call that gets it after its request was sent has an unknown outcome."""


class NotCourier(ProtocolError):
    """Connected, but the peer is not a courier server: its first bytes cannot start a
    courier HELLO (`first` holds them; the message shows them in hex and as text), or it
    sent nothing within the timeout where a courier server sends its HELLO at once (a
    TLS port reached without TLS, a plain-framing server). Nothing was sent."""

    def __init__(self, message: str, first: bytes = b"") -> None:
        super().__init__(message)
        self.first = first


def describe_bytes(data: bytes) -> str:
    """Bytes as hex and as text, for a person: `48 54 54 50 = 'HTTP'` (at most 16)."""
    shown = data[:16]
    text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in shown)
    more = " ..." if len(data) > len(shown) else ""
    hint = ""
    if data[:2] in (b"\x15\x03", b"\x16\x03"):
        hint = ": a TLS record, so this port speaks TLS (pass tls=ssl.SSLContext)"
    return f"{' '.join(f'{b:02x}' for b in shown)}{more} = '{text}'{hint}"


def _could_be_courier(head: bytes) -> bool:
    """Whether `head` can start a courier server's first frame (as the Rust client
    checks): a length no larger than a HELLO's, kind HELLO (then the magic) or ERROR,
    and id 0."""
    if len(head) >= 4:
        (length,) = struct.unpack(">I", head[:4])
        if not 5 <= length <= MAX_HELLO_PAYLOAD + 5:
            return False
    if len(head) >= 5 and head[4] not in (HELLO, ERROR):
        return False
    if len(head) >= 9 and head[5:9] != b"\0\0\0\0":
        return False
    if len(head) >= 13 and head[4] == HELLO and head[9:13] != MAGIC:
        return False
    return True


class _Ended(Exception):
    """Internal: the connection ended (EOF, a socket error) while a call was under way.
    The caller that knows whether the request was sent turns it into the ConnectionClosed
    subclass that says so."""

    def __init__(self, reason: str, written: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        # False only when provably no byte of the frame being sent left this client.
        self.written = written


def _sent_after(request_id: int, last_id: int) -> bool:
    """Whether `request_id` was sent after `last_id`, in this client's send order.

    Ids count up from 1 and wrap after 2**32 - 1 (skipping 0), so plain `>` is wrong
    across the wrap; serial number arithmetic (RFC 1982) on 32 bits is right while the
    two are less than 2**31 ids apart (with one call at a time, GOAWAY names this call or
    an earlier one). A difference of exactly 2**31 is undefined and counts as "not
    after", the side that never invites a second send. Last id 0 is not an id (a request
    id never is 0): it means no request was received at all."""
    if last_id == 0:
        return True
    return 0 < (request_id - last_id) % (1 << 32) < (1 << 31)


class Client:
    """A connection to a courier server.

    Every call ends in exactly one of: a reply, "not received" (safe to send again), or
    "outcome unknown"; the module docstring says which exception means which."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 12345,
        timeout: float = 10.0,
        max_frame: int = 16 << 20,
        auth_token: Union[bytes, str, None] = None,
        tls: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
    ) -> None:
        """Connects and does the HELLO exchange within `timeout` seconds. Replies larger
        than `max_frame` bytes are refused (the server is told so in our HELLO).
        `auth_token` (bytes or str) is presented to a server that requires one; a missing
        or wrong token makes the first call raise ServerError with code 15.

        `tls`: speak TLS with this context (`ssl.create_default_context(cafile=...)`,
        plus `load_cert_chain` for a server that requires client certificates); the
        certificate must carry `server_hostname` (default: `host`). A failed handshake
        raises ssl.SSLError. A peer that is not courier raises NotCourier."""
        self._max_frame = max_frame
        if isinstance(auth_token, str):
            auth_token = auth_token.encode()
        self._auth_token = auth_token
        self._timeout = timeout
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self._next_id = 1
        self._going_away = False
        # The last request id of the server's GOAWAY; None before one, or when its body
        # did not parse (then no unanswered request can be called "not received").
        self._goaway_last_id = None
        self._closed = False
        deadline = time.monotonic() + timeout
        self._sock = socket.create_connection((host, port), timeout=timeout)
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
                self._sock = tls.wrap_socket(self._sock, server_hostname=server_hostname or host)
            self._handshake(deadline)
        except _Ended as end:
            self._sock.close()
            raise ConnectionClosed(f"during the HELLO exchange: {end.reason}") from end.__cause__
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False

    @property
    def server_max_frame(self) -> int:
        """The largest payload the server accepts."""
        return self._server_max_frame

    def call(self, payload: bytes, timeout: Optional[float] = None) -> bytes:
        """Sends `payload` (bytes) as a REQUEST and returns the reply's bytes.

        Every call ends in exactly one of: a reply, "not received" (safe to send again),
        or "outcome unknown".

        Raises ServerError for an ERROR reply; GoingAway or ConnectionClosed when the
        request was not received; OutcomeUnknown or CallTimeout when it may or may not
        have been processed; FrameTooLarge (nothing sent) or ProtocolError."""
        return self._exchange(REQUEST, payload, timeout)

    def ping(self, payload: bytes = b"", timeout: Optional[float] = None) -> bytes:
        """Sends a PING and returns the PONG's payload (the same bytes). Fails like
        `call`; a PING has no effect on the server, so every outcome is safe to repeat."""
        return self._exchange(PING, payload, timeout)

    def send_oneway(self, payload: bytes) -> None:
        """Sends `payload` as a ONEWAY message: no reply, no confirmation. Raises
        ConnectionClosed when nothing was sent, OutcomeUnknown when sending failed part
        way (or GoingAway after the server's GOAWAY)."""
        payload = bytes(payload)
        self._check_size(payload)
        with self._lock:
            self._check_open()
            try:
                self._send(ONEWAY, 0, payload, self._deadline(None))
            except _Ended as end:
                raise self._unsent_or_unknown("the ONEWAY message", end) from end.__cause__

    def close(self) -> None:
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

    def _exchange(self, kind: int, payload: bytes, timeout: Optional[float]) -> bytes:
        payload = bytes(payload)
        self._check_size(payload)
        with self._lock:
            self._check_open()
            request_id = self._take_id()
            deadline = self._deadline(timeout)
            what = f"request {request_id}"
            try:
                self._send(kind, request_id, payload, deadline)
            except _Ended as end:
                raise self._unsent_or_unknown(what, end) from end.__cause__
            try:
                return self._wait_for(request_id, deadline)
            except _Ended as end:
                raise self._unanswered(request_id, end) from end.__cause__

    @staticmethod
    def _unsent_or_unknown(what: str, end: _Ended) -> ConnectionClosed:
        if not end.written:
            return ConnectionClosed(f"{what} was not sent: {end.reason}")
        return OutcomeUnknown(
            f"{what} was partly sent when sending failed ({end.reason}); "
            "the server may or may not have processed it"
        )

    def _unanswered(self, request_id: int, end: _Ended) -> ConnectionClosed:
        """The exception for a request that was sent and whose connection then ended."""
        last_id = self._goaway_last_id
        if self._going_away and last_id is not None and _sent_after(request_id, last_id):
            return GoingAway(
                f"{end.reason}: the server's GOAWAY named {last_id} as the last request it "
                f"received, so it did not receive request {request_id}; "
                "it was not processed and is safe to send again"
            )
        goaway = "after GOAWAY" if self._going_away else "without GOAWAY"
        return OutcomeUnknown(
            f"{end.reason} {goaway} before answering request {request_id}; "
            "the server may or may not have processed it"
        )

    def _first_bytes(self, deadline: float) -> None:
        """Reads the peer's first bytes into the buffer and checks they can start a
        courier HELLO, raising NotCourier when they cannot or when nothing comes."""
        while len(self._buffer) < 13:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                self._sock.settimeout(remaining)
                chunk = self._sock.recv(4096)
            except socket.timeout:
                continue
            except OSError as err:
                raise _Ended(f"receiving failed: {err}") from err
            if not chunk:
                break
            self._buffer += chunk
            if not _could_be_courier(bytes(self._buffer)):
                break
            if len(self._buffer) >= 9 and self._buffer[4] == ERROR:
                break
        head = bytes(self._buffer)
        if not head and time.monotonic() >= deadline:
            raise NotCourier(
                "connected, but the peer sent nothing within the timeout, where a courier "
                "server sends its HELLO at once: is it a TLS port (pass tls=), or a server "
                "in plain or raw framing?"
            )
        if head and not _could_be_courier(head):
            raise NotCourier(
                f"connected, but the peer did not speak courier (first bytes: {describe_bytes(head)})",
                head,
            )

    def _handshake(self, deadline: float) -> None:
        self._first_bytes(deadline)
        try:
            kind, _, payload = self._read_frame(deadline, MAX_HELLO_PAYLOAD)
        except CallTimeout:
            head = bytes(self._buffer)
            raise NotCourier(
                f"connected, but the peer did not speak courier (first bytes: {describe_bytes(head)})",
                head,
            ) from None
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
        self._send(HELLO, 0, MAGIC + struct.pack(">HI", VERSION, self._max_frame) + fields, deadline)

    def _deadline(self, timeout: Optional[float]) -> float:
        return time.monotonic() + (self._timeout if timeout is None else timeout)

    def _check_size(self, payload: bytes) -> None:
        if len(payload) > self._server_max_frame:
            raise FrameTooLarge(
                f"the payload is {len(payload)} bytes, the server accepts at most {self._server_max_frame}"
            )

    def _check_open(self) -> None:
        if self._going_away:
            raise GoingAway("the server is going away (GOAWAY): the request was not sent")
        if self._closed:
            raise ConnectionClosed("the connection is closed: the request was not sent")

    def _take_id(self) -> int:
        request_id = self._next_id
        self._next_id = self._next_id % 0xFFFFFFFF + 1  # never 0, wraps after 2**32 - 1
        return request_id

    def _send(self, kind: int, request_id: int, payload: bytes, deadline: float) -> None:
        """Writes one frame, raising _Ended (the connection closed) on failure.

        `send`, not `sendall`: on an error sendall does not say how much it wrote, and
        whether any byte of a request left decides between "not received" and "outcome
        unknown". The socket timeout is set from the call's deadline, not left over from
        the last read."""
        frame = memoryview(HEADER.pack(5 + len(payload), kind, request_id) + payload)
        written = 0
        # Bounded by the deadline: each turn writes bytes, fails, or waits on the socket
        # no longer than what is left of the timeout.
        while written < len(frame):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise CallTimeout("the request could not be sent within the timeout")
            try:
                self._sock.settimeout(remaining)
                count = self._sock.send(frame[written:])
            except socket.timeout:
                continue
            except OSError as err:
                self.close()
                raise _Ended(f"sending failed: {err}", written > 0) from err
            if count <= 0:
                self.close()
                raise _Ended("sending failed: the socket took no bytes", written > 0)
            written += count

    def _wait_for(self, request_id: int, deadline: float) -> bytes:
        # Bounded by the deadline: every turn reads a frame or raises once it passes.
        while True:
            kind, frame_id, payload = self._read_frame(deadline, self._max_frame)
            if kind in (REPLY, PONG) and frame_id == request_id:
                return payload
            if kind == ERROR and frame_id == request_id:
                raise self._server_error(payload)
            if kind == ERROR and frame_id == 0:
                # About the whole connection, which the server closes after it.
                self.close()
                raise self._server_error(payload)
            if kind == GOAWAY:
                # The server still answers what it received, drain_timeout permitting;
                # keep waiting. If it closes first, the last id says whether it received
                # this request.
                self._going_away = True
                self._goaway_last_id = (
                    struct.unpack(">I", payload)[0] if len(payload) == 4 else None
                )
            elif kind == PING:
                self._send(PONG, frame_id, payload, deadline)
            # Anything else answers an earlier call that gave up; skip it.

    def _read_frame(self, deadline: float, max_payload: int) -> Tuple[int, int, bytes]:
        header = self._read_exact(HEADER.size, deadline)
        length, kind, frame_id = HEADER.unpack(header)
        if length < 5:
            self.close()
            raise ProtocolError(f"bad frame length {length}")
        if length - 5 > max_payload:
            self.close()
            raise ProtocolError(f"frame too large: {length - 5} bytes, the limit is {max_payload}")
        return kind, frame_id, self._read_exact(length - 5, deadline)

    def _read_exact(self, size: int, deadline: float) -> bytes:
        # Bounded by the deadline: each turn gets bytes, ends the connection, or times out.
        while len(self._buffer) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise CallTimeout("no reply within the timeout")
            try:
                self._sock.settimeout(remaining)
                chunk = self._sock.recv(max(65536, size - len(self._buffer)))
            except socket.timeout:
                continue
            except OSError as err:
                self.close()
                raise _Ended(f"receiving failed: {err}") from err
            if not chunk:
                self.close()
                raise _Ended("the server closed the connection")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    @staticmethod
    def _server_error(payload: bytes) -> CourierError:
        if len(payload) < 2:
            return ProtocolError("an ERROR frame shorter than its 2-byte code")
        (code,) = struct.unpack(">H", payload[:2])
        # The text may be empty or cut in the middle of a character (the server truncates
        # it to fit the frame limit); it is for people, so replace what does not decode.
        return ServerError(code, payload[2:].decode("utf-8", "replace"))
