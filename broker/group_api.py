"""The group coordinator at work in the broker: the I/O around broker/groups.py.

``GroupRuntime`` is owned by the server (one per broker).  It

* decodes the group APIs (FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
  LeaveGroup, OffsetCommit, OffsetFetch, DescribeGroups, ListGroups,
  DeleteGroups) from kio entities into the coordinator's dataclasses, and
  encodes its answers back at the request's version;
* carries out the coordinator's ``Effects``: a reply resolves the future the
  request's response task waits on (a closed connection has cancelled it: the
  reply is dropped); an append goes to the local leader of that
  ``__consumer_offsets`` partition with acks=all semantics, and its reply is
  released only once it is committed: with replication, when the replication
  layer acknowledges it as it would an acks=all Produce; standalone, when the
  partition's high watermark passes it (fed from the broker's append
  listeners, which fire whenever a high watermark moves);
* keeps one timer at ``coord.next_deadline()`` for session and rebalance
  timeouts;
* follows leadership: it loads an offsets partition when this broker leads it
  (again when the leader epoch changes) and unloads it when it does not.  It
  looks at the partitions' ``is_leader`` / ``leader_epoch`` on every append
  notification and every 100 ms, so the replication layer needs no hook (it
  may call ``on_leadership_change()`` to react at once).

Requests of one connection are answered in order by the server, so a parked
JoinGroup holds back later responses of its connection, as in Kafka.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time

from . import protocol
from .errors import ErrorCode
from .group_messages import (
    CommitPartition,
    HeartbeatRequest,
    JoinGroupRequest,
    LeaveGroupRequest,
    LeavingMember,
    OffsetCommitRequest,
    OffsetFetchRequest,
    SyncGroupRequest,
)
from .groups import CoordinatorConfig, Effects, GroupCoordinator
from .metadata import MetadataError
from .offsets import OFFSETS_TOPIC, OffsetsFormatError, decode_batches, encode_batch
from .records import InvalidBatch, split_batches

log = logging.getLogger("acked.broker.groups")

OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR = 8, 9, 10
JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP = 11, 12, 13, 14
DESCRIBE_GROUPS, LIST_GROUPS, DELETE_GROUPS = 15, 16, 42

# The APIs served here; their versions are in protocol.SUPPORTED (what ApiVersions advertises).
API_KEYS = frozenset({OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR, JOIN_GROUP, HEARTBEAT,
                      LEAVE_GROUP, SYNC_GROUP, DESCRIBE_GROUPS, LIST_GROUPS, DELETE_GROUPS})
NO_AUTHORIZED_OPERATIONS = -2147483648
RECONCILE_INTERVAL = 0.1  # seconds between looks at who leads the offsets partitions
READ_CHUNK = 1 << 20


def _ms(value) -> int:
    """kio gives durations as timedelta; the coordinator wants milliseconds."""
    if isinstance(value, datetime.timedelta):
        return int(round(value.total_seconds() * 1000))
    return int(value)


def _now_ms() -> float:
    return time.monotonic() * 1000.0


class GroupRuntime:
    def __init__(self, broker):
        self.broker = broker
        cfg = broker.config
        self.coord = GroupCoordinator(CoordinatorConfig.from_properties(
            {k: str(cfg[k]) for k in CoordinatorConfig.KEYS}))
        self.num_partitions = cfg["offsets.topic.num.partitions"]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._watcher: asyncio.Task | None = None
        self._loaded: dict[int, int] = {}  # offsets partition -> leader epoch it was loaded in
        self._unloadable: dict[int, int] = {}  # partition -> leader epoch whose log could not be read
        self._hw_seen: dict[int, int] = {}
        self._hw_scheduled = False
        self._versions_seen: set[tuple[int, int]] = set()
        self._offsets_topic_exists = False
        broker.append_listeners.append(self._on_partition_event)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.reconcile()
        self._watcher = loop.create_task(self._watch())

    def stop(self) -> None:
        """Shutdown: unload every partition (parked requests get NOT_COORDINATOR)."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for p in sorted(self._loaded):
            self._run(self.coord.unload_partition(p, _now_ms()), schedule=False)
        self._loaded.clear()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL)
            try:
                self.reconcile()
            except Exception:
                log.exception("following leadership of %s failed", OFFSETS_TOPIC)

    # -- leadership of __consumer_offsets --------------------------------------------------
    def on_leadership_change(self) -> None:
        """For the replication layer: leadership of some partition changed; follow it now."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.reconcile)

    def reconcile(self) -> None:
        """Load the offsets partitions this broker leads, unload those it no longer leads."""
        now = _now_ms()
        for i in range(self.num_partitions):
            p = self.broker.get_partition(OFFSETS_TOPIC, i)
            leads = p is not None and p.is_leader
            epoch = p.leader_epoch if leads else None
            if i in self._loaded and self._loaded[i] != epoch:
                log.info("no longer coordinator for %s-%d (leader epoch %s now %s): unloading its groups",
                         OFFSETS_TOPIC, i, self._loaded[i], epoch)
                del self._loaded[i]
                self._hw_seen.pop(i, None)
                self._run(self.coord.unload_partition(i, now))
            if leads and i not in self._loaded and self._unloadable.get(i) != epoch:
                self._load(i, p, now)

    def _load(self, index: int, p, now: float) -> None:
        self.coord.begin_loading(index)
        offset, records = p.log_start_offset, []
        try:
            # Everything the leader has: what it holds beyond the high watermark stays in
            # the log of every future leader, so its groups are served from it too.
            while offset < p.log_end_offset:
                data = p.log.read(offset, READ_CHUNK, p.log_end_offset, True)
                if not data:
                    break
                records.extend(r for _, r in decode_batches(data))
                offset = split_batches(data)[-1][1].last_offset + 1
        except (OffsetsFormatError, InvalidBatch) as e:
            # its groups stay COORDINATOR_LOAD_IN_PROGRESS; a new leader epoch tries again
            log.error("%s-%d cannot be loaded: %s; its groups are not served", OFFSETS_TOPIC, index, e)
            self._unloadable[index] = p.leader_epoch
            return
        self._loaded[index] = p.leader_epoch
        self._hw_seen[index] = p.high_watermark
        log.info("coordinator for %s-%d (leader epoch %d): loaded %d record(s)",
                 OFFSETS_TOPIC, index, p.leader_epoch, len(records))
        self._run(self.coord.load_partition(index, records, now))
        self._run(self.coord.high_watermark(index, p.high_watermark, now))

    # -- high watermarks ------------------------------------------------------------------------
    def _on_partition_event(self, p) -> None:
        """A partition appended or moved its high watermark; may run inside an append of ours,
        so only note it and act from the event loop."""
        if p.topic != OFFSETS_TOPIC or self._loop is None or self._hw_scheduled:
            return
        self._hw_scheduled = True
        self._loop.call_soon_threadsafe(self._flush_high_watermarks)

    def _flush_high_watermarks(self) -> None:
        self._hw_scheduled = False
        self.reconcile()
        now = _now_ms()
        for i in list(self._loaded):
            p = self.broker.get_partition(OFFSETS_TOPIC, i)
            if p is not None and p.high_watermark != self._hw_seen.get(i):
                self._hw_seen[i] = p.high_watermark
                self._run(self.coord.high_watermark(i, p.high_watermark, now))

    # -- carrying out effects -------------------------------------------------------------------
    def _run(self, fx: Effects, schedule: bool = True) -> None:
        work = [fx]
        while work:
            fx = work.pop(0)
            for token, response in fx.replies:
                if token is not None and not token.done():
                    token.set_result(response)
            for a in fx.appends:
                work.append(self._append(a))
        if schedule:
            self._schedule_tick()

    def _append(self, a) -> Effects:
        now = _now_ms()
        p = self.broker.get_partition(OFFSETS_TOPIC, a.partition)
        if p is None or not p.is_leader or self._loaded.get(a.partition) != p.leader_epoch:
            return self.coord.append_failed(a.append_id, ErrorCode.NOT_LEADER_OR_FOLLOWER, now)
        error = self._check_acks_all(p)
        if error:
            return self.coord.append_failed(a.append_id, error, now)
        result = p.append_as_leader(encode_batch(a.records, int(time.time() * 1000)))
        if result.error:
            log.warning("append to %s-%d failed: error %d %s", OFFSETS_TOPIC, a.partition,
                        result.error, result.message or "")
            return self.coord.append_failed(a.append_id, result.error, now)
        last_offset = result.base_offset + len(a.records) - 1
        replication = getattr(self.broker, "replication", None)
        if replication is not None:
            # acks=all exactly as a Produce waits: committed on the ISR, or NOT_ENOUGH_REPLICAS_AFTER_APPEND
            # if the ISR fell below min.insync.replicas meanwhile, or REQUEST_TIMED_OUT, or
            # NOT_LEADER_OR_FOLLOWER when leadership is lost first.
            wait = replication.wait_for_ack(OFFSETS_TOPIC, p.index, last_offset + 1,
                                            self.coord.config.offsets_commit_timeout_ms)
            if isinstance(wait, int):
                return self._acked(a.append_id, wait)
            wait.add_done_callback(lambda f, append_id=a.append_id: self._run(
                self._acked(append_id, f.result() if not f.cancelled() else ErrorCode.NOT_LEADER_OR_FOLLOWER)))
            return Effects()
        # standalone: the leader alone is the ISR; the reply waits for the high watermark
        self.coord.appended(a.append_id, last_offset)
        self._hw_seen[a.partition] = p.high_watermark
        return self.coord.high_watermark(a.partition, p.high_watermark, now)

    def _acked(self, append_id: int, error: int) -> Effects:
        if error:
            return self.coord.append_failed(append_id, error, _now_ms())
        return self.coord.append_committed(append_id, _now_ms())

    def _check_acks_all(self, p) -> int:
        """acks=all's admission check (the ISR has min.insync.replicas members), as for a Produce."""
        replication = getattr(self.broker, "replication", None)
        if replication is None:
            return 0  # standalone: the leader alone is the ISR
        error, message = replication.check_produce(OFFSETS_TOPIC, p.index)
        if error:
            log.warning("%s-%d: offsets not written: error %d %s", OFFSETS_TOPIC, p.index, error, message or "")
        return error

    def _schedule_tick(self) -> None:
        if self._loop is None:
            return
        deadline = self.coord.next_deadline()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer, self._timer_at = None, None
            return
        if self._timer is not None and self._timer_at == deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        # loop.time() is time.monotonic(), the clock of _now_ms()
        self._timer = self._loop.call_at(deadline / 1000.0 + 0.001, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        try:
            self._run(self.coord.tick(_now_ms()))
        except Exception:
            log.exception("group coordinator timer failed; trying again in 100 ms")
            self._timer = self._loop.call_later(0.1, self._on_timer)

    # -- requests ---------------------------------------------------------------------------------
    def dispatch(self, req: protocol.Request, peer=None) -> asyncio.Task:
        """A task that produces the response frame (the server sends it in request order)."""
        key = (req.api_key, req.api_version)
        if key not in self._versions_seen:
            self._versions_seen.add(key)
            log.info("first %s v%d request (client %s)", req.name, req.api_version, req.client_id)
        host = "/" + str(peer[0]) if peer else "/"
        handler = _HANDLERS[req.api_key]
        return asyncio.ensure_future(self._respond(req, handler(self, req, host)))

    async def _respond(self, req: protocol.Request, body_coro) -> bytes:
        body = await body_coro
        return protocol.encode_response(req.api_key, req.api_version, req.correlation_id, body)

    def _call(self, method, *args) -> asyncio.Future:
        """Call a coordinator method with a fresh future as token; returns the future."""
        fut = self._loop.create_future()
        self._run(method(fut, *args))
        return fut

    # FindCoordinator --------------------------------------------------------------------------
    async def find_coordinator(self, req, host):
        v, body = req.api_version, req.body
        keys = list(body.coordinator_keys) if v >= 4 else [body.key]
        key_type = getattr(body, "key_type", 0)
        results = [self._find_one(k, key_type) for k in keys]
        if v >= 4:
            return _build(req, {"throttle_time": 0, "coordinators": [
                {"key": k, "node_id": n, "host": h, "port": p, "error_code": e, "error_message": m}
                for k, (e, m, n, h, p) in zip(keys, results)]})
        e, m, n, h, p = results[0]
        return _build(req, {"throttle_time": 0, "error_code": e, "error_message": m,
                            "node_id": n, "host": h, "port": p})

    def _find_one(self, key: str, key_type: int):
        none = (-1, "", -1)
        if key_type != 0:
            return (ErrorCode.COORDINATOR_NOT_AVAILABLE,
                    f"key type {key_type}: only consumer groups (0) have a coordinator here", *none)
        if not key:
            return (ErrorCode.INVALID_GROUP_ID, "group id must not be empty", *none)
        error = self._ensure_offsets_topic()
        if error:
            return (ErrorCode.COORDINATOR_NOT_AVAILABLE, error, *none)
        leader = _leader_of(self.broker, OFFSETS_TOPIC, self.coord.partition_for(key))
        if leader is None:
            return (ErrorCode.COORDINATOR_NOT_AVAILABLE,
                    f"{OFFSETS_TOPIC}-{self.coord.partition_for(key)} has no leader", *none)
        return (0, None, *leader)

    def _ensure_offsets_topic(self) -> str | None:
        if self._offsets_topic_exists or self.broker.metadata.describe(OFFSETS_TOPIC) is not None:
            self._offsets_topic_exists = True
            return None
        rf = self.broker.config["offsets.topic.replication.factor"]
        if self.broker.config.standalone and rf > 1:
            # a standalone broker is the only broker there can be
            log.info("standalone broker: creating %s with replication factor 1 "
                     "(offsets.topic.replication.factor=%d needs ZooKeeper mode)", OFFSETS_TOPIC, rf)
            rf = 1
        try:
            self.broker.create_topic(OFFSETS_TOPIC, self.num_partitions, rf, {})
        except MetadataError as e:
            if self.broker.metadata.describe(OFFSETS_TOPIC) is not None:
                return None  # created meanwhile by another broker
            log.warning("cannot create %s: %s", OFFSETS_TOPIC, e)
            return f"cannot create {OFFSETS_TOPIC}: {e}"
        self.reconcile()
        return None

    # JoinGroup ---------------------------------------------------------------------------------
    async def join_group(self, req, host):
        b, v = req.body, req.api_version
        jr = JoinGroupRequest(
            group_id=b.group_id, member_id=b.member_id, protocol_type=b.protocol_type,
            protocols=[(p.name, bytes(p.metadata)) for p in b.protocols],
            session_timeout_ms=_ms(b.session_timeout),
            rebalance_timeout_ms=_ms(b.rebalance_timeout) if v >= 1 else -1,
            group_instance_id=getattr(b, "group_instance_id", None),
            client_id=req.client_id or "", client_host=host, api_version=v)
        r = await self._call(self.coord.join_group, jr, _now_ms())
        name = r.protocol_name if v >= 7 or r.protocol_name is not None else ""
        return _build(req, {
            "throttle_time": 0, "error_code": int(r.error_code), "generation_id": r.generation_id,
            "protocol_type": r.protocol_type, "protocol_name": name, "leader": r.leader,
            "skip_assignment": False, "member_id": r.member_id,
            "members": [{"member_id": m.member_id, "group_instance_id": m.group_instance_id,
                         "metadata": m.metadata} for m in r.members]})

    # SyncGroup ---------------------------------------------------------------------------------
    async def sync_group(self, req, host):
        b = req.body
        sr = SyncGroupRequest(
            group_id=b.group_id, generation_id=b.generation_id, member_id=b.member_id,
            assignments={a.member_id: bytes(a.assignment) for a in b.assignments},
            group_instance_id=getattr(b, "group_instance_id", None),
            protocol_type=getattr(b, "protocol_type", None), protocol_name=getattr(b, "protocol_name", None))
        r = await self._call(self.coord.sync_group, sr, _now_ms())
        return _build(req, {"throttle_time": 0, "error_code": int(r.error_code),
                            "protocol_type": r.protocol_type, "protocol_name": r.protocol_name,
                            "assignment": r.assignment or b""})

    # Heartbeat ---------------------------------------------------------------------------------
    async def heartbeat(self, req, host):
        b = req.body
        hr = HeartbeatRequest(b.group_id, b.generation_id, b.member_id, getattr(b, "group_instance_id", None))
        r = await self._call(self.coord.heartbeat, hr, _now_ms())
        return _build(req, {"throttle_time": 0, "error_code": int(r.error_code)})

    # LeaveGroup --------------------------------------------------------------------------------
    async def leave_group(self, req, host):
        b, v = req.body, req.api_version
        if v <= 2:
            members = [LeavingMember(b.member_id)]
        else:
            members = [LeavingMember(m.member_id, m.group_instance_id) for m in b.members]
        r = await self._call(self.coord.leave_group, LeaveGroupRequest(b.group_id, members), _now_ms())
        error = int(r.error_code)
        if v <= 2 and error == 0 and r.members:
            error = int(r.members[0].error_code)
        return _build(req, {"throttle_time": 0, "error_code": error, "members": [
            {"member_id": m.member_id, "group_instance_id": m.group_instance_id,
             "error_code": int(m.error_code)} for m in r.members]})

    # OffsetCommit ------------------------------------------------------------------------------
    async def offset_commit(self, req, host):
        b, v = req.body, req.api_version
        order: list[tuple[str, int]] = []
        errors: dict[tuple[str, int], int] = {}
        parts: list[CommitPartition] = []
        for t in b.topics:
            info = None
            for p in t.partitions:
                tp = (t.name, p.partition_index)
                order.append(tp)
                if self.broker.get_partition(*tp) is None:  # not a local replica: ask the metadata
                    info = info or self.broker.metadata.describe(t.name)
                    known = info is not None and 0 <= p.partition_index < info.partitions
                else:
                    known = True
                if not known:
                    errors[tp] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                    continue
                parts.append(CommitPartition(t.name, p.partition_index, p.committed_offset,
                                             getattr(p, "committed_leader_epoch", -1), p.committed_metadata))
        if parts:
            retention = _ms(b.retention_time) if v <= 4 and hasattr(b, "retention_time") else -1
            cr = OffsetCommitRequest(b.group_id, parts, b.generation_id_or_member_epoch, b.member_id,
                                     getattr(b, "group_instance_id", None), retention)
            r = await self._call(self.coord.offset_commit, cr, _now_ms())
            for pe in r.partitions:
                errors[(pe.topic, pe.partition)] = int(pe.error_code)
        topics: dict[str, list] = {}
        for tp in order:
            topics.setdefault(tp[0], []).append({"partition_index": tp[1], "error_code": int(errors[tp])})
        return _build(req, {"throttle_time": 0, "topics": [
            {"name": n, "partitions": ps} for n, ps in topics.items()]})

    # OffsetFetch -------------------------------------------------------------------------------
    async def offset_fetch(self, req, host):
        b, v = req.body, req.api_version
        stable = bool(getattr(b, "require_stable", False))
        if v >= 8:
            futures = [self._call(self.coord.offset_fetch, OffsetFetchRequest(
                g.group_id, _wanted(g.topics), stable), _now_ms()) for g in b.groups]
            groups = []
            for g, fut in zip(b.groups, futures):
                r = await fut
                groups.append({"group_id": g.group_id, "error_code": int(r.error_code),
                               "topics": _fetched_topics(r.partitions, None)})
            return _build(req, {"throttle_time": 0, "groups": groups})
        r = await self._call(self.coord.offset_fetch, OffsetFetchRequest(
            b.group_id, _wanted(b.topics), stable), _now_ms())
        # v0-1 have no top-level error code: it is carried by each partition
        per_partition = int(r.error_code) if v <= 1 else None
        return _build(req, {"throttle_time": 0, "error_code": int(r.error_code),
                            "topics": _fetched_topics(r.partitions, per_partition)})

    # DescribeGroups, ListGroups, DeleteGroups ---------------------------------------------------
    async def describe_groups(self, req, host):
        r = await self._call(self.coord.describe_groups, list(req.body.groups), _now_ms())
        return _build(req, {"throttle_time": 0, "groups": [{
            "error_code": int(g.error_code), "group_id": g.group_id, "group_state": g.state,
            "protocol_type": g.protocol_type, "protocol_data": g.protocol_data,
            "authorized_operations": NO_AUTHORIZED_OPERATIONS,
            "members": [{"member_id": m.member_id, "group_instance_id": m.group_instance_id,
                         "client_id": m.client_id, "client_host": m.client_host,
                         "member_metadata": m.metadata, "member_assignment": m.assignment}
                        for m in g.members]} for g in r.groups]})

    async def list_groups(self, req, host):
        b = req.body
        types = [t.lower() for t in (getattr(b, "types_filter", None) or ())]
        r = await self._call(self.coord.list_groups, _now_ms(), list(getattr(b, "states_filter", None) or ()) or None)
        groups = [] if types and "classic" not in types else r.groups
        return _build(req, {"throttle_time": 0, "error_code": int(r.error_code), "groups": [
            {"group_id": g.group_id, "protocol_type": g.protocol_type, "group_state": g.state,
             "group_type": "classic"} for g in groups]})

    async def delete_groups(self, req, host):
        r = await self._call(self.coord.delete_groups, list(req.body.groups_names), _now_ms())
        return _build(req, {"throttle_time": 0, "results": [
            {"group_id": gid, "error_code": int(e)} for gid, e in r.results]})


_HANDLERS = {
    OFFSET_COMMIT: GroupRuntime.offset_commit, OFFSET_FETCH: GroupRuntime.offset_fetch,
    FIND_COORDINATOR: GroupRuntime.find_coordinator, JOIN_GROUP: GroupRuntime.join_group,
    HEARTBEAT: GroupRuntime.heartbeat, LEAVE_GROUP: GroupRuntime.leave_group,
    SYNC_GROUP: GroupRuntime.sync_group, DESCRIBE_GROUPS: GroupRuntime.describe_groups,
    LIST_GROUPS: GroupRuntime.list_groups, DELETE_GROUPS: GroupRuntime.delete_groups,
}


# -- helpers ------------------------------------------------------------------------------------

def _build(req: protocol.Request, data: dict):
    return protocol.build_response(req.api_key, req.api_version, data)


def _wanted(topics) -> list[tuple[str, int]] | None:
    if topics is None:
        return None
    return [(t.name, p) for t in topics for p in t.partition_indexes]


def _fetched_topics(partitions, error: int | None) -> list[dict]:
    topics: dict[str, list] = {}
    for f in partitions:
        topics.setdefault(f.topic, []).append({
            "partition_index": f.partition, "committed_offset": f.offset,
            "committed_leader_epoch": f.leader_epoch, "metadata": f.metadata,
            "error_code": int(f.error_code) or (error or 0)})
    return [{"name": n, "partitions": ps} for n, ps in topics.items()]


def _leader_of(broker, topic: str, index: int) -> tuple[int, str, int] | None:
    """(node id, host, port) of the leader of topic-index, or None if it has none."""
    info = broker.metadata.describe(topic)
    if info is None:
        return None
    if getattr(broker, "replication", None) is None:
        return broker.broker_id, broker.advertised_host, broker.advertised_port
    leader = broker.partition_metadata(info, index).get("leader_id", -1)
    for node_id, host, port in broker.live_brokers():
        if node_id == leader:
            return node_id, host, port
    return None
