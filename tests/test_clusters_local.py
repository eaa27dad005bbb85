"""Local-process backend: real ZooKeeper processes, real signals, the reaper after a killed run."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from clusters import create_cluster, services
from clusters.base import ClusterError, ClusterSpec
from clusters.local import LocalCluster, LocalNode, LocalZooKeeper, new_name, reap
from conftest import CLUSTERS_DIR, wait_until


def kazoo(connect: str) -> KazooClient:
    zk = KazooClient(hosts=connect, timeout=5)
    zk.start(timeout=10)
    return zk


def process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z")


def test_zookeeper_fixture_serves_kazoo(zookeeper):
    assert services.zookeeper_mode("127.0.0.1", zookeeper.members[0].client_port) == "standalone"
    zk = kazoo(zookeeper.connect_string)
    try:
        zk.create("/acked-test", b"hello")
        assert zk.get("/acked-test")[0] == b"hello"
    finally:
        zk.stop()


def test_daemon_signals_and_pidfile(tmp_path):
    node = LocalNode("n1", 1, tmp_path / "n1", "sig-test")
    pid = node.start_daemon("sleeper", ["sleep", "60"], str(tmp_path / "n1" / "logs" / "sleeper.log"))
    try:
        assert (tmp_path / "n1" / "run" / "sleeper.pid").read_text().strip() == str(pid)
        assert node.is_running("sleeper") and node.pid("sleeper") == pid
        with pytest.raises(ClusterError, match="already running"):
            node.start_daemon("sleeper", ["sleep", "60"], str(tmp_path / "x.log"))
        assert node.signal("sleeper", "STOP")
        assert wait_until(lambda: process_state(pid) == "T", 5)
        assert node.signal("sleeper", "SIGCONT")
        assert wait_until(lambda: process_state(pid) == "S", 5)
        with pytest.raises(ClusterError, match="unknown signal"):
            node.signal("sleeper", "BOGUS")
        assert node.signal("sleeper", "KILL")
        assert wait_until(lambda: not node.is_running("sleeper"), 5)
        assert not node.signal("sleeper", "KILL")  # nothing left to signal
    finally:
        node.stop_daemon("sleeper", "KILL")


def test_run_put_get(tmp_path):
    node = LocalNode("n1", 1, tmp_path / "n1", "io-test")
    r = node.run("echo out; echo err >&2; exit 3")
    assert (r.status, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert node.run(["cat"], input="piped").stdout == "piped"
    assert node.run("sleep 5", timeout=0.2).status == 124
    with pytest.raises(ClusterError, match="status 3"):
        node.run("exit 3", check=True)
    src = tmp_path / "src.txt"
    src.write_text("payload")
    node.put(src, "files/in.txt")
    node.get("files/in.txt", tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_text() == "payload"


def test_three_member_ensemble_survives_one_member_killed():
    zk = LocalZooKeeper(CLUSTERS_DIR / new_name("zk3"), members=3)
    try:
        zk.start(timeout=60)
        modes = sorted(services.zookeeper_mode(m.host, m.client_port) for m in zk.members)
        assert modes == ["follower", "follower", "leader"]
        leader = next(i for i, m in enumerate(zk.members)
                      if services.zookeeper_mode(m.host, m.client_port) == "leader")
        assert zk.nodes[leader].signal("zookeeper", "KILL")
        survivors = [m for i, m in enumerate(zk.members) if i != leader]
        # the two survivors elect a new leader and keep serving writes
        services.wait_for_zookeeper([(m.host, m.client_port) for m in survivors], timeout=30)
        client = kazoo(services.connect_string(survivors))
        try:
            client.create("/after-leader-loss", b"x")
            assert client.exists("/after-leader-loss")
        finally:
            client.stop()
    finally:
        zk.teardown()
    assert not zk.base_dir.exists()


def test_wait_for_brokers_reads_registration_and_controller(zookeeper):
    with pytest.raises(ClusterError, match=r"brokers \[1, 2\] not registered"):
        services.wait_for_brokers(zookeeper.connect_string, [1, 2], timeout=0.5)
    zk = kazoo(zookeeper.connect_string)
    try:
        for i in (1, 2):
            zk.create(f"/brokers/ids/{i}", json.dumps({"host": "127.0.0.1", "port": 9000 + i}).encode(),
                      ephemeral=True, makepath=True)
        with pytest.raises(ClusterError, match="no controller elected"):
            services.wait_for_brokers(zookeeper.connect_string, [1, 2], timeout=0.5)
        zk.create("/controller", json.dumps({"version": 1, "brokerid": 2}).encode(), ephemeral=True)
        assert services.wait_for_brokers(zookeeper.connect_string, [1, 2], timeout=5)["brokerid"] == 2
    finally:
        zk.stop()


def test_local_cluster_zookeeper_only_start_reset_teardown():
    spec = ClusterSpec(backend="local", nodes=3, work_dir=CLUSTERS_DIR, run_id="pytest", brokers=False)
    cluster = create_cluster(spec)
    assert isinstance(cluster, LocalCluster)
    try:
        cluster.start()
        assert [n.name for n in cluster.nodes] == ["n1", "n2", "n3"]
        assert [n.broker_id for n in cluster.nodes] == [1, 2, 3]
        assert all(n.is_running("zookeeper") for n in cluster.nodes)  # one member per node
        assert len(cluster.bootstrap_servers().split(",")) == 3
        zk = kazoo(cluster.zookeeper_connect)
        try:
            zk.create("/before-reset", b"x")
        finally:
            zk.stop()
        old_pids = [n.pid("zookeeper") for n in cluster.nodes]
        cluster.reset()
        assert [n.pid("zookeeper") for n in cluster.nodes] != old_pids
        zk = kazoo(cluster.zookeeper_connect)
        try:
            assert zk.exists("/before-reset") is None  # data wiped
        finally:
            zk.stop()
        logs = CLUSTERS_DIR / (cluster.name + "-logs")
        cluster.collect_logs(logs)
        try:
            assert "QuorumPeer" in (logs / "n2" / "zookeeper.log").read_text()
        finally:
            import shutil
            shutil.rmtree(logs)
        pids = [n.pid("zookeeper") for n in cluster.nodes]
    finally:
        cluster.teardown()
    assert not cluster.dir.exists()
    assert not any(alive(p) for p in pids)
    cluster.teardown()  # idempotent


def test_reaper_kills_leftovers_of_a_killed_run(tmp_path):
    """A process that started ZooKeeper is SIGKILLed; the next start (the reaper) removes its processes."""
    root = tmp_path / "clusters"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from clusters.local import LocalZooKeeper
        zk = LocalZooKeeper(Path({str(root)!r}) / "victim-1", members=1)
        zk.start(timeout=30)
        print(zk.nodes[0].pid("zookeeper"), flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        zk_pid = int(owner.stdout.readline())
        assert alive(zk_pid)
        assert reap(root) == []  # owner still alive: not touched
        assert alive(zk_pid)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert alive(zk_pid)  # the killed run left ZooKeeper behind
    assert reap(root) == ["victim-1"]
    assert wait_until(lambda: not alive(zk_pid), 5)
    assert not (root / "victim-1").exists()


def test_bad_layout_is_a_clear_error():
    with pytest.raises(ClusterError, match="every-node or dedicated"):
        LocalCluster(ClusterSpec(backend="local", zookeeper="nowhere", work_dir=CLUSTERS_DIR))
    with pytest.raises(ClusterError, match="unknown cluster backend"):
        create_cluster(ClusterSpec(backend="cloud"))


def test_local_cluster_with_brokers_serves_confluent_kafka(local_cluster_factory):
    from confluent_kafka import Consumer, Producer

    cluster = local_cluster_factory(nodes=3, broker_config={"default.replication.factor": "3",
                                                            "num.partitions": "1"})
    producer = Producer({"bootstrap.servers": cluster.bootstrap_servers(), "acks": "all"})
    delivered = []
    for i in range(10):
        producer.produce("local-test", key=b"k", value=str(i).encode(),
                         on_delivery=lambda err, msg: delivered.append(err))
    assert producer.flush(30) == 0
    assert delivered == [None] * 10
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap_servers(), "group.id": "g",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(["local-test"])
    got = consume(consumer, 10)
    consumer.close()
    assert got == list(range(10))


def produce_and_consume(bootstrap: str, topic: str, n: int = 5) -> list[int]:
    from confluent_kafka import Consumer, Producer
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    errors = []
    for i in range(n):
        producer.produce(topic, value=str(i).encode(), on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(30) == 0
    assert errors == [None] * n
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "g", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.assign([__import__("confluent_kafka").TopicPartition(topic, 0, 0)])
    got = consume(consumer, n)
    consumer.close()
    return got


def consume(consumer, n: int) -> list[int]:
    """Up to n integer values, polling for at most 30 s."""
    got: list[int] = []

    def poll() -> bool:
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            got.append(int(m.value()))
        return len(got) >= n
    wait_until(poll, 30, 0)
    return got


def test_broker_process_started_by_the_cluster_serves_clients_and_stops(local_cluster_factory):
    """The broker start/stop path of the backend with the real acked-broker (one node, no replication)."""
    cluster = local_cluster_factory(nodes=1, brokers=False)
    node = cluster.nodes[0]
    port = cluster.broker_ports["n1"]
    cluster.start_broker(node)
    services.wait_for_port("127.0.0.1", port, 20, alive=lambda: node.is_running("broker"))
    assert "broker.id=1" in cluster.config_path(node).read_text()
    assert produce_and_consume(cluster.bootstrap_servers(), "local-broker") == [0, 1, 2, 3, 4]
    cluster.stop_broker(node, "TERM")
    assert not node.is_running("broker")
    assert "shut down cleanly" in cluster.log_path(node).read_text()
    cluster.start_broker(node)  # restart keeps the data
    services.wait_for_port("127.0.0.1", port, 20, alive=lambda: node.is_running("broker"))
    cluster.stop_broker(node, "KILL")
    assert not node.is_running("broker")


def test_cli_up_status_logs_down_local(tmp_path):
    """`acked cluster up --backend local` leaves processes running after the command exits; `down` removes them."""
    def acked(*argv):
        return subprocess.run([sys.executable, "-m", "harness.cli", "cluster", *argv, "--work-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
    up = acked("up", "--backend", "local", "--nodes", "3", "--no-brokers", "--name", "cli-local")
    try:
        assert up.returncode == 0, up.stderr
        assert "ready in" in up.stderr
        status = acked("status")
        assert "cli-local" in status.stdout and status.stdout.count("zookeeper:up") == 3
        pids = [int(p.read_text()) for p in (tmp_path / "cli-local").glob("n*/run/zookeeper.pid")]
        assert len(pids) == 3 and all(alive(p) for p in pids)
        logs = subprocess.run([sys.executable, "-m", "harness.cli", "cluster", "logs", str(tmp_path / "logs"),
                               "--name", "cli-local", "--work-dir", str(tmp_path)], capture_output=True, text=True)
        assert logs.returncode == 0, logs.stderr
        assert (tmp_path / "logs" / "n1" / "zookeeper.log").stat().st_size > 0
        assert acked("down", "--name", "nonexistent").returncode == 1
    finally:
        down = acked("down", "--name", "cli-local")
    assert down.returncode == 0 and "cli-local" in down.stdout
    assert wait_until(lambda: not any(alive(p) for p in pids), 5)
    assert "no clusters" in acked("status").stdout


class LossyNode(LocalNode):
    """A node whose transport loses the output of the next `lose` commands that succeed, as docker exec
    can under load (moby/moby#27289): the command runs, its exit code arrives, its output does not."""

    lose = 0

    def run(self, cmd, timeout: float = 30.0, check: bool = False, input: str | None = None):
        result = super().run(cmd, timeout, check, input)
        if self.lose and result.ok:
            self.lose -= 1
            return type(result)(result.status, "", "")
        return result


def test_lost_command_output_does_not_lose_a_daemon_or_its_pid(tmp_path):
    node = LossyNode("n1", 1, tmp_path / "n1", "lossy-test")
    try:
        node.lose = 1
        pid = node.start_daemon("sleeper", ["sleep", "60"], str(tmp_path / "n1" / "sleeper.log"))
        assert pid == int((tmp_path / "n1" / "run" / "sleeper.pid").read_text())
        node.lose = 2                       # two lost answers in a row are asked again
        assert node.pid("sleeper") == pid
        node.lose = 3                       # three: given up on, as an absent answer
        assert node.pid("sleeper") is None
    finally:
        node.stop_daemon("sleeper", "KILL")
