"""Disk faults under the broker's log.dirs, through our FUSE filesystem (nemesis/faultfs.py): Kibosh and LazyFS.

The docker and ssh backends mount faultfs over log.dirs before the broker first starts when a run needs the
"disk" capability (clusters/remote.py); these nemeses only talk to its control socket on the node.

- `DiskStallNemesis` (`stall-disk` / `release-disk`): every operation of the chosen class (all, write, fsync)
  blocks in the filesystem until release. The broker keeps its ZooKeeper session (its ZooKeeper client is
  another thread on another disk), so it stays leader and its partitions stall, as Kafka's do on a hung disk.
- `DiskErrorsNemesis` (`start-disk-errors` / `stop-disk-errors`): a fraction of reads, writes or fsyncs fail
  with EIO. The broker reports the failed log dir and halts (broker/log.py, Kafka's LogDirFailureChannel);
  heal clears the errors and starts the brokers that halted.
- `LoseUnfsyncedNemesis` (`lose-unfsynced` / `restart-after-power-loss`): power loss. On every target node at
  the same instant the filesystem is frozen; then the brokers are SIGKILLed and every file goes back to what
  its last fsync made durable (writes since vanish, a file never fsynced comes back empty); then it thaws.
  Heal starts the brokers, which recover their logs from what survived. Aimed with `replicas` (every
  replica of a hot key) it shows that Kafka's durability rests on replication, not on fsync.
"""
from __future__ import annotations

import concurrent.futures
import json
import threading
from typing import Any

from clusters.base import Node
from clusters.remote import FAULTFS, FAULTFS_CONTROL
from nemesis.core import Context, Nemesis, NemesisUnavailable, names, resolve


def control(ctx: Context, node: Node, program: str, socket: str, request: dict, timeout: float = 30.0) -> dict:
    """One request to a node-side helper's control socket (`python3 PROGRAM ctl SOCKET JSON`); its reply."""
    cluster = ctx.cluster
    python = getattr(cluster, "python", "python3")
    res = node.run([python, cluster.node_program(program), "ctl", socket, json.dumps(request)], timeout=timeout)
    try:
        reply = json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"{node.name}: {program} ctl {request.get('cmd')} gave no reply: "
                           f"{(res.stderr or res.stdout).strip()[-200:]}") from None
    if not reply.get("ok"):
        raise RuntimeError(f"{node.name}: {program} {request.get('cmd')}: {reply.get('error')}")
    return reply


def parallel(fn, nodes: list[Node]) -> list:
    if not nodes:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        return list(pool.map(fn, nodes))


class _FaultFsNemesis(Nemesis):
    start_f = stop_f = ""

    def __init__(self):
        self.fs = frozenset({self.start_f, self.stop_f})
        self.affected: list[Node] = []
        self._lock = threading.Lock()

    def ctl(self, ctx: Context, node: Node, request: dict) -> dict:
        return control(ctx, node, "faultfs.py", FAULTFS_CONTROL, request)

    def setup(self, ctx: Context) -> None:
        spec = getattr(ctx.cluster, "spec", None)
        missing = [n.name for n in ctx.nodes if not n.is_running(FAULTFS)]
        if spec is None or "disk" not in spec.capabilities or missing:
            raise NemesisUnavailable(f"{self.start_f}: log.dirs is not on faultfs on {', '.join(missing) or 'the nodes'}; "
                                     "the run needs the disk capability (docker or ssh backend, /dev/fuse in the "
                                     "nodes) -- see `acked doctor`")

    def invoke(self, ctx: Context, op: dict) -> Any:
        if op["f"] == self.stop_f:
            return self.heal(ctx)
        value = op.get("value") or {}
        if isinstance(value, str):
            value = {"target": value}
        target = value.get("target", "one")
        nodes, seen = resolve(ctx, target)
        with self._lock:
            for node in nodes:
                if node not in self.affected:
                    self.affected.append(node)
        out = self.hit(ctx, nodes, value)
        return {**value, "nodes": names(nodes), **seen, **out}

    def hit(self, ctx: Context, nodes: list[Node], value: dict) -> dict:
        raise NotImplementedError

    def heal(self, ctx: Context) -> Any:
        with self._lock:
            nodes, self.affected = self.affected, []
        errors: list[str] = []
        restarted: list[str] = []

        def one(node: Node) -> None:
            try:
                self.ctl(ctx, node, {"cmd": "clear"})
                if not node.is_running("broker"):
                    ctx.cluster.start_broker(node)
                    restarted.append(node.name)
            except Exception as e:  # noqa: BLE001 -- heal the others, report this one
                errors.append(f"{node.name}: {e}")
        parallel(one, nodes)
        if errors:
            raise RuntimeError(f"could not {self.stop_f}: " + "; ".join(errors))
        return {"nodes": names(nodes), "restarted": sorted(restarted)}

    def teardown(self, ctx: Context) -> None:
        if self.affected:
            self.heal(ctx)


class DiskStallNemesis(_FaultFsNemesis):
    start_f, stop_f = "stall-disk", "release-disk"

    def hit(self, ctx: Context, nodes: list[Node], value: dict) -> dict:
        ops = value.get("ops", "all")
        parallel(lambda n: self.ctl(ctx, n, {"cmd": "stall", "ops": ops}), nodes)
        return {}


class DiskErrorsNemesis(_FaultFsNemesis):
    start_f, stop_f = "start-disk-errors", "stop-disk-errors"

    def hit(self, ctx: Context, nodes: list[Node], value: dict) -> dict:
        request = {"cmd": "errors", "ops": value.get("ops", "write"), "p": float(value.get("p", 1.0)),
                   "seed": ctx.rng.randrange(2**31)}
        parallel(lambda n: self.ctl(ctx, n, request), nodes)
        return {}

    def heal(self, ctx: Context) -> Any:
        # which brokers the errors made halt, before heal restarts them
        halted = sorted(n.name for n in self.affected if not n.is_running("broker"))
        return {**super().heal(ctx), "halted": halted}


class LoseUnfsyncedNemesis(_FaultFsNemesis):
    start_f, stop_f = "lose-unfsynced", "restart-after-power-loss"

    def hit(self, ctx: Context, nodes: list[Node], value: dict) -> dict:
        # the same instant on every target: freeze all first, so nothing lands anywhere after the cut
        parallel(lambda n: self.ctl(ctx, n, {"cmd": "freeze"}), nodes)
        lost: dict[str, dict] = {}

        def crash(node: Node) -> None:
            try:
                ctx.cluster.stop_broker(node, "KILL")
                reply = self.ctl(ctx, node, {"cmd": "lose-unfsynced"})
                lost[node.name] = {k: reply[k] for k in ("files", "bytes") if k in reply}
            finally:
                self.ctl(ctx, node, {"cmd": "thaw"})
        parallel(crash, nodes)
        return {"lost": dict(sorted(lost.items()))}
