"""Random policies and clusters, seeded: for the placement tests and ``benchmarks/placement.py``.

A synthetic policy is one or more chains (traffic classes of tenants) of NFs entered from ``in``;
inside a chain each NF feeds one or two later NFs (branches and joins), the last ones feed ``out``.
Instance counts are chosen first and each NF's ``cost_pps`` is set so sizing yields them exactly.
"""

from __future__ import annotations

import math
import random

from e2actors.manager.hardware import Hardware, Server
from e2actors.manager.policy import Policy
from e2actors.manager.sizing import DEFAULT_UTILIZATION, size

__all__ = ["random_case"]

_CLASS = "e2actors.nf.pipelet:Pipelet"


def random_case(seed: int, instances: int, servers: int, chains: int = 1, chain_len: tuple[int, int] = (3, 6),
                max_per_nf: int = 6, slack: float = 1.2, nic_bps: float = math.inf) -> tuple[Policy, Hardware]:
    """A policy with about ``instances`` instances in ``chains`` chains, and ``servers`` alike
    servers whose cores total ``slack`` times what the instances need (at least one spare)."""
    rng = random.Random(seed)
    b = Policy.builder(f"random-{seed}")
    b.traffic("all", "ip", load_pps=1_000_000)
    counts: dict[str, int] = {}
    per_chain = max(1, instances // chains)
    left = instances
    chain_shares = [rng.uniform(0.5, 1.5) for _ in range(chains)]
    tot_share = sum(chain_shares)
    for c in range(chains):
        budget = per_chain if c < chains - 1 else left
        length = max(1, min(rng.randint(*chain_len), budget))
        ks = [1] * length
        for _ in range(budget - length):
            room = [j for j in range(length) if ks[j] < max_per_nf]
            if not room:
                break
            ks[rng.choice(room)] += 1
        left -= sum(ks)
        names = [f"c{c}n{j}" for j in range(length)]
        for n, k in zip(names, ks):
            counts[n] = k
            b.nf(n, _CLASS, cost_pps=1.0)
        # DAG inside the chain
        children: dict[int, list[int]] = {j: [] for j in range(length)}
        for j in range(1, length):
            parent = j - 1 if rng.random() < 0.7 else rng.randrange(j)
            children[parent].append(j)
        for j in range(length - 2):
            if rng.random() < 0.2:
                t = rng.randrange(j + 2, length)
                if t not in children[j]:
                    children[j].append(t)
        b.edge("in", names[0], fraction=chain_shares[c] / tot_share)
        for j in range(length):
            kids = children[j]
            if not kids:
                b.edge(names[j], "out", fraction=rng.uniform(0.8, 1.0))
                continue
            ws = [rng.uniform(0.2, 1.0) for _ in kids]
            keep = rng.uniform(0.85, 1.0)
            for t, w in zip(kids, ws):
                b.edge(names[j], names[t], fraction=keep * w / sum(ws))
    policy = b.build(check_classes=False, check_conditions=False)
    # costs so that sizing gives exactly the chosen counts
    loads = size(policy).load_pps
    data = b.data()
    for n, k in counts.items():
        data["nfs"][n]["cost_pps"] = loads[n] / (DEFAULT_UTILIZATION * k) * 1.000001
    policy = Policy.from_data(data, "<random>", check_classes=False, check_conditions=False)
    need = sum(counts.values())
    per = max(1, math.ceil(need * slack / servers))
    if per * servers <= need:
        per += 1
    hw = Hardware([Server(f"s{i + 1}", per, nic_bps) for i in range(servers)])
    return policy, hw
