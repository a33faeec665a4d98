"""Tests of courier_client.py against the real `courier` binary.

Run by `cargo test` (tests/python.rs), which sets COURIER_BIN to the binary it built.
By hand: COURIER_BIN=target/debug/courier python3 -m unittest -v clients/python/test_courier_client.py
"""

import os
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from courier_client import (  # noqa: E402
    CallTimeout,
    Client,
    CourierError,
    FrameTooLarge,
    GoingAway,
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
        server = Server("--exec", "sleep 0.5; cat")
        client = server.client()
        replies = []
        caller = threading.Thread(target=lambda: replies.append(client.call(b"in flight")))
        caller.start()
        time.sleep(0.2)
        server.proc.terminate()
        caller.join(timeout=10)
        self.assertEqual(replies, [b"in flight"])
        # GOAWAY came before the reply, so the client knows not to send more.
        with self.assertRaises(GoingAway):
            client.call(b"late")
        client.close()
        # Wait for the first signal's clean exit; stop() then sends nothing more (a
        # second signal would make the server exit at once, with status 130).
        self.assertEqual(server.proc.wait(timeout=20), 0)
        server.stop()


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
