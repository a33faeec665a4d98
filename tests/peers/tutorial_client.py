"""The client of a beginner's socket tutorial: connect, wait for the server's
greeting, print it as hex, send 05 06 07 08, close.

Usage: tutorial_client.py PORT
"""
import socket
import sys

port = int(sys.argv[1])
with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
    client.settimeout(10)
    client.connect(("127.0.0.1", port))
    data = client.recv(1024)
    print(data.hex(), flush=True)
    client.sendall(bytes([5, 6, 7, 8]))
