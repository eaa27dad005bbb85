"""The contract every cluster backend implements: Node transport and Cluster.

Faults (nemesis/) and workloads (workloads/) reach nodes only through `Node`;
the harness runner drives a cluster only through `Cluster`. Backends: docker
(containers on a private bridge network), ssh (real hosts), local (processes
on 127.0.0.1, for the development loop; network faults are not available).
"""
from __future__ import annotations

import abc
import dataclasses
import time
from pathlib import Path


class ClusterError(RuntimeError):
    """A cluster operation failed; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class CommandResult:
    status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0


class Node(abc.ABC):
    """One host of a cluster, reached through a transport (docker exec, SSH, local)."""

    #: short name, also the hostname inside the cluster network: n1, n2, ...
    name: str
    #: broker.id of the broker on this node (1-based, as the name)
    broker_id: int

    @abc.abstractmethod
    def run(self, cmd: str | list[str], timeout: float = 30.0, check: bool = False,
            input: str | None = None) -> CommandResult:
        """Run a command on the node (a list is run directly, a string through sh -c)."""

    def output(self, cmd: str | list[str], timeout: float = 10.0) -> CommandResult:
        """Run a read-only command that prints something when it succeeds; asked again (3 tries in all)
        when it succeeds with no output at all: docker exec can lose a short command's output under load
        (moby/moby#27289, docker/docker-py#2042), which once failed a cluster start in our suite."""
        for _ in range(3):
            result = self.run(cmd, timeout=timeout)
            if not result.ok or result.stdout.strip():
                return result
            time.sleep(0.05)
        return result

    @abc.abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Copy a local file onto the node."""

    @abc.abstractmethod
    def get(self, remote: str, local: Path) -> None:
        """Copy a file from the node."""

    @abc.abstractmethod
    def start_daemon(self, name: str, cmd: list[str], logfile: str, env: dict[str, str] | None = None) -> int:
        """Start a long-running process in the background; returns its pid (also kept in a pidfile named after `name`)."""

    @abc.abstractmethod
    def signal(self, name: str, sig: str) -> bool:
        """Send a signal (e.g. "KILL", "STOP", "CONT", "TERM") to the daemon started as `name`; False if it is not running."""

    @abc.abstractmethod
    def is_running(self, name: str) -> bool:
        """Whether the daemon started as `name` is alive."""


class Cluster(abc.ABC):
    """A ZooKeeper ensemble and a broker per node, with start/stop/reset/collect/teardown (as ducktape services)."""

    nodes: list[Node]

    @abc.abstractmethod
    def bootstrap_servers(self) -> str:
        """host:port,... reachable from the harness (the host)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start ZooKeeper and the brokers; return once every broker is registered and a controller is elected."""

    @abc.abstractmethod
    def start_broker(self, node: Node) -> None:
        """(Re)start the broker on one node, without waiting for it."""

    @abc.abstractmethod
    def stop_broker(self, node: Node, sig: str = "TERM") -> None:
        """Stop the broker on one node with a signal (TERM: controlled shutdown, KILL: crash)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Between tests: stop everything, wipe data, start again, without recreating hosts."""

    #: capabilities the hosts were made with (container privileges, devices); a reused cluster serves runs that
    #: need a subset of them. Backends set it when they create their hosts.
    host_capabilities: frozenset = frozenset({"net", "disk", "clock", "acks"})
    #: reset (or just started) and not used since: reuse() with the same settings skips its reset
    clean: bool = False

    def reuse(self, spec: "ClusterSpec") -> None:
        """Make this started cluster serve a run that asked for `spec` (pytest's shared `acked_cluster`): the same
        backend and shape, capabilities the hosts have; the run's broker settings and node-side fault helpers
        take effect through reset(), which also wipes every topic, group, fault and log line of the last run."""
        mine = self.spec
        for field in ("backend", "nodes", "zookeeper"):
            if getattr(spec, field) != getattr(mine, field):
                raise ClusterError(f"this shared cluster has {field}={getattr(mine, field)!r} but the run asks for "
                                   f"{getattr(spec, field)!r}; give the run its own cluster (no cluster=)")
        missing = set(spec.capabilities) - set(self.host_capabilities)
        if missing:
            raise ClusterError(f"this shared cluster's hosts were made without {', '.join(sorted(missing))}; "
                               "create it with those capabilities or give the run its own cluster")
        same = spec.broker_config == mine.broker_config and frozenset(spec.capabilities) == mine.capabilities
        self.spec = dataclasses.replace(mine, broker_config=dict(spec.broker_config),
                                        capabilities=frozenset(spec.capabilities))
        if not (same and self.clean):
            self.reset()
        self.clean = False

    @abc.abstractmethod
    def collect_logs(self, dest: Path) -> None:
        """Copy every node's logs into dest/<node>/."""

    def log_dump_command(self, node: Node, topics: list[str]) -> list[str]:
        """The command that prints, on `node`, its broker's replicas of `topics` batch by batch
        (`python -m broker.dump_log LOG_DIR TOPIC...`). Backends that know where the broker's log.dirs and
        our package are override it."""
        raise ClusterError(f"the {type(self).__name__} backend cannot read its brokers' logs")

    def collect_replicas(self, topics: list[str]) -> dict:
        """Every broker's replicas of `topics`, summarized batch by batch from its segment files: the
        replicas.json structure (docs/history-format.md). A node that cannot be read is an entry of its
        `errors`, not an exception."""
        from clusters.replicas import collect
        return collect(self, topics)

    @abc.abstractmethod
    def teardown(self) -> None:
        """Remove everything this cluster created. Idempotent; safe after a failure."""

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()


@dataclasses.dataclass
class ClusterSpec:
    """What the harness asks a backend for. `clusters.create_cluster(spec)` returns a Cluster."""

    backend: str = "docker"              # docker | ssh | local
    nodes: int = 3
    #: broker settings, Kafka's names verbatim, written into every node's server.properties
    broker_config: dict[str, str] = dataclasses.field(default_factory=dict)
    #: where this cluster keeps node data (local backend) and where logs are collected
    work_dir: Path = Path("results/.clusters")
    #: value of the `acked.run` label on everything created (the `acked.cluster` label names the cluster)
    run_id: str = "manual"
    #: "every-node" (one ZooKeeper member on every node, as Jepsen) or "dedicated" (one extra ZooKeeper node)
    zookeeper: str = "every-node"
    #: capabilities the enabled faults need: "net" (NET_ADMIN: iptables, tc), "disk" (/dev/fuse, SYS_ADMIN: log.dirs
    #: through nemesis/faultfs.py), "clock" (libfaketime), "acks" (clients through nemesis/ackproxy.py)
    capabilities: frozenset[str] = frozenset({"net"})
    #: ssh backend only: the TOML cluster file naming the hosts
    cluster_file: Path | None = None
    #: start brokers (False: ZooKeeper only)
    brokers: bool = True
