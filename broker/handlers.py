"""One function per API: (broker, request) -> response entity (or None: no response).

Sans-IO: these touch only the Broker's state.  The long poll of Fetch is the
server's job: ``fetch`` reports how many bytes it found so the server can wait
for more and ask again.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from . import protocol
from .config import KEYS, TOPIC_KEYS, TopicConfig
from .core import Broker
from .errors import (FENCED_LEADER_EPOCH, INVALID_CONFIG, INVALID_REPLICA_ASSIGNMENT, INVALID_REQUEST,
                     INVALID_REQUIRED_ACKS, NONE, NOT_ENOUGH_REPLICAS, NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                     NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT, UNKNOWN_LEADER_EPOCH, UNKNOWN_TOPIC_ID,
                     UNKNOWN_TOPIC_OR_PARTITION)
from .fetch_sessions import FINAL_EPOCH, FetchContext, FetchParams
from .metadata import MetadataError, TopicInfo, check_topic_name
from .partition import ReadResult
from .protocol import Request, build_response

log = logging.getLogger("acked.broker.handlers")
ZERO_UUID = uuid.UUID(int=0)

TOPIC_RESOURCE, BROKER_RESOURCE = 2, 4
DYNAMIC_TOPIC_CONFIG, STATIC_BROKER_CONFIG, DEFAULT_CONFIG = 1, 4, 5


def _resp(req: Request, data: dict):
    return build_response(req.api_key, req.api_version, data)


@dataclass
class Deferred:
    """A response that waits for replication (acks=all): the server awaits `waits` (awaitables
    from broker.replication, each resolving to an error code) and sends `finish(codes)` (a body,
    or a whole response frame as bytes)."""
    waits: list
    finish: Callable[[list[int]], Any]


# -- ApiVersions -----------------------------------------------------------------------

def api_versions(broker: Broker, req: Request):
    return protocol.api_versions_body(req.api_version)


# -- Produce ---------------------------------------------------------------------------

def produce(broker: Broker, req: Request):
    """acks=all in replicated mode answers once the ISR has the batches: a Deferred."""
    body = req.body
    acks = body.acks
    # The client's request.timeout.ms travels as the produce timeout (as in Kafka).
    timeout_ms = int(body.timeout.total_seconds() * 1000)
    if timeout_ms <= 0:
        timeout_ms = broker.config["request.timeout.ms"]
    topics = []
    waiting = []
    for t in body.topic_data:
        parts = []
        for pd in t.partition_data:
            out = _produce_partition(broker, t.name, pd.index, pd.records, acks, body.transactional_id, timeout_ms)
            if isinstance(out, tuple):
                out, wait = out
                waiting.append((out, wait))
            parts.append(out)
        topics.append({"name": t.name, "partition_responses": parts})
    if acks == 0:
        return None
    if not waiting:
        return _produce_frame(req, topics)

    def finish(codes: list[int]):
        for (out, _wait), code in zip(waiting, codes):
            if code:
                out.update(error_code=code, error_message=_ACK_ERRORS.get(code))
        return _produce_frame(req, topics)
    return Deferred([w for _o, w in waiting], finish)


def _produce_frame(req: Request, topics: list[dict]) -> bytes:
    """The whole response frame, written by hand (protocol.encode_produce_response)."""
    return protocol.encode_produce_response(req.api_version, req.correlation_id, [
        (t["name"], [(p["index"], p["error_code"], p["base_offset"], p["log_append_time"], p["log_start_offset"],
                      p["error_message"]) for p in t["partition_responses"]]) for t in topics])


_ACK_ERRORS = {
    REQUEST_TIMED_OUT: "not replicated to the in-sync replicas within the request timeout (REQUEST_TIMED_OUT)",
    NOT_LEADER_OR_FOLLOWER: "leadership lost while waiting for the in-sync replicas",
    NOT_ENOUGH_REPLICAS_AFTER_APPEND: "appended, but the ISR shrank below min.insync.replicas while waiting",
}


def _produce_partition(broker: Broker, topic: str, index: int, data, acks: int, txn_id, timeout_ms: int):
    out = {"index": index, "base_offset": -1, "log_append_time": -1, "log_start_offset": -1,
           "record_errors": (), "error_message": None}
    if acks not in (0, 1, -1):
        return {**out, "error_code": INVALID_REQUIRED_ACKS, "error_message": f"acks={acks}: use 0, 1 or -1"}
    if txn_id is not None:
        return {**out, "error_code": INVALID_REQUEST, "error_message": "transactions are not supported"}
    p = broker.get_partition(topic, index)
    if p is None:
        return {**out, "error_code": UNKNOWN_TOPIC_OR_PARTITION}
    replication = broker.replication
    if acks == -1:
        if replication is not None:
            error, message = replication.check_produce(topic, index)
        else:
            isr_size = 1  # single node: the leader alone is the ISR
            error, message = NONE, None
            if isr_size < p.config["min.insync.replicas"]:
                error = NOT_ENOUGH_REPLICAS
                message = f"ISR size {isr_size} < min.insync.replicas={p.config['min.insync.replicas']}"
        if error:
            return {**out, "error_code": error, "error_message": message}
    result = p.append_as_leader(bytes(data) if data is not None else b"")
    if result.error:
        log.info("produce to %s-%d refused: error %d %s", topic, index, result.error, result.message or "")
    out = {**out, "error_code": result.error, "base_offset": result.base_offset,
           "log_start_offset": result.log_start_offset, "error_message": result.message}
    if result.error or acks != -1 or replication is None:
        return out
    wait = replication.wait_for_ack(topic, index, p.log_end_offset, timeout_ms)
    if isinstance(wait, int):
        return {**out, "error_code": wait, "error_message": _ACK_ERRORS.get(wait)} if wait else out
    return out, wait


# -- Fetch -----------------------------------------------------------------------------

def fetch_context(broker: Broker, req: Request) -> FetchContext:
    """Resolve the request's fetch session (KIP-227) once per request: which partitions to read,
    and whether the response is incremental.  Fetch v4-v6 have no session fields: sessionless."""
    body = req.body
    requested = {}
    for t in body.topics:
        for fp in t.partitions:
            requested[(t.topic, fp.partition)] = FetchParams(
                fp.fetch_offset, getattr(fp, "log_start_offset", -1), fp.partition_max_bytes,
                getattr(fp, "current_leader_epoch", -1))
    forgotten = [(t.topic, p) for t in (getattr(body, "forgotten_topics_data", None) or ()) for p in t.partitions]
    return broker.fetch_sessions.context(getattr(body, "session_id", 0), getattr(body, "session_epoch", FINAL_EPOCH),
                                         requested, forgotten, body.replica_id)


@dataclass
class FetchReply:
    """One evaluation of a Fetch: the response's topics as protocol.encode_fetch_response takes them."""
    error_code: int
    session_id: int
    topics: list            # [(topic, [(partition, error, hw, lso, log start, aborted, records)])]
    found: int              # bytes of records in the response
    error: bool             # whether any partition (or the request) had an error
    included: list          # (key, high watermark, log start) per partition in the response

    def encode(self, req: Request) -> bytes:
        return protocol.encode_fetch_response(req.api_version, req.correlation_id, self.error_code,
                                              self.session_id, self.topics)


