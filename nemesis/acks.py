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

from clusters.base import Node
from clusters.remote import ACKPROXY, ACKPROXY_CONTROL
from nemesis.core import Context
from nemesis.helpers import HelperNemesis, parallel


class LoseAcksNemesis(HelperNemesis):
    start_f, stop_f = "start-lose-acks", "stop-lose-acks"
    program, daemon, socket = "ackproxy.py", ACKPROXY, ACKPROXY_CONTROL
    capability, needs = "acks", "ackproxy in front of the brokers: docker or ssh backend"
    default_target = "leader"

    def hit(self, ctx: Context, nodes: list[Node], value: dict) -> dict:
        request = {"cmd": "lose", "apis": value.get("apis", ["Produce"]), "mode": value.get("mode", "drop"),
                   "p": float(value.get("p", 1.0)), "delay_ms": int(value.get("delay_ms", 0)),
                   "seed": ctx.rng.randrange(2**31)}
        parallel(lambda n: self.ctl(ctx, n, request), nodes)
        return {}

    def heal_node(self, ctx: Context, node: Node) -> dict:
        status = self.ctl(ctx, node, {"cmd": "status"})
        self.ctl(ctx, node, {"cmd": "clear"})
        return {"dropped": status.get("dropped", {}), "delayed": status.get("delayed", {})}

    def summarize(self, healed: dict[str, dict]) -> dict:
        return {"responses-lost": healed}
