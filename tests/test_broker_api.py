"""API behaviour of a live broker: error codes, versions, long poll, pipelining, admin."""

from __future__ import annotations

import struct

import pytest
from confluent_kafka import KafkaException, Producer, TopicPartition, Consumer
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   ConfigSource, NewTopic)
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.api_versions.v4.request import ApiVersionsRequest as ApiVersionsV4

from broker.protocol import SUPPORTED
from broker.records import build_batch
from broker_fixtures import RawClient, broker, broker_factory, fetch_request, produce_req  # noqa: F401
from conftest import wait_until


def fetch_req(topic, offset, wait_ms=0, min_bytes=1, partition=0):
    return fetch_request({(topic, partition): offset}, wait_ms=wait_ms, min_bytes=min_bytes)


def make_topic(b, name, partitions=1, configs=None):
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1, config=configs or {})])[name].result(15)
    return admin


def part_of(resp):
    return resp.responses[0].partition_responses[0]


def test_api_versions_advertises_exactly_what_is_implemented_and_kip511(broker):
    c = RawClient(broker.port)
    resp = c.request(ApiVersionsRequest(client_software_name="t", client_software_version="1"))
    assert resp.error_code.value == 0
    assert {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys} == SUPPORTED
    # KIP-511: a version we do not know gets a v0 answer with UNSUPPORTED_VERSION and our ranges.
    c.send_frame(c.encode(ApiVersionsV4(client_software_name="t", client_software_version="1")))
    frame = c.recv_frame()
    corr, err, n = struct.unpack_from(">ihi", frame)
    assert corr == c.correlation and err == 35 and n == len(SUPPORTED)
    # ...and the connection stays usable.
    assert c.request(ApiVersionsRequest(client_software_name="t", client_software_version="1")).error_code.value == 0
    c.close()


def test_produce_error_codes(broker):
    make_topic(broker, "e", configs={"max.message.bytes": "2000"})
    c = RawClient(broker.port)
    good = build_batch([b"x" * 10])
    assert part_of(c.request(produce_req("e", good))).error_code.value == 0
    corrupt = bytearray(good)
    corrupt[-1] ^= 0xFF
    assert part_of(c.request(produce_req("e", bytes(corrupt)))).error_code.value == 2  # CORRUPT_MESSAGE
    assert part_of(c.request(produce_req("e", good[:-3]))).error_code.value == 2
    big = build_batch([b"y" * 5000])
    assert part_of(c.request(produce_req("e", big))).error_code.value == 10  # MESSAGE_TOO_LARGE
    assert part_of(c.request(produce_req("nope", good))).error_code.value == 3
    assert part_of(c.request(produce_req("e", good, partition=5))).error_code.value == 3
    old = bytearray(good)
    old[16] = 1  # magic 1
    assert part_of(c.request(produce_req("e", bytes(old)))).error_code.value == 43
    # Nothing bad was stored: only the two good batches.
    f = c.request(fetch_req("e", 0))
    assert f.responses[0].partitions[0].high_watermark == 1
    c.close()


def test_min_insync_replicas_above_isr_refuses_acks_all(broker):
    make_topic(broker, "m", configs={"min.insync.replicas": "2"})
    c = RawClient(broker.port)
    assert part_of(c.request(produce_req("m", build_batch([b"a"]), acks=-1))).error_code.value == 19
    assert part_of(c.request(produce_req("m", build_batch([b"a"]), acks=1))).error_code.value == 0
    c.close()


def test_fetch_offsets_long_poll_and_acks0(broker):
    make_topic(broker, "f")
    make_topic(broker, "f-marker")
    c = RawClient(broker.port, timeout=120)
    other = RawClient(broker.port)
    assert c.request(fetch_req("f", 5)).responses[0].partitions[0].error_code.value == 1  # OFFSET_OUT_OF_RANGE
    empty = c.request(fetch_req("f", 0, wait_ms=400))     # nothing to read: answered, empty, at max_wait
    assert empty.responses[0].partitions[0].records in (b"", None)
    # A waiting fetch returns as soon as data arrives on another connection: long before its own max_wait.
    c.send(fetch_req("f", 0, wait_ms=600_000))
    # Requests on a connection are handled in order, so once a produce sent behind the fetch has landed, the
    # fetch is parked.  acks=0: no response at all; the next request's answer is the next frame.
    c.send(produce_req("f-marker", build_batch([b"behind the fetch"]), acks=0))
    wait_until(lambda: other.request(fetch_req("f-marker", 0)).responses[0].partitions[0].high_watermark == 1,
               what="the produce behind the parked fetch")
    other.send(produce_req("f", build_batch([b"late"]), acks=0))
    assert b"late" in c.recv_frame()
    resp = other.request(ApiVersionsRequest(client_software_name="t", client_software_version="1"))
    assert resp.error_code.value == 0
    c.close()
    other.close()


def test_pipelined_responses_come_in_request_order(broker):
    make_topic(broker, "p")
    c = RawClient(broker.port)
    frames = []
    frames.append(c.encode(fetch_req("p", 0, wait_ms=300)))  # slow one first
    for i in range(30):
        frames.append(c.encode(produce_req("p", build_batch([str(i).encode()]))))
        frames.append(c.encode(ApiVersionsRequest(client_software_name="t", client_software_version="1")))
    first = c.correlation - len(frames) + 1
    c.sock.sendall(b"".join(struct.pack(">i", len(f)) + f for f in frames))
    corrs = []
    for _ in frames:
        corrs.append(struct.unpack_from(">i", c.recv_frame())[0])
    assert corrs == list(range(first, first + len(frames)))
    c.close()


