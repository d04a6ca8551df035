"""The bounded HTTP/1.x request parser behind the IDS's http.* buffers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from e2actors.nf.http1 import RequestParser, normalize_uri

REQS = (b"GET http://Ex.com:8080/a%41b?q=1 HTTP/1.1\r\nHost: WWW.X.com:80\r\nUser-Agent: curl\r\nX: 1\r\n"
        b"x: 2\r\nContent-Length: 3\r\n\r\nabcPOST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n")


def test_pipelined_requests_in_one_byte_chunks() -> None:
    p = RequestParser()
    out = []
    for i in range(len(REQS)):
        out += p.feed(REQS[i:i + 1])
    assert [r["http.method"] for r in out] == [b"GET", b"POST", b"GET"] and p.dead is None
    r = out[0]
    assert r["http.uri"] == b"/aAb?q=1" and r["http.uri.raw"] == b"http://Ex.com:8080/a%41b?q=1"
    assert r["http.host"] == b"www.x.com" and r["http.host.raw"] == b"WWW.X.com:80"
    assert r["http.header"] == b"Host: WWW.X.com:80\r\nUser-Agent: curl\r\nX: 1, 2\r\nContent-Length: 3\r\n"
    assert r["http.user_agent"] == b"curl" and r["http.protocol"] == b"HTTP/1.1"
    assert "http.cookie" not in r


def test_bounds_and_non_http() -> None:
    p = RequestParser(max_header=64)
    assert p.feed(b"GET /" + b"a" * 100) == [] and "longer than 64" in p.dead and p.buf == b""
    q = RequestParser()
    assert q.feed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") == [] and q.dead == "not an HTTP request"
    assert normalize_uri(b"/%zz%4") == b"/%zz%4"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 50))
def test_fuzzed_streams_never_raise_and_stay_bounded(data: bytes, cut: int) -> None:
    p = RequestParser(max_header=256)
    for i in range(0, len(data), cut):
        for req in p.feed(data[i:i + cut]):
            assert isinstance(req["http.method"], bytes)
        assert len(p.buf) <= 256 + cut
