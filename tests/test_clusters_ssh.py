"""The ssh backend's broker: the cluster file's [broker] description (its parsing and errors, fast), and on docker
nodes treated as real hosts, acked-broker started through that generic description, served to a real client and
run under kill, pause and partition faults by the harness."""
from __future__ import annotations

import dataclasses
import re

import pytest

from checkers.history import read_history
from clusters import services
from clusters.base import ClusterError, ClusterSpec
from clusters.remote import RemoteCluster
from clusters.ssh import SSHCluster, read_cluster_file

HOSTS = '\n[[hosts]]\nname = "n1"\naddress = "10.0.0.1"\n[[hosts]]\nname = "n2"\naddress = "10.0.0.2"\n'


def cluster_file(tmp_path, broker: str = "", top: str = 'key = "id"\n'):
    path = tmp_path / "hosts.toml"
    path.write_text(top + (f"[broker]\n{broker}\n" if broker else "") + HOSTS)
    return path


def test_a_cluster_file_without_a_broker_table_runs_acked_broker_as_the_docker_nodes_do(tmp_path):
    conf = read_cluster_file(cluster_file(tmp_path))
    assert conf["broker"] == services.BrokerDescription() == RemoteCluster.broker
    cluster = SSHCluster(ClusterSpec(backend="ssh", cluster_file=cluster_file(tmp_path)))
    assert cluster.bootstrap_servers() == "10.0.0.1:9092,10.0.0.2:9092"
    assert (cluster.spec.nodes, cluster.spec.zookeeper) == (2, "every-node")   # the file's shape, not the default
    # the default description starts exactly the command the docker backend always started
    argv = cluster.broker.argv(python="python3", config="/etc/acked/server.properties", data_dir="/d", port=9092,
                               broker_id=1, host="10.0.0.1")
    assert argv == services.broker_command("/etc/acked/server.properties", python="python3")
    assert cluster.broker.data_dir == "/var/lib/acked/broker"


def test_the_broker_table_points_the_cluster_at_apache_kafka_on_its_own_port_and_data_dir(tmp_path):
    path = cluster_file(tmp_path, 'command = "/opt/kafka/bin/kafka-server-start.sh {config}"\n'
                                  'data_dir = "/var/lib/kafka/data"\nport = 19092\n')
    cluster = SSHCluster(ClusterSpec(backend="ssh", cluster_file=path))
    assert cluster.bootstrap_servers() == "10.0.0.1:19092,10.0.0.2:19092"
    assert cluster.broker.backing_dir == "/var/lib/kafka/data.backing"   # where faultfs keeps the files
    assert cluster.broker.argv(python="python3", config="/etc/acked/server.properties", data_dir="/x", port=1,
                               broker_id=1, host="h") == ["/opt/kafka/bin/kafka-server-start.sh",
                                                          "/etc/acked/server.properties"]
    assert cluster.describe()["broker"]["command"] == "/opt/kafka/bin/kafka-server-start.sh {config}"


def test_every_placeholder_is_filled_in_per_broker_and_a_value_with_spaces_stays_one_argument(tmp_path):
    command = "env ID={broker_id} '{python}' -m broker.main {config} --listen {host}:{port} --data {data_dir} {{}}"
    path = cluster_file(tmp_path, f'command = "{command}"\n')
    broker = read_cluster_file(path)["broker"]
    assert broker.argv(python="/opt/my python/bin/python3", config="/etc/acked/server.properties",
                       data_dir="/var/lib/acked/broker", port=9092, broker_id=2, host="10.0.0.2") == [
        "env", "ID=2", "/opt/my python/bin/python3", "-m", "broker.main", "/etc/acked/server.properties",
        "--listen", "10.0.0.2:9092", "--data", "/var/lib/acked/broker", "{}"]


@pytest.mark.parametrize("broker, message", [
    ('command = "{java} -jar kafka.jar {config}"', r"command uses the unknown placeholder \{java\}; use \{python\}"),
    ('command = "{python} -m broker.main {0} {config}"', r"unknown placeholder \{0\}"),
    ('command = "kafka-server-start.sh /etc/kafka/server.properties"', r"never passes \{config\}"),
    ('command = "kafka-server-start.sh \'{config}"', r"command .* cannot be read: No closing quotation"),
    ('command = "{python -m broker.main {config}"', r"command .* cannot be read"),
    ('command = ["kafka-server-start.sh", "{config}"]', "command must be a string"),
    ('port = "9092"', r"port = '9092' is not a port; give an integer from 1 to 65535"),
    ("port = 70000", "is not a port"),
    ("port = true", "is not a port"),
    ("port = 2181", r"port = 2181 is taken by ZooKeeper's clients; give another port"),
    ("port = 9192", r"taken by the ack proxy"),
    ("port = 22", r"taken by sshd"),
    ('data_dir = "kafka-logs"', "data_dir = 'kafka-logs' must be an absolute path"),
    ('data_dir = "/var/lib/kafka/"', "no trailing slash"),
    ('data_dir = "/var/lib/kafka logs"', "must be an absolute path"),
    ('data_dir = "/var"', r"data_dir = '/var' would be wiped \(rm -rf\) on every reset"),
    ('data_dir = "/var/lib/acked"', "would be wiped"),
    ('config = "kafka.yaml"', r"config = 'kafka.yaml' is not a config format acked writes; use 'server.properties'"),
    ('image = "apache/kafka"', "has no key 'image'; use command, config, data_dir, port"),
])
def test_a_bad_broker_table_is_a_one_line_error_naming_the_key_and_the_fix(tmp_path, broker, message):
    path = cluster_file(tmp_path, broker)
    with pytest.raises(ClusterError, match=f"cluster file {re.escape(str(path))}: \\[broker\\] .*{message}") as e:
        read_cluster_file(path)
    assert "\n" not in str(e.value)


