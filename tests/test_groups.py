"""Unit tests of the group coordinator state machine (broker.groups), driven with a fake clock."""
from __future__ import annotations

import pytest

from broker.errors import ErrorCode as E
from broker.groups import (
    CoordinatorConfig,
    GroupCoordinator,
    GroupState,
    JoinGroupRequest,
    SyncGroupRequest,
)
from broker.offsets import rebuild
from test_groups_driver import Driver


def test_error_codes_are_kafkas_numbers():
    from kio.schema.errors import ErrorCode as KioErrorCode
    for code in E:
        assert KioErrorCode[code.name.lower()].value == code.value, code.name
    # the ones the brief names, spelled out against the protocol guide
    assert (E.COORDINATOR_LOAD_IN_PROGRESS, E.COORDINATOR_NOT_AVAILABLE, E.NOT_COORDINATOR) == (14, 15, 16)
    assert (E.ILLEGAL_GENERATION, E.UNKNOWN_MEMBER_ID, E.INVALID_SESSION_TIMEOUT, E.REBALANCE_IN_PROGRESS) == (22, 25, 26, 27)
    assert (E.NON_EMPTY_GROUP, E.GROUP_ID_NOT_FOUND, E.MEMBER_ID_REQUIRED) == (68, 69, 79)


# --- joining ----------------------------------------------------------------------------------


def test_three_members_get_one_generation_with_one_leader():
    d = Driver()
    joins = [d.join_new(client_id=f"c{i}", protocols=[("range", f"sub{i}".encode())]) for i in range(3)]
    assert all(d.reply(t) is None for _, t in joins), "JoinGroup must wait for the rebalance"
    assert d.coord.groups["g"].state is GroupState.PREPARING_REBALANCE
    for _ in range(3):
        d.advance(3000)
    responses = [d.reply(t) for _, t in joins]
    assert [r.error_code for r in responses] == [0, 0, 0]
    assert {r.generation_id for r in responses} == {1}
    assert len({r.leader for r in responses}) == 1
    leader = responses[0].leader
    assert leader in {m for m, _ in joins}
    for (member_id, _), r in zip(joins, responses):
        assert r.member_id == member_id
        assert r.protocol_name == "range" and r.protocol_type == "consumer"
        if member_id == leader:
            assert {(m.member_id, m.metadata) for m in r.members} == {
                (mid, f"sub{i}".encode()) for i, (mid, _) in enumerate(joins)}
        else:
            assert r.members == []
    assert d.coord.groups["g"].state is GroupState.COMPLETING_REBALANCE


def test_leaders_assignment_reaches_each_member_once_stored():
    d = Driver(auto_commit=False)
    joins = [d.join_new(client_id=f"c{i}") for i in range(3)]
    for _ in range(3):
        d.advance(3000)
    gen, leader = d.reply(joins[0][1]).generation_id, d.reply(joins[0][1]).leader
    followers = [m for m, _ in joins if m != leader]
    # a follower that syncs first waits for the leader
    t_f0 = d.sync(followers[0], gen)
    assert d.reply(t_f0) is None
    t_leader = d.sync(leader, gen, {m: f"parts-of-{m}".encode() for m, _ in joins})
    t_f1 = d.sync(followers[1], gen)
    # the assignment is in the offsets log but not committed: nobody is answered yet
    assert [d.reply(t) for t in (t_f0, t_leader, t_f1)] == [None, None, None]
    part = d.coord.partition_for("g")
    stored = rebuild(d.log[part]).groups["g"]
    assert stored.generation == gen and stored.leader == leader
    assert {m.member_id: m.assignment for m in stored.members} == {m: f"parts-of-{m}".encode() for m, _ in joins}
    d.commit_partition(part)
    for member, t in [(followers[0], t_f0), (leader, t_leader), (followers[1], t_f1)]:
        r = d.reply(t)
        assert r.error_code == 0 and r.assignment == f"parts-of-{member}".encode()
    assert d.coord.groups["g"].state is GroupState.STABLE
    # a late sync in Stable gets its assignment at once
    assert d.reply(d.sync(followers[0], gen)).assignment == f"parts-of-{followers[0]}".encode()


