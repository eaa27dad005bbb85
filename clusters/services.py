"""What runs on a node, whatever the backend: ZooKeeper members and brokers.

Their configuration files, the commands that start them, and the readiness
checks the backends wait on (ZooKeeper's `srvr` four-letter word, broker
registration in ZooKeeper). Backends only decide hosts, ports and paths.
"""
from __future__ import annotations

import dataclasses
import posixpath
import re
import shlex
import socket
import string
import sys
import time
from pathlib import Path

from clusters.base import ClusterError

# Debian's zookeeper package: zookeeper.jar names its dependencies in its manifest
# Class-Path; log4j 1.2 and its slf4j binding make it log (to stdout, our logfile).
ZOOKEEPER_CLASSPATH = ":".join([
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/slf4j-log4j12.jar",
    "/usr/share/java/log4j-1.2.jar",
])
ZOOKEEPER_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
# Small heap and a quick-starting JIT: a member needs little, and 2 cores are shared.
ZOOKEEPER_JVM_FLAGS = ["-Xms32m", "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                       "-XX:-UsePerfData", "-Djava.net.preferIPv4Stack=true",
                       # retry election notifications every second at most, not with backoff up to 60 s:
                       # members that start a moment apart find each other at once
                       "-Dzookeeper.fastleader.maxNotificationInterval=1000"]

LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] %m%n
"""

# Fixed ports inside containers and on real hosts; the local backend picks free ones.
ZK_CLIENT_PORT = 2181
ZK_PEER_PORT = 2888
ZK_ELECTION_PORT = 3888
BROKER_PORT = 9092


@dataclasses.dataclass(frozen=True)
class ZooKeeperMember:
    myid: int
    host: str            # address the other members and the clients use
    client_port: int = ZK_CLIENT_PORT
    peer_port: int = ZK_PEER_PORT
    election_port: int = ZK_ELECTION_PORT

    @property
    def client_address(self) -> str:
        return f"{self.host}:{self.client_port}"


def connect_string(members: list[ZooKeeperMember]) -> str:
    return ",".join(m.client_address for m in members)


def zoo_cfg(member: ZooKeeperMember, ensemble: list[ZooKeeperMember], data_dir: str,
            bind_address: str | None = None) -> str:
    """zoo.cfg of one member; a single member runs standalone."""
    lines = [
        # 500 ms ticks: sessions between 1 s and 30 s, fast elections after faults
        "tickTime=500",
        "initLimit=20",
        "syncLimit=5",
        "minSessionTimeout=1000",
        "maxSessionTimeout=30000",
        f"dataDir={data_dir}",
        f"clientPort={member.client_port}",
        "admin.enableServer=false",
        "4lw.commands.whitelist=srvr,ruok,mntr,stat",
        "autopurge.purgeInterval=0",
        "maxClientCnxns=0",
    ]
    if bind_address:
        lines.append(f"clientPortAddress={bind_address}")
    if len(ensemble) > 1:
        # Listen on every interface: a container's own hostname may resolve to another address.
        lines.append("quorumListenOnAllIPs=true")
        for m in ensemble:
            lines.append(f"server.{m.myid}={m.host}:{m.peer_port}:{m.election_port}")
    return "\n".join(lines) + "\n"


def zookeeper_command(conf_dir: str, java: str = "java") -> list[str]:
    return [java, *ZOOKEEPER_JVM_FLAGS, f"-Dlog4j.configuration=file:{conf_dir}/log4j.properties",
            "-cp", ZOOKEEPER_CLASSPATH, ZOOKEEPER_MAIN, f"{conf_dir}/zoo.cfg"]


def server_properties(broker_id: int, host: str, port: int, advertised_host: str, log_dirs: str,
                      zookeeper_connect: str, overrides: dict[str, str]) -> str:
    """server.properties of one broker, Kafka's names verbatim; the spec's settings win."""
    props = {
        "broker.id": str(broker_id),
        "listeners": f"PLAINTEXT://{host}:{port}",
        "advertised.listeners": f"PLAINTEXT://{advertised_host}:{port}",
        "log.dirs": log_dirs,
        "zookeeper.connect": zookeeper_connect,
    }
    props.update({k: str(v) for k, v in overrides.items()})
    return "".join(f"{k}={v}\n" for k, v in props.items())


def broker_command(config_path: str, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "broker.main", config_path]


# ---------------------------------------------------------------- which broker

#: what a broker command's placeholders stand for, filled in per node when its broker starts
BROKER_PLACEHOLDERS = {
    "python": "the hosts' interpreter (the cluster file's python)",
    "config": "the path of the config file written for this broker",
    "data_dir": "the broker's data directory (log.dirs)",
    "port": "the port the broker listens on",
    "broker_id": "the broker's broker.id",
    "host": "the node's address, as the harness reaches it (advertised.listeners)",
}
#: how the config file is written: Kafka's server.properties, with Kafka's names (server_properties)
BROKER_CONFIG_FORMATS = ("server.properties",)
BROKER_DATA_DIR = "/var/lib/acked/broker"
#: a data directory is wiped (rm -rf) by every reset and teardown: never one of these
SYSTEM_DIRS = frozenset({"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root",
                         "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib", "/var/log",
                         "/var/lib/acked", "/var/lib/acked/zookeeper"})


@dataclasses.dataclass(frozen=True)
class BrokerDescription:
    """The broker a cluster on remote nodes runs: the command that starts it, its data directory and the port
    its clients connect to. The default is our acked-broker; the [broker] table of a cluster file describes
    another Kafka-compatible broker installed on the hosts (Apache Kafka in ZooKeeper mode)."""

    command: str = "{python} -m broker.main {config}"
    data_dir: str = BROKER_DATA_DIR
    port: int = BROKER_PORT
    config: str = "server.properties"

    @property
    def backing_dir(self) -> str:
        """Where the files really are when faultfs (the disk capability) is mounted over data_dir."""
        return f"{self.data_dir}.backing"

    def argv(self, **values) -> list[str]:
        """The command for one broker: each word of `command` (split as a shell would) with its placeholders
        filled in; a value with spaces stays one argument."""
        return [word.format(**values) for word in shlex.split(self.command)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def broker_description(table: dict, reserved_ports: dict[int, str]) -> BrokerDescription:
    """A [broker] table of a cluster file, checked; ValueError naming the key and how to fix it.
    `reserved_ports`: ports the nodes already use (port -> what uses it)."""
    fields = {f.name for f in dataclasses.fields(BrokerDescription)}
    if not isinstance(table, dict):
        raise ValueError("[broker] must be a table: a [broker] line followed by command = ..., data_dir = ..., "
                         "port = ...")
    unknown = sorted(set(table) - fields)
    if unknown:
        raise ValueError(f"[broker] has no key {unknown[0]!r}; use {', '.join(sorted(fields))}")
    default = BrokerDescription()
    desc = BrokerDescription(**{**dataclasses.asdict(default), **table})
    _check_command(desc.command)
    _check_data_dir(desc.data_dir)
    if not isinstance(desc.port, int) or isinstance(desc.port, bool) or not 0 < desc.port < 65536:
        raise ValueError(f"[broker] port = {desc.port!r} is not a port; give an integer from 1 to 65535, "
                         f"unquoted, such as port = {BROKER_PORT}")
    if desc.port in reserved_ports:
        raise ValueError(f"[broker] port = {desc.port} is taken by {reserved_ports[desc.port]}; give another port")
    if desc.config not in BROKER_CONFIG_FORMATS:
        raise ValueError(f"[broker] config = {desc.config!r} is not a config format acked writes; use "
                         f"{' or '.join(repr(f) for f in BROKER_CONFIG_FORMATS)} (Kafka's names)")
    return desc


def _check_command(command) -> None:
    if not isinstance(command, str) or not command.strip():
        raise ValueError('[broker] command must be a string, such as command = "{python} -m broker.main {config}"')
    names = ", ".join(f"{{{p}}}" for p in BROKER_PLACEHOLDERS)
    try:
        shlex.split(command)
        used = [name for _, name, _, _ in string.Formatter().parse(command) if name is not None]
    except ValueError as e:
        raise ValueError(f"[broker] command {command!r} cannot be read: {e} (quote words as a shell would; "
                         "write a literal brace as {{ or }})") from None
    for name in used:
        if name not in BROKER_PLACEHOLDERS:
            raise ValueError(f"[broker] command uses the unknown placeholder {{{name}}}; use {names}")
    if "config" not in used:
        raise ValueError("[broker] command never passes {config}: the broker would not read the broker.id, "
                         "listeners, log.dirs and zookeeper.connect acked writes there; add {config}")


def _check_data_dir(data_dir) -> None:
    if not isinstance(data_dir, str) or not re.fullmatch(r"/[A-Za-z0-9._/-]*", data_dir) or \
            posixpath.normpath(data_dir) != data_dir:
        raise ValueError(f"[broker] data_dir = {data_dir!r} must be an absolute path written plainly (letters, "
                         f"digits, . _ - and /; no trailing slash, no ..), such as {BROKER_DATA_DIR!r}")
    if data_dir in SYSTEM_DIRS:
        raise ValueError(f"[broker] data_dir = {data_dir!r} would be wiped (rm -rf) on every reset and teardown; "
                         f"give the broker a directory of its own, such as {BROKER_DATA_DIR!r}")


# ---------------------------------------------------------------- readiness

def four_letter_word(host: str, port: int, word: str = "srvr", timeout: float = 1.0) -> str:
    """ZooKeeper's four-letter-word answer, or "" when the member does not answer."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(word.encode())
            chunks = []
            while True:
                data = s.recv(4096)
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def zookeeper_mode(host: str, port: int) -> str | None:
    """leader, follower or standalone; None while the member is not serving."""
    for line in four_letter_word(host, port).splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None


