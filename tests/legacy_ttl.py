"""A stand-in for legacy NF software: length-prefixed frames on stdin/stdout.

Decrements the IPv4 TTL (fixing the header checksum) and drops UDP datagrams to port 9 (discard);
``--passthrough`` returns every frame unchanged. Plain Python: no e2actors import.
"""

import struct
import sys


def csum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def main() -> None:
    passthrough = "--passthrough" in sys.argv
    rd, wr = sys.stdin.buffer, sys.stdout.buffer
    while True:
        hdr = rd.read(4)
        if len(hdr) < 4:
            return
        frame = bytearray(rd.read(struct.unpack(">I", hdr)[0]))
        if not passthrough and len(frame) >= 34 and frame[12:14] == b"\x08\x00":
            ihl = (frame[14] & 15) * 4
            if frame[23] == 17 and struct.unpack_from("!H", frame, 14 + ihl + 2)[0] == 9:
                continue
            frame[22] -= 1
            frame[24:26] = b"\0\0"
            frame[24:26] = struct.pack("!H", csum(bytes(frame[14:14 + ihl])))
        wr.write(struct.pack(">I", len(frame)) + bytes(frame))
        wr.flush()


if __name__ == "__main__":
    main()
