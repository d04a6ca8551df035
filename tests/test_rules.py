"""Snort-style rule parsing and the multi-pattern matcher (pure, no event loop)."""

from __future__ import annotations

import logging

import pytest
from conftest import need_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2actors.errors import E2Error
from e2actors.nf.rules import (
    TO_CLIENT,
    TO_SERVER,
    MAX_CONTENT,
    MAX_PCRE,
    Content,
    Matcher,
    Rule,
    RuleError,
    SkippedRule,
    inspect,
    load_rules,
    parse_ports,
    parse_rule,
    parse_rules,
)

ET_TELNET = "/usr/share/gocode/src/github.com/jasonish/go-idsrules/testdata/emerging-telnet.rules"


def rule(text: str) -> Rule:
    r = parse_rule(text)
    assert isinstance(r, Rule), r
    return r


# --- parsing -----------------------------------------------------------------------------------------
def test_parse_basic_rule() -> None:
    r = rule('alert tcp $HOME_NET any -> $EXTERNAL_NET 80 (msg:"ET WEB passwd \\"x\\""; flow:to_server,established; '
             'content:"/etc/passwd"; nocase; depth:200; offset:4; classtype:web-application-attack; sid:2000001; rev:3;)')
    assert r.sid == 2000001 and r.rev == 3 and r.gid == 1
    assert r.msg == 'ET WEB passwd "x"'
    assert r.side == TO_SERVER and r.classtype == "web-application-attack"
    assert r.contents == (Content(b"/etc/passwd", nocase=True, offset=4, depth=200),)
    assert 80 in r.dport and 81 not in r.dport and r.sport.is_any


def test_content_hex_escapes_multiple_and_negated() -> None:
    r = rule(r'alert tcp any any -> any any (msg:"m"; content:"|de ad|BE|EF|"; content:"a\;b\"c\\d"; '
             r'content:!"safe"; flow:from_server; sid:7;)')
    assert [c.pattern for c in r.contents] == [b"\xde\xadBE\xef", b'a;b"c\\d', b"safe"]
    assert [c.negated for c in r.contents] == [False, False, True]
    assert r.side == TO_CLIENT


def test_semicolon_inside_quotes_and_missing_last_semicolon() -> None:
    r = rule('alert tcp any any -> any any (msg:"a; b"; content:"x;y"; sid:9)')
    assert r.msg == "a; b" and r.contents[0].pattern == b"x;y"


@pytest.mark.parametrize("spec,inside,outside", [
    ("any", [0, 80, 65535], []),
    ("80", [80], [79, 81]),
    ("!80", [79, 81], [80]),
    ("[80,443,8000:8080]", [80, 443, 8000, 8042, 8080], [81, 7999, 8081]),
    ("1024:", [1024, 65535], [1023]),
    (":1023", [0, 1023], [1024]),
    ("[1:100,!50]", [1, 49, 51, 100], [50, 101]),
    ("[!80,!443]", [1, 8080], [80, 443]),
    ("$HTTP_PORTS", [80, 8080], [81]),
    ("!$HTTP_PORTS", [81], [80, 8080]),
    ("$UNKNOWN_PORTS", [1, 80], []),
])
def test_port_specs(spec: str, inside: list[int], outside: list[int]) -> None:
    ps = parse_ports(spec, {"HTTP_PORTS": "[80,8080]"})
    for p in inside:
        assert p in ps, (spec, p)
    for p in outside:
        assert p not in ps, (spec, p)


def test_bidirectional_ports() -> None:
    r = rule('alert tcp any 23 <> any any (content:"x"; sid:1;)')
    assert r.ports_match(23, 40000) and r.ports_match(40000, 23) and not r.ports_match(40000, 22)
    r = rule('alert tcp any 23 -> any any (content:"x"; sid:1;)')
    assert r.ports_match(23, 40000) and not r.ports_match(40000, 23)


def test_address_lists_with_spaces_are_accepted() -> None:
    r = rule('alert tcp [10.0.0.0/8, !10.1.0.0/16] any -> $HOME_NET [80, 443] (content:"x"; sid:1;)')
    assert 443 in r.dport


