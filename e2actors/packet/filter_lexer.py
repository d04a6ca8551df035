"""Lexer for the pcap-filter language: the token rules of libpcap's ``scanner.l``.

Flex picks the longest match at each position and, between equally long matches, the rule written
first. We mirror that: a word such as ``1-1`` or ``len-1`` is one ID token (as in libpcap, where
``ip[1-1]`` is a syntax error), ``10.0.0.1`` is a dotted IPv4 address (HID), ``tcp-syn`` is a
named constant, and ``\\tcp`` is the ID ``tcp`` (the backslash escapes a keyword).

Keywords are case-sensitive, as in libpcap (``TCP`` is an ID, hence a syntax error).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from e2actors.errors import FilterError

__all__ = ["Token", "tokenize", "lex_token", "KEYWORDS", "NAMED_CONSTANTS"]


@dataclass(frozen=True, slots=True)
class Token:
    """One token: ``kind`` (a keyword's canonical name, a punctuation string, or one of
    ``NUM HID HID6 EID ID EOF``), its ``value`` (an int for NUM, the text otherwise) and the
    1-based ``column`` where it starts."""

    kind: str
    value: object
    column: int
    text: str = ""


# keyword text -> token kind (aliases share a kind)
KEYWORDS: dict[str, str] = {
    "dst": "dst", "src": "src",
    "link": "link", "ether": "link", "ppp": "link", "slip": "link",
    "fddi": "link", "tr": "link", "wlan": "link",
    "arp": "arp", "rarp": "rarp", "ip": "ip", "sctp": "sctp", "tcp": "tcp", "udp": "udp",
    "icmp": "icmp", "igmp": "igmp", "igrp": "igrp", "pim": "pim", "vrrp": "vrrp", "carp": "carp",
    "radio": "radio", "ip6": "ip6", "icmp6": "icmp6", "ah": "ah", "esp": "esp",
    "atalk": "atalk", "aarp": "aarp", "decnet": "decnet", "lat": "lat", "sca": "sca",
    "moprc": "moprc", "mopdl": "mopdl",
    "iso": "iso", "esis": "esis", "es-is": "esis", "isis": "isis", "is-is": "isis",
    "l1": "l1", "l2": "l2", "iih": "iih", "lsp": "lsp", "snp": "snp", "csnp": "csnp",
    "psnp": "psnp", "clnp": "clnp", "stp": "stp", "ipx": "ipx", "netbeui": "netbeui",
    "host": "host", "net": "net", "mask": "mask", "port": "port", "portrange": "portrange",
    "proto": "proto", "protochain": "protochain", "gateway": "gateway",
    "type": "type", "subtype": "subtype", "direction": "dir", "dir": "dir",
    "address1": "addr1", "addr1": "addr1", "address2": "addr2", "addr2": "addr2",
    "address3": "addr3", "addr3": "addr3", "address4": "addr4", "addr4": "addr4",
    "ra": "ra", "ta": "ta",
    "less": "less", "greater": "greater", "byte": "byte",
    "broadcast": "broadcast", "multicast": "multicast",
    "and": "AND", "or": "OR", "not": "!",
    "len": "len", "length": "len",
    "inbound": "inbound", "outbound": "outbound", "ifindex": "ifindex",
    "vlan": "vlan", "mpls": "mpls", "pppoed": "pppoed", "pppoes": "pppoes", "geneve": "geneve",
    "lane": "lane", "llc": "llc", "metac": "metac", "bcc": "bcc", "oam": "oam", "oamf4": "oamf4",
    "oamf4ec": "oamf4ec", "oamf4sc": "oamf4sc", "sc": "sc", "ilmic": "ilmic", "vpi": "vpi",
    "vci": "vci", "connectmsg": "connectmsg", "metaconnect": "metaconnect",
    "on": "pf", "ifname": "pf", "rnr": "pf", "rulenum": "pf", "reason": "pf", "rset": "pf",
    "ruleset": "pf", "srnr": "pf", "subrulenum": "pf", "action": "pf",
    "fisu": "mtp", "lssu": "mtp", "lsu": "mtp", "msu": "mtp", "hfisu": "mtp", "hlssu": "mtp",
    "hmsu": "mtp", "sio": "mtp", "opc": "mtp", "dpc": "mtp", "sls": "mtp", "hsio": "mtp",
    "hopc": "mtp", "hdpc": "mtp", "hsls": "mtp",
}

# named constants: lexed as NUM
NAMED_CONSTANTS: dict[str, int] = {
    "icmptype": 0, "icmpcode": 1,
    "icmp-echoreply": 0, "icmp-unreach": 3, "icmp-sourcequench": 4, "icmp-redirect": 5,
    "icmp-echo": 8, "icmp-routeradvert": 9, "icmp-routersolicit": 10, "icmp-timxceed": 11,
    "icmp-paramprob": 12, "icmp-tstamp": 13, "icmp-tstampreply": 14, "icmp-ireq": 15,
    "icmp-ireqreply": 16, "icmp-maskreq": 17, "icmp-maskreply": 18,
    "icmp6type": 0, "icmp6code": 1,
    "icmp6-destinationunreach": 1, "icmp6-packettoobig": 2, "icmp6-timeexceeded": 3,
    "icmp6-parameterproblem": 4,
    "icmp6-echo": 128, "icmp6-echoreply": 129, "icmp6-multicastlistenerquery": 130,
    "icmp6-multicastlistenerreportv1": 131, "icmp6-multicastlistenerdone": 132,
    "icmp6-routersolicit": 133, "icmp6-routeradvert": 134, "icmp6-neighborsolicit": 135,
    "icmp6-neighboradvert": 136, "icmp6-redirect": 137, "icmp6-routerrenum": 138,
    "icmp6-nodeinformationquery": 139, "icmp6-nodeinformationresponse": 140,
    "icmp6-ineighbordiscoverysolicit": 141, "icmp6-ineighbordiscoveryadvert": 142,
    "icmp6-multicastlistenerreportv2": 143, "icmp6-homeagentdiscoveryrequest": 144,
    "icmp6-homeagentdiscoveryreply": 145, "icmp6-mobileprefixsolicit": 146,
    "icmp6-mobileprefixadvert": 147, "icmp6-certpathsolicit": 148, "icmp6-certpathadvert": 149,
    "icmp6-multicastrouteradvert": 151, "icmp6-multicastroutersolicit": 152,
    "icmp6-multicastrouterterm": 153,
    "tcpflags": 13, "tcp-fin": 0x01, "tcp-syn": 0x02, "tcp-rst": 0x04, "tcp-push": 0x08,
    "tcp-ack": 0x10, "tcp-urg": 0x20, "tcp-ece": 0x40, "tcp-cwr": 0x80,
}

_N = r"(?:0[xX][0-9A-Fa-f]+|[0-9]+)"
_B = r"[0-9A-Fa-f][0-9A-Fa-f]?"
_B2 = r"[0-9A-Fa-f]{4}"
_RE_NUM = re.compile(_N)
_RE_HID = re.compile(rf"{_N}\.{_N}(?:\.{_N}(?:\.{_N})?)?")
_RE_MAC = re.compile(
    rf"(?:{_B}:{_B}:{_B}:{_B}:{_B}:{_B}|{_B}-{_B}-{_B}-{_B}-{_B}-{_B}"
    rf"|{_B}\.{_B}\.{_B}\.{_B}\.{_B}\.{_B}|{_B2}\.{_B2}\.{_B2}|[0-9A-Fa-f]{{12}})"
)
_RE_V6 = re.compile(r"[0-9A-Fa-f:]*:[0-9A-Fa-f:]*(?:[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+)?")
_RE_BOGUS_MAC = re.compile(rf"{_B}:+(?:{_B}:+)+")
_RE_ID = re.compile(r"[A-Za-z0-9](?:[-_.A-Za-z0-9]*[.A-Za-z0-9])?")
_RE_ESC_ID = re.compile(r"\\[^ !()\n\t]+")
_RE_ILLEGAL = re.compile(r"[^ \[\]\t\n\-_.A-Za-z0-9!<>()&|=]+")

_PUNCT2 = {">=": "GEQ", "<=": "LEQ", "!=": "NEQ", "==": "=", "<<": "LSH", ">>": "RSH",
           "&&": "AND", "||": "OR"}
_PUNCT1 = set("+-*/%:[]!<>()&|^=")


def _longest(regex: re.Pattern[str], s: str, i: int) -> int:
    m = regex.match(s, i)
    return m.end() - i if m else 0


def _stoul(text: str, expr: str, col: int) -> int:
    """libpcap's ``stoulen``: hex with 0x, octal with a leading 0, else decimal; 32 bits."""
    if text[:2] in ("0x", "0X"):
        v = int(text[2:], 16)
    elif len(text) > 1 and text[0] == "0":
        if any(c in "89" for c in text):
            raise FilterError(f"number {text} contains non-octal digit", expr, col)
        v = int(text, 8)
    else:
        v = int(text)
    if v > 0xFFFFFFFF:
        raise FilterError(f"number {text} overflows 32 bits", expr, col)
    return v


