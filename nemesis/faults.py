"""The process, network and clock nemeses: each fault really happens on the node, and each is reversible.

- `ProcessNemesis`: SIGKILL and restart, or SIGSTOP and SIGCONT, of the broker or of ZooKeeper
  (Jepsen's `node-start-stopper` and `hammer-time`).
- `PartitionNemesis`: iptables DROP rules in our own chain, shaped by a grudge graph (nemesis/shapes.py)
  that may be aimed at Kafka roles, may cut only the brokers' port (the leader keeps its ZooKeeper
  session while its followers cannot fetch), and may cut the clients off chosen brokers.
- `ClockNemesis`: a per-broker clock offset through libfaketime; containers share the kernel clock, so
  `date -s` would move every node at once (Jepsen's clock nemesis moves each node's own clock).

Faults reach nodes only through clusters.base: `Node.run` for commands and `Cluster.start_broker` /
`Cluster.stop_broker` for the broker process.
"""
from __future__ import annotations

import re
import threading
import time
from typing import Any

from clusters.base import Node
from clusters.remote import ACKPROXY_PORT, FAKETIME_FILE
from clusters.services import BROKER_PORT
from nemesis.core import Context, Nemesis, NemesisUnavailable, names, resolve

#: our own iptables chain: healing flushes it and touches no other rule
CHAIN = "ACKED-NEMESIS"
#: the pseudo-node of a grudge graph that stands for the harness's clients
CLIENTS = "clients"


def node_ip(node: Node) -> str:
    ip = getattr(node, "ip", None)
    if ip:
        return ip
    res = node.output(["hostname", "-i"])
    for tok in res.stdout.split():
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", tok) and not tok.startswith("127."):
            return tok
    raise RuntimeError(f"cannot find the IP address of node {node.name}: `hostname -i` said {res.stdout.strip()!r}")


def client_ip(node: Node) -> str:
    """The address the harness's clients come from, as the node sees them: the SSH client's address on a
    real host, the bridge's gateway in a docker network (the host reaches containers through it)."""
    res = node.output("echo ${SSH_CONNECTION%% *}; ip -4 route show default | awk '{print $3; exit}'")
    for tok in res.stdout.split():
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", tok):
            return tok
    raise RuntimeError(f"cannot find the clients' address as node {node.name} sees it: {res.stdout.strip()!r}")


# ---- processes -----------------------------------------------------------------------------------------

class ProcessNemesis(Nemesis):
    """Kill (SIGKILL, then restart on heal) or pause (SIGSTOP, then SIGCONT) the broker or ZooKeeper."""

    def __init__(self, start_f: str, stop_f: str, daemon: str = "broker", action: str = "kill"):
        assert daemon in ("broker", "zookeeper") and action in ("kill", "pause")
        self.start_f, self.stop_f, self.daemon, self.action = start_f, stop_f, daemon, action
        self.fs = frozenset({start_f, stop_f})
        self.affected: list[Node] = []
        self._lock = threading.Lock()

    def _pool(self, ctx: Context) -> list[Node]:
        return ctx.nodes if self.daemon == "broker" else ctx.zk_nodes

    def invoke(self, ctx: Context, op: dict) -> Any:
        if op["f"] == self.start_f:
            target = op.get("value") or "one"
            nodes, seen = resolve(ctx, target, self._pool(ctx))
            with self._lock:
                for node in nodes:
                    self._hit(ctx, node)
                    if node not in self.affected:
                        self.affected.append(node)
            return {"target": target, "nodes": names(nodes), **seen}
        with self._lock:
            nodes, self.affected = self.affected, []
        errors = []
        for node in nodes:
            try:
                self._heal(ctx, node)
            except Exception as e:  # keep healing the others; report this one
                errors.append(f"{node.name}: {e}")
        if errors:
            raise RuntimeError(f"could not {self.stop_f} " + "; ".join(errors))
        return {"nodes": names(nodes)}

    def _hit(self, ctx: Context, node: Node) -> None:
        if self.action == "pause":
            node.signal(self.daemon, "STOP")
        elif self.daemon == "broker":
            ctx.cluster.stop_broker(node, "KILL")
        else:
            ctx.cluster.stop_zookeeper(node, "KILL")

    def _heal(self, ctx: Context, node: Node) -> None:
        if self.action == "pause":
            node.signal(self.daemon, "CONT")
        elif self.daemon == "broker":
            if not node.is_running("broker"):
                ctx.cluster.start_broker(node)
        elif not node.is_running("zookeeper"):
            ctx.cluster.start_zookeeper(node)

    def teardown(self, ctx: Context) -> None:
        if self.affected:
            self.invoke(ctx, {"f": self.stop_f, "value": None})


