"""Topic metadata and producer-id allocation for a standalone broker.

Kept in ``<log.dirs>/acked-metadata.json`` (written atomically) so topics,
their ids and config overrides survive a restart.  With ``zookeeper.connect``
set, the controller (broker/controller.py) provides an object with the same
methods backed by ZooKeeper instead; nothing else in the broker cares which.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass, field

from .config import TOPIC_KEYS, ConfigError, validate_topic_config
from .errors import (INVALID_CONFIG, INVALID_PARTITIONS, INVALID_REPLICATION_FACTOR, INVALID_TOPIC_EXCEPTION,
                     TOPIC_ALREADY_EXISTS, UNKNOWN_TOPIC_OR_PARTITION)

_LEGAL_TOPIC = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
METADATA_FILE = "acked-metadata.json"
PRODUCER_ID_BLOCK = 1000


class MetadataError(Exception):
    def __init__(self, error_code: int, message: str):
        super().__init__(message)
        self.error_code = error_code


@dataclass
class TopicInfo:
    name: str
    topic_id: uuid.UUID
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)
    # partition -> replicas (ZooKeeper mode; standalone: every partition is on this broker)
    assignment: dict[int, tuple[int, ...]] | None = None


def check_topic_name(name: str | None) -> None:
    if not name or not _LEGAL_TOPIC.match(name) or name in (".", ".."):
        raise MetadataError(INVALID_TOPIC_EXCEPTION,
                            f"topic name {name!r} is not 1-249 characters of [a-zA-Z0-9._-]")


def validate_config_change(set_: dict[str, str], delete: list[str]) -> None:
    """Check a topic config change before any store applies it (INVALID_CONFIG otherwise)."""
    for k, v in set_.items():
        try:
            validate_topic_config(k, v)
        except ConfigError as e:
            raise MetadataError(INVALID_CONFIG, str(e)) from None
    for k in delete:
        if k not in TOPIC_KEYS:
            raise MetadataError(INVALID_CONFIG, f"unknown topic config {k}")


class LocalMetadataStore:
    """Topics and the producer-id high-water mark in one JSON file in log.dirs."""

    def __init__(self, log_dir: str, live_brokers: int = 1):
        self.path = os.path.join(log_dir, METADATA_FILE)
        self.live_brokers = live_brokers
        self.topics: dict[str, TopicInfo] = {}
        self.producer_id_limit = 0
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            data = {}
        for name, t in data.get("topics", {}).items():
            self.topics[name] = TopicInfo(name, uuid.UUID(t["id"]), t["partitions"],
                                          t["replication_factor"], t.get("configs", {}))
        self.producer_id_limit = data.get("producer_id_limit", 0)

    def _save(self) -> None:
        data = {
            "topics": {n: {"id": str(t.topic_id), "partitions": t.partitions,
                           "replication_factor": t.replication_factor, "configs": t.configs}
                       for n, t in self.topics.items()},
            "producer_id_limit": self.producer_id_limit,
        }
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # -- topics ----------------------------------------------------------------------
    def describe(self, name: str) -> TopicInfo | None:
        return self.topics.get(name)

    def by_id(self, topic_id: uuid.UUID) -> TopicInfo | None:
        for t in self.topics.values():
            if t.topic_id == topic_id:
                return t
        return None

    def create_topic(self, name: str, partitions: int, replication_factor: int,
                     configs: dict[str, str], validate_only: bool = False) -> TopicInfo:
        check_topic_name(name)
        if name in self.topics:
            raise MetadataError(TOPIC_ALREADY_EXISTS, f"topic {name} already exists")
        if partitions < 1:
            raise MetadataError(INVALID_PARTITIONS, "num_partitions must be at least 1")
        if replication_factor < 1 or replication_factor > self.live_brokers:
            raise MetadataError(INVALID_REPLICATION_FACTOR,
                                f"replication factor {replication_factor} is more than the {self.live_brokers} available broker(s)")
        validate_config_change(configs, [])
        info = TopicInfo(name, uuid.uuid4(), partitions, replication_factor, dict(configs))
        if not validate_only:
            self.topics[name] = info
            self._save()
        return info

    def delete_topic(self, name: str) -> TopicInfo:
        info = self.topics.pop(name, None)
        if info is None:
            raise MetadataError(UNKNOWN_TOPIC_OR_PARTITION, f"topic {name} does not exist")
        self._save()
        return info

    def alter_config(self, name: str, set_: dict[str, str], delete: list[str],
                     validate_only: bool = False) -> TopicInfo:
        info = self.topics.get(name)
        if info is None:
            raise MetadataError(UNKNOWN_TOPIC_OR_PARTITION, f"topic {name} does not exist")
        validate_config_change(set_, delete)
        if not validate_only:
            info.configs.update(set_)
            for k in delete:
                info.configs.pop(k, None)
            self._save()
        return info

    # -- producer ids -------------------------------------------------------------------
    def allocate_producer_id_block(self) -> tuple[int, int]:
        """Reserve [start, end) durably so a restarted broker never hands out an id twice."""
        start = self.producer_id_limit
        self.producer_id_limit = start + PRODUCER_ID_BLOCK
        self._save()
        return start, self.producer_id_limit
