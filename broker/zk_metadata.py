"""Topic metadata and producer ids kept in ZooKeeper (used when ``zookeeper.connect`` is set).

The same methods as ``LocalMetadataStore`` (broker/metadata.py), so core.py and
handlers.py do not care which one they have.  A topic is read from ZooKeeper
the first time it is asked for, with watches on its znodes; the answer is then
served from memory until a watch fires (the topic or its config changed) or the
ZooKeeper connection changes state (watches may be gone), when it is read again.
(Reading ZooKeeper on every Metadata request blocked the event loop for two
round trips per topic, and kept the ensemble busy.)

    /brokers/topics/<topic>           {"version":1,"partitions":{"0":[1,2,3]},"topic_id":"<uuid>"}
    /config/topics/<topic>            {"version":1,"config":{...}}  (topic overrides only)
    /latest_producer_id_block         {"version":1,"broker":<id>,"block_start":"..","block_end":".."}
    /cluster/id                       {"version":"1","id":"<cluster id>"}
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import uuid

from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError

from .controller import (BROKER_TOPICS, CONFIG_TOPICS, ControllerError, ZkBroker, assignment_from_json, config_from_json,
                         topic_path)
from .errors import (INVALID_PARTITIONS, INVALID_REPLICA_ASSIGNMENT, INVALID_REPLICATION_FACTOR, LEADER_NOT_AVAILABLE,
                     REQUEST_TIMED_OUT, TOPIC_ALREADY_EXISTS, UNKNOWN_TOPIC_OR_PARTITION)
from .metadata import PRODUCER_ID_BLOCK, MetadataError, TopicInfo, check_topic_name, validate_config_change

log = logging.getLogger("acked.broker.zk_metadata")
PRODUCER_ID_BLOCK_PATH = "/latest_producer_id_block"
CLUSTER_ID_PATH = "/cluster/id"


def _zk_failure_is_request_error(code: int):
    """A ZooKeeper write that cannot be made (not connected, connection lost, session expired)
    answers that request with a retriable Kafka error instead of escaping the handler, which
    would close the client's connection."""
    def wrap(method):
        @functools.wraps(method)
        def call(self, *args, **kwargs):
            if not self.client.connected:   # kazoo would block (the event loop) until it reconnects
                raise MetadataError(code, "ZooKeeper unreachable (not connected); retry later")
            try:
                return method(self, *args, **kwargs)
            except KazooException as e:
                raise MetadataError(code, f"ZooKeeper unreachable ({type(e).__name__}); retry later") from None
        return call
    return wrap


def round_robin_assignment(partitions: int, replication_factor: int, brokers: list[int],
                           start: int) -> dict[int, list[int]]:
    """Kafka's rack-unaware placement, simplified: partition p's replicas are consecutive
    brokers from (start + p), so leaderships (the first replica) spread over the brokers."""
    brokers = sorted(brokers)
    n = len(brokers)
    return {p: [brokers[(start + p + r) % n] for r in range(replication_factor)] for p in range(partitions)}


