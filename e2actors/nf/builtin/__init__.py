"""Built-in NFs that behave like the real thing on real traffic."""

from e2actors.nf.builtin.counter import Counter
from e2actors.nf.builtin.firewall import Firewall
from e2actors.nf.builtin.hostfilter import HostFilter
from e2actors.nf.builtin.ids import IDS
from e2actors.nf.builtin.legacy import Legacy
from e2actors.nf.builtin.logger import Logger
from e2actors.nf.builtin.nat import NAT
from e2actors.nf.builtin.shaper import Shaper, parse_rate

__all__ = ["IDS", "NAT", "Legacy", "Counter", "Firewall", "HostFilter", "Logger", "Shaper", "parse_rate"]
