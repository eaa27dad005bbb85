"""Coordinator failover on a real replicated cluster: 3 local broker processes, a real
ZooKeeper, confluent-kafka consumers that commit after processing.

SIGKILL the broker that coordinates the group (the leader of its __consumer_offsets
partition): a new leader of that partition replays it, the group re-forms there, and no
committed offset goes backwards — every commit that was acknowledged before the kill is
still there (it was answered only once below the high watermark, i.e. on every ISR member).
"""

from __future__ import annotations

import datetime
import json
import time

import pytest
from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kazoo.client import KazooClient

from conftest import wait_until

pytestmark = pytest.mark.timeout(240)

TOPIC, GROUP, PARTITIONS = "fo", "fo-group", 3
BROKER_CONFIG = {
    "replica.lag.time.max.ms": "1500",
    "zookeeper.session.timeout.ms": "3000",
    "replica.fetch.wait.max.ms": "100",
    "offsets.topic.num.partitions": "1",
    "offsets.topic.replication.factor": "3",
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "1000",
}


def offsets_leader(zk: KazooClient) -> dict | None:
    path = "/brokers/topics/__consumer_offsets/partitions/0/state"
    if zk.exists(path) is None:
        return None
    return json.loads(zk.get(path)[0])


class Member:
    """A consumer that processes each record and then commits offset + 1 synchronously."""

    def __init__(self, bootstrap: str, name: str, acked: dict[int, int]):
        self.name = name
        self.acked = acked  # partition -> highest commit the coordinator acknowledged
        self.processed: list[tuple[int, int]] = []
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "auto.offset.reset": "earliest",
                           "enable.auto.commit": False, "session.timeout.ms": 3000,
                           "heartbeat.interval.ms": 300, "fetch.wait.max.ms": 100,
                           "topic.metadata.refresh.interval.ms": 1000})
        self.c.subscribe([TOPIC])

    def step(self) -> None:
        m = self.c.poll(0.05)
        if m is None or m.error():
            return
        self.processed.append((m.partition(), m.offset()))
        try:
            self.c.commit(message=m, asynchronous=False)
        except KafkaException as e:  # e.g. NOT_COORDINATOR or REQUEST_TIMED_OUT while it fails over
            if e.args[0].code() not in (KafkaError.NOT_COORDINATOR, KafkaError.REQUEST_TIMED_OUT,
                                        KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                                        KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
                                        KafkaError.UNKNOWN_MEMBER_ID, KafkaError._TRANSPORT,
                                        KafkaError._TIMED_OUT, KafkaError._WAIT_COORD, KafkaError._NO_OFFSET):
                raise
            return
        self.acked[m.partition()] = max(self.acked.get(m.partition(), 0), m.offset() + 1)

    def assignment(self) -> set[int]:
        return {tp.partition for tp in self.c.assignment()}


#: what a client retries after finding the coordinator again: right after a failover a broker may
#: already name the new coordinator while that broker has not yet taken over the offsets partition
COORDINATOR_MOVING = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                      KafkaError.COORDINATOR_NOT_AVAILABLE)


def committed(bootstrap: str, timeout: float = 30) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP})
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return {tp.partition: tp.offset for tp in
                        c.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=15)}
            except KafkaException as e:
                if e.args[0].code() not in COORDINATOR_MOVING or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        c.close()


def produce(bootstrap: str, n: int, start: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "message.timeout.ms": 20000})
    for i in range(start, start + n):
        for part in range(PARTITIONS):
            p.produce(TOPIC, f"{part}:{i}".encode(), partition=part)
    assert p.flush(30) == 0


