"""Real clients against a real acked-broker: 100,000 messages round-trip per setting."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from broker_fixtures import broker, broker_factory  # noqa: F401

N = 100_000
PARTITIONS = 4


def create_topic(bootstrap: str, name: str, partitions: int = PARTITIONS, configs=None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1, config=configs or {})])[name].result(15)


def produce_confluent(bootstrap: str, topic: str, n: int, **conf) -> list[str]:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **conf})
    errors = []

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)

    for i in range(n):
        while True:
            try:
                producer.produce(topic, f"{i % PARTITIONS}:{i // PARTITIONS}".encode(),
                                 partition=i % PARTITIONS, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    assert errors == []
    return errors


def consume_confluent(bootstrap: str, topic: str, n: int) -> dict[int, list[tuple[int, str]]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "roundtrip",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        got: dict[int, list[tuple[int, str]]] = {p: [] for p in range(PARTITIONS)}
        total = 0
        deadline = time.monotonic() + 60
        while total < n and time.monotonic() < deadline:
            for m in consumer.consume(10000, 1.0):
                assert m.error() is None or m.error().code() == KafkaError._PARTITION_EOF, m.error()
                if m.error():
                    continue
                got[m.partition()].append((m.offset(), m.value().decode()))
                total += 1
        # Seek: re-read a known offset of partition 1 and get the same record.
        # (librdkafka can only seek a partition that is already being fetched.)
        consumer.assign([TopicPartition(topic, 1, 0)])
        deadline = time.monotonic() + 10
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
        assert msg is not None and msg.offset() == 0
        consumer.seek(TopicPartition(topic, 1, 12345))
        msg = None
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.offset() != 0 and msg.error() is None:
                break
        assert msg is not None and msg.error() is None
        assert (msg.offset(), msg.value().decode()) == (12345, "1:12345")
        return got
    finally:
        consumer.close()


def assert_exactly_once_in_order(got: dict[int, list[tuple[int, str]]], n: int) -> None:
    for p in range(PARTITIONS):
        values = [v for _o, v in got[p]]
        expected = [f"{p}:{k}" for k in range(n // PARTITIONS)]
        assert len(values) == len(expected), f"partition {p}: read {len(values)}, produced {len(expected)}"
        assert values == expected, f"partition {p}: values not once and in order"
        assert [o for o, _v in got[p]] == list(range(len(expected)))


@pytest.mark.parametrize("conf", [
    {"acks": "0"},
    {"acks": "1"},
    {"acks": "all"},
    {"acks": "all", "enable.idempotence": True},
    {"acks": "1", "enable.idempotence": False, "max.in.flight.requests.per.connection": 1},
], ids=["acks0", "acks1", "acksall", "acksall-idempotent", "acks1-inflight1"])
def test_confluent_roundtrip(broker, conf):
    create_topic(broker.bootstrap, "rt")
    produce_confluent(broker.bootstrap, "rt", N, **conf)
    got = consume_confluent(broker.bootstrap, "rt", N)
    assert_exactly_once_in_order(got, N)


@pytest.mark.parametrize("conf", [
    {"acks": 1},
    {"acks": "all", "enable_idempotence": True},
    {"acks": 0},
], ids=["acks1", "acksall-idempotent", "acks0"])
def test_kafka_python_roundtrip(broker, conf):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP

    create_topic(broker.bootstrap, "kp")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5,
                             batch_size=64 * 1024, **conf)
    futures = []
    for i in range(N):
        futures.append(producer.send("kp", f"{i % PARTITIONS}:{i // PARTITIONS}".encode(),
                                     partition=i % PARTITIONS))
    producer.flush(60)
    for f in futures[:: 997] + futures[-1:]:
        f.get(10)  # raises if the send failed
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                             max_poll_records=10000, fetch_max_wait_ms=100)
    try:
        tps = [KTP("kp", p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        got = {p: [] for p in range(PARTITIONS)}
        total = 0
        deadline = time.monotonic() + 90
        while total < N and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(1000).items():
                for m in msgs:
                    got[tp.partition].append((m.offset, m.value.decode()))
                    total += 1
        assert_exactly_once_in_order(got, N)
        assert consumer.end_offsets(tps) == {tp: N // PARTITIONS for tp in tps}
        assert consumer.beginning_offsets(tps) == {tp: 0 for tp in tps}
        consumer.seek(tps[2], 777)
        records = consumer.poll(5000).get(tps[2], [])
        assert records and (records[0].offset, records[0].value) == (777, b"2:777")
    finally:
        consumer.close()
