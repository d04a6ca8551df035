"""HostFilter and the HTTP Host / TLS SNI parsers (pure parsers fuzzed with hypothesis)."""

from __future__ import annotations

import ssl
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2actors.errors import ConfigError
from e2actors.nf.builtin.hostfilter import HostFilter
from e2actors.packet import traffic
from e2actors.packet.l7 import FOUND, MORE, NO, http_host, normalize_host, parse_http_host, parse_tls_sni, tls_sni

FLOW = (6, b"\xc6\x12\x00\x01", 40000, b"\xc6\x13\x00\x01", 443, ())


# --- a ClientHello built by hand, per RFC 8446 section 4.1.2 -------------------------------------------
def ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def client_hello(sni: str | None = "www.youtube.com", *, grease: bool = True, pad: int = 0) -> bytes:
    """The handshake message (type 1 + 24-bit length + body), not yet in records."""
    exts = b""
    if grease:
        exts += ext(0x0A0A, b"")  # GREASE (RFC 8701) first: the parser must walk past it
    if sni is not None:
        name = sni.encode()
        entry = b"\x00" + struct.pack("!H", len(name)) + name  # NameType host_name
        exts += ext(0, struct.pack("!H", len(entry)) + entry)
    exts += ext(10, struct.pack("!H", 4) + struct.pack("!HH", 0x001D, 0x0017))  # supported_groups
    exts += ext(43, b"\x04\x03\x04\x03\x03")  # supported_versions: TLS 1.3, 1.2
    exts += ext(13, struct.pack("!HHH", 4, 0x0403, 0x0804))  # signature_algorithms
    exts += ext(51, struct.pack("!HHH", 36, 0x001D, 32) + bytes(range(32)))  # key_share x25519
    if pad:
        exts += ext(21, bytes(pad))  # padding (RFC 7685)
    ciphers = struct.pack("!HHH", 0x1301, 0x1302, 0x1303)
    body = (b"\x03\x03" + bytes(32) + b"\x20" + bytes(range(32)) + struct.pack("!H", len(ciphers)) + ciphers
            + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(hs: bytes, size: int = 16384) -> bytes:
    """``hs`` in TLS plaintext records of at most ``size`` bytes (RFC 8446 section 5.1)."""
    out = b""
    for i in range(0, len(hs), size):
        frag = hs[i:i + size]
        out += b"\x16\x03\x01" + struct.pack("!H", len(frag)) + frag
    return out


def openssl_client_hello(server_name: str) -> bytes:
    """The ClientHello OpenSSL (through Python's ssl module) really sends, taken from a memory BIO."""
    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


# --- the pure parsers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("data,host", [
    (b"GET / HTTP/1.1\r\nHost: www.youtube.com\r\n\r\n", "www.youtube.com"),
    (b"GET / HTTP/1.1\r\nUser-Agent: x\r\nhOsT:   WWW.YouTube.COM.:8080  \r\n\r\n", "www.youtube.com"),
    (b"POST /x HTTP/1.0\nHost: a.example\n\n", "a.example"),
    (b"GET http://proxy.example.com:3128/p HTTP/1.1\r\nHost: other.example\r\n\r\n", "proxy.example.com"),
    (b"CONNECT www.youtube.com:443 HTTP/1.1\r\nHost: www.youtube.com:443\r\n\r\n", "www.youtube.com"),
    (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n", "2001:db8::1"),
    (b"GET / HTTP/1.1\r\nHost: 198.19.0.1\r\n", "198.19.0.1"),  # found before the header ends
])
def test_http_host(data: bytes, host: str) -> None:
    assert parse_http_host(data) == (FOUND, host) and http_host(data) == host