def test_sigkill_of_the_coordinator_group_reforms_and_no_committed_offset_goes_backwards(local_cluster_factory):
    cluster = local_cluster_factory(nodes=3, zookeeper="dedicated", broker_config=BROKER_CONFIG)
    zk = KazooClient(hosts=cluster.zookeeper_connect, timeout=10)
    zk.start(timeout=20)
    members: list[Member] = []
    try:
        bs = cluster.bootstrap_servers()
        admin = AdminClient({"bootstrap.servers": bs})
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3)])[TOPIC].result(15)
        produce(bs, 20, 0)
        acked: dict[int, int] = {}
        members = [Member(bs, f"m{i}", acked) for i in range(2)]

        def step_all(seconds: float, until=None) -> bool:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                for m in members:
                    m.step()
                if until is not None and until():
                    return True
            return False

        assert step_all(60, lambda: all(acked.get(p) == 20 for p in range(PARTITIONS))), \
            f"the group did not commit everything before the kill: {acked}"
        state = wait_until(lambda: offsets_leader(zk), 10, what="the state of __consumer_offsets-0")
        coordinator = state["leader"]
        assert set(state["isr"]) == {1, 2, 3}, state
        before = dict(acked)
        assert committed(bs) == before

        node = next(n for n in cluster.nodes if n.broker_id == coordinator)
        cluster.stop_broker(node, "KILL")
        new = wait_until(lambda: (s := offsets_leader(zk)) and s["leader"] not in (-1, coordinator) and s, 30,
                         what="a new leader of __consumer_offsets-0")
        assert new["leader_epoch"] > state["leader_epoch"]

        # right after the failover the new coordinator has every acknowledged commit
        survivors = ",".join(f"127.0.0.1:{cluster.broker_ports[n.name]}" for n in cluster.nodes
                             if n.broker_id != coordinator)
        after = committed(survivors)
        for p in range(PARTITIONS):
            assert after[p] >= before[p], f"committed offset of partition {p} went back: {before} -> {after}"

        # the group re-forms on the new coordinator and keeps consuming and committing
        produce(survivors, 10, 20)
        assert step_all(90, lambda: all(acked.get(p) == 30 for p in range(PARTITIONS))
                        and set().union(*(m.assignment() for m in members)) == set(range(PARTITIONS))), \
            f"the group did not re-form and commit on the new coordinator: {acked}"
        # the survivors describe the group from its new coordinator: Stable, both members
        survivor_admin = AdminClient({"bootstrap.servers": survivors})  # kept alive until the result is in
        desc = survivor_admin.describe_consumer_groups([GROUP])[GROUP].result(15)
        assert desc.coordinator.id == new["leader"]
        assert (desc.state, len(desc.members)) == (ConsumerGroupState.STABLE, 2), desc
        final = committed(survivors)
        assert final == {p: 30 for p in range(PARTITIONS)}, final
        log = cluster.log_path(next(n for n in cluster.nodes if n.broker_id == new["leader"])).read_text()
        assert "coordinator for __consumer_offsets-0" in log
        # everything was processed; what was processed twice restarted at a committed offset
        processed = [x for m in members for x in m.processed]
        assert set(processed) == {(p, o) for p in range(PARTITIONS) for o in range(30)}
    except BaseException:
        for n in cluster.nodes:  # what the brokers said, for the failure report
            text = cluster.log_path(n).read_text(errors="replace")
            print(f"---- broker {n.broker_id} log (last 60 lines)\n" + "\n".join(text.splitlines()[-60:]))
        raise
    finally:
        for m in members:
            m.c.close()
        zk.stop()
        zk.close()


# -- a commit is answered only once the ISR has it -------------------------------------------

def _raw_commit(c, offset: int) -> int:
    """A simple (assign-mode) OffsetCommit v2 of TOPIC-0; returns the partition's error code."""
    from kio.schema.offset_commit.v2.request import (OffsetCommitRequest, OffsetCommitRequestPartition,
                                                     OffsetCommitRequestTopic)
    r = c.request(OffsetCommitRequest(
        group_id="raw-group", generation_id_or_member_epoch=-1, member_id="",
        retention_time=datetime.timedelta(milliseconds=-1), topics=(OffsetCommitRequestTopic(
            name=TOPIC, partitions=(OffsetCommitRequestPartition(
                partition_index=0, committed_offset=offset, committed_metadata=None),)),)))
    return int(r.topics[0].partitions[0].error_code)


