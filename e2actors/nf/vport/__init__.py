"""Virtual ports: existing programs (Suricata, nftables, nginx, a Linux bridge) as NF instances,
each in a network namespace of its own wired to the switch by veth pairs. See
:mod:`e2actors.nf.vport.pipelet` and, for the config, :mod:`e2actors.nf.vport.config`."""

from e2actors.nf.vport.config import VPORT_CLASS, VPortConfig, VPortConfigError, VPortError
from e2actors.nf.vport.pipelet import VPort

__all__ = ["VPORT_CLASS", "VPort", "VPortConfig", "VPortConfigError", "VPortError"]