@pytest.mark.parametrize("data,state", [
    (b"", MORE), (b"GE", MORE), (b"GET /index.h", MORE), (b"GET / HTTP/1.1\r\nHost: www.you", MORE),
    (b"GET / HTTP/1.1\r\nAccept: */*\r\n", MORE),
    (b"\x16\x03\x01\x02\x00\x01", NO), (b"HTTP/1.1 200 OK\r\n", NO), (b"SSH-2.0-OpenSSH_9.2\r\n", NO),
    (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", NO),  # no Host at all
    (b"GET / HTTP/2.0\r\n", NO), (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", NO),
    (b"GET / HTTP/1.1\r\nHost: bad host!\r\n\r\n", NO), (b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n", NO),
    (b"GETTINGVERYLONGMETHODNAMEXX / HTTP/1.1\r\n", NO),
])
def test_http_not_yet_or_not_http(data: bytes, state: str) -> None:
    assert parse_http_host(data)[0] == state


@pytest.mark.parametrize("text,norm", [
    ("YouTube.com", "youtube.com"), ("youtube.com.", "youtube.com"), ("youtube.com:443", "youtube.com"),
    ("[::1]", "::1"), ("a..b", None), ("", None), ("x:y:z", None), ("exa mple.com", None), (".a.com", None),
])
def test_normalize_host(text: str, norm: str | None) -> None:
    assert normalize_host(text) == norm


def test_tls_sni_by_hand_and_split_everywhere() -> None:
    data = records(client_hello("www.youtube.com"))
    assert parse_tls_sni(data) == (FOUND, "www.youtube.com")
    for i in range(len(data)):
        state, host = parse_tls_sni(data[:i])
        assert state == MORE or (state == FOUND and host == "www.youtube.com"), i
    # the same ClientHello fragmented over several records (RFC 8446 allows any fragmentation)
    for size in (1, 7, 50, 100):
        frag = records(client_hello("m.youtube.com", pad=300), size)
        assert tls_sni(frag) == "m.youtube.com", size
        assert all(parse_tls_sni(frag[:i])[0] in (MORE, FOUND) for i in range(0, len(frag), 13))


def test_tls_no_sni_and_not_a_client_hello() -> None:
    assert parse_tls_sni(records(client_hello(None))) == (NO, None)
    sh = bytearray(records(client_hello()))
    sh[5] = 2  # ServerHello
    assert parse_tls_sni(bytes(sh)) == (NO, None)
    assert parse_tls_sni(b"\x17\x03\x03\x00\x10" + bytes(16)) == (NO, None)  # application data
    assert parse_tls_sni(b"\x16\x03\x01\x00\x00") == (NO, None)  # empty record is forbidden
    assert parse_tls_sni(b"GET / HTTP/1.1\r\n") == (NO, None)
    # a length running past its container is malformed, not "more"
    bad = bytearray(client_hello())
    bad[4 + 34 + 33 + 1] = 0xFF  # cipher_suites length low byte
    assert parse_tls_sni(records(bytes(bad))) == (NO, None)


def test_tls_sni_from_generated_traffic_builder() -> None:
    import random

    assert tls_sni(traffic._tls_client_hello(random.Random(1), "www.youtube.com")) == "www.youtube.com"


def test_tls_sni_of_a_real_openssl_client_hello() -> None:
    data = openssl_client_hello("www.youtube.com")
    assert data[:1] == b"\x16" and data[5] == 1
    assert parse_tls_sni(data) == (FOUND, "www.youtube.com")
    states = [parse_tls_sni(data[:cut]) for cut in range(0, len(data), 37)]
    assert states[0] == (MORE, None) and set(states) <= {(MORE, None), (FOUND, "www.youtube.com")}


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=600))
def test_parsers_never_raise_on_hostile_bytes(data: bytes) -> None:
    for parse in (parse_http_host, parse_tls_sni):
        state, host = parse(data)
        assert state in (FOUND, MORE, NO) and (host is None) == (state != FOUND)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 400), st.integers(0, 255), st.integers(0, 20))
def test_tls_parser_on_mutated_client_hellos(pos: int, value: int, cut: int) -> None:
    data = bytearray(records(client_hello("www.youtube.com"), 90))
    data[pos % len(data)] = value
    state, host = parse_tls_sni(bytes(data[: len(data) - cut]))
    assert state in (FOUND, MORE, NO)
    if state == FOUND:
        assert normalize_host(host) == host


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"GET ", b"/", b" HTTP/1.1", b"\r\n", b"Host:", b" a.b", b":", b"\n", b"\x00",
                                 b"http://", b"[", b"]", b"CONNECT ", b"\xff"]), max_size=30))
def test_http_parser_on_token_soup(parts: list[bytes]) -> None:
    state, host = parse_http_host(b"".join(parts))
    assert state in (FOUND, MORE, NO)


# --- the pipelet -----------------------------------------------------------------------------------
async def hf(**cfg) -> HostFilter:
    nf = HostFilter()
    await nf.setup(cfg)
    return nf


async def test_block_youtube_by_suffix_http_split_header() -> None:
    nf = await hf(block=["youtube.com"])
    assert nf.on_stream(FLOW, 0, b"GET / HTTP/1.1\r\nHo") is None  # not yet known: the flow passes
    v = nf.on_stream(FLOW, 0, b"st: www.YouTube.com\r\n\r\n")
    assert v.drop and v.sticky and v.meta == {"host": "www.youtube.com", "action": "blocked"}
    assert nf.on_stream(FLOW, 0, b"more") is None and nf.counters["blocked"] == 1