def test_member_id_required_two_step_join_for_v4_and_direct_join_before():
    d = Driver()
    t = d.join(version=4)
    r = d.reply(t)
    assert r.error_code == E.MEMBER_ID_REQUIRED and r.member_id.startswith("c-")
    assert d.coord.groups["g"].state is GroupState.EMPTY  # a pending member does not start a rebalance
    t2 = d.join(member_id=r.member_id, version=4)
    assert d.reply(t2) is None and d.coord.groups["g"].state is GroupState.PREPARING_REBALANCE
    d.advance(3000)
    assert d.reply(t2).error_code == 0 and d.reply(t2).member_id == r.member_id
    # v3 clients join in one step
    d2 = Driver()
    t3 = d2.join(version=3)
    assert d2.reply(t3) is None
    d2.advance(3000)
    assert d2.reply(t3).error_code == 0 and d2.reply(t3).generation_id == 1


def test_pending_member_that_never_rejoins_expires_after_session_timeout():
    d = Driver()
    d.join(version=4, session=6000)
    assert len(d.coord.groups["g"].pending_members) == 1
    d.advance(5999)
    assert len(d.coord.groups["g"].pending_members) == 1
    d.advance(1)
    assert d.coord.groups["g"].pending_members == {}


def test_initial_rebalance_delay_extends_while_members_arrive_and_zero_means_no_delay():
    d = Driver()
    _, t1 = d.join_new(client_id="a")
    d.advance(2000)
    _, t2 = d.join_new(client_id="b")
    d.advance(1000)  # 3000: a member arrived during the delay, so wait once more
    assert d.reply(t1) is None
    d.advance(2999)
    assert d.reply(t1) is None
    d.advance(1)
    assert d.reply(t1).error_code == 0 and d.reply(t2).error_code == 0
    assert len(d.reply(t1).members) + len(d.reply(t2).members) == 2  # only the leader gets the list

    d0 = Driver(CoordinatorConfig(offsets_topic_num_partitions=4, group_initial_rebalance_delay_ms=0))
    _, t = d0.join_new()
    assert d0.reply(t).error_code == 0 and d0.reply(t).generation_id == 1


def test_join_errors():
    d = Driver()
    assert d.reply(d.join(group="")).error_code == E.INVALID_GROUP_ID
    assert d.reply(d.join(session=5999)).error_code == E.INVALID_SESSION_TIMEOUT
    assert d.reply(d.join(session=1800001)).error_code == E.INVALID_SESSION_TIMEOUT
    assert d.reply(d.join(member_id="ghost")).error_code == E.UNKNOWN_MEMBER_ID
    assert d.reply(d.join(protocols=[])).error_code == E.INCONSISTENT_GROUP_PROTOCOL
    d.form_group(1)
    assert d.reply(d.join(protocols=[("roundrobin", b"")])).error_code == E.INCONSISTENT_GROUP_PROTOCOL
    assert d.reply(d.join(protocol_type="connect")).error_code == E.INCONSISTENT_GROUP_PROTOCOL
    assert d.reply(d.join(member_id="ghost")).error_code == E.UNKNOWN_MEMBER_ID


def test_group_max_size():
    d = Driver(CoordinatorConfig(offsets_topic_num_partitions=4, group_max_size=2))
    d.join_new(client_id="a")
    d.join_new(client_id="b")
    assert d.reply(d.join(client_id="c")).error_code == E.GROUP_MAX_SIZE_REACHED