class ZkMetadataStore:
    def __init__(self, zk: ZkBroker):
        self.zk = zk
        # The last view read from ZooKeeper: Metadata and DescribeConfigs answer from it while
        # ZooKeeper is unreachable (a Kafka broker serves metadata from its cache).
        self._known: dict[str, TopicInfo] = {}
        # Entries of _known (and the topic list) that watches keep current; cleared when a watch fires.
        self._fresh: set[str] = set()
        self._names: list[str] | None = None
        self._generation: dict[str, int] = {}
        self._producer_id_limit = 0
        self.client.add_listener(self._on_connection_state)

    @property
    def client(self):
        return self.zk.zk

    def _on_connection_state(self, _state) -> None:
        # Suspended, lost or reconnected: a watch may have been missed, so trust nothing cached.
        self._fresh.clear()
        self._names = None

    def _stale(self, name: str):
        def watch(_event) -> None:
            self._generation[name] = self._generation.get(name, 0) + 1
            self._fresh.discard(name)
        return watch

    def _names_changed(self, _event) -> None:
        self._names = None

    # -- topics ----------------------------------------------------------------------
    @property
    def topics(self) -> dict[str, TopicInfo]:
        if not self.client.connected:       # do not block the request path on a reconnect
            return dict(self._known)
        names = self._names
        if names is None:
            try:
                names = self.client.get_children(BROKER_TOPICS, watch=self._names_changed)
            except NoNodeError:
                names = []
            except KazooException as e:
                log.warning("ZooKeeper unreachable (%s): listing topics from the cached view", type(e).__name__)
                return dict(self._known)
            self._names = names
        out = {}
        for name in names:
            info = self.describe(name)
            if info is not None:
                out[name] = info
        for gone in set(self._known) - set(names):
            self._known.pop(gone, None)
        return out

    def describe(self, name: str, fresh: bool = False) -> TopicInfo | None:
        """The topic as ZooKeeper has it; `fresh` reads it even if the watched copy is current."""
        if not self.client.connected:
            return self._known.get(name)
        if not fresh and name in self._fresh and name in self._known:
            return self._known[name]
        generation = self._generation.get(name, 0)
        stale = self._stale(name)
        config_path = f"{CONFIG_TOPICS}/{name}"
        try:
            data, _ = self.client.get(topic_path(name), watch=stale)
            try:
                configs = config_from_json(self.client.get(config_path, watch=stale)[0])
            except NoNodeError:
                configs = {}
                if self.client.exists(config_path, watch=stale) is not None:   # created meanwhile
                    configs = config_from_json(self.client.get(config_path)[0])
        except NoNodeError:
            self._known.pop(name, None)
            return None
        except KazooException as e:
            log.warning("ZooKeeper unreachable (%s): describing topic %s from the cached view", type(e).__name__, name)
            return self._known.get(name)
        assignment = assignment_from_json(data)
        raw = json.loads(data)
        topic_id = uuid.UUID(raw["topic_id"]) if raw.get("topic_id") else uuid.uuid5(uuid.NAMESPACE_URL, name)
        rf = len(assignment[0]) if assignment else 0
        info = TopicInfo(name, topic_id, len(assignment), rf, configs, assignment)
        self._known[name] = info
        if self._generation.get(name, 0) == generation:   # no watch fired while reading
            self._fresh.add(name)
        return info

    def by_id(self, topic_id: uuid.UUID) -> TopicInfo | None:
        for t in self.topics.values():
            if t.topic_id == topic_id:
                return t
        return None

    @_zk_failure_is_request_error(LEADER_NOT_AVAILABLE)
    def create_topic(self, name: str, partitions: int, replication_factor: int, configs: dict[str, str],
                     validate_only: bool = False, assignment: dict[int, list[int]] | None = None) -> TopicInfo:
        check_topic_name(name)
        if self.client.exists(topic_path(name)) is not None:
            raise MetadataError(TOPIC_ALREADY_EXISTS, f"topic {name} already exists")
        live = sorted(self.zk.live_brokers())
        if assignment is None:
            if partitions < 1:
                raise MetadataError(INVALID_PARTITIONS, "num_partitions must be at least 1")
            if replication_factor < 1 or replication_factor > len(live):
                raise MetadataError(INVALID_REPLICATION_FACTOR,
                                    f"replication factor {replication_factor} is more than the {len(live)} live broker(s) {live}")
            # Spread leaderships of successive topics too (Kafka starts at a random broker).
            start = sum(name.encode()) % len(live)
            assignment = round_robin_assignment(partitions, replication_factor, live, start)
        else:
            sizes = {len(r) for r in assignment.values()}
            bad = sorted({b for r in assignment.values() for b in r} - set(live))
            if len(sizes) != 1 or any(len(set(r)) != len(r) for r in assignment.values()) or bad:
                raise MetadataError(INVALID_REPLICA_ASSIGNMENT,
                                    f"assignment {assignment} must list distinct live brokers ({live}), "
                                    f"the same number per partition" + (f"; not live: {bad}" if bad else ""))
            partitions, replication_factor = len(assignment), sizes.pop()
        validate_config_change(configs, [])
        info = TopicInfo(name, uuid.uuid4(), partitions, replication_factor, dict(configs),
                         {p: tuple(r) for p, r in assignment.items()})
        if not validate_only:
            try:
                self.zk.create_topic(name, assignment, configs, topic_id=str(info.topic_id))
            except ControllerError as e:
                raise MetadataError(TOPIC_ALREADY_EXISTS, str(e)) from None
        return info

    @_zk_failure_is_request_error(REQUEST_TIMED_OUT)
    def delete_topic(self, name: str) -> TopicInfo:
        info = self.describe(name)
        if info is None:
            raise MetadataError(UNKNOWN_TOPIC_OR_PARTITION, f"topic {name} does not exist")
        self.zk.delete_topic(name)
        return info

    @_zk_failure_is_request_error(REQUEST_TIMED_OUT)
    def alter_config(self, name: str, set_: dict[str, str], delete: list[str],
                     validate_only: bool = False) -> TopicInfo:
        info = self.describe(name, fresh=True)   # read-modify-write: not from a copy another broker may have changed
        if info is None:
            raise MetadataError(UNKNOWN_TOPIC_OR_PARTITION, f"topic {name} does not exist")
        validate_config_change(set_, delete)
        if not validate_only:
            info = dataclasses.replace(info, configs=dict(info.configs))   # the cached view changes only once written
            info.configs.update(set_)
            for k in delete:
                info.configs.pop(k, None)
            path = f"{CONFIG_TOPICS}/{name}"
            try:
                self.zk.set_topic_config(name, info.configs)
            except NoNodeError:
                self.client.ensure_path(CONFIG_TOPICS)
                self.client.create(path, json.dumps({"version": 1, "config": info.configs}).encode())
            self._known[name] = info
        return info

    # -- producer ids -------------------------------------------------------------------
    def _read_block(self):
        try:
            data, stat = self.client.get(PRODUCER_ID_BLOCK_PATH)
        except NoNodeError:
            return None, None
        return json.loads(data), stat

    @property
    def producer_id_limit(self) -> int:
        if not self.client.connected:
            return self._producer_id_limit
        try:
            block, _ = self._read_block()
        except KazooException:
            return self._producer_id_limit      # ids below the last limit seen were handed out
        self._producer_id_limit = int(block["block_end"]) + 1 if block else 0
        return self._producer_id_limit

    @_zk_failure_is_request_error(REQUEST_TIMED_OUT)
    def allocate_producer_id_block(self) -> tuple[int, int]:
        """Reserve [start, end) cluster-wide with a version-checked write (Kafka's znode and format)."""
        while True:
            block, stat = self._read_block()
            start = int(block["block_end"]) + 1 if block else 0
            new = json.dumps({"version": 1, "broker": self.zk.broker_id, "block_start": str(start),
                              "block_end": str(start + PRODUCER_ID_BLOCK - 1)}).encode()
            try:
                if stat is None:
                    self.client.create(PRODUCER_ID_BLOCK_PATH, new)
                else:
                    self.client.set(PRODUCER_ID_BLOCK_PATH, new, version=stat.version)
                return start, start + PRODUCER_ID_BLOCK
            except (BadVersionError, NodeExistsError):
                continue

    # -- cluster id ---------------------------------------------------------------------
    def cluster_id(self) -> str:
        """The cluster's id, created by the first broker that asks (as Kafka does)."""
        proposal = json.dumps({"version": "1", "id": "acked-" + uuid.uuid4().hex[:16]}).encode()
        self.client.ensure_path("/cluster")
        try:
            self.client.create(CLUSTER_ID_PATH, proposal)
        except NodeExistsError:
            pass
        return json.loads(self.client.get(CLUSTER_ID_PATH)[0])["id"]
