"""A man in the middle, as its own process: a TCP relay between a node and the node it dials.

    python mitm_relay.py --target HOST:PORT --mode MODE [--inject FILE] [--tls CERT KEY CA]

It listens on 127.0.0.1 (port chosen; prints ``READY <port>``), and for each connection dials the
target and relays bytes both ways. It follows the e2actors stream toward the target (the client's
hello, its proof, then the records) and, per ``MODE``, tampers with it once the handshake went
through untouched:

* ``relay``: nothing (a relayed handshake alone);
* ``inject``: after record 0 (the client's HELLO frame), writes the bytes of FILE (e.g. a Spawn
  frame built by the test) into the authenticated stream;
* ``replay``: sends record 1 twice;
* ``reorder``: holds record 1 until record 2 has gone, then sends it;
* ``modify``: flips one bit of record 1.

With ``--tls``, it terminates TLS on both legs with a certificate the cluster's CA signed (the
nodes' own, as a thief of one node's key would) and relays the plaintext in between.

Each action is logged on stderr as ``ACTION <what>``.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys

MAGIC_LEN, NONCE, PROOF = 4, 32, 32


class ClientStream:
    """Cuts the client-to-target byte stream into units: hello, proof, records."""

    def __init__(self) -> None:
        self.buf = b""
        self.stage = "hello"
        self.records = 0

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self.buf += data
        out = []
        while True:
            if self.stage == "hello":
                head = MAGIC_LEN + NONCE + 1
                if len(self.buf) < head or len(self.buf) < head + self.buf[head - 1]:
                    return out
                n = head + self.buf[head - 1]
                out.append(("hello", self.buf[:n]))
                self.stage = "proof"
            elif self.stage == "proof":
                if len(self.buf) < PROOF:
                    return out
                n = PROOF
                out.append(("proof", self.buf[:n]))
                self.stage = "records"
            else:
                if len(self.buf) < 4:
                    return out
                n = 4 + int.from_bytes(self.buf[:4], "big")
                if len(self.buf) < n:
                    return out
                out.append((f"record {self.records}", self.buf[:n]))
                self.records += 1
            self.buf = self.buf[n:]


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def tamper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str, inject: bytes) -> None:
    stream = ClientStream()
    held: bytes | None = None
    try:
        while data := await reader.read(65536):
            for unit, raw in stream.feed(data):
                if mode == "replay" and unit == "record 1":
                    writer.write(raw + raw)
                    print("ACTION replayed record 1", file=sys.stderr, flush=True)
                elif mode == "reorder" and unit == "record 1":
                    held = raw
                elif mode == "reorder" and unit == "record 2" and held is not None:
                    writer.write(raw + held)
                    print("ACTION swapped records 1 and 2", file=sys.stderr, flush=True)
                elif mode == "modify" and unit == "record 1":
                    writer.write(raw[:-20] + bytes([raw[-20] ^ 0x01]) + raw[-19:])
                    print("ACTION flipped a bit of record 1", file=sys.stderr, flush=True)
                else:
                    writer.write(raw)
                if mode == "inject" and unit == "record 0":
                    writer.write(inject)
                    print(f"ACTION injected {len(inject)} bytes after record 0", file=sys.stderr, flush=True)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main(args: argparse.Namespace) -> None:
    host, port = args.target.rsplit(":", 1)
    inject = open(args.inject, "rb").read() if args.inject else b""

    server_ctx = client_ctx = None
    if args.tls:
        cert, key, ca = args.tls
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
        server_ctx.load_cert_chain(cert, key)
        server_ctx.verify_mode = ssl.CERT_REQUIRED
        client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        client_ctx.load_cert_chain(cert, key)
        client_ctx.check_hostname = False

    async def on_client(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            tr, tw = await asyncio.open_connection(host, int(port), ssl=client_ctx)
        except OSError:
            cw.close()
            return
        await asyncio.gather(tamper(cr, tw, args.mode, inject), pipe(tr, cw))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_ctx)
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    def on_stdin() -> None:
        if not done.done() and not sys.stdin.buffer.read1(1):
            done.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await done  # the test closes our stdin: we end


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--mode", choices=["relay", "inject", "replay", "reorder", "modify"], default="relay")
    ap.add_argument("--inject")
    ap.add_argument("--tls", nargs=3, metavar=("CERT", "KEY", "CA"))
    asyncio.run(main(ap.parse_args()))
