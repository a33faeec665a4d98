"""Tests of courier_client.py against the real `courier` binary.

Run by `cargo test` (tests/python.rs), which sets COURIER_BIN to the binary it built.
By hand: COURIER_BIN=target/debug/courier python3 -m unittest -v clients/python/test_courier_client.py
"""

import os
import shlex
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from courier_client import (  # noqa: E402
    CallTimeout,
    Client,
    ConnectionClosed,
    CourierError,
    FrameTooLarge,
    GoingAway,
    NotCourier,
    OutcomeUnknown,
    ServerError,
)

BIN = os.environ.get("COURIER_BIN", "target/debug/courier")


class Server:
    """`courier serve --listen 127.0.0.1:0 ARGS`, with the port it logs."""

    def __init__(self, *args, env_extra=None):
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        env.pop("COURIER_AUTH_TOKEN", None)
        env.update(env_extra or {})
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", "127.0.0.1:0", *args],
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + 30
        self.port = None
        while self.port is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not log its address")
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("the server exited: " + self.proc.stderr.read())
            if "listening" in line and "addr=" in line:
                self.port = int(line.rsplit(":", 1)[1])
        # Keep draining stderr so the server never blocks on a full pipe.
        self.drain = threading.Thread(target=self.proc.stderr.read, daemon=True)
        self.drain.start()

    def client(self, **kwargs):
        return Client("127.0.0.1", self.port, **kwargs)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        status = self.proc.wait(timeout=20)
        self.drain.join(timeout=5)
        self.proc.stderr.close()
        return status


class EchoServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("--max-frame", "1024")

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def test_call_returns_the_echoed_payload(self):
        with self.server.client() as client:
            self.assertEqual(client.call(bytes([5, 6, 7, 8])), bytes([5, 6, 7, 8]))
            self.assertEqual(client.call(b""), b"")

    def test_many_calls_each_get_their_own_reply(self):
        with self.server.client() as client:
            for n in range(200):
                payload = f"call {n}".encode()
                self.assertEqual(client.call(payload, timeout=5), payload)

    def test_oneway_gets_no_reply_and_the_next_call_still_works(self):
        with self.server.client() as client:
            client.send_oneway(b"note")
            self.assertEqual(client.call(b"after"), b"after")

    def test_ping_returns_its_payload(self):
        with self.server.client() as client:
            self.assertEqual(client.ping(b"are you there"), b"are you there")

    def test_payload_over_the_servers_limit_is_refused_without_sending(self):
        with self.server.client() as client:
            self.assertEqual(client.server_max_frame, 1024)
            with self.assertRaises(FrameTooLarge):
                client.call(b"x" * 1025)
            self.assertEqual(client.call(b"x" * 1024), b"x" * 1024)

    def test_context_manager_closes_the_connection(self):
        with self.server.client() as client:
            client.call(b"x")
        with self.assertRaises(CourierError):
            client.call(b"y")

    def test_threads_share_a_client(self):
        results = {}
        with self.server.client() as client:
            def work(n):
                results[n] = client.call(f"thread {n}".encode())
            threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        self.assertEqual(results, {n: f"thread {n}".encode() for n in range(8)})


