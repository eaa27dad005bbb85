"""The broker's state without any I/O loop: topics, partitions, producer ids.

handlers.py answers requests against a Broker; server.py owns sockets and
timers and calls ``tick`` periodically.  In standalone mode topic metadata
lives in a LocalMetadataStore; a ZooKeeper-backed store with the same methods
can be passed in instead.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
import uuid
from typing import Callable

from .config import BrokerConfig, TopicConfig, parse_listener
from .errors import NONE
from .log import Log, log_dir_io, read_checkpoint, write_checkpoint
from .metadata import LocalMetadataStore, MetadataError, TopicInfo
from .fetch_sessions import FetchSessionCache
from .partition import EPOCH_CHECKPOINT, Partition

log = logging.getLogger("acked.broker")
HW_CHECKPOINT = "replication-offset-checkpoint"
#: the partition's topic id (Kafka's PartitionMetadataFile), which tells a deleted topic's leftovers apart
PARTITION_METADATA = "partition.metadata"
CLEAN_SHUTDOWN = ".kafka_cleanshutdown"


PROBE = ".acked-write-probe"


class LogDirError(Exception):
    """The data directory cannot be used; str() is one line naming it and the cause."""


def check_log_dir(directory: str) -> None:
    """Create the data directory and prove it writable (write, fsync and remove a probe file), so that an
    operator's mistake -- a path under /proc or under a regular file, a read-only directory -- stops the start
    with one line instead of failing the first produce."""
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, PROBE)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"acked-broker write probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        cause = e.strerror or str(e)
        where = f" ({e.filename})" if e.filename and os.path.abspath(e.filename) != os.path.abspath(directory) else ""
        raise LogDirError(f"log dir {directory} cannot be used: {cause}{where}") from None


class Broker:
    def __init__(self, config: BrokerConfig, metadata_store=None):
        self.config = config
        self.broker_id = config["broker.id"]
        self.log_dir = config.log_dir
        # acked-broker's main() proved the directory writable (check_log_dir) before anything else started
        new = not os.path.isdir(self.log_dir) or not [e for e in os.listdir(self.log_dir) if e != PROBE]
        os.makedirs(self.log_dir, exist_ok=True)
        clean = os.path.exists(os.path.join(self.log_dir, CLEAN_SHUTDOWN))
        if clean:
            os.unlink(os.path.join(self.log_dir, CLEAN_SHUTDOWN))
        log.info("opening log dir %s (%s)", self.log_dir,
                 "new" if new else "clean shutdown before" if clean else "unclean shutdown before")
        self.metadata = metadata_store or LocalMetadataStore(self.log_dir)
        self.standalone = config.standalone
        # Set by the replication layer (broker/replica_manager.py) in ZooKeeper mode.
        self.replication = None
        self.cluster_id = "acked-" + uuid.uuid5(uuid.NAMESPACE_URL, os.path.abspath(self.log_dir)).hex[:16]
        self.partitions: dict[tuple[str, int], Partition] = {}
        self.fetch_sessions = FetchSessionCache(config["max.incremental.fetch.session.cache.slots"])
        self.append_listeners: list[Callable[[Partition], None]] = []
        self._pid_next, self._pid_limit = 0, 0
        self._last_hw_checkpoint = time.monotonic()
        self.advertised_host, self.advertised_port = "127.0.0.1", 9092
        self._hw_checkpoint = read_checkpoint(os.path.join(self.log_dir, HW_CHECKPOINT))
        if self.standalone:
            for info in list(self.metadata.topics.values()):
                self._open_topic(info)
        # In ZooKeeper mode a partition is opened when its state names this broker as a replica.

    # -- addresses ---------------------------------------------------------------------
    def set_bound_address(self, host: str, port: int) -> None:
        """Called once the listener is bound: fills in port 0 / empty host of advertised.listeners."""
        _n, ahost, aport = parse_listener(self.config["advertised.listeners"][0])
        if not ahost or ahost in ("0.0.0.0", "::"):
            ahost = host if host not in ("0.0.0.0", "::", "") else socket.gethostname()
        self.advertised_host = ahost
        self.advertised_port = aport or port

    # -- topics ------------------------------------------------------------------------
    def topic_config(self, info: TopicInfo) -> TopicConfig:
        return TopicConfig(self.config, info.configs)

    def _partition_dir(self, topic: str, index: int) -> str:
        return os.path.join(self.log_dir, f"{topic}-{index}")

    def _open_topic(self, info: TopicInfo) -> None:
        for i in range(info.partitions):
            self.open_partition(info, i)

    def open_partition(self, info: TopicInfo, i: int) -> Partition:
        """Open (or create) the local replica of one partition."""
        tc = self.topic_config(info)
        directory = self._partition_dir(info.name, i)
        epoch_path = None
        if not self.standalone:
            # A directory left by a deleted topic of the same name must not leak into this one.
            id_file = os.path.join(directory, PARTITION_METADATA)
            stored = read_topic_id(id_file)
            if stored is not None and stored != str(info.topic_id):
                log.info("%s holds topic id %s, not %s: removing it", directory, stored, info.topic_id)
                shutil.rmtree(directory, ignore_errors=True)
                stored = None
            os.makedirs(directory, exist_ok=True)
            if stored is None:
                with log_dir_io(self.log_dir, "writing a partition's topic id"):
                    write_durably(id_file, f"version: 0\ntopic_id: {info.topic_id}\n")
            epoch_path = os.path.join(directory, EPOCH_CHECKPOINT)
        lg = Log(directory,
                 segment_bytes=tc["segment.bytes"],
                 index_interval_bytes=tc["index.interval.bytes"],
                 flush_messages=tc["flush.messages"],
                 flush_ms=self._flush_ms(tc))
        p = Partition(info.name, i, lg, tc, epoch_cache_path=epoch_path)
        if not self.standalone:
            # A replica is only sure of what its checkpoint says was committed; it starts as no leader.
            p.high_watermark = min(self._hw_checkpoint.get((info.name, i), 0), p.log_end_offset)
            p.is_leader = False
        p.listeners.append(self._notify_append)
        self.partitions[(info.name, i)] = p
        return p

    def drop_partition(self, topic: str, i: int) -> None:
        """The topic was deleted: close the replica and remove its files."""
        p = self.partitions.pop((topic, i), None)
        if p is not None:
            p.notify_listeners()   # its long polls and fetch sessions see it gone
            p.close()
        shutil.rmtree(self._partition_dir(topic, i), ignore_errors=True)

    def _flush_ms(self, tc: TopicConfig) -> int | None:
        ms = tc["flush.ms"]
        return None if ms >= 2**63 - 1 else ms

    def _notify_append(self, p: Partition) -> None:
        for cb in self.append_listeners:
            cb(p)

    def create_topic(self, name: str, partitions: int, replication_factor: int,
                     configs: dict[str, str], validate_only: bool = False,
                     assignment: dict[int, list[int]] | None = None) -> TopicInfo:
        if not self.standalone:
            # The controller creates the partition states; replicas open their logs on seeing them.
            info = self.metadata.create_topic(name, partitions, replication_factor, configs, validate_only,
                                              assignment=assignment)
            if not validate_only:
                log.info("created topic %s: %d partition(s), RF %d, configs %s", name, info.partitions,
                         info.replication_factor, configs or "{}")
            return info
        info = self.metadata.create_topic(name, partitions, replication_factor, configs, validate_only)
        if not validate_only:
            # A leftover directory of a deleted topic with the same name must not leak data.
            for i in range(partitions):
                shutil.rmtree(self._partition_dir(name, i), ignore_errors=True)
            self._open_topic(info)
            log.info("created topic %s: %d partition(s), configs %s", name, partitions, configs or "{}")
        return info

    def delete_topic(self, name: str) -> TopicInfo:
        info = self.metadata.delete_topic(name)
        if not self.standalone:
            log.info("deleted topic %s (replicas remove their logs when they see it gone)", name)
            return info
        for i in range(info.partitions):
            p = self.partitions.pop((name, i), None)
            if p is not None:
                p.close()
            shutil.rmtree(self._partition_dir(name, i), ignore_errors=True)
        log.info("deleted topic %s", name)
        return info

    def alter_topic_config(self, name: str, set_: dict[str, str], delete: list[str],
                           validate_only: bool = False) -> None:
        info = self.metadata.alter_config(name, set_, delete, validate_only)
        if validate_only:
            return
        self.apply_topic_config(info)
        log.info("altered topic %s: set %s, deleted %s", name, set_, delete)

    def apply_topic_config(self, info: TopicInfo) -> None:
        """Give every local replica of the topic its current config."""
        tc = self.topic_config(info)
        for i in range(info.partitions):
            p = self.partitions.get((info.name, i))
            if p is not None:
                self.configure_partition(p, tc)
        if self.replication is not None:
            self.replication.config_changed(info.name, tc)

    def configure_partition(self, p: Partition, tc: TopicConfig) -> None:
        p.config = tc
        p.log.segment_bytes = tc["segment.bytes"]
        p.log.index_interval = tc["index.interval.bytes"]
        p.log.flush_messages = tc["flush.messages"]
        p.log.flush_ms = self._flush_ms(tc)

    def get_partition(self, topic: str, index: int) -> Partition | None:
        return self.partitions.get((topic, index))

    def auto_create(self, name: str) -> TopicInfo | None:
        if not self.config["auto.create.topics.enable"]:
            return None
        try:
            return self.create_topic(name, self.config["num.partitions"],
                                     self.config["default.replication.factor"], {})
        except MetadataError as e:
            log.info("auto-create of %r refused: %s", name, e)
            raise

    # -- cluster view (Metadata) ----------------------------------------------------------
    def live_brokers(self) -> list[tuple[int, str, int]]:
        """(id, host, port) of every live broker."""
        if self.replication is None:
            return [(self.broker_id, self.advertised_host, self.advertised_port)]
        return self.replication.live_brokers()

    def controller_id(self) -> int:
        if self.replication is None:
            return self.broker_id
        return self.replication.controller_id()

    def partition_metadata(self, info: TopicInfo, i: int) -> dict:
        """error_code, leader_id, leader_epoch, replica_nodes, isr_nodes, offline_replicas."""
        if self.replication is None:
            p = self.get_partition(info.name, i)
            me = (self.broker_id,)
            return {"error_code": NONE, "leader_id": self.broker_id, "leader_epoch": p.leader_epoch if p else 0,
                    "replica_nodes": me, "isr_nodes": me, "offline_replicas": ()}
        return self.replication.partition_metadata(info, i)

    # -- producer ids ---------------------------------------------------------------------
    def new_producer_id(self) -> int:
        if self._pid_next >= self._pid_limit:
            self._pid_next, self._pid_limit = self.metadata.allocate_producer_id_block()
        pid = self._pid_next
        self._pid_next += 1
        return pid

    # -- periodic work -----------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.replication is not None:
            self.replication.tick()
        for p in self.partitions.values():
            p.log.maybe_flush_on_time(now)
        if (now - self._last_hw_checkpoint) * 1000 >= self.config["replica.high.watermark.checkpoint.interval.ms"]:
            self.checkpoint_high_watermarks()
            self._last_hw_checkpoint = now

    def checkpoint_high_watermarks(self) -> None:
        entries = {k: p.high_watermark for k, p in self.partitions.items()}
        if entries != self._hw_checkpoint:
            with log_dir_io(self.log_dir, "writing the high watermark checkpoint"):
                write_checkpoint(os.path.join(self.log_dir, HW_CHECKPOINT), entries)
            self._hw_checkpoint = entries

    def close(self) -> None:
        for p in self.partitions.values():
            p.close()
        self.checkpoint_high_watermarks()
        with open(os.path.join(self.log_dir, CLEAN_SHUTDOWN), "w"):
            pass
        log.info("log dir %s closed cleanly", self.log_dir)


def read_topic_id(path: str) -> str | None:
    """The topic id a partition.metadata file holds; None when there is none or it cannot be read whole.

    A torn or empty file (a power loss before it reached the disk) names no topic: it must not make the
    broker delete the partition's log, which may be intact (found by the lose-unfsynced fault: an unfsynced
    partition.metadata came back empty and the broker removed a directory of fsynced records)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    m = re.search(r"^topic_id:\s*([0-9a-fA-F-]{36})\s*$", text, re.MULTILINE)
    if m is None:
        log.warning("%s names no topic id (%r): rewriting it", path, text[:60])
        return None
    return m.group(1)


def write_durably(path: str, text: str) -> None:
    """Write a small file so that a crash leaves the old or the new one, and the new one is on disk when this
    returns: a temporary file, fsync, rename, fsync of the directory (as Kafka's PartitionMetadataFile)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