# ---- network partitions --------------------------------------------------------------------------------

def broker_port(ctx: Context) -> int:
    """The port the cluster's brokers listen on (an ssh cluster file's [broker] may name another than 9092)."""
    description = getattr(ctx.cluster, "broker", None)
    return getattr(description, "port", BROKER_PORT)


class PartitionNemesis(Nemesis):
    """Cut the network along a grudge graph with iptables DROP rules in our own chain; heal flushes it.

    An edge's `ports` attribute limits the cut to the brokers' port (both directions of it), so a leader
    can lose its followers and keep ZooKeeper, which runs on the same nodes. The pseudo-node `clients`
    cuts the harness's clients (the host) off brokers.
    """

    fs = frozenset({"start-partition", "stop-partition"})

    def __init__(self, chain: str = CHAIN):
        self.chain = chain
        self._ips: dict[str, str] = {}
        self._clients_ip: str | None = None
        self._broker_port = BROKER_PORT
        self._lock = threading.Lock()
        self.active: dict | None = None

    def setup(self, ctx: Context) -> None:
        self._broker_port = broker_port(ctx)
        with self._lock:
            for node in {*ctx.nodes, *ctx.zk_nodes}:
                self._ips[node.name] = node_ip(node)
                res = node.run(f"iptables -N {self.chain} 2>/dev/null; iptables -C INPUT -j {self.chain} "
                               f"2>/dev/null || iptables -I INPUT -j {self.chain}", timeout=15)
                if not res.ok:
                    raise NemesisUnavailable(
                        f"partition: iptables does not work on {node.name} ({res.stderr.strip()[:120]}); the node "
                        f"needs NET_ADMIN (the docker backend grants it for network faults) -- see `acked doctor`")

    def _rules(self, grudge, name: str) -> list[str]:
        rules = []
        for peer in sorted(grudge.neighbors(name)):
            ports = grudge.edges[name, peer].get("ports")
            src = self._clients_ip if peer == CLIENTS else self._ips[peer]
            if peer == CLIENTS:
                # behind the ack proxy (the "acks" capability) the clients' packets reach INPUT redirected to it
                ports = ports or [self._broker_port, ACKPROXY_PORT]
            if ports:
                for port in ports:
                    rules.append(f"iptables -A {self.chain} -s {src} -p tcp --dport {port} -j DROP")
                    rules.append(f"iptables -A {self.chain} -s {src} -p tcp --sport {port} -j DROP")
            else:
                rules.append(f"iptables -A {self.chain} -s {src} -j DROP")
        return rules

    def invoke(self, ctx: Context, op: dict) -> Any:
        if op["f"] == "stop-partition":
            return self.heal(ctx)
        from nemesis.shapes import components, make_grudge
        spec = op.get("value") or "halves"
        if isinstance(spec, str):
            spec = {"shape": spec}
        grudge, seen = make_grudge(ctx, spec)
        with self._lock:
            if CLIENTS in grudge and self._clients_ip is None:
                self._clients_ip = client_ip(ctx.nodes[0])
            by_name = {n.name: n for n in {*ctx.nodes, *ctx.zk_nodes}}
            self.active = {"spec": spec, "seen": seen}
            for name in sorted(grudge.nodes):
                rules = self._rules(grudge, name) if name != CLIENTS else []
                if rules:
                    by_name[name].run("; ".join(rules), timeout=15, check=True)
        cut = sorted(sorted(e) for e in grudge.edges())
        out = {**spec, "cut": cut, "groups": components(grudge.subgraph([n for n in grudge if n != CLIENTS])), **seen}
        if CLIENTS in grudge:
            out["clients-cut-from"] = sorted(grudge.neighbors(CLIENTS))
        return out

    def heal(self, ctx: Context) -> Any:
        with self._lock:
            active, self.active = self.active, None
            errors = []
            for node in {*ctx.nodes, *ctx.zk_nodes}:
                res = node.run(f"iptables -F {self.chain} 2>/dev/null || true", timeout=15)
                if not res.ok:
                    errors.append(f"{node.name}: {res.stderr.strip()}")
            if errors:
                raise RuntimeError("could not heal the partition on " + "; ".join(errors))
        out: dict[str, Any] = {"healed": names({*ctx.nodes, *ctx.zk_nodes})}
        key = ((active or {}).get("seen") or {}).get("key")
        if key is not None:
            out["key"], out["isr-at-heal"] = key, ctx.roles.isr_of(key)
        return out

    def teardown(self, ctx: Context) -> None:
        self.heal(ctx)


