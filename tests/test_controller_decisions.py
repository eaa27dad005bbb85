"""The controller's pure decisions (broker/controller.py), without ZooKeeper."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st
from conftest import examples

from broker.controller import (
    PartitionState, Role, StateWrite, VersionedState, assignment_from_json, assignment_to_json, config_from_json,
    config_to_json, decide_elections, decide_new_partitions, leaderships_to_move, role_for, unclean_election_enabled,
)

ASSIGN = {"t": {0: (1, 2, 3), 1: (2, 3, 1)}}
REGISTERED = 10   # zxid at which every broker registered in these tests; states are written later


def vs(leader, epoch, isr, version=5, mzxid=100):
    return VersionedState(PartitionState(leader, epoch, tuple(isr), controller_epoch=1), version, mzxid)


def live(*ids, zxid=REGISTERED):
    return {i: zxid for i in ids}


def never(_topic):
    return False


def always(_topic):
    return True


def test_state_json_is_kafkas_layout():
    s = PartitionState(2, 7, (2, 3), 4)
    import json
    assert json.loads(s.to_json()) == {"controller_epoch": 4, "leader": 2, "version": 1, "leader_epoch": 7, "isr": [2, 3]}
    assert PartitionState.from_json(s.to_json()) == s
    assert assignment_from_json(assignment_to_json({0: [1, 2], 1: [2, 1]})) == {0: (1, 2), 1: (2, 1)}
    assert json.loads(assignment_to_json({0: [1]})) == {"version": 1, "partitions": {"0": [1]}}
    assert config_from_json(config_to_json({"min.insync.replicas": "2"})) == {"min.insync.replicas": "2"}


def test_unclean_topic_value_wins_over_broker_default():
    assert unclean_election_enabled({}, True) is True
    assert unclean_election_enabled({}, False) is False
    assert unclean_election_enabled({"unclean.leader.election.enable": "true"}, False) is True
    assert unclean_election_enabled({"unclean.leader.election.enable": "false"}, True) is False


def test_new_partitions_first_live_replica_leads():
    writes = decide_new_partitions(ASSIGN, {}, live(2, 3), controller_epoch=3)
    assert writes == [
        StateWrite("t", 0, PartitionState(2, 0, (2, 3), 3), None, "new partition"),
        StateWrite("t", 1, PartitionState(2, 0, (2, 3), 3), None, "new partition"),
    ]
    assert decide_new_partitions(ASSIGN, {("t", 0): vs(1, 0, [1])}, live(), 3) == []   # nobody alive: wait


def test_nothing_to_do_when_all_is_well():
    states = {("t", 0): vs(1, 0, [1, 2, 3]), ("t", 1): vs(2, 0, [2, 3, 1])}
    assert decide_elections(ASSIGN, states, live(1, 2, 3), never, 2) == []


def test_leader_loss_elects_from_live_isr_and_bumps_epoch():
    states = {("t", 0): vs(1, 4, [1, 2, 3], version=9)}
    [w] = decide_elections(ASSIGN, states, live(2, 3), never, controller_epoch=2)
    assert (w.state.leader, w.state.leader_epoch, w.state.isr, w.state.controller_epoch) == (2, 5, (2, 3), 2)
    assert w.expected_version == 9          # compare-and-set on what was read


def test_follower_loss_shrinks_isr_without_epoch_bump():
    states = {("t", 0): vs(1, 4, [1, 2, 3])}
    [w] = decide_elections(ASSIGN, states, live(1, 3), never, 2)
    assert (w.state.leader, w.state.leader_epoch, w.state.isr) == (1, 4, (1, 3))


def test_last_isr_member_lost_without_unclean_goes_offline_keeping_isr():
    states = {("t", 0): vs(1, 4, [1])}
    [w] = decide_elections(ASSIGN, states, live(2, 3), never, 2)
    assert (w.state.leader, w.state.leader_epoch, w.state.isr) == (-1, 5, (1,))
    # already offline: no further writes while only non-ISR replicas are around
    offline = {("t", 0): vs(-1, 5, [1])}
    assert decide_elections(ASSIGN, offline, live(2, 3), never, 2) == []
    # the ISR member returns: elected
    [w] = decide_elections(ASSIGN, offline, live(1, 2, 3), never, 2)
    assert (w.state.leader, w.state.leader_epoch, w.state.isr) == (1, 6, (1,))


def test_unclean_election_when_topic_allows():
    states = {("t", 0): vs(1, 4, [1])}
    [w] = decide_elections(ASSIGN, states, live(3), lambda t: t == "t", 2)
    assert (w.state.leader, w.state.leader_epoch, w.state.isr) == (3, 5, (3,))
    assert "unclean" in w.reason
    # an offline partition becomes available as soon as any replica returns
    [w] = decide_elections(ASSIGN, {("t", 0): vs(-1, 5, [1])}, live(2), always, 2)
    assert w.state.leader == 2


def test_restarted_leader_is_reelected_in_a_new_epoch():
    # Broker 1 leads in a state written at zxid 100 but registered again at zxid 150 (it restarted).
    states = {("t", 0): vs(1, 4, [1, 2, 3], mzxid=100)}
    regs = {1: 150, 2: REGISTERED, 3: REGISTERED}
    [w] = decide_elections(ASSIGN, states, regs, never, 2)
    assert w.state.leader == 1 and w.state.leader_epoch == 5


def test_controlled_shutdown_moves_leadership_and_leaves_isr():
    states = {("t", 0): vs(1, 4, [1, 2, 3]), ("t", 1): vs(2, 0, [2, 3, 1])}
    writes = {w.partition: w for w in decide_elections(ASSIGN, states, live(1, 2, 3), never, 2, shutting_down={1})}
    assert (writes[0].state.leader, writes[0].state.leader_epoch, writes[0].state.isr) == (2, 5, (2, 3))
    assert (writes[1].state.leader, writes[1].state.leader_epoch, writes[1].state.isr) == (2, 0, (2, 3))


def test_controlled_shutdown_keeps_leader_with_nobody_to_move_to():
    states = {("t", 0): vs(1, 4, [1])}
    assert decide_elections(ASSIGN, states, live(1, 2, 3), never, 2, shutting_down={1}) == []
    assert leaderships_to_move(1, ASSIGN, states, live(1, 2, 3)) == []


def test_leaderships_to_move():
    states = {("t", 0): vs(1, 4, [1, 2]), ("t", 1): vs(2, 0, [2, 1])}
    assert leaderships_to_move(1, ASSIGN, states, live(1, 2, 3)) == [("t", 0)]
    assert leaderships_to_move(1, ASSIGN, states, live(1)) == []


def test_role_for():
    state = vs(1, 4, [1, 2], mzxid=100)
    assert role_for(1, state, (1, 2, 3), registration_zxid=50) is Role.LEADER
    assert role_for(1, state, (1, 2, 3), registration_zxid=150) is Role.NONE   # stale: wait for re-election
    assert role_for(2, state, (1, 2, 3), registration_zxid=150) is Role.FOLLOWER
    assert role_for(3, state, (1, 2, 3), 50) is Role.FOLLOWER                   # out of the ISR, still fetches
    assert role_for(4, state, (1, 2, 3), 50) is Role.NONE
    assert role_for(2, vs(-1, 5, [1]), (1, 2, 3), 50) is Role.NONE
    assert role_for(2, None, (1, 2, 3), 50) is Role.NONE


@settings(max_examples=examples(300), deadline=None)
@given(isr=st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=3, unique=True),
       leader_idx=st.integers(0, 2), alive=st.sets(st.sampled_from([1, 2, 3])),
       unclean=st.booleans(), shutting=st.sets(st.sampled_from([1, 2, 3]), max_size=1))
def test_election_properties(isr, leader_idx, alive, unclean, shutting):
    leader = isr[leader_idx % len(isr)]
    states = {("t", 0): vs(leader, 4, isr)}
    writes = decide_elections(ASSIGN, states, live(*alive), lambda t: unclean, 2, shutting_down=shutting)
    assert len(writes) <= 1
    for w in writes:
        s = w.state
        assert w.expected_version == 5 and s.controller_epoch == 2
        assert s.isr, "the ISR is never empty"
        if s.leader != leader:
            assert s.leader_epoch == 5                      # every leader change bumps the epoch
        else:
            assert s.leader_epoch == 4 and set(s.isr) <= set(isr)
        if s.leader >= 0:
            assert s.leader in alive and s.leader in s.isr and s.leader not in shutting
            if s.leader not in isr:
                assert unclean and not (set(isr) & (alive - shutting))   # unclean only when no ISR member can lead
        else:
            assert not (set(isr) & (alive - shutting)) and not (unclean and alive - shutting)


# -- found by `make mutation` (issue 19): each kills a surviving mutant of the election rules ----------------------

def test_every_partition_is_decided_whatever_the_partitions_before_it_needed():
    """One partition needing nothing, or offline already, or with a leader that cannot hand over, must not stop the
    controller from deciding the partitions after it (a `break` for a `continue`)."""
    assign = {"a": {0: (1, 2)}, "b": {0: (1, 2)}, "c": {0: (1, 2)}, "d": {0: (2, 3)}, "z": {0: (3, 1)}}
    states = {("a", 0): vs(1, 1, [1, 2]),            # all is well
              ("b", 0): vs(-1, 3, [9]),              # already offline
              ("c", 0): vs(1, 2, [1]),               # shutting-down leader, nobody to move to
              ("d", 0): vs(2, 1, [2, 3]),            # its leader and ISR are gone: offline
              ("gone", 0): vs(1, 1, [1]),            # a deleted topic's leftover state: no assignment
              ("z", 0): vs(3, 7, [3, 1])}            # its leader 3 is gone: 1 takes over
    writes = decide_elections(assign, states, live(1), never, 2, shutting_down={1})
    assert [(w.topic, w.partition, w.state.leader, w.state.leader_epoch) for w in writes] == \
        [("d", 0, -1, 2), ("z", 0, -1, 8)]
    writes = decide_elections(assign, states, live(1, 2), never, 2)
    assert [(w.topic, w.state.leader, w.state.isr) for w in writes] == [("d", 2, (2,)), ("z", 1, (1,))]


def test_a_leader_that_finished_shutting_down_and_is_gone_leaves_its_partition_offline():
    states = {("t", 0): vs(1, 4, [1])}
    [w] = decide_elections(ASSIGN, states, live(2, 3), never, 2, shutting_down={1})
    assert (w.topic, w.partition, w.state.leader, w.state.leader_epoch, w.state.isr) == ("t", 0, -1, 5, (1,))


def test_new_partitions_are_created_after_one_that_already_has_a_state():
    assign = {"t": {0: (1, 2), 1: (2, 1)}}
    writes = decide_new_partitions(assign, {("t", 0): vs(1, 0, [1, 2])}, [1, 2], 3)
    assert [(w.topic, w.partition, w.state.leader) for w in writes] == [("t", 1, 2)]


def test_broker_id_0_is_a_leader_like_any_other():
    state = vs(0, 4, [0, 2], mzxid=100)
    assert role_for(2, state, (0, 2), 50) is Role.FOLLOWER
    assert role_for(0, state, (0, 2), 50) is Role.LEADER