def _raw_fetch(c) -> int:
    from kio.schema.offset_fetch.v1.request import OffsetFetchRequest, OffsetFetchRequestTopic
    r = c.request(OffsetFetchRequest(group_id="raw-group", topics=(
        OffsetFetchRequestTopic(name=TOPIC, partition_indexes=(0,)),)))
    return r.topics[0].partitions[0].committed_offset


@pytest.mark.parametrize("min_isr", [1, 2])
def test_commit_is_answered_only_once_the_isr_has_it(local_cluster_factory, min_isr):
    from broker_fixtures import RawClient
    from kio.schema.find_coordinator.v0.request import FindCoordinatorRequest

    cluster = local_cluster_factory(nodes=3, zookeeper="dedicated",
                                    broker_config={**BROKER_CONFIG, "min.insync.replicas": str(min_isr)})
    zk = KazooClient(hosts=cluster.zookeeper_connect, timeout=10)
    zk.start(timeout=20)
    nodes = {n.broker_id: n for n in cluster.nodes}
    stopped: list[int] = []
    clients = []
    try:
        bs = cluster.bootstrap_servers()
        admin = AdminClient({"bootstrap.servers": bs})
        admin.create_topics([NewTopic(TOPIC, 1, 3)])[TOPIC].result(15)
        anyone = RawClient(cluster.broker_ports[cluster.nodes[0].name])
        clients.append(anyone)
        found = wait_until(lambda: (r := anyone.request(FindCoordinatorRequest(key="raw-group"))).error_code.value == 0
                           and r, 30, what="a coordinator for the group")
        state = wait_until(lambda: (s := offsets_leader(zk)) and len(s["isr"]) == 3 and s, 30,
                           what="an in-sync offsets partition")
        assert found.node_id == state["leader"]
        coord = RawClient(found.port)
        clients.append(coord)
        assert _raw_commit(coord, 5) == 0 and _raw_fetch(coord) == 5

        # followers paused: the commit is appended by the leader but not replicated
        stopped = [b for b in state["isr"] if b != state["leader"]]
        for b in stopped:
            assert nodes[b].signal("broker", "STOP")
        error = _raw_commit(coord, 9)
        isr_at_reply = offsets_leader(zk)["isr"]
        # no answer before the followers were dropped from the ISR (replica.lag.time.max.ms)
        assert isr_at_reply == [state["leader"]], isr_at_reply
        if min_isr == 1:
            assert error == 0 and _raw_fetch(coord) == 9  # committed on the (shrunk) ISR
        else:
            # ISR below min.insync.replicas: NOT_ENOUGH_REPLICAS_AFTER_APPEND -> COORDINATOR_NOT_AVAILABLE
            assert error == 15 and _raw_fetch(coord) == 5
            assert _raw_commit(coord, 10) == 15  # refused before the append now (NOT_ENOUGH_REPLICAS)
        for b in stopped:
            assert nodes[b].signal("broker", "CONT")
        stopped = []
        wait_until(lambda: len(offsets_leader(zk)["isr"]) == 3, 30, what="the followers back in the ISR")
        assert _raw_commit(coord, 12) == 0 and _raw_fetch(coord) == 12

        # and the next coordinator has it
        cluster.stop_broker(nodes[state["leader"]], "KILL")
        new = wait_until(lambda: (s := offsets_leader(zk)) and s["leader"] not in (-1, state["leader"]) and s, 30,
                         what="a new leader of __consumer_offsets-0")
        successor = RawClient(cluster.broker_ports[nodes[new["leader"]].name])
        clients.append(successor)
        assert wait_until(lambda: _raw_fetch(successor) == 12, 15, what="the new coordinator to serve offset 12")
    finally:
        for b in stopped:
            nodes[b].signal("broker", "CONT")
        for c in clients:
            c.close()
        zk.stop()
        zk.close()
