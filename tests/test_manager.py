"""The main job: the running example deployed and run, in one process and across workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need_tool
from e2actors.packet.l7 import http_host
from e2actors.packet.pcap import read_packets

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "examples" / "seed" / "policy.yaml"
TRAFFIC = ROOT / "examples" / "seed" / "traffic.pcap"


def run_cli(args: list[str], cwd: Path, timeout: float = 120) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "e2actors", "run", *args, "--json"], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("workers", [0, 2])
def test_running_example_takes_every_edge_and_accounts_for_every_packet(tmp_path: Path, workers: int) -> None:
    s = run_cli([str(POLICY), "--traffic", str(TRAFFIC), "--out-pcap", "out.pcap", "--workers", str(workers),
                 "--no-autoscale"], tmp_path)
    assert s["completed"]
    edges = s["edges"]
    for e in ("in->ids", "ids.unsafe->logger", "ids.safe->parental", "ids.safe->shaper", "shaper->out",
              "parental->out"):
        assert edges.get(e, 0) > 0, (e, edges)
    # Conservation: every packet that came in left, or was dropped for a counted reason.
    assert s["packets_in"] == sum(1 for _ in read_packets(TRAFFIC))
    assert s["packets_in"] == s["packets_out"] + sum(s["drops"].values()), s["drops"]
    policy_drops = {"switch: malformed", "switch: dropped by route logger.out->end",
                    "parental: blocked host youtube.com", "parental: blocked host www.youtube.com",
                    "parental: blocked host m.youtube.com"}
    # The replay is paced by the slowest consumer (ingress credits), in one process or in several:
    # nothing is lost to overload, every drop is the policy's or an NF's decision.
    assert set(s["drops"]) <= policy_drops, s["drops"]
    assert s["lost"] == 0 and s["congestion_drops"] == 0
    if workers:
        # One switch per worker, each with its shard of the flows and an instance of every NF:
        # nothing crosses between workers, and the manager's process is off the packets' path.
        assert s["servers"] == [f"w{i}" for i in range(1, workers + 1)]
        assert {i["server"] for i in s["instances"].values()} == set(s["servers"])
        assert s["inter_server_packets"] == 0
    else:
        assert len(s["servers"]) == 1
    # IDS-unsafe traffic is in the logger's pcap, which tcpdump reads.
    unsafe = list(read_packets(tmp_path / "out" / "unsafe.pcap"))
    assert 0 < len(unsafe) <= edges["ids.unsafe->logger"]
    lines = [json.loads(x) for x in open(tmp_path / "out" / "unsafe.jsonl")]
    assert all(x["meta"]["verdict"] == "unsafe" for x in lines)
    assert {x["meta"]["sid"] for x in lines} == {1000001, 1000002, 1000003}
    tcpdump = need_tool("tcpdump")
    r = subprocess.run([tcpdump, "-nr", str(tmp_path / "out" / "unsafe.pcap")], capture_output=True, text=True)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == len(unsafe)
    # youtube.com went through parental control and was blocked; nothing to it left the policy.
    out = list(read_packets(tmp_path / "out.pcap"))
    assert len(out) == s["packets_out"]
    hosts = {http_host(p.payload) for p in out if p.payload_len}
    assert not any(h and h.endswith("youtube.com") for h in hosts)
    assert any(h == "example.com" or (h and h.endswith(".example.com")) for h in hosts)
    assert s["instances_per_nf"]["ids"] >= 1 and s["alerts"]


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nfs:\n  ids: {class: e2actors.nf.builtin.ids:IDS}\nclasses:\n  - {name: all, filter: ip, load_pps: 1000}\n"
                   "edges:\n  - {from: in, to: nowhere}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "e2actors", "run", str(bad), "--gen", "5"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "bad.yaml:6" in r.stderr and "nowhere" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "e2actors", "run", str(POLICY)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no traffic" in r.stderr
