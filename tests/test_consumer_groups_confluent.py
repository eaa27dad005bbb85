"""Consumer groups with confluent-kafka (librdkafka) against a real acked-broker process.

Subscribe, split, leave and take over with the rebalance callbacks; manual commit of
offset + 1; restarted consumers (and a restarted broker) resume at the committed
offsets; auto-commit commits on its timer.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from broker_fixtures import GROUP_BROKER, broker_factory, gbroker  # noqa: F401
from conftest import wait_until

pytestmark = pytest.mark.timeout(180)
#: longer than any wait of these tests
SESSION_OUTLASTING_WAITS_MS = 60_000


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(15)


def produce(bootstrap: str, topic: str, partitions: int, per_partition: int, start: int = 0) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(start, start + per_partition):
        for part in range(partitions):
            p.produce(topic, f"{part}:{i}".encode(), partition=part)
    assert p.flush(30) == 0


def consumer(bootstrap: str, group: str, **conf) -> Consumer:
    base = {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "session.timeout.ms": 2000, "heartbeat.interval.ms": 300, "enable.auto.commit": False,
            "fetch.wait.max.ms": 100}
    base.update(conf)
    return Consumer(base)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """Committed offsets as OffsetFetch returns them, from a client outside the group."""
    c = consumer(bootstrap, group)
    try:
        return {tp.partition: tp.offset
                for tp in c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)}
    finally:
        c.close()


class Tracked:
    """A subscribed consumer that records its assign/revoke callbacks and what it polls."""

    def __init__(self, name: str, c: Consumer, topic: str, on_revoke=None):
        self.name, self.c = name, c
        self.events: list[tuple[str, list[int]]] = []
        self.records: list[tuple[int, int]] = []
        self.user_revoke = on_revoke

        def assigned(_c, parts):
            self.events.append(("assign", sorted(p.partition for p in parts)))

        def revoked(_c, parts):
            self.events.append(("revoke", sorted(p.partition for p in parts)))
            if self.user_revoke:
                self.user_revoke(self, parts)

        c.subscribe([topic], on_assign=assigned, on_revoke=revoked)

    def poll(self, timeout: float = 0.1):
        m = self.c.poll(timeout)
        if m is None:
            return None
        assert m.error() is None or m.error().code() == KafkaError._PARTITION_EOF, m.error()
        if m.error():
            return None
        self.records.append((m.partition(), m.offset()))
        return m

    def assignment(self) -> set[int]:
        return {tp.partition for tp in self.c.assignment()}


def poll_until(members: list[Tracked], cond, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll every member (which runs their callbacks) until cond() holds."""
    def polled() -> bool:
        for m in members:
            m.poll(0.05)
        return cond()
    assert wait_until(polled, timeout, 0), f"timed out waiting for {what}: " + "; ".join(
        f"{m.name}: {sorted(m.assignment())} {m.events}" for m in members)


