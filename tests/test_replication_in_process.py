"""The replication rules through the broker's own request paths, in one process (tests/replication_in_process.py):
ReplicaManager and ReplicaFetcher (broker/replica_manager.py) with the produce, fetch, ListOffsets,
OffsetForLeaderEpoch and InitProducerId handlers (broker/handlers.py).  `make mutation` runs these against
mutmut's mutants (docs/broker.md, "Mutation testing"); the subprocess-broker tests cover the same rules end to end."""
from __future__ import annotations

import pytest

from broker import handlers
from broker.errors import (FENCED_LEADER_EPOCH, INVALID_PRODUCER_EPOCH, NONE, NOT_ENOUGH_REPLICAS,
                           NOT_ENOUGH_REPLICAS_AFTER_APPEND, NOT_LEADER_OR_FOLLOWER, OFFSET_OUT_OF_RANGE,
                           OUT_OF_ORDER_SEQUENCE_NUMBER, REQUEST_TIMED_OUT, UNKNOWN_LEADER_EPOCH,
                           UNKNOWN_TOPIC_OR_PARTITION)
from replication_in_process import KEY, TOPIC, Cluster, fetched, fetch_request, request

LAG_MS = 10000      # replica.lag.time.max.ms of the nodes


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    made = []

    def make(**kw) -> Cluster:
        c = Cluster(tmp_path / f"cluster-{len(made)}", monkeypatch, **kw)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


def log_of(c: Cluster, node: int, partition: int = 0) -> list[tuple[int, int]]:
    """(leader epoch, offset) of each record in node's log of the partition, committed or not."""
    from broker.records import split_batches
    p = c.nodes[node].part(partition)
    data = p.log.read(p.log_start_offset, 1 << 20, p.log_end_offset, True) if p.log_end_offset else b""
    out = []
    for _pos, h in split_batches(bytes(data)):
        out += [(h.partition_leader_epoch, h.base_offset + i) for i in range(h.last_offset_delta + 1)]
    return out


def isr(c: Cluster) -> tuple[int, ...]:
    return c.state[KEY].state.isr


# -- acks=all, min.insync.replicas, the high watermark ------------------------------------------------------

def test_an_acks_all_write_is_answered_once_every_isr_member_has_it_and_consumers_see_it_only_then(cluster):
    c = cluster(topic_config={"min.insync.replicas": "2"})
    c.elect(1, 1, [1, 2, 3])
    waiting = c.produce(1, ["a", "b"])
    assert isinstance(waiting, handlers.Deferred)
    assert c.fetch(1, 0).offsets == [] and c.list_offsets(1, -1) == (NONE, 0)
    c.replicate(2, rounds=2)                 # one ISR follower has it, the other not: not committed
    assert c.answered(waiting) is None
    assert c.fetch(1, 0).offsets == [] and c.list_offsets(1, -1) == (NONE, 0)
    assert c.fetch(1, 0, replica_id=3).offsets == [0, 1]     # a follower reads past the high watermark
    c.replicate(3, rounds=2)
    assert c.answered(waiting) == (NONE, 0)
    assert c.fetch(1, 0).offsets == [0, 1] and c.fetch(1, 0).high_watermark == 2
    assert c.list_offsets(1, -1) == (NONE, 2) and c.list_offsets(1, -2) == (NONE, 0)
    assert c.nodes[2].partition.high_watermark == 0        # a follower learns the HW on its next fetch
    c.replicate(2)
    assert c.nodes[2].partition.high_watermark == 2


def test_a_consumer_fetch_between_the_high_watermark_and_the_log_end_gets_no_records_and_no_error(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2])
    c.produce(1, ["a"])
    c.replicate(2, rounds=2)
    c.produce(1, ["b", "c"], acks=1)           # offsets 1-2, not yet on broker 2
    assert c.fetch(1, 1) == c.fetch(1, 1) and c.fetch(1, 1).error == NONE
    assert c.fetch(1, 1).records == b"" and c.fetch(1, 1).high_watermark == 1
    assert c.fetch(1, 0).offsets == [0]
    beyond = c.fetch(1, 4)
    assert (beyond.error, beyond.records) == (OFFSET_OUT_OF_RANGE, b"")


def test_acks_all_is_refused_before_the_append_while_the_isr_is_smaller_than_min_insync_replicas(cluster):
    c = cluster(topic_config={"min.insync.replicas": "2"})
    c.elect(1, 1, [1])
    assert c.produce(1, ["a"]) == (NOT_ENOUGH_REPLICAS, -1)
    assert c.nodes[1].partition.log_end_offset == 0
    assert c.produce(1, ["a"], acks=1) == (NONE, 0)       # acks=1 does not ask for the ISR
    assert c.produce(1, ["b"], acks=0) is None and c.nodes[1].partition.log_end_offset == 2


def test_with_min_insync_replicas_met_by_the_leader_alone_acks_all_is_answered_at_once(cluster):
    c = cluster()
    c.elect(1, 1, [1])
    assert c.produce(1, ["a"]) == (NONE, 0)
    assert c.produce(1, ["b", "c"]) == (NONE, 1)
    assert c.list_offsets(1, -1) == (NONE, 3)


def test_a_waiting_acks_all_write_whose_isr_shrinks_below_min_insync_fails_after_the_append(cluster):
    c = cluster(topic_config={"min.insync.replicas": "2"})
    c.elect(1, 1, [1, 2, 3])
    waiting = c.produce(1, ["a"])
    c.now += LAG_MS + 1
    c.tick(1)                                  # neither follower fetched: both leave the ISR
    assert isr(c) == (1,) and c.nodes[1].leader_state.isr == (1,)
    assert c.answered(waiting) == (NOT_ENOUGH_REPLICAS_AFTER_APPEND, 0)
    assert c.list_offsets(1, -1) == (NONE, 1)  # the ISR of one has it: committed all the same


def test_a_waiting_acks_all_write_is_answered_when_the_isr_shrinks_to_members_that_have_it(cluster):
    c = cluster(topic_config={"min.insync.replicas": "2"})
    c.elect(1, 1, [1, 2, 3])
    waiting = c.produce(1, ["a"])
    c.replicate(2, rounds=2)
    c.now += LAG_MS
    c.tick(1)                                  # exactly replica.lag.time.max.ms: still in sync
    assert isr(c) == (1, 2, 3) and c.answered(waiting) is None
    c.now += 1
    c.tick(1)
    assert isr(c) == (1, 2)
    assert c.answered(waiting) == (NONE, 0)


