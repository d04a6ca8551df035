"""A hand-made peer over a blocking socket: it passes the handshake (when it holds the secret) and
then sends whatever the test wants, sealed in proper records or as raw bytes. It is built on the
runtime's pure handshake and record code, so it speaks exactly the node's protocol."""

from __future__ import annotations

import socket
import struct

import msgpack

from e2actors.runtime import auth
from e2actors.runtime.records import Opener, Sealer


def tcp_connect(address: str, timeout: float = 5.0) -> socket.socket:
    host, port = address[len("tcp://"):].rsplit(":", 1)
    return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)


def frame(kind: int, a: object, b: object, tag: int | None, payload: object) -> bytes:
    """One length-prefixed frame body, built by hand (any shape, even a wrong one)."""
    body = msgpack.packb([kind, a, b, tag, payload], use_bin_type=True)
    return struct.pack(">I", len(body)) + body


class RawPeer:
    """``RawPeer(address, secret)`` connects and completes the handshake as a client."""

    def __init__(self, address: str, secret: bytes, name: str = "raw", hello_frame: bool = True) -> None:
        self.sock = tcp_connect(address)
        self.hs = auth.Handshake(secret, True, name)
        self.sock.sendall(self.hs.start())
        while not self.hs.done:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("closed during handshake")
            try:
                out = self.hs.feed(data)
            except auth.AuthError as exc:  # send our proof anyway, as a node does, then give up
                if getattr(exc, "reply", b""):
                    self.sock.sendall(exc.reply)  # type: ignore[attr-defined]
                self.sock.close()
                raise
            if out:
                self.sock.sendall(out)
        self.sealer = Sealer(self.hs.send_key)
        self.opener = Opener(self.hs.recv_key, 1 << 26)
        self.pending = self.hs.rest
        if hello_frame:
            self.send(frame(6, f"anon://{name}", "0.1.0", None, name))

    def seal(self, frames: bytes) -> bytes:
        return self.sealer.seal(frames)

    def send(self, frames: bytes) -> None:
        """Seal ``frames`` (bytes of whole frames, or anything) in one record and send it."""
        self.sock.sendall(self.seal(frames))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closed(self, timeout: float = 3.0) -> bool:
        """True once the other side closed the connection (read until EOF or reset)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()