def fetch(broker: Broker, req: Request, ctx: FetchContext | None = None, first: bool = True) -> FetchReply:
    """Read what the request (or its session) asks for.

    An incremental fetch looks only at the session partitions that the request names, that were
    touched since (appends, high watermark, leadership or ISR changes) or that are watched (see
    FetchContext.to_examine).  A follower's fetch (replica_id >= 0) reports its log end offset to
    the leader for each of them; an unexamined partition is one where the follower is in step.
    The server's long poll calls this again on wake-ups with first=False, which reports nothing.
    Once a reply is sent, the server calls ctx.sent(reply.included)."""
    if ctx is None:
        ctx = fetch_context(broker, req)
    body = req.body
    if ctx.error:
        return FetchReply(ctx.error, 0, [], 0, True, [])
    committed_only = body.replica_id < 0
    report = broker.replication is not None and not committed_only and first
    read_uncommitted = body.isolation_level == 0
    remaining = body.max_bytes if body.max_bytes > 0 else 2**31 - 1
    total = 0
    any_error = False
    topics: dict[str, list] = {}
    included = []
    partitions = broker.partitions
    must_include = ctx.must_include
    named = ctx.named
    params = ctx.partitions
    for key in ctx.to_examine(first):
        fp = params[key]
        p = partitions.get(key)
        error = NONE
        if p is None:
            error = UNKNOWN_TOPIC_OR_PARTITION
        elif fp.current_leader_epoch >= 0 and fp.current_leader_epoch != p.leader_epoch:
            error = FENCED_LEADER_EPOCH if fp.current_leader_epoch < p.leader_epoch else UNKNOWN_LEADER_EPOCH
        elif broker.replication is not None:
            if not p.is_leader:
                error = NOT_LEADER_OR_FOLLOWER
            elif report:
                error, in_step = broker.replication.on_follower_fetch(key[0], key[1], body.replica_id,
                                                                      fp.fetch_offset, named=key in named)
                if not in_step:
                    ctx.watch(key)   # until it is in step, an unchanged offset still has work to do
        if error:
            any_error = True
            ctx.watch(key)   # repeated on every round, named or not, until the fetcher acts on it
            topics.setdefault(key[0], []).append((key[1], error, -1, -1, -1, None, b""))
            continue
        hw = p.high_watermark
        start = p.log_start_offset
        limit = hw if committed_only else p.log_end_offset
        if fp.fetch_offset == limit and fp.fetch_offset >= start:
            # nothing to read (the common case of an idle partition): no read, and in an incremental
            # session nothing to say unless the high watermark or log start moved
            if not must_include(key, 0, hw, start):
                continue
            rr = ReadResult(NONE, b"", hw, hw, start)
        else:
            rr = p.read(fp.fetch_offset, min(fp.max_bytes, remaining),
                        committed_only=committed_only, must_return_one=total == 0)
            if rr.error:
                any_error = True
                ctx.watch(key)
            elif not must_include(key, len(rr.records), rr.high_watermark, rr.log_start_offset):
                continue
        remaining -= len(rr.records)
        total += len(rr.records)
        included.append((key, rr.high_watermark, rr.log_start_offset))
        topics.setdefault(key[0], []).append((key[1], rr.error, rr.high_watermark, rr.last_stable_offset,
                                              rr.log_start_offset, None if read_uncommitted else (), rr.records))
    return FetchReply(NONE, ctx.session_id, list(topics.items()), total, any_error, included)


