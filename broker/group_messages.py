"""The group coordinator's requests and responses: the fields of the classic group APIs, decoded.

Plain dataclasses, independent of any codec: broker/group_api.py builds the
requests from kio's entities and turns the responses back into kio's, and the
state machine in broker/groups.py takes and returns only these.  Kafka's
counterpart is the generated message classes of org.apache.kafka.common.message
(JoinGroupRequestData, SyncGroupResponseData, ...), cut down to the fields the
coordinator reads or writes.  An `error_code` is a broker/errors.py code.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class JoinGroupRequest:
    group_id: str
    member_id: str
    protocol_type: str
    protocols: list[tuple[str, bytes]]  # (name, metadata), in the member's preference order
    session_timeout_ms: int
    rebalance_timeout_ms: int = -1  # v0 has none: the session timeout is used
    group_instance_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    api_version: int = 5  # v4+ gets the KIP-394 MEMBER_ID_REQUIRED step


@dataclass
class JoinGroupMember:
    member_id: str
    group_instance_id: str | None
    metadata: bytes


@dataclass
class JoinGroupResponse:
    error_code: int
    generation_id: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    member_id: str = ""
    members: list[JoinGroupMember] = field(default_factory=list)  # only the leader's is non-empty


@dataclass
class SyncGroupRequest:
    group_id: str
    generation_id: int
    member_id: str
    assignments: dict[str, bytes] = field(default_factory=dict)  # only the leader sends them
    group_instance_id: str | None = None
    protocol_type: str | None = None  # v5+
    protocol_name: str | None = None  # v5+


@dataclass
class SyncGroupResponse:
    error_code: int
    assignment: bytes = b""
    protocol_type: str | None = None
    protocol_name: str | None = None


@dataclass
class HeartbeatRequest:
    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None = None


@dataclass
class HeartbeatResponse:
    error_code: int


@dataclass
class LeavingMember:
    member_id: str
    group_instance_id: str | None = None


@dataclass
class LeaveGroupRequest:
    group_id: str
    members: list[LeavingMember]  # v0-2: one member built from member_id


@dataclass
class LeftMember:
    member_id: str
    group_instance_id: str | None
    error_code: int


@dataclass
class LeaveGroupResponse:
    error_code: int
    members: list[LeftMember] = field(default_factory=list)  # v0-2: report the first member's error at top level


@dataclass
class CommitPartition:
    topic: str
    partition: int
    offset: int
    leader_epoch: int = -1
    metadata: str | None = ""


@dataclass
class OffsetCommitRequest:
    group_id: str
    partitions: list[CommitPartition]
    generation_id: int = -1  # -1 with member_id "": a simple (assign-mode) commit
    member_id: str = ""
    group_instance_id: str | None = None
    retention_time_ms: int = -1


@dataclass
class PartitionError:
    topic: str
    partition: int
    error_code: int


@dataclass
class OffsetCommitResponse:
    partitions: list[PartitionError]


@dataclass
class OffsetFetchRequest:
    group_id: str
    partitions: list[tuple[str, int]] | None = None  # None: every committed offset of the group
    require_stable: bool = False


@dataclass
class FetchedOffset:
    topic: str
    partition: int
    offset: int  # -1: nothing committed
    leader_epoch: int = -1
    metadata: str = ""
    error_code: int = 0


@dataclass
class OffsetFetchResponse:
    error_code: int  # v2+; v0-1 carry it per partition
    partitions: list[FetchedOffset] = field(default_factory=list)


@dataclass
class DescribedMember:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass
class DescribedGroup:
    error_code: int
    group_id: str
    state: str
    protocol_type: str
    protocol_data: str
    members: list[DescribedMember] = field(default_factory=list)


@dataclass
class DescribeGroupsResponse:
    groups: list[DescribedGroup]


@dataclass
class ListedGroup:
    group_id: str
    protocol_type: str
    state: str


@dataclass
class ListGroupsResponse:
    error_code: int
    groups: list[ListedGroup] = field(default_factory=list)


@dataclass
class DeleteGroupsResponse:
    results: list[tuple[str, int]]  # (group_id, error_code)
