"""The group coordinator: Kafka's classic consumer-group protocol as a sans-IO state machine.

Kafka's counterpart is kafka.coordinator.group.GroupCoordinator with its
GroupMetadata (the classic protocol, before KIP-848); broker/group_api.py is
the I/O around it.

No sockets, no threads, no clock: every call takes `now` (milliseconds, any
monotonic origin) and returns `Effects`:

* `replies`: (token, response) pairs. The token is whatever the caller passed
  with the request (say, the future of a parked request); a request may be
  answered at once, later (a JoinGroup waits for the rebalance), or by another
  call (the leader's SyncGroup releases the followers').
* `appends`: records to append to a partition of __consumer_offsets. Their
  replies are held until the caller reports `append_committed(append_id)`
  (the records are below that partition's high watermark) or
  `append_failed(append_id, error)`. `appended(append_id, last_offset)` plus
  `high_watermark(partition, hw)` do that bookkeeping for the caller.

Timers (session timeouts, rebalance timeouts, group.initial.rebalance.delay.ms)
fire in `tick(now)`; every other call first advances the clock the same way,
and `next_deadline()` says when to call `tick` next.

Requests and responses are the plain dataclasses of broker/group_messages.py,
independent of any codec. Static membership (group.instance.id, KIP-345) is not implemented:
the id is recorded and reported, but such a member is treated as a dynamic
member (it goes through the KIP-394 member-id step and is never fenced with
FENCED_INSTANCE_ID).
"""

from __future__ import annotations

import enum
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping

from .errors import ErrorCode as E
from .group_messages import (
    DeleteGroupsResponse,
    DescribeGroupsResponse,
    DescribedGroup,
    DescribedMember,
    FetchedOffset,
    HeartbeatRequest,
    HeartbeatResponse,
    JoinGroupMember,
    JoinGroupRequest,
    JoinGroupResponse,
    LeaveGroupRequest,
    LeaveGroupResponse,
    LeftMember,
    ListGroupsResponse,
    ListedGroup,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetFetchRequest,
    OffsetFetchResponse,
    PartitionError,
    SyncGroupRequest,
    SyncGroupResponse,
)
from .offsets import (
    GroupMetadataValue,
    MemberMetadata,
    OffsetsRecord,
    OffsetValue,
    group_metadata_record,
    group_tombstone,
    offset_commit_record,
    offset_tombstone,
    partition_for,
    rebuild,
)


class GroupState(str, enum.Enum):
    """A group's state under Kafka's names (DescribeGroups and ListGroups report them).

    Empty                no members; the group still holds its committed offsets, and a
                         JoinGroup starts its first rebalance.
    PreparingRebalance   JoinGroups are parked until every member has rejoined (or the
                         largest rebalance timeout passes); heartbeats answer REBALANCE_IN_PROGRESS.
    CompletingRebalance  the joins are answered; the leader's SyncGroup brings the assignment,
                         and every SyncGroup is parked until it is committed in __consumer_offsets.
    Stable               every member has its assignment and heartbeats.
    Dead                 deleted, or its __consumer_offsets partition moved to another broker:
                         the group has left the coordinator (which describes an unknown group as Dead).
    """
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


_S = GroupState

#: Every legal state change, (from, to) -> what makes a group take it.  Kafka keeps the same
#: rule as each state's validPreviousStates (GroupMetadata.scala), h11 as a table of its
#: connection states; here it is the one place `Group.transition_to` checks and the state
#: diagram in docs/broker.md is drawn from (`python -m broker.groups --diagram`).  Kafka also
#: allows Dead -> Dead, for a group removed twice; here a dead group leaves the coordinator at
#: once, so nothing can remove it again.
TRANSITIONS: dict[tuple[GroupState, GroupState], str] = {
    (_S.EMPTY, _S.PREPARING_REBALANCE): "JoinGroup",
    (_S.PREPARING_REBALANCE, _S.COMPLETING_REBALANCE):
        "every member rejoined, the rebalance timeout, or (a first rebalance) group.initial.rebalance.delay.ms",
    (_S.PREPARING_REBALANCE, _S.EMPTY): "the rebalance ended with no member",
    (_S.COMPLETING_REBALANCE, _S.STABLE): "the leader's assignment is committed",
    (_S.COMPLETING_REBALANCE, _S.PREPARING_REBALANCE):
        "a member joins, leaves or times out, or the assignment could not be stored",
    (_S.STABLE, _S.PREPARING_REBALANCE):
        "a member leaves or times out, a new one joins, or the leader or one with new protocols rejoins",
    (_S.EMPTY, _S.DEAD): "DeleteGroups, or the partition is unloaded",
    (_S.PREPARING_REBALANCE, _S.DEAD): "the partition is unloaded",
    (_S.COMPLETING_REBALANCE, _S.DEAD): "the partition is unloaded",
    (_S.STABLE, _S.DEAD): "the partition is unloaded",
}

#: The states a group starts in, and when: not transitions (there is no state before), but
#: drawn with them.  A loaded group resumes its last stored generation (Kafka's loadGroup).
INITIAL_STATES: dict[GroupState, str] = {
    _S.EMPTY: "created by JoinGroup or OffsetCommit, or loaded without members",
    _S.STABLE: "loaded with members",
}


class IllegalStateTransition(RuntimeError):
    """A state change that TRANSITIONS does not list: a bug in the coordinator, never a client's doing."""

    def __init__(self, group_id: str, from_state: GroupState, to_state: GroupState):
        allowed = [a.value for (a, b) in TRANSITIONS if b is to_state]
        super().__init__(f"group {group_id!r}: illegal transition {from_state.value} -> {to_state.value} "
                         f"({to_state.value} is entered only from {', '.join(allowed) or 'no state'})")
        self.group_id, self.from_state, self.to_state = group_id, from_state, to_state


