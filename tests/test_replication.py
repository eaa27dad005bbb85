"""Unit tests of broker.replication: the pure replication decisions, no sockets."""
from __future__ import annotations

import pytest

from broker.replication import (
    NONE, NOT_ENOUGH_REPLICAS, NOT_ENOUGH_REPLICAS_AFTER_APPEND, NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT,
    UNDEFINED_EPOCH, UNDEFINED_OFFSET, ElectionKind, FollowerState, LeaderEpochCache, LeaderPartition,
    ReplicationError, Truncation, choose_leader, follower_high_watermark, truncation_point,
)


# ---------------------------------------------------------------------------- leader epoch cache

def test_epoch_cache_answers_kip279_largest_epoch_at_or_below_requested():
    cache = LeaderEpochCache([(0, 0), (2, 10), (5, 30)])
    leo = 42
    assert cache.end_offset_for(5, leo) == (5, 42)          # latest epoch: the log end
    assert cache.end_offset_for(2, leo) == (2, 30)          # end = start of the next epoch
    assert cache.end_offset_for(0, leo) == (0, 10)
    assert cache.end_offset_for(3, leo) == (2, 30)          # unknown epoch 3: largest below it is 2
    assert cache.end_offset_for(4, leo) == (2, 30)
    assert cache.end_offset_for(1, leo) == (0, 10)
    assert cache.end_offset_for(6, leo) == (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
    assert cache.end_offset_for(UNDEFINED_EPOCH, leo) == (UNDEFINED_EPOCH, UNDEFINED_OFFSET)


def test_epoch_cache_requested_epoch_older_than_all_entries():
    cache = LeaderEpochCache([(3, 100), (4, 150)])
    assert cache.end_offset_for(1, 200) == (1, 100)


def test_epoch_cache_empty():
    cache = LeaderEpochCache()
    assert cache.latest_epoch() == UNDEFINED_EPOCH
    assert cache.end_offset_for(0, 10) == (UNDEFINED_EPOCH, UNDEFINED_OFFSET)


def test_epoch_cache_assign_is_idempotent_and_monotonic():
    cache = LeaderEpochCache()
    assert cache.assign(0, 0)
    assert not cache.assign(0, 5)            # a later batch of the same epoch changes nothing
    assert cache.assign(1, 5)
    assert [(e.epoch, e.start_offset) for e in cache.entries] == [(0, 0), (1, 5)]
    # After an unclean election a smaller start for a newer epoch replaces conflicting entries.
    assert cache.assign(2, 3)
    assert [(e.epoch, e.start_offset) for e in cache.entries] == [(0, 0), (2, 3)]


def test_epoch_cache_rejects_negative():
    with pytest.raises(ReplicationError):
        LeaderEpochCache().assign(-1, 0)


def test_epoch_cache_truncate_from_end_drops_epochs_starting_at_or_past_it():
    cache = LeaderEpochCache([(0, 0), (1, 10), (2, 20)])
    cache.truncate_from_end(20)
    assert [(e.epoch, e.start_offset) for e in cache.entries] == [(0, 0), (1, 10)]
    cache.truncate_from_end(11)
    assert [(e.epoch, e.start_offset) for e in cache.entries] == [(0, 0), (1, 10)]
    cache.truncate_from_end(10)
    assert [(e.epoch, e.start_offset) for e in cache.entries] == [(0, 0)]


def test_epoch_cache_truncate_from_start_clamps_first_epoch():
    cache = LeaderEpochCache([(0, 0), (1, 10), (2, 20)])
    cache.truncate_from_start(15)
    assert [(e.epoch, e.start_offset) for e in cache.entries] == [(1, 15), (2, 20)]
    cache.truncate_from_start(20)
    assert [(e.epoch, e.start_offset) for e in cache.entries] == [(2, 20)]


def test_epoch_for_offset():
    cache = LeaderEpochCache([(0, 0), (3, 10)])
    assert cache.epoch_for_offset(0) == 0
    assert cache.epoch_for_offset(9) == 0
    assert cache.epoch_for_offset(10) == 3
    assert LeaderEpochCache([(1, 5)]).epoch_for_offset(2) == UNDEFINED_EPOCH


def test_epoch_cache_file_roundtrip(tmp_path):
    path = tmp_path / "leader-epoch-checkpoint"
    assert LeaderEpochCache.load(path) == LeaderEpochCache()       # absent file: empty cache
    cache = LeaderEpochCache([(0, 0), (4, 17)])
    cache.save(path)
    assert path.read_text() == "0\n2\n0 0\n4 17\n"                  # Kafka's checkpoint layout
    assert LeaderEpochCache.load(path) == cache
    assert not (tmp_path / "leader-epoch-checkpoint.tmp").exists()


@pytest.mark.parametrize("text, message", [
    ("", "version line"),
    ("1\n0\n", "unknown version 1"),
    ("0\n2\n0 0\n", "says 2 entries but has 1"),
    ("0\n1\n0 0 0\n", "is not 'epoch start_offset'"),
    ("0\n2\n3 10\n2 20\n", "strictly increasing"),
    ("0\n2\n1 10\n2 10\n", "strictly increasing"),
])
def test_epoch_cache_corrupt_file_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "leader-epoch-checkpoint"
    path.write_text(text)
    with pytest.raises(ReplicationError, match=message) as err:
        LeaderEpochCache.load(path)
    assert str(path) in str(err.value)
    assert path.read_text() == text                                  # nothing lost


# ---------------------------------------------------------------------------- truncation

def test_truncation_follower_behind_keeps_everything():
    follower = LeaderEpochCache([(0, 0)])
    # Leader still in epoch 0 territory beyond the follower's end.
    assert truncation_point(follower, 5, 3, leader_epoch=0, leader_end_offset=8) == Truncation(5, True)


def test_truncation_diverged_suffix_is_cut_at_the_leaders_epoch_end():
    # Old leader (epoch 1) wrote 10..14 that nobody else got; new leader (epoch 2) started at 10.
    follower = LeaderEpochCache([(0, 0), (1, 5)])
    # follower asks for epoch 1; the leader knows epoch 1 ended at 10
    assert truncation_point(follower, 15, 8, leader_epoch=1, leader_end_offset=10) == Truncation(10, True)


def test_truncation_is_not_to_the_high_watermark():
    # KIP-101's motivation: truncating to the HW would cut records the leader has.
    follower = LeaderEpochCache([(0, 0)])
    t = truncation_point(follower, 10, 4, leader_epoch=0, leader_end_offset=10)
    assert t == Truncation(10, True) and t.offset > 4


def test_truncation_follower_lacks_leaders_epoch_asks_again():
    # The follower's latest epoch is 3 which the leader never had; the leader answers with
    # epoch 1 (largest <= 3 it knows) ending at 12. The follower has no epoch 1 either: its
    # largest epoch below is 0, ending (for it) at 7, so cut there and ask again.
    follower = LeaderEpochCache([(0, 0), (3, 7)])
    assert truncation_point(follower, 20, 5, leader_epoch=1, leader_end_offset=12) == Truncation(7, False)
    # Second round: the follower now asks with epoch 0 and gets (0, 9) back.
    follower.truncate_from_end(7)
    assert truncation_point(follower, 7, 5, leader_epoch=0, leader_end_offset=9) == Truncation(7, True)


def test_truncation_undefined_answer_falls_back_to_high_watermark():
    follower = LeaderEpochCache()
    assert truncation_point(follower, 10, 6, UNDEFINED_EPOCH, UNDEFINED_OFFSET) == Truncation(6, True)


def test_truncation_leader_epoch_older_than_follower_knows():
    # Leader answers with an epoch older than any the follower has: keep up to the leader's end.
    follower = LeaderEpochCache([(5, 100)])
    assert truncation_point(follower, 150, 90, leader_epoch=2, leader_end_offset=100) == Truncation(100, True)


def test_follower_high_watermark_never_decreases_and_is_capped_by_leo():
    assert follower_high_watermark(5, 10, 7) == 7
    assert follower_high_watermark(5, 3, 7) == 5
    assert follower_high_watermark(5, 10, 20) == 10


# ---------------------------------------------------------------------------- follower state (lastCaughtUpTime)

def test_follower_caught_up_when_fetching_at_leader_leo():
    f = FollowerState(2)
    f.on_fetch(10, leader_log_end_offset=10, now_ms=1000)
    assert f.last_caught_up_time_ms == 1000


def test_follower_caught_up_as_of_previous_fetch():
    f = FollowerState(2)
    f.on_fetch(5, leader_log_end_offset=10, now_ms=1000)    # behind: not caught up
    assert f.last_caught_up_time_ms == 0
    f.on_fetch(10, leader_log_end_offset=15, now_ms=1500)   # reached the LEO of the previous fetch
    assert f.last_caught_up_time_ms == 1000
    f.on_fetch(12, leader_log_end_offset=20, now_ms=2000)   # fell behind again: stays at 1000
    assert f.last_caught_up_time_ms == 1000
    assert f.is_caught_up(20, now_ms=2000, lag_max_ms=1000)
    assert not f.is_caught_up(20, now_ms=2001, lag_max_ms=1000)
    assert f.is_caught_up(12, now_ms=99999, lag_max_ms=1000)  # at the leader's end: in sync regardless


# ---------------------------------------------------------------------------- leader: HW, ISR, acks

def leader(isr=(1, 2, 3), leo=0, hw=0, now=0, lag=10_000, min_isr=1, epoch_start=None):
    return LeaderPartition(1, (1, 2, 3), isr, leader_epoch=0, log_end_offset=leo, high_watermark=hw, now_ms=now,
                           replica_lag_time_max_ms=lag, min_insync_replicas=min_isr, epoch_start_offset=epoch_start)


def test_hw_is_min_leo_over_isr():
    lp = leader()
    lp.on_leader_append(10)
    assert lp.high_watermark == 0                     # followers' LEO unknown
    lp.on_follower_fetch(2, 10, now_ms=1)
    assert lp.high_watermark == 0
    moved, _ = lp.on_follower_fetch(3, 7, now_ms=1)
    assert moved and lp.high_watermark == 7
    moved, _ = lp.on_follower_fetch(3, 10, now_ms=2)
    assert moved and lp.high_watermark == 10


def test_hw_with_leader_alone_follows_its_leo():
    lp = leader(isr=(1,))
    assert lp.on_leader_append(4)
    assert lp.high_watermark == 4


def test_hw_ignores_followers_outside_isr():
    lp = leader(isr=(1, 2))
    lp.on_leader_append(10)
    lp.on_follower_fetch(2, 10, now_ms=1)
    assert lp.high_watermark == 10
    _, change = lp.on_follower_fetch(3, 0, now_ms=1)     # below the HW: not eligible to join
    assert change is None and lp.high_watermark == 10


def test_new_leader_hw_starts_at_its_follower_hw_capped_by_leo():
    lp = LeaderPartition(2, (1, 2, 3), (2, 3), 1, log_end_offset=5, high_watermark=9, now_ms=0)
    assert lp.high_watermark == 5


def test_leader_not_in_isr_is_refused():
    with pytest.raises(ReplicationError, match="not in its ISR"):
        LeaderPartition(1, (1, 2), (2,), 0, 0, 0, 0)


def test_follower_fetch_past_leader_end_is_refused():
    lp = leader(leo=5)
    with pytest.raises(ReplicationError, match="past the leader's log end"):
        lp.on_follower_fetch(2, 6, now_ms=0)
    with pytest.raises(ReplicationError, match="not a replica"):
        lp.on_follower_fetch(9, 0, now_ms=0)


def test_isr_shrink_after_lag_time_then_hw_advances():
    lp = leader(lag=1000)
    lp.on_leader_append(10)
    lp.on_follower_fetch(2, 10, now_ms=100)
    lp.on_follower_fetch(3, 0, now_ms=100)      # 3 is stuck at 0
    assert lp.high_watermark == 0
    assert lp.maybe_shrink_isr(now_ms=1000) is None          # within the window (caught up "at" 0 on becoming leader)
    lp.on_follower_fetch(2, 10, now_ms=1500)
    change = lp.maybe_shrink_isr(now_ms=1001)
    assert change is not None and change.new_isr == (1, 2)
    assert lp.maybe_shrink_isr(now_ms=5000) is None          # one change in flight at a time
    assert lp.high_watermark == 0                            # not yet committed: 3 still counts
    assert lp.isr_committed(change.new_isr)
    assert lp.isr == (1, 2) and lp.high_watermark == 10


def test_follower_at_leader_end_is_never_shrunk():
    lp = leader(lag=1000)
    lp.on_leader_append(5)
    lp.on_follower_fetch(2, 5, now_ms=0)
    lp.on_follower_fetch(3, 5, now_ms=0)
    assert lp.maybe_shrink_isr(now_ms=60_000) is None        # idle partition: nobody lags


def test_follower_that_stops_fetching_is_shrunk():
    lp = leader(lag=1000)
    lp.on_follower_fetch(2, 0, now_ms=0)
    lp.on_follower_fetch(3, 0, now_ms=0)
    lp.on_leader_append(3)
    lp.on_follower_fetch(2, 3, now_ms=1500)
    change = lp.maybe_shrink_isr(now_ms=1500)
    assert change.new_isr == (1, 2)


def test_an_append_after_a_long_idle_time_counts_session_fetches_that_did_not_name_the_partition():
    """A fetch session's incremental requests do not name a partition whose offset did not move, and
    the leader does not report them one by one; note_fetches stands in for them before an append."""
    lp = leader(lag=1000)
    lp.on_leader_append(5)
    lp.on_follower_fetch(2, 5, now_ms=100)
    lp.on_follower_fetch(3, 5, now_ms=100)                   # last named at 100; idle since
    lp.note_fetches([(2, 5, 60_000.0), (3, 5, 60_000.0)])    # their sessions fetched at 60 s
    lp.on_leader_append(6)
    assert lp.maybe_shrink_isr(now_ms=60_050) is None        # caught up 50 ms ago, not 60 s
    assert lp.maybe_shrink_isr(now_ms=61_001).new_isr == (1,)   # and they do lag if they stop there


def test_note_fetches_ignores_what_it_cannot_vouch_for():
    lp = leader(lag=1000)
    lp.on_leader_append(5)
    lp.on_follower_fetch(2, 3, now_ms=100)                   # behind: a session fetch at 3 is not caught up
    lp.on_follower_fetch(3, 5, now_ms=900)
    lp.note_fetches([(2, 3, 5000.0), (3, 5, 500.0),          # an older request than the one recorded
                     (9, 5, 5000.0)])                        # not a replica
    assert lp.followers[2].last_caught_up_time_ms == 0 and lp.followers[2].last_fetch_time_ms == 100
    assert lp.followers[3].last_fetch_time_ms == 900


def test_isr_expand_rule_hw_and_epoch_start():
    lp = leader(isr=(1, 2), leo=10, hw=10, epoch_start=8)
    lp.on_follower_fetch(2, 10, now_ms=0)
    _, change = lp.on_follower_fetch(3, 7, now_ms=0)
    assert change is None                                    # below the HW
    _, change = lp.on_follower_fetch(3, 10, now_ms=1)
    assert change is not None and change.new_isr == (1, 2, 3)
    # while pending, the HW already waits for 3 (maximal ISR)
    lp.on_leader_append(20)
    lp.on_follower_fetch(2, 20, now_ms=2)
    assert lp.high_watermark == 10
    lp.isr_committed(change.new_isr)
    lp.on_follower_fetch(3, 20, now_ms=3)
    assert lp.high_watermark == 20


def test_a_follower_at_a_new_leaders_high_watermark_but_short_of_its_epoch_start_stays_out_of_the_isr():
    """Only the epoch-start clause turns it away.  A new leader's HW is the one it learned as a follower, one
    fetch behind what the old leader committed (here 5, while its log, all of it possibly acknowledged, ends
    at 12 where its epoch starts); ISR member 3 has not fetched in this epoch, so the HW cannot move yet.
    Follower 2, outside the ISR, fetches at 6: at or past the HW, but lacking 6..11.  Let into the ISR it
    could be elected, and the acknowledged 6..11 would be lost."""
    lp = LeaderPartition(1, (1, 2, 3), (1, 3), leader_epoch=4, log_end_offset=12, high_watermark=5, now_ms=0,
                         epoch_start_offset=12)
    moved, change = lp.on_follower_fetch(2, 6, now_ms=1)
    assert (moved, lp.high_watermark) == (False, 5)        # 6 >= the HW: the HW rule alone would let it in
    assert change is None and lp.pending_isr is None
    _, change = lp.on_follower_fetch(2, 11, now_ms=2)
    assert change is None
    _, change = lp.on_follower_fetch(2, 12, now_ms=3)      # at the epoch start: it has all the leader may commit
    assert change is not None and change.new_isr == (1, 3, 2)


def test_isr_write_failed_forgets_the_proposal():
    lp = leader(isr=(1,), leo=5, hw=5)
    _, change = lp.on_follower_fetch(2, 5, now_ms=0)
    assert change is not None
    lp.isr_write_failed()
    assert lp.pending_isr is None and lp.isr == (1,)
    _, change = lp.on_follower_fetch(2, 5, now_ms=1)
    assert change is not None                                # proposed again


def test_isr_committed_validates():
    lp = leader()
    with pytest.raises(ReplicationError, match="missing from committed ISR"):
        lp.isr_committed((2, 3))
    with pytest.raises(ReplicationError, match="non-replicas"):
        lp.isr_committed((1, 7))


def test_min_insync_replicas_checked_before_append_for_acks_all_only():
    lp = leader(isr=(1,), min_isr=2)
    assert lp.check_produce(-1) == NOT_ENOUGH_REPLICAS
    assert lp.check_produce(1) == NONE
    assert lp.check_produce(0) == NONE
    lp2 = leader(isr=(1, 2), min_isr=2)
    assert lp2.check_produce(-1) == NONE


def test_acks_all_completes_when_every_isr_member_has_the_batch():
    lp = leader(isr=(1, 2, 3))
    lp.on_leader_append(5)
    lp.wait_for_ack("p1", required_offset=5, deadline_ms=1000)
    assert lp.poll_acks(0) == []
    lp.on_follower_fetch(2, 5, now_ms=1)
    assert lp.poll_acks(1) == []
    lp.on_follower_fetch(3, 5, now_ms=2)
    assert lp.poll_acks(2) == [("p1", NONE)]
    assert lp.poll_acks(3) == []


def test_acks_all_times_out():
    lp = leader()
    lp.on_leader_append(5)
    lp.wait_for_ack("p1", 5, deadline_ms=1000)
    lp.wait_for_ack("p2", 5, deadline_ms=3000)
    assert lp.next_ack_deadline() == 1000
    assert lp.poll_acks(999) == []
    assert lp.poll_acks(1000) == [("p1", REQUEST_TIMED_OUT)]
    assert lp.next_ack_deadline() == 3000


def test_acks_all_isr_shrinks_below_min_while_waiting():
    lp = leader(isr=(1, 2), min_isr=2, lag=100)
    lp.on_follower_fetch(2, 0, now_ms=0)
    assert lp.check_produce(-1) == NONE
    lp.on_leader_append(5)
    lp.wait_for_ack("p", 5, deadline_ms=10_000)
    change = lp.maybe_shrink_isr(now_ms=500)
    lp.isr_committed(change.new_isr)                         # ISR = leader alone: HW reaches 5
    assert lp.poll_acks(500) == [("p", NOT_ENOUGH_REPLICAS_AFTER_APPEND)]


def test_the_talks_trap_leader_alone_acks_everything():
    # min.insync.replicas=1: with the ISR shrunk to the leader, acks=all is acknowledged at once.
    lp = leader(isr=(1,), min_isr=1)
    assert lp.check_produce(-1) == NONE
    lp.on_leader_append(3)
    lp.wait_for_ack("p", 3, deadline_ms=100)
    assert lp.poll_acks(0) == [("p", NONE)]


def test_abandon_acks_on_leadership_loss():
    lp = leader()
    lp.on_leader_append(1)
    lp.wait_for_ack("a", 1, 100)
    assert lp.abandon_acks() == [("a", NOT_LEADER_OR_FOLLOWER)]
    assert lp.poll_acks(1000) == []


def test_leader_leo_cannot_go_back():
    lp = leader(leo=5)
    with pytest.raises(ReplicationError):
        lp.on_leader_append(4)


# ---------------------------------------------------------------------------- election

def test_election_first_live_isr_member_in_assignment_order():
    e = choose_leader([3, 1, 2], isr=[1, 2, 3], live={1, 2}, unclean_allowed=False)
    assert e.leader == 1 and e.kind is ElectionKind.CLEAN and set(e.isr) == {1, 2}


def test_election_offline_without_unclean_keeps_isr():
    e = choose_leader([1, 2, 3], isr=[1], live={2, 3}, unclean_allowed=False)
    assert e.leader == -1 and e.kind is ElectionKind.OFFLINE and e.isr == (1,)


def test_election_unclean_picks_a_live_replica():
    e = choose_leader([1, 2, 3], isr=[1], live={3, 2}, unclean_allowed=True)
    assert e.leader == 2 and e.kind is ElectionKind.UNCLEAN and e.isr == (2,)


def test_election_prefers_isr_even_when_unclean_allowed():
    e = choose_leader([1, 2, 3], isr=[1, 3], live={2, 3}, unclean_allowed=True)
    assert e.leader == 3 and e.kind is ElectionKind.CLEAN


def test_election_nobody_alive():
    e = choose_leader([1, 2, 3], isr=[1, 2], live=set(), unclean_allowed=True)
    assert e.kind is ElectionKind.OFFLINE and e.leader == -1


def test_election_excludes_shutting_down_broker():
    e = choose_leader([1, 2, 3], isr=[1, 2], live={1, 2, 3}, unclean_allowed=False, exclude={1})
    assert e.leader == 2 and e.isr == (2,)


# ------------------------------------------------- HW after a leader change, without new appends
# The harness saw a new leader (log end 48, HW 47) keep its HW at 47 with no new writes,
# so an acknowledged record stayed invisible. Kafka recomputes the HW on becoming leader and
# after every ISR change; no "only records of the current epoch" rule holds it back.

def test_new_leader_alone_in_isr_commits_its_log_end_without_an_append():
    lp = LeaderPartition(3, (1, 2, 3), (3,), 2, log_end_offset=48, high_watermark=47, now_ms=0, epoch_start_offset=48)
    assert lp.high_watermark == 48


def test_new_leader_hw_reaches_isr_leo_when_a_caught_up_follower_fetches():
    lp = LeaderPartition(3, (1, 2, 3), (3, 2), 2, log_end_offset=48, high_watermark=47, now_ms=0, epoch_start_offset=48)
    assert lp.high_watermark == 47                 # follower 2's LEO is not known yet
    moved, change = lp.on_follower_fetch(2, 48, now_ms=10)
    assert moved and change is None and lp.high_watermark == 48


def test_new_leader_hw_reaches_leo_when_a_silent_follower_leaves_the_isr():
    lp = LeaderPartition(3, (1, 2, 3), (3, 2), 2, log_end_offset=48, high_watermark=47, now_ms=0,
                         epoch_start_offset=48, replica_lag_time_max_ms=1000)
    change = lp.maybe_shrink_isr(now_ms=1001)      # 2 never fetched in this epoch
    assert change is not None and change.new_isr == (3,)
    assert lp.high_watermark == 47                 # uncommitted shrink: 2 still counts
    assert lp.isr_committed(change.new_isr)
    assert lp.high_watermark == 48


def test_new_leader_hw_reaches_leo_when_the_old_leader_rejoins():
    lp = LeaderPartition(3, (1, 2, 3), (3, 2), 2, log_end_offset=48, high_watermark=47, now_ms=0, epoch_start_offset=48)
    lp.on_follower_fetch(2, 48, now_ms=5)
    _, change = lp.on_follower_fetch(1, 48, now_ms=6)   # the old leader, truncated to 48
    assert change is not None and change.new_isr == (3, 2, 1)
    assert lp.isr_committed(change.new_isr) is False and lp.high_watermark == 48
    assert lp.maybe_shrink_isr(now_ms=60_000) is None      # idle and in sync: nothing to do


def test_isr_committed_by_the_controller_advances_hw_over_the_smaller_isr():
    lp = LeaderPartition(3, (1, 2, 3), (3, 1, 2), 2, log_end_offset=48, high_watermark=47, now_ms=0, epoch_start_offset=48)
    lp.on_follower_fetch(2, 48, now_ms=1)
    assert lp.high_watermark == 47                 # 1 has not fetched
    assert lp.isr_committed((3, 2))
    assert lp.high_watermark == 48


# ---------------------------------------------------------------------------- found by `make mutation` (issue 19)

def test_epoch_cache_assign_says_whether_it_changed_and_drops_every_conflicting_entry():
    cache = LeaderEpochCache([(1, 0), (2, 5)])
    assert cache.assign(2, 5) is False                      # the same epoch at the same start: no change
    assert cache.assign(3, 5) is True                       # a newer epoch at the same start replaces epoch 2
    assert [(e.epoch, e.start_offset) for e in cache.entries] == [(1, 0), (3, 5)]
    cache = LeaderEpochCache([(1, 0), (2, 5), (3, 8)])
    assert cache.assign(2, 9)                               # an older epoch again (unclean): 2 and 3 both go
    assert [(e.epoch, e.start_offset) for e in cache.entries] == [(1, 0), (2, 9)]
    assert LeaderEpochCache([(0, 0)]) != [(0, 0)]


def test_epoch_cache_truncate_from_start_clamps_the_epoch_the_new_start_falls_in():
    cache = LeaderEpochCache([(1, 0), (2, 3), (3, 5)])
    cache.truncate_from_start(7)
    assert [(e.epoch, e.start_offset) for e in cache.entries] == [(3, 7)]


def test_truncation_when_the_leader_answers_an_epoch_the_follower_never_had():
    follower = LeaderEpochCache([(0, 0)])
    assert truncation_point(follower, 9, 2, leader_epoch=3, leader_end_offset=4) == Truncation(4, True)
    assert truncation_point(follower, 3, 2, leader_epoch=3, leader_end_offset=4) == Truncation(3, True)


def test_truncation_stops_at_the_followers_own_next_epoch_when_it_began_before_the_leaders_end():
    # The follower led epoch 3 from offset 2; the leader never had epoch 3 and its epoch 1 ends at 4.
    follower = LeaderEpochCache([(1, 0), (3, 2)])
    assert truncation_point(follower, 5, 0, leader_epoch=1, leader_end_offset=4) == Truncation(2, True)


def test_epoch_cache_agrees_with_a_batch_by_dropping_what_the_batch_contradicts():
    c = LeaderEpochCache([(0, 0), (1, 108), (2, 120)])
    assert not c.agree_with_batch(50, 0) and not c.agree_with_batch(110, 1)     # agreeing batches change nothing
    assert c.agree_with_batch(108, 0)                # an epoch-0 batch where epoch 1 was recorded
    assert [(e.epoch, e.start_offset) for e in c.entries] == [(0, 0)]
    c = LeaderEpochCache([(0, 0)])
    assert c.agree_with_batch(30, 2)                 # an epoch the cache lost: it starts at its first batch
    assert [(e.epoch, e.start_offset) for e in c.entries] == [(0, 0), (2, 30)]
    assert not c.agree_with_batch(40, -1)            # a batch without an epoch says nothing