# -- ListOffsets ------------------------------------------------------------------------

def list_offsets(broker: Broker, req: Request):
    topics = []
    for t in req.body.topics:
        parts = []
        for lp in t.partitions:
            parts.append(_list_offset(broker, req, t.name, lp))
        topics.append({"name": t.name, "partitions": parts})
    return _resp(req, {"throttle_time": 0, "topics": topics})


def _list_offset(broker: Broker, req: Request, topic: str, lp) -> dict:
    out = {"partition_index": lp.partition_index, "timestamp": -1, "offset": -1, "leader_epoch": -1}
    p = broker.get_partition(topic, lp.partition_index)
    if p is None:
        return {**out, "error_code": UNKNOWN_TOPIC_OR_PARTITION}
    epoch = getattr(lp, "current_leader_epoch", -1)
    if epoch >= 0 and epoch != p.leader_epoch:
        return {**out, "error_code": FENCED_LEADER_EPOCH if epoch < p.leader_epoch else UNKNOWN_LEADER_EPOCH}
    if broker.replication is not None and not p.is_leader:
        return {**out, "error_code": NOT_LEADER_OR_FOLLOWER}
    ts = lp.timestamp
    out["leader_epoch"] = p.leader_epoch
    if ts == -1:    # latest: what consumers may read
        return {**out, "error_code": NONE, "offset": p.high_watermark}
    if ts == -2:    # earliest
        return {**out, "error_code": NONE, "offset": p.log_start_offset}
    # max timestamp (KIP-734), else the first offset at or after ts; either answer only below the high watermark,
    # as Kafka's Partition.fetchOffsetForTimestamp filters every timestamp lookup by the last fetchable offset
    # (an uncommitted acks=1 record must not be named; found by make mutation)
    found = p.log.max_timestamp() if ts == -3 else p.log.offset_for_timestamp(ts)
    if found is None or found[0] >= p.high_watermark:
        return {**out, "error_code": NONE}
    return {**out, "error_code": NONE, "offset": found[0], "timestamp": found[1]}