DIAGRAM_BEGIN = "<!-- BEGIN group-states: generated by `python -m broker.groups --diagram` from TRANSITIONS -->"
DIAGRAM_END = "<!-- END group-states -->"


def state_diagram() -> str:
    """TRANSITIONS and INITIAL_STATES as a Mermaid state diagram between the markers docs/broker.md carries."""
    lines = [DIAGRAM_BEGIN, "```mermaid", "stateDiagram-v2"]
    lines += [f"    [*] --> {s.value}: {why}" for s, why in INITIAL_STATES.items()]
    lines += [f"    {a.value} --> {b.value}: {why}" for (a, b), why in TRANSITIONS.items()]
    lines += [f"    {s.value} --> [*]" for s in GroupState if not any(a is s for a, _ in TRANSITIONS)]
    lines += ["```", DIAGRAM_END]
    return "\n".join(lines) + "\n"


@dataclass
class CoordinatorConfig:
    """Broker settings the coordinator obeys, under Kafka's names (see from_properties)."""
    offsets_topic_num_partitions: int = 50
    group_min_session_timeout_ms: int = 6000
    group_max_session_timeout_ms: int = 1800000
    group_initial_rebalance_delay_ms: int = 3000
    group_max_size: int = 2**31 - 1
    offset_metadata_max_bytes: int = 4096
    offsets_commit_timeout_ms: int = 5000

    KEYS = {
        "offsets.topic.num.partitions": "offsets_topic_num_partitions",
        "group.min.session.timeout.ms": "group_min_session_timeout_ms",
        "group.max.session.timeout.ms": "group_max_session_timeout_ms",
        "group.initial.rebalance.delay.ms": "group_initial_rebalance_delay_ms",
        "group.max.size": "group_max_size",
        "offset.metadata.max.bytes": "offset_metadata_max_bytes",
        "offsets.commit.timeout.ms": "offsets_commit_timeout_ms",
    }

    @classmethod
    def from_properties(cls, props: Mapping[str, str]) -> "CoordinatorConfig":
        """Pick the coordinator's keys out of broker properties; other keys are ignored."""
        kwargs = {}
        for name, attr in cls.KEYS.items():
            if name in props:
                try:
                    kwargs[attr] = int(str(props[name]).strip())
                except ValueError:
                    raise ValueError(f"{name}={props[name]!r}: expected an integer") from None
        cfg = cls(**kwargs)
        if cfg.offsets_topic_num_partitions < 1:
            raise ValueError(f"offsets.topic.num.partitions={cfg.offsets_topic_num_partitions}: must be at least 1")
        if cfg.group_min_session_timeout_ms > cfg.group_max_session_timeout_ms:
            raise ValueError("group.min.session.timeout.ms must not exceed group.max.session.timeout.ms")
        if cfg.group_initial_rebalance_delay_ms < 0:
            raise ValueError("group.initial.rebalance.delay.ms must not be negative")
        return cfg


# --- effects ---------------------------------------------------------------------------


@dataclass
class Append:
    """Records to append to partition `partition` of __consumer_offsets, in this order."""
    append_id: int
    partition: int
    records: list[OffsetsRecord]


@dataclass
class Effects:
    replies: list[tuple[Hashable, Any]] = field(default_factory=list)
    appends: list[Append] = field(default_factory=list)

    def reply(self, token: Hashable, response: Any) -> None:
        self.replies.append((token, response))

    def extend(self, other: "Effects") -> "Effects":
        self.replies.extend(other.replies)
        self.appends.extend(other.appends)
        return self


# --- internal state -----------------------------------------------------------------------


@dataclass
class Member:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    heartbeat_deadline: float
    assignment: bytes = b""
    join_token: Any = None  # a parked JoinGroup
    sync_token: Any = None  # a parked SyncGroup
    awaiting_join: bool = False

    def metadata_for(self, protocol: str | None) -> bytes:
        for name, meta in self.protocols:
            if name == protocol:
                return meta
        return b""


@dataclass
class Group:
    group_id: str
    partition: int
    state: GroupState = GroupState.EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    pending_members: dict[str, float] = field(default_factory=dict)  # KIP-394: member id -> deadline
    state_timestamp: float = -1
    # rebalance: when it completes, and the initial-delay bookkeeping
    join_deadline: float | None = None
    initial_delay: bool = False
    initial_remaining_ms: int = 0
    new_member_added: bool = False
    # after a join: members that must send SyncGroup before sync_deadline
    pending_sync: set[str] = field(default_factory=set)
    sync_deadline: float | None = None
    assignment_stored: bool = False  # the leader's assignment of this generation is being/was stored
    # committed offsets and commits waiting for the offsets partition
    offsets: dict[tuple[str, int], OffsetValue] = field(default_factory=dict)
    offset_append_ids: dict[tuple[str, int], int] = field(default_factory=dict)
    pending_commits: dict[tuple[str, int], int] = field(default_factory=dict)

    def is_(self, *states: GroupState) -> bool:
        return self.state in states

    def transition_to(self, state: GroupState, now: float) -> None:
        """Kafka's GroupMetadata.transitionTo: only along TRANSITIONS, else IllegalStateTransition."""
        if (self.state, state) not in TRANSITIONS:
            raise IllegalStateTransition(self.group_id, self.state, state)
        self.state = state
        self.state_timestamp = now

    def rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def all_joined(self) -> bool:
        return not self.pending_members and all(m.awaiting_join for m in self.members.values())


@dataclass
class _PendingAppend:
    append: Append
    kind: str  # "commit", "sync", "empty", "delete"
    group: Group | None = None
    generation: int = 0
    token: Any = None
    commits: list[tuple[tuple[str, int], OffsetValue]] = field(default_factory=list)
    results: list[PartitionError] = field(default_factory=list)  # pre-decided partition errors
    delete_results: list[tuple[str, int]] = field(default_factory=list)
    last_offset: int | None = None
    deadline: float = float("inf")  # offsets.commit.timeout.ms: then REQUEST_TIMED_OUT


