"""Policy lint: what ``e2actors plan`` warns about (and ``--strict`` fails on)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from e2actors.manager.lint import lint
from e2actors.manager.policy import Policy
from e2actors.packet.pcap import read_packets

ROOT = Path(__file__).resolve().parent.parent
TRAFFIC = ROOT / "examples" / "seed" / "traffic.pcap"

POLICY = """name: lintme
nfs:
  fw: {class: e2actors.nf.builtin.firewall:Firewall, config: {rules: ["allow ip"], default: deny}}
  cnt: {class: e2actors.nf.builtin.counter:Counter, affinity: none}
  ids: {class: e2actors.nf.builtin.ids:IDS, ports: [safe, unsafe], input: bytestream, affinity: flow}
classes:
  - {name: web, filter: "ip", load_pps: 1000}
edges:
  - {from: in, to: fw}
  - {from: fw, to: cnt}
  - {from: fw, to: ids, fraction: 0.5}
  - {from: cnt, to: ids}
  - {from: ids.safe, to: out}
"""


def test_each_mistake_is_named_with_its_line(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    ws = lint(Policy.load(f), read_packets(TRAFFIC))
    text = [str(w) for w in ws]
    assert any(t.startswith(f"{f}:11: warning: edge fw->ids can never be taken") and "50%" in t for t in text), text
    assert any(t.startswith(f"{f}:5: warning: output ids.unsafe has no edge") for t in text), text
    assert any(t.startswith(f"{f}:4: warning: NF cnt has affinity none") for t in text), text
    assert any("VLAN-tagged" in t for t in text) and any("IPv6" in t for t in text), text
    assert len(ws) == 5


def test_a_clean_policy_has_no_warnings(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(POLICY.replace('filter: "ip"', 'filter: "ip or ip6 or vlan"')
                 .replace("  - {from: fw, to: ids, fraction: 0.5}\n", "")
                 .replace("affinity: none", "affinity: flow")
                 + "  - {from: ids.unsafe, to: drop}\n")
    assert lint(Policy.load(f), read_packets(TRAFFIC)) == []


def test_plan_strict_fails_on_warnings(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    base = [sys.executable, "-m", "e2actors", "plan", str(f)]
    r = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "warning: edge fw->ids can never be taken" in r.stderr
    r = subprocess.run(base + ["--strict"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().endswith("warning(s) and --strict")
