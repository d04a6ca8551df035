"""``e2actors rules``: counts of loaded and skipped rules by reason, on Debian's rule files."""

from __future__ import annotations

import glob
import json

from conftest import need_path

from e2actors.cli import main

ET_TELNET = "/usr/share/gocode/src/github.com/jasonish/go-idsrules/testdata/emerging-telnet.rules"


def test_rules_command_counts_debian_rule_files(capsys) -> None:
    et = need_path(ET_TELNET, "Emerging Threats telnet rules (Debian golang-github-jasonish-go-idsrules-dev)")
    need_path("/etc/suricata/rules/stream-events.rules", "Suricata's own rules (Debian suricata, backports)")
    files = [et, *sorted(glob.glob("/etc/suricata/rules/*.rules"))]
    assert main(["rules", "--json", *files]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["files"][et] == {"loaded": 10, "skipped": 0, "disabled": 2, "reasons": {}}
    # Suricata's own files hold engine-event rules (decoder, stream, app-layer parser anomalies),
    # not signatures: each is skipped naming the event keyword, none is malformed.
    assert out["loaded"] == 10 and out["skipped"] > 300
    assert {"app-layer-event", "decode-event", "stream-event"} <= set(out["reasons"])
    assert not any(k.startswith("malformed") for k in out["reasons"])
    assert main(["rules", et]) == 0
    text = capsys.readouterr().out
    assert f"{et}: 10 rules loaded, 0 skipped (0.0%), 2 disabled" in text


def test_rules_command_strict_names_the_bad_line(tmp_path, capsys) -> None:
    p = tmp_path / "bad.rules"
    p.write_text('alert tcp any any -> any any (content:"x"; sid:1;)\nalert tcp any any -> any any (content:"x";)\n')
    assert main(["rules", "--strict", str(p)]) == 2
    assert f"{p}:2: the rule has no sid" in capsys.readouterr().out
    assert main(["rules", "--list-skipped", str(p)]) == 0
    assert f"{p}:2: sid None: malformed: the rule has no sid" in capsys.readouterr().out
