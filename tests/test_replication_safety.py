"""Safety rules of the replicated broker, each shown in its dangerous case on a real 3-broker cluster (local
broker processes, a real ZooKeeper), with raw Kafka requests where the test must see exact answers.

Each rule was checked to be pinned: breaking it with a one-line edit of the broker makes its test fail
(the edits are listed in each test's docstring).
"""
from __future__ import annotations

import datetime

import pytest
from kio.schema.init_producer_id.v4.request import InitProducerIdRequest
from kio.schema.list_offsets.v7.request import ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic
from kio.schema.offset_for_leader_epoch.v3.request import (OffsetForLeaderEpochRequest, OffsetForLeaderPartition,
                                                            OffsetForLeaderTopic)
from kio.schema.produce.v9.request import ProduceRequest

from broker.errors import (FENCED_LEADER_EPOCH, NONE, NOT_ENOUGH_REPLICAS_AFTER_APPEND, NOT_LEADER_OR_FOLLOWER,
                           REQUEST_TIMED_OUT, UNKNOWN_LEADER_EPOCH)
from broker.records import build_batch
from broker_fixtures import RawClient, batch_offsets, fetch_request, fetched, produce_req
from conftest import wait_until
from replicated_cluster import TOPIC, acked, make_cluster  # noqa: F401

pytestmark = pytest.mark.timeout(180)

KEY = (TOPIC, 0)
#: paused followers stay in the ISR (and registered) however long a test holds them
HOLD_FOLLOWERS = {"replica.lag.time.max.ms": "60000", "zookeeper.session.timeout.ms": "20000"}
#: how long an answer that must not come yet is looked for: twenty of the leader's 50 ms clock ticks, which
#: time out and complete parked produces, and far longer than an answer takes once it is due
NOT_YET_S = 1.0


def produce_answer(resp) -> tuple[int, int]:
    part = resp.responses[0].partition_responses[0]
    return part.error_code.value, part.base_offset


def log_end(client: RawClient, leader_epoch: int) -> int:
    """The leader's log end offset: OffsetForLeaderEpoch of its current epoch ends there (KIP-101)."""
    resp = client.request(OffsetForLeaderEpochRequest(replica_id=-1, topics=(OffsetForLeaderTopic(
        topic=TOPIC, partitions=(OffsetForLeaderPartition(partition=0, leader_epoch=leader_epoch),)),)))
    p = resp.topics[0].partitions[0]
    assert p.error_code.value == NONE and p.leader_epoch == leader_epoch, p
    return p.end_offset


def latest_offset(client: RawClient) -> int:
    resp = client.request(ListOffsetsRequest(replica_id=-1, isolation_level=0, topics=(ListOffsetsTopic(
        name=TOPIC, partitions=(ListOffsetsPartition(partition_index=0, timestamp=-1),)),)))
    p = resp.topics[0].partitions[0]
    assert p.error_code.value == NONE, p
    return p.offset


def assert_stops_at_the_high_watermark(part, start: int, hw: int) -> None:
    offsets = batch_offsets(part.records)
    assert part.error_code.value == NONE and part.high_watermark == hw, part
    assert offsets and offsets[0][0] <= start <= offsets[0][1], (start, offsets)
    assert offsets[-1][1] == hw - 1, f"a consumer fetch from {start} returned up to {offsets[-1][1]}, HW {hw}"


def test_consumers_never_read_above_the_high_watermark_but_followers_read_the_tail(make_cluster):
    """Followers paused (still in the ISR), acks=1 writes past the HW: a consumer's Fetch from *below* the HW
    stops at it and reports it below the log end, with or without a fetch session; ListOffsets(latest) is the
    HW; a follower's fetch (replica_id >= 0) reads on to the log end.  Checked by breaking it: Partition.read
    limited by the HW only when the fetch starts at or past it; ListOffsets(-1) answering the log end."""
    c = make_cluster(**HOLD_FOLLOWERS)
    c.create_topic()
    committed = c.produce([f"c{i}" for i in range(8)])
    assert acked(committed) == set(committed)
    leader = c.state()["leader"]
    followers = c.pause_followers(leader)
    tail = c.produce([f"tail{i}" for i in range(4)], acks="1")
    assert acked(tail) == set(tail)
    hw, leo = max(committed.values()) + 1, max(tail.values()) + 1
    client = c.raw(leader)
    try:
        for start in (0, 3, hw - 1):
            assert_stops_at_the_high_watermark(fetched(client.request(fetch_request({KEY: start})))[KEY], start, hw)
        at_hw = fetched(client.request(fetch_request({KEY: hw})))[KEY]
        assert at_hw.error_code.value == NONE and not batch_offsets(at_hw.records)
        assert latest_offset(client) == hw

        opened = client.request(fetch_request({KEY: 0}, session_epoch=0))          # KIP-227: opens a session
        assert opened.session_id != 0
        assert_stops_at_the_high_watermark(fetched(opened)[KEY], 0, hw)
        incremental = client.request(fetch_request({KEY: 2}, session_id=opened.session_id, session_epoch=1))
        assert incremental.error_code.value == NONE
        assert_stops_at_the_high_watermark(fetched(incremental)[KEY], 2, hw)

        follower = fetched(client.request(fetch_request({KEY: hw}, replica_id=followers[0])))[KEY]
        assert follower.error_code.value == NONE and follower.high_watermark == hw
        assert batch_offsets(follower.records)[-1][1] == leo - 1 > hw, "a follower reads up to the log end"
        assert sorted(c.state()["isr"]) == [1, 2, 3], "the HW was held by in-sync followers, not an ISR change"
    finally:
        client.close()
    for f in followers:
        c.signal(f, "CONT")
    assert set(committed) | set(tail) <= set(c.read_all(min_end=leo))


