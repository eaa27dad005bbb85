"""Topic metadata and producer ids kept in ZooKeeper (used when ``zookeeper.connect`` is set).

The same methods as ``LocalMetadataStore`` (broker/metadata.py), so core.py and
handlers.py do not care which one they have.  Everything is read from
ZooKeeper when asked (the cluster is small; a Metadata request costs a few
local round trips), so every broker answers from the same source of truth:

    /brokers/topics/<topic>           {"version":1,"partitions":{"0":[1,2,3]},"topic_id":"<uuid>"}
    /config/topics/<topic>            {"version":1,"config":{...}}  (topic overrides only)
    /latest_producer_id_block         {"version":1,"broker":<id>,"block_start":"..","block_end":".."}
    /cluster/id                       {"version":"1","id":"<cluster id>"}
"""

from __future__ import annotations

import json
import logging
import uuid

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from .config import TOPIC_KEYS, ConfigError, validate_topic_config
from .controller import (BROKER_TOPICS, CONFIG_TOPICS, ControllerError, ZkBroker, assignment_from_json,
                         topic_path)
from .metadata import (INVALID_CONFIG, INVALID_PARTITIONS, INVALID_REPLICATION_FACTOR, PRODUCER_ID_BLOCK,
                       TOPIC_ALREADY_EXISTS, UNKNOWN_TOPIC_OR_PARTITION, MetadataError, TopicInfo,
                       check_topic_name)

log = logging.getLogger("acked.broker.zk_metadata")
PRODUCER_ID_BLOCK_PATH = "/latest_producer_id_block"
CLUSTER_ID_PATH = "/cluster/id"
INVALID_REPLICA_ASSIGNMENT = 39


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

    @property
    def client(self):
        return self.zk.zk

    # -- topics ----------------------------------------------------------------------
    @property
    def topics(self) -> dict[str, TopicInfo]:
        out = {}
        for name in self.client.get_children(BROKER_TOPICS):
            info = self.describe(name)
            if info is not None:
                out[name] = info
        return out

    def describe(self, name: str) -> TopicInfo | None:
        try:
            data, _ = self.client.get(topic_path(name))
        except NoNodeError:
            return None
        assignment = assignment_from_json(data)
        raw = json.loads(data)
        topic_id = uuid.UUID(raw["topic_id"]) if raw.get("topic_id") else uuid.uuid5(uuid.NAMESPACE_URL, name)
        rf = len(assignment[0]) if assignment else 0
        return TopicInfo(name, topic_id, len(assignment), rf, self.zk.topic_config(name), assignment)

    def by_id(self, topic_id: uuid.UUID) -> TopicInfo | None:
        for t in self.topics.values():
            if t.topic_id == topic_id:
                return t
        return None

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
        for k, v in configs.items():
            try:
                validate_topic_config(k, v)
            except ConfigError as e:
                raise MetadataError(INVALID_CONFIG, str(e)) from None
        info = TopicInfo(name, uuid.uuid4(), partitions, replication_factor, dict(configs),
                         {p: tuple(r) for p, r in assignment.items()})
        if not validate_only:
            try:
                self.zk.create_topic(name, assignment, configs, topic_id=str(info.topic_id))
            except ControllerError as e:
                raise MetadataError(TOPIC_ALREADY_EXISTS, str(e)) from None
        return info

    def delete_topic(self, name: str) -> TopicInfo:
        info = self.describe(name)
        if info is None:
            raise MetadataError(UNKNOWN_TOPIC_OR_PARTITION, f"topic {name} does not exist")
        self.zk.delete_topic(name)
        return info

    def alter_config(self, name: str, set_: dict[str, str], delete: list[str],
                     validate_only: bool = False) -> TopicInfo:
        info = self.describe(name)
        if info is None:
            raise MetadataError(UNKNOWN_TOPIC_OR_PARTITION, f"topic {name} does not exist")
        for k, v in set_.items():
            try:
                validate_topic_config(k, v)
            except ConfigError as e:
                raise MetadataError(INVALID_CONFIG, str(e)) from None
        for k in delete:
            if k not in TOPIC_KEYS:
                raise MetadataError(INVALID_CONFIG, f"unknown topic config {k}")
        if not validate_only:
            info.configs.update(set_)
            for k in delete:
                info.configs.pop(k, None)
            path = f"{CONFIG_TOPICS}/{name}"
            try:
                self.zk.set_topic_config(name, info.configs)
            except NoNodeError:
                self.client.ensure_path(CONFIG_TOPICS)
                self.client.create(path, json.dumps({"version": 1, "config": info.configs}).encode())
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
        block, _ = self._read_block()
        return int(block["block_end"]) + 1 if block else 0

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
