"""One partition replica: its log, high watermark and idempotent-producer state.

The append path here is the leader's.  The high watermark is an explicit
attribute moved by ``advance_high_watermark``; on a single node the leader
advances it to the log end offset right after each append, and the replication
role (broker/replication.py) replaces that with the ISR minimum.  Sans-IO: no
sockets, no event loop; waiters learn about appends through ``listeners``.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from . import records
from .config import TopicConfig
from .errors import (INVALID_PRODUCER_EPOCH, INVALID_RECORD, INVALID_TXN_STATE, MESSAGE_TOO_LARGE, NONE,
                     NOT_LEADER_OR_FOLLOWER, OFFSET_OUT_OF_RANGE, OUT_OF_ORDER_SEQUENCE_NUMBER, UNKNOWN_PRODUCER_ID)
from .log import Log, OffsetOutOfRange, log_dir_io
from .records import InvalidBatch
from .replication import LeaderEpochCache

log = logging.getLogger("acked.broker.partition")

MAX_BATCHES_PER_PRODUCER = 5  # what clients keep in flight with idempotence


@dataclass
class ProducerEntry:
    epoch: int
    # (first sequence, last sequence, first offset, last offset) of the newest batches
    batches: deque = field(default_factory=lambda: deque(maxlen=MAX_BATCHES_PER_PRODUCER))

    @property
    def last_sequence(self) -> int:
        return self.batches[-1][1] if self.batches else -1


class ProducerState:
    """Per producer id: epoch and the last five batches' sequence ranges and offsets."""

    def __init__(self):
        self.entries: dict[int, ProducerEntry] = {}

    def check(self, h: records.BatchHeader) -> tuple[int, int | None]:
        """Decide on an incoming batch: (error code, original base offset if a duplicate)."""
        entry = self.entries.get(h.producer_id)
        if entry is None:
            # Unknown producer: its first batch must start at sequence 0.
            return (NONE, None) if h.base_sequence == 0 else (UNKNOWN_PRODUCER_ID, None)
        if h.producer_epoch < entry.epoch:
            return INVALID_PRODUCER_EPOCH, None
        if h.producer_epoch > entry.epoch:
            # A bumped epoch restarts the sequence at 0.
            return (NONE, None) if h.base_sequence == 0 else (OUT_OF_ORDER_SEQUENCE_NUMBER, None)
        for first_seq, last_seq, first_off, _last_off in entry.batches:
            if first_seq == h.base_sequence and last_seq == h.last_sequence:
                return NONE, first_off
        expected = (entry.last_sequence + 1) % 2**31
        if h.base_sequence != expected:
            return OUT_OF_ORDER_SEQUENCE_NUMBER, None
        return NONE, None

    def update(self, h: records.BatchHeader, base_offset: int) -> None:
        entry = self.entries.get(h.producer_id)
        if entry is None or h.producer_epoch != entry.epoch:
            entry = ProducerEntry(h.producer_epoch)
            self.entries[h.producer_id] = entry
        entry.batches.append((h.base_sequence, h.last_sequence, base_offset,
                              base_offset + h.last_offset_delta))

    def rebuild(self, headers) -> None:
        self.entries.clear()
        for h in headers:
            if h.producer_id >= 0 and h.base_sequence >= 0:
                self.update(h, h.base_offset)


@dataclass
class AppendResult:
    error: int
    base_offset: int = -1
    log_start_offset: int = -1
    message: str | None = None
    duplicate: bool = False


@dataclass
class ReadResult:
    error: int
    records: bytes = b""
    high_watermark: int = -1
    last_stable_offset: int = -1
    log_start_offset: int = -1


EPOCH_CHECKPOINT = "leader-epoch-checkpoint"


