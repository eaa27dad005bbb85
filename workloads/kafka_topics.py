"""The Kafka topics a workload writes into: keys to partitions, topic creation, leaders, log ends.

A workload's key names one partition of one topic (ARCHITECTURE.md, "History
format"); `KeyMap` is that naming, and `Topics` is the harness's own admin
connection to the cluster: it creates topics as keys need them (the next one
ahead, in the background), waits for their leaders, answers the nemesis's
role questions (leader, replicas, ISR, controller, a group's coordinator) from
fresh metadata, and reads the partitions' high watermarks. Every Kafka workload
shares it (the queue workload now; the pipeline workload's topics too), and
the runner holds none of it. In Jepsen the database's own queue client
(jepsen.redpanda.workload.queue, which jepsen.tests.kafka's workload map is
given) creates topics in its setup; here one admin connection per run does it,
outside the clients and their ops' latencies.
"""
from __future__ import annotations

import threading
import time

#: Kafka's group metadata topic
OFFSETS_TOPIC = "__consumer_offsets"


class KeyMap:
    """A key is one partition of one topic: key k is partition k % P of topic <prefix>k//P."""

    def __init__(self, partitions_per_topic: int = 8, prefix: str = "acked-queue-"):
        self.ppt = partitions_per_topic
        self.prefix = prefix
        self._keys: dict[tuple[str, int], str | None] = {}   # key_of, for every record a poll returns

    def topic_partition(self, key: str) -> tuple[str, int]:
        k = int(key)
        return f"{self.prefix}{k // self.ppt}", k % self.ppt

    def topic_index(self, key: str) -> int:
        return int(key) // self.ppt

    def topic(self, index: int) -> str:
        return f"{self.prefix}{index}"

    def key_of(self, topic: str, partition: int) -> str | None:
        try:
            return self._keys[(topic, partition)]
        except KeyError:
            pass
        key = None
        if topic.startswith(self.prefix):
            try:
                key = str(int(topic[len(self.prefix):]) * self.ppt + partition)
            except ValueError:
                pass
        self._keys[(topic, partition)] = key
        return key