def test_protocol_chosen_by_vote_among_common_protocols():
    d = Driver()
    ps = [[("range", b"1"), ("sticky", b"1")], [("sticky", b"2"), ("range", b"2")],
          [("sticky", b"3"), ("roundrobin", b"3"), ("range", b"3")]]
    joins = [d.join_new(client_id=f"c{i}", protocols=p) for i, p in enumerate(ps)]
    for _ in range(3):
        d.advance(3000)
    names = {d.reply(t).protocol_name for _, t in joins}
    assert names == {"sticky"}
    leader_reply = next(d.reply(t) for _, t in joins if d.reply(t).members)
    assert sorted(m.metadata for m in leader_reply.members) == [b"1", b"2", b"3"]


# --- leaving and expiring --------------------------------------------------------------------


def test_member_leaves_and_the_rest_rebalance_into_the_next_generation():
    d = Driver()
    gen, leader, members = d.form_group(3)
    leaving = next(m for m in members if m != leader)
    r = d.leave(leaving)
    assert r.error_code == 0 and [(m.member_id, m.error_code) for m in r.members] == [(leaving, 0)]
    g = d.coord.groups["g"]
    assert g.state is GroupState.PREPARING_REBALANCE
    rest = [m for m in members if m != leaving]
    assert [d.heartbeat(m, gen) for m in rest] == [E.REBALANCE_IN_PROGRESS] * 2
    assert d.heartbeat(leaving, gen) == E.UNKNOWN_MEMBER_ID
    t0 = d.join(member_id=rest[0])
    assert d.reply(t0) is None  # waits for the other member, no initial delay: the group is not empty
    t1 = d.join(member_id=rest[1])
    r0, r1 = d.reply(t0), d.reply(t1)
    assert r0.error_code == r1.error_code == 0
    assert r0.generation_id == r1.generation_id == gen + 1
    assert r0.leader == r1.leader == leader
    assert {m.member_id for m in (r0 if r0.member_id == leader else r1).members} == set(rest)


def test_batch_leave_v3_and_unknown_members():
    d = Driver()
    gen, leader, members = d.form_group(3)
    r = d.leave(members[0], members[1], "ghost")
    assert [(m.member_id, m.error_code) for m in r.members] == [
        (members[0], 0), (members[1], 0), ("ghost", E.UNKNOWN_MEMBER_ID)]
    g = d.coord.groups["g"]
    assert set(g.members) == {members[2]} and g.leader_id == members[2]
    r = d.leave("x", group="no-such-group")
    assert r.members[0].error_code == E.UNKNOWN_MEMBER_ID


def test_last_member_leaving_empties_the_group_and_stores_it():
    d = Driver()
    gen, leader, members = d.form_group(1)
    d.leave(leader)
    g = d.coord.groups["g"]
    assert g.state is GroupState.EMPTY and g.generation == gen + 1
    stored = rebuild(d.log[d.coord.partition_for("g")]).groups["g"]
    assert stored.generation == gen + 1 and stored.members == () and stored.protocol is None


def test_silent_member_expires_after_session_timeout():
    d = Driver()
    gen, leader, members = d.form_group(3)
    silent = members[2]
    start = d.now
    for _ in range(4):  # the others heartbeat every 3 s; the silent one never does
        d.advance(3000)
        if d.now - start < 10000:
            assert [d.heartbeat(m, gen) for m in members[:2]] == [0, 0]
    # session.timeout.ms=10000 after its SyncGroup: gone by now, the group rebalances
    g = d.coord.groups["g"]
    assert silent not in g.members
    assert g.state is GroupState.PREPARING_REBALANCE
    assert d.heartbeat(silent, gen) == E.UNKNOWN_MEMBER_ID


def test_expiry_happens_exactly_at_the_session_deadline():
    d = Driver()
    gen, leader, members = d.form_group(1)
    d.advance(9999)
    assert leader in d.coord.groups["g"].members
    assert d.coord.next_deadline() == d.now + 1
    d.advance(1)
    assert d.coord.groups["g"].state is GroupState.EMPTY