def test_a_broker_key_that_is_not_a_table_is_a_clear_error(tmp_path):
    path = cluster_file(tmp_path, top='key = "id"\nbroker = "kafka"\n')
    with pytest.raises(ClusterError, match=r"\[broker\] must be a table"):
        read_cluster_file(path)


# ---------------------------------------------------------------- on docker nodes treated as hosts

@pytest.mark.docker
def test_acked_broker_started_through_the_broker_table_serves_clients_and_survives_kill_pause_and_partition(
        tmp_path):
    """The docker nodes as real hosts: install over SFTP, ZooKeeper and brokers over SSH, each broker started by
    the cluster file's command. A first cluster on a port and data directory of the file's choosing serves a
    real producer and consumer; after its teardown the harness starts its own cluster on the same hosts and
    runs a short test under the kill, pause and partition nemeses, all over SSH."""
    from test_clusters_docker import _docker_or_skip, leftovers
    from test_clusters_local import produce_and_consume

    from conftest import CLUSTERS_DIR, ssh_hosts
    from harness.config import TestDescription
    from harness.runner import run_test

    client = _docker_or_skip()
    with ssh_hosts(tmp_path, "pytest-ssh-brokers") as (hosts, cluster_file):
        def write_cluster_file(name: str, data_dir: str, port: int):
            return cluster_file(name, {"command": "{python} -m broker.main {config}", "data_dir": data_dir,
                                       "port": port, "config": "server.properties"})

        first = SSHCluster(ClusterSpec(backend="ssh", cluster_file=write_cluster_file(
            "first.toml", "/srv/acked-ssh/broker-data", 9093), work_dir=CLUSTERS_DIR, brokers=True))
        try:
            first.start()   # returns once every broker has registered in ZooKeeper and a controller is elected
            assert first.bootstrap_servers() == ",".join(f"{n.ip}:9093" for n in hosts.nodes)
            assert produce_and_consume(first.bootstrap_servers(), "through-ssh") == [0, 1, 2, 3, 4]
            n1 = hosts.nodes[0]   # what the broker on n1 was given, seen through docker exec
            props = n1.run(["cat", "/etc/acked/server.properties"]).stdout
            assert "log.dirs=/srv/acked-ssh/broker-data\n" in props and f"PLAINTEXT://{n1.ip}:9093\n" in props
            # the partition's log is in the description's data directory of the broker that holds it
            assert any(n.run(["test", "-d", "/srv/acked-ssh/broker-data/through-ssh-0"]).ok for n in hosts.nodes)
        finally:
            first.teardown()
        assert not any(n.is_running("broker") or n.is_running("zookeeper") for n in hosts.nodes)
        assert not hosts.nodes[0].run(["test", "-e", "/srv/acked-ssh/broker-data"]).ok

        # the harness's own cluster on the same hosts, on another port than 9092: the partitions that cut the
        # clients off the brokers must cut the described port (nemesis/faults.py broker_port)
        second = write_cluster_file("hosts.toml", "/srv/acked-ssh/broker-data", 9094)
        desc = TestDescription(name="ssh-brokers", backend="ssh", nodes=3, nemeses=["kill", "pause", "partition"],
                               time_limit=20, nemesis_interval=3, seed=1, results_dir=str(tmp_path / "results"))
        result = run_test(desc, cluster_factory=lambda spec: SSHCluster(
            dataclasses.replace(spec, cluster_file=second)))
        assert result.error is None, (result.error, result.run_dir)
        assert result.valid is True, (result.results["bad-anomaly-types"], result.run_dir)
        assert result.results["harness"]["nemesis-errors"] == []
        history = read_history(result.run_dir / "history.jsonl")
        done = [e for e in history if e["process"] == "nemesis" and e["type"] == "info"]
        assert [e for e in done if e.get("error")] == []
        assert {"kill", "start", "pause", "resume", "start-partition", "stop-partition"} <= {e["f"] for e in done}
        assert not any(n.is_running("broker") for n in hosts.nodes)   # the run tore its cluster down
        # its logs are its own: the first cluster's lines (port 9093) were cleared when it started
        broker_log = (result.run_dir / "logs" / "n1" / "broker.log").read_text()
        assert ":9094" in broker_log and ":9093" not in broker_log
        cuts = [e["value"] for e in done if e["f"] == "start-partition" and "clients" in str(e["value"].get("cut"))]
        assert cuts, "no partition cut the clients off this run's brokers"
    assert leftovers(client, hosts.name) == []
