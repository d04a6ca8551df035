"""Failures: instances that crash for good, and servers (worker processes, agents) that are lost.

The deployment watches every instance actor it starts (the manager actor gets ``Terminated``), so:

* An instance whose ``process`` raises is restarted by its node per its restart policy (the
  packets of the failed batch are counted by its switch as ``nf error in NF``). One that keeps
  crashing exhausts the policy and stops: its watcher gets ``Terminated(ref, "failed: ...")``.
  :meth:`Recovery.instance_failed` then takes it out of the path: when its NF has other
  instances it leaves the plan and the tables (its flows go to the others); when it was the last,
  the member stays in the tables as ``failed`` and the switches drop that NF's packets with the
  reason ``nf NF failed``. Either way an event of kind ``failed`` goes to the summary and the
  metrics; the run carries on.
* A server that stops answering heartbeats (a worker or an agent killed, paused, cut off) makes
  the manager's node publish ``NodeLost``; :meth:`Recovery.node_lost` then

  1. **fences** it: a worker process this deployment started is killed (SIGKILL; a stopped
     process dies of it too) so it can never resume with its old instances (event ``fenced``).
     An agent is another machine's process: it fences itself (it stops what the manager started
     there when it finds it was paused or lost the manager, see :mod:`e2actors.runtime.node`),
     and the manager makes sure when it answers again (below);
  2. when the server held a **shard of the input** (``--workers N``: one switch per worker, each
     reading its flows of the capture), the next surviving shard **takes over** its flows for
     the rest of the replay, from the lost shard's last known position in the capture (event
     ``takeover``); the part of its share nobody read is accounted as lost;
  3. **re-places** its instances on the capacity that remains (incremental placement: nothing
     that runs moves; NIC and cores respected). A replacement starts from its member's last
     checkpoint when its NF takes them (``checkpoint:`` in the policy, event ``restored``; see
     :mod:`e2actors.manager.checkpoint`), else with fresh state: what the lost process held is gone.
     Without room for all of them, the instances of NFs that still run elsewhere are left out
     (their flows go to the other instances) and only NFs left with none are placed again; one
     that finds no room stays ``failed`` (its NF's packets are dropped with a reason). The
     instances keep their member names, so the flow tables keep sending each flow to the same
     member, now elsewhere. Every switch is reprogrammed (event ``recovered``).

  A lost **agent** is then watched for its return. When it answers again, every actor this
  deployment had started there that still runs is stopped (event ``fenced``: no instance runs
  twice), and it is **re-admitted as fresh, empty capacity** (event ``readmitted``): its cores
  are back in the plan and it gets a new switch, so later scale-outs and re-placements may use
  it; nothing running moves back. A server that held external ports or a shard of the input is
  kept out instead (its traffic was taken over or is lost; event ``kept-out``), and so is one
  lost more than :data:`READMIT_LIMIT` times (a flapping server).

The summary accounts for the packets lost in an outage by where they were
(:meth:`Recovery.accounting`): in flight at a lost shard when its counters were last read, the
lost shard's share of the input that nobody read, and what the surviving switches admitted and
never saw finish (at the lost instances).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from e2actors.errors import E2Error
from e2actors.manager.deployment import Deployment
from e2actors.manager.diff import heal_lost, with_server, without_instances
from e2actors.manager.instances import nf_of
from e2actors.manager.scaling import Autoscaler
from e2actors.manager.shards import shard_path
from e2actors.nf.messages import ImportState
from e2actors.packet.pcap import open_capture
from e2actors.runtime.messages import NodeLost, Terminated
from e2actors.runtime.ref import ActorRef

__all__ = ["READMIT_LIMIT", "LostServer", "Recovery", "lost_shard_account"]

log = logging.getLogger("e2actors.manager.recovery")

#: A server lost more often than this stays out when it comes back (it flaps).
READMIT_LIMIT = 2


@dataclass
class LostServer:
    """What is known of a lost server: its agent's address, why and when (``time.monotonic()``)
    it was lost, its cores, its switch's last counters (``stats``, read at ``stats_t``), its
    shard number when it read a shard of the input, and the members it ran."""

    name: str
    address: str
    reason: str
    t: float
    cores: int
    worker: bool
    stats: dict[str, Any] | None = None
    stats_t: float = 0.0
    shard: int | None = None
    instances: list[str] = field(default_factory=list)
    #: The actor names this deployment had started on it (what must not run any more).
    actors: set[str] = field(default_factory=set)
    held_ports: bool = False


class Recovery:
    """The deployment's failure handling (see the module docstring); ``autoscaler`` forgets the
    instances that failed and waits its cooldown after each change."""

    def __init__(self, dep: Deployment, autoscaler: Autoscaler) -> None:
        self.dep = dep
        self.autoscaler = autoscaler
        #: Server -> when its loss was noticed (``time.monotonic()``), while it is out.
        self.lost_servers: dict[str, float] = {}
        #: Server -> what is known of it, for every server lost during the run (the last loss).
        self.lost: dict[str, LostServer] = {}
        #: Per lost server: seconds from detection to the reprogrammed switches.
        self.recovered: dict[str, float] = {}
        #: Per server: how many times it was lost.
        self.losses: dict[str, int] = {}
        self.failed: dict[str, str] = {}

    # --- dispatch (called from the manager actor: never blocks it) -------------------------------
    def on_terminated(self, msg: Terminated) -> None:
        if msg.reason.startswith("fenced"):
            # An agent fenced itself (it was paused, or lost us): its server is lost to us even
            # if our heartbeats have not said so yet.
            self.on_node_lost(NodeLost(msg.ref.node, msg.reason))
            return
        if msg.reason in ("stopped", "node lost"):
            return  # stopped on purpose, or part of a node loss (NodeLost handles that)
        inst = next((i for i, r in self.dep.instances.items() if r == msg.ref), None)
        if inst is None:
            return  # an actor replaced or retired meanwhile
        self.dep.spawn_task(self.instance_failed(inst, msg.ref, msg.reason), f"recovery: {inst} failed")

    def on_node_lost(self, msg: NodeLost) -> None:
        server = self.dep.server_of_node(msg.node)
        if server is None or server in self.lost_servers:
            return
        self.lost_servers[server] = time.monotonic()
        self.dep.spawn_task(self.node_lost(server, msg.reason), f"recovery: {server} lost")

    # --- an instance that failed for good --------------------------------------------------------
    async def instance_failed(self, inst: str, ref: ActorRef, reason: str) -> None:
        dep = self.dep
        async with dep.lock:
            plan = dep.plan
            if dep.instances.get(inst) != ref or plan is None:
                return
            nf = nf_of(inst)
            others = [i for i in plan.instances_of(nf) if i != inst and dep.states.get(i) not in ("failed",)]
            self.failed[inst] = reason
            self.autoscaler.forget(nf, inst)
            if others:
                dep.set_plan(without_instances(plan, {inst}))
                dep.remove_instance(inst)
                detail = f"{inst} {reason}; taken out of the path, its flows go to {', '.join(others)}"
            else:
                dep.set_state(inst, "failed")
                detail = f"{inst} {reason}; the last instance of {nf}: its packets are dropped (nf {nf} failed)"
            try:
                await dep.push_tables()
            except Exception as exc:
                detail += f"; reprogramming the switches failed: {exc!r}"
            dep.record(nf, "failed", detail)
            self.autoscaler.changed(nf, time.monotonic())

    # --- a server that is gone -------------------------------------------------------------------
    async def node_lost(self, server: str, reason: str) -> None:
        dep = self.dep
        t0 = self.lost_servers[server]
        async with dep.lock:
            plan = dep.plan
            srv = dep.servers.get(server)
            if plan is None or not dep.attached or srv is None:
                return
            self.losses[server] = self.losses.get(server, 0) + 1
            hw = plan.hardware
            sharded = server in hw.shards
            last = dep.last_switch_stats.get(server)
            lost = LostServer(server, srv.node_address, reason, t0, hw.servers[server].cores, srv.proc is not None,
                              stats=last[1] if last else None, stats_t=last[0] if last else 0.0,
                              shard=hw.shards.index(server) if sharded else None,
                              instances=[i for i, s in plan.assignment.items()
                                         if s == server and i not in ("in", "out")],
                              actors=dep.spawned_on(srv.node_address),
                              held_ports=sharded or any(p.server == server for p in hw.ports.values()))
            self.lost[server] = lost
            dep.drop_server(server)
            # What it still sends when it comes back (frames queued while it was away) is ignored
            # until it is fenced and re-admitted.
            dep.quarantine(srv.node_address)
            dep.record("*", "node-lost", f"{server} ({reason}): re-placing " + (", ".join(lost.instances) or "nothing"),
                       at=t0)
            if srv.proc is not None:
                status = await dep.kill_worker(srv)
                after = await self._output_after_counters(lost) if status is not None else ""
                dep.record("*", "fenced", f"worker {server} (pid {srv.proc.pid}) killed"
                           + (f" (exit status {status})" if status is not None else " (still there!)")
                           + ": a worker that missed its heartbeats never comes back with its old instances" + after)
            self._keep_last_counters(lost)
            if sharded:
                self._take_over(lost)
            elif lost.held_ports:
                dep.record("*", "failed", f"{server} held external ports: its traffic cannot recover")
            healed = heal_lost(plan, server, failed={i for i, st in dep.states.items() if st == "failed"})
            new_plan = healed.plan
            spawned: dict[str, ActorRef] = {}
            for inst, target in healed.moved.items():
                old = dep.remove_instance(inst)
                if old is not None:
                    dep.unwatch(old)
                try:
                    spawned[inst] = await dep.spawn_instance(inst, target, new_plan.policy.nfs[nf_of(inst)],
                                                             new_plan.policy.base_dir, replacement=True)
                except E2Error as exc:
                    dep.record(nf_of(inst), "failed", f"{inst} could not restart on {target}: {exc}")
                    continue
                await self._restore(inst, spawned[inst])
            for inst in healed.dropped:
                old = dep.remove_instance(inst)
                if old is not None:
                    dep.unwatch(old)
                self.autoscaler.forget(nf_of(inst), inst)
                dep.checkpoints.forget(inst)  # (its flows go to the NF's other instances, fresh)
            for inst in healed.failed:
                old = dep.mark_failed(inst)
                if old is not None:
                    dep.unwatch(old)
            dep.set_plan(new_plan)
            for inst, ref in spawned.items():
                dep.add_instance(inst, ref)
            for inst in healed.moved:
                if inst not in spawned:
                    dep.set_state(inst, "failed")
            if healed.failed:
                dep.record("*", "failed", f"cannot re-place {', '.join(healed.failed)} (the last instances of "
                           f"their NFs): {healed.why}; their packets are dropped")
            try:
                await dep.push_tables()
            except Exception as exc:
                dep.record("*", "failed", f"reprogramming the switches after losing {server}: {exc!r}")
            dt = time.monotonic() - t0
            self.recovered[server] = dt
            dep.record("*", "recovered", f"{server}'s instances now on "
                       + (", ".join(f"{i}@{s}" for i, s in healed.moved.items() if i in spawned) or "-")
                       + (f"; left out for lack of room ({healed.why}): {', '.join(healed.dropped)} (their NFs "
                          "run elsewhere too: their flows go there)" if healed.dropped else "")
                       + f"; switches reprogrammed {dt * 1000:.0f} ms after the loss was noticed")
            for nf in {nf_of(i) for i in lost.instances}:
                self.autoscaler.changed(nf, time.monotonic())
        if not lost.worker:
            dep.spawn_task(self._fence_on_return(lost), f"recovery: {server} fenced on return")

    async def _restore(self, inst: str, ref: ActorRef) -> None:
        """The replacement of ``inst`` imports its last checkpoint, if its NF takes them, before it
        takes traffic (event ``restored``; one that cannot starts fresh: event ``restore-failed``)."""
        dep = self.dep
        ck = dep.checkpoints.get(inst)
        if ck is None:
            return
        age = time.monotonic() - ck.t
        try:
            await dep.ask_patiently(ref, ImportState(ck.restorable()))
        except Exception as exc:
            dep.record(nf_of(inst), "restore-failed", f"{inst}: its checkpoint of {age:.1f}s ago was not taken "
                       f"({type(exc).__name__}: {exc}); it starts with fresh state")
            return
        dep.checkpoints.restored(nf_of(inst))
        dep.record(nf_of(inst), "restored", f"{inst} starts from its checkpoint of {age:.1f}s ago "
                   f"({ck.flows()} flows); what changed after it was lost with the server")

    async def _output_after_counters(self, lost: LostServer) -> str:
        """A dead worker's part of a sharded output file is final: how many packets it holds
        beyond the worker's last counters (sent after them; the switch that takes over its flows
        may send some of them again)."""
        plan = self.dep.plan
        if plan is None or lost.shard is None:
            return ""
        notes = []
        for p in plan.hardware.ports.values():
            if p.kind != "pcap-out" or not p.params.get("path"):
                continue
            part = shard_path(str(p.params["path"]), lost.name)
            try:
                n = await asyncio.get_running_loop().run_in_executor(None, count_records, part)
            except Exception as exc:
                log.debug("counting %s: %r", part, exc)
                continue
            known = (lost.stats or {}).get("ports", {}).get(p.name, {}).get("tx_packets", 0)
            if n > known:
                notes.append(f"{part} holds {n - known:,} packets more than its last counters (sent after them)")
        return "; " + "; ".join(notes) if notes else ""

    def _keep_last_counters(self, lost: LostServer) -> None:
        """The lost instances' last counters go to the summary (state ``lost``); their drops are
        not added to the account's drops (their switch's counters account for them, see
        :meth:`accounting`)."""
        dep = self.dep
        last = dep.last_instance_stats(lost.stats_t or time.monotonic())
        for inst in lost.instances:
            st = last.get(inst)
            if st is not None:
                dep.retired[f"{inst}@{lost.name}"] = {**st, "server": lost.name, "retired": f"lost with {lost.name}",
                                                      "lost_with": lost.name}

    def _take_over(self, lost: LostServer) -> None:
        """The next surviving shard keeps the lost shard's flows of the replayed capture from the
        lost one's last known position (and the shards the lost one had taken over itself)."""
        dep = self.dep
        plan = dep.plan
        assert plan is not None and lost.shard is not None
        shards = plan.hardware.shards
        kinds = {p.kind for p in plan.hardware.ports.values()}
        n = len(shards)
        ring = [shards[(lost.shard + j) % n] for j in range(1, n)]
        adopter = next((s for s in ring if s in dep.servers), None)
        if "afpacket" in kinds:
            dep.record("*", "takeover", f"{lost.name}'s flows of the live interfaces: the kernel's fanout group "
                       "hands them to the remaining switches once its socket is closed"
                       + ("" if lost.worker else " (when its agent fences itself or ends)"))
        if "pcap-in" not in kinds:
            return
        if adopter is None:
            dep.record("*", "failed", f"{lost.name} held the last shard of the input: nobody reads the rest of it")
            return
        port = (lost.stats or {}).get("ports", {}).get("in", {})
        seen = port.get("shard_seen") or []
        take = [[lost.shard, port["rx_packets"] if "rx_packets" in port else -1]]
        # (shards the lost switch had taken over itself: from where it had seen them)
        for j, _frm in dep.adopt.pop(lost.name, []):
            take.append([j, seen[j] if j < len(seen) else -1])
        dep.adopt.setdefault(adopter, []).extend(take)
        dep.record("*", "takeover", f"{adopter} takes over the flows of {lost.name}'s share of the input "
                   + ", ".join(f"(shard {j + 1} of {n}) from its packet {f + 1:,}" if f >= 0
                               else f"(shard {j + 1} of {n}) from where {adopter} is" for j, f in take)
                   + (": the last counters read from it" if port else ": no counters were ever read from it"))

    async def _fence_on_return(self, lost: LostServer) -> None:
        """Wait until the lost agent answers again; then stop whatever this deployment still runs
        there, and re-admit it as fresh capacity or keep it out (see the module docstring)."""
        dep = self.dep
        addr = lost.address
        every = max(0.2, dep.heartbeat_timeout / 2)
        while True:
            await asyncio.sleep(every)
            try:
                info = await dep.probe(addr, dep.heartbeat_timeout)
                break
            except Exception as exc:
                log.debug("%s is still away: %r", lost.name, exc)
        back = time.monotonic() - lost.t
        stale = sorted(set(info.actors) & lost.actors)
        if stale:
            await asyncio.gather(*(dep.stop(ActorRef(addr, n), quiet=True) for n in stale))
        try:
            info = await dep.probe(addr, dep.heartbeat_timeout)
        except Exception as exc:
            dep.record("*", "kept-out", f"{lost.name} answered {back:.1f}s after it was lost, then not again: {exc!r}")
            return
        still = sorted(set(info.actors) & lost.actors)
        if still:
            dep.record("*", "failed", f"{lost.name} is back but still runs {', '.join(still)} after being told to "
                       "stop: kept out")
            return
        dep.record("*", "fenced", f"{lost.name} answers again {back:.1f}s after it was lost; "
                   + (f"stopped what still ran there: {', '.join(stale)}" if stale
                      else "it had stopped what it ran for this deployment itself"))
        if lost.held_ports:
            why = "it held a shard of the input, taken over by another switch" if lost.shard is not None \
                else "it held external ports"
            dep.record("*", "kept-out", f"{lost.name} is not re-admitted: {why}")
            return
        if self.losses.get(lost.name, 0) > READMIT_LIMIT:
            dep.record("*", "kept-out", f"{lost.name} is not re-admitted: lost {self.losses[lost.name]} times")
            return
        if info.cores < lost.cores:
            dep.record("*", "kept-out", f"{lost.name} is back with {info.cores} cores, fewer than its {lost.cores}")
            return
        async with dep.lock:
            plan = dep.plan
            if plan is None or lost.name in dep.servers:
                return
            dep.readmit_server(lost.name, addr)
            dep.release(addr)
            try:
                await dep.start_switches()
            except E2Error as exc:
                dep.drop_server(lost.name)
                dep.quarantine(addr)
                dep.record("*", "kept-out", f"{lost.name} is back but its new switch did not start: {exc}")
                return
            dep.set_plan(dataclasses.replace(plan, hardware=with_server(plan.hardware, lost.name, lost.cores)))
            try:
                await dep.push_tables()
            except Exception as exc:
                dep.record("*", "failed", f"reprogramming the switches after re-admitting {lost.name}: {exc!r}")
            self.lost_servers.pop(lost.name, None)
            dep.record("*", "readmitted", f"{lost.name} is back as fresh capacity: {lost.cores} cores, no instances "
                       "(later scale-outs and re-placements may use it; nothing running moves back)")

    def losses_summary(self) -> dict[str, str]:
        """Each server lost during the run -> why and what became of it (a run that lost a
        server fails, healed or not: the summary's events tell how it was healed)."""
        out = {}
        for name, lost in self.lost.items():
            n = self.losses.get(name, 1)
            back = "re-admitted" if name in self.dep.servers else "out of the run"
            out[name] = f"{lost.reason}; {'lost ' + str(n) + ' times; ' if n > 1 else ''}{back}"
        return out

    # --- the account of what was lost ---------------------------------------------------------
    def accounting(self, switches: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], int, dict[str, int]]:
        """What :meth:`Manager.summary <e2actors.manager.manager.Manager.summary>` adds for the
        servers lost during the run, given the surviving switches' counters: the lost shards'
        switches as last read (made to account for their own input only), how many packets of the
        input nobody read (to add to ``packets_in``), and the packets lost there by where."""
        extra: dict[str, dict[str, Any]] = {}
        unread = 0
        lost_by: dict[str, int] = {}
        for name, lost in self.lost.items():
            if lost.shard is None or name in switches:
                continue  # (no input of its own: what was in flight there is in the survivors' account)
            acc = lost_shard_account(lost.stats, [s for s in switches.values() if isinstance(s, dict)], lost.shard)
            if acc is None:
                continue
            if lost.stats is not None:
                extra[name] = acc["switch"]
            unread += acc["unread"]
            if acc["in_flight"]:
                lost_by[f"in flight at {name} when its counters were last read"] = acc["in_flight"]
            if acc["unread"]:
                lost_by[f"{name}'s share of the input after its last counters (lost with it, or never read)"] = \
                    acc["unread"]
        return extra, unread, lost_by