# -- Metadata ---------------------------------------------------------------------------

def metadata(broker: Broker, req: Request):
    body = req.body
    v = req.api_version
    wanted: list[tuple[str | None, uuid.UUID | None]]
    if body.topics is None or (v == 0 and not body.topics):
        wanted = [(n, None) for n in sorted(broker.metadata.topics)]
    else:
        wanted = [(t.name, getattr(t, "topic_id", None)) for t in body.topics]
    allow_auto = getattr(body, "allow_auto_topic_creation", True)
    topics = []
    for name, topic_id in wanted:
        info = None
        if name is None and topic_id is not None and topic_id != ZERO_UUID:
            info = broker.metadata.by_id(topic_id)
            if info is None:
                topics.append({"error_code": UNKNOWN_TOPIC_ID, "name": None, "topic_id": topic_id,
                               "is_internal": False, "partitions": ()})
                continue
        else:
            info = broker.metadata.describe(name)
            if info is None:
                error = UNKNOWN_TOPIC_OR_PARTITION
                try:
                    check_topic_name(name)
                    if allow_auto and body.topics is not None:
                        info = broker.auto_create(name)
                except MetadataError as e:
                    error = e.error_code
                if info is None:
                    topics.append({"error_code": error, "name": name, "topic_id": ZERO_UUID,
                                   "is_internal": False, "partitions": ()})
                    continue
        topics.append(_topic_metadata(broker, info))
    return _resp(req, {
        "throttle_time": 0,
        "brokers": [{"node_id": node_id, "host": host, "port": port, "rack": None}
                    for node_id, host, port in broker.live_brokers()],
        "cluster_id": broker.cluster_id,
        "controller_id": broker.controller_id(),
        "topics": topics,
        "cluster_authorized_operations": -2147483648,
    })


def _topic_metadata(broker: Broker, info: TopicInfo) -> dict:
    parts = [{"partition_index": i, **broker.partition_metadata(info, i)} for i in range(info.partitions)]
    return {"error_code": NONE, "name": info.name, "topic_id": info.topic_id,
            "is_internal": info.name.startswith("__"), "partitions": parts,
            "topic_authorized_operations": -2147483648}


# -- CreateTopics / DeleteTopics --------------------------------------------------------

def create_topics(broker: Broker, req: Request):
    body = req.body
    results = []
    for t in body.topics:
        n, rf = t.num_partitions, t.replication_factor
        res = {"name": t.name, "topic_id": ZERO_UUID, "error_message": None,
               "num_partitions": -1, "replication_factor": -1, "configs": None}
        if t.assignments:
            if n != -1 or rf != -1:
                results.append({**res, "error_code": INVALID_REQUEST,
                                "error_message": "give either assignments or num_partitions/replication_factor"})
                continue
            if broker.replication is not None:
                assignment = {a.partition_index: list(a.broker_ids) for a in t.assignments}
                if sorted(assignment) != list(range(len(assignment))):
                    results.append({**res, "error_code": INVALID_REPLICA_ASSIGNMENT,
                                    "error_message": "assignments must cover partitions 0..n-1"})
                    continue
            else:
                ids = {tuple(a.broker_ids) for a in t.assignments}
                if any(set(i) != {broker.broker_id} for i in ids):
                    results.append({**res, "error_code": INVALID_REPLICA_ASSIGNMENT,
                                    "error_message": f"only broker {broker.broker_id} exists"})
                    continue
            n, rf = len(t.assignments), 1
        n = broker.config["num.partitions"] if n == -1 else n
        rf = broker.config["default.replication.factor"] if rf == -1 else rf
        configs = {c.name: c.value for c in t.configs}
        kwargs = {}
        if t.assignments and broker.replication is not None:
            kwargs["assignment"] = {a.partition_index: list(a.broker_ids) for a in t.assignments}
        try:
            info = broker.create_topic(t.name, n, rf, configs, body.validate_only, **kwargs)
        except MetadataError as e:
            results.append({**res, "error_code": e.error_code, "error_message": str(e)})
            continue
        tc = broker.topic_config(info)
        results.append({**res, "error_code": NONE, "topic_id": info.topic_id,
                        "num_partitions": info.partitions, "replication_factor": info.replication_factor,
                        "configs": [{"name": name, "value": value, "read_only": False,
                                     "config_source": source, "is_sensitive": False}
                                    for name, value, source in tc.describe()]})
    return _resp(req, {"throttle_time": 0, "topics": results})


