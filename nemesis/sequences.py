"""Multi-step faults that wait on a condition: the talk's failure path, staged on purpose.

- `isolate-leader-then-kill` (KAFKA-RELIABILITY.md, slides 12-17): cut the leader of a hot key off from
  its followers on the brokers' port only (it keeps its ZooKeeper session, so it can shrink the ISR),
  wait until the key's ISR is the leader alone, let the clients write a little more (acknowledged by
  that ISR of one, while the clients' Fetch responses from the leader are held so that no consumer has
  read them yet), kill the leader, heal the followers so that one of them is elected while the old
  leader is down (an unclean election when `unclean.leader.election.enable=true`), and on heal restart
  the old leader, which truncates to the new leader's log.
- `isolate-leader-then-lose-unfsynced`: the same, ended by a power loss of the leader (nemesis/disk.py):
  under `min.insync.replicas=1` the old leader is the only replica that may lead again, and it comes back
  without the writes it had not fsynced.
- `partition-then-kill-leader`: isolate the leader of a hot key, wait until the majority elects a new
  one and it serves for a while, heal, and at once kill the leader that served during the partition,
  so that a replica which was on the other side is the one elected.

Each is one start op whose completion records what was seen at every step (ISR before and after, how
long the shrink took, who was elected), and one stop op that restarts the killed broker.
"""
from __future__ import annotations

import time
from typing import Any

from nemesis.core import Context, Nemesis, hot_key
from nemesis.faults import PartitionNemesis

#: the sequences' own iptables chain, so that a partition nemesis running beside them heals only its own cuts
SEQUENCE_CHAIN = "ACKED-SEQUENCE"


def wait_for(ctx: Context, pred, deadline: float, every: float = 0.25) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if pred():
            return True
        if ctx.wait(every):
            return False
    return bool(pred())


class _Sequence(Nemesis):
    name = "sequence"

    def __init__(self):
        self.fs = frozenset({self.name, f"heal-{self.name}"})
        self.partition = PartitionNemesis(chain=SEQUENCE_CHAIN)
        self.killed = []

    def setup(self, ctx: Context) -> None:
        self.partition.setup(ctx)

    def invoke(self, ctx: Context, op: dict) -> Any:
        if op["f"] == self.name:
            value, out = op.get("value") or {}, {}
            aimed = self._aim(ctx, value, out)
            if aimed is None:
                return out
            try:
                self.run(ctx, value, out, *aimed)
            finally:
                self.partition.heal(ctx)
            return out
        killed, self.killed = self.killed, []
        for node in killed:
            if not node.is_running("broker"):
                ctx.cluster.start_broker(node)
        return {"restarted": sorted(n.name for n in killed)}

    def _kill(self, ctx: Context, node) -> None:
        self.killed.append(node)
        ctx.cluster.stop_broker(node, "KILL")

    def teardown(self, ctx: Context) -> None:
        self.partition.teardown(ctx)
        if self.killed:
            self.invoke(ctx, {"f": f"heal-{self.name}"})

    def run(self, ctx: Context, value: dict, out: dict, key: str, leader: int, node) -> None:
        """The steps, aimed at `key` whose leader `leader` runs on `node`; what is seen goes into `out`."""
        raise NotImplementedError

    @staticmethod
    def _aim(ctx: Context, value: dict, out: dict):
        """(key, leader id, leader node) of the key asked for or a hot key, recorded in `out`; None if none."""
        key = value.get("key") or hot_key(ctx)
        leader = ctx.roles.leader_of(key) if key is not None else None
        node = ctx.node_of(leader)
        out.update({"key": key, "leader": leader, "isr-before": ctx.roles.isr_of(key) if key else []})
        if node is None:
            out["skipped"] = "no hot key with a known leader"
            return None
        return key, leader, node