# ---- clocks --------------------------------------------------------------------------------------------

def faketime_spec(offset_ms: float) -> str:
    """libfaketime's relative offset: '+1.500000' seconds (fractions allowed), '-30.000000'."""
    return f"{'+' if offset_ms >= 0 else '-'}{abs(offset_ms) / 1000:.6f}"


class ClockNemesis(Nemesis):
    """Per-broker clock offsets through libfaketime (Jepsen's bump, strobe and reset).

    Each broker runs under LD_PRELOAD=libfaketime with FAKETIME_TIMESTAMP_FILE pointing at a file on
    its node (clusters/remote.py starts it so when the cluster has the `clock` capability); the nemesis
    writes the offset there and the broker's clocks follow within a second. The offset moves the wall
    clock and the monotonic clock together (see RemoteCluster._faketime_env for why): a forward bump is
    what a broker sees after a long stall, and a backward bump also holds back the timers it had set.
    """

    fs = frozenset({"bump-clock", "strobe-clock", "reset-clock"})
    STROBER = "clock-strober"

    def __init__(self):
        self.skewed: list[Node] = []
        self._lock = threading.Lock()

    def setup(self, ctx: Context) -> None:
        for node in ctx.nodes:
            res = node.run(f"ls /usr/lib/*/faketime/libfaketimeMT.so.1 && test -w $(dirname {FAKETIME_FILE})",
                           timeout=10)
            if not res.ok:
                raise NemesisUnavailable(f"clock: libfaketime is missing on {node.name}: rebuild the node image "
                                         f"(acked image build --force) -- see `acked doctor`")
            if not getattr(ctx.cluster, "spec", None) or "clock" not in ctx.cluster.spec.capabilities:
                raise NemesisUnavailable("clock: the brokers were not started under libfaketime; start the cluster "
                                         "with the clock capability (acked run does when the clock nemesis is on)")

    def _write(self, node: Node, offset_ms: float) -> None:
        node.run(f"echo {faketime_spec(offset_ms)} > {FAKETIME_FILE}.tmp && mv {FAKETIME_FILE}.tmp {FAKETIME_FILE}",
                 timeout=10, check=True)

    def observed_offset_ms(self, node: Node) -> float | None:
        """The node's faked wall clock minus the host's, as a process under libfaketime there reads it."""
        cmd = (f"LD_PRELOAD=$(ls /usr/lib/*/faketime/libfaketimeMT.so.1) FAKETIME_TIMESTAMP_FILE={FAKETIME_FILE} "
               f"FAKETIME_NO_CACHE=1 date +%s.%N")
        before = time.time()
        res = node.output(cmd)
        after = time.time()
        try:
            return round((float(res.stdout.strip()) - (before + after) / 2) * 1000, 1)
        except ValueError:
            return None

    def invoke(self, ctx: Context, op: dict) -> Any:
        f, value = op["f"], op.get("value") or {}
        if f == "reset-clock":
            with self._lock:
                nodes, self.skewed = self.skewed, []
            for node in nodes:
                node.stop_daemon(self.STROBER, "KILL")
                self._write(node, 0)
            return {"nodes": names(nodes)}
        nodes, seen = resolve(ctx, value.get("target", "one"))
        out: dict[str, Any] = {**value, "nodes": names(nodes), **seen}
        for node in nodes:
            node.stop_daemon(self.STROBER, "KILL")
            if f == "bump-clock":
                self._write(node, value.get("ms", 0))
            else:  # strobe: flip between 0 and delta every period, for duration seconds, then back to 0
                delta, period = value.get("delta-ms", 0), max(1.0, value.get("period-ms", 1000) / 1000)
                loops = max(1, int(value.get("duration", 10) / (2 * period)))
                script = (f"for i in $(seq {loops}); do echo {faketime_spec(delta)} > {FAKETIME_FILE}; sleep {period}; "
                          f"echo +0 > {FAKETIME_FILE}; sleep {period}; done")
                node.start_daemon(self.STROBER, ["sh", "-c", script], "/var/log/acked/clock-strober.log")
            with self._lock:
                if node not in self.skewed:
                    self.skewed.append(node)
        if f == "bump-clock":
            out["observed-offset-ms"] = {n.name: self.observed_offset_ms(n) for n in nodes}
        return out

    def teardown(self, ctx: Context) -> None:
        for node in ctx.nodes:
            node.stop_daemon(self.STROBER, "KILL")
            node.run(f"test -e {FAKETIME_FILE} && echo +0 > {FAKETIME_FILE}; true", timeout=10)
        self.skewed = []
