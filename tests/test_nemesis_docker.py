"""Each process, network and clock fault really happens on docker nodes, and heals (one cluster per module).

A fault is proven by what it does to the system: requests across a cut time out and come back after
heal, a leader cut from its followers shrinks its ISR to itself while ZooKeeper still reaches it, a
paused broker leaves the ISR and rejoins after resume, a skewed broker stamps its own clock.
"""
import json
import random
import socket
import time

import pytest

from clusters.services import BROKER_PORT, ZK_CLIENT_PORT
from conftest import docker_nemesis_cluster, key_topics, wait_until
from nemesis.core import Context
from nemesis.faults import CHAIN, ClockNemesis, PartitionNemesis, ProcessNemesis
from nemesis.packet import PacketNemesis
from nemesis.sequences import IsolateLeaderThenKill
from workloads.kafka_topics import KafkaRoles

pytestmark = pytest.mark.docker

PROBE = ("python3 -c \"import socket,sys; s=socket.socket(); s.settimeout(2); "
         "sys.exit(0 if s.connect_ex(('{ip}', {port})) == 0 else 1)\"")
KEY = "6"


def reachable(src, dst, port=ZK_CLIENT_PORT) -> bool:
    return src.run(PROBE.format(ip=dst.ip, port=port), timeout=10).ok