class ErrorTest(unittest.TestCase):
    def test_server_error_carries_code_and_text(self):
        server = Server("--exec", "echo 'no such record' >&2; exit 2")
        try:
            with server.client() as client:
                with self.assertRaises(ServerError) as caught:
                    client.call(b"x")
                self.assertEqual(caught.exception.code, 11)
                self.assertIn("status 2", caught.exception.text)
                self.assertIn("no such record", caught.exception.text)
                # The connection survives a failed request.
                with self.assertRaises(ServerError):
                    client.call(b"y")
        finally:
            server.stop()

    def test_slow_reply_raises_call_timeout(self):
        server = Server("--exec", "sleep 5")
        try:
            with server.client() as client:
                with self.assertRaises(CallTimeout):
                    client.call(b"x", timeout=0.3)
        finally:
            server.stop()

    def test_connection_refused_is_the_usual_oserror(self):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        with self.assertRaises(ConnectionRefusedError):
            Client("127.0.0.1", port, timeout=2)

    def test_busy_server_is_a_server_error_at_connect(self):
        server = Server("--max-connections", "1")
        try:
            with server.client():
                with self.assertRaises(ServerError) as caught:
                    server.client()
                self.assertEqual(caught.exception.code, 6)
        finally:
            server.stop()

    def test_shutdown_answers_the_call_in_flight_then_refuses(self):
        with tempfile.TemporaryDirectory() as tmp:
            ran = os.path.join(tmp, "ran")
            server = Server("--exec", f"echo ran >> {shlex.quote(ran)}; sleep 0.5; cat")
            try:
                with server.client() as client:
                    replies = []
                    caller = threading.Thread(
                        target=lambda: replies.append(client.call(b"in flight")))
                    caller.start()
                    wait_for_lines(ran, 1)
                    server.proc.terminate()
                    caller.join(timeout=10)
                    self.assertEqual(replies, [b"in flight"])
                    # GOAWAY came before the reply, so the client knows not to send more:
                    # the late call is "not received", raised without sending.
                    with self.assertRaises(GoingAway):
                        client.call(b"late")
                # Wait for the first signal's clean exit; stop() then sends nothing more (a
                # second signal would make the server exit at once, with status 130).
                self.assertEqual(server.proc.wait(timeout=20), 0)
            finally:
                server.stop()
            self.assertEqual(read_lines(ran), ["ran"], "the late call must not have run")

    def test_request_received_but_unanswered_at_drain_timeout_is_outcome_unknown(self):
        # The handler outlasts the drain, so the server closes with the request received
        # (its GOAWAY names it) but unanswered: it may have been processed.
        with tempfile.TemporaryDirectory() as tmp:
            started = os.path.join(tmp, "started")
            server = Server("--exec", f"echo started >> {shlex.quote(started)}; sleep 5",
                            "--drain-timeout", "1s")
            try:
                with server.client() as client:
                    outcome = []
                    caller = threading.Thread(target=call_into, args=(client, b"pay", outcome))
                    caller.start()
                    wait_for_lines(started, 1)
                    server.proc.send_signal(signal.SIGTERM)
                    caller.join(timeout=10)
                    self.assertFalse(caller.is_alive())
                    self.assertEqual(len(outcome), 1)
                    self.assertIsInstance(outcome[0], OutcomeUnknown)
            finally:
                server.stop()

    def test_request_the_server_never_read_is_going_away(self):
        # With --max-in-flight 1 a slow ONEWAY holds the one slot, so the server does not
        # read the REQUEST behind it; its GOAWAY then names 0 (no REQUEST received) and
        # the drain timeout closes the connection.
        with tempfile.TemporaryDirectory() as tmp:
            started = os.path.join(tmp, "started")
            server = Server("--exec", f"echo started >> {shlex.quote(started)}; sleep 5",
                            "--max-in-flight", "1", "--drain-timeout", "1s")
            try:
                with server.client() as client:
                    client.send_oneway(b"hold the slot")
                    wait_for_lines(started, 1)
                    outcome = []
                    caller = threading.Thread(target=call_into, args=(client, b"pay", outcome))
                    caller.start()
                    # Not needed for the outcome (a REQUEST sent after the signal is not
                    # read either), only so that the test covers one sent before it.
                    time.sleep(0.2)
                    server.proc.send_signal(signal.SIGTERM)
                    caller.join(timeout=10)
                    self.assertFalse(caller.is_alive())
                    self.assertEqual(len(outcome), 1)
                    self.assertIsInstance(outcome[0], GoingAway)
            finally:
                server.stop()
            self.assertEqual(read_lines(started), ["started"], "the REQUEST must not have run")


def call_into(client, payload, outcome):
    """Runs `client.call(payload)` and appends its reply or exception to `outcome`."""
    try:
        outcome.append(client.call(payload, timeout=10))
    except CourierError as err:
        outcome.append(err)


def read_lines(path):
    try:
        with open(path) as file:
            return file.read().splitlines()
    except FileNotFoundError:
        return []


