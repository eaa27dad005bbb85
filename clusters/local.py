"""Local-process backend: ZooKeeper and brokers as processes on 127.0.0.1.

For the development loop and the integration tests. Every node is a directory
(config, data, logs, pidfiles) under the cluster's directory; network faults
are not available. Each cluster directory holds owner.json naming the process
that owns it: the reaper (run by every start and by `acked cluster down`)
kills the processes of clusters whose owner is gone, so a killed run leaves
nothing behind for long. Daemons carry ACKED_CLUSTER=<name> in their
environment; the reaper checks it before it kills a pid from a pidfile.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal as _signal
import subprocess
import sys
from pathlib import Path

from clusters import services
from clusters.base import Cluster, ClusterError, ClusterSpec, CommandResult, Node
from clusters.node import ShellNode, raise_for

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
DEFAULT_ROOT = Path("results/.clusters")


class LocalNode(ShellNode):
    """A node that is a directory on this host; commands run here."""

    ip = HOST

    def __init__(self, name: str, broker_id: int, root: Path, cluster_name: str):
        self.name = name
        self.broker_id = broker_id
        self.root = root.resolve()
        self.run_dir = str(self.root / "run")
        self.daemon_env = {"ACKED_CLUSTER": cluster_name}

    def __repr__(self) -> str:
        return f"LocalNode({self.name}, {self.root})"

    def run(self, cmd, timeout: float = 30.0, check: bool = False, input: str | None = None) -> CommandResult:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            p = subprocess.run(cmd, shell=isinstance(cmd, str), cwd=self.root, input=input,
                               capture_output=True, text=True, timeout=timeout)
            result = CommandResult(p.returncode, p.stdout, p.stderr)
        except subprocess.TimeoutExpired as e:
            result = CommandResult(124, _text(e.stdout), _text(e.stderr) + f"\ntimed out after {timeout}s")
        if check and not result.ok:
            raise_for(self.name, cmd, result)
        return result

    def put(self, local: Path, remote: str) -> None:
        target = self.root / remote  # a relative path is inside the node's directory
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)

    def get(self, remote: str, local: Path) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / remote, local)


def _text(b) -> str:
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b


# ------------------------------------------------------------------ owners and the reaper

def process_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def write_owner(cluster_dir: Path, manual: bool = False) -> None:
    cluster_dir.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    (cluster_dir / "owner.json").write_text(json.dumps(
        {"pid": pid, "start_time": process_start_time(pid), "manual": manual}))


def owner_alive(cluster_dir: Path) -> bool:
    try:
        owner = json.loads((cluster_dir / "owner.json").read_text())
    except (OSError, ValueError):
        return False
    if owner.get("manual"):
        return True  # kept until `acked cluster down`
    started = owner.get("start_time")
    return started is not None and process_start_time(owner["pid"]) == started


def kill_marked_processes(cluster_dir: Path) -> int:
    """SIGKILL every daemon recorded in a pidfile under cluster_dir that still carries this cluster's marker."""
    marker = f"ACKED_CLUSTER={cluster_dir.name}".encode()
    killed = 0
    for pidfile in cluster_dir.glob("*/run/*.pid"):
        try:
            pid = int(pidfile.read_text().strip())
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if marker in environ:
            try:
                os.killpg(pid, _signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def reap(root: Path = DEFAULT_ROOT, include_manual: bool = False) -> list[str]:
    """Kill and remove local clusters under root whose owner process is gone (and manual ones if asked)."""
    reaped = []
    if not root.is_dir():
        return reaped
    for cluster_dir in sorted(p for p in root.iterdir() if (p / "owner.json").exists()):
        manual = _is_manual(cluster_dir)
        if owner_alive(cluster_dir) and not (include_manual and manual):
            continue
        kill_marked_processes(cluster_dir)
        shutil.rmtree(cluster_dir, ignore_errors=True)
        reaped.append(cluster_dir.name)
    return reaped


def _is_manual(cluster_dir: Path) -> bool:
    try:
        return bool(json.loads((cluster_dir / "owner.json").read_text()).get("manual"))
    except (OSError, ValueError):
        return False


def new_name(prefix: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in prefix)[:40] or "acked"
    return f"{safe}-{secrets.token_hex(3)}"


# ------------------------------------------------------------------ ZooKeeper

class LocalZooKeeper:
    """A ZooKeeper ensemble (1 or 3 members, any number works) of local processes on free ports.

    Standalone (for tests that need only ZooKeeper) it owns base_dir and one
    node directory per member; inside a LocalCluster it runs member i on node i.
    """

    def __init__(self, base_dir: Path, members: int = 1, nodes: list[LocalNode] | None = None,
                 manual: bool = False):
        if members < 1:
            raise ClusterError("a ZooKeeper ensemble needs at least one member")
        self.base_dir = Path(base_dir).resolve()
        self._owns_dir = nodes is None
        self._manual = manual
        if nodes is None:
            nodes = [LocalNode(f"zk{i}", i, self.base_dir / f"zk{i}", self.base_dir.name)
                     for i in range(1, members + 1)]
        self.nodes = nodes[:members]
        self.members = [services.ZooKeeperMember(i, HOST, services.free_port(), services.free_port(),
                                                 services.free_port())
                        for i in range(1, members + 1)]

    @property
    def connect_string(self) -> str:
        return services.connect_string(self.members)

    def _dirs(self, node: LocalNode) -> tuple[Path, Path]:
        return node.root / "zookeeper", node.root / "zookeeper" / "data"

    def start(self, timeout: float = 30.0) -> None:
        if self._owns_dir:
            reap(self.base_dir.parent)
            write_owner(self.base_dir, manual=self._manual)
        try:
            for member, node in zip(self.members, self.nodes):
                conf_dir, data_dir = self._dirs(node)
                data_dir.mkdir(parents=True, exist_ok=True)
                (data_dir / "myid").write_text(f"{member.myid}\n")
                services.write_text(conf_dir / "zoo.cfg",
                                    services.zoo_cfg(member, self.members, str(data_dir), bind_address=HOST))
                services.write_text(conf_dir / "log4j.properties", services.LOG4J_PROPERTIES)
                node.start_daemon("zookeeper", services.zookeeper_command(str(conf_dir)),
                                  str(node.root / "logs" / "zookeeper.log"))
            services.wait_for_zookeeper([(m.host, m.client_port) for m in self.members], timeout,
                                        alive=lambda: all(n.is_running("zookeeper") for n in self.nodes))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop_daemon("zookeeper", "KILL")
        if self._owns_dir:
            kill_marked_processes(self.base_dir)

    def wipe(self) -> None:
        for node in self.nodes:
            shutil.rmtree(self._dirs(node)[1], ignore_errors=True)

    def teardown(self) -> None:
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.teardown()


# ------------------------------------------------------------------ cluster

class LocalCluster(Cluster):
    """ZooKeeper plus one `acked-broker` process per node, all on 127.0.0.1."""

    def __init__(self, spec: ClusterSpec, name: str | None = None, manual: bool = False):
        if spec.nodes < 1:
            raise ClusterError("--nodes must be at least 1")
        if spec.zookeeper not in ("every-node", "dedicated"):
            raise ClusterError(f"zookeeper layout {spec.zookeeper!r} is unknown; use every-node or dedicated")
        self.spec = spec
        self.name = name or new_name(spec.run_id)
        self.root = Path(spec.work_dir).resolve()
        self.dir = self.root / self.name
        self.manual = manual
        self.nodes: list[LocalNode] = [LocalNode(f"n{i}", i, self.dir / f"n{i}", self.name)
                                       for i in range(1, spec.nodes + 1)]
        if spec.zookeeper == "dedicated":
            zk_nodes = [LocalNode("zk", 0, self.dir / "zk", self.name)]
        else:
            zk_nodes = list(self.nodes)
        self.zookeeper = LocalZooKeeper(self.dir, members=len(zk_nodes), nodes=zk_nodes)
        self.broker_ports = {n.name: services.free_port() for n in self.nodes}
        self._torn_down = False

    # where things are on a node
    def config_path(self, node: Node) -> Path:
        return node.root / "server.properties"

    def data_dir(self, node: Node) -> Path:
        return node.root / "data"

    def log_path(self, node: Node) -> Path:
        return node.root / "logs" / "broker.log"

    @property
    def zookeeper_connect(self) -> str:
        return self.zookeeper.connect_string

    def bootstrap_servers(self) -> str:
        return ",".join(f"{HOST}:{self.broker_ports[n.name]}" for n in self.nodes)

    def node(self, name: str) -> LocalNode:
        return next(n for n in self.nodes if n.name == name)

    def start(self, timeout: float = 60.0) -> None:
        reap(self.root)
        write_owner(self.dir, manual=self.manual)
        (self.dir / "cluster.json").write_text(json.dumps(self.describe()))
        try:
            self.zookeeper.start(timeout=timeout)
            if not self.spec.brokers:
                return
            for node in self.nodes:
                self._write_config(node)
                self.start_broker(node)
            services.wait_for_brokers(self.zookeeper_connect, [n.broker_id for n in self.nodes], timeout,
                                      alive=lambda: all(n.is_running("broker") for n in self.nodes))
        except BaseException:
            self.stop_all()
            raise

    def _write_config(self, node: LocalNode) -> None:
        port = self.broker_ports[node.name]
        self.data_dir(node).mkdir(parents=True, exist_ok=True)
        services.write_text(self.config_path(node), services.server_properties(
            node.broker_id, HOST, port, HOST, str(self.data_dir(node)), self.zookeeper_connect,
            self.spec.broker_config))

    def start_broker(self, node: Node) -> None:
        if not self.config_path(node).exists():
            self._write_config(node)
        env = {"PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
        node.start_daemon("broker", services.broker_command(str(self.config_path(node))),
                          str(self.log_path(node)), env=env)

    def stop_broker(self, node: Node, sig: str = "TERM") -> None:
        node.stop_daemon("broker", sig, timeout=30.0 if sig.upper().endswith("TERM") else 5.0)

    def log_dump_command(self, node: Node, topics: list[str]) -> list[str]:
        return ["env", f"PYTHONPATH={REPO_ROOT}", sys.executable, "-m", "broker.dump_log",
                str(self.data_dir(node)), *topics]

    def stop_all(self) -> None:
        for node in self.nodes:
            node.stop_daemon("broker", "KILL")
        self.zookeeper.stop()
        kill_marked_processes(self.dir)

    def reset(self) -> None:
        self.stop_all()
        for node in self.nodes:
            shutil.rmtree(self.data_dir(node), ignore_errors=True)
        for node in {*self.nodes, *self.zookeeper.nodes}:
            for log in (node.root / "logs").glob("*"):   # the next run collects only its own log lines
                if log.is_file():
                    log.write_bytes(b"")
        self.zookeeper.wipe()
        self.start()

    def collect_logs(self, dest: Path) -> None:
        for node in [*self.nodes, *(n for n in self.zookeeper.nodes if n not in self.nodes)]:
            logs = node.root / "logs"
            if logs.is_dir():
                shutil.copytree(logs, Path(dest) / node.name, dirs_exist_ok=True)
            if (node.root / "server.properties").exists():
                (Path(dest) / node.name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(node.root / "server.properties", Path(dest) / node.name / "server.properties")

    def teardown(self) -> None:
        if self._torn_down:
            return
        try:
            self.stop_all()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self._torn_down = True

    def describe(self) -> dict:
        return {"name": self.name, "backend": "local", "nodes": [n.name for n in self.nodes],
                "bootstrap_servers": self.bootstrap_servers(), "zookeeper_connect": self.zookeeper_connect,
                "dir": str(self.dir)}