def delete_topics(broker: Broker, req: Request):
    body = req.body
    if hasattr(body, "topic_names"):
        wanted = [(n, None) for n in body.topic_names]
    else:
        wanted = [(t.name, t.topic_id) for t in body.topics]
    out = []
    for name, topic_id in wanted:
        if name is None and topic_id is not None:
            info = broker.metadata.by_id(topic_id)
            if info is None:
                out.append({"name": None, "topic_id": topic_id, "error_code": UNKNOWN_TOPIC_ID,
                            "error_message": f"no topic with id {topic_id}"})
                continue
            name = info.name
        try:
            info = broker.delete_topic(name)
            out.append({"name": name, "topic_id": info.topic_id, "error_code": NONE, "error_message": None})
        except MetadataError as e:
            out.append({"name": name, "topic_id": topic_id or ZERO_UUID, "error_code": e.error_code,
                        "error_message": str(e)})
    return _resp(req, {"throttle_time": 0, "responses": out})


# -- DescribeConfigs / IncrementalAlterConfigs --------------------------------------------

def describe_configs(broker: Broker, req: Request):
    body = req.body
    results = []
    for r in req.body.resources:
        res = {"resource_type": r.resource_type, "resource_name": r.resource_name,
               "error_message": None, "configs": ()}
        keys = set(r.configuration_keys) if r.configuration_keys is not None else None
        if r.resource_type == TOPIC_RESOURCE:
            info = broker.metadata.describe(r.resource_name)
            if info is None:
                results.append({**res, "error_code": UNKNOWN_TOPIC_OR_PARTITION,
                                "error_message": f"topic {r.resource_name} does not exist"})
                continue
            entries = []
            tc = TopicConfig(broker.config, info.configs)
            for name, value, source in tc.describe():
                if keys is not None and name not in keys:
                    continue
                synonyms = []
                if body.include_synonyms:
                    if name in info.configs:
                        synonyms.append({"name": name, "value": info.configs[name], "source": DYNAMIC_TOPIC_CONFIG})
                    bk = TOPIC_KEYS[name][1]
                    if bk is not None and broker.config.is_set(bk):
                        synonyms.append({"name": bk, "value": broker.config.raw[bk], "source": STATIC_BROKER_CONFIG})
                    dv = KEYS[bk].default if bk else TOPIC_KEYS[name][2]
                    if dv is not None:
                        synonyms.append({"name": bk or name, "value": dv, "source": DEFAULT_CONFIG})
                entries.append({"name": name, "value": value, "read_only": False, "config_source": source,
                                "is_sensitive": False, "synonyms": synonyms, "config_type": 0,
                                "documentation": None})
            results.append({**res, "error_code": NONE, "configs": entries})
        elif r.resource_type == BROKER_RESOURCE:
            if r.resource_name not in ("", str(broker.broker_id)):
                results.append({**res, "error_code": INVALID_REQUEST,
                                "error_message": f"this is broker {broker.broker_id}"})
                continue
            entries = []
            for name, key in sorted(KEYS.items()):
                if keys is not None and name not in keys:
                    continue
                set_ = broker.config.is_set(name)
                value = broker.config.raw[name] if set_ else key.default
                entries.append({"name": name, "value": value, "read_only": True,
                                "config_source": STATIC_BROKER_CONFIG if set_ else DEFAULT_CONFIG,
                                "is_sensitive": False, "synonyms": [], "config_type": 0,
                                "documentation": key.doc if getattr(body, "include_documentation", False) else None})
            results.append({**res, "error_code": NONE, "configs": entries})
        else:
            results.append({**res, "error_code": INVALID_REQUEST,
                            "error_message": f"resource type {r.resource_type} is not supported (2=topic, 4=broker)"})
    return _resp(req, {"throttle_time": 0, "results": results})