def wait_for_lines(path, count, timeout=10):
    """Waits until the file at `path` has `count` lines: a handler's sign that it ran."""
    deadline = time.monotonic() + timeout
    while len(read_lines(path)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not reach {count} lines within {timeout} s")
        time.sleep(0.02)


# A scripted server for what the real one cannot be made to do on cue: a GOAWAY naming a
# chosen id, a close right after reading a request, a particular ERROR text.

HELLO, REQUEST, REPLY, ONEWAY, ERROR, PING, PONG, GOAWAY = range(1, 9)
HEADER = struct.Struct(">IBI")


def encode(kind, frame_id, payload=b""):
    return HEADER.pack(5 + len(payload), kind, frame_id) + payload


def recv_exact(conn, size):
    data = bytearray()
    # Each turn gets at least one byte or raises (EOF, or the socket's timeout).
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError("the client closed the connection")
        data += chunk
    return bytes(data)


def recv_frame(conn):
    length, kind, frame_id = HEADER.unpack(recv_exact(conn, HEADER.size))
    return kind, frame_id, recv_exact(conn, length - 5)


class FakeServer:
    """Accepts one connection, does the HELLO exchange, then runs `script(self, conn)`;
    the ids of the REQUESTs it read are in `ids`."""

    def __init__(self, script):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.ids = []
        self.failure = []
        self.thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
        self.thread.start()

    def _serve(self, script):
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(10)
                conn.sendall(encode(HELLO, 0, b"COUR" + struct.pack(">HI", 1, 1 << 20)))
                kind, _, _ = recv_frame(conn)
                assert kind == HELLO, f"expected the client's HELLO, got kind {kind}"
                script(self, conn)
        except BaseException as err:  # reported by join(), in the test's thread
            self.failure.append(err)
        finally:
            self.listener.close()

    def read_request(self, conn):
        kind, frame_id, payload = recv_frame(conn)
        assert kind == REQUEST, f"expected a REQUEST, got kind {kind}"
        self.ids.append(frame_id)
        return frame_id, payload

    def client(self):
        return Client("127.0.0.1", self.port, timeout=5)

    def join(self):
        self.thread.join(timeout=10)
        if self.thread.is_alive():
            raise AssertionError("the fake server did not finish")
        if self.failure:
            raise self.failure[0]


def answer_then_goaway(answered, last_id_for):
    """Echoes `answered` REQUESTs, reads one more, sends GOAWAY with
    `last_id_for(its id)` and closes without answering it."""
    def script(server, conn):
        for _ in range(answered):
            frame_id, payload = server.read_request(conn)
            conn.sendall(encode(REPLY, frame_id, payload))
        frame_id, _ = server.read_request(conn)
        conn.sendall(encode(GOAWAY, 0, struct.pack(">I", last_id_for(frame_id))))
        conn.shutdown(socket.SHUT_WR)
        recv_until_eof(conn)
    return script


def recv_until_eof(conn):
    """Waits for the client to close, so that closing here sends FIN, not RST."""
    for _ in range(100):
        if not conn.recv(65536):
            return
    raise AssertionError("the client kept sending")


class OutcomeTest(unittest.TestCase):
    """Which exception an unanswered call gets, against a scripted server."""

    def run_script(self, script, first_id=None, calls=1):
        """Makes `calls` calls; returns the last one's exception and the ids sent."""
        server = FakeServer(script)
        with server.client() as client:
            if first_id is not None:
                client._next_id = first_id  # to reach the wrap without 2**32 calls
            for _ in range(calls - 1):
                self.assertEqual(client.call(b"answered"), b"answered")
            with self.assertRaises(ConnectionClosed) as caught:
                client.call(b"unanswered")
        server.join()
        return caught.exception, server.ids

    def test_unanswered_call_at_the_goaway_last_id_is_outcome_unknown(self):
        err, ids = self.run_script(answer_then_goaway(0, lambda request_id: request_id))
        self.assertEqual(ids, [1])
        self.assertIsInstance(err, OutcomeUnknown)

    def test_unanswered_call_after_the_goaway_last_id_is_going_away(self):
        for answered, last_id_for, expected in [
            (1, lambda request_id: request_id - 1, [1, 2]),
            (0, lambda request_id: 0, [1]),  # last id 0: no request received
        ]:
            with self.subTest(answered=answered):
                err, ids = self.run_script(answer_then_goaway(answered, last_id_for),
                                           calls=answered + 1)
                self.assertEqual(ids, expected)
                self.assertIsInstance(err, GoingAway)

    def test_goaway_last_id_is_compared_in_send_order_across_the_id_wrap(self):
        top = 0xFFFFFFFF
        cases = [
            # (first id, calls, GOAWAY's last id, ids sent, outcome)
            (top, 1, top - 1, [top], GoingAway),
            (top, 1, top, [top], OutcomeUnknown),
            # 1 follows 0xFFFFFFFF (0 is skipped): sent after, though numerically smaller.
            (top, 2, top, [top, 1], GoingAway),
            (top, 2, 1, [top, 1], OutcomeUnknown),
            # Half way round: 2**31 - 1 ids on is after; exactly 2**31 is undefined in
            # serial arithmetic and taken as unknown, the side that invites no resend.
            (1 << 31, 1, 1, [1 << 31], GoingAway),
            ((1 << 31) + 1, 1, 1, [(1 << 31) + 1], OutcomeUnknown),
            # Last id 0 is "no REQUEST received" (a received id is never 0), however far
            # round the ids have gone, not an id to compare with.
            (3 << 30, 1, 0, [3 << 30], GoingAway),
        ]
        for first_id, calls, last_id, expected_ids, outcome in cases:
            with self.subTest(first_id=first_id, calls=calls, last_id=last_id):
                err, ids = self.run_script(
                    answer_then_goaway(calls - 1, lambda _, last_id=last_id: last_id),
                    first_id=first_id, calls=calls)
                self.assertEqual(ids, expected_ids)
                self.assertIs(type(err), outcome)

    def test_close_without_goaway_after_the_request_was_sent_is_outcome_unknown(self):
        def close_after_reading(server, conn):
            server.read_request(conn)

        def reset_after_reading(server, conn):
            server.read_request(conn)
            # Linger 0: close sends RST, so the client's receive fails instead of EOF.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        for script in (close_after_reading, reset_after_reading):
            with self.subTest(script=script.__name__):
                err, ids = self.run_script(script)
                self.assertEqual(ids, [1])
                self.assertIs(type(err), OutcomeUnknown)

    def test_call_after_goaway_is_going_away_and_sends_nothing(self):
        after = []

        def goaway_then_answer(server, conn):
            frame_id, payload = server.read_request(conn)
            conn.sendall(encode(GOAWAY, 0, struct.pack(">I", frame_id)))
            conn.sendall(encode(REPLY, frame_id, payload))
            # Whatever the client sends from here on, up to its close.
            for _ in range(100):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                after.append(chunk)

        server = FakeServer(goaway_then_answer)
        with server.client() as client:
            self.assertEqual(client.call(b"answered"), b"answered")
            with self.assertRaises(GoingAway):
                client.call(b"late")
        server.join()
        self.assertEqual(after, [], "the call after GOAWAY must not be sent")

    def test_call_on_a_closed_client_is_a_plain_connection_closed(self):
        def nothing(server, conn):
            recv_until_eof(conn)

        server = FakeServer(nothing)
        client = server.client()
        client.close()
        with self.assertRaises(ConnectionClosed) as caught:
            client.call(b"x")
        self.assertIs(type(caught.exception), ConnectionClosed)
        server.join()
        self.assertEqual(server.ids, [])

    def test_send_failure_is_connection_closed_only_when_nothing_left(self):
        for accepted, outcome in [(0, ConnectionClosed), (3, OutcomeUnknown)]:
            with self.subTest(accepted=accepted):
                def nothing(server, conn):
                    recv_until_eof(conn)

                server = FakeServer(nothing)
                client = server.client()
                client._sock = FailingSocket(client._sock, accepted)
                with self.assertRaises(ConnectionClosed) as caught:
                    client.call(b"payload")
                self.assertIs(type(caught.exception), outcome)
                client.close()
                server.join()

    def test_closing_error_with_empty_or_cut_text_is_a_server_error(self):
        for text, expected in [(b"", ""), ("limit: 5 \u20ac".encode()[:-1], "limit: 5 \ufffd")]:
            with self.subTest(text=text):
                def error_after_reading(server, conn, text=text):
                    server.read_request(conn)
                    conn.sendall(encode(ERROR, 0, struct.pack(">H", 1) + text))
                    recv_until_eof(conn)

                server = FakeServer(error_after_reading)
                with server.client() as client:
                    with self.assertRaises(ServerError) as caught:
                        client.call(b"x")
                    self.assertEqual(caught.exception.code, 1)
                    self.assertEqual(caught.exception.text, expected)
                    # An id-0 ERROR closes the connection: the next call sends nothing.
                    with self.assertRaises(ConnectionClosed) as after:
                        client.call(b"y")
                    self.assertIs(type(after.exception), ConnectionClosed)
                server.join()
                self.assertEqual(server.ids, [1])


class FailingSocket:
    """Wraps a socket so that sending takes `accepted` bytes, then fails."""

    def __init__(self, sock, accepted):
        self.sock = sock
        self.accepted = accepted

    def send(self, data):
        if self.accepted == 0:
            raise BrokenPipeError("broken pipe (simulated)")
        count = min(self.accepted, len(data))
        self.accepted -= count
        return self.sock.send(data[:count])

    def __getattr__(self, name):
        return getattr(self.sock, name)


def banner_server(banner):
    """A TCP listener that writes `banner` to its one peer, then waits for it to close.
    Returns the port."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        with listener:
            listener.settimeout(30)
            conn, _ = listener.accept()
            with conn:
                conn.sendall(banner)
                conn.settimeout(30)
                try:
                    while conn.recv(1024):
                        pass
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return port


class NotCourierTest(unittest.TestCase):
    def test_an_http_server_is_named_with_its_first_bytes(self):
        port = banner_server(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        with self.assertRaises(NotCourier) as caught:
            Client("127.0.0.1", port, timeout=5)
        text = str(caught.exception)
        self.assertIn("did not speak courier (first bytes: 48 54 54 50 2f", text)
        self.assertIn("'HTTP/1.1 400 Bad'", text)
        self.assertTrue(caught.exception.first.startswith(b"HTTP/1.1"))

    def test_an_ssh_banner_is_named_too(self):
        port = banner_server(b"SSH-2.0-OpenSSH_9.6\r\n")
        with self.assertRaises(NotCourier) as caught:
            Client("127.0.0.1", port, timeout=5)
        self.assertIn("53 53 48 2d", str(caught.exception))

    def test_a_plain_framing_server_is_silent_and_said_to_be(self):
        server = Server("--framing", "plain")
        try:
            with self.assertRaises(NotCourier) as caught:
                server.client(timeout=0.5)
            self.assertIn("sent nothing", str(caught.exception))
            self.assertIn("plain", str(caught.exception))
        finally:
            server.stop()


TLS_FILES = [os.environ.get(name) for name in ("COURIER_TEST_CA", "COURIER_TEST_CERT", "COURIER_TEST_KEY")]


@unittest.skipUnless(all(TLS_FILES), "COURIER_TEST_CA/CERT/KEY not set (tests/python.rs sets them)")
class TlsTest(unittest.TestCase):
    def setUp(self):
        ca, cert, key = TLS_FILES
        self.ca = ca
        self.server = Server("--tls-cert", cert, "--tls-key", key)

    def tearDown(self):
        self.server.stop()

    def test_a_call_over_tls_is_answered(self):
        context = ssl.create_default_context(cafile=self.ca)
        with self.server.client(tls=context, server_hostname="localhost") as client:
            self.assertEqual(client.call(b"over tls"), b"over tls")

    def test_a_plaintext_client_on_the_tls_port_is_told_it_may_be_tls(self):
        with self.assertRaises(NotCourier) as caught:
            self.server.client(timeout=0.5)
        self.assertIn("TLS port", str(caught.exception))

    def test_an_untrusted_certificate_fails_the_handshake(self):
        context = ssl.create_default_context()  # the system's CAs: not the test CA
        with self.assertRaises(ssl.SSLError):
            self.server.client(tls=context, server_hostname="localhost")


class AuthTest(unittest.TestCase):
    def test_the_token_opens_the_server_and_a_wrong_one_does_not(self):
        server = Server(env_extra={"COURIER_AUTH_TOKEN": "py-secret"})
        try:
            with server.client(auth_token="py-secret") as client:
                self.assertEqual(client.call(b"in"), b"in")
            for token in (None, "wrong"):
                with server.client(auth_token=token) as client:
                    with self.assertRaises(ServerError) as caught:
                        client.call(b"let me in")
                    self.assertEqual(caught.exception.code, 15)
                    self.assertEqual(caught.exception.text, "authentication failed")
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main()