def test_member_that_does_not_rejoin_is_removed_at_the_rebalance_timeout():
    d = Driver()
    gen, leader, members = d.form_group(3)
    t_leader = d.join(member_id=leader, rebalance=20000)  # the leader rejoins: a rebalance starts
    t_other = d.join(member_id=members[1], rebalance=20000)
    # members[2] keeps heartbeating but never rejoins
    for step in [3000] * 9 + [2999]:
        d.advance(step)
        assert d.heartbeat(members[2], gen) == E.REBALANCE_IN_PROGRESS
        assert d.reply(t_leader) is None
    d.advance(1)  # 30 s after the rebalance started: the largest rebalance timeout in the group
    assert d.reply(t_leader).error_code == 0 and d.reply(t_leader).generation_id == gen + 1
    assert {m.member_id for m in d.reply(t_leader).members} == {leader, members[1]}
    assert d.heartbeat(members[2], gen) == E.UNKNOWN_MEMBER_ID


def test_member_that_never_syncs_is_removed_after_rebalance_timeout():
    d = Driver()
    joins = [d.join_new(client_id=f"c{i}", session=30000, rebalance=10000) for i in range(2)]
    for _ in range(3):
        d.advance(3000)
    gen, leader = d.reply(joins[0][1]).generation_id, d.reply(joins[0][1]).leader
    follower = next(m for m, _ in joins if m != leader)
    assert d.reply(d.sync(leader, gen, {leader: b"a", follower: b"b"})).error_code == 0
    d.advance(10000)
    g = d.coord.groups["g"]
    assert follower not in g.members and g.state is GroupState.PREPARING_REBALANCE


# --- fencing --------------------------------------------------------------------------------


def test_generation_fencing_of_heartbeat_sync_and_commit():
    d = Driver()
    gen, leader, members = d.form_group(2)
    follower = members[1] if members[0] == leader else members[0]
    assert d.heartbeat(leader, gen - 1) == E.ILLEGAL_GENERATION
    assert d.heartbeat("ghost", gen) == E.UNKNOWN_MEMBER_ID
    assert d.heartbeat(leader, gen, group="other") == E.UNKNOWN_MEMBER_ID
    assert d.reply(d.sync(leader, gen + 1)).error_code == E.ILLEGAL_GENERATION
    assert d.reply(d.sync("ghost", gen)).error_code == E.UNKNOWN_MEMBER_ID
    tp = ("t", 0)
    assert d.reply(d.commit({tp: 5}, leader, gen + 7)).partitions[0].error_code == E.ILLEGAL_GENERATION
    assert d.reply(d.commit({tp: 5}, "ghost", gen)).partitions[0].error_code == E.UNKNOWN_MEMBER_ID
    # a simple commit (generation -1) into a group with members is rejected
    assert d.reply(d.commit({tp: 5})).partitions[0].error_code == E.UNKNOWN_MEMBER_ID
    # the current generation may commit during PreparingRebalance: the "commit on revoke" case
    d.join(member_id=leader)
    assert d.coord.groups["g"].state is GroupState.PREPARING_REBALANCE
    assert d.reply(d.commit({tp: 7}, follower, gen)).partitions[0].error_code == 0
    assert d.reply(d.sync(follower, gen)).error_code == E.REBALANCE_IN_PROGRESS
    t = d.join(member_id=follower)
    assert d.reply(t).generation_id == gen + 1
    # CompletingRebalance: no commit until the assignment is known
    assert d.reply(d.commit({tp: 8}, follower, gen + 1)).partitions[0].error_code == E.REBALANCE_IN_PROGRESS
    # and once the new generation is stable, the old one is fenced
    leader_now = d.reply(t).leader
    d.sync(leader_now, gen + 1, {leader: b"a", follower: b"b"})
    assert d.coord.groups["g"].state is GroupState.STABLE
    assert d.reply(d.commit({tp: 9}, follower, gen)).partitions[0].error_code == E.ILLEGAL_GENERATION
    assert d.heartbeat(follower, gen) == E.ILLEGAL_GENERATION
    assert d.reply(d.commit({tp: 10}, follower, gen + 1)).partitions[0].error_code == 0
    assert d.coord.committed_offsets("g") == {tp: 10}