def answer_at_deadline(c: Cluster, waiting, ms: int):
    """The leader's answer to a waiting write once `ms` have passed, having checked there was none 1 ms before."""
    c.now += ms - 1
    c.tick(1)
    assert c.answered(waiting) is None
    c.now += 1
    c.tick(1)
    return c.answered(waiting)


def test_a_waiting_acks_all_write_times_out_at_its_deadline_and_not_before(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2])
    waiting = c.produce(1, ["a"], timeout_ms=100)
    assert answer_at_deadline(c, waiting, 100) == (REQUEST_TIMED_OUT, 0)


def test_a_leader_that_loses_leadership_fails_its_waiting_writes_and_takes_no_more(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    waiting = c.produce(1, ["a"])
    c.elect(2, 2, [2, 3])
    assert c.answered(waiting) == (NOT_LEADER_OR_FOLLOWER, 0)
    assert c.produce(1, ["b"]) == (NOT_LEADER_OR_FOLLOWER, -1)
    assert c.produce(1, ["b"], acks=1) == (NOT_LEADER_OR_FOLLOWER, -1)
    assert c.fetch(1, 0).error == NOT_LEADER_OR_FOLLOWER
    assert c.list_offsets(1, -1) == (NOT_LEADER_OR_FOLLOWER, -1)


def test_a_produce_to_a_partition_the_broker_does_not_have_is_unknown(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    req = request(0, 8, {"transactional_id": None, "acks": -1, "timeout": 1000, "topic_data": [
        {"name": "other", "partition_data": [{"index": 0, "records": b""}]}]})
    from replication_in_process import produce_answer
    assert produce_answer(handlers.produce(c.nodes[1].broker, req)) == (UNKNOWN_TOPIC_OR_PARTITION, -1)


# -- the ISR: shrink, expand, the rejoin clause -------------------------------------------------------------

def test_a_follower_that_stops_fetching_leaves_the_isr_after_the_lag_time_and_rejoins_once_caught_up(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    c.produce(1, ["a", "b"], acks=1)
    c.replicate(2, rounds=2)
    c.now += LAG_MS
    c.replicate(2)
    c.now += 1
    c.tick(1)
    assert isr(c) == (1, 2) and c.nodes[1].leader_state.isr == (1, 2)
    assert c.list_offsets(1, -1) == (NONE, 2)    # the smaller ISR has everything
    c.replicate(3)                               # fetches at 0: behind the HW, stays out
    assert isr(c) == (1, 2)
    c.replicate(3)                               # at 2 = HW and past the epoch start: back in
    assert isr(c) == (1, 2, 3) and c.nodes[1].leader_state.isr == (1, 2, 3)


def test_a_follower_short_of_the_leaders_epoch_start_stays_out_of_the_isr_though_at_its_high_watermark(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    c.produce(1, ["a", "b"], acks=1)
    c.replicate(2, rounds=2)                     # 2 has both; 3 has nothing, so the HW is still 0
    c.elect(2, 2, [2, 1])                        # 1 stays in the ISR without fetching: the HW stays 0
    lp = c.nodes[2].leader_state
    assert (lp.high_watermark, lp.epoch_start_offset) == (0, 2)
    c.replicate(3)                               # 3 fetches at 0 = the HW, below the epoch start
    assert isr(c) == (2, 1)
    c.replicate(3)                               # at 2: it has everything this leader could have committed
    assert isr(c) == (2, 1, 3)


def test_an_isr_change_that_loses_the_compare_and_set_is_dropped_and_proposed_again_from_the_newer_state(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    c.produce(1, ["a"], acks=1)
    newer = c.elect(1, 1, [1, 2, 3], to=[])      # the controller rewrote the state; the watch has not fired yet
    c.now += LAG_MS + 1
    c.replicate(2, rounds=2)
    c.tick(1)                                    # proposes (1, 2) from the old version: refused, re-read
    lp = c.nodes[1].leader_state
    assert c.state[KEY] == newer and lp.isr == (1, 2, 3) and lp.pending_isr is None
    c.tick(1)                                    # proposed again, from the version it read
    assert isr(c) == (1, 2) and lp.isr == (1, 2) and c.state[KEY].zk_version == newer.zk_version + 1


def test_an_isr_write_that_fails_leaves_the_isr_as_it_was_and_is_proposed_again(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    c.nodes[1].zk.refuse_writes = True
    c.now += LAG_MS + 1
    c.tick(1)
    lp = c.nodes[1].leader_state
    assert lp.isr == (1, 2, 3) and lp.pending_isr is None and isr(c) == (1, 2, 3)
    c.nodes[1].zk.refuse_writes = False
    c.deliver()
    c.tick(1)
    assert isr(c) == (1,) and lp.isr == (1,)


def test_the_controller_shrinking_the_isr_moves_the_leaders_high_watermark(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    waiting = c.produce(1, ["a"])
    c.replicate(2, rounds=2)
    assert c.answered(waiting) is None
    c.elect(1, 1, [1, 2])                        # broker 3 went away: the controller drops it
    assert c.nodes[1].leader_state.isr == (1, 2)
    assert c.answered(waiting) == (NONE, 0) and c.list_offsets(1, -1) == (NONE, 1)


# -- fetch epoch fencing ------------------------------------------------------------------------------------

def test_fetch_list_offsets_and_offset_for_leader_epoch_fence_an_older_and_refuse_a_newer_leader_epoch(cluster):
    c = cluster()
    c.elect(1, 5, [1])
    c.produce(1, ["a"])
    assert c.fetch(1, 0, current_leader_epoch=4).error == FENCED_LEADER_EPOCH
    assert c.fetch(1, 0, current_leader_epoch=6).error == UNKNOWN_LEADER_EPOCH
    assert c.fetch(1, 0, current_leader_epoch=5).offsets == [0]
    assert c.fetch(1, 0, current_leader_epoch=-1).offsets == [0]
    assert c.list_offsets(1, -1, 4) == (FENCED_LEADER_EPOCH, -1)
    assert c.list_offsets(1, -1, 6) == (UNKNOWN_LEADER_EPOCH, -1)
    assert c.list_offsets(1, -1, 5) == (NONE, 1)
    for current, error in [(4, FENCED_LEADER_EPOCH), (6, UNKNOWN_LEADER_EPOCH), (5, NONE), (-1, NONE)]:
        assert offset_for_leader_epoch(c, 1, 5, current) == (error, (5, 1) if error == NONE else (-1, -1))


def test_a_follower_fetch_in_an_old_epoch_is_fenced_and_does_not_count_towards_the_high_watermark(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2])
    waiting = c.produce(1, ["a"])
    c.elect(1, 2, [1, 2], to=[1])                # the leader is in epoch 2; broker 2 still thinks 1
    assert c.answered(waiting) == (NOT_LEADER_OR_FOLLOWER, 0)   # a new leader epoch: a new LeaderPartition
    waiting = c.produce(1, ["b"])
    answer = fetched(handlers.fetch(c.nodes[1].broker, fetch_request(2, replica_id=2, current_leader_epoch=1)))
    assert answer.error == FENCED_LEADER_EPOCH
    assert c.nodes[1].leader_state.high_watermark == 0 and c.answered(waiting) is None
    answer = fetched(handlers.fetch(c.nodes[1].broker, fetch_request(2, replica_id=2, current_leader_epoch=2)))
    assert answer.error == NONE and c.answered(waiting) == (NONE, 1)


def test_a_fetch_from_a_broker_that_is_not_a_replica_is_refused(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    c.produce(1, ["a"], acks=1)
    assert fetched(handlers.fetch(c.nodes[1].broker, fetch_request(0, replica_id=9))).error == NOT_LEADER_OR_FOLLOWER
    assert fetched(handlers.fetch(c.nodes[1].broker, fetch_request(5, replica_id=2))).error == OFFSET_OUT_OF_RANGE
    assert c.nodes[1].leader_state.high_watermark == 0


def offset_for_leader_epoch(c: Cluster, node: int, epoch: int, current: int):
    body = handlers.offset_for_leader_epoch(c.nodes[node].broker, request(23, 3, {"replica_id": -1, "topics": [
        {"topic": TOPIC, "partitions": [{"partition": 0, "current_leader_epoch": current, "leader_epoch": epoch}]}]}))
    p = body.topics[0].partitions[0]
    return p.error_code.value, (p.leader_epoch, p.end_offset)


# -- truncation to the leader's epoch end ---------------------------------------------------------------------

def test_a_deposed_leader_cuts_its_uncommitted_tail_at_the_end_of_its_epoch_on_the_new_leader(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    c.produce(1, ["a"])
    for f in (2, 3):
        c.replicate(f, rounds=2)
    c.produce(1, ["x", "y"], acks=1)             # offsets 1-2: only on broker 1, never committed
    c.elect(2, 2, [2, 3])
    assert c.produce(2, ["b"], acks=1) == (NONE, 1)
    assert offset_for_leader_epoch(c, 2, 1, 2) == (NONE, (1, 1))
    assert offset_for_leader_epoch(c, 2, 2, 2) == (NONE, (2, 2))
    c.replicate(1)
    assert log_of(c, 1) == [(1, 0), (2, 1)] == log_of(c, 2)
    assert c.nodes[1].partition.epoch_cache.entries == c.nodes[2].partition.epoch_cache.entries
    c.replicate(3, rounds=2)
    assert log_of(c, 3) == log_of(c, 2)


def test_a_follower_lacking_the_leaders_epoch_truncates_in_steps_until_the_epochs_agree(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    c.produce(1, ["a"])
    for f in (2, 3):
        c.replicate(f, rounds=2)
    c.elect(2, 2, [2, 3], to=[2, 3])             # broker 1 misses epochs 2 and 3
    c.produce(2, ["b"], acks=1)
    c.replicate(3, rounds=2)
    c.elect(3, 3, [3], to=[2, 3])
    c.produce(3, ["c"], acks=1)
    c.produce(1, ["x", "y"], acks=1)             # broker 1 still leads epoch 1 as far as it knows
    c.deliver([1])                               # now it follows 3 in epoch 3
    wire = c.replicate(1)
    assert log_of(c, 1) == [(1, 0), (2, 1), (3, 2)] == log_of(c, 3)
    asked = [r.body for r in wire.requests if r.api_key == 23]
    assert [p.leader_epoch for b in asked for t in b.topics for p in t.partitions] == [1]


def test_a_follower_with_nothing_to_cut_keeps_its_log_and_fetches_on(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2])
    c.produce(1, ["a", "b"])
    c.replicate(2, rounds=2)
    c.elect(2, 2, [2, 1])
    c.produce(2, ["c"], acks=1)
    c.replicate(1, rounds=2)
    assert log_of(c, 1) == [(1, 0), (1, 1), (2, 2)] == log_of(c, 2)
    assert c.nodes[1].partition.high_watermark == 3


# -- leadership from the partition state ------------------------------------------------------------------------

def test_a_broker_leads_only_in_a_state_written_after_it_registered_and_not_after_losing_its_session(cluster):
    c = cluster()
    c.nodes[1].zk.registration_zxid = 10**6      # restarted after the state was written: must not resume
    c.elect(1, 1, [1, 2, 3])
    assert c.nodes[1].leader_state is None
    assert c.produce(1, ["a"]) == (NOT_LEADER_OR_FOLLOWER, -1)
    c.nodes[1].zk.registration_zxid = 1
    c.elect(1, 2, [1, 2, 3])
    assert c.nodes[1].leader_state is not None and c.produce(1, ["a"], acks=1) == (NONE, 0)
    c.nodes[1].rm._session_lost(1)
    assert c.nodes[1].leader_state is None and c.produce(1, ["b"], acks=1) == (NOT_LEADER_OR_FOLLOWER, -1)
    c.deliver([1])                                # the same state again, still without a new session
    assert c.nodes[1].leader_state is None
    c.nodes[1].zk.registration_zxid = 2
    c.elect(1, 3, [1, 2, 3])
    assert c.nodes[1].leader_state is not None


def test_an_older_state_delivered_late_is_ignored(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    old = c.state[KEY]
    c.elect(2, 2, [2, 3])
    c.nodes[1].rm._apply_state(TOPIC, 0, old, c.replicas, c.info)
    assert c.nodes[1].leader_state is None and c.nodes[1].rm.following[KEY] == 2


def test_a_new_leader_starts_with_the_high_watermark_it_had_as_follower_and_its_log_end_as_epoch_start(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    c.produce(1, ["a", "b"])
    for f in (2, 3):
        c.replicate(f, rounds=3)
    c.produce(1, ["c"], acks=1)
    c.replicate(2)                                # 2 has offset 2; its HW is 2
    c.elect(2, 2, [2, 3])
    lp = c.nodes[2].leader_state
    assert (lp.high_watermark, lp.epoch_start_offset, lp.log_end_offset) == (2, 3, 3)
    assert c.nodes[2].partition.epoch_cache.entries[-1].start_offset == 3


# -- idempotent producer through the produce path --------------------------------------------------------------

def test_a_retried_idempotent_batch_is_answered_with_its_first_offset_and_gaps_and_old_epochs_are_refused(cluster):
    c = cluster()
    c.elect(1, 1, [1])
    pid = dict(producer_id=7, producer_epoch=0)
    assert c.produce(1, ["a", "b"], base_sequence=0, **pid) == (NONE, 0)
    assert c.produce(1, ["c"], base_sequence=2, **pid) == (NONE, 2)
    assert c.produce(1, ["a", "b"], base_sequence=0, **pid) == (NONE, 0)      # a retry: not written again
    assert c.nodes[1].partition.log_end_offset == 3
    assert c.produce(1, ["e"], base_sequence=4, **pid)[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    assert c.produce(1, ["d"], base_sequence=3, producer_id=7, producer_epoch=1)[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    assert c.produce(1, ["d"], base_sequence=0, producer_id=7, producer_epoch=1) == (NONE, 3)
    assert c.produce(1, ["d"], base_sequence=3, **pid)[0] == INVALID_PRODUCER_EPOCH


def test_init_producer_id_bumps_the_epoch_of_a_known_producer_and_gives_a_new_id_otherwise():
    from broker.protocol import build, request_class, Request
    from types import SimpleNamespace
    broker = SimpleNamespace(metadata=SimpleNamespace(producer_id_limit=1000), new_producer_id=lambda: 1000)

    def init(pid, epoch):
        body = build(request_class(22, 3), {"transactional_id": None, "transaction_timeout": 60000,
                                            "producer_id": pid, "producer_epoch": epoch})
        out = handlers.init_producer_id(broker, Request(22, 3, 1, "t", body))
        return out.error_code.value, out.producer_id, out.producer_epoch
    assert init(-1, -1) == (NONE, 1000, 0)
    assert init(5, 0) == (NONE, 5, 1)
    assert init(5, 32765) == (NONE, 5, 32766)
    assert init(5, 32766) == (NONE, 1000, 0)           # the epoch would overflow: a new id
    assert init(999, 3) == (NONE, 999, 4)
    assert init(1000, 3) == (NONE, 1000, 0)            # an id this cluster never gave out
    assert init(5, -1) == (NONE, 1000, 0)


# -- found by `make mutation` (issue 19): each kills surviving mutants of the rules --------------------------------

def test_a_follower_with_broker_id_0_reads_past_the_high_watermark_and_its_fetches_move_it(cluster):
    c = cluster(n=2, first_id=0)
    c.elect(1, 1, [1, 0])
    waiting = c.produce(1, ["a"])
    assert c.fetch(1, 0).offsets == []
    assert c.fetch(1, 0, replica_id=0).offsets == [0]
    c.replicate(0, rounds=2)
    assert c.answered(waiting) == (NONE, 0)


def test_leader_epoch_0_is_fenced_like_any_older_epoch(cluster):
    c = cluster()
    c.elect(1, 1, [1])
    c.produce(1, ["a"])
    assert c.fetch(1, 0, current_leader_epoch=0).error == FENCED_LEADER_EPOCH
    assert c.list_offsets(1, -1, 0) == (FENCED_LEADER_EPOCH, -1)
    assert offset_for_leader_epoch(c, 1, 1, 0) == (FENCED_LEADER_EPOCH, (-1, -1))
    c.elect(1, 2, [1])
    assert offset_for_leader_epoch(c, 1, 1, 2) == (NONE, (1, 1))


def test_a_consumer_is_told_the_high_watermark_as_last_stable_offset_also_when_nothing_is_new(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2])
    c.produce(1, ["a"])
    c.replicate(2, rounds=2)
    c.produce(1, ["b"], acks=1)
    for offset in (0, 1):
        answer = c.fetch(1, offset)
        assert (answer.high_watermark, answer.last_stable_offset, answer.log_start_offset) == (1, 1, 0)


def test_list_offsets_by_timestamp_finds_only_committed_records(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2])
    c.produce(1, ["a"], timestamp=100)
    c.produce(1, ["b"], timestamp=200)
    c.replicate(2, rounds=2)
    c.produce(1, ["c"], acks=1, timestamp=300)        # offset 2: above the high watermark
    lookup = c.nodes[1].broker

    def by_time(ts):
        from replication_in_process import list_offsets_request
        p = handlers.list_offsets(lookup, list_offsets_request(ts)).topics[0].partitions[0]
        return p.error_code.value, p.offset, p.timestamp, p.leader_epoch
    assert by_time(50) == (NONE, 0, 100, 1)
    assert by_time(150) == (NONE, 1, 200, 1)
    assert by_time(250) == (NONE, -1, -1, 1)          # only the uncommitted batch is that late
    assert by_time(400) == (NONE, -1, -1, 1)
    # max timestamp (-3, KIP-734): the uncommitted record holds it, so no answer, as Kafka filters every
    # timestamp lookup by the high watermark (this answered offset 2 before make mutation found it)
    assert by_time(-3) == (NONE, -1, -1, 1)
    c.replicate(2, rounds=2)                          # offset 2 committed: now it may be named
    assert by_time(-3) == (NONE, 2, 300, 1)


def test_produce_refuses_bad_acks_and_transactions_and_uses_the_broker_timeout_when_given_none(cluster):
    c = cluster(broker_config={"replica.lag.time.max.ms": "60000"})
    c.elect(1, 1, [1, 2])
    assert c.produce(1, ["a"], acks=2) == (handlers.INVALID_REQUIRED_ACKS, -1)
    req = request(0, 8, {"transactional_id": "tx", "acks": -1, "timeout": 1000, "topic_data": [
        {"name": TOPIC, "partition_data": [{"index": 0, "records": b""}]}]})
    from replication_in_process import produce_answer
    assert produce_answer(handlers.produce(c.nodes[1].broker, req)) == (handlers.INVALID_REQUEST, -1)
    assert c.nodes[1].partition.log_end_offset == 0
    waiting = c.produce(1, ["a"], timeout_ms=0)       # request.timeout.ms (30 s) applies
    assert answer_at_deadline(c, waiting, 30_000) == (REQUEST_TIMED_OUT, 0)


def test_a_standalone_broker_refuses_acks_all_when_min_insync_replicas_exceeds_one(tmp_path):
    from broker.config import BrokerConfig, parse_properties
    from broker.core import Broker
    from replication_in_process import produce_answer, produce_request
    b = Broker(BrokerConfig(parse_properties(f"broker.id=0\nlog.dirs={tmp_path}\n")))
    try:
        b.create_topic(TOPIC, 1, 1, {"min.insync.replicas": "2"})
        assert produce_answer(handlers.produce(b, produce_request(["a"]))) == (NOT_ENOUGH_REPLICAS, -1)
        assert produce_answer(handlers.produce(b, produce_request(["a"], acks=1))) == (NONE, 0)
        b.create_topic("one", 1, 1, {"min.insync.replicas": "1"})
        req = request(0, 8, {"transactional_id": None, "acks": -1, "timeout": 1000, "topic_data": [
            {"name": "one", "partition_data": [{"index": 0, "records": produce_request(["x"]).body.topic_data[0]
                                                .partition_data[0].records}]}]})
        assert produce_answer(handlers.produce(b, req)) == (NONE, 0)
    finally:
        b.close()


def test_producer_id_0_is_deduplicated_and_sequence_checked_like_any_other(cluster):
    c = cluster()
    c.elect(1, 1, [1])
    pid = dict(producer_id=0, producer_epoch=0)
    assert c.produce(1, ["a", "b"], base_sequence=0, **pid) == (NONE, 0)
    assert c.produce(1, ["a", "b"], base_sequence=0, **pid) == (NONE, 0)
    assert c.produce(1, ["c"], base_sequence=5, **pid)[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    assert c.nodes[1].partition.log_end_offset == 2
    c.nodes[1].partition.producers.rebuild(c.nodes[1].partition.log.batch_headers())   # as after a restart
    assert c.produce(1, ["a", "b"], base_sequence=0, **pid) == (NONE, 0)
    assert c.produce(1, ["c"], base_sequence=2, **pid) == (NONE, 2)


def test_a_batch_matching_only_the_first_sequence_of_an_earlier_one_is_no_duplicate(cluster):
    c = cluster()
    c.elect(1, 1, [1])
    pid = dict(producer_id=7, producer_epoch=0)
    assert c.produce(1, ["a", "b"], base_sequence=0, **pid) == (NONE, 0)
    assert c.produce(1, ["a"], base_sequence=0, **pid)[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    assert c.produce(1, ["x", "y", "z"], base_sequence=0, **pid)[0] == OUT_OF_ORDER_SEQUENCE_NUMBER


def test_an_unknown_producer_must_start_at_sequence_0(cluster):
    from broker.errors import UNKNOWN_PRODUCER_ID
    c = cluster()
    c.elect(1, 1, [1])
    assert c.produce(1, ["a"], producer_id=9, producer_epoch=0, base_sequence=3)[0] == UNKNOWN_PRODUCER_ID
    assert c.nodes[1].partition.log_end_offset == 0


def test_a_follower_that_led_an_epoch_the_new_leader_never_had_cuts_it_before_fetching(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2])
    c.produce(1, ["a"])
    c.replicate(2, rounds=2)
    c.produce(1, ["x", "y"], acks=1)
    c.replicate(2)                                # 2 has 0-2 of epoch 1
    c.elect(2, 2, [2], to=[2])                    # 2 leads epoch 2 and writes offset 3; 1 never hears of it
    c.produce(2, ["b"], acks=1)
    c.elect(1, 3, [1, 2])                         # 1 leads again, in epoch 3
    c.produce(1, ["c"], acks=1)
    wire = c.replicate(2)
    assert log_of(c, 2) == [(1, 0), (1, 1), (1, 2), (3, 3)] == log_of(c, 1)
    asked = [p.leader_epoch for r in wire.requests if r.api_key == 23 for t in r.body.topics for p in t.partitions]
    assert asked == [2]


def test_a_new_leader_answers_a_retry_of_producer_id_0_with_the_offset_it_replicated(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2])
    pid = dict(producer_id=0, producer_epoch=0)
    waiting = c.produce(1, ["a"], base_sequence=0, **pid)
    c.replicate(2, rounds=2)
    assert c.answered(waiting) == (NONE, 0)
    c.elect(2, 2, [2])
    assert c.produce(2, ["a"], base_sequence=0, **pid) == (NONE, 0)
    assert c.nodes[2].partition.log_end_offset == 1


# -- answers on their way while the cluster changes: the follower's guards -------------------------------------

def deposed_and_back(c: Cluster, *, back: bool = True):
    """Broker 1 leads epoch 1 with `a` committed on every broker and `x` (offset 1) on brokers 1 and 2 only; then
    broker 3 leads epoch 2 and writes `b` at offset 1, broker 1 follows it (cutting x), and with `back` broker 1
    leads again in epoch 3.  Returns nothing: a test starts its in-flight answer before calling this."""
    c.elect(3, 2, [3, 1])
    c.produce(3, ["b"], acks=1)
    c.replicate(1)
    if back:
        c.elect(1, 3, [1, 3])


def with_x_on_1_and_2(c: Cluster) -> None:
    c.elect(1, 1, [1, 2, 3])
    c.produce(1, ["a"])
    for f in (2, 3):
        c.replicate(f, rounds=2)
    c.produce(1, ["x"], acks=1)                  # offset 1: on broker 1, never committed


def test_a_fetch_answer_that_arrives_after_the_follower_moved_to_a_newer_epoch_is_not_appended(cluster):
    c = cluster()
    with_x_on_1_and_2(c)
    answer = c.in_flight(2, 1)                   # broker 2's fetch in epoch 1: the answer carries x
    deposed_and_back(c)                          # broker 2 now follows broker 1 in epoch 3, where x is gone
    answer.arrive()
    assert log_of(c, 2) == [(1, 0)]
    c.replicate(2)
    assert log_of(c, 2) == [(1, 0), (2, 1)] == log_of(c, 1)


def test_a_fetch_answer_that_arrives_after_the_follower_moved_to_another_leader_is_not_appended(cluster):
    c = cluster()
    with_x_on_1_and_2(c)
    answer = c.in_flight(2, 1)
    deposed_and_back(c, back=False)              # broker 2 now follows broker 3
    answer.arrive()
    assert log_of(c, 2) == [(1, 0)]
    c.replicate(2)
    assert log_of(c, 2) == [(1, 0), (2, 1)] == log_of(c, 3)


def test_a_truncation_answer_for_an_epoch_the_follower_has_left_does_not_settle_the_new_one(cluster):
    c = cluster()
    with_x_on_1_and_2(c)
    c.replicate(2)                               # broker 2 has x too
    c.elect(1, 2, [1, 2, 3])                     # broker 1 re-elected: broker 2 asks where epoch 1 ends...
    answer = c.in_flight(2, 23)                  # ...and broker 1 answers 2: keep x
    c.elect(3, 3, [3, 1])                        # but broker 1 is deposed, cuts x for b ...
    c.produce(3, ["b"], acks=1)
    c.replicate(1)
    c.elect(1, 4, [1, 3])                        # ... and leads again in epoch 4: epoch 1 ends at 1 now
    answer.arrive()
    assert log_of(c, 2) == [(1, 0), (3, 1)] == log_of(c, 1)


def test_a_truncation_answer_from_a_leader_the_follower_has_left_changes_nothing(cluster):
    c = cluster()
    with_x_on_1_and_2(c)
    c.replicate(2)
    c.elect(1, 2, [1, 2, 3])
    answer = c.in_flight(2, 23)
    c.elect(3, 3, [3, 2])                        # broker 2 follows broker 3 now
    answer.arrive()
    assert log_of(c, 2) == [(1, 0), (1, 1)]
    c.produce(3, ["b"], acks=1)
    c.replicate(2)
    assert log_of(c, 2) == [(1, 0), (3, 1)] == log_of(c, 3)


def test_a_follower_does_not_truncate_against_a_leader_that_has_not_seen_its_epoch_yet(cluster):
    c = cluster()
    with_x_on_1_and_2(c)
    c.replicate(2)                               # broker 2 has x too
    epoch_2 = c.elect(3, 2, [3, 1, 2], to=[3])   # brokers 1 and 2 do not hear of epoch 2
    c.produce(3, ["b"], acks=1)
    c.elect(1, 3, [1, 3, 2], to=[2])             # broker 1 is elected again; only broker 2 hears of it yet
    wire = c.replicate(2)                        # broker 1 still leads epoch 1 as far as it knows
    assert [r.api_key for r in wire.requests] == [23]
    assert log_of(c, 2) == [(1, 0), (1, 1)]
    c.deliver([1], state=epoch_2)                # broker 1 follows 3: cuts x, takes b
    c.replicate(1)
    c.deliver([1, 3])                            # and leads epoch 3
    c.replicate(2)
    assert log_of(c, 2) == [(1, 0), (2, 1)] == log_of(c, 1)


def test_a_follower_that_hears_of_its_new_leader_before_the_leader_does_waits_for_it_and_then_follows(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    c.produce(1, ["a"])
    for f in (2, 3):
        c.replicate(f, rounds=2)
    c.elect(2, 2, [2, 3], to=[3])                # the state watch fires on broker 3 first
    wire = c.replicate(3)                        # broker 2 does not lead yet: OffsetForLeaderEpoch is refused
    assert [r.api_key for r in wire.requests] == [23] and log_of(c, 3) == [(1, 0)]
    c.deliver([1, 2])
    c.produce(2, ["b"], acks=1)
    c.replicate(3)
    assert log_of(c, 3) == [(1, 0), (2, 1)] == log_of(c, 2)


def test_a_follower_whose_leader_learns_its_epoch_between_its_two_requests_is_not_counted_before_it_truncated(cluster):
    c = cluster()
    with_x_on_1_and_2(c)
    c.replicate(2)
    epoch_2 = c.elect(3, 2, [3, 1, 2], to=[3])
    c.produce(3, ["b"], acks=1)
    c.elect(1, 3, [1, 3, 2], to=[2])
    answer = c.in_flight(2, 23)                  # broker 1, in epoch 1, answers UNKNOWN_LEADER_EPOCH
    c.deliver([1], state=epoch_2)
    c.replicate(1)
    c.deliver([1, 3])                            # broker 1 leads epoch 3 with a and b; broker 3 has both
    c.replicate(3)
    answer.arrive()                              # broker 2 has not truncated: it must not fetch yet
    assert c.nodes[1].leader_state.high_watermark == 1     # b is not committed while broker 2 holds x there
    c.replicate(2, rounds=2)
    assert log_of(c, 2) == [(1, 0), (2, 1)] == log_of(c, 1)
    assert c.nodes[1].leader_state.high_watermark == 2


# -- re-truncation: answers a leader gives when its log moved between OffsetForLeaderEpoch and Fetch ------------
# Within one epoch the leader's log here only grows and a follower truncates to a batch boundary of it, so the
# leader cannot be brought to give the first two answers through its own state; the wire replaces its answer.

def partition_0_answered(error: int, records: bytes = b""):
    """A replacement for a Fetch answer (Wire.replace): partition 0 answered with `error` and `records`, the other
    partitions as the leader answered them."""
    from broker import protocol

    def make(req, frame):
        _corr, body = protocol.decode_response(1, req.api_version, frame[4:])
        topics = [(t.topic, [(r.partition_index, error, -1, -1, -1, None, records) if r.partition_index == 0 else
                             (r.partition_index, r.error_code.value, r.high_watermark, r.last_stable_offset,
                              r.log_start_offset, None, bytes(r.records or b"")) for r in t.partitions])
                  for t in body.responses]
        return protocol.encode_fetch_response(req.api_version, req.correlation_id, 0, body.session_id, topics)
    return make


@pytest.mark.parametrize("answer, truncates_again", [
    ("offset out of range", True),              # the fetch offset is past the leader's log end
    ("batches it already has", True),           # the fetched batches do not continue the follower's log
    ("not leader", False),                      # the follower waits for the new state instead
])
def test_a_fetch_answer_that_does_not_continue_the_log_sends_that_partition_back_to_truncation(
        cluster, answer, truncates_again):
    c = cluster(partitions=2)
    for p in (0, 1):
        c.elect(1, 1, [1, 2], p=p)
        c.produce(1, ["a"], p=p)
    c.replicate(2, rounds=2)
    for p in (0, 1):
        c.produce(1, ["b"], acks=1, p=p)
    error, records = {"offset out of range": (OFFSET_OUT_OF_RANGE, b""), "not leader": (NOT_LEADER_OR_FOLLOWER, b""),
                      "batches it already has": (NONE, c.fetch(1, 0).records)}[answer]
    wire = c.replicate(2, replace={1: partition_0_answered(error, records)})
    assert log_of(c, 2, 1) == [(1, 0), (1, 1)]  # the other partition's records are taken all the same
    assert log_of(c, 2, 0) == [(1, 0)]
    wire = c.replicate(2)
    assert [r.api_key for r in wire.requests] == ([23, 1] if truncates_again else [1])
    assert log_of(c, 2, 0) == [(1, 0), (1, 1)] == log_of(c, 1, 0)


def test_a_follower_whose_leader_dropped_its_fetch_session_opens_a_new_one_and_fetches_on(cluster):
    from replication_in_process import fetched_on_the_wire
    c = cluster(broker_config={"max.incremental.fetch.session.cache.slots": "1"})
    c.elect(1, 1, [1, 2])
    c.produce(1, ["a"])
    c.replicate(2, rounds=2)                     # broker 2's session holds the leader's only slot
    c.now += 120_000                             # idle that long, a consumer's new session may take the slot
    req = fetch_request(0, session_epoch=0)
    assert fetched_on_the_wire(req, handlers.fetch(c.nodes[1].broker, req))[None][1] != 0
    c.produce(1, ["b"], acks=1)
    c.replicate(2, rounds=2)                     # FETCH_SESSION_ID_NOT_FOUND, then a full fetch in a new session
    assert log_of(c, 2) == [(1, 0), (1, 1)]


# -- the ISR: rejoining without new records --------------------------------------------------------------------

def test_a_follower_the_controller_dropped_from_the_isr_rejoins_on_its_next_fetch_without_new_records(cluster):
    c = cluster(n=2, topic_config={"min.insync.replicas": "2"})
    c.elect(1, 1, [1, 2])
    waiting = c.produce(1, ["a"])
    c.replicate(2, rounds=3)                     # in a fetch session, at the log end: it names nothing
    assert c.answered(waiting) == (NONE, 0)
    c.elect(1, 1, [1])                           # broker 2's ZooKeeper session expired and came back
    assert c.produce(1, ["b"]) == (NOT_ENOUGH_REPLICAS, -1)
    c.nodes[1].zk.refuse_writes = True
    c.replicate(2)                               # its rejoin is proposed, but the ISR write fails
    assert isr(c) == (1,)
    c.nodes[1].zk.refuse_writes = False
    c.replicate(2)                               # proposed again on the next fetch
    assert isr(c) == (1, 2) and c.nodes[1].leader_state.isr == (1, 2)
    waiting = c.produce(1, ["b"])
    c.replicate(2, rounds=2)
    assert c.answered(waiting) == (NONE, 1)


def test_an_in_step_follower_idle_past_the_lag_time_stays_in_the_isr_across_an_append_and_gets_it_next_fetch(cluster):
    c = cluster(n=2, topic_config={"min.insync.replicas": "2"})
    c.elect(1, 1, [1, 2])
    waiting = c.produce(1, ["a"])
    c.replicate(2, rounds=3)
    assert c.answered(waiting) == (NONE, 0)
    for _ in range(3):                           # fetching all along, naming nothing: nothing changed for it
        c.now += LAG_MS // 2
        c.replicate(2)
    waiting = c.produce(1, ["b"])
    c.tick(1)                                    # its last fetch was at the log end of then: caught up
    assert isr(c) == (1, 2)
    c.replicate(2, rounds=2)                     # the append is looked at on its next fetch
    assert c.answered(waiting) == (NONE, 1)


def test_a_deleted_topics_replicas_are_neither_led_nor_followed_nor_read(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    c.produce(1, ["a"])
    c.replicate(2, rounds=2)
    c.delete_topic()
    assert c.nodes[1].leader_state is None and fetching(c, 2) == []
    assert KEY not in c.nodes[1].rm.states and KEY not in c.nodes[2].rm.states
    for node in (1, 2):
        assert c.fetch(node, 0).error == UNKNOWN_TOPIC_OR_PARTITION
    assert c.produce(1, ["b"], acks=1) == (UNKNOWN_TOPIC_OR_PARTITION, -1)


# -- leadership transitions: who fetches what -------------------------------------------------------------------

def fetching(c: Cluster, node: int) -> list[tuple[int, list]]:
    """(leader, partitions) of each fetcher of `node` that would fetch now."""
    return [(f.leader, sorted(p for _t, p in f.parts)) for f in c.running_fetchers(node)]


def test_a_follower_elected_leader_stops_fetching_from_the_broker_that_led_before(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    c.produce(1, ["a"])
    c.replicate(2, rounds=2)
    c.elect(2, 2, [2, 3], to=[2, 3])             # broker 1 does not hear of it yet and still takes writes
    assert fetching(c, 2) == []
    c.produce(1, ["z"], acks=1)
    c.replicate(2)
    assert c.produce(2, ["b"], acks=1) == (NONE, 1)
    assert log_of(c, 2) == [(1, 0), (2, 1)]


def test_a_follower_that_moves_to_another_leader_stops_fetching_from_the_one_before(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    c.produce(1, ["a"])
    for f in (2, 3):
        c.replicate(f, rounds=2)
    assert fetching(c, 3) == [(1, [0])]
    c.elect(2, 2, [2, 3], to=[2, 3])
    assert fetching(c, 3) == [(2, [0])]
    c.produce(1, ["z"], acks=1)
    c.produce(2, ["b"], acks=1)
    c.replicate(3)
    assert log_of(c, 3) == [(1, 0), (2, 1)] == log_of(c, 2)


def test_a_follower_fetches_from_one_fetcher_per_leader_and_drops_a_partition_that_moves(cluster):
    c = cluster(partitions=2)
    for p in (0, 1):
        c.elect(1, 1, [1, 2, 3], p=p)
    assert fetching(c, 2) == [(1, [0, 1])]
    c.replicate(2, rounds=2)                     # in a fetch session holding both
    c.elect(3, 2, [3, 2], p=0, to=[2, 3])        # broker 1 does not hear of it yet and still takes writes
    assert fetching(c, 2) == [(1, [1]), (3, [0])]
    c.produce(1, ["z"], acks=1, p=0)
    c.produce(3, ["b"], acks=1, p=0)
    c.replicate(2, rounds=2)
    assert log_of(c, 2, 0) == [(2, 0)] == log_of(c, 3, 0)
    # and broker 1's fetch session for broker 2 no longer holds the partition broker 2 forgot
    assert list(c.nodes[1].broker.fetch_sessions.follower_positions((TOPIC, 0))) == []


def test_a_partition_without_a_leader_is_neither_led_nor_followed_and_its_replicas_fence_the_old_epoch(cluster):
    c = cluster()
    c.elect(1, 1, [1, 2, 3])
    c.produce(1, ["a"])
    c.replicate(2, rounds=2)
    c.elect(-1, 2, [1])                          # offline: no leader
    assert c.produce(1, ["z"], acks=1) == (NOT_LEADER_OR_FOLLOWER, -1)
    assert fetching(c, 2) == []
    for node in (1, 2):
        assert c.fetch(node, 0, current_leader_epoch=1).error == FENCED_LEADER_EPOCH
        assert c.fetch(node, 0, current_leader_epoch=2).error == NOT_LEADER_OR_FOLLOWER


def test_a_follower_whose_leader_is_elected_again_in_a_newer_epoch_truncates_and_follows_that_epoch(cluster):
    c = cluster()
    with_x_on_1_and_2(c)
    c.replicate(2)                               # broker 2 has x
    c.elect(3, 2, [3, 1], to=[1, 3])             # broker 2 does not hear of epoch 2
    c.produce(3, ["b"], acks=1)
    c.replicate(1)                               # broker 1 cuts x, takes b
    c.elect(1, 3, [1, 3])                        # broker 2: the same leader, in epoch 3
    assert c.fetch(2, 0, current_leader_epoch=2).error == FENCED_LEADER_EPOCH
    assert c.fetch(2, 0, current_leader_epoch=3).error == NOT_LEADER_OR_FOLLOWER
    c.replicate(2)
    assert log_of(c, 2) == [(1, 0), (2, 1)] == log_of(c, 1)


def test_a_leader_elected_with_an_isr_of_one_makes_its_whole_log_readable_at_once(cluster):
    c = cluster(n=2)
    c.elect(1, 1, [1, 2])
    c.produce(1, ["a"])
    c.replicate(2)                               # broker 2 has a; neither high watermark covers it yet
    assert c.nodes[2].partition.high_watermark == 0
    c.elect(2, 2, [2])
    assert c.fetch(2, 0).offsets == [0] and c.list_offsets(2, -1) == (NONE, 1)


def test_a_broker_named_leader_in_a_state_whose_isr_lacks_it_takes_no_writes(cluster):
    c = cluster()
    c.elect(1, 1, [2, 3])
    assert c.nodes[1].leader_state is None
    assert c.produce(1, ["a"], acks=1) == (NOT_LEADER_OR_FOLLOWER, -1)
    assert c.fetch(1, 0).error == NOT_LEADER_OR_FOLLOWER


# -- Fetch answers as a client decodes them -----------------------------------------------------------------------

def test_a_consumer_in_a_fetch_session_is_told_at_once_that_its_leader_was_deposed(cluster):
    from broker.errors import FETCH_SESSION_ID_NOT_FOUND
    from replication_in_process import answered_at_once, fetched_on_the_wire
    c = cluster()
    c.elect(1, 1, [1])
    c.produce(1, ["a"])

    def fetch(node, offset, **kw):
        req = fetch_request(offset, **kw)
        reply = c.nodes[node].fetch(req)
        return fetched_on_the_wire(req, reply), answered_at_once(req, reply)
    got, now = fetch(1, 0, session_epoch=0)     # opens a session (KIP-227)
    session = got[None][1]
    assert session != 0 and got[KEY].offsets == [0] and now
    got, now = fetch(1, 1, session_id=session, session_epoch=1)
    assert KEY not in got and not now            # nothing new: left out, and the server waits for more
    c.elect(2, 2, [2])
    got, now = fetch(1, 1, session_id=session, session_epoch=2, partitions=[])
    assert got[KEY].error == NOT_LEADER_OR_FOLLOWER and now
    got, now = fetch(1, 1, session_id=session + 1, session_epoch=3, partitions=[])
    assert got == {None: (FETCH_SESSION_ID_NOT_FOUND, 0)} and now
    got, _ = fetch(2, 1, session_epoch=0)
    session = got[None][1]
    fetch(2, 1, session_id=session, session_epoch=1, partitions=[], forgotten=[KEY])
    c.produce(2, ["b"], acks=1)
    got, _ = fetch(2, 1, session_id=session, session_epoch=2, partitions=[])
    assert KEY not in got                        # forgotten: no longer answered for


def test_a_fetch_naming_a_partition_the_broker_does_not_have_answers_it_unknown_and_the_others_as_usual(cluster):
    from replication_in_process import Fetched, answered_at_once, fetched_on_the_wire
    c = cluster()
    c.elect(1, 1, [1])
    c.produce(1, ["a"])
    req = fetch_request(0, partitions=[("other", 0, 0), (TOPIC, 0, 0)])
    reply = handlers.fetch(c.nodes[1].broker, req)
    got = fetched_on_the_wire(req, reply)
    assert got[("other", 0)] == Fetched(UNKNOWN_TOPIC_OR_PARTITION, -1, b"", -1, -1)
    assert got[KEY].offsets == [0] and answered_at_once(req, reply)
    req = fetch_request(5)
    reply = handlers.fetch(c.nodes[1].broker, req)
    assert fetched_on_the_wire(req, reply)[KEY].error == OFFSET_OUT_OF_RANGE and answered_at_once(req, reply)


def test_a_fetch_gets_one_batch_however_small_its_byte_limit_and_nothing_past_its_limit_after_that(cluster):
    from replication_in_process import answered_at_once, fetched_on_the_wire
    c = cluster(partitions=2)
    for p in (0, 1):
        c.elect(1, 1, [1], p=p)
        c.produce(1, ["v" * 100], p=p)
    one = c.fetch(1, 0, partition_max_bytes=1)
    assert one.offsets == [0]
    req = fetch_request(0, partitions=[(TOPIC, 0, 0), (TOPIC, 1, 0)], max_bytes=len(one.records) + 1)
    reply = handlers.fetch(c.nodes[1].broker, req)
    got = fetched_on_the_wire(req, reply)
    assert got[(TOPIC, 0)].records == one.records and got[(TOPIC, 1)].records == b""
    assert reply.found == len(one.records) and answered_at_once(req, reply)


def test_a_fetch_of_a_version_without_leader_epochs_log_start_or_sessions_is_answered_from_the_high_watermark(cluster):
    from replication_in_process import fetched_on_the_wire
    c = cluster(n=2)
    c.elect(1, 2, [1, 2])
    c.produce(1, ["a"])
    c.replicate(2, rounds=2)
    c.produce(1, ["b"], acks=1)
    req = fetch_request(0, version=4)
    got = fetched_on_the_wire(req, handlers.fetch(c.nodes[1].broker, req))
    assert got[None] == (NONE, 0) and got[KEY].offsets == [0] and got[KEY].high_watermark == 1


def test_earliest_is_the_log_start_also_when_no_record_is_committed_yet(cluster):
    # -2 is not a timestamp: answered by the log start, not by the timestamp search, whose answers stop below
    # the high watermark (make mutation: `ts == 2` survived; it answered -1 here)
    c = cluster()
    c.elect(1, 1, [1, 2])
    assert c.list_offsets(1, -2) == (NONE, 0)
    c.produce(1, ["a"], acks=1)                        # offset 0, above the high watermark
    assert c.list_offsets(1, -2) == (NONE, 0) and c.list_offsets(1, -1) == (NONE, 0)