def test_a_retry_reaching_the_new_leader_after_a_failover_is_answered_with_its_original_offset(make_cluster):
    """An idempotent producer's batches, acknowledged with acks=all, then the leader dies before the client
    heard (it retries them all at the new leader): the new leader built its producer state from the batches it
    appended as a follower, so each retry is a duplicate answered with its original offset and the next
    sequence goes on.  Checked by breaking it: Partition.append_as_follower not updating the producer state."""
    c = make_cluster()
    c.create_topic(config={"min.insync.replicas": "2"})
    old = c.state()
    client = c.raw(old["leader"])
    try:
        init = client.request(InitProducerIdRequest(transactional_id=None,
                                                    transaction_timeout=datetime.timedelta(seconds=60)))
        assert init.error_code.value == NONE
        pid, epoch = init.producer_id, init.producer_epoch

        def batch(values: list[bytes], seq: int) -> bytes:
            return build_batch(values, producer_id=pid, producer_epoch=epoch, base_sequence=seq)
        sent = [batch([b"a", b"b"], 0), batch([b"c"], 2), batch([b"d"], 3)]
        answers = [produce_answer(client.request(produce_req(TOPIC, b))) for b in sent]
        assert answers == [(NONE, 0), (NONE, 2), (NONE, 3)]
    finally:
        client.close()
    c.kill(old["leader"])
    new = c.wait_state(lambda s: s["leader"] not in (-1, old["leader"]), "a follower is elected")
    client = c.raw(new["leader"])
    try:
        assert [produce_answer(client.request(produce_req(TOPIC, b))) for b in sent] == answers
        assert produce_answer(client.request(produce_req(TOPIC, batch([b"e"], 4)))) == (NONE, 4)
    finally:
        client.close()
    assert c.read_all(min_end=5) == ["a", "b", "c", "d", "e"]


def test_an_acks_all_produce_waits_while_its_in_sync_followers_are_paused(make_cluster):
    """Followers SIGSTOPped but still in the ISR: an acks=all produce is appended by the leader and not
    answered until they run and fetch it.  Checked by breaking it: LeaderPartition.ack_status completing at
    the leader's log end instead of the HW."""
    c = make_cluster(**HOLD_FOLLOWERS)
    c.create_topic(config={"min.insync.replicas": "2"})
    assert acked(c.produce(["before"])) == {"before"}
    st = c.state()
    leader = st["leader"]
    followers = c.pause_followers(leader)            # "before" at 0, the parked-fetch catch at 1
    held, probe = c.raw(leader, timeout=60), c.raw(leader)
    try:
        held.send(produce_req(TOPIC, build_batch([b"held"]), acks=-1, timeout_ms=60_000))
        wait_until(lambda: log_end(probe, st["leader_epoch"]) == 3, what="the leader appends the held record")
        assert not held.answer_waiting(NOT_YET_S), "acks=all answered while in-sync followers lack the record"
        assert sorted(c.state()["isr"]) == [1, 2, 3]
        for f in followers:
            c.signal(f, "CONT")
        assert produce_answer(held.receive(ProduceRequest)) == (NONE, 2)
    finally:
        held.close()
        probe.close()


def test_an_acks_all_produce_held_by_paused_followers_is_answered_once_they_left_the_isr(make_cluster):
    """The same produce with replica.lag.time.max.ms short: it is answered only after the leader's ISR shrink
    is written (the leader answers after its compare-and-set succeeded), with NOT_ENOUGH_REPLICAS_AFTER_APPEND
    as the ISR is now below min.insync.replicas.  Checked by the same break as the test above."""
    c = make_cluster(**{"zookeeper.session.timeout.ms": "20000"})      # the ISR shrinks, the sessions stay
    c.create_topic(config={"min.insync.replicas": "2"})
    assert acked(c.produce(["before"])) == {"before"}
    leader = c.state()["leader"]
    held = c.raw(leader, timeout=60)
    try:
        for f in (r for r in (1, 2, 3) if r != leader):
            c.signal(f, "STOP")
        held.send(produce_req(TOPIC, build_batch([b"held"]), acks=-1, timeout_ms=60_000))
        assert produce_answer(held.receive(ProduceRequest)) == (NOT_ENOUGH_REPLICAS_AFTER_APPEND, 1)
        assert c.state()["isr"] == [leader], "answered before the followers left the ISR"
    finally:
        held.close()