def lost_shard_account(stats: dict[str, Any] | None, survivors: list[dict[str, Any]],
                       shard: int) -> dict[str, Any] | None:
    """The account of a lost shard's input (pure): from its switch's last counters ``stats``
    (None: never read) and the surviving switches' counters (each saw every packet of the
    capture, so they know the lost shard's share: ``shard_seen``; and what they took over:
    ``adopted``). Returns ``switch`` (its counters with its in-flight packets taken out of its
    credits and the packets its NFs finished, dropped or consumed, as one drop reason), ``unread``
    (its share that nobody read: after its last counters) and ``in_flight`` (admitted, not
    finished at its last counters); None when no survivor reads the same capture."""
    share = adopted = None
    for s in survivors:
        port = s.get("ports", {}).get("in", {})
        seen = port.get("shard_seen")
        if seen and shard < len(seen):
            share = max(share or 0, seen[shard])
            adopted = (adopted or 0) + int((port.get("adopted") or {}).get(str(shard), 0))
    if share is None:
        return None
    if stats is None:
        return {"switch": None, "unread": max(0, share - (adopted or 0)), "in_flight": 0}
    ports = stats.get("ports", {})
    rx = ports.get("in", {}).get("rx_packets", 0)
    out = sum(p.get("tx_packets", 0) for p in ports.values())
    cr = stats.get("credits") or {}
    in_flight = sum(max(0, n) for n in (cr.get("in_flight") or {}).values()) + cr.get("written_off", 0)
    counted = sum(stats.get("drops", {}).values()) + sum(sum(p.get("drops", {}).values()) for p in ports.values())
    # What its NFs finished (their drops; the credits came back to its switch): the rest.
    by_nfs = max(0, rx - out - counted - in_flight)
    switch = {**stats, "credits": {}, "drops": {**stats.get("drops", {})}}
    if by_nfs:
        switch["drops"]["dropped or consumed by the NFs of a lost server (its last counters)"] = by_nfs
    return {"switch": switch, "unread": max(0, share - (adopted or 0) - rx), "in_flight": in_flight}


def count_records(path: str) -> int:
    """The whole packet records in capture ``path`` (a partly written last one is not counted)."""
    with open_capture(path) as r:
        return sum(1 for _ in r)
