"""Docker backend and SSH transport against real containers (node image built by `acked image build`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from kazoo.client import KazooClient

from clusters import services
from clusters.base import ClusterError, ClusterSpec
from clusters.docker import LABEL_CLUSTER, DockerCluster, docker_client, labelled_clusters, list_labelled, reap
from clusters.ssh import SSHNode, cluster_key
from conftest import CLUSTERS_DIR

pytestmark = pytest.mark.docker


def _docker_or_skip():
    try:
        return docker_client()
    except ClusterError as e:
        if os.environ.get("CI"):  # CI has docker: a missing daemon is a failure there, not a skip
            pytest.fail(str(e))
        pytest.skip(str(e))


def leftovers(client, name: str) -> list[str]:
    found = list_labelled(client, f"{LABEL_CLUSTER}={name}")
    return ([c["Names"][0] for c in found["containers"]] + [n["Name"] for n in found["networks"]]
            + [v["Name"] for v in found["volumes"]])


@pytest.fixture(scope="module")
def cluster():
    client = _docker_or_skip()
    spec = ClusterSpec(backend="docker", nodes=3, work_dir=CLUSTERS_DIR, run_id="pytest")
    c = DockerCluster(spec)
    try:
        c.start()
        yield c
    finally:
        c.teardown()
        assert leftovers(client, c.name) == []


def can_connect(node, ip: str, port: int) -> bool:
    code = f"import socket; socket.create_connection(({ip!r}, {port}), timeout=1).close()"
    return node.run(["python3", "-c", code], timeout=5).ok


def test_three_nodes_form_a_zookeeper_quorum(cluster):
    assert [n.name for n in cluster.nodes] == ["n1", "n2", "n3"]
    for n in cluster.nodes:
        assert n.run("hostname").stdout.strip() == n.name
        assert n.run("cat /proc/self/status | grep CapEff").ok
        assert n.run(["test", "-f", "/src/clusters/base.py"]).ok  # project source mounted
        assert not n.run(["touch", "/src/x"]).ok                   # read-only
    modes = sorted(services.zookeeper_mode(n.ip, 2181) for n in cluster.nodes)
    assert modes == ["follower", "follower", "leader"]


def test_iptables_drop_from_n1_to_n2_and_heal(cluster):
    n1, n2, n3 = cluster.nodes
    assert can_connect(n1, n2.ip, 2181)
    n1.run(["iptables", "-A", "OUTPUT", "-d", n2.ip, "-j", "DROP"], check=True)
    try:
        assert not can_connect(n1, n2.ip, 2181)
        assert can_connect(n1, n3.ip, 2181)   # only the n1 -> n2 link is cut
        assert can_connect(n3, n2.ip, 2181)
    finally:
        n1.run(["iptables", "-D", "OUTPUT", "-d", n2.ip, "-j", "DROP"], check=True)
    assert can_connect(n1, n2.ip, 2181)


def test_ssh_transport_runs_a_command_on_every_node(cluster):
    known_hosts = cluster.write_known_hosts()
    key = cluster_key(cluster.dir)
    for n in cluster.nodes:
        ssh = SSHNode(n.name, n.broker_id, n.ip, "root", key.path, known_hosts)
        try:
            assert ssh.run("hostname").stdout.strip() == n.name
            assert ssh.run(["cat"], input="through ssh").stdout == "through ssh"
            assert ssh.run("exit 7").status == 7
            assert ssh.run("sleep 5", timeout=0.5).status == 124
            pid = ssh.start_daemon("probe", ["sleep", "60"], "/var/log/acked/probe.log")
            assert n.pid("probe") == pid  # the same daemon seen through docker exec
            assert ssh.signal("probe", "KILL")
        finally:
            ssh.close()


def test_ssh_refuses_an_unknown_host_key(cluster, tmp_path):
    n1, n2 = cluster.nodes[:2]
    keys = cluster.host_keys()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{n1.ip} {keys['n2']}\n")  # n2's key claimed for n1
    ssh = SSHNode("n1", 1, n1.ip, "root", cluster_key(cluster.dir).path, wrong)
    with pytest.raises(ClusterError, match="ssh to root@"):
        ssh.run("true")
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(ClusterError):
        SSHNode("n1", 1, n1.ip, "root", cluster_key(cluster.dir).path, empty).run("true")


def test_reset_wipes_data_without_recreating_containers(cluster, tmp_path):
    ids = [n.container.id for n in cluster.nodes]
    zk = KazooClient(hosts=cluster.zookeeper_connect_from_host, timeout=5)
    zk.start(timeout=10)
    zk.create("/before-reset", b"x")
    zk.stop()
    # a fault's rule lives in an ACKED-* chain, as the nemeses make them; a rule of the host's own must stay
    cluster.nodes[0].run("iptables -N ACKED-TEST && iptables -A OUTPUT -j ACKED-TEST && "
                         "iptables -A ACKED-TEST -d 192.0.2.1 -j DROP && "
                         "iptables -A OUTPUT -d 192.0.2.2 -j ACCEPT", check=True)
    cluster.reset()
    assert [n.container.id for n in cluster.nodes] == ids
    rules = cluster.nodes[0].run(["iptables", "-S"]).stdout
    assert "192.0.2.1" not in rules and "-A OUTPUT -d 192.0.2.2/32 -j ACCEPT" in rules
    zk = KazooClient(hosts=cluster.zookeeper_connect_from_host, timeout=5)
    zk.start(timeout=10)
    try:
        assert zk.exists("/before-reset") is None
    finally:
        zk.stop()
    # a fault left a ZooKeeper member dead and one paused: reset brings the whole ensemble back
    assert cluster.nodes[1].signal("zookeeper", "KILL")
    assert cluster.nodes[2].signal("zookeeper", "STOP")
    cluster.reset()
    assert all(n.is_running("zookeeper") for n in cluster.nodes)
    assert sorted(services.zookeeper_mode(n.ip, 2181) for n in cluster.nodes) == ["follower", "follower", "leader"]
    cluster.collect_logs(tmp_path / "logs")
    for n in cluster.nodes:
        assert "QuorumPeer" in (tmp_path / "logs" / n.name / "zookeeper.log").read_text()
        assert (tmp_path / "logs" / n.name / "sshd.log").exists()


def test_confluent_kafka_produces_and_consumes_through_the_nodes(cluster):
    from confluent_kafka import Consumer, Producer
    producer = Producer({"bootstrap.servers": cluster.bootstrap_servers(), "acks": "all"})
    errors = []
    for i in range(20):
        producer.produce("docker-test", value=str(i).encode(), on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(30) == 0
    assert errors == [None] * 20
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap_servers(), "group.id": "t",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(["docker-test"])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 20 and time.monotonic() < deadline:
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            got.append(int(m.value()))
    consumer.close()
    assert sorted(got) == list(range(20))


def test_teardown_leaves_nothing_and_capabilities_follow_the_spec():
    client = _docker_or_skip()
    c = DockerCluster(ClusterSpec(backend="docker", nodes=1, brokers=False, work_dir=CLUSTERS_DIR,
                                  run_id="pytest", capabilities=frozenset()))
    try:
        c.create()
        assert leftovers(client, c.name)  # container, network, volume exist and are labelled
        host_config = c.nodes[0].container.attrs["HostConfig"]
        assert not host_config.get("CapAdd") and not host_config.get("Devices")
        assert not c.nodes[0].run(["iptables", "-S"]).ok  # no NET_ADMIN: no iptables
    finally:
        c.teardown()
    assert leftovers(client, c.name) == []
    assert not c.dir.exists()


def test_leftovers_of_a_killed_run_are_reaped_by_the_next():
    client = _docker_or_skip()
    script = textwrap.dedent(f"""
        import time
        from clusters.base import ClusterSpec
        from clusters.docker import DockerCluster
        c = DockerCluster(ClusterSpec(backend="docker", nodes=1, brokers=False,
                                      work_dir={str(CLUSTERS_DIR)!r}, run_id="victim"))
        c.create()
        print(c.name, flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    name = None
    try:
        name = owner.stdout.readline().strip()
        assert name and leftovers(client, name)
        assert name not in reap(client)       # its owner is alive: kept
        assert leftovers(client, name)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    try:
        assert leftovers(client, name)        # the killed run left its container behind
        assert name in labelled_clusters(client)
        assert (CLUSTERS_DIR / name).is_dir()
        assert name in reap(client, work_dir=CLUSTERS_DIR)  # what every start runs
        assert leftovers(client, name) == []
        assert not (CLUSTERS_DIR / name).exists()
    finally:
        if name:
            from clusters.docker import remove_cluster
            remove_cluster(client, name)


def test_broker_process_in_a_container_is_reachable_from_the_host(cluster):
    """advertised.listeners is the container's address; the broker runs from the read-only /src mount."""
    from test_clusters_local import produce_and_consume
    n1 = cluster.nodes[0]
    assert f"advertised.listeners=PLAINTEXT://{n1.ip}:9092" in n1.run(["cat", "/etc/acked/server.properties"]).stdout
    assert produce_and_consume(f"{n1.ip}:9092", "docker-broker") == [0, 1, 2, 3, 4]
    assert n1.signal("broker", "STOP")
    assert "T" in n1.run(f"grep ^State: /proc/{n1.pid('broker')}/status").stdout
    assert n1.signal("broker", "CONT")
    cluster.stop_broker(n1, "TERM")
    try:
        assert not n1.is_running("broker")
        assert "shut down cleanly" in n1.run(["cat", "/var/log/acked/broker.log"]).stdout
    finally:
        cluster.start_broker(n1)
        services.wait_for_port(n1.ip, 9092, 30, alive=lambda: n1.is_running("broker"))


def test_ssh_backend_installs_and_starts_zookeeper_on_hosts(tmp_path):
    """The docker nodes treated as real hosts: a cluster file, install over SFTP, daemons over SSH."""
    from clusters.ssh import SSHCluster
    from conftest import ssh_hosts
    client = _docker_or_skip()
    with ssh_hosts(tmp_path, "pytest-ssh-hosts") as (hosts, cluster_file):
        spec = ClusterSpec(backend="ssh", cluster_file=cluster_file(), work_dir=CLUSTERS_DIR, brokers=False)
        ssh_cluster = SSHCluster(spec)
        try:
            ssh_cluster.start()
            modes = sorted(services.zookeeper_mode(n.ip, 2181) for n in hosts.nodes)
            assert modes == ["follower", "follower", "leader"]
            # installed: the broker package and its Python dependencies import on the host
            r = ssh_cluster.nodes[0].run(f"PYTHONPATH={ssh_cluster.pythonpath} python3 -c 'import broker.main, kazoo, crc32c'")
            assert r.ok, r.stderr
            # the daemons run as processes the docker transport sees too
            assert hosts.nodes[1].is_running("zookeeper")
        finally:
            ssh_cluster.teardown()
        assert not hosts.nodes[1].is_running("zookeeper")
    assert leftovers(client, hosts.name) == []


def test_cli_up_status_down_docker(tmp_path):
    client = _docker_or_skip()

    def acked(*argv):
        return subprocess.run([sys.executable, "-m", "harness.cli", "cluster", *argv, "--work-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=180)
    up = acked("up", "--backend", "docker", "--nodes", "1", "--no-brokers", "--name", "cli-docker")
    try:
        assert up.returncode == 0, up.stderr
        assert "zookeeper.connect=" in up.stderr
        assert leftovers(client, "cli-docker")  # outlives the command: a manual cluster
        assert "cli-docker" not in reap(client)  # manual clusters are not reaped by other starts
        status = acked("status")
        assert "cli-docker  backend=docker  owner=manual" in status.stdout and "running" in status.stdout
    finally:
        down = acked("down", "--name", "cli-docker")
    assert down.returncode == 0 and "cli-docker" in down.stdout
    assert leftovers(client, "cli-docker") == []


def test_ctrl_c_during_up_leaves_nothing(tmp_path):
    client = _docker_or_skip()
    # a fresh interpreter with Python's own SIGINT handler (a background job may inherit SIGINT ignored)
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from harness.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.Popen([sys.executable, "-c", code, "cluster", "up", "--backend", "docker", "--nodes", "3",
                          "--no-brokers", "--name", "ctrl-c", "--work-dir", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not leftovers(client, "ctrl-c") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leftovers(client, "ctrl-c"), "up created nothing to interrupt"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 130, err
        assert leftovers(client, "ctrl-c") == []
        assert not (tmp_path / "ctrl-c").exists()
    finally:
        if p.poll() is None:
            p.kill()
        from clusters.docker import remove_cluster
        remove_cluster(client, "ctrl-c")