@pytest.mark.parametrize("text,reason", [
    ('alert tcp any any -> any any (content:"x"; pcre:"/x(?=y)/i"; sid:1;)', "pcre: look-around (RE2)"),
    ('alert tcp any any -> any any (content:"x"; pcre:"/(a)\\1/"; sid:1;)', "pcre: back-reference (RE2)"),
    ('alert tcp any any -> any any (content:"x"; pcre:"/x/x"; sid:1;)', "pcre flag x"),
    ('alert tcp any any -> any any (content:"x"; byte_extract:1,0,v; sid:1;)', "byte_extract"),
    ('alert tcp any any -> any any (content:"x"; flowint:a,+,1; sid:1;)', "flowint"),
    ('alert tcp any any -> any any (http.stat_code; content:"200"; sid:1;)', "buffer http.stat_code"),
    ('alert tcp any any -> any any (content:"x"; flow:only_frag; sid:1;)', "flow:only_frag"),
    ('alert dns any any -> any any (content:"x"; sid:1;)', "protocol dns"),
    ('pass tcp any any -> any any (content:"x"; sid:1;)', "action pass"),
    ('alert tcp any any -> any any (content:"x"; http_uri; content:"y"; pkt_data; content:"z"; sid:1;)',
     "payload and HTTP buffers in one rule"),
    ('alert tcp any any -> any any (content:"x"; content:"y"; distance:1; depth:4; sid:1;)',
     "offset/depth with distance/within"),
    ('alert tcp any any -> any any (msg:"nothing to match"; sid:1;)', "no payload keyword"),
])
def test_unsupported_rules_are_skipped_naming_the_option(text: str, reason: str, caplog) -> None:
    r = parse_rule(text)
    assert isinstance(r, SkippedRule) and reason in r.reasons and r.sid == 1
    with caplog.at_level(logging.WARNING, logger="e2actors.nf.rules"):
        rs = parse_rules(text + "\n", "my.rules")
    assert not rs.rules and rs.skipped[0].source == "my.rules:1"
    assert reason in caplog.text and "my.rules:1" in caplog.text


def test_flowbits_set_and_threshold_are_accepted() -> None:
    r = rule('alert tcp any any -> any any (content:"x"; flowbits:set,a.b; threshold: type limit, count 1, '
             'track by_src, seconds 30; fast_pattern:only; rawbytes; reference:url,x.org; metadata:a b; sid:1;)')
    assert r.contents[0].pattern == b"x"


@pytest.mark.parametrize("text,what", [
    ('alert tcp any any -> any any content:"x"; sid:1;', "<action>"),
    ('alert tcp any any any (content:"x"; sid:1;)', "7 fields"),
    ('alert tcp any any <- any any (content:"x"; sid:1;)', "direction"),
    ('alert tcp any any -> any any (content:"x; sid:1;)', "unterminated"),
    ('alert tcp any any -> any any (content:"|4g|"; sid:1;)', "bad hex"),
    ('alert tcp any any -> any any (content:"|41 4"; sid:1;)', "unterminated hex"),
    ('alert tcp any any -> any any (content:"x"; depth:ten; sid:1;)', "variable"),
    ('alert tcp any any -> any any (content:"x";)', "no sid"),
    ('alert tcp any any -> any any (nocase; content:"x"; sid:1;)', "before any content"),
    ('alert tcp any any -> any any (content:""; sid:1;)', "empty content"),
    ('alert tcp any 70000 -> any any (content:"x"; sid:1;)', "bad port"),
    ('alert tcp any any -> any any (content:x; sid:1;)', "quoted"),
    ('alert tcp any any -> any any (content:"abcdef"; depth:3; sid:1;)', "depth 3 shorter than its content"),
    ('alert tcp any any -> any any (content:"ab"; content:"abcdef"; within:3; sid:1;)', "within 3 shorter"),
    ('alert tcp any any -> any any (content:"x"; byte_test:1,~,2,0; sid:1;)', "bad operator"),
    ('alert tcp any any -> any any (content:"x"; pcre:"x+"; sid:1;)', "pcre must be /pattern/flags"),
    ('alert tcp any any -> any any (content:"x"; dsize:big; sid:1;)', "bad dsize"),
    ('alert tcp any any -> any any (content:"x"; flowbits:set; sid:1;)', "needs a name"),
    ('alert tcp any any -> any any (content:"x"; sid:99999999999999999999999999;)', "sid must be an integer"),
])
def test_malformed_rules_raise_with_file_and_line(text: str, what: str) -> None:
    src = "# comment\n\n" + text + "\n"
    if what == "variable":  # a non-numeric depth is a byte_extract variable: skipped, not malformed
        rs = parse_rules(src, "bad.rules")
        assert rs.skipped[0].reasons == ("depth from a variable",)
        return
    with pytest.raises(RuleError) as ei:
        parse_rules(src, "bad.rules")
    assert isinstance(ei.value, E2Error)
    assert str(ei.value).startswith("bad.rules:3: ") and what in str(ei.value)
    assert ei.value.source == "bad.rules:3"
    rs = parse_rules(src, "bad.rules", strict=False)  # non-strict: skipped as malformed
    assert not rs.rules and rs.skipped[0].reasons[0].startswith("malformed:")