class IsolateLeaderThenKill(_Sequence):
    name = "isolate-leader-then-kill"

    def run(self, ctx: Context, value: dict, out: dict, key: str, leader: int, node) -> None:
        started = time.monotonic()
        out["cut"] = self.partition.invoke(ctx, {"f": "start-partition", "value": {
            "shape": "leader-from-followers", "key": key}}).get("cut")
        # the cut holds every partition the node leads; a key's ISR shrinks only while its log moves (Kafka's
        # rule), and a hot key may have had its last write by now: any hot key led here that shrinks will do
        def shrunk_key():
            return next((k for k in [key, *ctx.roles.hot_keys()]
                         if ctx.roles.leader_of(k) == leader and ctx.roles.isr_of(k) == [leader]), None)
        shrunk = wait_for(ctx, lambda: shrunk_key() is not None, value.get("shrink-deadline", 40.0))
        if shrunk:
            out["key"] = key = shrunk_key() or key
        out["isr-shrunk-to-leader"] = shrunk
        out["isr-before-kill"] = ctx.roles.isr_of(key)
        out["shrink-seconds"] = round(time.monotonic() - started, 2)
        out["consumers-held"] = self._hold_fetches(ctx, node)
        try:
            ctx.wait(value.get("write-for", 2.0))   # writes acknowledged by the ISR of one
            out.update(self.crash(ctx, node))
        finally:
            if out["consumers-held"]:
                self._proxy(ctx, node, {"cmd": "clear", "held": "discard"})
        out["killed"] = node.name
        self.partition.heal(ctx)
        # the old leader's session expires after zookeeper.session.timeout.ms (6 s), then the controller elects;
        # with unclean election off nobody can be, and the partition waits offline for the restart on heal
        elected = wait_for(ctx, lambda: ctx.roles.leader_of(key) not in (None, leader), value.get("elect-deadline", 12.0))
        out["elected"] = ctx.roles.leader_of(key) if elected else None
        out["isr-after"] = ctx.roles.isr_of(key)


    def crash(self, ctx: Context, node) -> dict:
        self._kill(ctx, node)
        return {}

    @staticmethod
    def _proxy(ctx: Context, node, request: dict) -> dict:
        from nemesis.acks import LoseAcksNemesis
        return LoseAcksNemesis().ctl(ctx, node, request)

    def _hold_fetches(self, ctx: Context, node) -> bool:
        """Consumers lag: while the ISR of one acknowledges, the leader's Fetch responses to the clients are held
        in its ack proxy (and die with it). Otherwise a consumer at the log end reads every doomed write before
        the leader dies; the loss then shows only as a forked offset (`inconsistent-offsets`), never as Jepsen's
        `lost-write`, which needs an acknowledged value no read returned (measured: 2 of 10 unclean-election runs
        of 60 s had no lost-write). Needs the proxy (the acks capability); without it, nothing is held."""
        from clusters.remote import ACKPROXY
        if "acks" not in getattr(getattr(ctx.cluster, "spec", None), "capabilities", ()) or not node.is_running(ACKPROXY):
            return False
        self._proxy(ctx, node, {"cmd": "lose", "apis": ["Fetch"], "mode": "delay", "delay_ms": 600_000})
        return True


class IsolateLeaderThenLoseUnfsynced(IsolateLeaderThenKill):
    """The same trap, ended by a power loss instead of a kill: the leader's writes since its last fsync vanish
    with it. Under min.insync.replicas=1 the leader, the ISR of one, is the only replica that may be elected:
    it comes back without what it acknowledged alone, and the followers truncate to it."""
    name = "isolate-leader-then-lose-unfsynced"

    def __init__(self):
        super().__init__()
        from nemesis.disk import LoseUnfsyncedNemesis
        self.power = LoseUnfsyncedNemesis()

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        self.power.setup(ctx)

    def crash(self, ctx: Context, node) -> dict:
        self.killed.append(node)
        return self.power.hit(ctx, [node], {})


class PartitionThenKillLeader(_Sequence):
    name = "partition-then-kill-leader"

    def run(self, ctx: Context, value: dict, out: dict, key: str, leader: int, old) -> None:
        out["cut"] = self.partition.invoke(ctx, {"f": "start-partition", "value": {"shape": "cut", "cut": [
            [old.name, n.name] for n in ctx.nodes if n is not old]}}).get("cut")
        moved = wait_for(ctx, lambda: ctx.roles.leader_of(key) not in (None, leader), value.get("elect-deadline", 30.0))
        new = ctx.node_of(ctx.roles.leader_of(key)) if moved else None
        out["served-during-partition"] = new.name if new else None
        ctx.wait(value.get("serve-for", 2.0))
        self.partition.heal(ctx)
        if new is not None:
            self._kill(ctx, new)          # at once: the replica that was cut off may be the one elected
            out["killed"] = new.name
            elected = wait_for(ctx, lambda: ctx.roles.leader_of(key) not in (None, new.broker_id),
                               value.get("elect-deadline", 30.0))
            out["elected"] = ctx.roles.leader_of(key) if elected else None
        out["isr-after"] = ctx.roles.isr_of(key)