def test_simple_commit_without_group_management():
    d = Driver()
    t = d.commit({("t", 0): 10, ("t", 1): 20}, group="assign-mode")
    assert [p.error_code for p in d.reply(t).partitions] == [0, 0]
    assert d.coord.groups["assign-mode"].state is GroupState.EMPTY
    assert {(p.topic, p.partition): p.offset for p in d.fetch(group="assign-mode").partitions} == {("t", 0): 10, ("t", 1): 20}
    # an unknown group with a generation is a commit from a dead generation
    assert d.reply(d.commit({("t", 0): 1}, "m", 3, group="nobody")).partitions[0].error_code == E.ILLEGAL_GENERATION


def test_offset_metadata_too_large_rejects_only_that_partition():
    d = Driver(CoordinatorConfig(offsets_topic_num_partitions=4, offset_metadata_max_bytes=10))
    t = d.commit({("t", 0): 1}, metadata="x" * 11)
    assert d.reply(t).partitions[0].error_code == E.OFFSET_METADATA_TOO_LARGE
    assert d.coord.committed_offsets("g") == {}


# --- commits wait for the offsets partition ----------------------------------------------------------


def test_commit_is_answered_only_when_below_the_high_watermark():
    d = Driver(auto_commit=False)
    part = d.coord.partition_for("g")
    t = d.commit({("t", 0): 42})
    assert d.reply(t) is None
    assert d.fetch().partitions == []
    assert d.fetch([("t", 0)], require_stable=True).partitions[0].error_code == E.UNSTABLE_OFFSET_COMMIT
    assert d.fetch([("t", 0)]).partitions[0].offset == -1  # not visible until committed
    d.commit_partition(part, upto=len(d.log[part]) - 1)  # high watermark still at the record itself
    assert d.reply(t) is None
    d.commit_partition(part)
    assert d.reply(t).partitions[0].error_code == 0
    fetched = d.fetch([("t", 0), ("t", 1)], require_stable=True).partitions
    assert [(p.offset, p.error_code) for p in fetched] == [(42, 0), (-1, 0)]


@pytest.mark.parametrize("append_error, client_error", [
    (E.NOT_ENOUGH_REPLICAS, E.COORDINATOR_NOT_AVAILABLE),
    (E.NOT_LEADER_OR_FOLLOWER, E.NOT_COORDINATOR),
    (E.MESSAGE_TOO_LARGE, E.INVALID_COMMIT_OFFSET_SIZE),
    (E.REQUEST_TIMED_OUT, E.REQUEST_TIMED_OUT),
])
def test_failed_offsets_append_fails_the_commit(append_error, client_error):
    d = Driver(auto_commit=False)
    t = d.commit({("t", 0): 42})
    d.apply(d.coord.append_failed(d.appends[-1].append_id, append_error, d.now))
    assert d.reply(t).partitions[0].error_code == client_error
    assert d.coord.committed_offsets("g") == {}
    assert d.coord.groups["g"].pending_commits == {}


def test_out_of_order_acknowledgement_never_moves_an_offset_back():
    d = Driver(auto_commit=False)
    t1 = d.commit({("t", 0): 5})
    t2 = d.commit({("t", 0): 9})
    a1, a2 = d.appends[-2:]
    d.apply(d.coord.append_committed(a2.append_id, d.now))
    d.apply(d.coord.append_committed(a1.append_id, d.now))
    assert d.reply(t1).partitions[0].error_code == d.reply(t2).partitions[0].error_code == 0
    assert d.coord.committed_offsets("g") == {("t", 0): 9}


def test_failed_assignment_store_fails_the_syncs_and_rebalances():
    d = Driver(auto_commit=False)
    joins = [d.join_new(client_id=f"c{i}") for i in range(2)]
    for _ in range(3):
        d.advance(3000)
    gen, leader = d.reply(joins[0][1]).generation_id, d.reply(joins[0][1]).leader
    ts = [d.sync(m, gen, {m2: b"x" for m2, _ in joins} if m == leader else None) for m, _ in joins]
    d.apply(d.coord.append_failed(d.appends[-1].append_id, E.NOT_LEADER_OR_FOLLOWER, d.now))
    assert [d.reply(t).error_code for t in ts] == [E.NOT_COORDINATOR] * 2
    assert d.coord.groups["g"].state is GroupState.PREPARING_REBALANCE