def test_comments_disabled_rules_and_continuations(tmp_path) -> None:
    p = tmp_path / "x.rules"
    p.write_text('# a comment\n#alert tcp any any -> any any (content:"x"; sid:1;)\n'
                 'alert tcp any any -> any any (msg:"two \\\n   lines"; content:"y"; sid:2;)\n\n')
    rs = load_rules(p)
    assert rs.disabled == 1 and [r.sid for r in rs.rules] == [2] and rs.rules[0].source == f"{p}:3"


def test_missing_file_is_a_rule_error(tmp_path) -> None:
    with pytest.raises(RuleError, match="cannot read"):
        load_rules(tmp_path / "nope.rules")


def test_real_emerging_threats_rules(caplog) -> None:
    path = need_path(ET_TELNET, "Emerging Threats telnet rules (Debian golang-github-jasonish-go-idsrules-dev)")
    with caplog.at_level(logging.WARNING, logger="e2actors.nf.rules"):
        rs = load_rules(path)
    assert rs.disabled == 2
    assert sorted(r.sid for r in rs.rules) == [2008860, 2023016, 2023017, 2023018, 2023019, 2023304, 2100492,
                                              2100717, 2100719, 2101251]
    assert not rs.skipped and rs.skip_reasons() == {}  # before issue 15: 4 of 10 skipped (pcre, flowbits:isset)
    by = {r.sid: r for r in rs.rules}
    assert by[2008860].contents == (Content(b"Password required, but none set", depth=31),)
    assert by[2008860].side == TO_CLIENT and 23 in by[2008860].sport
    assert by[2100719].contents[0].pattern == b"login: root"
    assert by[2101251].contents[0].nocase
    assert by[2023016].side == TO_SERVER and 2323 in by[2023016].dport
    # and they match: a telnet server saying "Login incorrect" to a client
    m = Matcher(r for r in rs.rules if r.side != TO_SERVER and r.simple)
    st = m.new_state()
    assert m.fired(m.feed(st, b"\r\nLOGIN INCO"), st[2]) == []
    hit = m.fired(m.feed(st, b"RRECT\r\nlogin: "), st[2])
    assert [m.rules[i].sid for i in hit] == [2101251]


# --- matching ----------------------------------------------------------------------------------------
def feed_all(m: Matcher, chunks: list[bytes]) -> list[int]:
    st = m.new_state()
    sids: list[int] = []
    for c in chunks:
        sids += [m.rules[i].sid for i in m.fired(m.feed(st, c), st[2])]
    return sids


