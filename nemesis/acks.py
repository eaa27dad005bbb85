"""Lost acknowledgements on the return path (KAFKA-RELIABILITY.md, "Data Flow"): the broker applies the
request, the client never hears so.

With the "acks" capability the docker and ssh backends put nemesis/ackproxy.py in front of every broker's
client listener (clusters/remote.py: an iptables nat chain sends the clients' connections to it; the
brokers' own traffic stays direct). `LoseAcksNemesis` (`start-lose-acks` / `stop-lose-acks`) tells the
proxies of the target brokers to drop, or hold past the client's timeout, the responses of chosen APIs
(Produce, OffsetCommit, or all). A dropped response closes the client's connection: the client retries a
write that already happened, which is what `enable.idempotence` and
`max.in.flight.requests.per.connection` are about.
"""
from __future__ import annotations

import threading
from typing import Any

from clusters.base import Node
from clusters.remote import ACKPROXY, ACKPROXY_CONTROL
from nemesis.core import Context, Nemesis, NemesisUnavailable, names, resolve
from nemesis.disk import control, parallel


class LoseAcksNemesis(Nemesis):
    fs = frozenset({"start-lose-acks", "stop-lose-acks"})

    def __init__(self):
        self.affected: list[Node] = []
        self._lock = threading.Lock()

    def ctl(self, ctx: Context, node: Node, request: dict) -> dict:
        return control(ctx, node, "ackproxy.py", ACKPROXY_CONTROL, request)

    def setup(self, ctx: Context) -> None:
        spec = getattr(ctx.cluster, "spec", None)
        missing = [n.name for n in ctx.nodes if not n.is_running(ACKPROXY)]
        if spec is None or "acks" not in spec.capabilities or missing:
            raise NemesisUnavailable(f"lose-acks: no ackproxy in front of the brokers on {', '.join(missing) or 'the nodes'};"
                                     " the run needs the acks capability (docker or ssh backend)")

    def invoke(self, ctx: Context, op: dict) -> Any:
        if op["f"] == "stop-lose-acks":
            return self.heal(ctx)
        value = dict(op.get("value") or {})
        nodes, seen = resolve(ctx, value.get("target", "leader"))
        request = {"cmd": "lose", "apis": value.get("apis", ["Produce"]), "mode": value.get("mode", "drop"),
                   "p": float(value.get("p", 1.0)), "delay_ms": int(value.get("delay_ms", 0)),
                   "seed": ctx.rng.randrange(2**31)}
        with self._lock:
            for node in nodes:
                if node not in self.affected:
                    self.affected.append(node)
        parallel(lambda n: self.ctl(ctx, n, request), nodes)
        return {**value, "nodes": names(nodes), **seen}

    def heal(self, ctx: Context) -> Any:
        with self._lock:
            nodes, self.affected = self.affected, []
        counts: dict[str, dict] = {}

        def one(node: Node) -> None:
            status = self.ctl(ctx, node, {"cmd": "status"})
            self.ctl(ctx, node, {"cmd": "clear"})
            counts[node.name] = {"dropped": status.get("dropped", {}), "delayed": status.get("delayed", {})}
        parallel(one, nodes)
        return {"nodes": names(nodes), "responses-lost": dict(sorted(counts.items()))}

    def teardown(self, ctx: Context) -> None:
        if self.affected:
            self.heal(ctx)