def test_three_consumers_split_six_partitions_then_one_leaves(gbroker):
    bs = gbroker.bootstrap
    create_topic(bs, "split", 6)
    produce(bs, "split", 6, 5)
    # sessions outlast every wait below: a takeover within one is the LeaveGroup's doing, not an expiry's
    members = [Tracked(f"c{i}", consumer(bs, "split-group", **{"session.timeout.ms": SESSION_OUTLASTING_WAITS_MS}),
                       "split") for i in range(3)]
    try:
        poll_until(members, lambda: all(len(m.assignment()) == 2 for m in members)
                   and set().union(*(m.assignment() for m in members)) == set(range(6)),
                   what="an even split of six partitions over three consumers")
        # disjoint: every partition has exactly one owner
        owners = [p for m in members for p in m.assignment()]
        assert sorted(owners) == list(range(6))
        for m in members:
            assert ("assign", sorted(m.assignment())) in m.events
        poll_until(members, lambda: sum(len(m.records) for m in members) >= 30, what="all 30 records")
        # the admin API sees the same group through ListGroups and DescribeGroups
        admin = AdminClient({"bootstrap.servers": bs})
        listed = admin.list_consumer_groups().result(15)
        assert [g.group_id for g in listed.valid] == ["split-group"]
        desc = admin.describe_consumer_groups(["split-group"])["split-group"].result(15)
        assert (desc.state, desc.coordinator.id, desc.partition_assignor) == (ConsumerGroupState.STABLE, 0, "range")
        assert sorted(tp.partition for m in desc.members for tp in m.assignment.topic_partitions) == list(range(6))
        leaver, stay = members[0], members[1:]
        gone = leaver.assignment()
        leaver.c.close()  # LeaveGroup: the others rebalance at once, no session timeout
        members = stay
        poll_until(stay, lambda: set().union(*(m.assignment() for m in stay)) == set(range(6))
                   and all(len(m.assignment()) == 3 for m in stay),
                   timeout=30, what="the two remaining consumers to take over all six partitions")
        for m in stay:
            assert any(e[0] == "revoke" for e in m.events), f"{m.name} had no revoke callback: {m.events}"
            assert m.events[-1] == ("assign", sorted(m.assignment())), m.events
        assert gone <= set().union(*(m.assignment() for m in stay))
        # the takeover consumes what arrives next on the partitions that moved
        produce(bs, "split", 6, 1, start=5)
        poll_until(stay, lambda: {p for m in stay for p, o in m.records if o == 5} == set(range(6)),
                   what="the next record of every partition")
    finally:
        for m in members:
            m.c.close()


def test_manual_commit_offset_plus_one_and_resume_after_consumer_and_broker_restart(broker_factory):  # noqa: F811
    b = broker_factory(GROUP_BROKER)
    bs = b.bootstrap
    create_topic(bs, "manual", 2)
    produce(bs, "manual", 2, 20)
    c = Tracked("c", consumer(bs, "manual-group"), "manual")
    processed: dict[int, int] = {}

    def process_one() -> bool:
        m = c.poll(0.1)
        if m is not None and m.offset() <= 11:
            processed[m.partition()] = m.offset()
            # commit exactly the next record to read: the processed offset + 1
            c.c.commit(offsets=[TopicPartition("manual", m.partition(), m.offset() + 1)], asynchronous=False)
        return len(processed) == 2 and min(processed.values()) >= 11
    try:
        assert wait_until(process_one, 30, 0), f"consumed only {processed}"
    finally:
        c.c.close()
    assert committed(bs, "manual-group", "manual", 2) == {0: 12, 1: 12}

    # a new consumer of the group starts exactly at the committed offsets
    def first_offsets() -> dict[int, int]:
        r = Tracked("r", consumer(bs, "manual-group"), "manual")
        try:
            firsts: dict[int, int] = {}
            poll_until([r], lambda: (firsts.update({p: o for p, o in r.records if p not in firsts})
                                     or len(firsts) == 2), what="a record of each partition")
            return firsts
        finally:
            r.c.close()

    assert first_offsets() == {0: 12, 1: 12}
    # the offsets live in __consumer_offsets: a broker killed and restarted replays them
    b.kill()
    b.start()
    assert committed(bs, "manual-group", "manual", 2) == {0: 12, 1: 12}
    assert first_offsets() == {0: 12, 1: 12}


def test_auto_commit_commits_on_its_timer(gbroker):
    bs = gbroker.bootstrap
    create_topic(bs, "auto", 1)
    produce(bs, "auto", 1, 10)
    c = Tracked("c", consumer(bs, "auto-group", **{"enable.auto.commit": True,
                                                  "auto.commit.interval.ms": 1000}), "auto")
    try:
        poll_until([c], lambda: len(c.records) == 10, what="10 records")
        # no commit call anywhere: the timer commits the position (10)
        poll_until([c], lambda: committed(bs, "auto-group", "auto", 1)[0] == 10, 10, "auto-commit of 10")
        produce(bs, "auto", 1, 5, start=10)
        poll_until([c], lambda: len(c.records) == 15, what="5 more records")
        poll_until([c], lambda: committed(bs, "auto-group", "auto", 1)[0] == 15, 10, "auto-commit of 15")
    finally:
        c.c.close()