def test_pattern_split_across_chunks_is_found() -> None:
    m = Matcher([rule('alert tcp any any -> any any (content:"/etc/passwd"; sid:1;)')])
    assert feed_all(m, [b"GET /../../etc/pa", b"sswd HTTP/1.1"]) == [1]
    # split in one-byte chunks
    assert feed_all(m, [bytes([b]) for b in b"xx/etc/passwdyy"]) == [1]


def test_tail_is_bounded_by_longest_pattern() -> None:
    m = Matcher([rule('alert tcp any any -> any any (content:"abcdef"; sid:1;)'),
                 rule('alert tcp any any -> any any (content:"xyz"; nocase; sid:2;)')])
    assert m.keep == 5
    st = m.new_state()
    m.feed(st, b"q" * 10_000)
    assert st[1] == b"q" * 5 and st[0] == 10_000
    m.feed(st, b"ab")
    assert st[1] == b"qqqab"


def test_no_double_report_and_all_contents_needed() -> None:
    m = Matcher([rule('alert tcp any any -> any any (content:"cmd.exe"; content:"..%255c"; sid:3;)')])
    assert feed_all(m, [b"GET /scripts/", b"..%255c../winnt/system32/cmd", b".exe?/c+dir"]) == [3]
    assert feed_all(m, [b"GET /cmd.exe"]) == []


def test_depth_and_offset_count_from_stream_start() -> None:
    m = Matcher([rule('alert tcp any any -> any any (content:"GET"; depth:3; sid:1;)'),
                 rule('alert tcp any any -> any any (content:"XY"; offset:5; depth:4; sid:2;)')])
    assert feed_all(m, [b"GE", b"T / HTTP/1.1"]) == [1]
    assert feed_all(m, [b" GET /"]) == []  # starts at 1: ends past depth 3
    assert feed_all(m, [b"abcdXY"]) == []  # starts at 4 < offset 5
    assert feed_all(m, [b"abcd", b"eXYz"]) == [2]  # starts at 5, ends at 7 <= 9
    assert feed_all(m, [b"abcdefgX", b"Y"]) == [2]  # ends at 9 exactly, across chunks
    assert feed_all(m, [b"abcdefghXY"]) == []  # ends at 10 > 9
    assert m.scan_limit == 9
    st = m.new_state()
    m.feed(st, b"z" * 20)
    assert m.feed(st, b"GETXY") == []  # past every window: not even scanned


def test_nocase_and_hex() -> None:
    m = Matcher([rule('alert tcp any any -> any any (content:"uid=0|28|ROOT|29|"; nocase; sid:1;)'),
                 rule('alert tcp any any -> any any (content:"|ff fb 01|"; sid:2;)'),
                 rule('alert tcp any any -> any any (content:"CaSe"; sid:3;)')])
    assert feed_all(m, [b"UID=0(r", b"oot) gid=0"]) == [1]
    assert feed_all(m, [b"\x00\xff", b"\xfb\x01"]) == [2]
    assert feed_all(m, [b"case CASE"]) == []
    assert feed_all(m, [b"Ca", b"Se"]) == [3]


def test_negated_content() -> None:
    m = Matcher([rule('alert tcp any any -> any any (content:"login"; content:!"welcome"; sid:1;)')])
    assert feed_all(m, [b"login: x"]) == [1]
    assert feed_all(m, [b"welcome! login: x"]) == []
    assert feed_all(m, [b"welcome", b"! login:"]) == []


def test_match_once_on_a_datagram() -> None:
    m = Matcher([rule('alert udp any any -> any 53 (content:"|07|example|03|com"; nocase; sid:5;)')])
    assert [m.rules[i].sid for i in m.match_once(b"\x12\x34\x01\x00\x07EXAMPLE\x03com\x00")] == [5]
    assert m.match_once(b"nothing") == []


def test_empty_rule_set_matcher() -> None:
    m = Matcher([])
    st = m.new_state()
    assert m.feed(st, b"anything") == [] and m.match_once(b"x") == []


