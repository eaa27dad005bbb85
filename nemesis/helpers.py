"""Faults done by a node-side helper program, driven over its control socket: the base of the disk nemeses
(nemesis/faultfs.py behind log.dirs) and of lost acknowledgements (nemesis/ackproxy.py in front of the client
listener).

The backends start a helper with the broker when the run needs its capability (clusters/remote.py); a
nemesis here only resolves its targets, sends each target's helper one JSON request per step
(`python3 PROGRAM ctl SOCKET JSON` through the Node transport), and on heal clears every node it touched.
"""
from __future__ import annotations

import concurrent.futures
import json
import threading
from typing import Any

from clusters.base import Node
from nemesis.core import Context, Nemesis, NemesisUnavailable, names, resolve


def control(ctx: Context, node: Node, program: str, socket: str, request: dict, timeout: float = 30.0) -> dict:
    """One request to a node-side helper's control socket; its reply (RuntimeError unless it says ok)."""
    cluster = ctx.cluster
    res = node.run([cluster.python, cluster.node_program(program), "ctl", socket, json.dumps(request)],
                   timeout=timeout)
    try:
        reply = json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"{node.name}: {program} ctl {request.get('cmd')} gave no reply: "
                           f"{(res.stderr or res.stdout).strip()[-200:]}") from None
    if not reply.get("ok"):
        raise RuntimeError(f"{node.name}: {program} {request.get('cmd')}: {reply.get('error')}")
    return reply


def parallel(fn, nodes: list[Node]) -> list:
    """fn on every node at once (a fault on several nodes lands on all of them together)."""
    if not nodes:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        return list(pool.map(fn, nodes))


class HelperNemesis(Nemesis):
    start_f = stop_f = ""
    #: the helper: its file in nemesis/, its daemon name and control socket on the node (clusters/remote.py)
    program = daemon = socket = ""
    #: the capability that makes the backends start it, and what it is for, in the error when it is missing
    capability = needs = ""
    default_target = "one"

    def __init__(self):
        self.fs = frozenset({self.start_f, self.stop_f})
        self.affected: list[Node] = []
        self._lock = threading.Lock()

    def ctl(self, ctx: Context, node: Node, request: dict) -> dict:
        return control(ctx, node, self.program, self.socket, request)

    def setup(self, ctx: Context) -> None:
        spec = getattr(ctx.cluster, "spec", None)
        missing = [n.name for n in ctx.nodes if not n.is_running(self.daemon)]
        if spec is None or self.capability not in spec.capabilities or missing:
            raise NemesisUnavailable(f"{self.start_f}: no {self.program} on {', '.join(missing) or 'the nodes'}; "
                                     f"the run needs the {self.capability} capability ({self.needs}) -- see "
                                     "`acked doctor`")

    def invoke(self, ctx: Context, op: dict) -> Any:
        if op["f"] == self.stop_f:
            return self.heal(ctx)
        value = op.get("value") or {}
        value = {"target": value} if isinstance(value, str) else dict(value)
        nodes, seen = resolve(ctx, value.get("target", self.default_target))
        with self._lock:
            self.affected += [n for n in nodes if n not in self.affected]
        out = self.hit(ctx, nodes, value)
        return {**value, "nodes": names(nodes), **seen, **out}

    def hit(self, ctx: Context, nodes: list[Node], value: dict) -> dict:
        """Start the fault on `nodes`; what to add to the completion."""
        raise NotImplementedError

    def heal_node(self, ctx: Context, node: Node) -> dict:
        """Undo the fault on one node; what was seen there."""
        self.ctl(ctx, node, {"cmd": "clear"})
        return {}

    def summarize(self, healed: dict[str, dict]) -> dict:
        """The heal's completion from each node's heal_node result."""
        return {}

    def heal(self, ctx: Context) -> Any:
        with self._lock:
            nodes, self.affected = self.affected, []
        healed: dict[str, dict] = {}
        errors: list[str] = []

        def one(node: Node) -> None:
            try:
                healed[node.name] = self.heal_node(ctx, node)
            except Exception as e:  # noqa: BLE001 -- heal the others, report this one
                errors.append(f"{node.name}: {e}")
        parallel(one, nodes)
        if errors:
            raise RuntimeError(f"could not {self.stop_f}: " + "; ".join(errors))
        return {"nodes": names(nodes), **self.summarize(dict(sorted(healed.items())))}

    def teardown(self, ctx: Context) -> None:
        if self.affected:
            self.heal(ctx)
