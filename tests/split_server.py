"""A tiny HTTP server whose response body is written in two TCP segments (TCP_NODELAY and a pause
between the writes), split inside an IDS signature: the IDS must reassemble the stream to see it.

    python tests/split_server.py HOST PORT FIRST_PART SECOND_PART
"""

from __future__ import annotations

import socket
import sys
import threading
import time


def serve(host: str, port: int, first: bytes, second: bytes) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(16)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn, first, second), daemon=True).start()


def handle(conn: socket.socket, first: bytes, second: bytes) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        head = (f"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(first) + len(second)}\r\n\r\n").encode()
        conn.sendall(head + first)
        time.sleep(0.3)
        conn.sendall(second)
        time.sleep(0.5)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4].encode())
