"""Faults executed on nodes, as start/stop pairs that the nemesis records in the history.

Faults reach nodes only through clusters.base: `Node.run` for commands and
`Cluster.start_broker` / `Cluster.stop_broker` for the broker process.
"""
from __future__ import annotations

import random
import re
import threading
from typing import Any, Callable

from clusters.base import Cluster, Node

#: our own iptables chain: healing flushes it and touches no other rule
CHAIN = "ACKED-NEMESIS"


class Fault:
    name = "fault"
    start_f = "start"
    stop_f = "stop"

    def __init__(self):
        self.active = False

    def start(self, rng: random.Random) -> Any:
        raise NotImplementedError

    def stop(self) -> Any:
        raise NotImplementedError


class KillFault(Fault):
    """SIGKILL one broker -- the leader of a random active key, or a random node -- and restart it on stop."""

    name, start_f, stop_f = "kill", "kill", "start"

    def __init__(self, cluster: Cluster, target: str = "leader",
                 leader_of: Callable[[str], int | None] | None = None,
                 active_keys: Callable[[], list[str]] | None = None):
        super().__init__()
        self.cluster = cluster
        self.target = target
        self.leader_of = leader_of
        self.active_keys = active_keys
        self.killed: list[Node] = []

    def choose(self, rng: random.Random) -> tuple[Node, dict[str, Any]]:
        nodes = self.cluster.nodes
        if self.target == "leader" and self.leader_of and self.active_keys:
            keys = self.active_keys()
            if keys:
                key = rng.choice(keys)
                leader = self.leader_of(key)
                for node in nodes:
                    if node.broker_id == leader:
                        return node, {"key": key, "leader": leader}
        return rng.choice(nodes), {}

    def start(self, rng: random.Random) -> Any:
        node, why = self.choose(rng)
        self.killed.append(node)
        self.active = True
        self.cluster.stop_broker(node, "KILL")
        return {"nodes": [node.name], **why}

    def stop(self) -> Any:
        nodes, self.killed = self.killed, []
        self.active = False
        errors = []
        for node in nodes:
            try:
                self.cluster.start_broker(node)
            except Exception as e:  # keep restarting the others; report this one
                errors.append(f"{node.name}: {e}")
        if errors:
            raise RuntimeError("could not restart " + "; ".join(errors))
        return {"nodes": [n.name for n in nodes]}


def node_ip(node: Node) -> str:
    ip = getattr(node, "ip", None)
    if ip:
        return ip
    res = node.output(["hostname", "-i"])
    for tok in res.stdout.split():
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", tok) and not tok.startswith("127."):
            return tok
    raise RuntimeError(f"cannot find the IP address of node {node.name}: `hostname -i` said {res.stdout.strip()!r}")


class PartitionFault(Fault):
    """Cut the network between groups of nodes with iptables DROP rules in our own chain; heal flushes the chain."""

    name, start_f, stop_f = "partition", "start-partition", "stop-partition"

    def __init__(self, cluster: Cluster, shape: Callable | None = None):
        super().__init__()
        from nemesis.shapes import halves
        self.cluster = cluster
        self.shape = shape or halves
        self._ips: dict[str, str] = {}
        self._lock = threading.Lock()

    def _prepare(self) -> None:
        if self._ips:
            return
        for node in self.cluster.nodes:
            self._ips[node.name] = node_ip(node)
            node.run(f"iptables -N {CHAIN} 2>/dev/null; iptables -C INPUT -j {CHAIN} 2>/dev/null "
                     f"|| iptables -I INPUT -j {CHAIN}", timeout=15, check=True)

    def start(self, rng: random.Random) -> Any:
        from nemesis.shapes import components
        names = [n.name for n in self.cluster.nodes]
        grudge = self.shape(names, rng)
        with self._lock:
            self._prepare()
            self.active = True
            by_name = {n.name: n for n in self.cluster.nodes}
            for name in names:
                peers = sorted(grudge.neighbors(name))
                if peers:
                    rules = "; ".join(f"iptables -A {CHAIN} -s {self._ips[p]} -j DROP" for p in peers)
                    by_name[name].run(rules, timeout=15, check=True)
        return {"cut": sorted([sorted(e) for e in grudge.edges()]), "groups": components(grudge)}

    def stop(self) -> Any:
        with self._lock:
            self.active = False
            errors = []
            for node in self.cluster.nodes:
                res = node.run(f"iptables -F {CHAIN} 2>/dev/null || true", timeout=15)
                if not res.ok:
                    errors.append(f"{node.name}: {res.stderr.strip()}")
            if errors:
                raise RuntimeError("could not heal the partition on " + "; ".join(errors))
        return {"healed": [n.name for n in self.cluster.nodes]}
