"""Disk faults under the broker's log.dirs, through our FUSE filesystem (nemesis/faultfs.py): Kibosh and LazyFS.

The docker and ssh backends mount faultfs over log.dirs before the broker first starts when a run needs the
"disk" capability (clusters/remote.py); these nemeses only talk to its control socket on the node.

- `DiskStallNemesis` (`stall-disk` / `release-disk`): every operation of the chosen class (all, write, fsync)
  blocks in the filesystem until release. The broker keeps its ZooKeeper session (its ZooKeeper client is
  another thread on another disk), so it stays leader and its partitions stall, as Kafka's do on a hung disk.
- `DiskErrorsNemesis` (`start-disk-errors` / `stop-disk-errors`): a fraction of reads, writes or fsyncs fail
  with EIO. The broker reports the failed log dir and halts (broker/log.py, Kafka's LogDirFailureChannel);
  heal clears the errors and starts the brokers that halted (the completion's `restarted`).
- `LoseUnfsyncedNemesis` (`lose-unfsynced` / `restart-after-power-loss`): power loss. On every target node at
  the same instant the filesystem is frozen; then the brokers are SIGKILLed and every file goes back to what
  its last fsync made durable (writes since vanish, a file never fsynced comes back empty); then it thaws.
  Heal starts the brokers, which recover their logs from what survived. Aimed with `replicas` (every
  replica of a hot key) it shows that Kafka's durability rests on replication, not on fsync.
"""
from __future__ import annotations

from clusters.base import Node
from clusters.remote import FAULTFS, FAULTFS_CONTROL
from nemesis.core import Context
from nemesis.helpers import HelperNemesis, parallel


class _FaultFsNemesis(HelperNemesis):
    program, daemon, socket = "faultfs.py", FAULTFS, FAULTFS_CONTROL
    capability, needs = "disk", "log.dirs on faultfs: docker or ssh backend, /dev/fuse in the nodes"

    def heal_node(self, ctx: Context, node: Node) -> dict:
        self.ctl(ctx, node, {"cmd": "clear"})
        if node.is_running("broker"):
            return {"restarted": False}
        ctx.cluster.start_broker(node)
        return {"restarted": True}

    def summarize(self, healed: dict[str, dict]) -> dict:
        return {"restarted": [n for n, r in healed.items() if r["restarted"]]}


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
