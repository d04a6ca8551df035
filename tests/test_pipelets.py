"""The Pipelet API, the runner and the built-in NFs without a stream (run_pipelet over packets)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from conftest import need_tool
from e2actors.errors import ConfigError, E2Error
from e2actors.nf.builtin import NAT, Counter, Firewall, Logger, Shaper, parse_rate
from e2actors.nf.pipelet import Pipelet
from e2actors.nf.runner import PipeletRunner
from e2actors.packet.batch import Batch
from e2actors.packet.checksum import verify_checksums
from e2actors.packet.flowtable import FlowTable
from e2actors.packet.packet import Packet, format_addr
from e2actors.packet.pcap import read_packets
from e2actors.packet.traffic import generate
from e2actors.testing import run_pipelet
from nfkit import C, S, connection, tcp_pkt, udp_pkt


# --- flow table (pure) ------------------------------------------------------------------------------
def test_flowtable_idle_expiry_and_bound() -> None:
    t: FlowTable[int] = FlowTable(idle_timeout=10, max_flows=3)
    t.set("a", 1, 0)
    t.set("b", 2, 1)
    t.set("c", 3, 2)
    assert t.touch("a", 5) == 1  # a is now the most recent
    assert t.set("d", 4, 6) == [("b", 2)]  # the least recently used goes
    assert t.expire(12.5) == [("c", 3)]
    assert sorted(t) == ["a", "d"]
    assert t.expire(100) == [("a", 1), ("d", 4)] and len(t) == 0
    t2: FlowTable[int] = FlowTable()
    t2.set((6, b"\x01", 1, b"\x02", 2, ()), 7, 3.0)
    t3: FlowTable[int] = FlowTable()
    t3.load([[list(k), v, ts] for k, v, ts in t2.export()])  # as it comes back from msgpack
    assert t3.get((6, b"\x01", 1, b"\x02", 2, ())) == 7


# --- the API ----------------------------------------------------------------------------------------
class Splitter(Pipelet):
    ports = ("tcp", "other")

    async def process(self, batch: Batch) -> None:
        for p in batch:
            if p.proto == 6:
                p.meta["seen"] = "splitter"
                self.emit(p, "tcp")
            elif p.proto == 17:
                self.emit(p, "other")
            else:
                self.drop(p, "not tcp or udp")


def test_emit_ports_drop_reasons_and_metadata() -> None:
    pkts = generate(40, seed=3)
    res = run_pipelet(Splitter, pkts)
    n_tcp = sum(1 for p in pkts if p.reason is None and p.proto == 6)
    n_udp = sum(1 for p in pkts if p.reason is None and p.proto == 17)
    n_mal = sum(1 for p in pkts if p.reason is not None)
    assert len(res.port("tcp")) == n_tcp and len(res.port("other")) == n_udp
    assert res.malformed == n_mal > 0
    assert res.drops["not tcp or udp"] == len(pkts) - n_tcp - n_udp - n_mal
    assert res.metadata("seen") == {"splitter": n_tcp}
    assert res.stats.packets_in == len(pkts) - n_mal


def test_unknown_port_is_an_error_naming_the_ports() -> None:
    class Bad(Pipelet):
        async def process(self, batch: Batch) -> None:
            for p in batch:
                self.emit(p, "nope")

    with pytest.raises(ValueError, match="no port 'nope'"):
        run_pipelet(Bad, [udp_pkt(C, S, 1, 2)])


async def test_a_raising_pipelet_loses_only_its_batch_counted() -> None:
    class Flaky(Pipelet):
        async def process(self, batch: Batch) -> None:
            for p in batch:
                if p.dport == 666:
                    raise RuntimeError("boom")
                self.emit(p)

    r = PipeletRunner(Flaky(), clock="packet")
    await r.start({})
    assert len((await r.run(Batch([udp_pkt(C, S, 1, 2)])))["out"]) == 1
    with pytest.raises(RuntimeError):
        await r.run(Batch([udp_pkt(C, S, 1, 2), udp_pkt(C, S, 1, 666), udp_pkt(C, S, 1, 3)]))
    assert r.stats.lost == 3 and r.stats.errors == 1
    assert len((await r.run(Batch([udp_pkt(C, S, 1, 2)])))["out"]) == 1  # nothing half-done leaks


def test_run_pipelet_refuses_a_running_loop_politely() -> None:
    import asyncio

    async def inside() -> None:
        with pytest.raises(RuntimeError, match="arun_pipelet"):
            run_pipelet(Counter, [])

    asyncio.run(inside())


def test_flow_state_expires_on_packet_time() -> None:
    ended: list[Any] = []

    class Track(Pipelet):
        flow_timeout = 5.0

        async def process(self, batch: Batch) -> None:
            for p in batch:
                self.flows.set(p.flow_key, p.ts, self.now)
                self.emit(p)

        def on_flow_end(self, flow: Any, state: Any) -> None:
            ended.append(state)

    pkts = [udp_pkt(C, S, 1000 + i, 53, ts=float(i)) for i in range(20)]
    run_pipelet(Track, pkts, batch_size=1)
    assert ended[:3] == [0.0, 1.0, 2.0]  # each flow ended 5 s of packet time after its last packet


# --- Firewall ---------------------------------------------------------------------------------------
FW = {"rules": [{"allow": "tcp dst port 80"}, "deny udp port 53", {"allow": "icmp"}], "default": "deny"}


def test_firewall_acl_and_connection_tracking() -> None:
    web = connection(cport=40001, sport=80)
    ssh = connection(cport=40002, sport=22)
    dns = [udp_pkt(C, S, 5353, 53)]
    res = run_pipelet(Firewall, web + ssh + dns, config=FW)
    out = res.port("out")
    # Every packet of the web connection passes, replies (src port 80) included, thanks to conntrack.
    assert [p.data for p in out] == [p.data for p in web]
    assert res.drops["default deny"] == len(ssh)
    assert res.drops["deny rule 2"] == 1


def test_firewall_without_conntrack_blocks_replies() -> None:
    web = connection(cport=40001, sport=80)
    res = run_pipelet(Firewall, web, config={**FW, "conntrack": False})
    assert all(p.dport == 80 for p in res.port("out"))
    assert res.drops["default deny"] == sum(1 for p in web if p.dport != 80)


def test_firewall_rejects_bad_rules() -> None:
    with pytest.raises(E2Error, match="allow or deny"):
        run_pipelet(Firewall, [], config={"rules": ["permit tcp"]})
    from e2actors.errors import ConfigError

    with pytest.raises(ConfigError, match="rule 1: .*column"):
        run_pipelet(Firewall, [], config={"rules": ["allow tcp port"]})


# --- Counter, Logger ----------------------------------------------------------------------------------
def test_counter_counts_per_flow_and_port() -> None:
    pkts = connection() + connection(cport=40009)
    res = run_pipelet(Counter, pkts)
    assert res.counters["packets"] == 16 and res.counters["flows"] == 2
    assert res.counters["port:in"] == 16
    counts = res.pipelet.flow_counts()  # type: ignore[attr-defined]
    assert sorted(c[0] for c in counts.values()) == [8, 8]


def test_logger_writes_pcap_tcpdump_reads_and_jsonl_with_meta(tmp_path) -> None:
    pkts = connection()
    for p in pkts[3:5]:
        p.meta["verdict"] = "unsafe"
    pcap = tmp_path / "log" / "unsafe-{instance}.pcap"
    res = run_pipelet(Logger, pkts, config={"pcap": str(pcap)})
    path = res.pipelet.pcap_path  # type: ignore[attr-defined]
    assert [p.data for p in read_packets(path)] == [p.data for p in pkts]
    lines = [json.loads(x) for x in open(res.pipelet.jsonl_path)]  # type: ignore[attr-defined]
    assert len(lines) == 8 and lines[3]["meta"] == {"verdict": "unsafe"} and lines[0]["dport"] == 80
    tcpdump = need_tool("tcpdump")
    out = subprocess.run([tcpdump, "-nr", path], capture_output=True, text=True)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 8


def test_logger_merges_a_part_cut_mid_record_with_a_log_line_not_a_warning(tmp_path, caplog) -> None:
    # A writer killed mid-record (SIGKILL of its worker) leaves a cut part: its whole records are
    # merged with the others' by timestamp, and the cut is logged (no RuntimeWarning escapes).
    import warnings

    from e2actors.nf.builtin.logger import merge_parts
    from e2actors.packet.pcap import PcapWriter

    out = tmp_path / "unsafe.pcap"
    cut, whole = f"{out}.part-a-{2**22 + 7}", f"{out}.part-b-{2**22 + 9}"  # (pids no process has)
    for path, stamps in ((cut, (1.0, 3.0, 5.0)), (whole, (2.0, 4.0))):
        with PcapWriter(path) as w:
            for ts in stamps:
                w.write(bytes([int(ts)]) * 60, ts, 60)
    with open(cut, "r+b") as f:
        f.truncate(f.seek(0, 2) - 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert merge_parts(str(out), whole)
    assert [p.data[0] for p in read_packets(out)] == [1, 2, 3, 4]
    assert any("merged the 2 records before the cut" in r.getMessage() for r in caplog.records)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["unsafe.pcap", "unsafe.pcap.lock"]


def test_a_shared_logger_scaled_in_within_one_process_loses_nothing(tmp_path) -> None:
    # Three Logger instances of one process write one shared file (a part each); one stops (a
    # scale-in) while the others still write: nothing is merged until the last one stops, and
    # tcpdump reads every packet. A restart of an instance goes on after what it wrote.
    import asyncio

    out = tmp_path / "unsafe.pcap"
    pkts = generate(flows=100, seed=3)
    assert len(pkts) >= 700

    async def go() -> None:
        runners = []
        for i in range(3):
            nf = Logger()
            nf.name = f"logger#{i + 1}"
            r = PipeletRunner(nf)
            await r.start({"pcap": str(out)})
            runners.append(r)
        for k, p in enumerate(pkts[:300]):
            await runners[k % 3].run(Batch([p]))
        await runners[2].stop()                                # scale-in: logger#3 leaves
        assert not out.exists()                                # (the others still write)
        for k, p in enumerate(pkts[300:600]):
            await runners[k % 2].run(Batch([p]))
        await runners[0].stop()                                # logger#1 crashes and restarts
        again = Logger()
        again.name, again.resumed = "logger#1", True
        runners[0] = PipeletRunner(again)
        await runners[0].start({"pcap": str(out)})
        for p in pkts[600:700]:
            await runners[0].run(Batch([p]))
        for r in runners[:2]:
            await r.stop()

    asyncio.run(go())
    assert sorted(p.data for p in read_packets(out)) == sorted(p.data for p in pkts[:700])
    tcpdump = need_tool("tcpdump")
    r = subprocess.run([tcpdump, "-nr", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 700
    assert sum(1 for _ in open(tmp_path / "unsafe.jsonl")) == 700


def test_a_resumed_logger_goes_on_after_what_it_wrote_a_new_one_starts_afresh(tmp_path) -> None:
    # One file per instance ({instance}): an instance that resumes its member (a restart after a
    # crash, a replacement: ``resumed``) appends; a new run's instance starts the file afresh.
    pkts = connection()
    cfg = {"pcap": str(tmp_path / "log-{instance}.pcap")}
    run_pipelet(Logger, pkts[:5], config=cfg)
    again = Logger()
    again.resumed = True
    res = run_pipelet(again, pkts[5:], config=cfg)
    assert [p.data for p in read_packets(res.pipelet.pcap_path)] == [p.data for p in pkts]  # type: ignore[attr-defined]
    assert len(open(res.pipelet.jsonl_path).read().splitlines()) == len(pkts)  # type: ignore[attr-defined]
    res = run_pipelet(Logger, pkts[:3], config=cfg)                 # the next run
    assert [p.data for p in read_packets(res.pipelet.pcap_path)] == [p.data for p in pkts[:3]]  # type: ignore[attr-defined]


def test_a_logger_on_a_full_disk_fails_naming_its_file(tmp_path) -> None:
    import errno

    nf = Logger()
    run_pipelet(nf, connection()[:2], config={"pcap": str(tmp_path / "l-{instance}.pcap")})

    class Full:
        def write(self, *a):
            raise OSError(errno.ENOSPC, "No space left on device")

        flush = close = write

    nf.writer = Full()  # type: ignore[assignment]
    with pytest.raises(OSError, match=r"No space left on device: .*l-Logger\.pcap"):
        nf.on_timer()


# --- NAT ---------------------------------------------------------------------------------------------
NATCFG = {"external": "198.19.255.1", "internal": ["198.18.0.0/16"], "ports": [30000, 30009]}


def _nat_roundtrip(nat_cls: type = NAT) -> tuple[list[Packet], Any]:
    out_pkts = [tcp_pkt(C, S, 40000, 80, "S", seq=1), udp_pkt(C, S, 5000, 53, b"q")]
    res = run_pipelet(nat_cls, out_pkts, config=NATCFG)
    return res.port("out"), res.pipelet


def test_nat_rewrites_both_ways_with_valid_checksums() -> None:
    import asyncio

    async def go() -> None:
        nat = NAT()
        r = PipeletRunner(nat, clock="packet")
        await r.start(NATCFG)
        syn = tcp_pkt(C, S, 40000, 80, "S", seq=1, ts=1.0)
        q = udp_pkt(C, S, 5000, 53, b"query", ts=1.0)
        out = (await r.run(Batch([syn, q])))["out"]
        assert [format_addr(p.src) for p in out] == ["198.19.255.1"] * 2
        assert [p.sport for p in out] == [30000, 30000]  # one pool per protocol
        for p in out:
            assert all(verify_checksums(p).values()), verify_checksums(p)
        # Replies to the external address come back translated to the internal host.
        synack = tcp_pkt(S, "198.19.255.1", 80, 30000, "SA", seq=9, ack=2, ts=1.1)
        back = (await r.run(Batch([synack])))["out"]
        assert format_addr(back[0].dst) == C and back[0].dport == 40000
        assert all(verify_checksums(back[0]).values())
        # The same internal flow keeps its port; an unknown inbound packet is dropped.
        again = (await r.run(Batch([tcp_pkt(C, S, 40000, 80, "A", seq=2, ts=1.2),
                                    tcp_pkt(S, "198.19.255.1", 80, 31111, "A", ts=1.2)])))["out"]
        assert len(again) == 1 and again[0].sport == 30000
        assert nat.drops["no mapping"] == 1
        # State moves to a fresh instance and translation carries on there.
        state = nat.export_state()
        nat2 = NAT()
        r2 = PipeletRunner(nat2, clock="packet")
        await r2.start(NATCFG)
        nat2.import_state(state)
        back2 = (await r2.run(Batch([tcp_pkt(S, "198.19.255.1", 80, 30000, "A", ts=1.3)])))["out"]
        assert format_addr(back2[0].dst) == C and back2[0].dport == 40000
        out2 = (await r2.run(Batch([tcp_pkt("198.18.0.11", S, 1, 80, "S", ts=1.3)])))["out"]
        assert out2[0].sport == 30001  # the imported mapping's port is not handed out again

    asyncio.run(go())


def test_nat_pool_exhaustion_and_expiry() -> None:
    pkts = [udp_pkt("198.18.0.%d" % (i + 1), S, 1000, 53, ts=1.0) for i in range(12)]
    res = run_pipelet(NAT, pkts, config=NATCFG)
    assert len(res.port("out")) == 10 and res.drops["no free port"] == 2
    later = pkts + [udp_pkt("198.18.1.1", S, 1000, 53, ts=1.0 + NAT.flow_timeout + 1)]
    res = run_pipelet(NAT, later, config=NATCFG, batch_size=1)
    assert res.port("out")[-1].sport >= 30000  # an expired mapping's port came back to the pool


def test_nat_icmp_echo() -> None:
    from e2actors.packet import build

    req = Packet(build.ether(build.ipv4(C, S, 1, build.icmp(8, 0, build.echo_rest(77, 1), b"ping"))), 1.0, "in")
    res = run_pipelet(NAT, [req], config=NATCFG)
    out = res.port("out")[0]
    assert format_addr(out.src) == "198.19.255.1" and all(verify_checksums(out).values())


def test_nat_checksums_confirmed_by_tshark(tmp_path) -> None:
    tshark = need_tool("tshark")
    from e2actors.packet.pcap import write_pcap

    pkts = [p for p in generate(30, seed=5) if p.reason is None and len(p.src) == 4 and not p.vlans]
    res = run_pipelet(NAT, pkts, config={"external": "198.19.255.1", "internal": ["198.18.0.0/16"]})
    f = tmp_path / "nat.pcap"
    write_pcap(f, res.port("out"))
    out = subprocess.run([tshark, "-r", str(f), "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
                          "-o", "udp.check_checksum:TRUE", "-Y", "ip.checksum.status == 0 || tcp.checksum.status == 0 "
                          "|| udp.checksum.status == 0", "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"bad checksums in frames {out.stdout.split()}"
    assert res.counters["outbound"] > 0


# --- Shaper -------------------------------------------------------------------------------------------
def test_parse_rate() -> None:
    assert parse_rate("100Mbit") == 100e6 and parse_rate("1.5 gbit") == 1.5e9 and parse_rate(8000) == 8000
    with pytest.raises(E2Error):
        parse_rate("100 furlongs")


async def test_shaper_holds_to_its_rate_on_packet_time() -> None:
    sh = Shaper()
    r = PipeletRunner(sh, clock="packet")
    sh.now = 0.0
    await r.start({"rate": "800kbit", "burst": "80kbit", "queue": 10_000})
    # 1,000 packets of 1,000 bytes arrive at once: 8 Mbit against 800 kbit/s.
    pkts = [udp_pkt(C, S, 1, 2, b"x" * (1000 - 42), ts=0.0) for _ in range(1000)]
    first = (await r.run(Batch(pkts)))["out"]
    assert len(first) == 10  # the burst: 80 kbit = 10 packets
    # Ticks as coarse as one second still release at exactly the rate: 100 packets/s.
    assert len((await r.tick(5.0))["out"]) == 500
    assert len((await r.tick(9.0))["out"]) == 400
    assert len((await r.tick(9.5))["out"]) == 50
    assert sh.pending() == 40
    assert sh.default.sent_bits == 960 * 8000
    assert sh.drops == {}


def test_shaper_queue_bound_and_classes() -> None:
    pkts = [udp_pkt(C, S, 1, 2, b"x" * 958, ts=0.0) for _ in range(50)]
    pkts += [tcp_pkt(C, S, 1, 443, "A", b"y" * 946, ts=0.0) for _ in range(5)]
    res = run_pipelet(Shaper, pkts, config={"rate": "8kbit", "burst": "8kbit", "queue": 5,
                                            "classes": [{"name": "tls", "filter": "tcp port 443",
                                                         "rate": "1Mbit", "queue": 100}]})
    assert res.drops["queue full"] == 50 - 1 - 5
    assert len(res.port("out")) == 1 + 5 + 5  # the default class: 1 sent + 5 queued, drained at the end


# --- Legacy -----------------------------------------------------------------------------------------
def test_legacy_program_in_the_chain() -> None:
    import sys
    from pathlib import Path

    prog = str(Path(__file__).parent / "legacy_ttl.py")
    pkts = connection() + [udp_pkt(C, S, 1000, 9, b"discard me"), udp_pkt(C, S, 1000, 53, b"q")]
    res = run_pipelet(__import__("e2actors.nf.builtin", fromlist=["Legacy"]).Legacy, pkts,
                      config={"cmd": [sys.executable, prog]})
    out = res.port("out")
    assert len(out) == len(pkts) - 1  # the discard datagram is gone
    assert [p.ttl for p in out] == [p.ttl - 1 for p in pkts if p.dport != 9]
    assert all(verify_checksums(p).get("ip", True) for p in out)


def test_legacy_unchanged_frames_keep_their_metadata() -> None:
    import sys
    from pathlib import Path

    from e2actors.nf.builtin import Legacy

    prog = str(Path(__file__).parent / "legacy_ttl.py")
    pkts = connection()
    for i, p in enumerate(pkts):
        p.meta["n"] = i
    res = run_pipelet(Legacy, pkts, config={"cmd": [sys.executable, prog, "--passthrough"]})
    assert [p.meta["n"] for p in res.port("out")] == list(range(len(pkts)))


def test_legacy_program_that_dies_fails_the_nf() -> None:
    from e2actors.nf.builtin import Legacy

    with pytest.raises(E2Error, match="exited"):
        run_pipelet(Legacy, [udp_pkt(C, S, 1, 2, ts=float(i)) for i in range(100)],
                    config={"cmd": ["false"]}, batch_size=1)


@pytest.mark.parametrize(("cls", "config", "key"), [
    ("Firewall", {"rules": ["permit tcp"]}, "rules"),
    ("Firewall", {"default": "maybe"}, "default"),
    ("NAT", {}, "external"),
    ("NAT", {"external": "not an address"}, "external"),
    ("NAT", {"external": "198.19.0.1", "internal": ["10.0.0.0/33"]}, "internal"),
    ("NAT", {"external": "198.19.0.1", "ports": [5000, 70000]}, "ports"),
    ("Shaper", {"rate": "fast"}, "rate"),
    ("Shaper", {"queue": "deep"}, "queue"),
    ("Shaper", {"classes": [{"rate": "1Mbit"}]}, "classes"),
    ("Shaper", {"classes": [{"filter": "tcp", "queue": -1}]}, "classes"),
    ("Logger", {"snaplen": "all"}, "snaplen"),
    ("HostFilter", {"max_buffer": "lots"}, "max_buffer"),
    ("Legacy", {}, "cmd"),
    ("IDS", {"overlap": "windows"}, "overlap"),
    ("IDS", {"matcher": "grep"}, "matcher"),
    ("IDS", {"inspect_window": 0}, "inspect_window"),
    ("IDS", {"max_flows": "many"}, "max_flows"),
])
def test_bad_nf_config_names_the_nf_and_the_key(cls: str, config: dict, key: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # (a Logger that got as far as opening its files writes here)
    import e2actors.nf.builtin as builtin

    with pytest.raises(ConfigError) as ei:
        run_pipelet(getattr(builtin, cls), [], config=config)
    assert (ei.value.nf, ei.value.key) == (cls, key), str(ei.value)
    assert str(ei.value).startswith(f"{cls}: config {key!r}: ")