# --- bounds and hostile rule files (issue 14) ----------------------------------------------------------
def test_content_longer_than_the_bound_is_refused_with_its_line() -> None:
    ok = 'alert tcp any any -> any any (content:"' + "a" * MAX_CONTENT + '"; sid:1;)'
    assert parse_rules(ok).rules[0].contents[0].pattern == b"a" * MAX_CONTENT
    for n in (MAX_CONTENT + 1, 100_000):  # the 100 KB content of issue 14
        text = '# x\nalert tcp any any -> any any (content:"' + "a" * n + '"; sid:2;)\n'
        # (100 KB is also past the rule-length bound: either way the rule's line is named)
        with pytest.raises(RuleError, match=r"^big\.rules:2: (content|rule) longer than \d+ (bytes|characters)"):
            parse_rules(text, "big.rules")
    hexed = 'alert tcp any any -> any any (content:"|' + "41 " * (MAX_CONTENT + 1) + '|"; sid:3;)'
    with pytest.raises(RuleError, match="content longer"):
        parse_rules(hexed, "hex.rules")
    with pytest.raises(RuleError, match="pcre longer"):
        parse_rules('alert tcp any any -> any any (pcre:"/' + "a" * (MAX_PCRE + 1) + '/"; sid:4;)', "p.rules")


_FRAGMENTS = st.sampled_from([
    "alert", "drop", "pass", "tcp", "udp", "http", "any", "$HOME_NET", "[80,443]", "!80", "1024:", "->", "<>",
    "(", ")", ";", ":", ",", '"', "\\", "|", "!", "content", "content:\"x\"", "nocase", "depth:3", "offset:-1",
    "distance:0", "within:2", "pcre:\"/a+b/i\"", "pcre:\"/(?=x)/\"", "isdataat:5,relative", "byte_test:2,>,5,0",
    "byte_jump:2,0,relative", "dsize:>5", "flowbits:set,a", "flowbits:isset,a|b", "flowbits:noalert",
    "flow:to_server,established", "http.uri", "http_uri", "pkt_data", "sid:1", "sid:x", "rev:2", "msg:\"m\"",
    "|41 4", "|41|", "99999999999999999999999", " ", "\t", "\n", "#", "startswith", "endswith",
])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_FRAGMENTS, st.text(max_size=12)), max_size=40))
def test_fuzzed_rule_text_loads_or_is_a_rule_error_with_a_line(parts: list[str]) -> None:
    text = " ".join(parts)
    try:
        rs = parse_rules(text, "fuzz.rules")
    except RuleError as e:
        assert e.source.startswith("fuzz.rules:") and e.source.split(":")[1].isdigit()
        return
    for r in rs.rules:  # whatever loaded can be compiled and matched
        m = Matcher([r])
        m.match_once(b"GET /a+b x" * 3)
        for _, els in r.buffers:
            inspect(els, b"xabAB" * 10)
    rs2 = parse_rules(text, "fuzz.rules", strict=False)  # non-strict never raises on a rule line
    assert len(rs2.rules) == len(rs.rules)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzzed_bytes_as_a_rules_file(tmp_path_factory, data: bytes) -> None:
    p = tmp_path_factory.mktemp("fz") / "f.rules"
    p.write_bytes(data)
    try:
        load_rules(p)
    except RuleError as e:
        assert e.source.startswith(f"{p}:")


def test_a_catastrophic_backtracking_pcre_runs_in_linear_time() -> None:
    # ``(a+)+b`` against a run of a's with no b: Python's ``re`` backtracks exponentially (30 a's
    # take minutes there); RE2 is linear. No timing asserted: a backtracking engine would not
    # finish, and the thread's join bound turns that into a failure instead of a hung suite.
    import re
    import threading

    r = rule('alert tcp any any -> any any (content:"a"; pcre:"/(a+)+b/"; sid:7;)')
    (_buf, els), = r.buffers
    assert not isinstance(els[-1].regex, re.Pattern)  # (RE2's, not the standard library's)
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(inspect(els, b"a" * 100_000)), daemon=True)
    worker.start()
    worker.join(60)
    assert result == [False], "the pcre did not finish: a backtracking engine?"
    assert inspect(els, b"a" * 100_000 + b"b")
