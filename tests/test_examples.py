"""The examples the README points at run and print what they claim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pingpong_demo_across_two_processes() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "pingpong.py"), "--rounds", "200"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "200 ping/pong round trips" in out.stdout
    assert "reason='node lost'" in out.stdout and "NodeLost(" in out.stdout
