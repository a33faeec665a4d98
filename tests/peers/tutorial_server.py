"""The server of a beginner's socket tutorial: serve one client, greet it with
01 02 03 04, print what it sends as hex, close.

Run by tests/peers.rs. It binds port 0 and prints the port on its first line
so the test knows where to connect.
"""
import socket

with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    print(server.getsockname()[1], flush=True)
    conn, addr = server.accept()
    with conn:
        conn.sendall(bytes([1, 2, 3, 4]))
        data = conn.recv(1024)
        print(data.hex(), flush=True)
