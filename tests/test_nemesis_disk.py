"""The disk and return-path faults really happen on docker nodes, and heal (one cluster for the module).

log.dirs is our FUSE filesystem (nemesis/faultfs.py) and the clients reach the brokers through the
Kafka-aware proxy (nemesis/ackproxy.py). Each effect is shown by what a real client sees: an acks=all
write that waits for a stalled disk, records that vanish with a power loss unless they were fsynced, a
broker that halts on a failed log dir as Kafka does, a write the client was told timed out that a later
read returns.
"""
import random
import time
import uuid

import pytest

from clusters.remote import ACKPROXY, BROKER_DIR, FAULTFS, LOGS
from conftest import docker_nemesis_cluster, key_topics, wait_until
from nemesis.acks import LoseAcksNemesis
from nemesis.core import Context
from nemesis.disk import DiskErrorsNemesis, DiskStallNemesis, LoseUnfsyncedNemesis
from workloads.kafka_topics import KafkaRoles, KeyMap

pytestmark = pytest.mark.docker

KEY = "3"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with docker_nemesis_cluster(tmp_path_factory, "test-nemesis-disk", {"net", "disk", "acks"}) as c:
        yield c


@pytest.fixture(scope="module")
def topics(cluster):
    with key_topics(cluster, KEY) as t:
        yield t


@pytest.fixture
def ctx(cluster, topics):
    c = Context(cluster, random.Random(1), KafkaRoles(topics, "acked-test", lambda: [KEY]))
    yield c
    # every test leaves the cluster whole for the next: faults cleared, brokers running, ISR full
    for nemesis in (DiskStallNemesis(), LoseAcksNemesis()):
        for node in cluster.nodes:
            nemesis.ctl(c, node, {"cmd": "clear"})
    for node in cluster.nodes:
        if not node.is_running("broker"):
            cluster.start_broker(node)
    assert wait_until(lambda: len(topics.isr_of(KEY)) == 3, 60), topics.isr_of(KEY)


def producer(cluster, **conf):
    from confluent_kafka import Producer
    return Producer({"bootstrap.servers": cluster.bootstrap_servers(), "linger.ms": 0, **conf})


