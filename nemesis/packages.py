"""The fault catalogue: one package record per fault family, in one registry (Jepsen's nemesis/combined).

A package carries everything the rest of acked needs to know about a fault family: its CLI name, the
nemesis that executes it, the ops that start and stop it and how a start op's value is drawn (the
schedule), its display (label and colour in the report), the capabilities it needs on the nodes, the
backends that can do it, and which claim of the talk it tests. Config validation, `acked run --help`,
`acked nemeses`, `acked doctor`, the runner and the report all read this registry; adding a fault is
adding a package here.

On the command line a package may be pinned to one of its choices: `kill:controller`,
`partition:leader-from-followers`, `packet:delay`. Without a pin each start op draws one of the
package's default choices with the schedule's seeded random generator, so `--seed` repeats the values.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from clusters import BACKENDS
from nemesis.core import RANDOM_TARGETS, Nemesis, check_target

ALL_BACKENDS = frozenset(BACKENDS)
REMOTE = frozenset({"docker", "ssh"})


@dataclass(frozen=True)
class Package:
    name: str
    summary: str
    start_f: str
    stop_f: str
    label: str
    color: str
    #: builds the nemesis that executes this package's ops
    make: Callable[[], Nemesis]
    #: what a start op may ask for (targets, shapes, behaviours); a pin must be one of them
    choices: tuple[str, ...]
    #: what an unpinned start op draws from
    defaults: tuple[str, ...]
    #: builds a start op's value from a choice (and the schedule's rng, for magnitudes)
    value: Callable[[str, random.Random], Any]
    capabilities: frozenset[str] = frozenset()
    backends: frozenset[str] = ALL_BACKENDS
    #: the claim of KAFKA-RELIABILITY.md it tests
    claim: str = ""
    #: other ops of this package that also start its fault (strobe-clock beside bump-clock)
    other_start_fs: tuple[str, ...] = ()
    #: a sequence: one long start op that waits on conditions
    sequence: bool = False
    #: what the fault did to its nodes, for a sentence in the report ("killed n2, leader of key 6")
    verb: str = "hit"

    @property
    def fs(self) -> tuple[str, ...]:
        return (self.start_f, *self.other_start_fs, self.stop_f)

    def start_op(self, rng: random.Random, pin: str | None = None) -> dict:
        choice = pin or rng.choice(self.defaults)
        value = self.value(choice, rng)
        f = value.pop("__f__", self.start_f) if isinstance(value, dict) else self.start_f
        return {"f": f, "value": value}

    def stop_op(self) -> dict:
        return {"f": self.stop_f, "value": None}


# ---- builders --------------------------------------------------------------------------------------------

def _process(start_f, stop_f, daemon, action):
    def make():
        from nemesis.faults import ProcessNemesis
        return ProcessNemesis(start_f, stop_f, daemon, action)
    return make


def _partition():
    from nemesis.faults import PartitionNemesis
    return PartitionNemesis()


def _clock():
    from nemesis.faults import ClockNemesis
    return ClockNemesis()


def _packet():
    from nemesis.packet import PacketNemesis
    return PacketNemesis()


def _sequence(cls_name):
    def make():
        from nemesis import sequences
        return getattr(sequences, cls_name)()
    return make


def _disk(cls_name):
    def make():
        from nemesis import disk
        return getattr(disk, cls_name)()
    return make


def _lose_acks():
    from nemesis.acks import LoseAcksNemesis
    return LoseAcksNemesis()


def _target(choice: str, rng: random.Random) -> str:
    return choice


def _disk_stall_value(choice: str, rng: random.Random) -> dict:
    return {"target": choice, "ops": rng.choice(("all", "write", "fsync"))}


def _disk_errors_value(choice: str, rng: random.Random) -> dict:
    return {"target": choice, "ops": rng.choice(("write", "read", "fsync", "all")), "p": rng.choice((0.01, 0.1, 1.0))}


#: what a lose-acks start op may ask for. "Delay" holds Produce responses past librdkafka's default
#: request.timeout.ms (30 s): the client times the request out and retries it.
LOSE_ACKS = {
    "produce": {"apis": ["Produce"], "mode": "drop"},
    "produce-delay": {"apis": ["Produce"], "mode": "delay", "delay_ms": 31_000},
    "offset-commit": {"apis": ["OffsetCommit"], "mode": "drop"},
    "all": {"apis": ["all"], "mode": "drop"},
}


def _lose_acks_value(choice: str, rng: random.Random) -> dict:
    return {"behaviour": choice, **LOSE_ACKS[choice], "p": rng.choice((0.1, 0.3, 0.5)),
            "target": rng.choice(("leader", "primaries", "all"))}


def _partition_value(choice: str, rng: random.Random) -> dict:
    # the clients reach every broker most of the time (an isolated leader keeps serving them); sometimes
    # only the majority's brokers, sometimes only the isolated side's
    clients = rng.choice(("all", "all", "majority", "minority"))
    return {"shape": choice, "clients": clients}


def _clock_value(choice: str, rng: random.Random) -> dict:
    target = rng.choice(("one", "minority", "primaries"))
    if choice == "strobe":
        return {"__f__": "strobe-clock", "target": target, "delta-ms": rng.choice((-1, 1)) * rng.choice((200, 2000, 5000)),
                "period-ms": 1000, "duration": 8}
    # bumps from milliseconds to minutes, either way (backward ones shorter: they also hold back the broker's
    # timers by as much, see ClockNemesis)
    sign = rng.choice((-1, 1))
    ms = sign * rng.choice((50, 500, 5_000, 60_000, 300_000) if sign > 0 else (50, 500, 5_000, 20_000))
    return {"target": target, "ms": ms}


#: the packet behaviours a start op may ask for; magnitudes are measured in tests/test_nemesis_packet.py
PACKET_BEHAVIOURS = {
    "delay": {"delay_ms": 200, "jitter_ms": 50},
    "loss": {"loss": 0.2},
    "duplicate": {"duplicate": 0.2},
    "reorder": {"delay_ms": 20, "reorder": 0.25, "reorder_gap_ms": 80},
    "rate": {"rate": "1mbit"},
    "slow-link": {"delay_ms": 100, "jitter_ms": 30, "loss": 0.05},
}


def _packet_value(choice: str, rng: random.Random) -> dict:
    return {"behaviour": choice, **PACKET_BEHAVIOURS[choice], "target": rng.choice(("one", "primaries", "all"))}


PROCESS_TARGETS = (*RANDOM_TARGETS, "leader", "primaries", "controller", "coordinator", "leader-of:KEY",
                   "followers-of:KEY")
DISK_TARGETS = (*RANDOM_TARGETS, "leader", "primaries", "replicas", "leader-of:KEY", "followers-of:KEY",
                "replicas-of:KEY")

PACKAGES: dict[str, Package] = {p.name: p for p in [
    Package("kill", "SIGKILL brokers (by default the leader of a key being written) and restart them on heal",
            "kill", "start", "kill", "#e4572e", _process("kill", "start", "broker", "kill"),
            PROCESS_TARGETS, ("leader", "leader", "one", "controller", "coordinator"), _target,
            claim="acks=1 loses what the leader alone held; acks=all with min.insync.replicas=2 does not", verb="killed"),
    Package("pause", "SIGSTOP brokers and SIGCONT them on heal: a paused leader is a dead leader to ZooKeeper "
            "once its session expires, and a zombie when it resumes",
            "pause", "resume", "pause", "#2e86ab", _process("pause", "resume", "broker", "pause"),
            PROCESS_TARGETS, ("leader", "one", "controller"), _target,
            claim="a replica is in sync only while it holds its ZooKeeper session; acks=1 under a paused leader loses", verb="paused"),
    Package("kill-zookeeper", "SIGKILL ZooKeeper members and restart them on heal",
            "kill-zookeeper", "start-zookeeper", "kill zk", "#b5651d",
            _process("kill-zookeeper", "start-zookeeper", "zookeeper", "kill"),
            RANDOM_TARGETS, ("one", "minority"), _target, backends=REMOTE,
            claim="losing a ZooKeeper minority changes no leader; the controller and ISR live in ZooKeeper", verb="killed ZooKeeper on"),
    Package("pause-zookeeper", "SIGSTOP ZooKeeper members and SIGCONT them on heal",
            "pause-zookeeper", "resume-zookeeper", "pause zk", "#8d6e63",
            _process("pause-zookeeper", "resume-zookeeper", "zookeeper", "pause"),
            RANDOM_TARGETS, ("one", "minority"), _target, backends=REMOTE,
            claim="a stalled ZooKeeper member delays, but does not decide, elections", verb="paused ZooKeeper on"),
    Package("partition", "cut the network along a shape: random halves, one node, a majorities ring, a bridge, "
            "or aimed at the leader, the controller, the group coordinator, or the leader from its followers "
            "only (the ISR shrinks to the leader alone); may also cut the clients off a side",
            "start-partition", "stop-partition", "partition", "#7b5ea7", _partition,
            ("one", "halves", "majorities-ring", "bridge", "leader", "controller", "coordinator",
             "leader-from-followers"),
            ("halves", "one", "majorities-ring", "bridge", "leader", "leader", "leader-from-followers"),
            _partition_value, capabilities=frozenset({"net"}), backends=REMOTE,
            claim="an isolated leader stops acknowledging acks=all writes once its ISR cannot shrink; with acks=1 "
                  "or min.insync.replicas=1 what it acknowledged alone is lost"),
    Package("clock", "skew brokers' clocks through libfaketime: bumps from 50 ms to 5 minutes ahead or 20 s back, "
            "or a strobe between two offsets; reset on heal",
            "bump-clock", "reset-clock", "clock", "#f2a541", _clock, ("bump", "strobe"), ("bump", "bump", "strobe"),
            _clock_value, capabilities=frozenset({"clock"}), backends=REMOTE, other_start_fs=("strobe-clock",),
            claim="replication and elections use no wall clock: skew changes no guarantee", verb="skewed the clock of"),
    Package("packet", "slow or lossy links without netem: delay with jitter, loss, duplication, reordering, a "
            "rate limit (NFQUEUE in the node, iptables statistic, tc tbf) on packets leaving the target nodes",
            "start-packet", "stop-packet", "packet", "#3bb273", _packet, tuple(PACKET_BEHAVIOURS),
            ("delay", "loss", "duplicate", "reorder", "rate", "slow-link"), _packet_value,
            capabilities=frozenset({"net"}), backends=REMOTE,
            claim="slow or lossy links cost latency and may shrink the ISR, never acknowledged writes under acks=all", verb="slowed packets from"),
    Package("isolate-leader-then-kill", "the talk's trap: cut a hot key's leader from its followers until its ISR "
            "is the leader alone, keep writing, kill it, heal the followers so one is elected, restart the old "
            "leader on heal", "isolate-leader-then-kill", "heal-isolate-leader-then-kill", "isolate+kill leader",
            "#c0392b", _sequence("IsolateLeaderThenKill"), ("leader",), ("leader",), lambda c, r: {"target": c},
            capabilities=frozenset({"net", "acks"}), backends=REMOTE, sequence=True,
            claim="slides 12-17: with unclean.leader.election.enable=true a stale follower is elected and "
                  "acknowledged writes are lost; with it off the partition waits offline for the old leader"),
    Package("isolate-leader-then-lose-unfsynced", "the talk's trap ended by a power loss: cut a hot key's leader "
            "from its followers until its ISR is the leader alone, keep writing, then drop the leader's unfsynced "
            "writes and kill it; heal the followers; restart the old leader on heal",
            "isolate-leader-then-lose-unfsynced", "heal-isolate-leader-then-lose-unfsynced",
            "isolate+power-loss leader", "#922b21", _sequence("IsolateLeaderThenLoseUnfsynced"), ("leader",),
            ("leader",), lambda c, r: {"target": c}, capabilities=frozenset({"net", "disk", "acks"}), backends=REMOTE,
            sequence=True,
            claim="min.insync.replicas=1: the ISR of one acknowledges alone, and its power loss takes those "
                  "writes with it (Kafka acknowledges before fsync)"),
    Package("partition-then-kill-leader", "isolate a hot key's leader until the majority elects another, heal, and "
            "at once kill the leader that served during the partition", "partition-then-kill-leader",
            "heal-partition-then-kill-leader", "partition, then kill leader", "#6c3483",
            _sequence("PartitionThenKillLeader"), ("leader",), ("leader",), lambda c, r: {"target": c},
            capabilities=frozenset({"net"}), backends=REMOTE, sequence=True,
            claim="a replica that diverged while cut off truncates to the new leader's log before it serves"),
    Package("disk-stall", "block the brokers' log.dirs (every operation, writes, or fsyncs) in our FUSE filesystem "
            "until release: the broker keeps its ZooKeeper session and its partitions stall",
            "stall-disk", "release-disk", "disk stall", "#5d6d7e", _disk("DiskStallNemesis"), DISK_TARGETS,
            ("leader", "one", "leader"), _disk_stall_value, capabilities=frozenset({"disk"}), backends=REMOTE,
            claim="a leader that cannot write holds acks=all writes unacknowledged; nothing acknowledged is lost", verb="stalled the disk of"),
    Package("disk-errors", "make a fraction (1%, 10%, all) of the reads, writes or fsyncs under log.dirs fail with "
            "EIO; the broker reports the failed log dir and halts, as Kafka does; heal clears and restarts",
            "start-disk-errors", "stop-disk-errors", "disk errors", "#943126", _disk("DiskErrorsNemesis"),
            DISK_TARGETS, ("leader", "one"), _disk_errors_value, capabilities=frozenset({"disk"}), backends=REMOTE,
            claim="a failed disk takes one replica out; the ISR keeps what it acknowledged", verb="failed disk operations of"),
    Package("lose-unfsynced", "power loss: freeze log.dirs, SIGKILL the broker and drop every write not yet fsynced, "
            "on one node, several, or every replica of a key at the same instant; restart on heal",
            "lose-unfsynced", "restart-after-power-loss", "lose unfsynced", "#17202a",
            _disk("LoseUnfsyncedNemesis"), DISK_TARGETS, ("leader", "one", "minority"), _target,
            capabilities=frozenset({"disk"}), backends=REMOTE,
            claim="Kafka acknowledges before fsync: durability rests on replication. One replica's power loss "
                  "loses nothing under acks=all; every replica's at once loses acknowledged writes unless "
                  "log.flush.interval.messages=1", verb="cut the power of"),
    Package("lose-acks", "lose responses on the way back: the broker applies the request and its Produce, "
            "OffsetCommit or any response is dropped (the connection closes) or held past the client's "
            "timeout, through a Kafka-aware proxy in front of each broker",
            "start-lose-acks", "stop-lose-acks", "lose acks", "#d35400", _lose_acks, tuple(LOSE_ACKS),
            ("produce", "produce", "produce-delay", "offset-commit", "all"), _lose_acks_value,
            capabilities=frozenset({"acks"}), backends=REMOTE,
            claim="data flow: a lost ack makes the producer retry a write that happened; without idempotence the "
                  "retry duplicates, and with several requests in flight it reorders", verb="lost responses of"),
]}


#: packages that stage what `safe` does not claim to survive: the power loss of the last in-sync replica (the
#: sequence shrinks the ISR to the leader, then cuts its power). Kafka before KIP-966 (Eligible Leader Replicas)
#: re-elects that replica with whatever survived on its disk, and so does our broker (docs/nemesis.md). The
#: `lose-unfsynced:replicas` pin is beyond safe too: no package default draws it.
BEYOND_SAFE = frozenset({"isolate-leader-then-lose-unfsynced"})


def parse(spec: str) -> tuple[Package, str | None]:
    """`kill` or `kill:controller` -> (package, pin); ValueError with what to write instead."""
    name, _, pin = spec.strip().partition(":")
    pkg = PACKAGES.get(name)
    if pkg is None:
        raise ValueError(f"unknown nemesis {name!r}; choose from: {', '.join(PACKAGES)} (see `acked nemeses`)")
    if pin:
        if pin not in pkg.choices:
            try:
                if "one" not in pkg.choices:
                    raise ValueError
                check_target(pin)
            except ValueError:
                raise ValueError(f"nemesis {name}: unknown choice {pin!r}; use one of {', '.join(pkg.choices)}") from None
    return pkg, pin or None


def package_of_f(f: str) -> tuple[Package, str] | None:
    """The package an op belongs to and whether it starts or stops its fault ("start" | "stop")."""
    for pkg in PACKAGES.values():
        if f == pkg.stop_f:
            return pkg, "stop"
        if f == pkg.start_f or f in pkg.other_start_fs:
            return pkg, "start"
    return None


def nemesis_fs() -> frozenset[str]:
    return frozenset(f for p in PACKAGES.values() for f in p.fs)


def display() -> dict[str, dict]:
    """What the report needs per package: label, colour, start and stop ops."""
    return {p.name: {"label": p.label, "color": p.color, "start": [p.start_f, *p.other_start_fs], "stop": p.stop_f,
                     "verb": p.verb} for p in PACKAGES.values()}
