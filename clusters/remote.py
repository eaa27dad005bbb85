"""The node layout shared by the docker and ssh backends: fixed ports, fixed paths, daemons via the Node transport.

The broker is what the cluster's `broker` (services.BrokerDescription) says: its start command, data
directory and port; our acked-broker by default (always on docker), another Kafka-compatible broker
when an ssh cluster file describes one. ZooKeeper, configs and logs keep the fixed paths below.

Every node has a host address (`ip`), a ZooKeeper member when it is one of
`zk_nodes`, and a broker when it is one of `nodes`. ZooKeeper and brokers
use hostnames (n1, n2, ...) among themselves and advertise the node's address,
so the harness on the host reaches every broker directly.
"""
from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

from clusters import services
from clusters.base import Cluster, ClusterError, Node
from clusters.node import ShellNode

DATA = "/var/lib/acked"           # ZooKeeper data, broker log.dirs
LOGS = "/var/log/acked"
#: the packages the nodes run (the broker, the node-side fault helpers): what docker mounts and ssh installs
NODE_PACKAGES = ("broker", "clusters", "nemesis")
ETC = "/etc/acked"
#: the broker's clock offset under libfaketime (nemesis/faults.py ClockNemesis writes it; '+0' when unskewed)
FAKETIME_FILE = f"{DATA}/faketime"
#: the default broker's log.dirs; with the "disk" capability a faultfs mount (nemesis/faultfs.py) over
#: BROKER_BACKING (BrokerDescription.data_dir and backing_dir)
BROKER_DIR = services.BROKER_DATA_DIR
BROKER_BACKING = services.BrokerDescription().backing_dir
FAULTFS = "acked-faultfs"
FAULTFS_CONTROL = "/run/acked-faultfs.sock"
#: seconds after which faultfs makes a file's unsynced writes durable, as the page cache's writeback does (Linux:
#: vm.dirty_expire_centisecs, 30 s). Shorter than Linux's so that a power loss in a 60 s run takes the last
#: seconds of each log, not the whole run: offsets then move past the lost ones and the loss shows as lost-write
FAULTFS_WRITEBACK_S = 5.0
#: with the "acks" capability the clients' connections to BROKER_PORT are redirected (iptables nat, our own
#: chain) to nemesis/ackproxy.py on ACKPROXY_PORT, which forwards them to the broker and can lose its responses
ACKPROXY = "acked-ackproxy"
ACKPROXY_PORT = 9192
ACKPROXY_CONTROL = "/run/acked-ackproxy.sock"
ACKPROXY_CHAIN = "ACKED-ACKS"
#: the handle of the root qdisc the packet nemesis installs (nemesis/packet.py); a reset removes only a root qdisc
#: with this handle, and only iptables chains named ACKED-*
TC_HANDLE = "acd"
#: how long a node-side helper may take to print its ready line
READY_TIMEOUT = 15.0