# --- coordinator ownership and failover --------------------------------------------------------------


def test_not_coordinator_and_load_in_progress():
    cfg = CoordinatorConfig(offsets_topic_num_partitions=4)
    c = GroupCoordinator(cfg)
    req = JoinGroupRequest("g", "", "consumer", [("range", b"")], 10000)
    fx = c.join_group("t1", req, 0)
    assert fx.replies[0][1].error_code == E.NOT_COORDINATOR
    c.begin_loading(c.partition_for("g"))
    assert c.join_group("t2", req, 0).replies[0][1].error_code == E.COORDINATOR_LOAD_IN_PROGRESS
    assert c.list_groups("t3", 0).replies[0][1].error_code == E.COORDINATOR_LOAD_IN_PROGRESS
    c.load_partition(c.partition_for("g"), [], 0)
    assert c.join_group("t4", req, 0).replies[0][1].error_code == E.MEMBER_ID_REQUIRED
    assert c.sync_group("t5", SyncGroupRequest("g", 1, "m"), 0).replies[0][1].error_code == E.UNKNOWN_MEMBER_ID


def test_unload_answers_parked_requests_with_not_coordinator():
    d = Driver(auto_commit=False)
    _, t_join = d.join_new()
    t_commit = d.commit({("t", 0): 1}, group="other-group-1")
    d.apply(d.coord.unload_partition(d.coord.partition_for("g"), d.now))
    assert d.reply(t_join).error_code == E.NOT_COORDINATOR
    if d.coord.partition_for("other-group-1") == d.coord.partition_for("g"):
        assert d.reply(t_commit).partitions[0].error_code == E.NOT_COORDINATOR
    assert "g" not in d.coord.groups
    assert d.heartbeat("x", 1) == E.NOT_COORDINATOR


def test_new_coordinator_rebuilds_groups_and_offsets_after_failover():
    d = Driver()
    gen, leader, members = d.form_group(3)
    follower = next(m for m in members if m != leader)
    d.reply(d.commit({("t", 0): 5, ("t", 1): 3}, follower, gen))
    d.reply(d.commit({("t", 0): 11}, leader, gen))
    d.commit({("x", 0): 100}, group="assign-mode")
    # a commit that reached the log but not the high watermark: never acknowledged
    d.auto_commit = False
    part = d.coord.partition_for("g")
    t_unacked = d.commit({("t", 1): 4}, follower, gen)
    assert d.reply(t_unacked) is None

    # the old coordinator dies; the new leader of the partition replays what is committed
    new = GroupCoordinator(d.config)
    for p in d.log:
        new.begin_loading(p)
        new.load_partition(p, d.committed_records(p), d.now)
    assert new.committed_offsets("g") == {("t", 0): 11, ("t", 1): 3}
    assert new.committed_offsets("assign-mode") == {("x", 0): 100}
    g = new.groups["g"]
    assert (g.state, g.generation, g.leader_id, set(g.members)) == (GroupState.STABLE, gen, leader, set(members))
    assert {m.member_id: m.assignment for m in g.members.values()} == {m: f"assign-{m}".encode() for m in members}
    # the members carry on with their generation on the new coordinator
    from broker.groups import HeartbeatRequest
    fx = new.heartbeat("hb", HeartbeatRequest("g", gen, follower), d.now + 5000)
    assert fx.replies == [("hb", fx.replies[0][1])] and fx.replies[0][1].error_code == 0
    # and members that are gone expire there after their session timeout
    fx = new.tick(d.now + 10000)
    assert set(new.groups["g"].members) == {follower}
    assert new.groups["g"].state is GroupState.PREPARING_REBALANCE
    # replaying the whole log (the unacknowledged record made it to the new leader) gives the newer offset
    whole = GroupCoordinator(d.config)
    whole.load_partition(part, d.log[part], d.now)
    assert whole.committed_offsets("g") == {("t", 0): 11, ("t", 1): 4}


