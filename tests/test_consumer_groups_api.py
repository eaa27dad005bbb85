"""The group APIs on the wire, at the old and new versions clients use, against a real broker:
version-specific mappings (FindCoordinator v0/v4, JoinGroup v0 vs the v4+ member-id step,
LeaveGroup v0, OffsetCommit with unknown topics, OffsetFetch v1 and v8), parked requests,
session expiry and DescribeGroups / ListGroups / DeleteGroups."""

from __future__ import annotations

import datetime
import struct

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from kio.schema.delete_groups.v0.request import DeleteGroupsRequest
from kio.schema.describe_groups.v0.request import DescribeGroupsRequest
from kio.schema.find_coordinator.v0.request import FindCoordinatorRequest as FindV0
from kio.schema.find_coordinator.v4.request import FindCoordinatorRequest as FindV4
from kio.schema.heartbeat.v0.request import HeartbeatRequest
from kio.schema.join_group.v0.request import JoinGroupRequest as JoinV0, JoinGroupRequestProtocol as ProtoV0
from kio.schema.join_group.v5.request import JoinGroupRequest as JoinV5, JoinGroupRequestProtocol as ProtoV5
from kio.schema.leave_group.v0.request import LeaveGroupRequest as LeaveV0
from kio.schema.list_groups.v0.request import ListGroupsRequest
from kio.schema.offset_commit.v2.request import (OffsetCommitRequest as CommitV2,
                                                 OffsetCommitRequestPartition as CommitPartV2,
                                                 OffsetCommitRequestTopic as CommitTopicV2)
from kio.schema.offset_fetch.v1.request import OffsetFetchRequest as FetchV1, OffsetFetchRequestTopic as FetchTopicV1
from kio.schema.offset_fetch.v8.request import (OffsetFetchRequest as FetchV8, OffsetFetchRequestGroup,
                                                OffsetFetchRequestTopics)
from kio.schema.sync_group.v0.request import SyncGroupRequest as SyncV0, SyncGroupRequestAssignment

from broker_fixtures import RawClient, broker_factory  # noqa: F401
from conftest import wait_until

pytestmark = pytest.mark.timeout(120)

GROUP_BROKER = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "3",
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "500",
}
MS = datetime.timedelta(milliseconds=1)


@pytest.fixture
def gbroker(broker_factory):  # noqa: F811
    b = broker_factory(GROUP_BROKER)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.create_topics([NewTopic("t", 2, 1)])["t"].result(15)
    c = RawClient(b.port)
    try:
        # as clients do before anything else: this creates __consumer_offsets
        assert code(c.request(FindV0(key="any")).error_code) == 0
    finally:
        c.close()
    return b


def code(e) -> int:
    return int(getattr(e, "value", e))


def join_v0(c: RawClient, group: str, member: str = "", session_ms: int = 5000):
    return c.request(JoinV0(group_id=group, session_timeout=session_ms * MS, member_id=member,
                            protocol_type="consumer",
                            protocols=(ProtoV0(name="range", metadata=b"sub"),)))


def test_find_coordinator_v0_and_batched_v4(gbroker):
    c = RawClient(gbroker.port)
    try:
        r = c.request(FindV0(key="g"))
        assert code(r.error_code) == 0 and (r.node_id, r.host, r.port) == (0, "127.0.0.1", gbroker.port)
        r = c.request(FindV4(key_type=0, coordinator_keys=("a", "b")))
        assert [(x.key, code(x.error_code), x.port) for x in r.coordinators] == [
            ("a", 0, gbroker.port), ("b", 0, gbroker.port)]
        r = c.request(FindV4(key_type=1, coordinator_keys=("txn",)))
        assert code(r.coordinators[0].error_code) == 15  # no transaction coordinator here
    finally:
        c.close()


