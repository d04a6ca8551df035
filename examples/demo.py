"""The main job's entry point for ``./dev.sh demo``.

Until the NFV main job lands, this runs the actor runtime's demo: ping-pong across two processes.
"""

from __future__ import annotations

import os
import runpy
import sys

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.argv = [os.path.join(here, "pingpong.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