def incremental_alter_configs(broker: Broker, req: Request):
    out = []
    for r in req.body.resources:
        res = {"resource_type": r.resource_type, "resource_name": r.resource_name, "error_message": None}
        if r.resource_type != TOPIC_RESOURCE:
            out.append({**res, "error_code": INVALID_REQUEST,
                        "error_message": "only topic configs can be altered; broker configs are static"})
            continue
        set_, delete = {}, []
        error = None
        for c in r.configs:
            if c.config_operation == 0:
                set_[c.name] = c.value
            elif c.config_operation == 1:
                delete.append(c.name)
            else:
                error = f"operation {c.config_operation} on {c.name}: only SET (0) and DELETE (1) apply to these configs"
        if error:
            out.append({**res, "error_code": INVALID_CONFIG, "error_message": error})
            continue
        try:
            broker.alter_topic_config(r.resource_name, set_, delete, req.body.validate_only)
            out.append({**res, "error_code": NONE})
        except MetadataError as e:
            out.append({**res, "error_code": e.error_code, "error_message": str(e)})
    return _resp(req, {"throttle_time": 0, "responses": out})


# -- InitProducerId ------------------------------------------------------------------------

def init_producer_id(broker: Broker, req: Request):
    body = req.body
    if body.transactional_id is not None:
        return _resp(req, {"throttle_time": 0, "error_code": INVALID_REQUEST,
                           "producer_id": -1, "producer_epoch": -1})
    pid = getattr(body, "producer_id", -1)
    epoch = getattr(body, "producer_epoch", -1)
    if pid >= 0 and 0 <= epoch < 32766 and pid < broker.metadata.producer_id_limit:
        # KIP-360: an idempotent producer bumps its epoch to reset its sequences.
        return _resp(req, {"throttle_time": 0, "error_code": NONE, "producer_id": pid,
                           "producer_epoch": epoch + 1})
    try:
        new_pid = broker.new_producer_id()
    except MetadataError as e:      # ZooKeeper unreachable: the client retries
        return _resp(req, {"throttle_time": 0, "error_code": e.error_code, "producer_id": -1, "producer_epoch": -1})
    return _resp(req, {"throttle_time": 0, "error_code": NONE, "producer_id": new_pid, "producer_epoch": 0})


# -- OffsetForLeaderEpoch ----------------------------------------------------------------------

def offset_for_leader_epoch(broker: Broker, req: Request):
    """KIP-101/279: the largest epoch <= the requested one this leader knows, and where it ends.
    Followers (v3+: replica_id >= 0) ask it before fetching; consumers to detect truncation."""
    topics = []
    for t in req.body.topics:
        parts = []
        for op in t.partitions:
            out = {"partition": op.partition, "leader_epoch": -1, "end_offset": -1}
            p = broker.get_partition(t.topic, op.partition)
            epoch = getattr(op, "current_leader_epoch", -1)
            if p is None:
                parts.append({**out, "error_code": UNKNOWN_TOPIC_OR_PARTITION})
            elif epoch >= 0 and epoch != p.leader_epoch:
                parts.append({**out, "error_code": FENCED_LEADER_EPOCH if epoch < p.leader_epoch else UNKNOWN_LEADER_EPOCH})
            elif not p.is_leader:
                parts.append({**out, "error_code": NOT_LEADER_OR_FOLLOWER})
            else:
                found_epoch, end = p.epoch_cache.end_offset_for(op.leader_epoch, p.log_end_offset)
                parts.append({**out, "error_code": NONE, "leader_epoch": found_epoch, "end_offset": end})
        topics.append({"topic": t.topic, "partitions": parts})
    return _resp(req, {"throttle_time": 0, "topics": topics})


HANDLERS = {
    0: produce, 1: fetch, 2: list_offsets, 3: metadata, 18: api_versions,
    19: create_topics, 20: delete_topics, 22: init_producer_id,
    23: offset_for_leader_epoch, 32: describe_configs, 44: incremental_alter_configs,
}