class RemoteCluster(Cluster):
    nodes: list  # brokers
    zk_nodes: list
    #: interpreter and import path of the broker on a node
    python: str = "python3"
    #: seconds per phase of the last start
    timings: dict
    pythonpath: str = "/src"
    #: the broker on every node: its command, data directory and port (the ssh cluster file's [broker])
    broker: services.BrokerDescription = services.BrokerDescription()

    @property
    def all_nodes(self) -> list:
        return [*self.nodes, *(n for n in self.zk_nodes if n not in self.nodes)]

    def node(self, name: str):
        return next(n for n in self.all_nodes if n.name == name)

    @property
    def zookeeper_members(self) -> list[services.ZooKeeperMember]:
        return [services.ZooKeeperMember(i, n.name) for i, n in enumerate(self.zk_nodes, 1)]

    @property
    def zookeeper_connect(self) -> str:
        """As the brokers on the nodes use it (hostnames)."""
        return services.connect_string(self.zookeeper_members)

    @property
    def zookeeper_connect_from_host(self) -> str:
        return ",".join(f"{n.ip}:{services.ZK_CLIENT_PORT}" for n in self.zk_nodes)

    def bootstrap_servers(self) -> str:
        return ",".join(f"{n.ip}:{self.broker.port}" for n in self.nodes)

    def _parallel(self, fn, items) -> list:
        items = list(items)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
            return list(pool.map(fn, items))

    def _prepare_node(self, node) -> None:
        """Backend hook run on every node before ZooKeeper starts."""

    def _phase(self, name: str, started: float) -> float:
        """Record how long a start phase took (bench/cluster_up.py prints them)."""
        now = time.monotonic()
        self.timings[name] = round(now - started, 2)
        return now

    def _start_daemons(self, timeout: float, zookeeper: bool = True) -> None:
        t = time.monotonic()
        self._parallel(self._prepare_node, self.all_nodes)
        t = self._phase("prepare", t)
        if zookeeper:
            self._parallel(self._start_zookeeper, self.zk_nodes)
            t = self._phase("zookeeper-started", t)
        if self.spec.brokers:
            # Brokers start at once and connect when the quorum forms (they wait up to 30 s for it):
            # their interpreter start overlaps ZooKeeper's JVM start and election.
            self._parallel(self.start_broker, self.nodes)
            t = self._phase("brokers-started", t)
        members = [(n.ip, services.ZK_CLIENT_PORT) for n in self.zk_nodes]
        services.wait_for_zookeeper(members, timeout,
                                    alive=lambda: all(n.is_running("zookeeper") for n in self.zk_nodes))
        t = self._phase("zookeeper-quorum", t)
        if self.spec.brokers:
            services.wait_for_brokers(self.zookeeper_connect_from_host, [n.broker_id for n in self.nodes], timeout,
                                      alive=lambda: all(n.is_running("broker") for n in self.nodes))
            self._phase("brokers-registered", t)

    def _start_zookeeper(self, node) -> None:
        member = next(m for m in self.zookeeper_members if m.host == node.name)
        node.run(["mkdir", "-p", f"{DATA}/zookeeper", f"{ETC}/zookeeper", LOGS], check=True)
        put_files(node, {
            f"{DATA}/zookeeper/myid": f"{member.myid}\n",
            f"{ETC}/zookeeper/zoo.cfg": services.zoo_cfg(member, self.zookeeper_members, f"{DATA}/zookeeper"),
            f"{ETC}/zookeeper/log4j.properties": services.LOG4J_PROPERTIES,
        })
        node.start_daemon("zookeeper", services.zookeeper_command(f"{ETC}/zookeeper"), f"{LOGS}/zookeeper.log")

    def start_broker(self, node: Node) -> None:
        broker, config = self.broker, f"{ETC}/server.properties"
        props = services.server_properties(node.broker_id, "0.0.0.0", broker.port, node.ip,
                                           broker.data_dir, self.zookeeper_connect, self.spec.broker_config)
        node.run(["mkdir", "-p", broker.data_dir, LOGS, ETC], check=True)
        put_files(node, {config: props})
        if "disk" in self.spec.capabilities:
            self._ensure_faultfs(node)
        if "acks" in self.spec.capabilities:
            self._ensure_ackproxy(node)
        env = {"PYTHONPATH": self.pythonpath, "PYTHONUNBUFFERED": "1"}
        if "clock" in self.spec.capabilities:
            env.update(self._faketime_env(node))
        command = broker.argv(python=self.python, config=config, data_dir=broker.data_dir, port=broker.port,
                              broker_id=node.broker_id, host=node.ip)
        node.start_daemon("broker", command, f"{LOGS}/broker.log", env=env)

    # ---- node-side fault helpers, started with the broker and kept across its restarts

    def node_program(self, name: str) -> str:
        """Where a node-side program of nemesis/ is on the nodes (the first entry of the import path: /src in
        docker, the installed bundle's src/ over SSH)."""
        return f"{self.pythonpath.split(':')[0]}/nemesis/{name}"

    def _start_helper(self, node: Node, name: str, cmd: list[str], ready: str) -> None:
        node.start_daemon_ready(name, cmd, f"{LOGS}/{name}.log", ready, READY_TIMEOUT,
                                env={"PYTHONPATH": self.pythonpath, "PYTHONUNBUFFERED": "1"})

    def _ensure_faultfs(self, node: Node) -> None:
        """log.dirs through our FUSE filesystem, mounted before the broker first starts; a broker restart
        (after a kill or a power loss) finds it mounted. A mount whose daemon died is unmounted first."""
        if node.is_running(FAULTFS):
            return
        data, backing = self.broker.data_dir, self.broker.backing_dir
        node.run(f"fusermount3 -u -z {data} 2>/dev/null; mkdir -p {data} {backing}", check=True)
        self._start_helper(node, FAULTFS, [self.python, self.node_program("faultfs.py"), "mount",
                                           backing, data, "--control", FAULTFS_CONTROL,
                                           "--writeback", str(FAULTFS_WRITEBACK_S)], "mounted")

    def _ensure_ackproxy(self, node: Node) -> None:
        """The clients' connections to the broker through nemesis/ackproxy.py: an iptables nat chain redirects
        what arrives on the broker's port from any address but the nodes' to ACKPROXY_PORT. Set up before the clients
        connect (connections made before the rule stay direct)."""
        if not node.is_running(ACKPROXY):
            self._start_helper(node, ACKPROXY, [self.python, self.node_program("ackproxy.py"), "serve",
                                                "--listen", f"0.0.0.0:{ACKPROXY_PORT}",
                                                "--upstream", f"127.0.0.1:{self.broker.port}",
                                                "--control", ACKPROXY_CONTROL], "listening")
        chain, port = ACKPROXY_CHAIN, self.broker.port
        rules = [f"iptables -t nat -N {chain} 2>/dev/null; iptables -t nat -F {chain}",
                 *(f"iptables -t nat -A {chain} -s {n.ip} -j RETURN" for n in self.all_nodes),
                 f"iptables -t nat -A {chain} -s 127.0.0.0/8 -j RETURN",
                 f"iptables -t nat -A {chain} -p tcp -j REDIRECT --to-ports {ACKPROXY_PORT}",
                 f"iptables -t nat -C PREROUTING -p tcp --dport {port} -j {chain} 2>/dev/null || "
                 f"iptables -t nat -A PREROUTING -p tcp --dport {port} -j {chain}"]
        node.run(" && ".join(f"{{ {r}; }}" for r in rules), check=True, timeout=20)

    def _faketime_env(self, node: Node) -> dict[str, str]:
        """The broker's clocks follow FAKETIME_FILE (the clock nemesis): libfaketime (its thread-safe build:
        the broker has threads) re-reads the offset once a second and applies it to the wall clock and the
        monotonic clock alike. Faking the wall clock alone (DONT_FAKE_MONOTONIC=1) is broken in bookworm's
        libfaketime 0.9.10 for Python 3.11: time.sleep fails with EINVAL (wolfcw/libfaketime#426) and timed
        waits on the monotonic clock go wrong (measured: topic creation 0.2 s -> 2.4 s on 3 nodes, run
        throughput down 10x); with both clocks faked both are as fast as without libfaketime. File times stay
        real (NO_FAKE_STAT)."""
        lib = node.output("ls /usr/lib/*/faketime/libfaketimeMT.so.1").stdout.strip().splitlines()
        if not lib:
            raise ClusterError(f"{node.name}: libfaketime is not installed; rebuild the node image "
                               "(acked image build --force)")
        node.run(f"test -e {FAKETIME_FILE} || echo +0 > {FAKETIME_FILE}", check=True)
        return {"LD_PRELOAD": lib[0], "FAKETIME_TIMESTAMP_FILE": FAKETIME_FILE, "FAKETIME_CACHE_DURATION": "1",
                "NO_FAKE_STAT": "1"}

    def start_zookeeper(self, node: Node) -> None:
        """(Re)start the ZooKeeper member on one node, without waiting for it."""
        self._start_zookeeper(node)

    def stop_zookeeper(self, node: Node, sig: str = "TERM") -> None:
        node.stop_daemon("zookeeper", sig, timeout=30.0 if sig.upper().endswith("TERM") else 5.0)

    def stop_broker(self, node: Node, sig: str = "TERM") -> None:
        node.stop_daemon("broker", sig, timeout=30.0 if sig.upper().endswith("TERM") else 5.0)

    def stop_daemons(self) -> None:
        self._parallel(self.stop_node_daemons, self.all_nodes)

    def stop_node_daemons(self, node: Node) -> None:
        """KILL the broker, ZooKeeper and the ack proxy on one node; unmount faultfs."""
        node.stop_daemon("broker", "KILL")
        node.stop_daemon("zookeeper", "KILL")
        node.stop_daemon(ACKPROXY, "KILL")
        if node.is_running(FAULTFS):
            node.stop_daemon(FAULTFS, "TERM", timeout=10)   # it unmounts on TERM
            node.run(f"fusermount3 -u -z {self.broker.data_dir} 2>/dev/null; true")

    def reset(self) -> None:
        """Stop the brokers, wipe all data, start again; the hosts stay.

        ZooKeeper keeps running when every member is healthy after the faults are undone: its
        data is wiped through the client (every znode but /zookeeper, including the killed
        brokers' ephemeral registrations), which saves a JVM start and an election. Otherwise
        the ensemble is killed, its data directories wiped, and it starts afresh.
        """
        self.timings = {}
        t = time.monotonic()
        data, backing = self.broker.data_dir, self.broker.backing_dir

        def wipe(node: ShellNode) -> None:
            # one round trip: KILL the brokers' process groups (continue them first: a stopped
            # process would hold its ports), wait until they are gone, wipe their data; faults may
            # have left iptables rules and qdiscs behind and a paused ZooKeeper: undo them
            pid = f"$(cat {node.pidfile('broker')} 2>/dev/null)"
            script = (
                f"p={pid}; if [ -n \"$p\" ]; then kill -s CONT -- -$p; kill -s KILL -- -$p; fi 2>/dev/null; "
                "for i in $(seq 200); do [ -n \"$p\" ] && [ -e /proc/$p ] && "
                "! grep -qs '^State:.*Z' /proc/$p/status || break; sleep 0.05; done; "
                f"zk=$(cat {node.pidfile('zookeeper')} 2>/dev/null); [ -n \"$zk\" ] && kill -s CONT -- -$zk 2>/dev/null; "
                f"q=$(cat {node.pidfile('acked-nfq')} 2>/dev/null); [ -n \"$q\" ] && kill -s KILL -- -$q 2>/dev/null; "
                # the fault helpers go with the data: a fresh start mounts and redirects again
                f"for f in {node.pidfile(FAULTFS)} {node.pidfile(ACKPROXY)}; do h=$(cat $f 2>/dev/null); "
                "[ -n \"$h\" ] && kill -s KILL -- -$h 2>/dev/null; done; "
                f"fusermount3 -u -z {data} 2>/dev/null; "
                f"rm -rf {data} {backing} {FAKETIME_FILE}; "
                # our chains and our qdisc only: over SSH these are someone's real hosts with their own firewall
                "for c in $(iptables -S 2>/dev/null | sed -n 's/^-N \\(ACKED-[^ ]*\\)$/\\1/p'); do iptables -F $c; done; "
                # the next run collects only its own log lines (daemons append: truncation is safe)
                f"for f in {LOGS}/*; do [ -f \"$f\" ] && : > \"$f\"; done; "
                f"iptables -t nat -F {ACKPROXY_CHAIN} 2>/dev/null; "
                "for d in $(ls /sys/class/net); do tc qdisc show dev $d 2>/dev/null | "
                f"grep -q '^qdisc [^ ]* {TC_HANDLE}: root' && tc qdisc del dev $d root; done; true")
            node.run(script, timeout=20)
        self._parallel(wipe, self.all_nodes)
        t = self._phase("brokers-stopped", t)
        if self._wipe_zookeeper_in_place():
            self._phase("zookeeper-wiped", t)
            self._start_daemons(60.0, zookeeper=False)
            return
        def kill_zookeeper(node: ShellNode) -> None:
            node.stop_daemon("zookeeper", "KILL")
            node.run(["rm", "-rf", f"{DATA}/zookeeper"])
        self._parallel(kill_zookeeper, self.zk_nodes)
        self._start_daemons(60.0)

    def _wipe_zookeeper_in_place(self) -> bool:
        """Delete every znode but /zookeeper if the ensemble is up with a quorum; False if it is not."""
        from kazoo.client import KazooClient
        members = [(n.ip, services.ZK_CLIENT_PORT) for n in self.zk_nodes]
        try:
            if not all(n.is_running("zookeeper") for n in self.zk_nodes):
                return False
            services.wait_for_zookeeper(members, 3.0)
        except ClusterError:
            return False
        zk = KazooClient(hosts=self.zookeeper_connect_from_host, timeout=5.0)
        try:
            zk.start(timeout=5.0)
            for child in zk.get_children("/"):
                if child != "zookeeper":
                    zk.delete(f"/{child}", recursive=True)
            return zk.get_children("/") == ["zookeeper"]
        except Exception:  # any ZooKeeper trouble: fall back to a fresh ensemble
            return False
        finally:
            zk.stop()
            zk.close()

    def log_dump_command(self, node: Node, topics: list[str]) -> list[str]:
        """broker/dump_log.py from the nodes' copy of our package, on the broker's data directory (through
        faultfs when it is mounted: what the broker itself reads)."""
        return ["env", f"PYTHONPATH={self.pythonpath}", self.python, "-m", "broker.dump_log",
                self.broker.data_dir, *topics]

    def collect_logs(self, dest: Path) -> None:
        def one(node) -> None:
            try:
                node.get_tree(LOGS, Path(dest) / node.name)
                node.get(f"{ETC}/server.properties", Path(dest) / node.name / "server.properties")
            except ClusterError:
                pass  # a node without a broker has no server.properties
        self._parallel(one, self.all_nodes)


def put_files(node, files: dict[str, str]) -> None:
    """Write several text files; in one round trip when the transport can."""
    if hasattr(node, "put_many"):
        node.put_many({path: text.encode() for path, text in files.items()})
    else:
        for path, text in files.items():
            node.put_bytes(text.encode(), path)