def host_reaches(node, port=BROKER_PORT) -> bool:
    try:
        socket.create_connection((node.ip, port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with docker_nemesis_cluster(tmp_path_factory, "test-nemesis", {"net", "clock"}) as c:
        yield c


@pytest.fixture(scope="module")
def topics(cluster):
    with key_topics(cluster, KEY) as t:
        yield t


@pytest.fixture
def writes(cluster, topics):
    """acks=1 writes to KEY every 50 ms, for the test's length: a follower leaves the ISR only when the
    leader's log moves on without it (Kafka's rule), so ISR tests need a log that moves."""
    import threading
    from confluent_kafka import Producer
    stop = threading.Event()
    topic, partition = topics.keymap.topic_partition(KEY)
    producer = Producer({"bootstrap.servers": cluster.bootstrap_servers(), "acks": "1",
                         "enable.idempotence": False, "message.timeout.ms": 3000, "linger.ms": 0})

    def run():
        while not stop.wait(0.05):
            try:
                producer.produce(topic, b"x", partition=partition)
            except BufferError:
                pass
            producer.poll(0)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    yield
    stop.set()
    t.join(5)
    producer.flush(5)


@pytest.fixture
def ctx(cluster, topics):
    c = Context(cluster, random.Random(1), KafkaRoles(topics, "acked-test", lambda: [KEY]))
    yield c
    # every test leaves the cluster whole for the next: brokers running, ISR full
    for node in cluster.nodes:
        node.signal("broker", "CONT")
        if not node.is_running("broker"):
            cluster.start_broker(node)
    assert wait_until(lambda: len(topics.isr_of(KEY)) == 3, 40), topics.isr_of(KEY)


def test_partition_cuts_exactly_the_grudge_and_heal_restores_it(cluster, ctx):
    nodes = {n.name: n for n in cluster.nodes}
    partition = PartitionNemesis()
    partition.setup(ctx)
    value = partition.invoke(ctx, {"f": "start-partition", "value": "halves"})
    try:
        cut = {tuple(e) for e in value["cut"]}
        assert sorted(len(g) for g in value["groups"]) == [1, 2]
        for a in nodes:
            for b in nodes:
                if a != b:
                    assert reachable(nodes[a], nodes[b]) is not ((min(a, b), max(a, b)) in cut), (a, b, cut)
    finally:
        partition.invoke(ctx, {"f": "stop-partition"})
    for a in nodes:
        assert all(reachable(nodes[a], nodes[b]) for b in nodes if b != a)
        rules = nodes[a].run(f"iptables -S {CHAIN}", timeout=10)
        assert rules.ok and rules.stdout.strip() == f"-N {CHAIN}"   # flushed our chain, touched nothing else


def test_a_leader_cut_from_its_followers_keeps_zookeeper_and_shrinks_its_isr_to_itself(cluster, ctx, topics, writes):
    partition = PartitionNemesis()
    partition.setup(ctx)
    value = partition.invoke(ctx, {"f": "start-partition", "value": {"shape": "leader-from-followers"}})
    try:
        leader = ctx.node_of(value["leader"])
        followers = [n for n in cluster.nodes if n is not leader]
        assert sorted(map(sorted, value["cut"])) == sorted(sorted([leader.name, f.name]) for f in followers)
        assert all(not reachable(f, leader, BROKER_PORT) for f in followers)
        assert all(reachable(f, leader, ZK_CLIENT_PORT) for f in followers)   # ZooKeeper still talks
        assert wait_until(lambda: topics.isr_of(KEY) == [value["leader"]], 30), topics.isr_of(KEY)
        assert topics.leader_of(KEY) == value["leader"]                        # and it still leads
    finally:
        healed = partition.invoke(ctx, {"f": "stop-partition"})
    assert healed["key"] == KEY and healed["isr-at-heal"] == [value["leader"]]


def test_the_clients_can_be_cut_off_one_side_of_a_partition(cluster, ctx):
    partition = PartitionNemesis()
    partition.setup(ctx)
    value = partition.invoke(ctx, {"f": "start-partition", "value": {"shape": "leader", "clients": "minority"}})
    try:
        isolated = value["isolated"]
        assert value["clients-cut-from"] == sorted(n.name for n in cluster.nodes if n.name != isolated)
        for node in cluster.nodes:
            assert host_reaches(node) is (node.name == isolated), node.name
    finally:
        partition.invoke(ctx, {"f": "stop-partition"})
    assert all(host_reaches(node) for node in cluster.nodes)


def test_a_paused_follower_leaves_the_isr_and_rejoins_after_resume(cluster, ctx, topics, writes):
    pause = ProcessNemesis("pause", "resume", "broker", "pause")
    value = pause.invoke(ctx, {"f": "pause", "value": f"followers-of:{KEY}"})
    try:
        paused = sorted(ctx.node(n).broker_id for n in value["nodes"])
        assert len(paused) == 2 and value["leader"] not in paused
        assert wait_until(lambda: topics.isr_of(KEY) == [value["leader"]], 30), topics.isr_of(KEY)
    finally:
        pause.invoke(ctx, {"f": "resume"})
    assert wait_until(lambda: topics.isr_of(KEY) == [1, 2, 3], 40), topics.isr_of(KEY)


def test_a_bumped_broker_stamps_its_registration_with_its_own_skewed_clock(cluster, ctx):
    from kazoo.client import KazooClient
    clock = ClockNemesis()
    clock.setup(ctx)
    value = clock.invoke(ctx, {"f": "bump-clock", "value": {"target": "n1", "ms": 3_600_000}})
    try:
        assert value["nodes"] == ["n1"]
        assert abs(value["observed-offset-ms"]["n1"] - 3_600_000) < 5_000
        cluster.stop_broker(cluster.nodes[0], "KILL")
        cluster.start_broker(cluster.nodes[0])
        zk = KazooClient(hosts=cluster.zookeeper_connect_from_host, timeout=10)
        zk.start(timeout=10)
        try:
            def registered_at():
                try:
                    return int(json.loads(zk.get("/brokers/ids/1")[0])["timestamp"]) / 1000
                except Exception:
                    return None
            assert wait_until(lambda: (t := registered_at()) is not None and t > time.time() + 600, 30)   # read once: the node may be re-registering
            assert abs(registered_at() - time.time() - 3600) < 60     # the broker's own time.time()
        finally:
            zk.stop()
            zk.close()
    finally:
        assert clock.invoke(ctx, {"f": "reset-clock"}) == {"nodes": ["n1"]}
    assert abs(clock.observed_offset_ms(cluster.nodes[0])) < 5_000


def test_a_killed_zookeeper_member_is_down_until_heal_restarts_it(cluster, ctx):
    kill = ProcessNemesis("kill-zookeeper", "start-zookeeper", "zookeeper", "kill")
    value = kill.invoke(ctx, {"f": "kill-zookeeper", "value": "n2"})
    node = ctx.node("n2")
    assert value["nodes"] == ["n2"] and not node.is_running("zookeeper")
    assert not host_reaches(node, ZK_CLIENT_PORT)
    kill.invoke(ctx, {"f": "start-zookeeper"})
    assert wait_until(lambda: host_reaches(node, ZK_CLIENT_PORT), 30)


def test_isolate_leader_then_kill_reaches_an_isr_of_the_leader_alone_before_the_kill(cluster, ctx, topics, writes):
    seq = IsolateLeaderThenKill()
    seq.setup(ctx)
    try:
        value = seq.invoke(ctx, {"f": "isolate-leader-then-kill", "value": {"write-for": 0.5, "elect-deadline": 3}})
        assert value["isr-shrunk-to-leader"] is True, value
        assert value["isr-before-kill"] == [value["leader"]]
        assert value["killed"] == ctx.node_of(value["leader"]).name
        assert not ctx.node_of(value["leader"]).is_running("broker")
        # unclean.leader.election.enable=false: the partition waits for its only in-sync replica
        assert value["elected"] is None
    finally:
        restarted = seq.invoke(ctx, {"f": "heal-isolate-leader-then-kill"})
    assert restarted["restarted"] == [value["killed"]]
    assert wait_until(lambda: topics.leader_of(KEY) is not None, 30)


CONNECT_MS = ("python3 -c \"import socket,time; t=time.monotonic(); s=socket.create_connection(('{ip}', {port}), 5); "
              "print(round((time.monotonic()-t)*1000, 1))\"")


def test_the_packet_nemesis_delays_what_leaves_its_target_and_heals(cluster, ctx):
    packet = PacketNemesis()
    packet.setup(ctx)
    n1, n2 = ctx.node("n1"), ctx.node("n2")

    def connect_ms():
        return float(n1.run(CONNECT_MS.format(ip=n2.ip, port=ZK_CLIENT_PORT), timeout=15, check=True).stdout)
    value = packet.invoke(ctx, {"f": "start-packet", "value": {"behaviour": "delay", "delay_ms": 150,
                                                               "target": "n1"}})
    try:
        assert value["nodes"] == ["n1"] and value["delay_ms"] == 150
        assert connect_ms() >= 135          # the SYN leaves n1 150 ms late: >= 90% of the asked delay
    finally:
        assert packet.invoke(ctx, {"f": "stop-packet"}) == {"nodes": ["n1"]}
    assert connect_ms() < 50