_LOADING, _LOADED = "loading", "loaded"


def _append_error(error: int, for_offsets: bool) -> int:
    """Kafka's mapping of a failed append to __consumer_offsets to a coordinator error."""
    e = int(error)
    if e in (E.UNKNOWN_TOPIC_OR_PARTITION, E.NOT_ENOUGH_REPLICAS, E.NOT_ENOUGH_REPLICAS_AFTER_APPEND):
        return E.COORDINATOR_NOT_AVAILABLE
    if e in (E.NOT_LEADER_OR_FOLLOWER, E.KAFKA_STORAGE_ERROR):
        return E.NOT_COORDINATOR
    if e in (E.MESSAGE_TOO_LARGE, E.RECORD_LIST_TOO_LARGE, E.INVALID_FETCH_SIZE):
        return E.INVALID_COMMIT_OFFSET_SIZE if for_offsets else E.UNKNOWN_SERVER_ERROR
    if e == E.REQUEST_TIMED_OUT and not for_offsets:
        return E.REBALANCE_IN_PROGRESS  # a group store that timed out: members rejoin
    return e


class GroupCoordinator:
    """Every group whose __consumer_offsets partition this broker leads."""

    def __init__(self, config: CoordinatorConfig | None = None, member_id_factory=None):
        self.config = config or CoordinatorConfig()
        self.groups: dict[str, Group] = {}
        self._partitions: dict[int, str] = {}
        self._pending: dict[int, _PendingAppend] = {}
        self._append_ids = itertools.count(1)
        self._new_member_id = member_id_factory or (lambda client_id: f"{client_id}-{uuid.uuid4()}")
        self._now: float = float("-inf")

    # --- partitions of __consumer_offsets ------------------------------------------------

    def partition_for(self, group_id: str) -> int:
        return partition_for(group_id, self.config.offsets_topic_num_partitions)

    def begin_loading(self, partition: int) -> None:
        """This broker became leader of `partition`; requests get COORDINATOR_LOAD_IN_PROGRESS until load_partition."""
        self._partitions[partition] = _LOADING

    def load_partition(self, partition: int, records: Iterable, now: float) -> Effects:
        """Rebuild the groups of `partition` from its records (log order) and start serving them."""
        fx = self._advance(now)
        if any(g.partition == partition for g in self.groups.values()):
            fx.extend(self.unload_partition(partition, now))  # a reload replaces what was there
        state = rebuild(records)
        for gid in sorted(state.group_ids()):
            if self.partition_for(gid) != partition:
                continue  # not ours under the current offsets.topic.num.partitions
            g = Group(gid, partition, state_timestamp=now)
            meta = state.groups.get(gid)
            if meta is not None:
                g.generation = meta.generation
                g.protocol_type = meta.protocol_type or None
                g.protocol_name = meta.protocol
                g.leader_id = meta.leader
                g.state_timestamp = meta.current_state_timestamp
                for m in meta.members:
                    protocols = [(meta.protocol, m.subscription)] if meta.protocol is not None else []
                    g.members[m.member_id] = Member(
                        m.member_id, m.group_instance_id, m.client_id, m.client_host,
                        m.session_timeout_ms, m.rebalance_timeout_ms, meta.protocol_type, protocols,
                        heartbeat_deadline=now + m.session_timeout_ms, assignment=m.assignment)
                # a starting state (INITIAL_STATES), not a transition: nothing came before it
                g.state = GroupState.STABLE if g.members else GroupState.EMPTY
                if g.leader_id not in g.members:
                    g.leader_id = next(iter(g.members), None)
            g.offsets = dict(state.offsets.get(gid, {}))
            self.groups[gid] = g
        self._partitions[partition] = _LOADED
        return fx

    def unload_partition(self, partition: int, now: float) -> Effects:
        """This broker lost leadership of `partition`: drop its groups, answer what waits with NOT_COORDINATOR."""
        fx = self._advance(now)
        self._partitions.pop(partition, None)
        for append_id, p in list(self._pending.items()):
            if p.append.partition == partition:
                fx.extend(self._fail_append(append_id, E.NOT_COORDINATOR))
        for gid, g in list(self.groups.items()):
            if g.partition == partition:
                for m in g.members.values():
                    if m.join_token is not None:
                        fx.reply(m.join_token, JoinGroupResponse(E.NOT_COORDINATOR, member_id=m.member_id))
                        m.join_token = None
                    if m.sync_token is not None:
                        fx.reply(m.sync_token, SyncGroupResponse(E.NOT_COORDINATOR))
                        m.sync_token = None
                g.transition_to(GroupState.DEAD, now)
                del self.groups[gid]
        return fx

    def owned_partitions(self) -> dict[int, str]:
        return dict(self._partitions)

    def _coordinator_error(self, group_id: str) -> int | None:
        status = self._partitions.get(self.partition_for(group_id))
        if status is None:
            return E.NOT_COORDINATOR
        if status == _LOADING:
            return E.COORDINATOR_LOAD_IN_PROGRESS
        return None

    # --- appends to __consumer_offsets ----------------------------------------------------

    def _new_append(self, fx: Effects, partition: int, records: list[OffsetsRecord], kind: str, **kw) -> _PendingAppend:
        append = Append(next(self._append_ids), partition, records)
        pending = _PendingAppend(append, kind, deadline=self._now + self.config.offsets_commit_timeout_ms, **kw)
        self._pending[append.append_id] = pending
        fx.appends.append(append)
        return pending

    def appended(self, append_id: int, last_offset: int) -> None:
        """The caller wrote an append; its last record has offset `last_offset`."""
        p = self._pending.get(append_id)
        if p is not None:
            p.last_offset = last_offset

    def high_watermark(self, partition: int, high_watermark: int, now: float) -> Effects:
        """The high watermark of `partition` advanced: release every append now below it, in order."""
        fx = self._advance(now)
        for append_id in sorted(self._pending):
            p = self._pending.get(append_id)
            if (p is not None and p.append.partition == partition and p.last_offset is not None
                    and p.last_offset < high_watermark):
                fx.extend(self._commit_append(append_id, now))
        return fx

    def append_committed(self, append_id: int, now: float) -> Effects:
        fx = self._advance(now)
        return fx.extend(self._commit_append(append_id, now))

    def append_failed(self, append_id: int, error: int, now: float) -> Effects:
        """The append failed (NOT_LEADER_OR_FOLLOWER, NOT_ENOUGH_REPLICAS, REQUEST_TIMED_OUT...)."""
        fx = self._advance(now)
        return fx.extend(self._fail_append(append_id, error))

    def pending_appends(self) -> list[Append]:
        return [p.append for p in self._pending.values()]

    def _commit_append(self, append_id: int, now: float) -> Effects:
        fx = Effects()
        p = self._pending.pop(append_id, None)
        if p is None:
            return fx
        g = p.group
        if p.kind == "commit":
            for tp, value in p.commits:
                self._end_pending_commit(g, tp)
                # Commits to one partition are appended in id order; never let a
                # late acknowledgement of an older append overwrite a newer offset.
                if g.state is not GroupState.DEAD and g.offset_append_ids.get(tp, 0) < append_id:
                    g.offsets[tp] = value
                    g.offset_append_ids[tp] = append_id
            fx.reply(p.token, OffsetCommitResponse(
                p.results + [PartitionError(t, part, E.NONE) for (t, part), _ in p.commits]))
        elif p.kind == "sync":
            if g.state is GroupState.COMPLETING_REBALANCE and g.generation == p.generation and self.groups.get(g.group_id) is g:
                for m in g.members.values():
                    if m.sync_token is not None:
                        fx.reply(m.sync_token, SyncGroupResponse(E.NONE, m.assignment, g.protocol_type, g.protocol_name))
                        m.sync_token = None
                        m.heartbeat_deadline = now + m.session_timeout_ms
                g.transition_to(GroupState.STABLE, now)
        elif p.kind == "delete":
            fx.reply(p.token, DeleteGroupsResponse(p.delete_results))
        return fx

    def _fail_append(self, append_id: int, error: int) -> Effects:
        fx = Effects()
        p = self._pending.pop(append_id, None)
        if p is None:
            return fx
        g = p.group
        if p.kind == "commit":
            code = _append_error(error, for_offsets=True)
            for tp, _ in p.commits:
                self._end_pending_commit(g, tp)
            fx.reply(p.token, OffsetCommitResponse(
                p.results + [PartitionError(t, part, code) for (t, part), _ in p.commits]))
        elif p.kind == "sync":
            code = _append_error(error, for_offsets=False)
            if g.state is GroupState.COMPLETING_REBALANCE and g.generation == p.generation and self.groups.get(g.group_id) is g:
                for m in g.members.values():
                    m.assignment = b""
                    if m.sync_token is not None:
                        fx.reply(m.sync_token, SyncGroupResponse(code))
                        m.sync_token = None
                fx.extend(self._prepare_rebalance(g, self._now))
        elif p.kind == "delete":
            code = _append_error(error, for_offsets=False)
            fx.reply(p.token, DeleteGroupsResponse(
                [(gid, code if err == E.NONE else err) for gid, err in p.delete_results]))
        return fx

    @staticmethod
    def _end_pending_commit(g: Group, tp: tuple[str, int]) -> None:
        n = g.pending_commits.get(tp, 0) - 1
        if n > 0:
            g.pending_commits[tp] = n
        else:
            g.pending_commits.pop(tp, None)

    def _store_group(self, fx: Effects, g: Group, kind: str, now: float) -> None:
        members = tuple(
            MemberMetadata(m.member_id, m.client_id, m.client_host, m.session_timeout_ms,
                           m.rebalance_timeout_ms, m.metadata_for(g.protocol_name), m.assignment,
                           m.group_instance_id)
            for m in g.members.values())
        value = GroupMetadataValue(g.protocol_type or "", g.generation, g.protocol_name, g.leader_id,
                                   members, int(now))
        self._new_append(fx, g.partition, [group_metadata_record(g.group_id, value)], kind,
                         group=g, generation=g.generation)

    # --- time -------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest time at which tick() has something to do, or None."""
        best = None
        for _, t, _ in self._deadlines():
            if best is None or t < best:
                best = t
        return best

    def tick(self, now: float) -> Effects:
        return self._advance(now)

    def _deadlines(self):
        for append_id, p in self._pending.items():
            yield None, p.deadline, ("append", append_id)
        for g in self.groups.values():
            if g.join_deadline is not None:
                yield g, g.join_deadline, ("join",)
            if g.sync_deadline is not None:
                yield g, g.sync_deadline, ("sync",)
            for mid, t in g.pending_members.items():
                yield g, t, ("pending", mid)
            for m in g.members.values():
                # members waiting in a JoinGroup or SyncGroup are not expected to heartbeat
                if m.join_token is None and m.sync_token is None and not m.awaiting_join:
                    yield g, m.heartbeat_deadline, ("member", m.member_id)

    def _advance(self, now: float) -> Effects:
        """Fire every timer due by `now`, each at its own deadline, earliest first."""
        fx = Effects()
        if now < self._now:
            now = self._now  # the clock never goes back
        while True:
            due = None
            for g, t, what in self._deadlines():
                if t <= now and (due is None or t < due[1]):
                    due = (g, t, what)
            if due is None:
                break
            g, t, what = due
            self._now = max(self._now, t)
            fx.extend(self._fire(g, t, what))
        self._now = now
        return fx

    def _fire(self, g: Group, t: float, what: tuple) -> Effects:
        fx = Effects()
        kind = what[0]
        if kind == "append":
            # not below the high watermark within offsets.commit.timeout.ms: the outcome is
            # unknown to the client (the record may still commit), as in Kafka
            fx.extend(self._fail_append(what[1], E.REQUEST_TIMED_OUT))
        elif kind == "join":
            if g.initial_delay and g.new_member_added and g.initial_remaining_ms > 0:
                # group.initial.rebalance.delay.ms: wait again while members keep arriving
                delay = min(self.config.group_initial_rebalance_delay_ms, g.initial_remaining_ms)
                g.initial_remaining_ms -= delay
                g.new_member_added = False
                g.join_deadline = t + delay
            else:
                fx.extend(self._complete_join(g, t))
        elif kind == "sync":
            # members that did not send SyncGroup within the rebalance timeout are removed
            g.sync_deadline = None
            laggards = list(g.pending_sync)
            g.pending_sync.clear()
            if laggards and g.is_(GroupState.COMPLETING_REBALANCE, GroupState.STABLE):
                for mid in laggards:
                    if mid in g.members:
                        self._remove_member(fx, g, g.members[mid])
                fx.extend(self._after_member_removed(g, t))
        elif kind == "pending":
            del g.pending_members[what[1]]
            if g.is_(GroupState.PREPARING_REBALANCE):
                fx.extend(self._try_complete_join(g, t))
        elif kind == "member":
            m = g.members[what[1]]
            self._remove_member(fx, g, m)
            fx.extend(self._after_member_removed(g, t))
        return fx

    # --- the state machine -----------------------------------------------------------------

    def _add_member(self, g: Group, m: Member) -> None:
        if not g.members:
            g.protocol_type = m.protocol_type
        if g.leader_id is None:
            g.leader_id = m.member_id
        g.members[m.member_id] = m
        if g.initial_delay and g.is_(GroupState.PREPARING_REBALANCE):
            g.new_member_added = True

    def _remove_member(self, fx: Effects, g: Group, m: Member) -> None:
        if m.join_token is not None:
            fx.reply(m.join_token, JoinGroupResponse(E.UNKNOWN_MEMBER_ID, member_id=m.member_id))
        if m.sync_token is not None:
            fx.reply(m.sync_token, SyncGroupResponse(E.UNKNOWN_MEMBER_ID))
        del g.members[m.member_id]
        g.pending_sync.discard(m.member_id)
        if g.leader_id == m.member_id:
            g.leader_id = next(iter(g.members), None)

    def _after_member_removed(self, g: Group, now: float) -> Effects:
        if g.is_(GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            return self._prepare_rebalance(g, now)
        if g.is_(GroupState.PREPARING_REBALANCE):
            return self._try_complete_join(g, now)
        return Effects()

    def _prepare_rebalance(self, g: Group, now: float) -> Effects:
        fx = Effects()
        if g.is_(GroupState.COMPLETING_REBALANCE):
            for m in g.members.values():
                m.assignment = b""
                if m.sync_token is not None:
                    fx.reply(m.sync_token, SyncGroupResponse(E.REBALANCE_IN_PROGRESS))
                    m.sync_token = None
        g.pending_sync.clear()
        g.sync_deadline = None
        rebalance_timeout = g.rebalance_timeout_ms()
        delay = self.config.group_initial_rebalance_delay_ms
        if g.is_(GroupState.EMPTY) and delay > 0:
            g.initial_delay = True
            g.new_member_added = False
            g.initial_remaining_ms = max(rebalance_timeout - delay, 0)
            g.join_deadline = now + min(delay, rebalance_timeout)
        else:
            g.initial_delay = False
            g.join_deadline = now + rebalance_timeout
        g.transition_to(GroupState.PREPARING_REBALANCE, now)
        if not g.initial_delay:
            fx.extend(self._try_complete_join(g, now))
        return fx

    def _try_complete_join(self, g: Group, now: float) -> Effects:
        if g.is_(GroupState.PREPARING_REBALANCE) and not g.initial_delay and g.all_joined():
            return self._complete_join(g, now)
        return Effects()

    def _select_protocol(self, g: Group) -> str:
        members = list(g.members.values())
        candidates = set(n for n, _ in members[0].protocols)
        for m in members[1:]:
            candidates &= set(n for n, _ in m.protocols)
        votes: dict[str, int] = {}
        for m in members:
            vote = next(n for n, _ in m.protocols if n in candidates)
            votes[vote] = votes.get(vote, 0) + 1
        leader = g.members.get(g.leader_id) or members[0]
        order = [n for n, _ in leader.protocols]
        return min(votes, key=lambda n: (-votes[n], order.index(n) if n in order else len(order)))

    def _complete_join(self, g: Group, now: float) -> Effects:
        fx = Effects()
        g.join_deadline = None
        g.initial_delay = False
        # members that did not rejoin within the rebalance timeout are out
        for m in [m for m in g.members.values() if not m.awaiting_join]:
            self._remove_member(fx, g, m)
        g.generation += 1
        g.assignment_stored = False
        if not g.members:
            g.protocol_name = None
            g.protocol_type = None
            g.transition_to(GroupState.EMPTY, now)
            self._store_group(fx, g, "empty", now)
            return fx
        g.protocol_name = self._select_protocol(g)
        g.transition_to(GroupState.COMPLETING_REBALANCE, now)
        rebalance_timeout = g.rebalance_timeout_ms()
        for m in g.members.values():
            m.awaiting_join = False
            m.heartbeat_deadline = now + m.session_timeout_ms
            if m.join_token is not None:
                fx.reply(m.join_token, self._join_response(g, m))
                m.join_token = None
        g.pending_sync = set(g.members)
        g.sync_deadline = now + rebalance_timeout
        return fx

    def _join_response(self, g: Group, m: Member) -> JoinGroupResponse:
        members = []
        if m.member_id == g.leader_id:
            members = [JoinGroupMember(x.member_id, x.group_instance_id, x.metadata_for(g.protocol_name))
                       for x in g.members.values()]
        return JoinGroupResponse(E.NONE, g.generation, g.protocol_type, g.protocol_name,
                                 g.leader_id or "", m.member_id, members)

    # --- JoinGroup ------------------------------------------------------------------------------

    def join_group(self, token: Hashable, req: JoinGroupRequest, now: float) -> Effects:
        fx = self._advance(now)
        now = self._now

        def fail(code: int) -> Effects:
            fx.reply(token, JoinGroupResponse(code, member_id=req.member_id))
            return fx

        if not req.group_id:
            return fail(E.INVALID_GROUP_ID)
        err = self._coordinator_error(req.group_id)
        if err is not None:
            return fail(err)
        if not (self.config.group_min_session_timeout_ms <= req.session_timeout_ms
                <= self.config.group_max_session_timeout_ms):
            return fail(E.INVALID_SESSION_TIMEOUT)
        rebalance_timeout = req.rebalance_timeout_ms if req.rebalance_timeout_ms > 0 else req.session_timeout_ms
        g = self.groups.get(req.group_id)
        if g is None:
            if req.member_id:
                return fail(E.UNKNOWN_MEMBER_ID)
            g = Group(req.group_id, self.partition_for(req.group_id), state_timestamp=now)
            self.groups[req.group_id] = g
        if g.is_(GroupState.DEAD):
            return fail(E.COORDINATOR_NOT_AVAILABLE)
        if not self._supports_protocols(g, req):
            return fail(E.INCONSISTENT_GROUP_PROTOCOL)

        if not req.member_id:
            if len(g.members) + len(g.pending_members) >= self.config.group_max_size:
                return fail(E.GROUP_MAX_SIZE_REACHED)
            member_id = self._new_member_id(req.client_id)
            if req.api_version >= 4:
                # KIP-394: hand out the id, the member joins again with it
                g.pending_members[member_id] = now + req.session_timeout_ms
                fx.reply(token, JoinGroupResponse(E.MEMBER_ID_REQUIRED, member_id=member_id))
                return fx
            return fx.extend(self._add_member_and_rebalance(token, g, req, member_id, rebalance_timeout, now))

        if req.member_id in g.pending_members:
            del g.pending_members[req.member_id]
            return fx.extend(self._add_member_and_rebalance(token, g, req, req.member_id, rebalance_timeout, now))
        m = g.members.get(req.member_id)
        if m is None or g.is_(GroupState.EMPTY):
            return fail(E.UNKNOWN_MEMBER_ID)
        m.heartbeat_deadline = now + req.session_timeout_ms
        same = m.protocols == list(req.protocols)
        if g.is_(GroupState.COMPLETING_REBALANCE) and same:
            # a retried join of this generation: answer it again
            fx.reply(token, self._join_response(g, m))
            return fx
        if g.is_(GroupState.STABLE) and same and m.member_id != g.leader_id:
            fx.reply(token, self._join_response(g, m))
            return fx
        return fx.extend(self._update_member_and_rebalance(token, g, m, req, rebalance_timeout, now))

    def _supports_protocols(self, g: Group, req: JoinGroupRequest) -> bool:
        if not req.protocol_type or not req.protocols:
            return False
        others = [m for mid, m in g.members.items() if mid != req.member_id]
        if not others:
            return True
        if req.protocol_type != g.protocol_type:
            return False
        common = set(n for n, _ in others[0].protocols)
        for m in others[1:]:
            common &= set(n for n, _ in m.protocols)
        return any(n in common for n, _ in req.protocols)

    def _add_member_and_rebalance(self, token, g: Group, req: JoinGroupRequest, member_id: str,
                                  rebalance_timeout: int, now: float) -> Effects:
        m = Member(member_id, req.group_instance_id, req.client_id, req.client_host,
                   req.session_timeout_ms, rebalance_timeout, req.protocol_type, list(req.protocols),
                   heartbeat_deadline=now + req.session_timeout_ms, join_token=token, awaiting_join=True)
        self._add_member(g, m)
        return self._maybe_prepare_rebalance(g, now)

    def _update_member_and_rebalance(self, token, g: Group, m: Member, req: JoinGroupRequest,
                                     rebalance_timeout: int, now: float) -> Effects:
        fx = Effects()
        if m.join_token is not None:
            # superseded by this join (a client retry): the old request gets a retriable answer
            fx.reply(m.join_token, JoinGroupResponse(E.REBALANCE_IN_PROGRESS, member_id=m.member_id))
        m.protocols = list(req.protocols)
        m.session_timeout_ms = req.session_timeout_ms
        m.rebalance_timeout_ms = rebalance_timeout
        m.client_id, m.client_host = req.client_id, req.client_host
        m.join_token = token
        m.awaiting_join = True
        return fx.extend(self._maybe_prepare_rebalance(g, now))

    def _maybe_prepare_rebalance(self, g: Group, now: float) -> Effects:
        if g.is_(GroupState.STABLE, GroupState.COMPLETING_REBALANCE, GroupState.EMPTY):
            return self._prepare_rebalance(g, now)
        return self._try_complete_join(g, now)

    # --- SyncGroup ----------------------------------------------------------------------------

    def sync_group(self, token: Hashable, req: SyncGroupRequest, now: float) -> Effects:
        fx = self._advance(now)
        now = self._now

        def fail(code: int) -> Effects:
            fx.reply(token, SyncGroupResponse(code))
            return fx

        if not req.group_id:
            return fail(E.INVALID_GROUP_ID)
        err = self._coordinator_error(req.group_id)
        if err is not None:
            return fail(err)
        g = self.groups.get(req.group_id)
        if g is None:
            return fail(E.UNKNOWN_MEMBER_ID)
        if g.is_(GroupState.DEAD):
            return fail(E.COORDINATOR_NOT_AVAILABLE)
        m = g.members.get(req.member_id)
        if m is None:
            return fail(E.UNKNOWN_MEMBER_ID)
        if req.generation_id != g.generation:
            return fail(E.ILLEGAL_GENERATION)
        if ((req.protocol_type is not None and req.protocol_type != g.protocol_type)
                or (req.protocol_name is not None and req.protocol_name != g.protocol_name)):
            return fail(E.INCONSISTENT_GROUP_PROTOCOL)
        if g.is_(GroupState.EMPTY):
            return fail(E.UNKNOWN_MEMBER_ID)
        if g.is_(GroupState.PREPARING_REBALANCE):
            return fail(E.REBALANCE_IN_PROGRESS)
        g.pending_sync.discard(m.member_id)
        if not g.pending_sync:
            g.sync_deadline = None
        m.heartbeat_deadline = now + m.session_timeout_ms
        if g.is_(GroupState.STABLE):
            fx.reply(token, SyncGroupResponse(E.NONE, m.assignment, g.protocol_type, g.protocol_name))
            return fx
        # CompletingRebalance: wait for the leader's assignment to be stored
        if m.sync_token is not None:
            fx.reply(m.sync_token, SyncGroupResponse(E.REBALANCE_IN_PROGRESS))
        m.sync_token = token
        if m.member_id == g.leader_id and not g.assignment_stored:
            g.assignment_stored = True
            for x in g.members.values():
                x.assignment = bytes(req.assignments.get(x.member_id, b""))
            self._store_group(fx, g, "sync", now)
        return fx

    # --- Heartbeat --------------------------------------------------------------------------------

    def heartbeat(self, token: Hashable, req: HeartbeatRequest, now: float) -> Effects:
        fx = self._advance(now)
        now = self._now
        fx.reply(token, HeartbeatResponse(self._heartbeat(req, now)))
        return fx

    def _heartbeat(self, req: HeartbeatRequest, now: float) -> int:
        if not req.group_id:
            return E.INVALID_GROUP_ID
        err = self._coordinator_error(req.group_id)
        if err is not None:
            return err
        g = self.groups.get(req.group_id)
        if g is None:
            return E.UNKNOWN_MEMBER_ID
        if g.is_(GroupState.DEAD):
            return E.COORDINATOR_NOT_AVAILABLE
        m = g.members.get(req.member_id)
        if m is None:
            return E.UNKNOWN_MEMBER_ID
        if req.generation_id != g.generation:
            return E.ILLEGAL_GENERATION
        if g.is_(GroupState.EMPTY):
            return E.UNKNOWN_MEMBER_ID
        m.heartbeat_deadline = now + m.session_timeout_ms
        if g.is_(GroupState.PREPARING_REBALANCE):
            return E.REBALANCE_IN_PROGRESS
        return E.NONE

    # --- LeaveGroup -----------------------------------------------------------------------------------

    def leave_group(self, token: Hashable, req: LeaveGroupRequest, now: float) -> Effects:
        fx = self._advance(now)
        now = self._now
        if not req.group_id:
            fx.reply(token, LeaveGroupResponse(E.INVALID_GROUP_ID))
            return fx
        err = self._coordinator_error(req.group_id)
        if err is not None:
            fx.reply(token, LeaveGroupResponse(err))
            return fx
        g = self.groups.get(req.group_id)
        if g is not None and g.is_(GroupState.DEAD):
            fx.reply(token, LeaveGroupResponse(E.COORDINATOR_NOT_AVAILABLE))
            return fx
        results = []
        removed = False
        for lm in req.members:
            if g is not None and lm.member_id in g.pending_members:
                del g.pending_members[lm.member_id]
                results.append(LeftMember(lm.member_id, lm.group_instance_id, E.NONE))
                removed = True
            elif g is not None and lm.member_id in g.members:
                self._remove_member(fx, g, g.members[lm.member_id])
                results.append(LeftMember(lm.member_id, lm.group_instance_id, E.NONE))
                removed = True
            else:
                results.append(LeftMember(lm.member_id, lm.group_instance_id, E.UNKNOWN_MEMBER_ID))
        if removed:
            fx.extend(self._after_member_removed(g, now))
        fx.reply(token, LeaveGroupResponse(E.NONE, results))
        return fx

    # --- OffsetCommit ---------------------------------------------------------------------------------

    def offset_commit(self, token: Hashable, req: OffsetCommitRequest, now: float) -> Effects:
        fx = self._advance(now)
        now = self._now

        def fail(code: int) -> Effects:
            fx.reply(token, OffsetCommitResponse([PartitionError(p.topic, p.partition, code) for p in req.partitions]))
            return fx

        err = self._coordinator_error(req.group_id)
        if err is not None:
            return fail(err)
        g = self.groups.get(req.group_id)
        if g is None:
            if req.generation_id >= 0:
                return fail(E.ILLEGAL_GENERATION)
            # the group only stores offsets in Kafka (assign mode): create it
            g = Group(req.group_id, self.partition_for(req.group_id), state_timestamp=now)
            self.groups[req.group_id] = g
        if g.is_(GroupState.DEAD):
            return fail(E.COORDINATOR_NOT_AVAILABLE)
        if not (req.generation_id < 0 and g.is_(GroupState.EMPTY)):
            if g.is_(GroupState.COMPLETING_REBALANCE):
                return fail(E.REBALANCE_IN_PROGRESS)
            m = g.members.get(req.member_id)
            if m is None:
                return fail(E.UNKNOWN_MEMBER_ID)
            if req.generation_id != g.generation:
                return fail(E.ILLEGAL_GENERATION)
            m.heartbeat_deadline = now + m.session_timeout_ms
        results, commits, records = [], [], []
        expire = now + req.retention_time_ms if req.retention_time_ms >= 0 else -1
        for p in req.partitions:
            metadata = p.metadata or ""
            if len(metadata.encode("utf-8")) > self.config.offset_metadata_max_bytes:
                results.append(PartitionError(p.topic, p.partition, E.OFFSET_METADATA_TOO_LARGE))
                continue
            value = OffsetValue(p.offset, metadata, int(now), p.leader_epoch, int(expire))
            commits.append(((p.topic, p.partition), value))
            records.append(offset_commit_record(g.group_id, p.topic, p.partition, value))
        if not commits:
            fx.reply(token, OffsetCommitResponse(results))
            return fx
        for tp, _ in commits:
            g.pending_commits[tp] = g.pending_commits.get(tp, 0) + 1
        self._new_append(fx, g.partition, records, "commit", group=g, token=token,
                         commits=commits, results=results)
        return fx

    # --- OffsetFetch ------------------------------------------------------------------------------------

    def offset_fetch(self, token: Hashable, req: OffsetFetchRequest, now: float) -> Effects:
        fx = self._advance(now)
        err = self._coordinator_error(req.group_id)
        if err is not None:
            parts = [FetchedOffset(t, p, -1, error_code=err) for t, p in (req.partitions or [])]
            fx.reply(token, OffsetFetchResponse(err, parts))
            return fx
        g = self.groups.get(req.group_id)
        offsets = g.offsets if g is not None else {}
        wanted = sorted(offsets) if req.partitions is None else list(req.partitions)
        parts = []
        for tp in wanted:
            tp = tuple(tp)
            if req.require_stable and g is not None and tp in g.pending_commits:
                parts.append(FetchedOffset(tp[0], tp[1], -1, error_code=E.UNSTABLE_OFFSET_COMMIT))
                continue
            v = offsets.get(tp)
            if v is None:
                parts.append(FetchedOffset(tp[0], tp[1], -1))
            else:
                parts.append(FetchedOffset(tp[0], tp[1], v.offset, v.leader_epoch, v.metadata))
        fx.reply(token, OffsetFetchResponse(E.NONE, parts))
        return fx

    def committed_offsets(self, group_id: str) -> dict[tuple[str, int], int]:
        g = self.groups.get(group_id)
        return {tp: v.offset for tp, v in g.offsets.items()} if g else {}

    # --- DescribeGroups, ListGroups, DeleteGroups ------------------------------------------------------

    def describe_groups(self, token: Hashable, group_ids: list[str], now: float) -> Effects:
        fx = self._advance(now)
        out = []
        for gid in group_ids:
            err = self._coordinator_error(gid)
            g = self.groups.get(gid)
            if err is not None:
                out.append(DescribedGroup(err, gid, "", "", ""))
            elif g is None:
                out.append(DescribedGroup(E.NONE, gid, GroupState.DEAD.value, "", ""))
            else:
                stable = g.is_(GroupState.STABLE)
                members = [DescribedMember(m.member_id, m.group_instance_id, m.client_id, m.client_host,
                                           m.metadata_for(g.protocol_name) if stable else b"",
                                           m.assignment if stable else b"")
                           for m in g.members.values()]
                out.append(DescribedGroup(E.NONE, gid, g.state.value, g.protocol_type or "",
                                          (g.protocol_name or "") if stable else "", members))
        fx.reply(token, DescribeGroupsResponse(out))
        return fx

    def list_groups(self, token: Hashable, now: float, states_filter: Iterable[str] | None = None) -> Effects:
        fx = self._advance(now)
        if any(s == _LOADING for s in self._partitions.values()):
            fx.reply(token, ListGroupsResponse(E.COORDINATOR_LOAD_IN_PROGRESS))
            return fx
        wanted = {s.lower() for s in states_filter} if states_filter else None
        groups = [ListedGroup(g.group_id, g.protocol_type or "", g.state.value)
                  for g in self.groups.values()
                  if not g.is_(GroupState.DEAD) and (wanted is None or g.state.value.lower() in wanted)]
        fx.reply(token, ListGroupsResponse(E.NONE, sorted(groups, key=lambda x: x.group_id)))
        return fx

    def delete_groups(self, token: Hashable, group_ids: list[str], now: float) -> Effects:
        fx = self._advance(now)
        now = self._now
        results: list[tuple[str, int]] = []
        by_partition: dict[int, list[OffsetsRecord]] = {}
        for gid in group_ids:
            err = self._coordinator_error(gid)
            g = self.groups.get(gid)
            if err is not None:
                results.append((gid, err))
            elif g is None or g.is_(GroupState.DEAD):
                results.append((gid, E.GROUP_ID_NOT_FOUND))
            elif not g.is_(GroupState.EMPTY):
                results.append((gid, E.NON_EMPTY_GROUP))
            else:
                g.transition_to(GroupState.DEAD, now)
                del self.groups[gid]
                recs = by_partition.setdefault(g.partition, [])
                recs.extend(offset_tombstone(gid, t, p) for t, p in sorted(g.offsets))
                recs.append(group_tombstone(gid))
                results.append((gid, E.NONE))
        if not by_partition:
            fx.reply(token, DeleteGroupsResponse(results))
            return fx
        # one append per partition; the reply waits for the last of them
        parts = sorted(by_partition)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            self._new_append(fx, part, by_partition[part], "delete" if last else "delete-part",
                             token=token if last else None, delete_results=results if last else [])
        return fx


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m broker.groups", description="The group coordinator's state table.")
    ap.add_argument("--diagram", action="store_true",
                    help="print the state diagram block of docs/broker.md, drawn from TRANSITIONS")
    args = ap.parse_args(argv)
    if not args.diagram:
        ap.print_help()
        return 2
    print(state_diagram(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