class Topics:
    """The harness's own admin connection: creates topics as keys need them, finds leaders."""

    def __init__(self, bootstrap: str, keymap: KeyMap, replication_factor: int, topic_config: dict[str, str],
                 logger=None):
        from confluent_kafka.admin import AdminClient
        self.keymap = keymap
        self.rf = replication_factor
        # replication.factor is a CreateTopics field, not a topic config entry
        self.config = {k: v for k, v in topic_config.items() if k != "replication.factor"}
        conf = {"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000}
        if logger is not None:
            conf["logger"] = logger
        self.admin = AdminClient(conf)
        self._created: set[int] = set()
        self._ahead: set[int] = set()
        self._lock = threading.Lock()

    def ensure(self, key: str, timeout: float = 30.0) -> None:
        """Make sure the key's topic exists; the next topic is created in the background, so that key
        rotation rarely waits for a topic creation."""
        index = self.keymap.topic_index(key)
        if index in self._created:
            if index + 1 not in self._created and index + 1 not in self._ahead:
                self._create_ahead(index + 1)
            return
        with self._lock:
            if index not in self._created:
                self._create([index], timeout)
                self._created.add(index)
        self.ensure(key, timeout)

    def _create_ahead(self, index: int) -> None:
        with self._lock:
            if index in self._ahead or index in self._created:
                return
            self._ahead.add(index)

        def create():
            try:
                with self._lock:
                    if index not in self._created:
                        self._create([index], 30.0)
                        self._created.add(index)
            except Exception:
                pass  # the op that needs it creates it synchronously and reports the error
            finally:
                self._ahead.discard(index)
        threading.Thread(target=create, name=f"create-topic-{index}", daemon=True).start()

    def _create(self, indexes: list[int], timeout: float) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import NewTopic
        topics = [NewTopic(self.keymap.topic(i), num_partitions=self.keymap.ppt, replication_factor=self.rf,
                           config=dict(self.config)) for i in indexes]
        deadline = time.monotonic() + timeout
        while True:
            futures = self.admin.create_topics(topics, operation_timeout=min(10.0, timeout), request_timeout=min(15.0, timeout))
            errors = []
            for name, fut in futures.items():
                try:
                    fut.result()
                except KafkaException as e:
                    if e.args[0].name() != "TOPIC_ALREADY_EXISTS":
                        errors.append(f"{name}: {e.args[0].str()}")
            if not errors:
                self.wait_for_leaders([self.keymap.topic(i) for i in indexes], deadline - time.monotonic())
                return
            if time.monotonic() > deadline:
                raise RuntimeError("could not create topics: " + "; ".join(errors))
            time.sleep(0.5)

    def wait_for_leaders(self, topics: list[str], timeout: float) -> bool:
        """Wait until every partition of these topics has a leader; False on timeout."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            try:
                md = self.admin.list_topics(timeout=5)
                if all(t in md.topics and not md.topics[t].error and len(md.topics[t].partitions) == self.keymap.ppt
                       and all(p.leader >= 0 for p in md.topics[t].partitions.values()) for t in topics):
                    return True
            except Exception:
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)

    def high_watermarks(self, keys: list[str], timeout: float = 5.0) -> dict[str, int]:
        """key -> its partition's high watermark (the offset after the last readable record), from one
        ListOffsets request (OffsetSpec.latest); raises when the request or any partition's answer fails."""
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec
        req = {TopicPartition(*self.keymap.topic_partition(k)): OffsetSpec.latest() for k in keys}
        futures = self.admin.list_offsets(req, request_timeout=timeout)
        return {self.keymap.key_of(tp.topic, tp.partition): fut.result().offset for tp, fut in futures.items()}

    def close(self) -> None:
        self.admin = None  # librdkafka destroys the handle with the last reference

    def created_topics(self) -> list[str]:
        return [self.keymap.topic(i) for i in sorted(self._created)]

    def _partition_metadata(self, key: str):
        topic, partition = self.keymap.topic_partition(key)
        try:
            md = self.admin.list_topics(topic=topic, timeout=5)
            return md.topics[topic].partitions.get(partition)
        except Exception:
            return None

    def leader_of(self, key: str) -> int | None:
        """broker.id of the key's partition leader, from a fresh metadata request; None if unknown."""
        p = self._partition_metadata(key)
        return p.leader if p is not None and p.leader >= 0 else None

    def replicas_of(self, key: str) -> list[int]:
        p = self._partition_metadata(key)
        return list(p.replicas) if p is not None else []

    def isr_of(self, key: str) -> list[int]:
        p = self._partition_metadata(key)
        return sorted(p.isrs) if p is not None else []

    def controller(self) -> int | None:
        try:
            cid = self.admin.list_topics(timeout=5).controller_id
            return cid if cid is not None and cid >= 0 else None
        except Exception:
            return None

    def coordinator_of(self, group: str) -> int | None:
        """The group's coordinator: the leader of its __consumer_offsets partition, by Kafka's rule, from plain
        metadata. Not describe_consumer_groups: librdkafka's coordinator requests aborted the harness process
        (assertion `eonce->refcnt > 0` in rd_kafka_enq_once_del_source_return) with brokers failing around it,
        once in five 60 s runs of every fault mixed."""
        from broker.offsets import partition_for
        try:
            md = self.admin.list_topics(topic=OFFSETS_TOPIC, timeout=5).topics.get(OFFSETS_TOPIC)
            if md is None or md.error is not None or not md.partitions:
                return None
            p = md.partitions.get(partition_for(group, len(md.partitions)))
            return p.leader if p is not None and p.leader >= 0 else None
        except Exception:
            return None


class KafkaRoles:
    """A Kafka workload's answers to the nemesis's role questions (nemesis.core.Roles): leaders, ISRs and
    the controller from fresh metadata requests, the group's coordinator, and the keys being written now
    (the queue and pipeline workloads both answer with it)."""

    def __init__(self, topics: Topics, group: str, hot_keys):
        self.topics, self.group, self._hot_keys = topics, group, hot_keys

    def leader_of(self, key: str) -> int | None:
        return self.topics.leader_of(key)

    def replicas_of(self, key: str) -> list[int]:
        return self.topics.replicas_of(key)

    def isr_of(self, key: str) -> list[int]:
        return self.topics.isr_of(key)

    def controller(self) -> int | None:
        return self.topics.controller()

    def coordinator_of(self, group: str | None = None) -> int | None:
        return self.topics.coordinator_of(group or self.group)

    def hot_keys(self) -> list[str]:
        return self._hot_keys()