def test_join_v0_sync_heartbeat_commit_fetch_leave_delete(gbroker):
    c = RawClient(gbroker.port)
    try:
        j = join_v0(c, "wire")
        assert code(j.error_code) == 0 and j.member_id and j.leader == j.member_id
        assert j.generation_id == 1 and j.protocol_name == "range"
        assert [(m.member_id, m.metadata) for m in j.members] == [(j.member_id, b"sub")]
        s = c.request(SyncV0(group_id="wire", generation_id=1, member_id=j.member_id,
                             assignments=(SyncGroupRequestAssignment(member_id=j.member_id, assignment=b"A"),)))
        assert code(s.error_code) == 0 and s.assignment == b"A"
        h = c.request(HeartbeatRequest(group_id="wire", generation_id=1, member_id=j.member_id))
        assert code(h.error_code) == 0
        h = c.request(HeartbeatRequest(group_id="wire", generation_id=0, member_id=j.member_id))
        assert code(h.error_code) == 22  # ILLEGAL_GENERATION
        # OffsetCommit: an unknown topic and partition are refused here, the rest is committed
        r = c.request(CommitV2(group_id="wire", generation_id_or_member_epoch=1, member_id=j.member_id,
                               retention_time=-1 * MS, topics=(
            CommitTopicV2(name="t", partitions=(CommitPartV2(partition_index=0, committed_offset=7, committed_metadata="m"),
                                                CommitPartV2(partition_index=5, committed_offset=1, committed_metadata=None))),
            CommitTopicV2(name="nope", partitions=(CommitPartV2(partition_index=0, committed_offset=1, committed_metadata=None),)))))
        got = {(t.name, p.partition_index): code(p.error_code) for t in r.topics for p in t.partitions}
        assert got == {("t", 0): 0, ("t", 5): 3, ("nope", 0): 3}
        f = c.request(FetchV1(group_id="wire", topics=(FetchTopicV1(name="t", partition_indexes=(0, 1)),)))
        got = {(t.name, p.partition_index): (p.committed_offset, p.metadata, code(p.error_code))
               for t in f.topics for p in t.partitions}
        assert got == {("t", 0): (7, "m", 0), ("t", 1): (-1, "", 0)}
        f = c.request(FetchV8(require_stable=True, groups=(
            OffsetFetchRequestGroup(group_id="wire", topics=None),
            OffsetFetchRequestGroup(group_id="other", topics=(OffsetFetchRequestTopics(name="t", partition_indexes=(0,)),)))))
        assert [(g.group_id, code(g.error_code), [(t.name, [(p.partition_index, p.committed_offset) for p in t.partitions])
                                                   for t in g.topics]) for g in f.groups] == [
            ("wire", 0, [("t", [(0, 7)])]), ("other", 0, [("t", [(0, -1)])])]
        d = c.request(DescribeGroupsRequest(groups=("wire", "unknown")))
        assert [(g.group_id, g.group_state, g.protocol_data, len(g.members)) for g in d.groups] == [
            ("wire", "Stable", "range", 1), ("unknown", "Dead", "", 0)]
        assert d.groups[0].members[0].client_host == "/127.0.0.1"
        lg = c.request(ListGroupsRequest())
        assert [(g.group_id, g.protocol_type) for g in lg.groups] == [("wire", "consumer")]
        dg = c.request(DeleteGroupsRequest(groups_names=("wire",)))
        assert code(dg.results[0].error_code) == 68  # NON_EMPTY_GROUP
        lv = c.request(LeaveV0(group_id="wire", member_id="someone-else"))
        assert code(lv.error_code) == 25  # v0 has one member: its error is the top-level error
        lv = c.request(LeaveV0(group_id="wire", member_id=j.member_id))
        assert code(lv.error_code) == 0
        assert c.request(DescribeGroupsRequest(groups=("wire",))).groups[0].group_state == "Empty"
        dg = c.request(DeleteGroupsRequest(groups_names=("wire", "never")))
        assert [(x.group_id, code(x.error_code)) for x in dg.results] == [("wire", 0), ("never", 69)]
        f = c.request(FetchV1(group_id="wire", topics=(FetchTopicV1(name="t", partition_indexes=(0,)),)))
        assert f.topics[0].partitions[0].committed_offset == -1  # tombstoned with the group
    finally:
        c.close()