class Partition:
    def __init__(self, topic: str, index: int, log_: Log, config: TopicConfig,
                 leader_epoch: int = 0, epoch_cache_path: str | None = None):
        self.topic = topic
        self.index = index
        self.log = log_
        self.config = config
        self.leader_epoch = leader_epoch
        self.is_leader = True
        # Replicated mode persists the epoch -> start offset cache next to the log; a
        # standalone broker has epoch 0 only and keeps it in memory.
        self.epoch_cache_path = epoch_cache_path
        if epoch_cache_path is not None:
            self.epoch_cache = LeaderEpochCache.load(epoch_cache_path)
            self.epoch_cache.truncate_from_end(log_.log_end_offset)  # recovery may have cut the log
        else:
            self.epoch_cache = LeaderEpochCache([(leader_epoch, log_.log_start_offset)])
        self.producers = ProducerState()
        headers = log_.batch_headers()
        if epoch_cache_path is not None:
            headers = self._checking_epochs(headers)
        self.producers.rebuild(headers)   # one pass over the log's batches for both
        if self._epochs_changed:
            self.save_epoch_cache()
        # Single node: everything that survived recovery is committed.
        self.high_watermark = log_.log_end_offset
        self.listeners: list[Callable[["Partition"], None]] = []

    @property
    def log_end_offset(self) -> int:
        return self.log.log_end_offset

    @property
    def log_start_offset(self) -> int:
        return self.log.log_start_offset

    # -- leader role ------------------------------------------------------------------
    def append_as_leader(self, data: bytes) -> AppendResult:
        if not self.is_leader:
            return AppendResult(NOT_LEADER_OR_FOLLOWER)
        try:
            batches = records.split_batches(data)
        except InvalidBatch as e:
            return AppendResult(e.error_code, message=str(e))
        max_size = self.config["max.message.bytes"]
        for _pos, h in batches:
            if h.size > max_size:
                return AppendResult(MESSAGE_TOO_LARGE, message=f"batch of {h.size} bytes exceeds max.message.bytes={max_size}")
            if h.is_transactional or h.attributes & records.CONTROL_FLAG:
                return AppendResult(INVALID_TXN_STATE, message="transactions are not supported")
        idempotent = [h for _p, h in batches if h.producer_id >= 0]
        if idempotent:
            if len(batches) != 1:
                return AppendResult(INVALID_RECORD, message="an idempotent produce must carry exactly one batch per partition")
            h = idempotent[0]
            error, dup_offset = self.producers.check(h)
            if error:
                return AppendResult(error, message=f"producer {h.producer_id} epoch {h.producer_epoch} sequence {h.base_sequence}")
            if dup_offset is not None:
                log.info("%s-%d: duplicate batch of producer %d seq %d, answered with offset %d",
                         self.topic, self.index, h.producer_id, h.base_sequence, dup_offset)
                return AppendResult(NONE, dup_offset, self.log_start_offset, duplicate=True)
        buf = bytearray(data)
        next_offset = self.log_end_offset
        base = next_offset
        positions = []
        count = 0
        for pos, h in batches:
            records.stamp(buf, pos, next_offset, self.leader_epoch)
            positions.append((pos, next_offset, h.size))
            next_offset += h.last_offset_delta + 1
            count += h.record_count
        self.log.append(buf, next_offset, positions, count)
        for (pos, h), (_p, off, _s) in zip(batches, positions):
            if h.producer_id >= 0:
                self.producers.update(h, off)
        self.on_leader_append()
        return AppendResult(NONE, base, self.log_start_offset)

    def on_leader_append(self) -> None:
        """Single node: the leader alone is the ISR, so the HW follows the log end."""
        self.advance_high_watermark(self.log_end_offset)

    def advance_high_watermark(self, offset: int) -> None:
        if offset > self.high_watermark:
            self.high_watermark = min(offset, self.log_end_offset)
        self.notify_listeners()

    def notify_listeners(self) -> None:
        """Tell waiters (long polls, group coordinators) that this partition changed."""
        for cb in list(self.listeners):
            cb(self)

    def become_leader(self, leader_epoch: int) -> None:
        """Start leading in `leader_epoch`: its first offset is the current log end (KIP-101)."""
        self.leader_epoch = leader_epoch
        self.is_leader = True
        if self.epoch_cache.assign(leader_epoch, self.log_end_offset):
            self.save_epoch_cache()

    _epochs_changed = False

    def _checking_epochs(self, headers):
        """The log's batch headers, each checked against the epoch cache on the way (agree_with_batch)."""
        for h in headers:
            if self.epoch_cache.agree_with_batch(h.base_offset, h.partition_leader_epoch):
                self._epochs_changed = True
            yield h

    def save_epoch_cache(self) -> None:
        if self.epoch_cache_path is not None:
            with log_dir_io(os.path.dirname(os.path.dirname(self.epoch_cache_path)), "writing the leader epoch cache"):
                self.epoch_cache.save(self.epoch_cache_path)

    # -- follower role (driven by broker/replication.py) ------------------------------------
    def append_as_follower(self, data: bytes) -> int:
        """Append batches fetched from the leader as they are (offsets and epochs kept).
        Returns the new log end offset; raises InvalidBatch if they do not continue the log."""
        if not data:
            return self.log_end_offset
        batches = records.split_batches(data)
        expected = self.log_end_offset
        positions = []
        count = 0
        new_epochs = []
        latest = self.epoch_cache.latest_epoch()
        for pos, h in batches:
            if h.partition_leader_epoch > latest:
                latest = h.partition_leader_epoch
                new_epochs.append((latest, h.base_offset))
            if h.base_offset != expected:
                raise InvalidBatch(f"batch at offset {h.base_offset} does not follow log end offset {expected}",
                                   INVALID_RECORD)
            positions.append((pos, h.base_offset, h.size))
            expected = h.last_offset + 1
            count += h.record_count
        self.log.append(data, expected, positions, count)
        for _pos, h in batches:
            if h.producer_id >= 0:
                self.producers.update(h, h.base_offset)
        # Epochs are recorded only once their first batch is in the log.
        changed = [self.epoch_cache.assign(e, o) for e, o in new_epochs]
        if any(changed):
            self.save_epoch_cache()
        return expected

    def truncate_to(self, offset: int) -> int:
        """Cut the log back to offset (a batch boundary at or below it); the
        producer state is rebuilt from what remains.  Returns the new log end offset."""
        leo = self.log.truncate_to(offset)
        self.producers.rebuild(self.log.batch_headers())
        self.high_watermark = min(self.high_watermark, leo)
        before = self.epoch_cache.entries
        self.epoch_cache.truncate_from_end(leo)
        if self.epoch_cache.entries != before:
            self.save_epoch_cache()
        return leo

    # -- reads --------------------------------------------------------------------------
    def read(self, fetch_offset: int, max_bytes: int, *, committed_only: bool = True,
             must_return_one: bool = True) -> ReadResult:
        limit = self.high_watermark if committed_only else self.log_end_offset
        hw = self.high_watermark
        try:
            data = self.log.read(fetch_offset, max_bytes, limit, must_return_one)
        except OffsetOutOfRange:
            return ReadResult(OFFSET_OUT_OF_RANGE, b"", hw, hw, self.log_start_offset)
        return ReadResult(NONE, data, hw, hw, self.log_start_offset)

    def close(self) -> None:
        self.log.close()