def lex_token(expr: str, i: int) -> tuple[Token, int]:
    """The one token that starts at index ``i`` of ``expr`` (not whitespace), and the index just
    after it; raise FilterError on a bad one. Lets a larger language (the E2 conditions) lex its
    own tokens and hand every other position to the pcap-filter rules."""
    c = expr[i]
    col = i + 1
    two = expr[i:i + 2]
    if two in _PUNCT2:
        return Token(_PUNCT2[two], two, col, two), i + 2
    if c in _PUNCT1 and not (c == ":" and two == "::"):
        return Token(c, c, col, c), i + 1
    if c == "\\":
        ln = _longest(_RE_ESC_ID, expr, i)
        if ln == 0:
            raise FilterError("illegal character '\\'", expr, col)
        return Token("ID", expr[i + 1:i + ln], col, expr[i:i + ln]), i + ln
    # candidates in rule order (checked against tcpdump): keywords, MAC, NUM, HID, V6,
    # bogus MAC, named NUMs, ID
    l_id = _longest(_RE_ID, expr, i)
    l_num = _longest(_RE_NUM, expr, i)
    l_hid = _longest(_RE_HID, expr, i)
    l_mac = _longest(_RE_MAC, expr, i)
    l_v6 = _longest(_RE_V6, expr, i)
    if l_v6:
        # flex's V6 pattern only matches real IPv6 addresses: shrink to the longest valid one
        while l_v6 > 0:
            try:
                ipaddress.IPv6Address(expr[i:i + l_v6])
                break
            except ValueError:
                l_v6 -= 1
    l_bogus = _longest(_RE_BOGUS_MAC, expr, i)
    best = max(l_id, l_num, l_hid, l_mac, l_v6, l_bogus)
    if best == 0:
        ln = _longest(_RE_ILLEGAL, expr, i) or 1
        raise FilterError(f"illegal token: {expr[i:i + ln]}", expr, col)
    text = expr[i:i + best]
    if l_id == best and text in KEYWORDS:
        tok = Token(KEYWORDS[text], text, col, text)
    elif l_mac == best:
        tok = Token("EID", text, col, text)
    elif l_num == best:
        tok = Token("NUM", _stoul(text, expr, col), col, text)
    elif l_hid == best:
        tok = Token("HID", text, col, text)
    elif l_v6 == best:
        tok = Token("HID6", text, col, text)
    elif l_bogus == best:
        raise FilterError(f"bogus ethernet address {text}", expr, col)
    elif text in NAMED_CONSTANTS:
        tok = Token("NUM", NAMED_CONSTANTS[text], col, text)
    else:
        tok = Token("ID", text, col, text)
    return tok, i + best


def tokenize(expr: str) -> list[Token]:
    """Split ``expr`` into tokens, ending with an ``EOF`` token; raise FilterError on a bad one."""
    toks: list[Token] = []
    i, n = 0, len(expr)
    while i < n:
        if expr[i] in " \t\r\n":
            i += 1
            continue
        tok, i = lex_token(expr, i)
        toks.append(tok)
    toks.append(Token("EOF", None, n + 1, ""))
    return toks