def test_a_fetch_naming_an_older_or_newer_leader_epoch_is_fenced(make_cluster):
    """After a failover, a consumer or follower fetch that names the old leader epoch as current gets
    FENCED_LEADER_EPOCH, one naming an epoch the leader does not know yet UNKNOWN_LEADER_EPOCH, and only the
    current epoch (or none, -1) is served.  Checked by breaking it: Fetch's current_leader_epoch check disabled."""
    c = make_cluster()
    c.create_topic()
    assert acked(c.produce(["a"])) == {"a"}
    old = c.state()
    c.kill(old["leader"])
    new = c.wait_state(lambda s: s["leader"] not in (-1, old["leader"]), "a follower is elected")
    follower = next(r for r in new["isr"] if r != new["leader"])
    client = c.raw(new["leader"])
    try:
        def fetch_error(epoch: int, replica_id: int = -1) -> int:
            req = fetch_request({KEY: 0}, current_leader_epoch=epoch, replica_id=replica_id)
            return fetched(client.request(req))[KEY].error_code.value
        assert fetch_error(old["leader_epoch"]) == FENCED_LEADER_EPOCH
        assert fetch_error(old["leader_epoch"], replica_id=follower) == FENCED_LEADER_EPOCH
        assert fetch_error(new["leader_epoch"] + 1) == UNKNOWN_LEADER_EPOCH
        assert fetch_error(new["leader_epoch"]) == NONE and fetch_error(-1) == NONE
    finally:
        client.close()


def test_a_leader_paused_past_its_zookeeper_session_takes_no_acks_all_write_when_it_resumes(make_cluster):
    """The GC-pause zombie: the leader is SIGSTOPped until its ZooKeeper session expired and a follower leads in
    a new epoch; produces sent to it meanwhile wait in its socket and are read the moment it resumes, before it
    can hear from ZooKeeper that it lost its session.  acks=all must not be acknowledged (its followers follow
    the new leader, and its ISR shrink loses the compare-and-set): NOT_LEADER_OR_FOLLOWER or
    REQUEST_TIMED_OUT, as from Kafka's ZooKeeper-mode broker, which learns it from the controller's
    LeaderAndIsr or from its failed ISR write.  acks=1 may be acknowledged by the zombie, as by Kafka: such a
    write is lost, never served by the new leader.  The zombie then learns it no longer leads and rejoins
    as a follower."""
    c = make_cluster()
    c.create_topic(config={"min.insync.replicas": "2"})
    before = c.produce([f"b{i}" for i in range(5)])
    assert acked(before) == set(before)
    old = c.state()
    zombie = old["leader"]
    to_zombie = {acks: c.raw(zombie, timeout=60) for acks in (1, -1)}       # connected before the pause
    try:
        c.signal(zombie, "STOP")
        new = c.wait_state(lambda s: s["leader"] not in (-1, zombie), "a follower leads after the session expired")
        assert new["leader_epoch"] > old["leader_epoch"]
        for acks, client in to_zombie.items():
            client.send(produce_req(TOPIC, build_batch([f"zombie{acks}".encode()]), acks=acks, timeout_ms=10_000))
        c.signal(zombie, "CONT")
        code_all, _ = produce_answer(to_zombie[-1].receive(ProduceRequest))
        code_one, _ = produce_answer(to_zombie[1].receive(ProduceRequest))
    finally:
        for client in to_zombie.values():
            client.close()
    assert code_all in (NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT), f"the zombie answered acks=all with {code_all}"
    assert code_one in (NONE, NOT_LEADER_OR_FOLLOWER), code_one

    probe = c.raw(zombie)
    try:
        wait_until(lambda: produce_answer(probe.request(produce_req(TOPIC, build_batch([b"late"]), acks=1)))[0]
                   == NOT_LEADER_OR_FOLLOWER, 20, what="the old leader refuses writes")
    finally:
        probe.close()
    c.wait_state(lambda s: zombie in s["isr"] and s["leader"] == new["leader"], "the old leader rejoins as follower",
                 timeout=30)
    after = c.produce(["after"])
    seen = c.read_all(min_end=len(before) + 1)
    assert set(before) | acked(after) <= set(seen)
    assert not {"zombie1", "zombie-1", "late"} & set(seen), seen