def wait_for_zookeeper(members: list[tuple[str, int]], timeout: float,
                       alive=lambda: True) -> None:
    """Until every member serves (one leader in an ensemble). `alive()` False fails early."""
    deadline = time.monotonic() + timeout
    modes: dict = {}
    while time.monotonic() < deadline:
        modes = {f"{h}:{p}": zookeeper_mode(h, p) for h, p in members}
        if all(modes.values()) and (len(members) == 1 or list(modes.values()).count("leader") == 1):
            return
        if not alive():
            raise ClusterError(f"ZooKeeper exited during start (modes: {modes}); see its log")
        time.sleep(0.1)
    raise ClusterError(f"ZooKeeper did not form a quorum within {timeout:.0f}s (modes: {modes}); see its log")


def wait_for_brokers(zookeeper_connect: str, broker_ids: list[int], timeout: float,
                     alive=lambda: True) -> dict:
    """Until /brokers/ids/<id> exists for every broker and /controller is held; returns the controller's data."""
    from kazoo.client import KazooClient
    from kazoo.handlers.threading import KazooTimeoutError

    import json

    deadline = time.monotonic() + timeout
    zk = KazooClient(hosts=zookeeper_connect, timeout=5.0, connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 0.5})
    try:
        try:
            zk.start(timeout=max(1.0, deadline - time.monotonic()))
        except KazooTimeoutError:
            raise ClusterError(f"cannot reach ZooKeeper at {zookeeper_connect}") from None
        missing: list[int] = list(broker_ids)
        controller = None
        while time.monotonic() < deadline:
            missing = [i for i in broker_ids if zk.exists(f"/brokers/ids/{i}") is None]
            controller = zk.exists("/controller")
            if not missing and controller is not None:
                data, _ = zk.get("/controller")
                try:
                    return json.loads(data.decode() or "{}")
                except ValueError:
                    return {"raw": data.decode(errors="replace")}
            if not alive():
                raise ClusterError(f"a broker exited during start (not registered: {missing}); see its log")
            time.sleep(0.1)
        what = f"brokers {missing} not registered" if missing else "no controller elected"
        raise ClusterError(f"cluster not ready within {timeout:.0f}s: {what} in ZooKeeper; see the broker logs")
    finally:
        zk.stop()
        zk.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's choice); ports are reserved in a set to avoid handing one out twice."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


_handed_out: set[int] = set()


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def wait_for_port(host: str, port: int, timeout: float, alive=lambda: True) -> None:
    """Until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if not alive():
                raise ClusterError(f"the process meant to listen on {host}:{port} exited; see its log")
            time.sleep(0.05)
    raise ClusterError(f"nothing listens on {host}:{port} after {timeout:.0f}s")
