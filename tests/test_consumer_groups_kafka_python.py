"""Consumer groups with kafka-python against a real acked-broker process: the same group
behaviour as test_consumer_groups_confluent.py, through kafka-python's own coordinator."""

from __future__ import annotations

import threading

import pytest
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata

from broker_fixtures import broker_factory, gbroker  # noqa: F401
from conftest import wait_until

pytestmark = pytest.mark.timeout(180)
#: longer than any wait of these tests
SESSION_OUTLASTING_WAITS_MS = 60_000


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, partitions: int, per_partition: int, start: int = 0) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        futures = [p.send(topic, f"{part}:{i}".encode(), partition=part)
                   for i in range(start, start + per_partition) for part in range(partitions)]
        p.flush(30)
        for f in futures:
            f.get(10)
    finally:
        p.close()


def consumer(bootstrap: str, group: str, **conf) -> KafkaConsumer:
    base = dict(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                session_timeout_ms=2000, heartbeat_interval_ms=300, enable_auto_commit=False,
                fetch_max_wait_ms=100)
    base.update(conf)
    return KafkaConsumer(**base)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    c = consumer(bootstrap, group)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        c.close(autocommit=False)


POLL_MS = 500  # long enough for a join to complete within one poll


class Tracked(ConsumerRebalanceListener):
    """A subscribed KafkaConsumer polled by its own thread, as an application runs one.

    Polling several consumers in turn from one thread does not work with kafka-python
    3.0.12: a rebalance completes only when all members rejoin, so a member's poll times
    out with its join in flight, and if that join completes before the next poll the
    client discards the finished join and sends a new one, which starts another rebalance,
    for ever. `on_record(consumer, message)` runs in the polling thread (commits go there).
    """

    def __init__(self, name: str, c: KafkaConsumer, topic: str, on_record=None):
        self.name, self.c = name, c
        self.on_record = on_record
        self.lock = threading.Lock()
        self.events: list[tuple[str, list[int]]] = []
        self.records: list[tuple[int, int]] = []
        self.assigned: set[int] = set()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        # Metadata first: a member that joins before it knows the topic assigns nothing and
        # rejoins at once, the path on which kafka-python 3.0.12 can strand itself when a
        # poll times out mid-join (it then thinks no rejoin is needed and never finishes).
        assert c.partitions_for_topic(topic), f"no metadata for {topic}"
        c.subscribe([topic], listener=self)
        self.thread = threading.Thread(target=self._run, name=f"poll-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for _tp, msgs in self.c.poll(POLL_MS).items():
                    for m in msgs:
                        with self.lock:
                            self.records.append((m.partition, m.offset))
                        if self.on_record:
                            self.on_record(self.c, m)
        except BaseException as e:  # reported by the test's waits
            self.error = e

    def on_partitions_revoked(self, revoked):
        with self.lock:
            self.events.append(("revoke", sorted(p.partition for p in revoked)))
            self.assigned -= {p.partition for p in revoked}

    def on_partitions_assigned(self, assigned):
        with self.lock:
            self.events.append(("assign", sorted(p.partition for p in assigned)))
            self.assigned = {p.partition for p in assigned}

    def assignment(self) -> set[int]:
        with self.lock:
            return set(self.assigned)

    def close(self) -> None:
        """Stop polling, then close (LeaveGroup) from this thread: the poller has ended."""
        self._stop.set()
        self.thread.join(10)
        self.c.close(autocommit=False)


def wait_for(members: list[Tracked], cond, timeout: float = 30.0, what: str = "condition") -> None:
    """Until cond() holds, failing at once if a member's polling thread failed."""
    def healthy_and(cond) -> bool:
        for m in members:
            assert m.error is None, f"{m.name} failed: {m.error!r}"
        return cond()
    assert wait_until(lambda: healthy_and(cond), timeout, 0.05), f"timed out waiting for {what}: " + "; ".join(
        f"{m.name}: {sorted(m.assignment())} {m.events}" for m in members)


def test_three_consumers_split_six_partitions_then_one_leaves(gbroker):
    bs = gbroker.bootstrap
    create_topic(bs, "split", 6)
    produce(bs, "split", 6, 5)
    # sessions outlast every wait below: a takeover within one is the LeaveGroup's doing, not an expiry's
    members = [Tracked(f"k{i}", consumer(bs, "kp-split", session_timeout_ms=SESSION_OUTLASTING_WAITS_MS), "split")
               for i in range(3)]
    try:
        wait_for(members, lambda: all(len(m.assignment()) == 2 for m in members)
                 and set().union(*(m.assignment() for m in members)) == set(range(6)),
                 what="an even split of six partitions over three consumers")
        assert sorted(p for m in members for p in m.assignment()) == list(range(6))
        for m in members:
            assert m.events[-1] == ("assign", sorted(m.assignment())), m.events
        wait_for(members, lambda: sum(len(m.records) for m in members) >= 30, what="all 30 records")
        leaver, stay = members[0], members[1:]
        leaver.close()  # sends LeaveGroup
        members = stay
        wait_for(stay, lambda: set().union(*(m.assignment() for m in stay)) == set(range(6))
                 and all(len(m.assignment()) == 3 for m in stay),
                 timeout=30, what="the two remaining consumers to take over all six partitions")
        for m in stay:
            revokes = [e for e in m.events if e[0] == "revoke"]
            assert revokes and revokes[-1][1], f"{m.name}: no revoke of its old partitions: {m.events}"
            assert m.events[-1] == ("assign", sorted(m.assignment())), m.events
        # the takeover consumes what arrives next on every partition
        produce(bs, "split", 6, 1, start=5)
        wait_for(stay, lambda: {p for m in stay for p, o in list(m.records) if o == 5} == set(range(6)),
                 what="the next record of every partition")
    finally:
        for m in members:
            m.close()


def test_manual_commit_offset_plus_one_and_resume(gbroker):
    bs = gbroker.bootstrap
    create_topic(bs, "manual", 2)
    produce(bs, "manual", 2, 20)
    done: dict[int, int] = {}

    def process_and_commit(c, m):
        if m.offset <= 7:
            done[m.partition] = m.offset
            # commit exactly the next record to read: the processed offset + 1
            c.commit({TopicPartition("manual", m.partition): OffsetAndMetadata(m.offset + 1, "", -1)})

    c = Tracked("k", consumer(bs, "kp-manual"), "manual", on_record=process_and_commit)
    try:
        wait_for([c], lambda: dict(done) == {0: 7, 1: 7}, what="records 0..7 of both partitions")
    finally:
        c.close()
    assert committed(bs, "kp-manual", "manual", 2) == {0: 8, 1: 8}
    r = Tracked("r", consumer(bs, "kp-manual"), "manual")
    try:
        wait_for([r], lambda: {p for p, _ in list(r.records)} == {0, 1}, what="records of both partitions")
        firsts = {}
        for p, o in list(r.records):
            firsts.setdefault(p, o)
        assert firsts == {0: 8, 1: 8}
    finally:
        r.close()


def test_auto_commit_commits_on_its_timer(gbroker):
    bs = gbroker.bootstrap
    create_topic(bs, "auto", 1)
    produce(bs, "auto", 1, 10)
    c = Tracked("k", consumer(bs, "kp-auto", enable_auto_commit=True, auto_commit_interval_ms=1000), "auto")
    try:
        wait_for([c], lambda: len(c.records) == 10, what="10 records")
        # no commit call anywhere: kafka-python commits from poll() once the interval has passed
        wait_for([c], lambda: committed(bs, "kp-auto", "auto", 1)[0] == 10, 10, "auto-commit of 10")
    finally:
        c.close()