def read_all(cluster, topic: str, partition: int, timeout: float = 20.0) -> list[bytes]:
    """Every value of one partition, from offset 0 to its high watermark."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": cluster.bootstrap_servers(), "group.id": f"read-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        _, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        c.assign([TopicPartition(topic, partition, 0)])
        out, deadline = [], time.monotonic() + timeout
        while len(out) < high and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                out.append(m.value())
        return out
    finally:
        c.close()


def readable(cluster, topic: str, n: int) -> bool:
    """The partition is served again (its only replica restarted) and holds n values."""
    from confluent_kafka import KafkaException
    try:
        return len(read_all(cluster, topic, 0, timeout=5)) == n
    except KafkaException:
        return False


def test_the_brokers_run_on_faultfs_and_the_clients_reach_them_through_the_proxy(cluster, ctx):
    for node in cluster.nodes:
        assert node.is_running(FAULTFS) and node.is_running(ACKPROXY)
        mounts = node.output("grep ' /var/lib/acked/broker ' /proc/mounts").stdout
        assert "fuse" in mounts, mounts
    p = producer(cluster, acks="all")
    topic, partition = KeyMap(8).topic_partition(KEY)
    p.produce(topic, b"through-the-proxy", partition=partition)
    assert p.flush(20) == 0
    leader = ctx.node_of(ctx.roles.leader_of(KEY))
    status = LoseAcksNemesis().ctl(ctx, leader, {"cmd": "status"})
    assert status["requests"].get("Produce", 0) >= 1, status


def test_acks_all_produce_blocks_during_a_disk_stall_of_the_leader_and_completes_after_release(cluster, ctx):
    topic, partition = KeyMap(8).topic_partition(KEY)
    p = producer(cluster, acks="all", **{"enable.idempotence": True})
    stall = DiskStallNemesis()
    stall.setup(ctx)
    value = stall.invoke(ctx, {"f": "stall-disk", "value": {"target": "leader", "ops": "write"}})
    done = []
    try:
        p.produce(topic, b"stalled", partition=partition, on_delivery=lambda err, msg: done.append((err, msg.offset())))
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            p.poll(0.2)
        assert done == [], f"acknowledged while the leader's disk was stalled: {done} ({value})"
    finally:
        stall.invoke(ctx, {"f": "release-disk"})
    assert p.flush(30) == 0
    assert len(done) == 1 and done[0][0] is None, done
    assert b"stalled" in read_all(cluster, topic, partition)


def test_records_not_fsynced_are_gone_after_lose_unfsynced_while_fsynced_ones_survive(cluster, ctx):
    from confluent_kafka.admin import AdminClient, NewTopic
    node = cluster.nodes[0]
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap_servers()})
    lazy, synced = f"lazy-{uuid.uuid4().hex[:6]}", f"synced-{uuid.uuid4().hex[:6]}"
    # one replica each, on the node that loses power; one topic fsyncs every message, the other never
    futures = admin.create_topics([
        NewTopic(lazy, 1, replica_assignment=[[node.broker_id]], config={"min.insync.replicas": "1"}),
        NewTopic(synced, 1, replica_assignment=[[node.broker_id]],
                 config={"min.insync.replicas": "1", "flush.messages": "1"})])
    for f in futures.values():
        f.result(30)
    p = producer(cluster, acks="all", **{"enable.idempotence": True})
    for i in range(50):
        p.produce(lazy, b"%d" % i, partition=0)
        p.produce(synced, b"%d" % i, partition=0)
    assert p.flush(30) == 0
    power = LoseUnfsyncedNemesis()
    power.setup(ctx)
    value = power.invoke(ctx, {"f": "lose-unfsynced", "value": {"target": node.name}})
    assert value["nodes"] == [node.name] and not node.is_running("broker")
    assert value["lost"][node.name]["bytes"] > 0, value
    power.invoke(ctx, {"f": "restart-after-power-loss"})
    assert wait_until(lambda: readable(cluster, synced, 50), 60)
    assert read_all(cluster, synced, 0) == [b"%d" % i for i in range(50)]
    lost = read_all(cluster, lazy, 0)
    # faultfs writes back what has been dirty for FAULTFS_WRITEBACK_S (5 s): these were written just now
    assert len(lost) < 50, f"every unfsynced record survived a power loss: {len(lost)}; {value}"
    log = node.output(f"cat {LOGS}/broker.log").stdout
    assert "recovery" in log or "(unclean shutdown before)" in log


def test_disk_errors_make_the_broker_report_its_failed_log_dir_and_halt_and_heal_restarts_it(cluster, ctx, topics):
    topic, partition = KeyMap(8).topic_partition(KEY)
    leader = ctx.node_of(ctx.roles.leader_of(KEY))
    errors = DiskErrorsNemesis()
    errors.setup(ctx)
    errors.invoke(ctx, {"f": "start-disk-errors", "value": {"target": leader.name, "ops": "write", "p": 1.0}})
    p = producer(cluster, acks="all", **{"enable.idempotence": True})
    p.produce(topic, b"after-the-failure", partition=partition)
    assert wait_until(lambda: not leader.is_running("broker"), 30), "the broker kept running on a failed disk"
    log = leader.output(f"cat {LOGS}/broker.log").stdout
    assert f"Shutdown broker because all log dirs in {BROKER_DIR} have failed" in log, log[-2000:]
    assert "Error while appending to the log in dir" in log
    # the controller moves its partitions, and the write lands on the new leader
    assert wait_until(lambda: ctx.roles.leader_of(KEY) not in (None, leader.broker_id), 30)
    assert p.flush(30) == 0
    healed = errors.invoke(ctx, {"f": "stop-disk-errors"})
    assert healed["restarted"] == [leader.name]     # the broker the errors halted
    assert wait_until(lambda: len(topics.isr_of(KEY)) == 3, 60)
    assert b"after-the-failure" in read_all(cluster, topic, partition)


def test_under_lose_acks_the_client_sees_a_timeout_for_a_write_that_a_later_read_returns(cluster, ctx):
    topic, partition = KeyMap(8).topic_partition(KEY)
    acks = LoseAcksNemesis()
    acks.setup(ctx)
    value = acks.invoke(ctx, {"f": "start-lose-acks", "value": {"target": "leader", "apis": ["Produce"],
                                                                "mode": "delay", "delay_ms": 8000}})
    outcome = []
    try:
        # a new producer: its connection is made now, through the proxy
        p = producer(cluster, acks="all", retries=0, **{"enable.idempotence": False, "request.timeout.ms": 2000,
                                                         "message.timeout.ms": 3000})
        p.produce(topic, b"timed-out-but-written", partition=partition,
                  on_delivery=lambda err, msg: outcome.append(err))
        p.flush(15)
    finally:
        healed = acks.invoke(ctx, {"f": "stop-lose-acks"})
    assert len(outcome) == 1 and outcome[0] is not None, outcome
    assert "TIMED_OUT" in outcome[0].name(), outcome[0]
    assert b"timed-out-but-written" in read_all(cluster, topic, partition)
    assert sum(healed["responses-lost"][n]["delayed"].get("Produce", 0) for n in value["nodes"]) >= 1, healed