def test_admin_topics_and_configs(broker):
    admin = make_topic(broker, "cfg", partitions=3, configs={"min.insync.replicas": "2"})
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic("cfg", 1, 1)])["cfg"].result(10)
    assert e.value.args[0].name() == "TOPIC_ALREADY_EXISTS"
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic("bad", 1, 1, config={"min.insync.replicas": "zero"})])["bad"].result(10)
    assert e.value.args[0].name() == "INVALID_CONFIG"
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic("bad/name", 1, 1)])["bad/name"].result(10)
    assert e.value.args[0].name() == "TOPIC_EXCEPTION"  # librdkafka's name for INVALID_TOPIC_EXCEPTION (17)
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic("rf3", 1, 3)])["rf3"].result(10)
    assert e.value.args[0].name() == "INVALID_REPLICATION_FACTOR"

    res = ConfigResource("topic", "cfg")
    cfg = admin.describe_configs([res])[res].result(10)
    assert cfg["min.insync.replicas"].value == "2"
    assert cfg["min.insync.replicas"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert cfg["unclean.leader.election.enable"].value == "false"
    assert cfg["unclean.leader.election.enable"].source == ConfigSource.DEFAULT_CONFIG.value

    alter = ConfigResource("topic", "cfg", incremental_configs=[
        ConfigEntry("min.insync.replicas", None, incremental_operation=AlterConfigOpType.DELETE),
        ConfigEntry("unclean.leader.election.enable", "true", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([alter])[alter].result(10)
    cfg = admin.describe_configs([res])[res].result(10)
    assert cfg["min.insync.replicas"].value == "1" and cfg["min.insync.replicas"].is_default
    assert cfg["unclean.leader.election.enable"].value == "true"
    bad = ConfigResource("topic", "cfg", incremental_configs=[
        ConfigEntry("min.insync.replicas", "-3", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException):
        admin.incremental_alter_configs([bad])[bad].result(10)

    md = admin.list_topics(timeout=10)
    assert len(md.topics["cfg"].partitions) == 3
    assert md.topics["cfg"].partitions[0].leader == 0 and md.topics["cfg"].partitions[0].isrs == [0]
    admin.delete_topics(["cfg"])["cfg"].result(10)
    assert "cfg" not in admin.list_topics(timeout=10).topics
    with pytest.raises(KafkaException) as e:
        admin.delete_topics(["cfg"])["cfg"].result(10)
    assert e.value.args[0].name() == "UNKNOWN_TOPIC_OR_PART"


def test_auto_create_and_disabled(broker_factory):
    b = broker_factory({"num.partitions": "2"})
    from kafka import KafkaProducer
    p = KafkaProducer(bootstrap_servers=b.bootstrap)
    assert p.partitions_for("auto") == {0, 1}
    p.close()
    b2 = broker_factory({"auto.create.topics.enable": "false"})
    admin = AdminClient({"bootstrap.servers": b2.bootstrap})
    c = Consumer({"bootstrap.servers": b2.bootstrap, "group.id": "g", "allow.auto.create.topics": True})
    md = c.list_topics("ghost", timeout=10)
    assert md.topics["ghost"].error is not None
    c.close()
    assert "ghost" not in admin.list_topics(timeout=10).topics


def test_list_offsets_by_time(broker):
    make_topic(broker, "ts")
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        p.produce("ts", f"v{i}".encode(), partition=0, timestamp=1_000_000 + i * 1000)
        p.flush(10)  # one batch each, so each has its own timestamp range
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g"})
    try:
        found = c.offsets_for_times([TopicPartition("ts", 0, 1_004_500)], timeout=10)
        assert found[0].offset == 5
        found = c.offsets_for_times([TopicPartition("ts", 0, 9_999_999)], timeout=10)
        assert found[0].offset == -1
        assert c.get_watermark_offsets(TopicPartition("ts", 0), timeout=10) == (0, 10)
    finally:
        c.close()


def test_offset_for_leader_epoch_standalone(broker):
    from kio.schema.offset_for_leader_epoch.v3.request import (OffsetForLeaderEpochRequest, OffsetForLeaderPartition,
                                                                OffsetForLeaderTopic)
    make_topic(broker, "olep")
    c = RawClient(broker.port)
    c.request(produce_req("olep", build_batch([b"a", b"b", b"c"])))

    def ask(epoch, current=-1, topic="olep"):
        resp = c.request(OffsetForLeaderEpochRequest(replica_id=-1, topics=(OffsetForLeaderTopic(
            topic=topic, partitions=(OffsetForLeaderPartition(partition=0, current_leader_epoch=current,
                                                              leader_epoch=epoch),)),)))
        p = resp.topics[0].partitions[0]
        return p.error_code.value, p.leader_epoch, p.end_offset
    assert ask(0) == (0, 0, 3)            # the only epoch ends at the log end
    assert ask(0, current=0) == (0, 0, 3)
    assert ask(0, current=1)[0] == 75     # UNKNOWN_LEADER_EPOCH: newer than this broker knows
    assert ask(7)[1:] == (-1, -1)         # an epoch this log never had: undefined
    assert ask(0, topic="nope")[0] == 3