def test_delete_groups():
    d = Driver()
    d.form_group(1, group="busy")
    d.commit({("t", 0): 1, ("t", 1): 2}, group="idle")
    t = d.token()
    d.apply(d.coord.delete_groups(t, ["busy", "idle", "nope"], d.now))
    assert d.reply(t).results == [("busy", E.NON_EMPTY_GROUP), ("idle", 0), ("nope", E.GROUP_ID_NOT_FOUND)]
    assert "idle" not in d.coord.groups
    state = rebuild(d.log[d.coord.partition_for("idle")])
    assert "idle" not in state.offsets and "idle" not in state.groups


def test_describe_and_list_groups():
    d = Driver()
    gen, leader, members = d.form_group(2)
    d.commit({("t", 0): 1}, group="simple")
    t = d.token()
    d.apply(d.coord.describe_groups(t, ["g", "simple", "nope"], d.now))
    g, simple, nope = d.reply(t).groups
    assert (g.error_code, g.state, g.protocol_type, g.protocol_data) == (0, "Stable", "consumer", "range")
    assert {m.member_id: m.assignment for m in g.members} == {m: f"assign-{m}".encode() for m in members}
    assert all(m.metadata == b"sub" and m.client_host == "/127.0.0.1" for m in g.members)
    assert (simple.state, simple.members) == ("Empty", [])
    assert (nope.error_code, nope.state) == (0, "Dead")
    t = d.token()
    d.apply(d.coord.list_groups(t, d.now))
    assert [(x.group_id, x.protocol_type, x.state) for x in d.reply(t).groups] == [
        ("g", "consumer", "Stable"), ("simple", "", "Empty")]
    t = d.token()
    d.apply(d.coord.list_groups(t, d.now, states_filter=["Empty"]))
    assert [x.group_id for x in d.reply(t).groups] == ["simple"]


def test_config_from_kafka_properties():
    cfg = CoordinatorConfig.from_properties({"offsets.topic.num.partitions": "3",
                                             "group.initial.rebalance.delay.ms": "0", "broker.id": "1"})
    assert cfg.offsets_topic_num_partitions == 3 and cfg.group_initial_rebalance_delay_ms == 0
    with pytest.raises(ValueError, match="group.max.size"):
        CoordinatorConfig.from_properties({"group.max.size": "lots"})


def test_commit_not_committed_within_offsets_commit_timeout_gets_request_timed_out():
    d = Driver(CoordinatorConfig(offsets_topic_num_partitions=4, offsets_commit_timeout_ms=5000), auto_commit=False)
    t = d.commit({("t", 0): 3})
    assert d.coord.next_deadline() == d.now + 5000
    d.advance(4999)
    assert d.reply(t) is None
    d.advance(1)
    assert d.reply(t).partitions[0].error_code == E.REQUEST_TIMED_OUT
    assert d.coord.committed_offsets("g") == {}
    # the record may still commit later: the outcome was unknown, and a new coordinator sees it
    d.commit_partition(d.coord.partition_for("g"))
    assert rebuild(d.committed_records(d.coord.partition_for("g"))).offsets["g"][("t", 0)].offset == 3


def test_assignment_store_timeout_answers_rebalance_in_progress():
    d = Driver(CoordinatorConfig(offsets_topic_num_partitions=4, offsets_commit_timeout_ms=5000), auto_commit=False)
    _, t = d.join_new()
    d.advance(3000)
    r = d.reply(t)
    ts = d.sync(r.member_id, r.generation_id, {r.member_id: b"x"})
    d.advance(5000)
    assert d.reply(ts).error_code == E.REBALANCE_IN_PROGRESS
    assert d.coord.groups["g"].state is GroupState.PREPARING_REBALANCE