@pytest.mark.parametrize("host,blocked", [
    ("youtube.com", True), ("www.youtube.com", True), ("m.youtube.com", True),
    ("notyoutube.com", False), ("youtube.com.evil.net", False), ("kids.youtube.com", False),
    ("a.kids.youtube.com", False), ("example.com", False),
])
async def test_suffix_rules(host: str, blocked: bool) -> None:
    nf = await hf(block=["youtube.com"], allow=["kids.youtube.com"])
    v = nf.on_stream(FLOW, 0, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert v.drop == blocked and v.meta["host"] == host
    assert v.port == (None if blocked else "out")


async def test_tls_sni_blocked_to_port_and_tags() -> None:
    nf = await hf(block={"youtube.com": "video"}, tag={"example.com": "news", "*.example.org": None},
                  on_block="port")
    data = openssl_client_hello("www.youtube.com")
    v = None
    for i in range(0, len(data), 100):  # segment by segment
        v = nf.on_stream(FLOW, 0, data[i:i + 100]) or v
    assert v == nf.decide("www.youtube.com") and v.port == "blocked" and not v.drop
    assert v.meta == {"host": "www.youtube.com", "category": "video", "action": "blocked"}
    f2 = FLOW[:2] + (40001,) + FLOW[3:]
    v = nf.on_stream(f2, 0, records(client_hello("News.Example.COM")))
    assert v.port == "out" and v.meta == {"host": "news.example.com", "category": "news"}
    assert nf.decide("www.example.org").meta["category"] == "tagged"
    assert nf.counters["host_tls"] == 2


async def test_port_map_adds_ports_and_default_block() -> None:
    nf = await hf(port={"cdn.example.com": "slow"}, allow=["example.com"], action_default="block")
    assert nf.ports == ("out", "blocked", "slow") and set(nf.take_outputs()) == {"out", "blocked", "slow"}
    assert HostFilter.ports == ("out", "blocked")
    assert nf.decide("img.cdn.example.com").port == "slow"
    assert nf.decide("www.example.com").port == "out"
    assert nf.decide("other.net").drop
    assert nf.decide(None).drop  # unknown host under action_default: block


async def test_unknown_protocol_gives_default_and_bound() -> None:
    nf = await hf(block=["youtube.com"], max_buffer=100)
    v = nf.on_stream(FLOW, 0, b"SSH-2.0-OpenSSH\r\n")
    assert v == nf.decide(None) and v.port == "out" and not v.drop
    f2 = FLOW[:2] + (40001,) + FLOW[3:]
    assert nf.on_stream(f2, 0, b"GET /" + b"a" * 60) is None
    v = nf.on_stream(f2, 0, b"a" * 60)  # over 100 bytes without a complete request line
    assert v.port == "out" and nf.counters["gave_up"] == 1
    # the server speaking first (or answering) is not parsed for a host
    f3 = FLOW[:2] + (40002,) + FLOW[3:]
    assert nf.on_stream(f3, 1, b"220 smtp ready\r\n").port == "out"


async def test_first_direction_is_the_client_and_gap_gives_up() -> None:
    nf = await hf(block=["youtube.com"])
    assert nf.on_stream(FLOW, 0, b"GET / HTTP/1.1\r\n") is None
    assert nf.on_stream(FLOW, 1, b"HTTP/1.1 100 Continue\r\nHost: youtube.com\r\n") is None
    v = nf.on_gap(FLOW, 0, 100)
    assert v is not None and not v.drop and nf.counters["gave_up"] == 1


async def test_state_moves_mid_header() -> None:
    a = await hf(block=["youtube.com"])
    a.on_stream(FLOW, 0, b"GET / HTTP/1.1\r\nHost: you")
    b = await hf(block=["youtube.com"])
    b.import_state(msgpack.unpackb(msgpack.packb(a.export_state()), raw=False))
    assert b.on_stream(FLOW, 0, b"tube.com\r\n").drop


@pytest.mark.parametrize(("cfg", "key"), [
    ({"block": ["youtube.com"], "allow": ["youtube.com"]}, "allow"), ({"action_default": "maybe"}, "action_default"),
    ({"on_block": "x"}, "on_block"), ({"block": ["not a domain"]}, "block"), ({"blok": ["x.com"]}, "blok"),
    ({"max_buffer": "lots"}, "max_buffer"),
])
async def test_bad_config(cfg: dict, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        await hf(**cfg)
    assert ei.value.nf == "HostFilter" and ei.value.key == key and ei.value.reason


async def test_generated_web_traffic() -> None:
    from test_ids import streams

    nf = await hf(block=["youtube.com"])
    pkts = traffic.generate(flows=200, seed=5, profile="web")
    hosts: dict[tuple, str] = {}
    for flow, segs in streams(pkts).items():
        for d, data in segs:
            v = nf.on_stream(flow, d, data)
            if v is not None:
                hosts[flow] = v.meta.get("host", "")
                assert v.drop == hosts[flow].endswith("youtube.com")
    assert len(hosts) == 200 and all(h in traffic.WEB_HOSTS for h in hosts.values())
    assert nf.counters["host_http"] > 50 and nf.counters["host_tls"] > 50
    assert nf.counters["blocked"] == sum(h.endswith("youtube.com") for h in hosts.values()) > 0
