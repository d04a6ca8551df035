"""The main job for ``./dev.sh demo``: the running example over the traffic that ships with the
project, showing every edge taken.

Policy (examples/seed/policy.yaml): all traffic -> IDS; IDS unsafe -> logger (out/unsafe.pcap);
traffic to youtube.com -> parental control (blocked); safe traffic -> shaper -> out.
Traffic: examples/seed/traffic.pcap (made by ``e2actors gen-traffic``, seed 1).

    python examples/demo.py [--workers N] [any other ``e2actors run`` option]
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main() -> int:
    os.chdir(ROOT)
    policy = os.path.join("examples", "seed", "policy.yaml")
    traffic = os.path.join("examples", "seed", "traffic.pcap")
    os.makedirs("out", exist_ok=True)
    cmd = [sys.executable, "-m", "e2actors", "run", policy, "--traffic", traffic,
           "--out-pcap", os.path.join("out", "out.pcap"), *sys.argv[1:]]
    print("$", " ".join(cmd[1:]), flush=True)
    rc = subprocess.call(cmd)
    if rc == 0 and "--json" not in sys.argv:
        print("\nIDS-unsafe traffic logged to out/unsafe.pcap (tcpdump -nr out/unsafe.pcap), "
              "its metadata to out/unsafe.jsonl; what left the policy: out/out.pcap")
    return rc


if __name__ == "__main__":
    sys.exit(main())
