"""The checkpoint bookkeeping (pure): when rounds are due, what is kept, what a replacement gets.
The whole path (a killed worker's NAT restored) is in test_heal_nodes.py."""

from __future__ import annotations

import pytest

from e2actors.manager.checkpoint import Checkpoints
from e2actors.manager.policy import Policy, PolicyError

POLICY = """nfs:
  nat: {class: e2actors.nf.builtin.NAT, affinity: flow, checkpoint: %s,
        config: {external: 198.19.0.1, internal: [10.0.0.0/8]}}
classes:
  - {name: all, filter: "", load_pps: 1000}
edges:
  - {from: in, to: nat}
  - {from: nat, to: out}
"""


def test_rounds_are_due_one_interval_apart_and_never_twice_at_once() -> None:
    ck = Checkpoints()
    assert ck.due({"nat": 1.0}, 10.0) == []          # the first round one interval after the start
    assert ck.due({"nat": 1.0}, 10.5) == []
    assert ck.due({"nat": 1.0}, 11.0) == ["nat"]
    assert ck.due({"nat": 1.0}, 13.0) == []          # still under way
    ck.done("nat", 11.0, {"nat#1": {"flows": [1, 2], "counters": {"x": 3}}, "nat#2": TimeoutError("slow")})
    assert ck.due({"nat": 1.0}, 13.0) == ["nat"]
    c = ck.get("nat#1")
    assert c is not None and c.flows() == 2 and c.restorable() == {"flows": [1, 2]}  # (no counters)
    assert ck.get("nat#2") is None and ck.counts["nat"] == {"rounds": 1, "failed": 1, "restored": 0}
    # A member that does not answer later keeps its previous checkpoint.
    ck.done("nat", 13.0, {"nat#1": TimeoutError("slow")})
    assert ck.get("nat#1") is c
    ck.restored("nat")
    assert ck.summary(14.0) == {"nat": {"rounds": 2, "failed": 2, "restored": 1, "age_seconds": {"nat#1": 3.0}}}
    ck.forget("nat#1")
    assert ck.get("nat#1") is None


@pytest.mark.parametrize("value, why", [("0", "seconds > 0"), ("-1", "seconds > 0"), ("yes", "seconds > 0"),
                                        ("true", "seconds > 0"), (".inf", "seconds > 0")])
def test_a_bad_checkpoint_interval_fails_with_its_line(value: str, why: str) -> None:
    with pytest.raises(PolicyError, match=f"policy.yaml:2: NF nat: checkpoint is a number of {why}"):
        Policy.from_yaml(POLICY % value, "policy.yaml")


def test_checkpoint_is_kept_in_the_description_and_refused_for_an_inline_nf() -> None:
    pol = Policy.from_yaml(POLICY % "2", "policy.yaml")
    assert pol.nfs["nat"].checkpoint == 2.0 and pol.nfs["nat"].to_dict()["checkpoint"] == 2.0
    inline = POLICY.replace("affinity: flow,", "affinity: flow, inline: true,") % "2"
    with pytest.raises(PolicyError, match="inline NF .* takes no checkpoint"):
        Policy.from_yaml(inline, "policy.yaml")
