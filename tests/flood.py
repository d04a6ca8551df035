"""A connection flood, as its own process: ``python flood.py HOST PORT N [--send BYTES_HEX]``.

Opens N TCP connections to HOST:PORT as fast as it can, optionally writes the same bytes on each
(e.g. a partial request), prints ``OPEN <connected> <failed>``, then holds them until its stdin
closes; prints ``CLOSED_BY_PEER <n>`` (how many the other side had closed by then) and exits."""

from __future__ import annotations

import select
import socket
import sys


def main() -> None:
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    payload = bytes.fromhex(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--send" else b""
    socks, failed = [], 0
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.connect((host, port))
            if payload:
                s.sendall(payload)
            socks.append(s)
        except OSError:
            failed += 1
            s.close()
    print("OPEN", len(socks), failed, flush=True)
    sys.stdin.read()
    closed = 0
    for s in socks:
        r, _, _ = select.select([s], [], [], 0)
        if r:
            try:
                if not s.recv(4096):
                    closed += 1
            except OSError:
                closed += 1
        s.close()
    print("CLOSED_BY_PEER", closed, flush=True)


if __name__ == "__main__":
    main()