def test_join_v5_member_id_step_and_a_parked_join_holds_later_responses(gbroker):
    a, b = RawClient(gbroker.port), RawClient(gbroker.port)
    try:
        def join_v5(c, member):
            return JoinV5(group_id="park", session_timeout=5000 * MS, rebalance_timeout=3000 * MS,
                          member_id=member, group_instance_id=None, protocol_type="consumer",
                          protocols=(ProtoV5(name="range", metadata=b""),))
        r = a.request(join_v5(a, ""))
        assert code(r.error_code) == 79 and r.member_id  # MEMBER_ID_REQUIRED
        first = a.request(join_v5(a, r.member_id))
        assert code(first.error_code) == 0 and first.generation_id == 1
        a.request(SyncV0(group_id="park", generation_id=1, member_id=first.member_id, assignments=()))
        # a second member: its join is parked until the first rejoins
        second_id = b.request(join_v5(b, "")).member_id
        b.send_frame(b.encode(join_v5(b, second_id)))
        b.send_frame(b.encode(FindV0(key="park")))  # pipelined behind the parked join
        b.sock.settimeout(0.5)
        with pytest.raises(OSError):
            b.recv_frame()  # nothing yet: the join is parked and the FindCoordinator waits behind it
        b.sock.settimeout(10)
        h = a.request(HeartbeatRequest(group_id="park", generation_id=1, member_id=first.member_id))
        assert code(h.error_code) == 27  # REBALANCE_IN_PROGRESS: rejoin
        again = a.request(join_v5(a, first.member_id))
        assert code(again.error_code) == 0 and again.generation_id == 2
        frame = b.recv_frame()
        (corr,) = struct.unpack_from(">i", frame)
        assert corr == b.correlation - 1  # the join's answer comes first, then the FindCoordinator's
        assert b.recv_frame() is not None
    finally:
        a.close()
        b.close()


def test_member_that_stops_heartbeating_expires_after_session_timeout(gbroker):
    c = RawClient(gbroker.port)
    try:
        j = join_v0(c, "expire", session_ms=800)
        c.request(SyncV0(group_id="expire", generation_id=1, member_id=j.member_id, assignments=()))
        assert c.request(DescribeGroupsRequest(groups=("expire",))).groups[0].group_state == "Stable"
        # no heartbeat (DescribeGroups is none): the member is removed once its session timeout passed
        d = wait_until(lambda: (g := c.request(DescribeGroupsRequest(groups=("expire",))).groups[0])
                       .group_state == "Empty" and g, 10, what="the silent member's removal")
        assert len(d.members) == 0
        h = c.request(HeartbeatRequest(group_id="expire", generation_id=1, member_id=j.member_id))
        assert code(h.error_code) == 25  # UNKNOWN_MEMBER_ID: fenced
    finally:
        c.close()


def test_dropped_connection_with_parked_join_does_not_disturb_the_group(gbroker):
    a, b = RawClient(gbroker.port), RawClient(gbroker.port)
    try:
        first = join_v0(a, "drop")
        a.request(SyncV0(group_id="drop", generation_id=1, member_id=first.member_id, assignments=()))
        b.send_frame(b.encode(JoinV0(group_id="drop", session_timeout=5000 * MS, member_id="",
                                     protocol_type="consumer", protocols=(ProtoV0(name="range", metadata=b""),))))
        wait_until(lambda: a.request(DescribeGroupsRequest(groups=("drop",))).groups[0].group_state
                   == "PreparingRebalance", 10, what="the second member's join parked")
        b.close()  # its parked join will be answered into a closed connection
        again = join_v0(a, "drop", member=first.member_id)
        assert code(again.error_code) == 0
        assert code(a.request(FindV0(key="drop")).error_code) == 0  # the broker is fine
    finally:
        a.close()
